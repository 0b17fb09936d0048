//! Goal: a leader behind a silent partition (its packets dropped, nothing refused) costs about
//! what a killed leader costs, not the whole publish deadline (docs/CONSISTENCY.md, "Silent
//! partitions").
//! Method: a 3-node cluster behind the peer proxy; the leader is black-holed (every peer request
//! to or from it is held unanswered until the heal). At once, a PUT through one follower and a
//! linearizable GET through the other: both must be answered (204, 200) well within
//! `raft.publish_timeout` (5 s). Before followers stopped waiting on a silent leader, the
//! forward waited out that deadline and the PUT got 503. After the heal every node serves the
//! new version.

use std::time::Instant;

use pkraft_testkit::pkarr::Timestamp;
use pkraft_testkit::proxy::CutKind;
use pkraft_testkit::{iroh_packet, keypair};

use crate::cluster::{TestCluster, eventually};

/// The shipped Raft timing (`[raft]` defaults): failover in about a second, and the deadline a
/// PUT waited out before, 5 s.
const DEFAULT_TIMING: &str = "heartbeat_interval = \"100ms\"\n\
                              election_timeout_min = \"300ms\"\n\
                              election_timeout_max = \"500ms\"\n\
                              publish_timeout = \"5s\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_isolated_leader_is_routed_around() {
    let cluster = TestCluster::start_with_timing(3, DEFAULT_TIMING, "", "").await;
    let leader = cluster.leader().await;
    let followers = cluster.ids_except(leader);
    let (writer, reader) = (
        &cluster.member(followers[0]).server,
        &cluster.member(followers[1]).server,
    );
    let key = keypair(9_301);
    let now = Timestamp::now().as_u64();
    let first = iroh_packet(&key, now, &["192.0.2.93:1"]);
    // Forwarded to the leader: the followers' peer connections to it are open and warm, as in a
    // cluster that has been serving.
    writer.publish(&key, &first).await;

    cluster.faults.isolate_as(leader, CutKind::Silent);
    let isolated = Instant::now();
    let second = iroh_packet(&key, now + 1, &["192.0.2.93:2"]);
    let put = async {
        let response = writer
            .put(&writer.relay_url(&key), second.to_relay_payload())
            .await;
        (response.status(), isolated.elapsed())
    };
    let read_url = format!("{}?consistency=linearizable", reader.relay_url(&key));
    let get = async {
        let response = reader.get(&read_url).await;
        let status = response.status();
        let body = response.bytes().await.expect("GET body");
        (status, body, isolated.elapsed())
    };
    let ((put_status, put_took), (get_status, get_body, get_took)) = tokio::join!(put, get);
    eprintln!(
        "leader {leader} black-holed: PUT through node {} {put_status} after {put_took:?}, \
         linearizable GET through node {} {get_status} after {get_took:?}",
        followers[0], followers[1]
    );
    assert_eq!(
        put_status,
        204,
        "a PUT through the majority waited on the silent leader ({put_took:?})\n{}",
        writer.log()
    );
    assert_eq!(
        get_status,
        200,
        "a linearizable GET through the majority waited on the silent leader ({get_took:?})\n{}",
        reader.log()
    );
    assert!(
        get_body == first.to_relay_payload() || get_body == second.to_relay_payload(),
        "the linearizable GET returned neither version"
    );
    assert!(
        cluster
            .faults
            .held_requests
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "the black hole held requests"
    );

    cluster.faults.heal();
    let payload = second.to_relay_payload();
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
