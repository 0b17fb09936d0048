//! The ACME client of one node (`[https.acme]`): orders the `[https]` certificate, serves it,
//! renews it at two thirds of its validity and backs off after a failure, for both challenge
//! types:
//!
//! - `tls-alpn-01` (RFC 8737, the default): for each name the CA connects to port 443 and asks,
//!   by ALPN `acme-tls/1`, for a certificate that carries the challenge; [`OrderedCertificate`]
//!   answers that handshake with the one made for it (and the listener closes the connection,
//!   `pkraft_http::serve`). So every name must resolve to this node alone.
//! - `dns-01` (RFC 8555 §8.4): a TXT record at `_acme-challenge.<name>`, answered by pkraft's
//!   own DNS, which is authoritative for the origins the names lie under. The value is committed
//!   through Raft (`ShortLived::commit`), so every node's DNS answers it whichever one
//!   the CA asks, and the CA is told to look only once every member has applied it (or a bound
//!   has passed). This is what lets every node of a cluster order its own certificate for one
//!   shared name (each publishes its own value; several TXT values at one name are fine), and
//!   what allows wildcard names, which TLS-ALPN-01 cannot prove.
//!
//! The ACME messages are tokio-rustls-acme's (`tokio_rustls_acme::acme`: account, order,
//! authorizations, finalize) and so are the files in `<data_dir>/acme/` (its `DirCache`
//! layout: a node moved from one challenge type to the other keeps its certificate and
//! account). The loop around them is pkraft's, for two bounds the crate's own loop lacks: every
//! request to the CA gets `STEP_TIMEOUT` (the crate's HTTP client has none), every wait (for
//! the renewal, or a backoff) reads the wall clock again at least every `RECHECK_EVERY`, and a
//! backoff never outlasts half the time the served certificate has left.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwapOption;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pkraft_raft::node::Node;
use pkraft_raft::{NodeId, RecordHolder};
use pkraft_types::short_lived::ShortLivedRecord;
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

use super::{
    AcmeMetrics, AcmeSettings, Challenge, ExpiryCache, KEPT_CERTIFICATE_WAIT, challenge_name,
};

/// How long a challenge value is answered at most: an order that has not ended by then has
/// failed anyway (each authorization is polled for about 30 s).
const CHALLENGE_LIFETIME: Duration = Duration::from_secs(600);

/// How long the node waits for every member's DNS to answer its challenges before it asks the
/// CA to look anyway (a member that is down or far behind; the CA may ask the others). Halfway,
/// the values a member lacks are committed again (a member restarted, or given a snapshot, after
/// it applied them has lost them: short-lived records live in memory).
const CHALLENGE_SPREAD_WAIT: Duration = Duration::from_secs(10);

/// How often the members are asked which challenges they answer.
const CHALLENGE_SPREAD_POLL: Duration = Duration::from_millis(100);

/// Longest an order may take, start to certificate: a CA (or a proxy before it) that never
/// answers must not hold the renewals up for good.
const ORDER_TIMEOUT: Duration = Duration::from_secs(600);

/// The backoff after a failed order: 1 s doubling, up to 2^16 s (about 18 h), as
/// tokio-rustls-acme's own loop backs off; never past half the time the served certificate has
/// left (`retry_at`).
const BACKOFF_MAX_EXPONENT: u32 = 16;

/// Longest one request to the CA may take (tokio-rustls-acme's HTTP client has no timeout: a CA
/// that accepts the connection and never answers would hold the order until `ORDER_TIMEOUT`).
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a wait goes without reading the wall clock again: a tokio sleep counts monotonic
/// time, which stops while the machine is suspended and ignores a stepped clock, so a renewal
/// weeks ahead is re-checked against the wall clock (and the certificate's end) hourly.
const RECHECK_EVERY: Duration = Duration::from_secs(3600);

/// A request to the CA, `what` naming it in the error, bounded by `STEP_TIMEOUT`.
async fn step<T, E>(what: &str, request: impl Future<Output = Result<T, E>>) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    step_within(STEP_TIMEOUT, what, request).await
}

/// [`step`] with the bound `timeout`.
async fn step_within<T, E>(
    timeout: Duration,
    what: &str,
    request: impl Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(timeout, request).await {
        Ok(result) => result.with_context(|| what.to_string()),
        Err(_) => Err(anyhow::anyhow!(
            "{what}: the CA did not answer within {timeout:?}"
        )),
    }
}

/// Waits until the wall clock reads `at`, looking at it again at least every `RECHECK_EVERY`.
async fn wait_until(at: SystemTime) {
    while let Some(sleep) = next_sleep(at, SystemTime::now()) {
        tokio::time::sleep(sleep).await;
    }
}

/// How long [`wait_until`] sleeps before it reads the wall clock again, at `now`: the time
/// left until `at`, at most `RECHECK_EVERY`; `None` once `at` has come.
fn next_sleep(at: SystemTime, now: SystemTime) -> Option<Duration> {
    let left = at.duration_since(now).ok()?;
    (!left.is_zero()).then(|| left.min(RECHECK_EVERY))
}

/// When to try again after `failures` failed orders in a row, at `now`: the backoff, but never
/// later than halfway to the end of the served certificate (`not_after`), and at least a minute
/// on, so that a certificate about to run out is retried more and more often, never in a tight
/// loop.
fn retry_at(failures: u32, now: SystemTime, not_after: Option<SystemTime>) -> SystemTime {
    let backoff = Duration::from_secs(1 << failures.min(BACKOFF_MAX_EXPONENT));
    let half_left = not_after
        .and_then(|end| end.duration_since(now).ok())
        .map_or(backoff, |left| (left / 2).max(Duration::from_secs(60)));
    now + backoff.min(half_left)
}

/// The certificate the `[https]` listener presents: the last one ordered or kept. None until
/// there is one (handshakes fail meanwhile). A TLS-ALPN-01 handshake (ALPN `acme-tls/1` alone)
/// gets the challenge certificate of the name it asks for (SNI) instead, while an order waits
/// for the CA to check it.
#[derive(Debug, Default)]
pub(super) struct OrderedCertificate {
    current: ArcSwapOption<CertifiedKey>,
    /// TLS-ALPN-01 challenge certificates by name, for the order under way.
    challenges: std::sync::Mutex<std::collections::BTreeMap<String, Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for OrderedCertificate {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme_challenge = client_hello.alpn().is_some_and(|mut protocols| {
            protocols.next() == Some(pkraft_http::serve::ACME_TLS_ALPN)
                && protocols.next().is_none()
        });
        if acme_challenge {
            let name = client_hello.server_name()?.to_ascii_lowercase();
            return self.challenges.lock().ok()?.get(&name).cloned();
        }
        self.current.load_full()
    }
}

impl OrderedCertificate {
    /// Answers TLS-ALPN-01 handshakes for `name` with `key` until withdrawn.
    fn offer_challenge(&self, name: &str, key: CertifiedKey) {
        if let Ok(mut challenges) = self.challenges.lock() {
            challenges.insert(name.to_ascii_lowercase(), Arc::new(key));
        }
    }

    /// Withdraws every TLS-ALPN-01 challenge certificate (the order has ended).
    fn withdraw_challenges(&self) {
        if let Ok(mut challenges) = self.challenges.lock() {
            challenges.clear();
        }
    }
}

/// A certificate with its key, when to renew it and when it ends.
struct Issued {
    key: Arc<CertifiedKey>,
    times: CertificateTimes,
}

/// Failed orders in a row, and when the next try is due after the last (`None`: at the served
/// certificate's renewal, or at once without one).
#[derive(Debug, Clone, Copy, Default)]
struct Backoff {
    failures: u32,
    retry_at: Option<SystemTime>,
}

/// When the served certificate is renewed, and when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CertificateTimes {
    renew_at: SystemTime,
    not_after: SystemTime,
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
    let at = |secs: i64| -> anyhow::Result<SystemTime> {
        Ok(std::time::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(secs).context("validity before 1970")?))
    };
    let times = CertificateTimes {
        renew_at: at(renew_at)?,
        not_after: at(until)?,
    };
    let key = CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
        .context("the key does not match the certificate")?;
    Ok(Issued {
        key: Arc::new(key),
        times,
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

/// The ACME client of one node (module docs).
pub(super) struct AcmeClient {
    settings: AcmeSettings,
    client_config: Arc<rustls::ClientConfig>,
    cache: ExpiryCache,
    node: Arc<Node>,
    metrics: AcmeMetrics,
    certificate: Arc<OrderedCertificate>,
    /// The served certificate's times, read again by a `run` restarted after a panic.
    served: std::sync::Mutex<Option<CertificateTimes>>,
    /// The failed orders in a row and when to try again after the last one: a `run` restarted
    /// after a panic keeps backing off instead of ordering at once.
    backoff: std::sync::Mutex<Backoff>,
}

impl AcmeClient {
    pub(super) fn new(
        settings: &AcmeSettings,
        cache: ExpiryCache,
        node: Arc<Node>,
        metrics: AcmeMetrics,
    ) -> anyhow::Result<AcmeClient> {
        Ok(AcmeClient {
            client_config: settings.client_config()?,
            settings: settings.clone(),
            cache,
            node,
            metrics,
            certificate: Arc::default(),
            served: std::sync::Mutex::new(None),
            backoff: std::sync::Mutex::new(Backoff::default()),
        })
    }

    pub(super) fn resolver(&self) -> Arc<OrderedCertificate> {
        self.certificate.clone()
    }

    fn domains(&self) -> String {
        self.settings.domains.join(", ")
    }

    fn challenge_name(&self) -> &'static str {
        match self.settings.challenge {
            Challenge::TlsAlpn01 => "tls-alpn-01",
            Challenge::Dns01 => "dns-01",
        }
    }

    /// Serves `issued` and keeps its times for the renewal loop.
    fn serve(&self, issued: Issued) -> CertificateTimes {
        self.certificate.current.store(Some(issued.key));
        if let Ok(mut served) = self.served.lock() {
            *served = Some(issued.times);
        }
        issued.times
    }

    /// The served certificate's times, if one is served.
    fn served(&self) -> Option<CertificateTimes> {
        self.served.lock().ok().and_then(|served| *served)
    }

    fn backoff(&self) -> Backoff {
        self.backoff
            .lock()
            .map(|backoff| *backoff)
            .unwrap_or_default()
    }

    fn set_backoff(&self, backoff: Backoff) {
        if let Ok(mut current) = self.backoff.lock() {
            *current = backoff;
        }
    }

    /// The certificate kept in the data dir, served if it parses (bounded by
    /// `KEPT_CERTIFICATE_WAIT`).
    pub(super) async fn serve_kept(&self) {
        let load = self
            .cache
            .load_cert(&self.settings.domains, &self.settings.directory);
        let pem = match tokio::time::timeout(KEPT_CERTIFICATE_WAIT, load).await {
            Ok(Ok(Some(pem))) => pem,
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "ACME: the kept certificate cannot be read; ordering one");
                return;
            }
        };
        match parse_issued(&pem) {
            Ok(issued) => {
                self.serve(issued);
                tracing::info!(
                    domains = self.domains(),
                    "ACME: serving the certificate kept in the data dir"
                );
            }
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "ACME: the kept certificate is damaged; ordering one"
                );
            }
        }
    }

    /// Orders and renews for the life of the node: waits for the served certificate's renewal
    /// time (none served: orders at once), orders, and after a failure waits with backoff
    /// (`retry_at`) while the certificate it has keeps serving. Restarted after a panic, it
    /// goes on from the served certificate and the backoff it was in.
    pub(super) async fn run(self: Arc<Self>) {
        loop {
            let backoff = self.backoff();
            if let Some(at) = backoff
                .retry_at
                .or_else(|| self.served().map(|times| times.renew_at))
            {
                wait_until(at).await;
            }
            match self.order().await {
                Ok(issued) => {
                    self.set_backoff(Backoff::default());
                    self.serve(issued);
                    self.metrics.orders.with_label_values(&["issued"]).inc();
                    tracing::info!(
                        domains = self.domains(),
                        challenge = %self.challenge_name(),
                        "ACME: new certificate issued and served"
                    );
                }
                Err(e) => {
                    self.metrics.orders.with_label_values(&["error"]).inc();
                    let now = SystemTime::now();
                    let retry = retry_at(backoff.failures, now, self.served().map(|t| t.not_after));
                    self.set_backoff(Backoff {
                        failures: backoff.failures.saturating_add(1),
                        retry_at: Some(retry),
                    });
                    tracing::warn!(
                        domains = self.domains(),
                        error = format!("{e:#}"),
                        retry_in = ?retry.duration_since(now).unwrap_or_default(),
                        challenge = %self.challenge_name(),
                        "ACME: failed, retrying with backoff; the certificate \
                         served before (if any) keeps serving"
                    );
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
        self.certificate.withdraw_challenges();
        for mut challenge in published {
            challenge.until_micros = 0;
            if let Err(e) = self.node.short_lived().commit(challenge.clone()).await {
                // It ends by itself at `until_micros`.
                tracing::debug!(name = challenge.name, error = %e, "ACME: challenge not withdrawn");
            }
        }
        result
    }

    async fn order_publishing(
        &self,
        published: &mut Vec<ShortLivedRecord>,
    ) -> anyhow::Result<Issued> {
        let client = &self.client_config;
        let directory = step(
            "the ACME directory",
            Directory::discover(client, &self.settings.directory),
        )
        .await?;
        let account_key = self.account_key().await?;
        let account = step(
            "the ACME account",
            Account::create_with_keypair(
                client,
                directory,
                &self.settings.contact,
                &account_key,
                &None,
            ),
        )
        .await?;
        let (order_url, mut order) = step(
            "new order",
            account.new_order(client, self.settings.domains.clone()),
        )
        .await?;
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
                    order = step("the order", account.order(client, &order_url)).await?;
                }
                OrderStatus::Ready => {
                    let mut params = CertificateParams::new(self.settings.domains.clone())
                        .context("certificate request")?;
                    params.distinguished_name = DistinguishedName::new();
                    let csr = params
                        .serialize_request(&certificate_key)
                        .context("certificate request")?;
                    order = step(
                        "finalize",
                        account.finalize(client, &order.finalize, csr.der().to_vec()),
                    )
                    .await?;
                }
                OrderStatus::Processing => {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    order = step("the order", account.order(client, &order_url)).await?;
                }
                OrderStatus::Valid { certificate } => {
                    let chain = step(
                        "download the certificate",
                        account.certificate(client, &certificate),
                    )
                    .await?;
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
            .short_lived()
            .holders()
            .await
            .into_iter()
            .filter(|(_, holder)| matches!(holder, RecordHolder::OlderBuild))
            .map(|(id, _)| id)
            .collect();
        anyhow::ensure!(
            older.is_empty(),
            "nodes {older:?} run an older build, which cannot read challenge entries or asks for \
             them under another name; upgrade them before using challenge = \"dns-01\""
        );
        Ok(())
    }

    /// Waits (at most `CHALLENGE_SPREAD_WAIT`) until every member's DNS answers `values`;
    /// commits again, once, the values a member lacks halfway through. Members still without
    /// them are named in a warning: the CA may ask the others.
    async fn wait_until_every_member_answers(&self, values: &[ShortLivedRecord]) {
        let started = tokio::time::Instant::now();
        let mut committed_again = false;
        loop {
            let lacking: Vec<(NodeId, Vec<&ShortLivedRecord>)> = self
                .node
                .short_lived()
                .holders()
                .await
                .into_iter()
                .filter_map(|(id, holder)| {
                    let answered = match holder {
                        RecordHolder::Answers(answered) => answered,
                        _ => Vec::new(),
                    };
                    let lacks: Vec<&ShortLivedRecord> = values
                        .iter()
                        .filter(|value| {
                            !answered.iter().any(|record| {
                                record.name == value.name && record.value == value.value
                            })
                        })
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
                let mut again: Vec<&ShortLivedRecord> =
                    lacking.into_iter().flat_map(|(_, lacks)| lacks).collect();
                again.sort_by(|a, b| a.value.cmp(&b.value));
                again.dedup_by(|a, b| a.value == b.value);
                for value in again {
                    if let Err(e) = self.node.short_lived().commit(value.clone()).await {
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

    /// Puts up the challenge of every pending authorization (DNS-01: publishes its value
    /// through the cluster and waits for every member to have it; TLS-ALPN-01: offers its
    /// certificate to the CA's handshakes), tells the CA to look, and polls until each is valid.
    async fn authorize(
        &self,
        account: &Account,
        authorizations: &[String],
        published: &mut Vec<ShortLivedRecord>,
    ) -> anyhow::Result<()> {
        let client = &self.client_config;
        let dns01 = self.settings.challenge == Challenge::Dns01;
        if dns01 {
            self.check_every_member_reads_challenges().await?;
        }
        let mut pending = Vec::new();
        let mut values = Vec::new();
        for url in authorizations {
            let auth = step("authorization", account.auth(client, url)).await?;
            let Identifier::Dns(domain) = &auth.identifier;
            match auth.status {
                AuthStatus::Valid => continue,
                AuthStatus::Pending => {}
                status => anyhow::bail!("authorization for {domain}: {status:?}"),
            }
            if !dns01 {
                let (challenge, key) = account
                    .tls_alpn_01(&auth.challenges, domain.clone())
                    .with_context(|| format!("the tls-alpn-01 challenge for {domain}"))?;
                self.certificate.offer_challenge(domain, key);
                pending.push((url, challenge.url.clone(), domain.clone()));
                continue;
            }
            let challenge = auth
                .challenges
                .iter()
                .find(|challenge| challenge.typ == ChallengeType::Dns01)
                .with_context(|| format!("the CA offers no dns-01 challenge for {domain}"))?;
            let value = ShortLivedRecord {
                name: challenge_name(domain),
                value: dns01_value(&account.key_pair, &challenge.token),
                until_micros: pkraft_types::unix_micros_now()
                    .saturating_add(u64::try_from(CHALLENGE_LIFETIME.as_micros()).unwrap_or(0)),
            };
            // Before the commit: one that times out here may still commit on the leader, and
            // must be withdrawn too.
            published.push(value.clone());
            self.node
                .short_lived()
                .commit(value.clone())
                .await
                .with_context(|| format!("committing the challenge for {domain}"))?;
            values.push(value);
            pending.push((url, challenge.url.clone(), domain.clone()));
        }
        if pending.is_empty() {
            return Ok(());
        }
        if dns01 {
            self.wait_until_every_member_answers(&values).await;
        }
        for (_, challenge_url, _) in &pending {
            step(
                "asking the CA to check",
                account.challenge(client, challenge_url),
            )
            .await?;
        }
        for (url, _, domain) in &pending {
            let mut valid = false;
            for attempt in 0..6 {
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                let auth = step("authorization", account.auth(client, url)).await?;
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
            issued.times.renew_at,
            std::time::UNIX_EPOCH + Duration::from_secs(from + (until - from) * 2 / 3)
        );
        assert_eq!(
            issued.times.not_after,
            std::time::UNIX_EPOCH + Duration::from_secs(until)
        );
        assert!(parse_issued(cert.pem().as_bytes()).is_err(), "no key");
        assert!(
            parse_issued(key.serialize_pem().as_bytes()).is_err(),
            "no certificate"
        );
    }

    /// A retry waits the backoff while the served certificate has long to run, never past
    /// half of what it has left as its end nears, and never less than a minute.
    #[test]
    fn a_retry_comes_before_the_served_certificate_runs_out() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let secs = |at: SystemTime| at.duration_since(now).expect("after now").as_secs();
        assert_eq!(secs(retry_at(0, now, None)), 1);
        assert_eq!(secs(retry_at(3, now, None)), 8);
        assert_eq!(secs(retry_at(40, now, None)), 1 << BACKOFF_MAX_EXPONENT);
        let in_90_days = now + Duration::from_secs(90 * 86_400);
        assert_eq!(
            secs(retry_at(40, now, Some(in_90_days))),
            1 << BACKOFF_MAX_EXPONENT
        );
        let in_10_hours = now + Duration::from_secs(36_000);
        assert_eq!(secs(retry_at(40, now, Some(in_10_hours))), 18_000);
        assert_eq!(secs(retry_at(2, now, Some(in_10_hours))), 4);
        let in_a_minute = now + Duration::from_secs(61);
        assert_eq!(secs(retry_at(40, now, Some(in_a_minute))), 60);
        let ended = now - Duration::from_secs(5);
        assert_eq!(
            secs(retry_at(40, now, Some(ended))),
            1 << BACKOFF_MAX_EXPONENT
        );
    }

    /// A CA that accepts a request and never answers fails the step at its bound, naming it;
    /// one that answers, or refuses, is passed through.
    #[tokio::test]
    async fn a_request_the_ca_never_answers_fails_at_the_step_bound() {
        let bound = Duration::from_millis(50);
        let started = std::time::Instant::now();
        let never = std::future::pending::<Result<(), std::io::Error>>();
        let error = step_within(bound, "new order", never)
            .await
            .expect_err("times out");
        assert!(started.elapsed() >= bound);
        assert!(error.to_string().contains("new order"), "{error}");
        let answered = step("finalize", async { Ok::<_, std::io::Error>(7) }).await;
        assert_eq!(answered.expect("answered"), 7);
        let refused = step("finalize", async {
            Err::<(), _>(std::io::Error::other("refused"))
        })
        .await
        .expect_err("the CA's error");
        assert!(format!("{refused:#}").contains("refused"), "{refused:#}");
    }

    /// The wait for a renewal reads the wall clock again at least every `RECHECK_EVERY`,
    /// however far the renewal is, and ends once the wall clock has reached it (also when the
    /// clock stepped past it).
    #[test]
    fn a_renewal_far_ahead_is_rechecked_hourly() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let in_60_days = now + Duration::from_secs(60 * 86_400);
        assert_eq!(next_sleep(in_60_days, now), Some(RECHECK_EVERY));
        let in_5_minutes = now + Duration::from_secs(300);
        assert_eq!(
            next_sleep(in_5_minutes, now),
            Some(Duration::from_secs(300))
        );
        assert_eq!(next_sleep(now, now), None);
        assert_eq!(
            next_sleep(in_60_days, in_60_days + Duration::from_secs(86_400)),
            None
        );
    }
}
