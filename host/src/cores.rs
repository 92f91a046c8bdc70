//! The cores every app's guests share, so that no tenant's guests can keep
//! another's waiting for CPU.
//!
//! At most one guest per core runs wasm at a time: a guest *holds a core*
//! only while its future is being polled (see [`AppCores::run`]), so one that
//! waits for I/O (a request body, a slow client, an outbound socket) holds
//! none, and a guest that yields at an epoch tick gives its core back.
//!
//! A core that frees goes to the app with a waiting guest that holds the
//! fewest cores, the one served least recently among equals, and within an
//! app to its oldest waiter. A guest that must wait while another app holds
//! more cores than its own advances the epoch at once: every running guest
//! then reaches its epoch callback within microseconds, and one whose app
//! holds more cores than a waiting app's, and that has held its core for
//! [`MIN_HOLD`], yields (`sandbox` asks [`AppCores::owes_a_core`]). So a
//! quiet app's request waits for a spinning neighbour for microseconds, not
//! for the neighbour's next tick.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use wasmtime::Engine;

/// The shortest time a guest holds its core before it yields it to another
/// app: a bound on how often two busy apps can take a core from each other.
pub const MIN_HOLD: Duration = Duration::from_micros(250);

/// The cores, and who waits for one.
pub struct Cores {
    state: Mutex<State>,
    /// Advanced to make running guests check whether they owe a core.
    engine: Engine,
}

struct State {
    free: usize,
    /// Grants so far: an app's `last_served` is the grant it last got.
    grants: u64,
    apps: Vec<AppState>,
}

#[derive(Default)]
struct AppState {
    in_use: usize,
    last_served: u64,
    /// Guests waiting for a core, oldest first.
    waiters: VecDeque<Arc<Ticket>>,
}

/// A guest's place in its app's queue.
struct Ticket {
    /// Set, under the state lock, when a core is granted to it.
    granted: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Ticket {
    fn grant(&self) {
        let mut waker = self.waker.lock().expect("never poisoned");
        self.granted.store(true, Ordering::Release);
        if let Some(waker) = waker.take() {
            waker.wake();
        }
    }
}

impl State {
    /// Whether some app with a waiting guest holds fewer cores than app `i`.
    fn owed_by(&self, i: usize) -> bool {
        let mine = self.apps[i].in_use;
        self.apps.iter().enumerate().any(|(j, a)| j != i && !a.waiters.is_empty() && a.in_use < mine)
    }

    /// Whether app `i`, about to wait, holds fewer cores than another app.
    fn owed_to(&self, i: usize) -> bool {
        let mine = self.apps[i].in_use;
        self.apps.iter().enumerate().any(|(j, a)| j != i && a.in_use > mine)
    }

    /// Gives free cores to waiters: fewest held first, then least recently
    /// served.
    fn grant(&mut self) {
        while self.free > 0 {
            let next = (0..self.apps.len())
                .filter(|&i| !self.apps[i].waiters.is_empty())
                .min_by_key(|&i| (self.apps[i].in_use, self.apps[i].last_served));
            let Some(i) = next else { return };
            let ticket = self.apps[i].waiters.pop_front().expect("not empty");
            self.free -= 1;
            self.grants += 1;
            let app = &mut self.apps[i];
            app.in_use += 1;
            app.last_served = self.grants;
            ticket.grant();
        }
    }
}

impl Cores {
    /// As many cores as this machine runs threads at once.
    pub fn new(engine: Engine) -> Arc<Self> {
        Self::with(engine, std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
    }

    /// `total` cores.
    pub fn with(engine: Engine, total: usize) -> Arc<Self> {
        let state = State { free: total.max(1), grants: 0, apps: Vec::new() };
        Arc::new(Self { state: Mutex::new(state), engine })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("the cores lock is never poisoned")
    }

    /// Adds an app (one loaded version of it).
    pub fn register(self: &Arc<Self>) -> AppCores {
        let mut state = self.lock();
        state.apps.push(AppState::default());
        AppCores { cores: Arc::clone(self), index: state.apps.len() - 1 }
    }
}

/// One app's handle on the cores.
#[derive(Clone)]
pub struct AppCores {
    cores: Arc<Cores>,
    index: usize,
}

impl AppCores {
    /// Runs `future` (a guest's whole call) holding a core whenever it is
    /// polled; `hold` records since when, for the epoch callback.
    pub fn run<F: Future>(&self, hold: Arc<Hold>, future: F) -> OnCore<F> {
        OnCore { app: self.clone(), hold, inner: Box::pin(future), held: false, ticket: None }
    }

    /// Whether a guest of this app that has held its core for `held` should
    /// yield it: another app waits with fewer cores than this one holds.
    pub fn owes_a_core(&self, held: Duration) -> bool {
        held >= MIN_HOLD && self.cores.lock().owed_by(self.index)
    }

    /// Takes a free core, or queues `waker` for the next one.
    fn take(&self, waker: &Waker) -> Result<(), Arc<Ticket>> {
        let mut state = self.cores.lock();
        let queued = !state.apps[self.index].waiters.is_empty();
        if state.free > 0 && !queued {
            state.free -= 1;
            state.grants += 1;
            let grants = state.grants;
            let app = &mut state.apps[self.index];
            app.in_use += 1;
            app.last_served = grants;
            return Ok(());
        }
        let ticket = Arc::new(Ticket { granted: AtomicBool::new(false), waker: Mutex::new(Some(waker.clone())) });
        state.apps[self.index].waiters.push_back(Arc::clone(&ticket));
        let preempt = state.owed_to(self.index);
        drop(state);
        if preempt {
            self.cores.engine.increment_epoch();
        }
        Err(ticket)
    }

    /// Gives a held core back.
    fn release(&self) {
        let mut state = self.cores.lock();
        state.apps[self.index].in_use -= 1;
        state.free += 1;
        state.grant();
    }

    /// Leaves the queue; a core granted meanwhile is given back.
    fn cancel(&self, ticket: &Arc<Ticket>) {
        let mut state = self.cores.lock();
        if ticket.granted.load(Ordering::Acquire) {
            state.apps[self.index].in_use -= 1;
            state.free += 1;
        } else {
            state.apps[self.index].waiters.retain(|t| !Arc::ptr_eq(t, ticket));
        }
        state.grant();
    }

    /// Cores this app holds now.
    pub fn in_use(&self) -> usize {
        self.cores.lock().apps[self.index].in_use
    }
}

/// Since when a guest holds its core.
#[derive(Default)]
pub struct Hold {
    /// Nanoseconds from [`base`]; 0 while it holds none.
    since: AtomicU64,
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

impl Hold {
    /// How long the guest has held its core (zero while it holds none).
    pub fn held(&self) -> Duration {
        match self.since.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => base().elapsed().saturating_sub(Duration::from_nanos(since)),
        }
    }

    fn start(&self) {
        let now = u64::try_from(base().elapsed().as_nanos()).unwrap_or(u64::MAX).max(1);
        self.since.store(now, Ordering::Relaxed);
    }

    fn stop(&self) {
        self.since.store(0, Ordering::Relaxed);
    }
}

/// A guest's call, polled only while it holds a core (see [`AppCores::run`]).
pub struct OnCore<F: Future> {
    app: AppCores,
    hold: Arc<Hold>,
    inner: Pin<Box<F>>,
    /// Whether it holds a core now (only during a poll).
    held: bool,
    /// Its place in the queue while it waits for one.
    ticket: Option<Arc<Ticket>>,
}

impl<F: Future> Future for OnCore<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        match this.ticket.take() {
            Some(ticket) => {
                let mut waker = ticket.waker.lock().expect("never poisoned");
                if !ticket.granted.load(Ordering::Acquire) {
                    match waker.as_mut() {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => *waker = Some(cx.waker().clone()),
                    }
                    drop(waker);
                    this.ticket = Some(ticket);
                    return Poll::Pending;
                }
            }
            None => {
                if let Err(ticket) = this.app.take(cx.waker()) {
                    this.ticket = Some(ticket);
                    return Poll::Pending;
                }
            }
        }
        this.held = true;
        this.hold.start();
        let outcome = this.inner.as_mut().poll(cx);
        this.hold.stop();
        this.held = false;
        this.app.release();
        outcome
    }
}

impl<F: Future> Drop for OnCore<F> {
    fn drop(&mut self) {
        // A poll that panicked still held its core.
        if self.held {
            self.app.release();
        }
        if let Some(ticket) = self.ticket.take() {
            self.app.cancel(&ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn cores(n: usize) -> Arc<Cores> {
        Cores::with(Engine::default(), n)
    }

    /// A future that is pending until `go` is set, counting its polls.
    fn blocked(go: Arc<AtomicBool>, polls: Arc<AtomicUsize>) -> impl Future<Output = ()> {
        std::future::poll_fn(move |cx| {
            polls.fetch_add(1, Ordering::Relaxed);
            if go.load(Ordering::Relaxed) {
                Poll::Ready(())
            } else {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
    }

    fn poll_once<F: Future>(f: &mut Pin<Box<OnCore<F>>>) -> Poll<F::Output> {
        let waker = Waker::noop();
        f.as_mut().poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn a_core_is_held_only_during_a_poll() {
        let cores = cores(1);
        let app = cores.register();
        let (go, polls) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let mut a = Box::pin(app.run(Arc::default(), blocked(Arc::clone(&go), Arc::clone(&polls))));
        let mut b = Box::pin(app.run(Arc::default(), blocked(Arc::clone(&go), Arc::clone(&polls))));
        assert!(poll_once(&mut a).is_pending());
        assert_eq!(app.in_use(), 0, "a pending guest holds no core");
        assert!(poll_once(&mut b).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 2, "both ran, one after the other");
        go.store(true, Ordering::Relaxed);
        assert!(poll_once(&mut a).is_ready() && poll_once(&mut b).is_ready());
        assert_eq!(app.in_use(), 0);
    }

    #[test]
    fn a_freed_core_goes_to_the_app_holding_fewest() {
        let cores = cores(1);
        let (noisy, quiet) = (cores.register(), cores.register());
        let (go, polls) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        // Noisy holds the one core (as if inside a poll) and has a guest
        // queued; quiet then queues one.
        assert!(noisy.take(Waker::noop()).is_ok());
        let mut queued = Box::pin(noisy.run(Arc::default(), blocked(Arc::clone(&go), Arc::clone(&polls))));
        assert!(poll_once(&mut queued).is_pending());
        let mut calm = Box::pin(quiet.run(Arc::default(), blocked(Arc::clone(&go), Arc::clone(&polls))));
        assert!(poll_once(&mut calm).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 0, "neither ran: no core");
        // Noisy, holding more than quiet, owes its core once it held it long enough.
        assert!(!noisy.owes_a_core(Duration::ZERO));
        assert!(noisy.owes_a_core(MIN_HOLD));
        assert!(!quiet.owes_a_core(MIN_HOLD));
        noisy.release();
        // Both hold none now; quiet, served least recently, gets the core,
        // though noisy's guest queued first.
        assert_eq!((noisy.in_use(), quiet.in_use()), (0, 1));
        go.store(true, Ordering::Relaxed);
        assert!(poll_once(&mut calm).is_ready());
        assert!(poll_once(&mut queued).is_ready());
        assert_eq!((noisy.in_use(), quiet.in_use()), (0, 0));
    }

    #[test]
    fn a_waiter_dropped_after_its_grant_gives_the_core_back() {
        let cores = cores(1);
        let app = cores.register();
        let other = cores.register();
        assert!(app.take(Waker::noop()).is_ok());
        let (go, polls) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicUsize::new(0)));
        let mut waiting = Box::pin(other.run(Arc::default(), blocked(Arc::clone(&go), Arc::clone(&polls))));
        assert!(poll_once(&mut waiting).is_pending());
        app.release();
        assert_eq!(other.in_use(), 1, "granted, not yet polled");
        drop(waiting);
        assert_eq!(other.in_use(), 0);
        let mut next = Box::pin(app.run(Arc::default(), blocked(go, polls)));
        assert!(poll_once(&mut next).is_ready(), "the core came back");
    }
}
