//! Goal: with `[cluster.tls]`, nodes join, replicate and forward publishes over mutual TLS, the
//! peer listener serves nothing to a client without a certificate from the cluster CA (nor to
//! plain HTTP), one node's certificate cannot speak for another node, and the cluster moves to
//! a new CA without a restart.
//! Method: real nodes on loopback, each with its own test peer certificate (tests/fixtures/tls:
//! `127.0.0.1` in its names, `pkraft:node:<id>` as a URI), the second joining through the
//! first; no proxy in between (the fault-injecting one speaks plain HTTP). A publish through the
//! follower is forwarded to the leader and read back from both.

use std::sync::Arc;

use pkraft_testkit::{iroh_packet, keypair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::{admin_status, eventually};
use crate::harness::{TestServer, install_crypto_provider};

const SECRET: &str = "test-cluster-secret-0123456789";

fn fixture(name: &str) -> String {
    format!(
        "{}/../../tests/fixtures/tls/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn node_config(id: u64, membership: &str) -> String {
    format!(
        "node_id = {id}\n[cluster]\nsecret = \"{SECRET}\"\n{membership}\n[cluster.tls]\n\
         cert = \"{cert}\"\nkey = \"{key}\"\nca = \"{ca}\"\n",
        cert = fixture(&format!("peer-node{id}.crt")),
        key = fixture(&format!("peer-node{id}.key")),
        ca = fixture("peer-ca.crt"),
    )
}

#[tokio::test]
async fn nodes_replicate_over_mutual_tls_and_refuse_clients_without_a_certificate() {
    install_crypto_provider();
    let first = TestServer::start_with_config(&node_config(1, "bootstrap = true"));
    let second =
        TestServer::start_with_config(&node_config(2, &format!("join = [\"{}\"]", first.peer)));
    wait_for_voters(&first, 2).await;

    // Through the follower: forwarded to the leader over TLS, replicated back over TLS.
    let key = keypair(7_100);
    let packet = iroh_packet(&key, 1_000, &["192.0.2.71:1"]);
    let response = second
        .put(&second.relay_url(&key), packet.to_relay_payload())
        .await;
    assert_eq!(response.status(), 204, "{}", second.log());
    for node in [&first, &second] {
        eventually("the packet on both nodes", || async {
            (node.get(&node.relay_url(&key)).await.status() == 200).then_some(())
        })
        .await;
    }

    // Plain HTTP to the peer listener gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(first.peer)
        .await
        .expect("connect");
    plain
        .write_all(b"GET /peer/v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP was answered: {:?}",
        String::from_utf8_lossy(&answer)
    );

    // TLS that trusts the cluster CA but has no client certificate: refused.
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(fixture("peer-ca.crt")).expect("ca") {
        roots.add(ca.expect("ca cert")).expect("add ca");
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(first.peer)
        .await
        .expect("connect");
    let server_name = ServerName::try_from("127.0.0.1").expect("name");
    // With TLS 1.3 the client finishes its side of the handshake before the server checks the
    // (missing) certificate; the refusal then arrives on the first read.
    if let Ok(mut tls) = connector.connect(server_name, tcp).await {
        let request = format!(
            "POST /peer/v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let _ = tls.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        let read = tls.read_to_end(&mut answer).await;
        assert!(
            read.is_err() || !answer.starts_with(b"HTTP/"),
            "answered without a client certificate: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
}

/// A TLS client of the peer listener at `addr` presenting node `cert_of`'s certificate, sending
/// a status request that says it comes from node `claims`; the HTTP status line it gets back.
async fn status_as(addr: std::net::SocketAddr, cert_of: u64, claims: u64) -> String {
    status_with(addr, "peer-ca.crt", &format!("peer-node{cert_of}"), claims)
        .await
        .expect("a TLS session")
}

/// [`status_as`] trusting the fixture CA file `ca` and presenting the fixture certificate and
/// key `cert` (`<cert>.crt`, `<cert>.key`). `None` when the handshake fails on either side:
/// with TLS 1.3 a refused client certificate shows on the first read, as no HTTP answer.
async fn status_with(
    addr: std::net::SocketAddr,
    ca: &str,
    cert: &str,
    claims: u64,
) -> Option<String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(fixture(ca)).expect("ca") {
        roots.add(ca.expect("ca cert")).expect("add ca");
    }
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(fixture(&format!("{cert}.crt")))
            .expect("cert")
            .map(|c| c.expect("cert"))
            .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(fixture(&format!("{cert}.key")))
        .expect("key");
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .expect("client config");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let server_name = ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = connector.connect(server_name, tcp).await.ok()?;
    let request = format!(
        "POST /peer/v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\r\n\
         pkraft-source-node: {claims}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer
        .starts_with("HTTP/")
        .then(|| answer.lines().next().unwrap_or_default().to_string() + "\n" + &answer)
}

const PEER_RELOADS: &str = "pkraft_tls_certificate_reloads_total";

/// `pkraft_tls_certificate_reloads_total{listener="peer",result}` on `node`.
async fn peer_reloads(node: &TestServer, result: &str) -> f64 {
    let labels = format!("listener=\"peer\",result=\"{result}\"");
    crate::metrics::value(&crate::metrics::scrape(node).await, PEER_RELOADS, &labels)
}

/// Waits until `node` has loaded its peer files `count` times with `result`.
async fn wait_for_peer_reloads(node: &TestServer, result: &str, count: f64) {
    eventually(&format!("{count} peer reloads ({result})"), || async {
        (peer_reloads(node, result).await >= count).then_some(())
    })
    .await;
}

/// Waits until `node` sees `count` voters.
async fn wait_for_voters(node: &TestServer, count: usize) {
    eventually(&format!("{count} voters"), || async {
        let voters = admin_status(node).await?["members"]
            .as_array()?
            .iter()
            .filter(|m| m["voter"] == true)
            .count();
        (voters == count).then_some(())
    })
    .await;
}

/// A packet published through `through` (204) and served by every node of `nodes`.
async fn publish_and_read(through: &TestServer, nodes: &[&TestServer], seed: u64) {
    let key = keypair(seed);
    let packet = iroh_packet(&key, 1_000, &["192.0.2.72:1"]);
    let response = through
        .put(&through.relay_url(&key), packet.to_relay_payload())
        .await;
    assert_eq!(response.status(), 204, "{}", through.log());
    for node in nodes {
        eventually("the packet on every node", || async {
            (node.get(&node.relay_url(&key)).await.status() == 200).then_some(())
        })
        .await;
    }
}

/// Goal: the cluster moves from one CA to another while it runs (docs/OPERATIONS.md,
/// "Certificates"), taking writes throughout, and a file that cannot be used is refused.
/// Method: every node's cert, key and CA are files of its own, checked every 50 ms. Both CAs are
/// trusted (a bundle), every node gets its certificate from the new CA, the old CA is dropped;
/// a write through the follower after each step. Then the listener takes only the new CA's
/// certificates and presents its new one; and a third node that knows only the new CA joins:
/// the others dial it, and it them, with the new files.
#[tokio::test]
async fn a_cluster_moves_to_a_new_ca_without_a_restart() {
    install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let node_dir = |id: u64| dir.path().join(format!("node{id}"));
    // Each file replaced whole by a rename, as a deploy tool writes it: a check never reads
    // half of one.
    let replace = |id: u64, name: &str, text: &str| {
        let temporary = node_dir(id).join(format!("{name}.new"));
        std::fs::write(&temporary, text).expect("write");
        std::fs::rename(&temporary, node_dir(id).join(name)).expect("rename");
    };
    let put = |id: u64, name: &str, fixtures: &[&str]| {
        let text: String = fixtures
            .iter()
            .map(|f| std::fs::read_to_string(fixture(f)).expect("fixture"))
            .collect();
        replace(id, name, &text);
    };
    let config = |id: u64, membership: &str| {
        std::fs::create_dir_all(node_dir(id)).expect("node dir");
        format!(
            "node_id = {id}\n[cluster]\nsecret = \"{SECRET}\"\n{membership}\n[cluster.tls]\n\
             cert = \"{cert}\"\nkey = \"{key}\"\nca = \"{ca}\"\nreload_interval = \"50ms\"\n",
            cert = node_dir(id).join("cert.pem").display(),
            key = node_dir(id).join("key.pem").display(),
            ca = node_dir(id).join("ca.pem").display(),
        )
    };
    for id in [1, 2] {
        std::fs::create_dir_all(node_dir(id)).expect("node dir");
        put(id, "cert.pem", &[&format!("peer-node{id}.crt")]);
        put(id, "key.pem", &[&format!("peer-node{id}.key")]);
        put(id, "ca.pem", &["peer-ca.crt"]);
    }
    let first = TestServer::start_with_config(&config(1, "bootstrap = true"));
    let second = TestServer::start_with_config(&config(2, &format!("join = [\"{}\"]", first.peer)));
    wait_for_voters(&first, 2).await;
    let nodes = [&first, &second];

    // 1. Both CAs trusted.
    for id in [1, 2] {
        put(id, "ca.pem", &["peer-ca.crt", "peer2-ca.crt"]);
    }
    for node in nodes {
        wait_for_peer_reloads(node, "ok", 1.0).await;
    }
    publish_and_read(&second, &nodes, 7_200).await;

    // 2. Every node's certificate from the new CA (the key first: the watcher waits until both
    // have stopped changing). A CA file that is no certificate is refused on node 2 meanwhile.
    for id in [1, 2] {
        put(id, "key.pem", &[&format!("peer2-node{id}.key")]);
        put(id, "cert.pem", &[&format!("peer2-node{id}.crt")]);
    }
    for node in nodes {
        wait_for_peer_reloads(node, "ok", 2.0).await;
    }
    for node in nodes {
        assert_eq!(
            peer_reloads(node, "error").await,
            0.0,
            "no file refused so far"
        );
    }
    replace(2, "ca.pem", "not a certificate");
    wait_for_peer_reloads(&second, "error", 1.0).await;
    assert!(
        second
            .log()
            .contains("new certificate refused; the one loaded before keeps serving"),
        "{}",
        second.log()
    );
    publish_and_read(&second, &nodes, 7_201).await;

    // 3. The old CA dropped.
    for id in [1, 2] {
        put(id, "ca.pem", &["peer2-ca.crt"]);
    }
    for node in nodes {
        wait_for_peer_reloads(node, "ok", 3.0).await;
    }
    publish_and_read(&second, &nodes, 7_202).await;

    // The listener presents the new certificate and takes only the new CA's.
    let answer = status_with(first.peer, "peer2-ca.crt", "peer2-node2", 2).await;
    assert!(
        answer
            .as_deref()
            .is_some_and(|a| a.starts_with("HTTP/1.1 200")),
        "{answer:?}"
    );
    assert_eq!(
        status_with(first.peer, "peer2-ca.crt", "peer-node2", 2).await,
        None,
        "a certificate of the old CA is refused"
    );
    assert_eq!(
        status_with(first.peer, "peer-ca.crt", "peer2-node2", 2).await,
        None,
        "the listener no longer presents the old CA's certificate"
    );

    // A node that knows only the new CA joins: every connection to and from it uses the new
    // files.
    std::fs::create_dir_all(node_dir(3)).expect("node dir");
    put(3, "cert.pem", &["peer2-node3.crt"]);
    put(3, "key.pem", &["peer2-node3.key"]);
    put(3, "ca.pem", &["peer2-ca.crt"]);
    let third = TestServer::start_with_config(&config(3, &format!("join = [\"{}\"]", second.peer)));
    wait_for_voters(&first, 3).await;
    publish_and_read(&third, &[&first, &second, &third], 7_203).await;
}

#[tokio::test]
async fn a_peer_presenting_another_nodes_certificate_is_refused() {
    install_crypto_provider();
    let node = TestServer::start_with_config(&node_config(1, "bootstrap = true"));
    // Node 2's certificate, claiming to be node 3: refused before any handler runs.
    let refused = status_as(node.peer, 2, 3).await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(
        refused.contains("the certificate is for node 2, not node 3"),
        "{refused}"
    );
    // The same certificate as the node it names passes this check (and reaches the route).
    let accepted = status_as(node.peer, 2, 2).await;
    assert!(!accepted.starts_with("HTTP/1.1 403"), "{accepted}");
    assert!(!accepted.starts_with("HTTP/1.1 401"), "{accepted}");
}

#[test]
fn a_node_whose_certificate_names_another_node_does_not_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("node.toml");
    // Node 3 with node 2's certificate.
    let text = node_config(3, "bootstrap = true")
        .replace("peer-node3.crt", "peer-node2.crt")
        .replace("peer-node3.key", "peer-node2.key");
    std::fs::write(&config, text).expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pkraft"))
        .args(["check-config", &config.display().to_string()])
        .output()
        .expect("run pkraft");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cluster.tls.cert") && stderr.contains("not node 3"),
        "{stderr}"
    );
}
