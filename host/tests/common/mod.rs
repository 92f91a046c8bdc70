//! Shared test harness: builds components with the real `wsgi-wasm build`,
//! starts the real `wsgi-wasm run` on loopback, and speaks HTTP to it.
//!
//! Components are built once per test binary and reused across runs while
//! their inputs (the app, the SDK, the binary) are older than the output.
//! A server's log is captured; it is printed if the test fails, and tests
//! can search it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

pub const BIN: &str = env!("CARGO_BIN_EXE_wsgi-wasm");

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// One cache for every test: the toolchain is provisioned once, compiled
/// code is shared between servers of the same component.
pub fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("cache")
}

fn newest_mtime(path: &Path) -> SystemTime {
    let meta = std::fs::metadata(path).unwrap();
    let mut newest = meta.modified().unwrap();
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            let p = entry.unwrap().path();
            if p.file_name().is_some_and(|n| n == "__pycache__" || n == "app.wasm") {
                continue;
            }
            newest = newest.max(newest_mtime(&p));
        }
    }
    newest
}

/// The binary, with none of the `WSGI_WASM_*` variables of the environment
/// the tests run in: each test says what it wants.
pub fn wsgi_wasm() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WSGI_WASM_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Runs `wsgi-wasm build` with `args`; the output is captured.
pub fn build_cmd(args: &[&str], cwd: &Path) -> Output {
    wsgi_wasm()
        .args(["build"])
        .args(args)
        .arg("--cache-dir")
        .arg(cache_dir())
        .current_dir(cwd)
        .output()
        .expect("running wsgi-wasm build")
}

/// Hands each line `pipe` yields to `on_line`, on a thread of its own, until
/// the pipe closes or stops yielding text.
fn read_lines(
    pipe: impl Read + Send + 'static,
    mut on_line: impl FnMut(String) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            on_line(line);
        }
    })
}

/// Runs `wsgi-wasm run wasm` with `args`, which must refuse to start;
/// returns what it printed on stderr. A server that starts listening
/// instead is stopped at once and fails the test, rather than leaving it
/// waiting for an exit that never comes.
pub fn refused_run(wasm: &Path, args: &[&str]) -> String {
    let mut child = wsgi_wasm()
        .arg("run")
        .arg(wasm)
        .args(["--http", "127.0.0.1:0", "--cache-dir"])
        .arg(cache_dir())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running wsgi-wasm run");
    let stderr = Arc::new(Mutex::new(String::new()));
    let reader = {
        let stderr = Arc::clone(&stderr);
        read_lines(child.stderr.take().unwrap(), move |line| {
            let mut all = stderr.lock().unwrap();
            all.push_str(&line);
            all.push('\n');
        })
    };
    // Compiling the app for a new engine setting can take minutes.
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if stderr.lock().unwrap().contains("listening") || Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{} {args:?} started (or hung): {}", wasm.display(), stderr.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    reader.join().unwrap();
    let stderr = stderr.lock().unwrap().clone();
    assert!(!status.success(), "{} {args:?} exited cleanly: {stderr}", wasm.display());
    // `check` refuses the same file with the same flags, in the same words.
    let checked = wsgi_wasm().arg("check").arg(wasm).arg("--cache-dir").arg(cache_dir()).args(args).output().unwrap();
    let error = |text: &str| text.lines().rfind(|l| l.starts_with("wsgi-wasm: error:")).map(str::to_owned);
    let check_stderr = String::from_utf8_lossy(&checked.stderr);
    assert!(!checked.status.success(), "check accepted what run refused: {stderr}");
    assert_eq!(error(&check_stderr), error(&stderr), "check and run differ:\n{check_stderr}\n{stderr}");
    assert!(error(&stderr).is_some(), "{stderr}");
    stderr
}

/// Builds `target` from `app_dir` (plus `requirements`) into `out`, unless
/// `out` is newer than everything it is made from.
pub fn build_component(app_dir: &Path, target: &str, requirements: Option<&Path>, out: &Path) -> PathBuf {
    let inputs = [app_dir.to_path_buf(), repo().join("guest-sdk"), PathBuf::from(BIN)];
    let fresh =
        out.exists() && inputs.iter().all(|i| newest_mtime(i) < std::fs::metadata(out).unwrap().modified().unwrap());
    if !fresh {
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let mut args = vec![target.to_owned(), "--path".into(), app_dir.display().to_string()];
        if let Some(r) = requirements {
            args.extend(["--requirements".into(), r.display().to_string()]);
        }
        args.extend(["-o".into(), out.display().to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = build_cmd(&args, &repo());
        assert!(
            output.status.success(),
            "building {target} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    out.to_path_buf()
}

/// The fixture app of `tests/apps/fixture.py`, built once.
pub fn fixture() -> &'static Path {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| {
        build_component(
            &repo().join("tests/apps"),
            "fixture:app",
            None,
            &Path::new(env!("CARGO_TARGET_TMPDIR")).join("apps/fixture.wasm"),
        )
    })
}

/// A running `wsgi-wasm run`, killed on drop.
pub struct Server {
    child: Child,
    /// The first HTTP listener, if any (else a dummy address).
    pub addr: SocketAddr,
    /// Every listener, as logged: `http://...`, `uwsgi://...`, `uwsgi://unix:...`.
    pub listening: Vec<String>,
    log: Arc<Mutex<Vec<String>>>,
    /// The thread that reads the server's stderr into `log`.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Starts serving `wasm` over HTTP on an ephemeral loopback port.
    pub fn start(wasm: &Path, extra: &[&str]) -> Self {
        let mut args = vec!["--http", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Self::start_with(wasm, &args)
    }

    /// Starts serving `wasm` with exactly these arguments after `run APP`.
    pub fn start_with(wasm: &Path, args: &[&str]) -> Self {
        let expected = args.iter().filter(|a| **a == "--http" || **a == "--uwsgi").count();
        let mut cmd = wsgi_wasm();
        cmd.arg("run").arg(wasm).arg("--cache-dir").arg(cache_dir()).args(args);
        Self::spawn(cmd, expected)
    }

    /// Starts `cmd` (a `wsgi-wasm run`) and waits until it is listening on
    /// `listeners` addresses (at least one). Logs at info unless `cmd` sets
    /// `WSGI_WASM_LOG` itself.
    pub fn spawn(mut cmd: Command, listeners: usize) -> Self {
        let expected = listeners.max(1);
        if !cmd.get_envs().any(|(k, _)| k == "WSGI_WASM_LOG") {
            cmd.env("WSGI_WASM_LOG", "info");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting wsgi-wasm run");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&log);
        let reader = read_lines(child.stderr.take().unwrap(), move |line| {
            if let Some(rest) = line.split("listening on ").nth(1) {
                // A text line ends the address at a space, a JSON one at a quote.
                let addr = rest.split(|c: char| c.is_whitespace() || c == '"').next().unwrap_or_default();
                let _ = tx.send(addr.to_owned());
            }
            sink.lock().unwrap().push(line);
        });
        let mut listening = Vec::new();
        while listening.len() < expected {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(l) => listening.push(l),
                Err(_) => {
                    let _ = child.kill();
                    panic!("server did not start:\n{}", log.lock().unwrap().join("\n"));
                }
            }
        }
        let addr = listening
            .iter()
            .find_map(|l| l.strip_prefix("http://"))
            .map_or_else(|| "0.0.0.0:9".parse().unwrap(), |a| a.parse().unwrap());
        Self { child, addr, listening, log, reader: Some(reader) }
    }

    /// The address of the first uwsgi TCP listener.
    pub fn uwsgi_addr(&self) -> SocketAddr {
        self.listening
            .iter()
            .find_map(|l| l.strip_prefix("uwsgi://").filter(|a| !a.starts_with("unix:")))
            .expect("no uwsgi TCP listener")
            .parse()
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits up to `timeout` for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_for_log_count(needle, 1, timeout) >= 1
    }

    /// Waits up to `timeout` until `needle` occurs `count` times in the log,
    /// and returns how often it occurs. A request's last log lines may reach
    /// the pipe after its reply has reached the client.
    pub fn wait_for_log_count(&self, needle: &str, count: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.log().matches(needle).count();
            if seen >= count || Instant::now() >= deadline {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Stops the server with SIGTERM and returns its whole log, read to the
    /// end: every line it wrote, for assertions about what it did not write.
    pub fn stop(&mut self) -> String {
        self.terminate();
        let status = self.wait(Duration::from_secs(60)).expect("the server did not exit");
        assert!(status.success(), "{status}: {}", self.log());
        self.reader.take().expect("stopped once").join().unwrap();
        self.log()
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- server log ----\n{}\n--------------------", self.log());
        }
    }
}

/// The status listener's base URL the server logged (`--metrics`), once
/// it listens: `http://ADDR`.
pub fn status_url(server: &Server) -> String {
    const LOGGED: &str = "/healthz and /readyz on ";
    assert!(server.wait_for_log(LOGGED, Duration::from_secs(30)), "{}", server.log());
    let log = server.log();
    let rest = log.split(LOGGED).nth(1).unwrap();
    rest.split_whitespace().next().unwrap().to_owned()
}

/// The `/metrics` address the server logged (`--metrics`).
pub fn metrics_url(server: &Server) -> String {
    format!("{}/metrics", status_url(server))
}

/// The resident memory of process `pid`, in MiB.
pub fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

/// `field` (`Rss`, `Pss`, ...; in KiB) summed over process `pid`'s mappings
/// whose name (a path, `[heap]`, or empty) `is_ours` accepts.
pub fn smaps_kib(pid: u32, field: &str, is_ours: impl Fn(&str) -> bool) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut ours = false;
    let mut kib = 0;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // A mapping's head: range, perms, offset, device, inode, name.
            ours = is_ours(words.nth(4).unwrap_or_default());
        } else if ours && first.strip_suffix(':') == Some(field) {
            kib += words.next().unwrap().parse::<u64>().unwrap();
        }
    }
    kib
}

/// The resident set by kind (anonymous, file, shared memory), for messages.
pub fn rss_detail(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kinds: Vec<_> = status
        .lines()
        .filter(|l| l.starts_with("Rss"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    kinds.join(", ")
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// How the server ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// An orderly close (FIN).
    Eof,
    /// A reset (RST): the server cut the connection.
    Reset,
    /// Nothing for the whole timeout: the server neither answered nor closed.
    Timeout,
}

/// Reads from `stream` until the server closes it, resets it, or sends
/// nothing for `timeout`; returns every byte read and which of those ended it.
pub fn read_reply(stream: &mut TcpStream, timeout: Duration) -> (Vec<u8>, End) {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (out, End::Eof),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, End::Reset),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return (out, End::Timeout)
            }
            Err(e) => panic!("reading the reply: {e} (after {} bytes)", out.len()),
        }
    }
}

/// Writes `request` as is to a new connection and reads the reply with
/// [`read_reply`].
pub fn raw_reply(addr: SocketAddr, request: &[u8], timeout: Duration) -> (Vec<u8>, End) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(request).unwrap();
    read_reply(&mut stream, timeout)
}

/// A raw HTTP/1.1 exchange whose server must close the connection (or
/// reset it) within `timeout`; returns all bytes read. A server that just
/// stops answering fails the test.
pub fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> Vec<u8> {
    let (out, end) = raw_reply(addr, request, timeout);
    assert_ne!(end, End::Timeout, "no close within {timeout:?}; got {:?}", String::from_utf8_lossy(&out));
    out
}

/// The whole reply to `request`, sent on a connection of its own, as text;
/// the server must close the connection within 30 s.
pub fn raw_text(addr: SocketAddr, request: &[u8]) -> String {
    String::from_utf8_lossy(&raw_exchange(addr, request, Duration::from_secs(30))).into_owned()
}

/// The whole reply to a `GET target` with `Host: host` and `Connection:
/// close`, as text.
pub fn raw_get(addr: SocketAddr, host: &str, target: &str) -> String {
    raw_text(addr, format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
}

/// A uwsgi packet of these vars, with no body.
pub fn uwsgi_packet(vars: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (k, v) in vars {
        for part in [k.as_bytes(), v.as_bytes()] {
            block.extend_from_slice(&(part.len() as u16).to_le_bytes());
            block.extend_from_slice(part);
        }
    }
    let mut p = vec![0];
    p.extend_from_slice(&(block.len() as u16).to_le_bytes());
    p.push(0);
    p.extend_from_slice(&block);
    p
}

/// A uwsgi GET of `path?query`, as nginx with `uwsgi_params` sends it.
pub fn uwsgi_get(path: &str, query: &str) -> Vec<u8> {
    let uri = if query.is_empty() { path.to_owned() } else { format!("{path}?{query}") };
    uwsgi_packet(&[
        ("REQUEST_METHOD", "GET"),
        ("REQUEST_URI", &uri),
        ("PATH_INFO", path),
        ("QUERY_STRING", query),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("HTTP_HOST", "t"),
    ])
}

pub fn json(resp: reqwest::blocking::Response) -> serde_json::Value {
    let status = resp.status();
    let text = resp.text().unwrap();
    assert!(status.is_success(), "status {status}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The JSON body of a raw HTTP reply (everything after the blank line).
pub fn body_json(reply: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(reply);
    let start = text.find("\r\n\r\n").unwrap_or_else(|| panic!("no head in {text:?}")) + 4;
    serde_json::from_str(&text[start..]).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// GETs `url` from `n` threads at once; returns each JSON body.
pub fn get_json_concurrently(url: &str, n: usize) -> Vec<serde_json::Value> {
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let url = url.to_owned();
            std::thread::spawn(move || json(client().get(&url).send().unwrap()))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Installs Debian's `packages` (separated by spaces) with apt-get unless
/// `installed()` says they are there, for the tests that start a real
/// server (nginx, PostgreSQL, Redis, MariaDB). `RUNLEVEL=1` keeps a package
/// from starting its system service; the tests start their own, on
/// loopback, in a directory of their own. One apt-get at a time: tests run
/// in parallel and apt holds a lock.
pub fn ensure_debian_packages(packages: &str, installed: impl Fn() -> bool) {
    static APT: Mutex<()> = Mutex::new(());
    let _one_at_a_time = APT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if installed() {
        return;
    }
    eprintln!("installing Debian's {packages} for the tests");
    let install = format!("apt-get install -y -qq {packages}");
    let script = format!("({install} || (apt-get update -qq && {install})) >/dev/null");
    let ok = Command::new("sh")
        .args(["-c", &script])
        .env("RUNLEVEL", "1")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok && installed(), "could not install {packages} with apt-get (are we root?)");
}

/// Whether the tests run as root (then nginx, PostgreSQL and MariaDB are
/// told which user to run as).
pub fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A server process the test started, killed and reaped on drop.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` (`what`, in the message), which must succeed; its output.
pub fn succeed(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what} ({cmd:?}): {e}"));
    assert!(
        out.status.success(),
        "{what} ({cmd:?}) failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start listening on 127.0.0.1:{port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
