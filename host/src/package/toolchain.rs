//! The pinned guest toolchain: componentize-py (and the CPython-for-WASI it
//! bundles) and uv (which resolves requirements for that CPython),
//! provisioned on first use into the cache.
//!
//! The pin is `python-wasm/requirements.lock`, compiled into this binary.
//!
//! When this binary was installed by pip (the wheel of `pyproject.toml`,
//! which depends on the same pins), the componentize-py and uv installed
//! beside it are used, if their versions are the pinned ones. Otherwise the
//! lock is installed with `pip --require-hashes` into a directory named
//! after the lock file's hash, and marked complete only after pip
//! succeeded, so an interrupted install is redone and a changed pin gets a
//! directory of its own. Builds that start at once (a CI job's parallel
//! tests, two terminals) take turns through a file lock: one installs, the
//! others then find it done.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::bundle::hex;

/// The pinned requirements, as shipped in `python-wasm/`.
pub const LOCK: &str = include_str!("../../../python-wasm/requirements.lock");

/// The guest's CPython version: what requirements are resolved for. It is
/// the one componentize-py bundles (`sys.version` in a guest shows it).
pub const GUEST_PYTHON: &str = "3.14";

/// A provisioned componentize-py and uv.
pub struct Toolchain {
    /// The Python that runs componentize-py (and builds sdists for uv).
    python: PathBuf,
    /// Where the cache's copy is installed, put on `PYTHONPATH`; `None` for
    /// the copy installed beside this binary, which its Python finds.
    site: Option<PathBuf>,
    uv: PathBuf,
    /// uv's own cache, beside the toolchain in wsgi-wasm's.
    uv_cache: PathBuf,
}

impl Toolchain {
    /// Finds the toolchain: the one installed beside this binary if it is
    /// the pinned one, else the cache's, installing it first if needed.
    ///
    /// # Errors
    /// Fails with what to do if Python or pip is missing, or pip fails.
    pub fn ensure(python: &Path, cache_dir: &Path) -> Result<Self> {
        if let Some(installed) = Self::installed(cache_dir) {
            return Ok(installed);
        }
        check_python(python)?;
        let key = hex(&Sha256::digest(LOCK.as_bytes()));
        let dir = cache_dir.join("toolchain").join(&key[..16]);
        let site = dir.join("site");
        let done = dir.join(".complete");
        std::fs::create_dir_all(dir.parent().expect("under the cache"))
            .with_context(|| format!("creating {}", cache_dir.display()))?;
        let lock_path = dir.with_extension("lock");
        let lock = std::fs::File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
        // Held until this function returns; the kernel drops it if we die.
        lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
        if !done.is_file() {
            eprintln!(
                "wsgi-wasm: provisioning the guest toolchain (componentize-py with CPython 3.14 \
                 for WASI, and uv; about 35 MB) into {}; this happens once",
                dir.display()
            );
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let pins = dir.join("requirements.lock");
            std::fs::write(&pins, LOCK)?;
            let status = Command::new(python)
                .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input"])
                .args(["--require-hashes", "--only-binary=:all:", "--no-deps", "--target"])
                .arg(&site)
                .arg("-r")
                .arg(&pins)
                // Installing into a directory of our own: the warning
                // about running pip as root does not apply.
                .env("PIP_ROOT_USER_ACTION", "ignore")
                .status()
                .context("running pip")?;
            if !status.success() {
                bail!(
                    "installing componentize-py and uv failed (pip exited with {status}); see \
                     pip's output above. The pinned wheels are for x86-64 Linux."
                );
            }
            std::fs::write(&done, b"")?;
        }
        Ok(Self {
            python: python.to_owned(),
            uv: site.join("bin/uv"),
            site: Some(site),
            uv_cache: cache_dir.join("uv"),
        })
    }

    /// The toolchain pip installed beside this binary (`pip install
    /// wsgi-wasm` into a virtualenv or a prefix puts the binary, a Python,
    /// componentize-py and uv there together), if its versions are the
    /// pinned ones.
    fn installed(cache_dir: &Path) -> Option<Self> {
        let exe = std::env::current_exe().ok()?;
        let bin = exe.parent()?;
        let python = ["python3", "python"].iter().map(|name| bin.join(name)).find(|p| p.is_file())?;
        let out = Command::new(&python)
            .args(["-c", "from importlib.metadata import version as v; import uv; print(v('componentize-py'), v('uv'), uv.find_uv_bin())"])
            .env("PYTHONNOUSERSITE", "1")
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        let mut found = text.split_whitespace();
        let (componentize, uv, uv_bin) = (found.next()?, found.next()?, found.next()?);
        if (Some(componentize), Some(uv)) != (pinned("componentize-py"), pinned("uv")) {
            eprintln!(
                "wsgi-wasm: the componentize-py {componentize} and uv {uv} beside {} are not the pinned {} and {}; \
                 using the cache's own copy",
                exe.display(),
                pinned("componentize-py").unwrap_or("?"),
                pinned("uv").unwrap_or("?")
            );
            return None;
        }
        Some(Self { python, site: None, uv: PathBuf::from(uv_bin), uv_cache: cache_dir.join("uv") })
    }

    /// A `uv pip install` for the guest: into `target`, resolved for
    /// [`GUEST_PYTHON`] on x86-64 Linux (wheels with native code for it
    /// come with their pure-Python fallback, which the guest then uses; the
    /// build proves it), files copied rather than linked to uv's cache.
    /// `--python` builds source distributions.
    pub fn uv_install(&self, target: &Path) -> Command {
        let mut cmd = Command::new(&self.uv);
        cmd.args(["pip", "install", "--quiet", "--link-mode", "copy", "--python-version", GUEST_PYTHON])
            .args(["--python-platform", "x86_64-manylinux_2_28", "--python"])
            .arg(&self.python)
            .arg("--target")
            .arg(target)
            .env("UV_CACHE_DIR", &self.uv_cache)
            // The build machine's Python builds sdists; never fetch another.
            .env("UV_PYTHON_DOWNLOADS", "never");
        cmd
    }

    /// A `componentize-py` command line, ready for arguments.
    pub fn componentize_py(&self) -> Command {
        let mut cmd = Command::new(&self.python);
        if let Some(site) = &self.site {
            cmd.env("PYTHONPATH", site);
        }
        cmd.env("PYTHONNOUSERSITE", "1").args([
            "-c",
            "import sys; sys.argv[0] = 'componentize-py'; from componentize_py import script; sys.exit(script())",
        ]);
        cmd
    }
}

/// The version `package` is pinned to in [`LOCK`].
fn pinned(package: &str) -> Option<&'static str> {
    LOCK.lines().find_map(|line| line.strip_prefix(package)?.strip_prefix("==")?.split_whitespace().next())
}

fn check_python(python: &Path) -> Result<()> {
    let out = Command::new(python).args(["-c", "import sys, pip; print('%d.%d' % sys.version_info[:2])"]).output();
    match out {
        Err(err) => bail!(
            "`wsgi-wasm build` needs Python 3.9+ with pip on the build machine (to install \
             componentize-py and the app's requirements), but `{}` could not run: {err}. \
             Install it (e.g. `apt-get install python3 python3-pip`) or pass --python",
            python.display()
        ),
        Ok(out) if !out.status.success() => bail!(
            "`{}` has no pip ({}); install it (e.g. `apt-get install python3-pip`) or pass --python",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Ok(out) => {
            let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let (major, minor) = version.split_once('.').unwrap_or(("0", "0"));
            if major != "3" || minor.parse::<u32>().unwrap_or(0) < 9 {
                bail!("`{}` is Python {version}; wsgi-wasm build needs 3.9 or newer", python.display());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_lock_pins_each_tool_by_version_and_hash() {
        let pins: Vec<_> = super::LOCK.lines().filter(|l| l.contains("==")).collect();
        assert_eq!(pins.len(), 2, "{pins:?}");
        assert!(pins[0].starts_with("componentize-py==") && pins[1].starts_with("uv=="));
        assert_eq!(super::LOCK.matches("--hash=sha256:").count(), 2);
    }

    #[test]
    fn the_wheel_depends_on_the_pinned_versions() {
        let pyproject = include_str!("../../../pyproject.toml");
        for package in ["componentize-py", "uv"] {
            let pin = format!("\"{package}=={}\"", super::pinned(package).unwrap());
            assert!(pyproject.contains(&pin), "pyproject.toml should depend on {pin}");
        }
    }
}
