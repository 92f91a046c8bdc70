//! Tenants must not hurt each other (issue 31): through deploys (a broken
//! upload holds up nobody else's), the Host header and the path (they
//! route, so they decide the tenant), or the log (no tenant can forge a
//! line of another's).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{metrics_url, raw_text, uwsgi_packet, Server};
use crate::tenants::{deploy, fixture_apps, fixture_v2, version, Config};

/// Sends `SIGHUP` to the server.
fn hup(server: &Server) {
    assert!(Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().unwrap().success());
}

/// Waits until `check` holds, for at most 30 s.
fn eventually(what: &str, server: &Server, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: {}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn r31_a_broken_upload_holds_up_no_other_tenants_deploy() {
    // Issue 31.
    let config = Config::new(&fixture_apps("", &[("a", "wasm = \"a.wasm\""), ("b", "wasm = \"b.wasm\"")]));
    let dir = config.dir.path();
    for name in ["a.wasm", "b.wasm"] {
        std::fs::copy(crate::common::fixture(), dir.join(name)).unwrap();
    }
    // Compiled once now, so that each deploy below loads from the cache.
    let v2 = fixture_v2();
    let server = config.serve(&["--metrics", "127.0.0.1:0"]);
    assert_eq!((version(&server, "a.test"), version(&server, "b.test")), (Ok(1), Ok(1)));

    // Tenant a uploads garbage; tenant b then deploys a new version.
    std::fs::write(dir.join("junk"), b"\0asm\x0d\0\x01\0 truncated garbage").unwrap();
    deploy(&dir.join("junk"), &dir.join("a.wasm"));
    assert!(server.wait_for_log("reload failed; still serving its last good version", Duration::from_secs(10)));
    deploy(v2, &dir.join("b.wasm"));
    eventually("b's new version never served", &server, || version(&server, "b.test") == Ok(5));
    assert_eq!(version(&server, "a.test"), Ok(1), "a keeps its last good version");
    // a's failure is logged once, not on every tick, and counted.
    std::thread::sleep(Duration::from_millis(2500));
    let log = server.log();
    assert_eq!(log.matches("reload failed; still serving its last good version").count(), 1, "{log}");
    let metrics = crate::common::client().get(metrics_url(&server)).send().unwrap().text().unwrap();
    assert!(metrics.contains("wsgi_wasm_reloads_total{app=\"a\",result=\"error\"} 1"), "{metrics}");
    assert!(metrics.contains("wsgi_wasm_reloads_total{app=\"b\",result=\"ok\"} 1"), "{metrics}");

    // A SIGHUP that adds c applies, beside the broken a.
    let with_c =
        fixture_apps("", &[("a", "wasm = \"a.wasm\""), ("b", "wasm = \"b.wasm\""), ("c", "env = { TENANT = \"c\" }")]);
    std::fs::write(config.path(), with_c).unwrap();
    hup(&server);
    eventually("c was not added", &server, || crate::tenants::get(&server, "c.test", "/counter").0 == 200);
    assert_eq!((version(&server, "a.test"), version(&server, "b.test")), (Ok(1), Ok(5)));

    // A wasm that is a FIFO, or /dev/zero, is refused by name, never read.
    let fifo = dir.join("fifo.wasm");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let with_specials = fixture_apps(
        "",
        &[
            ("a", "wasm = \"a.wasm\""),
            ("b", "wasm = \"b.wasm\""),
            ("c", "env = { TENANT = \"c\" }"),
            ("f", "wasm = \"fifo.wasm\""),
            ("z", "wasm = \"/dev/zero\""),
        ],
    );
    std::fs::write(config.path(), with_specials).unwrap();
    hup(&server);
    eventually("the FIFO and /dev/zero were not refused", &server, || {
        let log = server.log();
        log.contains("fifo.wasm is not a regular file") && log.contains("/dev/zero is not a regular file")
    });
    eventually("the reload did not finish", &server, || server.log().matches("reloaded: serving 3 apps").count() == 2);
    assert_eq!(version(&server, "b.test"), Ok(5));
}

#[test]
fn r31_a_host_routes_only_when_it_is_one_valid_host() {
    // Issue 31: RFC 9112 §3.2 and RFC 3986's host [":" port].
    let config = Config::new(&fixture_apps(
        "",
        &[("a", "env = { TENANT = \"a\" }"), ("b", "hosts = [\"*.b.test\"]\nenv = { TENANT = \"b\" }")],
    ));
    let catch_all = "[apps.any]\nwasm = \"fixture.wasm\"\nenv = { TENANT = \"any\" }\n";
    std::fs::write(config.path(), format!("{}\n{catch_all}", std::fs::read_to_string(config.path()).unwrap())).unwrap();
    let server = config.serve(&[]);
    let ask = |head: &str| raw_text(server.addr, format!("{head}\r\nConnection: close\r\n\r\n").as_bytes());
    // Refused with a 400 before any app: two Hosts, none on HTTP/1.1, and
    // values that are not host [":" port].
    for head in [
        "GET /whoami HTTP/1.1\r\nHost: a.test\r\nHost: x.b.test",
        "GET /whoami HTTP/1.1",
        "GET /whoami HTTP/1.1\r\nHost: evil.com/.b.test",
        "GET /whoami HTTP/1.1\r\nHost: evil@x.b.test",
        "GET /whoami HTTP/1.1\r\nHost: a.test:1:2",
        "GET /whoami HTTP/1.1\r\nHost: a test",
        "GET http://u@b.test/whoami HTTP/1.1\r\nHost: a.test",
    ] {
        let reply = ask(head);
        assert!(reply.starts_with("HTTP/1.1 400"), "{head:?}: {reply}");
    }
    assert!(!server.log().contains("\"GET /whoami\" 200"), "an app was called: {}", server.log());
    // The absolute form's authority routes, and is what the app sees.
    let body = |reply: String| -> serde_json::Value {
        assert!(reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200"), "{reply}");
        crate::common::body_json(reply.as_bytes())
    };
    let v = body(ask("GET http://x.B.test./whoami HTTP/1.1\r\nHost: a.test"));
    assert_eq!(
        (v["tenant"].as_str(), v["server_name"].as_str(), v["http_host"].as_str()),
        (Some("b"), Some("x.b.test"), Some("x.b.test"))
    );
    // The app sees the name routing used: lowercase, no trailing dot.
    let v = body(ask("GET /whoami HTTP/1.1\r\nHost: A.Test.:8080"));
    assert_eq!(
        (v["tenant"].as_str(), v["server_name"].as_str(), v["http_host"].as_str()),
        (Some("a"), Some("a.test"), Some("a.test:8080"))
    );
    // HTTP/1.0 may leave Host out: the catch-all.
    let v = body(raw_text(server.addr, b"GET /whoami HTTP/1.0\r\n\r\n"));
    assert_eq!(v["tenant"], "any");
}

#[test]
fn r31_uwsgi_hosts_follow_the_same_rules() {
    // Issue 31: over uwsgi, HTTP_HOST and SERVER_NAME as nginx sends them.
    let config = Config::new(&fixture_apps(
        "",
        &[("a", "env = { TENANT = \"a\" }"), ("b", "hosts = [\"*.b.test\"]\nenv = { TENANT = \"b\" }")],
    ));
    let server = config.serve(&["--uwsgi", "127.0.0.1:0"]);
    let ask = |vars: &[(&str, &str)]| {
        let mut vars = vars.to_vec();
        vars.extend([("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/whoami"), ("PATH_INFO", "/whoami")]);
        raw_text(server.uwsgi_addr(), &uwsgi_packet(&vars))
    };
    for bad in [
        &[("HTTP_HOST", "a.test"), ("HTTP_HOST", "x.b.test")][..],
        &[("HTTP_HOST", "evil.com/.b.test")],
        &[("HTTP_HOST", "evil@x.b.test")],
        &[("HTTP_HOST", "a.test:1:2")],
        &[("SERVER_NAME", "a test")],
    ] {
        let reply = ask(bad);
        assert!(reply.starts_with("HTTP/1.1 400"), "{bad:?}: {reply}");
    }
    let reply = ask(&[("HTTP_HOST", "X.B.Test."), ("SERVER_NAME", "_")]);
    let v = crate::common::body_json(reply.as_bytes());
    assert_eq!((v["tenant"].as_str(), v["http_host"].as_str()), (Some("b"), Some("x.b.test")), "{reply}");
}

#[test]
fn r31_prefixes_route_on_the_normalized_path() {
    // Issue 31: `..` is resolved and `%2F` decoded before a prefix is
    // matched, as nginx does before it picks a location.
    let config = Config::new(
        "[apps.root]\nwasm = \"fixture.wasm\"\nenv = { TENANT = \"root\" }\n\n\
         [apps.sub]\nwasm = \"fixture.wasm\"\nprefix = \"/sub\"\nenv = { TENANT = \"sub\" }\n",
    );
    let server = config.serve(&[]);
    let get = |target: &str| {
        raw_text(server.addr, format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
    };
    for target in ["/sub%2F..%2F..%2Fetc", "/sub/../../etc", "/%2e%2e/x"] {
        let reply = get(target);
        assert!(reply.starts_with("HTTP/1.1 400"), "{target}: {reply}");
    }
    for (target, tenant, script, path) in [
        ("/x/../sub/whoami", "sub", "/sub", "/whoami"),
        ("/sub/x/..//whoami", "sub", "/sub", "/whoami"),
        ("/sub%2Fwhoami", "sub", "/sub", "/whoami"),
        ("/sub/../whoami", "root", "", "/whoami"),
        ("//sub//whoami", "sub", "/sub", "/whoami"),
    ] {
        let v = crate::common::body_json(get(target).as_bytes());
        assert_eq!(
            (v["tenant"].as_str(), v["script_name"].as_str(), v["path_info"].as_str()),
            (Some(tenant), Some(script), Some(path)),
            "{target}"
        );
    }
}

#[test]
fn r31_a_forged_host_or_app_line_cannot_pass_for_fields_in_the_text_log() {
    // Issue 31: parsed back as logfmt, the line says what happened.
    let config = Config::new(&fixture_apps("", &[("shop", "env = { TENANT = \"shop\" }")]));
    let server = config.serve(&[]);
    // No app for this host: the 404 line quotes it.
    let reply = raw_text(server.addr, b"GET /x HTTP/1.1\r\nHost: nohost.test\r\nConnection: close\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    // An app's output with what looks like fields, a quote and a NUL.
    let reply = raw_text(
        server.addr,
        b"GET /print?x=1%22%20app%3Dother%20status%3D200%00 HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(server.wait_for_log("stream=\"stdout\"", Duration::from_secs(5)));
    let log = server.log();
    let line = log.lines().find(|l| l.contains("wsgi_wasm::guest") && l.contains("stream=\"stdout\"")).unwrap();
    let fields = logfmt(line);
    assert_eq!(
        fields.iter().filter(|(k, _)| k == "app").map(|(_, v)| v.as_str()).collect::<Vec<_>>(),
        ["shop"],
        "{line}"
    );
    assert!(!fields.iter().any(|(k, _)| k == "status"), "{line}");
    assert!(!line.contains('\0'), "{line:?}");
    let line = log.lines().find(|l| l.contains("no app is mounted")).unwrap();
    let host: Vec<_> = logfmt(line).into_iter().filter(|(k, _)| k == "host").collect();
    assert_eq!(host, [("host".to_owned(), "nohost.test".to_owned())], "{line}");
}

/// The `key=value` pairs of a text log line, as a logfmt reader finds
/// them: a bare value ends at a space, a quoted one at its closing quote.
fn logfmt(line: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        rest = rest.trim_start();
        if let Some(quoted) = rest.strip_prefix('"') {
            // A quoted run that is not a value (a message): skip it whole.
            let end = closing_quote(quoted);
            rest = &quoted[end.map_or(quoted.len(), |e| e + 1)..];
            continue;
        }
        let token_end = rest.find([' ', '"']).unwrap_or(rest.len());
        let token = &rest[..token_end];
        match token.split_once('=') {
            Some((key, value)) if value.is_empty() && rest[token_end..].starts_with('"') => {
                let quoted = &rest[token_end + 1..];
                let end = closing_quote(quoted).unwrap_or(quoted.len());
                pairs.push((key.to_owned(), quoted[..end].replace("\\\"", "\"")));
                rest = &quoted[(end + 1).min(quoted.len())..];
            }
            Some((key, value)) => {
                pairs.push((key.to_owned(), value.to_owned()));
                rest = &rest[token_end..];
            }
            None => rest = &rest[token_end..],
        }
    }
    pairs
}

/// Where an escaped-quote string's closing quote is.
fn closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i),
            _ => {}
        }
    }
    None
}

#[test]
fn r31_a_flood_of_memory_stays_within_the_budget_and_other_tenants_are_served() {
    // Issue 31: twelve requests of one tenant, each holding 200 MiB for two
    // seconds, under a budget of 512 MiB.
    let config = Config::new(&fixture_apps(
        "[server]\nmemory_budget = 512\n",
        &[("hog", "memory = 512\nmax_instances = 16\ntimeout = 60"), ("quiet", "")],
    ));
    let server = config.serve(&[]);
    assert!(server.log().contains("memory budget: 512 MiB"), "{}", server.log());
    let pid = server.pid();
    let before = crate::common::rss_mib(pid);
    let addr = server.addr;
    let hogs: Vec<_> = (0..12)
        .map(|i| {
            std::thread::spawn(move || {
                // Two of them let the MemoryError fail the request.
                let catch = if i < 2 { "&catch=0" } else { "" };
                let request =
                    format!("GET /hold?mib=200&s=2{catch} HTTP/1.1\r\nHost: hog.test\r\nConnection: close\r\n\r\n");
                raw_text(addr, request.as_bytes())
            })
        })
        .collect();
    // Throughout, the quiet tenant is answered at once, and the server's
    // memory stays within the budget and a fixed overhead.
    let mut slowest = Duration::ZERO;
    let mut highest = before;
    while hogs.iter().any(|h| !h.is_finished()) {
        let started = Instant::now();
        let reply = raw_text(addr, b"GET /list HTTP/1.1\r\nHost: quiet.test\r\nConnection: close\r\n\r\n");
        slowest = slowest.max(started.elapsed());
        assert!(reply.starts_with("HTTP/1.1 200") && reply.ends_with("abc\n"), "{reply}");
        highest = highest.max(crate::common::rss_mib(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    let replies: Vec<String> = hogs.into_iter().map(|h| h.join().unwrap()).collect();
    let status = |code: &str| replies.iter().filter(|r| r.starts_with(&format!("HTTP/1.1 {code}"))).count();
    eprintln!(
        "hogs: {} held, {} refused; the quiet tenant's slowest {slowest:?}; RSS {before} -> at most {highest} MiB",
        status("200"),
        status("507") + status("503")
    );
    // Whether a hog is refused as it starts (503) or as it grows (507, its
    // MemoryError caught) depends on how the twelve interleave.
    assert!(status("200") >= 1, "{replies:?}");
    assert_eq!(status("200") + status("507") + status("503"), 12, "{replies:?}");
    assert!(slowest < Duration::from_secs(1), "the quiet tenant waited {slowest:?}");
    // The budget is 512 MiB of linear memory; the fixed overhead is the
    // server's own, and each pool slot's resident pages (4 MiB of 16).
    assert!(highest <= before + 512 + 96, "RSS went from {before} to {highest} MiB");
    let log = server.log();
    assert!(log.contains("memory budget of 512 MiB had no room"), "an unhandled MemoryError is a 503: {log}");
    // Alone, a hog that grows past what the budget leaves it (its half: the
    // quiet tenant is owed the other) gets a MemoryError, which it handles.
    let reply = raw_text(addr, b"GET /hold?mib=300 HTTP/1.1\r\nHost: hog.test\r\nConnection: close\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 507") && reply.ends_with("MemoryError\n"), "{reply}");
}

#[test]
fn r37_an_app_is_owed_one_instance_though_the_budget_shared_among_many_is_less() {
    // Four apps under a budget of 64 MiB: an even share is 16 MiB, below
    // the fixture's snapshot (about 24 MiB), as 500 apps' shares of 12 GiB
    // are below a Flask app's. Each app is still owed what one of its
    // instances needs, so the server starts and every app serves.
    let apps = ["a", "b", "c", "d"].map(|name| (name, ""));
    let config = Config::new(&fixture_apps("[server]\nmemory_budget = 64\n", &apps));
    let server = config.serve(&[]);
    for (name, _) in apps {
        let reply = raw_text(
            server.addr,
            format!("GET /list HTTP/1.1\r\nHost: {name}.test\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert!(reply.starts_with("HTTP/1.1 200"), "{name}: {reply}\n{}", server.log());
    }
    // The budget still holds: a request that grows past what the others
    // are owed gets a MemoryError, which the fixture reports as a 507.
    let reply = raw_text(server.addr, b"GET /hold?mib=48 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 507") && reply.ends_with("MemoryError\n"), "{reply}");
    // A budget that cannot hold one snapshot at all is refused at startup,
    // saying so.
    let small = Config::new(&fixture_apps("[server]\nmemory_budget = 16\n", &[("a", "")]));
    let refusal = small.refused();
    assert!(
        refusal.contains("the server's memory budget (16 MiB, 16 MiB of it free now) cannot hold the app's snapshot"),
        "{refusal}"
    );
}
