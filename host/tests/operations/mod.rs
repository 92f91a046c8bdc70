//! What an operator sees and runs (issue 19): `/metrics` after known
//! traffic, JSON log lines, and sockets passed by systemd.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use crate::common::{cache_dir, client, fixture, metrics_url, raw_exchange, uwsgi_get, wsgi_wasm, Server};

#[test]
fn r19_metrics_count_known_traffic_exactly_per_app() {
    // Issue 19.
    let server = Server::start(
        fixture(),
        &["--metrics", "127.0.0.1:0", "--timeout", "2", "--memory", "64", "--max-body-bytes", "1000"],
    );
    let url = metrics_url(&server);
    let c = client();
    // Two that succeed, one timeout, one memory bomb, one 404, one body
    // over --max-body-bytes.
    for path in ["/list", "/list"] {
        assert_eq!(c.get(server.url(path)).send().unwrap().status(), 200);
    }
    assert_eq!(c.get(server.url("/sleep?s=30")).send().unwrap().status(), 504);
    assert_eq!(c.get(server.url("/alloc-forever")).send().unwrap().status(), 500);
    assert_eq!(c.get(server.url("/nope")).send().unwrap().status(), 404);
    assert_eq!(c.post(server.url("/echo")).body(vec![b'x'; 2000]).send().unwrap().status(), 413);
    // The access line (and the counters with it) is written once each
    // request is over: wait for the last one's.
    assert!(server.wait_for_log("\"GET /nope\" 404", Duration::from_secs(10)), "{}", server.log());
    let resp = c.get(&url).send().unwrap();
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = resp.text().unwrap();
    let digest = server.log().split("digest=").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    for line in [
        "wsgi_wasm_requests_total{app=\"fixture\",code=\"200\"} 2".to_owned(),
        "wsgi_wasm_requests_total{app=\"fixture\",code=\"504\"} 1".into(),
        "wsgi_wasm_requests_total{app=\"fixture\",code=\"500\"} 1".into(),
        "wsgi_wasm_requests_total{app=\"fixture\",code=\"404\"} 1".into(),
        "wsgi_wasm_requests_total{app=\"fixture\",code=\"413\"} 1".into(),
        "wsgi_wasm_limit_exceeded_total{app=\"fixture\",limit=\"timeout\"} 1".into(),
        "wsgi_wasm_limit_exceeded_total{app=\"fixture\",limit=\"memory\"} 1".into(),
        "wsgi_wasm_limit_exceeded_total{app=\"fixture\",limit=\"body\"} 1".into(),
        "wsgi_wasm_request_duration_seconds_count{app=\"fixture\"} 6".into(),
        "wsgi_wasm_instances_active{app=\"fixture\"} 0".into(),
        "wsgi_wasm_queue_depth{app=\"fixture\"} 0".into(),
        format!("wsgi_wasm_app_info{{app=\"fixture\",digest=\"{digest}\"}} 1"),
    ] {
        assert!(text.contains(&line), "{line} in\n{text}");
    }
    // Five requests reached a sandbox; the 413 did not. The timeout's
    // instance was dropped before its memory could be counted.
    assert!(text.contains("wsgi_wasm_instantiate_duration_seconds_count{app=\"fixture\"} 5"), "{text}");
    assert!(text.contains("wsgi_wasm_request_memory_bytes_count{app=\"fixture\"} 4"), "{text}");
    assert!(!text.contains("guest_errors_total{app=\"fixture\",kind=\"exception\"}"), "{text}");
    // A crash and an exception, by kind.
    assert_eq!(c.get(server.url("/raise-before")).send().unwrap().status(), 500);
    assert_eq!(c.get(server.url("/exit")).send().unwrap().status(), 500);
    assert!(server.wait_for_log("\"GET /exit\" 500", Duration::from_secs(10)));
    let text = c.get(&url).send().unwrap().text().unwrap();
    assert!(text.contains("wsgi_wasm_guest_errors_total{app=\"fixture\",kind=\"exception\"} 1"), "{text}");
    assert!(text.contains("wsgi_wasm_guest_errors_total{app=\"fixture\",kind=\"exit\"} 1"), "{text}");
    // The metrics listener is its own: the app's port has no /metrics.
    assert_eq!(c.get(server.url("/metrics")).send().unwrap().status(), 404);
    assert!(text.contains("wsgi_wasm_connections_active{protocol=\"http\"}"), "{text}");
}

#[test]
fn r19_json_log_lines_parse_and_name_the_request_app_and_status() {
    // Issue 19.
    let mut server = Server::start(fixture(), &["--log-format", "json", "--memory", "64"]);
    let c = client();
    assert_eq!(c.get(server.url("/list")).send().unwrap().status(), 200);
    assert_eq!(c.post(server.url("/echo")).body("twelve bytes").send().unwrap().status(), 200);
    assert_eq!(c.get(server.url("/alloc-forever")).send().unwrap().status(), 500);
    let log = server.stop();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))).collect();
    let access: Vec<_> = lines.iter().filter(|l| l["target"] == "wsgi_wasm::access").collect();
    assert_eq!(access.len(), 3, "{log}");
    let mut ids: Vec<u64> = access.iter().map(|l| l["req_id"].as_u64().expect("req_id")).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each request has its own id: {log}");
    for (line, status) in access.iter().zip([200, 200, 500]) {
        assert_eq!(line["app"], "fixture", "{line}");
        assert_eq!(line["status"], status, "{line}");
        assert!(line["message"].as_str().unwrap().contains(&format!("\" {status} ")), "{line}");
    }
    // A request that ran to the end reports its peak linear memory.
    assert!(access[0]["peak_memory"].as_u64().unwrap() > 1 << 20, "{}", access[0]);
    assert_eq!(access[1]["bytes_in"], 12, "{}", access[1]);
    assert_eq!(access[1]["bytes_out"], 12, "{}", access[1]);
    // The memory bomb's error line names the same request as its access line.
    let error = lines.iter().find(|l| l["level"] == "ERROR").expect("an error line");
    assert_eq!(error["req_id"], access[2]["req_id"], "{log}");
}

/// Starts `wsgi-wasm run APP ARGS` as systemd does for a `.socket` unit:
/// `fds` become descriptors 3, 4, ... and `LISTEN_PID` is the server's own
/// pid (a shell sets it to `$$` and then execs the server in its place).
fn socket_activated(fds: &[i32], names: &str, args: &[&str]) -> Server {
    let inner = wsgi_wasm();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg("LISTEN_PID=$$ exec \"$@\"").arg("sh").arg(inner.get_program());
    cmd.arg("run").arg(fixture()).arg("--cache-dir").arg(cache_dir()).args(args);
    cmd.envs(inner.get_envs().filter_map(|(k, v)| Some((k, v?))));
    for (k, v) in inner.get_envs() {
        if v.is_none() {
            cmd.env_remove(k);
        }
    }
    cmd.env("LISTEN_FDNAMES", names);
    pass_fds(&mut cmd, fds);
    // Each flag here names a passed socket: one listener per socket.
    Server::spawn(cmd, fds.len())
}

/// Makes `fds` descriptors 3, 4, ... of the process `cmd` starts, and sets
/// `LISTEN_FDS`.
fn pass_fds(cmd: &mut Command, fds: &[i32]) {
    assert!(fds.len() <= 8);
    cmd.env("LISTEN_FDS", fds.len().to_string());
    let fds = fds.to_vec();
    // SAFETY: only fcntl and dup2, which are async-signal-safe, run between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // All are first copied above 100, so that no dup2 below
            // overwrites one not yet moved; dup2 clears close-on-exec.
            let mut high = [0; 8];
            for (slot, &fd) in high.iter_mut().zip(&fds) {
                *slot = libc::fcntl(fd, libc::F_DUPFD, 100);
                if *slot < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, &fd) in high[..fds.len()].iter().enumerate() {
                if libc::dup2(fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// One uwsgi request over `stream`; the whole reply.
fn uwsgi_over(mut stream: impl Read + Write) -> String {
    stream.write_all(&uwsgi_get("/list", "")).unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn r19_systemd_sockets_are_served_by_name_then_by_address_and_nothing_else_is_bound() {
    // Issue 19.
    let dir = tempfile::tempdir().unwrap();
    let web = TcpListener::bind("127.0.0.1:0").unwrap();
    let by_address = TcpListener::bind("127.0.0.1:0").unwrap();
    let sock = dir.path().join("app.sock");
    let unix = UnixListener::bind(&sock).unwrap();
    let uwsgi_flag = by_address.local_addr().unwrap().to_string();
    // As systemd names them: the unit's name by default, or
    // FileDescriptorName=uwsgi.
    let fds = [web.as_raw_fd(), by_address.as_raw_fd(), unix.as_raw_fd()];
    let mut server = socket_activated(&fds, "web.socket:web.socket:uwsgi", &["--uwsgi", &uwsgi_flag]);
    let web_addr = web.local_addr().unwrap();
    // Exactly the three it was given: no default 127.0.0.1:8000, and the
    // --uwsgi address was not bound a second time.
    let mut listening = server.listening.clone();
    listening.sort();
    let mut expected =
        vec![format!("http://{web_addr}"), format!("uwsgi://{uwsgi_flag}"), format!("uwsgi://unix:{}", sock.display())];
    expected.sort();
    assert_eq!(listening, expected, "{}", server.log());
    // The server answers on the sockets the test holds, while the test's
    // copies stay open: the same sockets, not new ones at the same address.
    let reply =
        raw_exchange(web_addr, b"GET /list HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", Duration::from_secs(30));
    assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&reply));
    let reply = uwsgi_over(TcpStream::connect(&uwsgi_flag).unwrap());
    assert!(reply.starts_with("HTTP/1.1 200") && reply.ends_with("abc\n"), "{reply}");
    let reply = uwsgi_over(UnixStream::connect(&sock).unwrap());
    assert!(reply.starts_with("HTTP/1.1 200") && reply.ends_with("abc\n"), "{reply}");
    let log = server.stop();
    assert_eq!(log.matches("listening on ").count(), 3, "{log}");
    // The socket file is systemd's: the server leaves it in place.
    assert!(sock.exists());
}

#[test]
fn r19_a_passed_descriptor_that_is_not_a_listening_socket_is_refused() {
    // Issue 19.
    // Accept=yes passes a connection, not a listener.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let conn = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let mut cmd = wsgi_wasm();
    cmd.arg("run").arg(fixture()).arg("--cache-dir").arg(cache_dir());
    cmd.stderr(std::process::Stdio::piped());
    pass_fds(&mut cmd, &[conn.as_raw_fd()]);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("descriptor 3") && stderr.contains("Accept=no"), "{stderr}");
}

#[test]
fn r20_perf_map_names_the_compiled_guest_code_of_the_running_server() {
    // Issue 20: `bench/profile.py`
    // places perf's samples in guest functions through this file.
    // Without the flag, no file. This start also compiles the fixture into
    // the cache if needed: a start that compiles lists the compiler's copy
    // too, which is dropped for the one loaded from the cache.
    let server = Server::start(fixture(), &[]);
    assert_eq!(client().get(server.url("/list")).send().unwrap().status(), 200);
    assert!(!std::path::Path::new(&format!("/tmp/perf-{}.map", server.pid())).exists());
    drop(server);

    let server = Server::start(fixture(), &["--perf-map"]);
    assert_eq!(client().get(server.url("/list")).send().unwrap().status(), 200);
    let path = format!("/tmp/perf-{}.map", server.pid());
    let map = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}\n{}", server.log()));
    let _ = std::fs::remove_file(&path);
    // "ADDRESS SIZE NAME" per function; libpython alone has thousands.
    let functions: Vec<(u64, u64)> = map
        .lines()
        .filter(|l| l.contains("::function["))
        .map(|l| {
            let mut f = l.split(' ');
            let addr = u64::from_str_radix(f.next().unwrap().trim_start_matches("0x"), 16).unwrap();
            (addr, u64::from_str_radix(f.next().unwrap(), 16).unwrap())
        })
        .collect();
    assert!(functions.len() > 1000, "{} functions in {path}", functions.len());
    // Each lies in the server's own executable mappings.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap();
    let executable: Vec<(u64, u64)> = maps
        .lines()
        .filter(|l| l.split_whitespace().nth(1).is_some_and(|p| p.contains('x')))
        .filter_map(|l| l.split_whitespace().next()?.split_once('-'))
        .map(|(a, b)| (u64::from_str_radix(a, 16).unwrap(), u64::from_str_radix(b, 16).unwrap()))
        .collect();
    for (addr, size) in functions.iter().step_by(97) {
        assert!(
            executable.iter().any(|&(lo, hi)| lo <= *addr && addr + size <= hi),
            "{addr:#x} (+{size:#x}) is in no executable mapping of the server"
        );
    }
}

/// A probe's answer: its status and body, or `None` if nothing answered.
fn probe(base: &str, path: &str) -> Option<(u16, String)> {
    let resp = reqwest::blocking::Client::new().get(format!("{base}{path}")).timeout(Duration::from_secs(5)).send();
    resp.ok().map(|r| (r.status().as_u16(), r.text().unwrap()))
}

#[test]
fn r33_the_probes_say_starting_ready_draining_and_then_nothing_answers() {
    // Issue 33. A cache of its own: the app is compiled at this start, which
    // takes seconds, during which the server is alive and not ready.
    let cache = tempfile::tempdir().unwrap();
    let port = crate::common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let prober = {
        let (base, watching) = (base.clone(), std::sync::Arc::clone(&watching));
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                if let (Some(alive), Some(ready)) = (probe(&base, "/healthz"), probe(&base, "/readyz")) {
                    if seen.last() != Some(&(alive.clone(), ready.clone())) {
                        seen.push((alive, ready));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        })
    };
    let mut cmd = wsgi_wasm();
    cmd.arg("run").arg(fixture()).args(["--http", "127.0.0.1:0", "--metrics", &format!("127.0.0.1:{port}")]);
    cmd.arg("--cache-dir").arg(cache.path());
    let mut server = Server::spawn(cmd, 1);
    let ready = std::time::Instant::now();
    while probe(&base, "/readyz").map(|(status, _)| status) != Some(200) {
        assert!(ready.elapsed() < Duration::from_secs(10), "never ready: {}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let seen = prober.join().unwrap();
    let ok = |body: &str| (200, body.to_owned());
    assert_eq!(seen.first(), Some(&(ok("ok\n"), (503, "starting: loading the apps\n".to_owned()))), "{seen:?}");
    assert!(server.log().contains("compiling"), "the app was compiled at this start: {}", server.log());
    // The app's own paths are the app's: no probe there.
    assert_eq!(client().get(server.url("/healthz")).send().unwrap().status(), 404);
    assert_eq!(probe(&base, "/nothing").map(|(status, _)| status), Some(404));

    // A request in flight when SIGTERM comes: not ready from then on, still
    // alive until the request is done and the process is gone.
    let url = server.url("/sleep?s=2");
    let inflight = std::thread::spawn(move || client().get(url).send().unwrap());
    assert!(server.wait_for_log("sleep started", Duration::from_secs(30)), "{}", server.log());
    server.terminate();
    let draining = std::time::Instant::now();
    while probe(&base, "/readyz") != Some((503, "draining: shutting down\n".into())) {
        assert!(draining.elapsed() < Duration::from_secs(1), "not draining: {}", server.log());
    }
    assert_eq!(probe(&base, "/healthz"), Some(ok("ok\n")));
    let resp = inflight.join().unwrap();
    assert_eq!(resp.status(), 200);
    assert!(server.wait(Duration::from_secs(20)).expect("the server did not exit").success());
    assert_eq!(probe(&base, "/healthz"), None, "something answers after the exit");
}

#[test]
fn r33_check_accepts_a_good_app_and_a_config_and_names_what_is_wrong() {
    // Issue 33 (the refusals of crafted files are checked with `run`'s in
    // `common::refused_run`, for every file the other tests refuse).
    let out = wsgi_wasm().arg("check").arg(fixture()).arg("--cache-dir").arg(cache_dir()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("ok: fixture ("),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture(), dir.path().join("good.wasm")).unwrap();
    std::fs::write(dir.path().join("bad.wasm"), b"not wasm at all").unwrap();
    let config = dir.path().join("apps.toml");
    let check = |toml: &str| {
        std::fs::write(&config, toml).unwrap();
        let out = wsgi_wasm().arg("check").arg("--config").arg(&config).arg("--cache-dir").arg(cache_dir()).output();
        let out = out.unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (passed, stdout, _) =
        check("[apps.a]\nwasm = \"good.wasm\"\nprefix = \"/a\"\n[apps.b]\nwasm = \"good.wasm\"\nprefix = \"/b\"\n");
    assert!(passed && stdout.lines().count() == 2, "{stdout}");
    let (passed, _, stderr) = check("[apps.a]\nwasm = \"good.wasm\"\nprefix = \"/a\"\n[apps.b]\nwasm = \"bad.wasm\"\n");
    assert!(!passed && stderr.contains("[apps.b]") && stderr.contains("not a wsgi-wasm app"), "{stderr}");
    let (passed, _, stderr) = check("[apps.a]\nwasm = \"good.wasm\"\nmemory = 3\n");
    assert!(!passed && stderr.contains("[apps.a] memory 3: must be between 16 and 65536 MiB"), "{stderr}");
    // The apps directory's files are checked too, though `run` would
    // refuse a bad one alone and start.
    std::fs::create_dir(dir.path().join("apps.d")).unwrap();
    std::fs::write(dir.path().join("apps.d/c.toml"), "wasm = \"../good.wasm\"\nhosts = [\"c.test\"]\n").unwrap();
    let (passed, stdout, stderr) = check("[server]\napps_dir = \"apps.d\"\n[apps.a]\nwasm = \"good.wasm\"\n");
    assert!(passed && stdout.contains("ok: a (") && stdout.contains("ok: c ("), "{stdout}{stderr}");
    std::fs::write(dir.path().join("apps.d/d.toml"), "wasm = \"../bad.wasm\"\n").unwrap();
    let (passed, _, stderr) = check("[server]\napps_dir = \"apps.d\"\n[apps.a]\nwasm = \"good.wasm\"\n");
    assert!(!passed && stderr.contains("d.toml") && stderr.contains("not a wsgi-wasm app"), "{stderr}");
}
