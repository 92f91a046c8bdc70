//! HTTP/1.1 over hyper: keep-alive, pipelining, `Expect: 100-continue`.
//!
//! hyper owns the framing (Content-Length or chunked, no body for HEAD, 204
//! and 304, refusing malformed requests with a 400 and closing), behind
//! [`StrictLines`], which makes it refuse bare-LF line endings too; this file
//! maps its requests to [`WsgiRequest`]s and [`WsgiResponse`]s back.

use std::convert::Infallible;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::bare_lf::StrictLines;
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
    let max_body = dispatcher.limits().max_body_bytes;
    // hyper has already refused a malformed or conflicting Content-Length.
    let declared = parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(refused) = declared.and_then(|len| dispatcher.refuse_declared_body(len, &conn.peer)) {
        let mut resp = into_hyper(refused);
        // The body is still on its way: this connection cannot be reused.
        resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    let vars = environ::from_http(&parts, conn);
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    let request = WsgiRequest {
        target: parts.uri.path_and_query().map_or_else(|| parts.uri.to_string(), |pq| pq.to_string()),
        method: parts.method,
        url_scheme: "http",
        vars,
        // A chunked body has no declared length: it is cut at the limit.
        body: Limited::new(body, limit).boxed_unsync(),
    };
    into_hyper(dispatcher.dispatch(request).await)
}

fn into_hyper(resp: WsgiResponse) -> Response<ResponseBody> {
    let mut out = Response::new(resp.body);
    *out.status_mut() = resp.head.status;
    *out.headers_mut() = resp.head.headers;
    if let Some(reason) = resp.head.reason {
        if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason) {
            out.extensions_mut().insert(reason);
        }
    }
    out
}
