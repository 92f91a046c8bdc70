//! The file system a sandbox sees: the app's own tree, read-only at `/`,
//! and the operator's mounts, opened once per app and shared by every
//! store; and the rule that a mount may not shadow the app's own files.
//!
//! A mount may go anywhere the tree has no file: outside it (`/data`), at
//! an absent path inside it, or on an empty directory in it, such as the
//! `instance/` folder Flask creates beside an app's package (`/0/instance`
//! for an app in the first `--path`). One that would hide files of the
//! tree is refused, naming them.

use anyhow::Context as _;
use wasmtime_wasi::filesystem::WasiFilesystemCtx;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::config::Mount;
use crate::upload::LoadedApp;

/// Refuses a mount that would hide files of the app's own tree.
///
/// # Errors
/// Names the mount and some of the files it would hide.
pub fn check_mounts(app: &LoadedApp, mounts: &[Mount]) -> anyhow::Result<()> {
    for mount in mounts {
        let hidden = files_under(&app.tree_dir, &mount.guest)?;
        if !hidden.is_empty() {
            let total = hidden.len();
            let shown: Vec<&str> = hidden.iter().take(3).map(String::as_str).collect();
            let more = if total > shown.len() { format!(" and {} more", total - shown.len()) } else { String::new() };
            anyhow::bail!(
                "--mount at {} would hide the app's own files ({}{more}); mount it where the app has no files: \
                 outside its tree, or on an empty directory in it",
                mount.guest,
                shown.join(", ")
            );
        }
    }
    Ok(())
}

/// The files of the tree in `tree_dir` at or under the guest path `guest`,
/// as guest paths, sorted (at most [`MAX_LISTED`] of them).
fn files_under(tree_dir: &std::path::Path, guest: &str) -> anyhow::Result<Vec<String>> {
    // A file on the way down hides nothing under it; it is the one hidden.
    let mut at = tree_dir.to_path_buf();
    let mut path = String::new();
    for part in guest.split('/').filter(|p| !p.is_empty()) {
        at.push(part);
        path = format!("{path}/{part}");
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Ok(vec![path]),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(anyhow::Error::from(err).context(format!("reading the app's tree at {path}"))),
        }
    }
    let mut found = Vec::new();
    let mut pending = vec![(at, if path.is_empty() { String::new() } else { path })];
    while let Some((dir, guest_dir)) = pending.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let guest_path = format!("{guest_dir}/{}", entry.file_name().to_string_lossy());
            if entry.file_type()?.is_dir() {
                pending.push((entry.path(), guest_path));
            } else if found.len() < MAX_LISTED {
                found.push(guest_path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The most hidden files [`files_under`] lists: enough to refuse and name some.
const MAX_LISTED: usize = 1000;

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

#[cfg(test)]
mod tests {
    #[test]
    fn only_files_are_hidden_and_empty_directories_may_be_mounted_on() {
        use super::files_under;
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path();
        std::fs::create_dir_all(root.join("0/instance")).unwrap();
        std::fs::create_dir_all(root.join("0/pkg/empty")).unwrap();
        std::fs::write(root.join("0/pkg/app.py"), "").unwrap();
        std::fs::create_dir_all(root.join("python/lib")).unwrap();
        std::fs::write(root.join("python/lib/os.py"), "").unwrap();
        let none: Vec<String> = Vec::new();
        assert_eq!(files_under(root, "/data").unwrap(), none);
        assert_eq!(files_under(root, "/0/instance").unwrap(), none);
        assert_eq!(files_under(root, "/0/new/deeper").unwrap(), none);
        assert_eq!(files_under(root, "/0/pkg/empty").unwrap(), none);
        assert_eq!(files_under(root, "/0/pkg").unwrap(), ["/0/pkg/app.py"]);
        assert_eq!(files_under(root, "/0").unwrap(), ["/0/pkg/app.py"]);
        assert_eq!(files_under(root, "/0/pkg/app.py/x").unwrap(), ["/0/pkg/app.py"]);
        assert_eq!(files_under(root, "/").unwrap(), ["/0/pkg/app.py", "/python/lib/os.py"]);
    }
}
