//! An `app.wasm` is untrusted input: a tenant's upload. This module turns
//! one into a [`LoadedApp`], checking it before anything is compiled:
//! - its size is capped ([`MAX_APP_BYTES`]);
//! - its file tree is checked as it is unpacked (`bundle` knows the tree);
//! - every import it names must be one this host provides
//!   ([`check_imports`]), and its snapshot must fit the app's `--memory`.
//!
//! Only then is it compiled, or its compilation loaded (`codecache`).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

use crate::bundle;
use crate::config::Limits;
use crate::engine::{SharedEngine, Ticking};

/// A loaded, compiled app, ready to be linked and instantiated.
pub struct LoadedApp {
    /// The engine every instance of this app runs in.
    pub engine: Engine,
    /// The compiled component.
    pub component: Component,
    /// The unpacked file tree, mounted read-only at the guest's `/`: each of
    /// its top-level directories is one of the guest's roots.
    pub tree_dir: PathBuf,
    /// Hex SHA-256 of the `app.wasm` file, for logs.
    pub digest: String,
    /// What its build recorded (an `app.wasm` from before there were
    /// manifests has an empty one).
    pub manifest: bundle::Manifest,
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
        let bytes = read_regular_file(path, MAX_APP_BYTES)?;
        let digest = bundle::hex(&Sha256::digest(&bytes));
        let payload = bundle::find(&bytes).with_context(|| format!("{} is not a wsgi-wasm app", path.display()))?;
        let tree_dir = shared.cache.dir().join("trees").join(&digest);
        let files = shared.cache.dir().join("files");
        bundle::unpack(payload, &tree_dir, &files).with_context(|| format!("{} is refused", path.display()))?;
        let manifest = bundle::Manifest::find(&bytes)
            .with_context(|| format!("{} is refused", path.display()))?
            .unwrap_or_default();

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
        let component = shared
            .cache
            .component(&engine, &digest, &bytes)
            .with_context(|| format!("{} is not a valid component", path.display()))?;
        Ok(Self { engine, component, tree_dir, digest, manifest, shared: Arc::clone(shared) })
    }

    /// Counts an instance of this app as running while the guard lives: the
    /// epoch ticks faster while guests compete for the cores.
    pub fn ticking(&self) -> Ticking<'_> {
        self.shared.ticking()
    }

    /// Whether guests compete for the cores now (see `engine::EpochTicker`).
    pub fn contended(&self) -> Arc<AtomicBool> {
        self.shared.contended()
    }

    /// Whether the engine meters fuel (some app has a budget), so that an
    /// app without one still needs fuel in every store.
    pub fn metered(&self) -> bool {
        self.shared.spec.fuel
    }
}

/// The bytes of `path`, which must be a regular file of at most `max`
/// bytes. It is opened without blocking and checked on the open handle, so
/// a FIFO or a device put in its place (even after a first check) is
/// refused, never read.
///
/// # Errors
/// Says what `path` is instead.
fn read_regular_file(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let reading = || format!("reading {}", path.display());
    let file =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).with_context(reading)?;
    let meta = file.metadata().with_context(reading)?;
    if !meta.is_file() {
        bail!("{} is not a regular file; an app is an app.wasm file", path.display());
    }
    if meta.len() > max {
        bail!("{} is {} MiB; an app.wasm may be at most {} MiB", path.display(), meta.len() >> 20, max >> 20);
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // Bounded even if the file grows while it is read.
    file.take(max + 1).read_to_end(&mut bytes).with_context(reading)?;
    if bytes.len() as u64 > max {
        bail!("{} grew past {} MiB while it was read", path.display(), max >> 20);
    }
    Ok(bytes)
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
        let ours = crate::bindings::INTERFACES.contains(&name.as_str());
        if !(wasi || ours) {
            bail!(
                "it imports `{name}`, which this host does not provide; it was built for another host, or by another \
                 version of wsgi-wasm (rebuild it with this one's `wsgi-wasm build`)"
            );
        }
    }
    Ok(())
}
