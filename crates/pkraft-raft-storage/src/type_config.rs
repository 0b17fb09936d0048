//! The openraft type configuration.

use pkraft_types::{Command, PublishOutcome};
use serde::{Deserialize, Serialize};

/// Node ids are assigned by operators and never reused.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// pkraft's Raft types: log entries carry [`Command`]s; applying one gives [`ApplyResult`].
    pub TypeConfig:
        D = Command,
        R = ApplyResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        // A file: snapshots are built into, sent from, received into and installed from files,
        // never held in memory (`snapshot_file`).
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// What applying one log entry produced: one outcome per published packet, in order, and the
/// number of packets an expiry deleted. Empty for blank and membership entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    pub outcomes: Vec<PublishOutcome>,
    pub expired: u64,
}
