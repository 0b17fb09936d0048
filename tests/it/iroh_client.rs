//! Goal: real iroh endpoints use a pkraft cluster for address lookup, unchanged: one publishes
//! through a node's relay (`PkarrPublisher`), others find it through a different node's DNS
//! (`DnsAddressLookup`) and relay (`PkarrResolver`), and connect to it with nothing but its id.
//! The same holds after the leader is killed.
//! Method: a 3-node cluster of real `pkraft serve` processes; iroh 1.4 endpoints on 127.0.0.1
//! with relays and port mapping off (offline), configured by the docs' example
//! (`crates/pkraft/examples/iroh-endpoint/pkraft_lookup.rs`). Every connecting endpoint has one
//! lookup service and no other source of addresses, so a connection proves the lookup.

use std::net::SocketAddr;

use iroh::address_lookup::{AddrFilter, AddressLookupBuilder};
use iroh::endpoint::{Builder, PortmapperConfig, presets};
use iroh::{Endpoint, EndpointId, RelayMode};
use n0_future::StreamExt;

use crate::cluster::{TestCluster, eventually};
use crate::harness::{ORIGIN, TestServer, install_crypto_provider};

#[path = "../../crates/pkraft/examples/iroh-endpoint/pkraft_lookup.rs"]
mod pkraft_lookup;
use pkraft_lookup::PkraftCluster;

const ALPN: &[u8] = b"pkraft/test/echo/0";

fn cluster_view(relay: &TestServer, dns: &TestServer) -> PkraftCluster {
    PkraftCluster {
        relay: url::Url::parse(&relay.url("/pkarr")).expect("relay URL"),
        dns: dns.dns,
        origin: ORIGIN.to_string(),
    }
}

/// Offline settings: loopback only, no relays, no port mapping, and a resolver that asks only
/// the cluster (no public fallback), even for what the endpoint resolves on its own.
fn offline(builder: Builder, cluster: &PkraftCluster) -> Builder {
    builder
        .dns_resolver(cluster.resolver())
        .relay_mode(RelayMode::Disabled)
        .portmapper_config(PortmapperConfig::Disabled)
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0")
        .expect("bind address")
        .alpns(vec![ALPN.to_vec()])
}

/// An endpoint set up as the docs show (publishing its direct addresses through `cluster`'s
/// relay) that echoes one stream per connection.
async fn publishing_endpoint(cluster: &PkraftCluster) -> Endpoint {
    install_crypto_provider();
    let builder = cluster.endpoint_builder(AddrFilter::unfiltered());
    let endpoint = offline(builder, cluster).bind().await.expect("bind");
    let server = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                let Ok((mut send, mut recv)) = connection.accept_bi().await else {
                    return;
                };
                if let Ok(message) = recv.read_to_end(1024).await {
                    let _ = send.write_all(&message).await;
                    let _ = send.finish();
                }
                connection.closed().await;
            });
        }
    });
    endpoint
}

/// An endpoint whose only source of addresses is `lookup`.
async fn looking_up_endpoint(
    cluster: &PkraftCluster,
    lookup: impl AddressLookupBuilder,
) -> Endpoint {
    install_crypto_provider();
    let builder = Endpoint::builder(presets::Minimal).address_lookup(lookup);
    offline(builder, cluster).bind().await.expect("bind")
}

/// Waits until `client`'s lookup returns `target`'s bound addresses (the publish has reached the
/// node it asks), then connects with only the id and checks an echo.
async fn find_and_connect(client: &Endpoint, target: &Endpoint, via: &str) {
    let id: EndpointId = target.id();
    let mut expected: Vec<SocketAddr> = target.bound_sockets();
    expected.sort();
    eventually(&format!("{via} finds the endpoint's addresses"), || async {
        let lookup = client.address_lookup().ok()?;
        let mut items = std::pin::pin!(lookup.resolve(id));
        while let Some(item) = items.next().await {
            let Ok(Ok(item)) = item else { continue };
            let mut found: Vec<SocketAddr> = item.endpoint_info().ip_addrs().copied().collect();
            found.sort();
            if found == expected {
                return Some(());
            }
        }
        None
    })
    .await;
    let connection = client.connect(id, ALPN).await.unwrap_or_else(|e| {
        panic!("{via}: connect to {id} with only its id: {e:#}");
    });
    assert_eq!(connection.remote_id(), id);
    let (mut send, mut recv) = connection.open_bi().await.expect("open stream");
    let message = format!("hello via {via}");
    send.write_all(message.as_bytes()).await.expect("write");
    send.finish().expect("finish");
    let echoed = recv.read_to_end(1024).await.expect("read echo");
    assert_eq!(echoed, message.as_bytes(), "{via}: echo");
    connection.close(0u8.into(), b"done");
}

/// Publishes an endpoint through node `publish` and connects to it twice: found through node
/// `dns`'s DNS server, and through node `relay`'s relay. Returns the published endpoint.
async fn publish_find_connect(
    cluster: &TestCluster,
    publish: u64,
    dns: u64,
    relay: u64,
) -> Endpoint {
    let publisher_view = cluster_view(&cluster.member(publish).server, &cluster.member(dns).server);
    let target = publishing_endpoint(&publisher_view).await;

    let dns_view = cluster_view(&cluster.member(relay).server, &cluster.member(dns).server);
    let by_dns = looking_up_endpoint(&dns_view, dns_view.dns_lookup()).await;
    find_and_connect(&by_dns, &target, &format!("DNS of node {dns}")).await;
    by_dns.close().await;

    let relay_view = cluster_view(&cluster.member(relay).server, &cluster.member(dns).server);
    let by_relay = looking_up_endpoint(&relay_view, relay_view.relay_lookup()).await;
    find_and_connect(&by_relay, &target, &format!("relay of node {relay}")).await;
    by_relay.close().await;
    target
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iroh_endpoints_find_each_other_through_the_cluster_and_after_the_leader_dies() {
    let mut cluster = TestCluster::start(3, "").await;
    let leader = cluster.leader().await;
    let followers = cluster.ids_except(leader);
    // Publish through a follower (forwarded to the leader), read through the other follower's
    // DNS and the leader's relay.
    let first = publish_find_connect(&cluster, followers[0], followers[1], leader).await;

    cluster.member_mut(leader).server.kill();
    // At once, while the survivors elect a leader: iroh's publisher retries a refused PUT.
    let second = publish_find_connect(&cluster, followers[1], followers[0], followers[0]).await;

    // The endpoint published before the failover is still found, through the other survivor.
    let view = cluster_view(
        &cluster.member(followers[1]).server,
        &cluster.member(followers[1]).server,
    );
    let late = looking_up_endpoint(&view, view.dns_lookup()).await;
    find_and_connect(
        &late,
        &first,
        &format!("DNS of node {} after failover", followers[1]),
    )
    .await;
    late.close().await;
    first.close().await;
    second.close().await;
}

/// docs/DEPLOY.md shows the example's lookup file; the copy there must be the file this test
/// compiles.
#[test]
fn the_deploy_docs_show_the_compiled_iroh_snippet() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let docs = std::fs::read_to_string(format!("{root}/docs/DEPLOY.md")).expect("docs/DEPLOY.md");
    let snippet = std::fs::read_to_string(format!(
        "{root}/crates/pkraft/examples/iroh-endpoint/pkraft_lookup.rs"
    ))
    .expect("pkraft_lookup.rs");
    assert!(
        docs.contains(&format!("```rust\n{snippet}```")),
        "docs/DEPLOY.md \"iroh endpoints\" must hold crates/pkraft/examples/iroh-endpoint/pkraft_lookup.rs verbatim"
    );
}
