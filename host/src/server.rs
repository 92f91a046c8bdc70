//! Listeners (HTTP, uwsgi over TCP or a Unix socket), the accept loop, and
//! graceful shutdown.
//!
//! [`run`] owns every task it starts through one `TaskTracker`: accept loops,
//! connections and (through the dispatcher) sandboxes. Once every listener
//! accepts, `/readyz` says ready. When `shutdown` fires, `/readyz` says
//! draining; the server stops accepting, lets each connection finish the request it is serving,
//! and waits up to the shutdown timeout for all of them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::activation::{Inherited, Socket};
use crate::config::{ServerLimits, UwsgiAddr, UwsgiConfig};
use crate::health::Health;
use crate::protocol;
use crate::tenants::Tenants;
use crate::wsgi::{ConnInfo, Dispatcher};

/// Longest pause after repeated `accept()` failures (e.g. out of descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// One bound listening socket and the protocol it speaks.
pub enum Listener {
    /// HTTP/1.1, served by hyper.
    Http(TcpListener),
    /// uwsgi over TCP.
    UwsgiTcp(TcpListener),
    /// The guard removes the socket file when the listener is dropped; an
    /// inherited socket's file is its activator's.
    UwsgiUnix(UnixListener, Option<SocketFile>),
}

impl Listener {
    fn describe(&self) -> String {
        let tcp = |l: &TcpListener| l.local_addr().map_or_else(|e| format!("?({e})"), |a| a.to_string());
        match self {
            Self::Http(l) => format!("http://{}", tcp(l)),
            Self::UwsgiTcp(l) => format!("uwsgi://{}", tcp(l)),
            Self::UwsgiUnix(l, _) => match l.local_addr().ok().as_ref().and_then(|a| a.as_pathname()) {
                Some(path) => format!("uwsgi://unix:{}", path.display()),
                None => "uwsgi://unix:(unnamed)".to_owned(),
            },
        }
    }
}

/// A Unix socket file this process created; removed on drop.
pub struct SocketFile(
    /// Its path.
    PathBuf,
);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Where HTTP is served when no listener is given or inherited.
const DEFAULT_HTTP: ([u8; 4], u16) = ([127, 0, 0, 1], 8000);

/// Makes every listener, before anything is served: the sockets inherited
/// from systemd first, then binds the `--http` and `--uwsgi` addresses that
/// no inherited socket already serves. With none of the three, HTTP on
/// 127.0.0.1:8000.
///
/// An inherited socket named `http` or `uwsgi` (`FileDescriptorName=`)
/// speaks that protocol. Any other is matched by address against `--http`
/// and `--uwsgi`; a TCP socket that matches neither speaks HTTP (as Gunicorn
/// serves every socket it is passed), a Unix socket uwsgi.
///
/// A Unix socket path that holds a stale socket (nothing accepts on it) is
/// replaced; a live socket or any other kind of file is left alone and
/// reported.
///
/// # Errors
/// Names the address that could not be bound and why.
pub async fn bind(http: &[SocketAddr], uwsgi: &UwsgiConfig, inherited: Vec<Inherited>) -> Result<Vec<Listener>> {
    let mut http = http.to_vec();
    let mut uwsgi_addrs = uwsgi.addrs.clone();
    if http.is_empty() && uwsgi_addrs.is_empty() && inherited.is_empty() {
        http.push(SocketAddr::from(DEFAULT_HTTP));
    }
    let mut listeners = Vec::new();
    for socket in inherited {
        listeners.push(adopt(socket, &mut http, &mut uwsgi_addrs)?);
    }
    for addr in &http {
        let l = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        listeners.push(Listener::Http(l));
    }
    for addr in &uwsgi_addrs {
        listeners.push(match addr {
            UwsgiAddr::Tcp(a) => {
                Listener::UwsgiTcp(TcpListener::bind(a).await.with_context(|| format!("cannot listen on --uwsgi {a}"))?)
            }
            UwsgiAddr::Unix(path) => {
                let (l, f) = bind_unix(path, uwsgi.socket_mode)
                    .with_context(|| format!("cannot listen on --uwsgi unix:{}", path.display()))?;
                Listener::UwsgiUnix(l, Some(f))
            }
        });
    }
    Ok(listeners)
}

/// Chooses the protocol of one inherited socket (see [`bind`]), and takes
/// the address it matched out of the lists still to bind.
fn adopt(inherited: Inherited, http: &mut Vec<SocketAddr>, uwsgi: &mut Vec<UwsgiAddr>) -> Result<Listener> {
    let fd = inherited.fd();
    let named = inherited.name.as_deref().filter(|n| matches!(*n, "http" | "uwsgi"));
    let listener = match inherited.socket {
        Socket::Tcp(l) => {
            let addr = l.local_addr().with_context(|| format!("inherited socket {fd}"))?;
            let l = TcpListener::from_std(l)?;
            let in_http = http.iter().position(|a| *a == addr).map(|i| http.remove(i));
            let in_uwsgi = uwsgi.iter().position(|a| *a == UwsgiAddr::Tcp(addr)).map(|i| uwsgi.remove(i));
            let speaks_uwsgi = match named {
                Some(name) => name == "uwsgi",
                None => in_uwsgi.is_some() && in_http.is_none(),
            };
            if speaks_uwsgi {
                Listener::UwsgiTcp(l)
            } else {
                Listener::Http(l)
            }
        }
        Socket::Unix(l) => {
            if named == Some("http") {
                bail!("inherited socket {fd} is a Unix socket named http: HTTP is served over TCP only");
            }
            let path = l.local_addr().ok().and_then(|a| a.as_pathname().map(Path::to_owned));
            if let Some(path) = &path {
                uwsgi.retain(|a| *a != UwsgiAddr::Unix(path.clone()));
            }
            // systemd made the file and removes it: no SocketFile of ours.
            Listener::UwsgiUnix(UnixListener::from_std(l)?, None)
        }
    };
    tracing::debug!(fd, name = ?inherited.name, "serving an inherited socket as {}", listener.describe());
    Ok(listener)
}

fn bind_unix(path: &Path, mode: u32) -> Result<(UnixListener, SocketFile)> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("{} exists and is not a socket; remove it or choose another path", path.display());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another server is listening on {}", path.display());
        }
        std::fs::remove_file(path).context("removing the stale socket")?;
        tracing::info!(path = %path.display(), "removed a stale socket file");
    }
    let listener = UnixListener::bind(path)?;
    let file = SocketFile(path.to_owned());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok((listener, file))
}

/// How [`run`] serves, beyond each app's own limits.
#[derive(Debug)]
pub struct ServeOptions {
    /// The connection-level limits.
    pub limits: ServerLimits,
    /// What `/readyz` reports: ready once every listener accepts,
    /// draining from the first signal.
    pub health: Arc<Health>,
    /// Largest uwsgi vars block.
    pub uwsgi_vars_limit: usize,
    /// How long to wait for requests in flight on shutdown.
    pub shutdown_timeout: Duration,
    /// Report per-request timing.
    pub timing: bool,
}

/// Serves every listener until `shutdown` is cancelled, then drains.
///
/// # Errors
/// None yet: per-connection failures are logged and contained. The type
/// leaves room for startup checks.
pub async fn run(
    listeners: Vec<Listener>,
    tenants: Arc<Tenants>,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> Result<()> {
    let ServeOptions { limits, health, uwsgi_vars_limit, shutdown_timeout, timing } = options;
    let tasks = TaskTracker::new();
    for (name, sandbox) in tenants.apps() {
        tracing::info!(app = %name, digest = %sandbox.digest(), "serving app {name}");
    }
    let max_connections = limits.max_connections;
    let dispatcher = Arc::new(Dispatcher::new(tenants, limits, tasks.clone(), timing));
    let shared = Arc::new(Shared {
        dispatcher,
        connections: Arc::new(Semaphore::new(max_connections)),
        tasks: tasks.clone(),
        shutdown: shutdown.clone(),
        uwsgi_vars_limit,
    });
    for listener in listeners {
        tracing::info!("listening on {}", listener.describe());
        tasks.spawn(accept_loop(listener, Arc::clone(&shared)));
    }
    health.ready();

    shutdown.cancelled().await;
    health.draining();
    tasks.close();
    if tokio::time::timeout(shutdown_timeout, tasks.wait()).await.is_err() {
        tracing::warn!(
            still_running = tasks.len(),
            "shutdown timeout of {shutdown_timeout:?} passed; exiting with requests in flight"
        );
    } else {
        tracing::info!("all requests finished; bye");
    }
    Ok(())
}

/// What every accept loop shares.
struct Shared {
    /// Runs each request in a sandbox.
    dispatcher: Arc<Dispatcher>,
    /// One permit per open connection, over all listeners.
    connections: Arc<Semaphore>,
    /// Owner of every connection task.
    tasks: TaskTracker,
    /// Cancelled on the first signal.
    shutdown: CancellationToken,
    /// `--uwsgi-buffer-size`.
    uwsgi_vars_limit: usize,
}

/// An accepted connection, not yet handed to its protocol.
enum Accepted {
    Tcp(TcpStream, ConnInfo),
    Unix(UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Accepted> {
    match listener {
        Listener::Http(l) | Listener::UwsgiTcp(l) => {
            let (stream, peer) = l.accept().await?;
            Ok(Accepted::Tcp(stream, ConnInfo { local: l.local_addr()?, peer }))
        }
        Listener::UwsgiUnix(l, _) => Ok(Accepted::Unix(l.accept().await?.0)),
    }
}

async fn accept_loop(listener: Listener, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(10);
    loop {
        // Take the permit before accepting: at the cap, clients wait in the
        // kernel's backlog rather than in our memory.
        let permit = tokio::select! {
            permit = Arc::clone(&shared.connections).acquire_owned() => permit.expect("never closed"),
            () = shared.shutdown.cancelled() => return,
        };
        let accepted = tokio::select! {
            accepted = accept(&listener) => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::error!(cause = %err, "accept failed; backing off for {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                    continue;
                }
            },
            () = shared.shutdown.cancelled() => return,
        };
        backoff = Duration::from_millis(10);
        let (dispatcher, shutdown, limit) =
            (Arc::clone(&shared.dispatcher), shared.shutdown.clone(), shared.uwsgi_vars_limit);
        let is_http = matches!(listener, Listener::Http(_));
        let open = dispatcher.metrics().map(|m| m.connection(if is_http { "http" } else { "uwsgi" }));
        shared.tasks.spawn(async move {
            match accepted {
                Accepted::Tcp(stream, conn) if is_http => {
                    protocol::http::serve_connection(stream, conn, dispatcher, shutdown).await;
                }
                Accepted::Tcp(stream, conn) => {
                    let _ = stream.set_nodelay(true);
                    let (r, w) = stream.into_split();
                    protocol::uwsgi::serve_connection(r, w, Some(conn), dispatcher, limit).await;
                }
                Accepted::Unix(stream) => {
                    let (r, w) = stream.into_split();
                    protocol::uwsgi::serve_connection(r, w, None, dispatcher, limit).await;
                }
            }
            drop((permit, open));
        });
    }
}
