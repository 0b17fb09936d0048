//! Optional mutual TLS on the peer network (`[cluster.tls]`).
//!
//! Every node has a certificate (for the host in its `cluster.advertise` address, with both the
//! serverAuth and clientAuth key usages) signed by one cluster CA, that names its node id as a
//! subjectAltName URI `pkraft:node:<id>`. The peer listener then speaks only TLS, accepts only
//! clients with a certificate from that CA, and answers a request only if the client's
//! certificate names the node id the request comes from (`server::authenticate`). The peer
//! client verifies the listener's certificate against the CA, the host it dials and, when it
//! knows which node it calls, that node's id; and presents its own. So one node's certificate
//! cannot speak for another node, in either direction. The cluster secret is still required on
//! every request: TLS keeps it and the Raft traffic off the wire, the secret keeps one stolen
//! certificate from being enough.
//!
//! The certificate, its key and the CA can be replaced while the node runs ([`PeerTls::reload`],
//! which the daemon calls when the files change and on SIGHUP): both sides ask the current ones
//! at each handshake, so the next connection uses the new ones and open connections keep theirs.
//! A CA is rotated in three reloads across the cluster: every node trusts both CAs, every node
//! gets a certificate from the new one, every node drops the old one (docs/OPERATIONS.md).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use serde::Deserialize;

use pkraft_raft_storage::NodeId;

/// How a peer certificate names its node: the subjectAltName URI `pkraft:node:<id>`.
pub const NODE_ID_URI_PREFIX: &str = "pkraft:node:";

/// `[cluster.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerTlsSettings {
    /// PEM certificate chain of this node, leaf first: for the host of `cluster.advertise`, with
    /// the serverAuth and clientAuth extended key usages.
    pub cert: PathBuf,
    /// PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM certificate(s) of the CA that signed every node's certificate (several while a CA
    /// is rotated: every one of them is trusted).
    pub ca: PathBuf,
    /// How often the three files are checked for changes; changed files are loaded once they
    /// have stayed the same for one more interval. Default 10 s.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

/// Checking three files' metadata more often than this buys nothing (as `https.reload_interval`).
const RELOAD_INTERVAL_MIN: Duration = Duration::from_millis(10);

/// A `[cluster.tls]` file that cannot be used; the message names the field, and keeps the
/// error beneath it (a file that does not read or parse, rustls or webpki refusing what it holds).
#[derive(Debug, thiserror::Error)]
#[error("cluster.tls.{field}: {reason}{}", .source.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
pub struct PeerTlsError {
    pub field: &'static str,
    pub reason: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl PeerTlsError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        PeerTlsError {
            field,
            reason: reason.into(),
            source: None,
        }
    }

    fn caused(
        field: &'static str,
        reason: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        PeerTlsError {
            field,
            reason: reason.into(),
            source: Some(source.into()),
        }
    }
}

/// Both sides of the peer network's TLS.
#[derive(Debug)]
pub struct PeerTls {
    /// The peer listener's: requires a client certificate from the CA (the node id it names is
    /// checked per request, `server::authenticate`), presents this node's certificate.
    pub server: Arc<ServerConfig>,
    /// What both sides use, swapped whole by [`PeerTls::reload`].
    material: Arc<ArcSwap<Material>>,
    provider: Arc<CryptoProvider>,
    node_id: NodeId,
}

/// This node's certificate and key, and the verifiers of the CA: loaded together from the
/// three files, so no handshake sees a certificate with another's key or CA.
#[derive(Debug)]
struct Material {
    certified: Arc<CertifiedKey>,
    /// The listener's check of a client certificate: from the CA.
    clients: Arc<dyn ClientCertVerifier>,
    /// The client's check of a listener's certificate: from the CA, for the host dialled.
    listeners: Arc<WebPkiServerVerifier>,
}

impl PeerTls {
    /// The peer client's configuration for calling node `target` (or, with `None`, a listener
    /// whose node is not known yet: a seed address to join through): the listener's
    /// certificate must come from the CA, be for the host dialled, and name `target`.
    pub fn client_config(
        &self,
        target: Option<NodeId>,
    ) -> Result<Arc<ClientConfig>, rustls::Error> {
        let verifier = Arc::new(NodeIdVerifier {
            material: self.material.clone(),
            expected: target,
        });
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(CurrentCertificate(self.material.clone())));
        // No session resumption: a resumed handshake checks no certificate, so a session from
        // before a reload would let a certificate of a CA since dropped back in. Peers keep
        // their connections open, so full handshakes are rare.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }

    /// Loads the files of `settings` again and, if they are usable (the certificate names this
    /// node, the key is its key, the CA parses), uses them for every handshake from now on;
    /// otherwise nothing changes. Returns the certificate now presented. Blocking file I/O.
    pub fn reload(&self, settings: &PeerTlsSettings) -> Result<Arc<CertifiedKey>, PeerTlsError> {
        let material = settings.material(self.node_id, &self.provider)?;
        let certified = material.certified.clone();
        self.material.store(Arc::new(material));
        Ok(certified)
    }

    /// The certificate presented now.
    pub fn certificate(&self) -> Arc<CertifiedKey> {
        self.material.load().certified.clone()
    }
}

/// This node's current certificate, for both sides of a handshake.
#[derive(Debug)]
struct CurrentCertificate(Arc<ArcSwap<Material>>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().certified.clone())
    }
}

impl ResolvesClientCert for CurrentCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The listener's check of client certificates against the current CA.
#[derive(Debug)]
struct CurrentClientVerifier(Arc<ArcSwap<Material>>);

impl ClientCertVerifier for CurrentClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No hints: they would have to outlive a reload. Every node has exactly one certificate,
    /// so a client has nothing to choose from.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .load()
            .clients
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .load()
            .clients
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .load()
            .clients
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.load().clients.supported_verify_schemes()
    }
}

/// The node ids `cert` names (its subjectAltName URIs `pkraft:node:<id>`); an error if it does
/// not parse.
pub fn certificate_node_ids(cert: &CertificateDer<'_>) -> Result<Vec<NodeId>, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let names = parsed
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subjectAltName: {e}"))?;
    let mut ids = Vec::new();
    for name in names.iter().flat_map(|ext| ext.value.general_names.iter()) {
        if let x509_parser::extensions::GeneralName::URI(uri) = name
            && let Some(id) = uri.strip_prefix(NODE_ID_URI_PREFIX)
        {
            ids.push(
                id.parse()
                    .map_err(|_| format!("subjectAltName URI {uri:?}: not a node id"))?,
            );
        }
    }
    Ok(ids)
}

/// Whether `certs` (a peer's chain, leaf first) names node `id`; the reason if not.
pub fn check_names_node(certs: &[CertificateDer<'_>], id: NodeId) -> Result<(), String> {
    let leaf = certs.first().ok_or("no certificate")?;
    let ids = certificate_node_ids(leaf)?;
    if ids.contains(&id) {
        Ok(())
    } else if ids.is_empty() {
        Err(format!(
            "the certificate names no node id (a subjectAltName URI {NODE_ID_URI_PREFIX}{id})"
        ))
    } else {
        Err(format!(
            "the certificate is for node {}, not node {id}",
            ids.iter()
                .map(NodeId::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// The peer client's verifier: webpki's with the current CA (the CA, the host), then the node
/// id.
#[derive(Debug)]
struct NodeIdVerifier {
    material: Arc<ArcSwap<Material>>,
    expected: Option<NodeId>,
}

impl ServerCertVerifier for NodeIdVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.material.load().listeners.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if let Some(expected) = self.expected {
            check_names_node(std::slice::from_ref(end_entity), expected)
                .map_err(|reason| rustls::Error::General(format!("peer listener: {reason}")))?;
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.material
            .load()
            .listeners
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.material
            .load()
            .listeners
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.material.load().listeners.supported_verify_schemes()
    }
}

/// The client certificate chain of a peer connection, put into each request's extensions by
/// the listener (`pkraft_http::serve`) for `server::authenticate`.
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Arc<[CertificateDer<'static>]>);

impl PeerTlsSettings {
    /// Reads the files and builds both configurations for node `node_id`, whose id the
    /// certificate must name.
    pub fn load(&self, node_id: NodeId) -> Result<PeerTls, PeerTlsError> {
        if self.reload_interval < RELOAD_INTERVAL_MIN {
            return Err(PeerTlsError::new(
                "reload_interval",
                format!(
                    "{:?} is shorter than {RELOAD_INTERVAL_MIN:?}",
                    self.reload_interval
                ),
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let material = Arc::new(ArcSwap::from_pointee(self.material(node_id, &provider)?));
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| PeerTlsError::caused("cert", "the server configuration", e))?
            .with_client_cert_verifier(Arc::new(CurrentClientVerifier(material.clone())))
            .with_cert_resolver(Arc::new(CurrentCertificate(material.clone())));
        // No resumption (see `client_config`): every handshake checks the client's certificate
        // against the CA loaded now.
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        let tls = PeerTls {
            server: Arc::new(server),
            material,
            provider,
            node_id,
        };
        tls.client_config(None)
            .map_err(|e| PeerTlsError::caused("cert", "the client configuration", e))?;
        Ok(tls)
    }

    /// The three files, checked: the certificate names `node_id` and its key matches it, the
    /// CA file holds certificates webpki takes.
    fn material(
        &self,
        node_id: NodeId,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Material, PeerTlsError> {
        let certs = read_certs("cert", &self.cert)?;
        // The reason is text: the verifiers hand it to rustls as text too.
        check_names_node(&certs, node_id).map_err(|reason| {
            PeerTlsError::new(
                "cert",
                format!("{}: {reason} (node_id is {node_id})", self.cert.display()),
            )
        })?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| {
            PeerTlsError::caused("key", format!("cannot read {}", self.key.display()), e)
        })?;
        let certified = CertifiedKey::from_der(certs, key, provider)
            .map_err(|e| PeerTlsError::caused("key", "does not match cluster.tls.cert", e))?;
        let mut roots = RootCertStore::empty();
        for ca in read_certs("ca", &self.ca)? {
            roots
                .add(ca)
                .map_err(|e| PeerTlsError::caused("ca", self.ca.display().to_string(), e))?;
        }
        let roots = Arc::new(roots);
        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| PeerTlsError::caused("ca", "the client verifier", e))?;
        let listeners = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| PeerTlsError::caused("ca", "the server verifier", e))?;
        Ok(Material {
            certified: Arc::new(certified),
            clients,
            listeners,
        })
    }

    /// The files [`PeerTls::reload`] reads, for a watcher.
    pub fn files(&self) -> [&Path; 3] {
        [&self.cert, &self.key, &self.ca]
    }
}

/// The certificates in the PEM file `path`, the value of `field`.
fn read_certs(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, PeerTlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| PeerTlsError::caused(field, format!("cannot read {}", path.display()), e))?;
    if certs.is_empty() {
        return Err(PeerTlsError::new(
            field,
            format!("{} holds no certificate", path.display()),
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tls")
            .join(name)
    }

    fn settings(node: u64) -> PeerTlsSettings {
        PeerTlsSettings {
            cert: fixture(&format!("peer-node{node}.crt")),
            key: fixture(&format!("peer-node{node}.key")),
            ca: fixture("peer-ca.crt"),
            reload_interval: default_reload_interval(),
        }
    }

    #[test]
    fn a_certificate_names_its_node_id() {
        let certs = read_certs("cert", &fixture("peer-node2.crt")).expect("cert");
        assert_eq!(certificate_node_ids(&certs[0]), Ok(vec![2]));
        assert!(check_names_node(&certs, 2).is_ok());
        assert_eq!(
            check_names_node(&certs, 3),
            Err("the certificate is for node 2, not node 3".to_string())
        );
        // The [https] test certificate names no node.
        let https = read_certs("cert", &fixture("localhost.crt")).expect("cert");
        assert!(
            check_names_node(&https, 1)
                .expect_err("no id")
                .contains("names no node id")
        );
    }

    #[test]
    fn a_node_cannot_load_another_nodes_certificate() {
        assert!(settings(2).load(2).is_ok());
        let error = settings(2)
            .load(3)
            .expect_err("node 3 with node 2's certificate");
        assert_eq!(error.field, "cert");
        assert!(error.reason.contains("not node 3"), "{}", error.reason);
    }

    /// A reload takes a new CA's files for the same node, and refuses files for another node,
    /// keeping what it had; an interval of nothing is a config error.
    #[test]
    fn a_reload_takes_usable_files_only() {
        let tls = settings(1).load(1).expect("node 1's files");
        let before = tls.certificate();
        let mut other_node = settings(2);
        other_node.reload_interval = default_reload_interval();
        let error = tls.reload(&other_node).expect_err("node 2's certificate");
        assert_eq!(error.field, "cert");
        assert!(Arc::ptr_eq(&before, &tls.certificate()), "unchanged");
        let rotated = PeerTlsSettings {
            cert: fixture("peer2-node1.crt"),
            key: fixture("peer2-node1.key"),
            ca: fixture("peer2-ca.crt"),
            reload_interval: default_reload_interval(),
        };
        let after = tls.reload(&rotated).expect("the second CA's files");
        assert_ne!(before.cert, after.cert);
        assert!(Arc::ptr_eq(&after, &tls.certificate()));
        let mismatched = PeerTlsSettings {
            key: fixture("peer-node1.key"),
            ..rotated.clone()
        };
        assert_eq!(
            tls.reload(&mismatched)
                .expect_err("a key of another certificate")
                .field,
            "key"
        );
        let too_often = PeerTlsSettings {
            reload_interval: Duration::ZERO,
            ..rotated
        };
        assert_eq!(
            too_often.load(1).expect_err("no interval").field,
            "reload_interval"
        );
    }

    /// The client side: a listener presenting node 2's certificate is refused when node 1 was
    /// called, and accepted when node 2 was or when the node is not known (a seed to join).
    #[test]
    fn the_client_checks_the_listeners_node_id() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let material = Arc::new(ArcSwap::from_pointee(
            settings(1).material(1, &provider).expect("node 1's files"),
        ));
        let node2 = read_certs("cert", &fixture("peer-node2.crt")).expect("cert");
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let verify = |expected| {
            NodeIdVerifier {
                material: material.clone(),
                expected,
            }
            .verify_server_cert(&node2[0], &[], &name, &[], UnixTime::now())
        };
        assert!(verify(Some(2)).is_ok());
        assert!(verify(None).is_ok());
        let error = verify(Some(1)).expect_err("node 2's certificate for node 1");
        assert!(error.to_string().contains("not node 1"), "{error}");
    }
}
