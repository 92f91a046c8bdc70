//! Where a guest that computes for long goes on running: a runtime of its
//! own, on threads at a low CPU priority, so that it does not stand between
//! another request and a core.
//!
//! A request starts on the server's runtime, beside the connections' I/O.
//! Once its guest has computed past its first slice while guests compete
//! for the cores, its epoch callback asks to move ([`Move::ask`]), and
//! [`run`] hands the request's whole future (store and all) to the
//! background runtime at its next yield. There it runs to the end, waits on
//! I/O included. The server's own workers are then idle or serving short
//! requests, and the kernel favours them over the background threads, which
//! run at `nice` [`NICE`].
//!
//! A typical request never computes that long, so it never moves: the cost
//! of this module then is one boxed future and one atomic load per poll.
//! Numbers: `docs/performance.md`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;

use tokio::runtime::Runtime;

/// A request's wish to move to the background runtime, set from its
/// guest's epoch callback and read by [`run`].
#[derive(Clone, Default)]
pub struct Move(Arc<AtomicBool>);

impl Move {
    /// Asks [`run`] to move the request at its next yield.
    pub fn ask(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn asked(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Runs `work` on the calling task until it yields after `moving` was
/// asked, then on the background runtime until it ends. Dropping the
/// returned future drops `work` wherever it is (there, at its next yield).
///
/// Without a background runtime (the threads could not be started),
/// `work` stays where it is.
pub async fn run<F>(work: F, moving: &Move) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut work = Box::pin(work);
    let Some(background) = runtime() else {
        return work.await;
    };
    let finished = std::future::poll_fn(|cx| match work.as_mut().poll(cx) {
        Poll::Ready(out) => Poll::Ready(Some(out)),
        Poll::Pending if moving.asked() => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    })
    .await;
    if let Some(out) = finished {
        return out;
    }
    let mut task = AbortOnDrop(background.spawn(work));
    match (&mut task.0).await {
        Ok(out) => out,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        // Only `AbortOnDrop` aborts it, and the runtime is never shut down.
        Err(err) => unreachable!("a moved request was cancelled: {err}"),
    }
}

/// A task's handle that aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The background runtime: one thread per core, started on first use and
/// never shut down.
fn runtime() -> Option<&'static Runtime> {
    static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let built = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(std::thread::available_parallelism().map_or(1, usize::from))
                .thread_name("wsgi-wasm-long")
                .on_thread_start(lower_priority)
                .enable_all()
                .build();
            built.inspect_err(|err| tracing::warn!("long-running guests stay on the main runtime: {err}")).ok()
        })
        .as_ref()
}

/// The background threads' `nice` value. With the server saturated by
/// short requests, the moved guests still get about a tenth of the cores
/// (10: 18–22% of one core for two spinners; 19: 3–5%; `SCHED_IDLE`: 1%),
/// and beside them another app's median latency is what it is alone. 19
/// cut its p99 further (0.7–1.6 ms, against 1.2–4.8 at 10 in the same
/// runs), at the price of starving long requests whenever the server is
/// busy.
pub const NICE: i32 = 10;

/// Makes the threads that compile apps (wasmtime's parallel compile runs
/// on rayon's global pool) run at [`NICE`]: loading a new app, or compiling
/// what later apps share, takes what CPU requests leave. Call it before
/// anything compiles; later calls, and a pool already built, change nothing.
pub fn compile_at_low_priority() {
    let built = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("wsgi-wasm-compile-{i}"))
        .start_handler(|_| lower_priority())
        .build_global();
    if let Err(err) = built {
        tracing::debug!("compiling threads keep their priority: {err}");
    }
}

/// Lowers the calling thread's priority to [`NICE`]. Best effort: where the
/// kernel refuses, the thread keeps its priority.
fn lower_priority() {
    // SAFETY: `gettid` has no preconditions.
    let tid = unsafe { libc::gettid() };
    let Ok(tid) = libc::id_t::try_from(tid) else { return };
    // SAFETY: on Linux the nice value is per thread, and `tid` is this one.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, NICE) } != 0 {
        tracing::debug!("could not lower a background thread's priority: {}", std::io::Error::last_os_error());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_name() -> String {
        std::thread::current().name().unwrap_or_default().to_owned()
    }

    /// Yields once, then says on which thread it ended.
    async fn yield_then_name() -> String {
        tokio::task::yield_now().await;
        thread_name()
    }

    #[tokio::test]
    async fn a_request_not_asked_to_move_ends_where_it_started() {
        let here = thread_name();
        assert_eq!(run(yield_then_name(), &Move::default()).await, here);
    }

    #[tokio::test]
    async fn a_request_asked_to_move_ends_on_a_background_thread_at_low_priority() {
        let moving = Move::default();
        let asked = moving.clone();
        let work = async move {
            let before = thread_name();
            asked.ask();
            let after = yield_then_name().await;
            // SAFETY: `getpriority` has no preconditions; 0 is this thread.
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            (before, after, nice)
        };
        let (before, after, nice) = run(work, &moving).await;
        assert_ne!(before, "wsgi-wasm-long");
        assert_eq!(after, "wsgi-wasm-long");
        assert_eq!(nice, NICE);
    }

    #[tokio::test]
    async fn dropping_a_moved_request_drops_its_work_there() {
        struct Dropped(Option<tokio::sync::oneshot::Sender<String>>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                let _ = self.0.take().unwrap().send(thread_name());
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let moving = Move::default();
        let asked = moving.clone();
        let work = async move {
            let _guard = Dropped(Some(tx));
            asked.ask();
            std::future::pending::<()>().await;
        };
        let running = tokio::spawn(async move { run(work, &moving).await });
        // `pending` never wakes: the task is aborted where it waits.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        running.abort();
        let dropped_on = tokio::time::timeout(std::time::Duration::from_secs(5), rx).await.unwrap().unwrap();
        assert_eq!(dropped_on, "wsgi-wasm-long");
    }
}
