//! `[https.acme]`: the `[https]` certificate obtained and renewed from an ACME CA (Let's Encrypt
//! by default) by the node itself, as iroh-dns-server does; the loop is [`client`], on
//! tokio-rustls-acme's ACME messages and files.
//!
//! With `challenge = "dns-01"` the node proves its names through pkraft's own DNS instead:
//! every node of a cluster can then order a certificate for one shared name, and wildcard names
//! work. What follows is the default, `challenge = "tls-alpn-01"`.
//!
//! The CA checks that the node controls each name with TLS-ALPN-01 (RFC 8737): it connects to
//! port 443 of the name and asks, by ALPN `acme-tls/1`, for a certificate that carries the
//! challenge; the `[https]` listener answers that handshake and closes the connection
//! (`pkraft_http::serve`). So every name must resolve to this node and its `[https]` listener
//! must be reachable on port 443. The account key and the certificate are kept in
//! `<data_dir>/acme/` (a directory only the node's user can read), so a restart serves the
//! certificate it has and orders none. A certificate is renewed when two thirds of its validity
//! have passed (30 days before expiry for Let's Encrypt's 90 days); a failed order is retried
//! with exponential backoff (1 s, doubling, up to about 18 h, never past half the time the
//! served certificate has left) while the certificate it has keeps serving. Every request to
//! the CA has a timeout, and the waits read the wall clock again at least hourly. `pkraft_tls_acme_orders_total{result}` counts orders and failures, and
//! `pkraft_tls_certificate_expiry_timestamp_seconds{listener="https"}` says when the served
//! certificate expires, as for certificate files.

mod client;

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use prometheus::{IntCounterVec, Opts, Registry};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::ResolvesServerCert;
use serde::Deserialize;
use tokio_rustls_acme::caches::DirCache;
use tokio_rustls_acme::{AccountCache, CertCache};

use hickory_proto::rr::Name;
use pkraft_raft::node::Node;
use pkraft_types::decode_z32_key;

use crate::certificates::CertificateMetrics;

/// The label a DNS-01 challenge's TXT record is published under (RFC 8555 §8.4): the cluster's
/// short-lived records are answered at names that start with it (`pkraft_dns::ShortLivedNames`).
pub const CHALLENGE_LABEL: &str = "_acme-challenge";

/// The name a DNS-01 challenge for `domain` is published under: `_acme-challenge.` and the
/// domain without a wildcard label, lower case, without the final dot (as replicas keep
/// short-lived records' names). A wildcard's challenge is at its base name (RFC 8555 §8.4).
fn challenge_name(domain: &str) -> String {
    let domain = domain.strip_prefix("*.").unwrap_or(domain);
    format!("{CHALLENGE_LABEL}.{domain}")
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// How the CA checks that the node controls its names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Challenge {
    /// RFC 8737: the CA connects to port 443 of each name; every name must resolve to this
    /// node alone.
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// RFC 8555 §8.4: the CA asks the names' DNS for `_acme-challenge.<name>` TXT, which
    /// pkraft's DNS answers (through the cluster); every name must lie under a `dns.origins`
    /// entry. Allows wildcards and one name shared by every node.
    #[serde(rename = "dns-01")]
    Dns01,
}

/// `[https.acme]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSettings {
    /// The names the certificate is for. TLS-ALPN-01: each must resolve to this node, whose
    /// `[https]` listener the CA reaches on port 443; no wildcards. DNS-01: each must be a
    /// `dns.origins` entry or lie under one (wildcards such as `*.<origin>` allowed).
    pub domains: Vec<String>,
    /// `tls-alpn-01` (default) or `dns-01`.
    #[serde(default)]
    pub challenge: Challenge,
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
            let base = match (self.challenge, domain.strip_prefix("*.")) {
                (Challenge::Dns01, Some(base)) => base,
                _ => domain.as_str(),
            };
            anyhow::ensure!(
                base.contains('.') && !base.contains('*') && Name::from_ascii(base).is_ok(),
                "https.acme.domains: {domain:?} is not a DNS name a certificate can be ordered \
                 for here (wildcards only with challenge = \"dns-01\": TLS-ALPN-01 cannot \
                 prove them)"
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

    /// With DNS-01, that every name lies under one of `origins` (pkraft answers its challenge
    /// there), and that its challenge name is not inside a key's names (which the key's packet
    /// answers). Errors name the field.
    pub fn validate_dns_names(&self, origins: &[Name]) -> anyhow::Result<()> {
        if self.challenge != Challenge::Dns01 {
            return Ok(());
        }
        for domain in &self.domains {
            let base = domain.strip_prefix("*.").unwrap_or(domain);
            let name = Name::from_ascii(base)
                .with_context(|| format!("https.acme.domains: {domain:?}"))?;
            let Some(origin) = origins
                .iter()
                .filter(|origin| origin.zone_of(&name))
                .max_by_key(|origin| origin.num_labels())
            else {
                anyhow::bail!(
                    "https.acme.domains: {domain:?} lies under none of dns.origins, so pkraft's \
                     DNS cannot answer its DNS-01 challenge"
                );
            };
            // The label just left of the origin in `_acme-challenge.<base>`.
            let depth = usize::from(name.num_labels() - origin.num_labels());
            let left_of_origin = depth.checked_sub(1).and_then(|at| name.iter().nth(at));
            if let Some(label) = left_of_origin
                && std::str::from_utf8(label).is_ok_and(|label| decode_z32_key(label).is_ok())
            {
                anyhow::bail!(
                    "https.acme.domains: {domain:?} lies inside the names of a pkarr key, whose \
                     packet answers them"
                );
            }
        }
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

/// How long the start waits for the certificate kept in the data dir (reading a file:
/// milliseconds); past it the start goes on, and the client orders one.
const KEPT_CERTIFICATE_WAIT: Duration = Duration::from_secs(2);

/// The ACME client's loop, as `pkraft_task_panics_total{task}` names it.
pub const ACME_TASK: &str = "acme";

/// Starts the ACME client for `settings`, keeping its state in `<data_dir>/acme/`; returns once
/// a certificate kept there is served, so that a restart fails no handshake. Until there is a
/// certificate (from there, or a first order), TLS handshakes fail. DNS-01 challenges are
/// committed through `node`.
pub async fn start(
    settings: &AcmeSettings,
    data_dir: &Path,
    node: Arc<Node>,
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
    let client = Arc::new(client::AcmeClient::new(settings, cache, node, metrics)?);
    let resolver = client.resolver();
    client.serve_kept().await;
    // Supervised: a panic is logged and counted, and the loop goes on from the served
    // certificate.
    let task = pkraft_tasks::spawn(ACME_TASK, move || client.clone().run());
    Ok(Acme { resolver, task })
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

    #[test]
    fn a_wildcard_and_its_base_share_one_challenge_name() {
        assert_eq!(
            challenge_name("*.Pkarr.Example.org."),
            "_acme-challenge.pkarr.example.org"
        );
        assert_eq!(
            challenge_name("pkarr.example.org"),
            "_acme-challenge.pkarr.example.org"
        );
    }

    #[test]
    fn dns01_takes_wildcards_under_an_origin_and_no_key_names() {
        let origins = [
            Name::from_ascii("pkarr.example.org.").expect("origin"),
            Name::from_ascii("inner.pkarr.example.org.").expect("origin"),
        ];
        let dns01 =
            |domains: &str| settings(&format!("challenge = \"dns-01\"\ndomains = [{domains}]"));
        let good = dns01(
            "\"pkarr.example.org\", \"*.pkarr.example.org\", \"doh.inner.pkarr.example.org\"",
        );
        assert_eq!(good.challenge, Challenge::Dns01);
        good.validate().expect("valid");
        good.validate_dns_names(&origins)
            .expect("under the origins");
        // TLS-ALPN-01 (the default) checks no origins, and takes no wildcard.
        let alpn = settings("domains = [\"elsewhere.example\"]");
        assert_eq!(alpn.challenge, Challenge::TlsAlpn01);
        alpn.validate_dns_names(&origins).expect("not checked");
        let key = pkraft_types::encode_z32_key(&[7; 32]);
        for (bad, reason) in [
            ("\"elsewhere.example\"".to_string(), "none of dns.origins"),
            ("\"*.example.org\"".to_string(), "none of dns.origins"),
            (
                format!("\"{key}.pkarr.example.org\""),
                "names of a pkarr key",
            ),
            (
                format!("\"www.{key}.pkarr.example.org\""),
                "names of a pkarr key",
            ),
        ] {
            let settings = dns01(&bad);
            settings.validate().expect(&bad);
            let error = format!(
                "{:#}",
                settings.validate_dns_names(&origins).expect_err(&bad)
            );
            assert!(
                error.contains("https.acme.domains") && error.contains(reason),
                "{bad}: {error}"
            );
        }
        for bad in ["\"*.*.pkarr.example.org\"", "\"a.*.pkarr.example.org\""] {
            let error = format!("{:#}", dns01(bad).validate().expect_err(bad));
            assert!(error.contains("https.acme.domains"), "{bad}: {error}");
        }
        let unknown =
            toml::from_str::<AcmeSettings>("challenge = \"http-01\"\ndomains = [\"a.example\"]")
                .expect_err("http-01 is not offered");
        assert!(unknown.to_string().contains("challenge"), "{unknown}");
    }
}
