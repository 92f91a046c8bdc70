//! The memory budget: the linear memory all sandboxes may hold at once
//! (`--memory-budget`, `[server] memory_budget`), so that no flood of
//! memory-hungry requests, however many tenants send it, can take the
//! machine's memory and get the server killed.
//!
//! A sandbox takes from the budget as its memory grows (its snapshot at
//! instantiation, then every `memory.grow`), and gives it all back when it
//! is dropped; the host's work memory for it (scrypt) is taken the same way
//! ([`Lease`]). A grow the budget cannot cover fails at once: the app gets
//! a `MemoryError`, and the request a 503 if it does not handle it. The
//! host never holds more than the budget.
//!
//! The budget is shared the way `pool` shares the slots: each app is owed a
//! *share*, the budget divided evenly among the apps, or what the app could
//! use at most (`memory` × `max_instances`) if that is less. An app may go
//! past its share only into memory no other app's unused share is owed, so
//! one tenant's flood leaves every other tenant its share.
//!
//! An app is owed at least what one of its instances has needed: its
//! snapshot, measured when it is loaded, then the most any of its requests
//! held. With many apps, the even share falls below that (500 apps share
//! a 12 GiB budget at 24.5 MiB each, and a Flask app's snapshot is larger),
//! and an app owed less than one instance could never run, on a server
//! with gigabytes free. Once what the apps are owed comes to more than the
//! budget, no app goes past its share, and each still gets its share while
//! the budget has it: the machine is then promised more than it has, and
//! the budget still holds.
//!
//! The check of an app as it is loaded (`Sandbox::check`) instantiates it
//! once, before its need is known: that instance takes from the budget
//! whatever is free, regardless of shares ([`AppBudget::take_for_check`]).
//!
//! An app's record lives as long as its version: once retired it is removed
//! as soon as it holds nothing, so records do not pile up across reloads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The budget, shared by every app's sandboxes.
pub struct MemoryBudget {
    state: Mutex<State>,
}

struct State {
    /// Bytes not taken.
    free: u64,
    /// By registration number.
    apps: BTreeMap<u64, AppUse>,
    next_id: u64,
}

struct AppUse {
    /// The most the app could hold: `memory` × `max_instances`.
    cap: u64,
    /// The most one of its instances has held: the least it is owed.
    need: u64,
    /// What it is owed.
    share: u64,
    /// What its sandboxes hold now.
    used: u64,
    /// Its version is gone (see [`AppBudget::retire`]): owed nothing, and
    /// removed once it holds nothing.
    retired: bool,
}

impl State {
    fn total(&self) -> u64 {
        self.free + self.apps.values().map(|a| a.used).sum::<u64>()
    }

    /// Shares after the set of apps changed.
    fn reshare(&mut self) {
        let total = self.total();
        let live = self.apps.values().filter(|a| !a.retired).count().max(1) as u64;
        for app in self.apps.values_mut() {
            app.share = if app.retired { 0 } else { app.cap.min((total / live).max(app.need)) };
        }
    }

    /// Whether app `id` may take `bytes` more now (never, once its record
    /// is gone).
    fn may_take(&self, id: u64, bytes: u64) -> bool {
        let Some(app) = self.apps.get(&id) else { return false };
        if bytes > self.free {
            return false;
        }
        if app.used + bytes <= app.share {
            return true;
        }
        let owed_to_others: u64 = self
            .apps
            .iter()
            .filter(|(j, a)| **j != id && !a.retired)
            .map(|(_, a)| a.share.saturating_sub(a.used))
            .sum();
        self.free - bytes >= owed_to_others
    }

    /// Removes app `id`'s record if it is retired and holds nothing.
    fn remove_if_done(&mut self, id: u64) {
        if self.apps.get(&id).is_some_and(|a| a.retired && a.used == 0) {
            self.apps.remove(&id);
        }
    }
}

impl MemoryBudget {
    /// A budget of `bytes`, with no app yet.
    pub fn new(bytes: u64) -> Arc<Self> {
        Arc::new(Self { state: Mutex::new(State { free: bytes, apps: BTreeMap::new(), next_id: 0 }) })
    }

    /// The whole budget, in bytes.
    pub fn total(&self) -> u64 {
        self.lock().total()
    }

    /// Adds an app whose sandboxes may hold up to `cap` bytes together.
    pub fn register(self: &Arc<Self>, cap: u64) -> AppBudget {
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.apps.insert(id, AppUse { cap, need: 0, share: 0, used: 0, retired: false });
        state.reshare();
        AppBudget { budget: Arc::clone(self), id }
    }

    /// Apps with a record (live, or retired and still holding memory).
    #[cfg(test)]
    fn records(&self) -> usize {
        self.lock().apps.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("the budget lock is never poisoned")
    }
}

/// One app's handle on the budget.
#[derive(Clone)]
pub struct AppBudget {
    budget: Arc<MemoryBudget>,
    id: u64,
}

impl AppBudget {
    /// Takes `bytes` for one of the app's sandboxes, if the budget and the
    /// app's share allow; `false` (and nothing taken) if not.
    pub fn try_take(&self, bytes: u64) -> bool {
        let mut state = self.budget.lock();
        if !state.may_take(self.id, bytes) {
            return false;
        }
        state.free -= bytes;
        state.apps.get_mut(&self.id).expect("may_take found it").used += bytes;
        true
    }

    /// Takes `bytes` for the instance that checks the app as it is loaded:
    /// whatever is free, regardless of shares, since what one instance
    /// needs is not known before it. `false` (and nothing taken) if the
    /// budget has less free.
    pub fn take_for_check(&self, bytes: u64) -> bool {
        let mut state = self.budget.lock();
        let free = state.free;
        let Some(app) = state.apps.get_mut(&self.id) else { return false };
        if bytes > free {
            return false;
        }
        app.used += bytes;
        state.free -= bytes;
        true
    }

    /// Gives back `bytes` the app's sandboxes took.
    pub fn give_back(&self, bytes: u64) {
        self.instance_ended(bytes, 0);
    }

    /// Gives back the `taken` bytes of an instance that is gone, whose
    /// largest memory was `peak`: the app is owed at least that from now on.
    pub fn instance_ended(&self, taken: u64, peak: u64) {
        let mut state = self.budget.lock();
        let Some(app) = state.apps.get_mut(&self.id) else { return };
        let bytes = taken.min(app.used);
        app.used -= bytes;
        let raised = peak > app.need && !app.retired;
        if raised {
            app.need = peak;
        }
        state.free += bytes;
        if raised {
            state.reshare();
        }
        state.remove_if_done(self.id);
    }

    /// Takes `bytes` for as long as the returned lease lives.
    pub fn lease(&self, bytes: u64) -> Option<Lease> {
        self.try_take(bytes).then(|| Lease { app: self.clone(), bytes })
    }

    /// What the app's sandboxes hold now, in bytes.
    pub fn used(&self) -> u64 {
        self.budget.lock().apps.get(&self.id).map_or(0, |a| a.used)
    }

    /// The whole budget, in bytes.
    pub fn total(&self) -> u64 {
        self.budget.total()
    }

    /// What no sandbox of any app holds now, in bytes.
    pub fn free(&self) -> u64 {
        self.budget.lock().free
    }

    /// Takes the app out of sharing once the version it registered is gone
    /// (the last request of a replaced or removed version has ended, or a
    /// version that failed to load is dropped).
    pub fn retire(&self) {
        let mut state = self.budget.lock();
        let Some(app) = state.apps.get_mut(&self.id) else { return };
        if !app.retired {
            app.retired = true;
            state.reshare();
            state.remove_if_done(self.id);
        }
    }
}

/// Bytes taken from the budget until this is dropped.
pub struct Lease {
    app: AppBudget,
    bytes: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.app.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn one_app_may_take_the_whole_budget_and_no_more() {
        let budget = MemoryBudget::new(100 * MIB);
        let app = budget.register(1 << 40);
        assert!(app.try_take(60 * MIB) && app.try_take(40 * MIB));
        assert!(!app.try_take(1), "past the budget");
        app.give_back(40 * MIB);
        assert_eq!(app.used(), 60 * MIB);
        assert!(app.try_take(40 * MIB));
    }

    #[test]
    fn a_flood_of_one_app_leaves_the_others_their_share() {
        let budget = MemoryBudget::new(100 * MIB);
        let (noisy, quiet) = (budget.register(1 << 40), budget.register(1 << 40));
        // Each is owed half: noisy takes its half, then nothing quiet is owed.
        assert!(noisy.try_take(50 * MIB));
        assert!(!noisy.try_take(MIB), "quiet's share is not free for noisy");
        assert!(quiet.try_take(30 * MIB));
        // What quiet is not owed (past its 50) it may take, and noisy may
        // take what quiet does not use only while quiet's share is covered.
        assert!(!noisy.try_take(21 * MIB));
        assert!(quiet.try_take(20 * MIB));
        assert!(!quiet.try_take(MIB) && !noisy.try_take(MIB));
        // Once noisy is retired, its share is quiet's; what it holds comes
        // back as its requests end.
        noisy.retire();
        noisy.give_back(50 * MIB);
        assert!(quiet.try_take(50 * MIB));
    }

    #[test]
    fn a_small_app_is_owed_only_what_it_could_use() {
        let budget = MemoryBudget::new(100 * MIB);
        let (small, big) = (budget.register(10 * MIB), budget.register(1 << 40));
        assert!(big.try_take(90 * MIB), "the small app is owed only its 10");
        assert!(!big.try_take(MIB));
        assert!(small.try_take(10 * MIB));
    }

    #[test]
    fn an_app_is_owed_what_one_of_its_instances_needed_though_the_even_share_is_less() {
        // Ten apps: an even share is 10 MiB, and one instance of `big`
        // needs 30, which it could never take while nine others are owed 90.
        let budget = MemoryBudget::new(100 * MIB);
        let apps: Vec<_> = (0..10).map(|_| budget.register(1 << 40)).collect();
        let big = &apps[0];
        assert!(!big.try_take(30 * MIB));
        // Loaded, it is checked with what is free; the check's instance
        // then sets what it is owed.
        assert!(big.take_for_check(30 * MIB));
        big.instance_ended(30 * MIB, 30 * MIB);
        assert!(big.try_take(30 * MIB), "owed one instance");
        // The apps are owed 120 MiB of 100: none goes past its share, and
        // each gets its share while there is any.
        assert!(!big.try_take(MIB));
        for app in &apps[1..8] {
            assert!(app.try_take(10 * MIB));
        }
        assert!(!apps[8].try_take(10 * MIB), "the budget holds");
        // A later request of another app that held more raises its share.
        apps[9].instance_ended(0, 12 * MIB);
        big.give_back(30 * MIB);
        assert!(apps[9].try_take(12 * MIB));
    }

    #[test]
    fn a_check_takes_only_what_is_free() {
        let budget = MemoryBudget::new(100 * MIB);
        let (a, b) = (budget.register(1 << 40), budget.register(1 << 40));
        assert!(a.try_take(50 * MIB));
        assert!(b.take_for_check(50 * MIB), "past the even share is fine");
        assert!(!b.take_for_check(MIB), "past the budget is not");
        b.give_back(50 * MIB);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_retired_apps_record_goes_once_it_holds_nothing() {
        let budget = MemoryBudget::new(100 * MIB);
        let live = budget.register(1 << 40);
        // A thousand versions loaded and replaced, each with a sandbox that
        // outlives the retirement a little.
        for _ in 0..1000 {
            let old = budget.register(1 << 40);
            assert!(old.try_take(10 * MIB));
            old.retire();
            assert_eq!(budget.records(), 2, "kept while it holds memory");
            old.give_back(10 * MIB);
            assert_eq!(budget.records(), 1);
            assert!(!old.try_take(1), "a handle whose record is gone takes nothing");
        }
        assert_eq!(budget.total(), 100 * MIB);
        assert!(live.try_take(100 * MIB), "the live app is owed the whole budget again");
    }

    #[test]
    fn a_lease_gives_back_what_it_took() {
        let budget = MemoryBudget::new(10 * MIB);
        let app = budget.register(1 << 40);
        let lease = app.lease(8 * MIB).unwrap();
        assert!(app.lease(4 * MIB).is_none());
        drop(lease);
        assert_eq!(app.used(), 0);
    }
}
