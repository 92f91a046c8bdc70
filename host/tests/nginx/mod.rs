//! uwsgi end to end: raw packets against the server, and Debian's real nginx
//! in front of it with `uwsgi_pass`, started on loopback with a config and
//! prefix of its own (never the system service).
//!
//! nginx is installed with apt-get when missing (`common::ensure_debian_packages`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    client, fixture, free_port, json, raw_exchange, raw_reply, running_as_root, uwsgi_packet, KillOnDrop, Server,
};

const NGINX: &str = "/usr/sbin/nginx";

/// A private nginx, stopped on drop.
struct Nginx {
    _child: KillOnDrop,
    port: u16,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx with `locations` inside its one `server` block, and
    /// waits until that nginx (not some other listener on the port) answers.
    /// A port taken between `free_port` and nginx's bind makes nginx exit;
    /// it is then tried again on another.
    fn start(name: &str, locations: &str) -> Self {
        crate::common::ensure_debian_packages("nginx", || Path::new(NGINX).exists());
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("nginx-{name}"));
        for _attempt in 0..5 {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let port = free_port();
            let d = dir.display();
            // Workers must reach a root-owned 0660 socket when we run as root.
            let user = if running_as_root() { "user root root;" } else { "" };
            let conf = format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\n{user}\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log info;\nevents {{ worker_connections 512; }}\n\
                 http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 server {{\n    listen 127.0.0.1:{port};\n    location = /__nginx_ready {{ return 204; }}\n{locations}\n  }}\n}}\n"
            );
            std::fs::write(dir.join("nginx.conf"), conf).unwrap();
            let mut child = Command::new(NGINX)
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .arg("-e")
                .arg(dir.join("error.log"))
                .stdin(Stdio::null())
                .spawn()
                .expect("starting nginx");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if child.try_wait().unwrap().is_some() {
                    break; // most likely the port was taken: try another
                }
                let ready = TcpStream::connect(("127.0.0.1", port)).is_ok_and(|mut s| {
                    let _ = s.write_all(b"GET /__nginx_ready HTTP/1.0\r\n\r\n");
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut reply = String::new();
                    let _ = s.read_to_string(&mut reply);
                    reply.starts_with("HTTP/1.1 204") && reply.contains("\r\nServer: nginx")
                });
                if ready {
                    return Self { _child: KillOnDrop(child), port, dir };
                }
                assert!(
                    Instant::now() < deadline,
                    "nginx did not start: {}",
                    std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("nginx exited at every start: {}", std::fs::read_to_string(dir.join("error.log")).unwrap_or_default());
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Nginx {
    // nginx itself is stopped after this, by `KillOnDrop`.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- nginx error.log ----\n{}",
                std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
            );
        }
    }
}

/// The fixture behind nginx: `/` with uwsgi_params, `/mounted/` under a
/// SCRIPT_NAME, `/bare/` without uwsgi_params at all.
fn fixture_behind_nginx(name: &str) -> (Server, Nginx) {
    let server = Server::start_with(fixture(), &["--uwsgi", "127.0.0.1:0"]);
    let up = server.uwsgi_addr();
    let nginx = Nginx::start(
        name,
        &format!(
            "    location / {{ include /etc/nginx/uwsgi_params; uwsgi_pass {up}; }}\n\
             location /mounted/ {{ include /etc/nginx/uwsgi_params; uwsgi_param SCRIPT_NAME /mounted; uwsgi_pass {up}; }}\n\
             location /bare/ {{ uwsgi_pass {up}; }}"
        ),
    );
    (server, nginx)
}

#[test]
fn nginx_get_head_and_post_reach_the_app() {
    let (_server, nginx) = fixture_behind_nginx("basic");
    let c = client();
    let env = json(c.get(nginx.url("/environ/caf%C3%A9?q=%C3%A9&n=1")).header("X-Test", "yes").send().unwrap());
    assert_eq!(env["REQUEST_METHOD"], "GET");
    assert_eq!(env["PATH_INFO"], "/environ/caf\u{c3}\u{a9}");
    assert_eq!(env["QUERY_STRING"], "q=%C3%A9&n=1");
    assert_eq!(env["SCRIPT_NAME"], "");
    assert_eq!(env["HTTP_X_TEST"], "yes");
    assert_eq!(env["SERVER_PORT"], nginx.port.to_string());
    assert_eq!(env["REMOTE_ADDR"], "127.0.0.1");
    assert_eq!(env["wsgi.url_scheme"], "http");
    assert!(env.get("HTTP_CONTENT_TYPE").is_none());

    // Raw UTF-8 in the query, as some clients send it: passed through as
    // bytes, seen by the app as latin-1 characters.
    let reply = raw_exchange(
        nginx.addr(),
        "GET /environ?name=café HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".as_bytes(),
        Duration::from_secs(30),
    );
    let env = crate::common::body_json(&reply);
    assert_eq!(env["QUERY_STRING"], "name=caf\u{c3}\u{a9}");

    let resp = c.head(nginx.url("/big?size=5000")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().unwrap().len(), 0);

    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let echoed = c.post(nginx.url("/echo?mode=chunks&size=4096")).body(data.clone()).send().unwrap();
    assert_eq!(echoed.status(), 200);
    assert!(echoed.bytes().unwrap() == data);
}

#[test]
fn nginx_converts_a_chunked_upload_and_streams_10_mib_back() {
    let (_server, nginx) = fixture_behind_nginx("chunked");
    let mut request =
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for piece in [&b"hello, "[..], b"chunked ", b"world"] {
        request.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        request.extend_from_slice(piece);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let reply = raw_exchange(nginx.addr(), &request, Duration::from_secs(30));
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("hello, chunked world"), "{text}");

    let body = client().get(nginx.url("/big?size=10485760")).send().unwrap().bytes().unwrap();
    assert_eq!(body.len(), 10 * 1024 * 1024);
    let block: Vec<u8> = (0..=255u8).collect();
    assert!(body.chunks(256).all(|c| c == block.as_slice()));
}

#[test]
fn nginx_repeated_headers_are_joined_and_script_name_mounts() {
    let (_server, nginx) = fixture_behind_nginx("headers");
    let reply = raw_exchange(
        nginx.addr(),
        b"GET /environ HTTP/1.1\r\nHost: t\r\nAccept: a\r\nAccept: b\r\nCookie: x=1\r\nCookie: y=2\r\nConnection: close\r\n\r\n",
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains(r#""HTTP_ACCEPT": "a, b""#), "{text}");
    assert!(text.contains(r#""HTTP_COOKIE": "x=1; y=2""#), "{text}");

    let env = json(client().get(nginx.url("/mounted/environ")).send().unwrap());
    assert_eq!(env["SCRIPT_NAME"], "/mounted");
    assert_eq!(env["PATH_INFO"], "/environ");
}

#[test]
fn nginx_without_uwsgi_params_still_reaches_the_app() {
    let (_server, nginx) = fixture_behind_nginx("bare");
    // Only the client's headers arrive: the server fills in a GET of "/".
    let env = json(client().get(nginx.url("/bare/anything")).send().unwrap());
    assert_eq!(env["REQUEST_METHOD"], "GET");
    assert_eq!(env["PATH_INFO"], "/");
    assert_eq!(env["SERVER_NAME"], "127.0.0.1");
    assert_eq!(env["SERVER_PORT"], nginx.port.to_string());
}

#[test]
fn nginx_serves_50_concurrent_requests_each_in_its_own_sandbox() {
    let (_server, nginx) = fixture_behind_nginx("concurrent");
    let replies = crate::common::get_json_concurrently(&nginx.url("/counter"), 50);
    assert_eq!(replies.len(), 50);
    for v in replies {
        assert_eq!(v["counter"], 1, "{v}");
    }
}

#[test]
fn nginx_passes_to_a_unix_socket_that_is_removed_on_shutdown() {
    let sock = Path::new(env!("CARGO_TARGET_TMPDIR")).join("uwsgi-test.sock");
    // A stale socket file from a crashed run is replaced.
    let _ = std::fs::remove_file(&sock);
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let spec = format!("unix:{}", sock.display());
    let mut server = Server::start_with(fixture(), &["--uwsgi", &spec]);
    let nginx =
        Nginx::start("unix", &format!("    location / {{ include /etc/nginx/uwsgi_params; uwsgi_pass {spec}; }}"));
    let env = json(client().get(nginx.url("/environ?via=unix")).send().unwrap());
    assert_eq!(env["QUERY_STRING"], "via=unix");
    assert_eq!(env["REMOTE_ADDR"], "127.0.0.1");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o660);

    // A second server on the same live socket is refused.
    let out = Command::new(crate::common::BIN)
        .args(["run"])
        .arg(fixture())
        .args(["--uwsgi", &spec, "--cache-dir"])
        .arg(crate::common::cache_dir())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another server is listening"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    server.terminate();
    assert!(server.wait(Duration::from_secs(20)).is_some_and(|s| s.success()));
    assert!(!sock.exists(), "socket file left behind");
}

/// Sends raw bytes to a uwsgi listener; returns what came back before close.
fn uwsgi_raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(bytes).unwrap();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

#[test]
fn malformed_uwsgi_packets_are_refused_and_never_reach_the_app() {
    let server = Server::start_with(fixture(), &["--uwsgi", "127.0.0.1:0", "--uwsgi-buffer-size", "4096"]);
    let addr = server.uwsgi_addr();
    let good = uwsgi_packet(&[("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/counter"), ("PATH_INFO", "/counter")]);
    let mut foreign = good.clone();
    foreign[0] = 5;
    let mut oversized = uwsgi_packet(&[("HTTP_X_BIG", &"x".repeat(5000))]);
    oversized[0] = 0;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated header", vec![0, 10]),
        ("datasize past the data", vec![0, 0xff, 0x00, 0, 1, 0, b'A']),
        ("key past the block", vec![0, 4, 0, 0, 9, 0, b'A', b'B']),
        ("value past the block", vec![0, 6, 0, 0, 1, 0, b'A', 0xff, 0xff, b'v']),
        ("modifier1 5", foreign),
        ("oversized vars", oversized),
    ];
    for (name, bytes) in &cases {
        let reply = uwsgi_raw(addr, bytes);
        assert!(reply.is_empty(), "{name}: got {:?}", String::from_utf8_lossy(&reply));
    }
    // A packet that parses but cannot be served as it is gets the host's
    // 400 (issue 31), as on HTTP.
    for (name, vars) in [
        ("bad CONTENT_LENGTH", &[("CONTENT_LENGTH", "-3")][..]),
        ("two hosts", &[("HTTP_HOST", "a.test"), ("HTTP_HOST", "b.test")]),
        ("a path above the root", &[("PATH_INFO", "/../etc/passwd")]),
    ] {
        let reply = String::from_utf8_lossy(&uwsgi_raw(addr, &uwsgi_packet(vars))).into_owned();
        assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{name}: {reply}");
    }
    assert!(server.wait_for_log("refused uwsgi request", Duration::from_secs(5)));
    // Not one of them made it to a sandbox, and the server still serves.
    assert!(!server.log().contains("wsgi_wasm::access"), "{}", server.log());
    let reply = String::from_utf8(uwsgi_raw(addr, &good)).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n") && reply.contains("\"counter\": 1"), "{reply}");
}

#[test]
fn a_uwsgi_body_is_read_exactly_up_to_content_length() {
    let server = Server::start_with(fixture(), &["--uwsgi", "127.0.0.1:0"]);
    let mut bytes = uwsgi_packet(&[
        ("REQUEST_METHOD", "POST"),
        ("PATH_INFO", "/echo"),
        ("QUERY_STRING", "mode=read"),
        ("CONTENT_LENGTH", "5"),
    ]);
    bytes.extend_from_slice(b"helloEXTRA-BYTES-NOT-PART-OF-THE-BODY");
    let reply = String::from_utf8(uwsgi_raw(server.uwsgi_addr(), &bytes)).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.ends_with("\r\n\r\nhello"), "{reply}");
    // Over --max-body-bytes (1 GiB by default): refused before any body is read.
    let huge = uwsgi_packet(&[("REQUEST_METHOD", "POST"), ("PATH_INFO", "/echo"), ("CONTENT_LENGTH", "10000000000")]);
    let reply = String::from_utf8(uwsgi_raw(server.uwsgi_addr(), &huge)).unwrap();
    assert!(reply.starts_with("HTTP/1.1 413 Payload Too Large\r\n"), "{reply}");
    // HEAD: headers only.
    let head = uwsgi_packet(&[("REQUEST_METHOD", "HEAD"), ("PATH_INFO", "/big"), ("QUERY_STRING", "size=100")]);
    let reply = String::from_utf8(uwsgi_raw(server.uwsgi_addr(), &head)).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n") && reply.ends_with("\r\n\r\n"), "{reply:?}");
}

#[test]
fn nginx_passes_on_nothing_the_host_refused_and_notices_a_cut_response() {
    // Issue 22: the guest skips the SDK.
    let (server, nginx) = fixture_behind_nginx("hostile");
    let get = |target: &str| {
        let request = format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let (bytes, end) = raw_reply(nginx.addr(), request.as_bytes(), Duration::from_secs(30));
        (String::from_utf8_lossy(&bytes).into_owned(), end)
    };
    // A header with CR LF in it: the host's 500, and no injected header.
    let (reply, _) = get("/raw/header?name=X-A&value=a%0D%0ASet-Cookie:%20pwned=1");
    assert!(reply.starts_with("HTTP/1.1 500 ") && !reply.contains("pwned"), "{reply}");
    // A second response smuggled after a short body: only the declared bytes.
    let (reply, _) = get("/raw/length?declared=5&head=short&smuggle=1&complete=1");
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n") && reply.ends_with("\r\n\r\nshort"), "{reply}");
    assert!(!reply.contains("Smuggled"), "{reply}");
    // The app fails after its head: the reset on the uwsgi connection makes
    // nginx end its own chunked reply without the last chunk.
    // (The reset can overtake the last bytes, which nginx then never reads.)
    let (reply, _) = get("/raise-after");
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(!reply.ends_with("0\r\n\r\n"), "nginx took the cut body for a whole one: {reply:?}");
    let errors = std::fs::read_to_string(nginx.dir.join("error.log")).unwrap();
    assert!(errors.contains("Connection reset by peer) while reading upstream"), "{errors}");
    // Streaming over uwsgi (nginx buffers it unless told `uwsgi_buffering
    // off`): the chunks leave as the app yields them.
    let mut stream = TcpStream::connect(server.uwsgi_addr()).unwrap();
    stream.write_all(&crate::common::uwsgi_get("/stream", "n=3&delay=0.5")).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("chunk 0") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the first chunk");
        seen.extend_from_slice(&buf[..n]);
    }
    let first = started.elapsed();
    let _ = stream.read_to_end(&mut seen);
    assert!(String::from_utf8_lossy(&seen).contains("chunk 2"));
    let all = started.elapsed();
    assert!(all - first >= Duration::from_millis(800), "first chunk at {first:?}, all at {all:?}");
}

#[test]
fn r16_nginx_passes_header_names_in_the_apps_case() {
    // Issue 16, as nginx's own uwsgi
    // tests expect: `X-Forwarded-For: foo, bar, bazz`, byte for byte.
    let (_server, nginx) = fixture_behind_nginx("case");
    let request = b"GET /case HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let (reply, _) = raw_reply(nginx.addr(), request, Duration::from_secs(30));
    let reply = String::from_utf8_lossy(&reply);
    for line in [
        "\r\nX-Forwarded-For: foo, bar, bazz\r\n",
        "\r\nX-XSS-Protection: 0\r\n",
        "\r\nETag: \"v1\"\r\n",
        "\r\nx-lower: yes\r\n",
    ] {
        assert!(reply.contains(line), "{line:?} in {reply:?}");
    }
}

#[test]
fn r17_nginx_sends_every_tenant_to_one_socket_and_the_host_or_uwsgi_appid_picks_the_app() {
    // Issue 17.
    let config = crate::tenants::Config::new(crate::tenants::ROUTED);
    let server = config.serve(&["--uwsgi", "127.0.0.1:0"]);
    let up = server.uwsgi_addr();
    let nginx = Nginx::start(
        "tenants",
        &format!(
            "    location / {{ include /etc/nginx/uwsgi_params; uwsgi_pass {up}; }}\n\
             location /by-id/ {{ include /etc/nginx/uwsgi_params; uwsgi_param UWSGI_APPID blog; uwsgi_pass {up}; }}"
        ),
    );
    let ask = |host: &str, path: &str| {
        let resp = client().get(nginx.url(path)).header("Host", host).send().unwrap();
        (resp.status().as_u16(), resp.text().unwrap())
    };
    let who = |host: &str, path: &str| {
        let (status, body) = ask(host, path);
        assert_eq!(status, 200, "{host}{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        (v["tenant"].as_str().unwrap().to_owned(), v["script_name"].as_str().unwrap().to_owned())
    };
    assert_eq!(who("shop.example.com", "/whoami"), ("shop".into(), String::new()));
    assert_eq!(who("www.shop.example.com", "/whoami"), ("shop".into(), String::new()));
    assert_eq!(who("example.com", "/blog/whoami"), ("blog".into(), "/blog".into()));
    assert_eq!(who("example.com", "/whoami"), ("site".into(), String::new()));
    // UWSGI_APPID from nginx's config beats the Host header.
    assert_eq!(who("shop.example.com", "/by-id/whoami"), ("blog".into(), String::new()));
    assert_eq!(ask("other.org", "/whoami"), (404, "404 Not Found\n".into()));
}

#[test]
fn r31_a_prefix_is_matched_on_the_path_nginx_would_route_directly_and_behind_it() {
    // Issue 31: `..` and `%2F` reach the same app with the same PATH_INFO
    // through nginx as they do directly, or are refused both ways.
    let config = crate::tenants::Config::new(
        "[apps.root]\nwasm = \"fixture.wasm\"\nenv = { TENANT = \"root\" }\n\n\
         [apps.sub]\nwasm = \"fixture.wasm\"\nprefix = \"/sub\"\nenv = { TENANT = \"sub\" }\n",
    );
    let server = config.serve(&["--uwsgi", "127.0.0.1:0"]);
    let up = server.uwsgi_addr();
    let nginx =
        Nginx::start("prefixes", &format!("    location / {{ include /etc/nginx/uwsgi_params; uwsgi_pass {up}; }}"));
    let ask = |addr: SocketAddr, target: &str| {
        let reply = crate::common::raw_text(
            addr,
            format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let status: u16 = reply[9..12].parse().unwrap();
        if status != 200 {
            return Err(status);
        }
        let v = crate::common::body_json(reply.as_bytes());
        Ok([&v["tenant"], &v["script_name"], &v["path_info"]].map(|s| s.as_str().unwrap().to_owned()))
    };
    for target in [
        "/sub/whoami",
        "/x/../sub/whoami",
        "/sub/x/..//whoami",
        "/sub%2Fwhoami",
        "/sub/../whoami",
        "//sub//whoami",
        "/sub%2F..%2Fwhoami",
        "/sub%2F..%2F..%2Fetc",
        "/sub/../../etc",
    ] {
        let direct = ask(server.addr, target);
        let proxied = ask(nginx.addr(), target);
        match (&direct, &proxied) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{target}"),
            // Refused both ways: nginx itself, or the server, says 400.
            (Err(a), Err(b)) => assert!(*a == 400 && *b == 400, "{target}: {a} directly, {b} through nginx"),
            _ => panic!("{target}: {direct:?} directly, {proxied:?} through nginx"),
        }
    }
    assert_eq!(ask(server.addr, "/x/../sub/whoami").unwrap(), ["sub", "/sub", "/whoami"]);
}
