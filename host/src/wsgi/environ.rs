//! Pure functions from a request's parts to its CGI variables (PEP 3333).
//!
//! Values are raw bytes; the guest decodes them as latin-1, so a path with
//! bytes that are not UTF-8 reaches the app as PEP 3333 prescribes.

use std::net::SocketAddr;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST};
use http::request::Parts;

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
/// - `SERVER_NAME`/`SERVER_PORT` come from the Host header if there is one,
///   else from the address the connection arrived on.
pub fn from_http(parts: &Parts, conn: ConnInfo) -> CgiVars {
    let mut vars = CgiVars::default();
    vars.push("REQUEST_METHOD", parts.method.as_str());
    vars.push("SCRIPT_NAME", "");
    vars.push("PATH_INFO", percent_encoding::percent_decode_str(parts.uri.path()).collect::<Vec<u8>>());
    vars.push("QUERY_STRING", parts.uri.query().unwrap_or(""));
    vars.push("REQUEST_URI", parts.uri.path_and_query().map_or("/", |pq| pq.as_str()));
    vars.push("RAW_URI", parts.uri.path_and_query().map_or("/", |pq| pq.as_str()));
    vars.push("SERVER_PROTOCOL", format!("{:?}", parts.version));

    let (name, port) = server_name(parts, conn.local);
    vars.push("SERVER_NAME", name);
    vars.push("SERVER_PORT", port);
    vars.push("REMOTE_ADDR", conn.peer.ip().to_string());
    vars.push("REMOTE_PORT", conn.peer.port().to_string());

    for (key, header) in [("CONTENT_TYPE", CONTENT_TYPE), ("CONTENT_LENGTH", CONTENT_LENGTH)] {
        if let Some(v) = parts.headers.get(&header) {
            vars.push(key, v.as_bytes());
        }
    }
    for name in parts.headers.keys() {
        if name == CONTENT_TYPE || name == CONTENT_LENGTH || name.as_str().contains('_') {
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
    vars
}

/// `x-forwarded-for` → `HTTP_X_FORWARDED_FOR`.
fn cgi_name(header: &str) -> String {
    let mut out = String::with_capacity(5 + header.len());
    out.push_str("HTTP_");
    out.extend(header.chars().map(|c| if c == '-' { '_' } else { c.to_ascii_uppercase() }));
    out
}

fn server_name(parts: &Parts, local: SocketAddr) -> (String, String) {
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| parts.headers.get(HOST).and_then(|h| h.to_str().ok()).map(str::to_owned));
    if let Some(auth) = authority.filter(|a| !a.is_empty()) {
        if let Ok(parsed) = auth.parse::<http::uri::Authority>() {
            let port = parsed.port_u16().unwrap_or(local.port());
            let host = parsed.host().trim_start_matches('[').trim_end_matches(']');
            return (host.to_owned(), port.to_string());
        }
    }
    (local.ip().to_string(), local.port().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> ConnInfo {
        ConnInfo { local: "127.0.0.1:8000".parse().unwrap(), peer: "127.0.0.1:54321".parse().unwrap() }
    }

    fn vars(req: http::Request<()>) -> CgiVars {
        from_http(&req.into_parts().0, conn())
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

    #[test]
    fn server_name_comes_from_host_else_from_the_socket() {
        let v = vars(http::Request::get("/").header("Host", "example.org:8080").body(()).unwrap());
        assert_eq!((v.get("SERVER_NAME").unwrap(), v.get("SERVER_PORT").unwrap()), (&b"example.org"[..], &b"8080"[..]));
        let v = vars(http::Request::get("/").header("Host", "[::1]").body(()).unwrap());
        assert_eq!((v.get("SERVER_NAME").unwrap(), v.get("SERVER_PORT").unwrap()), (&b"::1"[..], &b"8000"[..]));
        let v = vars(http::Request::get("/").body(()).unwrap());
        assert_eq!(v.get("SERVER_NAME").unwrap(), b"127.0.0.1");
        assert_eq!(v.get("REMOTE_PORT").unwrap(), b"54321");
        assert_eq!(v.get("SERVER_PROTOCOL").unwrap(), b"HTTP/1.1");
    }
}
