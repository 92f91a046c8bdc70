//! `wsgi-wasm build`: a WSGI app and its requirements → one `app.wasm`.
//!
//! 1. Provision the pinned componentize-py and uv (`toolchain`).
//! 2. Install the requirements for the guest's CPython, and the packages
//!    every app gets unless it brings its own (`tzdata`), and list those
//!    with native code (`deps`).
//! 3. Stage the SDK, the WIT world, an entry module and a build plan (`sdk`).
//! 4. Run componentize-py, which imports the app inside CPython-for-WASI and
//!    snapshots it; the guest side (`wsgi_wasm/build.py`) checks the app and
//!    exports its whole file tree, bytecode included.
//! 5. Make the snapshot's objects immortal in the memory image (`immortal`),
//!    embed the exported tree in the component (`bundle`) and write the output.
//!
//! The mount order decides the guest paths: the app's `--path` directories
//! are `/0`..`/{n-1}`, the SDK `/n`, the export directory `/{n+1}`, and the
//! requirements (through `VIRTUAL_ENV`) `/{n+2}`.

mod deps;
pub mod immortal;
pub mod sdk;
mod toolchain;

use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::bundle;
use crate::config::BuildConfig;

/// Marker of a build error reported by the guest (see `wsgi_wasm/build.py`).
const GUEST_ERROR_MARKER: &str = "WSGI_WASM_BUILD_ERROR ";

/// Builds the component described by `cfg`.
///
/// # Errors
/// A message that says what to fix: the app, its requirements, or the machine.
pub fn build(cfg: &BuildConfig) -> Result<()> {
    let started = Instant::now();
    let toolchain = toolchain::Toolchain::ensure(&cfg.python, &cfg.cache_dir)?;

    let stage = tempfile::Builder::new().prefix("wsgi-wasm-build-").tempdir()?;
    let (wit, sdk_dir, export) = (stage.path().join("wit"), stage.path().join("sdk"), stage.path().join("export"));
    let site = stage.path().join("venv/lib/site-packages");
    for dir in [&export, &site] {
        std::fs::create_dir_all(dir)?;
    }
    sdk::write(&wit, &sdk_dir)?;

    if let Some(req) = &cfg.requirements {
        eprintln!("wsgi-wasm: installing {} for the guest (CPython {})", req.display(), toolchain::GUEST_PYTHON);
        deps::install(&toolchain, req, &site)?;
    }
    for added in deps::install_defaults(&toolchain, &site, stage.path())? {
        eprintln!("wsgi-wasm: bundling {added}, which every app gets unless it brings its own");
    }
    let native = deps::native_dists(&site)?;
    for dist in &native {
        eprintln!(
            "wsgi-wasm: {} {} ships native code; checking that it falls back to pure Python",
            dist.name, dist.version
        );
    }

    let n = cfg.paths.len();
    let plan = serde_json::json!({
        "module": cfg.target.module,
        "callable": cfg.target.callable,
        "export_dir": format!("/{}", n + 1),
        "native": native,
        "warmup": cfg.warmup,
        "auto_warmup": cfg.auto_warmup,
        "env": cfg.env,
        "app_paths": cfg.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
    });
    std::fs::write(sdk_dir.join(sdk::PLAN_FILE), serde_json::to_vec_pretty(&plan)?)?;

    eprintln!("wsgi-wasm: importing {} in CPython for WASI and snapshotting it", cfg.target);
    let raw = stage.path().join("raw.wasm");
    let mut cmd = toolchain.componentize_py();
    cmd.arg("-d").arg(&wit).args(["-w", "wsgi", "--quiet", "componentize", sdk::ENTRY_MODULE]);
    for path in &cfg.paths {
        cmd.arg("-p").arg(path);
    }
    cmd.arg("-p").arg(&sdk_dir).arg("-p").arg(&export).arg("-o").arg(&raw);
    let out = cmd
        .current_dir(stage.path())
        .env("VIRTUAL_ENV", stage.path().join("venv"))
        .stdin(Stdio::null())
        .output()
        .context("running componentize-py")?;
    if !out.status.success() {
        bail!("{}", explain_failure(&out));
    }

    let manifest = report(&export.join(REPORT_FILE), cfg)?;
    let mut component = std::fs::read(&raw).context("componentize-py wrote no component")?;
    immortalize(&mut component, &export.join(HEAP_FILE))?;
    bundle::embed(&mut component, &export)?;
    manifest.embed(&mut component);
    let tmp = cfg.output.with_extension("wasm.partial");
    std::fs::write(&tmp, &component).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &cfg.output).with_context(|| format!("writing {}", cfg.output.display()))?;
    eprintln!(
        "wsgi-wasm: wrote {} ({:.1} MiB) in {:.1}s",
        cfg.output.display(),
        component.len() as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What the guest reports from a successful pre-init (see `build.py`).
const REPORT_FILE: &str = "wsgi_wasm_report.json";

/// Where the guest lists the snapshot's object headers (see `build.py`).
const HEAP_FILE: &str = "wsgi_wasm_heap.bin";

/// Applies [`immortal`] with the guest's list, and removes the list.
fn immortalize(component: &mut [u8], path: &std::path::Path) -> Result<()> {
    let records = std::fs::read(path).context("the guest wrote no heap record")?;
    std::fs::remove_file(path)?;
    let outcome = immortal::apply(component, &records).context("making the snapshot's objects immortal")?;
    eprintln!(
        "wsgi-wasm: {} snapshot objects made immortal ({} were already, {} left alone)",
        outcome.immortalized, outcome.already, outcome.skipped
    );
    Ok(())
}

/// Prints the guest's report and removes it, so it is not shipped; returns
/// what `run` needs of it.
fn report(path: &std::path::Path, cfg: &BuildConfig) -> Result<bundle::Manifest> {
    let text = std::fs::read_to_string(path).context("the guest wrote no build report")?;
    std::fs::remove_file(path)?;
    let report: serde_json::Value = serde_json::from_str(&text).context("reading the build report")?;
    let manifest = bundle::Manifest {
        env_read: report["env_read"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str().map(String::from))
            .collect(),
        env_iterated: report["env_iterated"].as_bool() == Some(true),
    };
    for warm in report["warmup"].as_array().into_iter().flatten() {
        let what = warm["request"].as_str().unwrap_or("?");
        let auto = if warm["automatic"].as_bool() == Some(true) { " (automatic)" } else { "" };
        match warm["warning"].as_str() {
            Some(warning) => eprintln!("wsgi-wasm: warning: the automatic warm-up {what} failed; going on: {warning}"),
            None => eprintln!("wsgi-wasm: warm-up{auto} {what}: {}", warm["status"].as_str().unwrap_or("no response")),
        }
    }
    // Names only: a value may be a secret.
    if manifest.env_iterated {
        eprintln!(
            "wsgi-wasm: the app read its whole environment while it was built ({} variables given); \
             what it kept of it is in the output",
            cfg.env.len()
        );
    }
    let (given, unset): (Vec<&String>, Vec<&String>) =
        manifest.env_read.iter().partition(|k| cfg.env.iter().any(|(g, _)| g == *k));
    if !given.is_empty() {
        let names: Vec<&str> = given.iter().map(|k| k.as_str()).collect();
        eprintln!(
            "wsgi-wasm: the app read {} while it was built: what it kept of their values is in the \
             output, and `run --env` does not change that",
            names.join(", ")
        );
    }
    if !unset.is_empty() {
        let names: Vec<&str> = unset.iter().map(|k| k.as_str()).collect();
        let also = if given.is_empty() { "while it was built, the app" } else { "it also" };
        eprintln!("wsgi-wasm: {also} looked for these, which the build did not set: {}", names.join(", "));
    }
    Ok(manifest)
}

/// Turns a failed componentize-py run into a message for the user: the
/// guest's own error if it reported one, else the tail of the output.
fn explain_failure(out: &std::process::Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if let Some(msg) = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(GUEST_ERROR_MARKER))
        .and_then(|json| serde_json::from_str::<String>(json).ok())
    {
        return msg;
    }
    // Drop the Rust backtrace frames componentize-py appends; keep the Python.
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with("at ") || t.split_once(": ").is_some_and(|(n, _)| n.parse::<u32>().is_ok()))
        })
        .collect();
    let tail = &lines[lines.len().saturating_sub(40)..];
    format!("componentize-py failed ({}):\n{}", out.status, tail.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn guest_errors_are_reported_alone() {
        let out = std::process::Output {
            status: std::process::ExitStatus::from_raw(256),
            stdout: Vec::new(),
            stderr: b"Traceback...\n  WSGI_WASM_BUILD_ERROR \"cannot find module 'x'\"\nCaused by: ...\n".to_vec(),
        };
        assert_eq!(explain_failure(&out), "cannot find module 'x'");
    }
}
