//! SIGINT/SIGTERM → a [`CancellationToken`]; a second signal exits at once.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Exit status for a forced exit on a second signal (128 + SIGINT).
const FORCED_EXIT: i32 = 130;

/// Returns a token cancelled on the first SIGINT or SIGTERM. A second one
/// exits the process immediately, abandoning requests in flight.
///
/// # Errors
/// Fails if the signal handlers cannot be installed.
pub fn on_signals() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let first = token.clone();
    tokio::spawn(async move {
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        tracing::info!("shutting down: finishing requests in flight (signal again to exit now)");
        first.cancel();
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        tracing::warn!("second signal: exiting now");
        std::process::exit(FORCED_EXIT);
    });
    Ok(token)
}
