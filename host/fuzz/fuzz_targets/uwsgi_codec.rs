//! Fuzzes the uwsgi packet codec: no input may panic it, and whatever it
//! accepts must re-encode to the same packet.
//!
//! Run (stable Rust with RUSTC_BOOTSTRAP, as cargo-fuzz needs nightly flags):
//!     cargo install cargo-fuzz
//!     cd host/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run uwsgi_codec -- -max_total_time=600

#![no_main]

use libfuzzer_sys::fuzz_target;

// The codec file alone, not the whole crate (which would drag wasmtime into
// the instrumented build).
#[path = "../../src/protocol/uwsgi/codec.rs"]
#[allow(dead_code)]
mod codec;

fuzz_target!(|data: &[u8]| {
    // The protocol's maximum, and a small limit taken from the input (its
    // last byte: the first is modifier1, which must be 0).
    let small = data.last().map_or(0, |&b| usize::from(b) * 64);
    for limit in [65535, small] {
        let Ok(Some(total)) = codec::check(data, limit) else { continue };
        assert!(total <= data.len() && total >= codec::HEADER_LEN && total - codec::HEADER_LEN <= limit);
        if let Ok(packet) = codec::parse(data, limit) {
            let vars: Vec<(&[u8], &[u8])> = packet.vars.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
            let again = codec::encode(&vars).expect("a parsed packet re-encodes");
            assert_eq!(&again[4..], &data[4..total], "vars block round trip");
        }
    }
});
