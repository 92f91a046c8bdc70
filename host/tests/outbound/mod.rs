//! Outbound network grants (issue 18): a sandbox reaches what
//! `--allow-outbound` grants, over wasi:sockets, and nothing else.
//!
//! The peer is a plain HTTP server this test starts on 127.0.0.1 (Python's
//! `http.server`, in a directory of its own); the app fetches from it with
//! `urllib.request`.

mod clients;
mod servers;
mod tls;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{client, fixture, json, KillOnDrop, Server};

/// `python3 -m http.server` on a free loopback port, serving one file.
struct HttpServer {
    _child: KillOnDrop,
    port: u16,
    _dir: tempfile::TempDir,
}

impl HttpServer {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "hello from the peer\n").unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "http.server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { _child: KillOnDrop(child), port, _dir: dir }
    }
}

/// What `/fetch?QUERY` got: `Ok(body)` or `Err("Type: message")`.
fn fetch(server: &Server, query: &str) -> Result<String, String> {
    let v = json(client().get(server.url(&format!("/fetch?{query}"))).send().unwrap());
    let r = &v["result"];
    if r["ok"].as_bool().unwrap() {
        Ok(r["value"].as_str().unwrap().to_owned())
    } else {
        Err(r["error"].as_str().unwrap().to_owned())
    }
}

#[test]
fn r18_a_granted_address_is_reached_and_everything_else_is_refused() {
    // Issue 18.
    let peer = HttpServer::start();
    let other = HttpServer::start();
    let grant = format!("127.0.0.1:{}", peer.port);
    let server = Server::start(fixture(), &["--allow-outbound", &grant]);
    // urllib.request, over a connection the grant allows.
    assert_eq!(fetch(&server, &format!("host=127.0.0.1&port={}", peer.port)), Ok("hello from the peer\n".into()));
    // Another port of the same host; other loopback addresses, plain and
    // IPv4-mapped, each with a listener that must see nothing arrive. (The
    // metadata address and the private ranges are the classifier's unit
    // tests: a test sends nothing past loopback, even to be refused.)
    let silent: Vec<TcpListener> =
        ["127.0.0.2:0", "127.0.0.3:0"].iter().map(|a| TcpListener::bind(a).unwrap()).collect();
    for listener in &silent {
        listener.set_nonblocking(true).unwrap();
    }
    let port_of = |i: usize| silent[i].local_addr().unwrap().port();
    for query in [
        format!("host=127.0.0.1&port={}", other.port),
        format!("host=127.0.0.2&port={}", port_of(0)),
        format!("url=http://[::ffff:127.0.0.3]:{}/", port_of(1)),
    ] {
        let err = fetch(&server, &query).unwrap_err();
        assert!(err.starts_with("URLError"), "{query}: {err}");
    }
    for listener in &silent {
        let accepted = listener.accept();
        assert!(
            matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a refused connection arrived: {accepted:?}"
        );
    }
    assert!(server.wait_for_log("refused an outbound connection", Duration::from_secs(5)), "{}", server.log());
    // A name no grant names is not even looked up.
    let err = fetch(&server, &format!("host=localhost&port={}", peer.port)).unwrap_err();
    assert!(err.starts_with("URLError"), "{err}");
    let refused = "refused a DNS lookup: no --allow-outbound grant names localhost";
    assert!(server.wait_for_log(refused, Duration::from_secs(5)), "{}", server.log());
    // Every refusal is logged with its request's id.
    let log = server.log();
    assert!(log.lines().filter(|l| l.contains("refused a")).all(|l| l.contains("req_id=")), "{log}");
    // The other peer was never reached.
    assert_eq!(fetch(&server, &format!("host=127.0.0.1&port={}", peer.port)), Ok("hello from the peer\n".into()));
}

#[test]
fn r18_a_granted_name_resolves_but_loopback_needs_its_own_grant() {
    // Issue 18.
    let peer = HttpServer::start();
    let name_only = format!("localhost:{}", peer.port);
    let server = Server::start(fixture(), &["--allow-outbound", &name_only]);
    // localhost resolves, but to loopback, which no address grant names.
    let err = fetch(&server, &format!("host=localhost&port={}", peer.port)).unwrap_err();
    assert!(err.starts_with("URLError"), "{err}");
    assert!(server.wait_for_log("refused an outbound connection", Duration::from_secs(5)), "{}", server.log());
    drop(server);
    let both = format!("127.0.0.1:{}", peer.port);
    let server = Server::start(fixture(), &["--allow-outbound", &name_only, "--allow-outbound", &both]);
    assert_eq!(fetch(&server, &format!("host=localhost&port={}", peer.port)), Ok("hello from the peer\n".into()));
}

#[test]
fn r18_without_a_grant_there_is_no_network_and_a_bad_grant_is_refused() {
    // Issue 18.
    let peer = HttpServer::start();
    let server = Server::start(fixture(), &[]);
    let err = fetch(&server, &format!("host=127.0.0.1&port={}", peer.port)).unwrap_err();
    assert!(err.starts_with("URLError"), "{err}");
    for bad in ["db", "db:0", "10.0.0.0/40:1"] {
        let stderr = crate::common::refused_run(fixture(), &["--allow-outbound", bad]);
        assert!(stderr.contains(&format!("--allow-outbound {bad}")), "{stderr}");
    }
}

#[test]
fn r18_the_network_is_off_while_an_app_is_built_and_on_for_its_requests() {
    // Issue 18.
    // A connection tried at build time would leave the guest's libc with a
    // network handle no request has (every request's first socket call then
    // trapped): the build refuses it with a clear error instead.
    let apps = crate::common::repo().join("tests/apps");
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let wasm = crate::common::build_component(&apps, "net_at_import:app", None, &tmp.join("apps/net-at-import.wasm"));
    let peer = HttpServer::start();
    let grant = format!("127.0.0.1:{}", peer.port);
    let server = Server::start(&wasm, &["--allow-outbound", &grant]);
    let v = json(client().get(server.url(&format!("/?port={}", peer.port))).send().unwrap());
    assert!(v["at_import"].as_str().unwrap().contains("no network while the app is built"), "{v}");
    assert_eq!(v["fetched"], "hello from the peer\n", "{v}");
    // Uncaught, it fails the build, saying why.
    let out = tmp.join("apps/net-at-import-strict.wasm");
    let build = crate::common::build_cmd(
        &["net_at_import_strict:app", "--path", apps.to_str().unwrap(), "-o", out.to_str().unwrap()],
        &crate::common::repo(),
    );
    let stderr = String::from_utf8_lossy(&build.stderr);
    assert!(!build.status.success(), "{stderr}");
    assert!(stderr.contains("no network while the app is built"), "{stderr}");
}

#[test]
fn r18_a_refusal_names_the_missing_grant_in_the_apps_exception() {
    // Issue 18.
    let peer = HttpServer::start();
    let server = Server::start(fixture(), &["--allow-outbound", "10.0.0.1:80"]);
    let err = fetch(&server, &format!("host=127.0.0.1&port={}", peer.port)).unwrap_err();
    let grant = format!("--allow-outbound 127.0.0.1:{}", peer.port);
    assert!(err.contains("PermissionError") || err.contains("not granted"), "{err}");
    assert!(err.contains(&grant), "{err}");
    let err = fetch(&server, "host=db.internal&port=5432").unwrap_err();
    assert!(
        err.contains("looking up 'db.internal' is not granted") && err.contains("--allow-outbound db.internal:5432"),
        "{err}"
    );
}

#[test]
fn r18_a_request_opens_at_most_max_outbound_connections() {
    // Issue 18.
    let peer = HttpServer::start();
    let grant = format!("127.0.0.1:{}", peer.port);
    let server = Server::start(fixture(), &["--allow-outbound", &grant, "--max-outbound-connections", "3"]);
    let url = server.url(&format!("/fetch?host=127.0.0.1&port={}&times=5", peer.port));
    let v = json(client().get(&url).send().unwrap());
    assert_eq!(v["ok"], 3, "{v}");
    assert!(server.wait_for_log("past --max-outbound-connections 3", Duration::from_secs(5)), "{}", server.log());
    // The cap is per request: the next one opens its own three.
    assert_eq!(json(client().get(&url).send().unwrap())["ok"], 3);
}
