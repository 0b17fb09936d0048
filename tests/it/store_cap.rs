//! Goal: a store at its cap (`raft.max_stored_packets`) takes no new keys, from any node and
//! however many arrive at once, while the keys it holds are republished. Method: a 3-node
//! cluster with a cap of 30; 60 new keys PUT at once, spread over the three nodes; then the
//! stored keys republished through every node, and the refusals' answers and metrics read.

use std::time::Duration;

use crate::cluster::{TestCluster, eventually, packet, put};
use crate::harness::http_client;
use crate::metrics::{sample, scrape, value};

const CAP: u64 = 30;
/// Tries of a PUT answered 503, 200 ms apart.
const RETRIES: usize = 50;

#[tokio::test]
async fn at_its_cap_a_cluster_stores_no_new_keys_and_takes_republishes() {
    let cluster = TestCluster::start(3, &format!("max_stored_packets = {CAP}\n")).await;
    cluster.leader().await;
    // Signed now: a packet of 1970 would expire at the first expiry run, a minute in.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
        .expect("the clock is after 1970");

    // Twice the cap at once, through every node: only the leader's count, which covers the
    // batches under way, can keep concurrent publishes from passing the cap together.
    let mut puts = tokio::task::JoinSet::new();
    for seed in 0..2 * CAP {
        let (key, packet) = packet(9_000 + seed, now);
        let url = cluster.members[(seed % 3) as usize].server.relay_url(&key);
        puts.spawn(async move { (seed, put_retrying(&url, packet.to_relay_payload()).await) });
    }
    let mut stored = Vec::new();
    let mut refused = 0;
    while let Some(done) = puts.join_next().await {
        let (seed, (status, body)) = done.expect("PUT task");
        match status {
            204 => stored.push(seed),
            507 => refused += 1,
            other => panic!("new key {seed} answered {other}: {body}"),
        }
    }
    assert_eq!(
        stored.len() as u64,
        CAP,
        "stored {} of {} new keys with a cap of {CAP} ({refused} refused)",
        stored.len(),
        2 * CAP
    );

    for member in &cluster.members {
        let metrics = eventually("every replica holds the cap", || async {
            let metrics = scrape(&member.server).await;
            (sample(&metrics, "pkraft_store_records", "") == Some(CAP as f64)).then_some(metrics)
        })
        .await;
        assert_eq!(value(&metrics, "pkraft_store_max_packets", ""), CAP as f64);
    }

    // One more new key, through each node: 507 before anything is verified (a body that is no
    // packet gets it too), with the setting named and a Retry-After.
    for (i, member) in cluster.members.iter().enumerate() {
        let (key, packet) = packet(9_500 + i as u64, now);
        let response = put(&member.server, &key, &packet).await;
        assert_eq!(response.status(), 507, "node {}", member.id);
        assert_eq!(response.headers()["retry-after"], "60");
        let reason = response.text().await.expect("body");
        assert!(reason.contains("raft.max_stored_packets"), "{reason}");
        assert!(
            reason.contains("republishes of stored keys go on"),
            "{reason}"
        );
        let garbage = http_client()
            .put(member.server.relay_url(&key))
            .body("not a signed packet")
            .send()
            .await
            .expect("PUT");
        assert_eq!(garbage.status(), 507, "node {}", member.id);
    }

    // Every stored key republished, each through another node: all taken.
    for (i, seed) in stored.iter().enumerate() {
        let (key, newer) = packet(9_000 + seed, now + 1_000);
        let member = &cluster.members[i % 3];
        let (status, body) =
            put_retrying(&member.server.relay_url(&key), newer.to_relay_payload()).await;
        assert_eq!(
            status, 204,
            "republish of a stored key through node {}: {body}",
            member.id
        );
    }
    let leader = cluster.leader().await;
    let metrics = scrape(&cluster.member(leader).server).await;
    assert!(
        sample(
            &metrics,
            "pkraft_raft_publish_refused_total",
            "reason=\"store_full\""
        )
        .is_some_and(|refused| refused >= 1.0),
        "{metrics}"
    );
    // Still the cap, after the republishes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for member in &cluster.members {
        let metrics = scrape(&member.server).await;
        assert_eq!(value(&metrics, "pkraft_store_records", ""), CAP as f64);
    }
}

/// PUTs `body` to `url`; a 503 (no leader in time, a commit slower than `publish_timeout` on a
/// loaded machine) is retried as a client would (re-publishing a packet is safe). The last
/// status and body.
async fn put_retrying(url: &str, body: bytes::Bytes) -> (u16, String) {
    let mut answer = (0, String::new());
    for _ in 0..RETRIES {
        let response = http_client()
            .put(url)
            .body(body.clone())
            .send()
            .await
            .expect("PUT answered");
        answer = (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        );
        if answer.0 != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    answer
}
