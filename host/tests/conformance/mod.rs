//! HTTP/1.1 and uwsgi the way a hardened front-line server and a uWSGI
//! drop-in answer them (issue 16): half-closed clients, header case,
//! request-target forms, CL with TE, chunk lines, trailers, line limits.
//! A request refused from its head never reaches the app: no access line
//! names it, and nothing after it on the connection is answered.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use crate::common::{raw_exchange, read_reply, uwsgi_get, uwsgi_packet, End, Server};

const TIMEOUT: Duration = Duration::from_secs(30);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn server() -> Server {
    Server::start_with(crate::common::fixture(), &["--http", "127.0.0.1:0", "--uwsgi", "127.0.0.1:0"])
}

/// Sends `request`, then a pipelined `GET /counter?after=NAME`; the reply
/// must be exactly one response with `status`, and the pipelined request
/// must not have reached the app.
fn refused(server: &Server, name: &str, request: &[u8], status: &str) {
    let mut bytes = request.to_vec();
    bytes.extend_from_slice(format!("GET /counter?after={name} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    let reply = text(&raw_exchange(server.addr, &bytes, TIMEOUT));
    assert!(reply.starts_with(&format!("HTTP/1.1 {status}")), "{name}: {reply:?}");
    assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{name}: what followed was answered: {reply:?}");
    assert!(!server.log().contains(&format!("after={name}")), "{name}: the pipelined request ran");
}

#[test]
fn r16_a_half_closed_client_gets_its_whole_response() {
    // Issue 16.
    let server = server();
    for (name, request, body) in [
        ("get", &b"GET /list HTTP/1.1\r\nHost: t\r\n\r\n"[..], "abc\n"),
        ("length", b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello", "hello"),
        (
            "chunked",
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "hello",
        ),
        (
            "trailers",
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: 1\r\n\r\n",
            "hello",
        ),
    ] {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream.write_all(request).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let (reply, end) = read_reply(&mut stream, TIMEOUT);
        let reply = text(&reply);
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{name}: {reply:?}");
        assert!(reply.ends_with(body), "{name}: {reply:?}");
        assert_eq!(end, End::Eof, "{name}");
    }
    // A body cut short by the half-close is the client's error: 400.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let (reply, _) = read_reply(&mut stream, TIMEOUT);
    assert!(text(&reply).starts_with("HTTP/1.1 400 Bad Request\r\n"), "{}", text(&reply));
    assert!(server.wait_for_log("the client sent a bad request body", TIMEOUT), "{}", server.log());
    assert!(!server.log().contains("the app sent an invalid response"), "{}", server.log());
}

#[test]
fn r16_header_names_keep_the_apps_case() {
    let server = server();
    // uwsgi: the app's bytes exactly, in its order.
    let mut stream = TcpStream::connect(server.uwsgi_addr()).unwrap();
    stream.write_all(&uwsgi_get("/case", "")).unwrap();
    let (reply, _) = read_reply(&mut stream, TIMEOUT);
    let reply = text(&reply);
    let expected = "\r\nContent-Type: text/plain\r\nX-Forwarded-For: foo, bar, bazz\r\nX-XSS-Protection: 0\r\n\
                    ETag: \"v1\"\r\nx-lower: yes\r\n";
    assert!(reply.contains(expected), "{reply:?}");
    // HTTP: hyper 1 sends Title-Case (it cannot be handed the app's own).
    let reply =
        text(&raw_exchange(server.addr, b"GET /case HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", TIMEOUT));
    assert!(reply.contains("\r\nX-Forwarded-For: foo, bar, bazz\r\n"), "{reply:?}");
    assert!(
        reply.contains("\r\nContent-Type: text/plain\r\n") && reply.contains("\r\nContent-Length: 5\r\n"),
        "{reply:?}"
    );
}

#[test]
fn r16_request_targets_in_the_wrong_form_are_refused() {
    let server = server();
    refused(&server, "asterisk", b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", "400");
    refused(&server, "authority", b"GET example.com:443 HTTP/1.1\r\nHost: t\r\n\r\n", "400");
    // CONNECT: answered by the host, never a tunnel.
    refused(&server, "connect", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", "405");
    let reply =
        text(&raw_exchange(server.addr, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", TIMEOUT));
    assert!(reply.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{reply:?}");
    assert!(reply.contains("\r\nAllow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n"), "{reply:?}");
    // OPTIONS * is the asterisk form's one use: it reaches the app.
    let reply =
        text(&raw_exchange(server.addr, b"OPTIONS * HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", TIMEOUT));
    assert!(reply.starts_with("HTTP/1.1 404") && reply.ends_with("no such route\n"), "{reply:?}");
    assert!(server.wait_for_log("\"OPTIONS *\"", TIMEOUT), "{}", server.log());
}

#[test]
fn r16_content_length_with_transfer_encoding_is_refused() {
    let server = server();
    refused(
        &server,
        "clte",
        b"POST /echo?clte HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "400",
    );
    assert!(!server.log().contains("/echo?clte"), "{}", server.log());
}

#[test]
fn r16_chunk_lines_and_trailers_are_checked() {
    let server = server();
    let post = |chunks: &str| {
        let request = format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunks}"
        );
        text(&raw_exchange(server.addr, request.as_bytes(), TIMEOUT))
    };
    // Whitespace after the size with no extension. (The app has been called
    // by then, as for any chunked body: it streams; its read fails.)
    for chunks in ["5 \r\nhello\r\n0\r\n\r\n", "5\r\nhello\r\n0 \r\n\r\n", "0\t\r\n\r\n"] {
        let reply = post(chunks);
        assert!(reply.starts_with("HTTP/1.1 400"), "{chunks:?}: {reply:?}");
    }
    // Uppercase hex, whitespace before an extension, a quoted extension.
    for chunks in [
        "A\r\n0123456789\r\n0\r\n\r\n",
        "A ;x=1\r\n0123456789\r\n0\r\n\r\n",
        "A;n=\"a b;c\"\r\n0123456789\r\n0\r\n\r\n",
    ] {
        let reply = post(chunks);
        assert!(reply.starts_with("HTTP/1.1 200") && reply.ends_with("0123456789"), "{chunks:?}: {reply:?}");
    }
    // Fields a trailer must not carry; an ordinary one is fine.
    for field in
        ["Content-Length: 5", "Transfer-Encoding: chunked", "Host: evil", "Authorization: x", "Content-Type: a/b"]
    {
        let reply = post(&format!("5\r\nhello\r\n0\r\n{field}\r\n\r\n"));
        assert!(reply.starts_with("HTTP/1.1 400"), "{field}: {reply:?}");
    }
    assert!(post("5\r\nhello\r\n0\r\nX-Checksum: 1\r\n\r\n").ends_with("hello"));
}

#[test]
fn r16_a_long_request_line_or_header_field_is_refused_on_both_listeners() {
    let server = server();
    let long = "a".repeat(10 * 1024);
    refused(&server, "line", format!("GET /{long} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(), "414");
    let field = "b".repeat(9 * 1024);
    refused(&server, "field", format!("GET /list HTTP/1.1\r\nHost: t\r\nX-Big: {field}\r\n\r\n").as_bytes(), "431");
    // Just under the limits (8 KiB): served.
    let ok = format!(
        "GET /list?{} HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "c".repeat(8000),
        "d".repeat(8000)
    );
    assert!(text(&raw_exchange(server.addr, ok.as_bytes(), TIMEOUT)).starts_with("HTTP/1.1 200"));
    // The same limits over uwsgi.
    let uwsgi = |packet: Vec<u8>| {
        let mut stream = TcpStream::connect(server.uwsgi_addr()).unwrap();
        stream.write_all(&packet).unwrap();
        text(&read_reply(&mut stream, TIMEOUT).0)
    };
    let uri = format!("/{long}");
    let reply = uwsgi(uwsgi_packet(&[("REQUEST_METHOD", "GET"), ("REQUEST_URI", &uri), ("PATH_INFO", &uri)]));
    assert!(reply.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{reply:?}");
    let reply = uwsgi(uwsgi_packet(&[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/list"), ("HTTP_X_BIG", &field)]));
    assert!(reply.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{reply:?}");
    assert!(!server.log().contains(&long[..100]), "a refused request reached the app");
}
