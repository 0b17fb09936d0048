//! The storage side of a node: what openraft's storage traits need and nothing of the node
//! service. It depends on neither `pkraft-raft` (the node: the write path, leadership, reads,
//! membership, the peer network) nor any service crate; the node builds on it, as openraft's
//! examples and databend-meta split their store from their node. What the state machine has to
//! tell the node as it works (metrics, the DHT outbox, the snapshot schedule) goes through
//! [`state_machine::StateEvents`], which the node implements.
//!
//! - [`type_config`]: the openraft `TypeConfig` (log payload = [`pkraft_types::Command`]).
//! - [`log_store`]: the Raft log (append-only segment files) and its vote and purge point, in
//!   `raft-log/`.
//! - [`state_machine`]: applies committed entries to [`pkraft_state::Store`] (`state.redb`);
//!   builds and installs snapshots, keeping the current one in `snapshot/`.
//! - `snapshot_file`: the current snapshot on disk, replaced atomically.
//! - `snapshot_data`: a snapshot's file as openraft reads and writes it (tokio's; std's, inline,
//!   in a simulation).
//! - `snapshot_receipt`: a snapshot received from the leader, checked chunk by chunk.
//! - `state_repair`: a damaged `state.redb` is set aside and rebuilt (from the node's snapshot
//!   and log, or from the cluster).
//! - `codec`: postcard encoding and the blocking-pool helper for storage work.
//! - [`backup`]: backup files of a store, restore into a new data dir, and the offline check of
//!   a stopped node's data dir (`pkraft backup`, `restore`, `verify`).
//!
//! What the node asks of its disk and store before it writes, and what the replicas keep for the
//! DHT publisher:
//! - [`disk_space`]: the free space of the data dir's file system, measured once a second, and
//!   the refusals that follow from it (`raft.min_free_disk_mib`, the new-key reserve, a
//!   snapshot's install).
//! - [`store_cap`]: the cap on stored packets and the new keys under way against it.
//! - [`machine_memory`]: the memory the process may use (the machine's, or its cgroups' limit)
//!   and the state cache derived from it when `raft.state_cache_mib` is unset.
//! - [`dht_outbox`]: the keys stored and not yet put to the Mainline DHT, fed by the state
//!   machine as it applies (every replica keeps it, so a new leader carries on).

// openraft's `StorageError` (224 bytes) is the error type of the storage traits implemented here;
// the helpers that feed them return it too. Boxing it in between would only add conversions on
// paths that run once per IO, not per packet.
#![allow(clippy::result_large_err)]

pub mod backup;
pub mod codec;
pub mod dht_outbox;
pub mod disk_space;
pub mod log_store;
pub mod machine_memory;
pub mod snapshot_data;
pub mod snapshot_file;
pub mod snapshot_receipt;
pub mod state_machine;
pub mod state_repair;
pub mod store_cap;
pub mod type_config;

pub use type_config::{ApplyResult, NodeId, TypeConfig};

/// The Raft log's directory inside the data dir.
pub const LOG_DIR: &str = "raft-log";
/// The state store's file inside the data dir.
pub const STATE_FILE: &str = "state.redb";
/// The snapshot directory inside the data dir.
pub const SNAPSHOT_DIR: &str = "snapshot";

/// Makes file creations, renames and removals in `dir` durable (an `fsync` of the directory).
pub fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    pkraft_types::world::sync_all(&std::fs::File::open(dir)?)
}

/// The file a snapshot from the leader is received into, in the data dir `data_dir`.
pub fn incoming_snapshot_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir
        .join(SNAPSHOT_DIR)
        .join(snapshot_file::INCOMING_TMP)
}

/// What damaged data was found in (the label of `pkraft_storage_damage_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damaged {
    Log,
    Snapshot,
    SnapshotTransfer,
    State,
    /// A row of compiled DNS answers that does not match its packet (written again from it).
    Answers,
}

impl Damaged {
    pub fn label(self) -> &'static str {
        match self {
            Damaged::Log => "log",
            Damaged::Snapshot => "snapshot",
            Damaged::SnapshotTransfer => "snapshot_transfer",
            Damaged::State => "state",
            Damaged::Answers => "answers",
        }
    }
}

#[cfg(test)]
mod tests {
    /// ARCHITECTURE.md: storage depends on neither the node (pkraft-raft) nor a service crate,
    /// only on the state store, the domain types and where blocking work runs (pkraft-tasks'
    /// `blocking`, inline in a simulation). A new pkraft dependency here must be a decision,
    /// not a slip.
    #[test]
    fn the_storage_crate_depends_on_store_types_and_tasks_only() {
        let ours = pkraft_testkit::manifest::pkraft_dependencies(include_str!("../Cargo.toml"));
        assert_eq!(ours, ["pkraft-state", "pkraft-tasks", "pkraft-types"]);
    }
}
