//! wsgi-wasm: run WSGI apps in a fresh WebAssembly sandbox per request.
//!
//! # Layout
//!
//! Dependencies point down this list; nothing imports a module above it.
//!
//! | module | owns |
//! |---|---|
//! | [`cli`] | clap arguments, documented; no logic |
//! | [`config`] | validated, defaulted configuration and limits |
//! | [`build`] | `wsgi-wasm build`: toolchain, requirements, snapshot, output |
//! | [`server`] | listeners, accept loop, connection cap, graceful drain |
//! | [`activation`] | the listening sockets systemd passes (`LISTEN_FDS`) |
//! | [`shutdown`] | SIGINT/SIGTERM → cancellation; a second signal exits |
//! | [`protocol`] | wire protocols (HTTP/1.1 via hyper; uwsgi) → [`wsgi::WsgiRequest`] |
//! | [`wsgi`] | CGI environ, response validation and framing, routing and dispatch |
//! | [`tenants`] | the apps served: each loaded into its sandbox, and the routing table |
//! | [`router`] | which app a request is for: `UWSGI_APPID`, host, prefix |
//! | [`sandbox`] | one fresh store and instance per request; limits; host imports |
//! | [`outbound`] | outbound network grants: the address check and the names a guest may resolve |
//! | [`pool`] | the sandbox slots all apps share, fairly |
//! | [`engine`] | wasmtime engine, compiled-code cache, epoch ticker |
//! | [`background`] | the low-priority runtime a guest that computes for long moves to |
//! | [`bundle`] | the guest file tree inside `app.wasm` |
//! | [`bindings`] | code generated from `guest-sdk/wit/wsgi.wit` |
//! | [`error`] | typed errors and the one error → status mapping |
//! | [`descriptors`] | the descriptor budget, checked against `RLIMIT_NOFILE` |
//! | [`metrics`] | Prometheus metrics per app (`--metrics`) |

pub mod activation;
pub mod background;
pub mod bindings;
pub mod build;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod descriptors;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod outbound;
pub mod pool;
pub mod protocol;
pub mod router;
pub mod sandbox;
pub mod server;
pub mod shutdown;
pub mod tenants;
pub mod wsgi;
