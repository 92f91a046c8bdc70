//! The guest's stdout and stderr, as lines in the server log.
//!
//! Each line becomes one `tracing` event tagged with the request id, so
//! `print()` in an app shows up next to the access log line of its request.
//! A line longer than [`MAX_LINE`] bytes is cut into pieces, so the host never
//! buffers more than that per stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// The longest line kept whole.
pub const MAX_LINE: usize = 16 * 1024;

/// A guest output stream that logs line by line.
#[derive(Clone)]
pub struct GuestLog {
    req_id: u64,
    stream: &'static str,
}

impl GuestLog {
    pub fn new(req_id: u64, stream: &'static str) -> Self {
        Self { req_id, stream }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter::new(self.clone()))
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter::new(self.clone()))
    }
}

/// Splits what is written into lines and logs each one.
struct LineWriter {
    to: GuestLog,
    partial: Vec<u8>,
}

impl LineWriter {
    fn new(to: GuestLog) -> Self {
        Self { to, partial: Vec::new() }
    }

    fn write_bytes(&mut self, mut data: &[u8]) {
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&data[..nl]);
            self.emit();
            data = &data[nl + 1..];
        }
        self.partial.extend_from_slice(data);
        while self.partial.len() > MAX_LINE {
            let rest = self.partial.split_off(MAX_LINE);
            self.emit();
            self.partial = rest;
        }
    }

    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.partial);
        tracing::info!(target: "wsgi_wasm::guest", req_id = self.to.req_id, stream = self.to.stream, "{line}");
        self.partial.clear();
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            self.emit();
        }
    }
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LineWriter {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.get_mut().write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
