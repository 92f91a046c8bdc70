//! Hard limits: hostile apps and hostile clients. Each case asserts that the
//! bad request fails alone, and that the server then serves a normal one.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::{client, fixture, json, raw_exchange, refused_run, rss_mib, Server};

/// A normal request still works.
fn still_serves(server: &Server) {
    let v = json(client().get(server.url("/counter")).send().unwrap());
    assert_eq!(v["counter"], 1);
}

fn status_line(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).lines().next().unwrap_or("").to_owned()
}

#[test]
fn an_endless_loop_gets_a_504_and_does_not_hold_up_others() {
    let server = Server::start(fixture(), &["--timeout", "3"]);
    // As many spinning guests as the server has worker threads (one per
    // core): without the epoch yield they would hold every one of them.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let spinners: Vec<_> = (0..workers)
        .map(|_| {
            let url = server.url("/loop-forever");
            std::thread::spawn(move || {
                let started = Instant::now();
                let status = client().get(url).send().unwrap().status();
                (status, started.elapsed())
            })
        })
        .collect();
    let spinning = server.wait_for_log_count("loop-forever started", workers, Duration::from_secs(10));
    assert!(spinning >= workers, "the spinners did not all start: {}", server.log());
    let started = Instant::now();
    still_serves(&server);
    let normal = started.elapsed();
    // Answered while every worker had a spinner, not after their deadline.
    assert!(normal < Duration::from_secs(1), "a normal request took {normal:?} beside {workers} spinners");
    for s in spinners {
        let (status, took) = s.join().unwrap();
        assert_eq!(status, 504);
        assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(10), "{took:?}");
    }
    assert!(server.wait_for_log("deadline", Duration::from_secs(5)), "{}", server.log());
    still_serves(&server);
}

#[test]
fn a_cpu_budget_stops_a_spinning_guest_long_before_the_deadline() {
    // 50 million units: a few milliseconds of CPU, dozens of small requests.
    let server = Server::start(fixture(), &["--fuel", "50000000", "--timeout", "30"]);
    let started = Instant::now();
    assert_eq!(client().get(server.url("/loop-forever")).send().unwrap().status(), 504);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(server.wait_for_log("CPU budget of 50000000", Duration::from_secs(5)), "{}", server.log());
    // Every request gets the whole budget again.
    for _ in 0..3 {
        assert_eq!(client().get(server.url("/counter")).send().unwrap().status(), 200);
    }
    // A budget too small for the app to start is refused at startup.
    // Instantiation runs almost no guest code (a few units), so only a
    // budget of nearly nothing fails there.
    let stderr = refused_run(fixture(), &["--fuel", "1"]);
    assert!(stderr.contains("raise --fuel"), "{stderr}");
}

#[test]
fn a_long_sleep_and_a_stalled_body_end_at_their_limits() {
    let server = Server::start(fixture(), &["--timeout", "2", "--body-timeout", "1"]);
    assert_eq!(client().get(server.url("/sleep?s=3600")).send().unwrap().status(), 504);
    // Slow POST: 10 of 100 promised bytes, then silence.
    let reply = raw_exchange(
        server.addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789",
        Duration::from_secs(10),
    );
    assert!(status_line(&reply).starts_with("HTTP/1.1 408"), "{}", String::from_utf8_lossy(&reply));
    still_serves(&server);
}

#[test]
fn a_memory_bomb_fails_alone_and_the_host_stays_flat() {
    // One slot: every bomb goes off in the same place.
    let server = Server::start(fixture(), &["--memory", "64", "--max-instances", "1"]);
    let rss = || rss_mib(server.pid());
    still_serves(&server);
    let before = rss();
    for _ in 0..5 {
        assert_eq!(client().get(server.url("/alloc-forever")).send().unwrap().status(), 500);
    }
    let after = rss();
    assert!(server.wait_for_log("memory limit of 64 MiB", Duration::from_secs(5)), "{}", server.log());
    // Five bombs of 64 MiB each; the instances are gone and so is their
    // memory, but for what the slot keeps resident for the next request
    // (4 MiB of memory, 1 MiB of tables) and the allocator's slack.
    assert!(after <= before + 8, "RSS grew from {before} MiB to {after} MiB");
    still_serves(&server);
}

#[test]
fn a_memory_limit_below_the_snapshot_is_refused_at_startup() {
    let stderr = refused_run(fixture(), &["--memory", "16"]);
    assert!(stderr.contains("just to start") && stderr.contains("raise --memory"), "{stderr}");
    assert!(!stderr.contains("compiling"), "refused before any compilation: {stderr}");
}

#[test]
fn recursion_exit_and_traps_fail_alone() {
    let server = Server::start(fixture(), &[]);
    for route in ["/recurse", "/deep-c-recursion", "/exit"] {
        let resp = client().get(server.url(route)).send().unwrap();
        assert_eq!(resp.status(), 500, "{route}");
        assert_eq!(resp.text().unwrap(), "500 Internal Server Error\n", "{route}");
        still_serves(&server);
    }
}

#[test]
fn an_endless_response_is_cut_at_the_response_cap() {
    let server = Server::start(fixture(), &["--max-response-bytes", "1048576"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(b"GET /endless HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got); // ends with EOF or a reset
    assert!(got.len() < 2 * 1024 * 1024, "{} bytes", got.len());
    assert!(!got.ends_with(b"0\r\n\r\n"), "the cut must not look like an end");
    assert!(server.wait_for_log("response too large", Duration::from_secs(5)), "{}", server.log());
    still_serves(&server);
}

#[test]
fn a_sandbox_reaches_no_file_network_or_environment_unless_granted() {
    let server = Server::start(fixture(), &[]);
    let v = json(client().get(server.url(&format!("/capabilities?port={}", server.addr.port()))).send().unwrap());
    for key in ["etc_passwd", "proc_self", "parent_escape", "socket"] {
        assert_eq!(v[key]["ok"], false, "{key}: {v}");
    }
    // Only the app's own read-only tree is visible.
    assert_eq!(v["list_root"]["ok"], true, "{v}");
    let roots = v["list_root"]["value"].as_array().unwrap();
    assert!(roots.iter().any(|e| e == "python"), "{v}");
    for entry in roots {
        let e = entry.as_str().unwrap();
        assert!(e == "python" || e == "bundled" || e == "world" || e.parse::<u32>().is_ok(), "{v}");
    }
    // Every store shares the tree's open directory: a listing must not move
    // a position the next request would start from.
    let again = json(client().get(server.url("/capabilities")).send().unwrap());
    assert_eq!(again["list_root"], v["list_root"], "{again}");
    // The app's own tree is read-only: neither its code nor the stdlib.
    for path in ["/0/fixture.py", "/0/new.py", "/python/new.py"] {
        let w = json(client().get(server.url(&format!("/capabilities?write={path}"))).send().unwrap());
        assert_eq!(w["write"]["ok"], false, "{path} was writable: {w}");
    }
    let read = json(client().get(server.url("/capabilities?read=/0/fixture.py")).send().unwrap());
    assert!(read["read"]["value"].as_str().unwrap().starts_with("\"\"\"The WSGI app"), "{read}");
    assert_eq!(v["environ"], serde_json::json!({}), "{v}");

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("grants");
    let (ro, rw) = (dir.join("ro"), dir.join("rw"));
    for d in [&ro, &rw] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(ro.join("hello.txt"), "host file\n").unwrap();
    let _ = std::fs::remove_file(rw.join("out.txt"));
    let (ro_spec, rw_spec) = (format!("{}:/data", ro.display()), format!("{}:/scratch:rw", rw.display()));
    let granted = Server::start(
        fixture(),
        &["--mount", &ro_spec, "--mount", &rw_spec, "--env", "GREETING=hi", "--env", "EMPTY="],
    );
    let v = json(client().get(granted.url("/capabilities?read=/data/hello.txt&write=/data/nope.txt")).send().unwrap());
    assert_eq!(v["read"], serde_json::json!({"ok": true, "value": "host file\n"}), "{v}");
    assert_eq!(v["write"]["ok"], false, "read-only mount was writable: {v}");
    assert_eq!(v["environ"], serde_json::json!({"GREETING": "hi", "EMPTY": ""}), "{v}");
    let v = json(client().get(granted.url("/capabilities?write=/scratch/out.txt")).send().unwrap());
    assert_eq!(v["write"]["ok"], true, "{v}");
    assert_eq!(std::fs::read_to_string(rw.join("out.txt")).unwrap(), "written by the guest\n");
}

#[test]
fn past_the_instance_cap_requests_queue_then_get_a_503() {
    let server = Server::start(fixture(), &["--max-instances", "1", "--queue-timeout", "0.5"]);
    let url = server.url("/sleep?s=2");
    let busy = std::thread::spawn(move || client().get(url).send().unwrap().status());
    assert!(server.wait_for_log("sleep started", Duration::from_secs(30)), "{}", server.log());
    assert_eq!(client().get(server.url("/counter")).send().unwrap().status(), 503);
    assert_eq!(busy.join().unwrap(), 200);
    still_serves(&server);
}

#[test]
fn slowloris_connections_are_dropped_and_others_still_get_served() {
    let server = Server::start(fixture(), &["--header-timeout", "1"]);
    let mut attackers: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ").unwrap();
            s
        })
        .collect();
    still_serves(&server);
    std::thread::sleep(Duration::from_millis(1500));
    // A dribble after the deadline finds every one of them closed.
    let mut closed = 0;
    for s in &mut attackers {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(b"a");
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            // Closed, or reset after our late write.
            Ok(0) => closed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
            // An error response is fine too, as long as it is one.
            Ok(n) if buf[..n].starts_with(b"HTTP/1.1 4") => closed += 1,
            // A read timeout means the connection is still held open.
            other => panic!("an attacker connection is still open: {other:?}"),
        }
    }
    assert_eq!(closed, 200);
    // An idle kept-alive connection is closed too.
    let mut idle = TcpStream::connect(server.addr).unwrap();
    idle.write_all(b"GET /list HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut all = Vec::new();
    let started = Instant::now();
    let _ = idle.read_to_end(&mut all);
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"));
    assert!(started.elapsed() < Duration::from_secs(5), "idle connection kept for {:?}", started.elapsed());
    still_serves(&server);
}

#[test]
fn oversized_bodies_and_headers_are_refused_before_the_app() {
    let server = Server::start(fixture(), &["--max-body-bytes", "1048576"]);
    let reply = raw_exchange(
        server.addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000000\r\n\r\n",
        Duration::from_secs(10),
    );
    assert!(status_line(&reply).starts_with("HTTP/1.1 413"), "{}", String::from_utf8_lossy(&reply));
    // Only a sandbox's request gets an access line.
    assert!(!server.log().contains("\"POST /echo\""), "the refused request reached a sandbox: {}", server.log());
    // Chunked, so no length up front: the app reads it, and it is cut at the limit.
    let mut chunked =
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n", 100_000).as_bytes());
        chunked.extend_from_slice(&[b'x'; 100_000]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let reply = raw_exchange(server.addr, &chunked, Duration::from_secs(10));
    assert!(status_line(&reply).starts_with("HTTP/1.1 413"), "{}", status_line(&reply));

    let mut big_header = b"GET /counter HTTP/1.1\r\nHost: t\r\nX-Big: ".to_vec();
    big_header.extend_from_slice(&[b'a'; 200 * 1024]);
    big_header.extend_from_slice(b"\r\n\r\n");
    let reply = raw_exchange(server.addr, &big_header, Duration::from_secs(10));
    assert!(status_line(&reply).starts_with("HTTP/1.1 431"), "{}", status_line(&reply));
    let mut many = b"GET /counter HTTP/1.1\r\nHost: t\r\n".to_vec();
    for i in 0..150 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let reply = raw_exchange(server.addr, &many, Duration::from_secs(10));
    assert!(status_line(&reply).starts_with("HTTP/1.1 431"), "{}", status_line(&reply));
    assert!(!server.log().contains("\"GET /counter\""), "a refused request reached the app: {}", server.log());
    still_serves(&server);
}

#[test]
fn request_smuggling_shapes_never_reach_the_app() {
    let server = Server::start(fixture(), &[]);
    let cases: &[(&str, &[u8])] = &[
        (
            "conflicting Content-Length",
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        ("Content-Length list", b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 6\r\n\r\nhello!"),
        (
            "chunked not last",
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "unknown coding",
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "bad chunk size",
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
        ("space before colon", b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length : 5\r\n\r\nhello"),
        ("obs-fold", b"GET /counter HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n"),
    ];
    for (name, request) in cases {
        let reply = raw_exchange(server.addr, request, Duration::from_secs(10));
        let status = status_line(&reply);
        assert!(
            status.is_empty() || status.starts_with("HTTP/1.1 4") || status.starts_with("HTTP/1.1 5"),
            "{name}: {status}"
        );
    }
    // A malformed request ends its connection: what follows is never read.
    let reply = raw_exchange(
        server.addr,
        b"GET /list HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\nGET /counter HTTP/1.1\r\nHost: t\r\n\r\n",
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 400") && text.matches("HTTP/1.1").count() == 1, "{text}");
    // A bare LF ends no line here (RFC 9112 allows either choice; a proxy
    // in front may see CRLF only): 400, and the connection is done.
    for request in [
        &b"GET /counter HTTP/1.1\nHost: t\r\n\r\n"[..],
        b"GET /counter HTTP/1.1\r\nHost: t\n\r\n",
        b"GET /counter HTTP/1.1\r\nHost: t\r\n\nGET /counter HTTP/1.1\r\n\r\n",
    ] {
        let reply = raw_exchange(server.addr, request, Duration::from_secs(10));
        let text = String::from_utf8_lossy(&reply);
        assert!(text.starts_with("HTTP/1.1 400") && text.matches("HTTP/1.1").count() == 1, "{text}");
    }
    // After a body full of LFs, the next request on the connection is
    // checked too, and the one before it is answered first.
    let reply = raw_exchange(
        server.addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\n\n\n\nGET /counter HTTP/1.1\nHost: t\r\n\r\n",
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 200") && text.contains("\n\n\nHTTP/1.1 400"), "{text}");
    // A chunk extension is legal and must not confuse the framing.
    let reply = raw_exchange(
        server.addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;ext=1\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(10),
    );
    assert!(String::from_utf8_lossy(&reply).ends_with("hello"), "{}", String::from_utf8_lossy(&reply));
    // CL + TE: refused outright (400), so the "smuggled" request after the
    // chunked body is never read either (issue 16).
    let reply = raw_exchange(
        server.addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /counter HTTP/1.1\r\nHost: t\r\n\r\n",
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&reply);
    assert!(text.matches("HTTP/1.1 ").count() <= 1 || !text.contains("\"counter\""), "{text}");
    assert!(!server.log().contains("\"GET /counter\""), "a smuggled request reached the app: {}", server.log());
    still_serves(&server);
}
