//! Goal: disk faults short of a power cut (a full disk, slow fsyncs) on some nodes of a cluster
//! cost no acknowledged write, stop no node and cause no election nobody wanted.
//! Method: a 3-node `TestCluster` with every data dir on its own lossy disk (pkraft-lossyfs),
//! whose free space and fsync delay the test sets. The single-node cases (a full disk, a failed
//! fsync) are in `power_loss.rs`. Needs root and /dev/fuse, as there.

use std::time::Duration;

use serde_json::Value;

use crate::cluster::{
    TEST_RAFT, TestCluster, admin_status, eventually, packet, put, put_until_accepted, wait_served,
};

/// Every member's (term, leader) as it reports them.
async fn terms_and_leaders(cluster: &TestCluster) -> Vec<(u64, Option<u64>)> {
    let mut seen = Vec::new();
    for member in &cluster.members {
        let status: Value = admin_status(&member.server)
            .await
            .expect("the node answers its status");
        seen.push((
            status["node"]["term"].as_u64().expect("term"),
            status["node"]["leader"].as_u64(),
        ));
    }
    seen
}

/// A follower whose disk falls below `raft.min_free_disk_mib` refuses PUTs (503) and the
/// entries and snapshots its leader sends (the leader retries them), but takes heartbeats: it stays a quiet
/// follower, the other two keep committing, and once space returns it catches up by itself.
#[tokio::test]
async fn a_follower_low_on_disk_lets_the_cluster_write_and_catches_up() {
    // Snapshots after every 5 entries, and no log kept after them: the follower left behind
    // needs a snapshot, so both the entries and the snapshot are refused and retried.
    let raft = "snapshot_after_entries = 5\nentries_kept_after_snapshot = 0\n";
    let Some(cluster) = TestCluster::on_lossy_disks("follower disk full", 3, TEST_RAFT, raft).await
    else {
        return;
    };
    let leader = cluster.leader().await;
    let follower = cluster.follower().await;
    let (key, first) = packet(1, 1_000);
    put_until_accepted(&cluster.member(leader).server, &key, &first).await;
    for member in &cluster.members {
        wait_served(&member.server, &key, &first).await;
    }
    let before = terms_and_leaders(&cluster).await;

    let low = &cluster.member(follower);
    low.disk().limit_free_space(Some(64 << 20));
    // It refuses PUTs of its own (measured at most 100 ms apart, so within a few tries).
    let mut seed = 100;
    eventually("the follower refusing a PUT", || {
        seed += 1;
        let (key, packet) = packet(seed, 1_000);
        let server = &low.server;
        async move { (put(server, &key, &packet).await.status() == 503).then_some(()) }
    })
    .await;
    // The leader and the third node go on committing without it.
    let mut written = Vec::new();
    for seed in 200..220 {
        let (key, packet) = packet(seed, 2_000);
        put_until_accepted(&cluster.member(leader).server, &key, &packet).await;
        written.push((key, packet));
    }
    let (last_key, last) = written.last().expect("written").clone();
    // Its replica falls behind, so it turns stale like a cut-off follower: not ready once
    // `http.ready_max_stale` (5 s) has passed without taking anything from its leader. Over
    // those seconds it must neither take the entries nor stand for election.
    let readyz = format!("http://{}/readyz", low.server.http);
    eventually("the follower low on disk not ready", || async {
        let status = low.server.get(&readyz).await.status();
        (status == 503).then_some(())
    })
    .await;
    let status = low
        .server
        .get(&low.server.relay_url(&last_key))
        .await
        .status();
    assert_eq!(status, 404, "the follower took entries below its reserve");
    assert_eq!(
        terms_and_leaders(&cluster).await,
        before,
        "an election while a follower was low on disk"
    );

    low.disk().limit_free_space(None);
    wait_served(&low.server, &last_key, &last).await;
    for (key, packet) in &written {
        wait_served(&low.server, key, packet).await;
    }
    // The leader had purged the entries it lacked: it caught up by a snapshot it had refused.
    low.server
        .wait_for_log("installed a snapshot from the leader")
        .await;
    assert_eq!(terms_and_leaders(&cluster).await, before);
}

/// A follower with room above `raft.min_free_disk_mib` but not for installing the snapshot it
/// needs (the file and the import beside its tables) refuses that snapshot, saying why, and
/// stays up, a quiet follower; once space is freed it installs it and catches up. Without the
/// check the import runs into ENOSPC, which stops the node (and again at every resend).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_without_room_for_a_snapshot_install_refuses_it_and_catches_up_later() {
    // A 1 MiB reserve; snapshots after every 5 entries, no log kept after them.
    let raft =
        "min_free_disk_mib = 1\nsnapshot_after_entries = 5\nentries_kept_after_snapshot = 0\n";
    let Some(mut cluster) =
        TestCluster::on_lossy_disks("snapshot install without room", 3, TEST_RAFT, raft).await
    else {
        return;
    };
    let leader = cluster.leader().await;
    let follower = cluster.follower().await;
    // Below the reserve, the follower takes no entries while the cluster writes 3,000 packets
    // (a snapshot of about 0.6 MiB, whose install took about 3 MiB when measured).
    cluster
        .member(follower)
        .disk()
        .limit_free_space(Some(512 << 10));
    let leader_server = &cluster.member(leader).server;
    let mut written = Vec::new();
    // Stamped now: packets from 1970 would be expired (up to the rate fence's 1,000 an hour)
    // while the test runs, which a loaded machine makes long enough.
    let stamp = pkraft_types::unix_micros_now();
    for batch in 0..100_u64 {
        let mut puts = tokio::task::JoinSet::new();
        for i in 0..30 {
            let (key, packet) = packet(10_000 + batch * 30 + i, stamp);
            let url = leader_server.relay_url(&key);
            let body = packet.to_relay_payload();
            written.push((key, packet));
            puts.spawn(async move {
                for _ in 0..50 {
                    let sent = crate::harness::http_client()
                        .put(url.clone())
                        .body(body.clone())
                        .send()
                        .await;
                    if sent.is_ok_and(|answer| answer.status() == 204) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                panic!("a PUT was never accepted");
            });
        }
        while let Some(done) = puts.join_next().await {
            done.expect("PUT task");
        }
    }
    let (last_key, last) = written.last().expect("written").clone();
    wait_served(leader_server, &last_key, &last).await;

    // Above the reserve now, but without room for the install (without the check it runs into
    // ENOSPC, and the node stops): refused, said so, still up.
    cluster
        .member(follower)
        .disk()
        .limit_free_space(Some(5 << 19));
    let low = &cluster.member(follower).server;
    low.wait_for_log("no room to install snapshot").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        cluster.member_mut(follower).server.is_running(),
        "the follower stopped"
    );
    let low = &cluster.member(follower).server;
    let status = low.get(&low.relay_url(&last_key)).await.status();
    assert_eq!(
        status, 404,
        "the follower installed a snapshot it had no room for"
    );
    assert!(
        !low.log().contains("installed a snapshot from the leader"),
        "the follower installed a snapshot it had no room for"
    );

    cluster.member(follower).disk().limit_free_space(None);
    low.wait_for_log("installed a snapshot from the leader")
        .await;
    for (key, packet) in written.iter().step_by(97) {
        wait_served(low, key, packet).await;
    }
    wait_served(low, &last_key, &last).await;
}

/// docs/OPERATIONS.md ("Raft timing") says a heartbeat of at least 3 × the fsync time keeps
/// elections away. With the default heartbeat (100 ms) and every fsync on every node, leader
/// included, made 30 ms slower under a steady write load: no election, no leader change, every
/// PUT taken. The election timeouts are the test suite's (`TEST_RAFT`, 800–1600 ms, not the
/// default 300–500 ms), so that CPU stalls of a loaded 2-core CI machine do not count; the
/// bound under test is the heartbeat's against the fsync. (With 1 s fsyncs the test fails.)
#[tokio::test]
async fn fsyncs_slower_by_a_third_of_the_heartbeat_cause_no_election() {
    let Some(cluster) = TestCluster::on_lossy_disks("slow fsync", 3, TEST_RAFT, "").await else {
        return;
    };
    let leader = cluster.leader().await;
    let before = terms_and_leaders(&cluster).await;
    for member in &cluster.members {
        member.disk().slow_fsyncs(Duration::from_millis(30));
    }
    // About 6 s of PUTs, 4 at a time, through every node.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut seed = 1_000;
    let mut written = 0;
    while tokio::time::Instant::now() < deadline {
        let mut puts = tokio::task::JoinSet::new();
        for member in &cluster.members {
            for _ in 0..2 {
                seed += 1;
                let (key, packet) = packet(seed, 3_000);
                let url = member.server.relay_url(&key);
                let body = packet.to_relay_payload();
                puts.spawn(async move {
                    crate::harness::http_client()
                        .put(url)
                        .body(body)
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .ok()
                });
            }
        }
        for status in puts.join_all().await {
            assert_eq!(status, Some(204), "a PUT while fsyncs are slow");
            written += 1;
        }
    }
    assert!(written > 20, "only {written} PUTs in 6 s");
    assert_eq!(
        terms_and_leaders(&cluster).await,
        before,
        "an election with fsyncs 30 ms slower (leader was node {leader})"
    );
}

/// A leader whose disk falls below the reserve hands its leadership to a voter with room, so
/// the cluster goes on taking writes; but only once a quorum of voters has room (a leader
/// elsewhere could commit nothing otherwise), and never to a voter low on disk too. The old
/// leader goes on as a follower and catches up once space returns.
#[tokio::test]
async fn a_leader_low_on_disk_hands_leadership_to_a_voter_with_room() {
    let Some(cluster) = TestCluster::on_lossy_disks("leader disk full", 3, TEST_RAFT, "").await
    else {
        return;
    };
    let old_leader = cluster.leader().await;
    let (key, first) = packet(1, 1_000);
    put_until_accepted(&cluster.member(old_leader).server, &key, &first).await;
    for member in &cluster.members {
        wait_served(&member.server, &key, &first).await;
    }

    // The leader and one follower low on disk: only one voter has room, not a quorum, so
    // leadership stays where it is. The follower first, and known to be low, so that the
    // leader's first look cannot find it with room.
    let followers = cluster.ids_except(old_leader);
    let (low_follower, roomy_follower) = (followers[0], followers[1]);
    let reports_low_disk = |id: u64| {
        let server = &cluster.member(id).server;
        async move {
            let status = admin_status(server).await?;
            (status["node"]["low_on_disk"] == Value::Bool(true)).then_some(())
        }
    };
    cluster
        .member(low_follower)
        .disk()
        .limit_free_space(Some(64 << 20));
    eventually("the follower reporting its disk low", || {
        reports_low_disk(low_follower)
    })
    .await;
    cluster
        .member(old_leader)
        .disk()
        .limit_free_space(Some(64 << 20));
    let low = &cluster.member(old_leader).server;
    low.wait_for_log("this leader is low on disk and keeps leading")
        .await;
    assert!(low.log().contains("fewer than a quorum"), "{}", low.log());
    let before = terms_and_leaders(&cluster).await;
    let status = admin_status(low)
        .await
        .expect("the leader answers its status");
    let low_on_disk: Vec<(u64, bool)> = status["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            let id = m["id"].as_u64().expect("id");
            (id, m["status"]["low_on_disk"] == Value::Bool(true))
        })
        .collect();
    assert!(
        low_on_disk.contains(&(old_leader, true))
            && low_on_disk.contains(&(low_follower, true))
            && low_on_disk.contains(&(roomy_follower, false)),
        "members' disks as reported: {low_on_disk:?}"
    );
    // Two more looks at the disks (`LOW_DISK_RETRY`, 5 s) change nothing.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        terms_and_leaders(&cluster).await,
        before,
        "leadership moved without a quorum of voters with room"
    );

    // Room on both followers: the leader hands over to one of them, and writes go on.
    cluster.member(low_follower).disk().limit_free_space(None);
    let new_leader = eventually("another leader", || async {
        let seen = terms_and_leaders(&cluster).await;
        let leader = seen[0].1?;
        let agreed = seen.iter().all(|(_, l)| *l == Some(leader));
        (agreed && leader != old_leader).then_some(leader)
    })
    .await;
    low.wait_for_log("handed leadership over").await;
    let mut written = Vec::new();
    for seed in 200..210 {
        let (key, packet) = packet(seed, 2_000);
        put_until_accepted(&cluster.member(new_leader).server, &key, &packet).await;
        written.push((key, packet));
    }
    // The old leader, a follower now, still refuses entries: it does not serve them yet.
    let last_key = written.last().expect("written").0.clone();
    let status = low.get(&low.relay_url(&last_key)).await.status();
    assert_eq!(status, 404, "the old leader took entries below its reserve");

    // Space returns on the old leader: it catches up, and takes PUTs again (forwarded).
    cluster.member(old_leader).disk().limit_free_space(None);
    for (key, packet) in &written {
        wait_served(low, key, packet).await;
    }
    let (key, packet) = packet(300, 3_000);
    put_until_accepted(low, &key, &packet).await;
    let seen = terms_and_leaders(&cluster).await;
    assert!(
        seen.iter().all(|(_, leader)| *leader == Some(new_leader)),
        "leadership moved again once space returned: {seen:?}"
    );
}
