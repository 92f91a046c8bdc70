//! Wire protocols. Each one turns its connections into [`crate::wsgi::WsgiRequest`]s
//! and writes back what the dispatcher returns; everything after the environ
//! is built is shared.

pub mod bare_lf;
pub mod http;
pub mod uwsgi;

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

/// How long [`reset`] waits for written bytes to reach the peer.
const DRAIN: Duration = Duration::from_secs(1);

/// Linux's `SIOCOUTQ` (`TIOCOUTQ`): the bytes of a TCP socket not yet
/// acknowledged by the peer.
const SIOCOUTQ: rustix::ioctl::Opcode = 0x5411;

/// Resets a TCP connection, so that its peer sees an error rather than an
/// end: a response cut short must not pass for a whole one.
///
/// A reset discards whatever the kernel has not yet sent, so it waits (up to
/// [`DRAIN`]) until the peer has acknowledged everything written: the bytes
/// that did go out arrive, then the reset.
pub async fn reset(socket: BorrowedFd<'_>) {
    let deadline = Instant::now() + DRAIN;
    loop {
        // SAFETY: SIOCOUTQ writes one int, the type of the getter's output.
        let queued = unsafe { rustix::ioctl::ioctl(socket, rustix::ioctl::Getter::<SIOCOUTQ, std::ffi::c_int>::new()) };
        match queued {
            Ok(n) if n > 0 && Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(1)).await,
            _ => break,
        }
    }
    let _ = rustix::net::sockopt::set_socket_linger(socket, Some(Duration::ZERO));
}
