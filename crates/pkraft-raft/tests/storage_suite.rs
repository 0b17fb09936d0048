//! Goal: the log store and state machine meet openraft's storage contract.
//! Method: openraft's own conformance suite (`openraft::testing::Suite`), every sub-test on fresh
//! files in a new temp dir; once with the production segment size and once with segments of a
//! few hundred bytes, so that appends, truncations and purges cross segment files.

use openraft::testing::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb, StorageError, StorageIOError};
use pkraft_raft::log_store::LogStore;
use pkraft_raft::state_machine::StateMachine;
use pkraft_raft::{NodeId, TypeConfig};
use pkraft_store::Store;

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
