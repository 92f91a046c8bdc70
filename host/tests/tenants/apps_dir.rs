//! A directory of apps (issue 33), as uWSGI's Emperor serves its vassals:
//! each `DIR/NAME.toml` is one app; a file added, changed or removed
//! starts, reloads or retires its app with no SIGHUP, and a bad file is
//! refused alone while every other app serves on.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{fixture_apps, get, whoami, Config};
use crate::common::{status_url, wsgi_wasm, Server};

/// Writes `DIR/NAME.toml` the way a control plane should: beside it under a
/// hidden name, then renamed over it in one step.
fn put(dir: &Path, name: &str, toml: &str) {
    let tmp = dir.join(format!(".{name}.toml.tmp"));
    std::fs::write(&tmp, toml).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{name}.toml"))).unwrap();
}

/// A fixture app's file: at host `NAME.test`, with `TENANT` = `tenant`.
fn app(name: &str, tenant: &str) -> String {
    format!("wasm = \"../fixture.wasm\"\nhosts = [\"{name}.test\"]\nenv = {{ TENANT = \"{tenant}\" }}\n")
}

/// Waits until `host` answers `/whoami` as `tenant`.
fn wait_for_tenant(server: &Server, host: &str, tenant: &str) {
    let started = Instant::now();
    while get(server, host, "/whoami").0 != 200 || whoami(server, host, "/whoami").0 != tenant {
        assert!(started.elapsed() < Duration::from_secs(30), "{host} is not {tenant}: {}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Clients asking `host` in a loop until `stop`; the replies that failed.
fn load(server: &Server, host: &'static str, stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<(usize, Vec<String>)> {
    let (addr, stop) = (server.addr, Arc::clone(stop));
    std::thread::spawn(move || {
        let (mut sent, mut failed) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            let request = format!("GET /whoami HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            let reply = crate::common::raw_text(addr, request.as_bytes());
            sent += 1;
            if !reply.starts_with("HTTP/1.1 200") {
                failed.push(reply);
            }
        }
        (sent, failed)
    })
}

#[test]
fn r33_files_added_changed_broken_and_removed_under_load_and_no_other_request_fails() {
    // Issue 33.
    let config =
        Config::new(&fixture_apps("[server]\napps_dir = \"apps.d\"\n", &[("main", "env = { TENANT = \"main\" }")]));
    let dir = config.dir.path().join("apps.d");
    std::fs::create_dir(&dir).unwrap();
    put(&dir, "alpha", &app("alpha", "alpha-1"));
    // Not a .toml, and a hidden one: neither is an app.
    std::fs::write(dir.join("README"), "not an app").unwrap();
    std::fs::write(dir.join(".half-written.toml"), "wasm = ").unwrap();
    let server = config.serve(&["--metrics", "127.0.0.1:0"]);
    assert_eq!(whoami(&server, "alpha.test", "/whoami").0, "alpha-1");
    let stop = Arc::new(AtomicBool::new(false));
    let loads = [load(&server, "main.test", &stop), load(&server, "alpha.test", &stop)];

    // Added: serves within a tick or two of the watch.
    put(&dir, "beta", &app("beta", "beta"));
    wait_for_tenant(&server, "beta.test", "beta");
    // Changed: reloaded, with requests in flight finishing on the old one.
    put(&dir, "alpha", &app("alpha", "alpha-2"));
    wait_for_tenant(&server, "alpha.test", "alpha-2");
    // Refused alone, each with its reason logged: a key that does not
    // exist, a name the main config has, a host another app holds, and a
    // change that breaks a serving app (which keeps its last good version).
    put(&dir, "gamma", &format!("{}memroy = 64\n", app("gamma", "gamma")));
    put(&dir, "main", &app("elsewhere", "impostor"));
    put(&dir, "thief", &app("alpha", "thief"));
    put(&dir, "alpha", &format!("{}memory = 3\n", app("alpha", "alpha-3")));
    for reason in [
        "gamma.toml: unknown field `memroy`",
        "already names [apps.main]; rename the file",
        "both claim alpha.test",
        "alpha.toml: memory 3: must be between 16 and 65536 MiB",
    ] {
        assert!(server.wait_for_log(reason, Duration::from_secs(30)), "{reason}: {}", server.log());
    }
    assert_eq!(get(&server, "gamma.test", "/whoami").0, 404);
    assert_eq!(get(&server, "elsewhere.test", "/whoami").0, 404);
    assert_eq!(whoami(&server, "main.test", "/whoami").0, "main");
    assert_eq!(whoami(&server, "alpha.test", "/whoami").0, "alpha-2");
    // A serving app whose new file claims another's host keeps its last
    // good version, and is not reported as serving the new one.
    let serving = server.log().matches("app beta now serves").count();
    put(
        &dir,
        "beta",
        "wasm = \"../fixture.wasm\"\nhosts = [\"beta.test\", \"alpha.test\"]\nenv = { TENANT = \"beta-2\" }\n",
    );
    assert!(server.wait_for_log("[apps.beta] both claim alpha.test", Duration::from_secs(30)), "{}", server.log());
    assert_eq!(whoami(&server, "beta.test", "/whoami").0, "beta");
    assert_eq!(server.log().matches("app beta now serves").count(), serving, "{}", server.log());
    // Removed: retired, the host's own 404 from then on.
    std::fs::remove_file(dir.join("beta.toml")).unwrap();
    let removed = Instant::now();
    while get(&server, "beta.test", "/whoami").0 != 404 {
        assert!(removed.elapsed() < Duration::from_secs(30), "beta still serves: {}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Fixed: the broken file's next version serves.
    put(&dir, "alpha", &app("alpha", "alpha-4"));
    wait_for_tenant(&server, "alpha.test", "alpha-4");

    stop.store(true, Ordering::Relaxed);
    for (host, handle) in ["main.test", "alpha.test"].iter().zip(loads) {
        let (sent, failed) = handle.join().unwrap();
        assert!(sent > 20 && failed.is_empty(), "{host}: {} of {sent} failed: {:?}", failed.len(), failed.first());
    }
    let status = status_url(&server);
    let ready = reqwest::blocking::get(format!("{status}/readyz")).unwrap();
    assert_eq!(ready.status(), 200);
    let log = server.log();
    assert!(!log.contains("README") && !log.contains("half-written"), "{log}");
}

#[test]
fn r33_an_apps_dir_with_no_good_file_is_not_ready_until_one_arrives() {
    // Issue 33: `--apps-dir` alone, no config file and no app yet.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(crate::common::fixture(), dir.path().join("fixture.wasm")).unwrap();
    let apps = dir.path().join("apps.d");
    std::fs::create_dir(&apps).unwrap();
    // A bad file at startup is refused alone too: the server starts.
    put(&apps, "broken", "wasm = \"missing.wasm\"\n");
    let mut cmd = wsgi_wasm();
    cmd.arg("run").arg("--apps-dir").arg(&apps).args(["--http", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]);
    cmd.arg("--cache-dir").arg(crate::common::cache_dir());
    let server = Server::spawn(cmd, 1);
    let readyz = format!("{}/readyz", status_url(&server));
    let probe = || {
        let resp = reqwest::blocking::get(&readyz).unwrap();
        (resp.status().as_u16(), resp.text().unwrap())
    };
    let started = Instant::now();
    while probe().0 == 503 && probe().1 == "starting: loading the apps\n" {
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    assert_eq!(probe(), (503, "no app is served\n".to_owned()));
    assert!(
        server.log().contains("not added: ") && server.log().contains("missing.wasm: no such file"),
        "{}",
        server.log()
    );
    assert_eq!(get(&server, "solo.test", "/whoami").0, 404);
    put(&apps, "solo", &app("solo", "solo"));
    wait_for_tenant(&server, "solo.test", "solo");
    assert_eq!(probe(), (200, "ready\n".to_owned()));
}
