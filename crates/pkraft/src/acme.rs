//! `[https.acme]`: the `[https]` certificate obtained and renewed from an ACME CA (Let's Encrypt
//! by default) by the node itself, as iroh-dns-server does, with `tokio-rustls-acme`.
//!
//! The CA checks that the node controls each name with TLS-ALPN-01 (RFC 8737): it connects to
//! port 443 of the name and asks, by ALPN `acme-tls/1`, for a certificate that carries the
//! challenge; the `[https]` listener answers that handshake and closes the connection
//! (`pkraft_http::serve`). So every name must resolve to this node and its `[https]` listener
//! must be reachable on port 443. The account key and the certificate are kept in
//! `<data_dir>/acme/` (a directory only the node's user can read), so a restart serves the
//! certificate it has and orders none. A certificate is renewed when two thirds of its validity
//! have passed (30 days before expiry for Let's Encrypt's 90 days); a failed order is retried
//! with exponential backoff (1 s, doubling, up to about 18 h) while the certificate it has keeps
//! serving. `pkraft_tls_acme_orders_total{result}` counts orders and failures, and
//! `pkraft_tls_certificate_expiry_timestamp_seconds{listener="https"}` says when the served
//! certificate expires, as for certificate files.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use futures_lite::StreamExt as _;
use prometheus::{IntCounterVec, Opts, Registry};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::ResolvesServerCert;
use serde::Deserialize;
use tokio_rustls_acme::caches::DirCache;
use tokio_rustls_acme::{AccountCache, AcmeConfig, CertCache, EventOk};

use crate::certificates::CertificateMetrics;

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `[https.acme]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSettings {
    /// The names the certificate is for. Each must resolve to this node, whose `[https]`
    /// listener the CA reaches on port 443 (TLS-ALPN-01); no wildcards.
    pub domains: Vec<String>,
    /// Contact addresses given to the CA, e.g. `["mailto:ops@example.org"]`. Optional.
    #[serde(default)]
    pub contact: Vec<String>,
    /// The CA's ACME directory URL. Default: Let's Encrypt's production directory.
    #[serde(default = "lets_encrypt")]
    pub directory: String,
    /// PEM CA certificate(s) trusted for the directory's HTTPS instead of the system's (a
    /// private ACME CA, or Pebble in tests).
    pub directory_ca: Option<PathBuf>,
}

fn lets_encrypt() -> String {
    LETS_ENCRYPT.to_string()
}

impl AcmeSettings {
    /// Checks the names, the URL and the CA file; errors name the field.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.domains.is_empty(),
            "https.acme.domains: at least one name"
        );
        for domain in &self.domains {
            anyhow::ensure!(
                domain.contains('.')
                    && !domain.starts_with('*')
                    && hickory_proto::rr::Name::from_ascii(domain).is_ok(),
                "https.acme.domains: {domain:?} is not a DNS name a certificate can be ordered \
                 for here (no wildcards: TLS-ALPN-01 cannot prove them)"
            );
        }
        anyhow::ensure!(
            self.directory.starts_with("https://"),
            "https.acme.directory: {:?} is not an https:// URL",
            self.directory
        );
        self.client_config()?;
        Ok(())
    }

    /// The TLS client of the ACME API: the configured CA, or the system's.
    fn client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.directory_ca {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| {
                        anyhow::anyhow!("https.acme.directory_ca: {}: {e}", path.display())
                    })?;
                anyhow::ensure!(
                    !certs.is_empty(),
                    "https.acme.directory_ca: {} holds no certificate",
                    path.display()
                );
                for cert in certs {
                    roots
                        .add(cert)
                        .with_context(|| format!("https.acme.directory_ca: {}", path.display()))?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
                anyhow::ensure!(
                    !roots.is_empty(),
                    "https.acme: no CA certificates on this system to check {} with \
                     (install ca-certificates, or set https.acme.directory_ca)",
                    self.directory
                );
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .context("https.acme: TLS protocol versions")?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        ))
    }
}

/// `pkraft_tls_acme_orders_total{result}`.
#[derive(Clone)]
pub struct AcmeMetrics {
    orders: IntCounterVec,
}

impl AcmeMetrics {
    pub fn new() -> prometheus::Result<AcmeMetrics> {
        let orders = IntCounterVec::new(
            Opts::new(
                "pkraft_tls_acme_orders_total",
                "Certificates ordered from the ACME CA ([https.acme]) by result: issued, or \
                 error (the order failed and is retried with backoff; the certificate served \
                 before keeps serving)",
            ),
            &["result"],
        )?;
        for result in ["issued", "error"] {
            orders.with_label_values(&[result]);
        }
        Ok(AcmeMetrics { orders })
    }

    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.orders.clone()))
    }
}

/// The certificate's ACME client, running: what the `[https]` listener asks at each handshake
/// (the certificate, or a challenge's), and the task that orders and renews.
pub struct Acme {
    pub resolver: Arc<dyn ResolvesServerCert>,
    pub task: tokio::task::JoinHandle<()>,
}

/// How long the start waits for the certificate kept in the data dir: the state machine's first
/// event comes from reading that file (milliseconds). Without a kept certificate the first
/// event is an order's, over the network; the start gives up on it after this long and the
/// order goes on in the background.
const KEPT_CERTIFICATE_WAIT: Duration = Duration::from_secs(2);

/// Starts the ACME client for `settings`, keeping its state in `<data_dir>/acme/`; returns once
/// a certificate kept there is served, so that a restart fails no handshake. Until there is a
/// certificate (from there, or a first order), TLS handshakes fail.
pub async fn start(
    settings: &AcmeSettings,
    data_dir: &Path,
    certificates: CertificateMetrics,
    metrics: AcmeMetrics,
) -> anyhow::Result<Acme> {
    let dir = data_dir.join("acme");
    {
        use std::os::unix::fs::DirBuilderExt as _;
        // The account key and the certificate's private key live here: the node's user only.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("https.acme: cannot create {}", dir.display()))?;
    }
    let cache = ExpiryCache {
        dir: DirCache::new(dir),
        certificates,
    };
    let mut state = AcmeConfig::new_with_client_tls_config(
        settings.domains.iter().map(String::as_str),
        settings.client_config()?,
    )
    .contact(settings.contact.iter().map(String::as_str))
    .directory(&settings.directory)
    .cache(cache)
    .state();
    let resolver = state.resolver();
    let domains = settings.domains.join(", ");
    // `next()` is cancel-safe here: the state machine keeps its work in itself, not in the
    // future a timeout drops.
    if let Ok(Some(event)) = tokio::time::timeout(KEPT_CERTIFICATE_WAIT, state.next()).await {
        note(&event, &domains, &metrics);
    }
    let task = tokio::spawn(async move {
        while let Some(event) = state.next().await {
            note(&event, &domains, &metrics);
        }
    });
    Ok(Acme { resolver, task })
}

/// Logs and counts what the ACME state machine did.
fn note(
    event: &Result<EventOk, tokio_rustls_acme::EventError<std::io::Error, std::io::Error>>,
    domains: &str,
    metrics: &AcmeMetrics,
) {
    match event {
        Ok(EventOk::DeployedNewCert) => {
            metrics.orders.with_label_values(&["issued"]).inc();
            tracing::info!(domains, "ACME: new certificate issued and served");
        }
        Ok(EventOk::DeployedCachedCert) => {
            tracing::info!(
                domains,
                "ACME: serving the certificate kept in the data dir"
            );
        }
        Ok(event @ (EventOk::CertCacheStore | EventOk::AccountCacheStore)) => {
            tracing::debug!(?event, "ACME: stored in the data dir");
        }
        Err(error) => {
            if matches!(error, tokio_rustls_acme::EventError::Order(_)) {
                metrics.orders.with_label_values(&["error"]).inc();
            }
            tracing::warn!(
                domains,
                error = %error,
                "ACME: failed, retrying with backoff; the certificate served before (if any) \
                 keeps serving"
            );
        }
    }
}

/// tokio-rustls-acme's directory cache, exporting the expiry of every certificate it loads or
/// stores (the one about to be served).
struct ExpiryCache {
    dir: DirCache<PathBuf>,
    certificates: CertificateMetrics,
}

impl ExpiryCache {
    fn note_expiry(&self, pem: &[u8]) {
        if let Some(Ok(leaf)) = CertificateDer::pem_slice_iter(pem).next() {
            self.certificates.served("https", &leaf);
        }
    }
}

#[async_trait]
impl CertCache for ExpiryCache {
    type EC = std::io::Error;

    async fn load_cert(
        &self,
        domains: &[String],
        directory_url: &str,
    ) -> Result<Option<Vec<u8>>, Self::EC> {
        let pem = self.dir.load_cert(domains, directory_url).await?;
        if let Some(pem) = &pem {
            self.note_expiry(pem);
        }
        Ok(pem)
    }

    async fn store_cert(
        &self,
        domains: &[String],
        directory_url: &str,
        cert: &[u8],
    ) -> Result<(), Self::EC> {
        self.note_expiry(cert);
        self.dir.store_cert(domains, directory_url, cert).await
    }
}

#[async_trait]
impl AccountCache for ExpiryCache {
    type EA = std::io::Error;

    async fn load_account(
        &self,
        contact: &[String],
        directory_url: &str,
    ) -> Result<Option<Vec<u8>>, Self::EA> {
        self.dir.load_account(contact, directory_url).await
    }

    async fn store_account(
        &self,
        contact: &[String],
        directory_url: &str,
        account: &[u8],
    ) -> Result<(), Self::EA> {
        self.dir
            .store_account(contact, directory_url, account)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml_text: &str) -> AcmeSettings {
        toml::from_str(toml_text).expect("parses")
    }

    #[test]
    fn names_url_and_ca_are_checked_naming_the_field() {
        let ca = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/tls/ca.crt"
        );
        let good = settings(&format!(
            "domains = [\"pkarr.example.org\"]\ndirectory = \"https://127.0.0.1:14000/dir\"\n\
             directory_ca = \"{ca}\""
        ));
        assert!(good.validate().is_ok());
        assert_eq!(
            settings("domains = [\"a.example\"]").directory,
            LETS_ENCRYPT
        );
        for (bad, field) in [
            ("domains = []", "https.acme.domains"),
            ("domains = [\"*.example.org\"]", "https.acme.domains"),
            ("domains = [\"localhost\"]", "https.acme.domains"),
            (
                "domains = [\"a.example\"]\ndirectory = \"http://ca.example/dir\"",
                "https.acme.directory",
            ),
            (
                "domains = [\"a.example\"]\ndirectory_ca = \"/nonexistent.pem\"",
                "https.acme.directory_ca",
            ),
        ] {
            let error = format!("{:#}", settings(bad).validate().expect_err(bad));
            assert!(error.contains(field), "{bad}: {error}");
        }
    }
}
