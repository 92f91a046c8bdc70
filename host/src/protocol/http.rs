//! HTTP/1.1 over hyper: keep-alive, pipelining, `Expect: 100-continue`.
//!
//! hyper owns the framing (Content-Length or chunked, no body for HEAD, 204
//! and 304, refusing malformed requests with a 400 and closing); this file
//! maps its requests to [`WsgiRequest`]s and [`WsgiResponse`]s back.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::sandbox::BoxError;
use crate::wsgi::{environ, ConnInfo, Dispatcher, ResponseBody, WsgiRequest, WsgiResponse};

/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one HTTP/1.1 connection until the client closes it or `shutdown`
/// fires; on shutdown the request in flight finishes first.
pub async fn serve_connection(
    stream: TcpStream,
    conn: ConnInfo,
    dispatcher: Arc<Dispatcher>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| {
        let dispatcher = Arc::clone(&dispatcher);
        async move { Ok::<_, Infallible>(handle(&dispatcher, conn, req).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(peer = %conn.peer, cause = %err, "connection ended with an error");
    }
}

async fn handle(dispatcher: &Dispatcher, conn: ConnInfo, req: Request<Incoming>) -> Response<ResponseBody> {
    let (parts, body) = req.into_parts();
    let vars = environ::from_http(&parts, conn);
    let request = WsgiRequest {
        target: parts.uri.path_and_query().map_or_else(|| parts.uri.to_string(), |pq| pq.to_string()),
        method: parts.method,
        url_scheme: "http",
        vars,
        body: body.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
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
