//! The file system a sandbox sees: the app's own tree, read-only at `/`,
//! and the operator's mounts, opened once per app and shared by every
//! store; and the rule that a mount may not shadow the app's own files.

use anyhow::Context as _;
use wasmtime_wasi::filesystem::WasiFilesystemCtx;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::config::Mount;
use crate::upload::LoadedApp;

/// Refuses a mount that would shadow the app's own files.
///
/// # Errors
/// Names the mount and the app's root it overlaps.
pub fn check_mounts(app: &LoadedApp, mounts: &[Mount]) -> anyhow::Result<()> {
    for mount in mounts {
        if let Some(root) = app.roots.iter().find(|root| overlaps(&mount.guest, root)) {
            anyhow::bail!(
                "--mount at {} would shadow the app's own files at {root}; choose another guest path",
                mount.guest
            );
        }
    }
    Ok(())
}

/// Opens the app's file tree and the operator's mounts, for every store to
/// share (see `Sandbox::preopens`).
///
/// Sharing the descriptors shares nothing a guest can change: they are
/// directories, every file a guest opens under them gets its own descriptor,
/// and listing a directory opens it anew (cap-std does not `dup`, whose
/// position would be shared). A request's own descriptors are closed with
/// its store.
pub fn open_preopens(app: &LoadedApp, mounts: &[Mount]) -> anyhow::Result<WasiFilesystemCtx> {
    let mut wasi = WasiCtxBuilder::new();
    // The mounted tree is read-only and stays in the page cache: doing its
    // file operations inline beats a round trip to the blocking pool for
    // every stat and read of every import. Set before the preopens, which
    // capture it.
    wasi.allow_blocking_current_thread(true);
    // One preopen for the whole tree, at `/`, rather than one per root; the
    // guest sees the same paths, and `/` lists only the roots. A mount's
    // longer guest path wins over `/` for the files under it.
    wasi.preopened_dir(&app.tree_dir, "/", FsPerms::ReadOnly)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot open the app's file tree {}", app.tree_dir.display()))?;
    for mount in mounts {
        let perms = if mount.writable { FsPerms::ReadWrite } else { FsPerms::ReadOnly };
        wasi.preopened_dir(&mount.host, &mount.guest, perms)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("cannot open --mount {}", mount.host.display()))?;
    }
    Ok(wasi.build().filesystem().clone())
}

/// Whether one absolute guest path is the other or lies under it.
fn overlaps(a: &str, b: &str) -> bool {
    let under = |x: &str, y: &str| x.strip_prefix(y).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    under(a, b) || under(b, a)
}

#[cfg(test)]
mod tests {
    #[test]
    fn guest_paths_overlap_only_at_segment_boundaries() {
        use super::overlaps;
        assert!(overlaps("/python", "/python") && overlaps("/python/x", "/python") && overlaps("/0", "/0/sub"));
        assert!(!overlaps("/python2", "/python") && !overlaps("/data", "/0"));
    }
}
