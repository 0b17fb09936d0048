//! `[https.acme]` with `challenge = "dns-01"`: the node proves control of each name with a TXT
//! record at `_acme-challenge.<name>` (RFC 8555 §8.4), answered by pkraft's own DNS, which is
//! authoritative for the origins the names lie under. The value is committed through Raft
//! (`Node::commit_acme_challenge`), so every node's DNS answers it whichever one the CA asks,
//! and the CA is told to look only once every member has applied it (or a bound has passed).
//! This is what lets every node of a cluster order its own certificate for one shared name
//! (each publishes its own value; several TXT values at one name are fine), and what allows
//! wildcard names, which TLS-ALPN-01 cannot prove.
//!
//! The ACME protocol itself is tokio-rustls-acme's (`tokio_rustls_acme::acme`: account,
//! order, authorizations, finalize), the crate the TLS-ALPN-01 mode runs; this module adds the
//! DNS-01 value and the loop around an order, which keeps the same files in `<data_dir>/acme/`
//! (so a node moved from one challenge type to the other keeps its certificate and account),
//! renews at two thirds of the validity and backs off the same way.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwapOption;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pkraft_raft::node::Node;
use pkraft_raft::{ChallengeHolder, NodeId};
use pkraft_types::acme_challenge::{AcmeChallenge, challenge_name};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256};
use ring::signature::{EcdsaKeyPair, KeyPair as _};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls_acme::acme::{
    Account, AuthStatus, ChallengeType, Directory, Identifier, OrderStatus,
};
use tokio_rustls_acme::{AccountCache, CertCache};

use super::{AcmeMetrics, AcmeSettings, ExpiryCache, KEPT_CERTIFICATE_WAIT};

/// How long a challenge value is answered at most: an order that has not ended by then has
/// failed anyway (each authorization is polled for about 30 s).
const CHALLENGE_LIFETIME: Duration = Duration::from_secs(600);

/// How long the node waits for every member's DNS to answer its challenges before it asks the
/// CA to look anyway (a member that is down or far behind; the CA may ask the others). Halfway,
/// the values a member lacks are committed again (a member restarted, or given a snapshot, after
/// it applied them has lost them: the board lives in memory).
const CHALLENGE_SPREAD_WAIT: Duration = Duration::from_secs(10);

/// How often the members are asked which challenges they answer.
const CHALLENGE_SPREAD_POLL: Duration = Duration::from_millis(100);

/// Longest an order may take, start to certificate: a CA (or a proxy before it) that never
/// answers must not hold the renewals up for good.
const ORDER_TIMEOUT: Duration = Duration::from_secs(600);

/// The backoff after a failed order: 1 s doubling, up to 2^16 s (about 18 h), as the TLS-ALPN-01
/// mode (tokio-rustls-acme) does.
const BACKOFF_MAX_EXPONENT: u32 = 16;

/// The certificate the `[https]` listener presents: the last one ordered or kept. None until
/// there is one (handshakes fail meanwhile).
#[derive(Debug, Default)]
pub(super) struct OrderedCertificate {
    current: ArcSwapOption<CertifiedKey>,
}

impl ResolvesServerCert for OrderedCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

/// A certificate with its key, and when to renew it.
struct Issued {
    key: Arc<CertifiedKey>,
    renew_at: std::time::SystemTime,
}

/// The PEM tokio-rustls-acme keeps (the private key first, then the chain, leaf first) parsed,
/// with its renewal time: two thirds into the validity.
fn parse_issued(pem: &[u8]) -> anyhow::Result<Issued> {
    let key = PrivateKeyDer::from_pem_slice(pem).context("no private key")?;
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .context("a certificate does not parse")?;
    let leaf = chain.first().context("no certificate")?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf).context("the certificate does not parse")?;
    let validity = parsed.validity();
    let from = validity.not_before.timestamp();
    let until = validity.not_after.timestamp();
    let renew_at = from.saturating_add((until.saturating_sub(from)) * 2 / 3);
    let renew_at = std::time::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(renew_at).context("validity before 1970")?);
    let key = CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
        .context("the key does not match the certificate")?;
    Ok(Issued {
        key: Arc::new(key),
        renew_at,
    })
}

/// The DNS-01 TXT value of `token` for the account `key` (RFC 8555 §8.1, §8.4):
/// base64url(SHA-256(token "." base64url(JWK thumbprint))), the thumbprint per RFC 7638 over
/// the P-256 key's members in lexical order.
pub(super) fn dns01_value(key: &EcdsaKeyPair, token: &str) -> String {
    URL_SAFE_NO_PAD.encode(key_authorization_digest(key, token))
}

/// SHA-256 of the key authorization `token "." thumbprint`.
fn key_authorization_digest(key: &EcdsaKeyPair, token: &str) -> ring::digest::Digest {
    // An uncompressed P-256 point: 0x04, x (32 bytes), y (32 bytes). Always so: the key is
    // one tokio-rustls-acme parsed as ECDSA P-256 when it made the account.
    let point = key.public_key().as_ref();
    let (x, y) = point[1..].split_at(32);
    let jwk = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(x),
        URL_SAFE_NO_PAD.encode(y)
    );
    let thumbprint =
        URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, jwk.as_bytes()));
    ring::digest::digest(
        &ring::digest::SHA256,
        format!("{token}.{thumbprint}").as_bytes(),
    )
}

/// The DNS-01 ACME client of one node.
pub(super) struct Dns01Client {
    settings: AcmeSettings,
    client_config: Arc<rustls::ClientConfig>,
    cache: ExpiryCache,
    node: Arc<Node>,
    metrics: AcmeMetrics,
    certificate: Arc<OrderedCertificate>,
}

impl Dns01Client {
    pub(super) fn new(
        settings: &AcmeSettings,
        cache: ExpiryCache,
        node: Arc<Node>,
        metrics: AcmeMetrics,
    ) -> anyhow::Result<Dns01Client> {
        Ok(Dns01Client {
            client_config: settings.client_config()?,
            settings: settings.clone(),
            cache,
            node,
            metrics,
            certificate: Arc::default(),
        })
    }

    pub(super) fn resolver(&self) -> Arc<OrderedCertificate> {
        self.certificate.clone()
    }

    fn domains(&self) -> String {
        self.settings.domains.join(", ")
    }

    /// The certificate kept in the data dir, served if it parses (bounded by
    /// `KEPT_CERTIFICATE_WAIT`); its renewal time.
    pub(super) async fn serve_kept(&self) -> Option<std::time::SystemTime> {
        let load = self
            .cache
            .load_cert(&self.settings.domains, &self.settings.directory);
        let pem = match tokio::time::timeout(KEPT_CERTIFICATE_WAIT, load).await {
            Ok(Ok(Some(pem))) => pem,
            Ok(Ok(None)) => return None,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "ACME: the kept certificate cannot be read; ordering one");
                return None;
            }
            Err(_) => return None,
        };
        match parse_issued(&pem) {
            Ok(issued) => {
                self.certificate.current.store(Some(issued.key));
                tracing::info!(
                    domains = self.domains(),
                    "ACME: serving the certificate kept in the data dir"
                );
                Some(issued.renew_at)
            }
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "ACME: the kept certificate is damaged; ordering one"
                );
                None
            }
        }
    }

    /// Orders and renews for the life of the node: waits for the renewal time, orders, and
    /// after a failure waits with backoff while the certificate it has keeps serving.
    pub(super) async fn run(self, mut renew_at: Option<std::time::SystemTime>) {
        let mut failures: u32 = 0;
        loop {
            if let Some(at) = renew_at {
                let wait = at
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                tokio::time::sleep(wait).await;
            }
            match self.order().await {
                Ok(issued) => {
                    failures = 0;
                    renew_at = Some(issued.renew_at);
                    self.certificate.current.store(Some(issued.key));
                    self.metrics.orders.with_label_values(&["issued"]).inc();
                    tracing::info!(
                        domains = self.domains(),
                        "ACME: new certificate issued (DNS-01) and served"
                    );
                }
                Err(e) => {
                    self.metrics.orders.with_label_values(&["error"]).inc();
                    let backoff = Duration::from_secs(1 << failures.min(BACKOFF_MAX_EXPONENT));
                    failures = failures.saturating_add(1);
                    tracing::warn!(
                        domains = self.domains(),
                        error = format!("{e:#}"),
                        retry_in = ?backoff,
                        "ACME: failed (DNS-01 order), retrying with backoff; the certificate \
                         served before (if any) keeps serving"
                    );
                    tokio::time::sleep(backoff).await;
                    renew_at = None;
                }
            }
        }
    }

    /// One order, start to certificate, within `ORDER_TIMEOUT`; the challenge values it
    /// published are withdrawn whatever the outcome.
    async fn order(&self) -> anyhow::Result<Issued> {
        let mut published = Vec::new();
        let result = match tokio::time::timeout(
            ORDER_TIMEOUT,
            self.order_publishing(&mut published),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(anyhow::anyhow!(
                "the order did not complete within {ORDER_TIMEOUT:?}"
            )),
        };
        for mut challenge in published {
            challenge.until_micros = 0;
            if let Err(e) = self.node.commit_acme_challenge(challenge.clone()).await {
                // It ends by itself at `until_micros`.
                tracing::debug!(name = challenge.name, error = %e, "ACME: challenge not withdrawn");
            }
        }
        result
    }

    async fn order_publishing(&self, published: &mut Vec<AcmeChallenge>) -> anyhow::Result<Issued> {
        let client = &self.client_config;
        let directory = Directory::discover(client, &self.settings.directory)
            .await
            .context("the ACME directory")?;
        let account_key = self.account_key().await?;
        let account = Account::create_with_keypair(
            client,
            directory,
            &self.settings.contact,
            &account_key,
            &None,
        )
        .await
        .context("the ACME account")?;
        let (order_url, mut order) = account
            .new_order(client, self.settings.domains.clone())
            .await
            .context("new order")?;
        let certificate_key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("certificate key")?;
        // Bounded by `ORDER_TIMEOUT` (the caller's).
        loop {
            match order.status {
                OrderStatus::Pending => {
                    self.authorize(&account, &order.authorizations, published)
                        .await?;
                    // The CA moves the order on once it has seen every authorization valid.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    order = account.order(client, &order_url).await?;
                }
                OrderStatus::Ready => {
                    let mut params = CertificateParams::new(self.settings.domains.clone())
                        .context("certificate request")?;
                    params.distinguished_name = DistinguishedName::new();
                    let csr = params
                        .serialize_request(&certificate_key)
                        .context("certificate request")?;
                    order = account
                        .finalize(client, &order.finalize, csr.der().to_vec())
                        .await
                        .context("finalize")?;
                }
                OrderStatus::Processing => {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    order = account.order(client, &order_url).await?;
                }
                OrderStatus::Valid { certificate } => {
                    let chain = account
                        .certificate(client, &certificate)
                        .await
                        .context("download the certificate")?;
                    let pem = format!("{}\n{chain}", certificate_key.serialize_pem()).into_bytes();
                    let issued = parse_issued(&pem).context("the issued certificate")?;
                    if let Err(e) = self
                        .cache
                        .store_cert(&self.settings.domains, &self.settings.directory, &pem)
                        .await
                    {
                        tracing::warn!(error = %e, "ACME: the new certificate could not be kept in the data dir (a restart orders again)");
                    }
                    return Ok(issued);
                }
                OrderStatus::Invalid => {
                    anyhow::bail!("the CA declared the order invalid: {:?}", order.error)
                }
            }
        }
    }

    /// Refuses to commit a challenge while a member runs a build that cannot read the entry
    /// (it would stall that member's replication; OPERATIONS.md, "Upgrading"). A member that
    /// does not answer is not waited for: it may be down, and a renewal must not need it.
    async fn check_every_member_reads_challenges(&self) -> anyhow::Result<()> {
        let older: Vec<NodeId> = self
            .node
            .acme_challenge_holders()
            .await
            .into_iter()
            .filter(|(_, holder)| *holder == ChallengeHolder::OlderBuild)
            .map(|(id, _)| id)
            .collect();
        anyhow::ensure!(
            older.is_empty(),
            "nodes {older:?} run a build that cannot read ACME challenge entries; upgrade them \
             before using challenge = \"dns-01\""
        );
        Ok(())
    }

    /// Waits (at most `CHALLENGE_SPREAD_WAIT`) until every member's DNS answers `values`;
    /// commits again, once, the values a member lacks halfway through. Members still without
    /// them are named in a warning: the CA may ask the others.
    async fn wait_until_every_member_answers(&self, values: &[AcmeChallenge]) {
        let started = tokio::time::Instant::now();
        let mut committed_again = false;
        loop {
            let lacking: Vec<(NodeId, Vec<&AcmeChallenge>)> = self
                .node
                .acme_challenge_holders()
                .await
                .into_iter()
                .filter_map(|(id, holder)| {
                    let answered = match holder {
                        ChallengeHolder::Answers(answered) => answered,
                        _ => Vec::new(),
                    };
                    let lacks: Vec<&AcmeChallenge> = values
                        .iter()
                        .filter(|value| !answered.contains(&value.value))
                        .collect();
                    (!lacks.is_empty()).then_some((id, lacks))
                })
                .collect();
            if lacking.is_empty() {
                return;
            }
            let waited = started.elapsed();
            if waited >= CHALLENGE_SPREAD_WAIT {
                let members: Vec<NodeId> = lacking.iter().map(|(id, _)| *id).collect();
                tracing::warn!(
                    ?members,
                    "ACME: these members' DNS does not answer the challenge; if the CA asks \
                     them, the validation fails and the order is retried"
                );
                return;
            }
            if !committed_again && waited >= CHALLENGE_SPREAD_WAIT / 2 {
                committed_again = true;
                let mut again: Vec<&AcmeChallenge> =
                    lacking.into_iter().flat_map(|(_, lacks)| lacks).collect();
                again.sort_by(|a, b| a.value.cmp(&b.value));
                again.dedup_by(|a, b| a.value == b.value);
                for value in again {
                    if let Err(e) = self.node.commit_acme_challenge(value.clone()).await {
                        tracing::debug!(error = %e, "ACME: challenge not committed again");
                    }
                }
            }
            tokio::time::sleep(CHALLENGE_SPREAD_POLL).await;
        }
    }

    /// The account key kept in the data dir (the one the TLS-ALPN-01 mode keeps too), or a new
    /// one, kept.
    async fn account_key(&self) -> anyhow::Result<Vec<u8>> {
        let (contact, directory) = (&self.settings.contact, &self.settings.directory);
        if let Some(key) = self
            .cache
            .load_account(contact, directory)
            .await
            .context("the kept account key")?
        {
            return Ok(key);
        }
        let key = Account::generate_key_pair();
        self.cache
            .store_account(contact, directory, &key)
            .await
            .context("keeping the account key")?;
        Ok(key)
    }

    /// Publishes the DNS-01 value of every pending authorization through the cluster, waits
    /// for every member to have it, tells the CA to look, and polls until each is valid.
    async fn authorize(
        &self,
        account: &Account,
        authorizations: &[String],
        published: &mut Vec<AcmeChallenge>,
    ) -> anyhow::Result<()> {
        let client = &self.client_config;
        self.check_every_member_reads_challenges().await?;
        let mut pending = Vec::new();
        let mut values = Vec::new();
        for url in authorizations {
            let auth = account.auth(client, url).await.context("authorization")?;
            let Identifier::Dns(domain) = &auth.identifier;
            match auth.status {
                AuthStatus::Valid => continue,
                AuthStatus::Pending => {}
                status => anyhow::bail!("authorization for {domain}: {status:?}"),
            }
            let challenge = auth
                .challenges
                .iter()
                .find(|challenge| challenge.typ == ChallengeType::Dns01)
                .with_context(|| format!("the CA offers no dns-01 challenge for {domain}"))?;
            let value = AcmeChallenge {
                name: challenge_name(domain),
                value: dns01_value(&account.key_pair, &challenge.token),
                until_micros: pkraft_types::unix_micros_now()
                    .saturating_add(u64::try_from(CHALLENGE_LIFETIME.as_micros()).unwrap_or(0)),
            };
            // Before the commit: one that times out here may still commit on the leader, and
            // must be withdrawn too.
            published.push(value.clone());
            self.node
                .commit_acme_challenge(value.clone())
                .await
                .with_context(|| format!("committing the challenge for {domain}"))?;
            values.push(value);
            pending.push((url, challenge.url.clone(), domain.clone()));
        }
        if pending.is_empty() {
            return Ok(());
        }
        self.wait_until_every_member_answers(&values).await;
        for (_, challenge_url, _) in &pending {
            account
                .challenge(client, challenge_url)
                .await
                .context("asking the CA to check")?;
        }
        for (url, _, domain) in &pending {
            let mut valid = false;
            for attempt in 0..6 {
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                let auth = account.auth(client, url).await.context("authorization")?;
                match auth.status {
                    AuthStatus::Pending => continue,
                    AuthStatus::Valid => {
                        valid = true;
                        break;
                    }
                    status => {
                        let problems: Vec<_> = auth
                            .challenges
                            .iter()
                            .filter_map(|challenge| challenge.error.as_ref())
                            .collect();
                        anyhow::bail!("authorization for {domain}: {status:?} {problems:?}")
                    }
                }
            }
            anyhow::ensure!(
                valid,
                "authorization for {domain}: still pending after about 30 s"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The DNS-01 value is the digest tokio-rustls-acme puts in a TLS-ALPN-01 certificate
    /// (`acmeIdentifier`, RFC 8737), base64url: the same key authorization, so the thumbprint
    /// is computed as the crate (and so the CA) does.
    #[test]
    fn the_dns01_value_is_the_key_authorization_digest_the_acme_crate_uses() {
        let pkcs8 = Account::generate_key_pair();
        let key_pair = EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8,
            &ring::rand::SystemRandom::new(),
        )
        .expect("key");
        let token = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA";
        let digest = key_authorization_digest(&key_pair, token);
        let account = Account {
            key_pair,
            directory: Directory {
                new_nonce: String::new(),
                new_account: String::new(),
                new_order: String::new(),
            },
            kid: String::new(),
        };
        let challenges: Vec<tokio_rustls_acme::acme::Challenge> = serde_json::from_str(&format!(
            r#"[{{"type":"tls-alpn-01","url":"https://ca.example/c","token":"{token}"}}]"#
        ))
        .expect("challenge");
        let (_, certified) = account
            .tls_alpn_01(&challenges, "pkarr.example.org".to_string())
            .expect("challenge certificate");
        let der = certified.cert[0].as_ref();
        assert!(
            der.windows(32).any(|window| window == digest.as_ref()),
            "the challenge certificate carries another key authorization digest"
        );
        assert_eq!(
            dns01_value(&account.key_pair, token),
            URL_SAFE_NO_PAD.encode(digest)
        );
        assert_eq!(dns01_value(&account.key_pair, token).len(), 43);
    }

    #[test]
    fn a_kept_certificate_parses_with_its_renewal_at_two_thirds() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params =
            CertificateParams::new(vec!["pkarr.example.org".to_string()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2026, 4, 1);
        let cert = params.self_signed(&key).expect("certificate");
        let pem = format!("{}\n{}", key.serialize_pem(), cert.pem());
        let issued = parse_issued(pem.as_bytes()).expect("parses");
        let from = 1_767_225_600; // 2026-01-01
        let until = 1_775_001_600; // 2026-04-01
        assert_eq!(
            issued.renew_at,
            std::time::UNIX_EPOCH + Duration::from_secs(from + (until - from) * 2 / 3)
        );
        assert!(parse_issued(cert.pem().as_bytes()).is_err(), "no key");
        assert!(
            parse_issued(key.serialize_pem().as_bytes()).is_err(),
            "no certificate"
        );
    }
}
