//! Goal: interop with a relay client nobody here wrote: the `pkarr` crate's own relay client
//! publishes to pkraft and resolves the same packet back.
//! Method: `pkarr::Client` with no DHT and pkraft as its only relay, over real HTTP; the resolve
//! uses a second client so that it cannot be answered from the publisher's cache. On a 3-node
//! cluster the publish goes through one node and the resolves through the others.

use pkraft_testkit::pkarr::{Client, Keypair, ResolvePolicy, SignedPacket, Timestamp};
use pkraft_testkit::{keypair, txt};

use crate::cluster::{TestCluster, eventually};
use crate::harness::{TestServer, install_crypto_provider};

fn relay_client(relay: &str) -> Client {
    install_crypto_provider();
    let mut builder = Client::builder();
    builder
        .no_default_network()
        .relays(&[relay])
        .expect("relay URL");
    builder.build().expect("pkarr client")
}

/// An iroh-style packet (`_iroh` TXT `addr=ADDR`) signed now.
fn iroh_style_packet(key: &Keypair, addr: &str) -> SignedPacket {
    SignedPacket::builder()
        .txt(
            "_iroh".try_into().expect("name"),
            txt(&format!("addr={addr}")),
            30,
        )
        .timestamp(Timestamp::now())
        .sign(key)
        .expect("sign")
}

#[tokio::test]
async fn pkarr_relay_client_publishes_and_resolves() {
    let server = TestServer::start();
    // Both base URL forms clients use: iroh's `/pkarr` and pkarr's bare host.
    for (seed, base) in [(80, server.url("/pkarr")), (81, server.url(""))] {
        let key = keypair(seed);
        let packet = iroh_style_packet(&key, "192.0.2.1:4433");

        let stored_on = relay_client(&base).publish(&packet).await.expect("publish");
        assert_eq!(stored_on, 1, "Pkarr-Dht-Stored-Nodes");

        let resolved = relay_client(&base)
            .resolve(&key.public_key(), ResolvePolicy::NetworkOnly)
            .await
            .expect("resolve");
        assert_eq!(
            resolved.as_bytes(),
            packet.as_bytes(),
            "same packet back via {base}"
        );
    }
}

#[tokio::test]
async fn pkarr_client_publishes_through_one_node_and_resolves_through_another() {
    let cluster = TestCluster::start(3, "").await;
    let key = keypair(82);
    let packet = iroh_style_packet(&key, "192.0.2.82:4433");
    let through = |id: u64| cluster.member(id).server.url("/pkarr");

    let stored_on = relay_client(&through(1))
        .publish(&packet)
        .await
        .expect("publish through node 1");
    // Pkarr-Dht-Stored-Nodes: the replicas holding it when it committed, a majority at least.
    assert!((2..=3).contains(&stored_on), "stored on {stored_on} nodes");

    for id in [2, 3] {
        // A follower serves GET from its replica: the packet arrives there within a heartbeat.
        let resolved = eventually(&format!("node {id} resolves the packet"), || async {
            relay_client(&through(id))
                .resolve(&key.public_key(), ResolvePolicy::NetworkOnly)
                .await
                .ok()
        })
        .await;
        assert_eq!(
            resolved.as_bytes(),
            packet.as_bytes(),
            "same packet via node {id}"
        );
    }
}

/// Goal: with `[dht]` off, every `ResolvePolicy` of pkarr's relay client gets the stored packet
/// (the cluster is the only network), and a key the cluster does not hold is not found.
#[tokio::test]
async fn every_resolve_policy_gets_the_stored_packet_without_the_dht() {
    let server = TestServer::start();
    let key = keypair(82);
    let packet = iroh_style_packet(&key, "192.0.2.2:4433");
    relay_client(&server.url("/pkarr"))
        .publish(&packet)
        .await
        .expect("publish");
    let unknown = keypair(83);
    for policy in [
        ResolvePolicy::CacheOnly,
        ResolvePolicy::CacheFirst,
        ResolvePolicy::NetworkOnly,
    ] {
        let resolved = relay_client(&server.url("/pkarr"))
            .resolve(&key.public_key(), policy)
            .await
            .unwrap_or_else(|e| panic!("{policy:?}: {e}"));
        assert_eq!(resolved.as_bytes(), packet.as_bytes(), "{policy:?}");
        assert!(
            relay_client(&server.url("/pkarr"))
                .resolve(&unknown.public_key(), policy)
                .await
                .is_err(),
            "{policy:?}: an unknown key"
        );
    }
}
