//! The one wasmtime `Engine` every app shares ([`SharedEngine`], with the
//! thread that drives epoch interruption), and each compiled app: its
//! `Component` and its unpacked guest file tree ([`LoadedApp`]).
//!
//! The engine allocates instances from one pool for all apps ([`PoolSpec`]):
//! one slot per possible live sandbox, reserved at startup, so a request's
//! instance costs no mmap or munmap and its memory is reset to the snapshot
//! in place. Which app may use how many slots is `pool`'s business.
//!
//! An `app.wasm` is untrusted input. Before anything is compiled, its size is
//! capped ([`MAX_APP_BYTES`]), its file tree is checked as it is unpacked
//! (see `bundle`), and every import it names must be one this host provides
//! ([`check_imports`]).
//!
//! Compiling an 18–30 MB Python component takes seconds, so the compiled code
//! is cached on disk, keyed by the file's SHA-256 and by the engine's own
//! compatibility hash (wasmtime version and every setting that affects code).
//! A second start of the same `app.wasm` deserializes it in milliseconds.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

use crate::bundle;
use crate::config::Limits;

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
    cache_dir: PathBuf,
    /// Compiled components by digest: apps with the same `wasm` share one,
    /// and with it one copy of its code and memory image.
    components: std::sync::Mutex<std::collections::HashMap<String, Component>>,
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
        let engine = new_engine(&spec)?;
        let ticker = EpochTicker::start(engine.clone());
        let components = std::sync::Mutex::default();
        Ok(Arc::new(Self { engine, spec, cache_dir: cache_dir.to_path_buf(), components, ticker }))
    }

    /// Forgets the compiled components of every digest not in `keep` (the
    /// versions no longer served, after a reload).
    pub fn keep_only(&self, keep: &[&str]) {
        self.components.lock().expect("never poisoned").retain(|digest, _| keep.contains(&digest.as_str()));
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

/// A loaded, compiled app, ready to be linked and instantiated.
pub struct LoadedApp {
    /// The engine every instance of this app runs in.
    pub engine: Engine,
    /// The compiled component.
    pub component: Component,
    /// The unpacked file tree, mounted read-only at the guest's `/`: each of
    /// its top-level directories is one of the guest's roots.
    pub tree_dir: PathBuf,
    /// Those roots' guest paths, which a `--mount` may not shadow.
    pub roots: Vec<String>,
    /// Hex SHA-256 of the `app.wasm` file, for logs.
    pub digest: String,
    /// The engine it was loaded into, kept alive (and its epoch ticking)
    /// as long as the app is loaded.
    shared: Arc<SharedEngine>,
}

impl LoadedApp {
    /// Reads, checks and compiles (or loads the cached compilation of) `path`.
    ///
    /// # Errors
    /// Fails with a message saying what is wrong if the file is not a
    /// component made by `wsgi-wasm build`, does not compile, needs more
    /// memory than `limits` allow, or the cache directory is not writable.
    pub fn load(path: &Path, shared: &Arc<SharedEngine>, limits: &Limits) -> Result<Self> {
        let cache_dir = &shared.cache_dir;
        let size = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
        if size > MAX_APP_BYTES {
            bail!("{} is {} MiB; an app.wasm may be at most {} MiB", path.display(), size >> 20, MAX_APP_BYTES >> 20);
        }
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let digest = bundle::hex(&Sha256::digest(&bytes));
        let payload = bundle::find(&bytes).with_context(|| format!("{} is not a wsgi-wasm app", path.display()))?;
        let tree_dir = cache_dir.join("trees").join(&digest);
        let roots = bundle::unpack(payload, &tree_dir).with_context(|| format!("{} is refused", path.display()))?;

        let shape = inspect(&bytes).with_context(|| format!("{} is not a valid component", path.display()))?;
        check_imports(&shape.imports).with_context(|| format!("{} is refused", path.display()))?;
        let needed = shape.initial_memory;
        if needed > limits.memory_bytes as u64 {
            bail!(
                "the app needs {} MiB of memory just to start (its snapshot); raise --memory to at least that",
                needed.div_ceil(1 << 20)
            );
        }
        let engine = shared.engine.clone();
        let mut compat = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut compat);
        let compiled = cache_dir.join("compiled").join(format!("{digest}-{:016x}.cwasm", compat.finish()));
        let known = shared.components.lock().expect("never poisoned").get(&digest).cloned();
        let component = match known {
            Some(component) => component,
            None => {
                let component = load_or_compile(&engine, &bytes, &compiled)
                    .with_context(|| format!("{} is not a valid component", path.display()))?;
                shared.components.lock().expect("never poisoned").insert(digest.clone(), component.clone());
                component
            }
        };
        Ok(Self { engine, component, tree_dir, roots, digest, shared: Arc::clone(shared) })
    }

    /// Counts an instance of this app as running while the guard lives: the
    /// epoch ticks faster while guests compete for the cores.
    pub fn ticking(&self) -> Ticking<'_> {
        self.shared.ticker.enter()
    }

    /// Whether guests compete for the cores now (see [`EpochTicker`]).
    pub fn contended(&self) -> Arc<AtomicBool> {
        self.shared.ticker.contended()
    }

    /// Whether the engine meters fuel (some app has a budget), so that an
    /// app without one still needs fuel in every store.
    pub fn metered(&self) -> bool {
        self.shared.spec.fuel
    }
}

/// The largest `app.wasm` accepted. Flask with its dependencies is about
/// 28 MB, Django about 34 MB.
pub const MAX_APP_BYTES: u64 = 256 << 20;

/// What a component asks of the host, read without compiling it.
struct Shape {
    /// The largest initial linear memory of its core modules: the snapshot's
    /// size, which every instance starts with.
    initial_memory: u64,
    /// The names of its top-level imports (`wasi:io/streams@0.2.0`, ...).
    imports: Vec<String>,
}

fn inspect(component: &[u8]) -> Result<Shape> {
    use wasmparser::Payload;
    let mut shape = Shape { initial_memory: 0, imports: Vec::new() };
    // Nested modules and components come inline; only depth 0 is the
    // component's own interface to the host.
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        match payload? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    shape.imports.push(import?.name.name.to_owned());
                }
            }
            Payload::MemorySection(reader) => {
                for memory in reader {
                    let memory = memory?;
                    let page = 1u64 << memory.page_size_log2.unwrap_or(16);
                    shape.initial_memory = shape.initial_memory.max(memory.initial.saturating_mul(page));
                }
            }
            _ => {}
        }
    }
    Ok(shape)
}

/// The interfaces this host provides: WASI 0.2's (as wasmtime-wasi links
/// them) and our own world's.
const PROVIDED: &[&str] =
    &["wasi:cli/", "wasi:clocks/", "wasi:filesystem/", "wasi:io/", "wasi:random/", "wasi:sockets/"];

/// Refuses a component that imports anything the host does not provide,
/// before it is compiled. The linker checks the types too, after.
fn check_imports(imports: &[String]) -> Result<()> {
    for name in imports {
        let wasi = PROVIDED.iter().any(|p| name.starts_with(p)) && name.contains("@0.2.");
        let ours = name == crate::bindings::HOST_INTERFACE || name == crate::bindings::LOG_INTERFACE;
        if !(wasi || ours) {
            bail!(
                "it imports `{name}`, which this host does not provide; it was built for another host, or by another \
                 version of wsgi-wasm (rebuild it with this one's `wsgi-wasm build`)"
            );
        }
    }
    Ok(())
}

/// Memory each pool slot keeps mapped after its request. Only the pages the
/// request wrote are copied back from the snapshot (found with Linux's
/// `PAGEMAP_SCAN`, kernel 6.7 or later), so the next request in that slot
/// does not fault them in again. Past this much, pages go back to the kernel.
/// All written pages count, however scattered: upstream wasmtime stops after
/// 32 separate regions, the patched copy in `vendor/wasmtime` does not.
pub const KEEP_RESIDENT: usize = 4 << 20;

/// Builds the engine, with a pool of `spec.slots` sandboxes of
/// `spec.memory_bytes` each, reserved up front.
fn new_engine(spec: &PoolSpec) -> Result<Engine> {
    match Engine::new(&engine_config(spec, true)) {
        Ok(engine) => Ok(engine),
        Err(err) => {
            // Most likely a kernel without PAGEMAP_SCAN: without it, keeping
            // memory resident means copying all of it back on every request.
            tracing::info!(cause = %err, "memory is not kept resident between requests");
            Engine::new(&engine_config(spec, false)).map_err(anyhow::Error::from).with_context(|| {
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
/// `PAGEMAP_SCAN` reset. Public so that the tests of the vendored wasmtime
/// run under the same settings.
pub fn engine_config(spec: &PoolSpec, keep_resident: bool) -> Config {
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
const WASMTIME_VERSION: &str = "48.0.8+wsgi-wasm.2";

fn load_or_compile(engine: &Engine, bytes: &[u8], cached: &Path) -> Result<Component> {
    if cached.is_file() {
        // SAFETY: the file is in our own cache directory, was written by
        // `Component::serialize` of an engine with the same compatibility hash
        // (it is in the name), and is moved into place only once complete.
        match unsafe { Component::deserialize_file(engine, cached) } {
            Ok(component) => {
                tracing::info!(path = %cached.display(), "loaded compiled code from the cache");
                return Ok(component);
            }
            Err(err) => tracing::warn!(
                path = %cached.display(), cause = %err, "ignoring unusable cached code"
            ),
        }
    }
    let started = Instant::now();
    tracing::info!("compiling the component (once per app.wasm and wasmtime version)");
    let component = Component::new(engine, bytes)?;
    tracing::info!(elapsed = ?started.elapsed(), "compiled");
    if let Err(err) = store_compiled(&component, cached) {
        tracing::warn!(cause = %err, "could not cache compiled code; the next start compiles again");
        return Ok(component);
    }
    // Served from the file just written, as a second start would: its code
    // is then page cache, not this process's own memory (10 apps compiled
    // at start held 722 MiB of anonymous memory, against 346 MiB of PSS in
    // all from the cache). The compiler's freed memory goes back to the
    // system too.
    drop(component);
    // SAFETY: as above; the file was written and moved into place just now.
    let reloaded = unsafe { Component::deserialize_file(engine, cached) };
    // SAFETY: malloc_trim only returns free heap memory to the system.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0)
    };
    match reloaded {
        Ok(component) => Ok(component),
        Err(err) => {
            tracing::warn!(path = %cached.display(), cause = %err, "cannot load the code just cached; compiling again");
            Ok(Component::new(engine, bytes)?)
        }
    }
}

fn store_compiled(component: &Component, cached: &Path) -> Result<()> {
    let dir = cached.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = cached.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, component.serialize()?)?;
    std::fs::rename(&tmp, cached)?;
    Ok(())
}

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
