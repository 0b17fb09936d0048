//! Goal: a single-node `Node` commits publishes through Raft into redb, applies the ordering rule,
//! keeps its data across restarts, and snapshots and purges its log without losing anything.
//! Method: real `Node`s on temp data dirs; restarts reopen the same files.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::RaftLogStorage;
use pkraft_raft::{Consistency, Node, Participation, Settings};
use pkraft_raft_storage::log_store::LogStore;
use pkraft_testkit::{iroh_packet, keypair};
use pkraft_types::{PublishOutcome, VerifiedPacket};

fn packet(seed: u64, timestamp: u64) -> VerifiedPacket {
    let kp = keypair(seed);
    let payload = iroh_packet(&kp, timestamp, &["192.0.2.1:1"]).to_relay_payload();
    VerifiedPacket::verify(&kp.public_key(), payload).expect("valid packet")
}

fn fast_settings() -> Settings {
    Settings {
        heartbeat_interval: Duration::from_millis(50),
        election_timeout_min: Duration::from_millis(200),
        election_timeout_max: Duration::from_millis(400),
        ..Settings::default()
    }
}

async fn start(dir: &Path, settings: &Settings) -> Arc<Node> {
    Node::start(1, dir, settings, Participation::standalone())
        .await
        .expect("node starts")
}

#[tokio::test]
async fn publish_commits_and_applies_the_ordering_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path(), &fast_settings()).await;

    let first = node
        .writes()
        .publish(packet(1, 100))
        .await
        .expect("publish");
    assert_eq!(first.outcome, PublishOutcome::Stored);
    assert_eq!(first.replicas, 1);
    let again = node
        .writes()
        .publish(packet(1, 100))
        .await
        .expect("publish");
    assert_eq!(again.outcome, PublishOutcome::Identical);
    let older = node.writes().publish(packet(1, 50)).await.expect("publish");
    assert_eq!(older.outcome, PublishOutcome::Stale);
    let newer = node
        .writes()
        .publish(packet(1, 200))
        .await
        .expect("publish");
    assert_eq!(newer.outcome, PublishOutcome::Stored);

    let key = keypair(1).public_key().to_bytes();
    let stored = node.store().get(&key).expect("read").expect("present");
    assert_eq!(stored.payload.timestamp_micros(), 200);
    node.shutdown().await;
}

/// A packet the replica already decides (the same one, or an older one) is answered from it: no
/// log entry is proposed for it. The state machine would give the same outcome; the fast answer
/// only saves the round of consensus.
#[tokio::test]
async fn publish_answers_from_the_replica_when_it_decides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path(), &fast_settings()).await;
    let stored = node
        .writes()
        .publish(packet(1, 100))
        .await
        .expect("publish");
    assert_eq!(stored.outcome, PublishOutcome::Stored);
    let applied = node.last_applied_index();
    assert_eq!(applied, Some(stored.log_index));

    let identical = node
        .writes()
        .publish(packet(1, 100))
        .await
        .expect("publish");
    let stale = node.writes().publish(packet(1, 50)).await.expect("publish");
    assert_eq!(identical.outcome, PublishOutcome::Identical);
    assert_eq!(stale.outcome, PublishOutcome::Stale);
    // The index the answer rests on is the entry that stored the packet it lost to.
    assert_eq!(
        (identical.log_index, stale.log_index),
        (stored.log_index, stored.log_index)
    );
    assert_eq!(
        node.last_applied_index(),
        applied,
        "answered from the replica: nothing was proposed"
    );
    node.shutdown().await;
}

/// `Reads::read` at both consistencies returns what was committed, and nothing for an unknown key;
/// consistency names parse as the HTTP relay gets them.
#[tokio::test]
async fn read_returns_committed_packets_at_either_consistency() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path(), &fast_settings()).await;
    node.writes()
        .publish(packet(1, 100))
        .await
        .expect("publish");
    let key = keypair(1).public_key().to_bytes();
    let unknown = keypair(2).public_key().to_bytes();
    for name in ["local", "linearizable"] {
        let consistency: Consistency = name.parse().expect("known consistency");
        assert_eq!(consistency.as_str(), name);
        let read = node.reads().read(&key, consistency).await.expect("read");
        assert_eq!(read.map(|p| p.payload.timestamp_micros()), Some(100));
        assert!(
            node.reads()
                .read(&unknown, consistency)
                .await
                .expect("read")
                .is_none()
        );
    }
    assert_eq!(Consistency::default(), Consistency::Local);
    assert!("eventual".parse::<Consistency>().is_err());
    node.shutdown().await;
}

#[tokio::test]
async fn data_and_leadership_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = fast_settings();
    {
        let node = start(dir.path(), &settings).await;
        node.writes()
            .publish(packet(1, 100))
            .await
            .expect("publish");
        node.shutdown().await;
    }
    let node = start(dir.path(), &settings).await;
    let key = keypair(1).public_key().to_bytes();
    assert!(
        node.store().get(&key).expect("read").is_some(),
        "packet survives restart"
    );
    // The restarted node must lead again (it is the only voter) and accept writes.
    let published = node
        .writes()
        .publish(packet(2, 100))
        .await
        .expect("publish after restart");
    assert_eq!(published.outcome, PublishOutcome::Stored);
    node.shutdown().await;
}

/// Goal: a shutdown returns as soon as openraft has let go of the files, not at its 10 s bound:
/// the node and its parts hold the replica and the log through one shared core, one handle
/// each, and the stop waits only for the others (`Core::files_released`). (When the parts'
/// handles were not accounted for, every shutdown waited the whole bound and warned that Raft's
/// tasks still held the files.) And once the node is dropped nothing holds the core: no part
/// or task keeps it alive in a cycle, so the files open again at once.
#[tokio::test]
async fn a_shutdown_waits_only_for_raft_to_let_go_of_the_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path(), &fast_settings()).await;
    node.writes()
        .publish(packet(1, 100))
        .await
        .expect("publish");
    let started = std::time::Instant::now();
    node.shutdown().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the shutdown took {took:?}, near its 10 s bound"
    );
    let store = node.store().clone();
    drop(node);
    assert_eq!(
        store.open_handles(),
        1,
        "something still holds the node's core after the stop and the drop"
    );
    drop(store);
    let node = start(dir.path(), &fast_settings()).await;
    node.shutdown().await;
}

#[tokio::test]
async fn snapshots_and_log_purge_keep_every_packet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings {
        snapshot_after_entries: 5,
        entries_kept_after_snapshot: 2,
        ..fast_settings()
    };
    let count = 30u64;
    {
        let node = start(dir.path(), &settings).await;
        for seed in 0..count {
            node.writes()
                .publish(packet(seed, 100))
                .await
                .expect("publish");
        }
        node.shutdown().await;
    }
    assert!(
        dir.path().join("snapshot").join("current.meta").exists(),
        "a snapshot was built"
    );
    let state = {
        let mut log = LogStore::open(&dir.path().join("raft-log")).expect("open log");
        log.get_log_state().await.expect("log state")
    };
    assert!(
        state
            .last_purged_log_id
            .is_some_and(|purged| purged.index > 0),
        "the log was purged after the snapshot: {state:?}"
    );
    let node = start(dir.path(), &settings).await;
    assert_eq!(node.store().packet_count().expect("count"), count);
    for seed in 0..count {
        let key = keypair(seed).public_key().to_bytes();
        assert!(
            node.store().get(&key).expect("read").is_some(),
            "key {seed} survives"
        );
    }
    node.writes()
        .publish(packet(count, 100))
        .await
        .expect("publish after restart");
    node.shutdown().await;
}

/// A data dir from a build before log schema 2 (the log in `raft-log.redb`) is refused with a
/// message saying what to do, and nothing in it is touched.
#[tokio::test]
async fn refuses_a_log_in_the_old_single_file_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old_log = dir.path().join("raft-log.redb");
    std::fs::write(&old_log, b"an old log").expect("write");
    let err = Node::start(1, dir.path(), &fast_settings(), Participation::standalone())
        .await
        .expect_err("must refuse");
    assert!(err.to_string().contains("earlier pkraft build"), "{err}");
    assert_eq!(std::fs::read(&old_log).expect("read"), b"an old log");
    assert!(
        !dir.path().join("raft-log").exists(),
        "nothing new was created"
    );
}

#[tokio::test]
async fn refuses_to_start_over_state_without_its_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let node = start(dir.path(), &fast_settings()).await;
        node.writes()
            .publish(packet(1, 100))
            .await
            .expect("publish");
        node.shutdown().await;
    }
    std::fs::remove_dir_all(dir.path().join("raft-log")).expect("remove log");
    let err = Node::start(1, dir.path(), &fast_settings(), Participation::standalone())
        .await
        .expect_err("must refuse");
    assert!(err.to_string().contains("raft log is empty"), "{err}");
}

#[tokio::test]
async fn refuses_a_data_dir_of_another_node_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    start(dir.path(), &fast_settings()).await.shutdown().await;
    let err = Node::start(2, dir.path(), &fast_settings(), Participation::standalone())
        .await
        .expect_err("must refuse");
    assert!(
        err.to_string().contains("belongs to node 1, not node 2"),
        "{err}"
    );
    // The rightful owner still starts.
    start(dir.path(), &fast_settings()).await.shutdown().await;
}

#[tokio::test]
async fn committed_index_is_persisted() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let node = start(dir.path(), &fast_settings()).await;
        for seed in 0..3 {
            node.writes()
                .publish(packet(seed, 100))
                .await
                .expect("publish");
        }
        node.shutdown().await;
    }
    let mut log = LogStore::open(&dir.path().join("raft-log")).expect("open log");
    let committed = log.read_committed().await.expect("read committed");
    // Initialization, leader blank entry and three publishes: at least the publishes before the
    // last one are known committed (the last save may still be waiting for the next fsync).
    assert!(committed.is_some_and(|c| c.index >= 3), "{committed:?}");
}

/// Group commit: publishes that arrive together share one log entry, and each still gets its own
/// outcome. On the current-thread runtime every spawned publish is queued before the batching
/// task runs, so the grouping is deterministic.
#[tokio::test(flavor = "current_thread")]
async fn concurrent_publishes_share_one_log_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path(), &fast_settings()).await;
    node.writes()
        .publish(packet(0, 100))
        .await
        .expect("warm-up publish");
    let before = node.last_applied_index().expect("applied");

    let mut publishes = tokio::task::JoinSet::new();
    for seed in 1..=50 {
        let node = node.clone();
        publishes.spawn(async move { node.writes().publish(packet(seed, 100)).await });
    }
    // A second version of key 1 in the same batch: the ordering rule applies within the entry.
    let node_for_stale = node.clone();
    publishes.spawn(async move { node_for_stale.writes().publish(packet(1, 50)).await });
    let mut outcomes = Vec::new();
    while let Some(joined) = publishes.join_next().await {
        outcomes.push(joined.expect("task").expect("publish").outcome);
    }
    let stored = outcomes
        .iter()
        .filter(|o| **o == PublishOutcome::Stored)
        .count();
    assert_eq!(stored, 50);
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == PublishOutcome::Stale)
            .count(),
        1
    );
    let after = node.last_applied_index().expect("applied");
    assert_eq!(after - before, 1, "51 publishes, one log entry");
    node.shutdown().await;
}

/// A full publish queue answers at once instead of queueing without bound. (On the current-thread
/// runtime all three are queued before the batching task runs.)
#[tokio::test(flavor = "current_thread")]
async fn a_full_publish_queue_is_unavailable_not_unbounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings {
        publish_queue_max: 2,
        ..fast_settings()
    };
    let node = start(dir.path(), &settings).await;
    let (a, b, c) = tokio::join!(
        node.writes().publish(packet(1, 100)),
        node.writes().publish(packet(2, 100)),
        node.writes().publish(packet(3, 100)),
    );
    assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
    match c {
        Err(pkraft_raft::PublishError::Unavailable(reason)) => {
            assert!(
                reason.to_string().contains("too many publishes"),
                "{reason}"
            )
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    node.shutdown().await;
}

/// Applies commit without fsync, so after a crash the state can lag the fsynced log. Goal: a
/// restarted node applies what its log holds before `Node::start` returns, so it never serves
/// older data than it acknowledged. Method: after a clean stop, append an entry to the log that
/// the state never applied (what a crash leaves behind), restart, and read the store at once
/// (no await in between, on the current-thread runtime).
#[tokio::test(flavor = "current_thread")]
async fn a_restart_applies_log_entries_the_state_lacks_before_returning() {
    use openraft::storage::RaftLogStorageExt;
    use openraft::{Entry, EntryPayload, LogId};
    use pkraft_types::Command;

    let dir = tempfile::tempdir().expect("tempdir");
    start(dir.path(), &fast_settings()).await.shutdown().await;
    {
        let mut log = LogStore::open(&dir.path().join("raft-log")).expect("open log");
        let last = log
            .get_log_state()
            .await
            .expect("state")
            .last_log_id
            .expect("an entry");
        let unapplied = Entry::<pkraft_raft::TypeConfig> {
            log_id: LogId::new(last.leader_id, last.index + 1),
            payload: EntryPayload::Normal(Command::Publish {
                leader_time_micros: 1,
                packets: vec![packet(7, 100).into()],
            }),
        };
        log.blocking_append([unapplied]).await.expect("append");
    }
    let node = start(dir.path(), &fast_settings()).await;
    let key = keypair(7).public_key().to_bytes();
    assert!(
        node.store().get(&key).expect("read").is_some(),
        "the entry the state lacked is applied before start returns"
    );
    node.shutdown().await;
}

/// The committed id is written by a task of its own, at most once a second. Goal: after a burst
/// of commits and then silence, the latest id reaches the disk without a clean stop (a crash then
/// re-applies up to it). Method: two saves in quick succession, wait out the interval, close the
/// log without `flush`, reopen it and read what is on disk.
#[tokio::test]
async fn the_latest_committed_id_reaches_the_disk_without_a_stop() {
    use openraft::storage::RaftLogStorage;
    use openraft::{CommittedLeaderId, LogId};

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("raft-log");
    let committed = |index| Some(LogId::new(CommittedLeaderId::new(1, 1), index));
    {
        let mut log = LogStore::open(&path).expect("open log");
        log.save_committed(committed(5)).await.expect("save");
        log.save_committed(committed(9)).await.expect("save");
        // Bounded: one interval (1 s) plus slack for the write.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
    }
    let mut log = LogStore::open(&path).expect("reopen log");
    let on_disk = log.read_committed().await.expect("read committed");
    assert_eq!(on_disk, committed(9));
}
