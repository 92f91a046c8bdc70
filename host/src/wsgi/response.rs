//! Checking what the guest sent back, and deciding how to frame it.
//!
//! The guest SDK already refuses bad status lines and headers, but the guest
//! is untrusted: everything is checked again here before a byte of it can
//! reach the wire. A violation becomes a 500 and a log line.

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

/// A validated response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    /// The app's reason phrase, when it is not the canonical one.
    pub reason: Option<Bytes>,
    pub headers: HeaderMap,
    /// No body may follow (HEAD, 204, 304).
    pub bodyless: bool,
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
    let mut headers = HeaderMap::with_capacity(raw.headers.len() + 1);
    for (name, value) in &raw.headers {
        let name = HeaderName::from_bytes(name)
            .map_err(|_| format!("invalid header name {:?}", String::from_utf8_lossy(name)))?;
        if HOP_BY_HOP.contains(&name.as_str()) {
            return Err(format!("hop-by-hop header {name} is not allowed"));
        }
        // Refuses CR, LF, NUL and the other control bytes but HTAB.
        let value =
            HeaderValue::from_bytes(value).map_err(|_| format!("header {name} has a control byte in its value"))?;
        headers.append(name, value);
    }
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        let valid = !first.is_empty() && first.as_bytes().iter().all(u8::is_ascii_digit);
        if !valid || lengths.any(|other| other != first) {
            return Err(format!("invalid or conflicting Content-Length {first:?}"));
        }
    }
    let bodyless = method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    if let (Some(len), false, false) = (raw.complete_len, bodyless, headers.contains_key(CONTENT_LENGTH)) {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    Ok(ResponseHead { status, reason, headers, bodyless })
}

fn parse_status(raw: &[u8]) -> Result<(StatusCode, Option<Bytes>), String> {
    let bad = || format!("invalid status line {:?}", String::from_utf8_lossy(raw));
    if raw.len() < 4 || raw[3] != b' ' || !raw[..3].iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let status = StatusCode::from_bytes(&raw[..3]).map_err(|_| bad())?;
    if status.is_informational() {
        return Err(format!("{status} cannot be a final response status"));
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
        assert!(!h.headers.contains_key(CONTENT_LENGTH));
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
