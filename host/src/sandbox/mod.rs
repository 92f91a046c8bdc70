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
//!
//! One file per job:
//! - this one: linking an app, and each request's store, instance and call;
//! - `exchange`: the host imports of our world (the request body in, the
//!   response out, `wsgi.errors`), with their framing rules;
//! - `files` and `network`: what the operator grants (the file tree and
//!   mounts; the outbound connections and name lookups);
//! - `limiter`, `output`, `random`: the per-request memory limit, the log
//!   budget, and `wasi:random` in bulk.
//!
//! - `kdf` and `tls`: the work the host does for the guest that its CPython
//!   would take from OpenSSL (key derivation, TLS sessions).
//!
//! A new host import is a file of its own here, and the work it does for
//! the guest is bounded by the request's own limits.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tracing::Instrument;
use wasmtime::component::{Linker, ResourceTable, ResourceTableError};
use wasmtime::Store;
use wasmtime_wasi::filesystem::WasiFilesystemCtx;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::background;
use crate::bindings::WsgiPre;
use crate::budget::AppBudget;
use crate::config::{Limits, Mount};
use crate::error::SandboxError;
use crate::metrics::AppMetrics;
use crate::pool::AppSlots;
use crate::upload::LoadedApp;

mod exchange;
mod files;
mod kdf;
mod limiter;
mod network;
mod output;
mod random;
mod tls;

pub use self::exchange::{ChunkSender, GuestIo, HeadAccepted, HeadHandler, HeadRefused, RawHead, RequestBody};
use self::exchange::{Exchange, Fault};
use self::limiter::Limiter;
use self::network::Network;

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
    /// The host's key derivation for the guest (`hashlib.pbkdf2_hmac`,
    /// `hashlib.scrypt`), part of `timing.app`.
    pub kdf: Duration,
    /// The host's TLS work for the guest, part of `timing.app`.
    pub tls: Duration,
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
    /// by every request's `outbound::Policy`.
    pub outbound: Arc<[crate::outbound::Grant]>,
    /// Whom TLS sessions over those connections trust; none without a
    /// grant.
    pub trust: Option<Arc<crate::trust::Trust>>,
}

/// The compiled, linked app and the limits every instance runs under.
pub struct Sandbox {
    /// The compiled component, its engine and its file tree.
    app: LoadedApp,
    /// The app's name in log lines and metrics.
    name: Arc<str>,
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
    /// This app's share of the server's memory budget.
    budget: AppBudget,
    /// Where to count what each request costs, with `--metrics`.
    metrics: Option<AppMetrics>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // The last request of a retired version has ended, or a version
        // loaded for a reload that failed never served: its slot and budget
        // registrations must not hold a share.
        self.slots.release();
        self.budget.retire();
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
        budget: AppBudget,
    ) -> anyhow::Result<Self> {
        files::check_mounts(&app, &grants.mounts)?;
        warn_of_frozen_env(&app, &name, &grants.env);
        let mut linker = Linker::<HostState>::new(&app.engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        random::add_bulk_get_random_bytes(&mut linker)?;
        exchange::add_to_linker(&mut linker)?;
        kdf::add_to_linker(&mut linker)?;
        tls::add_to_linker(&mut linker)?;
        network::restrict_name_lookup(&mut linker)?;
        let pre = linker
            .instantiate_pre(&app.component)
            .map_err(anyhow::Error::from)
            .context("the component does not fit the host (was it built by this wsgi-wasm?)")?;
        let pre = WsgiPre::new(pre)
            .map_err(anyhow::Error::from)
            .context("the component does not export the wsgi-wasm `wsgi` world")?;
        let preopens = files::open_preopens(&app, &grants.mounts)?;
        Ok(Self { app, name: name.into(), pre, limits, grants, slots, budget, preopens, metrics })
    }

    /// This app's metrics, with `--metrics`.
    pub fn metrics(&self) -> Option<&AppMetrics> {
        self.metrics.as_ref()
    }

    /// Takes this version out of the pool's sharing once it no longer takes
    /// new requests (replaced or removed by a reload); its requests in
    /// flight, and those queued, finish.
    ///
    /// Its share of the memory budget stays until the last of those ends
    /// (the drop): a request routed to it just before the swap still has to
    /// instantiate, and with no share it could take only memory no live app
    /// is owed, which may be none.
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
        // What this instance holds becomes the least the app is owed from
        // the budget (see `budget`), as the store is dropped.
        store.data_mut().limiter.checking();
        if let Err(err) = self.pre.instantiate_async(&mut store).await {
            if store.data().limiter.memory_hit {
                anyhow::bail!(
                    "the app needs more than --memory {} MiB just to start; raise --memory",
                    self.limits.memory_bytes >> 20
                );
            }
            if store.data().limiter.budget_hit {
                anyhow::bail!(
                    "the server's memory budget ({} MiB, {} MiB of it free now) cannot hold the app's snapshot; \
                     raise --memory-budget",
                    self.budget.total() >> 20,
                    self.budget.free() >> 20
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
        let exchange = &mut store.data_mut().exchange;
        exchange.timing = timing;
        exchange.app_started = app_started;
        let result = wsgi.call_handle(&mut store, req.url_scheme, &req.environ, &self.grants.env).await;
        let app = app_started.elapsed();
        let state = store.data_mut();
        let outcome = match result {
            // A fault the guest chose to ignore still fails the request: a
            // response the host cut must not end as if it were whole.
            // (A guest that caught a MemoryError and answered did not fail.)
            Ok(Ok(())) => {
                state.exchange.check_body_length();
                self.host_fault(state).map_or(Ok(state.exchange.stats), Err)
            }
            Ok(Err(traceback)) => {
                Err(self.classify(state, traceback, |tb| SandboxError::App(output::cut(&tb, MAX_TRACEBACK))))
            }
            Err(err) => Err(self.classify(state, err, |e| self.trapped(e, SandboxError::Trap))),
        };
        let log = Arc::clone(&state.log);
        let (kdf, tls) = (state.kdf_time, state.tls.time);
        let peak_memory = state.limiter.peak;
        if let Some(m) = &self.metrics {
            m.peak_memory(peak_memory);
        }
        let fuel = self.limits.fuel.and_then(|budget| Some(budget - store.get_fuel().ok()?));
        let dropped = Instant::now();
        drop(store);
        let teardown = dropped.elapsed();
        log.finish();
        outcome.map(|stats| RunStats {
            timing: Timing { app, teardown, ..timing },
            peak_memory,
            fuel,
            kdf,
            tls,
            ..stats
        })
    }

    /// Names a failure by its first cause: what the host saw go wrong beats
    /// the exception or trap the guest ended with.
    fn classify<E>(&self, state: &HostState, err: E, otherwise: impl FnOnce(E) -> SandboxError) -> SandboxError {
        match self.host_fault(state) {
            Some(fault) => fault,
            None if state.limiter.memory_hit => SandboxError::MemoryExceeded(self.limits.memory_bytes >> 20),
            None if state.limiter.budget_hit => SandboxError::MemoryBudget(self.budget.total() >> 20),
            None => otherwise(err),
        }
    }

    /// What the host saw go wrong, if anything did.
    fn host_fault(&self, state: &HostState) -> Option<SandboxError> {
        Some(match state.exchange.fault.as_ref()? {
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
        let log = output::LogBudget::new(
            req_id,
            Arc::clone(&self.name),
            self.limits.max_log_bytes,
            self.limits.max_log_lines,
        );
        let mut wasi = WasiCtxBuilder::new();
        let network = Network::grant(&mut wasi, &self.grants.outbound, req_id, self.limits.max_outbound_connections);
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
            network,
            log,
            limiter: Limiter::new(self.limits.memory_bytes, self.budget.clone(), moving.clone()),
            exchange: Exchange::new(io, self.limits.body_timeout, self.limits.max_response_bytes, req_id),
            kdf_time: Duration::ZERO,
            tls: tls::Tls::new(self.grants.trust.clone(), self.limits.max_outbound_connections),
            moving: moving.clone(),
            contended: self.app.contended(),
            req_id,
        };
        let mut store = Store::new(&self.app.engine, state);
        store.limiter_async(|s| &mut s.limiter);
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

/// Warns of each `--env` variable the app read while it was built: the
/// value in its snapshot is the one its import-time code kept, and the one
/// granted now reaches only code that reads the variable during a request.
fn warn_of_frozen_env(app: &LoadedApp, name: &str, env: &[(String, String)]) {
    for (key, _) in env {
        let read = app.manifest.env_read.contains(key);
        if read || app.manifest.env_iterated {
            let how = if read { format!("read {key}") } else { "read its whole environment".to_owned() };
            tracing::warn!(
                app = %name,
                key = %key,
                "--env {key}: the app {how} while it was built, so what it kept then is in app.wasm and \
                 stays; this value reaches only code that reads {key} during a request"
            );
        }
    }
}

/// The longest traceback logged whole; a longer one is cut.
const MAX_TRACEBACK: usize = 64 * 1024;

/// Everything one instance's host calls can touch.
pub struct HostState {
    /// This instance's WASI context: its own stdio, clocks, random, preopens.
    wasi: WasiCtx,
    /// WASI resources the guest holds, at most `--max-open-files`.
    table: ResourceTable,
    /// The app's outbound grants, with what this request resolved.
    network: Network,
    /// What the guest may still write to the log.
    log: Arc<output::LogBudget>,
    /// `--memory`, and whether the guest ran into it.
    limiter: Limiter,
    /// The request body and the response: the `host` interface's state.
    exchange: Exchange,
    /// The host's key derivation for this request so far (`kdf`).
    kdf_time: Duration,
    /// The request's TLS sessions (`tls`).
    tls: tls::Tls,
    /// The request's wish to move to the background runtime: its guest's
    /// epoch callback and the host's long work for it (`kdf`) ask.
    moving: background::Move,
    /// Whether guests compete for the cores now (see `engine::EpochTicker`).
    contended: Arc<std::sync::atomic::AtomicBool>,
    /// For log lines.
    req_id: u64,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}
