//! The config file of `wsgi-wasm run --config FILE`, and the layers a
//! setting comes from.
//!
//! A setting is taken from the first of: a flag given on the command line
//! (or its environment variable), the app's `[apps.NAME]` table, the
//! `[defaults]` table, the flag's default. `[server]` settings come from a
//! flag, else the `[server]` table, else the default. Every table is parsed
//! with `deny_unknown_fields`, and relative paths in the file are relative
//! to the file's directory.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::{seconds, AppConfig, Limits, Mount, ServerLimits, UwsgiAddr, UwsgiConfig};
use crate::cli::RunArgs;

/// Generates a table of optional settings, with the layering helpers.
macro_rules! table {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: Option<$ty>,)*
        }

        impl $name {
            /// `self`, with every setting `top` has taking its place.
            pub fn over(&self, top: &Self) -> Self {
                Self { $($field: top.$field.clone().or_else(|| self.$field.clone()),)* }
            }

            /// Only the settings whose keys are in `keys`.
            fn only(&self, keys: &HashSet<String>) -> Self {
                Self { $($field: self.$field.clone().filter(|_| keys.contains(stringify!($field))),)* }
            }

            /// Whether the table sets `key`.
            pub fn has(&self, key: &str) -> bool {
                match key {
                    $(stringify!($field) => self.$field.is_some(),)*
                    _ => false,
                }
            }
        }
    };
}

table! {
    /// Per-app settings: an `[apps.NAME]` table or `[defaults]`.
    AppTable {
        wasm: PathBuf,
        hosts: Vec<String>,
        prefix: String,
        timeout: f64,
        memory: u64,
        fuel: u64,
        max_instances: usize,
        queue_timeout: f64,
        max_body_bytes: u64,
        max_response_bytes: u64,
        body_timeout: f64,
        max_open_files: usize,
        max_log_bytes: u64,
        max_log_lines: u64,
        mounts: Vec<String>,
        env: BTreeMap<String, String>,
        allow_outbound: Vec<String>,
        max_outbound_connections: usize,
        outbound_ca: PathBuf,
    }
}

table! {
    /// Server settings: the `[server]` table.
    ServerTable {
        http: Vec<SocketAddr>,
        uwsgi: Vec<String>,
        uwsgi_mode: String,
        uwsgi_buffer_size: usize,
        max_connections: usize,
        header_timeout: f64,
        max_header_bytes: usize,
        max_headers: usize,
        max_request_line: usize,
        max_header_field: usize,
        shutdown_timeout: f64,
        metrics: SocketAddr,
        max_instances: usize,
        memory_budget: u64,
        cache_dir: PathBuf,
        apps_dir: PathBuf,
    }
}

/// The flag that sets `key`: `--max-body-bytes` for `max_body_bytes`, and
/// `--mount` for `mounts`, the one whose flag is singular.
pub fn flag(key: &str) -> String {
    match key {
        "mounts" => "--mount".to_owned(),
        _ => format!("--{}", key.replace('_', "-")),
    }
}

/// Where a setting came from, for messages.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    Server,
    Defaults,
    App(&'a str),
    /// A file of the apps directory.
    AppFile(&'a Path),
}

/// Every setting the flags give: their values, defaults included.
pub struct Settings {
    pub server: ServerTable,
    pub app: AppTable,
}

impl Settings {
    /// The flags' values, defaulted ones included.
    ///
    /// # Errors
    /// An `--env` that is not `KEY=VALUE`.
    pub fn from_args(args: &RunArgs) -> Result<Self> {
        let server = ServerTable {
            http: Some(args.http.clone()),
            uwsgi: Some(args.uwsgi.clone()),
            uwsgi_mode: Some(args.uwsgi_mode.clone()),
            uwsgi_buffer_size: Some(args.uwsgi_buffer_size),
            max_connections: Some(args.max_connections),
            header_timeout: Some(args.header_timeout),
            max_header_bytes: Some(args.max_header_bytes),
            max_headers: Some(args.max_headers),
            max_request_line: Some(args.max_request_line),
            max_header_field: Some(args.max_header_field),
            shutdown_timeout: Some(args.shutdown_timeout),
            metrics: args.metrics,
            // The pool: --max-instances is each app's cap; see `from_args`.
            max_instances: None,
            memory_budget: args.memory_budget,
            cache_dir: args.cache.cache_dir.clone(),
            apps_dir: args.apps_dir.clone(),
        };
        let app = AppTable {
            wasm: None,
            hosts: None,
            prefix: None,
            timeout: Some(args.timeout),
            memory: Some(args.memory),
            fuel: args.fuel,
            max_instances: args.max_instances,
            queue_timeout: Some(args.queue_timeout),
            max_body_bytes: Some(args.max_body_bytes),
            max_response_bytes: Some(args.max_response_bytes),
            body_timeout: Some(args.body_timeout),
            max_open_files: Some(args.max_open_files),
            max_log_bytes: Some(args.max_log_bytes),
            max_log_lines: Some(args.max_log_lines),
            mounts: Some(args.mounts.clone()),
            env: Some(parse_env(&args.env)?),
            allow_outbound: Some(args.allow_outbound.clone()),
            max_outbound_connections: Some(args.max_outbound_connections),
            outbound_ca: args.outbound_ca.clone(),
        };
        Ok(Self { server, app })
    }

    /// Only the settings of flags in `given`.
    pub fn only(&self, given: &HashSet<String>) -> Self {
        Self { server: self.server.only(given), app: self.app.only(given) }
    }
}

/// `KEY=VALUE` pairs from `--env`.
fn parse_env(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    pairs.iter().map(|pair| super::env_pair(pair).with_context(|| format!("--env {pair}"))).collect()
}

/// A config file, read and parsed but not yet layered or checked.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The file; `None` for `run app.wasm`.
    pub path: Option<PathBuf>,
    pub server: ServerTable,
    pub defaults: AppTable,
    /// By name (toml's tables keep their keys sorted).
    pub apps: Vec<(String, AppTable)>,
}

impl Loaded {
    /// The one app of `run app.wasm`, at every host and path.
    pub fn one_app(name: String, wasm: PathBuf) -> Self {
        let table = AppTable { wasm: Some(wasm), ..AppTable::default() };
        Self { apps: vec![(name, table)], ..Self::default() }
    }

    /// The file, for messages.
    pub fn display(&self) -> String {
        self.path.as_ref().map_or_else(|| "the command line".into(), |p| p.display().to_string())
    }
}

/// Reads and parses `path`.
///
/// # Errors
/// An unreadable file, TOML that does not parse, an unknown table or key, or
/// a value of the wrong type: each named with the file and the table.
pub fn load(path: &Path) -> Result<Loaded> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the config file {}", path.display()))?;
    let doc: toml::Table = toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let dir = path.parent().map_or_else(PathBuf::new, Path::to_path_buf);
    let file = path.display();
    let mut loaded = Loaded { path: Some(path.to_path_buf()), ..Loaded::default() };
    for (key, value) in doc {
        match key.as_str() {
            "server" => {
                let mut server: ServerTable =
                    value.try_into().map_err(|e| anyhow::anyhow!("{file}: [server]: {}", serde_message(&e)))?;
                server.cache_dir = server.cache_dir.map(|d| dir.join(d));
                server.apps_dir = server.apps_dir.map(|d| dir.join(d));
                server.uwsgi = server.uwsgi.map(|addrs| addrs.into_iter().map(|a| relative_unix(&a, &dir)).collect());
                loaded.server = server;
            }
            "defaults" => {
                let defaults: AppTable =
                    value.try_into().map_err(|e| anyhow::anyhow!("{file}: [defaults]: {}", serde_message(&e)))?;
                for key in ["wasm", "hosts", "prefix"] {
                    if defaults.has(key) {
                        bail!("{file}: [defaults] {key}: is an app's own; set it in each [apps.NAME]");
                    }
                }
                loaded.defaults = resolve(defaults, &dir);
            }
            "apps" => {
                let toml::Value::Table(apps) = value else {
                    bail!("{file}: apps: expected tables, as [apps.NAME]");
                };
                for (name, table) in apps {
                    if !valid_name(&name) {
                        bail!("{file}: [apps.{name:?}]: an app's name may hold only letters, digits, - and _");
                    }
                    let app: AppTable = table
                        .try_into()
                        .map_err(|e| anyhow::anyhow!("{file}: [apps.{name}]: {}", serde_message(&e)))?;
                    if app.wasm.is_none() {
                        bail!("{file}: [apps.{name}] wasm: missing; say which app.wasm it serves");
                    }
                    loaded.apps.push((name, resolve(app, &dir)));
                }
            }
            other => bail!("{file}: unknown table [{other}]; expected [server], [defaults] or [apps.NAME]"),
        }
    }
    Ok(loaded)
}

/// Whether `name` may name an app: letters, digits, `-` and `_`.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// One file of the apps directory: `NAME.toml`, an `[apps.NAME]` table's
/// keys at its top level.
pub struct AppFile {
    /// The file's stem.
    pub name: String,
    pub path: PathBuf,
    /// Its settings, paths taken relative to the directory; or why the
    /// file cannot be one app.
    pub table: Result<AppTable>,
}

/// Reads every `*.toml` file of the apps directory `dir`, sorted by name.
/// Hidden files (a dot first: editors' and atomic writers' temporaries)
/// and other names are skipped. A file that cannot be read or parsed is
/// listed with its error, so that it is refused alone.
///
/// # Errors
/// The directory itself cannot be read.
pub fn load_dir(dir: &Path) -> Result<Vec<AppFile>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading apps_dir {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| format!("reading apps_dir {}", dir.display()))?.path();
        let (Some(stem), Some("toml")) =
            (path.file_stem().and_then(|s| s.to_str()), path.extension().and_then(|e| e.to_str()))
        else {
            continue;
        };
        if stem.starts_with('.') {
            continue;
        }
        let name = stem.to_owned();
        let table = if valid_name(&name) {
            app_file(&path, dir)
        } else {
            Err(anyhow::anyhow!(
                "{}: an app's name (the file's stem) may hold only letters, digits, - and _",
                path.display()
            ))
        };
        files.push(AppFile { name, path, table });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// One app's file: its keys, checked like an `[apps.NAME]` table's.
fn app_file(path: &Path, dir: &Path) -> Result<AppTable> {
    let shown = path.display();
    // Read through a size cap: the directory is written by a control plane,
    // but a runaway file must not take the server's memory.
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(std::fs::File::open(path).with_context(|| format!("reading {shown}"))?, 1 << 20),
        &mut text,
    )
    .with_context(|| format!("reading {shown}"))?;
    if text.len() >= 1 << 20 {
        bail!("{shown}: larger than 1 MiB; an app's file holds one app's settings");
    }
    let app: AppTable = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{shown}: {}", serde_message(&e)))?;
    if app.wasm.is_none() {
        bail!("{shown}: wasm: missing; say which app.wasm it serves");
    }
    Ok(resolve(app, dir))
}

/// The message of a `toml` deserialization error, on one line.
fn serde_message(err: &toml::de::Error) -> String {
    err.message().trim().replace('\n', " ")
}

/// Paths of a table taken relative to the config file's directory.
fn resolve(mut table: AppTable, dir: &Path) -> AppTable {
    table.wasm = table.wasm.map(|w| dir.join(w));
    table.outbound_ca = table.outbound_ca.map(|ca| dir.join(ca));
    table.mounts = table.mounts.map(|mounts| {
        mounts
            .into_iter()
            .map(|m| match m.split_once(':') {
                Some((host, rest)) if Path::new(host).is_relative() => format!("{}:{rest}", dir.join(host).display()),
                _ => m,
            })
            .collect()
    });
    table
}

/// `unix:rel.sock` relative to `dir`; anything else as it is.
fn relative_unix(addr: &str, dir: &Path) -> String {
    match addr.strip_prefix("unix:") {
        Some(path) if Path::new(path).is_relative() => format!("unix:{}", dir.join(path).display()),
        _ => addr.to_owned(),
    }
}

/// A `[server]` table's settings, checked.
pub struct ServerSettings {
    pub http: Vec<SocketAddr>,
    pub uwsgi: UwsgiConfig,
    pub cache_dir: Option<PathBuf>,
    pub limits: ServerLimits,
    pub shutdown_timeout: std::time::Duration,
    pub metrics: Option<SocketAddr>,
}

/// The value of a setting every layer below the flags' defaults has.
fn must<T: Clone>(value: &Option<T>) -> T {
    value.clone().expect("the flags' defaults give every setting")
}

impl ServerTable {
    /// Checks the layered settings; `key` names a setting in messages.
    ///
    /// # Errors
    /// Names the setting that is out of range.
    pub fn into_server(self, key: &dyn Fn(&str) -> String) -> Result<ServerSettings> {
        let uwsgi_mode = must(&self.uwsgi_mode);
        let socket_mode = u32::from_str_radix(&uwsgi_mode, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .with_context(|| format!("{} {uwsgi_mode}: expected octal permissions such as 660", key("uwsgi_mode")))?;
        let buffer_size = must(&self.uwsgi_buffer_size);
        if !(1024..=65535).contains(&buffer_size) {
            bail!("{} {buffer_size}: must be between 1024 and 65535", key("uwsgi_buffer_size"));
        }
        let mut addrs: Vec<UwsgiAddr> = Vec::new();
        for spec in must(&self.uwsgi) {
            let addr: UwsgiAddr = spec.parse().map_err(|e| anyhow::anyhow!("{} {spec}: {e}", key("uwsgi")))?;
            if addrs.contains(&addr) {
                bail!("{} {addr} is given twice", key("uwsgi"));
            }
            addrs.push(addr);
        }
        let max_connections = must(&self.max_connections);
        if max_connections == 0 {
            bail!("{} 0: at least one connection must be allowed", key("max_connections"));
        }
        let max_header_bytes = must(&self.max_header_bytes);
        if max_header_bytes < 8192 {
            bail!("{} {max_header_bytes}: must be at least 8192", key("max_header_bytes"));
        }
        let max_headers = must(&self.max_headers);
        if max_headers == 0 {
            bail!("{} 0: a request needs at least a Host header", key("max_headers"));
        }
        for (name, value) in
            [("max_request_line", &self.max_request_line), ("max_header_field", &self.max_header_field)]
        {
            let value = must(value);
            if !(256..=max_header_bytes).contains(&value) {
                bail!("{} {value}: must be between 256 and max_header_bytes ({max_header_bytes})", key(name));
            }
        }
        Ok(ServerSettings {
            http: must(&self.http),
            uwsgi: UwsgiConfig { addrs, socket_mode, buffer_size },
            cache_dir: self.cache_dir,
            limits: ServerLimits {
                max_connections,
                header_timeout: seconds(&key("header_timeout"), must(&self.header_timeout))?,
                max_header_bytes,
                max_headers,
                max_request_line: must(&self.max_request_line),
                max_header_field: must(&self.max_header_field),
            },
            shutdown_timeout: seconds(&key("shutdown_timeout"), must(&self.shutdown_timeout))?,
            metrics: self.metrics,
        })
    }
}

impl AppTable {
    /// Checks one app's layered settings; `pool` is the default cap and
    /// `key` names a setting in messages.
    ///
    /// # Errors
    /// Names the setting that is out of range, or the missing file.
    pub fn into_app(self, name: &str, pool: usize, key: &dyn Fn(&str) -> String) -> Result<AppConfig> {
        let wasm = self.wasm.clone().expect("every app has a wasm: checked on load");
        if !wasm.is_file() {
            let what = if key("wasm").starts_with("--") { String::new() } else { format!("{}: ", key("wasm")) };
            // A FIFO or a device is never opened: reading one could block,
            // or never end.
            if wasm.exists() {
                bail!("{what}{} is not a regular file; an app is an app.wasm file", wasm.display());
            }
            bail!("{what}{}: no such file (make one with `wsgi-wasm build`)", wasm.display());
        }
        let memory = must(&self.memory);
        if !(16..=65_536).contains(&memory) {
            bail!("{} {memory}: must be between 16 and 65536 MiB", key("memory"));
        }
        if self.fuel == Some(0) {
            bail!("{} 0: a request needs some fuel; leave it out for no CPU budget", key("fuel"));
        }
        let max_instances = self.max_instances.unwrap_or(pool);
        if max_instances == 0 {
            bail!("{} 0: at least one sandbox must be allowed", key("max_instances"));
        }
        let max_open_files = must(&self.max_open_files);
        if !(16..=65_536).contains(&max_open_files) {
            bail!("{} {max_open_files}: must be between 16 and 65536", key("max_open_files"));
        }
        let mounts =
            must(&self.mounts).iter().map(|m| Mount::parse_in(m, &key("mounts"))).collect::<Result<Vec<_>>>()?;
        let mut env = Vec::new();
        for (k, v) in must(&self.env) {
            if k.is_empty() || k.contains(['\0', '=']) || v.contains('\0') {
                bail!("{} {k:?}: a variable's name may not be empty or hold = or NUL, nor its value NUL", key("env"));
            }
            env.push((k, v));
        }
        let outbound = must(&self.allow_outbound)
            .iter()
            .map(|g| crate::outbound::Grant::parse(g, &key("allow_outbound")))
            .collect::<Result<Vec<_>>>()?;
        let max_outbound_connections = must(&self.max_outbound_connections);
        if !(1..=4096).contains(&max_outbound_connections) {
            bail!("{} {max_outbound_connections}: must be between 1 and 4096", key("max_outbound_connections"));
        }
        // Read now only to refuse a bad bundle by name; each app's trust is
        // built when it is loaded.
        if let Some(ca) = &self.outbound_ca {
            crate::trust::read_bundle(ca).with_context(|| key("outbound_ca"))?;
        }
        let hosts = self.hosts.clone().unwrap_or_default();
        Ok(AppConfig {
            name: name.to_owned(),
            wasm,
            mount: crate::router::Mount { hosts, prefix: self.prefix.clone().unwrap_or_else(|| "/".into()) },
            limits: Limits {
                timeout: seconds(&key("timeout"), must(&self.timeout))?,
                memory_bytes: usize::try_from(memory << 20)?,
                fuel: self.fuel,
                max_instances,
                queue_timeout: seconds(&key("queue_timeout"), must(&self.queue_timeout))?,
                max_body_bytes: must(&self.max_body_bytes),
                max_response_bytes: must(&self.max_response_bytes),
                body_timeout: seconds(&key("body_timeout"), must(&self.body_timeout))?,
                max_open_files,
                max_log_bytes: must(&self.max_log_bytes),
                max_log_lines: must(&self.max_log_lines),
                max_outbound_connections,
            },
            mounts,
            env,
            outbound,
            outbound_ca: self.outbound_ca.clone(),
            source: None,
        })
    }
}
