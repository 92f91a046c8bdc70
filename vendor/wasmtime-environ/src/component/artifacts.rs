//! Definitions of compilation artifacts of the component compilation process
//! which are serialized with `bincode` into output ELF files.

use crate::{
    CompiledFunctionsTable, CompiledModuleInfo, PrimaryMap, StaticModuleIndex, WasmChecksum,
    component::{Component, ComponentTypes, TypeComponentIndex},
};
use serde_derive::{Deserialize, Serialize};

/// Serializable state that's stored in a compilation artifact.
#[derive(Serialize, Deserialize)]
pub struct ComponentArtifacts {
    /// The type of this component.
    pub ty: TypeComponentIndex,
    /// Information all kept available at runtime as-is.
    pub info: CompiledComponentInfo,
    /// The index of every compiled function's location in the text section.
    pub table: CompiledFunctionsTable,
    /// Type information for this component and all contained modules.
    pub types: ComponentTypes,
    /// Serialized metadata about all included core wasm modules.
    ///
    /// wsgi-wasm patch 8: or, for a module compiled into an artifact of its
    /// own that other components share, that artifact's key.
    pub static_modules: PrimaryMap<StaticModuleIndex, StaticModuleArtifact>,
    /// A checksum of the source Wasm binary from which the component was compiled.
    pub checksum: WasmChecksum,
}

/// wsgi-wasm patch 8: where a component's core module was compiled.
#[derive(Serialize, Deserialize)]
pub enum StaticModuleArtifact {
    /// Into the component's own artifact, described here.
    Compiled(CompiledModuleInfo),
    /// Into a module artifact of its own, kept by the engine's
    /// `SharedModuleCode` under this key.
    Shared([u8; 32]),
}

/// Runtime state that a component retains to support its operation.
#[derive(Serialize, Deserialize)]
pub struct CompiledComponentInfo {
    /// Type information calculated during translation about this component.
    pub component: Component,
}
