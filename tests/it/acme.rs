//! Goal: with `[https.acme]` a node gets its `[https]` certificate from an ACME CA by itself,
//! serves DoH with it, keeps it across a restart, renews it, and keeps serving it when a
//! renewal fails (docs/OPERATIONS.md, "Certificates").
//! Method: Pebble, the ACME test server Let's Encrypt publishes (Debian's `pebble`), on
//! loopback, issuing certificates valid for 60 s (so a renewal, at two thirds of the validity,
//! comes 40 s after an order). Pebble checks TLS-ALPN-01 on the node's `[https]` port and
//! resolves the name through the node's own DNS (`apex_a = 127.0.0.1`); its ACME API's
//! certificate is the test one (`tests/fixtures/tls/localhost.crt`). Pebble validates every
//! order (it reuses no authorization) and the node keeps its DNS port across its restart, so
//! the renewal after the restart proves the name to Pebble again. Without `pebble` on the
//! PATH the test says so and passes, unless `PKRAFT_TEST_REQUIRE_PEBBLE` is set (`.ci/run` sets
//! it and installs Pebble).

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use crate::cluster::{ClusterOptions, TestCluster};
use crate::harness::{Launch, TestServer, install_crypto_provider};
use crate::metrics::{sample, scrape};

const DOMAIN: &str = "pkarr.test";

fn fixture(name: &str) -> String {
    format!(
        "{}/../../tests/fixtures/tls/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Pebble on loopback, stopped (SIGKILL) when dropped.
struct Pebble {
    process: Option<Child>,
    management: u16,
    dir: tempfile::TempDir,
}

/// The ports Pebble listens on (`api`, `management`, `http` for HTTP-01, which is not used),
/// the node's `[https]` port, where Pebble checks TLS-ALPN-01, and the node's DNS port, where
/// Pebble resolves names and checks DNS-01: both kept across the node's restart.
struct Ports {
    https: u16,
    api: u16,
    management: u16,
    http: u16,
    dns: u16,
}

impl Ports {
    fn pick() -> Ports {
        let ports =
            pkraft_testkit::ports::free_loopback_ports(5, &HashSet::new()).expect("free ports");
        Ports {
            https: ports[0],
            api: ports[1],
            management: ports[2],
            http: ports[3],
            dns: ports[4],
        }
    }
}

impl Pebble {
    /// Starts Pebble, resolving names through `dns` (the node's DNS), issuing certificates
    /// valid for 60 s.
    fn start(ports: &Ports, dns: SocketAddr) -> Pebble {
        Pebble::start_issuing(ports, dns, 60)
    }

    /// [`Pebble::start`], issuing certificates valid for `validity_secs`.
    fn start_issuing(ports: &Ports, dns: SocketAddr, validity_secs: u64) -> Pebble {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("pebble.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"pebble": {{"listenAddress": "127.0.0.1:{api}",
                "managementListenAddress": "127.0.0.1:{management}",
                "certificate": "{cert}", "privateKey": "{key}",
                "httpPort": {http}, "tlsPort": {https}, "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": {validity_secs}}}}}"#,
                api = ports.api,
                management = ports.management,
                http = ports.http,
                https = ports.https,
                cert = fixture("localhost.crt"),
                key = fixture("localhost.key"),
            ),
        )
        .expect("pebble config");
        let log = std::fs::File::create(dir.path().join("pebble.log")).expect("log");
        let process = Command::new("pebble")
            .arg("-config")
            .arg(&config)
            .arg("-dnsserver")
            .arg(dns.to_string())
            // No random waits before a validation, no nonces refused at random.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            // Every order validated: a renewal proves the name again (with Pebble's default, half
            // the orders reused the authorization, and a renewal after the node's restart, when
            // its DNS was on a new port, passed only when one did).
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start pebble");
        Pebble {
            process: Some(process),
            management: ports.management,
            dir,
        }
    }

    /// Pebble's root and intermediate (made anew at each start), which sign what it issues.
    async fn roots(&self) -> rustls::RootCertStore {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(fixture("ca.crt")).expect("ca"))
            .expect("ca");
        let client = reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()
            .expect("client");
        let mut roots = rustls::RootCertStore::empty();
        for kind in ["roots", "intermediates"] {
            let url = format!("https://127.0.0.1:{}/{kind}/0", self.management);
            let mut answer = None;
            for _ in 0..50 {
                if let Ok(response) = client.get(&url).send().await
                    && response.status().is_success()
                {
                    answer = response.bytes().await.ok();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let pem = answer.expect("Pebble's management API answers");
            for cert in CertificateDer::pem_slice_iter(&pem) {
                roots.add(cert.expect("a certificate")).expect("a root");
            }
        }
        roots
    }

    fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl Drop for Pebble {
    /// A failed test shows what Pebble logged (why an order or a validation failed).
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("pebble.log"));
            eprintln!(
                "==== Pebble's log ====\n{}",
                log.unwrap_or_else(|e| e.to_string())
            );
        }
    }
}

fn pebble_installed() -> bool {
    let found = Command::new("pebble")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("PKRAFT_TEST_REQUIRE_PEBBLE").is_none(),
            "PKRAFT_TEST_REQUIRE_PEBBLE is set, but `pebble` is not on the PATH"
        );
        eprintln!("skipped: `pebble` is not installed (Debian package pebble)");
    }
    found
}

/// A DoH query for the origin's SOA over the node's `[https]` listener at `port`, as a client
/// that trusts only `roots` and asks for `DOMAIN`: the certificate presented and the HTTP
/// status line, or `None` if the handshake fails.
async fn doh_over_https(port: u16, roots: &rustls::RootCertStore) -> Option<(Vec<u8>, String)> {
    doh_over_https_as(port, roots, DOMAIN).await
}

/// [`doh_over_https`], asking for the name `server_name` (SNI and certificate check).
async fn doh_over_https_as(
    port: u16,
    roots: &rustls::RootCertStore,
    server_name: &str,
) -> Option<(Vec<u8>, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let name = ServerName::try_from(server_name.to_string()).expect("name");
    let mut tls = connector.connect(name, tcp).await.ok()?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()?
        .first()?
        .as_ref()
        .to_vec();
    let mut query = Message::query();
    query.add_query(Query::query(
        Name::from_ascii(format!("{DOMAIN}.")).expect("name"),
        RecordType::SOA,
    ));
    let query = URL_SAFE_NO_PAD.encode(query.to_vec().expect("query"));
    let request = format!(
        "GET /dns-query?dns={query} HTTP/1.1\r\nHost: {server_name}\r\nAccept: \
         application/dns-message\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let status = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    Some((leaf, status))
}

async fn acme_orders(node: &TestServer, result: &str) -> f64 {
    sample(
        &scrape(node).await,
        "pkraft_tls_acme_orders_total",
        &format!("result=\"{result}\""),
    )
    .unwrap_or(0.0)
}

/// Polls `check` every 200 ms until it holds, for at most `limit`.
async fn wait_until<F, Fut>(what: &str, limit: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_on(what, limit, None, check).await;
}

/// [`wait_until`] on one node, whose log a timeout shows (the orders it made and why they
/// failed; a cluster's members show theirs when the cluster is dropped).
async fn wait_on<F, Fut>(what: &str, limit: Duration, node: Option<&TestServer>, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}; the node's log:\n{}",
            node.map(TestServer::log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_an_acme_ca_is_served_kept_renewed_and_kept_when_renewal_fails() {
    served_kept_renewed_and_kept_when_renewal_fails("tls-alpn-01").await;
}

/// The same with `challenge = "dns-01"` on a single node, whose own DNS Pebble asks: the
/// DNS-01 client's own loop (renewal at two thirds, backoff) is tested as the TLS-ALPN-01 one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns01_certificate_is_served_kept_renewed_and_kept_when_renewal_fails() {
    served_kept_renewed_and_kept_when_renewal_fails("dns-01").await;
}

async fn served_kept_renewed_and_kept_when_renewal_fails(challenge: &str) {
    if !pebble_installed() {
        return;
    }
    install_crypto_provider();
    let ports = Ports::pick();
    // The node's DNS on a port of its own, the one Pebble is told, before and after its restart.
    let launch = Launch {
        dns: Some(SocketAddr::from(([127, 0, 0, 1], ports.dns))),
        ..Launch::default()
    };
    let mut node = TestServer::start_with_config_launched(
        &format!(
            "[https]\nlisten = \"127.0.0.1:{https}\"\n[https.acme]\nchallenge = \"{challenge}\"\n\
         domains = [\"{DOMAIN}\"]\n\
         contact = [\"mailto:ops@{DOMAIN}\"]\ndirectory = \"https://127.0.0.1:{api}/dir\"\n\
         directory_ca = \"{ca}\"\n[dns]\norigins = [\"{DOMAIN}\"]\napex_a = [\"127.0.0.1\"]\n\
         [cluster]\nbootstrap = true\n",
            https = ports.https,
            api = ports.api,
            ca = fixture("ca.crt"),
        ),
        launch,
    );
    // Nothing to serve yet: the first order fails (the CA is not up) and is retried.
    let pebble = Pebble::start(&ports, node.dns);
    let roots = pebble.roots().await;
    wait_on(
        "a first certificate",
        Duration::from_secs(60),
        Some(&node),
        || async { acme_orders(&node, "issued").await >= 1.0 },
    )
    .await;
    assert!(
        acme_orders(&node, "error").await >= 1.0,
        "the order made before the CA was up failed and was retried"
    );
    let (first, status) = doh_over_https(ports.https, &roots)
        .await
        .expect("a handshake with the issued certificate");
    assert_eq!(status, "HTTP/1.1 200 OK", "DoH over the ACME certificate");
    let scraped = scrape(&node).await;
    let expiry = sample(
        &scraped,
        "pkraft_tls_certificate_expiry_timestamp_seconds",
        "listener=\"https\"",
    )
    .expect("the expiry of the ACME certificate is exported");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        expiry > now && expiry < now + 120.0,
        "Pebble's 60 s certificate: {expiry} vs {now}"
    );

    // A restart serves the certificate kept in the data dir at once, without an order.
    let status = node.terminate();
    assert!(status.success(), "{status:?}\n{}", node.log());
    node.restart();
    assert_eq!(
        node.dns.port(),
        ports.dns,
        "Pebble asks the DNS port it was told"
    );
    let (kept, _) = doh_over_https(ports.https, &roots)
        .await
        .expect("a handshake right after the restart");
    assert_eq!(kept, first, "the certificate from the data dir");
    assert!(
        node.log()
            .contains("serving the certificate kept in the data dir"),
        "{}",
        node.log()
    );
    assert_eq!(acme_orders(&node, "issued").await, 0.0);

    // Renewed at two thirds of its 60 s, without a restart.
    wait_on(
        "a renewal",
        Duration::from_secs(90),
        Some(&node),
        || async { acme_orders(&node, "issued").await >= 1.0 },
    )
    .await;
    let (renewed, status) = doh_over_https(ports.https, &roots)
        .await
        .expect("a handshake with the renewed certificate");
    assert_ne!(renewed, first, "a new certificate is served");
    assert_eq!(status, "HTTP/1.1 200 OK");

    // The CA gone: the next renewal fails, and the certificate served keeps serving.
    let failed_before = acme_orders(&node, "error").await;
    let mut pebble = pebble;
    pebble.stop();
    wait_on(
        "a failed renewal",
        Duration::from_secs(90),
        Some(&node),
        || async { acme_orders(&node, "error").await > failed_before },
    )
    .await;
    let (still, status) = doh_over_https(ports.https, &roots)
        .await
        .expect("a handshake after the failed renewal");
    assert_eq!(still, renewed, "the certificate from before keeps serving");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(node.log().contains("ACME: failed"), "{}", node.log());
}

/// The `[https]` port in a node's "pkraft listening" line (`https=Some(127.0.0.1:P)`).
fn https_port(node: &TestServer) -> u16 {
    let log = node.log();
    let line = log
        .lines()
        .find(|line| line.contains("pkraft listening"))
        .expect("the listening line");
    line.split_whitespace()
        .find_map(|token| token.strip_prefix("https=Some("))
        .and_then(|addr| addr.trim_end_matches(')').parse::<SocketAddr>().ok())
        .expect("an https address")
        .port()
}

/// The rcode and the TXT values `dns` answers at `name` over UDP.
async fn txt_values(dns: SocketAddr, name: &str) -> (ResponseCode, Vec<String>) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut query = Message::query();
    query.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::TXT,
    ));
    socket
        .send_to(&query.to_vec().expect("query"), dns)
        .await
        .expect("send");
    let mut buf = vec![0; 4096];
    let (len, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
        .await
        .expect("an answer in time")
        .expect("receive");
    let answer = Message::from_vec(&buf[..len]).expect("answer");
    let values = answer
        .answers
        .iter()
        .map(|record| record.data.to_string())
        .collect();
    (answer.metadata.response_code, values)
}

/// Goal: with `challenge = "dns-01"`, every node of a cluster orders its own certificate for
/// one shared name and a wildcard under the origin, proving them through pkraft's own DNS
/// (docs/OPERATIONS.md, "Certificates"). Method: three nodes with the same `[https.acme]`;
/// Pebble asks node 2's DNS only, so the challenges of nodes 1 and 3 reach it through the Raft
/// log. Each node then presents a certificate of its own that a client trusting Pebble accepts
/// for the name and for a name under the wildcard, serves DoH with it, and the challenge values
/// are withdrawn from every node's DNS once the orders are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_orders_its_own_certificate_for_a_shared_and_wildcard_name_with_dns01() {
    if !pebble_installed() {
        return;
    }
    install_crypto_provider();
    let ports = Ports::pick();
    let sections = format!(
        "[https]\nlisten = \"127.0.0.1:0\"\n[https.acme]\nchallenge = \"dns-01\"\n\
         domains = [\"{DOMAIN}\", \"*.{DOMAIN}\"]\ndirectory = \"https://127.0.0.1:{api}/dir\"\n\
         directory_ca = \"{ca}\"\n",
        api = ports.api,
        ca = fixture("ca.crt"),
    );
    let cluster = TestCluster::start_as(
        3,
        ClusterOptions {
            sections,
            ..ClusterOptions::default()
        },
    )
    .await;
    let asked = cluster.member(2).server.dns;
    // Certificates valid for an hour: no renewal comes during the test.
    let pebble = Pebble::start_issuing(&ports, asked, 3600);
    let pebble_roots = pebble.roots().await;
    for member in &cluster.members {
        wait_until(
            &format!("node {}'s certificate", member.id),
            Duration::from_secs(120),
            || async { acme_orders(&member.server, "issued").await >= 1.0 },
        )
        .await;
    }
    let mut leaves = HashSet::new();
    for member in &cluster.members {
        let port = https_port(&member.server);
        let (leaf, status) = doh_over_https_as(port, &pebble_roots, DOMAIN)
            .await
            .unwrap_or_else(|| panic!("node {}: a handshake for {DOMAIN}", member.id));
        assert_eq!(status, "HTTP/1.1 200 OK", "node {}: DoH", member.id);
        let wildcard = format!("doh.{DOMAIN}");
        let (wildcard_leaf, _) = doh_over_https_as(port, &pebble_roots, &wildcard)
            .await
            .unwrap_or_else(|| panic!("node {}: a handshake for {wildcard}", member.id));
        assert_eq!(wildcard_leaf, leaf, "one certificate for both names");
        leaves.insert(leaf);
        assert!(
            member
                .server
                .log()
                .lines()
                .any(|line| line.contains("new certificate issued")
                    && line.contains("challenge=dns-01")),
            "{}",
            member.server.log()
        );
    }
    assert_eq!(leaves.len(), 3, "each node has a certificate of its own");
    let challenge = format!("_acme-challenge.{DOMAIN}.");
    for member in &cluster.members {
        wait_until(
            &format!("node {}: the challenge values withdrawn", member.id),
            Duration::from_secs(10),
            || async {
                txt_values(member.server.dns, &challenge).await == (ResponseCode::NXDomain, vec![])
            },
        )
        .await;
    }
    // A restart serves the certificate kept in the data dir at once, without an order.
    let mut cluster = cluster;
    let (before, _) =
        doh_over_https_as(https_port(&cluster.member(3).server), &pebble_roots, DOMAIN)
            .await
            .expect("node 3: a handshake");
    cluster.member_mut(3).server.terminate();
    cluster.restart(3);
    let restarted = cluster.member(3);
    let (after, status) = doh_over_https_as(https_port(&restarted.server), &pebble_roots, DOMAIN)
        .await
        .expect("node 3: a handshake right after its restart");
    assert_eq!(after, before, "the certificate from the data dir");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        restarted
            .server
            .log()
            .contains("serving the certificate kept in the data dir"),
        "{}",
        restarted.server.log()
    );
    // Still no order of its own a while after the restart: the kept certificate is good.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(acme_orders(&cluster.member(3).server, "issued").await, 0.0);
}
