//! One test for each promise of the README that no other test kept
//! (issue 22): listeners, environment variables, the examples, signals,
//! request ids in the log, timeouts midway, queueing and the connection cap.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{
    cache_dir, client, fixture, json, raw_reply, read_reply, refused_run, repo, uwsgi_get, wsgi_wasm, End, Server,
};

#[test]
fn the_listeners_are_the_ones_the_flags_ask_for() {
    // No --http and no --uwsgi: HTTP on 127.0.0.1:8000 (skipped, loudly,
    // when something else already holds that port).
    if std::net::TcpListener::bind("127.0.0.1:8000").is_ok() {
        let server = Server::start_with(fixture(), &[]);
        assert_eq!(server.listening, ["http://127.0.0.1:8000"]);
        assert_eq!(client().get("http://127.0.0.1:8000/list").send().unwrap().text().unwrap(), "abc\n");
    } else {
        eprintln!("127.0.0.1:8000 is taken; the default listener is not checked");
    }
    // Two --http: both serve.
    let two = Server::start_with(fixture(), &["--http", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
    assert_eq!(two.listening.len(), 2, "{:?}", two.listening);
    for l in &two.listening {
        assert_eq!(client().get(format!("{l}/list")).send().unwrap().text().unwrap(), "abc\n");
    }
    // --http with --uwsgi: both.
    let mixed = Server::start_with(fixture(), &["--http", "127.0.0.1:0", "--uwsgi", "127.0.0.1:0"]);
    assert_eq!(client().get(mixed.url("/list")).send().unwrap().text().unwrap(), "abc\n");
    let mut uwsgi = TcpStream::connect(mixed.uwsgi_addr()).unwrap();
    uwsgi.write_all(&uwsgi_get("/list", "")).unwrap();
    let (reply, _) = read_reply(&mut uwsgi, Duration::from_secs(30));
    assert!(String::from_utf8_lossy(&reply).ends_with("\r\n\r\nabc\n"));
    // Only --uwsgi: no HTTP listener at all.
    let only = Server::start_with(fixture(), &["--uwsgi", "127.0.0.1:0"]);
    assert_eq!(only.listening.len(), 1);
    assert!(only.listening[0].starts_with("uwsgi://"), "{:?}", only.listening);
}

#[test]
fn a_uwsgi_socket_gets_the_mode_asked_for() {
    use std::os::unix::fs::PermissionsExt;
    let sock = Path::new(env!("CARGO_TARGET_TMPDIR")).join("uwsgi-mode.sock");
    let _ = std::fs::remove_file(&sock);
    let spec = format!("unix:{}", sock.display());
    let _server = Server::start_with(fixture(), &["--uwsgi", &spec, "--uwsgi-mode", "604"]);
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o604);
    let stderr = refused_run(fixture(), &["--uwsgi", "unix:/tmp/x.sock", "--uwsgi-mode", "999"]);
    assert!(stderr.contains("--uwsgi-mode 999"), "{stderr}");
}

#[test]
fn the_environment_variables_stand_in_for_their_flags() {
    let run = |env: &[(&str, &str)]| {
        let mut cmd = wsgi_wasm();
        cmd.arg("run").arg(fixture()).args(["--http", "127.0.0.1:0"]).envs(env.iter().copied());
        cmd
    };
    // WSGI_WASM_CACHE_DIR instead of --cache-dir, WSGI_WASM_TIMEOUT instead of --timeout.
    let cache = cache_dir().display().to_string();
    let server = Server::spawn(run(&[("WSGI_WASM_CACHE_DIR", &cache), ("WSGI_WASM_TIMEOUT", "1")]), 1);
    assert!(server.log().contains("loaded compiled code from the cache"), "{}", server.log());
    let started = Instant::now();
    assert_eq!(client().get(server.url("/sleep?s=30")).send().unwrap().status(), 504);
    assert!(started.elapsed() < Duration::from_secs(10));
    // WSGI_WASM_MEMORY and WSGI_WASM_MAX_INSTANCES are checked like their flags.
    for (var, value, expected) in
        [("WSGI_WASM_MEMORY", "16", "raise --memory"), ("WSGI_WASM_MAX_INSTANCES", "0", "--max-instances 0")]
    {
        let out = run(&[("WSGI_WASM_CACHE_DIR", &cache), (var, value)]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{var}={value}: {stderr}");
    }
    // WSGI_WASM_LOG sets the filter: warnings only but for the listeners,
    // so no access line.
    let filter = "warn,wsgi_wasm::server=info";
    let mut quiet = Server::spawn(run(&[("WSGI_WASM_CACHE_DIR", &cache), ("WSGI_WASM_LOG", filter)]), 1);
    assert_eq!(client().get(quiet.url("/list")).send().unwrap().status(), 200);
    let log = quiet.stop();
    assert!(!log.contains("wsgi_wasm::access"), "{log}");
}

#[test]
fn print_and_wsgi_errors_carry_their_own_request_id() {
    let mut server = Server::start(fixture(), &[]);
    for x in 0..3 {
        assert_eq!(client().get(server.url(&format!("/log?x={x}"))).send().unwrap().status(), 200);
    }
    let log = server.stop();
    for x in 0..3 {
        let access = log.lines().find(|l| l.contains(&format!("\"GET /log?x={x}\""))).unwrap();
        let id = access.split("req_id=").nth(1).unwrap().split_whitespace().next().unwrap();
        let printed = log.lines().find(|l| l.contains(&format!("hello from print() in request x={x}"))).unwrap();
        assert!(printed.contains(&format!("req_id={id} ")), "{printed} (the access line has {id})");
        let errors: Vec<_> = log
            .lines()
            .filter(|l| l.contains(&format!("req_id={id} ")) && l.contains("stream=\"wsgi.errors\""))
            .collect();
        assert_eq!(errors.len(), 1, "{log}");
        assert!(errors[0].contains("a line for wsgi.errors"), "{}", errors[0]);
    }
}

#[test]
fn sys_exit_is_a_500() {
    let server = Server::start(fixture(), &[]);
    let resp = client().get(server.url("/sys-exit")).send().unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.text().unwrap(), "500 Internal Server Error\n");
    assert!(server.wait_for_log("SystemExit", Duration::from_secs(5)), "{}", server.log());
}

#[test]
fn a_timeout_after_the_headers_resets_and_one_during_a_body_read_is_a_504() {
    let server = Server::start(fixture(), &["--timeout", "2", "--body-timeout", "30"]);
    // Streaming for 10 s against a 2 s deadline: the head and the first
    // chunks, then a reset, never the chunked terminator.
    let (reply, end) = raw_reply(
        server.addr,
        b"GET /stream?n=20&delay=0.5 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("chunk 0"), "{text}");
    assert!(!text.ends_with("0\r\n\r\n"), "{text:?}");
    assert_eq!(end, End::Reset, "{text:?}");
    // 10 of 100 bytes, then silence, well within --body-timeout.
    let started = Instant::now();
    let (reply, _) = raw_reply(
        server.addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789",
        Duration::from_secs(30),
    );
    assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 504"), "{}", String::from_utf8_lossy(&reply));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn below_the_queue_timeout_a_queued_request_is_served() {
    let server = Server::start(fixture(), &["--max-instances", "1", "--queue-timeout", "20"]);
    let url = server.url("/sleep?s=1");
    let busy = std::thread::spawn(move || client().get(url).send().unwrap().status());
    assert!(server.wait_for_log("sleep started", Duration::from_secs(30)), "{}", server.log());
    let started = Instant::now();
    assert_eq!(json(client().get(server.url("/counter")).send().unwrap())["counter"], 1);
    // It waited for the one slot, then ran in it.
    assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
    assert_eq!(busy.join().unwrap(), 200);
}

#[test]
fn past_max_connections_a_client_waits_for_a_free_one() {
    let server = Server::start(fixture(), &["--max-connections", "2"]);
    // Two kept-alive connections hold both permits.
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.write_all(b"GET /list HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            s
        })
        .collect();
    // A third is accepted by the kernel but not served...
    let mut third = TcpStream::connect(server.addr).unwrap();
    third.write_all(b"GET /list HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let (early, end) = read_reply(&mut third, Duration::from_secs(1));
    assert!(early.is_empty() && end == End::Timeout, "served past the cap: {:?}", String::from_utf8_lossy(&early));
    // ...until one of the others closes.
    drop(held.pop());
    let (reply, end) = read_reply(&mut third, Duration::from_secs(30));
    assert!(reply.starts_with(b"HTTP/1.1 200") && end == End::Eof, "{:?}", String::from_utf8_lossy(&reply));
}

#[test]
fn the_shutdown_timeout_runs_out_and_a_second_signal_exits_at_once() {
    let mut server = Server::start(fixture(), &["--shutdown-timeout", "1"]);
    let url = server.url("/sleep?s=30");
    let _inflight = std::thread::spawn(move || client().get(url).send());
    assert!(server.wait_for_log("sleep started", Duration::from_secs(30)), "{}", server.log());
    let started = Instant::now();
    server.terminate();
    assert!(server.wait(Duration::from_secs(20)).is_some(), "no exit after the shutdown timeout");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert!(server.log().contains("shutdown timeout of 1s passed"), "{}", server.log());

    let mut server = Server::start(fixture(), &["--shutdown-timeout", "60"]);
    let url = server.url("/sleep?s=30");
    let _inflight = std::thread::spawn(move || client().get(url).send());
    assert!(server.wait_for_log("sleep started", Duration::from_secs(30)), "{}", server.log());
    let started = Instant::now();
    server.terminate();
    assert!(server.wait_for_log("signal again to exit now", Duration::from_secs(5)), "{}", server.log());
    server.terminate();
    let status = server.wait(Duration::from_secs(10)).expect("a second signal did not exit");
    assert_eq!(status.code(), Some(130), "{status}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

#[test]
fn each_example_builds_with_its_build_sh_and_answers() {
    for (name, path, expected) in
        [("hello", "/greet", "Hello from a fresh sandbox! You asked for /greet\n"), ("streaming", "/", "done\n")]
    {
        let dir = repo().join("examples").join(name);
        let out = std::process::Command::new("bash")
            .arg(dir.join("build.sh"))
            .env("WSGI_WASM", crate::common::BIN)
            .env("WSGI_WASM_CACHE_DIR", cache_dir())
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let server = Server::start(&dir.join("app.wasm"), &[]);
        let body = client().get(server.url(path)).send().unwrap().text().unwrap();
        assert!(body.ends_with(expected), "{name}: {body}");
    }
}

#[test]
fn the_hosting_many_apps_config_in_the_readme_runs_as_written() {
    // The README's `[apps]` example, with the fixture as both apps' wasm and
    // the listeners given on the command line (which override `[server]`).
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme.split("## Hosting many apps").nth(1).unwrap();
    let toml = section.split("```toml\n").nth(1).unwrap().split("```").next().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("apps")).unwrap();
    std::fs::create_dir_all(dir.path().join("data/shop")).unwrap();
    for app in ["shop", "blog"] {
        std::fs::copy(fixture(), dir.path().join(format!("apps/{app}.wasm"))).unwrap();
    }
    let config = dir.path().join("wsgi-wasm.toml");
    std::fs::write(&config, toml).unwrap();
    let sock = dir.path().join("x.sock");
    let mut cmd = wsgi_wasm();
    cmd.arg("run").arg("--config").arg(&config).arg("--cache-dir").arg(cache_dir());
    cmd.args(["--http", "127.0.0.1:0", "--uwsgi"]).arg(format!("unix:{}", sock.display()));
    let server = Server::spawn(cmd, 2);
    let get = |host: &str, path: &str| {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let (reply, _) = raw_reply(server.addr, request.as_bytes(), Duration::from_secs(30));
        String::from_utf8_lossy(&reply).into_owned()
    };
    let shop = get("www.shop.example.com", "/environ");
    assert!(shop.starts_with("HTTP/1.1 200") && shop.contains("\"SCRIPT_NAME\": \"\""), "{shop}");
    let blog = get("example.com", "/blog/environ");
    assert!(blog.contains("\"SCRIPT_NAME\": \"/blog\"") && blog.contains("\"PATH_INFO\": \"/environ\""), "{blog}");
    assert!(get("example.com", "/").starts_with("HTTP/1.1 404"));
    // shop's env and mount are its own.
    let caps = get("shop.example.com", "/capabilities");
    assert!(caps.contains("\"SHOP_MODE\": \"prod\""), "{caps}");
}
