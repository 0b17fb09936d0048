//! Goal: a store at its cap (`raft.max_stored_packets`) takes no new keys, from any node and
//! however many arrive at once, while the keys it holds are republished. Method: a 3-node
//! cluster with a cap of 30; 60 new keys PUT at once, spread over the three nodes; then the
//! stored keys republished through every node, and the refusals' answers and metrics read.

use std::net::SocketAddr;
use std::time::Duration;

use pkarr::Keypair;
use pkraft_testkit::keypair;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    // packet gets it too), with the setting named and a Retry-After; and before the body is
    // read at all. Each of the three refusals is counted as an answered request.
    let refusals_counted = |metrics: &str| {
        sample(
            metrics,
            "pkraft_http_requests_total",
            r#"method="PUT",route="/pkarr/{key}",status="507""#,
        )
        .unwrap_or(0.0)
    };
    for (i, member) in cluster.members.iter().enumerate() {
        let counted_before = refusals_counted(&scrape(&member.server).await);
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
        let unsent = keypair(9_600 + i as u64);
        assert_eq!(
            status_with_body_withheld(member.server.http, &unsent).await,
            "HTTP/1.1 507",
            "node {}",
            member.id
        );
        assert_eq!(
            refusals_counted(&scrape(&member.server).await) - counted_before,
            3.0,
            "node {}",
            member.id
        );
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

/// Sends the head of a PUT of `key` that announces a body of 1,000 bytes and never sends it;
/// the status line of the answer, which must come without the body. A limit checked only once
/// the body is read would leave the request waiting for it until `http.request_timeout`.
async fn status_with_body_withheld(server: SocketAddr, key: &Keypair) -> String {
    let mut stream = TcpStream::connect(server).await.expect("connect");
    let head = format!(
        "PUT /pkarr/{} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
        key.public_key()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = vec![0_u8; 1_024];
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut answer))
        .await
        .expect("answered before the body was sent")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..read]);
    answer.get(..12).unwrap_or(&answer).to_string()
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
