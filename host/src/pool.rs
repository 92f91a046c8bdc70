//! The sandbox slots every app shares: one pool of `[server] max_instances`
//! instances, each app capped at its own `max_instances`, waiting in a queue
//! of its own.
//!
//! When the apps' caps add up to more than the pool, the slots are shared
//! so that no app can starve another. Each app is guaranteed a *share*: the
//! pool divided evenly among the apps (at least one slot each), or its own
//! cap if that is smaller. An app may go past its share only into slots no
//! other app's unused share needs: a flood of one app's requests can take
//! every slot that is idle, but never the ones another app is owed, so a
//! request of an app below its share gets a slot at once. A slot that frees
//! goes to the waiting app furthest below its share (fewest in use first),
//! and within an app to its oldest waiter.
//!
//! An app's record lives as long as its version: it is removed once the
//! version is gone ([`AppSlots::release`]) and its last slot is back, so a
//! server that reloads for months keeps records only for what it serves.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The shared slots.
pub struct Pool {
    state: Mutex<State>,
}

struct State {
    free: usize,
    /// By registration number, oldest first (ties in `grant` go to it).
    apps: BTreeMap<u64, AppState>,
    next_id: u64,
}

struct AppState {
    cap: usize,
    share: usize,
    in_use: usize,
    /// Senders to waiting requests, oldest first. One whose receiver is gone
    /// (its request timed out or its client left) is skipped.
    waiters: VecDeque<oneshot::Sender<Slot>>,
    /// Replaced or gone from the config: once its queue is empty, owed no
    /// share and granted no slot.
    retired: bool,
    /// Its version is gone: no request can queue any more, and the record
    /// goes once its slots are back.
    released: bool,
}

impl AppState {
    /// Retired with nothing queued: it only gives slots back now.
    fn gone(&self) -> bool {
        self.retired && self.waiters.is_empty()
    }

    /// Slots of its share it does not use: what it may still claim at once.
    fn owed(&self) -> usize {
        if self.gone() {
            0
        } else {
            self.share.saturating_sub(self.in_use)
        }
    }
}

impl State {
    fn app(&mut self, id: u64) -> &mut AppState {
        self.apps.get_mut(&id).expect("an app's record outlives its handle's use")
    }

    /// Whether app `id` may take a free slot now.
    fn may_take(&self, id: u64) -> bool {
        let app = &self.apps[&id];
        if self.free == 0 || app.in_use >= app.cap {
            return false;
        }
        if app.in_use < app.share {
            return true;
        }
        let owed_to_others: usize = self.apps.iter().filter(|(j, _)| **j != id).map(|(_, a)| a.owed()).sum();
        self.free > owed_to_others
    }

    /// Shares after the set of apps changed.
    fn reshare(&mut self, total: usize) {
        let live = self.apps.values().filter(|a| !a.gone()).count().max(1);
        let even = (total / live).max(1);
        for app in self.apps.values_mut() {
            app.share = if app.gone() { 0 } else { app.cap.min(even) };
        }
    }

    /// Removes app `id`'s record if its version is gone and it holds no
    /// slot (a waiter still queued is one that gave up: no request can
    /// queue after the release).
    fn remove_if_done(&mut self, id: u64) {
        if self.apps.get(&id).is_some_and(|a| a.released && a.in_use == 0) {
            self.apps.remove(&id);
        }
    }
}

/// One app's handle on the pool.
#[derive(Clone)]
pub struct AppSlots {
    pool: Arc<Pool>,
    id: u64,
}

/// A slot held by one request; dropping it frees the slot.
pub struct Slot {
    pool: Arc<Pool>,
    id: u64,
}

impl Pool {
    /// A pool of `total` slots, with no app yet.
    pub fn new(total: usize) -> Arc<Self> {
        Arc::new(Self { state: Mutex::new(State { free: total, apps: BTreeMap::new(), next_id: 0 }) })
    }

    fn total(state: &State) -> usize {
        state.free + state.apps.values().map(|a| a.in_use).sum::<usize>()
    }

    /// Adds an app that may hold up to `cap` slots at once.
    pub fn register(self: &Arc<Self>, cap: usize) -> AppSlots {
        let mut state = self.state.lock().expect("the pool lock is never poisoned");
        let id = state.next_id;
        state.next_id += 1;
        let app = AppState { cap, share: 0, in_use: 0, waiters: VecDeque::new(), retired: false, released: false };
        state.apps.insert(id, app);
        let total = Self::total(&state);
        state.reshare(total);
        AppSlots { pool: Arc::clone(self), id }
    }

    /// Apps with a record (live, retired, or released with slots still out).
    #[cfg(test)]
    fn records(&self) -> usize {
        self.state.lock().expect("the pool lock is never poisoned").apps.len()
    }

    /// Gives freed slots to waiters, furthest below its share first.
    fn grant(self: &Arc<Self>, state: &mut State) {
        // A retired app whose queue emptied leaves its share to the others.
        let total = Self::total(state);
        state.reshare(total);
        loop {
            let next = state
                .apps
                .iter()
                .filter(|&(&id, a)| !a.waiters.is_empty() && state.may_take(id))
                .min_by_key(|(_, a)| (a.in_use >= a.share, a.in_use))
                .map(|(&id, _)| id);
            let Some(id) = next else { return };
            let waiter = state.app(id).waiters.pop_front().expect("not empty");
            if waiter.is_closed() {
                continue;
            }
            state.free -= 1;
            state.app(id).in_use += 1;
            if let Err(slot) = waiter.send(Slot { pool: Arc::clone(self), id }) {
                // It went away just now: give the slot back without
                // re-entering the lock through `Slot::drop`.
                std::mem::forget(slot);
                state.free += 1;
                state.app(id).in_use -= 1;
            }
        }
    }
}

impl AppSlots {
    /// Waits for a slot of this app's.
    pub async fn acquire(&self) -> Slot {
        let rx = {
            let mut state = self.pool.state.lock().expect("the pool lock is never poisoned");
            // Waiters of this app come first: no overtaking in its queue.
            if state.app(self.id).waiters.is_empty() && state.may_take(self.id) {
                state.free -= 1;
                state.app(self.id).in_use += 1;
                return Slot { pool: Arc::clone(&self.pool), id: self.id };
            }
            let (tx, rx) = oneshot::channel();
            state.app(self.id).waiters.push_back(tx);
            rx
        };
        rx.await.expect("a waiter's sender is only dropped by sending or when its receiver is gone")
    }

    /// Slots this app holds now.
    pub fn in_use(&self) -> usize {
        self.pool.state.lock().expect("the pool lock is never poisoned").apps.get(&self.id).map_or(0, |a| a.in_use)
    }

    /// Takes the app out of sharing, once it is replaced or removed: what
    /// it has queued is still served as before, and then its share goes to
    /// the others. Requests holding its slots finish. Retiring twice is
    /// retiring once.
    pub fn retire(&self) {
        let mut state = self.pool.state.lock().expect("the pool lock is never poisoned");
        if state.app(self.id).retired {
            return;
        }
        state.app(self.id).retired = true;
        let total = Pool::total(&state);
        state.reshare(total);
        self.pool.grant(&mut state);
    }

    /// The app's version is gone (its `Sandbox` dropped, so no request can
    /// ask for a slot any more): retires it, and removes its record once
    /// the slots it still holds are back. No use of this handle may follow.
    pub fn release(&self) {
        self.retire();
        let mut state = self.pool.state.lock().expect("the pool lock is never poisoned");
        state.app(self.id).released = true;
        state.remove_if_done(self.id);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.pool.state.lock().expect("the pool lock is never poisoned");
        state.free += 1;
        state.app(self.id).in_use -= 1;
        state.remove_if_done(self.id);
        self.pool.grant(&mut state);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn try_acquire(app: &AppSlots) -> Option<Slot> {
        tokio::time::timeout(Duration::from_millis(20), app.acquire()).await.ok()
    }

    #[tokio::test]
    async fn one_app_gets_up_to_its_cap() {
        let pool = Pool::new(4);
        let app = pool.register(3);
        let held: Vec<_> = futures_slots(&app, 3).await;
        assert!(try_acquire(&app).await.is_none(), "past its cap");
        drop(held);
        assert!(try_acquire(&app).await.is_some());
    }

    async fn futures_slots(app: &AppSlots, n: usize) -> Vec<Slot> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(try_acquire(app).await.expect("a slot"));
        }
        out
    }

    #[tokio::test]
    async fn a_flood_takes_idle_slots_but_never_another_apps_share() {
        // Caps of 8 + 8 in a pool of 8: shares of 4 each.
        let pool = Pool::new(8);
        let noisy = pool.register(8);
        let quiet = pool.register(8);
        let flood = futures_slots(&noisy, 4).await;
        assert!(try_acquire(&noisy).await.is_none(), "the other app's four are kept for it");
        // The quiet app gets its whole share at once.
        let calm = futures_slots(&quiet, 4).await;
        assert!(try_acquire(&quiet).await.is_none());
        drop(calm);
        // With one app alone, the other's unused share stays reserved...
        assert!(try_acquire(&noisy).await.is_none());
        drop(flood);
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_app_furthest_below_its_share() {
        // Pool of 5, three apps: shares of 1 each, and two spare slots.
        let pool = Pool::new(5);
        let a = pool.register(5);
        let b = pool.register(5);
        let c = pool.register(5);
        let mut a_held = futures_slots(&a, 3).await; // its share and both spares
        let b_held = futures_slots(&b, 1).await;
        let c_held = futures_slots(&c, 1).await;
        let waiting = |app: &AppSlots| {
            let app = app.clone();
            tokio::spawn(async move { app.acquire().await })
        };
        let (a_wait, b_wait) = (waiting(&a), waiting(&b));
        tokio::time::sleep(Duration::from_millis(20)).await;
        // One of A's frees: A (now two in use) and B (one) wait, both at
        // their share or past it, so B, with fewer, gets it.
        drop(a_held.pop());
        let b_slot = tokio::time::timeout(Duration::from_secs(1), b_wait).await.unwrap().unwrap();
        assert_eq!((a.in_use(), b.in_use()), (2, 2));
        assert!(!a_wait.is_finished());
        // C's slot, once free, is C's share: kept for it, not given to A.
        drop(c_held);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!a_wait.is_finished());
        drop(b_held);
        let a_slot = tokio::time::timeout(Duration::from_secs(1), a_wait).await.unwrap().unwrap();
        assert_eq!((a.in_use(), b.in_use(), c.in_use()), (3, 1, 0));
        drop((a_slot, b_slot, a_held));
        assert_eq!((a.in_use(), b.in_use(), c.in_use()), (0, 0, 0));
    }

    #[tokio::test]
    async fn a_waiter_that_gave_up_does_not_keep_a_slot() {
        let pool = Pool::new(1);
        let app = pool.register(1);
        let held = app.acquire().await;
        assert!(try_acquire(&app).await.is_none()); // this waiter is dropped
        drop(held);
        assert!(try_acquire(&app).await.is_some(), "the slot came back");
    }

    #[tokio::test]
    async fn a_released_apps_record_goes_once_its_slots_are_back() {
        let pool = Pool::new(2);
        let live = pool.register(2);
        // A thousand versions loaded and replaced, each served one request.
        for _ in 0..1000 {
            let old = pool.register(2);
            let slot = old.acquire().await;
            old.release();
            assert_eq!(pool.records(), 2, "kept while its request holds a slot");
            drop(slot);
            assert_eq!(pool.records(), 1);
        }
        // The live app still has the whole pool.
        let held = futures_slots(&live, 2).await;
        drop(held);
    }

    #[tokio::test]
    async fn a_retired_app_gives_its_share_to_the_others() {
        let pool = Pool::new(4);
        let old = pool.register(4);
        let new = pool.register(4);
        let _held = futures_slots(&new, 2).await;
        assert!(try_acquire(&new).await.is_none(), "two are kept for the old app");
        let old_held = futures_slots(&old, 2).await;
        let queued = tokio::spawn({
            let old = old.clone();
            async move { old.acquire().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        old.retire();
        // Its share is the new app's now; what it had queued is still served
        // once a slot is free.
        drop(old_held);
        let served = tokio::time::timeout(Duration::from_secs(1), queued).await.unwrap().unwrap();
        assert!(try_acquire(&new).await.is_some());
        drop(served);
    }
}
