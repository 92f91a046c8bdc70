//! One fresh, isolated instance per request.
//!
//! [`Sandbox`] holds what is shared and immutable: the linked `InstancePre`,
//! the limits, the slot semaphore and the directories every store mounts
//! (opened once, at startup). [`Sandbox::run`] gives each request a
//! new `Store` with a new WASI context (no environment, no arguments, no
//! network, the app's own file tree mounted read-only), a memory limiter and
//! an epoch deadline, instantiates the component, calls `handle` once and
//! drops it all. Nothing survives from one request to the next: the instance's
//! slot in the engine's pool is reset to the snapshot before it is reused.
//!
//! This module knows nothing of HTTP: the request body comes in as a
//! [`RequestBody`], and the response leaves through [`GuestIo`] as raw bytes
//! that the `wsgi` layer validates and frames.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tracing::Instrument;
use wasmtime::component::{HasSelf, Linker, ResourceTable, ResourceTableError, WasmStr};
use wasmtime::{ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::filesystem::WasiFilesystemCtx;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::background;
use crate::bindings::{self, Header, WsgiPre};
use crate::config::{Limits, Mount};
use crate::engine::LoadedApp;
use crate::error::SandboxError;
use crate::metrics::AppMetrics;
use crate::outbound::Policy;
use crate::pool::AppSlots;

mod output;
mod random;

/// Errors a request body may fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The request body, whatever protocol it came from.
pub type RequestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// The status line and headers the guest sent, not yet validated.
#[derive(Debug)]
pub struct RawHead {
    pub status: Vec<u8>,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// `Some(len)` when the guest sent the whole body with the head.
    pub complete_len: Option<u64>,
    /// Where the time went until the head was sent (`app` so far).
    pub timing: Timing,
}

/// Where one request's time went, for `--timing`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timing {
    /// Waiting for a sandbox slot.
    pub queue: Duration,
    /// Creating the store and instantiating the component.
    pub instantiate: Duration,
    /// Running the guest's `handle`, body streaming included.
    pub app: Duration,
    /// Dropping the instance.
    pub teardown: Duration,
}

/// What the response side decided about a head the guest sent.
#[derive(Debug, Clone, Copy)]
pub struct HeadAccepted {
    /// The response carries no body (HEAD, 204, 304): drop what the app writes.
    pub discard_body: bool,
    /// The body's length as the head declares it: the guest must send
    /// exactly this many bytes. Past it the body is cut and the request
    /// fails; short of it, the request fails when the guest returns.
    pub length: Option<u64>,
}

/// Why a head did not go out.
#[derive(Debug)]
pub enum HeadRefused {
    /// The head breaks the protocol; the message says how.
    Invalid(String),
    /// Nobody is left to send it to.
    ClientGone,
}

/// Validates a head and passes it on.
pub type HeadHandler = Box<dyn FnOnce(RawHead) -> Result<HeadAccepted, HeadRefused> + Send>;

/// Body chunks on their way to the client.
pub type ChunkSender = mpsc::Sender<Bytes>;

/// The request's side of the boundary: where the guest reads and writes.
pub struct GuestIo {
    pub body: RequestBody,
    pub on_head: HeadHandler,
    pub chunks: ChunkSender,
}

/// The CGI variables and scheme for one call of `handle`.
pub struct GuestRequest {
    pub req_id: u64,
    pub url_scheme: &'static str,
    /// Values as PEP 3333's native strings (latin-1, one character per byte).
    pub environ: Vec<(String, String)>,
}

/// What a finished run reports, for the access log.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunStats {
    /// Response body bytes the guest handed over (after the head).
    pub body_bytes: u64,
    /// Request body bytes the guest read.
    pub bytes_in: u64,
    /// The largest linear memory the instance had, in bytes.
    pub peak_memory: usize,
    /// Fuel the request used, when `--fuel` meters it.
    pub fuel: Option<u64>,
    /// Whether a head was accepted (and so went, or is going, to the client).
    pub head_sent: bool,
    pub timing: Timing,
}

/// What the operator grants every sandbox beyond its own file tree.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// Host directories, mounted at their guest paths.
    pub mounts: Vec<Mount>,
    /// The environment `os.environ` holds.
    pub env: Vec<(String, String)>,
    /// Outbound connections (`--allow-outbound`); none by default. Shared
    /// by every request's [`Policy`].
    pub outbound: Arc<[crate::outbound::Grant]>,
}

/// The compiled, linked app and the limits every instance runs under.
pub struct Sandbox {
    /// The compiled component, its engine and its file tree.
    app: LoadedApp,
    /// The app's name in log lines and metrics.
    name: String,
    /// Linked once at startup; every request instantiates from it.
    pre: WsgiPre<HostState>,
    /// What every instance and listener enforces.
    limits: Limits,
    /// Directories and environment the operator grants.
    grants: Grants,
    /// The app's tree and the mounts, opened once: every store gets a copy,
    /// which shares the open directories instead of opening them again.
    preopens: WasiFilesystemCtx,
    /// This app's share of the pool: `max_instances`, and a queue.
    slots: AppSlots,
    /// Where to count what each request costs, with `--metrics`.
    metrics: Option<AppMetrics>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // A version loaded for a reload that failed never served: its slot
        // registration must not hold a share.
        self.slots.retire();
    }
}

impl Sandbox {
    /// Links the app against WASI and our host imports.
    ///
    /// # Errors
    /// Fails if the component does not export the `wsgi` world, imports
    /// something the host does not provide, or a mount would shadow the
    /// app's own files.
    pub fn new(
        app: LoadedApp,
        name: String,
        limits: Limits,
        grants: Grants,
        metrics: Option<AppMetrics>,
        slots: AppSlots,
    ) -> anyhow::Result<Self> {
        for mount in &grants.mounts {
            if let Some(root) = app.roots.iter().find(|root| overlaps(&mount.guest, root)) {
                anyhow::bail!(
                    "--mount at {} would shadow the app's own files at {root}; choose another guest path",
                    mount.guest
                );
            }
        }
        let mut linker = Linker::<HostState>::new(&app.engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        random::add_bulk_get_random_bytes(&mut linker)?;
        bindings::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        add_log_to_linker(&mut linker)?;
        restrict_name_lookup(&mut linker)?;
        let pre = linker
            .instantiate_pre(&app.component)
            .map_err(anyhow::Error::from)
            .context("the component does not fit the host (was it built by this wsgi-wasm?)")?;
        let pre = WsgiPre::new(pre)
            .map_err(anyhow::Error::from)
            .context("the component does not export the wsgi-wasm `wsgi` world")?;
        let preopens = open_preopens(&app, &grants)?;
        Ok(Self { app, name, pre, limits, grants, slots, preopens, metrics })
    }

    /// This app's metrics, with `--metrics`.
    pub fn metrics(&self) -> Option<&AppMetrics> {
        self.metrics.as_ref()
    }

    /// Takes this version out of the pool's sharing once it no longer takes
    /// new requests (replaced or removed by a reload); its requests in
    /// flight, and those queued, finish.
    pub fn retire(&self) {
        self.slots.retire();
    }

    /// The app's name in log lines and metrics.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The SHA-256 of the loaded `app.wasm`.
    pub fn digest(&self) -> &str {
        &self.app.digest
    }

    /// The per-request limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Instantiates the app once, without a request, so that what would fail
    /// every request (a `--memory` below what the snapshot needs, a missing
    /// import) stops the server at startup instead.
    ///
    /// # Errors
    /// Says what to change.
    pub async fn check(&self) -> anyhow::Result<()> {
        let io = GuestIo {
            body: http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync(),
            on_head: Box::new(|_| Err(HeadRefused::Invalid("no request".into()))),
            chunks: mpsc::channel(1).0,
        };
        let _ticking = self.app.ticking();
        // Run where it is: nothing reads the wish to move.
        let mut store = self.new_store(0, io, background::Move::default())?;
        if let Err(err) = self.pre.instantiate_async(&mut store).await {
            if store.data().limiter.memory_hit {
                anyhow::bail!(
                    "the app needs more than --memory {} MiB just to start; raise --memory",
                    self.limits.memory_bytes >> 20
                );
            }
            if let Some(fuel) = self.out_of_fuel(&err) {
                anyhow::bail!("--fuel {fuel} is not enough for the app just to start; raise --fuel");
            }
            return Err(anyhow::Error::from(err).context("the app cannot be instantiated"));
        }
        Ok(())
    }

    /// Runs one request in a fresh instance, start to finish.
    ///
    /// Waiting for a free slot is bounded by `--queue-timeout`; the
    /// `--timeout` deadline starts when the instance is being created.
    ///
    /// # Errors
    /// A [`SandboxError`] saying how the request failed; the instance is gone
    /// either way.
    pub async fn run(self: Arc<Self>, req: GuestRequest, io: GuestIo) -> Result<RunStats, SandboxError> {
        let queue = self.limits.queue_timeout;
        let queued = Instant::now();
        let in_queue = self.metrics.as_ref().map(AppMetrics::queued);
        let slot =
            tokio::time::timeout(queue, self.slots.acquire()).await.map_err(|_| SandboxError::Overloaded(queue))?;
        drop(in_queue);
        let waited = queued.elapsed();
        // A guest that computes for long moves to the background runtime,
        // with the slot and the counters: each is given back only once the
        // store is gone, wherever it ran.
        let moving = background::Move::default();
        let work = {
            let moving = moving.clone();
            async move {
                let _slot = slot;
                // Counted while it runs: the epoch ticks faster while guests
                // compete.
                let _ticking = self.app.ticking();
                let _active = self.metrics.as_ref().map(AppMetrics::active);
                let timeout = self.limits.timeout;
                // Debug level: every event of ours names its request already,
                // and an enabled span costs a registry entry and a formatted
                // field per request. At debug it tags wasmtime-wasi's own
                // events too.
                let span = tracing::debug_span!("sandbox", req_id = req.req_id);
                let outcome = tokio::time::timeout(timeout, self.call(req, io, waited, moving).instrument(span)).await;
                match outcome {
                    Ok(result) => result,
                    // Dropping the call future dropped the store: the
                    // instance is gone.
                    Err(_) => Err(SandboxError::DeadlineExceeded(timeout)),
                }
            }
        };
        background::run(work, &moving).await
    }

    async fn call(
        &self,
        req: GuestRequest,
        io: GuestIo,
        queue: Duration,
        moving: background::Move,
    ) -> Result<RunStats, SandboxError> {
        let started = Instant::now();
        let mut store = self.new_store(req.req_id, io, moving).map_err(SandboxError::Instantiate)?;
        let wsgi = match self.pre.instantiate_async(&mut store).await {
            Ok(wsgi) => wsgi,
            Err(err) => return Err(self.classify(store.data(), err, |e| self.trapped(e, SandboxError::Instantiate))),
        };
        let timing = Timing { queue, instantiate: started.elapsed(), ..Timing::default() };
        if let Some(m) = &self.metrics {
            m.instantiated(timing.instantiate);
        }
        let app_started = Instant::now();
        store.data_mut().timing = timing;
        store.data_mut().app_started = app_started;
        let result = wsgi.call_handle(&mut store, req.url_scheme, &req.environ, &self.grants.env).await;
        let app = app_started.elapsed();
        let state = store.data_mut();
        let outcome = match result {
            // A fault the guest chose to ignore still fails the request: a
            // response the host cut must not end as if it were whole.
            // (A guest that caught a MemoryError and answered did not fail.)
            Ok(Ok(())) => {
                state.check_body_length();
                self.host_fault(state).map_or(Ok(state.stats), Err)
            }
            Ok(Err(traceback)) => {
                Err(self.classify(state, traceback, |tb| SandboxError::App(output::cut(&tb, MAX_TRACEBACK))))
            }
            Err(err) => Err(self.classify(state, err, |e| self.trapped(e, SandboxError::Trap))),
        };
        let log = Arc::clone(&state.log);
        let peak_memory = state.limiter.peak;
        if let Some(m) = &self.metrics {
            m.peak_memory(peak_memory);
        }
        let fuel = self.limits.fuel.and_then(|budget| Some(budget - store.get_fuel().ok()?));
        let dropped = Instant::now();
        drop(store);
        let teardown = dropped.elapsed();
        log.finish();
        outcome.map(|stats| RunStats { timing: Timing { app, teardown, ..timing }, peak_memory, fuel, ..stats })
    }

    /// Names a failure by its first cause: what the host saw go wrong beats
    /// the exception or trap the guest ended with.
    fn classify<E>(&self, state: &HostState, err: E, otherwise: impl FnOnce(E) -> SandboxError) -> SandboxError {
        match self.host_fault(state) {
            Some(fault) => fault,
            None if state.limiter.memory_hit => SandboxError::MemoryExceeded(self.limits.memory_bytes >> 20),
            None => otherwise(err),
        }
    }

    /// What the host saw go wrong, if anything did.
    fn host_fault(&self, state: &HostState) -> Option<SandboxError> {
        Some(match state.fault.as_ref()? {
            Fault::Protocol(msg) => SandboxError::GuestProtocol(msg.clone()),
            Fault::ClientGone(why) => SandboxError::ClientGone(why.clone()),
            Fault::BadBody(why) => SandboxError::BadBody(why.clone()),
            Fault::BodyTooLarge => SandboxError::BodyTooLarge(self.limits.max_body_bytes),
            Fault::BodyTimeout => SandboxError::BodyTimeout(self.limits.body_timeout),
            Fault::ResponseTooLarge => SandboxError::ResponseTooLarge(self.limits.max_response_bytes),
        })
    }

    /// A wasmtime error from the guest: out of fuel, out of handles, or
    /// `otherwise`.
    fn trapped(&self, err: wasmtime::Error, otherwise: fn(anyhow::Error) -> SandboxError) -> SandboxError {
        if let Some(fuel) = self.out_of_fuel(&err) {
            return SandboxError::FuelExhausted(fuel);
        }
        // wasmtime-wasi traps when the resource table is full: WASI 0.2 has
        // no error code for "too many open files" to return instead.
        if matches!(err.downcast_ref(), Some(ResourceTableError::Full)) {
            return SandboxError::TooManyHandles(self.limits.max_open_files);
        }
        otherwise(anyhow::Error::from(err))
    }

    /// The `--fuel` budget, if `err` is the guest running out of it.
    fn out_of_fuel(&self, err: &wasmtime::Error) -> Option<u64> {
        self.limits.fuel.filter(|_| matches!(err.downcast_ref(), Some(wasmtime::Trap::OutOfFuel)))
    }

    fn new_store(&self, req_id: u64, io: GuestIo, moving: background::Move) -> anyhow::Result<Store<HostState>> {
        let log = output::LogBudget::new(req_id, self.limits.max_log_bytes, self.limits.max_log_lines);
        let mut wasi = WasiCtxBuilder::new();
        let outbound =
            (!self.grants.outbound.is_empty()).then(|| Arc::new(Policy::new(Arc::clone(&self.grants.outbound))));
        if let Some(policy) = &outbound {
            grant_outbound(&mut wasi, policy, req_id, self.limits.max_outbound_connections);
        }
        wasi.stdout(output::GuestLog::new(Arc::clone(&log), "stdout"))
            .stderr(output::GuestLog::new(Arc::clone(&log), "stderr"));
        let mut wasi = wasi.build();
        *wasi.filesystem() = self.preopens.clone();
        // Every file or directory the guest opens is a handle in this table
        // and holds one host descriptor: the cap bounds both, per request.
        let mut table = ResourceTable::new();
        table.set_max_capacity(self.limits.max_open_files);
        let state = HostState {
            wasi,
            table,
            outbound,
            dns_refused: false,
            log,
            limiter: Limiter {
                inner: StoreLimitsBuilder::new().memory_size(self.limits.memory_bytes).build(),
                memory_hit: false,
                peak: 0,
            },
            io,
            pending: Bytes::new(),
            discard_body: false,
            length: None,
            head: HeadState::Waiting,
            stats: RunStats::default(),
            fault: None,
            timing: Timing::default(),
            app_started: Instant::now(),
            body_timeout: self.limits.body_timeout,
            max_response_bytes: self.limits.max_response_bytes,
            req_id,
        };
        let mut store = Store::new(&self.app.engine, state);
        store.limiter(|s| &mut s.limiter);
        if let Some(fuel) = self.limits.fuel {
            store.set_fuel(fuel)?;
        } else if self.app.metered() {
            // Another app meters fuel, so this app's code counts it too.
            store.set_fuel(u64::MAX)?;
        }
        // A guest yields to the executor at an epoch tick: one spinning in
        // `while True: pass` shares its core instead of holding it, and the
        // deadline in `run` gets a chance to fire. While guests compete for
        // the cores (1 ms ticks), a guest first runs FIRST_SLICE ticks
        // without yielding, so that a typical request is not sent to the
        // back of the run queue; after them, it asks to move to the
        // background runtime (`background`), which its first yield does,
        // and yields at every tick there. Ticks are counted as the callback
        // sees them, so time spent waiting for a core counts once at most: a
        // request slowed by a busy server does not move. The first deadline
        // must be set: a new store's is 0, already past, which made every
        // request yield at its first instruction, so that all queued
        // requests were started before any finished.
        let contended = self.app.contended();
        let mut ticks_run = 0_u32;
        store.epoch_deadline_callback(move |_| {
            Ok(if !contended.load(Ordering::Relaxed) {
                wasmtime::UpdateDeadline::Yield(1)
            } else if ticks_run < FIRST_SLICE {
                ticks_run += 1;
                wasmtime::UpdateDeadline::Continue(1)
            } else {
                moving.ask();
                wasmtime::UpdateDeadline::Yield(1)
            })
        });
        store.set_epoch_deadline(1);
        Ok(store)
    }
}

/// The epoch ticks (1 ms each while guests compete for the cores, see
/// `engine::EpochTicker`) a guest may compute through before its first
/// yield then: longer than most requests take. After them, the guest moves
/// to the background runtime and yields at every tick. (Without contention,
/// a guest yields at every 10 ms tick: running on to the end then made a
/// lone client's hello request take 280 µs instead of 140 µs, for reasons
/// not found.) Counted in ticks seen rather than time since the store was
/// made: with wall time, some of the Flask endpoint's requests on a
/// saturated server moved only for having waited for a core (the
/// background threads ran 70 ms in 10 s of load; none with ticks).
const FIRST_SLICE: u32 = 10;

/// Lets a store's guest open up to `max` TCP connections that `policy`
/// grants, and nothing else: no listening, no UDP. The first refusal of a
/// request is logged, naming the address.
///
/// `max` counts local ports, not connect calls: wasmtime-wasi asks for a
/// `TcpBind` of the unspecified address once per socket that takes a port,
/// whether the guest binds it itself or a connect binds it implicitly. So
/// a guest cannot hold more than `max` of the host's ports by binding
/// sockets it never connects (it cannot listen on them either).
fn grant_outbound(wasi: &mut WasiCtxBuilder, policy: &Arc<Policy>, req_id: u64, max: usize) {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use wasmtime_wasi::sockets::SocketAddrUse;
    let policy_for_check = Arc::clone(policy);
    let warned = Arc::new(AtomicBool::new(false));
    let ports = Arc::new(AtomicUsize::new(0));
    // Name lookup is on: `restrict_name_lookup` decides which names (an IP
    // literal resolves to itself, and getaddrinfo asks for those too).
    wasi.allow_tcp(true).allow_udp(false).allow_ip_name_lookup(true).socket_addr_check(move |addr, usage| {
        let (policy, warned, ports) = (Arc::clone(&policy_for_check), Arc::clone(&warned), Arc::clone(&ports));
        Box::pin(async move {
            let refused = match usage {
                // A socket taking a local port: any port of any address
                // (the kernel picks), up to `max` of them.
                SocketAddrUse::TcpBind if addr.ip().is_unspecified() && addr.port() == 0 => {
                    if ports.fetch_add(1, Ordering::Relaxed) < max {
                        return true;
                    }
                    format!("refused an outbound connection: past --max-outbound-connections {max}")
                }
                SocketAddrUse::TcpConnect if policy.allows(addr).await => return true,
                SocketAddrUse::TcpConnect => {
                    format!("refused an outbound connection: no --allow-outbound grants {addr}")
                }
                SocketAddrUse::TcpBind | SocketAddrUse::TcpListen => {
                    "refused a bind: a sandbox cannot listen for connections".to_owned()
                }
                _ => "refused UDP: a sandbox has none".to_owned(),
            };
            if !warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(req_id, %addr, ?usage, "{refused}");
            }
            false
        })
    });
}

/// Replaces wasmtime-wasi's `resolve-addresses` with one that resolves
/// only the names the app's grants name (and IP literals, which resolve to
/// themselves and are checked at connect).
fn restrict_name_lookup(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{Host as _, ResolveAddressStream};
    use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, Network};
    use wasmtime_wasi::sockets::WasiSocketsView as _;
    type Reply = (Result<Resource<ResolveAddressStream>, ErrorCode>,);
    linker.allow_shadowing(true);
    let mut lookup = linker.instance("wasi:sockets/ip-name-lookup@0.2.12")?;
    lookup.func_wrap(
        "resolve-addresses",
        |mut store: wasmtime::StoreContextMut<'_, HostState>,
         (network, name): (Resource<Network>, String)|
         -> wasmtime::Result<Reply> {
            let state = store.data_mut();
            if !state.outbound.as_ref().is_some_and(|p| p.may_resolve(&name)) {
                // Once per request: a guest may ask in a loop.
                if !std::mem::replace(&mut state.dns_refused, true) {
                    tracing::warn!(req_id = state.req_id, %name, "refused a DNS lookup: no --allow-outbound grant names {name}");
                }
                return Ok((Err(ErrorCode::PermanentResolverFailure),));
            }
            match state.sockets().resolve_addresses(network, name) {
                Ok(stream) => Ok((Ok(stream),)),
                Err(err) => err.downcast().map(|code| (Err(code),)),
            }
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Opens the app's file tree and the operator's mounts, for every store to
/// share (see [`Sandbox::preopens`]).
///
/// Sharing the descriptors shares nothing a guest can change: they are
/// directories, every file a guest opens under them gets its own descriptor,
/// and listing a directory opens it anew (cap-std does not `dup`, whose
/// position would be shared). A request's own descriptors are closed with
/// its store.
fn open_preopens(app: &LoadedApp, grants: &Grants) -> anyhow::Result<WasiFilesystemCtx> {
    let mut wasi = WasiCtxBuilder::new();
    // The mounted tree is read-only and stays in the page cache: doing its
    // file operations inline beats a round trip to the blocking pool for
    // every stat and read of every import. Set before the preopens, which
    // capture it.
    wasi.allow_blocking_current_thread(true);
    // One preopen for the whole tree, at `/`, rather than one per root; the
    // guest sees the same paths, and `/` lists only the roots. A mount's
    // longer guest path wins over `/` for the files under it.
    wasi.preopened_dir(&app.tree_dir, "/", FsPerms::ReadOnly)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot open the app's file tree {}", app.tree_dir.display()))?;
    for mount in &grants.mounts {
        let perms = if mount.writable { FsPerms::ReadWrite } else { FsPerms::ReadOnly };
        wasi.preopened_dir(&mount.host, &mount.guest, perms)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("cannot open --mount {}", mount.host.display()))?;
    }
    Ok(wasi.build().filesystem().clone())
}

/// Whether one absolute guest path is the other or lies under it.
fn overlaps(a: &str, b: &str) -> bool {
    let under = |x: &str, y: &str| x.strip_prefix(y).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    under(a, b) || under(b, a)
}

/// StoreLimits, plus a record of whether the memory limit was what failed.
struct Limiter {
    /// The limits themselves.
    inner: StoreLimits,
    /// Set when a memory grow was refused.
    memory_hit: bool,
    /// The largest linear memory granted, in bytes.
    peak: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let ok = self.inner.memory_growing(current, desired, maximum)?;
        self.memory_hit |= !ok;
        if ok {
            self.peak = self.peak.max(desired);
        }
        Ok(ok)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// Where the response head is.
enum HeadState {
    /// `start-response` has not been called.
    Waiting,
    /// It has; a second call is a protocol error.
    Sent,
}

/// Everything one instance's host calls can touch.
pub struct HostState {
    /// This instance's WASI context: its own stdio, clocks, random, preopens.
    wasi: WasiCtx,
    /// The app's outbound grants, with what this request resolved.
    outbound: Option<Arc<Policy>>,
    /// Whether a DNS lookup was refused (and logged) already.
    dns_refused: bool,
    /// WASI resources the guest holds, at most `--max-open-files`.
    table: ResourceTable,
    /// What the guest may still write to the log.
    log: Arc<output::LogBudget>,
    /// `--memory`, and whether the guest ran into it.
    limiter: Limiter,
    /// The request body and where the response goes.
    io: GuestIo,
    /// Request body bytes received but not yet handed to the guest.
    pending: Bytes,
    /// Set when the head was for a response without a body.
    discard_body: bool,
    /// The body length the accepted head declares, if it declares one.
    length: Option<u64>,
    /// Whether `start-response` was called.
    head: HeadState,
    /// What the access log reports.
    stats: RunStats,
    /// The first thing the host saw go wrong, if anything did.
    fault: Option<Fault>,
    /// Queue wait and instantiation, known once `handle` starts.
    timing: Timing,
    /// When `handle` was called.
    app_started: Instant,
    /// `--body-timeout`.
    body_timeout: std::time::Duration,
    /// `--max-response-bytes`.
    max_response_bytes: u64,
    /// For log lines.
    req_id: u64,
}

/// What the host saw go wrong during a request, as opposed to what the
/// guest raised about it afterwards.
enum Fault {
    /// The response side refused what the guest sent.
    Protocol(String),
    /// The client is gone.
    ClientGone(String),
    /// The request body ended early or was malformed.
    BadBody(String),
    BodyTooLarge,
    BodyTimeout,
    ResponseTooLarge,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl HostState {
    /// Records `fault` (unless an earlier one is known) and returns `msg`
    /// for the guest.
    fn fail(&mut self, fault: Fault, msg: &str) -> String {
        self.fault.get_or_insert(fault);
        msg.to_owned()
    }

    /// Once the guest has returned: records a fault if it sent less of the
    /// body than its head declared.
    fn check_body_length(&mut self) {
        let Some(declared) = self.length.filter(|_| !self.discard_body) else { return };
        let sent = self.stats.body_bytes;
        if sent < declared {
            let msg = format!("the body ended after {sent} of the {declared} bytes its Content-Length declares");
            self.fail(Fault::Protocol(msg.clone()), &msg);
        }
    }

    async fn send(&mut self, chunk: Vec<u8>) -> Result<(), String> {
        // After a refusal nothing more goes out (and nothing waits for room
        // in a channel that no client will drain).
        if self.fault.is_some() {
            return Err("the request has already failed".into());
        }
        if self.discard_body || chunk.is_empty() {
            return Ok(());
        }
        let mut chunk = Bytes::from(chunk);
        // Bytes past the declared length are never sent: on a uwsgi
        // connection they would be read as the start of another response.
        let mut overrun = 0;
        if let Some(declared) = self.length {
            let room = declared - self.stats.body_bytes;
            if chunk.len() as u64 > room {
                overrun = chunk.len() as u64 - room;
                chunk.truncate(room as usize);
            }
        }
        let len = chunk.len() as u64;
        if self.stats.body_bytes + len > self.max_response_bytes {
            tracing::error!(
                req_id = self.req_id,
                limit = self.max_response_bytes,
                "response too large; cutting it off"
            );
            return Err(self.fail(Fault::ResponseTooLarge, "the response exceeds the server's limit"));
        }
        if len > 0 && self.io.chunks.send(chunk).await.is_err() {
            return Err(self.fail(Fault::ClientGone("the client closed the connection".into()), "the client went away"));
        }
        self.stats.body_bytes += len;
        if overrun > 0 {
            let msg = format!(
                "the body ran {overrun} bytes past the {} bytes its Content-Length declares; cut there",
                self.stats.body_bytes
            );
            return Err(self.fail(Fault::Protocol(msg.clone()), &msg));
        }
        Ok(())
    }
}

impl bindings::Host for HostState {
    async fn read_body(&mut self, max_bytes: u32) -> wasmtime::Result<Result<Vec<u8>, String>> {
        let max = max_bytes.max(1) as usize;
        while self.pending.is_empty() {
            let Ok(frame) = tokio::time::timeout(self.body_timeout, self.io.body.frame()).await else {
                return Ok(Err(self.fail(Fault::BodyTimeout, "timed out waiting for the request body")));
            };
            match frame {
                None => return Ok(Ok(Vec::new())),
                Some(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
                    return Ok(Err(self.fail(Fault::BodyTooLarge, "the request body is too large")));
                }
                Some(Err(err)) if connection_lost(&*err) => {
                    let why = format!("reading the request body failed: {err}");
                    return Ok(Err(self.fail(Fault::ClientGone(why.clone()), &why)));
                }
                // Cut short (the client closed its side mid-body) or badly
                // framed: the client's fault, and it may still be reading.
                Some(Err(err)) => {
                    let why = format!("the request body is incomplete or malformed: {err}");
                    return Ok(Err(self.fail(Fault::BadBody(why.clone()), &why)));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.pending = data;
                    }
                }
            }
        }
        let n = max.min(self.pending.len());
        self.stats.bytes_in += n as u64;
        Ok(Ok(self.pending.split_to(n).to_vec()))
    }

    async fn start_response(
        &mut self,
        status: Vec<u8>,
        headers: Vec<Header>,
        body: Vec<u8>,
        complete: bool,
    ) -> wasmtime::Result<Result<(), String>> {
        if matches!(self.head, HeadState::Sent) {
            let msg = "start-response called twice";
            return Ok(Err(self.fail(Fault::Protocol(msg.into()), msg)));
        }
        // After a refused call (a write before the head, say), the request
        // has failed: its head must not go out either.
        if self.fault.is_some() {
            return Ok(Err("the request has already failed".into()));
        }
        self.head = HeadState::Sent;
        let raw = RawHead {
            status,
            headers: headers.into_iter().map(|h| (h.name, h.value)).collect(),
            complete_len: complete.then_some(body.len() as u64),
            timing: Timing { app: self.app_started.elapsed(), ..self.timing },
        };
        let on_head = std::mem::replace(&mut self.io.on_head, Box::new(|_| Err(HeadRefused::ClientGone)));
        match on_head(raw) {
            Ok(accepted) => {
                self.discard_body = accepted.discard_body;
                self.length = accepted.length;
                self.stats.head_sent = true;
                Ok(self.send(body).await)
            }
            Err(HeadRefused::Invalid(msg)) => {
                tracing::error!(req_id = self.req_id, "refused the app's response head: {msg}");
                Ok(Err(self.fail(Fault::Protocol(msg.clone()), &msg)))
            }
            Err(HeadRefused::ClientGone) => {
                let why = "the client closed the connection before the response".to_owned();
                Ok(Err(self.fail(Fault::ClientGone(why), "the client went away")))
            }
        }
    }

    async fn write_body(&mut self, chunk: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        if !matches!(self.head, HeadState::Sent) {
            let msg = "write-body before start-response";
            return Ok(Err(self.fail(Fault::Protocol(msg.into()), msg)));
        }
        Ok(self.send(chunk).await)
    }
}

/// Whether a body error is the connection itself failing (a reset), rather
/// than a body that ended early or was malformed.
fn connection_lost(err: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    std::iter::successors(Some(err), |e| e.source())
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe))
}

/// The longest traceback logged whole; a longer one is cut.
const MAX_TRACEBACK: usize = 64 * 1024;

/// The WIT `log` interface, by hand rather than generated: the generated
/// binding would copy the whole message out of guest memory first (100 MiB
/// for a hostile one), where this reads it in place and keeps at most
/// [`output::MAX_MESSAGE`] bytes of it.
fn add_log_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    linker.instance(bindings::LOG_INTERFACE)?.func_wrap(
        "log-error",
        |store: wasmtime::StoreContextMut<'_, HostState>, (message,): (WasmStr,)| {
            let text = message.to_str(&store)?;
            store.data().log.emit_message(&text);
            Ok(())
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn guest_paths_overlap_only_at_segment_boundaries() {
        use super::overlaps;
        assert!(overlaps("/python", "/python") && overlaps("/python/x", "/python") && overlaps("/0", "/0/sub"));
        assert!(!overlaps("/python2", "/python") && !overlaps("/data", "/0"));
    }
}
