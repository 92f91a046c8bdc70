//! The `kdf` imports: `hashlib.pbkdf2_hmac` and `hashlib.scrypt`, which
//! CPython takes from OpenSSL and the guest's CPython lacks, computed here.
//! Pure Python in the guest would take minutes for Django's million
//! PBKDF2-SHA256 iterations; here they take a fraction of a second.
//!
//! The host does this work for the guest, so it is bounded like guest code:
//! - it runs in slices of about [`SLICE`], yielding between them, so the
//!   request's `--timeout` stops it at the next slice (the whole call is
//!   dropped with the request's future; nothing goes on computing), and
//!   other requests on the same thread wait no longer than for a guest's
//!   slice;
//! - its time is charged to `--fuel` (about [`FUEL_PER_NANOSECOND`]), shows
//!   as `kdf_ms` in the access line, and, while guests compete for the
//!   cores, moves the request to the background runtime as a guest that
//!   computes for long does (`background`);
//! - scrypt's memory, and the derived key, count against the request's
//!   `--memory`: what does not fit beside the guest's own memory is refused
//!   before anything is allocated (a `MemoryError` in the app).
//!
//! Every argument is checked here again, with CPython's messages: the guest
//! SDK (`wsgi_wasm/kdf.py`) parses the arguments as CPython does, but the
//! guest is not trusted. PBKDF2's block loop and scrypt's ROMix are written
//! out here because no library's can stop between slices; the primitives
//! (HMAC, the hashes, the Salsa20/8 core) are RustCrypto's, and the unit
//! tests hold the results to RFC 6070 and RFC 7914 and to RustCrypto's own
//! `pbkdf2` and `scrypt`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac, SimpleHmac};
use wasmtime::component::Linker;
use wasmtime::StoreContextMut;

use super::HostState;
use crate::bindings::{self, KdfError};
use crate::budget::Lease;

/// Work between two yields: short enough that the deadline, and another
/// request on the same thread, wait at most this long for it.
pub const SLICE: Duration = Duration::from_millis(1);

/// Fuel charged per nanosecond of the host's work: about what a guest
/// burns computing for as long (`--fuel`: some 7 billion per CPU second).
pub const FUEL_PER_NANOSECOND: u64 = 7;

/// Work done, while guests compete for the cores, before the request moves
/// to the background runtime: what a guest computes before it moves.
const MOVE_AFTER: Duration = Duration::from_millis(10);

/// CPython's (and OpenSSL's) `INT_MAX` bound on lengths and counts.
const INT_MAX: u64 = i32::MAX as u64;

/// OpenSSL's scrypt memory cap when `maxmem` is 0.
const SCRYPT_DEFAULT_MAXMEM: u64 = 32 << 20;

/// What the guest gets back: the key, or why nothing was computed.
type Derived = Result<Vec<u8>, KdfError>;

/// Adds `pbkdf2-hmac` and `scrypt` to `linker`, by hand rather than through
/// the generated trait: they need the store itself (its fuel, and the
/// memory its guest holds).
///
/// # Errors
/// Fails if a function cannot be defined.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    let mut kdf = linker.instance(bindings::KDF_INTERFACE)?;
    kdf.func_wrap_async(
        "pbkdf2-hmac",
        |mut store: StoreContextMut<'_, HostState>,
         (name, password, salt, iterations, dklen): (String, Vec<u8>, Vec<u8>, u64, Option<u64>)| {
            Box::new(async move { Ok((pbkdf2_hmac(&mut store, &name, &password, &salt, iterations, dklen).await?,)) })
        },
    )?;
    kdf.func_wrap_async(
        "scrypt",
        |mut store: StoreContextMut<'_, HostState>,
         (password, salt, n, r, p, maxmem, dklen): (Vec<u8>, Vec<u8>, u64, u64, u64, u64, u64)| {
            Box::new(async move {
                let params = ScryptParams { n, r, p, maxmem, dklen };
                Ok((scrypt(&mut store, &password, &salt, params).await?,))
            })
        },
    )?;
    Ok(())
}

/// `hashlib.pbkdf2_hmac`, checked as CPython checks it.
async fn pbkdf2_hmac(
    store: &mut StoreContextMut<'_, HostState>,
    name: &str,
    password: &[u8],
    salt: &[u8],
    iterations: u64,
    dklen: Option<u64>,
) -> wasmtime::Result<Derived> {
    let Some(prf) = hmac_for(name, password) else {
        return Ok(Err(KdfError::UnsupportedHash(format!("unsupported hash type {name}"))));
    };
    if let Err(refused) = check_pbkdf2(password.len(), salt.len(), iterations, dklen) {
        return Ok(Err(refused));
    }
    let dklen = dklen.unwrap_or(prf.output_len() as u64);
    let _lease = match reserve(store, "the derived key", dklen) {
        Ok(lease) => lease,
        Err(refused) => return Ok(Err(refused)),
    };
    let mut key = vec![0; usize::try_from(dklen)?];
    let mut pacer = Pacer::start();
    pbkdf2(store, &mut pacer, &*prf, salt, iterations, &mut key).await?;
    pacer.finish(store)?;
    Ok(Ok(key))
}

/// CPython's checks of `pbkdf2_hmac`'s values, in its order (the hash name
/// comes first, and is checked by the caller).
fn check_pbkdf2(password: usize, salt: usize, iterations: u64, dklen: Option<u64>) -> Result<(), KdfError> {
    if password as u64 > INT_MAX {
        return Err(KdfError::Overflow("password is too long.".into()));
    }
    if salt as u64 > INT_MAX {
        return Err(KdfError::Overflow("salt is too long.".into()));
    }
    if iterations < 1 {
        return Err(KdfError::Invalid("iteration value must be greater than 0.".into()));
    }
    if iterations > INT_MAX {
        return Err(KdfError::Overflow("iteration value is too great.".into()));
    }
    match dklen {
        Some(0) => Err(KdfError::Invalid("key length must be greater than 0.".into())),
        Some(len) if len > INT_MAX => Err(KdfError::Overflow("key length is too great.".into())),
        _ => Ok(()),
    }
}

/// scrypt's parameters, as `hashlib.scrypt` takes them.
#[derive(Debug, Clone, Copy)]
struct ScryptParams {
    n: u64,
    r: u64,
    p: u64,
    maxmem: u64,
    dklen: u64,
}

/// `hashlib.scrypt`, checked as CPython and OpenSSL check it.
async fn scrypt(
    store: &mut StoreContextMut<'_, HostState>,
    password: &[u8],
    salt: &[u8],
    params: ScryptParams,
) -> wasmtime::Result<Derived> {
    let needed = match check_scrypt(password.len(), salt.len(), params) {
        Ok(needed) => needed,
        Err(refused) => return Ok(Err(refused)),
    };
    let _lease = match reserve(store, "scrypt", needed + params.dklen) {
        Ok(lease) => lease,
        Err(refused) => return Ok(Err(refused)),
    };
    let (n, r, p) = (usize::try_from(params.n)?, usize::try_from(params.r)?, usize::try_from(params.p)?);
    let mut key = vec![0; usize::try_from(params.dklen)?];
    let mut pacer = Pacer::start();
    let prf = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(password).expect("HMAC takes a key of any length");
    // RFC 7914 §6: B from the password and salt, each of its p blocks mixed
    // through ROMix, then the key from the password and the mixed B.
    let mut b = vec![0; p * 128 * r];
    pbkdf2_once(&prf, salt, &mut b);
    let mut v = vec![0; n * 128 * r];
    for block in b.chunks_mut(128 * r) {
        ro_mix(store, &mut pacer, block, &mut v, n).await?;
    }
    pbkdf2_once(&prf, &b, &mut key);
    pacer.finish(store)?;
    Ok(Ok(key))
}

/// CPython's checks of `scrypt`'s values, then OpenSSL's
/// (`EVP_PBE_scrypt`); the bytes it needs besides the key.
fn check_scrypt(password: usize, salt: usize, params: ScryptParams) -> Result<u64, KdfError> {
    let ScryptParams { n, r, p, maxmem, dklen } = params;
    if password as u64 > INT_MAX {
        return Err(KdfError::Overflow("password is too long.".into()));
    }
    if salt as u64 > INT_MAX {
        return Err(KdfError::Overflow("salt is too long.".into()));
    }
    if n < 2 || !n.is_power_of_two() {
        return Err(KdfError::Invalid("n must be a power of 2.".into()));
    }
    if maxmem > INT_MAX {
        return Err(KdfError::Invalid(format!("maxmem must be positive and smaller than {INT_MAX}")));
    }
    if !(1..=INT_MAX).contains(&dklen) {
        return Err(KdfError::Invalid(format!("dklen must be greater than 0 and smaller than {INT_MAX}")));
    }
    let combination = || KdfError::Invalid("Invalid parameter combination for n, r, p, maxmem.".into());
    // OpenSSL's limits: p * r below 2^30, N below 2^(16 r), B's length an
    // int, and V's length a u64.
    const PR_MAX: u64 = (1 << 30) - 1;
    if r == 0 || p == 0 || p > PR_MAX / r {
        return Err(combination());
    }
    if 16 * r <= 63 && n >= 1 << (16 * r) {
        return Err(combination());
    }
    let b_len = p * 128 * r;
    if b_len > INT_MAX || n + 2 > u64::MAX / 128 / r {
        return Err(combination());
    }
    let v_len = 128 * r * (n + 2);
    let limit = if maxmem == 0 { SCRYPT_DEFAULT_MAXMEM } else { maxmem };
    match b_len.checked_add(v_len) {
        Some(total) if total <= limit => Ok(total),
        Some(_) => Err(KdfError::Invalid("[digital envelope routines] memory limit exceeded".into())),
        None => Err(combination()),
    }
}

/// Counts `bytes` of the host's work memory against the request's
/// `--memory`, beside what its guest holds, and against the server's
/// budget for as long as the returned lease lives; refuses them if they do
/// not fit either.
fn reserve(store: &mut StoreContextMut<'_, HostState>, what: &str, bytes: u64) -> Result<Lease, KdfError> {
    let state = store.data_mut();
    let (limit, room) = (state.limiter.limit(), state.limiter.room());
    if bytes > room as u64 {
        state.limiter.memory_hit = true;
        tracing::warn!(req_id = state.req_id, bytes, room, "refused {what}: past the request's memory limit");
        return Err(KdfError::OutOfMemory(format!(
            "{what} needs {} MiB, and the request may take only {} MiB more (of its {} MiB limit)",
            bytes.div_ceil(1 << 20),
            room >> 20,
            limit >> 20
        )));
    }
    let Some(lease) = state.limiter.lease(bytes) else {
        tracing::warn!(req_id = state.req_id, bytes, "refused {what}: past the server's memory budget");
        return Err(KdfError::OutOfMemory(format!(
            "{what} needs {} MiB, which the server's memory budget cannot spare now",
            bytes.div_ceil(1 << 20)
        )));
    };
    state.limiter.peak = state.limiter.peak.max(state.limiter.current() + bytes as usize);
    Ok(lease)
}

/// HMAC keyed with the password, as PBKDF2's pseudorandom function.
trait Prf: Send + Sync {
    fn output_len(&self) -> usize;
    /// The MAC of `parts`, one after another, into `out`.
    fn mac(&self, parts: &[&[u8]], out: &mut [u8]);
}

impl<M: Mac + Clone + Send + Sync> Prf for M {
    fn output_len(&self) -> usize {
        <M as hmac::digest::OutputSizeUser>::output_size()
    }

    fn mac(&self, parts: &[&[u8]], out: &mut [u8]) {
        let mut mac = self.clone();
        for part in parts {
            mac.update(part);
        }
        out.copy_from_slice(&mac.finalize().into_bytes());
    }
}

/// The HMAC of the hash `name` (CPython's names, and OpenSSL's spellings
/// of them, in any case), keyed with `key`; `None` for a hash not computed
/// here.
fn hmac_for(name: &str, key: &[u8]) -> Option<Box<dyn Prf>> {
    fn keyed<M: Mac + KeyInit + Clone + Send + Sync + 'static>(key: &[u8]) -> Box<dyn Prf> {
        Box::new(<M as KeyInit>::new_from_slice(key).expect("HMAC takes a key of any length"))
    }
    Some(match name.to_ascii_lowercase().replace('_', "-").as_str() {
        "md5" => keyed::<Hmac<md5::Md5>>(key),
        "sha1" | "sha-1" => keyed::<Hmac<sha1::Sha1>>(key),
        "sha224" | "sha-224" | "sha2-224" => keyed::<Hmac<sha2::Sha224>>(key),
        "sha256" | "sha-256" | "sha2-256" => keyed::<Hmac<sha2::Sha256>>(key),
        "sha384" | "sha-384" | "sha2-384" => keyed::<Hmac<sha2::Sha384>>(key),
        "sha512" | "sha-512" | "sha2-512" => keyed::<Hmac<sha2::Sha512>>(key),
        "sha512-224" | "sha-512/224" | "sha2-512/224" => keyed::<Hmac<sha2::Sha512_224>>(key),
        "sha512-256" | "sha-512/256" | "sha2-512/256" => keyed::<Hmac<sha2::Sha512_256>>(key),
        "sha3-224" => keyed::<Hmac<sha3::Sha3_224>>(key),
        "sha3-256" => keyed::<Hmac<sha3::Sha3_256>>(key),
        "sha3-384" => keyed::<Hmac<sha3::Sha3_384>>(key),
        "sha3-512" => keyed::<Hmac<sha3::Sha3_512>>(key),
        "blake2b" | "blake2b512" | "blake2b-512" => keyed::<SimpleHmac<blake2::Blake2b512>>(key),
        "blake2s" | "blake2s256" | "blake2s-256" => keyed::<SimpleHmac<blake2::Blake2s256>>(key),
        _ => return None,
    })
}

/// PBKDF2 (RFC 8018 §5.2) into `out`, yielding between slices.
async fn pbkdf2(
    store: &mut StoreContextMut<'_, HostState>,
    pacer: &mut Pacer,
    prf: &dyn Prf,
    salt: &[u8],
    iterations: u64,
    out: &mut [u8],
) -> wasmtime::Result<()> {
    /// Iterations between two looks at the clock.
    const BATCH: u64 = 256;
    let len = prf.output_len();
    let (mut u, mut next, mut t) = (vec![0; len], vec![0; len], vec![0; len]);
    for (i, block) in out.chunks_mut(len).enumerate() {
        let index = u32::try_from(i + 1).expect("a key of at most INT_MAX bytes has fewer blocks");
        prf.mac(&[salt, &index.to_be_bytes()], &mut u);
        t.copy_from_slice(&u);
        let mut left = iterations - 1;
        while left > 0 {
            let batch = left.min(BATCH);
            for _ in 0..batch {
                prf.mac(&[&u], &mut next);
                std::mem::swap(&mut u, &mut next);
                t.iter_mut().zip(&u).for_each(|(t, u)| *t ^= u);
            }
            left -= batch;
            pacer.pace(store).await?;
        }
        block.copy_from_slice(&t[..block.len()]);
    }
    Ok(())
}

/// PBKDF2 with one iteration, as scrypt uses it: too little work to pace.
fn pbkdf2_once(prf: &dyn Prf, salt: &[u8], out: &mut [u8]) {
    let mut u = vec![0; prf.output_len()];
    for (i, block) in out.chunks_mut(u.len()).enumerate() {
        let index = u32::try_from(i + 1).expect("B is at most INT_MAX bytes");
        prf.mac(&[salt, &index.to_be_bytes()], &mut u);
        block.copy_from_slice(&u[..block.len()]);
    }
}

/// scrypt's ROMix (RFC 7914 §5) of one block `b` of 128 r bytes, with `v`
/// (n of them) as its scratch memory; yields between slices.
async fn ro_mix(
    store: &mut StoreContextMut<'_, HostState>,
    pacer: &mut Pacer,
    b: &mut [u8],
    v: &mut [u8],
    n: usize,
) -> wasmtime::Result<()> {
    let len = b.len();
    // Salsa20/8 cores between two looks at the clock: about 25 µs.
    let batch = (1024 / (len / 64)).max(1);
    let mut x = b.to_vec();
    let mut t = vec![0; len];
    for i in 0..n {
        v[i * len..(i + 1) * len].copy_from_slice(&x);
        block_mix(&x, &mut t);
        std::mem::swap(&mut x, &mut t);
        if i % batch == batch - 1 {
            pacer.pace(store).await?;
        }
    }
    for i in 0..n {
        let j = integerify(&x) % n;
        x.iter_mut().zip(&v[j * len..(j + 1) * len]).for_each(|(x, v)| *x ^= v);
        block_mix(&x, &mut t);
        std::mem::swap(&mut x, &mut t);
        if i % batch == batch - 1 {
            pacer.pace(store).await?;
        }
    }
    b.copy_from_slice(&x);
    Ok(())
}

/// The last 64-byte block's first eight bytes, little-endian, as an index.
fn integerify(x: &[u8]) -> usize {
    let last = &x[x.len() - 64..];
    // Only its value modulo n matters, and n fits a usize.
    u64::from_le_bytes(last[..8].try_into().expect("eight bytes")) as usize
}

/// scryptBlockMix (RFC 7914 §4): `input`'s 2r blocks of 64 bytes through
/// Salsa20/8, even-numbered results first.
fn block_mix(input: &[u8], output: &mut [u8]) {
    use salsa20::cipher::typenum::U4;
    use salsa20::cipher::StreamCipherCore;
    let blocks = input.len() / 64;
    let mut x: [u8; 64] = input[input.len() - 64..].try_into().expect("64 bytes");
    for (i, block) in input.chunks_exact(64).enumerate() {
        let mixed: [u8; 64] = std::array::from_fn(|k| x[k] ^ block[k]);
        let state: [u32; 16] =
            std::array::from_fn(|w| u32::from_le_bytes(mixed[4 * w..4 * w + 4].try_into().expect("four bytes")));
        // The Salsa20/8 core, with the input added back in: one keystream
        // block of a Salsa20/8 whose whole state is the input.
        salsa20::SalsaCore::<U4>::from_raw_state(state).write_keystream_block((&mut x).into());
        let at = if i % 2 == 0 { i / 2 } else { blocks / 2 + i / 2 };
        output[at * 64..(at + 1) * 64].copy_from_slice(&x);
    }
}

/// Paces the host's work: accounts for its time (the access line's
/// `kdf_ms`, `--fuel`), moves a long job to the background runtime while
/// guests compete for the cores, and yields once a slice is done.
struct Pacer {
    /// When the work since the last account began.
    since: Instant,
}

impl Pacer {
    fn start() -> Self {
        Self { since: Instant::now() }
    }

    /// After a batch of work: yields if a slice has passed since the last
    /// yield.
    async fn pace(&mut self, store: &mut StoreContextMut<'_, HostState>) -> wasmtime::Result<()> {
        if self.since.elapsed() < SLICE {
            return Ok(());
        }
        self.account(store)?;
        tokio::task::yield_now().await;
        // Time spent waiting for the thread again is not work.
        self.since = Instant::now();
        Ok(())
    }

    /// Accounts for the rest of the work, at its end.
    fn finish(mut self, store: &mut StoreContextMut<'_, HostState>) -> wasmtime::Result<()> {
        self.account(store)
    }

    /// Charges the work since the last account.
    ///
    /// # Errors
    /// The request ran out of fuel: it traps as a guest does.
    fn account(&mut self, store: &mut StoreContextMut<'_, HostState>) -> wasmtime::Result<()> {
        let spent = self.since.elapsed();
        self.since = Instant::now();
        let state = store.data_mut();
        state.kdf_time += spent;
        if state.kdf_time >= MOVE_AFTER && state.contended.load(Ordering::Relaxed) {
            state.moving.ask();
        }
        // A store without fuel (no app meters it) has nothing to charge.
        if let Ok(fuel) = store.get_fuel() {
            let cost = u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX).saturating_mul(FUEL_PER_NANOSECOND);
            store.set_fuel(fuel.saturating_sub(cost))?;
            if cost > fuel {
                return Err(wasmtime::Trap::OutOfFuel.into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PBKDF2 without a store: the same loop, never pausing.
    fn pbkdf2_plain(name: &str, password: &[u8], salt: &[u8], iterations: u64, len: usize) -> Vec<u8> {
        let prf = hmac_for(name, password).unwrap();
        let mut out = vec![0; len];
        let mut u = vec![0; prf.output_len()];
        let mut next = u.clone();
        let mut t = u.clone();
        for (i, block) in out.chunks_mut(u.len()).enumerate() {
            prf.mac(&[salt, &(i as u32 + 1).to_be_bytes()], &mut u);
            t.copy_from_slice(&u);
            for _ in 1..iterations {
                prf.mac(&[&u], &mut next);
                std::mem::swap(&mut u, &mut next);
                t.iter_mut().zip(&u).for_each(|(t, u)| *t ^= u);
            }
            block.copy_from_slice(&t[..block.len()]);
        }
        out
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn pbkdf2_matches_rfc_6070() {
        /// password, salt, iterations, length, expected hex
        type Case = (&'static [u8], &'static [u8], u64, usize, &'static str);
        let cases: [Case; 4] = [
            (b"password", b"salt", 1, 20, "0c60c80f961f0e71f3a9b524af6012062fe037a6"),
            (b"password", b"salt", 4096, 20, "4b007901b765489abead49d926f721d065a429c1"),
            (
                b"passwordPASSWORDpassword",
                b"saltSALTsaltSALTsaltSALTsaltSALTsalt",
                4096,
                25,
                "3d2eec4fe41c849b80c8d83662c0e44a8b291a964cf2f07038",
            ),
            (b"pass\0word", b"sa\0lt", 4096, 16, "56fa6aa75548099dcc37d7f03425e0c3"),
        ];
        for (password, salt, iterations, len, expected) in cases {
            assert_eq!(hex(&pbkdf2_plain("sha1", password, salt, iterations, len)), expected);
        }
    }

    #[test]
    fn pbkdf2_matches_rustcrypto_for_every_hash() {
        use pbkdf2::pbkdf2_hmac as reference;
        let (password, salt) = (b"correct horse battery staple".as_slice(), b"NaCl and more".as_slice());
        macro_rules! check {
            ($name:expr, $digest:ty) => {
                for len in [1, 20, 33, 64, 100] {
                    let mut expected = vec![0; len];
                    reference::<$digest>(password, salt, 1000, &mut expected);
                    assert_eq!(pbkdf2_plain($name, password, salt, 1000, len), expected, "{} {len}", $name);
                }
            };
        }
        check!("md5", md5::Md5);
        check!("sha1", sha1::Sha1);
        check!("SHA224", sha2::Sha224);
        check!("sha256", sha2::Sha256);
        check!("sha2-384", sha2::Sha384);
        check!("sha512", sha2::Sha512);
        check!("sha512_224", sha2::Sha512_224);
        check!("sha512_256", sha2::Sha512_256);
        check!("sha3_224", sha3::Sha3_224);
        check!("sha3_256", sha3::Sha3_256);
        check!("sha3_384", sha3::Sha3_384);
        check!("sha3_512", sha3::Sha3_512);
        let mut expected = vec![0; 64];
        pbkdf2::pbkdf2::<SimpleHmac<blake2::Blake2b512>>(password, salt, 1000, &mut expected).unwrap();
        assert_eq!(pbkdf2_plain("blake2b", password, salt, 1000, 64), expected);
        assert!(hmac_for("shake_128", b"").is_none() && hmac_for("md4", b"").is_none());
    }

    /// scrypt without a store, from the same ROMix steps.
    fn scrypt_plain(password: &[u8], salt: &[u8], n: usize, r: usize, p: usize, len: usize) -> Vec<u8> {
        let prf = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(password).unwrap();
        let mut b = vec![0; p * 128 * r];
        pbkdf2_once(&prf, salt, &mut b);
        let mut v = vec![0; n * 128 * r];
        let mut t = vec![0; 128 * r];
        for block in b.chunks_mut(128 * r) {
            let mut x = block.to_vec();
            for i in 0..n {
                v[i * x.len()..(i + 1) * x.len()].copy_from_slice(&x);
                block_mix(&x, &mut t);
                std::mem::swap(&mut x, &mut t);
            }
            for _ in 0..n {
                let j = integerify(&x) % n;
                let len = x.len();
                x.iter_mut().zip(&v[j * len..(j + 1) * len]).for_each(|(x, v)| *x ^= v);
                block_mix(&x, &mut t);
                std::mem::swap(&mut x, &mut t);
            }
            block.copy_from_slice(&x);
        }
        let mut key = vec![0; len];
        pbkdf2_once(&prf, &b, &mut key);
        key
    }

    #[test]
    fn scrypt_matches_rfc_7914() {
        assert_eq!(
            hex(&scrypt_plain(b"", b"", 16, 1, 1, 64)),
            "77d6576238657b203b19ca42c18a0497f16b4844e3074ae8dfdffa3fede21442\
             fcd0069ded0948f8326a753a0fc81f17e8d3e0fb2e0d3628cf35e20c38d18906"
        );
        assert_eq!(
            hex(&scrypt_plain(b"password", b"NaCl", 1024, 8, 16, 64)),
            "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162\
             2eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640"
        );
    }

    #[test]
    fn scrypt_matches_rustcrypto() {
        for (log_n, r, p, len) in [(1, 1, 1, 10), (4, 2, 3, 64), (10, 8, 1, 32), (6, 3, 2, 50)] {
            let mut expected = vec![0; len];
            let params = ::scrypt::Params::new(log_n, r, p, len).unwrap();
            ::scrypt::scrypt(b"pw", b"salt", &params, &mut expected).unwrap();
            let got = scrypt_plain(b"pw", b"salt", 1 << log_n, r as usize, p as usize, len);
            assert_eq!(got, expected, "log_n {log_n} r {r} p {p}");
        }
    }

    #[test]
    fn arguments_are_refused_as_cpython_and_openssl_refuse_them() {
        let invalid = |e: KdfError| match e {
            KdfError::Invalid(m) | KdfError::Overflow(m) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(invalid(check_pbkdf2(1, 1, 0, None).unwrap_err()), "iteration value must be greater than 0.");
        assert_eq!(invalid(check_pbkdf2(1, 1, 1 << 31, None).unwrap_err()), "iteration value is too great.");
        assert_eq!(invalid(check_pbkdf2(1, 1, 1, Some(0)).unwrap_err()), "key length must be greater than 0.");
        assert_eq!(invalid(check_pbkdf2(1, 1, 1, Some(1 << 31)).unwrap_err()), "key length is too great.");
        assert!(check_pbkdf2(1, 1, 1, None).is_ok());
        let params = |n, r, p, maxmem| ScryptParams { n, r, p, maxmem, dklen: 64 };
        let scrypt = |p: ScryptParams| check_scrypt(1, 1, p).map_err(invalid);
        assert_eq!(scrypt(params(3, 1, 1, 0)).unwrap_err(), "n must be a power of 2.");
        assert_eq!(scrypt(params(4, 0, 1, 0)).unwrap_err(), "Invalid parameter combination for n, r, p, maxmem.");
        assert_eq!(scrypt(params(1 << 16, 1, 1, 0)).unwrap_err(), "Invalid parameter combination for n, r, p, maxmem.");
        assert_eq!(scrypt(params(1 << 20, 8, 1, 0)).unwrap_err(), "[digital envelope routines] memory limit exceeded");
        // Werkzeug's default: n 2^15, r 8, p 1, maxmem 132 n r p.
        assert_eq!(scrypt(params(1 << 15, 8, 1, 132 << 18)).unwrap(), 1024 + 128 * 8 * ((1 << 15) + 2));
        assert!(scrypt(ScryptParams { dklen: 0, ..params(4, 1, 1, 0) }).is_err());
    }
}
