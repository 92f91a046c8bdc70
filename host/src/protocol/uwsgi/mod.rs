//! The uwsgi protocol, as nginx's `uwsgi_pass` speaks it: one request per
//! connection, a binary vars block, the body, then a plain HTTP response that
//! ends when the connection does.
//!
//! A packet that cannot be served (truncated, oversized, a foreign
//! `modifier1`, a bad length) is logged and the connection closed: the app is
//! never called. The body is read from the socket only as the app reads
//! `wsgi.input`, and never past `CONTENT_LENGTH`.

pub mod codec;

use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::ServerLimits;
use crate::error::BoxError;
use crate::wsgi::{environ, ConnInfo, Dispatcher, WsgiRequest, WsgiResponse};

/// The write side of a connection, and how to cut it so the peer notices.
pub trait Abort {
    /// Closes the connection so that the peer sees an error, not an end.
    fn abort(self) -> impl std::future::Future<Output = ()> + Send;
}

impl Abort for tokio::net::tcp::OwnedWriteHalf {
    async fn abort(self) {
        // The reset makes nginx fail the response instead of taking the cut
        // body for a whole one. Dropping the write half would send a FIN
        // first, which the peer reads as the end of the body before the
        // reset arrives; `forget` leaves the close to the read half's drop,
        // so the reset is all the peer sees after the data.
        super::reset(self.as_ref().as_fd()).await;
        self.forget();
    }
}

impl Abort for tokio::net::unix::OwnedWriteHalf {
    async fn abort(self) {
        // NB: a Unix stream socket has no reset. Its peer sees ECONNRESET
        // only if this side closes with unread bytes queued, which a uwsgi
        // peer that sent its whole request never leaves. So a cut response
        // with a Content-Length is noticed by its length (nginx: "upstream
        // prematurely closed connection"), and one without ends as if whole:
        // use TCP where that matters (issue 22).
        drop(self);
    }
}

/// Serves the one request of a uwsgi connection.
///
/// `conn` is `None` for a Unix socket, which has no addresses to report.
pub async fn serve_connection<R, W>(
    mut reader: R,
    mut writer: W,
    conn: Option<ConnInfo>,
    dispatcher: Arc<Dispatcher>,
    vars_limit: usize,
) where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + Abort,
{
    let peer = conn.map_or_else(|| "unix".to_owned(), |c| c.peer.to_string());
    let limits = dispatcher.limits();
    let packet = match read_request(&mut reader, vars_limit, limits.header_timeout).await {
        Ok(Some(packet)) => packet,
        Ok(None) => return, // connected and closed without a request
        Err(err) => return tracing::error!(%peer, "refused uwsgi request: {err}"),
    };
    let response = if let Some((status, why)) = refuse_vars(&packet.0.vars, limits) {
        tracing::warn!(%peer, "refused a uwsgi request: {why}");
        dispatcher.refused(status, Some("header"));
        WsgiResponse::error(status)
    } else {
        match into_request(packet.0, packet.1, reader, conn) {
            Ok(request) => dispatcher.dispatch(request).await,
            // A request that cannot be served as it is (its host, its path,
            // its length): the host's 400, and the app is never called.
            Err(err) => {
                tracing::warn!(%peer, "refused a uwsgi request: {err}");
                dispatcher.refused(StatusCode::BAD_REQUEST, None);
                WsgiResponse::error(StatusCode::BAD_REQUEST)
            }
        }
    };
    if let Err(err) = write_response(&mut writer, response).await {
        match err {
            WriteError::Aborted => writer.abort().await,
            WriteError::Io(err) => tracing::debug!(%peer, cause = %err, "uwsgi peer went away"),
        }
        return;
    }
    let _ = writer.shutdown().await;
}

/// Reads until a whole packet is buffered; `Ok(None)` if the peer closed first.
async fn read_request<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
    timeout: Duration,
) -> Result<Option<(codec::Packet, Bytes)>, String> {
    let mut buf = BytesMut::with_capacity(4096);
    let total = tokio::time::timeout(timeout, async {
        loop {
            if let Some(total) = codec::check(&buf, limit).map_err(|e| e.to_string())? {
                return Ok(Some(total));
            }
            match reader.read_buf(&mut buf).await {
                Ok(0) if buf.is_empty() => return Ok(None),
                Ok(0) => return Err(format!("connection closed after {} bytes of the packet", buf.len())),
                Ok(_) => {}
                Err(err) => return Err(format!("reading the packet: {err}")),
            }
        }
    })
    .await
    .map_err(|_| format!("no complete packet within {timeout:?}"))??;
    let Some(total) = total else { return Ok(None) };
    let packet = codec::parse(&buf[..total], limit).map_err(|e| e.to_string())?;
    Ok(Some((packet, buf.split_off(total).freeze())))
}

/// `--max-request-line` (414) for `REQUEST_URI`, and `--max-header-field`
/// (431) for each `HTTP_*` var as the header it stands for (`name: value`),
/// before repeated ones are joined: the limits the HTTP listener applies.
fn refuse_vars(vars: &[(Vec<u8>, Vec<u8>)], limits: &ServerLimits) -> Option<(StatusCode, &'static str)> {
    for (key, value) in vars {
        if key == b"REQUEST_URI" && value.len() > limits.max_request_line {
            return Some((StatusCode::URI_TOO_LONG, "REQUEST_URI is over --max-request-line"));
        }
        if let Some(name) = key.strip_prefix(b"HTTP_") {
            if name.len() + 2 + value.len() > limits.max_header_field {
                return Some((StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "a header var is over --max-header-field"));
            }
        }
    }
    None
}

/// Builds the request from a packet; also returns its body length
/// (`CONTENT_LENGTH`, 0 if absent).
fn into_request<R>(
    packet: codec::Packet,
    leftover: Bytes,
    reader: R,
    conn: Option<ConnInfo>,
) -> Result<WsgiRequest, String>
where
    R: AsyncRead + Send + Unpin + 'static,
{
    let (vars, url_scheme) = environ::from_uwsgi(packet.vars, conn)?;
    let method = vars.get("REQUEST_METHOD").and_then(|m| Method::from_bytes(m).ok()).ok_or("invalid REQUEST_METHOD")?;
    let length = vars
        .get("CONTENT_LENGTH")
        .map_or(Some(0), |v| std::str::from_utf8(v).ok().and_then(|s| s.parse::<u64>().ok()))
        .ok_or("invalid CONTENT_LENGTH")?;
    let target = String::from_utf8_lossy(vars.get("REQUEST_URI").unwrap_or(b"/")).into_owned();
    let body = UwsgiBody { reader, leftover, remaining: length };
    Ok(WsgiRequest { method, target, url_scheme, vars, declared_length: Some(length), body: body.boxed_unsync() })
}

/// The request body: what followed the vars block in the first read, then
/// the socket, for exactly `CONTENT_LENGTH` bytes.
struct UwsgiBody<R> {
    reader: R,
    leftover: Bytes,
    remaining: u64,
}

impl<R: AsyncRead + Unpin> Body for UwsgiBody<R> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let room = usize::try_from(this.remaining).unwrap_or(usize::MAX);
        if !this.leftover.is_empty() {
            let chunk = this.leftover.split_to(this.leftover.len().min(room));
            this.remaining -= chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let mut buf = BytesMut::with_capacity(room.min(64 * 1024));
        match std::task::ready!(tokio_util::io::poll_read_buf(Pin::new(&mut this.reader), cx, &mut buf)) {
            Ok(0) => Poll::Ready(Some(Err("the peer closed the connection before the body ended".into()))),
            Ok(n) => {
                this.remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(buf.freeze()))))
            }
            Err(err) => Poll::Ready(Some(Err(Box::new(err)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
}

enum WriteError {
    /// The guest failed after the head went out.
    Aborted,
    Io(std::io::Error),
}

/// Writes the status line, headers and body; the end of the body is the end
/// of the connection.
async fn write_response<W: AsyncWrite + Unpin>(writer: &mut W, response: WsgiResponse) -> Result<(), WriteError> {
    let head = &response.head;
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(format!("HTTP/1.1 {} ", head.status.as_u16()).as_bytes());
    match &head.reason {
        Some(reason) => out.extend_from_slice(reason),
        None => out.extend_from_slice(head.status.canonical_reason().unwrap_or("").as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    // The app's own spelling of each name, as uWSGI sends it.
    for (name, value) in &head.headers {
        out.extend_from_slice(head.spelling(name));
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    writer.write_all(&out).await.map_err(WriteError::Io)?;
    let mut body = response.body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| WriteError::Aborted)?;
        if let Ok(data) = frame.into_data() {
            writer.write_all(&data).await.map_err(WriteError::Io)?;
        }
    }
    writer.flush().await.map_err(WriteError::Io)
}
