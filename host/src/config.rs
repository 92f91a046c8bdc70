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
        let (module, callable) = s
            .split_once(':')
            .with_context(|| format!("`{s}`: expected MODULE:CALLABLE, e.g. `myapp:app`"))?;
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
        [base.with_extension("py"), base.join("__init__.py")]
            .into_iter()
            .find(|p| p.is_file())
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
            let abs = std::fs::canonicalize(p)
                .with_context(|| format!("--path {}: no such directory", p.display()))?;
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
        Ok(Self {
            target,
            paths,
            requirements: args.requirements,
            output: args.output,
            cache_dir: cache_dir(args.cache_dir)?,
            python: args.python,
        })
    }
}

/// Per-request limits that the sandbox and the listeners enforce.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock deadline for one request, sandbox start to last body byte.
    pub timeout: Duration,
    /// Cap on one instance's linear memory, in bytes.
    pub memory_bytes: usize,
    /// Sandboxes alive at once.
    pub max_instances: usize,
    /// How long a request may wait for a sandbox slot before a 503.
    pub queue_timeout: Duration,
    /// Open client connections at once.
    pub max_connections: usize,
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
    pub http: Vec<SocketAddr>,
    pub uwsgi: UwsgiConfig,
    pub cache_dir: PathBuf,
    pub limits: Limits,
    pub shutdown_timeout: Duration,
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
        let http = if args.http.is_empty() && args.uwsgi.is_empty() {
            vec![SocketAddr::from(([127, 0, 0, 1], 8000))]
        } else {
            args.http
        };
        Ok(Self {
            app: args.app,
            http,
            uwsgi: UwsgiConfig { addrs: args.uwsgi, socket_mode, buffer_size: args.uwsgi_buffer_size },
            cache_dir: cache_dir(args.cache_dir)?,
            limits: Limits {
                timeout: seconds("--timeout", args.timeout)?,
                memory_bytes: usize::try_from(args.memory << 20)?,
                max_instances,
                queue_timeout: seconds("--queue-timeout", args.queue_timeout)?,
                max_connections: args.max_connections,
            },
            shutdown_timeout: seconds("--shutdown-timeout", args.shutdown_timeout)?,
        })
    }
}

fn cache_dir(flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = flag {
        return Ok(dir);
    }
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(
            std::env::var_os("HOME").context("no HOME or XDG_CACHE_HOME: pass --cache-dir")?,
        )
        .join(".cache"),
    };
    Ok(base.join("wsgi-wasm"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
