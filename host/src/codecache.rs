//! Compiled code, cached: compiling an 18–30 MB Python component takes
//! seconds, so each is compiled once and kept on disk, keyed by the file's
//! SHA-256 and by the engine's own compatibility hash (wasmtime version and
//! every setting that affects code). A second start of the same `app.wasm`
//! deserializes it in milliseconds. In memory, apps with the same `wasm`
//! share one `Component`, and with it one copy of its code and memory image.
//!
//! The core modules every built app carries (CPython's `libpython`, `libc`
//! and runtime) are compiled once, each into a file of its own under
//! `DIR/modules`, named by the key the engine gives it
//! ([`SharedModuleFiles`]; the vendored wasmtime's patch 8). An app's own
//! `.cwasm` holds the rest and those keys, and every app loaded maps the
//! same files: one copy of CPython's code, on disk and in memory.
//!
//! The cache directory is the operator's, never an app's: a file in it is
//! trusted as wasmtime's own output, and is moved into place only once whole.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use wasmtime::component::Component;
use wasmtime::{Engine, Module, SharedModuleCode};

/// Compiled components, on disk under `DIR/compiled` and in memory by digest.
pub struct CodeCache {
    /// `--cache-dir`.
    dir: PathBuf,
    /// Compiled components by digest.
    components: Mutex<HashMap<String, Component>>,
    /// One claim per digest being loaded: apps of the same `app.wasm`
    /// loaded at once (a config's apps load in parallel) wait for the first
    /// to load it, rather than each compiling it and writing the same file.
    loading: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// The modules apps share, under `DIR/modules`.
    modules: Arc<SharedModuleFiles>,
}

impl CodeCache {
    /// A cache in `dir` (created when first written).
    pub fn new(dir: &Path) -> Self {
        let modules = Arc::new(SharedModuleFiles::new(&dir.join("modules")));
        Self { dir: dir.to_path_buf(), components: Mutex::default(), loading: Mutex::default(), modules }
    }

    /// The cache directory, which also holds the unpacked file trees.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the engine keeps the modules apps share (`engine`).
    pub fn shared_modules(&self) -> Arc<SharedModuleFiles> {
        Arc::clone(&self.modules)
    }

    /// The component of `bytes`, whose SHA-256 is `digest`: the one already
    /// loaded, else the cached compilation, else compiled now (and cached).
    ///
    /// # Errors
    /// The bytes do not compile.
    pub fn component(&self, engine: &Engine, digest: &str, bytes: &[u8]) -> Result<Component> {
        let claim = Arc::clone(self.loading.lock().expect("never poisoned").entry(digest.to_owned()).or_default());
        let loaded = {
            // A load that failed releases the claim: the next one tries anew.
            let _claimed = claim.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            self.load(engine, digest, bytes)
        };
        let mut loading = self.loading.lock().expect("never poisoned");
        // Nobody else holds or waits for the claim (only the map's reference
        // and ours are left): forget it.
        if Arc::strong_count(&claim) == 2 {
            loading.remove(digest);
        }
        loaded
    }

    fn load(&self, engine: &Engine, digest: &str, bytes: &[u8]) -> Result<Component> {
        if let Some(known) = self.components.lock().expect("never poisoned").get(digest) {
            return Ok(known.clone());
        }
        let compiled = self.dir.join("compiled").join(format!("{digest}-{:016x}.cwasm", compat_hash(engine)));
        let component = load_or_compile(engine, bytes, &compiled)?;
        self.components.lock().expect("never poisoned").insert(digest.to_owned(), component.clone());
        Ok(component)
    }

    /// Forgets the compiled components of every digest not in `keep` (the
    /// versions no longer served, after a reload).
    pub fn keep_only(&self, keep: &[&str]) {
        self.components.lock().expect("never poisoned").retain(|digest, _| keep.contains(&digest.as_str()));
    }
}

/// The core modules apps share, compiled, each in a file of its own named
/// by its key: the engine's [`SharedModuleCode`]. A module once loaded stays
/// loaded for as long as the server runs (a few per toolchain), so every
/// app maps the one copy.
pub struct SharedModuleFiles {
    /// `DIR/modules`.
    dir: PathBuf,
    /// The modules loaded, by key.
    loaded: Mutex<HashMap<[u8; 32], Module>>,
}

impl SharedModuleFiles {
    fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf(), loaded: Mutex::default() }
    }

    fn path(&self, key: &[u8; 32]) -> PathBuf {
        let name: String = key.iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{name}.cwasm"))
    }
}

impl SharedModuleCode for SharedModuleFiles {
    fn load(&self, engine: &Engine, key: &[u8; 32]) -> wasmtime::Result<Option<Module>> {
        let mut loaded = self.loaded.lock().expect("never poisoned");
        if let Some(module) = loaded.get(key) {
            return Ok(Some(module.clone()));
        }
        let path = self.path(key);
        if !path.is_file() {
            return Ok(None);
        }
        // SAFETY: the file is in our own cache directory, was written from
        // this engine's compile of the module (the engine's settings are
        // part of the key, the name), and is moved into place only once
        // complete.
        match unsafe { Module::deserialize_file(engine, &path) } {
            Ok(module) => {
                loaded.insert(*key, module.clone());
                Ok(Some(module))
            }
            Err(err) => {
                // Compiled again, and replaced, by the compile that asked.
                tracing::warn!(path = %path.display(), cause = %err, "ignoring an unusable shared module");
                Ok(None)
            }
        }
    }

    fn store(&self, _engine: &Engine, key: &[u8; 32], compiled: &[u8]) -> wasmtime::Result<()> {
        let path = self.path(key);
        store_compiled(compiled, &path).map_err(|err| wasmtime::format_err!("{err:#}"))?;
        tracing::info!(path = %path.display(), "compiled a module apps share");
        Ok(())
    }
}

fn compat_hash(engine: &Engine) -> u64 {
    let mut compat = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut compat);
    compat.finish()
}

fn load_or_compile(engine: &Engine, bytes: &[u8], cached: &Path) -> Result<Component> {
    if cached.is_file() {
        // SAFETY: the file is in our own cache directory, was written from
        // `precompile_component` of an engine with the same compatibility hash
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
    // Compiled straight to the bytes of a `.cwasm`: the code is served from
    // the file they are written to (below), not from this process's memory.
    // The modules apps share are compiled only if no app compiled them yet.
    let compiled = engine.precompile_component(bytes)?;
    tracing::info!(elapsed = ?started.elapsed(), "compiled");
    match store_compiled(&compiled, cached) {
        // Served from the file just written, as a second start would: its
        // code is then page cache, not this process's own memory (10 apps
        // served from their compile held 722 MiB of anonymous memory,
        // against 346 MiB of PSS in all from the cache). The compiler's
        // freed memory goes back to the system once the app is loaded
        // (`return_free_heap`, by `tenants`).
        // SAFETY: as above; the file was written and moved into place just now.
        Ok(()) => match unsafe { Component::deserialize_file(engine, cached) } {
            Ok(component) => return Ok(component),
            Err(err) => tracing::warn!(
                path = %cached.display(), cause = %err, "cannot load the code just cached; serving it from memory"
            ),
        },
        Err(err) => tracing::warn!(cause = %err, "could not cache compiled code; the next start compiles again"),
    }
    // SAFETY: `compiled` is what this engine's `precompile_component` made.
    Ok(unsafe { Component::deserialize(engine, &compiled) }?)
}

/// Gives the heap's free memory back to the system; `tenants` calls it
/// once apps are loaded. Loading an app reads its whole `app.wasm` (tens of
/// MB) and compiling one allocates far more; once freed, glibc keeps much
/// of it in the heap for reuse. Ten apps loaded from the cache left 66 MiB
/// of heap behind, 19 with this (`docs/performance.md`).
pub fn return_free_heap() {
    // SAFETY: malloc_trim only returns free heap memory to the system.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0)
    };
}

fn store_compiled(compiled: &[u8], cached: &Path) -> Result<()> {
    let dir = cached.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Written under a name no other writer uses (another server sharing the
    // directory, another thread of this one), removed if anything fails
    // before the rename.
    let mut tmp = crate::bundle::temporary_file(dir)?;
    write_whole(compiled, tmp.as_file_mut())?;
    tmp.persist(cached)?;
    Ok(())
}

/// Writes `compiled` to `file` and syncs it to disk.
fn write_whole(compiled: &[u8], file: &mut std::fs::File) -> Result<()> {
    use std::io::Write as _;
    // The page cache keeps what a write brings in folios as large as the
    // write, up to 2 MiB, and a read fault in a mapping of the file maps a
    // folio of 2 MiB whole, with one entry, however little the app touches
    // of it: one hello compiled at start had 24 of its 25 MiB mapped after
    // one request. Smaller folios are mapped a page at a time (the
    // vendored wasmtime's change 7), so the file is written in pieces
    // smaller than that, and stays cached for the load that follows.
    for piece in compiled.chunks(WRITE_PIECE) {
        file.write_all(piece)?;
    }
    // On disk before it has its name: a file in the cache is complete.
    file.sync_data()?;
    Ok(())
}

/// The size of each write of a compiled file (see `write_whole`).
const WRITE_PIECE: usize = 256 << 10;
