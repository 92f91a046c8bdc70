//! The app's requirements, installed for the guest, and the ones with native code.
//!
//! pip runs on the build machine's Python with `--target`, into a directory
//! that only the guest sees. Native extension modules built for the host
//! cannot load in WebAssembly; packages that carry them are listed so the
//! guest can prove at build time that each one falls back to pure Python.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Serialize;

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

/// Installs `requirements` into `target` with the build machine's pip.
///
/// # Errors
/// Fails if pip does.
pub fn install(python: &Path, requirements: &Path, target: &Path) -> Result<()> {
    // The guest's packages go to a directory of their own: how they fit the
    // build machine's own installed packages does not matter, and pip's
    // warnings about it (or about running as root) only mislead.
    let status = Command::new(python)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--no-compile"])
        .args(["--no-warn-conflicts", "--quiet", "--target"])
        .arg(target)
        .arg("-r")
        .arg(requirements)
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .status()
        .context("running pip")?;
    if !status.success() {
        bail!("installing {} failed (pip exited with {status}); see pip's output above", requirements.display());
    }
    Ok(())
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
