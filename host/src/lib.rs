//! wsgi-wasm: run WSGI apps in a fresh WebAssembly sandbox per request.
//!
//! # Layout
//!
//! Dependencies point down this list; nothing imports a module above it
//! (`docs/architecture.md` draws the layers, and `layers::tests` checks
//! every `use crate::` against that drawing).
//!
//! | module | owns |
//! |---|---|
//! | [`package`] | `wsgi-wasm build`: an app and its requirements → `app.wasm` |
//! | [`server`] | listeners, accept loop, connection cap, graceful drain |
//! | [`activation`] | the listening sockets systemd passes (`LISTEN_FDS`) |
//! | [`shutdown`] | SIGINT/SIGTERM → cancellation; a second signal exits |
//! | [`descriptors`] | the descriptor budget, checked against `RLIMIT_NOFILE` |
//! | [`status`] | the status listener: `/metrics`, `/healthz`, `/readyz` |
//! | [`protocol`] | wire protocols (HTTP/1.1 via hyper; uwsgi) → [`wsgi::WsgiRequest`] |
//! | [`wsgi`] | CGI environ, response validation and framing, routing and dispatch |
//! | [`tenants`] | the apps served: each loaded into its sandbox, and the routing table |
//! | [`sandbox`] | one fresh store and instance per request; limits; host imports |
//! | [`pool`] | the sandbox slots all apps share, fairly |
//! | [`budget`] | the linear memory all sandboxes may hold at once, shared fairly |
//! | [`background`] | the low-priority runtime a guest that computes for long moves to |
//! | [`upload`] | an untrusted `app.wasm`, checked, then compiled |
//! | [`engine`] | the wasmtime engine, its instance pool and epoch ticker |
//! | [`codecache`] | compiled code on disk and in memory; the modules apps share, compiled once |
//! | [`bundle`] | the guest file tree inside `app.wasm` |
//! | [`bindings`] | code generated from `guest-sdk/wit/wsgi.wit` |
//! | [`config`] | validated, defaulted configuration and limits; listen addresses |
//! | [`cli`] | clap arguments, documented; no logic |
//! | [`router`] | which app a request is for: `UWSGI_APPID`, host, prefix |
//! | [`outbound`] | outbound network grants: the address check and the names a guest may resolve |
//! | [`trust`] | whom a guest's TLS connections trust: the system's roots and the operator's |
//! | [`error`] | typed errors and the one error → status mapping |
//! | [`metrics`] | Prometheus metrics per app (`--metrics`) |
//! | [`health`] | alive and ready: the server's phase and how many apps it serves |
//! | [`logging`] | the log's formats; text lines that requests and guests cannot forge |

pub mod activation;
pub mod background;
pub mod bindings;
pub mod budget;
pub mod bundle;
pub mod cli;
pub mod codecache;
pub mod config;
pub mod descriptors;
pub mod engine;
pub mod error;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod outbound;
pub mod package;
pub mod pool;
pub mod protocol;
pub mod router;
pub mod sandbox;
pub mod server;
pub mod shutdown;
pub mod status;
pub mod tenants;
pub mod trust;
pub mod upload;
pub mod wsgi;

#[cfg(test)]
mod layers;
