//! Goal: a leader behind a silent partition (its packets dropped, nothing refused) costs about
//! what a killed leader costs, not the whole publish deadline (docs/CONSISTENCY.md, "Silent
//! partitions").
//! Method: a 3-node cluster behind the peer proxy; the leader is black-holed (every peer request
//! to or from it is held unanswered until the heal). At once, a PUT through one follower and a
//! linearizable GET through the other: both must be answered (204, 200) well within
//! `raft.publish_timeout` (5 s). Before followers stopped waiting on a silent leader, the
//! forward waited out that deadline and the PUT got 503. After the heal every node serves the
//! new version.
//!
//! Goal: a follower cut off for a while does not depose a healthy leader when it is back
//! (PreVote, docs/CONSISTENCY.md). Method: a follower is black-holed for several election
//! timeouts while the others take a write, then healed: the leader and its term are unchanged,
//! the follower's pre-vote rounds were lost (it never stood), and it catches up. With
//! `raft.pre_vote = false` (openraft's own elections) the same run deposes the leader.
//!
//! Goal: the same with a real network fault. Method: three nodes, each in a network namespace
//! of its own (`pkraft_testkit::netns`), the test's client in another; the leader is isolated
//! by iptables rules that drop its packets to and from the other nodes (TCP retransmits into
//! nothing, connects time out). A PUT through a follower must be answered 204, and after the
//! heal every node serves it. Needs root, `ip` and `iptables`: skipped with a message without
//! them, unless `PKRAFT_TEST_REQUIRE_NETNS` is set (CI sets it).

use std::process::Command;
use std::time::{Duration, Instant};

use pkraft_testkit::netns::{LabCluster, NetnsLab};
use pkraft_testkit::pkarr::Timestamp;
use pkraft_testkit::proxy::CutKind;
use pkraft_testkit::{iroh_packet, keypair};

use crate::cluster::{TEST_RAFT, TestCluster, eventually, wait_served};
use crate::harness::http_client;
use crate::metrics::{scrape, value};

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
    for member in &cluster.members {
        wait_served(&member.server, &key, &second).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_back_from_isolation_does_not_depose_the_leader() {
    let cluster = TestCluster::start(3, "").await;
    let leader = cluster.leader().await;
    let follower = cluster.ids_except(leader)[0];
    let leader_server = &cluster.member(leader).server;
    let term = |scrape: &str| value(scrape, "pkraft_raft_term", "");
    let before = scrape(leader_server).await;

    cluster.faults.isolate_as(follower, CutKind::Silent);
    // Several of `TEST_RAFT`'s election timeouts (at most 1.6 s plus a 1.6 s lease): without
    // PreVote the follower stands again and again, each time in a higher term.
    assert!(TEST_RAFT.contains("election_timeout_max = \"1600ms\""));
    let key = keypair(9_302);
    let packet = iroh_packet(&key, Timestamp::now().as_u64(), &["192.0.2.93:3"]);
    leader_server.publish(&key, &packet).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    cluster.faults.heal();

    let back = &cluster.member(follower).server;
    let url = back.relay_url(&key);
    let payload = packet.to_relay_payload();
    eventually("the healed follower catches up", || async {
        let response = back.get(&url).await;
        (response.status() == 200 && response.bytes().await.ok()? == payload).then_some(())
    })
    .await;
    // Long enough for a higher term to reach the leader in an answer to its heartbeats.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = scrape(leader_server).await;
    assert_eq!(cluster.leader().await, leader, "the leader changed");
    assert_eq!(term(&after), term(&before), "the term changed");
    let changes = "pkraft_raft_leader_changes_total";
    assert_eq!(
        value(&after, changes, ""),
        value(&before, changes, ""),
        "the leader saw leadership change"
    );
    let rounds = scrape(back).await;
    let lost = value(
        &rounds,
        "pkraft_raft_pre_vote_rounds_total",
        "outcome=\"lost\"",
    );
    assert!(
        lost >= 1.0,
        "the isolated follower asked and was refused: {lost}"
    );
    assert_eq!(
        term(&rounds),
        term(&before),
        "the isolated follower never raised its term"
    );
}

const NETNS_SECRET: &str = "netns-cluster-secret-0123456789";

#[test]
fn a_leader_isolated_by_dropped_packets_is_routed_around() {
    let lab = match NetnsLab::create(3) {
        Ok(lab) => lab,
        Err(reason) if std::env::var_os("PKRAFT_TEST_REQUIRE_NETNS").is_none() => {
            eprintln!("skipped: no network namespaces here ({reason})");
            return;
        }
        Err(reason) => panic!("PKRAFT_TEST_REQUIRE_NETNS is set, but: {reason}"),
    };
    // The client's sockets must be opened in the client namespace: a thread of its own enters
    // it and runs the test on a runtime of its own.
    std::thread::scope(|scope| {
        let test = scope.spawn(|| {
            lab.enter_client().expect("enter the client namespace");
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(isolate_the_leader_by_dropping_packets(&lab));
        });
        if let Err(panic) = test.join() {
            std::panic::resume_unwind(panic);
        }
    });
}

async fn isolate_the_leader_by_dropping_packets(lab: &NetnsLab) {
    let dir = tempfile::tempdir().expect("cluster dir");
    let cluster = LabCluster::start(
        lab,
        std::path::Path::new(env!("CARGO_BIN_EXE_pkraft")),
        dir.path(),
        NETNS_SECRET,
        |config| {
            config.raft = DEFAULT_TIMING.to_string();
            config.http_request_timeout = Some("10s".to_string());
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let client = http_client();
    eventually("three voters", || async {
        let status = cluster.status(&client, 1).await?;
        (pkraft_testkit::cluster::voters_applied_membership(&status).ok()? == 3).then_some(())
    })
    .await;
    let leader = eventually("a leader", || cluster.leader(&client)).await;
    let followers: Vec<u8> = cluster.ids().filter(|id| *id != leader).collect();
    let key = keypair(9_303);
    let now = Timestamp::now().as_u64();
    let relay = |node: u8| cluster.url(node, &format!("/pkarr/{}", key.public_key().to_z32()));
    let put = |node: u8, version: u64| {
        let body = iroh_packet(&key, now + version, &["192.0.2.93:4"]).to_relay_payload();
        let url = relay(node);
        async move { http_client().put(url).body(body).send().await }
    };
    let warm = put(followers[0], 0).await.expect("PUT");
    assert_eq!(warm.status(), 204, "{}", cluster.logs());

    lab.isolate(leader).expect("iptables");
    let isolated = Instant::now();
    let answer = put(followers[0], 1).await.expect("PUT");
    let took = isolated.elapsed();
    eprintln!(
        "leader {leader} isolated by dropped packets: PUT through node {} {} after {took:?}",
        followers[0],
        answer.status()
    );
    assert_eq!(
        answer.status(),
        204,
        "a PUT through the majority waited on the unreachable leader ({took:?})\n{}",
        cluster.logs()
    );

    lab.heal().expect("iptables");
    let expected = iroh_packet(&key, now + 1, &["192.0.2.93:4"]).to_relay_payload();
    for node in cluster.ids() {
        eventually(&format!("node {node} serves the version"), || async {
            let response = http_client().get(relay(node)).send().await.ok()?;
            (response.status() == 200 && response.bytes().await.ok()? == expected).then_some(())
        })
        .await;
    }
    // Not a leftover of the lab: `iptables` ran in the node namespaces only.
    let host_rules = Command::new("iptables").arg("-S").output();
    if let Ok(output) = host_rules {
        let rules = String::from_utf8_lossy(&output.stdout);
        assert!(
            !rules.contains("10.77.0."),
            "the lab wrote rules into the host's namespace:\n{rules}"
        );
    }
}
