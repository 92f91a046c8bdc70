//! The per-request memory limiter: `--memory` for one instance, and the
//! record of whether that limit is what failed and how high it went. The
//! host's own work memory for a request (scrypt's) is counted against the
//! same limit through [`Limiter::room`].

use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// StoreLimits, plus a record of whether the memory limit was what failed.
pub struct Limiter {
    /// The limits themselves.
    inner: StoreLimits,
    /// Set when a memory grow was refused.
    pub memory_hit: bool,
    /// The largest linear memory granted, in bytes (with the host's work
    /// memory for the request, while it had some).
    pub peak: usize,
    /// The linear memory the instance holds now, in bytes.
    current: usize,
    /// `--memory`, in bytes.
    limit: usize,
}

impl Limiter {
    /// A limiter that grants each instance at most `memory_bytes`.
    pub fn new(memory_bytes: usize) -> Self {
        let inner = StoreLimitsBuilder::new().memory_size(memory_bytes).build();
        Self { inner, memory_hit: false, peak: 0, current: 0, limit: memory_bytes }
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
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let ok = self.inner.memory_growing(current, desired, maximum)?;
        self.memory_hit |= !ok;
        if ok {
            // One memory's growth (a component could have more than one).
            self.current = self.current + desired - current;
            self.peak = self.peak.max(self.current);
        }
        Ok(ok)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
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
