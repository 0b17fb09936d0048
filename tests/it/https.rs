//! Goal: the optional `[https]` listener serves the public API (relay and DNS-over-HTTPS) over
//! TLS, as a DoH client that insists on `https://` needs, with the same answers as plain DNS.
//! Method: the real binary with the test certificate in tests/fixtures/tls, and reqwest trusting
//! only the test CA, over HTTP/1.1 and HTTP/2 (ALPN).

use std::sync::atomic::{AtomicU32, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::RecordType;
use pkraft_testkit::{iroh_packet, keypair};

use crate::dns_client::{Transport, exchange, key_name, name};
use crate::harness::{TestServer, install_crypto_provider};
use crate::metrics::{sample, scrape};

fn fixture(file: &str) -> String {
    format!(
        "{}/../../tests/fixtures/tls/{file}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The `https=Some(ADDR)` the node logs when it starts.
fn https_port(log: &str) -> u16 {
    let start = log.find("https=Some(").expect("https address in the log") + "https=Some(".len();
    let end = start + log[start..].find(')').expect("closing parenthesis");
    let addr: std::net::SocketAddr = log[start..end].parse().expect("an address");
    addr.port()
}

#[tokio::test]
async fn doh_and_the_relay_over_https_with_http1_and_http2() {
    let server = TestServer::start_with_config(&format!(
        "[https]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n\
             [cluster]\nbootstrap = true\n",
        fixture("localhost.crt"),
        fixture("localhost.key")
    ));
    let port = https_port(&server.log());
    let key = keypair(70);
    let packet = iroh_packet(&key, 1_000, &["192.0.2.7:7"]);
    server.publish(&key, &packet).await;

    let mut query = Message::query();
    query.metadata.id = 7;
    query.add_query(Query::query(
        name(&key_name("_iroh", &key)),
        RecordType::TXT,
    ));
    let query = query.to_vec().expect("encode");
    let over_tcp = exchange(server.dns, Transport::Tcp, &query).await;

    install_crypto_provider();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(fixture("ca.crt")).expect("ca"))
        .expect("ca pem");
    for http2 in [false, true] {
        let mut builder = reqwest::Client::builder().tls_certs_only([ca.clone()]);
        builder = if http2 {
            builder.http2_prior_knowledge()
        } else {
            builder.http1_only()
        };
        let client = builder.build().expect("client");
        let doh = client
            .get(format!(
                "https://localhost:{port}/dns-query?dns={}",
                URL_SAFE_NO_PAD.encode(&query)
            ))
            .header("origin", "https://app.example")
            .send()
            .await
            .expect("DoH over https");
        assert_eq!(doh.status(), 200, "http2 {http2}");
        assert_eq!(
            doh.headers()
                .get("access-control-allow-origin")
                .and_then(|v| v.to_str().ok()),
            Some("*"),
            "CORS on the [https] listener too"
        );
        let expected = if http2 {
            reqwest::Version::HTTP_2
        } else {
            reqwest::Version::HTTP_11
        };
        assert_eq!(doh.version(), expected);
        assert_eq!(doh.bytes().await.expect("body"), over_tcp, "http2 {http2}");

        let relay = client
            .get(format!(
                "https://localhost:{port}/pkarr/{}",
                key.public_key().to_z32()
            ))
            .send()
            .await
            .expect("GET over https");
        assert_eq!(relay.status(), 200);
        assert_eq!(
            relay.bytes().await.expect("body"),
            packet.to_relay_payload()
        );
    }

    // A client that does not trust the test CA is refused at the handshake.
    let untrusting = reqwest::Client::builder().build().expect("client");
    assert!(
        untrusting
            .get(format!("https://localhost:{port}/healthz"))
            .send()
            .await
            .is_err()
    );
}

/// A new client that trusts only the CAs `cas` (files in tests/fixtures/tls). A new client has
/// no TLS session to resume (a resumed session presents no certificate), and it keeps no idle
/// connection: each of its requests makes a full handshake and gets the certificate served now.
fn fresh_client(cas: &[&str]) -> reqwest::Client {
    install_crypto_provider();
    let cas = cas.iter().map(|ca| {
        reqwest::Certificate::from_pem(&std::fs::read(fixture(ca)).expect("ca")).expect("ca pem")
    });
    reqwest::Client::builder()
        .tls_certs_only(cas)
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

/// Whether a new client trusting only `ca` completes a DoH query over `[https]` at `port`.
async fn served_to(ca: &str, port: u16) -> bool {
    doh_succeeds(&fresh_client(&[ca]), port).await
}

/// Whether `client` completes a DoH query over `[https]` at `port`.
async fn doh_succeeds(client: &reqwest::Client, port: u16) -> bool {
    // ID 0, RD, one question: pkarr.test. SOA IN.
    let query =
        b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05pkarr\x04test\x00\x00\x06\x00\x01";
    let url = format!(
        "https://localhost:{port}/dns-query?dns={}",
        URL_SAFE_NO_PAD.encode(query)
    );
    match client.get(url).send().await {
        Ok(response) => response.status() == 200 && response.bytes().await.is_ok(),
        Err(_) => false,
    }
}

/// Waits (bounded) until a new client trusting only `ca` completes a DoH query, and fails the
/// test if none does.
async fn wait_until_served_to(ca: &str, port: u16, what: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !served_to(ca, port).await {
        assert!(tokio::time::Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Replaces `dst` with `src` by a rename, as certbot and most deploy tools do.
fn replace_file(src: &str, dst: &std::path::Path) {
    let staged = dst.with_extension("new");
    std::fs::copy(fixture(src), &staged).expect("stage");
    std::fs::rename(&staged, dst).expect("rename");
}

/// A node serving `[https]` from copies of the `localhost` certificate and key in a directory of
/// its own, which the test then replaces.
fn start_with_certificate_files(reload_interval: &str) -> (TestServer, tempfile::TempDir, u16) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(fixture("localhost.crt"), dir.path().join("cert.pem")).expect("cert");
    std::fs::copy(fixture("localhost.key"), dir.path().join("key.pem")).expect("key");
    let server = TestServer::start_with_config(&format!(
        "[https]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n\
         reload_interval = \"{reload_interval}\"\n[cluster]\nbootstrap = true\n",
        dir.path().join("cert.pem").display(),
        dir.path().join("key.pem").display(),
    ));
    let port = https_port(&server.log());
    (server, dir, port)
}

const RELOADS: &str = "pkraft_tls_certificate_reloads_total";
const OK: &str = "listener=\"https\",result=\"ok\"";
const REFUSED: &str = "listener=\"https\",result=\"error\"";
const EXPIRY: &str = "pkraft_tls_certificate_expiry_timestamp_seconds";
const HTTPS: &str = "listener=\"https\"";

/// The sample `name{labels}` on `server`'s `/metrics`, if it is there.
async fn metric(server: &TestServer, name: &str, labels: &str) -> Option<f64> {
    sample(&scrape(server).await, name, labels)
}

/// Goal: a renewed certificate is served without a restart, and no request fails while the
/// files are swapped under DoH load; connections opened before keep working.
/// Method: the files are replaced (by rename, one after the other, as a deploy tool does) with a
/// certificate for the same names from another CA (`peer-node1`, signed by `peer-ca`); a client
/// trusting only `peer-ca` is refused before and served after, while a client trusting both CAs
/// makes a new connection for every request throughout; a client trusting only the old CA keeps
/// its HTTP/2 connection from before the swap.
#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart_or_a_failed_request() {
    let (server, dir, port) = start_with_certificate_files("100ms");
    assert!(served_to("ca.crt", port).await);
    assert!(
        !served_to("peer-ca.crt", port).await,
        "the new CA before the swap"
    );
    assert_eq!(metric(&server, RELOADS, OK).await, Some(0.0));
    let old_expiry = metric(&server, EXPIRY, HTTPS)
        .await
        .expect("expiry exported");

    let ca = reqwest::Certificate::from_pem(&std::fs::read(fixture("ca.crt")).expect("ca"))
        .expect("pem");
    let kept = reqwest::Client::builder()
        .tls_certs_only([ca])
        .http2_prior_knowledge()
        .build()
        .expect("client");
    assert!(doh_succeeds(&kept, port).await, "HTTP/2 before the swap");

    // The load: DoH queries one after the other, each from a new client trusting both CAs (so
    // each makes a full handshake), until stopped (bounded in count). Counted as they go, so
    // the test can wait for enough of them.
    let served = std::sync::Arc::new(AtomicU32::new(0));
    let failed = std::sync::Arc::new(AtomicU32::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn({
        let (served, failed, stop) = (served.clone(), failed.clone(), stop.clone());
        async move {
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let either = fresh_client(&["ca.crt", "peer-ca.crt"]);
                let counter = if doh_succeeds(&either, port).await {
                    &served
                } else {
                    &failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    // Some queries before the swap, some while the files change, some after the new
    // certificate is served: each wait is bounded.
    wait_for_count(&served, 5, "queries before the swap").await;
    replace_file("peer-node1.crt", &dir.path().join("cert.pem"));
    replace_file("peer-node1.key", &dir.path().join("key.pem"));
    wait_until_served_to("peer-ca.crt", port, "the renewed certificate served").await;
    let after = served.load(Ordering::Relaxed) + 5;
    wait_for_count(&served, after, "queries after the swap").await;
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load");
    let (served, failed) = (
        served.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    assert_eq!(
        failed, 0,
        "{served} served, {failed} failed during the swap"
    );

    assert!(
        !served_to("ca.crt", port).await,
        "a new client gets the old certificate"
    );
    assert!(
        doh_succeeds(&kept, port).await,
        "the HTTP/2 connection from before"
    );
    assert_eq!(metric(&server, RELOADS, OK).await, Some(1.0));
    assert_eq!(metric(&server, RELOADS, REFUSED).await, Some(0.0));
    let new_expiry = metric(&server, EXPIRY, HTTPS)
        .await
        .expect("expiry exported");
    assert!(new_expiry > 0.0 && old_expiry > 0.0);
    server.wait_for_log("certificate reloaded").await;
}

/// Goal: new files that cannot be used are refused, counted and logged, and the certificate
/// loaded before keeps serving; good files after them are loaded.
/// Method: the certificate file is overwritten with junk, then with a certificate whose key is
/// not the key file's; a client trusting only the old CA keeps being served; then the matching
/// key arrives.
#[tokio::test]
async fn unusable_certificate_files_are_refused_and_the_old_certificate_keeps_serving() {
    let (server, dir, port) = start_with_certificate_files("100ms");
    let cert = dir.path().join("cert.pem");

    std::fs::write(&cert, "not a certificate\n").expect("junk");
    wait_for_metric(&server, RELOADS, REFUSED, 1.0).await;
    server.wait_for_log("new certificate refused").await;
    assert!(served_to("ca.crt", port).await, "after junk");

    // Another certificate, but the key file still holds the old key.
    replace_file("peer-node1.crt", &cert);
    wait_for_metric(&server, RELOADS, REFUSED, 2.0).await;
    server.wait_for_log("does not match").await;
    assert!(served_to("ca.crt", port).await, "after a mismatched pair");
    assert_eq!(metric(&server, RELOADS, OK).await, Some(0.0));

    replace_file("peer-node1.key", &dir.path().join("key.pem"));
    wait_until_served_to("peer-ca.crt", port, "the good pair served").await;
    assert_eq!(metric(&server, RELOADS, OK).await, Some(1.0));
    assert_eq!(metric(&server, RELOADS, REFUSED).await, Some(2.0));
}

/// Goal: SIGHUP (what certbot's deploy hooks send) reloads the certificate at once and does not
/// stop the node.
/// Method: a reload interval of an hour, so that only the signal can load the new files.
#[tokio::test]
async fn sighup_reloads_the_certificate_and_the_node_keeps_running() {
    let (mut server, dir, port) = start_with_certificate_files("1h");
    replace_file("peer-node1.crt", &dir.path().join("cert.pem"));
    replace_file("peer-node1.key", &dir.path().join("key.pem"));
    assert!(
        !served_to("peer-ca.crt", port).await,
        "no reload before the signal"
    );

    server.signal("-HUP");
    wait_until_served_to("peer-ca.crt", port, "the certificate reloaded on SIGHUP").await;
    assert!(
        server.is_running(),
        "SIGHUP stopped the node:\n{}",
        server.log()
    );
    server.wait_for_log("certificate reloaded").await;
    assert!(server.log().contains("SIGHUP"), "{}", server.log());
    assert_eq!(metric(&server, RELOADS, OK).await, Some(1.0));
}

/// Waits (bounded) until `counter` reaches `count`.
async fn wait_for_count(counter: &AtomicU32, count: u32, what: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while counter.load(Ordering::Relaxed) < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} {what} within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until `name{labels}` reaches `value`.
async fn wait_for_metric(server: &TestServer, name: &str, labels: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = metric(server, name, labels).await;
        if now.is_some_and(|v| v >= value) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{{{labels}}} at {now:?}, not {value}, after 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Goal: `pkraft publish`, `resolve` and `cluster` reach a node through `https://` URLs,
/// checking its certificate against the system's CAs or the file `SSL_CERT_FILE` names.
/// Method: the real binary as a client of a node with `[https]` (the test certificate): with
/// `SSL_CERT_FILE` naming the test CA, a publish and a resolve over HTTPS; without it (the
/// system's CAs do not know the test CA) the publish is refused at the handshake. The admin
/// address as a URL (`http://host:port`) works as `host:port` does.
#[tokio::test]
async fn the_command_line_clients_speak_https() {
    let server = TestServer::start_with_config(&format!(
        "[https]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n\
         [cluster]\nbootstrap = true\n",
        fixture("localhost.crt"),
        fixture("localhost.key")
    ));
    let relay = format!("https://localhost:{}/pkarr", https_port(&server.log()));
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("key");
    let key = key.to_str().expect("utf-8 path");
    let client = |args: &[&str], ca: Option<String>| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_pkraft"));
        command
            .args(args)
            .env_remove("PKRAFT_RELAY")
            .env_remove("SSL_CERT_DIR");
        match ca {
            Some(ca) => command.env("SSL_CERT_FILE", ca),
            None => command.env_remove("SSL_CERT_FILE"),
        };
        async move { command.output().await.expect("run pkraft") }
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();

    let keygen = client(&["keygen", key], None).await;
    assert!(keygen.status.success(), "{}", text(&keygen.stderr));
    let z32 = text(&keygen.stdout).trim().to_string();

    let publish = ["publish", "-k", key, "--relay", &relay, "@ A 192.0.2.44"];
    let untrusted = client(&publish, None).await;
    assert!(
        !untrusted.status.success(),
        "the test CA is not a system CA"
    );
    assert!(
        text(&untrusted.stderr).contains("certificate"),
        "{}",
        text(&untrusted.stderr)
    );
    let published = client(&publish, Some(fixture("ca.crt"))).await;
    assert!(published.status.success(), "{}", text(&published.stderr));
    let resolved = client(
        &["resolve", &z32, "--relay", &relay],
        Some(fixture("ca.crt")),
    )
    .await;
    assert!(resolved.status.success(), "{}", text(&resolved.stderr));
    assert!(
        text(&resolved.stdout).contains("192.0.2.44"),
        "{}",
        text(&resolved.stdout)
    );

    let admin_url = format!("http://{}", server.admin);
    let status = client(&["cluster", "--admin", &admin_url, "status"], None).await;
    assert!(status.status.success(), "{}", text(&status.stderr));
    assert!(
        text(&status.stdout).contains("leader: 1"),
        "{}",
        text(&status.stdout)
    );
}
