//! Whether the server is alive and ready, as the probes on the metrics
//! listener report it (`/healthz`, `/readyz`).
//!
//! Alive means the process serves its status listener at all. Ready means
//! every app has loaded, at least one app is served, and the server is not
//! draining: an orchestrator or a balancer sends traffic only then, and
//! stops when a shutdown begins, before connections close.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// The server's phase, and how many apps it serves.
#[derive(Debug, Default)]
pub struct Health {
    phase: AtomicU8,
    apps: AtomicUsize,
}

/// Where in its life the server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Loading, compiling and checking the apps; not listening yet.
    Starting,
    /// Listening, every app loaded.
    Ready,
    /// A shutdown signal came: no new connections, requests in flight
    /// finishing.
    Draining,
}

impl Health {
    /// A server that is starting.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where the server is now.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    /// Every app has loaded and the listeners accept. A server that has
    /// begun draining stays draining.
    pub fn ready(&self) {
        let _ = self.phase.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire);
    }

    /// A shutdown began.
    pub fn draining(&self) {
        self.phase.store(2, Ordering::Release);
    }

    /// How many apps are served now (after a start or a reload).
    pub fn serving(&self, apps: usize) {
        self.apps.store(apps, Ordering::Release);
    }

    /// `Ok` when traffic may be sent, else why not, in a few words.
    ///
    /// # Errors
    /// Starting, draining, or no app served.
    pub fn readiness(&self) -> Result<(), &'static str> {
        match self.phase() {
            Phase::Starting => Err("starting: loading the apps"),
            Phase::Draining => Err("draining: shutting down"),
            Phase::Ready if self.apps.load(Ordering::Acquire) == 0 => Err("no app is served"),
            Phase::Ready => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_between_start_and_drain_with_an_app() {
        let h = Health::new();
        h.serving(2);
        assert_eq!(h.readiness(), Err("starting: loading the apps"));
        h.ready();
        assert_eq!(h.readiness(), Ok(()));
        h.serving(0);
        assert_eq!(h.readiness(), Err("no app is served"));
        h.serving(1);
        h.draining();
        h.ready();
        assert_eq!((h.phase(), h.readiness()), (Phase::Draining, Err("draining: shutting down")));
    }
}
