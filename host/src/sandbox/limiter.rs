//! The per-request memory limiter: `--memory` for one instance, and the
//! record of whether that limit is what failed and how high it went.

use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// StoreLimits, plus a record of whether the memory limit was what failed.
pub struct Limiter {
    /// The limits themselves.
    inner: StoreLimits,
    /// Set when a memory grow was refused.
    pub memory_hit: bool,
    /// The largest linear memory granted, in bytes.
    pub peak: usize,
}

impl Limiter {
    /// A limiter that grants each instance at most `memory_bytes`.
    pub fn new(memory_bytes: usize) -> Self {
        Self { inner: StoreLimitsBuilder::new().memory_size(memory_bytes).build(), memory_hit: false, peak: 0 }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let ok = self.inner.memory_growing(current, desired, maximum)?;
        self.memory_hit |= !ok;
        if ok {
            self.peak = self.peak.max(desired);
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
