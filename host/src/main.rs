//! The `wsgi-wasm` binary: parse, set up logging, dispatch, map errors to an
//! exit status. Everything else lives in the library.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use wsgi_wasm::cli::{Cli, Command, RunArgs};
use wsgi_wasm::config::{BuildConfig, RunConfig};
use wsgi_wasm::health::Health;
use wsgi_wasm::server::ServeOptions;
use wsgi_wasm::tenants::Tenants;
use wsgi_wasm::{package, server, shutdown};

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let json = matches!(&cli.command, Command::Run(args) | Command::Check(args) if args.log_format == "json");
    let access = !matches!(&cli.command, Command::Run(args) if args.no_access_log);
    wsgi_wasm::logging::init(json, access);
    let result = match cli.command {
        Command::Build(args) => BuildConfig::from_args(args).and_then(|cfg| package::build(&cfg)),
        Command::Run(args) => run(args, &given_flags(&matches)),
        Command::Check(args) => check(&args, &given_flags(&matches)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wsgi-wasm: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The ids of the `run` (or `check`) flags given on the command line or by
/// their environment variable (not defaulted): these override a config file.
fn given_flags(matches: &ArgMatches) -> HashSet<String> {
    let Some(run) = matches.subcommand_matches("run").or_else(|| matches.subcommand_matches("check")) else {
        return HashSet::new();
    };
    run.ids()
        .filter(|id| matches!(run.value_source(id.as_str()), Some(ValueSource::CommandLine | ValueSource::EnvVariable)))
        .map(|id| id.as_str().to_owned())
        .collect()
}

/// What a reload reads: the config again (the file, with the same flags
/// over it). `[server]` settings, the listeners and the pool are fixed at
/// startup; a reload that changes them says so and applies the rest.
fn rereader(args: RunArgs, given: HashSet<String>, startup: &RunConfig) -> impl Fn() -> Result<RunConfig> + Send {
    let fixed = |c: &RunConfig| {
        (c.http.clone(), c.uwsgi.clone(), c.server.clone(), c.pool, c.cache_dir.clone(), c.metrics, c.apps_dir.clone())
    };
    let at_startup = fixed(startup);
    move || {
        let config = RunConfig::from_args(&args, &given)?;
        if fixed(&config) != at_startup {
            tracing::warn!("[server] settings take effect only on restart; reloading the apps");
        }
        Ok(config)
    }
}

fn run(args: RunArgs, given: &HashSet<String>) -> Result<()> {
    // First, while this is the only thread: it clears LISTEN_FDS and the rest.
    let inherited = wsgi_wasm::activation::take()?;
    // Compiles yield to requests (before anything compiles).
    wsgi_wasm::background::compile_at_low_priority();
    let mut config = RunConfig::from_args(&args, given)?;
    config.require_all()?;
    wsgi_wasm::descriptors::ensure(&config)?;
    let metrics = config.metrics.map(|_| wsgi_wasm::metrics::Metrics::new());
    let health = Arc::new(Health::new());
    // tokio's defaults, event_interval (61 task polls between two looks at
    // I/O events) included. Checking more often (it was 4, for guests that
    // computed on these workers; they now move to `background`) woke more
    // connections ahead of those already queued: a saturated server's p99
    // was 20-30% longer (`docs/performance.md`).
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async {
        // The probes answer while the apps load: starting is not dead.
        if let (Some(addr), Some(metrics)) = (config.metrics, &metrics) {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on --metrics {addr}"))?;
            tracing::info!("serving /metrics, /healthz and /readyz on http://{}", listener.local_addr()?);
            tokio::spawn(wsgi_wasm::status::serve(listener, Arc::clone(metrics), Arc::clone(&health)));
        }
        // Everything that can be wrong with an app is found before listening;
        // the apps directory's are each refused alone (and logged).
        let (tenants, _refused) = Tenants::start(&config, metrics, Arc::clone(&health)).await?;
        let tenants = Arc::new(tenants);
        let listeners = server::bind(&config.http, &config.uwsgi, inherited).await?;
        let shutdown = shutdown::on_signals().context("installing signal handlers")?;
        tokio::spawn(Arc::clone(&tenants).watch(rereader(args, given.clone(), &config), shutdown.clone()));
        let options = ServeOptions {
            limits: config.server.clone(),
            health,
            uwsgi_vars_limit: config.uwsgi.buffer_size,
            shutdown_timeout: config.shutdown_timeout,
            timing: config.timing,
        };
        server::run(listeners, tenants, options, shutdown).await
    })
}

/// `wsgi-wasm check`: everything `run` does to its apps before it listens,
/// then a line per app on stdout.
fn check(args: &RunArgs, given: &HashSet<String>) -> Result<()> {
    let mut config = RunConfig::from_args(args, given)?;
    config.require_every()?;
    wsgi_wasm::descriptors::ensure(&config)?;
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    let (tenants, refused) = runtime.block_on(Tenants::start(&config, None, Arc::new(Health::new())))?;
    if let Some(refused) = refused.into_iter().next() {
        return Err(refused);
    }
    for (name, sandbox) in tenants.apps() {
        println!("ok: {name} ({})", sandbox.digest());
    }
    Ok(())
}
