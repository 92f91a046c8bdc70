//! HTTP/1.1 over hyper: keep-alive, pipelining, `Expect: 100-continue`.
//!
//! hyper owns the framing (Content-Length or chunked, no body for HEAD, 204
//! and 304, refusing malformed requests with a 400 and closing), behind
//! [`StrictLines`], which makes it refuse bare-LF line endings too. What
//! hyper accepts but a front-line server should not ([`refuse_head`]: a
//! request target in the wrong form, CONNECT, both Content-Length and
//! Transfer-Encoding, an overlong request line or header field) is answered
//! here, before the app is called, and closes the connection. This file then
//! maps requests to [`WsgiRequest`]s and [`WsgiResponse`]s back.

use std::convert::Infallible;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use http::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::bare_lf::StrictLines;
use crate::config::ServerLimits;
use crate::wsgi::{environ, BodyAborted, ConnInfo, Dispatcher, ResponseBody, WsgiRequest, WsgiResponse};

/// Serves one HTTP/1.1 connection until the client closes it or `shutdown`
/// fires; on shutdown the request in flight finishes first.
pub async fn serve_connection(
    stream: TcpStream,
    conn: ConnInfo,
    dispatcher: Arc<Dispatcher>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let limits = dispatcher.limits().clone();
    let service = service_fn(move |req| {
        let dispatcher = Arc::clone(&dispatcher);
        async move { Ok::<_, Infallible>(handle(&dispatcher, conn, req).await) }
    });
    // hyper enforces the framing rules: it answers 400 to conflicting
    // Content-Length, a Transfer-Encoding other than chunked-last, bad chunk
    // sizes, whitespace before a colon or (with StrictLines) a bare LF, 431
    // past these header limits, and closes the connection after.
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        // A client may shut down its write side once its request is sent
        // (`nc -N`, many scripts and health checkers): it still gets the
        // response. Without this, hyper took the EOF for the end of the
        // connection and answered a chunked request with nothing.
        .half_close(true)
        // hyper writes header names lowercase; WSGI servers send them as
        // the app wrote them, and clients and tests match them literally.
        // hyper 1 cannot be handed the app's own case (the extension that
        // would carry it is private), so names go out in Title-Case, which
        // is what nearly every app writes. The uwsgi path sends the app's
        // exact bytes.
        .title_case_headers(true)
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .serve_connection(TokioIo::new(StrictLines::new(stream, limits.max_header_bytes, limits.max_headers)), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        if body_aborted(&err) {
            // A response cut short (the app failed, or broke its own
            // framing) ends in a reset, as on a uwsgi connection, so that no
            // client or proxy can take what arrived for a whole response.
            // SAFETY: `connection` still owns the stream, so `fd` is open and
            // is this connection's socket.
            super::reset(unsafe { BorrowedFd::borrow_raw(fd) }).await;
        }
        tracing::debug!(peer = %conn.peer, cause = %err, "connection ended with an error");
    }
}

/// Whether hyper gave up because the response body was aborted.
fn body_aborted(err: &hyper::Error) -> bool {
    std::iter::successors(std::error::Error::source(err), |e| e.source()).any(|e| e.is::<BodyAborted>())
}

async fn handle(dispatcher: &Dispatcher, conn: ConnInfo, req: Request<Incoming>) -> Response<ResponseBody> {
    let (parts, body) = req.into_parts();
    let vars = match refuse_head(&parts, dispatcher.limits()) {
        None => environ::from_http(&parts, conn).map_err(|why| (StatusCode::BAD_REQUEST, why)),
        Some(refused) => Err(refused),
    };
    let vars = match vars {
        Ok(vars) => vars,
        Err((status, why)) => return refuse(dispatcher, conn, &parts, status, why),
    };
    // hyper has already refused a malformed or conflicting Content-Length.
    let declared = parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let request = WsgiRequest {
        target: parts.uri.path_and_query().map_or_else(|| parts.uri.to_string(), |pq| pq.to_string()),
        method: parts.method,
        url_scheme: "http",
        vars,
        declared_length: declared,
        body: TrailersChecked(body).boxed_unsync(),
    };
    into_hyper(dispatcher.dispatch(request).await)
}

/// The host's own answer to a request it refuses before routing; the app is
/// never called, and the connection closes.
fn refuse(
    dispatcher: &Dispatcher,
    conn: ConnInfo,
    parts: &Parts,
    status: StatusCode,
    why: &str,
) -> Response<ResponseBody> {
    tracing::warn!(peer = %conn.peer, method = %parts.method, "refused a request: {why}");
    let limit = matches!(status, StatusCode::URI_TOO_LONG | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    dispatcher.refused(status, limit.then_some("header"));
    let mut resp = into_hyper(WsgiResponse::error(status));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut().insert(ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
    }
    // Whatever follows on this connection is not read as a request.
    resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Fields a sender must not put in a trailer section (RFC 9110 §6.5.1):
/// framing, routing, request modifiers, authentication and content
/// metadata. One of them in a request's trailers makes its body malformed.
const NOT_IN_TRAILERS: &[&str] = &[
    "authorization",
    "cache-control",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "expect",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "max-forwards",
    "pragma",
    "proxy-authorization",
    "range",
    "te",
    "trailer",
    "transfer-encoding",
];

/// A request body whose trailer section, if any, is checked against
/// [`NOT_IN_TRAILERS`]; the app sees a read error (and the client a 400)
/// for a forbidden one. Trailers are never passed to the app.
struct TrailersChecked(Incoming);

impl http_body::Body for TrailersChecked {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let frame = std::task::ready!(std::pin::Pin::new(&mut self.0).poll_frame(cx));
        if let Some(Ok(trailers)) = frame.as_ref().map(|f| f.as_ref().map(http_body::Frame::trailers_ref)) {
            let forbidden =
                trailers.into_iter().flat_map(HeaderMap::keys).find(|k| NOT_IN_TRAILERS.contains(&k.as_str()));
            if let Some(name) = forbidden {
                return std::task::Poll::Ready(Some(Err(format!("{name} is not allowed in a trailer").into())));
            }
        }
        std::task::Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

/// What a 405 to CONNECT offers instead: the methods an app may handle.
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// A request hyper accepted that this server refuses, decided from its head
/// alone: the status and the reason, for the log.
///
/// - RFC 9112 §3.2: the asterisk form is for OPTIONS only, the authority
///   form for CONNECT only.
/// - CONNECT asks for a tunnel, which a WSGI host never opens: 405, with
///   `Allow`, from the host (a 2xx from an app would make hyper treat the
///   connection as tunnelled).
/// - RFC 9112 §6.3: a message with both Content-Length and
///   Transfer-Encoding "ought to be handled as an error"; behind proxies
///   that may frame it the other way, it is one.
/// - `--max-request-line` (414) and `--max-header-field` (431).
pub fn refuse_head(parts: &Parts, limits: &ServerLimits) -> Option<(StatusCode, &'static str)> {
    let uri = &parts.uri;
    let asterisk = uri.scheme().is_none() && uri.authority().is_none() && uri.path() == "*";
    let authority_form = uri.scheme().is_none() && uri.authority().is_some();
    if parts.method == Method::CONNECT {
        return Some((StatusCode::METHOD_NOT_ALLOWED, "CONNECT: this server opens no tunnels"));
    }
    if asterisk && parts.method != Method::OPTIONS {
        return Some((StatusCode::BAD_REQUEST, "the asterisk form is for OPTIONS only"));
    }
    if authority_form {
        return Some((StatusCode::BAD_REQUEST, "the authority form is for CONNECT only"));
    }
    if parts.headers.contains_key(CONTENT_LENGTH) && parts.headers.contains_key(TRANSFER_ENCODING) {
        return Some((StatusCode::BAD_REQUEST, "both Content-Length and Transfer-Encoding"));
    }
    // METHOD SP request-target SP HTTP/1.1
    let target = uri
        .path_and_query()
        .filter(|_| uri.scheme().is_none())
        .map_or_else(|| uri.to_string().len(), |pq| pq.as_str().len());
    if parts.method.as_str().len() + target + 10 > limits.max_request_line {
        return Some((StatusCode::URI_TOO_LONG, "the request line is over --max-request-line"));
    }
    // name ": " value
    if parts.headers.iter().any(|(name, value)| name.as_str().len() + 2 + value.len() > limits.max_header_field) {
        return Some((StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "a header field is over --max-header-field"));
    }
    None
}

fn into_hyper(resp: WsgiResponse) -> Response<ResponseBody> {
    let mut out = Response::new(resp.body);
    *out.status_mut() = resp.head.status;
    *out.headers_mut() = resp.head.headers;
    if resp.close {
        out.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(reason) = resp.head.reason {
        if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason) {
            out.extensions_mut().insert(reason);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(request: http::request::Builder) -> Option<StatusCode> {
        let limits = crate::config::tests::server_limits();
        refuse_head(&request.body(()).unwrap().into_parts().0, &limits).map(|(status, _)| status)
    }

    #[test]
    fn heads_hyper_accepts_but_a_front_line_server_refuses() {
        let get = |uri: &str| http::Request::builder().method("GET").uri(uri);
        assert_eq!(refused(get("/a?b")), None);
        assert_eq!(refused(get("http://example.com/a")), None);
        assert_eq!(refused(get("*")), Some(StatusCode::BAD_REQUEST));
        assert_eq!(refused(http::Request::builder().method("OPTIONS").uri("*")), None);
        assert_eq!(refused(get("example.com:443")), Some(StatusCode::BAD_REQUEST));
        let connect = http::Request::builder().method("CONNECT").uri("example.com:443");
        assert_eq!(refused(connect), Some(StatusCode::METHOD_NOT_ALLOWED));
        let both = get("/").header("content-length", "1").header("transfer-encoding", "chunked");
        assert_eq!(refused(both), Some(StatusCode::BAD_REQUEST));
        // The limits in `config::tests::limits` are 8 KiB each.
        assert_eq!(refused(get(&format!("/{}", "a".repeat(8192)))), Some(StatusCode::URI_TOO_LONG));
        assert_eq!(refused(get(&format!("/{}", "a".repeat(8000)))), None);
        assert_eq!(
            refused(get("/").header("x-big", "b".repeat(8190))),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        assert_eq!(refused(get("/").header("x-big", "b".repeat(8000))), None);
    }
}
