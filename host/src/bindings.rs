//! Host bindings generated from `guest-sdk/wit/wsgi.wit`.
//!
//! This is the only file that names generated types; the rest of the crate
//! uses the re-exports below.

wasmtime::component::bindgen!({
    path: "../guest-sdk/wit",
    world: "wsgi",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use self::wsgi_wasm::guest::host::{add_to_linker, Header, Host};
pub use self::wsgi_wasm::guest::kdf::KdfError;
pub use self::wsgi_wasm::guest::tls;

/// The `host` interface's instance name.
pub const HOST_INTERFACE: &str = "wsgi-wasm:guest/host@0.3.0";

/// The `log` interface's instance name. The host defines its one function by
/// hand (`sandbox::exchange::add_to_linker`), so the trait generated for it is
/// left unimplemented.
pub const LOG_INTERFACE: &str = "wsgi-wasm:guest/log@0.3.0";

/// The `kdf` interface's instance name. Its functions are defined by hand
/// too (`sandbox::kdf`): they need the store, for fuel and the memory limit.
pub const KDF_INTERFACE: &str = "wsgi-wasm:guest/kdf@0.3.0";

/// The `tls` interface's instance name (`sandbox::tls` implements it).
pub const TLS_INTERFACE: &str = "wsgi-wasm:guest/tls@0.3.0";

/// Every interface of ours a component may import.
pub const INTERFACES: &[&str] = &[HOST_INTERFACE, LOG_INTERFACE, KDF_INTERFACE, TLS_INTERFACE];
