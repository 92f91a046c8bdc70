//! Validated, defaulted configuration, free of clap.
//!
//! `from_args` is the one place where flags meet: it applies defaults that
//! depend on the machine or on other flags and rejects nonsense with a message
//! that says what to fix, before any file is read or socket bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cli::{BuildArgs, RunArgs};
use crate::protocol::uwsgi::UwsgiAddr;

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
        Ok(Self {
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

/// Per-request limits that the sandbox and the listeners enforce.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock deadline for one request, sandbox start to last body byte.
    pub timeout: Duration,
    /// Cap on one instance's linear memory, in bytes.
    pub memory_bytes: usize,
    /// CPU budget of one request in wasmtime fuel units, if metered.
    pub fuel: Option<u64>,
    /// Sandboxes alive at once.
    pub max_instances: usize,
    /// How long a request may wait for a sandbox slot before a 503.
    pub queue_timeout: Duration,
    /// Open client connections at once.
    pub max_connections: usize,
    /// Largest request body accepted.
    pub max_body_bytes: u64,
    /// Largest response body sent; past it the response is cut.
    pub max_response_bytes: u64,
    /// Time for a request's headers (and for the next request on a kept-alive connection).
    pub header_timeout: Duration,
    /// Time the app may wait for the next piece of body.
    pub body_timeout: Duration,
    /// Most header bytes in one HTTP request.
    pub max_header_bytes: usize,
    /// Most header fields in one HTTP request.
    pub max_headers: usize,
    /// Longest request line (HTTP) or `REQUEST_URI` (uwsgi), in bytes.
    pub max_request_line: usize,
    /// Longest single header field (`name: value`, or an `HTTP_*` var).
    pub max_header_field: usize,
    /// Most WASI handles (open files, directories, streams) one request holds
    /// at once; each open file or directory is one host descriptor.
    pub max_open_files: usize,
    /// Most bytes of guest output (stdout, stderr, `wsgi.errors`) one
    /// request may log.
    pub max_log_bytes: u64,
    /// Most lines of guest output one request may log.
    pub max_log_lines: u64,
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
        let parts: Vec<&str> = spec.split(':').collect();
        let (host, guest, writable) = match parts.as_slice() {
            [h, g] => (*h, *g, false),
            [h, g, "ro"] => (*h, *g, false),
            [h, g, "rw"] => (*h, *g, true),
            _ => bail!("--mount {spec}: expected HOST_DIR:GUEST_DIR, optionally with :rw or :ro"),
        };
        let host = std::fs::canonicalize(host).with_context(|| format!("--mount {spec}: no such directory {host}"))?;
        if !host.is_dir() {
            bail!("--mount {spec}: {} is not a directory", host.display());
        }
        let guest = guest.trim_end_matches('/');
        if !guest.starts_with('/') || guest.split('/').any(|c| c == ".." || c == ".") {
            bail!("--mount {spec}: the guest path must be absolute, without . or .. (e.g. /data)");
        }
        Ok(Self { host, guest: guest.to_owned(), writable })
    }
}

/// The uwsgi listeners and their settings.
#[derive(Debug, Clone)]
pub struct UwsgiConfig {
    pub addrs: Vec<UwsgiAddr>,
    /// Mode of Unix socket files.
    pub socket_mode: u32,
    /// Largest vars block accepted.
    pub buffer_size: usize,
}

/// Everything `wsgi-wasm run` needs.
#[derive(Debug)]
pub struct RunConfig {
    pub app: PathBuf,
    /// The `--http` addresses as given (see `server::bind` for the default).
    pub http: Vec<SocketAddr>,
    pub uwsgi: UwsgiConfig,
    pub cache_dir: PathBuf,
    pub limits: Limits,
    /// Host directories every sandbox sees.
    pub mounts: Vec<Mount>,
    /// Environment variables every sandbox sees.
    pub env: Vec<(String, String)>,
    pub shutdown_timeout: Duration,
    /// Report per-request timing (`--timing`).
    pub timing: bool,
    /// Where to serve `/metrics`, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// The app's name in logs and metrics: the file's stem.
    pub app_name: String,
}

impl RunConfig {
    /// # Errors
    /// Fails on out-of-range limits or a missing app file.
    pub fn from_args(args: RunArgs) -> Result<Self> {
        if !args.app.is_file() {
            bail!("{}: no such file (make one with `wsgi-wasm build`)", args.app.display());
        }
        let seconds = |flag: &str, v: f64| -> Result<Duration> {
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                bail!("{flag} {v}: must be a number of seconds above 0 and at most 86400");
            }
            Ok(Duration::from_secs_f64(v))
        };
        if !(16..=65_536).contains(&args.memory) {
            bail!("--memory {}: must be between 16 and 65536 MiB", args.memory);
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let max_instances = args.max_instances.unwrap_or(32 * cores);
        if args.fuel == Some(0) {
            bail!("--fuel 0: a request needs some fuel; leave --fuel out for no CPU budget");
        }
        if max_instances == 0 {
            bail!("--max-instances 0: at least one sandbox must be allowed");
        }
        if args.max_connections == 0 {
            bail!("--max-connections 0: at least one connection must be allowed");
        }
        let socket_mode = u32::from_str_radix(&args.uwsgi_mode, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .with_context(|| format!("--uwsgi-mode {}: expected octal permissions such as 660", args.uwsgi_mode))?;
        if !(1024..=65535).contains(&args.uwsgi_buffer_size) {
            bail!("--uwsgi-buffer-size {}: must be between 1024 and 65535", args.uwsgi_buffer_size);
        }
        let mut seen = std::collections::HashSet::new();
        for addr in &args.uwsgi {
            if !seen.insert(addr.to_string()) {
                bail!("--uwsgi {addr} is given twice");
            }
        }
        let mounts = args.mounts.iter().map(|m| Mount::parse(m)).collect::<Result<Vec<_>>>()?;
        let mut env = Vec::new();
        for pair in &args.env {
            match pair.split_once('=') {
                Some((k, v)) if !k.is_empty() && !k.contains('\0') && !v.contains('\0') => {
                    env.push((k.to_owned(), v.to_owned()))
                }
                _ => bail!("--env {pair}: expected KEY=VALUE"),
            }
        }
        if args.max_header_bytes < 8192 {
            bail!("--max-header-bytes {}: must be at least 8192", args.max_header_bytes);
        }
        if args.max_headers == 0 {
            bail!("--max-headers 0: a request needs at least a Host header");
        }
        for (flag, value) in
            [("--max-request-line", args.max_request_line), ("--max-header-field", args.max_header_field)]
        {
            if !(256..=args.max_header_bytes).contains(&value) {
                bail!("{flag} {value}: must be between 256 and --max-header-bytes ({})", args.max_header_bytes);
            }
        }
        if !(16..=65_536).contains(&args.max_open_files) {
            bail!("--max-open-files {}: must be between 16 and 65536", args.max_open_files);
        }
        Ok(Self {
            app: args.app.clone(),
            http: args.http,
            uwsgi: UwsgiConfig { addrs: args.uwsgi, socket_mode, buffer_size: args.uwsgi_buffer_size },
            cache_dir: cache_dir(args.cache.cache_dir)?,
            limits: Limits {
                timeout: seconds("--timeout", args.timeout)?,
                memory_bytes: usize::try_from(args.memory << 20)?,
                fuel: args.fuel,
                max_instances,
                queue_timeout: seconds("--queue-timeout", args.queue_timeout)?,
                max_connections: args.max_connections,
                max_body_bytes: args.max_body_bytes,
                max_response_bytes: args.max_response_bytes,
                header_timeout: seconds("--header-timeout", args.header_timeout)?,
                body_timeout: seconds("--body-timeout", args.body_timeout)?,
                max_header_bytes: args.max_header_bytes,
                max_headers: args.max_headers,
                max_request_line: args.max_request_line,
                max_header_field: args.max_header_field,
                max_open_files: args.max_open_files,
                max_log_bytes: args.max_log_bytes,
                max_log_lines: args.max_log_lines,
            },
            mounts,
            env,
            shutdown_timeout: seconds("--shutdown-timeout", args.shutdown_timeout)?,
            timing: args.timing,
            metrics: args.metrics,
            app_name: args.app.file_stem().map_or_else(|| "app".into(), |s| s.to_string_lossy().into_owned()),
        })
    }
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

    /// Limits like `run`'s defaults, for unit tests elsewhere.
    pub(crate) fn limits() -> Limits {
        Limits {
            timeout: Duration::from_secs(30),
            memory_bytes: 256 << 20,
            fuel: None,
            max_instances: 1,
            queue_timeout: Duration::from_secs(5),
            max_connections: 1,
            max_body_bytes: 1 << 30,
            max_response_bytes: 1 << 30,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_header_bytes: 65536,
            max_headers: 100,
            max_request_line: 8192,
            max_header_field: 8192,
            max_open_files: 256,
            max_log_bytes: 1 << 20,
            max_log_lines: 1000,
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
    fn targets_parse_like_gunicorn() {
        let t = AppTarget::parse("pkg.web:make_app()").unwrap();
        assert_eq!((t.module.as_str(), t.callable.as_str()), ("pkg.web", "make_app()"));
        assert_eq!(AppTarget::parse("app:api.wsgi").unwrap().callable, "api.wsgi");
        for bad in ["app", "app:", ":app", "my-app:app", "app:1x", "app:a()()", "a..b:app"] {
            assert!(AppTarget::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
