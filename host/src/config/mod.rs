//! Validated, defaulted configuration, free of clap.
//!
//! `from_args` is the one place where flags and the config file meet (the
//! file's schema is in [`file`]): it layers them, applies defaults that
//! depend on the machine or on other settings, and rejects nonsense with a
//! message that names the flag, or the file, app and key, before any socket
//! is bound.

pub mod file;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cli::{BuildArgs, RunArgs};

/// The app a build wraps: `module:callable`, with an optional factory call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppTarget {
    /// Dotted module name, e.g. `pkg.web`.
    pub module: String,
    /// Dotted attribute path inside the module, optionally ending in `()`.
    pub callable: String,
}

impl AppTarget {
    /// Parses `module:callable` the way Gunicorn spells it.
    ///
    /// # Errors
    /// Fails, saying why, on anything that is not dotted identifiers around
    /// one colon.
    pub fn parse(s: &str) -> Result<Self> {
        let (module, callable) =
            s.split_once(':').with_context(|| format!("`{s}`: expected MODULE:CALLABLE, e.g. `myapp:app`"))?;
        let dotted = |part: &str| {
            !part.is_empty()
                && part.split('.').all(|id| {
                    let mut chars = id.chars();
                    chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
                        && chars.all(|c| c == '_' || c.is_alphanumeric())
                })
        };
        if !dotted(module) {
            bail!("`{s}`: `{module}` is not a Python module name");
        }
        if !dotted(callable.strip_suffix("()").unwrap_or(callable)) {
            bail!("`{s}`: `{callable}` is not a Python attribute name (or `name()` for a factory)");
        }
        Ok(Self { module: module.into(), callable: callable.into() })
    }

    /// The file that holds the module in `dir`, if any.
    pub fn find_in(&self, dir: &Path) -> Option<PathBuf> {
        let base = self.module.split('.').fold(dir.to_path_buf(), |p, part| p.join(part));
        [base.with_extension("py"), base.join("__init__.py")].into_iter().find(|p| p.is_file())
    }
}

impl std::fmt::Display for AppTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.module, self.callable)
    }
}

/// Everything `wsgi-wasm build` needs.
#[derive(Debug)]
pub struct BuildConfig {
    pub target: AppTarget,
    /// Absolute app directories, in `sys.path` order.
    pub paths: Vec<PathBuf>,
    pub requirements: Option<PathBuf>,
    /// Requests to run at build time, as `(METHOD, PATH[?QUERY])`; one that
    /// raises fails the build.
    pub warmup: Vec<(String, String)>,
    /// The automatic warm-up requests (see [`auto_warmup`]); one that raises
    /// is a warning. Empty with `--no-warmup`.
    pub auto_warmup: Vec<(String, String)>,
    pub output: PathBuf,
    pub cache_dir: PathBuf,
    pub python: PathBuf,
    /// The environment while the app is imported and warmed up (`--env`,
    /// `--env-file`), in the order given; nothing of the build machine's.
    pub env: Vec<(String, String)>,
}

impl BuildConfig {
    /// # Errors
    /// Fails on a malformed target, a missing directory or requirements file,
    /// or a module found in none of the paths.
    pub fn from_args(args: BuildArgs) -> Result<Self> {
        let target = AppTarget::parse(&args.app)?;
        let mut paths = Vec::new();
        for p in &args.paths {
            let abs = std::fs::canonicalize(p).with_context(|| format!("--path {}: no such directory", p.display()))?;
            if !abs.is_dir() {
                bail!("--path {}: not a directory", p.display());
            }
            paths.push(abs);
        }
        if !paths.iter().any(|p| target.find_in(p).is_some()) {
            let looked: Vec<_> = paths.iter().map(|p| p.display().to_string()).collect();
            bail!(
                "cannot find module `{}` (looked for {}.py or {}/__init__.py in {}); \
                 point --path at the directory that holds it",
                target.module,
                target.module.replace('.', "/"),
                target.module.replace('.', "/"),
                looked.join(", ")
            );
        }
        if let Some(r) = &args.requirements {
            if !r.is_file() {
                bail!("--requirements {}: no such file", r.display());
            }
        }
        let mut warmup = Vec::new();
        for spec in &args.warmup {
            let (method, target) = spec.split_once(' ').unwrap_or(("GET", spec));
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) || !target.starts_with('/') {
                bail!("--warmup {spec:?}: expected /path?query or METHOD /path?query");
            }
            warmup.push((method.to_owned(), target.to_owned()));
        }
        let mut env = match &args.env_file {
            Some(file) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("--env-file {}: cannot read it", file.display()))?;
                parse_env_file(&text).with_context(|| format!("--env-file {}", file.display()))?
            }
            None => Vec::new(),
        };
        for spec in &args.env {
            let (key, value) = env_pair(spec).with_context(|| format!("--env {spec:?}"))?;
            env.retain(|(k, _)| *k != key);
            env.push((key, value));
        }
        Ok(Self {
            env,
            target,
            paths,
            requirements: args.requirements,
            warmup,
            auto_warmup: if args.no_warmup { Vec::new() } else { auto_warmup(rand::random()) },
            output: args.output,
            cache_dir: cache_dir(args.cache.cache_dir)?,
            python: args.python,
        })
    }
}

/// `KEY=VALUE`, with a key an environment may hold.
///
/// # Errors
/// Says what is wrong with it.
pub fn env_pair(spec: &str) -> Result<(String, String)> {
    let (key, value) = spec.split_once('=').context("expected KEY=VALUE")?;
    if key.is_empty() || key.contains('\0') || value.contains('\0') {
        bail!("expected KEY=VALUE, with a key and no NUL byte");
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// The variables of an env file: `KEY=VALUE` lines, as Docker's
/// `--env-file` and dotenv write them; blank lines and `#` comments are
/// skipped, an `export ` prefix is dropped, and matching quotes around a
/// value are removed. A later line wins.
///
/// # Errors
/// Names the line that is not `KEY=VALUE`.
fn parse_env_file(text: &str) -> Result<Vec<(String, String)>> {
    let mut env: Vec<(String, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (key, value) = env_pair(line).with_context(|| format!("line {}", n + 1))?;
        let value = value.trim();
        let unquoted =
            ['"', '\''].iter().find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q))).unwrap_or(value);
        env.retain(|(k, _)| *k != key.trim());
        env.push((key.trim().to_owned(), unquoted.to_owned()));
    }
    Ok(env)
}

/// Where the automatic warm-up requests go: a prefix no app routes, and a
/// random name under it, so that the path is certain to 404.
pub const WARMUP_PREFIX: &str = "/.wsgi-wasm-warmup/";

/// The warm-up every build runs unless told not to: a GET and a HEAD of a
/// path that 404s, which run an app's routing, middleware and error
/// handling (and their lazy imports) with no side effect in any sane app.
pub fn auto_warmup(nonce: u64) -> Vec<(String, String)> {
    let target = format!("{WARMUP_PREFIX}{nonce:016x}");
    vec![("GET".into(), target.clone()), ("HEAD".into(), target)]
}

/// Per-request limits of one app, which its sandboxes enforce.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Wall-clock deadline for one request, sandbox start to last body byte.
    pub timeout: Duration,
    /// Cap on one instance's linear memory, in bytes.
    pub memory_bytes: usize,
    /// CPU budget of one request in wasmtime fuel units, if metered.
    pub fuel: Option<u64>,
    /// The app's sandboxes alive at once.
    pub max_instances: usize,
    /// How long a request may wait for a sandbox slot before a 503.
    pub queue_timeout: Duration,
    /// Largest request body accepted.
    pub max_body_bytes: u64,
    /// Largest response body sent; past it the response is cut.
    pub max_response_bytes: u64,
    /// Time the app may wait for the next piece of body.
    pub body_timeout: Duration,
    /// Most WASI handles (open files, directories, streams) one request holds
    /// at once; each open file or directory is one host descriptor.
    pub max_open_files: usize,
    /// Most bytes of guest output (stdout, stderr, `wsgi.errors`) one
    /// request may log.
    pub max_log_bytes: u64,
    /// Most lines of guest output one request may log.
    pub max_log_lines: u64,
    /// Most outbound connections one request may open.
    pub max_outbound_connections: usize,
}

/// Connection-level limits, the same for every app: they apply before a
/// request is routed.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerLimits {
    /// Open client connections at once.
    pub max_connections: usize,
    /// Time for a request's headers (and for the next request on a kept-alive connection).
    pub header_timeout: Duration,
    /// Most header bytes in one HTTP request.
    pub max_header_bytes: usize,
    /// Most header fields in one HTTP request.
    pub max_headers: usize,
    /// Longest request line (HTTP) or `REQUEST_URI` (uwsgi), in bytes.
    pub max_request_line: usize,
    /// Longest single header field (`name: value`, or an `HTTP_*` var).
    pub max_header_field: usize,
}

/// A host directory granted to every sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host: PathBuf,
    /// Absolute guest path, without a trailing slash.
    pub guest: String,
    pub writable: bool,
}

impl Mount {
    /// Parses `HOST_DIR:GUEST_DIR[:rw|:ro]`.
    ///
    /// # Errors
    /// Says what is wrong with the spec or the directory.
    pub fn parse(spec: &str) -> Result<Self> {
        Self::parse_in(spec, "--mount")
    }

    /// Parses a mount named `key` in messages (a config file's relative
    /// host directories are resolved when the file is loaded).
    ///
    /// # Errors
    /// Says what is wrong with the spec or the directory.
    pub fn parse_in(spec: &str, key: &str) -> Result<Self> {
        let parts: Vec<&str> = spec.split(':').collect();
        let (host, guest, writable) = match parts.as_slice() {
            [h, g] => (*h, *g, false),
            [h, g, "ro"] => (*h, *g, false),
            [h, g, "rw"] => (*h, *g, true),
            _ => bail!("{key} {spec}: expected HOST_DIR:GUEST_DIR, optionally with :rw or :ro"),
        };
        let host = std::fs::canonicalize(host).with_context(|| format!("{key} {spec}: no such directory {host}"))?;
        if !host.is_dir() {
            bail!("{key} {spec}: {} is not a directory", host.display());
        }
        let guest = guest.trim_end_matches('/');
        if !guest.starts_with('/') || guest.split('/').any(|c| c == ".." || c == ".") {
            bail!("{key} {spec}: the guest path must be absolute, without . or .. (e.g. /data)");
        }
        Ok(Self { host, guest: guest.to_owned(), writable })
    }
}

/// What a uwsgi listener listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UwsgiAddr {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

impl std::str::FromStr for UwsgiAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a socket path, e.g. unix:/run/app.sock".into());
            }
            return Ok(Self::Unix(path.into()));
        }
        s.parse()
            .map(Self::Tcp)
            .map_err(|_| format!("`{s}`: expected HOST:PORT (e.g. 127.0.0.1:3031) or unix:/path/to.sock"))
    }
}

impl std::fmt::Display for UwsgiAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The uwsgi listeners and their settings.
#[derive(Debug, Clone, PartialEq)]
pub struct UwsgiConfig {
    pub addrs: Vec<UwsgiAddr>,
    /// Mode of Unix socket files.
    pub socket_mode: u32,
    /// Largest vars block accepted.
    pub buffer_size: usize,
}

/// One app the server hosts.
#[derive(Debug, Clone, PartialEq)]
pub struct AppConfig {
    /// Its name in logs and metrics: the config's `[apps.NAME]`, or for
    /// `run app.wasm` the file's stem.
    pub name: String,
    pub wasm: PathBuf,
    /// Where requests for it come in.
    pub mount: crate::router::Mount,
    pub limits: Limits,
    /// Host directories its sandboxes see.
    pub mounts: Vec<Mount>,
    /// Environment variables its sandboxes see.
    pub env: Vec<(String, String)>,
    /// Outbound TCP connections its sandboxes may open.
    pub outbound: Vec<crate::outbound::Grant>,
    /// A PEM bundle of CA certificates its TLS sessions trust besides the
    /// system's (`--outbound-ca`, `outbound_ca`).
    pub outbound_ca: Option<PathBuf>,
    /// The apps directory's file it comes from; `None` for the main config
    /// (or the command line).
    pub source: Option<PathBuf>,
}

/// An app whose settings are wrong, and why.
#[derive(Debug)]
pub struct Broken {
    pub name: String,
    /// The apps directory's file it comes from, as [`AppConfig::source`].
    pub source: Option<PathBuf>,
    pub error: anyhow::Error,
}

/// Everything `wsgi-wasm run` needs.
#[derive(Debug)]
pub struct RunConfig {
    /// The config file, with `--config`.
    pub file: Option<PathBuf>,
    /// The `--http` addresses as given (see `server::bind` for the default).
    pub http: Vec<SocketAddr>,
    pub uwsgi: UwsgiConfig,
    pub cache_dir: PathBuf,
    pub server: ServerLimits,
    /// Sandbox slots all apps share (`[server] max_instances`).
    pub pool: usize,
    /// The linear memory all sandboxes may hold at once, in bytes
    /// (`--memory-budget`, `[server] memory_budget`).
    pub memory_budget: u64,
    /// The main config's apps, then the apps directory's by name.
    pub apps: Vec<AppConfig>,
    /// The apps whose settings are wrong (a missing `wasm`, a bad value, a
    /// file of the apps directory that does not parse or takes a name the
    /// main config has), each with why. At startup one of the main
    /// config's stops the server ([`RunConfig::require_all`]), and one of
    /// the directory's is refused alone; on a reload each keeps its last
    /// good version while the others apply.
    pub broken: Vec<Broken>,
    /// The apps directory (`[server] apps_dir`, `--apps-dir`), watched for
    /// files added, changed and removed.
    pub apps_dir: Option<PathBuf>,
    /// What each pool slot holds, fixed at startup: the largest `memory` of
    /// the apps and of the defaults (what an app added later gets unless
    /// its file says otherwise).
    pub slot_memory_bytes: usize,
    pub shutdown_timeout: Duration,
    /// Report per-request timing (`--timing`).
    pub timing: bool,
    /// Write a perf map of the compiled guest code (`--perf-map`).
    pub perf_map: bool,
    /// Where to serve `/metrics`, if anywhere.
    pub metrics: Option<SocketAddr>,
}

impl RunConfig {
    /// The configuration of `run`: one app from its arguments, or the apps
    /// of `--config`'s file with the flags in `given` (flag ids given on the
    /// command line or by their environment variable) over it.
    ///
    /// # Errors
    /// Fails on out-of-range limits or a missing app file, naming the flag,
    /// or the file, app and key.
    pub fn from_args(args: &RunArgs, given: &HashSet<String>) -> Result<Self> {
        let defaults = file::Settings::from_args(args)?;
        let flags = defaults.only(given);
        let loaded = match &args.config {
            Some(path) => file::load(path)?,
            None => match args.app.clone() {
                Some(app) => {
                    let name = app.file_stem().map_or_else(|| "app".into(), |s| s.to_string_lossy().into_owned());
                    file::Loaded::one_app(name, app)
                }
                None if args.apps_dir.is_some() => file::Loaded::default(),
                None => bail!("give an app.wasm, --config FILE or --apps-dir DIR"),
            },
        };
        let name_of = |origin: file::Origin<'_>, key: &str| match origin {
            _ if given.contains(key) || loaded.path.is_none() => file::flag(key),
            file::Origin::Server => format!("{}: [server] {key}", loaded.display()),
            file::Origin::App(app) => format!("{}: [apps.{app}] {key}", loaded.display()),
            file::Origin::Defaults => format!("{}: [defaults] {key}", loaded.display()),
            file::Origin::AppFile(path) => format!("{}: {key}", path.display()),
        };
        let server = defaults.server.over(&loaded.server).over(&flags.server);
        let key = |k: &str| {
            let origin = if loaded.server.has(k) { file::Origin::Server } else { file::Origin::Defaults };
            name_of(origin, k)
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pool = match server.max_instances {
            Some(0) => bail!("{} 0: at least one sandbox must be allowed", key("max_instances")),
            Some(n) => n,
            None => 32 * cores,
        };
        let mut apps = Vec::new();
        let mut broken = Vec::new();
        // One app's table, layered and checked.
        let app = |name: &str, table: &file::AppTable, origin: file::Origin<'_>, source: Option<&Path>| {
            let merged = defaults.app.over(&loaded.defaults).over(table).over(&flags.app);
            let key = |k: &str| {
                let from_defaults = !table.has(k) && loaded.defaults.has(k);
                name_of(if from_defaults { file::Origin::Defaults } else { origin }, k)
            };
            let source = source.map(Path::to_path_buf);
            match merged.into_app(name, pool, &key) {
                Ok(app) => Ok(AppConfig { source, ..app }),
                Err(error) => Err(Broken { name: name.to_owned(), source, error }),
            }
        };
        for (name, table) in &loaded.apps {
            match app(name, table, file::Origin::App(name), None) {
                Ok(app) => apps.push(app),
                Err(refused) => broken.push(refused),
            }
        }
        if let Some(dir) = &server.apps_dir {
            for app_file in file::load_dir(dir)? {
                let (path, name) = (app_file.path.as_path(), app_file.name.as_str());
                let checked = match &app_file.table {
                    _ if loaded.apps.iter().any(|(main, _)| main == name) => Err(Broken {
                        name: name.to_owned(),
                        source: Some(path.to_path_buf()),
                        error: anyhow::anyhow!(
                            "{}: {} already names [apps.{name}]; rename the file",
                            path.display(),
                            loaded.display()
                        ),
                    }),
                    Ok(table) => app(name, table, file::Origin::AppFile(path), Some(path)),
                    Err(err) => Err(Broken {
                        name: name.to_owned(),
                        source: Some(path.to_path_buf()),
                        error: anyhow::anyhow!("{err:#}"),
                    }),
                };
                match checked {
                    Ok(app) => apps.push(app),
                    Err(refused) => broken.push(refused),
                }
            }
        } else if apps.is_empty() && broken.is_empty() {
            bail!("{}: no [apps.NAME] table: name at least one app", loaded.display());
        }
        // One app alone: the pool is its own cap.
        let pool = match apps.first() {
            Some(app) if loaded.path.is_none() && server.apps_dir.is_none() => app.limits.max_instances,
            _ => pool,
        };
        let memory_budget = match server.memory_budget {
            Some(mib) if mib < 16 => bail!("{} {mib}: must be at least 16 MiB", key("memory_budget")),
            Some(mib) => mib << 20,
            None => default_memory_budget(),
        };
        let apps_dir = server.apps_dir.clone();
        let default_memory = defaults.app.over(&loaded.defaults).over(&flags.app).memory.unwrap_or(0);
        let slot_memory_bytes = apps
            .iter()
            .map(|a| a.limits.memory_bytes)
            .chain(apps_dir.as_ref().and_then(|_| usize::try_from(default_memory.min(65_536) << 20).ok()))
            .max()
            .unwrap_or(0);
        let server_cfg = server.into_server(&key)?;
        Ok(Self {
            memory_budget,
            file: loaded.path.clone(),
            http: server_cfg.http,
            uwsgi: server_cfg.uwsgi,
            cache_dir: cache_dir(server_cfg.cache_dir)?,
            server: server_cfg.limits,
            pool,
            apps,
            broken,
            apps_dir,
            slot_memory_bytes,
            shutdown_timeout: server_cfg.shutdown_timeout,
            timing: args.timing,
            perf_map: args.perf_map,
            metrics: server_cfg.metrics,
        })
    }
}

impl RunConfig {
    /// The main config's apps' settings are right, as a server needs at
    /// startup; the apps directory's broken files stay in `broken`, to be
    /// refused alone.
    ///
    /// # Errors
    /// The first of the main config's apps whose settings are wrong, and why.
    pub fn require_all(&mut self) -> Result<()> {
        match self.broken.iter().position(|b| b.source.is_none()) {
            Some(at) => Err(self.broken.remove(at).error),
            None => Ok(()),
        }
    }

    /// Every app's settings are right, the apps directory's included, as
    /// `check` needs.
    ///
    /// # Errors
    /// The first app whose settings are wrong, and why.
    pub fn require_every(&mut self) -> Result<()> {
        match self.broken.drain(..).next() {
            Some(broken) => Err(broken.error),
            None => Ok(()),
        }
    }
}

/// Half of the memory this process may use: the machine's, or its
/// cgroup's limit if that is lower. So the default budget never exceeds
/// what the machine has, however many slots and however much `memory`.
pub fn default_memory_budget() -> u64 {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kib| kib << 10);
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|max| max.trim().parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    match machine.min(cgroup) {
        // Neither could be read: a budget of a few GiB rather than none.
        u64::MAX => 4 << 30,
        memory => memory / 2,
    }
}

/// A number of seconds, checked: above 0 and at most a day.
fn seconds(key: &str, v: f64) -> Result<Duration> {
    if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
        bail!("{key} {v}: must be a number of seconds above 0 and at most 86400");
    }
    Ok(Duration::from_secs_f64(v))
}

/// The cache directory, absolute: the build hands it to the guest
/// toolchain, which runs in another working directory.
fn cache_dir(flag: Option<PathBuf>) -> Result<PathBuf> {
    let dir = match flag {
        Some(dir) => dir,
        None => default_cache_dir()?,
    };
    std::path::absolute(&dir).with_context(|| format!("--cache-dir {}", dir.display()))
}

fn default_cache_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").context("no HOME or XDG_CACHE_HOME: pass --cache-dir")?)
            .join(".cache"),
    };
    Ok(base.join("wsgi-wasm"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Connection limits like `run`'s defaults.
    pub(crate) fn server_limits() -> ServerLimits {
        ServerLimits {
            max_connections: 1,
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 65536,
            max_headers: 100,
            max_request_line: 8192,
            max_header_field: 8192,
        }
    }

    #[test]
    fn mounts_are_read_only_unless_asked() {
        let tmp = std::env::temp_dir();
        let m = Mount::parse(&format!("{}:/data/", tmp.display())).unwrap();
        assert_eq!((m.guest.as_str(), m.writable), ("/data", false));
        assert!(Mount::parse(&format!("{}:/data:rw", tmp.display())).unwrap().writable);
        for bad in [
            "/nonexistent-dir:/x",
            "relative",
            &format!("{}:data", tmp.display()),
            &format!("{}:/a/../b", tmp.display()),
            &format!("{}:/x:wx", tmp.display()),
        ] {
            assert!(Mount::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_files_read_like_docker_and_dotenv() {
        let env =
            parse_env_file("# settings\nDEBUG=0\n\nexport NAME=\"my site\"\nEMPTY=\nURL='a=b'\nDEBUG=1\n").unwrap();
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(pairs, [("NAME", "my site"), ("EMPTY", ""), ("URL", "a=b"), ("DEBUG", "1")]);
        let err = parse_env_file("OK=1\nnot a pair\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
        assert!(env_pair("=x").is_err() && env_pair("X").is_err());
    }

    #[test]
    fn targets_parse_like_gunicorn() {
        let t = AppTarget::parse("pkg.web:make_app()").unwrap();
        assert_eq!((t.module.as_str(), t.callable.as_str()), ("pkg.web", "make_app()"));
        assert_eq!(AppTarget::parse("app:api.wsgi").unwrap().callable, "api.wsgi");
        for bad in ["app", "app:", ":app", "my-app:app", "app:1x", "app:a()()", "a..b:app"] {
            assert!(AppTarget::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
