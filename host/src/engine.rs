//! The one wasmtime `Engine` every app shares ([`SharedEngine`]), with the
//! thread that drives epoch interruption ([`EpochTicker`]).
//!
//! The engine allocates instances from one pool for all apps ([`PoolSpec`]):
//! one slot per possible live sandbox, reserved at startup, so a request's
//! instance costs no mmap or munmap and its memory is reset to the snapshot
//! in place. Which app may use how many slots is `pool`'s business; what an
//! `app.wasm` must pass before it is compiled is `upload`'s, and where the
//! compiled code is kept is `codecache`'s. The engine compiles the core
//! modules every app shares (CPython) once, into files `codecache` keeps,
//! so that a new app compiles only its own (`vendor/README.md`, patch 8).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use wasmtime::{Config, Engine, SharedModuleCode};

use crate::codecache::{CodeCache, SharedModuleFiles};

/// What the shared instance pool is sized for.
#[derive(Debug, Clone, Copy)]
pub struct PoolSpec {
    /// Sandboxes alive at once, all apps together.
    pub slots: usize,
    /// The largest `memory` of any app: the size of every slot.
    pub memory_bytes: usize,
    /// Whether any app meters fuel (then every app's code is compiled with
    /// the checks, and an app without a budget gets an unlimited one).
    pub fuel: bool,
    /// Whether to write `/tmp/perf-PID.map` for `perf` (`--perf-map`).
    pub perf_map: bool,
}

/// The engine all apps run in, the compiled-code cache, and the epoch.
pub struct SharedEngine {
    pub engine: Engine,
    pub spec: PoolSpec,
    /// Compiled components, on disk and in memory.
    pub cache: CodeCache,
    /// Advances the epoch (faster while guests compete for the cores) for as
    /// long as the engine is in use.
    ticker: EpochTicker,
}

impl SharedEngine {
    /// Builds the engine and reserves its pool.
    ///
    /// # Errors
    /// The pool cannot be reserved.
    pub fn new(spec: PoolSpec, cache_dir: &Path) -> Result<Arc<Self>> {
        let cache = CodeCache::new(cache_dir);
        let engine = new_engine(&spec, &cache.shared_modules())?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(Arc::new(Self { engine, spec, cache, ticker }))
    }

    /// Counts an instance as running while the guard lives: the epoch ticks
    /// faster while guests compete for the cores.
    pub fn ticking(&self) -> Ticking<'_> {
        self.ticker.enter()
    }

    /// Whether guests compete for the cores now (see [`EpochTicker`]).
    pub fn contended(&self) -> Arc<AtomicBool> {
        self.ticker.contended()
    }
}

/// How often the epoch advances while guests compete for the cores (at
/// least as many run as there are cores): the slice a long-running guest
/// gets before it yields to the other tasks (see `sandbox`).
pub const FAST_TICK: Duration = Duration::from_millis(1);

/// How often it advances while fewer guests run than there are cores: a
/// guest that yields then leaves a core free. Ticking at 1 ms even then
/// made a lone client's hello request take 174–206 µs instead of 140 µs
/// (an unrelated process that wakes every millisecond does the same on this
/// machine: 208 µs), so it ticks only as often as deadlines need.
pub const SLOW_TICK: Duration = Duration::from_millis(10);

/// Memory each pool slot keeps mapped after its request. Only the pages the
/// request wrote are copied back from the snapshot (found with Linux's
/// `PAGEMAP_SCAN`, kernel 6.7 or later), so the next request in that slot
/// does not fault them in again. Past this much, pages go back to the kernel.
/// All written pages count, however scattered: upstream wasmtime stops after
/// 32 separate regions, the patched copy in `vendor/wasmtime` does not.
pub const KEEP_RESIDENT: usize = 4 << 20;

/// Builds the engine, with a pool of `spec.slots` sandboxes of
/// `spec.memory_bytes` each, reserved up front.
fn new_engine(spec: &PoolSpec, modules: &Arc<SharedModuleFiles>) -> Result<Engine> {
    match Engine::new(&engine_config(spec, true, modules.clone())) {
        Ok(engine) => Ok(engine),
        Err(err) => {
            // Most likely a kernel without PAGEMAP_SCAN: without it, keeping
            // memory resident means copying all of it back on every request.
            tracing::info!(cause = %err, "memory is not kept resident between requests");
            Engine::new(&engine_config(spec, false, modules.clone())).map_err(anyhow::Error::from).with_context(|| {
                format!(
                    "reserving memory for {} sandboxes of {} MiB; lower --max-instances or --memory",
                    spec.slots,
                    spec.memory_bytes >> 20
                )
            })
        }
    }
}

/// The engine settings every app runs with; `keep_resident` asks for the
/// `PAGEMAP_SCAN` reset, and `modules` keeps the modules apps share.
/// Public so that the tests of the vendored wasmtime run under the same
/// settings.
pub fn engine_config(spec: &PoolSpec, keep_resident: bool, modules: Arc<dyn SharedModuleCode>) -> Config {
    let mut config = Config::new();
    // Fresh instances come from a pool of slots reserved once: no mmap and
    // munmap per request, and a slot's memory is reset to the snapshot in
    // place. One slot per possible live sandbox, plus one for the check of
    // an app being loaded.
    let n = u32::try_from(spec.slots.saturating_add(1)).unwrap_or(u32::MAX);
    let mut pooling = wasmtime::PoolingAllocationConfig::new();
    // A componentize-py app has 14 core instances, one memory and two tables;
    // the headroom is for later toolchains.
    pooling
        .total_component_instances(n)
        .max_core_instances_per_component(32)
        .total_core_instances(n.saturating_mul(32))
        .max_memories_per_component(2)
        .total_memories(n.saturating_mul(2))
        .max_tables_per_component(4)
        .total_tables(n.saturating_mul(4))
        .table_elements(1 << 16)
        .total_stacks(n)
        .max_memory_size(spec.memory_bytes);
    if keep_resident {
        pooling
            .pagemap_scan(wasmtime::Enabled::Yes)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(1 << 20);
        // The memory image is mapped from the `.cwasm` file's page cache,
        // not copied into a memfd: a copy stays in memory for as long as its
        // app is loaded (50 apps at rest: 1,508 MiB PSS with the copies, 968
        // without). The vendored wasmtime maps only the image pages an
        // instance touches either way (`vendor/README.md`, patch 6).
        config.force_memory_init_memfd(false);
    }
    config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pooling));
    config.wasm_component_model(true);
    // Deadlines and yielding use epochs: the check costs one load and compare
    // per loop header, and the ticker thread is the only clock.
    config.epoch_interruption(true);
    // Fuel metering costs on every instruction, so it is compiled in only
    // when a budget is asked for (and the compiled-code cache keys on it).
    config.consume_fuel(spec.fuel);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // Every componentize-py app carries the same libpython, libc and
    // runtime modules, byte for byte: each is compiled once into a file of
    // its own, which every app's code then uses, and a new app compiles
    // only what is its own (vendor/README, patch 8). A function body's
    // offset differs from one app.wasm to the next, so the code carries no
    // address map: a trap's backtrace names its wasm functions but not
    // their byte offsets.
    config.generate_address_map(false);
    config.share_module_code(modules, SHARED_MODULE_MIN_CODE);
    if spec.perf_map {
        // Written as each module is loaded, from the cache too; it changes
        // no compiled code.
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    // The patched wasmtime in `vendor/` serializes compiled modules in its
    // own format, so its version names the patch: the compiled-code cache
    // keys on it, and wasmtime refuses code compiled by any other build.
    config
        .module_version(wasmtime::ModuleVersionStrategy::Custom(WASMTIME_VERSION.into()))
        .expect("a short version string");
    config
}

/// The version of the vendored, patched wasmtime (see `vendor/README.md`).
/// Bump the suffix whenever the patch changes what a compiled module holds.
const WASMTIME_VERSION: &str = "48.0.8+wsgi-wasm.3";

/// The function bodies, in bytes, from which a core module is compiled on
/// its own and shared (see `engine_config`). A componentize-py app's three
/// libraries reach it (libpython 5.9 MB, libc 374 KB, the runtime 231 KB);
/// its other modules, the two that differ per app among them, take 6.4 KB
/// at most and stay in the app's own code.
const SHARED_MODULE_MIN_CODE: usize = 64 << 10;

/// Advances the engine's epoch on a thread of its own: every [`FAST_TICK`]
/// while guests compete for the cores, else every [`SLOW_TICK`]. A guest
/// counts from when it has its slot until it ends, waits on I/O included.
/// The thread paces itself rather than being woken as guests start
/// (variants that woke it measured a lone client's hello request at
/// 280–310 µs instead of 140 µs; `docs/performance.md`).
///
/// Dropping it stops and joins the thread.
pub struct EpochTicker {
    /// Set on drop to ask the thread to finish.
    stop: Arc<AtomicBool>,
    /// Guests running now (see [`EpochTicker::enter`]).
    running: Arc<AtomicUsize>,
    /// Whether the epoch ticks fast now: guests compete for the cores.
    contended: Arc<AtomicBool>,
    /// The ticking thread; `None` only after it was joined.
    thread: Option<JoinHandle<()>>,
}

/// A guest counted as running while one of these lives.
pub struct Ticking<'a>(&'a EpochTicker);

impl Drop for Ticking<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EpochTicker {
    /// Starts ticking `engine`.
    ///
    /// # Panics
    /// If the OS refuses to start a thread.
    pub fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let running = Arc::new(AtomicUsize::new(0));
        let fast_from = cores();
        let contended = Arc::new(AtomicBool::new(false));
        let (flag, guests, fast_now) = (Arc::clone(&stop), Arc::clone(&running), Arc::clone(&contended));
        let thread = std::thread::Builder::new()
            .name("wsgi-wasm-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    // Fast ticks begin at most a slow tick after guests
                    // begin to compete.
                    let fast = guests.load(Ordering::Relaxed) >= fast_from;
                    fast_now.store(fast, Ordering::Relaxed);
                    std::thread::park_timeout(if fast { FAST_TICK } else { SLOW_TICK });
                    engine.increment_epoch();
                }
            })
            .expect("starting the epoch thread");
        Self { stop, running, contended, thread: Some(thread) }
    }

    /// Whether guests compete for the cores now (the epoch ticks fast), as
    /// a flag that stays current.
    pub fn contended(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.contended)
    }

    /// Counts a guest as running for as long as the returned guard lives.
    pub fn enter(&self) -> Ticking<'_> {
        self.running.fetch_add(1, Ordering::Relaxed);
        Ticking(self)
    }
}

/// The cores this process may run on: as many as tokio's worker threads.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
