//! Goal: with `[https.acme]` a node gets its `[https]` certificate from an ACME CA by itself,
//! serves DoH with it, keeps it across a restart, renews it, and keeps serving it when a
//! renewal fails (docs/OPERATIONS.md, "Certificates").
//! Method: Pebble, the ACME test server Let's Encrypt publishes (Debian's `pebble`), on
//! loopback, issuing certificates valid for 60 s (so a renewal, at two thirds of the validity,
//! comes 40 s after an order). Pebble checks TLS-ALPN-01 on the node's `[https]` port and
//! resolves the name through the node's own DNS (`apex_a = 127.0.0.1`); its ACME API's
//! certificate is the test one (`tests/fixtures/tls/localhost.crt`). Without `pebble` on the
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
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};

use crate::harness::{TestServer, install_crypto_provider};
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
    _dir: tempfile::TempDir,
}

/// The ports Pebble listens on (`api`, `management`, `http` for HTTP-01, which is not used)
/// and the node's `[https]` port, where Pebble checks TLS-ALPN-01.
struct Ports {
    https: u16,
    api: u16,
    management: u16,
    http: u16,
}

impl Ports {
    fn pick() -> Ports {
        let ports =
            pkraft_testkit::ports::free_loopback_ports(4, &HashSet::new()).expect("free ports");
        Ports {
            https: ports[0],
            api: ports[1],
            management: ports[2],
            http: ports[3],
        }
    }
}

impl Pebble {
    /// Starts Pebble, resolving names through `dns` (the node's DNS).
    fn start(ports: &Ports, dns: SocketAddr) -> Pebble {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("pebble.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"pebble": {{"listenAddress": "127.0.0.1:{api}",
                "managementListenAddress": "127.0.0.1:{management}",
                "certificate": "{cert}", "privateKey": "{key}",
                "httpPort": {http}, "tlsPort": {https}, "ocspResponderURL": "",
                "externalAccountBindingRequired": false, "certificateValidityPeriod": 60}}}}"#,
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
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start pebble");
        Pebble {
            process: Some(process),
            management: ports.management,
            _dir: dir,
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
    fn drop(&mut self) {
        self.stop();
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
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let name = ServerName::try_from(DOMAIN).expect("name");
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
        "GET /dns-query?dns={query} HTTP/1.1\r\nHost: {DOMAIN}\r\nAccept: \
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
async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_an_acme_ca_is_served_kept_renewed_and_kept_when_renewal_fails() {
    if !pebble_installed() {
        return;
    }
    install_crypto_provider();
    let ports = Ports::pick();
    let mut node = TestServer::start_with_config(&format!(
        "[https]\nlisten = \"127.0.0.1:{https}\"\n[https.acme]\ndomains = [\"{DOMAIN}\"]\n\
         contact = [\"mailto:ops@{DOMAIN}\"]\ndirectory = \"https://127.0.0.1:{api}/dir\"\n\
         directory_ca = \"{ca}\"\n[dns]\norigins = [\"{DOMAIN}\"]\napex_a = [\"127.0.0.1\"]\n\
         [cluster]\nbootstrap = true\n",
        https = ports.https,
        api = ports.api,
        ca = fixture("ca.crt"),
    ));
    // Nothing to serve yet: the first order fails (the CA is not up) and is retried.
    let pebble = Pebble::start(&ports, node.dns);
    let roots = pebble.roots().await;
    wait_until("a first certificate", Duration::from_secs(60), || async {
        acme_orders(&node, "issued").await >= 1.0
    })
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
    node.terminate();
    node.restart();
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
    wait_until("a renewal", Duration::from_secs(90), || async {
        acme_orders(&node, "issued").await >= 1.0
    })
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
    wait_until("a failed renewal", Duration::from_secs(90), || async {
        acme_orders(&node, "error").await > failed_before
    })
    .await;
    let (still, status) = doh_over_https(ports.https, &roots)
        .await
        .expect("a handshake after the failed renewal");
    assert_eq!(still, renewed, "the certificate from before keeps serving");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        node.log().contains("ACME: failed, retrying with backoff"),
        "{}",
        node.log()
    );
}
