//! TLS from the sandbox, run and verified by the host (issue 32): urllib,
//! requests and the `ssl` module over HTTPS, smtplib's STARTTLS, pg8000
//! against PostgreSQL with TLS on; and every peer that does not verify
//! refused with `ssl.SSLCertVerificationError`, after the connection
//! reached it, so that the refusal is the verification's.
//!
//! The certificates are made here (rcgen): a test CA, and from it a server
//! certificate for `localhost` and 127.0.0.1, one for another name, and an
//! expired one; and a second CA no sandbox is told to trust. The peers run
//! natively on 127.0.0.1: `tests/peers/tls_peer.py` (HTTPS, logging each
//! handshake), aiosmtpd from PyPI, Debian's PostgreSQL.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use super::clients::{call, clients, login};
use super::servers::Postgres;
use crate::common::{free_port, repo, wait_for_port, KillOnDrop, Server};

/// The test's certificates, as PEM files in a directory of their own.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.self_signed(&key).unwrap();
            (Issuer::new(params, key), cert)
        };
        let (trusted, trusted_cert) = ca("wsgi-wasm test CA");
        let (untrusted, _) = ca("a CA nobody trusts");
        std::fs::write(dir.path().join("ca.pem"), trusted_cert.pem()).unwrap();
        let issue = |name: &str, issuer: &Issuer<'_, KeyPair>, sans: &[&str], expired: bool| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
            params.distinguished_name.push(DnType::CommonName, sans[0]);
            if expired {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            let cert = params.signed_by(&key, issuer).unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        };
        issue("good", &trusted, &["localhost", "127.0.0.1"], false);
        issue("other-name", &trusted, &["wrong.test"], false);
        issue("expired", &trusted, &["localhost", "127.0.0.1"], true);
        issue("untrusted", &untrusted, &["localhost", "127.0.0.1"], false);
        Self { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The CA bundle to give `--outbound-ca`.
    fn ca(&self) -> String {
        self.path("ca.pem").display().to_string()
    }
}

/// `tests/peers/tls_peer.py` serving HTTPS with one of the certificates.
struct TlsPeer {
    _child: KillOnDrop,
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
}

impl TlsPeer {
    fn start(pki: &Pki, cert: &str) -> Self {
        let mut child = Command::new("python3")
            .arg(repo().join("tests/peers/tls_peer.py"))
            .arg(pki.path(&format!("{cert}.pem")))
            .arg(pki.path(&format!("{cert}.key")))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&lines);
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("listening ") {
                    let _ = tx.send(port.parse::<u16>().unwrap());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let port = rx.recv_timeout(Duration::from_secs(30)).expect("the TLS peer did not start");
        Self { _child: KillOnDrop(child), port, lines }
    }

    /// Waits until the peer logged `count` lines that start with `prefix`.
    fn wait_for(&self, prefix: &str, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<String> =
                self.lines.lock().unwrap().iter().filter(|l| l.starts_with(prefix)).cloned().collect();
            if found.len() >= count || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The grants for a peer on `port`: its name and its address.
fn grants(port: u16) -> Vec<String> {
    vec!["--allow-outbound".into(), format!("localhost:{port}"), "--allow-outbound".into(), format!("127.0.0.1:{port}")]
}

fn serve(args: &[String]) -> Server {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(clients(), &args)
}

#[test]
fn r32_urllib_requests_and_the_ssl_module_speak_tls_verified_by_the_host() {
    // Issue 32.
    let pki = Pki::new();
    let peer = TlsPeer::start(&pki, "good");
    let server = serve(&[grants(peer.port), vec!["--outbound-ca".into(), pki.ca()]].concat());
    let port = peer.port;
    for (client, url) in
        [("urllib", format!("https://127.0.0.1:{port}/a")), ("requests", format!("https://localhost:{port}/b"))]
    {
        let v = call(&server, "/https", &format!("client={client}&url={url}")).unwrap();
        assert_eq!((v["status"].as_u64(), v["body"].as_str()), (Some(200), Some("hello over tls\n")), "{client}: {v}");
    }
    let v = call(&server, "/tls-socket", &format!("host=127.0.0.1&port={port}")).unwrap();
    assert_eq!(v["status"], "HTTP/1.1 200 OK", "{v}");
    assert_eq!(
        (v["version"].as_str(), v["cipher"].as_str(), v["alpn"].as_str()),
        (Some("TLSv1.3"), Some("TLSv1.3"), Some("http/1.1"))
    );
    assert_eq!(v["subject_alt_name"], serde_json::json!([["DNS", "localhost"], ["IP Address", "127.0.0.1"]]), "{v}");
    assert_eq!(v["issuer"], serde_json::json!([["commonName", "wsgi-wasm test CA"]]), "{v}");
    // Megabytes each way, more than either side's buffers hold: rustls
    // takes the plaintext to send in pieces and the ciphertext received as
    // the guest reads.
    let big = 3 * 1024 * 1024 + 7;
    let sent: Vec<u8> = (0..big).map(|i| (i % 251) as u8).collect();
    let v = call(&server, "/https", &format!("client=requests&post={big}&url=https://localhost:{port}/up")).unwrap();
    assert_eq!(v["body"], format!("{big} {}", sha256_hex(&sent)), "{v}");
    let expected: Vec<u8> = b"0123456789".iter().copied().cycle().take(big).collect();
    for client in ["urllib", "requests"] {
        let v = call(&server, "/https", &format!("client={client}&digest=1&url=https://localhost:{port}/big/{big}"))
            .unwrap();
        assert_eq!((v["length"].as_u64(), v["sha256"].as_str()), (Some(big as u64), Some(&*sha256_hex(&expected))));
    }
    assert_eq!(peer.wait_for("handshake ok TLSv1.3", 6).len(), 6);
    // The host's TLS work shows in the access lines.
    assert!(server.wait_for_log("tls_ms=", Duration::from_secs(5)), "{}", server.log());
}

#[test]
fn r32_every_peer_that_does_not_verify_is_refused_whatever_the_app_asks() {
    // Issue 32.
    let pki = Pki::new();
    let good = TlsPeer::start(&pki, "good");
    let with_ca = |peer: &TlsPeer| serve(&[grants(peer.port), vec!["--outbound-ca".into(), pki.ca()]].concat());
    let refused = |server: &Server, peer: &TlsPeer, query: &str, words: &str, seen: usize| {
        let err = call(server, "/https", query).unwrap_err();
        assert!(err.contains("SSLCertVerificationError"), "{query}: {err}");
        assert!(err.contains(&format!("certificate verify failed: {words}")), "{query}: {err}");
        // The connection reached the peer, and the handshake failed there:
        // the refusal is the verification's, not a failed connect.
        let failed = peer.wait_for("handshake failed", seen);
        assert_eq!(failed.len(), seen, "{query}: the peer saw {failed:?}");
    };
    // A certificate from a CA nobody trusts, whatever the app turns off.
    let untrusted = TlsPeer::start(&pki, "untrusted");
    let server = with_ca(&untrusted);
    let url = format!("url=https://127.0.0.1:{}/", untrusted.port);
    let unknown = "unable to get local issuer certificate";
    refused(&server, &untrusted, &format!("client=urllib&{url}"), unknown, 1);
    refused(&server, &untrusted, &format!("client=urllib&unverified=1&{url}"), unknown, 2);
    refused(&server, &untrusted, &format!("client=requests&unverified=1&{url}"), unknown, 3);
    assert!(untrusted.wait_for("handshake failed: TLSV1_ALERT_UNKNOWN_CA", 3).len() == 3);
    // A certificate for another name.
    let other = TlsPeer::start(&pki, "other-name");
    let server = with_ca(&other);
    let url = format!("client=requests&url=https://127.0.0.1:{}/", other.port);
    refused(&server, &other, &url, "Hostname mismatch, certificate is not valid for '127.0.0.1'.", 1);
    // An expired one.
    let expired = TlsPeer::start(&pki, "expired");
    let server = with_ca(&expired);
    refused(
        &server,
        &expired,
        &format!("client=urllib&url=https://localhost:{}/", expired.port),
        "certificate has expired",
        1,
    );
    // The good server, when the operator did not add its CA.
    let server = serve(&grants(good.port));
    let url = format!("client=urllib&url=https://localhost:{}/", good.port);
    refused(&server, &good, &url, unknown, 1);
    assert!(good.wait_for("handshake ok", 1).is_empty(), "a session was made with an unverified peer");
}

#[test]
fn r32_smtplib_upgrades_its_connection_with_starttls() {
    // Issue 32: a socket already connected, in the clear, then TLS over it.
    let pki = Pki::new();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("aiosmtpd");
    if !dir.join("aiosmtpd").is_dir() {
        let out = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target"])
            .arg(&dir)
            .arg("aiosmtpd==1.4.6")
            .env("PIP_ROOT_USER_ACTION", "ignore")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let port = free_port();
    let mut smtpd = Command::new("python3")
        .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "--tlscert"])
        .arg(pki.path("good.pem"))
        .arg("--tlskey")
        .arg(pki.path("good.key"))
        .env("PYTHONPATH", &dir)
        .env("PYTHONUNBUFFERED", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = smtpd.stdout.take().unwrap();
    let _smtpd = KillOnDrop(smtpd);
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&received);
    std::thread::spawn(move || {
        BufReader::new(stdout).lines().map_while(Result::ok).for_each(|l| sink.lock().unwrap().push(l))
    });
    wait_for_port(port, "aiosmtpd", Duration::from_secs(30));
    let server = serve(&[grants(port), vec!["--outbound-ca".into(), pki.ca()]].concat());
    assert_eq!(call(&server, "/smtp", &format!("host=localhost&port={port}")), Ok(serde_json::json!("sent")));
    // aiosmtpd requires STARTTLS before MAIL, and prints what it received.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !received.lock().unwrap().iter().any(|l| l.contains("sent over STARTTLS")) {
        assert!(Instant::now() < deadline, "aiosmtpd printed {:?}", received.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn r32_pg8000_speaks_tls_to_postgresql() {
    // Issue 32: PostgreSQL's SSLRequest, then the handshake on the socket.
    let pki = Pki::new();
    let pg = Postgres::start_with_tls(Some((&pki.path("good.pem"), &pki.path("good.key"))));
    let server = serve(&[grants(pg.port), vec!["--outbound-ca".into(), pki.ca()]].concat());
    let v = call(&server, "/pg-tls", &login(pg.port)).unwrap();
    assert_eq!(v, serde_json::json!({"ssl": true, "version": "TLSv1.3"}));
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
