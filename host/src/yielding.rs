//! How a guest that computes for long yields at an epoch tick while guests
//! compete for the cores: behind the next poll for I/O events when few such
//! guests run, else straight back on the run queue ([`LongGuests`]).
//!
//! A plain yield puts the task straight back on its worker's run queue. With
//! a spinning guest on every worker, tokio then looked for I/O events only
//! every `EVENT_INTERVAL` task polls (each a guest's 1 ms slice), and
//! another app's request waited for that: a median of about 2 ms beside two
//! guests in `while True: pass`, 0.5 ms alone. Yielding behind the next I/O
//! poll makes each worker poll for events after every slice (about 0.5 ms
//! beside the two spinners). But once there are more such guests than
//! cores, the ones already queued would run before a request that a poll
//! wakes (about 4 ms with twelve spinners, against 2 ms), so then the yield
//! is plain. Numbers: `docs/performance.md`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use wasmtime::UpdateDeadline;

/// The guests past their first slice while guests compete for the cores.
/// One stays counted until it ends, waits on I/O included: at worst that
/// makes the others' yields plain, as they were before.
pub struct LongGuests {
    running: AtomicUsize,
    cores: usize,
}

/// One of [`LongGuests`], counted while it lives.
pub struct LongGuest(Arc<LongGuests>);

impl Drop for LongGuest {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LongGuests {
    /// Counts guests on `cores` cores.
    pub fn new(cores: usize) -> Arc<Self> {
        Arc::new(Self { running: AtomicUsize::new(0), cores: cores.max(1) })
    }

    /// Counts a guest from its first slice past the first until it ends.
    pub fn enter(self: &Arc<Self>) -> LongGuest {
        self.running.fetch_add(1, Ordering::Relaxed);
        LongGuest(Arc::clone(self))
    }

    /// How one of them yields now (extending its deadline by one tick).
    pub fn yield_now(&self) -> UpdateDeadline {
        if self.running.load(Ordering::Relaxed) <= self.cores {
            UpdateDeadline::YieldCustom(1, Box::pin(after_io_poll()))
        } else {
            UpdateDeadline::Yield(1)
        }
    }
}

/// Waits until this task's worker has polled for I/O events, then goes to
/// the back of its run queue.
///
/// `tokio::task::yield_now` holds the task back until its worker has run
/// out of ready tasks and polled the driver. Tokio then wakes the held-back
/// task into the worker's LIFO slot, ahead of what the poll woke; the
/// second, plain yield (a wake during its own poll) sends it behind them.
async fn after_io_poll() {
    tokio::task::yield_now().await;
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if std::mem::replace(&mut yielded, true) {
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_to_one_long_guest_per_core_yields_behind_io_then_plainly() {
        let long = LongGuests::new(2);
        let first = long.enter();
        let second = long.enter();
        assert!(matches!(long.yield_now(), UpdateDeadline::YieldCustom(1, _)));
        let third = long.enter();
        assert!(matches!(long.yield_now(), UpdateDeadline::Yield(1)));
        drop((first, third));
        assert!(matches!(long.yield_now(), UpdateDeadline::YieldCustom(1, _)));
        drop(second);
        assert_eq!(long.running.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_yield_lets_a_task_woken_by_io_run_first() {
        // On the one worker (the test's body is not): a task waiting on a
        // socket, then the yield. The socket's task must have run by the
        // time the yield is over, which a plain yield or `yield_now` alone
        // does not ensure.
        tokio::spawn(async {
            let (mut tx, rx) = tokio::net::UnixStream::pair().unwrap();
            let reader = tokio::spawn(async move { rx.readable().await.unwrap() });
            tokio::task::yield_now().await;
            tokio::io::AsyncWriteExt::write_all(&mut tx, b"x").await.unwrap();
            after_io_poll().await;
            assert!(reader.is_finished(), "the yield ended before the woken task ran");
        })
        .await
        .unwrap();
    }
}
