//! Listeners, the accept loop, and graceful shutdown.
//!
//! [`run`] owns every task it starts through one `TaskTracker`: accept loops,
//! connections and (through the dispatcher) sandboxes. When `shutdown` fires
//! it stops accepting, lets each connection finish the request it is serving,
//! and waits up to the shutdown timeout for all of them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::protocol;
use crate::sandbox::Sandbox;
use crate::wsgi::{ConnInfo, Dispatcher};

/// Longest pause after repeated `accept()` failures (e.g. out of descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Binds every HTTP address, before anything is served.
///
/// # Errors
/// Names the address that could not be bound.
pub async fn bind(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Serves HTTP on `listeners` until `shutdown` is cancelled, then drains.
///
/// # Errors
/// Only if a listener's address cannot be read; per-connection failures are
/// logged and contained.
pub async fn run(
    listeners: Vec<TcpListener>,
    sandbox: Arc<Sandbox>,
    shutdown_timeout: Duration,
    shutdown: CancellationToken,
) -> Result<()> {
    let tasks = TaskTracker::new();
    let dispatcher = Arc::new(Dispatcher::new(Arc::clone(&sandbox), tasks.clone()));
    let connections = Arc::new(Semaphore::new(sandbox.limits().max_connections));
    for listener in listeners {
        let local = listener.local_addr()?;
        tracing::info!(app = %sandbox.digest(), "listening on http://{local}");
        tasks.spawn(accept_loop(
            listener,
            Arc::clone(&dispatcher),
            Arc::clone(&connections),
            tasks.clone(),
            shutdown.clone(),
        ));
    }

    shutdown.cancelled().await;
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

async fn accept_loop(
    listener: TcpListener,
    dispatcher: Arc<Dispatcher>,
    connections: Arc<Semaphore>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let local = listener.local_addr().ok();
    let mut backoff = Duration::from_millis(10);
    loop {
        // Take the permit before accepting: at the cap, clients wait in the
        // kernel's backlog rather than in our memory.
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => permit.expect("never closed"),
            () = shutdown.cancelled() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::error!(cause = %err, "accept failed; backing off for {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        backoff = Duration::from_millis(10);
        let conn = ConnInfo { local: local.unwrap_or_else(|| stream.local_addr().expect("bound")), peer };
        let (dispatcher, shutdown) = (Arc::clone(&dispatcher), shutdown.clone());
        tasks.spawn(async move {
            protocol::http::serve_connection(stream, conn, dispatcher, shutdown).await;
            drop(permit);
        });
    }
}
