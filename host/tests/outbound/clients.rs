//! The common pure-Python clients, unchanged, in the sandbox (issue 18):
//! pg8000 against PostgreSQL, redis-py against Redis, PyMySQL against
//! MariaDB, and what of CPython's `socket` module works. The app is
//! `tests/apps/clients.py`; the servers are real (see `servers`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use super::servers::{MariaDb, Postgres, Redis, DATABASE, PASSWORD, USER};
use super::HttpServer;
use crate::common::{build_component, client, json, repo, Server};

/// `tests/apps/clients.py` with pg8000, redis-py and PyMySQL, built once.
pub fn clients() -> &'static Path {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| {
        let apps = repo().join("tests/apps");
        build_component(
            &apps,
            "clients:app",
            Some(&apps.join("clients-requirements.txt")),
            &Path::new(env!("CARGO_TARGET_TMPDIR")).join("apps/clients.wasm"),
        )
    })
}

/// What `route?query` answered: `Ok(value)` or `Err("Type: message")`.
pub fn call(server: &Server, route: &str, query: &str) -> Result<Value, String> {
    let v = json(client().get(server.url(&format!("{route}?{query}"))).send().unwrap());
    if v["ok"].as_bool().unwrap() {
        Ok(v["value"].clone())
    } else {
        Err(v["error"].as_str().unwrap().to_owned())
    }
}

pub fn login(port: u16) -> String {
    format!("host=127.0.0.1&port={port}&user={USER}&password={PASSWORD}&db={DATABASE}")
}

#[test]
fn r18_pg8000_writes_in_one_request_and_reads_back_in_the_next() {
    // Issue 18.
    let pg = Postgres::start();
    let server = Server::start(clients(), &["--allow-outbound", &format!("127.0.0.1:{}", pg.port)]);
    let at = login(pg.port);
    // Each request is a fresh sandbox: the rows live in the database. The
    // login is SCRAM-SHA-256 (scramp, on the pure-Python PBKDF2).
    assert_eq!(call(&server, "/pg", &format!("{at}&op=write&body=first")), Ok(serde_json::json!(["first"])));
    assert_eq!(call(&server, "/pg", &format!("{at}&op=read")), Ok(serde_json::json!(["first"])));
    assert_eq!(call(&server, "/pg", &format!("{at}&op=write&body=second")), Ok(serde_json::json!(["first", "second"])));
    // Asked for TLS, pg8000 gets it, verified by the host: this server's
    // certificate is self-signed, so the session is refused.
    let err = call(&server, "/pg-tls", &at).unwrap_err();
    assert!(err.starts_with("SSLCertVerificationError"), "{err}");
    assert!(err.contains("certificate verify failed: self-signed certificate"), "{err}");
    // A wrong password is the database's refusal, not the sandbox's.
    let err = call(&server, "/pg", &format!("{at}&password=wrong&op=read")).unwrap_err();
    assert!(err.contains("password authentication failed"), "{err}");
    assert_eq!(call(&server, "/pg", &format!("{at}&op=read")), Ok(serde_json::json!(["first", "second"])));
}

#[test]
fn r18_redis_py_counts_across_requests() {
    // Issue 18.
    let redis = Redis::start();
    let server = Server::start(clients(), &["--allow-outbound", &format!("127.0.0.1:{}", redis.port)]);
    let at = format!("host=127.0.0.1&port={}&key=hits", redis.port);
    for n in 1..=3 {
        assert_eq!(call(&server, "/redis", &at), Ok(serde_json::json!(n)));
    }
    assert_eq!(redis.get("hits"), "$1\r\n3\r\n");
    // Another port of the same host is not granted.
    let err = call(&server, "/redis", &format!("host=127.0.0.1&port={}", redis.port + 1)).unwrap_err();
    assert!(err.contains("--allow-outbound 127.0.0.1:"), "{err}");
    assert_eq!(call(&server, "/redis", &at), Ok(serde_json::json!(4)));
}

#[test]
fn r18_pymysql_writes_in_one_request_and_reads_back_in_the_next() {
    // Issue 18.
    let db = MariaDb::start();
    let server = Server::start(clients(), &["--allow-outbound", &format!("127.0.0.1:{}", db.port)]);
    let at = login(db.port);
    assert_eq!(call(&server, "/mysql", &format!("{at}&op=write&body=first")), Ok(serde_json::json!(["first"])));
    assert_eq!(call(&server, "/mysql", &format!("{at}&op=read")), Ok(serde_json::json!(["first"])));
}

#[test]
fn r18_the_socket_module_connects_sends_reads_and_times_out_and_nothing_else() {
    // Issue 18.
    let peer = HttpServer::start();
    // Accepts (in the kernel's backlog) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let grants = [format!("127.0.0.1:{}", peer.port), format!("127.0.0.1:{silent_port}")];
    let server = Server::start(clients(), &["--allow-outbound", &grants[0], "--allow-outbound", &grants[1]]);
    let v = call(&server, "/socket", &format!("host=127.0.0.1&port={}&silent={silent_port}", peer.port)).unwrap();
    assert_eq!(v["getaddrinfo"]["value"], serde_json::json!(["127.0.0.1"]), "{v}");
    // create_connection, a sendall of 200 kB, a one-byte read, makefile.
    let exchange = &v["exchange"]["value"];
    assert_eq!(exchange["status"], "HTTP/1.0 200 OK", "{v}");
    assert!(exchange["rest_bytes"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(exchange["timeout"], 5.0, "{v}");
    // A read past its timeout raises TimeoutError when it runs out.
    let waited = v["timeout"]["value"].as_f64().unwrap();
    assert!((0.4..3.0).contains(&waited), "{v}");
    // No UDP and no listening socket, each refused with a reason (a bind
    // to any address's any port is what a connect does implicitly, and is
    // allowed; listening on it is not).
    let no_udp = "wsgi-wasm: a sandbox has no UDP; a grant is for TCP connections only";
    let no_listening = "wsgi-wasm: a sandbox cannot listen for connections";
    for (key, reason) in [("udp", no_udp), ("listen", no_listening), ("listen_any", no_listening)] {
        let err = v[key]["error"].as_str().unwrap_or_default();
        assert!(err.starts_with("PermissionError") && err.ends_with(reason), "{key}: {v}");
    }
    assert!(server.wait_for_log("refused a bind: a sandbox cannot listen", Duration::from_secs(5)), "{}", server.log());
}

#[test]
fn r18_sockets_bound_and_never_connected_count_against_the_cap() {
    // Issue 18.
    // Each takes one of the host's ports: no more than
    // --max-outbound-connections of them, per request.
    let server = Server::start(clients(), &["--allow-outbound", "127.0.0.1:1", "--max-outbound-connections", "3"]);
    for _ in 0..2 {
        assert_eq!(call(&server, "/binds", "n=10"), Ok(serde_json::json!(3)));
    }
    assert!(server.wait_for_log("past --max-outbound-connections 3", Duration::from_secs(5)), "{}", server.log());
}
