//! Goal: the log store and state machine meet openraft's storage contract.
//! Method: openraft's own conformance suite (`openraft::testing::Suite`), every sub-test on fresh
//! files in a new temp dir; once with the production segment size and once with segments of a
//! few hundred bytes, so that appends, truncations and purges cross segment files.

use openraft::testing::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb, StorageError, StorageIOError};
use pkraft_raft_storage::log_store::LogStore;
use pkraft_raft_storage::state_machine::StateMachine;
use pkraft_raft_storage::{NodeId, TypeConfig};
use pkraft_state::Store;

/// Fresh storage whose log starts a new segment at `segment_bytes` (`None`: the default size).
struct FreshStorage {
    segment_bytes: Option<u64>,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for FreshStorage {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let io = |e: &dyn std::fmt::Display| -> StorageError<NodeId> {
            StorageIOError::new(
                ErrorSubject::Store,
                ErrorVerb::Write,
                openraft::AnyError::error(e),
            )
            .into()
        };
        let dir = tempfile::tempdir().map_err(|e| io(&e))?;
        let log_dir = dir.path().join("raft-log");
        let log = match self.segment_bytes {
            Some(bytes) => LogStore::open_with_segment_size(&log_dir, bytes)?,
            None => LogStore::open(&log_dir)?,
        };
        let store = Store::open(&dir.path().join("state.redb")).map_err(|e| io(&e))?;
        let state_machine = StateMachine::open(store, dir.path().join("snapshot"))?;
        Ok((dir, log, state_machine))
    }
}

// A plain #[test]: the suite runs its own tokio runtime for each sub-test.
#[test]
fn openraft_storage_conformance_suite() {
    Suite::test_all(FreshStorage {
        segment_bytes: None,
    })
    .expect("storage passes the openraft conformance suite");
}

#[test]
fn openraft_storage_conformance_suite_with_tiny_log_segments() {
    Suite::test_all(FreshStorage {
        segment_bytes: Some(300),
    })
    .expect("storage passes the openraft conformance suite with tiny segments");
}

/// The invariant the store relies on, asserted as etcd does: the applied index never goes back.
/// An entry applied a second time could store an older packet over a newer one. Every build
/// refuses it (an assertion in the apply): the apply fails, the open transaction it was in is
/// aborted, never committed, and the store refuses every apply after it.
#[test]
fn an_entry_at_or_below_the_applied_index_is_never_applied_again() {
    use openraft::storage::RaftStateMachine;

    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut state_machine = fresh_state_machine(dir.path());
        let entry = |index| blank(1, index);
        state_machine
            .apply([entry(1), entry(2)])
            .await
            .expect("entries in order apply");
        let again = state_machine.apply([entry(2)]).await;
        let error = again.expect_err("an entry applied again must be refused");
        assert!(error.to_string().contains("panicked"), "{error}");
        assert!(error.to_string().contains("never go back"), "{error}");
        let next = state_machine.apply([entry(3)]).await;
        let error = next.expect_err("no apply after a failed one");
        assert!(error.to_string().contains("panicked"), "{error}");
        let (applied, _) = state_machine.applied_state().await.expect("applied state");
        assert_eq!(applied.map(|log_id| log_id.index), Some(2));
    });
}

/// A fresh state machine in `dir`, and a blank entry of `term` at `index`.
fn fresh_state_machine(dir: &std::path::Path) -> StateMachine {
    let store = Store::open(&dir.join("state.redb")).expect("open the store");
    StateMachine::open(store, dir.join("snapshot")).expect("open")
}

fn blank(term: u64, index: u64) -> openraft::Entry<TypeConfig> {
    openraft::Entry {
        log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(term, 1), index),
        payload: openraft::EntryPayload::Blank,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// `LogId`s order by term first: an entry at a lower index under a later term compares as
/// newer, yet applying it would apply index 2 a second time. The apply refuses it.
#[test]
fn a_lower_index_under_a_later_term_is_never_applied() {
    use openraft::storage::RaftStateMachine;

    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut state_machine = fresh_state_machine(dir.path());
        state_machine
            .apply([blank(1, 1), blank(1, 2), blank(1, 3)])
            .await
            .expect("entries in order apply");
        let error = state_machine
            .apply([blank(2, 2)])
            .await
            .expect_err("index 2 again, under term 2, must be refused");
        assert!(error.to_string().contains("never go back"), "{error}");
        let (applied, _) = state_machine.applied_state().await.expect("applied state");
        assert_eq!(applied.map(|log_id| log_id.index), Some(3));
    });
}

/// Entries handed to one apply are consecutive: index 2 missing from [1, 3] would leave a
/// committed entry unapplied on this replica alone.
#[test]
fn entries_applied_together_have_no_gap() {
    use openraft::storage::RaftStateMachine;

    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut state_machine = fresh_state_machine(dir.path());
        let error = state_machine
            .apply([blank(1, 1), blank(1, 3)])
            .await
            .expect_err("a gap must be refused");
        assert!(error.to_string().contains("consecutive"), "{error}");
        let (applied, _) = state_machine.applied_state().await.expect("applied state");
        assert_eq!(applied, None, "nothing of the refused call is applied");
    });
}

/// A snapshot behind what a replica applied would undo applies it answered for: installing one
/// (the fault: openraft itself only installs snapshots past its committed index) is refused,
/// and the replica keeps its applied index.
#[test]
fn a_snapshot_behind_the_applied_index_is_never_installed() {
    use openraft::RaftSnapshotBuilder;
    use openraft::storage::RaftStateMachine;

    runtime().block_on(async {
        let leader_dir = tempfile::tempdir().expect("a temp dir");
        let mut leader = fresh_state_machine(leader_dir.path());
        leader
            .apply([blank(1, 1), blank(1, 2)])
            .await
            .expect("apply");
        let mut snapshot = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("a snapshot through index 2");

        let follower_dir = tempfile::tempdir().expect("a temp dir");
        let mut follower = fresh_state_machine(follower_dir.path());
        follower
            .apply([blank(1, 1), blank(1, 2), blank(1, 3), blank(1, 4)])
            .await
            .expect("apply");
        let mut received = follower.begin_receiving_snapshot().await.expect("receive");
        tokio::io::AsyncSeekExt::seek(&mut *snapshot.snapshot, std::io::SeekFrom::Start(0))
            .await
            .expect("rewind");
        tokio::io::copy(&mut *snapshot.snapshot, &mut *received)
            .await
            .expect("copy the snapshot");
        let error = follower
            .install_snapshot(&snapshot.meta, received)
            .await
            .expect_err("a snapshot through 2 on a replica at 4");
        assert!(error.to_string().contains("never goes back"), "{error}");
        let (applied, _) = follower.applied_state().await.expect("applied state");
        assert_eq!(applied.map(|log_id| log_id.index), Some(4));
    });
}
