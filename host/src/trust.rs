//! Whom a guest's TLS connections trust: the host's system roots (the
//! Mozilla set compiled in where the system has none) and the roots the
//! operator adds for an app (`--outbound-ca`, `outbound_ca`), as rustls
//! client configurations. Every session verifies the peer's certificate and
//! name against them; nothing a guest says widens or skips that.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// TLS 1.2, the oldest version a session may use.
pub const TLS12: u16 = 0x0303;
/// TLS 1.3.
pub const TLS13: u16 = 0x0304;

/// One app's trust: a client configuration for each range of versions.
#[derive(Debug)]
pub struct Trust {
    /// TLS 1.2 and 1.3.
    both: Arc<ClientConfig>,
    tls12: Arc<ClientConfig>,
    tls13: Arc<ClientConfig>,
    /// How many roots it holds.
    pub roots: usize,
}

impl Trust {
    /// The system's roots, and the certificates of the PEM bundle
    /// `extra_ca` if there is one.
    ///
    /// # Errors
    /// The bundle cannot be read, or holds no certificate.
    pub fn load(extra_ca: Option<&Path>) -> Result<Self> {
        let mut roots = system_roots().clone();
        if let Some(path) = extra_ca {
            roots.roots.extend(read_bundle(path)?.roots);
        }
        let roots = Arc::new(roots);
        let config = |versions: &[&'static rustls::SupportedProtocolVersion]| -> Result<Arc<ClientConfig>> {
            // ring, not aws-lc-rs (rustls's default), whose C and assembly
            // need cmake and a build several times as long; ring has no
            // post-quantum key exchange, which rustls marks by deprecating
            // this constructor.
            #[allow(deprecated)]
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(versions)
                .context("the TLS versions")?
                .with_root_certificates(Arc::clone(&roots))
                .with_no_client_auth();
            Ok(Arc::new(config))
        };
        Ok(Self {
            both: config(&[&rustls::version::TLS13, &rustls::version::TLS12])?,
            tls12: config(&[&rustls::version::TLS12])?,
            tls13: config(&[&rustls::version::TLS13])?,
            roots: roots.len(),
        })
    }

    /// The configuration for versions `min` to `max` (as `u16`s, TLS 1.2
    /// being 0x0303); `None` if that range holds neither 1.2 nor 1.3.
    pub fn config(&self, min: u16, max: u16) -> Option<Arc<ClientConfig>> {
        let (twelve, thirteen) = ((min..=max).contains(&TLS12), (min..=max).contains(&TLS13));
        match (twelve, thirteen) {
            (true, true) => Some(Arc::clone(&self.both)),
            (true, false) => Some(Arc::clone(&self.tls12)),
            (false, true) => Some(Arc::clone(&self.tls13)),
            (false, false) => None,
        }
    }
}

/// The roots of the PEM bundle at `path`: what `--outbound-ca` and
/// `outbound_ca` add to the system's.
///
/// # Errors
/// The file cannot be read, is not PEM, holds no certificate, or holds one
/// that cannot be parsed.
pub fn read_bundle(path: &Path) -> Result<RootCertStore> {
    let mut bundle = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).with_context(|| format!("reading {}", path.display()))? {
        let cert = cert.with_context(|| format!("{} is not a PEM bundle", path.display()))?;
        bundle.add(cert).with_context(|| format!("{} holds a certificate that cannot be parsed", path.display()))?;
    }
    if bundle.is_empty() {
        bail!("{} holds no certificate (expected a PEM bundle of CA certificates)", path.display());
    }
    Ok(bundle)
}

/// The system's trusted roots, read once: the platform store (Debian's
/// `ca-certificates`, `SSL_CERT_FILE`), else the Mozilla set compiled in.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            tracing::info!("no system trust store found; TLS peers are verified against the Mozilla roots built in");
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        roots
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_pick_a_configuration_and_an_added_bundle_must_hold_certificates() {
        let trust = Trust::load(None).unwrap();
        assert!(trust.roots > 0);
        assert!(trust.config(TLS12, TLS13).is_some() && trust.config(TLS13, TLS13).is_some());
        assert!(trust.config(0x0301, 0x0302).is_none(), "no TLS 1.0 or 1.1");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(format!("{:#}", Trust::load(Some(&empty)).unwrap_err()).contains("holds no certificate"));
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let bundle = dir.path().join("ca.pem");
        std::fs::write(&bundle, ca.cert.pem()).unwrap();
        assert_eq!(Trust::load(Some(&bundle)).unwrap().roots, trust.roots + 1);
    }
}
