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
