//! Compiled code, cached: compiling an 18–30 MB Python component takes
//! seconds, so each is compiled once and kept on disk, keyed by the file's
//! SHA-256 and by the engine's own compatibility hash (wasmtime version and
//! every setting that affects code). A second start of the same `app.wasm`
//! deserializes it in milliseconds. In memory, apps with the same `wasm`
//! share one `Component`, and with it one copy of its code and memory image.
//!
//! Compiling links the core modules the engine already compiled for another
//! app (`engine`); after a start that compiled nothing,
//! [`CodeCache::warm_shared_modules`] compiles them in the background.
//!
//! The cache directory is the operator's, never an app's: a file in it is
//! trusted as wasmtime's own output, and is moved into place only once whole.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Compiled components, on disk under `DIR/compiled` and in memory by digest.
pub struct CodeCache {
    /// `--cache-dir`.
    dir: PathBuf,
    /// Compiled components by digest.
    components: Mutex<HashMap<String, Component>>,
    /// Held by a compile that fills the engine's shared modules: the first
    /// one, or [`CodeCache::warm_shared_modules`]. A compile that starts
    /// meanwhile waits for it, then links what it kept.
    warming: Mutex<()>,
}

impl CodeCache {
    /// A cache in `dir` (created when first written).
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf(), components: Mutex::default(), warming: Mutex::default() }
    }

    /// The cache directory, which also holds the unpacked file trees.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The component of `bytes`, whose SHA-256 is `digest`: the one already
    /// loaded, else the cached compilation, else compiled now (and cached).
    ///
    /// # Errors
    /// The bytes do not compile.
    pub fn component(&self, engine: &Engine, digest: &str, bytes: &[u8]) -> Result<Component> {
        if let Some(known) = self.components.lock().expect("never poisoned").get(digest) {
            return Ok(known.clone());
        }
        let mut compat = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut compat);
        let compiled = self.dir.join("compiled").join(format!("{digest}-{:016x}.cwasm", compat.finish()));
        let component = load_or_compile(engine, bytes, &compiled, &self.warming)?;
        self.components.lock().expect("never poisoned").insert(digest.to_owned(), component.clone());
        Ok(component)
    }

    /// Compiles `wasm` (an app already loaded) once more, only to fill the
    /// engine's shared modules, unless a compile already did: after a start
    /// from the cache nothing was compiled, and the next new app would
    /// compile all of CPython (7–10 s) instead of its own modules (under a
    /// second). Nothing is written; the compile's memory goes back to the
    /// system. Best effort: a failure is logged.
    pub fn warm_shared_modules(&self, engine: &Engine, wasm: &Path) {
        let _warming = self.warming.lock().expect("never poisoned");
        if engine.shared_compiled_modules() > 0 {
            return;
        }
        let started = Instant::now();
        let compiled = std::fs::read(wasm).map_err(anyhow::Error::from).and_then(|bytes| {
            engine.precompile_component(&bytes)?;
            Ok(())
        });
        return_free_heap();
        match compiled {
            Ok(()) => tracing::info!(
                elapsed = ?started.elapsed(),
                modules = engine.shared_compiled_modules(),
                "compiled the modules apps share, for the next new app"
            ),
            Err(err) => {
                tracing::warn!(wasm = %wasm.display(), cause = %err, "could not compile the modules apps share")
            }
        }
    }

    /// Forgets the compiled components of every digest not in `keep` (the
    /// versions no longer served, after a reload).
    pub fn keep_only(&self, keep: &[&str]) {
        self.components.lock().expect("never poisoned").retain(|digest, _| keep.contains(&digest.as_str()));
    }
}

fn load_or_compile(engine: &Engine, bytes: &[u8], cached: &Path, warming: &Mutex<()>) -> Result<Component> {
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
    // A compile waits for a warm-up, and while the engine keeps no compiled
    // module, compiles go one at a time: the first compiles the modules
    // every app shares, and the others then link them instead of each
    // compiling them too (a start loads apps on several threads).
    let waited = warming.lock().expect("never poisoned");
    let filling = (engine.shared_compiled_modules() == 0).then_some(waited);
    let started = Instant::now();
    tracing::info!("compiling the component (once per app.wasm and wasmtime version)");
    let reused_before = engine.shared_compiled_modules_reused();
    // Compiled straight to the bytes of a `.cwasm`: the code is served from
    // the file they are written to (below), not from this process's memory.
    let compiled = engine.precompile_component(bytes)?;
    // Core modules another app already compiled are linked, not compiled
    // (`engine::engine_config`); with concurrent compiles the count is
    // approximate.
    let reused = engine.shared_compiled_modules_reused().saturating_sub(reused_before);
    tracing::info!(elapsed = ?started.elapsed(), modules_reused = reused, "compiled");
    drop(filling);
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
    let tmp = cached.with_extension(format!("tmp{}", std::process::id()));
    let stored = write_whole(compiled, &tmp).and_then(|()| Ok(std::fs::rename(&tmp, cached)?));
    if stored.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    stored
}

/// Writes `compiled` to `path` and syncs it to disk.
fn write_whole(compiled: &[u8], path: &Path) -> Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path)?;
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
