//! The apps one server hosts: each loaded from its config into a
//! [`Sandbox`] of its own, in one shared engine and pool; the routing table
//! that picks one for a request; and hot deploy, which swaps in a new set.
//!
//! Each app has its own limits, grants, file tree, slot cap and queue; what
//! they share is the engine (one compile cache, one epoch thread) and the
//! pool of instance slots, which `pool` divides fairly.
//!
//! Reloads are per app, so that one tenant's broken upload never holds up
//! another's deploy:
//! - when an app's `wasm` file is replaced, that app alone is reloaded
//!   ([`Tenants::watch`]);
//! - on `SIGHUP`, or when a file of the apps directory is added, changed
//!   or removed, the config is read again ([`Tenants::reload`]): an app
//!   whose settings and file are unchanged keeps its sandbox; a new or
//!   changed one is loaded, compiled and instantiated once before it takes
//!   traffic; one that fails keeps its last good version (or, if new, is
//!   not added), and the others apply. An app of the apps directory that
//!   claims another's host and prefix is refused alone.
//!
//! Either way the new table is swapped in one step. Requests already routed
//! hold their app's sandbox and finish on it. A failure is logged and
//! counted (`wsgi_wasm_reloads_total{app,result="error"}`), and a file that
//! failed is not tried again until it changes. Only a config that does not
//! parse, or whose main-config apps claim the same host and prefix,
//! changes nothing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use crate::budget::MemoryBudget;
use crate::codecache;
use crate::config::{AppConfig, Broken, RunConfig};
use crate::engine::{PoolSpec, SharedEngine};
use crate::health::Health;
use crate::metrics::{AppMetrics, Metrics};
use crate::pool::Pool;
use crate::router::Router;
use crate::sandbox::{Grants, Sandbox};
use crate::upload::LoadedApp;

/// How often the apps' `wasm` files are checked for a replacement.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Every app being served, and how requests find them.
pub struct Tenants {
    shared: Arc<SharedEngine>,
    pool: Arc<Pool>,
    /// The linear memory all sandboxes may hold at once.
    budget: Arc<MemoryBudget>,
    served: RwLock<Arc<Served>>,
    metrics: Option<Arc<Metrics>>,
    /// Told how many apps are served, for `/readyz`.
    health: Arc<Health>,
    /// Requests no app took (no match, or refused before routing).
    unrouted: Option<AppMetrics>,
    /// The config file, if the apps came from one (messages name it).
    file: Option<String>,
    /// The apps directory, watched (fixed at startup).
    apps_dir: Option<PathBuf>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

/// One generation of apps: the table and what each was loaded from.
struct Served {
    table: Router<Arc<Sandbox>>,
    apps: Vec<Entry>,
}

#[derive(Clone)]
struct Entry {
    config: AppConfig,
    stamp: Option<Stamp>,
    sandbox: Arc<Sandbox>,
}

/// What identifies a version of a file without reading it: a replacement by
/// `mv` changes the inode, one written in place the size or mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self { dev: m.dev(), ino: m.ino(), len: m.len(), mtime: (m.mtime(), m.mtime_nsec()) })
    }
}

impl Tenants {
    /// Loads and links every app of `config`: compiles (or loads from the
    /// cache) each `wasm`, and reserves the pool they share.
    ///
    /// # Errors
    /// Names the app, and what is wrong with it.
    fn load(config: &RunConfig, metrics: Option<Arc<Metrics>>, health: Arc<Health>) -> Result<Self> {
        let spec = PoolSpec {
            slots: config.pool,
            memory_bytes: config.slot_memory_bytes,
            fuel: config.apps.iter().any(|a| a.limits.fuel.is_some()),
            perf_map: config.perf_map,
        };
        let shared = SharedEngine::new(spec, &config.cache_dir)?;
        let pool = Pool::new(config.pool);
        let budget = MemoryBudget::new(config.memory_budget);
        tracing::info!(
            memory_budget_mib = config.memory_budget >> 20,
            "memory budget: {} MiB of linear memory for all sandboxes together (--memory-budget)",
            config.memory_budget >> 20
        );
        let file = config.file.as_ref().map(|f| f.display().to_string());
        // The apps directory's apps are added by a reload once these serve
        // (`start`), so that each is refused alone.
        let wanted: Vec<&AppConfig> = config.apps.iter().filter(|a| a.source.is_none()).collect();
        let loaded = in_parallel(&wanted, |app| {
            let stamp = Stamp::of(&app.wasm);
            let sandbox =
                load_app(app, &shared, &pool, &budget, metrics.as_ref()).with_context(|| describe(&file, app))?;
            Ok((stamp, sandbox))
        })?;
        let mut apps = Vec::new();
        for (app, (stamp, sandbox)) in wanted.into_iter().zip(loaded) {
            if let Some(m) = sandbox.metrics() {
                m.serving(sandbox.digest());
            }
            apps.push(Entry { config: app.clone(), stamp, sandbox: Arc::new(sandbox) });
        }
        let served = Served::new(apps, &file)?;
        health.serving(served.apps.len());
        let unrouted = metrics.as_ref().map(|m| m.unrouted());
        Ok(Self {
            shared,
            pool,
            budget,
            served: RwLock::new(Arc::new(served)),
            metrics,
            health,
            unrouted,
            file,
            apps_dir: config.apps_dir.clone(),
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// Everything done to the apps before the server listens, and all that
    /// `check` does: loads the main config's apps and instantiates each
    /// once (any failure is an error), then adds the apps directory's by a
    /// reload, which refuses each that cannot serve alone and returns why.
    ///
    /// # Errors
    /// A main-config app that cannot serve, named with what to change.
    pub async fn start(
        config: &RunConfig,
        metrics: Option<Arc<Metrics>>,
        health: Arc<Health>,
    ) -> Result<(Self, Vec<anyhow::Error>)> {
        let tenants = Self::load(config, metrics, health)?;
        tenants.check().await?;
        let refused = match config.apps_dir {
            Some(_) => tenants.reload(config).await?,
            None => Vec::new(),
        };
        // What reading the main config's `app.wasm` files took is freed now
        // (each app a reload loads frees its own).
        codecache::return_free_heap();
        Ok((tenants, refused))
    }

    /// Instantiates every app once, so that what would fail each of its
    /// requests stops the server at startup instead.
    ///
    /// # Errors
    /// Names the app and says what to change.
    async fn check(&self) -> Result<()> {
        for entry in &self.served().apps {
            entry.sandbox.check().await.with_context(|| self.describe(&entry.config))?;
        }
        Ok(())
    }

    fn served(&self) -> Arc<Served> {
        Arc::clone(&self.served.read().expect("the table lock is never poisoned"))
    }

    /// The apps being served, in config order.
    pub fn apps(&self) -> Vec<(String, Arc<Sandbox>)> {
        self.served().apps.iter().map(|e| (e.config.name.clone(), Arc::clone(&e.sandbox))).collect()
    }

    /// The app for a request and the prefix it is mounted at (`""` for
    /// `/`): the app named `appid` (`UWSGI_APPID`) if given, else the one
    /// for `host` and `path`.
    pub fn route(&self, appid: Option<&[u8]>, host: Option<&[u8]>, path: &[u8]) -> Option<(Arc<Sandbox>, String)> {
        let served = self.served();
        let routed = match appid {
            // An app exists only if the config names it: an unknown id is
            // a miss, never a path to load.
            Some(id) => served.table.by_name(std::str::from_utf8(id).ok()?)?,
            None => served.table.route(host, path)?,
        };
        Some((Arc::clone(routed.app), routed.prefix.to_owned()))
    }

    /// The metrics registry, with `--metrics`.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// Where requests that reached no app are counted (`app="-"`).
    pub fn unrouted(&self) -> Option<&AppMetrics> {
        self.unrouted.as_ref()
    }

    /// Serves `config`'s apps from now on: each new or changed one that
    /// loads, the last good version of each that does not (a new app that
    /// fails is not added), and none of the apps it no longer names. An app
    /// of the apps directory that claims a host and prefix another app
    /// holds is refused alone. Returns the errors of the apps refused, each
    /// logged and counted already.
    ///
    /// # Errors
    /// Two of the main config's apps claiming the same host and prefix:
    /// nothing has changed then.
    pub async fn reload(&self, config: &RunConfig) -> Result<Vec<anyhow::Error>> {
        let _one_at_a_time = self.reloading.lock().await;
        let old = self.served();
        let mut apps = Vec::new();
        let mut fresh = Vec::new();
        let mut refused = Vec::new();
        for app in &config.apps {
            let stamp = Stamp::of(&app.wasm);
            if let Some(kept) = old.apps.iter().find(|e| e.config == *app && e.stamp == stamp && stamp.is_some()) {
                apps.push(Entry { config: app.clone(), stamp, sandbox: Arc::clone(&kept.sandbox) });
                continue;
            }
            match self.load_checked(app).await.with_context(|| self.describe(app)) {
                // Touched but the same bytes and settings: keep the old one.
                Ok(sandbox) => {
                    match old.apps.iter().find(|e| e.config == *app && e.sandbox.digest() == sandbox.digest()) {
                        Some(same) => {
                            apps.push(Entry { config: app.clone(), stamp, sandbox: Arc::clone(&same.sandbox) })
                        }
                        None => {
                            fresh.push(app.name.clone());
                            apps.push(Entry { config: app.clone(), stamp, sandbox: Arc::new(sandbox) });
                        }
                    }
                }
                Err(error) => {
                    let broken = Broken { name: app.name.clone(), source: app.source.clone(), error };
                    refused.push(self.keep_last_good(&old, broken, &mut apps));
                }
            }
        }
        for broken in &config.broken {
            let (name, source) = (broken.name.clone(), broken.source.clone());
            let broken = Broken { name, source, error: anyhow::anyhow!("{:#}", broken.error) };
            refused.push(self.keep_last_good(&old, broken, &mut apps));
        }
        let new = self.admit(apps, &old, &mut fresh, &mut refused).inspect_err(|_| self.count_reload("-", "error"))?;
        self.install(&old, new, &fresh);
        Ok(refused)
    }

    /// After `broken` failed to load or to parse: logs and counts it, and
    /// keeps the version `old` serves from the same file, if there is one
    /// and no other app has its name now. Returns its error.
    fn keep_last_good(&self, old: &Served, broken: Broken, apps: &mut Vec<Entry>) -> anyhow::Error {
        let Broken { name, source, error } = broken;
        self.count_reload(&name, "error");
        match old.last_good(&name, &source).filter(|_| !apps.iter().any(|e| e.config.name == name)) {
            Some(last) => {
                tracing::error!(app = %name, "reload failed; still serving its last good version: {error:#}");
                apps.push(last.clone());
            }
            None => tracing::error!(app = %name, "not added: {error:#}"),
        }
        error
    }

    /// The routing table of `apps`. The main config's apps must fit
    /// together; then each app of the apps directory joins, those that
    /// served before first, unless it claims what another holds: then its
    /// last good version joins instead, if that fits, or none. So one
    /// tenant's file never takes another's host, nor stops the others'.
    ///
    /// A refused app is taken out of `fresh` and its error added to
    /// `refused`.
    ///
    /// # Errors
    /// The main config's apps claim the same host and prefix.
    fn admit(
        &self,
        apps: Vec<Entry>,
        old: &Served,
        fresh: &mut Vec<String>,
        refused: &mut Vec<anyhow::Error>,
    ) -> Result<Served> {
        // The common case, one table for all: no app is tried alone.
        if apps.iter().all(|e| e.config.source.is_none()) || Router::new(routes(&apps)).is_ok() {
            return Served::new(apps, &self.file);
        }
        let (mut admitted, mut dir): (Vec<Entry>, Vec<Entry>) =
            apps.into_iter().partition(|e| e.config.source.is_none());
        Router::new(routes(&admitted)).with_context(|| self.file.clone().unwrap_or_default())?;
        let served_before = |e: &Entry| old.apps.iter().any(|o| Arc::ptr_eq(&o.sandbox, &e.sandbox));
        dir.sort_by_key(|e| !served_before(e));
        for entry in dir {
            admitted.push(entry);
            let Err(err) = Router::new(routes(&admitted)) else { continue };
            let entry = admitted.pop().expect("just pushed");
            let name = &entry.config.name;
            let error = anyhow::anyhow!("{}: {err:#}", self.describe(&entry.config));
            self.count_reload(name, "error");
            fresh.retain(|f| f != name);
            let last = old.last_good(name, &entry.config.source);
            if let Some(last) = last.filter(|last| !Arc::ptr_eq(&last.sandbox, &entry.sandbox)) {
                admitted.push(last.clone());
                if Router::new(routes(&admitted)).is_ok() {
                    tracing::error!(app = %name, "reload failed; still serving its last good version: {error:#}");
                    refused.push(error);
                    continue;
                }
                admitted.pop();
            }
            tracing::error!(app = %name, "not added: {error:#}");
            refused.push(error);
        }
        Served::new(admitted, &self.file)
    }

    /// Reloads the one app `name` from its `wasm` file, which changed.
    ///
    /// # Errors
    /// Why the new version cannot serve; the old one goes on serving.
    async fn reload_file(&self, name: &str) -> Result<()> {
        let _one_at_a_time = self.reloading.lock().await;
        let old = self.served();
        let Some(entry) = old.apps.iter().find(|e| e.config.name == name) else { return Ok(()) };
        let stamp = Stamp::of(&entry.config.wasm);
        let sandbox = match self.load_checked(&entry.config).await.with_context(|| self.describe(&entry.config)) {
            Ok(sandbox) => sandbox,
            Err(err) => {
                self.count_reload(name, "error");
                return Err(err);
            }
        };
        // Touched but the same bytes: the old version goes on serving.
        let same = sandbox.digest() == entry.sandbox.digest();
        let sandbox = if same { Arc::clone(&entry.sandbox) } else { Arc::new(sandbox) };
        let apps = old
            .apps
            .iter()
            .map(|e| match &e.config.name {
                n if n == name => Entry { config: e.config.clone(), stamp, sandbox: Arc::clone(&sandbox) },
                _ => e.clone(),
            })
            .collect();
        let new = Served::new(apps, &self.file)?;
        self.install(&old, new, if same { &[] } else { std::slice::from_ref(&entry.config.name) });
        Ok(())
    }

    /// Swaps `new` in for `old`: the apps `old` served that `new` does not
    /// take no new requests, and each app in `fresh` says what it serves.
    fn install(&self, old: &Served, new: Served, fresh: &[String]) {
        *self.served.write().expect("the table lock is never poisoned") = Arc::new(new);
        let new = self.served();
        self.health.serving(new.apps.len());
        let digests: Vec<&str> = new.apps.iter().map(|e| e.sandbox.digest()).collect();
        self.shared.cache.keep_only(&digests);
        for entry in &old.apps {
            if !new.apps.iter().any(|e| Arc::ptr_eq(&e.sandbox, &entry.sandbox)) {
                entry.sandbox.retire();
                if let Some(m) = entry.sandbox.metrics() {
                    m.retire(entry.sandbox.digest());
                }
                if !new.apps.iter().any(|e| e.config.name == entry.config.name) {
                    tracing::info!(app = %entry.config.name, "app {} removed; its requests in flight finish", entry.config.name);
                }
            }
        }
        for entry in new.apps.iter().filter(|e| fresh.contains(&e.config.name)) {
            self.count_reload(&entry.config.name, "ok");
            // The series of the version being served (a replaced one's
            // were dropped above).
            if let Some(m) = entry.sandbox.metrics() {
                m.serving(entry.sandbox.digest());
            }
            tracing::info!(
                app = %entry.config.name,
                digest = %entry.sandbox.digest(),
                "app {} now serves {}",
                entry.config.name,
                entry.sandbox.digest()
            );
        }
    }

    /// Loads `app` off the async threads (compiling can take seconds), then
    /// instantiates it once.
    async fn load_checked(&self, app: &AppConfig) -> Result<Sandbox> {
        let spec = self.shared.spec;
        if app.limits.memory_bytes > spec.memory_bytes {
            bail!(
                "memory {} MiB is more than the pool's slots hold ({} MiB, the largest at startup); restart to raise it",
                app.limits.memory_bytes >> 20,
                spec.memory_bytes >> 20
            );
        }
        if app.limits.fuel.is_some() && !spec.fuel {
            bail!("fuel: no app metered fuel at startup, so the engine counts none; restart to meter it");
        }
        let (app, shared, pool, budget, metrics) = (
            app.clone(),
            Arc::clone(&self.shared),
            Arc::clone(&self.pool),
            Arc::clone(&self.budget),
            self.metrics.clone(),
        );
        let loaded =
            tokio::task::spawn_blocking(move || load_app(&app, &shared, &pool, &budget, metrics.as_ref())).await;
        // Whether it loaded or not, the `app.wasm` read for it is freed now.
        codecache::return_free_heap();
        let sandbox = loaded.context("the loading thread panicked")??;
        sandbox.check().await?;
        Ok(sandbox)
    }

    fn describe(&self, app: &AppConfig) -> String {
        describe(&self.file, app)
    }

    fn count_reload(&self, app: &str, result: &str) {
        if let Some(m) = &self.metrics {
            m.reload(app, result);
        }
    }

    /// Reloads on `SIGHUP`, with the config `reread` gives; an app alone
    /// when its `wasm` file is replaced; and, when a file of the apps
    /// directory is added, changed or removed, the config as on `SIGHUP`
    /// (an app whose file and settings are unchanged keeps its sandbox).
    /// Until `shutdown`. A failure is logged and the server goes on as
    /// before; a file that failed is not tried again until it changes.
    pub async fn watch(
        self: Arc<Self>,
        reread: impl Fn() -> Result<RunConfig> + Send + 'static,
        shutdown: CancellationToken,
    ) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hup) => hup,
            Err(err) => return tracing::error!(cause = %err, "cannot watch for SIGHUP; reload by restarting"),
        };
        // The version of each app's file that failed, not to be tried again.
        let mut failed: std::collections::HashMap<String, Option<Stamp>> = std::collections::HashMap::new();
        let mut listing = self.apps_dir.as_deref().map(dir_listing);
        loop {
            let why = tokio::select! {
                _ = hup.recv() => "SIGHUP",
                () = tokio::time::sleep(WATCH_INTERVAL) => {
                    let now = self.apps_dir.as_deref().map(dir_listing);
                    if now != listing {
                        listing = now;
                        "a file of the apps directory changed"
                    } else {
                        self.reload_replaced(&mut failed).await;
                        continue;
                    }
                }
                () = shutdown.cancelled() => return,
            };
            tracing::info!("reloading: {why}");
            let result = match reread() {
                Ok(config) => self.reload(&config).await,
                Err(err) => {
                    self.count_reload("-", "error");
                    Err(err)
                }
            };
            match result {
                Ok(refused) => tracing::info!(
                    "reloaded: serving {} apps{}",
                    self.served().apps.len(),
                    if refused.is_empty() { String::new() } else { format!(", {} refused", refused.len()) }
                ),
                Err(err) => tracing::error!("reload failed, still serving as before: {err:#}"),
            }
            failed.clear();
        }
    }

    /// Reloads each app whose `wasm` file was replaced since it was loaded,
    /// unless that version failed before (`failed`).
    async fn reload_replaced(&self, failed: &mut std::collections::HashMap<String, Option<Stamp>>) {
        let served = self.served();
        for entry in &served.apps {
            let stamp = Stamp::of(&entry.config.wasm);
            if stamp == entry.stamp || failed.get(&entry.config.name) == Some(&stamp) {
                continue;
            }
            let name = &entry.config.name;
            tracing::info!(app = %name, "reloading {name}: its wasm file changed");
            match self.reload_file(name).await {
                Ok(()) => {
                    failed.remove(name);
                }
                Err(err) => {
                    tracing::error!(app = %name, "reload failed; still serving its last good version: {err:#}");
                    failed.insert(name.clone(), stamp);
                }
            }
        }
    }
}

/// The `.toml` files of the apps directory and the version of each, to
/// tell when one is added, changed or removed; `None` if it cannot be read.
fn dir_listing(dir: &Path) -> Option<Vec<(std::ffi::OsString, Option<Stamp>)>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            if path.extension()? != "toml" {
                return None;
            }
            Some((path.file_name()?.to_owned(), Stamp::of(&path)))
        })
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Some(files)
}

impl Served {
    fn new(apps: Vec<Entry>, file: &Option<String>) -> Result<Self> {
        let table = Router::new(routes(&apps)).with_context(|| file.clone().unwrap_or_default())?;
        Ok(Self { table, apps })
    }

    /// The version served of app `name` from `source` (its apps directory
    /// file, or the main config), the one a failed reload keeps.
    fn last_good(&self, name: &str, source: &Option<PathBuf>) -> Option<&Entry> {
        self.apps.iter().find(|e| e.config.name == name && e.config.source == *source)
    }
}

/// The app in messages: its file and table, or its path.
fn describe(file: &Option<String>, app: &AppConfig) -> String {
    match (&app.source, file) {
        (Some(source), _) => format!("{} ({})", source.display(), app.wasm.display()),
        (None, Some(file)) => format!("{file}: [apps.{}] ({})", app.name, app.wasm.display()),
        (None, None) => format!("{}", app.wasm.display()),
    }
}

/// The routes of `apps`, for a [`Router`].
fn routes(apps: &[Entry]) -> Vec<(String, crate::router::Mount, Arc<Sandbox>)> {
    apps.iter().map(|e| (e.config.name.clone(), e.config.mount.clone(), Arc::clone(&e.sandbox))).collect()
}

/// `load` of each item, in the items' order: the first alone, then the
/// rest on one thread more than there are cores. Most of loading an app is
/// one thread's work (reading and hashing its `app.wasm`, unpacking its
/// files, linking its code), with waits for the disk between (writing the
/// code out): the extra thread fills those. The first goes alone: it
/// writes the files most apps share and, with an empty cache, compiles
/// the modules they all use (`codecache`), with nothing else on the
/// cores. Loading all at once instead made three trees write the same
/// files in step, and a start from the cache 0.2–0.7 s slower
/// (`docs/performance.md`).
///
/// # Errors
/// The first item's error, in the items' order, once all have been tried.
fn in_parallel<T: Sync, R: Send>(items: &[T], load: impl Fn(&T) -> Result<R> + Sync) -> Result<Vec<R>> {
    let Some((first, rest)) = items.split_first() else { return Ok(Vec::new()) };
    let first = load(first);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done: Vec<Mutex<Option<Result<R>>>> = rest.iter().map(|_| Mutex::new(None)).collect();
    let threads = (std::thread::available_parallelism().map_or(1, usize::from) + 1).min(rest.len());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = rest.get(i) else { break };
                *done[i].lock().expect("never poisoned") = Some(load(item));
            });
        }
    });
    let mut loaded = vec![first?];
    for result in done {
        loaded.push(result.into_inner().expect("never poisoned").expect("every item is loaded")?);
    }
    Ok(loaded)
}

fn load_app(
    app: &AppConfig,
    shared: &Arc<SharedEngine>,
    pool: &Arc<Pool>,
    budget: &Arc<MemoryBudget>,
    metrics: Option<&Arc<Metrics>>,
) -> Result<Sandbox> {
    let loaded = LoadedApp::load(&app.wasm, shared, &app.limits)?;
    // TLS rides on granted connections: an app without a grant has none.
    let trust = match app.outbound.is_empty() {
        true => None,
        false => Some(Arc::new(crate::trust::Trust::load(app.outbound_ca.as_deref())?)),
    };
    let grants =
        Grants { mounts: app.mounts.clone(), env: app.env.clone(), outbound: app.outbound.clone().into(), trust };
    let metrics = metrics.map(|m| m.app_series(&app.name));
    let slots = pool.register(app.limits.max_instances);
    let most = app.limits.memory_bytes as u64 * app.limits.max_instances as u64;
    Sandbox::new(loaded, app.name.clone(), app.limits.clone(), grants, metrics, slots, budget.register(most))
}
