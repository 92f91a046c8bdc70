//! The status listener (`--metrics ADDR`): `/metrics` for Prometheus, and
//! the probes orchestrators and balancers ask, `/healthz` (alive) and
//! `/readyz` (send traffic). It is a listener of its own, never an app's,
//! since apps own every path on theirs.
//!
//! It is bound before the apps load, so that a probe can tell starting from
//! dead, and it answers until the process exits, so that it can tell
//! draining from gone.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::health::Health;
use crate::metrics::Metrics;

/// Serves the status paths on `listener`, for as long as the runtime runs.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, health: Arc<Health>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(cause = %err, "status listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, health) = (Arc::clone(&metrics), Arc::clone(&health));
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let response = answer(req.method(), req.uri().path(), &metrics, &health);
            async move { Ok::<_, std::convert::Infallible>(response) }
        });
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

/// The response to one request for `path`.
fn answer(method: &Method, path: &str, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .header("cache-control", "no-store")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    if method != Method::GET && method != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        resp.headers_mut().insert("allow", hyper::header::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match path {
        "/metrics" => Response::builder()
            .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(Full::new(Bytes::from(metrics.encode())))
            .expect("a valid response"),
        // Whoever answers is alive: a wedged runtime does not answer.
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match health.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        _ => text(StatusCode::NOT_FOUND, "not found: /metrics, /healthz and /readyz are served here\n".into()),
    }
}
