//! wsgi-wasm patch 8: core modules compiled into artifacts of their own,
//! which every component holding the same module shares.
//!
//! Components built by one toolchain carry the same libraries byte for byte
//! (a componentize-py app: `libpython`, `libc`, the runtime); only a module
//! or two differ per app. With `Config::share_module_code`, each core module
//! whose function bodies reach the configured size is compiled on its own,
//! as a module artifact, and handed to the engine's `SharedModuleCode` under
//! a SHA-256 of everything its code was made from. The component's artifact
//! holds only that key in the module's place (`StaticModuleArtifact`), and
//! a later component whose module has the same key neither validates nor
//! compiles it: loading the component loads the kept module, so every app
//! runs, and maps, one copy of the library's code.
//!
//! A shared module's code must stand on its own, so calls between it and
//! any other module go through the callee's import (an indirect call), not
//! a direct call resolved when linking: `plan` drops those from the
//! statically known imports before anything is compiled.
//!
//! What the key covers, and why that is enough:
//! - the module's own bytes, whole (its function bodies, types, imports,
//!   names, and the data segments, which its artifact holds);
//! - its place in the component (`StaticModuleIndex`): calls within the
//!   module are relocations against keys that name it;
//! - the translated `Module` after `prepare_translation` (the interned type
//!   of every type index and function, memories, tables, globals, how its
//!   tables and memories are initialized);
//! - the imports that calls are resolved to statically (none left to other
//!   modules, see above) and the exported signatures;
//! - every interned type of the component, since code names types by
//!   interned index, and the artifact carries them all;
//! - the engine's compatibility hash: its version and every setting that
//!   affects code.
//!
//! Equal keys mean the compiler gets equal inputs, except for the byte
//! offsets of the function bodies within the outer binary, which end up
//! only in the address map. So sharing requires
//! `Config::generate_address_map(false)`.
//!
//! Two compiles that need the same missing module do not both compile it:
//! the second waits for the first (`SharedCompiles`), then loads what it
//! kept. A compile holds one such claim at a time, so none waits on
//! another in a cycle.

use crate::Engine;
use crate::hash_set::HashSet;
use crate::prelude::*;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Condvar, Mutex};
use wasmtime_environ::{
    FuncKey, KnownFunc, ModuleTranslation, ModuleTypesBuilder, PrimaryMap, StaticModuleIndex,
};

/// The SHA-256 of what a shared module's code was made from.
pub(crate) type ShareKey = [u8; 32];

/// The shared modules an engine's compiles are compiling now.
#[derive(Default)]
pub(crate) struct SharedCompiles {
    keys: Mutex<HashSet<ShareKey>>,
    /// Notified whenever a claim ends.
    ended: Condvar,
}

/// A compile's claim on one key: no other compile of the engine holds the
/// same key until it drops.
pub(crate) struct Claim<'e> {
    compiles: &'e SharedCompiles,
    key: ShareKey,
}

impl SharedCompiles {
    /// Claims `key`, waiting while another compile holds it.
    pub(crate) fn claim(&self, key: ShareKey) -> Claim<'_> {
        let mut keys = self.keys.lock().unwrap();
        while keys.contains(&key) {
            keys = self.ended.wait(keys).unwrap();
        }
        keys.insert(key);
        Claim {
            compiles: self,
            key,
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.compiles.keys.lock().unwrap().remove(&self.key);
        self.compiles.ended.notify_all();
    }
}

/// Chooses which of a component's modules are shared, and their keys.
///
/// A module is shared when its function bodies take at least the size
/// `Config::share_module_code` names. Calls between a shared module and any
/// other module are made indirect first (see the module docs); this must
/// run before the component's modules are compiled.
pub(crate) fn plan(
    engine: &Engine,
    translations: &mut PrimaryMap<StaticModuleIndex, ModuleTranslation<'_>>,
    types: &ModuleTypesBuilder,
) -> Result<BTreeMap<StaticModuleIndex, ShareKey>> {
    let Some((_, min_code_size)) = &engine.config().shared_module_code else {
        return Ok(BTreeMap::new());
    };
    let shared: Vec<StaticModuleIndex> = translations
        .iter()
        .filter(|(_, t)| {
            let code: usize = t
                .function_body_inputs
                .values()
                .map(|f| f.body.range().len())
                .sum();
            !t.function_body_inputs.is_empty() && code >= *min_code_size
        })
        .map(|(index, _)| index)
        .collect();
    if shared.is_empty() {
        return Ok(BTreeMap::new());
    }

    for (index, translation) in translations.iter_mut() {
        let own = shared.contains(&index);
        for (_, known) in translation.known_imported_functions.iter_mut() {
            let crosses = match known {
                Some(KnownFunc::FuncKey(FuncKey::DefinedWasmFunction(callee, _))) => {
                    own || shared.contains(callee)
                }
                Some(_) => own,
                None => false,
            };
            if crosses {
                *known = None;
            }
        }
    }

    let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
    engine
        .precompile_compatibility_hash()
        .hash(&mut engine_hash);
    let types_digest = types_digest(types, engine_hash.finish())?;
    shared
        .into_iter()
        .map(|index| {
            Ok((
                index,
                share_key(index, &translations[index], &types_digest)?,
            ))
        })
        .collect()
}

/// The key of `translation`'s code, as placed at `index` in a component
/// whose core types and engine digest to `types_digest` (see the module
/// docs).
fn share_key(
    index: StaticModuleIndex,
    translation: &ModuleTranslation<'_>,
    types_digest: &ShareKey,
) -> Result<ShareKey> {
    let mut key = Fields::new(b"wsgi-wasm shared module 2");
    key.field(&index.as_u32().to_le_bytes());
    key.field(translation.wasm);
    key.field(&postcard::to_allocvec(&translation.module)?);
    key.field(format!("{:?}", translation.known_imported_functions).as_bytes());
    key.field(&postcard::to_allocvec(&translation.exported_signatures)?);
    key.field(types_digest);
    Ok(key.finish())
}

/// The digest of the engine's compatibility hash and of every interned
/// type of a component, in order: code names types by interned index.
fn types_digest(types: &ModuleTypesBuilder, engine_hash: u64) -> Result<ShareKey> {
    let mut digest = Fields::new(b"wsgi-wasm shared module types 2");
    digest.field(&engine_hash.to_le_bytes());
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
