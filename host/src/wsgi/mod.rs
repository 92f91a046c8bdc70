//! The protocol-neutral middle: one request in, one response out.
//!
//! Every listener turns its wire format into a [`WsgiRequest`] and hands it
//! to [`Dispatcher::dispatch`], which runs the app in a fresh sandbox on a
//! task of its own and returns as soon as the app has produced its head. The
//! body then streams from the still-running guest through a bounded channel,
//! so a chunk the app yields reaches the client while the app goes on, and a
//! slow client slows the app down instead of filling memory.

pub mod environ;
pub mod response;
pub mod target;

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

pub use self::environ::{CgiVars, ConnInfo};
pub use self::response::ResponseHead;
use crate::config::ServerLimits;
use crate::error::{error_body, SandboxError};
use crate::logging::{quote_inner, ACCESS};
use crate::sandbox::{GuestIo, GuestRequest, HeadAccepted, HeadHandler, HeadRefused, RequestBody, Sandbox};
use crate::tenants::Tenants;

/// Body chunks buffered between a running guest and its client.
const CHUNKS_IN_FLIGHT: usize = 4;

/// A request as every protocol hands it over.
pub struct WsgiRequest {
    pub method: Method,
    /// The request target as received, for the access log.
    pub target: String,
    pub url_scheme: &'static str,
    pub vars: CgiVars,
    /// The body's declared length (`Content-Length`), if any.
    pub declared_length: Option<u64>,
    pub body: RequestBody,
}

/// A response head plus its body.
pub struct WsgiResponse {
    pub head: ResponseHead,
    pub body: ResponseBody,
    /// The connection must close after it (an HTTP listener says so).
    pub close: bool,
}

impl WsgiResponse {
    /// A short fixed response for an error status; no guest output in it.
    pub fn error(status: StatusCode) -> Self {
        let body = Bytes::from(error_body(status));
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        Self {
            head: ResponseHead {
                status,
                reason: None,
                headers,
                bodyless: false,
                length: Some(body.len() as u64),
                spelled: Vec::new(),
            },
            body: ResponseBody(Kind::Full(Some(body))),
            close: false,
        }
    }
}

/// The guest failed after its head went out: the connection must be cut so
/// the client cannot take a truncated body for a whole one.
#[derive(Debug, thiserror::Error)]
#[error("the response was aborted after its headers were sent")]
pub struct BodyAborted;

/// A response body: fixed, empty, or streamed from a running guest.
pub struct ResponseBody(Kind);

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Stream {
        chunks: mpsc::Receiver<Bytes>,
        /// Resolves to whether the guest finished cleanly, once it has.
        outcome: oneshot::Receiver<bool>,
    },
    /// The guest failed mid-body; the error comes on the next poll, after
    /// the server has flushed what was already sent.
    Aborting,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyAborted;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyAborted>>> {
        match &mut self.0 {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Stream { chunks, outcome } => {
                if let Some(chunk) = std::task::ready!(chunks.poll_recv(cx)) {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                // The guest is gone; did it finish, or was it cut short?
                match std::task::ready!(Pin::new(outcome).poll(cx)) {
                    Ok(true) => {
                        self.0 = Kind::Empty;
                        Poll::Ready(None)
                    }
                    Ok(false) | Err(_) => {
                        // hyper drops its unflushed output with the error:
                        // let it flush the chunks before this one first.
                        self.0 = Kind::Aborting;
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                }
            }
            Kind::Aborting => {
                self.0 = Kind::Empty;
                Poll::Ready(Some(Err(BodyAborted)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.0, Kind::Empty | Kind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Empty | Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Kind::Stream { .. } | Kind::Aborting => SizeHint::default(),
        }
    }
}

/// Routes requests to apps and runs them in sandboxes; shared by every
/// listener.
pub struct Dispatcher {
    tenants: Arc<Tenants>,
    /// The connection-level limits, the same for every app.
    server: ServerLimits,
    /// Every sandbox task, so that shutdown can wait for them.
    tasks: TaskTracker,
    next_id: AtomicU64,
    /// Add `Server-Timing` and a timing breakdown to the access log.
    timing: bool,
}

impl Dispatcher {
    pub fn new(tenants: Arc<Tenants>, server: ServerLimits, tasks: TaskTracker, timing: bool) -> Self {
        Self { tenants, server, tasks, next_id: AtomicU64::new(1), timing }
    }

    /// The limits every listener enforces before a request is routed.
    pub fn limits(&self) -> &ServerLimits {
        &self.server
    }

    /// Counts a request the listener answered itself, before routing, and
    /// the limit it hit, if one.
    pub fn refused(&self, status: StatusCode, limit: Option<&str>) {
        if let Some(m) = self.tenants.unrouted() {
            m.refused(status.as_u16(), limit);
        }
    }

    /// The server's metrics, with `--metrics`.
    pub fn metrics(&self) -> Option<&Arc<crate::metrics::Metrics>> {
        self.tenants.metrics()
    }

    /// The app for a request, by `UWSGI_APPID` or by host and path; moves
    /// its prefix from `PATH_INFO` to the end of `SCRIPT_NAME`, as uWSGI's
    /// `mount` with `manage-script-name` does.
    fn route(&self, vars: &mut CgiVars) -> Option<Arc<Sandbox>> {
        let host = vars.get("HTTP_HOST").or_else(|| vars.get("SERVER_NAME"));
        let path = vars.get("PATH_INFO").unwrap_or_default();
        let (sandbox, prefix) = self.tenants.route(vars.get("UWSGI_APPID"), host, path)?;
        if !prefix.is_empty() && crate::router::under(path, &prefix) {
            let rest = path[prefix.len()..].to_vec();
            let mut script = vars.get("SCRIPT_NAME").unwrap_or_default().to_vec();
            script.extend_from_slice(prefix.as_bytes());
            vars.set("SCRIPT_NAME", script);
            vars.set("PATH_INFO", rest);
        }
        Some(sandbox)
    }

    /// The 404 for a request no app is mounted for: no sandbox is started.
    fn no_app(&self, req: &WsgiRequest, req_id: u64) -> WsgiResponse {
        let host = req.vars.get("HTTP_HOST").or_else(|| req.vars.get("SERVER_NAME")).unwrap_or_default();
        let appid = req.vars.get("UWSGI_APPID").map(String::from_utf8_lossy);
        let response = WsgiResponse::error(StatusCode::NOT_FOUND);
        let bytes = error_body(StatusCode::NOT_FOUND).len();
        // The host and the target are the client's words: a text field is
        // quoted, and the target escaped inside the message's quotes.
        tracing::info!(
            target: ACCESS,
            req_id,
            app = %"-",
            status = 404,
            host = &*String::from_utf8_lossy(host),
            appid = appid.as_deref(),
            "\"{} {}\" 404 {bytes} no app is mounted for this host and path",
            req.method,
            quote_inner(&req.target)
        );
        self.refused(StatusCode::NOT_FOUND, None);
        response
    }

    /// The 413 for a request body declared larger than the app's
    /// `max_body_bytes`, decided before any of it is read.
    fn refuse_declared_body(sandbox: &Sandbox, declared: u64, req_id: u64) -> Option<WsgiResponse> {
        let max_body = sandbox.limits().max_body_bytes;
        if declared <= max_body {
            return None;
        }
        tracing::warn!(req_id, app = %sandbox.name(), declared, max_body, "refused a request body over the limit");
        if let Some(m) = sandbox.metrics() {
            m.refused(StatusCode::PAYLOAD_TOO_LARGE.as_u16(), Some("body"));
        }
        let mut response = WsgiResponse::error(StatusCode::PAYLOAD_TOO_LARGE);
        // The body is still on its way: the connection cannot be reused.
        response.close = true;
        Some(response)
    }

    /// Routes `req` to its app and runs it in a fresh sandbox; returns once
    /// the head is known.
    pub async fn dispatch(&self, mut req: WsgiRequest) -> WsgiResponse {
        let req_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let Some(sandbox) = self.route(&mut req.vars) else {
            return self.no_app(&req, req_id);
        };
        if let Some(refused) = req.declared_length.and_then(|len| Self::refuse_declared_body(&sandbox, len, req_id)) {
            return refused;
        }
        let limit = usize::try_from(sandbox.limits().max_body_bytes).unwrap_or(usize::MAX);
        // A chunked body has no declared length: it is cut at the limit.
        let body = Limited::new(req.body, limit).boxed_unsync();
        let started = Instant::now();
        let (head_tx, head_rx) = oneshot::channel();
        let (chunk_tx, chunk_rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let (outcome_tx, outcome_rx) = oneshot::channel();
        let status = Arc::new(AtomicU16::new(0));
        let timing = self.timing;

        let on_head: HeadHandler = {
            let method = req.method.clone();
            let status = Arc::clone(&status);
            Box::new(move |raw| {
                let mut head = response::validate(&raw, &method).map_err(HeadRefused::Invalid)?;
                if timing {
                    head.headers.insert("server-timing", server_timing(&raw.timing));
                }
                let accepted = HeadAccepted { discard_body: head.bodyless, length: head.length };
                status.store(head.status.as_u16(), Ordering::Relaxed);
                head_tx.send(head).map_err(|_| HeadRefused::ClientGone)?;
                Ok(accepted)
            })
        };
        let guest_req = GuestRequest { req_id, url_scheme: req.url_scheme, environ: req.vars.into_native() };
        let io = GuestIo { body, on_head, chunks: chunk_tx };
        let (method, target) = (req.method, req.target);
        let task = self.tasks.spawn(async move {
            let result = match Arc::clone(&sandbox).run(guest_req, io).await {
                Ok(stats) if !stats.head_sent => {
                    Err(SandboxError::GuestProtocol("the app finished without sending a response".into()))
                }
                other => other,
            };
            let _ = outcome_tx.send(result.is_ok());
            let (code, bytes) = match &result {
                Ok(stats) => (status.load(Ordering::Relaxed), stats.body_bytes),
                Err(err) => {
                    log_failure(req_id, err);
                    match status.load(Ordering::Relaxed) {
                        0 => (err.status().as_u16(), error_body(err.status()).len() as u64),
                        sent => (sent, 0),
                    }
                }
            };
            if let Some(m) = sandbox.metrics() {
                m.request(code, started.elapsed());
                if let Err(err) = &result {
                    err.limit().into_iter().for_each(|limit| m.limit(limit));
                    err.guest_error_kind().into_iter().for_each(|kind| m.guest_error(kind));
                }
            }
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
            let total = ms(started.elapsed());
            // What the request cost, as fields (one JSON key each with
            // --log-format json); a failed run has no stats: zeros, and no
            // app_ms.
            let stats = result.as_ref().ok();
            let app = sandbox.name();
            let bytes_in = stats.map_or(0, |s| s.bytes_in);
            let peak_memory = stats.map_or(0, |s| s.peak_memory);
            // Milliseconds to two places, as numbers (JSON numbers too).
            let ms2 = |d: std::time::Duration| (ms(d) * 100.0).round() / 100.0;
            let app_ms = stats.map(|s| ms2(s.timing.app));
            let fuel = stats.and_then(|s| s.fuel);
            // The host's key derivation for the app, when it did any.
            let kdf_ms = stats.filter(|s| !s.kdf.is_zero()).map(|s| ms2(s.kdf));
            let tls_ms = stats.filter(|s| !s.tls.is_zero()).map(|s| ms2(s.tls));
            // The host's own phases, with --timing.
            let t = stats.filter(|_| timing).map(|s| s.timing);
            tracing::info!(
                target: ACCESS,
                req_id,
                app = %app,
                status = code,
                bytes_in,
                bytes_out = bytes,
                peak_memory,
                app_ms,
                fuel,
                kdf_ms,
                tls_ms,
                queue_ms = t.map(|t| ms2(t.queue)),
                instantiate_ms = t.map(|t| ms2(t.instantiate)),
                teardown_ms = t.map(|t| ms2(t.teardown)),
                "\"{method} {}\" {code} {bytes} {total:.1}ms",
                quote_inner(&target)
            );
            result
        });

        match head_rx.await {
            Ok(head) => {
                let body =
                    if head.bodyless { Kind::Empty } else { Kind::Stream { chunks: chunk_rx, outcome: outcome_rx } };
                WsgiResponse { head, body: ResponseBody(body), close: false }
            }
            // The run ended without a head: it failed, and the task knows how.
            Err(_) => {
                // No body will be read: a guest still writing must not wait
                // for room in the channel.
                drop(chunk_rx);
                match task.await {
                    Ok(Err(err)) => WsgiResponse::error(err.status()),
                    Ok(Ok(_)) | Err(_) => WsgiResponse::error(StatusCode::INTERNAL_SERVER_ERROR),
                }
            }
        }
    }
}

/// A `Server-Timing` value: milliseconds per phase until the head was sent.
fn server_timing(t: &crate::sandbox::Timing) -> HeaderValue {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let value =
        format!("queue;dur={:.3}, instantiate;dur={:.3}, app;dur={:.3}", ms(t.queue), ms(t.instantiate), ms(t.app));
    HeaderValue::from_str(&value).expect("digits, letters and punctuation only")
}

fn log_failure(req_id: u64, err: &SandboxError) {
    match err {
        SandboxError::ClientGone(_) | SandboxError::BadBody(_) => tracing::info!(req_id, "{err}"),
        SandboxError::Overloaded(_) => tracing::warn!(req_id, "{err}"),
        _ => tracing::error!(req_id, "{err}"),
    }
}
