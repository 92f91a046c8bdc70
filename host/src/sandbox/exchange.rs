//! The host imports of our own WIT world, which carry one request through
//! the sandbox's wall: `read-body` (the request body in), `start-response`
//! and `write-body` (the response out), and `log-error` (`wsgi.errors`).
//!
//! The framing rules live here, next to the calls they bind:
//! - the head goes out once, and only through the `wsgi` layer's
//!   [`HeadHandler`], which validates it;
//! - no body byte is written before the head, or past the length the head
//!   declares (on a uwsgi connection it would be read as the start of
//!   another response), and a body shorter than declared fails the request;
//! - the response is cut at `--max-response-bytes`;
//! - reading the body waits at most `--body-timeout` for each piece.
//!
//! The first thing the host sees go wrong is recorded as a [`Fault`], which
//! names the request's failure however the guest reacts to the error it is
//! handed.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use wasmtime::component::{Linker, WasmStr};

use super::{HostState, RunStats, Timing};
use crate::bindings::{self, Header};
use crate::error::BoxError;

/// The request body, whatever protocol it came from.
pub type RequestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// The status line and headers the guest sent, not yet validated.
#[derive(Debug)]
pub struct RawHead {
    pub status: Vec<u8>,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// `Some(len)` when the guest sent the whole body with the head.
    pub complete_len: Option<u64>,
    /// Where the time went until the head was sent (`app` so far).
    pub timing: Timing,
}

/// What the response side decided about a head the guest sent.
#[derive(Debug, Clone, Copy)]
pub struct HeadAccepted {
    /// The response carries no body (HEAD, 204, 304): drop what the app writes.
    pub discard_body: bool,
    /// The body's length as the head declares it: the guest must send
    /// exactly this many bytes. Past it the body is cut and the request
    /// fails; short of it, the request fails when the guest returns.
    pub length: Option<u64>,
}

/// Why a head did not go out.
#[derive(Debug)]
pub enum HeadRefused {
    /// The head breaks the protocol; the message says how.
    Invalid(String),
    /// Nobody is left to send it to.
    ClientGone,
}

/// Validates a head and passes it on.
pub type HeadHandler = Box<dyn FnOnce(RawHead) -> Result<HeadAccepted, HeadRefused> + Send>;

/// Body chunks on their way to the client.
pub type ChunkSender = mpsc::Sender<Bytes>;

/// The request's side of the boundary: where the guest reads and writes.
pub struct GuestIo {
    pub body: RequestBody,
    pub on_head: HeadHandler,
    pub chunks: ChunkSender,
}

/// What the host saw go wrong during a request, as opposed to what the
/// guest raised about it afterwards.
#[derive(Debug)]
pub enum Fault {
    /// The response side refused what the guest sent.
    Protocol(String),
    /// The client is gone.
    ClientGone(String),
    /// The request body ended early or was malformed.
    BadBody(String),
    BodyTooLarge,
    BodyTimeout,
    ResponseTooLarge,
}

/// Where the response head is.
enum HeadState {
    /// `start-response` has not been called.
    Waiting,
    /// It has; a second call is a protocol error.
    Sent,
}

/// One request's side of the `host` interface: the body coming in, the
/// response going out, and what the access log reports of both.
pub struct Exchange {
    /// The request body and where the response goes.
    io: GuestIo,
    /// Request body bytes received but not yet handed to the guest.
    pending: Bytes,
    /// Set when the head was for a response without a body.
    discard_body: bool,
    /// The body length the accepted head declares, if it declares one.
    length: Option<u64>,
    /// Whether `start-response` was called.
    head: HeadState,
    /// What the access log reports (body bytes each way, whether a head went).
    pub stats: RunStats,
    /// The first thing the host saw go wrong, if anything did.
    pub fault: Option<Fault>,
    /// Queue wait and instantiation, known once `handle` starts.
    pub timing: Timing,
    /// When `handle` was called.
    pub app_started: Instant,
    /// `--body-timeout`.
    body_timeout: Duration,
    /// `--max-response-bytes`.
    max_response_bytes: u64,
    /// For log lines.
    req_id: u64,
}

impl Exchange {
    /// A request's exchange, before the guest has called anything.
    pub fn new(io: GuestIo, body_timeout: Duration, max_response_bytes: u64, req_id: u64) -> Self {
        Self {
            io,
            pending: Bytes::new(),
            discard_body: false,
            length: None,
            head: HeadState::Waiting,
            stats: RunStats::default(),
            fault: None,
            timing: Timing::default(),
            app_started: Instant::now(),
            body_timeout,
            max_response_bytes,
            req_id,
        }
    }

    /// Records `fault` (unless an earlier one is known) and returns `msg`
    /// for the guest.
    fn fail(&mut self, fault: Fault, msg: &str) -> String {
        self.fault.get_or_insert(fault);
        msg.to_owned()
    }

    /// Once the guest has returned: records a fault if it sent less of the
    /// body than its head declared.
    pub fn check_body_length(&mut self) {
        let Some(declared) = self.length.filter(|_| !self.discard_body) else { return };
        let sent = self.stats.body_bytes;
        if sent < declared {
            let msg = format!("the body ended after {sent} of the {declared} bytes its Content-Length declares");
            self.fail(Fault::Protocol(msg.clone()), &msg);
        }
    }

    async fn send(&mut self, chunk: Vec<u8>) -> Result<(), String> {
        // After a refusal nothing more goes out (and nothing waits for room
        // in a channel that no client will drain).
        if self.fault.is_some() {
            return Err("the request has already failed".into());
        }
        if self.discard_body || chunk.is_empty() {
            return Ok(());
        }
        let mut chunk = Bytes::from(chunk);
        // Bytes past the declared length are never sent: on a uwsgi
        // connection they would be read as the start of another response.
        let mut overrun = 0;
        if let Some(declared) = self.length {
            let room = declared - self.stats.body_bytes;
            if chunk.len() as u64 > room {
                overrun = chunk.len() as u64 - room;
                chunk.truncate(room as usize);
            }
        }
        let len = chunk.len() as u64;
        if self.stats.body_bytes + len > self.max_response_bytes {
            tracing::error!(
                req_id = self.req_id,
                limit = self.max_response_bytes,
                "response too large; cutting it off"
            );
            return Err(self.fail(Fault::ResponseTooLarge, "the response exceeds the server's limit"));
        }
        if len > 0 && self.io.chunks.send(chunk).await.is_err() {
            return Err(self.fail(Fault::ClientGone("the client closed the connection".into()), "the client went away"));
        }
        self.stats.body_bytes += len;
        if overrun > 0 {
            let msg = format!(
                "the body ran {overrun} bytes past the {} bytes its Content-Length declares; cut there",
                self.stats.body_bytes
            );
            return Err(self.fail(Fault::Protocol(msg.clone()), &msg));
        }
        Ok(())
    }
}

impl bindings::Host for Exchange {
    async fn read_body(&mut self, max_bytes: u32) -> wasmtime::Result<Result<Vec<u8>, String>> {
        let max = max_bytes.max(1) as usize;
        while self.pending.is_empty() {
            let Ok(frame) = tokio::time::timeout(self.body_timeout, self.io.body.frame()).await else {
                return Ok(Err(self.fail(Fault::BodyTimeout, "timed out waiting for the request body")));
            };
            match frame {
                None => return Ok(Ok(Vec::new())),
                Some(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
                    return Ok(Err(self.fail(Fault::BodyTooLarge, "the request body is too large")));
                }
                Some(Err(err)) if connection_lost(&*err) => {
                    let why = format!("reading the request body failed: {err}");
                    return Ok(Err(self.fail(Fault::ClientGone(why.clone()), &why)));
                }
                // Cut short (the client closed its side mid-body) or badly
                // framed: the client's fault, and it may still be reading.
                Some(Err(err)) => {
                    let why = format!("the request body is incomplete or malformed: {err}");
                    return Ok(Err(self.fail(Fault::BadBody(why.clone()), &why)));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.pending = data;
                    }
                }
            }
        }
        let n = max.min(self.pending.len());
        self.stats.bytes_in += n as u64;
        Ok(Ok(self.pending.split_to(n).to_vec()))
    }

    async fn start_response(
        &mut self,
        status: Vec<u8>,
        headers: Vec<Header>,
        body: Vec<u8>,
        complete: bool,
    ) -> wasmtime::Result<Result<(), String>> {
        if matches!(self.head, HeadState::Sent) {
            let msg = "start-response called twice";
            return Ok(Err(self.fail(Fault::Protocol(msg.into()), msg)));
        }
        // After a refused call (a write before the head, say), the request
        // has failed: its head must not go out either.
        if self.fault.is_some() {
            return Ok(Err("the request has already failed".into()));
        }
        self.head = HeadState::Sent;
        let raw = RawHead {
            status,
            headers: headers.into_iter().map(|h| (h.name, h.value)).collect(),
            complete_len: complete.then_some(body.len() as u64),
            timing: Timing { app: self.app_started.elapsed(), ..self.timing },
        };
        let on_head = std::mem::replace(&mut self.io.on_head, Box::new(|_| Err(HeadRefused::ClientGone)));
        match on_head(raw) {
            Ok(accepted) => {
                self.discard_body = accepted.discard_body;
                self.length = accepted.length;
                self.stats.head_sent = true;
                Ok(self.send(body).await)
            }
            Err(HeadRefused::Invalid(msg)) => {
                tracing::error!(req_id = self.req_id, "refused the app's response head: {msg}");
                Ok(Err(self.fail(Fault::Protocol(msg.clone()), &msg)))
            }
            Err(HeadRefused::ClientGone) => {
                let why = "the client closed the connection before the response".to_owned();
                Ok(Err(self.fail(Fault::ClientGone(why), "the client went away")))
            }
        }
    }

    async fn write_body(&mut self, chunk: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        if !matches!(self.head, HeadState::Sent) {
            let msg = "write-body before start-response";
            return Ok(Err(self.fail(Fault::Protocol(msg.into()), msg)));
        }
        Ok(self.send(chunk).await)
    }
}

/// Whether a body error is the connection itself failing (a reset), rather
/// than a body that ended early or was malformed.
fn connection_lost(err: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    std::iter::successors(Some(err), |e| e.source())
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe))
}

/// Adds the `host` and `log` interfaces to `linker`.
///
/// `log` is defined by hand rather than generated: the generated binding
/// would copy the whole message out of guest memory first (100 MiB for a
/// hostile one), where this reads it in place and keeps at most
/// [`super::output::MAX_MESSAGE`] bytes of it.
///
/// # Errors
/// Fails if a function cannot be defined.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    use wasmtime::component::HasSelf;
    bindings::add_to_linker::<HostState, HasSelf<Exchange>>(linker, |s| &mut s.exchange)?;
    linker.instance(bindings::LOG_INTERFACE)?.func_wrap(
        "log-error",
        |store: wasmtime::StoreContextMut<'_, HostState>, (message,): (WasmStr,)| {
            let text = message.to_str(&store)?;
            store.data().log.emit_message(&text);
            Ok(())
        },
    )?;
    Ok(())
}
