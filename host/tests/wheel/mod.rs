//! `pip install` (issue 33): the wheel `pyproject.toml` describes, built
//! once with maturin from this checkout, installed into a fresh
//! virtualenv, gives a `wsgi-wasm` that builds and serves an app with no
//! other step, using the componentize-py and uv pip installed beside it.
//!
//! maturin builds in target/release, reusing what `cargo test --release`
//! built. Not all of it: the dev-dependencies turn on features of crates
//! the binary shares (hyper's client, getrandom's `std` under ring), so
//! about a minute of those is compiled again and the binary relinked in
//! place, with the same code.

use std::path::Path;
use std::process::Command;

use crate::common::{client, repo, succeed, Server};

#[test]
fn r33_pip_install_gives_a_wsgi_wasm_that_builds_and_serves_hello_world() {
    // Issue 33.
    let tmp = tempfile::tempdir().unwrap();
    let (wheels, venv, cache) = (tmp.path().join("wheels"), tmp.path().join("venv"), tmp.path().join("cache"));
    let python = std::env::var("WSGI_WASM_PYTHON").unwrap_or_else(|_| "python3".into());
    succeed(
        Command::new(&python)
            .args(["-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps", "-w"])
            .arg(&wheels)
            .arg(repo()),
        "pip wheel",
    );
    let wheel = std::fs::read_dir(&wheels).unwrap().next().unwrap().unwrap().path();
    let name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("wsgi_wasm-") && name.ends_with(".whl"), "{name}");
    succeed(Command::new(&python).args(["-m", "venv"]).arg(&venv), "python -m venv");
    succeed(
        Command::new(venv.join("bin/pip")).args(["install", "--quiet", "--disable-pip-version-check"]).arg(&wheel),
        "pip install the wheel",
    );
    let installed = venv.join("bin/wsgi-wasm");
    assert!(installed.is_file(), "the wheel installed no bin/wsgi-wasm");

    // Not on PATH, no WSGI_WASM_PYTHON, an empty cache: what a user who has
    // just run `pip install` has.
    let hello = repo().join("examples/hello");
    let out = tmp.path().join("hello.wasm");
    let build = || {
        let mut cmd = Command::new(&installed);
        cmd.args(["build", "app:app", "--path"]).arg(&hello).arg("-o").arg(&out);
        cmd.arg("--cache-dir").arg(&cache).env_remove("WSGI_WASM_PYTHON").env_remove("WSGI_WASM_CACHE_DIR");
        cmd
    };
    let stderr = String::from_utf8_lossy(&succeed(&mut build(), "wsgi-wasm build from the venv").stderr).into_owned();
    assert!(!stderr.contains("provisioning the guest toolchain"), "{stderr}");
    assert!(!cache.join("toolchain").exists(), "the cache got a toolchain of its own");

    let mut cmd = Command::new(&installed);
    cmd.arg("run").arg(&out).args(["--http", "127.0.0.1:0"]).arg("--cache-dir").arg(&cache);
    let server = Server::spawn(cmd, 1);
    let resp = client().get(server.url("/from/pip")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().unwrap(), "Hello from a fresh sandbox! You asked for /from/pip\n");
    assert!(Path::new(&out).is_file());
}
