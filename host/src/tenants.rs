//! The apps one server hosts: each loaded from its config into a
//! [`Sandbox`] of its own, in one shared engine and pool, and the routing
//! table that picks one for a request.
//!
//! Each app has its own limits, grants, file tree, slot cap and queue; what
//! they share is the engine (one compile cache, one epoch thread) and the
//! pool of instance slots, which `pool` divides fairly.

use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};

use crate::config::{AppConfig, RunConfig};
use crate::engine::{LoadedApp, PoolSpec, SharedEngine};
use crate::metrics::{AppMetrics, Metrics};
use crate::pool::Pool;
use crate::router::{self, Router};
use crate::sandbox::{Grants, Sandbox};
use crate::wsgi::CgiVars;

/// Every app being served, and how requests find them.
pub struct Tenants {
    table: RwLock<Arc<Router<Arc<Sandbox>>>>,
    metrics: Option<Arc<Metrics>>,
    /// Requests no app took (no match, or refused before routing).
    unrouted: Option<AppMetrics>,
    /// Whether the apps came from a config file (messages name it).
    file: Option<String>,
}

impl Tenants {
    /// Loads and links every app of `config`: compiles (or loads from the
    /// cache) each `wasm`, and reserves the pool they share.
    ///
    /// # Errors
    /// Names the app, and what is wrong with it.
    pub fn load(config: &RunConfig, metrics: Option<Arc<Metrics>>) -> Result<Self> {
        let spec = PoolSpec {
            slots: config.pool,
            memory_bytes: config.apps.iter().map(|a| a.limits.memory_bytes).max().unwrap_or(0),
            fuel: config.apps.iter().any(|a| a.limits.fuel.is_some()),
        };
        let shared = SharedEngine::new(spec, &config.cache_dir)?;
        let pool = Pool::new(config.pool);
        let file = config.file.as_ref().map(|f| f.display().to_string());
        let mut routes = Vec::new();
        for app in &config.apps {
            let sandbox = load_app(app, &shared, &pool, metrics.as_ref()).with_context(|| match &file {
                Some(file) => format!("{file}: [apps.{}] ({})", app.name, app.wasm.display()),
                None => format!("{}", app.wasm.display()),
            })?;
            routes.push((app.name.clone(), app.mount.clone(), Arc::new(sandbox)));
        }
        let table = Router::new(routes).with_context(|| file.clone().unwrap_or_default())?;
        let unrouted = metrics.as_ref().map(|m| m.unrouted());
        Ok(Self { table: RwLock::new(Arc::new(table)), metrics, unrouted, file })
    }

    /// Instantiates every app once, so that what would fail each of its
    /// requests stops the server at startup instead.
    ///
    /// # Errors
    /// Names the app and says what to change.
    pub async fn check(&self) -> Result<()> {
        let table = self.table();
        for (name, sandbox) in table.apps() {
            sandbox.check().await.with_context(|| match &self.file {
                Some(file) => format!("{file}: [apps.{name}]"),
                None => format!("app {name}"),
            })?;
        }
        Ok(())
    }

    /// The routing table in force.
    pub fn table(&self) -> Arc<Router<Arc<Sandbox>>> {
        Arc::clone(&self.table.read().expect("the table lock is never poisoned"))
    }

    /// The app for a request, by `UWSGI_APPID` or by host and path; moves
    /// its prefix from `PATH_INFO` to the end of `SCRIPT_NAME`.
    pub fn route(&self, vars: &mut CgiVars) -> Option<Arc<Sandbox>> {
        let table = self.table();
        let routed = match vars.get("UWSGI_APPID") {
            // An app exists only if the config names it: an unknown id is
            // a miss, never a path to load.
            Some(id) => table.by_name(std::str::from_utf8(id).ok()?)?,
            None => {
                let host = vars.get("HTTP_HOST").or_else(|| vars.get("SERVER_NAME"));
                table.route(host, vars.get("PATH_INFO").unwrap_or_default())?
            }
        };
        let prefix = routed.prefix;
        if !prefix.is_empty() {
            let path = vars.get("PATH_INFO").unwrap_or_default();
            if router::under(path, prefix) {
                let rest = path[prefix.len()..].to_vec();
                let mut script = vars.get("SCRIPT_NAME").unwrap_or_default().to_vec();
                script.extend_from_slice(prefix.as_bytes());
                vars.set("SCRIPT_NAME", script);
                vars.set("PATH_INFO", rest);
            }
        }
        Some(Arc::clone(routed.app))
    }

    /// The metrics registry, with `--metrics`.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// Where requests that reached no app are counted (`app="-"`).
    pub fn unrouted(&self) -> Option<&AppMetrics> {
        self.unrouted.as_ref()
    }
}

fn load_app(
    app: &AppConfig,
    shared: &Arc<SharedEngine>,
    pool: &Arc<Pool>,
    metrics: Option<&Arc<Metrics>>,
) -> Result<Sandbox> {
    let loaded = LoadedApp::load(&app.wasm, shared, &app.limits)?;
    let grants = Grants { mounts: app.mounts.clone(), env: app.env.clone() };
    let metrics = metrics.map(|m| m.app(&app.name, &loaded.digest));
    let slots = pool.register(app.limits.max_instances);
    Sandbox::new(loaded, app.name.clone(), app.limits.clone(), grants, metrics, slots)
}
