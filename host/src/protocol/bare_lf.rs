//! Refuses bare-LF line endings in HTTP/1.1 request heads, and whitespace
//! that ends a chunk-size line, in front of hyper.
//!
//! RFC 9112 §2.2 lets a server accept a bare LF as a line terminator, and
//! hyper's parser (httparse) does, with no switch to refuse it. A proxy in
//! front that reads the same bytes with CRLF alone sees a different request
//! (the classic desync), so this server requires CRLF. hyper also accepts a
//! chunk size followed by whitespace and no extension (`0 \r\n`), which
//! RFC 9112 §7.1 does not allow and other parsers read differently; that
//! line is refused the same way, and so is a head with both Content-Length
//! and Transfer-Encoding (RFC 9112 §6.3: "ought to be handled as an
//! error"), which hyper would frame as chunked after dropping the length.
//!
//! [`StrictLines`] wraps the client's stream and follows the framing of each
//! request as it streams by: the head (and chunk-size and trailer lines) are
//! checked byte by byte, bodies are skipped by their Content-Length or chunk
//! sizes. A bare LF in a head is replaced with a NUL byte, which httparse
//! never accepts there, so hyper itself answers 400 and closes the
//! connection, after the responses to the requests before it, in order.
//! hyper remains the only judge of framing: where these rules and hyper's
//! could differ (a head too large, a framing header hyper will refuse, a
//! chunk line this scanner does not understand), the scanner stops looking
//! and never touches another byte; hyper refuses the request and closes.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A client stream whose request heads are checked for bare LFs.
pub struct StrictLines<S> {
    /// The client's stream.
    inner: S,
    /// Where in the request stream the next byte falls.
    scanner: Scanner,
}

impl<S> StrictLines<S> {
    /// Wraps `inner`; a head longer than `max_head` bytes is left to hyper's 431.
    pub fn new(inner: S, max_head: usize, max_headers: usize) -> Self {
        Self { inner, scanner: Scanner::new(max_head, max_headers) }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StrictLines<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.scanner.feed(&mut buf.filled_mut()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StrictLines<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Where the scanner is in the request stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a request head, or in the empty lines allowed before one.
    Head,
    /// In a Content-Length body: this many bytes to go.
    Body(u64),
    /// In a chunk-size line: the size so far, whether an extension began,
    /// and whether whitespace followed the size.
    ChunkSize {
        size: u64,
        digits: u8,
        ext: bool,
        ws: bool,
    },
    /// Chunk data: this many bytes to go, then CRLF.
    ChunkData(u64),
    /// Expecting the CR, then the LF, that end a chunk's data.
    ChunkDataCr,
    ChunkDataLf,
    /// In the trailer section after the last chunk; ends with an empty line.
    Trailers,
    /// Not looking any more: hyper will refuse what comes and close.
    Off,
    /// This byte makes the request invalid: it is made unparseable (NUL),
    /// and the scanner stops.
    Refuse,
}

/// Skips body bytes, not looked at: of `available`, how many belong to the
/// `left` still to come, and how many are left after them.
fn skip(left: u64, available: usize) -> (usize, u64) {
    let taken = usize::try_from(left).map_or(available, |left| left.min(available));
    (taken, left - taken as u64)
}

/// The streaming state machine behind [`StrictLines`].
struct Scanner {
    state: State,
    /// The current head's bytes, to read its framing headers at its end.
    head: Vec<u8>,
    /// Bytes in the current line so far (CR included).
    line_len: usize,
    /// The byte before this one in a head, chunk line or trailer.
    prev: u8,
    /// hyper's limits: past them, hyper refuses the head itself.
    max_head: usize,
    max_headers: usize,
}

/// How a request head frames the body after it.
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Framing hyper refuses (or that this scanner does not follow).
    Unknown,
    /// Both Content-Length and Transfer-Encoding: refused here.
    Conflicting,
}

impl Scanner {
    fn new(max_head: usize, max_headers: usize) -> Self {
        Self { state: State::Head, head: Vec::new(), line_len: 0, prev: 0, max_head, max_headers }
    }

    /// Scans `bytes`, the next bytes from the client, and replaces a bare LF
    /// in a head with NUL.
    fn feed(&mut self, bytes: &mut [u8]) {
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                State::Off => return,
                State::Body(left) => {
                    let (taken, left) = skip(left, bytes.len() - i);
                    i += taken;
                    self.state = if left == 0 { self.next_head() } else { State::Body(left) };
                }
                State::ChunkData(left) => {
                    let (taken, left) = skip(left, bytes.len() - i);
                    i += taken;
                    self.state = if left == 0 { State::ChunkDataCr } else { State::ChunkData(left) };
                }
                _ => {
                    let b = bytes[i];
                    if b == b'\n' && self.prev != b'\r' {
                        tracing::debug!("refused a bare LF line ending");
                        bytes[i] = 0;
                        self.state = State::Off;
                        return;
                    }
                    self.state = self.line_byte(b);
                    if self.state == State::Refuse {
                        bytes[i] = 0;
                        self.state = State::Off;
                        return;
                    }
                    self.prev = b;
                    i += 1;
                }
            }
        }
    }

    /// The state after one byte of a head, chunk line or trailer section.
    fn line_byte(&mut self, b: u8) -> State {
        match self.state {
            State::Head => {
                let empty_line = b == b'\n' && self.line_len == 1;
                self.line_len = if b == b'\n' { 0 } else { self.line_len + 1 };
                if self.head.is_empty() && (b == b'\r' || empty_line) {
                    return State::Head; // an empty line before the request line
                }
                self.head.push(b);
                if empty_line {
                    return match self.framing() {
                        Framing::None => self.next_head(),
                        Framing::Length(0) => self.next_head(),
                        Framing::Length(n) => State::Body(n),
                        Framing::Chunked => self.chunk_line(),
                        Framing::Unknown => State::Off,
                        Framing::Conflicting => {
                            tracing::debug!("refused a head with both Content-Length and Transfer-Encoding");
                            State::Refuse
                        }
                    };
                }
                if self.head.len() > self.max_head {
                    State::Off
                } else {
                    State::Head
                }
            }
            State::ChunkSize { size, digits, ext, ws } => match b {
                b'\n' if digits > 0 => {
                    if size == 0 {
                        self.line_len = 0;
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    }
                }
                // A CR must be followed by the LF.
                _ if self.prev == b'\r' => State::Off,
                // `0 \r\n`: whitespace may only come before an extension.
                b'\r' if digits > 0 && ws && !ext => {
                    tracing::debug!("refused whitespace at the end of a chunk-size line");
                    State::Refuse
                }
                b'\r' if digits > 0 => State::ChunkSize { size, digits, ext, ws },
                _ if ext => State::ChunkSize { size, digits, ext, ws },
                b';' if digits > 0 => State::ChunkSize { size, digits, ext: true, ws },
                b' ' | b'\t' if digits > 0 => State::ChunkSize { size, digits, ext, ws: true },
                _ if ws => State::Off,
                _ => match (b as char).to_digit(16) {
                    Some(d) if digits < 16 => {
                        State::ChunkSize { size: size << 4 | u64::from(d), digits: digits + 1, ext, ws }
                    }
                    // A 17th digit, anything else: hyper's to judge.
                    _ => State::Off,
                },
            },
            State::ChunkDataCr if b == b'\r' => State::ChunkDataLf,
            State::ChunkDataLf if b == b'\n' => self.chunk_line(),
            State::Trailers => {
                let empty_line = b == b'\n' && self.line_len == 1;
                self.line_len = if b == b'\n' { 0 } else { self.line_len + 1 };
                if empty_line {
                    self.next_head()
                } else {
                    State::Trailers
                }
            }
            _ => State::Off,
        }
    }

    fn chunk_line(&mut self) -> State {
        State::ChunkSize { size: 0, digits: 0, ext: false, ws: false }
    }

    /// Resets for the next request on the connection.
    fn next_head(&mut self) -> State {
        self.head.clear();
        self.line_len = 0;
        State::Head
    }

    /// Reads the finished head's framing the way hyper will.
    fn framing(&self) -> Framing {
        let mut headers = vec![httparse::EMPTY_HEADER; self.max_headers];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(req.parse(&self.head), Ok(httparse::Status::Complete(_))) {
            return Framing::Unknown;
        }
        let mut framing = Framing::None;
        let has = |name: &str| req.headers.iter().any(|h| h.name.eq_ignore_ascii_case(name));
        if has("transfer-encoding") && has("content-length") {
            return Framing::Conflicting;
        }
        for header in req.headers.iter() {
            if header.name.eq_ignore_ascii_case("transfer-encoding") {
                // hyper uses chunked framing when chunked is last, and
                // refuses any other coding in a request.
                return Framing::Chunked;
            }
            if header.name.eq_ignore_ascii_case("content-length") {
                let parsed = std::str::from_utf8(header.value).ok().and_then(|v| v.parse::<u64>().ok());
                framing = match (framing, parsed) {
                    (Framing::None, Some(n)) => Framing::Length(n),
                    (Framing::Length(m), Some(n)) if m == n => Framing::Length(n),
                    _ => Framing::Unknown,
                };
            }
        }
        framing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns what hyper would see.
    fn scan(input: &[u8], step: usize) -> Vec<u8> {
        let mut scanner = Scanner::new(65536, 100);
        let mut out = input.to_vec();
        for piece in out.chunks_mut(step) {
            scanner.feed(piece);
        }
        out
    }

    fn unchanged(input: &[u8]) {
        for step in [1, 2, 7, input.len()] {
            assert_eq!(scan(input, step), input, "step {step}: {}", String::from_utf8_lossy(input));
        }
    }

    fn refused_at(input: &[u8], at: usize) {
        for step in [1, 3, input.len()] {
            let out = scan(input, step);
            assert_eq!(out[at], 0, "step {step}: {}", String::from_utf8_lossy(input));
            let mut expected = input.to_vec();
            expected[at] = 0;
            assert_eq!(out, expected, "only the bare LF changes");
        }
    }

    #[test]
    fn crlf_requests_and_their_bodies_pass_untouched() {
        unchanged(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        // Pipelined, with LFs in bodies, and an empty line before a request.
        unchanged(
            b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\na\nb\n\n\
              \r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n\
              POST /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n\
              3;x=1\r\n\n\n\n\r\nA\r\n0123456789\r\n0\r\nTrailer: t\r\n\r\n\
              GET /d HTTP/1.1\r\n\r\n",
        );
    }

    #[test]
    fn a_bare_lf_in_any_head_is_made_unparseable() {
        refused_at(b"GET / HTTP/1.1\nHost: a\r\n\r\n", 14);
        refused_at(b"GET / HTTP/1.1\r\nHost: a\n\r\n", 23);
        refused_at(b"GET / HTTP/1.1\r\nHost: a\r\n\n", 25);
        refused_at(b"\nGET / HTTP/1.1\r\n\r\n", 0);
        // In the second request of a connection, after a body full of LFs.
        refused_at(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n\n\nGET / HTTP/1.1\nHost: a\r\n\r\n", 54);
        // In a chunk-size line and in a trailer.
        refused_at(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\r\n0\r\n\r\n", 48);
        refused_at(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nA: b\n\r\n", 54);
    }

    #[test]
    fn a_head_with_both_content_length_and_transfer_encoding_is_made_unparseable() {
        let head = b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        // The head's last LF: hyper never sees a complete head.
        refused_at(head, 65);
    }

    #[test]
    fn whitespace_ends_a_chunk_size_line_only_before_an_extension() {
        let chunked = |line: &str| format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{line}\r\n\r\n");
        let at = chunked("").len() - 4;
        refused_at(chunked("0 ").as_bytes(), at + 2);
        refused_at(chunked("0\t\t").as_bytes(), at + 3);
        // Uppercase hex, an extension after whitespace, a quoted one.
        unchanged(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n");
        unchanged(chunked("0 ;ext=1").as_bytes());
        unchanged(chunked("0;name=\"a b;c\"").as_bytes());
    }

    #[test]
    fn framing_hyper_refuses_turns_the_scanner_off() {
        // Conflicting lengths, then a bare LF that must not be touched: hyper
        // refuses the request and closes before it gets there.
        unchanged(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx\nGET /\n\n");
        unchanged(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\n");
        unchanged(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\r\nhello\n\n");
        // A head over the limit is hyper's 431.
        let mut scanner = Scanner::new(16, 100);
        let mut big = b"GET / HTTP/1.1\r\nX-Long: aaaaaaaaaaaaaaaa\nb\r\n\r\n".to_vec();
        let original = big.clone();
        scanner.feed(&mut big);
        assert_eq!(big, original);
    }
}
