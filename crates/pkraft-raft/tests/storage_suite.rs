//! Goal: the redb log store and state machine meet openraft's storage contract.
//! Method: openraft's own conformance suite (`openraft::testing::Suite`), every sub-test on fresh
//! files in a new temp dir.

use openraft::testing::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb, StorageError, StorageIOError};
use pkraft_raft::log_store::LogStore;
use pkraft_raft::state_machine::StateMachine;
use pkraft_raft::{NodeId, TypeConfig};
use pkraft_store::Store;

struct FreshStorage;

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
        let log = LogStore::open(&dir.path().join("raft-log.redb"))?;
        let store = Store::open(&dir.path().join("state.redb")).map_err(|e| io(&e))?;
        let state_machine = StateMachine::open(store, dir.path().join("snapshot"))?;
        Ok((dir, log, state_machine))
    }
}

// A plain #[test]: the suite runs its own tokio runtime for each sub-test.
#[test]
fn openraft_storage_conformance_suite() {
    Suite::test_all(FreshStorage).expect("storage passes the openraft conformance suite");
}
