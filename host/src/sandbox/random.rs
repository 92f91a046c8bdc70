//! `wasi:random/random.get-random-bytes`, filled in one call.
//!
//! wasmtime-wasi 48 builds the list a byte at a time, each byte one call of
//! the context's boxed generator (`random_iter().take(len)`, which also draws
//! a whole `u32` per byte). Every fresh instance asks for 2,496 bytes, when
//! componentize-py's runtime calls `random.seed()` on its first call, so that
//! loop was about 1.8% of a hello-world request's CPU.
//!
//! This module shadows that one function with a bulk fill from the
//! generator that wasmtime-wasi seeds each context's own from: the thread's
//! `rand::rng()` (ChaCha12, reseeded from the operating system). The bytes
//! are as unpredictable as before; only the per-byte calls are gone. The
//! rest of `wasi:random` stays wasmtime-wasi's.

use rand::Rng as _;
use wasmtime::component::Linker;

/// The interface as wasmtime-wasi 48 defines it (`src/p2/wit/deps/random.wit`
/// in that crate). The shadow must use the same name to replace it: under
/// another version it would only add a second definition, which the linker
/// may not pick. `the_name_is_the_one_wasmtime_wasi_defines` checks it.
const INTERFACE: &str = "wasi:random/random@0.2.12";

/// The most bytes one call may ask for: wasmtime-wasi's default limit.
const MAX_BYTES: u64 = wasmtime_wasi::random::DEFAULT_MAX_SIZE;

/// Replaces `get-random-bytes` in a linker that already has wasmtime-wasi's
/// `wasi:random`.
///
/// # Errors
/// Fails if the function cannot be defined.
pub fn add_bulk_get_random_bytes<T: 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added =
        linker.instance(INTERFACE)?.func_wrap("get-random-bytes", |_, (len,): (u64,)| Ok((random_bytes(len)?,)));
    linker.allow_shadowing(false);
    added
}

/// `len` bytes from the thread's cryptographically secure generator.
fn random_bytes(len: u64) -> wasmtime::Result<Vec<u8>> {
    if len > MAX_BYTES {
        wasmtime::bail!("requested len {len} exceeds limit {MAX_BYTES}");
    }
    let mut bytes = vec![0; usize::try_from(len)?];
    rand::rng().fill_bytes(&mut bytes);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_every_byte_with_fresh_values() {
        let a = random_bytes(64 << 10).unwrap();
        let b = random_bytes(64 << 10).unwrap();
        assert_eq!(a.len(), 64 << 10);
        assert_ne!(a, b);
        // 64 KiB of uniform bytes hold every value: a fill that left zeros
        // behind, or kept only a few bits of each draw, would not.
        let mut seen = [false; 256];
        a.iter().for_each(|&x| seen[usize::from(x)] = true);
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn the_name_is_the_one_wasmtime_wasi_defines() {
        use wasmtime_wasi::random::{WasiRandom, WasiRandomCtx};
        struct State {
            random: WasiRandomCtx,
        }
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        let engine = wasmtime::Engine::new(&config).unwrap();
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::bindings::random::random::add_to_linker::<State, WasiRandom>(&mut linker, |s| &mut s.random)
            .unwrap();
        // Without shadowing, defining it again must clash with wasmtime-wasi's.
        let clash = linker
            .instance(INTERFACE)
            .unwrap()
            .func_wrap("get-random-bytes", |_, (_,): (u64,)| Ok((Vec::<u8>::new(),)));
        assert!(clash.is_err(), "{INTERFACE} is not where wasmtime-wasi defines get-random-bytes");
        add_bulk_get_random_bytes(&mut linker).unwrap();
    }

    #[test]
    fn refuses_more_than_the_limit() {
        assert!(random_bytes(MAX_BYTES + 1).is_err());
        assert!(random_bytes(0).unwrap().is_empty());
    }
}
