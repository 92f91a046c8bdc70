//! Listening sockets handed over at startup by systemd or another socket
//! activator (`LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`, as
//! sd_listen_fds(3) defines them), read with the `listenfd` crate.
//!
//! Which protocol an inherited socket speaks is decided in `server::bind`:
//! see [`Inherited::name`].

use std::net::TcpListener;
use std::os::unix::net::UnixListener;

use anyhow::{bail, Context, Result};

/// The first descriptor systemd passes.
const FIRST_FD: usize = 3;

/// One listening socket this process was started with.
#[derive(Debug)]
pub struct Inherited {
    /// Its name from `LISTEN_FDNAMES` (a `.socket` unit's
    /// `FileDescriptorName=`, by default the unit's own name).
    pub name: Option<String>,
    pub socket: Socket,
}

/// An inherited socket, by address family.
#[derive(Debug)]
pub enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Inherited {
    /// The descriptor number, for messages.
    pub fn fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        match &self.socket {
            Socket::Tcp(l) => l.as_raw_fd(),
            Socket::Unix(l) => l.as_raw_fd(),
        }
    }
}

/// Takes the sockets passed to this process, if any, and clears the
/// variables that passed them.
///
/// Call it before any other thread starts: it changes the environment.
///
/// # Errors
/// A passed descriptor that is not a listening TCP or Unix stream socket
/// (a datagram socket, or a connection from `Accept=yes`).
pub fn take() -> Result<Vec<Inherited>> {
    let names = std::env::var("LISTEN_FDNAMES").ok();
    let mut fds = listenfd::ListenFd::from_env();
    // Called from `main` before the runtime or any other thread exists, so
    // nothing reads the environment concurrently (listenfd clears the other
    // two the same way).
    std::env::remove_var("LISTEN_FDNAMES");
    let names: Vec<&str> = names.as_deref().map_or_else(Vec::new, |n| n.split(':').collect());
    let mut inherited = Vec::new();
    for idx in 0..fds.len() {
        let fd = FIRST_FD + idx;
        let socket = match fds.take_tcp_listener(idx) {
            Ok(Some(l)) => Socket::Tcp(l),
            Ok(None) => continue,
            Err(_) => match fds.take_unix_listener(idx) {
                Ok(Some(l)) => Socket::Unix(l),
                Ok(None) => continue,
                Err(_) => bail!("descriptor {fd} passed in LISTEN_FDS is not a TCP or Unix stream socket"),
            },
        };
        let listening = match &socket {
            Socket::Tcp(l) => rustix::net::sockopt::socket_acceptconn(l),
            Socket::Unix(l) => rustix::net::sockopt::socket_acceptconn(l),
        }
        .with_context(|| format!("descriptor {fd} passed in LISTEN_FDS"))?;
        if !listening {
            bail!(
                "descriptor {fd} passed in LISTEN_FDS is a connection, not a listening socket; \
                 use Accept=no (the default) in the .socket unit"
            );
        }
        match &socket {
            Socket::Tcp(l) => l.set_nonblocking(true),
            Socket::Unix(l) => l.set_nonblocking(true),
        }
        .with_context(|| format!("descriptor {fd} passed in LISTEN_FDS"))?;
        let name = names.get(idx).filter(|n| !n.is_empty()).map(|n| (*n).to_owned());
        inherited.push(Inherited { name, socket });
    }
    Ok(inherited)
}
