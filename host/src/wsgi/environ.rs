//! Pure functions from a request's parts to its CGI variables (PEP 3333).
//!
//! Values are raw bytes until they cross to the guest, where each becomes
//! PEP 3333's native string, latin-1 ([`CgiVars::into_native`]): a path with
//! bytes that are not UTF-8 reaches the app as PEP 3333 prescribes.

use std::net::SocketAddr;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST};
use http::request::Parts;

use super::target;

/// CGI variables in the order they were added; names are unique.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CgiVars(pub Vec<(String, Vec<u8>)>);

impl CgiVars {
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) {
        self.0.push((name.into(), value.into()));
    }

    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    /// Removes `name` and returns its value.
    pub fn take(&mut self, name: &str) -> Option<Vec<u8>> {
        let at = self.0.iter().position(|(n, _)| n == name)?;
        Some(self.0.remove(at).1)
    }

    pub fn remove(&mut self, name: &str) {
        self.take(name);
    }

    /// Replaces the value of `name`, or adds it.
    pub fn set(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.into(),
            None => self.push(name, value),
        }
    }

    /// The variables with each value as PEP 3333's native string: every byte
    /// becomes the character with the same code (latin-1), which is what the
    /// guest would get from `value.decode("latin-1")`, without its decoding.
    pub fn into_native(self) -> Vec<(String, String)> {
        self.0.into_iter().map(|(name, value)| (name, value.iter().map(|&b| char::from(b)).collect())).collect()
    }

    /// Adds `name` only if it is not there yet.
    pub fn set_default(&mut self, name: &str, value: &[u8]) {
        if self.get(name).is_none() {
            self.push(name, value);
        }
    }
}

/// Where a connection is: the server's own address and the client's.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

/// Builds the CGI variables for an HTTP request.
///
/// - `PATH_INFO` is percent-decoded to raw bytes; `QUERY_STRING` is not.
/// - `CONTENT_TYPE` and `CONTENT_LENGTH` are unprefixed, as CGI has them.
/// - Every other header becomes `HTTP_*`. Repeated headers are joined with
///   `, ` (cookies with `; `). Names containing `_` are dropped, as werkzeug
///   does, so `X_Forwarded_For` cannot pose as `X-Forwarded-For`.
/// - The host is the request's one `Host`, or its absolute-form target's
///   authority (`target::http_host`), normalized: `HTTP_HOST` is it as
///   routing compares it, `SERVER_NAME`/`SERVER_PORT` its parts (else the
///   address the connection arrived on).
/// - `PATH_INFO` is normalized as nginx normalizes it (`target`).
///
/// # Errors
/// What makes the request a 400: its host or its path (`target`).
pub fn from_http(parts: &Parts, conn: ConnInfo) -> Result<CgiVars, &'static str> {
    let host = target::http_host(parts)?;
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(parts.uri.path()).collect();
    let mut vars = CgiVars::default();
    vars.push("REQUEST_METHOD", parts.method.as_str());
    vars.push("SCRIPT_NAME", "");
    vars.push("PATH_INFO", target::normalize_path(&decoded)?);
    vars.push("QUERY_STRING", parts.uri.query().unwrap_or(""));
    vars.push("REQUEST_URI", parts.uri.path_and_query().map_or("/", |pq| pq.as_str()));
    vars.push("RAW_URI", parts.uri.path_and_query().map_or("/", |pq| pq.as_str()));
    vars.push("SERVER_PROTOCOL", format!("{:?}", parts.version));

    let (name, port) = match &host {
        Some(host) => (host.server_name().to_owned(), host.port.unwrap_or(conn.local.port())),
        None => (conn.local.ip().to_string(), conn.local.port()),
    };
    vars.push("SERVER_NAME", name);
    vars.push("SERVER_PORT", port.to_string());
    vars.push("REMOTE_ADDR", conn.peer.ip().to_string());
    vars.push("REMOTE_PORT", conn.peer.port().to_string());

    for (key, header) in [("CONTENT_TYPE", CONTENT_TYPE), ("CONTENT_LENGTH", CONTENT_LENGTH)] {
        if let Some(v) = parts.headers.get(&header) {
            vars.push(key, v.as_bytes());
        }
    }
    match &host {
        Some(host) => vars.push("HTTP_HOST", host.header()),
        None if parts.headers.contains_key(HOST) => vars.push("HTTP_HOST", ""),
        None => {}
    }
    for name in parts.headers.keys() {
        if name == CONTENT_TYPE || name == CONTENT_LENGTH || name == HOST || name.as_str().contains('_') {
            continue;
        }
        let sep: &[u8] = if name == COOKIE { b"; " } else { b", " };
        let mut joined = Vec::new();
        for (i, value) in parts.headers.get_all(name).iter().enumerate() {
            if i > 0 {
                joined.extend_from_slice(sep);
            }
            joined.extend_from_slice(value.as_bytes());
        }
        vars.push(cgi_name(name.as_str()), joined);
    }
    Ok(vars)
}

/// Builds the CGI variables and URL scheme from a uwsgi packet's vars, as
/// nginx sends them.
///
/// nginx passes only what its configuration names (`include uwsgi_params`
/// plus `uwsgi_param`) and the client's headers as `HTTP_*`. What is missing
/// is filled in the way uWSGI does: the method defaults to GET, `PATH_INFO`
/// and `QUERY_STRING` come from `REQUEST_URI`, the server name from the Host
/// header. Repeated `HTTP_*` vars (nginx before 1.23 sends one per header
/// line) are joined with `, `, cookies with `; `. A `PATH_INFO` under
/// `SCRIPT_NAME` loses that prefix, so an app mounted at `/app` sees `/x`.
/// The scheme is `UWSGI_SCHEME`, else https if `HTTPS` is on, else
/// `REQUEST_SCHEME`, else http.
///
/// # Errors
/// A message if `CONTENT_LENGTH` is not a number: the body length would be
/// unknowable.
pub fn from_uwsgi(vars: Vec<(Vec<u8>, Vec<u8>)>, conn: Option<ConnInfo>) -> Result<(CgiVars, &'static str), String> {
    let mut out = CgiVars::default();
    for (key, value) in vars {
        let Ok(key) = String::from_utf8(key) else { continue };
        match out.0.iter_mut().find(|(k, _)| *k == key) {
            // RFC 9112 §3.2, as for HTTP: a request has one host.
            Some(_) if key == "HTTP_HOST" => return Err("more than one HTTP_HOST".into()),
            Some((_, existing)) if key.starts_with("HTTP_") => {
                existing.extend_from_slice(if key == "HTTP_COOKIE" { b"; " } else { b", " });
                existing.extend_from_slice(&value);
            }
            Some((_, existing)) => *existing = value,
            None => out.0.push((key, value)),
        }
    }
    // CGI has these two unprefixed; PEP 3333 forbids the HTTP_ forms.
    for (cgi, http) in [("CONTENT_TYPE", "HTTP_CONTENT_TYPE"), ("CONTENT_LENGTH", "HTTP_CONTENT_LENGTH")] {
        let header = out.take(http);
        if out.get(cgi).is_none_or(<[u8]>::is_empty) {
            out.remove(cgi);
            if let Some(v) = header.filter(|v| !v.is_empty()) {
                out.push(cgi, v);
            }
        }
    }
    if let Some(len) = out.get("CONTENT_LENGTH") {
        if len.is_empty() {
            out.remove("CONTENT_LENGTH");
        } else if !len.iter().all(u8::is_ascii_digit) || len.len() > 19 {
            return Err(format!("invalid CONTENT_LENGTH {:?}", String::from_utf8_lossy(len)));
        }
    }

    // The host routes the request: one valid `host [":" port]`, normalized
    // (`target`); SERVER_NAME is checked the same when it is what routes.
    match out.get("HTTP_HOST").map(<[u8]>::to_vec) {
        Some(raw) => {
            let host = target::Host::parse(&raw).map_err(|why| format!("HTTP_HOST: {why}"))?;
            out.set("HTTP_HOST", host.map(|h| h.header()).unwrap_or_default());
        }
        None => {
            if let Some(name) = out.get("SERVER_NAME") {
                target::Host::parse(name).map_err(|why| format!("SERVER_NAME: {why}"))?;
            }
        }
    }
    out.set_default("REQUEST_METHOD", b"GET");
    out.set_default("SERVER_PROTOCOL", b"HTTP/1.1");
    let uri = out.get("REQUEST_URI").map(<[u8]>::to_vec);
    let (uri_path, uri_query) = match &uri {
        Some(uri) => match uri.iter().position(|&b| b == b'?') {
            Some(q) => (&uri[..q], Some(&uri[q + 1..])),
            None => (&uri[..], None),
        },
        None => (&b"/"[..], None),
    };
    if out.get("PATH_INFO").is_none() {
        let decoded: Vec<u8> = percent_encoding::percent_decode(uri_path).collect();
        out.push("PATH_INFO", decoded);
    }
    out.set_default("QUERY_STRING", uri_query.unwrap_or(b""));
    if uri.is_none() {
        let mut rebuilt = out.get("PATH_INFO").unwrap_or(b"/").to_vec();
        if let Some(q) = out.get("QUERY_STRING").filter(|q| !q.is_empty()) {
            rebuilt.push(b'?');
            rebuilt.extend_from_slice(q);
        }
        out.push("REQUEST_URI", rebuilt);
    }

    let path =
        target::normalize_path(out.get("PATH_INFO").unwrap_or(b"/")).map_err(|why| format!("PATH_INFO: {why}"))?;
    out.set("PATH_INFO", path);
    let mut script = out.take("SCRIPT_NAME").unwrap_or_default();
    while script.last() == Some(&b'/') {
        script.pop();
    }
    if !script.is_empty() {
        let path = out.get("PATH_INFO").unwrap_or(b"");
        if path.starts_with(&script) && matches!(path.get(script.len()), None | Some(b'/')) {
            let rest = path[script.len()..].to_vec();
            out.set("PATH_INFO", rest);
        }
    }
    out.push("SCRIPT_NAME", script);

    if out.get("SERVER_NAME").is_none() || out.get("SERVER_PORT").is_none() {
        let host = out
            .get("HTTP_HOST")
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| h.parse::<http::uri::Authority>().ok());
        let (name, port) = match (host, conn) {
            (Some(a), _) => (
                a.host().trim_start_matches('[').trim_end_matches(']').to_owned(),
                a.port_u16().map_or_else(|| "80".into(), |p| p.to_string()),
            ),
            (None, Some(c)) => (c.local.ip().to_string(), c.local.port().to_string()),
            (None, None) => ("localhost".into(), "80".into()),
        };
        out.set_default("SERVER_NAME", name.as_bytes());
        out.set_default("SERVER_PORT", port.as_bytes());
    }
    if let Some(c) = conn {
        out.set_default("REMOTE_ADDR", c.peer.ip().to_string().as_bytes());
        out.set_default("REMOTE_PORT", c.peer.port().to_string().as_bytes());
    }

    let on = |name: &str, yes: &[&[u8]]| out.get(name).is_some_and(|v| yes.iter().any(|y| v.eq_ignore_ascii_case(y)));
    let scheme = if on("UWSGI_SCHEME", &[b"https"])
        || (out.get("UWSGI_SCHEME").is_none()
            && (on("HTTPS", &[b"on", b"1", b"yes"]) || on("REQUEST_SCHEME", &[b"https"])))
    {
        "https"
    } else {
        "http"
    };
    Ok((out, scheme))
}

/// `x-forwarded-for` → `HTTP_X_FORWARDED_FOR`.
fn cgi_name(header: &str) -> String {
    let mut out = String::with_capacity(5 + header.len());
    out.push_str("HTTP_");
    out.extend(header.chars().map(|c| if c == '-' { '_' } else { c.to_ascii_uppercase() }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> ConnInfo {
        ConnInfo { local: "127.0.0.1:8000".parse().unwrap(), peer: "127.0.0.1:54321".parse().unwrap() }
    }

    #[test]
    fn native_strings_are_latin1_one_character_per_byte() {
        let mut v = CgiVars::default();
        v.push("PATH_INFO", b"/caf\xe9/\x00\xff".to_vec());
        v.push("EMPTY", Vec::new());
        assert_eq!(
            v.into_native(),
            vec![("PATH_INFO".to_owned(), "/caf\u{e9}/\u{0}\u{ff}".to_owned()), ("EMPTY".to_owned(), String::new())]
        );
    }

    /// The variables of `req`, with a `Host: t` if it has none (HTTP/1.1
    /// requires one).
    fn vars(mut req: http::Request<()>) -> CgiVars {
        if !req.headers().contains_key(HOST) {
            req.headers_mut().insert(HOST, http::HeaderValue::from_static("t"));
        }
        from_http(&req.into_parts().0, conn()).unwrap()
    }

    #[test]
    fn path_is_percent_decoded_to_raw_bytes_and_query_is_not() {
        let v = vars(http::Request::get("/caf%C3%A9/%FF%2Fx?q=%C3%A9&a=b").body(()).unwrap());
        assert_eq!(v.get("PATH_INFO").unwrap(), b"/caf\xc3\xa9/\xff/x");
        assert_eq!(v.get("QUERY_STRING").unwrap(), b"q=%C3%A9&a=b");
        assert_eq!(v.get("REQUEST_URI").unwrap(), b"/caf%C3%A9/%FF%2Fx?q=%C3%A9&a=b");
        assert_eq!(v.get("SCRIPT_NAME").unwrap(), b"");
    }

    #[test]
    fn repeated_headers_join_and_cookies_use_semicolons() {
        let v = vars(
            http::Request::get("/")
                .header("Accept", "text/html")
                .header("Accept", "application/json")
                .header("Cookie", "a=1")
                .header("Cookie", "b=2")
                .body(())
                .unwrap(),
        );
        assert_eq!(v.get("HTTP_ACCEPT").unwrap(), b"text/html, application/json");
        assert_eq!(v.get("HTTP_COOKIE").unwrap(), b"a=1; b=2");
    }

    #[test]
    fn underscored_headers_are_dropped_and_content_headers_unprefixed() {
        let v = vars(
            http::Request::post("/")
                .header("X-Forwarded-For", "10.0.0.1")
                .header("X_Forwarded_For", "6.6.6.6")
                .header("Content-Type", "text/plain")
                .header("Content-Length", "5")
                .body(())
                .unwrap(),
        );
        assert_eq!(v.get("HTTP_X_FORWARDED_FOR").unwrap(), b"10.0.0.1");
        assert_eq!(v.0.iter().filter(|(n, _)| n == "HTTP_X_FORWARDED_FOR").count(), 1);
        assert_eq!(v.get("CONTENT_TYPE").unwrap(), b"text/plain");
        assert_eq!(v.get("CONTENT_LENGTH").unwrap(), b"5");
        assert!(v.get("HTTP_CONTENT_TYPE").is_none() && v.get("HTTP_CONTENT_LENGTH").is_none());
    }

    /// uwsgi vars as the codec gives them.
    fn pairs(vars: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        vars.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
    }

    fn uwsgi(vars: &[(&str, &str)]) -> (CgiVars, &'static str) {
        from_uwsgi(pairs(vars), Some(conn())).unwrap()
    }

    #[test]
    fn uwsgi_without_uwsgi_params_is_filled_in_from_the_uri_and_host() {
        let (v, scheme) = uwsgi(&[("REQUEST_URI", "/caf%C3%A9/x?a=1"), ("HTTP_HOST", "example.org:8080")]);
        assert_eq!(scheme, "http");
        assert_eq!(v.get("REQUEST_METHOD").unwrap(), b"GET");
        assert_eq!(v.get("PATH_INFO").unwrap(), b"/caf\xc3\xa9/x");
        assert_eq!(v.get("QUERY_STRING").unwrap(), b"a=1");
        assert_eq!(v.get("SCRIPT_NAME").unwrap(), b"");
        assert_eq!((v.get("SERVER_NAME").unwrap(), v.get("SERVER_PORT").unwrap()), (&b"example.org"[..], &b"8080"[..]));
        assert_eq!(v.get("SERVER_PROTOCOL").unwrap(), b"HTTP/1.1");
        let (v, _) = uwsgi(&[]);
        assert_eq!((v.get("PATH_INFO").unwrap(), v.get("REQUEST_URI").unwrap()), (&b"/"[..], &b"/"[..]));
    }

    #[test]
    fn uwsgi_repeated_headers_join_and_content_headers_are_unprefixed() {
        let (v, _) = uwsgi(&[
            ("HTTP_ACCEPT", "a"),
            ("HTTP_COOKIE", "x=1"),
            ("HTTP_ACCEPT", "b"),
            ("HTTP_COOKIE", "y=2"),
            ("CONTENT_TYPE", ""),
            ("HTTP_CONTENT_TYPE", "text/plain"),
            ("CONTENT_LENGTH", "12"),
            ("HTTP_CONTENT_LENGTH", "12"),
        ]);
        assert_eq!(v.get("HTTP_ACCEPT").unwrap(), b"a, b");
        assert_eq!(v.get("HTTP_COOKIE").unwrap(), b"x=1; y=2");
        assert_eq!(v.get("CONTENT_TYPE").unwrap(), b"text/plain");
        assert_eq!(v.get("CONTENT_LENGTH").unwrap(), b"12");
        assert!(v.get("HTTP_CONTENT_TYPE").is_none() && v.get("HTTP_CONTENT_LENGTH").is_none());
        let bad = vec![(b"CONTENT_LENGTH".to_vec(), b"12x".to_vec())];
        assert!(from_uwsgi(bad, None).is_err());
    }

    #[test]
    fn uwsgi_hosts_and_paths_follow_the_http_rules() {
        let (v, _) = uwsgi(&[("HTTP_HOST", "Shop.Test."), ("PATH_INFO", "/x/../sub//y")]);
        assert_eq!((v.get("HTTP_HOST").unwrap(), v.get("PATH_INFO").unwrap()), (&b"shop.test"[..], &b"/sub/y"[..]));
        for bad in [
            &[("HTTP_HOST", "a.test"), ("HTTP_HOST", "x.b.test")][..],
            &[("HTTP_HOST", "evil.com/.b.test")],
            &[("HTTP_HOST", "a.test:1:2")],
            &[("SERVER_NAME", "a test")],
            &[("PATH_INFO", "/sub/../../etc")],
            &[("REQUEST_URI", "/sub%2F..%2F..%2Fetc")],
        ] {
            assert!(from_uwsgi(pairs(bad), None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn uwsgi_script_name_mounts_and_scheme_follows_https_vars() {
        let (v, _) = uwsgi(&[("SCRIPT_NAME", "/app/"), ("PATH_INFO", "/app/users/1"), ("REQUEST_URI", "/app/users/1")]);
        assert_eq!((v.get("SCRIPT_NAME").unwrap(), v.get("PATH_INFO").unwrap()), (&b"/app"[..], &b"/users/1"[..]));
        let (v, _) = uwsgi(&[("SCRIPT_NAME", "/app"), ("PATH_INFO", "/application")]);
        assert_eq!(v.get("PATH_INFO").unwrap(), b"/application");
        assert_eq!(uwsgi(&[("HTTPS", "on")]).1, "https");
        assert_eq!(uwsgi(&[("REQUEST_SCHEME", "https")]).1, "https");
        assert_eq!(uwsgi(&[("UWSGI_SCHEME", "https"), ("HTTPS", "off")]).1, "https");
        assert_eq!(uwsgi(&[("UWSGI_SCHEME", "http"), ("HTTPS", "on")]).1, "http");
    }

    #[test]
    fn server_name_comes_from_host_else_from_the_socket() {
        let v = vars(http::Request::get("/").header("Host", "example.org:8080").body(()).unwrap());
        assert_eq!((v.get("SERVER_NAME").unwrap(), v.get("SERVER_PORT").unwrap()), (&b"example.org"[..], &b"8080"[..]));
        let v = vars(http::Request::get("/").header("Host", "[::1]").body(()).unwrap());
        assert_eq!((v.get("SERVER_NAME").unwrap(), v.get("SERVER_PORT").unwrap()), (&b"::1"[..], &b"8000"[..]));
        // The name routing used: lowercase, no trailing dot; HTTP_HOST too.
        let v = vars(http::Request::get("/").header("Host", "Example.ORG.:81").body(()).unwrap());
        assert_eq!(
            (v.get("SERVER_NAME").unwrap(), v.get("HTTP_HOST").unwrap()),
            (&b"example.org"[..], &b"example.org:81"[..])
        );
        // An absolute-form target's authority replaces Host.
        let v = vars(http::Request::get("http://b.test/x").header("Host", "a.test").body(()).unwrap());
        assert_eq!((v.get("SERVER_NAME").unwrap(), v.get("HTTP_HOST").unwrap()), (&b"b.test"[..], &b"b.test"[..]));
        assert_eq!(v.get("PATH_INFO").unwrap(), b"/x");
        // HTTP/1.0 without a Host: the socket's address.
        let req = http::Request::get("/").version(http::Version::HTTP_10).body(()).unwrap();
        let v = from_http(&req.into_parts().0, conn()).unwrap();
        assert_eq!(v.get("SERVER_NAME").unwrap(), b"127.0.0.1");
        assert!(v.get("HTTP_HOST").is_none());
        assert_eq!(v.get("REMOTE_PORT").unwrap(), b"54321");
        assert_eq!(v.get("SERVER_PROTOCOL").unwrap(), b"HTTP/1.0");
        assert!(from_http(&http::Request::get("/").body(()).unwrap().into_parts().0, conn()).is_err());
    }
}
