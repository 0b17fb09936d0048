//! Goal: a disk that returns wrong bytes never costs an acknowledged record silently. Damage to
//! synced data is told from a torn write, named, and never cut off as if it were one.
//! Method: the real binary; PUT → 204, SIGKILL, damage the data dir's files the way a disk
//! does (a flipped bit in a length field), restart.

use std::path::{Path, PathBuf};

use pkraft_lossyfs::BadWrite;
use pkraft_testkit::damage::{
    LogRecord, RecordDamage, StateDamage, damage_record, damage_state, log_records,
};
use pkraft_testkit::pkarr::{Keypair, SignedPacket};
use pkraft_testkit::rng::SplitMix64;
use pkraft_testkit::{iroh_packet, keypair};

use std::time::{Duration, Instant};

use crate::cluster::{
    TEST_RAFT, TestCluster, admin_status, eventually, packet, put_until_accepted, wait_served,
};
use crate::harness::{TestServer, http_client};

/// Publishes `count` packets, `parallel` PUTs at a time (so that log entries hold several).
async fn publish(
    server: &TestServer,
    first_seed: u64,
    count: u64,
    parallel: u64,
) -> Vec<(Keypair, SignedPacket)> {
    let mut published = Vec::new();
    for chunk_start in (0..count).step_by(parallel as usize) {
        let mut puts = tokio::task::JoinSet::new();
        for seed in first_seed + chunk_start..first_seed + (chunk_start + parallel).min(count) {
            let key = keypair(seed);
            let packet = iroh_packet(&key, 1_000 + seed, &["192.0.2.1:1"]);
            let put = http_client()
                .put(server.relay_url(&key))
                .body(packet.to_relay_payload());
            puts.spawn(async move {
                let status = put.send().await.map(|r| r.status().as_u16()).ok();
                (key, packet, status)
            });
        }
        for (key, packet, status) in puts.join_all().await {
            assert_eq!(status, Some(204), "PUT failed\n{}", server.log());
            published.push((key, packet));
        }
    }
    published
}

async fn count_served(server: &TestServer, published: &[(Keypair, SignedPacket)]) -> usize {
    let mut served = 0;
    for (key, packet) in published {
        let get = server.get(&server.relay_url(key)).await;
        if get.status() == 200 && get.bytes().await.ok() == Some(packet.to_relay_payload()) {
            served += 1;
        }
    }
    served
}

/// The record holding log index `index` in the node's log.
fn record_holding(data_dir: &Path, index: u64) -> LogRecord {
    log_records(data_dir)
        .expect("read the log")
        .into_iter()
        .find(|record| record.index == index)
        .unwrap_or_else(|| panic!("no record holds index {index}"))
}

/// Enlarges the length field of the record holding `index`, as one flipped bit does.
fn enlarge_length_of(data_dir: &Path, index: u64) {
    let records = log_records(data_dir).expect("read the log");
    let record = record_holding(data_dir, index);
    damage_record(
        &records,
        &record,
        RecordDamage::EnlargedLength,
        &mut SplitMix64::new(0),
    )
    .expect("damage the segment");
}

/// The case: a single node took its PUTs; one bit enlarged the length field of the
/// record in the middle of its last log segment. The old format took that for a torn tail and
/// cut every later record (at 3,000 PUTs the node served 1,501). Now it refuses to start,
/// naming the damaged range, and cuts nothing: with the byte restored it serves them all.
#[tokio::test]
async fn an_enlarged_length_field_stops_a_single_node_naming_the_range() {
    let mut server = TestServer::start();
    // 600, not the 3,000: a debug build takes about 18 ms per PUT and per GET here
    // (run at 3,000 once: refused the same way, and served 3,000 of 3,000 once restored).
    let published = publish(&server, 30_000, 600, 50).await;
    server.kill();

    let records = log_records(server.data_dir()).expect("read the log");
    let last_segment = &records.last().expect("records").segment;
    let in_last: Vec<&LogRecord> = records
        .iter()
        .filter(|record| &record.segment == last_segment)
        .collect();
    assert!(in_last.len() > 10, "{} records", in_last.len());
    let middle = in_last[in_last.len() / 2];
    let segment = middle.segment.clone();
    let original = std::fs::read(&segment).expect("read the segment");
    enlarge_length_of(server.data_dir(), middle.index);
    let damaged = std::fs::read(&segment).expect("read the segment");
    let middle = middle.offset;

    let refusal = server.restart_refused();
    assert!(refusal.contains("the Raft log is damaged"), "{refusal}");
    assert!(refusal.contains(&format!("at byte {middle}")), "{refusal}");
    assert!(refusal.contains("may have been acknowledged"), "{refusal}");
    assert_eq!(
        std::fs::read(&segment).expect("read the segment"),
        damaged,
        "the damaged segment must be left as it was found"
    );

    std::fs::write(&segment, &original).expect("restore the byte");
    server.restart();
    assert_eq!(count_served(&server, &published).await, published.len());
}

/// The current snapshot's data file in a node's data dir, if there is one.
fn snapshot_data_file(data_dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(data_dir.join("snapshot"))
        .ok()?
        .map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| {
            path.as_ref()
                .is_some_and(|p| p.extension().is_some_and(|e| e == "snap"))
        })
        .flatten()
}

async fn metric(server: &TestServer, line_start: &str) -> Option<f64> {
    let text = server
        .get(&format!("http://{}/metrics", server.admin))
        .await
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(line_start))
        .and_then(|value| value.trim().parse().ok())
}

/// A leader whose snapshot file was damaged on disk must not send it: every follower that needs
/// it would refuse it (before this change, each would exit, at every retry). The leader checks
/// its snapshot before sending, builds a new one, and the follower catches up; no node exits.
///
/// The follower that needs the snapshot is a node that joins after the damage: a member that
/// was only stopped could already be in a transfer opened before it, and take the snapshot's
/// bytes as they were (a chunk read before the damage, or an older snapshot's file, kept open
/// after the next build replaced it). Then the leader never reads the damaged file.
#[tokio::test]
async fn a_damaged_snapshot_is_rebuilt_by_the_leader_and_the_follower_catches_up() {
    let mut cluster = TestCluster::start(
        3,
        &format!(
            "snapshot_after_entries = {SNAPSHOT_AFTER_ENTRIES}\nentries_kept_after_snapshot = 0\n"
        ),
    )
    .await;
    let leader = cluster.leader().await;
    // One at a time: each a log entry, snapshotted and purged, so a node that joins needs the
    // snapshot. The node's join adds a few membership entries of its own before the leader
    // sends it anything; if they made a build due, the leader would replace the damaged
    // snapshot first. So publishing ends just after a build, which covers all but a couple.
    let mut published = Vec::new();
    let mut to_publish = 30;
    let settled = loop {
        for _ in 0..to_publish {
            let (key, packet) = packet(36_000 + published.len() as u64, 1_000);
            put_until_accepted(&cluster.member(leader).server, &key, &packet).await;
            published.push((key, packet));
        }
        let (settled, not_covered) = settled_snapshot(&cluster.member(leader).server).await;
        if not_covered <= 2 {
            break settled;
        }
        // Enough more that the next build is due: it covers them all.
        to_publish = SNAPSHOT_AFTER_ENTRIES - not_covered;
        assert!(published.len() < 100, "no snapshot covers the log");
    };
    flip_bit_in_the_middle(&settled);

    cluster.add(4).await;
    let newcomer = &cluster.member(4).server;
    for (key, packet) in &published {
        wait_served(newcomer, key, packet).await;
    }
    let leader_server = &cluster.member(leader).server;
    // Said before the newcomer could take a snapshot; the bound covers the log's way here.
    let found = "the current snapshot is damaged";
    let deadline = Instant::now() + Duration::from_secs(10);
    while !leader_server.log().contains(found) {
        assert!(
            Instant::now() < deadline,
            "the newcomer caught up, and the leader (node {leader}) did not say {found:?}\n{}",
            cluster_logs(&cluster)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(
            leader_server,
            "pkraft_storage_damage_total{what=\"snapshot\"}"
        )
        .await,
        Some(1.0)
    );
    for member in &cluster.members {
        assert!(
            admin_status(&member.server).await.is_some(),
            "node {} is down\n{}",
            member.id,
            cluster_logs(&cluster)
        );
    }
}

/// `raft.snapshot_after_entries` of the damaged-snapshot test.
const SNAPSHOT_AFTER_ENTRIES: u64 = 10;

/// Once `server`'s last snapshot build has ended: its snapshot's data file, and how many applied
/// entries it does not cover. Ended means: fewer than `SNAPSHOT_AFTER_ENTRIES` are not covered
/// (so no build is due, however long the scheduler waits to start one), and the current
/// snapshot is the same file across two looks (a build writes a new one).
async fn settled_snapshot(server: &TestServer) -> (PathBuf, u64) {
    let data_dir = server.data_dir().to_path_buf();
    let mut last = None;
    eventually("the snapshot to cover the log and settle", || {
        let now = snapshot_data_file(&data_dir);
        let same = now.is_some() && now == last;
        last = now.clone();
        async move {
            let applied = metric(server, "pkraft_raft_applied_index ").await;
            let covered = metric(server, "pkraft_raft_snapshot_index ").await;
            let not_covered = match (applied, covered) {
                (Some(applied), Some(covered)) if applied >= covered => {
                    Some((applied - covered) as u64)
                }
                _ => None,
            };
            let done = same && not_covered.is_some_and(|n| n < SNAPSHOT_AFTER_ENTRIES);
            if !done {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            done.then_some(now.zip(not_covered)).flatten()
        }
    })
    .await
}

/// Flips one bit in the middle of the file at `path`, in place: no moment in which a reader
/// sees it shorter.
fn flip_bit_in_the_middle(path: &Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open the file to damage");
    let middle = file.metadata().expect("the file's size").len() / 2;
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(middle)).expect("seek");
    file.read_exact(&mut byte).expect("read the byte");
    byte[0] ^= 0x20;
    file.seek(SeekFrom::Start(middle)).expect("seek");
    file.write_all(&byte).expect("damage the file");
}

/// Every member's log, each under its id: what a failed cluster test shows.
fn cluster_logs(cluster: &TestCluster) -> String {
    cluster
        .members
        .iter()
        .map(|member| format!("=== node {}\n{}\n", member.id, member.server.log()))
        .collect()
}

async fn status_of(server: &TestServer) -> serde_json::Value {
    admin_status(server)
        .await
        .expect("the node answers its status")
}

/// A follower whose log was damaged in the middle (one flipped bit in a length field, whole
/// records after it) is a cluster member: it does not refuse to start, it sets the damaged
/// records aside (`raft-log/damaged/`), says so (log, `cluster status`, metrics), and takes
/// the lost entries from the leader again. Then it is whole: the repair ends by itself.
#[tokio::test]
async fn a_follower_with_a_damaged_log_repairs_itself_from_the_leader() {
    let mut cluster = TestCluster::start(3, "").await;
    let leader = cluster.leader().await;
    let damaged = cluster.ids_except(leader)[0];
    let mut published = Vec::new();
    for seed in 0..30u64 {
        let (key, packet) = packet(37_000 + seed, 1_000);
        put_until_accepted(&cluster.member(leader).server, &key, &packet).await;
        published.push((key, packet));
    }
    let last = status_of(&cluster.member(leader).server).await["node"]["last_log_index"]
        .as_u64()
        .expect("the leader's last log index");
    cluster.member_mut(damaged).server.kill();
    let data_dir = cluster.member(damaged).server.data_dir().to_path_buf();
    enlarge_length_of(&data_dir, last - 10);

    cluster.restart(damaged);
    let server = &cluster.member(damaged).server;
    server.wait_for_log("the Raft log is damaged").await;
    server.wait_for_log("the Raft log is whole again").await;
    assert!(data_dir.join("raft-log").join("damaged").is_dir());
    assert_eq!(
        metric(server, "pkraft_storage_damage_total{what=\"log\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(server, "pkraft_raft_log_repair_pending").await,
        Some(0.0)
    );
    eventually("the repaired follower level with the leader", || async {
        let mine = status_of(server).await["node"]["last_log_index"].as_u64();
        let leader =
            status_of(&cluster.member(leader).server).await["node"]["last_log_index"].as_u64();
        (mine.is_some()
            && mine >= leader
            && status_of(server).await["node"]["log_repair"].is_null())
        .then_some(())
    })
    .await;
    // Whole again: it serves everything, and a new write reaches it.
    let (key, fresh) = packet(37_100, 1_000);
    put_until_accepted(&cluster.member(leader).server, &key, &fresh).await;
    published.push((key, fresh));
    for (key, packet) in &published {
        wait_served(server, key, packet).await;
    }
}

/// The safety rule of a repair (docs/CONSISTENCY.md, "Damaged disks"). Entries committed by the
/// leader and one follower F while the third node G was cut off are then lost by F to damage,
/// and the leader dies. F must not help G (whose log lacks them) become leader: that would lose
/// acknowledged writes. So F refuses G's (pre-)votes and does not stand itself, and the two stay
/// without a leader until the old leader is back; then F repairs and every write is served.
#[tokio::test]
async fn a_repairing_follower_does_not_elect_a_node_that_lacks_what_it_lost() {
    let mut cluster = TestCluster::start(3, "").await;
    cluster.wait_for_voters(3).await;
    let leader = cluster.leader().await;
    let others = cluster.ids_except(leader);
    let (damaged, behind) = (others[0], others[1]);
    cluster.faults.isolate(behind);
    let mut published = Vec::new();
    for seed in 0..20u64 {
        let (key, packet) = packet(38_000 + seed, 1_000);
        put_until_accepted(&cluster.member(leader).server, &key, &packet).await;
        published.push((key, packet));
    }
    let behind_last = status_of(&cluster.member(behind).server).await["node"]["last_log_index"]
        .as_u64()
        .expect("a last log index");
    cluster.member_mut(damaged).server.kill();
    cluster.member_mut(leader).server.kill();
    cluster.faults.heal();
    // The first record the cut-off node never got, with whole records after it: what is left
    // of the damaged log ends where the cut-off node's does, so by the log alone (Raft's vote
    // rule) it would vote for it.
    enlarge_length_of(cluster.member(damaged).server.data_dir(), behind_last + 1);
    cluster.restart(damaged);
    let repairing = &cluster.member(damaged).server;
    repairing.wait_for_log("the Raft log is damaged").await;

    // Several election timeouts (at most 1.6 s each here) without a leader.
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        for id in [damaged, behind] {
            let status = status_of(&cluster.member(id).server).await;
            assert_ne!(
                status["node"]["role"],
                "leader",
                "node {id} was elected though a voter lost committed entries\n{}\n{}",
                cluster.member(damaged).server.log(),
                cluster.member(behind).server.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let repair = status_of(repairing).await["node"]["log_repair"].clone();
    // The fields docs/API.md gives it.
    assert!(
        repair["lost_from"].is_u64()
            && repair["lost_through"].is_u64()
            && repair["vote_term"].is_u64(),
        "{repair}"
    );
    let held = &repair["held_through"];
    assert!(
        held.is_null()
            || (held["leader_id"]["term"].is_u64()
                && held["leader_id"]["node_id"].is_u64()
                && held["index"].is_u64()),
        "{repair}"
    );
    assert_eq!(
        metric(repairing, "pkraft_raft_log_repair_pending").await,
        Some(1.0)
    );

    cluster.restart(leader);
    cluster
        .member(damaged)
        .server
        .wait_for_log("the Raft log is whole again")
        .await;
    for member in &cluster.members {
        for (key, packet) in &published {
            wait_served(&member.server, key, packet).await;
        }
    }
}

/// Flips one byte in the middle of the node's current snapshot data file (in the frames, which
/// the snapshot's checksum covers).
fn damage_snapshot_middle(data_dir: &Path) {
    let file = snapshot_data_file(data_dir).expect("the node has a snapshot");
    let mut bytes = std::fs::read(&file).expect("read the snapshot");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&file, bytes).expect("damage the snapshot");
}

const PURGING_SINGLE_NODE: &str = "[raft]\nsnapshot_after_entries = 5\nentries_kept_after_snapshot = 0\n\
                                   [cluster]\nbootstrap = true\n";

/// redb 4.5 could open a `state.redb` whose commit slots both failed their checksums as an empty
/// database (redb 4.6.0's changelog); with the log purged behind a snapshot, pkraft would then
/// have started with less than it acknowledged. Now a damaged state (redb refuses it, or it
/// opens empty while the log was purged) is set aside and rebuilt from the node's own snapshot
/// and the log after it: a single node loses nothing and serves everything again.
#[tokio::test]
async fn a_single_node_rebuilds_a_damaged_state_from_its_snapshot_and_log() {
    let mut server = TestServer::start_with_config(PURGING_SINGLE_NODE);
    let published = publish(&server, 39_000, 20, 1).await;
    for damage in StateDamage::ALL {
        server.kill();
        damage_state(server.data_dir(), damage).expect("damage state.redb");
        server.restart();
        server
            .wait_for_log("the damaged state store was set aside")
            .await;
        assert_eq!(
            count_served(&server, &published).await,
            published.len(),
            "after {}",
            damage.name()
        );
        assert_eq!(
            metric(&server, "pkraft_storage_damage_total{what=\"state\"}").await,
            Some(1.0),
            "after {}",
            damage.name()
        );
    }
    let kept = std::fs::read_dir(server.data_dir().join("damaged"))
        .expect("damaged/ in the data dir")
        .count();
    assert_eq!(
        kept,
        StateDamage::ALL.len(),
        "one damaged state file kept per repair"
    );
}

/// With its snapshot damaged too and the log purged, a single node has nothing to rebuild its
/// state from: it refuses to start, naming the file, and never starts with less.
#[tokio::test]
async fn a_single_node_without_a_whole_snapshot_refuses_a_damaged_state() {
    let mut server = TestServer::start_with_config(PURGING_SINGLE_NODE);
    publish(&server, 39_100, 20, 1).await;
    server.kill();
    damage_snapshot_middle(server.data_dir());
    let state = damage_state(server.data_dir(), StateDamage::CommitSlots).expect("damage");
    let refusal = server.restart_refused();
    assert!(refusal.contains("state.redb"), "{refusal}");
    assert!(refusal.contains("no other voter"), "{refusal}");
    assert!(state.exists(), "the damaged file stays where it was");
}

/// A follower whose state and snapshot are both damaged, with its log purged, cannot rebuild
/// its state itself: it sets the log aside as well, serves no local read and grants no vote
/// for less than its log held, takes a snapshot and the entries from the leader, and is back in
/// service with every packet.
#[tokio::test]
async fn a_follower_rebuilds_a_damaged_state_from_the_cluster() {
    let mut cluster = TestCluster::start(
        3,
        "snapshot_after_entries = 10\nentries_kept_after_snapshot = 0\n",
    )
    .await;
    let leader = cluster.leader().await;
    let damaged = cluster.ids_except(leader)[0];
    let published = publish_served_by(&cluster, leader, damaged, 43_000, 30).await;
    cluster.member_mut(damaged).server.kill();
    let data_dir = cluster.member(damaged).server.data_dir().to_path_buf();
    damage_snapshot_middle(&data_dir);
    damage_state(&data_dir, StateDamage::CommitSlots).expect("damage state.redb");

    let newest_first: Vec<_> = published.iter().rev().cloned().collect();
    cluster.restart(damaged);
    let server = &cluster.member(damaged).server;
    server.wait_for_log("set the whole Raft log aside").await;
    assert_never_older(server, &newest_first).await;
    server.wait_for_log("the Raft log is whole again").await;
    assert_eq!(
        metric(server, "pkraft_storage_damage_total{what=\"state\"}").await,
        Some(1.0)
    );
    let (key, fresh) = packet(43_100, 1_000);
    put_until_accepted(&cluster.member(leader).server, &key, &fresh).await;
    wait_served(server, &key, &fresh).await;
}

/// Polls `server` for each of `published` until it serves it, failing at the first answer
/// other than the packet or 503 ("catching up"): a node must never answer from a state older
/// than what it served before (a 404 for a packet it served).
async fn assert_never_older(server: &TestServer, published: &[(Keypair, SignedPacket)]) {
    for (i, (key, packet)) in published.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let response = server.get(&server.relay_url(key)).await;
            match response.status().as_u16() {
                200 => {
                    let body = response.bytes().await.expect("body");
                    assert_eq!(body, packet.to_relay_payload(), "packet {i}");
                    break;
                }
                503 => {}
                status => panic!(
                    "packet {i}, served before, answered {status} after the repair\n{}",
                    server.log()
                ),
            }
            assert!(
                Instant::now() < deadline,
                "packet {i} not served\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Publishes `count` packets through `leader` one at a time and waits until `follower` serves
/// them all.
async fn publish_served_by(
    cluster: &TestCluster,
    leader: u64,
    follower: u64,
    first_seed: u64,
    count: u64,
) -> Vec<(Keypair, SignedPacket)> {
    let mut published = Vec::new();
    for seed in first_seed..first_seed + count {
        let (key, packet) = packet(seed, 1_000);
        put_until_accepted(&cluster.member(leader).server, &key, &packet).await;
        published.push((key, packet));
    }
    for (key, packet) in &published {
        wait_served(&cluster.member(follower).server, key, packet).await;
    }
    published
}

/// Found by the simulator (seed 49, once its faults drew failing syncs): node 1, the cluster's
/// first, had a bit flipped in its log's first membership change. The repair cut its log back
/// to the bootstrap's entries, whose membership is node 1 alone, and the start, taking the node
/// for the only voter, waited to apply that log by itself, with its elections held for the
/// repair and its peer listener not yet served: after 30 s it gave up, at every restart. Now a
/// start that repairs its log leaves the replay to the leader, and the node catches up.
#[tokio::test]
async fn a_log_repaired_back_to_the_bootstrap_membership_starts_and_catches_up() {
    let mut cluster = TestCluster::start(3, "").await;
    let leader = cluster.leader().await;
    let published = publish_served_by(&cluster, leader, 1, 48_000, 5).await;
    cluster.member_mut(1).server.kill();
    let data_dir = cluster.member(1).server.data_dir().to_path_buf();
    // Entry 1 is the first leader's blank entry, after the bootstrap membership (entry 0);
    // entry 2 adds the first learner.
    let records = log_records(&data_dir).expect("read the log");
    let first_change = record_holding(&data_dir, 2);
    damage_record(
        &records,
        &first_change,
        RecordDamage::BitFlip,
        &mut SplitMix64::new(49),
    )
    .expect("damage the record");

    let started = Instant::now();
    cluster.restart(1);
    let server = &cluster.member(1).server;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the start took {:?}\n{}",
        started.elapsed(),
        server.log()
    );
    server.wait_for_log("the Raft log is damaged").await;
    server.wait_for_log("the Raft log is whole again").await;
    for (key, packet) in &published {
        wait_served(server, key, packet).await;
    }
}

/// Found by the chaos harness's corruption kinds: a repair can leave the log ending below what
/// the state has applied (here: a clean stop flushed the state; in chaos, a snapshot build's
/// flush). openraft then purged the log up to the applied entry, past the last snapshot, and
/// stopped on its own invariant (`purge_upto <= snapshot_last_log_id`). Now the start builds a
/// snapshot of the state first.
#[tokio::test]
async fn a_log_repaired_below_the_applied_state_restarts_with_a_snapshot_of_it() {
    let mut cluster = TestCluster::start(
        3,
        "snapshot_after_entries = 10\nentries_kept_after_snapshot = 30\n",
    )
    .await;
    let leader = cluster.leader().await;
    let damaged = cluster.ids_except(leader)[0];
    let published = publish_served_by(&cluster, leader, damaged, 40_000, 65).await;
    cluster.member_mut(damaged).server.terminate();
    let data_dir = cluster.member(damaged).server.data_dir().to_path_buf();
    let first = log_records(&data_dir).expect("read the log")[0].index;
    // Near the start of what the log keeps: far below the applied state.
    enlarge_length_of(&data_dir, first + 2);

    cluster.restart(damaged);
    let server = &cluster.member(damaged).server;
    server
        .wait_for_log("building a snapshot of the state to restart the log after it")
        .await;
    assert_never_older(server, &published).await;
    server.wait_for_log("the Raft log is whole again").await;
}

/// Also found by the chaos harness: after a kill, the state on disk is older than what the node
/// served (applies are not fsynced one by one), and the repaired log no longer reaches where it
/// did, so "caught up with the log it had at start" came too early: the node served packets
/// it had served before as missing. Now local reads wait until it is back where its log reached
/// before the damage.
#[tokio::test]
async fn a_repaired_node_serves_nothing_older_than_before_the_damage() {
    let mut cluster = TestCluster::start(3, "").await;
    let leader = cluster.leader().await;
    let damaged = cluster.ids_except(leader)[0];
    let published = publish_served_by(&cluster, leader, damaged, 41_000, 40).await;
    cluster.member_mut(damaged).server.kill();
    let data_dir = cluster.member(damaged).server.data_dir().to_path_buf();
    let records = log_records(&data_dir).expect("read the log");
    let middle = records[records.len() / 2].index;
    enlarge_length_of(&data_dir, middle);

    // The newest first: right after the start, before the leader has sent anything again.
    let newest_first: Vec<_> = published.into_iter().rev().collect();
    cluster.restart(damaged);
    assert_never_older(&cluster.member(damaged).server, &newest_first).await;
}

/// Found by review: a leader saves its vote as committed, and openraft resumes leading at start
/// on such a vote, without an election. A leader killed, damaged and restarted before the
/// others stand would lead with a log shorter than it had, and give new entries the log ids of
/// the lost ones, which the followers still hold: the replicas would diverge. Now a node whose
/// log is being repaired starts as a follower; every node ends with every packet.
#[tokio::test]
async fn a_damaged_leader_restarted_at_once_does_not_lead_with_the_shorter_log() {
    let mut cluster = TestCluster::start(3, "").await;
    let leader = cluster.leader().await;
    let follower = cluster.ids_except(leader)[0];
    let mut published = publish_served_by(&cluster, leader, follower, 42_000, 30).await;
    cluster.member_mut(leader).server.kill();
    let data_dir = cluster.member(leader).server.data_dir().to_path_buf();
    let records = log_records(&data_dir).expect("read the log");
    enlarge_length_of(&data_dir, records[records.len() - 10].index);
    // At once: well within the others' election timeout and PreVote lease.
    cluster.restart(leader);
    let restarted = &cluster.member(leader).server;
    restarted.wait_for_log("the Raft log is damaged").await;
    assert_ne!(
        status_of(restarted).await["node"]["role"],
        "leader",
        "{}",
        restarted.log()
    );
    for seed in 0..10u64 {
        let (key, packet) = packet(42_100 + seed, 1_000);
        put_until_accepted(&cluster.member(follower).server, &key, &packet).await;
        published.push((key, packet));
    }
    for member in &cluster.members {
        for (key, packet) in &published {
            wait_served(&member.server, key, packet).await;
        }
    }
}

const FAST_SCRUB: &str = "scrub_packets_per_second = 50000\n";

/// Flips one byte of `packet`'s signature wherever its stored copy lies in the stopped node's
/// `state.redb` (redb keeps values whole in its leaf pages; a freed older page may hold a copy
/// too). Returns how many copies were damaged.
fn damage_stored_packet(data_dir: &Path, packet: &SignedPacket) -> usize {
    let state = data_dir.join("state.redb");
    let mut bytes = std::fs::read(&state).expect("read state.redb");
    let payload = packet.to_relay_payload();
    let signature = &payload[..64];
    let mut at = Vec::new();
    let mut from = 0;
    while let Some(found) = bytes[from..]
        .windows(signature.len())
        .position(|window| window == signature)
    {
        at.push(from + found);
        from += found + 1;
    }
    for offset in &at {
        bytes[offset + 10] ^= 0x01;
    }
    std::fs::write(&state, bytes).expect("write state.redb");
    at.len()
}

/// The background scrub re-verifies every stored packet. A follower whose copy of one packet
/// was damaged on disk (one flipped bit in a signature, which redb's open does not check) finds
/// it, stops (exit status not 0, for its supervisor to restart it), and the restart rebuilds
/// its state from the cluster: every packet served as published, the damaged one too.
#[tokio::test]
async fn the_scrub_finds_a_damaged_packet_and_a_restart_rebuilds_the_state() {
    let mut cluster = TestCluster::start(3, FAST_SCRUB).await;
    let leader = cluster.leader().await;
    let damaged = cluster.ids_except(leader)[0];
    let published = publish_served_by(&cluster, leader, damaged, 44_000, 30).await;
    cluster.member_mut(damaged).server.terminate();
    let data_dir = cluster.member(damaged).server.data_dir().to_path_buf();
    let (_, target) = &published[7];
    assert!(damage_stored_packet(&data_dir, target) >= 1);

    cluster.restart(damaged);
    let server = &mut cluster.member_mut(damaged).server;
    server
        .wait_for_log("the scrub found the state damaged")
        .await;
    let status = server.wait_exit();
    assert!(!status.success(), "{status:?}\n{}", server.log());
    assert!(data_dir.join("state-damaged").exists());

    cluster.restart(damaged);
    let server = &cluster.member(damaged).server;
    server.wait_for_log("set the whole Raft log aside").await;
    server.wait_for_log("the Raft log is whole again").await;
    for (key, packet) in &published {
        wait_served(server, key, packet).await;
    }
    assert!(!data_dir.join("state-damaged").exists());
}

/// The scrub reads the log back too: a record of a running follower's log damaged under it (a
/// bit flipped in a synced record) is found while the node runs, not at its next start; the
/// node stops, and its restart sets the record aside and takes it from the leader again.
#[tokio::test]
async fn the_scrub_finds_a_damaged_log_record_of_a_running_node() {
    let mut cluster = TestCluster::start(3, "").await;
    let leader = cluster.leader().await;
    let damaged = cluster.ids_except(leader)[0];
    let published = publish_served_by(&cluster, leader, damaged, 45_000, 30).await;
    let data_dir = cluster.member(damaged).server.data_dir().to_path_buf();
    let records = log_records(&data_dir).expect("read the log");
    let middle = records[records.len() / 2].clone();
    damage_record(
        &records,
        &middle,
        RecordDamage::BitFlip,
        &mut SplitMix64::new(7),
    )
    .expect("damage the running node's log");

    scrub_stops_and_restart_repairs_the_log(&mut cluster, damaged, &published).await;
}

/// The only voter has no other copy: its scrub reports a damaged packet (log, metric) and the
/// node goes on serving the rest, since stopping would only add an outage. The damaged packet
/// itself is not served (503, so that a client asks another relay), until its owner publishes
/// it again.
#[tokio::test]
async fn a_single_node_reports_what_its_scrub_finds_and_goes_on() {
    let config = format!("[raft]\n{FAST_SCRUB}[cluster]\nbootstrap = true\n");
    let mut server = TestServer::start_with_config(&config);
    let published = publish(&server, 46_000, 10, 1).await;
    server.terminate();
    assert!(damage_stored_packet(server.data_dir(), &published[3].1) >= 1);
    server.restart();
    server.wait_for_log("This node is the only voter").await;
    assert_eq!(
        metric(&server, "pkraft_storage_damage_total{what=\"state\"}").await,
        Some(1.0)
    );
    let (key, packet) = &published[0];
    wait_served_single(&server, key, packet).await;
    let (damaged_key, _) = &published[3];
    let get = server.get(&server.relay_url(damaged_key)).await;
    assert_eq!(get.status(), 503, "a damaged packet must not be served");
    // Published again (a newer packet), it is stored whole and served.
    let newer = iroh_packet(damaged_key, 5_000_000, &["192.0.2.9:9"]);
    let put = http_client()
        .put(server.relay_url(damaged_key))
        .body(newer.to_relay_payload())
        .send()
        .await
        .expect("PUT");
    assert_eq!(put.status(), 204);
    wait_served_single(&server, damaged_key, &newer).await;
}

/// `key`'s row of the `answers` table as `packet` compiles to it (`pkraft_state`'s layout: the
/// compiled form, then the CRC-32 of key and form).
fn answers_row(key: &Keypair, packet: &SignedPacket) -> Vec<u8> {
    let key = key.public_key().to_bytes();
    let payload = pkraft_types::Payload::new(packet.to_relay_payload()).expect("payload");
    let mut row = pkraft_types::compiled::compile(&key, &payload);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&key);
    crc.update(&row);
    row.extend_from_slice(&crc.finalize().to_be_bytes());
    row
}

/// Writes `with` over every copy of `row` in the stopped node's `state.redb` (redb keeps values
/// whole in its leaf pages). Returns how many copies were found.
fn replace_in_state(data_dir: &Path, row: &[u8], with: &[u8]) -> usize {
    assert_eq!(row.len(), with.len(), "a row is replaced in place");
    let state = data_dir.join("state.redb");
    let mut bytes = std::fs::read(&state).expect("read state.redb");
    let mut found = 0;
    let mut from = 0;
    while let Some(at) = bytes[from..]
        .windows(row.len())
        .position(|window| window == row)
    {
        let at = from + at;
        bytes[at..at + row.len()].copy_from_slice(with);
        found += 1;
        from = at + row.len();
    }
    std::fs::write(&state, bytes).expect("write state.redb");
    found
}

/// The `_iroh` TXT strings DNS answers for `key` over UDP.
async fn iroh_txt(server: &TestServer, key: &Keypair) -> Vec<String> {
    let name = crate::dns_client::key_name("_iroh", key);
    let answer = crate::dns_client::raw_query(
        server.dns,
        crate::dns_client::Transport::Udp,
        &name,
        hickory_proto::rr::RecordType::TXT,
        Some(1232),
    )
    .await;
    crate::dns_client::txt_strings(&answer.answers)
}

/// A lost write can leave an older packet's compiled answers under a key, whole (its checksum
/// holds), and DNS would serve them as they are: shown first with the scrub off. With the scrub
/// on, it finds the row, counts it (`what="answers"`), writes it again from the stored packet,
/// and DNS answers the stored packet's address. Nothing stops: the packet itself is whole.
#[tokio::test]
async fn the_scrub_compiles_a_stale_answers_row_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("node.toml");
    let data = dir.path().join("data");
    let with_scrub = |rate: u64| {
        let toml =
            format!("[raft]\nscrub_packets_per_second = {rate}\n[cluster]\nbootstrap = true\n");
        std::fs::write(&config, toml).expect("write config");
    };
    with_scrub(0);
    let mut server = TestServer::start_serve_at(&config, data.clone(), Default::default());
    let published = publish(&server, 48_000, 10, 1).await;
    let (key, packet) = &published[4];
    assert_eq!(iroh_txt(&server, key).await, ["addr=192.0.2.1:1"]);
    assert!(server.terminate().success());
    let lost = iroh_packet(key, 999, &["192.0.2.7:1"]);
    let copies = replace_in_state(&data, &answers_row(key, packet), &answers_row(key, &lost));
    assert!(copies >= 1);

    server.restart();
    assert_eq!(
        iroh_txt(&server, key).await,
        ["addr=192.0.2.7:1"],
        "without the scrub, the stale row is served (the test's premise)"
    );
    let status = server.terminate();
    assert!(status.success(), "{status:?}\n{}", server.log());

    with_scrub(50_000);
    server.restart();
    server
        .wait_for_log("not what the stored packet compiles to")
        .await;
    eventually("DNS answers the stored packet", || async {
        (iroh_txt(&server, key).await == ["addr=192.0.2.1:1"]).then_some(())
    })
    .await;
    assert_eq!(
        metric(&server, "pkraft_storage_damage_total{what=\"answers\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&server, "pkraft_storage_damage_total{what=\"state\"}").await,
        Some(0.0)
    );
    assert!(server.is_running());
    for (key, packet) in &published {
        wait_served_single(&server, key, packet).await;
    }
}

async fn wait_served_single(server: &TestServer, key: &Keypair, packet: &SignedPacket) {
    let get = server.get(&server.relay_url(key)).await;
    assert_eq!(get.status(), 200);
    assert_eq!(get.bytes().await.ok(), Some(packet.to_relay_payload()));
}

/// Found by review: damage the scrub finds in the log's last append would be cut at the next
/// open as a torn write, and the restarted node would vote with the shorter log although it
/// knew it had lost entries. Now the loss is recorded before the node stops: after the restart
/// its status shows the repair (with the last entry unreadable, it ends at the next term, as
/// for damage found at an open), and it serves every packet.
#[tokio::test]
async fn damage_the_scrub_finds_in_the_last_append_is_not_forgotten_at_the_restart() {
    let mut cluster = TestCluster::start(3, "").await;
    let leader = cluster.leader().await;
    let damaged = cluster.ids_except(leader)[0];
    let published = publish_served_by(&cluster, leader, damaged, 47_000, 20).await;
    let data_dir = cluster.member(damaged).server.data_dir().to_path_buf();
    let records = log_records(&data_dir).expect("read the log");
    let last = records.last().expect("records").clone();
    damage_record(
        &records,
        &last,
        RecordDamage::BitFlip,
        &mut SplitMix64::new(11),
    )
    .expect("damage the running node's last record");

    let server = &mut cluster.member_mut(damaged).server;
    server
        .wait_for_log_within(
            "the scrub found: the Raft log is damaged",
            Duration::from_secs(40),
        )
        .await;
    let status = server.wait_exit();
    assert!(!status.success(), "{status:?}\n{}", server.log());

    cluster.restart(damaged);
    let server = &cluster.member(damaged).server;
    let repair = status_of(server).await["node"]["log_repair"].clone();
    assert!(
        !repair.is_null(),
        "the loss was forgotten\n{}",
        server.log()
    );
    for (key, packet) in &published {
        wait_served(server, key, packet).await;
    }
}

/// A running follower's disk acknowledges one append of its log (the fsync succeeds) and does not
/// store it as asked, with later appends after it; the disk's cache hides it until it is
/// dropped (`reveal_bad_write`). Then its scrub finds the damage while it runs, the node stops,
/// and its restart takes the entries from the leader again: the disk's fault costs no packet.
async fn a_bad_write_on_a_running_follower_is_found_and_repaired(bad: BadWrite, first_seed: u64) {
    let Some(mut cluster) =
        TestCluster::on_lossy_disks(&format!("{bad:?} on a follower"), 3, TEST_RAFT, "").await
    else {
        return;
    };
    let leader = cluster.leader().await;
    let damaged = cluster.ids_except(leader)[0];
    let mut published = publish_served_by(&cluster, leader, damaged, first_seed, 8).await;
    let disk = cluster.member(damaged).disk();
    disk.arm_bad_write(bad, ".seg");
    published.extend(publish_served_by(&cluster, leader, damaged, first_seed + 8, 8).await);
    let taken = disk
        .bad_write()
        .expect("an append of the follower's log took it");
    assert!(taken.later_syncs >= 1, "{taken:?}: no later append");
    assert!(disk.reveal_bad_write());

    scrub_stops_and_restart_repairs_the_log(&mut cluster, damaged, &published).await;
}

#[tokio::test]
async fn a_lost_write_on_a_running_follower_is_found_and_repaired() {
    a_bad_write_on_a_running_follower_is_found_and_repaired(BadWrite::Lost, 49_000).await;
}

#[tokio::test]
async fn a_misdirected_write_on_a_running_follower_is_found_and_repaired() {
    // 300 bytes back: into the records before it, at an offset that is no record's start.
    a_bad_write_on_a_running_follower_is_found_and_repaired(
        BadWrite::Misdirected { back: 300 },
        49_100,
    )
    .await;
}

/// The leader's own copy of a packet is damaged. Its scrub asks the other voters for theirs
/// (peer route `packet-check`); they hold whole bytes, so the damage is this disk's: the leader
/// hands its leadership over and stops (before, it went on leading and applying over the
/// damaged row until someone restarted it), and its restart rebuilds the state from the
/// cluster.
#[tokio::test]
async fn a_leader_whose_scrub_finds_its_own_copy_damaged_hands_over_and_repairs() {
    // Pages of 64 packets, 32 a second: the last key's page is read about 4 s after the start,
    // by when the damaged node leads.
    let mut cluster = TestCluster::start(3, "scrub_packets_per_second = 32\n").await;
    let damaged = cluster.leader().await;
    let mut published = Vec::new();
    for chunk in 0..5 {
        published
            .extend(publish(&cluster.member(damaged).server, 50_000 + chunk * 30, 30, 10).await);
    }
    let followers = cluster.ids_except(damaged);
    for (key, packet) in &published {
        for id in &followers {
            wait_served(&cluster.member(*id).server, key, packet).await;
        }
    }
    // The followers first: with no one to hand over to, the leader keeps its vote, and on the
    // restart it leads again at once (openraft resumes a committed vote of its own).
    for id in &followers {
        cluster.member_mut(*id).server.terminate();
    }
    cluster.member_mut(damaged).server.terminate();
    // The damaged copy is the last key's: the scrub reaches it last.
    let (_, last) = published
        .iter()
        .max_by_key(|(key, _)| key.public_key().to_bytes())
        .expect("packets");
    let data_dir = cluster.member(damaged).server.data_dir().to_path_buf();
    assert!(damage_stored_packet(&data_dir, last) >= 1);
    cluster.restart(damaged);
    for id in &followers {
        cluster.restart(*id);
    }
    assert_eq!(
        cluster.leader().await,
        damaged,
        "the damaged node should lead again"
    );

    let server = &mut cluster.member_mut(damaged).server;
    server
        .wait_for_log_within(
            "Another voter holds whole bytes: this node hands its leadership over and stops",
            Duration::from_secs(30),
        )
        .await;
    let status = server.wait_exit();
    assert!(!status.success(), "{status:?}\n{}", server.log());
    let new_leader = cluster.leader_among(&followers).await;
    let (key, packet) = packet(50_900, 1_000);
    put_until_accepted(&cluster.member(new_leader).server, &key, &packet).await;
    published.push((key, packet));

    cluster.restart(damaged);
    let server = &cluster.member(damaged).server;
    server.wait_for_log("the Raft log is whole again").await;
    for (key, packet) in &published {
        wait_served(server, key, packet).await;
    }
}

/// Every voter stores the same bytes that no longer verify (here: the same bit flipped on each,
/// as a verification rule that changed between builds, or a snapshot built from one damaged
/// disk, would leave them). Each scrub asks the others, learns that the cluster stores the
/// packet so, and no node stops (before, each follower stopped to rebuild, only to find the
/// same bytes again); none serves the bytes that do not verify.
#[tokio::test]
async fn bytes_every_voter_stores_stop_no_node() {
    let mut cluster = TestCluster::start(3, FAST_SCRUB).await;
    let leader = cluster.leader().await;
    let follower = cluster.ids_except(leader)[0];
    let published = publish_served_by(&cluster, leader, follower, 51_000, 20).await;
    for (key, packet) in &published {
        for id in cluster.ids_except(follower) {
            wait_served(&cluster.member(id).server, key, packet).await;
        }
    }
    let ids: Vec<u64> = cluster.members.iter().map(|m| m.id).collect();
    for id in &ids {
        cluster.member_mut(*id).server.terminate();
    }
    let (_, target) = &published[5];
    for id in &ids {
        let data_dir = cluster.member(*id).server.data_dir().to_path_buf();
        assert!(damage_stored_packet(&data_dir, target) >= 1);
    }
    for id in &ids {
        cluster.restart(*id);
    }
    for id in &ids {
        cluster
            .member(*id)
            .server
            .wait_for_log_within(
                "every other voter stores the same bytes",
                Duration::from_secs(30),
            )
            .await;
    }
    let leader = cluster.leader().await;
    let (key, packet) = packet(51_900, 1_000);
    put_until_accepted(&cluster.member(leader).server, &key, &packet).await;
    let (damaged_key, _) = &published[5];
    for id in &ids {
        let server = &mut cluster.member_mut(*id).server;
        wait_served(server, &key, &packet).await;
        let get = server.get(&server.relay_url(damaged_key)).await;
        assert_eq!(
            get.status(),
            503,
            "node {id} served bytes that do not verify"
        );
        assert!(server.is_running(), "node {id} stopped\n{}", server.log());
    }
}

/// The running `damaged` node's scrub finds its log damaged within 40 s and the node stops
/// (exit status not 0); restarted, it repairs the log from the leader and serves `published`.
async fn scrub_stops_and_restart_repairs_the_log(
    cluster: &mut TestCluster,
    damaged: u64,
    published: &[(Keypair, SignedPacket)],
) {
    let server = &mut cluster.member_mut(damaged).server;
    server
        .wait_for_log_within(
            "the scrub found: the Raft log is damaged",
            Duration::from_secs(40),
        )
        .await;
    let status = server.wait_exit();
    assert!(!status.success(), "{status:?}\n{}", server.log());

    cluster.restart(damaged);
    let server = &cluster.member(damaged).server;
    server.wait_for_log("the Raft log is whole again").await;
    for (key, packet) in published {
        wait_served(server, key, packet).await;
    }
}
