//! The `wsgi-wasm` binary: parse, set up logging, dispatch, map errors to an
//! exit status. Everything else lives in the library.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use tracing_subscriber::EnvFilter;
use wsgi_wasm::cli::{Cli, Command, RunArgs};
use wsgi_wasm::config::{BuildConfig, RunConfig};
use wsgi_wasm::engine::LoadedApp;
use wsgi_wasm::sandbox::{Grants, Sandbox};
use wsgi_wasm::server::ServeOptions;
use wsgi_wasm::{build, server, shutdown};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut filter = EnvFilter::try_from_env("WSGI_WASM_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if matches!(&cli.command, Command::Run(args) if args.no_access_log) {
        filter = filter.add_directive("wsgi_wasm::access=off".parse().expect("a valid directive"));
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if matches!(&cli.command, Command::Run(args) if args.log_format == "json") {
        // Flat: each field is a key of the line's object, beside `message`.
        builder.json().flatten_event(true).init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
    let result = match cli.command {
        Command::Build(args) => BuildConfig::from_args(args).and_then(|cfg| build::build(&cfg)),
        Command::Run(args) => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wsgi-wasm: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> Result<()> {
    // First, while this is the only thread: it clears LISTEN_FDS and the rest.
    let inherited = wsgi_wasm::activation::take()?;
    let config = RunConfig::from_args(args)?;
    wsgi_wasm::descriptors::ensure(&config.limits)?;
    // Everything that can be wrong with the app is found before listening.
    let app = LoadedApp::load(&config.app, &config.cache_dir, &config.limits)?;
    let grants = Grants { mounts: config.mounts.clone(), env: config.env.clone() };
    let metrics = config.metrics.map(|_| wsgi_wasm::metrics::Metrics::new().app(&config.app_name, &app.digest));
    let sandbox = Arc::new(Sandbox::new(app, config.app_name.clone(), config.limits.clone(), grants, metrics)?);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async {
        sandbox.check().await?;
        let listeners = server::bind(&config.http, &config.uwsgi, inherited).await?;
        let metrics = match config.metrics {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on --metrics {addr}"))?,
            ),
            None => None,
        };
        let shutdown = shutdown::on_signals().context("installing signal handlers")?;
        let options = ServeOptions {
            metrics,
            uwsgi_vars_limit: config.uwsgi.buffer_size,
            shutdown_timeout: config.shutdown_timeout,
            timing: config.timing,
        };
        server::run(listeners, sandbox, options, shutdown).await
    })
}
