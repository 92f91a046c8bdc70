//! wsgi-wasm patch 8: the compiled functions of a component's core modules,
//! kept by the engine and reused by the next component that holds the same
//! module in the same place.
//!
//! Components built by one toolchain carry the same libraries byte for byte
//! (a componentize-py app: `libpython`, `libc`, the runtime, the adapters);
//! only a module or two differ per app. Compiling a component compiles every
//! function of every module again. With `Config::share_compiled_modules`,
//! the engine keeps the compiled (unlinked) functions of each core module it
//! compiled, under a SHA-256 of everything their code was made from, and a
//! later compile whose module has the same key links those in instead of
//! translating, validating and compiling its functions again.
//!
//! What the key covers, and why that is enough:
//! - the module's own bytes, whole (its function bodies, types, imports,
//!   names, and the data segments too, which no code depends on but which
//!   cost nothing to include);
//! - its place in the component (`StaticModuleIndex`): calls within the
//!   module are relocations against keys that name it;
//! - the translated `Module` after `prepare_translation` (the interned type
//!   of every type index and function, memories, tables, globals, how its
//!   tables and memories are initialized);
//! - the imports that calls are resolved to statically
//!   (`known_imported_functions`) and the exported signatures;
//! - every interned type of the component, since code names types by
//!   interned index;
//! - the engine: entries live in one engine, whose settings do not change.
//!
//! Equal keys mean the compiler gets equal inputs, except for the byte
//! offsets of the function bodies within the outer binary, which end up
//! only in the address map. So sharing requires
//! `Config::generate_address_map(false)`, and each function's start offset
//! in the function table is taken from the component being compiled.
//! A reused module's function bodies are not validated again: the module
//! whose compile filled the entry had the same bytes, and the same engine
//! validated them.
//!
//! An entry is checked out while a compile links it and put back after,
//! even when that compile fails, so a failing upload cannot evict what
//! others reuse. A compile that finds an entry checked out waits for it:
//! linking takes a fraction of what compiling would. Compiles check entries
//! out in the order of their modules' indices, which are part of the keys,
//! so two compiles never wait on each other. At most `capacity` entries are
//! kept; the least recently used goes first.

use crate::prelude::*;
use std::any::Any;
use std::collections::BTreeMap;
use std::mem;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use wasmtime_environ::{
    CompiledFunctionBody, DefinedFuncIndex, EntityRef, FilePos, FuncKey, FunctionBodyData,
    ModuleTranslation, ModuleTypesBuilder, PrimaryMap, StaticModuleIndex,
};

/// The SHA-256 of what a core module's compiled functions were made from.
pub(crate) type ShareKey = [u8; 32];

/// The compiled functions of one core module (its defined functions and
/// their array-to-wasm trampolines), as `CompileInputs::compile` left them:
/// finished, unlinked.
pub(crate) struct SharedModule {
    funcs: Vec<(FuncKey, String, Box<dyn Any + Send + Sync>)>,
    needs_gc_heap: bool,
}

struct Entry {
    key: ShareKey,
    /// `None` while a compile has it checked out.
    module: Option<SharedModule>,
    last_used: u64,
}

/// The engine's shared modules.
pub(crate) struct SharedModules {
    capacity: usize,
    state: Mutex<State>,
    /// Notified whenever a checked-out entry comes back or goes.
    returned: Condvar,
    /// How many times a compile linked a kept module instead of compiling.
    reused: AtomicU64,
}

#[derive(Default)]
struct State {
    entries: Vec<Entry>,
    clock: u64,
}

impl SharedModules {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            state: Mutex::default(),
            returned: Condvar::new(),
            reused: AtomicU64::new(0),
        }
    }

    /// Checks out the module kept under `key`, if any, waiting while
    /// another compile has it checked out.
    fn take(&self, key: &ShareKey) -> Option<SharedModule> {
        let mut state = self.state.lock().unwrap();
        loop {
            state.clock += 1;
            let now = state.clock;
            let entry = state.entries.iter_mut().find(|e| e.key == *key)?;
            entry.last_used = now;
            if let Some(module) = entry.module.take() {
                self.reused.fetch_add(1, Ordering::Relaxed);
                return Some(module);
            }
            state = self.returned.wait(state).unwrap();
        }
    }

    /// Keeps `module` under `key`: puts back what `take` checked out, or
    /// adds a module just compiled, evicting the least recently used entry
    /// that is not checked out when over capacity.
    fn put(&self, key: ShareKey, module: SharedModule) {
        if self.capacity == 0 {
            return;
        }
        let mut state = self.state.lock().unwrap();
        state.clock += 1;
        let now = state.clock;
        if let Some(entry) = state.entries.iter_mut().find(|e| e.key == key) {
            entry.last_used = now;
            if entry.module.is_none() {
                entry.module = Some(module);
                self.returned.notify_all();
            }
            return;
        }
        state.entries.push(Entry {
            key,
            module: Some(module),
            last_used: now,
        });
        while state.entries.len() > self.capacity {
            let oldest = state
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.module.is_some())
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i);
            match oldest {
                Some(i) => drop(state.entries.swap_remove(i)),
                None => break,
            }
        }
    }

    /// Drops the entry under `key` if it is checked out: its functions were
    /// lent to a compile that failed before giving them back.
    fn forget(&self, key: &ShareKey) {
        let mut state = self.state.lock().unwrap();
        state
            .entries
            .retain(|e| e.key != *key || e.module.is_some());
        self.returned.notify_all();
    }

    /// How many modules are kept (checked out or not).
    pub(crate) fn len(&self) -> usize {
        self.state.lock().unwrap().entries.len()
    }

    /// How many times, in all, a compile reused a kept module.
    pub(crate) fn reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }
}

/// One component compile's dealings with the engine's shared modules: the
/// modules it checked out, and the ones it compiles and will offer.
pub(crate) struct Checkouts<'e> {
    shared: Option<&'e SharedModules>,
    /// The digest of the component's interned types, part of every key:
    /// computed by the first `check_out`, the same for every module.
    types_digest: Option<ShareKey>,
    taken: BTreeMap<StaticModuleIndex, Taken>,
    fresh: BTreeMap<StaticModuleIndex, Fresh>,
}

struct Taken {
    key: ShareKey,
    /// `None` once lent to the compile's outputs, until `keep` returns it.
    module: Option<SharedModule>,
    needs_gc_heap: bool,
    /// Where each defined function's body starts in this component's binary.
    start_srclocs: Vec<FilePos>,
}

struct Fresh {
    key: ShareKey,
    needs_gc_heap: bool,
}

impl<'e> Checkouts<'e> {
    pub(crate) fn new(shared: Option<&'e SharedModules>) -> Self {
        Self {
            shared,
            types_digest: None,
            taken: BTreeMap::new(),
            fresh: BTreeMap::new(),
        }
    }

    /// Checks out the module at `index` if the engine keeps one with its key,
    /// else notes that its functions, once compiled, are to be kept.
    pub(crate) fn check_out(
        &mut self,
        index: StaticModuleIndex,
        translation: &ModuleTranslation<'_>,
        types: &ModuleTypesBuilder,
    ) -> Result<()> {
        let Some(shared) = self.shared else {
            return Ok(());
        };
        if translation.function_body_inputs.is_empty() {
            return Ok(());
        }
        let types_digest = match self.types_digest {
            Some(digest) => digest,
            None => *self.types_digest.insert(types_digest(types)?),
        };
        let key = share_key(index, translation, &types_digest)?;
        match shared.take(&key) {
            Some(module) => {
                let needs_gc_heap = module.needs_gc_heap;
                let module = Some(module);
                let taken = Taken {
                    key,
                    module,
                    needs_gc_heap,
                    start_srclocs: Vec::new(),
                };
                self.taken.insert(index, taken);
            }
            None => {
                self.fresh.insert(
                    index,
                    Fresh {
                        key,
                        needs_gc_heap: false,
                    },
                );
            }
        }
        Ok(())
    }

    /// Whether the module at `index` was checked out (and is not compiled).
    pub(crate) fn has(&self, index: StaticModuleIndex) -> bool {
        self.taken.contains_key(&index)
    }

    /// Notes where the bodies of a checked-out module start in this
    /// component's binary, for the function table.
    pub(crate) fn note_start_srclocs(
        &mut self,
        index: StaticModuleIndex,
        bodies: &PrimaryMap<DefinedFuncIndex, FunctionBodyData<'_>>,
    ) {
        let taken = self.taken.get_mut(&index).expect("checked out");
        taken.start_srclocs = bodies
            .values()
            .map(|body| {
                let offset = body.body.get_binary_reader().original_position();
                FilePos::new(u32::try_from(offset).unwrap())
            })
            .collect();
    }

    /// Notes which compiled functions need a GC heap, for the modules to be
    /// kept.
    pub(crate) fn note_needs_gc_heap(&mut self, key: FuncKey, needs_gc_heap: bool) {
        if let Some(fresh) = shared_module_of(key).and_then(|m| self.fresh.get_mut(&m)) {
            fresh.needs_gc_heap |= needs_gc_heap;
        }
    }

    /// Lends the checked-out modules' functions to the compile's outputs:
    /// key, symbol, body, and where the function's body starts here.
    pub(crate) fn lend(&mut self) -> Vec<(FuncKey, String, CompiledFunctionBody, FilePos)> {
        let mut lent = Vec::new();
        for taken in self.taken.values_mut() {
            let Some(module) = taken.module.take() else {
                continue;
            };
            for (key, symbol, code) in module.funcs {
                let start_srcloc = match key {
                    FuncKey::DefinedWasmFunction(_, def) => taken.start_srclocs[def.index()],
                    _ => FilePos::default(),
                };
                let function = CompiledFunctionBody {
                    code,
                    needs_gc_heap: module.needs_gc_heap,
                };
                lent.push((key, symbol, function, start_srcloc));
            }
        }
        lent
    }

    /// Takes back, after linking, the functions of the modules checked out,
    /// and those of the modules compiled here that are to be kept, and
    /// gives them to the engine.
    pub(crate) fn keep(&mut self, funcs: Vec<(String, FuncKey, Box<dyn Any + Send + Sync>)>) {
        let Some(shared) = self.shared else { return };
        let mut modules: BTreeMap<StaticModuleIndex, Vec<_>> = BTreeMap::new();
        for (symbol, key, code) in funcs {
            if let Some(index) = shared_module_of(key) {
                modules.entry(index).or_default().push((key, symbol, code));
            }
        }
        for (index, funcs) in modules {
            if let Some(taken) = self.taken.remove(&index) {
                shared.put(
                    taken.key,
                    SharedModule {
                        funcs,
                        needs_gc_heap: taken.needs_gc_heap,
                    },
                );
            } else if let Some(fresh) = self.fresh.remove(&index) {
                shared.put(
                    fresh.key,
                    SharedModule {
                        funcs,
                        needs_gc_heap: fresh.needs_gc_heap,
                    },
                );
            }
        }
    }
}

impl Drop for Checkouts<'_> {
    /// Gives back what was checked out and never lent; forgets what was
    /// lent and not taken back (a failed compile dropped it).
    fn drop(&mut self) {
        let Some(shared) = self.shared else { return };
        for (_, taken) in mem::take(&mut self.taken) {
            match taken.module {
                Some(module) => shared.put(taken.key, module),
                None => shared.forget(&taken.key),
            }
        }
    }
}

/// The key of `translation`'s compiled functions, as placed at `index` in a
/// component whose core types digest to `types_digest` (see the module docs).
fn share_key(
    index: StaticModuleIndex,
    translation: &ModuleTranslation<'_>,
    types_digest: &ShareKey,
) -> Result<ShareKey> {
    let mut key = Fields::new(b"wsgi-wasm shared module 1");
    key.field(&index.as_u32().to_le_bytes());
    key.field(translation.wasm);
    key.field(&postcard::to_allocvec(&translation.module)?);
    key.field(format!("{:?}", translation.known_imported_functions).as_bytes());
    key.field(&postcard::to_allocvec(&translation.exported_signatures)?);
    key.field(types_digest);
    Ok(key.finish())
}

/// The digest of every interned type of a component, in order: code names
/// types by interned index.
fn types_digest(types: &ModuleTypesBuilder) -> Result<ShareKey> {
    let mut digest = Fields::new(b"wsgi-wasm shared module types 1");
    for (interned, ty) in types.wasm_types() {
        digest.field(&interned.as_u32().to_le_bytes());
        digest.field(&postcard::to_allocvec(ty)?);
    }
    Ok(digest.finish())
}

/// A SHA-256 of length-prefixed fields, so that no two lists of fields
/// hash the same bytes.
struct Fields(sha2::Sha256);

impl Fields {
    fn new(domain: &[u8]) -> Self {
        use sha2::Digest as _;
        let mut fields = Self(sha2::Sha256::new());
        fields.field(domain);
        fields
    }

    fn field(&mut self, bytes: &[u8]) {
        use sha2::Digest as _;
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    fn finish(self) -> ShareKey {
        use sha2::Digest as _;
        self.0.finalize().into()
    }
}

/// The module a function belongs to, for the kinds a shared module keeps.
fn shared_module_of(key: FuncKey) -> Option<StaticModuleIndex> {
    match key {
        FuncKey::DefinedWasmFunction(module, _) | FuncKey::ArrayToWasmTrampoline(module, _) => {
            Some(module)
        }
        _ => None,
    }
}
