//! Optional mutual TLS on the peer network (`[cluster.tls]`).
//!
//! Every node has a certificate (for the host in its `cluster.advertise` address, with both the
//! serverAuth and clientAuth key usages) signed by one cluster CA. The peer listener then speaks
//! only TLS and accepts only clients with a certificate from that CA; the peer client verifies
//! the listener's certificate against the CA and the host it dials, and presents its own. The
//! cluster secret is still required on every request: TLS keeps it and the Raft traffic off the
//! wire, the secret keeps one stolen certificate from being enough.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::Deserialize;

/// `[cluster.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerTlsSettings {
    /// PEM certificate chain of this node, leaf first: for the host of `cluster.advertise`, with
    /// the serverAuth and clientAuth extended key usages.
    pub cert: PathBuf,
    /// PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM certificate(s) of the CA that signed every node's certificate.
    pub ca: PathBuf,
}

/// A `[cluster.tls]` file that cannot be used; the message names the field.
#[derive(Debug, thiserror::Error)]
#[error("cluster.tls.{field}: {reason}")]
pub struct PeerTlsError {
    pub field: &'static str,
    pub reason: String,
}

/// Both sides of the peer network's TLS.
#[derive(Debug, Clone)]
pub struct PeerTls {
    /// The peer listener's: requires a client certificate from the CA.
    pub server: Arc<ServerConfig>,
    /// The peer client's: trusts only the CA, presents this node's certificate.
    pub client: Arc<ClientConfig>,
}

impl PeerTlsSettings {
    /// Reads the files and builds both configurations.
    pub fn load(&self) -> Result<PeerTls, PeerTlsError> {
        let fail = |field, reason: String| PeerTlsError { field, reason };
        let certs = read_certs(&self.cert).map_err(|reason| fail("cert", reason))?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| fail("key", format!("cannot read {}: {e}", self.key.display())))?;
        let mut roots = RootCertStore::empty();
        for ca in read_certs(&self.ca).map_err(|reason| fail("ca", reason))? {
            roots
                .add(ca)
                .map_err(|e| fail("ca", format!("{}: {e}", self.ca.display())))?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| fail("ca", e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| fail("cert", e.to_string()))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| fail("key", format!("does not match cluster.tls.cert: {e}")))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| fail("cert", e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| fail("key", format!("does not match cluster.tls.cert: {e}")))?;
        Ok(PeerTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}
