//! The optional `[https]` listener's settings: the public router (relay, DNS-over-HTTPS, health)
//! over TLS, HTTP/1.1 and HTTP/2 (ALPN), from PEM certificate and key files, which are reloaded
//! when they change ([`crate::certificates`]), or from an ACME CA (`[https.acme]`,
//! [`crate::acme`]). Connections are served by `pkraft_http::serve`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use serde::Deserialize;

use crate::certificates::{CertificateFiles, ReloadingCertificate};

/// `[https]`: serve the public API over TLS too. Unset by default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsSettings {
    /// Listen address, e.g. `0.0.0.0:443`.
    pub listen: SocketAddr,
    /// PEM file with the certificate chain, leaf first (or `[https.acme]`).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The certificate from an ACME CA instead of `cert` and `key`.
    #[serde(default)]
    pub acme: Option<crate::acme::AcmeSettings>,
    /// How often the two files are checked for a change (a renewal). A change is loaded once
    /// both files have stayed the same for one more interval, so that a pair written one file
    /// at a time is not read half-way; SIGHUP loads them at once. Default 10 s.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

/// Checking two files' metadata more often than this buys nothing and costs a thread wake-up.
const RELOAD_INTERVAL_MIN: Duration = Duration::from_millis(10);

impl HttpsSettings {
    /// Checks the interval and reads the files, so that `check-config` catches a wrong path or
    /// format; errors name the field.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.reload_interval >= RELOAD_INTERVAL_MIN,
            "https.reload_interval: {:?} is shorter than {RELOAD_INTERVAL_MIN:?}",
            self.reload_interval
        );
        match &self.acme {
            Some(acme) => {
                anyhow::ensure!(
                    self.cert.is_none() && self.key.is_none(),
                    "https: set cert and key, or [https.acme], not both"
                );
                acme.validate()
            }
            None => self.certified_key().map(drop),
        }
    }

    /// The certificate and key files; an error names what is missing.
    pub fn files(&self) -> anyhow::Result<(&Path, &Path)> {
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Ok((cert, key)),
            (None, _) => anyhow::bail!("https.cert: missing (or set [https.acme])"),
            (_, None) => anyhow::bail!("https.key: missing (or set [https.acme])"),
        }
    }

    /// The certificate chain and key from the files; errors name the field.
    pub fn certified_key(&self) -> anyhow::Result<CertifiedKey> {
        let (cert, key) = self.files()?;
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| pem_error("https.cert", cert, e))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "https.cert: {} holds no certificate",
            cert.display()
        );
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error("https.key", key, e))?;
        CertifiedKey::from_der(certs, key, &crypto_provider())
            .context("https.key does not match https.cert")
    }
}

/// The TLS configuration of the `[https]` listener, presenting what `certificate` holds at
/// each handshake; `tls_alpn_01`: offering the ACME CA's challenge protocol too.
pub fn server_config(
    certificate: Arc<dyn ResolvesServerCert>,
    tls_alpn_01: bool,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(crypto_provider()))
        .with_safe_default_protocol_versions()
        .context("https: TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if tls_alpn_01 {
        // For the ACME CA's challenge handshakes ([https.acme], TLS-ALPN-01) only; the
        // listener closes such a connection after the handshake (pkraft_http::serve).
        config
            .alpn_protocols
            .push(pkraft_http::serve::ACME_TLS_ALPN.to_vec());
    }
    Ok(Arc::new(config))
}

/// ring, as everywhere in the daemon (no aws-lc).
fn crypto_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn pem_error(field: &str, path: &Path, e: rustls::pki_types::pem::Error) -> anyhow::Error {
    anyhow::anyhow!("{field}: cannot read {}: {e}", path.display())
}

/// The `[https]` listener's certificate and key.
pub struct HttpsFiles {
    settings: HttpsSettings,
    certificate: Arc<ReloadingCertificate>,
}

impl HttpsFiles {
    /// Loads the files for the first time; errors name the field.
    pub fn load_first(settings: &HttpsSettings) -> anyhow::Result<HttpsFiles> {
        Ok(HttpsFiles {
            settings: settings.clone(),
            certificate: Arc::new(ReloadingCertificate::new(settings.certified_key()?)),
        })
    }

    /// What the listener's TLS configuration asks for the certificate.
    pub fn certificate(&self) -> Arc<ReloadingCertificate> {
        self.certificate.clone()
    }
}

impl CertificateFiles for HttpsFiles {
    fn paths(&self) -> Vec<PathBuf> {
        self.settings
            .files()
            .map(|(cert, key)| vec![cert.to_path_buf(), key.to_path_buf()])
            .unwrap_or_default()
    }

    fn load(&self) -> anyhow::Result<Arc<CertifiedKey>> {
        let key = Arc::new(self.settings.certified_key()?);
        self.certificate.present(key.clone());
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::HttpsSettings;

    /// A reload interval too short to mean anything is refused, naming the field, before the
    /// files are read.
    #[test]
    fn a_reload_interval_below_the_minimum_names_the_field() {
        let settings: HttpsSettings = toml::from_str(
            "listen = \"127.0.0.1:0\"\ncert = \"c.pem\"\nkey = \"k.pem\"\nreload_interval = \"1ms\"",
        )
        .expect("parses");
        let error = format!("{:#}", settings.validate().expect_err("refused"));
        assert!(error.contains("https.reload_interval"), "{error}");
        let settings = HttpsSettings {
            reload_interval: std::time::Duration::from_secs(10),
            ..settings
        };
        let error = format!("{:#}", settings.validate().expect_err("no such file"));
        assert!(error.contains("https.cert"), "{error}");
    }

    /// Certificate files or ACME, exactly one of them.
    #[test]
    fn files_or_acme_not_both_nor_neither() {
        let both: HttpsSettings = toml::from_str(
            "listen = \"127.0.0.1:0\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
             [acme]\ndomains = [\"pkarr.example.org\"]",
        )
        .expect("parses");
        let error = format!("{:#}", both.validate().expect_err("both"));
        assert!(error.contains("not both"), "{error}");
        let neither: HttpsSettings = toml::from_str("listen = \"127.0.0.1:0\"").expect("parses");
        let error = format!("{:#}", neither.validate().expect_err("neither"));
        assert!(error.contains("https.cert: missing"), "{error}");
    }
}
