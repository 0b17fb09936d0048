//! The Mainline DHT bridge (`[dht]`), on a local `mainline::Testnet` only: no test contacts the
//! public bootstrap nodes. Goals: what the cluster stores reaches the DHT (through the leader,
//! also after a leader change), what only the DHT has is served by DNS and GET on every node,
//! the republish sweep keeps its budget, and a DHT that is down or flooded never makes a query
//! wait past the deadline.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::RecordType;
use mainline::Testnet;
use pkraft_testkit::pkarr::{Client, Keypair, ResolvePolicy, SignedPacket};
use pkraft_testkit::{iroh_packet, keypair};

use crate::cluster::{TestCluster, eventually, get_body, packet, put};
use crate::dns_client::{Transport, iroh_txt, key_name, name, raw_query, txt_strings};
use crate::harness::{TestServer, http_client};
use crate::metrics::{scrape, value};

/// A local DHT of this many nodes on 127.0.0.1.
const TESTNET_NODES: usize = 5;

fn testnet() -> Testnet {
    Testnet::builder(TESTNET_NODES)
        .build()
        .expect("local DHT testnet")
}

/// The `[dht]` section pointing at `testnet`, with `extra` lines.
fn dht_section(testnet: &Testnet, extra: &str) -> String {
    let bootstrap: Vec<String> = testnet
        .bootstrap
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect();
    format!(
        "[dht]\nenabled = true\nlisten = \"127.0.0.1:0\"\nbootstrap = [{}]\n\
         publish_delay = \"100ms\"\nprogress_interval = \"200ms\"\n{extra}",
        bootstrap.join(", ")
    )
}

/// A plain pkarr DHT client on `testnet` (no relays).
fn pkarr_client(testnet: &Testnet) -> Client {
    Client::builder()
        .no_default_network()
        .bootstrap(&testnet.bootstrap)
        .build()
        .expect("pkarr client")
}

/// The packet the DHT holds for `key`, if any (one lookup).
async fn on_dht(client: &Client, key: &Keypair) -> Option<SignedPacket> {
    client
        .resolve(&key.public_key(), ResolvePolicy::NetworkOnly)
        .await
        .ok()
}

/// The TXT strings at `_iroh.<key>` over DNS-over-HTTPS (`GET /dns-query`, RFC 8484).
async fn doh_txt(server: &TestServer, key: &Keypair) -> Vec<String> {
    let mut query = Message::query();
    query.add_query(Query::query(name(&key_name("_iroh", key)), RecordType::TXT));
    let wire = query.to_vec().expect("encode");
    let response = http_client()
        .get(server.url(&format!("/dns-query?dns={}", URL_SAFE_NO_PAD.encode(&wire))))
        .send()
        .await
        .expect("DoH GET");
    assert_eq!(response.status(), 200);
    let answer = Message::from_vec(&response.bytes().await.expect("body")).expect("DNS message");
    txt_strings(&answer.answers)
}

/// Sum of `name{labels}` over the members' scrapes.
async fn total(servers: &[&TestServer], name: &str, labels: &str) -> f64 {
    let mut sum = 0.0;
    for server in servers {
        let scrape = scrape(server).await;
        sum += value(&scrape, name, labels);
    }
    sum
}

/// A PUT through a follower reaches the DHT through the leader; a packet put only to the DHT is
/// served by GET and DNS on every node without entering the Raft log; after the leader stops,
/// the new leader publishes from the committed progress instead of putting everything again.
#[tokio::test]
async fn the_cluster_publishes_to_the_dht_and_serves_what_only_the_dht_has() {
    let testnet = testnet();
    // A short negative cache: a lookup that misses its deadline on a loaded machine is retried.
    let section = dht_section(&testnet, "negative_cache_ttl = \"1s\"\n");
    let mut cluster = TestCluster::start_with_sections(3, "", &section).await;
    let client = pkarr_client(&testnet);
    let leader = cluster.leader().await;
    let follower = cluster.follower().await;

    let stored = 10u64;
    for seed in 0..stored {
        let (key, packet) = packet(700 + seed, 1_000);
        let response = put(&cluster.member(follower).server, &key, &packet).await;
        assert_eq!(response.status(), 204);
    }
    let (key, first) = packet(700, 1_000);
    let found = eventually("the PUT on the DHT", || async {
        on_dht(&client, &key).await
    })
    .await;
    assert_eq!(found.as_bytes(), first.as_bytes());
    // Every replica's outbox empties once the leader's progress covering all ten is committed.
    for member in &cluster.members {
        eventually("the publish progress committed", || async {
            let scrape = scrape(&member.server).await;
            (value(&scrape, "pkraft_dht_publish_backlog", "") == 0.0).then_some(())
        })
        .await;
    }

    // Put only to the DHT: every node answers it over GET and DNS.
    let owner = keypair(750);
    let direct = iroh_packet(&owner, 2_000, &["192.0.2.7:7"]);
    client.publish(&direct).await.expect("put to the testnet");
    for member in &cluster.members {
        let body = eventually("GET of the DHT-only key", || async {
            let (status, body) = get_body(&member.server, &owner, "").await;
            (status == 200).then_some(body)
        })
        .await;
        assert_eq!(body, direct.to_relay_payload(), "GET on node {}", member.id);
        let txt = eventually("DNS of the DHT-only key", || async {
            let txt = iroh_txt(member.server.dns, &owner).await;
            (!txt.is_empty()).then_some(txt)
        })
        .await;
        assert_eq!(
            txt,
            vec!["addr=192.0.2.7:7".to_string()],
            "DNS on node {}",
            member.id
        );
        assert_eq!(
            doh_txt(&member.server, &owner).await,
            vec!["addr=192.0.2.7:7".to_string()],
            "DoH on node {}",
            member.id
        );
    }
    // Served from memory: the replicas hold only the packets PUT through the relay.
    for member in &cluster.members {
        let scrape = scrape(&member.server).await;
        assert_eq!(value(&scrape, "pkraft_store_records", ""), stored as f64);
    }

    // A leader change moves the publishing.
    cluster.member_mut(leader).server.terminate();
    let survivors = cluster.ids_except(leader);
    let new_leader = cluster.leader_among(&survivors).await;
    let (second_key, second) = packet(760, 3_000);
    let response = put(&cluster.member(new_leader).server, &second_key, &second).await;
    assert_eq!(response.status(), 204);
    let found = eventually("the new leader's PUT on the DHT", || async {
        on_dht(&client, &second_key).await
    })
    .await;
    assert_eq!(found.as_bytes(), second.as_bytes());

    // The new leader put the new key, not the ten its predecessor had confirmed (a leader
    // that put everything again would count 11).
    let servers: Vec<&TestServer> = survivors
        .iter()
        .map(|id| &cluster.member(*id).server)
        .collect();
    let publishes = total(
        &servers,
        "pkraft_dht_puts_total",
        "kind=\"publish\",result=\"stored\"",
    )
    .await;
    assert!(
        (1.0..=2.0).contains(&publishes),
        "the survivors put {publishes} times"
    );
}

/// The republish sweep puts every stored packet again after the (shortened) interval and stays
/// inside `dht.put_rate`.
#[tokio::test]
async fn republishing_repeats_every_key_within_the_put_budget() {
    let testnet = testnet();
    // 6 keys every 2 s would be 3 puts/s: the budget of 2 puts/s is what binds.
    let section = dht_section(
        &testnet,
        "publish = false\nrepublish_interval = \"2s\"\nput_rate = 2\n",
    );
    let server = TestServer::start_with_config(&format!("[cluster]\nbootstrap = true\n{section}"));
    let started = Instant::now();
    let keys = 6u64;
    for seed in 0..keys {
        let (key, packet) = packet(710 + seed, 1_000);
        assert_eq!(put(&server, &key, &packet).await.status(), 204);
    }
    let client = pkarr_client(&testnet);
    let (probe, probe_packet) = packet(710, 1_000);
    let found = eventually("a republished packet on the DHT", || async {
        on_dht(&client, &probe).await
    })
    .await;
    assert_eq!(found.as_bytes(), probe_packet.as_bytes());
    // Every key twice (two rounds).
    let republished = eventually("two republish rounds", || async {
        let scrape = scrape(&server).await;
        let puts = value(
            &scrape,
            "pkraft_dht_puts_total",
            "kind=\"republish\",result=\"stored\"",
        );
        (puts >= 2.0 * keys as f64).then_some(puts)
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let scrape = scrape(&server).await;
    assert!(value(&scrape, "pkraft_dht_republish_rounds_total", "") >= 1.0);
    // Nothing else was put: publishing is off.
    assert_eq!(
        value(
            &scrape,
            "pkraft_dht_puts_total",
            "kind=\"publish\",result=\"stored\""
        ),
        0.0
    );
    // 2 puts/s plus the limiter's burst of 2 (and one put that may be under way).
    assert!(
        republished <= 2.0 * elapsed + 2.0 + 1.0,
        "{republished} puts in {elapsed:.1} s is over the budget"
    );
}

/// The owner published a newer packet straight to the DHT: the republish sweep does not
/// overwrite it (DHT nodes refuse the older item), and the leader imports the newer packet into
/// the cluster, so every node serves the owner's latest.
#[tokio::test]
async fn a_newer_packet_on_the_dht_is_imported_not_overwritten() {
    let testnet = testnet();
    let section = dht_section(&testnet, "republish_interval = \"2s\"\n");
    let server = TestServer::start_with_config(&format!("[cluster]\nbootstrap = true\n{section}"));
    let (key, older) = packet(770, 1_000);
    assert_eq!(put(&server, &key, &older).await.status(), 204);
    let client = pkarr_client(&testnet);
    eventually("the stored packet on the DHT", || async {
        on_dht(&client, &key).await
    })
    .await;
    let newer = iroh_packet(&key, 5_000, &["192.0.2.77:77"]);
    client.publish(&newer).await.expect("put to the testnet");

    let body = eventually("the newer packet imported", || async {
        let (status, body) = get_body(&server, &key, "").await;
        (status == 200 && body == newer.to_relay_payload()).then_some(body)
    })
    .await;
    assert_eq!(body, newer.to_relay_payload());
    let scrape = scrape(&server).await;
    assert_eq!(value(&scrape, "pkraft_dht_imported_total", ""), 1.0);
    // The DHT still holds the newer packet.
    let on = on_dht(&client, &key).await.expect("on the DHT");
    assert_eq!(on.as_bytes(), newer.as_bytes());
}

/// With the DHT gone, misses still answer within the deadline (NXDOMAIN, 404), PUTs and
/// stored keys work, the node stays healthy and ready, and a flood of unknown keys never has
/// more lookups in flight than the bound.
#[tokio::test]
async fn a_dht_that_is_down_or_flooded_never_holds_a_query_past_the_deadline() {
    let testnet = testnet();
    let section = dht_section(
        &testnet,
        "resolve_timeout = \"1s\"\nresolve_in_flight_max = 4\nrequest_timeout = \"500ms\"\n",
    );
    let server = TestServer::start_with_config(&format!("[cluster]\nbootstrap = true\n{section}"));
    // Let the node's DHT client join the testnet, then stop every DHT node.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(testnet);

    let deadline = Duration::from_secs(1);
    // Scheduling on a loaded 2-core machine; a DHT wait past the deadline would show as more.
    let slack = Duration::from_millis(1500);
    let unknown = keypair(720);
    let asked = Instant::now();
    let response = server.get(&server.relay_url(&unknown)).await;
    assert_eq!(response.status(), 404);
    assert!(
        asked.elapsed() < deadline + slack,
        "GET took {:?}",
        asked.elapsed()
    );
    let other = keypair(721);
    let asked = Instant::now();
    let answer = raw_query(
        server.dns,
        Transport::Udp,
        &key_name("_iroh", &other),
        RecordType::TXT,
        None,
    )
    .await;
    assert_eq!(answer.response_code, ResponseCode::NXDomain);
    assert!(
        asked.elapsed() < deadline + slack,
        "DNS took {:?}",
        asked.elapsed()
    );

    // Writes and stored keys do not wait for the DHT.
    let (key, stored) = packet(722, 1_000);
    let asked = Instant::now();
    assert_eq!(put(&server, &key, &stored).await.status(), 204);
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "PUT took {:?}",
        asked.elapsed()
    );
    assert_eq!(iroh_txt(server.dns, &key).await.len(), 1);
    for path in ["/healthz", "/readyz"] {
        let status = http_client()
            .get(server.url(path))
            .send()
            .await
            .expect("health")
            .status();
        assert_eq!(status, 200, "{path}");
    }

    // A flood of 40 unknown keys at once: about 4 lookups run, the rest are answered at once.
    let before = scrape(&server).await;
    let asked = Instant::now();
    let mut flood = tokio::task::JoinSet::new();
    for seed in 0..40u64 {
        let request = http_client().get(server.relay_url(&keypair(800 + seed)));
        flood.spawn(async move { request.send().await.expect("GET").status() });
    }
    let statuses = flood.join_all().await;
    assert!(statuses.iter().all(|s| *s == 404), "{statuses:?}");
    assert!(
        asked.elapsed() < deadline + slack,
        "flood took {:?}",
        asked.elapsed()
    );
    let after = scrape(&server).await;
    let count = |scrape: &str, result: &str| {
        value(
            scrape,
            "pkraft_dht_resolves_total",
            &format!("result=\"{result}\""),
        )
    };
    let looked_up = count(&after, "timeout") + count(&after, "not_found")
        - count(&before, "timeout")
        - count(&before, "not_found");
    let shed = count(&after, "shed") - count(&before, "shed");
    // Lookups that end early free their slot for a later GET of the flood, so a few more than 4
    // may run in all; without the bound none would be shed.
    assert!(shed >= 30.0, "{shed} shed, {looked_up} looked up");
    assert_eq!(looked_up + shed, 40.0);
}

/// A pkarr 8.1 client whose only network is `server`'s relay (no DHT of its own).
fn relay_only_client(server: &TestServer) -> Client {
    crate::harness::install_crypto_provider();
    let mut builder = Client::builder();
    builder
        .no_default_network()
        .relays(&[server.url("/pkarr").as_str()])
        .expect("relay URL");
    builder.build().expect("pkarr client")
}

/// `GET /pkarr/<key>?policy=<policy>`: the status, the body and the `Memento-Datetime` header.
async fn get_with_policy(
    server: &TestServer,
    key: &Keypair,
    policy: &str,
) -> (u16, bytes::Bytes, Option<String>) {
    let response = server
        .get(&format!("{}?policy={policy}", server.relay_url(key)))
        .await;
    let status = response.status().as_u16();
    let memento = response
        .headers()
        .get("memento-datetime")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, response.bytes().await.unwrap_or_default(), memento)
}

/// A key whose one item on the DHT is signed by it but is no packet (BEP 44 is satisfied, pkarr
/// is not): a GET that asks the DHT gets 404 with the item's seq in
/// `Pkarr-Invalid-Signed-Packet-Seq`, as pkarr's relay spec says, and pkarr's own client reports
/// it as such.
#[tokio::test]
async fn a_key_with_only_an_invalid_item_on_the_dht_gets_its_seq() {
    let testnet = testnet();
    let section = dht_section(&testnet, "publish = false\n");
    let server = TestServer::start_with_config(&format!("[cluster]\nbootstrap = true\n{section}"));
    let keys = keypair(793);
    let seq: i64 = 3_000;
    let value = b"not a DNS packet";
    let payload = pkraft_testkit::sign_raw(&keys, seq as u64, value);
    let signature: [u8; 64] = payload[..64].try_into().expect("a signature");
    let item = mainline::MutableItem::new_signed_unchecked(
        keys.public_key().to_bytes(),
        signature,
        value,
        seq,
        None,
    );
    let putter = mainline::Dht::builder()
        .bootstrap(&testnet.bootstrap)
        .bind_address(std::net::Ipv4Addr::LOCALHOST)
        .build()
        .expect("a DHT node")
        .as_async();
    assert!(putter.bootstrapped().await);
    putter
        .put_mutable(item, None)
        .await
        .expect("put to the testnet");

    let response = server
        .get(&format!("{}?policy=CacheOnly", server.relay_url(&keys)))
        .await;
    assert_eq!(response.status(), 404);
    assert!(
        response
            .headers()
            .get("pkarr-invalid-signed-packet-seq")
            .is_none(),
        "CacheOnly never asks the DHT"
    );
    for policy in ["NetworkOnly", "CacheFirst"] {
        let response = server
            .get(&format!("{}?policy={policy}", server.relay_url(&keys)))
            .await;
        assert_eq!(response.status(), 404, "{policy}");
        let header = response
            .headers()
            .get("pkarr-invalid-signed-packet-seq")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        assert_eq!(header.as_deref(), Some("3000"), "{policy}");
    }
    let error = relay_only_client(&server)
        .resolve(&keys.public_key(), ResolvePolicy::NetworkOnly)
        .await
        .expect_err("no valid packet");
    assert!(
        matches!(
            error,
            pkarr::errors::ResolveError::InvalidSignedPacket { seq: 3_000 }
        ),
        "{error:?}"
    );
}

/// Goal: the relay answers each `policy` of pkarr 8.1's relay client as docs/API.md says, with
/// `[dht]` on: `CacheOnly` never asks the DHT, `CacheFirst` asks it only for a key the cluster
/// does not hold, `NetworkOnly` asks it even for a stored key and answers the newer packet;
/// a packet from the DHT carries `Memento-Datetime`; an unknown policy is 400.
/// Method: a node whose bridge does not put (`publish = false`, so the DHT keeps what the test
/// puts there); one key only on the DHT, one stored with a newer packet on the DHT; raw GETs and
/// pkarr's own client with the node as its only relay.
#[tokio::test]
async fn each_resolve_policy_gets_its_answer_with_the_dht_on() {
    let testnet = testnet();
    let section = dht_section(&testnet, "publish = false\n");
    let server = TestServer::start_with_config(&format!("[cluster]\nbootstrap = true\n{section}"));
    let dht = pkarr_client(&testnet);

    // Only on the DHT.
    let only_dht = keypair(790);
    let on_dht_only = iroh_packet(&only_dht, 2_000, &["192.0.2.90:90"]);
    dht.publish(&on_dht_only).await.expect("put to the testnet");
    let (status, _, _) = get_with_policy(&server, &only_dht, "CacheOnly").await;
    assert_eq!(status, 404, "CacheOnly does not ask the DHT");
    let (status, body, memento) = get_with_policy(&server, &only_dht, "CacheFirst").await;
    assert_eq!(status, 200);
    assert_eq!(body, on_dht_only.to_relay_payload());
    assert!(
        memento.is_some(),
        "a packet from the DHT carries Memento-Datetime"
    );
    // The same through pkarr's client.
    let client = relay_only_client(&server);
    let resolved = client
        .resolve(&only_dht.public_key(), ResolvePolicy::CacheFirst)
        .await
        .expect("CacheFirst through the relay");
    assert_eq!(resolved.as_bytes(), on_dht_only.as_bytes());
    assert!(
        relay_only_client(&server)
            .resolve(&only_dht.public_key(), ResolvePolicy::CacheOnly)
            .await
            .is_err(),
        "CacheOnly through the relay finds nothing"
    );

    // Stored, with a newer packet on the DHT.
    let (key, older) = packet(791, 1_000);
    assert_eq!(put(&server, &key, &older).await.status(), 204);
    let newer = iroh_packet(&key, 5_000, &["192.0.2.91:91"]);
    dht.publish(&newer).await.expect("put to the testnet");
    for policy in ["CacheOnly", "CacheFirst"] {
        let (status, body, memento) = get_with_policy(&server, &key, policy).await;
        assert_eq!(
            (status, &body),
            (200, &older.to_relay_payload()),
            "{policy}"
        );
        assert_eq!(memento, None, "{policy}: from the replica");
    }
    let (status, body, memento) = get_with_policy(&server, &key, "NetworkOnly").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        newer.to_relay_payload(),
        "NetworkOnly: the DHT's newer packet"
    );
    assert!(memento.is_some());
    let resolved = relay_only_client(&server)
        .resolve(&key.public_key(), ResolvePolicy::NetworkOnly)
        .await
        .expect("NetworkOnly through the relay");
    assert_eq!(resolved.as_bytes(), newer.as_bytes());
    // What the replica holds is unchanged by a GET.
    let (status, body, _) = get_with_policy(&server, &key, "CacheOnly").await;
    assert_eq!((status, body), (200, older.to_relay_payload()));

    // A stored key the DHT has no newer packet for: NetworkOnly answers the stored one.
    let (kept, stored) = packet(792, 1_000);
    assert_eq!(put(&server, &kept, &stored).await.status(), 204);
    let (status, body, _) = get_with_policy(&server, &kept, "NetworkOnly").await;
    assert_eq!((status, body), (200, stored.to_relay_payload()));

    let (status, _, _) = get_with_policy(&server, &key, "cacheonly").await;
    assert_eq!(status, 400, "policy names are pkarr's, exactly");
}
