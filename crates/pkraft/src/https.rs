//! The optional `[https]` listener's settings: the public router (relay, DNS-over-HTTPS, health)
//! over TLS, HTTP/1.1 and HTTP/2 (ALPN), from PEM certificate and key files. Connections are
//! served by [`crate::serve`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// `[https]`: serve the public API over TLS too. Unset by default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsSettings {
    /// Listen address, e.g. `0.0.0.0:443`.
    pub listen: SocketAddr,
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl HttpsSettings {
    /// The TLS configuration from the certificate and key files; errors name the field.
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| pem_error("https.cert", &self.cert, e))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "https.cert: {} holds no certificate",
            self.cert.display()
        );
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| pem_error("https.key", &self.key, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("https: TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("https.key does not match https.cert")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn pem_error(field: &str, path: &Path, e: rustls::pki_types::pem::Error) -> anyhow::Error {
    anyhow::anyhow!("{field}: cannot read {}: {e}", path.display())
}
