//! The log's two formats, and what keeps a text line from being forged.
//!
//! With `--log-format json` every line is a JSON object, whose serializer
//! escapes every value. The text format is `tracing`'s, with its fields
//! written here ([`TextFields`]) so that nothing a request or a guest sends
//! can pass for a field of its own or break a line:
//! - a text field (a Host value, an app's output) is always quoted, with
//!   quotes, backslashes and control bytes escaped;
//! - any other value is written bare only if it is one plain token, else
//!   quoted the same way;
//! - a message has its control bytes escaped, and the line an app printed
//!   (target [`GUEST`]) is quoted whole, so `status=200` in it stays text.
//!
//! The one line that quotes a request's own words in its message, the
//! access line, escapes them with [`quote_inner`].

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The target of the lines an app writes (stdout, stderr, `wsgi.errors`).
pub const GUEST: &str = "wsgi_wasm::guest";

/// The target of the access lines.
pub const ACCESS: &str = "wsgi_wasm::access";

/// Sets up the log on stderr: `WSGI_WASM_LOG` filters it (default `info`),
/// `json` picks the format, and `access` off drops the access lines.
pub fn init(json: bool, access: bool) {
    let mut filter = EnvFilter::try_from_env("WSGI_WASM_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if !access {
        filter = filter.add_directive(format!("{ACCESS}=off").parse().expect("a valid directive"));
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        // Flat: each field is a key of the line's object, beside `message`.
        builder.json().flatten_event(true).init();
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .fmt_fields(TextFields)
            .event_format(TextEvents(Format::default()))
            .init();
    }
}

/// `text` with the characters that would end the quoted words it sits in
/// (`"`, `\`) and control characters escaped, for a message that quotes a
/// request's own words (`"GET /path"`).
pub fn quote_inner(text: &str) -> Cow<'_, str> {
    if text.chars().all(|c| c != '"' && c != '\\' && !c.is_control()) {
        return Cow::Borrowed(text);
    }
    let quoted = format!("{text:?}");
    Cow::Owned(quoted[1..quoted.len() - 1].to_owned())
}

thread_local! {
    /// Set while an app's line is formatted: its message is quoted whole.
    static GUEST_LINE: Cell<bool> = const { Cell::new(false) };
}

/// tracing's text format, telling [`TextFields`] when a line is an app's.
struct TextEvents(Format);

impl<S, N> FormatEvent<S, N> for TextEvents
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        GUEST_LINE.set(event.metadata().target() == GUEST);
        let written = self.0.format_event(ctx, writer, event);
        GUEST_LINE.set(false);
        written
    }
}

/// The text format's fields: `message`, then ` key=value` each, with
/// every value from outside quoted or escaped (see the module docs).
struct TextFields;

impl<'writer> FormatFields<'writer> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = TextVisitor { writer, first: true, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct TextVisitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl TextVisitor<'_> {
    fn write(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        self.result = if field.name() == "message" {
            write!(self.writer, "{separator}{value}")
        } else {
            write!(self.writer, "{separator}{}={value}", field.name())
        };
    }
}

impl Visit for TextVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.write(field, &format!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut rendered = String::new();
        let _ = write!(rendered, "{value:?}");
        let written = if field.name() == "message" {
            if GUEST_LINE.get() {
                format!("{rendered:?}")
            } else {
                escape_controls(&rendered).into_owned()
            }
        } else if is_token(&rendered) {
            rendered
        } else {
            format!("{rendered:?}")
        };
        self.write(field, &written);
    }
}

/// Whether `value` can stand bare after `key=`: one run of printable,
/// non-blank characters with no quote, backslash or `=`.
fn is_token(value: &str) -> bool {
    !value.is_empty()
        && value.chars().all(|c| !c.is_control() && !c.is_whitespace() && c != '"' && c != '\\' && c != '=')
}

/// `text` with control characters (NUL, CR, ESC, ...) escaped; the rest as
/// it is.
fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars().map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.to_string() }).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_from_outside_cannot_pass_for_fields_or_break_a_line() {
        assert!(is_token("shop") && is_token("127.0.0.1:80") && is_token("/a/b"));
        for bad in ["", "a b", "x=1", "a\"b", "a\\b", "a\nb", "a\0b", "tab\there"] {
            assert!(!is_token(bad), "{bad:?}");
        }
        assert_eq!(escape_controls("a\0b\r\x1b[31m"), "a\\0b\\r\\u{1b}[31m");
        assert_eq!(escape_controls("plain \"quoted\" text"), "plain \"quoted\" text");
        assert_eq!(quote_inner("/x\" 200 0 app=evil"), "/x\\\" 200 0 app=evil");
        assert_eq!(quote_inner("/plain?a=1"), "/plain?a=1");
    }
}
