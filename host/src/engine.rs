//! The compiled app: one wasmtime `Engine`, the `Component`, the unpacked
//! guest file tree, and the thread that drives epoch interruption.
//!
//! Compiling an 18–30 MB Python component takes seconds, so the compiled code
//! is cached on disk, keyed by the file's SHA-256 and by the engine's own
//! compatibility hash (wasmtime version and every setting that affects code).
//! A second start of the same `app.wasm` deserializes it in milliseconds.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

use crate::bundle;

/// How often the epoch advances: the granularity at which a running guest
/// yields to other tasks and at which deadlines are noticed.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A loaded, compiled app, ready to be linked and instantiated.
pub struct LoadedApp {
    /// The engine every instance of this app runs in.
    pub engine: Engine,
    /// The compiled component.
    pub component: Component,
    /// Guest file tree roots to mount read-only: `(host dir, guest path)`.
    pub tree: Vec<(PathBuf, String)>,
    /// Hex SHA-256 of the `app.wasm` file, for logs.
    pub digest: String,
    /// Keeps the epoch advancing for as long as the app is loaded.
    _ticker: EpochTicker,
}

impl LoadedApp {
    /// Reads, checks and compiles (or loads the cached compilation of) `path`.
    ///
    /// # Errors
    /// Fails with a message saying what is wrong if the file is not a
    /// component made by `wsgi-wasm build`, does not compile, or the cache
    /// directory is not writable.
    pub fn load(path: &Path, cache_dir: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let digest = bundle::hex(&Sha256::digest(&bytes));
        let payload = bundle::find(&bytes)
            .with_context(|| format!("{} is not a wsgi-wasm app", path.display()))?;
        let tree = bundle::unpack(payload, &cache_dir.join("trees").join(&digest))?;

        let engine = Engine::new(&engine_config()).map_err(anyhow::Error::from).context("configuring wasmtime")?;
        let mut compat = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut compat);
        let compiled = cache_dir
            .join("compiled")
            .join(format!("{digest}-{:016x}.cwasm", compat.finish()));
        let component = load_or_compile(&engine, &bytes, &compiled)
            .with_context(|| format!("{} is not a valid component", path.display()))?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(Self { engine, component, tree, digest, _ticker: ticker })
    }
}

fn engine_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // Guests are interrupted by epochs, not fuel: the check costs one load and
    // compare per loop header, and the ticker thread is the only clock.
    config.epoch_interruption(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    config
}

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
    }
    Ok(component)
}

fn store_compiled(component: &Component, cached: &Path) -> Result<()> {
    let dir = cached.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = cached.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, component.serialize()?)?;
    std::fs::rename(&tmp, cached)?;
    Ok(())
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a thread of its own.
///
/// Dropping it stops and joins the thread.
pub struct EpochTicker {
    /// Set on drop to ask the thread to finish.
    stop: Arc<AtomicBool>,
    /// The ticking thread; `None` only after it was joined.
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts ticking `engine`.
    ///
    /// # Panics
    /// If the OS refuses to start a thread.
    pub fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("wsgi-wasm-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::park_timeout(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("starting the epoch thread");
        Self { stop, thread: Some(thread) }
    }
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
