//! The `tls` imports: TLS client sessions the host runs for the guest,
//! whose CPython has no OpenSSL. A session is sans-IO, as Python's
//! `ssl.SSLObject` over a `MemoryBIO`: the guest moves the ciphertext over
//! its own socket (a connection its grants already allowed, so nothing new
//! reaches the network), and the session (rustls) turns it into plaintext
//! and back. So a socket already connected can be upgraded (STARTTLS).
//!
//! wasmtime-wasi-tls (the `wasi:tls` proposal) was not used: it takes the
//! `wasi:io` streams of a socket, which the guest's wasi-libc owns and
//! CPython's `socket` module never hands out.
//!
//! Verification is the host's: every session checks the peer's
//! certificate chain against the app's [`Trust`] and the certificate
//! against the server name, whatever the guest's `ssl.SSLContext` says.
//!
//! Bounded by the request: a request opens at most
//! `--max-outbound-connections` sessions (each rides on such a connection),
//! every session is gone with the store, the host's time in them shows as
//! `tls_ms` in the access line, and the waits are the guest's own socket
//! reads, bounded by `--timeout`.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConnection};
use wasmtime::component::Resource;

use crate::bindings::tls::{self, Certificate, NameEntry, Received, SessionInfo, TlsError};
use crate::trust::Trust;

/// How much ciphertext a session holds that rustls has not taken yet: a
/// guest must read the plaintext it has before it hands over more. The
/// guest's `ssl` hands over 16 KiB at a time, once the plaintext is read.
const MAX_PENDING: usize = 256 * 1024;

/// One session, the name it verifies the peer against, and the ciphertext
/// received that rustls has no room for yet (it holds 16 KiB of plaintext
/// unread at most).
struct Session {
    conn: ClientConnection,
    name: String,
    pending: Vec<u8>,
    /// The socket's end of file came after `pending`.
    eof: bool,
}

impl Session {
    /// Hands rustls the pending ciphertext, as much as it has room for,
    /// then the end of file if that came.
    fn pump(&mut self) -> Result<(), TlsError> {
        loop {
            let eof = self.pending.is_empty();
            if eof && !self.eof {
                return Ok(());
            }
            let mut rest = self.pending.as_slice();
            // An error is rustls's back-pressure (its plaintext buffer is
            // full until the guest reads); reading a slice cannot fail.
            let Ok(taken) = self.conn.read_tls(&mut rest) else { return Ok(()) };
            self.conn.process_new_packets().map_err(|e| protocol(&e, &self.name))?;
            if taken == 0 {
                // The end of file now recorded, or a close_notify after
                // which rustls takes nothing more.
                self.pending.clear();
                self.eof = false;
                return Ok(());
            }
            self.pending.drain(..taken);
        }
    }
}

/// One request's TLS sessions.
pub struct Tls {
    /// The app's trust, or none: then no session can be opened.
    trust: Option<Arc<Trust>>,
    /// Open sessions, by the `rep` of the guest's handle.
    sessions: Vec<Option<Session>>,
    /// Sessions opened so far, at most `max`.
    opened: usize,
    /// `--max-outbound-connections`.
    max: usize,
    /// The host's time in the sessions.
    pub time: Duration,
}

impl Tls {
    /// A request's sessions, none open yet.
    pub fn new(trust: Option<Arc<Trust>>, max: usize) -> Self {
        Self { trust, sessions: Vec::new(), opened: 0, max, time: Duration::ZERO }
    }

    /// The session behind `handle`.
    fn session(&mut self, handle: &Resource<tls::Session>) -> wasmtime::Result<&mut Session> {
        let at = handle.rep() as usize;
        self.sessions.get_mut(at).and_then(Option::as_mut).ok_or_else(|| wasmtime::format_err!("no such TLS session"))
    }

    /// Runs `work` on the session behind `handle`, adding its time to `time`.
    fn timed<R>(
        &mut self,
        handle: &Resource<tls::Session>,
        work: impl FnOnce(&mut Session) -> R,
    ) -> wasmtime::Result<R> {
        let started = Instant::now();
        let result = work(self.session(handle)?);
        self.time += started.elapsed();
        Ok(result)
    }

    fn open(&mut self, name: &str, alpn: Vec<String>, min: u16, max: u16) -> Result<Session, TlsError> {
        let refused = |why: String| TlsError::Refused(format!("wsgi-wasm: {why}"));
        let Some(trust) = &self.trust else { return Err(refused("this sandbox has no TLS".into())) };
        if self.opened >= self.max {
            return Err(refused(format!("past --max-outbound-connections {}: no more TLS sessions", self.max)));
        }
        let Some(config) = trust.config(min, max) else {
            return Err(refused("TLS older than 1.2 is not supported".into()));
        };
        let server = ServerName::try_from(name.trim_end_matches('.').to_owned())
            .map_err(|_| refused(format!("{name:?} is not a host name or an IP address")))?;
        let alpn = alpn.into_iter().map(String::into_bytes).collect();
        let conn = ClientConnection::new_with_alpn(config, server, alpn).map_err(|e| protocol(&e, name))?;
        self.opened += 1;
        Ok(Session { conn, name: name.to_owned(), pending: Vec::new(), eof: false })
    }
}

impl tls::Host for Tls {}

impl tls::HostSession for Tls {
    async fn open(
        &mut self,
        server_name: String,
        alpn: Vec<String>,
        min_version: u16,
        max_version: u16,
    ) -> wasmtime::Result<Result<Resource<tls::Session>, TlsError>> {
        let started = Instant::now();
        let opened = Tls::open(self, &server_name, alpn, min_version, max_version);
        self.time += started.elapsed();
        Ok(opened.map(|session| {
            let rep = match self.sessions.iter().position(Option::is_none) {
                Some(free) => {
                    self.sessions[free] = Some(session);
                    free
                }
                None => {
                    self.sessions.push(Some(session));
                    self.sessions.len() - 1
                }
            };
            Resource::new_own(u32::try_from(rep).expect("at most --max-outbound-connections sessions"))
        }))
    }

    async fn receive(
        &mut self,
        handle: Resource<tls::Session>,
        ciphertext: Vec<u8>,
    ) -> wasmtime::Result<Result<(), TlsError>> {
        self.timed(&handle, |session| {
            if ciphertext.is_empty() {
                session.eof = true;
            } else if session.pending.len() + ciphertext.len() > MAX_PENDING {
                return Err(TlsError::Protocol(format!(
                    "more than {} KiB of ciphertext received before the plaintext was read",
                    MAX_PENDING / 1024
                )));
            } else {
                session.pending.extend_from_slice(&ciphertext);
            }
            session.pump()
        })
    }

    async fn transmit(&mut self, handle: Resource<tls::Session>) -> wasmtime::Result<Vec<u8>> {
        self.timed(&handle, |Session { conn, .. }| {
            let mut out = Vec::new();
            while conn.wants_write() {
                if conn.write_tls(&mut out).is_err() {
                    break;
                }
            }
            out
        })
    }

    async fn handshaking(&mut self, handle: Resource<tls::Session>) -> wasmtime::Result<bool> {
        Ok(self.session(&handle)?.conn.is_handshaking())
    }

    async fn read(&mut self, handle: Resource<tls::Session>, max: u32) -> wasmtime::Result<Result<Received, TlsError>> {
        self.timed(&handle, |session| {
            session.pump()?;
            let mut data = vec![0; max.min(1 << 20) as usize];
            match session.conn.reader().read(&mut data) {
                // A clean close: the peer's close_notify.
                Ok(0) => Ok(Received { data: Vec::new(), closed: true }),
                Ok(n) => {
                    data.truncate(n);
                    Ok(Received { data, closed: false })
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    Ok(Received { data: Vec::new(), closed: false })
                }
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    Err(TlsError::Protocol("EOF occurred in violation of protocol".into()))
                }
                Err(e) => Err(TlsError::Protocol(e.to_string())),
            }
        })
    }

    async fn write(
        &mut self,
        handle: Resource<tls::Session>,
        plaintext: Vec<u8>,
    ) -> wasmtime::Result<Result<u32, TlsError>> {
        // rustls takes what fits in its buffer of ciphertext to send (64 KiB
        // by default); the guest sends that and hands over the rest.
        self.timed(&handle, |Session { conn, .. }| match conn.writer().write(&plaintext) {
            Ok(taken) => Ok(u32::try_from(taken).expect("at most the list's length")),
            Err(e) => Err(TlsError::Protocol(e.to_string())),
        })
    }

    async fn close(&mut self, handle: Resource<tls::Session>) -> wasmtime::Result<()> {
        self.timed(&handle, |Session { conn, .. }| conn.send_close_notify())
    }

    async fn info(&mut self, handle: Resource<tls::Session>) -> wasmtime::Result<Option<SessionInfo>> {
        let session = &self.session(&handle)?.conn;
        if session.is_handshaking() {
            return Ok(None);
        }
        let suite = session.negotiated_cipher_suite();
        let (cipher, bits) = suite.map_or_else(|| (String::new(), 0), |s| openssl_cipher(s.suite()));
        let version = match session.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            _ => "TLSv1.2",
        };
        let alpn = session.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
        let peer = session.peer_certificates().unwrap_or_default().iter().map(decode).collect();
        Ok(Some(SessionInfo { version: version.into(), cipher, bits, alpn, peer }))
    }

    async fn drop(&mut self, handle: Resource<tls::Session>) -> wasmtime::Result<()> {
        if let Some(slot) = self.sessions.get_mut(handle.rep() as usize) {
            *slot = None;
        }
        Ok(())
    }
}

/// A rustls error as the guest's `ssl` raises it: a certificate that did
/// not verify with OpenSSL's verify code and words, anything else as a
/// protocol error.
fn protocol(err: &rustls::Error, name: &str) -> TlsError {
    let (code, words) = match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => (20, "unable to get local issuer certificate".to_owned()),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                (62, format!("Hostname mismatch, certificate is not valid for '{name}'."))
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                (10, "certificate has expired".to_owned())
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                (9, "certificate is not yet valid".to_owned())
            }
            CertificateError::Revoked => (23, "certificate revoked".to_owned()),
            CertificateError::BadSignature => (7, "certificate signature failure".to_owned()),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                (26, "unsupported certificate purpose".to_owned())
            }
            // webpki's own reasons come wrapped: the one OpenSSL names is a
            // self-signed certificate served as the peer's own.
            CertificateError::Other(other) if other.to_string().contains("CaUsedAsEndEntity") => {
                (18, "self-signed certificate".to_owned())
            }
            other => (1, other.to_string()),
        },
        other => return TlsError::Protocol(other.to_string()),
    };
    TlsError::Certificate((code, words))
}

/// A cipher suite by OpenSSL's name, and its key size in bits.
fn openssl_cipher(suite: rustls::CipherSuite) -> (String, u32) {
    use rustls::CipherSuite as C;
    let (name, bits) = match suite {
        C::TLS13_AES_128_GCM_SHA256 => ("TLS_AES_128_GCM_SHA256", 128),
        C::TLS13_AES_256_GCM_SHA384 => ("TLS_AES_256_GCM_SHA384", 256),
        C::TLS13_CHACHA20_POLY1305_SHA256 => ("TLS_CHACHA20_POLY1305_SHA256", 256),
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => ("ECDHE-ECDSA-AES128-GCM-SHA256", 128),
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => ("ECDHE-ECDSA-AES256-GCM-SHA384", 256),
        C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => ("ECDHE-ECDSA-CHACHA20-POLY1305", 256),
        C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => ("ECDHE-RSA-AES128-GCM-SHA256", 128),
        C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => ("ECDHE-RSA-AES256-GCM-SHA384", 256),
        C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => ("ECDHE-RSA-CHACHA20-POLY1305", 256),
        other => return (format!("{other:?}"), 0),
    };
    (name.to_owned(), bits)
}

/// A certificate decoded as `getpeercert()` reports it; what cannot be
/// decoded is left out (the DER is always there).
fn decode(der: &CertificateDer<'_>) -> Certificate {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let mut cert = Certificate {
        der: der.to_vec(),
        subject: Vec::new(),
        issuer: Vec::new(),
        version: 0,
        serial_number: String::new(),
        not_before: String::new(),
        not_after: String::new(),
        subject_alt_name: Vec::new(),
    };
    let Ok((_, x509)) = X509Certificate::from_der(der) else { return cert };
    let names = |name: &x509_parser::x509::X509Name<'_>| -> Vec<NameEntry> {
        name.iter_attributes()
            .map(|attr| NameEntry {
                key: attribute_name(&attr.attr_type().to_id_string()),
                value: attr.as_str().map_or_else(|_| String::new(), str::to_owned),
            })
            .collect()
    };
    cert.subject = names(x509.subject());
    cert.issuer = names(x509.issuer());
    cert.version = x509.version().0 + 1;
    cert.serial_number = x509.raw_serial_as_string().replace(':', "").to_ascii_uppercase();
    // OpenSSL's form: `Jan  5 09:00:00 2027 GMT`.
    let when = |t: x509_parser::time::ASN1Time| {
        let t = t.to_datetime();
        let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
            [usize::from(u8::from(t.month())) - 1];
        format!("{month} {:>2} {:02}:{:02}:{:02} {} GMT", t.day(), t.hour(), t.minute(), t.second(), t.year())
    };
    cert.not_before = when(x509.validity().not_before);
    cert.not_after = when(x509.validity().not_after);
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for name in &san.value.general_names {
            let (key, value) = match name {
                GeneralName::DNSName(dns) => ("DNS", (*dns).to_owned()),
                GeneralName::IPAddress(ip) => ("IP Address", ip_text(ip)),
                GeneralName::RFC822Name(mail) => ("email", (*mail).to_owned()),
                GeneralName::URI(uri) => ("URI", (*uri).to_owned()),
                _ => continue,
            };
            cert.subject_alt_name.push(NameEntry { key: key.into(), value });
        }
    }
    cert
}

/// An attribute's name as OpenSSL's long names spell it, or its OID.
fn attribute_name(oid: &str) -> String {
    match oid {
        "2.5.4.3" => "commonName",
        "2.5.4.6" => "countryName",
        "2.5.4.7" => "localityName",
        "2.5.4.8" => "stateOrProvinceName",
        "2.5.4.10" => "organizationName",
        "2.5.4.11" => "organizationalUnitName",
        "2.5.4.5" => "serialNumber",
        "1.2.840.113549.1.9.1" => "emailAddress",
        "0.9.2342.19200300.100.1.25" => "domainComponent",
        other => other,
    }
    .to_owned()
}

/// An IP address from a certificate, as OpenSSL prints it.
fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).expect("four bytes")).to_string(),
        16 => {
            let segments: Vec<String> =
                bytes.chunks(2).map(|pair| format!("{:X}", u16::from_be_bytes([pair[0], pair[1]]))).collect();
            segments.join(":")
        }
        _ => String::new(),
    }
}

/// Adds the `tls` interface to `linker`.
///
/// # Errors
/// Fails if a function cannot be defined.
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<super::HostState>) -> anyhow::Result<()> {
    tls::add_to_linker::<super::HostState, wasmtime::component::HasSelf<Tls>>(linker, |s| &mut s.tls)?;
    Ok(())
}
