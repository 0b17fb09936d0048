//! Regression tests for the bugs the chaos harness (`make chaos`, crates/pkraft-chaos) found,
//! one per bug, named after it; docs/TESTING.md has the track record. Each reproduces the fault
//! sequence of the failing history deterministically, with the peer proxy's faults instead of
//! the harness's random schedule.

use std::time::Duration;

use bytes::Bytes;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use pkraft_testkit::pkarr::{Keypair, Timestamp};
use pkraft_testkit::{iroh_packet, keypair};

use crate::cluster::{TestCluster, eventually};
use crate::dns_client::{Transport, key_name, raw_query, txt_strings};
use crate::harness::{TestServer, http_client};

/// Bound on waiting for the proxy to see the forwarded publish.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Versions published by [`publish_in_quick_succession`]; version `n` has the record
/// `addr=192.0.2.1:n`.
const VERSIONS: u64 = 40;

/// PUTs `VERSIONS` new versions of `key` to `server` one after the other, so that commits come
/// faster than a node writes its commit index to disk (at most once a second); returns the last
/// payload.
async fn publish_in_quick_succession(server: &TestServer, key: &Keypair) -> Bytes {
    let now = Timestamp::now().as_u64();
    let mut last = Bytes::new();
    for step in 0..VERSIONS {
        let packet = iroh_packet(key, now + step, &[&format!("192.0.2.1:{step}")]);
        server.publish(key, &packet).await;
        last = packet.to_relay_payload();
    }
    last
}

/// Chaos bug 1 (seed 1, fault "kill-majority"): a PUT through a follower answered 409 although
/// its packet was stored. The follower forwarded the PUT, the leader committed it, the answer
/// was lost; a newer packet was stored; the follower retried, and the retry found its packet
/// stale. The packet had been stored (a linearizable GET returned it), so 409 ("not stored, a
/// newer one is") was false. The outcome is unknown: 503.
#[tokio::test]
async fn chaos_bug1_put_answered_409_although_stored() {
    let cluster = TestCluster::start(3, "").await;
    let leader = cluster.leader().await;
    let follower = cluster.ids_except(leader)[0];
    let key = keypair(9_001);
    let now = Timestamp::now().as_u64();
    let older = iroh_packet(&key, now, &["192.0.2.1:1"]);
    let newer = iroh_packet(&key, now + 1, &["192.0.2.1:2"]);

    let lost = cluster.faults.lose_next_publish_answer(follower);
    let url = cluster.member(follower).server.relay_url(&key);
    let body = older.to_relay_payload();
    let put_older = tokio::spawn(async move {
        http_client()
            .put(url)
            .body(body)
            .send()
            .await
            .map(|r| r.status())
    });
    tokio::time::timeout(DELIVERY_TIMEOUT, lost.delivered)
        .await
        .expect("the follower forwarded the PUT within the bound")
        .expect("the proxy reports the delivery");
    // The leader has committed `older`; a newer packet is stored before the follower hears back.
    cluster.member(leader).server.publish(&key, &newer).await;
    let _ = lost.release.send(());

    let status = put_older
        .await
        .expect("PUT task")
        .expect("the follower answers");
    assert_eq!(
        status,
        503,
        "the first attempt's outcome was lost, so the retry's \"stale\" does not mean \"not stored\"\n{}",
        cluster.member(follower).server.log()
    );
    // Retrying, as a 503 invites, now truthfully gets 409: a newer packet is stored.
    let retry = cluster
        .member(follower)
        .server
        .put(
            &cluster.member(follower).server.relay_url(&key),
            older.to_relay_payload(),
        )
        .await;
    assert_eq!(retry.status(), 409);
}

/// Chaos bug 2 (seed 1, fault "kill-all"): a node's replica went backwards across a crash. Its
/// applies are not fsynced and it writes the commit index to disk once a second, so after
/// SIGKILL it restarted with an older state and served it (GET and DNS) until its leader told it
/// what was committed. Now it refuses local reads until it has caught up.
#[tokio::test]
async fn chaos_bug2_replica_went_backwards_after_crash() {
    let mut cluster = TestCluster::start(3, "").await;
    let leader = cluster.leader().await;
    let follower = cluster.ids_except(leader)[0];
    let key = keypair(9_002);
    // The follower applies these well within the second in which it writes its commit index to
    // disk at most once.
    let payload = publish_in_quick_succession(&cluster.member(leader).server, &key).await;
    let server = &cluster.member(follower).server;
    let url = server.relay_url(&key);
    eventually("the follower serves the last packet", || async {
        let response = server.get(&url).await;
        (response.status() == 200 && response.bytes().await.ok()? == payload).then_some(())
    })
    .await;

    // Crash it, and keep it from hearing from the leader when it comes back.
    cluster.member_mut(follower).server.kill();
    cluster.faults.isolate(follower);
    cluster.restart(follower);
    let gated = assert_not_older_than(&cluster.member(follower).server, &key, &payload).await;

    if gated {
        // Load balancers are told too.
        let server = &cluster.member(follower).server;
        let readyz = http_client()
            .get(format!("http://{}/readyz", server.admin))
            .send()
            .await
            .expect("readyz");
        assert_eq!(readyz.status(), 503);
        let reasons = readyz.text().await.unwrap_or_default();
        assert!(reasons.contains("restarted after a crash"), "{reasons}");
        // A clean stop before it caught up is no proof of a current replica: the next start
        // still waits.
        cluster.member_mut(follower).server.terminate();
        cluster.restart(follower);
        assert!(
            assert_not_older_than(&cluster.member(follower).server, &key, &payload).await,
            "a clean stop while catching up let the next start serve at once"
        );
    }

    // Back in touch with the leader, it catches up and serves again.
    cluster.faults.heal();
    let server = &cluster.member(follower).server;
    let url = server.relay_url(&key);
    eventually("the restarted follower serves again", || async {
        let response = server.get(&url).await;
        (response.status() == 200 && response.bytes().await.ok()? == payload).then_some(())
    })
    .await;
    server
        .wait_for_log("caught up after the unclean stop")
        .await;
}

/// Asserts that `server` answers GET and DNS for `key` with `payload` (the last packet) or
/// refuses (503, SERVFAIL); returns true if it refused.
async fn assert_not_older_than(server: &TestServer, key: &Keypair, payload: &Bytes) -> bool {
    let response = server.get(&server.relay_url(key)).await;
    let status = response.status();
    let body = response.bytes().await.unwrap_or_default();
    assert!(
        status == 503 || (status == 200 && body == *payload),
        "after the crash the node answered {status}, not the packet it served before\n{}",
        server.log()
    );
    let answer = raw_query(
        server.dns,
        Transport::Udp,
        &key_name("_iroh", key),
        RecordType::TXT,
        None,
    )
    .await;
    let expected = vec![format!("addr=192.0.2.1:{}", VERSIONS - 1)];
    assert!(
        answer.metadata.response_code == ResponseCode::ServFail
            || txt_strings(&answer.answers) == expected,
        "after the crash DNS answered {:?} {:?}",
        answer.metadata.response_code,
        txt_strings(&answer.answers)
    );
    status == 503
}

/// Chaos bug 3 (seed 2, fault "kill-all"): a linearizable GET returned an older packet after
/// the leader restarted. The leader came back with its committed vote and so kept leading in the
/// same term, starting from the commit index on disk (written at most once a second); openraft's
/// read index (the larger of that and the term's first entry) then missed the writes of the
/// second before the crash, which had been acknowledged. Elections are slowed down here so that
/// the restarted leader keeps its leadership every time, as it did by chance in the chaos run.
#[tokio::test]
async fn chaos_bug3_linearizable_get_went_back_after_the_leader_restarted() {
    let timing = "heartbeat_interval = \"100ms\"\n\
                  election_timeout_min = \"20s\"\n\
                  election_timeout_max = \"30s\"\n\
                  publish_timeout = \"5s\"\n";
    let mut cluster = TestCluster::start_with_timing(3, timing, "", "").await;
    let leader = cluster.leader().await;
    let key = keypair(9_003);
    let payload = publish_in_quick_succession(&cluster.member(leader).server, &key).await;

    cluster.member_mut(leader).server.kill();
    cluster.restart(leader);
    let server = &cluster.member(leader).server;
    assert_eq!(
        cluster.leader().await,
        leader,
        "the restarted node kept its leadership (the followers' election timeout is 20 s)"
    );
    let url = format!("{}?consistency=linearizable", server.relay_url(&key));
    let response = server.get(&url).await;
    let status = response.status();
    let body = response.bytes().await.unwrap_or_default();
    assert!(
        status == 200 && body == payload,
        "a linearizable GET after the restart answered {status} without the last acknowledged \
         packet\n{}",
        server.log()
    );
}
