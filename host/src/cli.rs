//! Command-line arguments, as clap parses them. No logic lives here: every
//! default that depends on another flag, and every check, is in `config`,
//! which reads these records (this module imports nothing of the crate).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Run WSGI apps in a fresh WebAssembly sandbox per request.
#[derive(Debug, Parser)]
#[command(name = "wsgi-wasm", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once per process: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Turn a WSGI app and its pure-Python dependencies into one app.wasm.
    Build(BuildArgs),
    /// Serve an app.wasm, with a fresh sandbox for every request.
    Run(RunArgs),
    /// Check an app.wasm (or --config FILE and all its apps) as `run` does
    /// before it serves, without serving: its settings, the bundle's limits,
    /// its imports, compiling it (into the cache, as `run` would) and one
    /// instantiation. Takes `run`'s flags. Exits non-zero with the message
    /// `run` would give.
    Check(RunArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The WSGI app, as MODULE:CALLABLE (e.g. `myapp:app`). A trailing `()`
    /// calls an app factory once at build time (e.g. `myapp:create_app()`).
    pub app: String,

    /// Directory that holds the app's module; repeat for more. The first one
    /// wins when two hold the same module, as on `sys.path`.
    #[arg(long = "path", short = 'p', value_name = "DIR", default_value = ".")]
    pub paths: Vec<PathBuf>,

    /// A pip requirements file: these packages are installed for the guest
    /// (not the host) and bundled. They must be pure Python, or fall back to
    /// pure Python when their native code is missing.
    #[arg(long, short = 'r', value_name = "FILE")]
    pub requirements: Option<PathBuf>,

    /// Call the app with this request at build time, before the snapshot,
    /// so that its first-request work (lazy imports, route tables, template
    /// compilation) is done once instead of in every sandbox. `PATH[?QUERY]`
    /// for a GET, or `METHOD PATH[?QUERY]`; repeat for more. Each runs 4
    /// times, so CPython's bytecode specialization settles too. The app runs
    /// these for real: use paths without side effects. A warm-up request that
    /// raises fails the build. These add to the automatic warm-up (a GET and
    /// a HEAD of a path that 404s; Django's URL resolver, translations,
    /// formats and context processors; and every Django or Jinja template,
    /// compiled), which runs unless --no-warmup is given.
    #[arg(long, value_name = "REQUEST", conflicts_with = "no_warmup")]
    pub warmup: Vec<String>,

    /// Run no warm-up at all, not even the automatic one: every sandbox then
    /// does the app's first-request work itself.
    #[arg(long)]
    pub no_warmup: bool,

    /// An environment variable for the app while it is imported and warmed
    /// up (settings modules read os.environ then: DEBUG, ALLOWED_HOSTS,
    /// DATABASE_URL); repeat for more. What the app keeps of it is baked
    /// into app.wasm, readable by anyone who has the file: give secrets at
    /// run time instead (`run --env`), read per request. The build prints
    /// the names (never the values) of the variables the app read.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// A file of KEY=VALUE lines (blank lines and # comments ignored; an
    /// `export ` prefix and quotes around a value allowed), for the build
    /// like --env; an --env of the same key wins.
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,

    /// Where to write the component.
    #[arg(long, short = 'o', value_name = "FILE", default_value = "app.wasm")]
    pub output: PathBuf,

    #[command(flatten)]
    pub cache: CacheArgs,

    /// The Python used to provision the toolchain and run pip (3.9 or newer).
    #[arg(long, value_name = "PROGRAM", env = "WSGI_WASM_PYTHON", default_value = "python3")]
    pub python: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The component made by `wsgi-wasm build`: one app, at every host and
    /// path. Or give --config, or --apps-dir.
    #[arg(required_unless_present_any = ["config", "apps_dir"], conflicts_with_all = ["config", "apps_dir"])]
    pub app: Option<PathBuf>,

    /// Host the apps of this TOML file (`[server]`, `[defaults]`,
    /// `[apps.NAME]`; see the README's "Hosting many apps"). A flag given
    /// as well overrides the file's setting, for every app.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Serve one app per DIR/NAME.toml file (an `[apps.NAME]` table's keys,
    /// paths relative to DIR), as uWSGI's Emperor does: a file added starts
    /// serving its app, a file changed reloads it, a file removed retires
    /// it, with no SIGHUP; a bad file is refused alone. With --config, or
    /// `[server] apps_dir` in it, its apps are served beside the file's.
    #[arg(long, value_name = "DIR")]
    pub apps_dir: Option<PathBuf>,

    /// Serve HTTP/1.1 on this address; repeat for more. Default, when no
    /// --uwsgi is given either: 127.0.0.1:8000.
    #[arg(long = "http", value_name = "ADDR")]
    pub http: Vec<SocketAddr>,

    /// Serve the uwsgi protocol (for nginx's `uwsgi_pass`) on HOST:PORT or
    /// on a Unix socket, `unix:/path/to.sock`; repeat for more. Without
    /// --http, no HTTP listener is started.
    #[arg(long = "uwsgi", value_name = "ADDR")]
    pub uwsgi: Vec<String>,

    /// Permissions of uwsgi Unix socket files, in octal. The web server's
    /// user must be able to write to the socket.
    #[arg(long, value_name = "OCTAL", default_value = "660")]
    pub uwsgi_mode: String,

    /// Largest uwsgi vars block accepted, in bytes (request line, CGI vars and
    /// all headers together; 65535 is the protocol's maximum). A larger
    /// packet is refused and its connection closed.
    #[arg(long, value_name = "BYTES", default_value_t = 65535)]
    pub uwsgi_buffer_size: usize,

    /// Wall-clock limit for one request, in seconds, from the start of its
    /// sandbox to the end of its response body. A request over it gets a 504
    /// (or, once its headers went out, a cut connection).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, env = "WSGI_WASM_TIMEOUT")]
    pub timeout: f64,

    /// Limit on each sandbox's linear memory, in MiB. A request whose app
    /// allocates past it fails alone with a 500.
    #[arg(long, value_name = "MIB", default_value_t = 256, env = "WSGI_WASM_MEMORY")]
    pub memory: u64,

    /// Largest request body, in bytes. A larger Content-Length is refused
    /// with a 413 before the body is read; a chunked body that grows past it
    /// fails its request with a 413.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
    pub max_body_bytes: u64,

    /// Largest response body, in bytes. A response that grows past it is cut
    /// off (the connection is reset) and the cut is logged.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
    pub max_response_bytes: u64,

    /// Seconds a client may take to send a request's headers, and to send
    /// the next request on a kept-alive connection (slowloris).
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub header_timeout: f64,

    /// Seconds the app may wait for the next piece of a request body before
    /// the request fails with a 408 (slow POST).
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub body_timeout: f64,

    /// Most header bytes in one HTTP request (request line included); past
    /// it: 431.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,

    /// Longest request line (method, target and version; for uwsgi, the
    /// REQUEST_URI), in bytes; past it: 414. nginx's
    /// large_client_header_buffers are 8 KiB.
    #[arg(long, value_name = "BYTES", default_value_t = 8192)]
    pub max_request_line: usize,

    /// Longest single header field (name, colon, space and value; for
    /// uwsgi, one HTTP_* var), in bytes; past it: 431.
    #[arg(long, value_name = "BYTES", default_value_t = 8192)]
    pub max_header_field: usize,

    /// Most header fields in one HTTP request; past it: 431.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_headers: usize,

    /// Most open files, directories and other WASI handles one request may
    /// hold at once. Each open file or directory holds one host descriptor,
    /// so --max-instances times this, plus --max-connections, must fit in
    /// the process's descriptor limit: checked at startup, which raises the
    /// soft limit as far as the hard one allows. A request past it fails
    /// with a 500.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_open_files: usize,

    /// Most bytes one request may write to the log (stdout, stderr and
    /// wsgi.errors together). Each line is also cut at 16 KiB. Past the
    /// budget the output is dropped, and one line at the end of the request
    /// says how much.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub max_log_bytes: u64,

    /// Most lines one request may write to the log; as --max-log-bytes.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_log_lines: u64,

    /// Give every sandbox a host directory: HOST_DIR:GUEST_DIR, read-only, or
    /// HOST_DIR:GUEST_DIR:rw to allow writes. Repeat for more. By default a
    /// sandbox sees no host file at all.
    #[arg(long = "mount", value_name = "HOST:GUEST[:rw]")]
    pub mounts: Vec<String>,

    /// Grant TCP connections to HOST:PORT, and DNS lookups of HOST when it is
    /// a name; HOST may also be an IP address or a CIDR block. Repeat for
    /// more. By default a sandbox has no network. Loopback, private and
    /// link-local addresses are reachable only through a grant of their own
    /// address or block, never through a name.
    #[arg(long = "allow-outbound", value_name = "HOST:PORT")]
    pub allow_outbound: Vec<String>,

    /// A PEM bundle of CA certificates that TLS connections from the sandbox
    /// trust besides the system's roots (a private CA, a test one). The
    /// host verifies every TLS peer, certificate and name, against these;
    /// an app cannot turn that off, nor widen it with its own bundle.
    #[arg(long, value_name = "FILE")]
    pub outbound_ca: Option<PathBuf>,

    /// Most outbound connections one request may open (with
    /// --allow-outbound); past it, a connect is refused like an ungranted
    /// one. Every connection closes with its sandbox.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_outbound_connections: usize,

    /// Set an environment variable in every sandbox (`os.environ`). Repeat
    /// for more. By default a sandbox sees no environment variable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// CPU budget of one request, instantiation included, in wasmtime fuel:
    /// about one unit per WebAssembly instruction, some 7 billion per CPU
    /// second; a small request uses about a million. A request that uses it
    /// up gets a 504. Off by default: with it on, all guest code runs
    /// somewhat slower. The wall-clock --timeout applies either way.
    #[arg(long, value_name = "UNITS", env = "WSGI_WASM_FUEL")]
    pub fuel: Option<u64>,

    /// Sandboxes alive at once. Past it, requests wait up to --queue-timeout
    /// for one to free up, then get a 503. Default: 32 per core. With
    /// --config, each app's cap (the pool all share is `[server]
    /// max_instances`).
    #[arg(long, value_name = "N", env = "WSGI_WASM_MAX_INSTANCES")]
    pub max_instances: Option<usize>,

    /// The linear memory all sandboxes may hold at once, in MiB, every app
    /// together: past it a sandbox's memory cannot grow (a MemoryError in
    /// the app; a 503 if it lets it fail the request), so a flood of
    /// memory-hungry requests cannot take the machine's memory. Each app is
    /// owed an even share. Default: half the machine's memory (or of the
    /// cgroup's limit, if lower); the startup log says how much.
    #[arg(long, value_name = "MIB", env = "WSGI_WASM_MEMORY_BUDGET")]
    pub memory_budget: Option<u64>,

    /// Seconds a request may wait for a free sandbox before its 503.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    pub queue_timeout: f64,

    /// Open client connections at once; further clients wait in the kernel's
    /// accept queue.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_connections: usize,

    /// On SIGINT/SIGTERM, seconds to let requests in flight finish before
    /// exiting anyway. A second signal exits at once.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub shutdown_timeout: f64,

    /// Serve Prometheus metrics (OpenMetrics text) at http://ADDR/metrics,
    /// on a listener of its own: requests by status, durations,
    /// instantiation, live sandboxes, queue depth, limits hit, guest errors,
    /// memory per request and open connections, each labelled with the app.
    /// The same listener answers the probes: /healthz (200 while the process
    /// serves) and /readyz (200 once every app has loaded, 503 while
    /// starting, draining or serving no app). Off by default, and then
    /// nothing is recorded.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    /// Report where each request's time went: a `Server-Timing` response
    /// header (queue wait, instantiation, app time until the head) and the
    /// full breakdown, teardown included, in the access log.
    #[arg(long)]
    pub timing: bool,

    /// Write /tmp/perf-PID.map, which names each compiled guest function's
    /// code for `perf report` (wasm[MODULE]::function[INDEX], and its name
    /// where wasmtime kept the name section; `bench/profile.py` adds the
    /// rest). For profiling: the file grows with every app loaded, and an
    /// app compiled at this start is listed twice, the compiler's copy being
    /// dropped for the cached one; profile a start from the cache.
    #[arg(long)]
    pub perf_map: bool,

    /// How log lines are written: `text` for people, or `json`, one JSON
    /// object per line (the access line's fields: req_id, app, status,
    /// bytes_in, bytes_out, peak_memory, app_ms, and fuel when metered).
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Log no line per request, like uWSGI's --disable-logging (Gunicorn
    /// logs none unless given --access-logfile). Warnings and errors are
    /// still logged. Same as WSGI_WASM_LOG=info,wsgi_wasm::access=off.
    #[arg(long)]
    pub no_access_log: bool,

    #[command(flatten)]
    pub cache: CacheArgs,
}

/// The cache both subcommands share.
#[derive(Debug, Clone, Args)]
pub struct CacheArgs {
    /// Cache for the guest toolchain (componentize-py), compiled code and
    /// unpacked app files. Default: `$XDG_CACHE_HOME/wsgi-wasm`, else
    /// `~/.cache/wsgi-wasm`.
    #[arg(long, value_name = "DIR", env = "WSGI_WASM_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}
