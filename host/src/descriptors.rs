//! The process's descriptor budget, checked against `RLIMIT_NOFILE` before
//! the server starts.
//!
//! Every file or directory a guest opens is a host descriptor, and so is
//! every client connection. Each request may hold at most
//! `--max-open-files` handles, so the sandboxes together hold at most
//! `--max-instances` × `--max-open-files`; the connections add
//! `--max-connections`, and the server itself needs [`RESERVE`] more. If
//! that sum could exhaust the process's limit, one tenant's requests could
//! stop the server from accepting anyone's: the soft limit is raised to
//! cover it where the hard limit allows, and the server refuses to start
//! where it does not.

use anyhow::{bail, Result};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use crate::config::RunConfig;

/// Descriptors the server keeps for itself: listeners, the epoll instance,
/// the app trees and mounts opened once, the compiled-code memfds, logging.
pub const RESERVE: u64 = 256;

/// The most open files any one sandbox of `config` may hold.
fn max_open_files(config: &RunConfig) -> u64 {
    config.apps.iter().map(|a| a.limits.max_open_files as u64).max().unwrap_or(0)
}

/// The most descriptors the server may need at once under `config`: every
/// slot of the pool holding the most any app allows.
pub fn needed(config: &RunConfig) -> u64 {
    (config.pool as u64) * max_open_files(config) + config.server.max_connections as u64 + RESERVE
}

/// Makes sure the process may hold [`needed`] descriptors, raising its soft
/// limit if it must; returns the limit now in force.
///
/// # Errors
/// When the hard limit is below what is needed, naming the flags to lower.
pub fn ensure(config: &RunConfig) -> Result<u64> {
    let need = needed(config);
    let current = getrlimit(Resource::Nofile);
    let soft = current.current.unwrap_or(u64::MAX);
    if soft >= need {
        return Ok(soft);
    }
    let hard = current.maximum.unwrap_or(u64::MAX);
    if hard < need {
        bail!(
            "the process may open at most {hard} files (ulimit -Hn), but {} sandboxes x --max-open-files {} \
             + --max-connections {} + {RESERVE} for the server need {need}; lower --max-instances, \
             --max-open-files or --max-connections, or raise the hard limit",
            config.pool,
            max_open_files(config),
            config.server.max_connections,
        );
    }
    setrlimit(Resource::Nofile, Rlimit { current: Some(need), maximum: current.maximum })
        .map_err(|err| anyhow::anyhow!("raising the open-file limit from {soft} to {need}: {err}"))?;
    tracing::info!(from = soft, to = need, "raised the open-file limit for the sandboxes and connections");
    Ok(need)
}
