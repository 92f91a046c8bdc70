//! The app's requirements, installed for the guest, the packages every app
//! gets unless it brings its own, and the ones with native code.
//!
//! uv resolves and installs them with `--target`, into a directory that only
//! the guest sees, for the guest's CPython (`toolchain::GUEST_PYTHON`): its
//! environment markers, `Requires-Python` and wheel tags, whatever Python
//! the build machine runs. Native extension modules cannot load in
//! WebAssembly; packages that carry them are listed so the guest can prove
//! at build time that each one falls back to pure Python.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::toolchain::Toolchain;

/// The packages every app gets unless it brings its own (`tzdata`), as
/// shipped in `python-wasm/`.
pub const GUEST_LOCK: &str = include_str!("../../../python-wasm/guest.lock");

/// A distribution that ships native extension modules.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct NativeDist {
    pub name: String,
    pub version: String,
    /// Its top-level import names.
    pub modules: Vec<String>,
    /// Its native files, relative to site-packages.
    pub files: Vec<String>,
}

/// Installs `requirements` into `target`, resolved for the guest.
///
/// # Errors
/// Fails if uv does (its own message, above, names what it could not
/// resolve or build).
pub fn install(toolchain: &Toolchain, requirements: &Path, target: &Path) -> Result<()> {
    let status = toolchain.uv_install(target).arg("-r").arg(requirements).status().context("running uv")?;
    if !status.success() {
        bail!(
            "installing {} for the guest failed (uv exited with {status}); see uv's output above",
            requirements.display()
        );
    }
    Ok(())
}

/// Installs what [`GUEST_LOCK`] pins into `site`, unless the requirements
/// brought it already; returns what it installed, as `name version`.
///
/// # Errors
/// Fails if uv does.
pub fn install_defaults(toolchain: &Toolchain, site: &Path, scratch: &Path) -> Result<Vec<String>> {
    let mut added = Vec::new();
    let mut pins = String::new();
    for (pin, name, version) in locked(GUEST_LOCK) {
        if !installed(site, &name)? {
            pins.push_str(&pin);
            pins.push('\n');
            added.push(format!("{name} {version}"));
        }
    }
    if added.is_empty() {
        return Ok(added);
    }
    let lock = scratch.join("guest.lock");
    std::fs::write(&lock, pins)?;
    let status = toolchain
        .uv_install(site)
        .args(["--no-deps", "--require-hashes", "-r"])
        .arg(&lock)
        .status()
        .context("running uv")?;
    if !status.success() {
        bail!("installing {} for the guest failed (uv exited with {status})", added.join(", "));
    }
    Ok(added)
}

/// Each pin of a lock file, as `(requirement, name, version)`: the
/// requirement on one line, hashes included.
fn locked(lock: &str) -> Vec<(String, String, String)> {
    lock.replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let (name, rest) = line.split_once("==")?;
            let version = rest.split_whitespace().next()?;
            Some((line.to_owned(), name.trim().to_owned(), version.to_owned()))
        })
        .collect()
}

/// Whether a distribution named `name` is installed in `site`.
fn installed(site: &Path, name: &str) -> Result<bool> {
    let prefix = format!("{}-", name.to_ascii_lowercase().replace('-', "_"));
    for entry in std::fs::read_dir(site).with_context(|| format!("reading {}", site.display()))? {
        let file = entry?.file_name().to_string_lossy().to_ascii_lowercase().replace('-', "_");
        if file.starts_with(&prefix) && file.ends_with(".dist_info") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Lists the distributions in `site` that ship native code.
///
/// # Errors
/// Fails if `site` cannot be read.
pub fn native_dists(site: &Path) -> Result<Vec<NativeDist>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(site)? {
        let dir = entry?.path();
        if dir.extension().and_then(|e| e.to_str()) != Some("dist-info") {
            continue;
        }
        let Ok(record) = std::fs::read_to_string(dir.join("RECORD")) else { continue };
        let paths: Vec<&str> =
            record.lines().filter_map(|line| line.rsplitn(3, ',').nth(2)).map(|p| p.trim_matches('"')).collect();
        let files: Vec<String> = paths.iter().filter(|p| is_native(p)).map(|p| (*p).to_owned()).collect();
        if files.is_empty() {
            continue;
        }
        let metadata = std::fs::read_to_string(dir.join("METADATA")).unwrap_or_default();
        let field = |key: &str| {
            metadata.lines().find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned())).unwrap_or_default()
        };
        let modules = match std::fs::read_to_string(dir.join("top_level.txt")) {
            Ok(top) => top.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect(),
            Err(_) => top_level_modules(&paths),
        };
        found.push(NativeDist { name: field("Name:"), version: field("Version:"), modules, files });
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

fn is_native(path: &str) -> bool {
    path.ends_with(".so") || path.ends_with(".pyd") || path.contains(".so.")
}

/// Top-level import names, from the paths a distribution installed.
fn top_level_modules(paths: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = paths
        .iter()
        .filter(|p| !p.starts_with("..") && !p.contains(".dist-info/") && !p.starts_with("bin/"))
        .filter_map(|p| {
            let first = p.split('/').next()?;
            let name = first.split('.').next()?;
            (p.contains('/') || first.ends_with(".py") || is_native(first)).then(|| name.to_owned())
        })
        .filter(|n| !n.is_empty() && n != "__pycache__" && n.chars().all(|c| c == '_' || c.is_alphanumeric()))
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_lock_pins_tzdata_by_hash() {
        let pins = locked(GUEST_LOCK);
        assert_eq!(pins.len(), 1, "{pins:?}");
        let (pin, name, version) = &pins[0];
        assert_eq!(name, "tzdata");
        assert!(!version.is_empty() && pin.starts_with("tzdata==") && pin.contains("--hash=sha256:"), "{pin}");
    }

    #[test]
    fn native_distributions_are_found_with_their_modules() {
        let site = std::env::temp_dir().join(format!("wsgi-wasm-deps-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&site);
        let native = site.join("fastthing-1.0.dist-info");
        std::fs::create_dir_all(&native).unwrap();
        std::fs::write(native.join("METADATA"), "Metadata-Version: 2.1\nName: fastthing\nVersion: 1.0\n").unwrap();
        std::fs::write(
            native.join("RECORD"),
            "fastthing/__init__.py,sha256=x,10\nfastthing/_speed.cpython-311-x86_64-linux-gnu.so,sha256=y,20\n\
             fastthing-1.0.dist-info/RECORD,,\n",
        )
        .unwrap();
        let pure = site.join("purething-2.0.dist-info");
        std::fs::create_dir_all(&pure).unwrap();
        std::fs::write(pure.join("RECORD"), "purething.py,sha256=x,10\n").unwrap();

        let found = native_dists(&site).unwrap();
        assert_eq!(
            found,
            [NativeDist {
                name: "fastthing".into(),
                version: "1.0".into(),
                modules: vec!["fastthing".into()],
                files: vec!["fastthing/_speed.cpython-311-x86_64-linux-gnu.so".into()],
            }]
        );
        std::fs::remove_dir_all(&site).unwrap();
    }
}
