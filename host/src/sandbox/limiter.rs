//! The per-request memory limiter: `--memory` for one instance, and its
//! part of the server's memory budget (`budget`), taken as the instance's
//! memory grows and given back when it is dropped. The host's own work
//! memory for a request (scrypt's) counts against both ([`Limiter::lease`]).
//!
//! The limiter is asynchronous, which lets one decision happen before a
//! guest touches the memory it grows by: a grow of [`MOVE_GROWTH`] or more
//! moves the request to the background runtime first (`background`), as a
//! guest that computes for long moves. Filling fresh memory is one
//! instruction (`memory.fill`) that faults every page in and never reaches
//! an epoch check; run on the server's own workers, twelve requests filling
//! 300 MiB each held both of them for seconds, and every other tenant's
//! connections with them.

use wasmtime::{ResourceLimiter, ResourceLimiterAsync, StoreLimits, StoreLimitsBuilder};

use crate::background;
use crate::budget::{AppBudget, Lease};

/// A grow at least this large moves the request to the background runtime
/// before the guest can touch the new memory.
pub const MOVE_GROWTH: usize = 16 << 20;

/// What one instance may hold, and what it did.
pub struct Limiter {
    /// The per-request limits (`--memory`, tables, instances).
    inner: StoreLimits,
    /// The app's share of the server's budget.
    budget: AppBudget,
    /// Bytes this instance took from the budget.
    taken: u64,
    /// Set when a grow was refused by `--memory`.
    pub memory_hit: bool,
    /// Set when a grow was refused by the server's budget.
    pub budget_hit: bool,
    /// The largest linear memory granted, in bytes (with the host's work
    /// memory for the request, while it had some).
    pub peak: usize,
    /// The linear memory the instance holds now, in bytes.
    current: usize,
    /// `--memory`, in bytes.
    limit: usize,
    /// Where to ask to move to the background runtime.
    moving: background::Move,
    /// The instance checks the app as it is loaded: it takes from the
    /// budget whatever is free (`AppBudget::take_for_check`).
    checking: bool,
}

impl Limiter {
    /// A limiter that grants an instance at most `memory_bytes`, from
    /// `budget`.
    pub fn new(memory_bytes: usize, budget: AppBudget, moving: background::Move) -> Self {
        let inner = StoreLimitsBuilder::new().memory_size(memory_bytes).build();
        Self {
            inner,
            budget,
            taken: 0,
            memory_hit: false,
            budget_hit: false,
            peak: 0,
            current: 0,
            limit: memory_bytes,
            moving,
            checking: false,
        }
    }

    /// Makes this the limiter of the instance that checks the app as it is
    /// loaded, before the budget knows what one instance of it needs.
    pub fn checking(&mut self) {
        self.checking = true;
    }

    /// `--memory`, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The linear memory the instance holds now, in bytes.
    pub fn current(&self) -> usize {
        self.current
    }

    /// How many more bytes the request may take, beside its memory.
    pub fn room(&self) -> usize {
        self.limit.saturating_sub(self.current)
    }

    /// Takes `bytes` of the budget for the host's work for this request,
    /// until the lease is dropped; `None` (and `budget_hit` set) if the
    /// budget cannot cover them.
    pub fn lease(&mut self, bytes: u64) -> Option<Lease> {
        let lease = self.budget.lease(bytes);
        self.budget_hit |= lease.is_none();
        lease
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.budget.instance_ended(self.taken, self.peak as u64);
    }
}

#[async_trait::async_trait]
impl ResourceLimiterAsync for Limiter {
    async fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if !self.inner.memory_growing(current, desired, maximum)? {
            self.memory_hit = true;
            return Ok(false);
        }
        let growth = desired.saturating_sub(current);
        let taken =
            if self.checking { self.budget.take_for_check(growth as u64) } else { self.budget.try_take(growth as u64) };
        if !taken {
            self.budget_hit = true;
            return Ok(false);
        }
        self.taken += growth as u64;
        // One memory's growth (a component could have more than one).
        self.current += growth;
        self.peak = self.peak.max(self.current);
        // Not the snapshot's own memory, which every instance starts with.
        if current > 0 && growth >= MOVE_GROWTH {
            // Moved at this yield, before the guest faults the pages in.
            self.moving.ask();
            tokio::task::yield_now().await;
        }
        Ok(true)
    }

    async fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}
