//! Checking what the guest sent back, and deciding how to frame it.
//!
//! The guest SDK already refuses bad status lines and headers, but the guest
//! is untrusted (it can call the host imports itself, without the SDK):
//! everything is checked again here before a byte of it can reach the wire.
//! A violation becomes a 500 and a log line. The head's `Content-Length`, if
//! any, is what the sandbox then holds the body to.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use http::{HeaderMap, Method, StatusCode};

use crate::sandbox::RawHead;

/// Connection-specific headers (RFC 9110 section 7.6.1): the server's business,
/// never the app's.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
];

/// Most header fields in one response. More than any real app sends, and
/// more than many clients accept (hyper's client stops at 100).
pub const MAX_RESPONSE_HEADERS: usize = 500;

/// Most bytes of status line and headers in one response: the size of the
/// largest request head the server accepts by default. nginx's own limit
/// (`uwsgi_buffer_size`) is 4 or 8 KiB.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;

/// A validated response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    /// The app's reason phrase, when it is not the canonical one.
    pub reason: Option<Bytes>,
    pub headers: HeaderMap,
    /// No body may follow (HEAD, 204, 304).
    pub bodyless: bool,
    /// The body's length, when the head declares one: exactly this many
    /// bytes must follow.
    pub length: Option<u64>,
    /// How the app spelled the names it sent, where that is not lowercase
    /// (`headers` holds them lowercase): see [`ResponseHead::spelling`].
    pub spelled: Vec<(HeaderName, Bytes)>,
}

impl ResponseHead {
    /// `name` as the app wrote it, or lowercase if the app did not send it
    /// (a header the host added). For writers that send the app's bytes
    /// exactly, as uWSGI does.
    pub fn spelling<'a>(&'a self, name: &'a HeaderName) -> &'a [u8] {
        self.spelled.iter().find(|(n, _)| n == name).map_or(name.as_str().as_bytes(), |(_, s)| s)
    }
}

/// Validates a raw head for a response to `method`.
///
/// Adds a `Content-Length` when the whole body came with the head and the app
/// gave none, so small responses need no chunked encoding.
///
/// # Errors
/// A message naming the first thing wrong.
pub fn validate(raw: &RawHead, method: &Method) -> Result<ResponseHead, String> {
    let (status, reason) = parse_status(&raw.status)?;
    if raw.headers.len() > MAX_RESPONSE_HEADERS {
        return Err(format!("{} header fields; at most {MAX_RESPONSE_HEADERS} are sent", raw.headers.len()));
    }
    let head_bytes = raw.status.len() + raw.headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum::<usize>();
    if head_bytes > MAX_RESPONSE_HEAD_BYTES {
        return Err(format!("a head of {head_bytes} bytes; at most {MAX_RESPONSE_HEAD_BYTES} are sent"));
    }
    let mut headers = HeaderMap::with_capacity(raw.headers.len() + 1);
    let mut spelled = Vec::new();
    for (raw_name, value) in &raw.headers {
        let name = HeaderName::from_bytes(raw_name)
            .map_err(|_| format!("invalid header name {:?}", String::from_utf8_lossy(raw_name)))?;
        if name.as_str().as_bytes() != raw_name.as_slice() && !spelled.iter().any(|(n, _)| *n == name) {
            spelled.push((name.clone(), Bytes::copy_from_slice(raw_name)));
        }
        if HOP_BY_HOP.contains(&name.as_str()) {
            return Err(format!("hop-by-hop header {name} is not allowed"));
        }
        // Refuses CR, LF, NUL and the other control bytes but HTAB.
        let value =
            HeaderValue::from_bytes(value).map_err(|_| format!("header {name} has a control byte in its value"))?;
        headers.append(name, value);
    }
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    let mut length = None;
    if let Some(first) = lengths.next() {
        let digits = !first.is_empty() && first.as_bytes().iter().all(u8::is_ascii_digit);
        length = first.to_str().ok().and_then(|v| v.parse::<u64>().ok()).filter(|_| digits);
        if length.is_none() || lengths.any(|other| other != first) {
            return Err(format!("invalid or conflicting Content-Length {first:?}"));
        }
    }
    let bodyless = method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    if let (Some(len), false, None) = (raw.complete_len, bodyless, length) {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        length = Some(len);
    }
    Ok(ResponseHead { status, reason, headers, bodyless, length, spelled })
}

fn parse_status(raw: &[u8]) -> Result<(StatusCode, Option<Bytes>), String> {
    let bad = || format!("invalid status line {:?}", String::from_utf8_lossy(raw));
    if raw.len() < 4 || raw[3] != b' ' || !raw[..3].iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let status = StatusCode::from_bytes(&raw[..3]).map_err(|_| bad())?;
    // RFC 9110 section 15 defines 100 to 599; a 1xx is never a final status.
    if !(200..=599).contains(&status.as_u16()) {
        return Err(format!("{} is not a final response status (200 to 599)", status.as_u16()));
    }
    let reason = &raw[4..];
    if reason.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(bad());
    }
    let canonical = status.canonical_reason().map(str::as_bytes);
    let reason = (Some(reason) != canonical).then(|| Bytes::copy_from_slice(reason));
    Ok((status, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(status: &str, headers: &[(&str, &[u8])], complete_len: Option<u64>) -> RawHead {
        RawHead {
            status: status.as_bytes().to_vec(),
            headers: headers.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec())).collect(),
            complete_len,
            timing: crate::sandbox::Timing::default(),
        }
    }

    #[test]
    fn a_complete_body_gets_a_length_unless_bodyless() {
        let h = validate(&raw("200 OK", &[("Content-Type", b"text/plain")], Some(5)), &Method::GET).unwrap();
        assert_eq!(h.headers[CONTENT_LENGTH], "5");
        assert!(h.reason.is_none() && !h.bodyless);
        let h = validate(&raw("200 OK", &[], Some(0)), &Method::HEAD).unwrap();
        assert!(h.bodyless && !h.headers.contains_key(CONTENT_LENGTH));
        let h = validate(&raw("204 No Content", &[], Some(0)), &Method::GET).unwrap();
        assert!(h.bodyless && !h.headers.contains_key(CONTENT_LENGTH));
        let h = validate(&raw("200 OK", &[("Content-Length", b"99")], Some(5)), &Method::GET).unwrap();
        assert_eq!(h.headers[CONTENT_LENGTH], "99");
        let h = validate(&raw("200 OK", &[], None), &Method::GET).unwrap();
        assert!(!h.headers.contains_key(CONTENT_LENGTH) && h.length.is_none());
    }

    #[test]
    fn the_declared_length_is_the_apps_or_the_complete_bodys() {
        let h = validate(&raw("200 OK", &[("Content-Length", b"5")], Some(12)), &Method::GET).unwrap();
        assert_eq!(h.length, Some(5));
        let h = validate(&raw("200 OK", &[], Some(12)), &Method::GET).unwrap();
        assert_eq!(h.length, Some(12));
        let h = validate(&raw("200 OK", &[("Content-Length", b"5"), ("Content-Length", b"5")], None), &Method::GET);
        assert_eq!(h.unwrap().length, Some(5));
        // Past u64: refused, not wrapped.
        assert!(validate(&raw("200 OK", &[("Content-Length", b"99999999999999999999")], None), &Method::GET).is_err());
    }

    #[test]
    fn oversized_heads_are_refused() {
        let many: Vec<(&str, &[u8])> = vec![("X-A", b"v"); MAX_RESPONSE_HEADERS + 1];
        assert!(validate(&raw("200 OK", &many, None), &Method::GET).unwrap_err().contains("header fields"));
        let huge = vec![b'v'; MAX_RESPONSE_HEAD_BYTES];
        assert!(validate(&raw("200 OK", &[("X-A", &huge)], None), &Method::GET).unwrap_err().contains("bytes"));
        let fine: Vec<(&str, &[u8])> = vec![("X-A", b"v"); MAX_RESPONSE_HEADERS];
        assert!(validate(&raw("200 OK", &fine, None), &Method::GET).is_ok());
    }

    #[test]
    fn the_apps_spelling_of_each_name_is_kept() {
        let h = validate(
            &raw("200 OK", &[("X-Forwarded-For", b"a"), ("x-lower", b"b"), ("X-FORWARDED-FOR", b"c")], Some(1)),
            &Method::GET,
        )
        .unwrap();
        let name = HeaderName::from_static("x-forwarded-for");
        assert_eq!(h.spelling(&name), b"X-Forwarded-For", "the first spelling wins");
        assert_eq!(h.spelling(&HeaderName::from_static("x-lower")), b"x-lower");
        assert_eq!(h.spelling(&CONTENT_LENGTH), b"content-length", "added by the host");
        assert_eq!(h.spelled.len(), 1);
    }

    #[test]
    fn custom_reasons_are_kept() {
        let h = validate(&raw("404 Nope", &[], None), &Method::GET).unwrap();
        assert_eq!((h.status.as_u16(), h.reason.as_deref()), (404, Some(&b"Nope"[..])));
    }

    #[test]
    fn injection_and_hop_by_hop_are_refused() {
        for (status, headers) in [
            ("200 OK\r\nX: y", vec![]),
            ("200", vec![]),
            ("2000 OK", vec![]),
            ("abc OK", vec![]),
            ("100 Continue", vec![]),
            ("199 Nope", vec![]),
            ("600 Nope", vec![]),
            ("999 WAT", vec![]),
            ("000 Zero", vec![]),
            ("200 OK", vec![("X-A", &b"a\r\nSet-Cookie: x"[..])]),
            ("200 OK", vec![("X-A", &b"a\0b"[..])]),
            ("200 OK", vec![("X-A", &b"a\nb"[..])]),
            ("200 OK", vec![("Bad Name", &b"v"[..])]),
            ("200 OK", vec![("Bad:Name", &b"v"[..])]),
            ("200 OK", vec![("Transfer-Encoding", &b"chunked"[..])]),
            ("200 OK", vec![("Connection", &b"close"[..])]),
            ("200 OK", vec![("Content-Length", &b"-1"[..])]),
            ("200 OK", vec![("Content-Length", &b"1"[..]), ("Content-Length", &b"2"[..])]),
        ] {
            assert!(validate(&raw(status, &headers, None), &Method::GET).is_err(), "{status:?} {headers:?}");
        }
    }
}
