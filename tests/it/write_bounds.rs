//! Goal: a leader cut off from its quorum stops taking writes within a bound instead of holding
//! them until the partition heals, and nothing acknowledged is lost once it heals
//! (docs/CONSISTENCY.md, "Writes").
//! Method: a 3-node cluster behind the peer proxy; the leader is isolated. PUTs to it must soon
//! be answered 503 at once (it has not heard from a quorum for longer than the leader lease) and
//! counted under `reason="no_quorum"`; the two others elect a leader and acknowledge a newer
//! version; after healing, every node serves that version.

use std::time::{Duration, Instant};

use pkraft_testkit::pkarr::Timestamp;
use pkraft_testkit::{iroh_packet, keypair};

use crate::cluster::{TestCluster, eventually};
use crate::harness::http_client;

/// How fast the isolated leader must answer once it knows it is cut off: no wait for a commit
/// (`raft.publish_timeout` is 5 s).
const CUT_OFF_ANSWER_MAX: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_quorum_refuses_writes_at_once_and_loses_nothing() {
    let cluster = TestCluster::start(3, "").await;
    let leader = cluster.leader().await;
    let others = cluster.ids_except(leader);
    let key = keypair(9_101);
    let now = Timestamp::now().as_u64();
    let old_leader = &cluster.member(leader).server;
    old_leader
        .publish(&key, &iroh_packet(&key, now, &["192.0.2.91:1"]))
        .await;

    cluster.faults.isolate(leader);
    let url = old_leader.relay_url(&key);
    let mut version = 0;
    let refused_in = eventually("the isolated leader refuses a PUT at once", || {
        version += 1;
        let body = iroh_packet(&key, now + version, &["192.0.2.91:2"]).to_relay_payload();
        let url = url.clone();
        async move {
            let started = Instant::now();
            let response = http_client().put(url).body(body).send().await.ok()?;
            let took = started.elapsed();
            assert_ne!(
                response.status(),
                204,
                "the cut-off leader acknowledged a write"
            );
            (response.status() == 503 && took < CUT_OFF_ANSWER_MAX).then_some(took)
        }
    })
    .await;
    eprintln!("the isolated leader answered 503 in {refused_in:?}");
    let metrics = http_client()
        .get(format!("http://{}/metrics", old_leader.admin))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("pkraft_raft_publish_refused_total{reason=\"no_quorum\"}")),
        "refusals counted: {metrics}"
    );

    // The majority side elects a leader and takes a newer version.
    let acknowledged = iroh_packet(&key, now + 1_000, &["192.0.2.91:3"]);
    let majority = &cluster.member(others[0]).server;
    majority.publish(&key, &acknowledged).await;

    cluster.faults.heal();
    let payload = acknowledged.to_relay_payload();
    for member in &cluster.members {
        let server = &member.server;
        let url = server.relay_url(&key);
        eventually(
            &format!("node {} serves the acknowledged version", member.id),
            || async {
                let response = server.get(&url).await;
                (response.status() == 200 && response.bytes().await.ok()? == payload).then_some(())
            },
        )
        .await;
    }
}
