//! What a guest writes to the log: stdout, stderr and `wsgi.errors`, each
//! line one `tracing` event tagged with the request id, within a budget.
//!
//! The guest is untrusted, and the log is the host's disk: a request may log
//! at most `--max-log-lines` lines and `--max-log-bytes` bytes, and each line
//! is cut at [`MAX_MESSAGE`] bytes with a note saying how much of it was
//! dropped. Past the budget nothing more is logged (or buffered); the count of
//! what was dropped goes into one line when the request ends
//! ([`LogBudget::finish`]). The host never holds more than [`MAX_MESSAGE`]
//! bytes of a line: what it cannot log it only counts.
//!
//! A line is a line of the stream, not of one write: the guest's libc asks
//! for a new stream object for every write, so the partial line of each
//! stream lives here, with the budget, for the whole request.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;

use crate::logging::GUEST;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// The most of one line (or `wsgi.errors` message) that is logged.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// What one request may still log, and what it wrote past that.
pub struct LogBudget {
    /// For every line logged.
    req_id: u64,
    /// The app, for every line logged: in a log of many tenants, whose.
    app: Arc<str>,
    /// The counters, shared by the request's three streams.
    state: Mutex<Budget>,
    /// The line stdout and stderr are in the middle of.
    lines: Mutex<[Line; 2]>,
}

/// The start of a line not yet ended, at most [`MAX_MESSAGE`] bytes, and
/// how many more bytes of it there were.
#[derive(Debug, Default)]
struct Line {
    kept: Vec<u8>,
    cut: u64,
}

#[derive(Debug)]
struct Budget {
    bytes_left: u64,
    lines_left: u64,
    /// Set by the first line that did not fit: nothing is logged after it.
    exhausted: bool,
    dropped_lines: u64,
    dropped_bytes: u64,
}

impl LogBudget {
    pub fn new(req_id: u64, app: Arc<str>, max_bytes: u64, max_lines: u64) -> Arc<Self> {
        let state = Budget {
            bytes_left: max_bytes,
            lines_left: max_lines,
            exhausted: false,
            dropped_lines: 0,
            dropped_bytes: 0,
        };
        Arc::new(Self { req_id, app, state: Mutex::new(state), lines: Mutex::default() })
    }

    /// Appends what the guest wrote to `stream` (stdout or stderr), logging
    /// each line it completes.
    fn write(&self, stream: &'static str, mut data: &[u8]) {
        let mut lines = self.lines.lock().expect("never poisoned");
        let line = &mut lines[usize::from(stream == "stderr")];
        loop {
            let (piece, ends) = match data.iter().position(|&b| b == b'\n') {
                Some(nl) => (&data[..nl], true),
                None => (data, false),
            };
            let take = piece.len().min(MAX_MESSAGE - line.kept.len());
            line.kept.extend_from_slice(&piece[..take]);
            line.cut += (piece.len() - take) as u64;
            if !ends {
                return;
            }
            self.emit(stream, &line.kept, line.cut);
            *line = Line::default();
            data = &data[piece.len() + 1..];
        }
    }

    /// Logs one line from `stream`: `kept` (at most [`MAX_MESSAGE`] bytes)
    /// and a note for the `cut` bytes of it that were not kept, if the
    /// budget has room for it; else counts it as dropped.
    pub fn emit(&self, stream: &'static str, kept: &[u8], cut: u64) {
        {
            let mut b = self.state.lock().expect("never poisoned: no panics under the lock");
            let len = kept.len() as u64;
            if b.exhausted || b.lines_left == 0 || b.bytes_left < len {
                b.exhausted = true;
                b.dropped_lines += 1;
                b.dropped_bytes += len + cut;
                return;
            }
            b.lines_left -= 1;
            b.bytes_left -= len;
        }
        let line = String::from_utf8_lossy(kept);
        let (req_id, app) = (self.req_id, &*self.app);
        // The text log quotes the line whole (`logging`): it is the app's.
        match (stream, cut) {
            ("wsgi.errors", 0) => tracing::warn!(target: GUEST, req_id, app, stream, "{line}"),
            ("wsgi.errors", cut) => {
                tracing::warn!(target: GUEST, req_id, app, stream, "{line} [... {cut} more bytes dropped]");
            }
            (_, 0) => tracing::info!(target: GUEST, req_id, app, stream, "{line}"),
            (_, cut) => {
                tracing::info!(target: GUEST, req_id, app, stream, "{line} [... {cut} more bytes dropped]");
            }
        }
    }

    /// Logs a `wsgi.errors` message, cut at [`MAX_MESSAGE`] bytes (at a
    /// character boundary).
    pub fn emit_message(&self, message: &str) {
        let kept = floor_char_boundary(message, MAX_MESSAGE);
        self.emit("wsgi.errors", &message.as_bytes()[..kept], (message.len() - kept) as u64);
    }

    /// Once the request is over: logs the streams' unfinished lines, then
    /// how much of its output went past the budget (nothing if none did).
    pub fn finish(&self) {
        let mut lines = self.lines.lock().expect("never poisoned");
        for (line, stream) in lines.iter_mut().zip(["stdout", "stderr"]) {
            if !line.kept.is_empty() || line.cut > 0 {
                self.emit(stream, &line.kept, line.cut);
                *line = Line::default();
            }
        }
        let b = self.state.lock().expect("never poisoned");
        if b.dropped_lines > 0 {
            tracing::warn!(
                req_id = self.req_id,
                app = &*self.app,
                dropped_lines = b.dropped_lines,
                dropped_bytes = b.dropped_bytes,
                "the app's output went past its log budget (--max-log-lines, --max-log-bytes); the rest was dropped"
            );
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
pub fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    (0..=max).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}

/// `text` cut at `max` bytes, with a note of how much was left out.
pub fn cut(text: &str, max: usize) -> String {
    let kept = floor_char_boundary(text, max);
    if kept == text.len() {
        return text.to_owned();
    }
    format!("{}\n[... {} more bytes dropped]", &text[..kept], text.len() - kept)
}

/// A guest output stream (stdout or stderr) that logs line by line.
#[derive(Clone)]
pub struct GuestLog {
    budget: Arc<LogBudget>,
    stream: &'static str,
}

impl GuestLog {
    pub fn new(budget: Arc<LogBudget>, stream: &'static str) -> Self {
        Self { budget, stream }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter::new(self.clone()))
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter::new(self.clone()))
    }
}

/// One stream object of stdout or stderr; the guest's libc makes one per
/// write. Its line is kept in the request's [`LogBudget`].
struct LineWriter {
    to: GuestLog,
}

impl LineWriter {
    fn new(to: GuestLog) -> Self {
        Self { to }
    }

    fn write_bytes(&mut self, data: &[u8]) {
        self.to.budget.write(self.to.stream, data);
    }
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LineWriter {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.get_mut().write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(budget: &LogBudget) -> (u64, u64, u64, u64) {
        let b = budget.state.lock().unwrap();
        (b.lines_left, b.bytes_left, b.dropped_lines, b.dropped_bytes)
    }

    #[test]
    fn a_long_line_is_cut_and_only_its_start_is_held_across_writes() {
        let budget = LogBudget::new(1, "test".into(), 1 << 20, 100);
        let big = vec![b'x'; 3 * MAX_MESSAGE + 5];
        // Each write through a new stream object, as the guest's libc does.
        for _ in 0..2 {
            LineWriter::new(GuestLog::new(Arc::clone(&budget), "stdout")).write_bytes(&big);
        }
        let held = |i: usize| {
            let lines = budget.lines.lock().unwrap();
            (lines[i].kept.len(), lines[i].cut)
        };
        assert_eq!(held(0), (MAX_MESSAGE, 5 * MAX_MESSAGE as u64 + 10));
        LineWriter::new(GuestLog::new(Arc::clone(&budget), "stderr")).write_bytes(b"err");
        LineWriter::new(GuestLog::new(Arc::clone(&budget), "stdout")).write_bytes(b"\nnext");
        assert_eq!(counts(&budget), (99, (1 << 20) - MAX_MESSAGE as u64, 0, 0));
        assert_eq!((held(0), held(1)), ((4, 0), (3, 0)));
        budget.finish();
        assert_eq!(counts(&budget).0, 97);
        assert_eq!((held(0), held(1)), ((0, 0), (0, 0)));
    }

    #[test]
    fn past_the_budget_everything_is_dropped_and_counted() {
        let budget = LogBudget::new(1, "test".into(), 10, 3);
        budget.emit("stdout", b"12345", 0);
        budget.emit("stdout", b"123456", 0); // 6 > the 5 bytes left: the log stops here
        budget.emit("stdout", b"1", 4); // would fit, but comes after
        assert_eq!(counts(&budget), (2, 5, 2, 11));
        let budget = LogBudget::new(1, "test".into(), 1000, 2);
        for _ in 0..5 {
            budget.emit_message("line");
        }
        assert_eq!(counts(&budget), (0, 992, 3, 12));
    }

    #[test]
    fn messages_are_cut_at_a_character_boundary() {
        let s = "é".repeat(MAX_MESSAGE); // two bytes each
        assert_eq!(floor_char_boundary(&s, MAX_MESSAGE + 1), MAX_MESSAGE);
        assert_eq!(floor_char_boundary("abc", 10), 3);
        assert_eq!(cut("abcdef", 4), "abcd\n[... 2 more bytes dropped]");
        assert_eq!(cut("abc", 4), "abc");
    }
}
