//! What a request names, checked before it is routed: which decides the
//! tenant, so it is a security decision here.
//!
//! - **The host** (RFC 9112 §3.2): an HTTP/1.1 request carries exactly one
//!   `Host`, whose value is `host [":" port]` (RFC 3986 §3.2.2: a name of
//!   letters, digits, `-`, `_` and dots, an IPv4 address or a bracketed IPv6
//!   one). An absolute-form target's authority replaces the header
//!   (§3.2.2), for routing and for the environ alike. The name is compared,
//!   and handed to the app, in lowercase without a trailing dot. Anything
//!   else is a 400 and the app is never called.
//! - **The path**: percent-decoded, then normalized as nginx normalizes it
//!   before it picks a `location`: empty segments merged, `.` and `..`
//!   resolved (RFC 3986 §5.2.4), and a path that climbs above the root
//!   refused with a 400. An encoded slash (`%2F`) is decoded first, as nginx
//!   does, so `/sub%2F..%2Fx` is `/x`, and a prefix is matched on whole
//!   segments of the result: the app behind a prefix sees the same
//!   `PATH_INFO` whether it is reached directly or through nginx.

use http::header::HOST;
use http::request::Parts;
use http::Version;

/// A request's host, as routing compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Lowercase, without a trailing dot; an IPv6 address in brackets.
    pub name: String,
    pub port: Option<u16>,
}

impl Host {
    /// `host [":" port]`; `Ok(None)` for an empty value (a request whose
    /// target has no authority may send an empty `Host`).
    ///
    /// # Errors
    /// Says what is wrong with it.
    pub fn parse(value: &[u8]) -> Result<Option<Self>, &'static str> {
        let value = std::str::from_utf8(value).map_err(|_| "the host is not ASCII")?;
        if value.is_empty() {
            return Ok(None);
        }
        let (name, port) = if value.starts_with('[') {
            let end = value.find(']').ok_or("an IPv6 host without its closing bracket")?;
            let (literal, rest) = value.split_at(end + 1);
            let inner = &literal[1..literal.len() - 1];
            inner.parse::<std::net::Ipv6Addr>().map_err(|_| "the bracketed host is not an IPv6 address")?;
            (literal.to_ascii_lowercase(), rest)
        } else {
            let end = value.find(':').unwrap_or(value.len());
            let (name, rest) = value.split_at(end);
            (registered_name(name)?, rest)
        };
        let port = match port.strip_prefix(':') {
            None if port.is_empty() => None,
            None => return Err("junk after the host"),
            Some("") => None,
            Some(digits) if digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit()) => {
                Some(digits.parse::<u16>().map_err(|_| "the port is past 65535")?)
            }
            Some(_) => return Err("the port is not a number"),
        };
        Ok(Some(Self { name, port }))
    }

    /// The `Host` value the app sees: `name[:port]`.
    pub fn header(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.name),
            None => self.name.clone(),
        }
    }

    /// `SERVER_NAME`: the name, an IPv6 address without its brackets.
    pub fn server_name(&self) -> &str {
        self.name.trim_start_matches('[').trim_end_matches(']')
    }
}

/// A registered name or IPv4 address: labels of letters, digits, `-` and
/// `_`, separated by single dots, one trailing dot allowed (and dropped).
fn registered_name(name: &str) -> Result<String, &'static str> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let labels_ok = trimmed
        .split('.')
        .all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    if trimmed.is_empty() || !labels_ok {
        return Err("the host is not a name or an address");
    }
    Ok(trimmed.to_ascii_lowercase())
}

/// The host of an HTTP request: an absolute-form target's authority, else
/// its `Host` header. `Ok(None)` for an HTTP/1.0 request without one, or
/// an empty one.
///
/// # Errors
/// An HTTP/1.1 request without a `Host`, with more than one, or with one
/// (or an authority) that is not `host [":" port]`.
pub fn http_host(parts: &Parts) -> Result<Option<Host>, &'static str> {
    let mut headers = parts.headers.get_all(HOST).iter();
    let header = headers.next();
    if headers.next().is_some() {
        return Err("more than one Host header");
    }
    if header.is_none() && parts.version >= Version::HTTP_11 {
        return Err("no Host header, which HTTP/1.1 requires");
    }
    let from_header = header.map(|h| Host::parse(h.as_bytes())).transpose()?.flatten();
    match parts.uri.authority() {
        // RFC 9112 §3.2.2: the target's authority wins, and replaces Host.
        Some(authority) if authority.as_str().contains('@') => Err("the request target has userinfo"),
        Some(authority) => Host::parse(authority.as_str().as_bytes()),
        None => Ok(from_header),
    }
}

/// A decoded path, normalized as nginx normalizes it: repeated slashes
/// merged, `.` segments dropped, `..` segments resolved. A path that does
/// not start with `/` (the `*` of `OPTIONS *`) is left as it is.
///
/// # Errors
/// A `..` that would climb above the root.
pub fn normalize_path(path: &[u8]) -> Result<Vec<u8>, &'static str> {
    if !path.starts_with(b"/") {
        return Ok(path.to_vec());
    }
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing = false;
    for segment in path[1..].split(|&b| b == b'/') {
        trailing = true;
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop().ok_or("the path climbs above the root")?;
            }
            _ => {
                segments.push(segment);
                trailing = false;
            }
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for segment in &segments {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    if out.is_empty() || trailing {
        out.push(b'/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(value: &str) -> Result<Option<(String, Option<u16>)>, &'static str> {
        Host::parse(value.as_bytes()).map(|h| h.map(|h| (h.name, h.port)))
    }

    #[test]
    fn hosts_are_names_or_addresses_with_an_optional_port() {
        assert_eq!(host("Shop.Example.COM."), Ok(Some(("shop.example.com".into(), None))));
        assert_eq!(host("a.test:8080"), Ok(Some(("a.test".into(), Some(8080)))));
        assert_eq!(host("127.0.0.1:80"), Ok(Some(("127.0.0.1".into(), Some(80)))));
        assert_eq!(host("[::1]:8000"), Ok(Some(("[::1]".into(), Some(8000)))));
        assert_eq!(host("[FE80::1]"), Ok(Some(("[fe80::1]".into(), None))));
        assert_eq!(host("in_ternal"), Ok(Some(("in_ternal".into(), None))));
        assert_eq!(host("a.test:"), Ok(Some(("a.test".into(), None))));
        assert_eq!(host(""), Ok(None));
        for bad in [
            "evil.com/.b.test",
            "evil@x.b.test",
            "a.test:1:2",
            "a test",
            "a.test, x.b.test",
            "a..test",
            ".",
            "..",
            "*.b.test",
            "a.test:99999",
            "a.test:80x",
            "[::1",
            "[not-v6]",
            "[::1]x",
            "caf\u{e9}.test",
            "a.test\0",
        ] {
            assert!(host(bad).is_err(), "{bad:?} was accepted");
        }
        let h = Host::parse(b"[::1]:81").unwrap().unwrap();
        assert_eq!((h.header().as_str(), h.server_name()), ("[::1]:81", "::1"));
    }

    fn parts(request: &str) -> Parts {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(request.as_bytes()).unwrap();
        let mut builder = http::Request::builder()
            .method(req.method.unwrap())
            .uri(req.path.unwrap())
            .version(if req.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 });
        for h in req.headers.iter() {
            builder = builder.header(h.name, h.value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn an_http_11_request_has_one_valid_host_and_the_absolute_form_wins() {
        let name = |r: &str| http_host(&parts(r)).map(|h| h.map(|h| h.header()));
        assert_eq!(name("GET / HTTP/1.1\r\nHost: A.Test.\r\n\r\n"), Ok(Some("a.test".into())));
        assert!(name("GET / HTTP/1.1\r\nHost: a.test\r\nHost: x.b.test\r\n\r\n").is_err());
        assert!(name("GET / HTTP/1.1\r\n\r\n").is_err());
        assert_eq!(name("GET / HTTP/1.0\r\n\r\n"), Ok(None));
        assert_eq!(name("GET / HTTP/1.1\r\nHost:\r\n\r\n"), Ok(None));
        assert!(name("GET / HTTP/1.1\r\nHost: evil@x.b.test\r\n\r\n").is_err());
        assert_eq!(name("GET http://b.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n"), Ok(Some("b.test".into())));
        assert_eq!(name("GET http://B.test:81/x HTTP/1.1\r\nHost: a.test\r\n\r\n"), Ok(Some("b.test:81".into())));
        assert!(name("GET http://u@b.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n").is_err());
        // The Host header must still be there, and valid.
        assert!(name("GET http://b.test/x HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn paths_are_normalized_as_nginx_does_and_may_not_climb_above_the_root() {
        let norm = |p: &str| normalize_path(p.as_bytes()).map(|p| String::from_utf8(p).unwrap());
        assert_eq!(norm("/"), Ok("/".into()));
        assert_eq!(norm("/a/b"), Ok("/a/b".into()));
        assert_eq!(norm("/a/b/"), Ok("/a/b/".into()));
        assert_eq!(norm("//a//b"), Ok("/a/b".into()));
        assert_eq!(norm("/x/../sub/y"), Ok("/sub/y".into()));
        assert_eq!(norm("/a/./b/."), Ok("/a/b/".into()));
        assert_eq!(norm("/a/b/.."), Ok("/a/".into()));
        assert_eq!(norm("/x/.."), Ok("/".into()));
        assert_eq!(norm("/a..b/.c"), Ok("/a..b/.c".into()));
        assert_eq!(norm("*"), Ok("*".into()));
        assert!(norm("/..").is_err());
        assert!(norm("/sub/../../etc").is_err());
    }
}
