//! [`Core`]: what every part of the node is made from, fixed at start and shared through one
//! `Arc`. A part keeps `core: Arc<Core>` and the `Arc`s of the parts below it it asks, never a
//! copy of a handle in the core, so the node's own hold on the replica's and the log's files is
//! exactly the core's: one handle each ([`Core::files_released`]).
//!
//! Rules that keep the stop exact (`Node::shutdown`):
//! - the core holds nothing above itself: no part, no `Node`, no task, no closure that captures a
//!   part (an `Arc` cycle would keep the files open for good);
//! - a spawned future or a `spawn_blocking` closure clones the one handle it needs
//!   (`core.store.clone()`), never the `Arc<Core>`: its clone is then counted while it runs, and
//!   the stop waits for it instead of flushing beside it.
//! - The module is not called `core`: that name is the `core` crate's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::Raft;
use pkraft_raft_storage::log_store::LogStore;
use pkraft_state::Store;
use tokio::sync::watch;

use crate::disk_space::DiskSpace;
use crate::metrics::NodeMetrics;
use crate::peer::PeerClient;
use crate::settings::Participation;
use crate::{NodeId, TypeConfig};

/// The node's handles and fixed settings, shared by the node and its parts.
pub(crate) struct Core {
    pub(crate) id: NodeId,
    /// This node's address, secret, TLS and how it joins.
    pub(crate) cluster: Participation,
    pub(crate) raft: Raft<TypeConfig>,
    /// The local replica.
    pub(crate) store: Store,
    /// The log: known released by openraft at shutdown, and the commit index.
    pub(crate) log_store: LogStore,
    /// The node's peer client (openraft's replication has its own).
    pub(crate) peers: PeerClient,
    pub(crate) metrics: Arc<NodeMetrics>,
    /// Whether the data dir's disk has room for writes (`raft.min_free_disk_mib`).
    pub(crate) disk_space: Arc<DiskSpace>,
    /// `raft.publish_timeout`: every wait on the way to a commit or a read barrier.
    pub(crate) publish_timeout: Duration,
    /// The leader lease of openraft 0.9 (`raft.election_timeout_max`).
    pub(crate) lease: Duration,
    pub(crate) data_dir: PathBuf,
    /// Largest peer request body: a full `append-entries` of the biggest entries.
    pub(crate) peer_body_max: usize,
    /// Set when the node must stop although Raft runs on (the scrub found damage that a
    /// restart repairs); `Node::wait_fatal` reports it.
    pub(crate) stop_reason: watch::Sender<Option<String>>,
}

impl Core {
    /// Whether every handle of the replica's and the log's files but the core's own is gone:
    /// openraft's (its state machine worker, a snapshot build) and any a task or a blocking
    /// read of a part still held. Until then a flush could race a read, and the files stay
    /// locked against a reopen in this process.
    pub(crate) fn files_released(&self) -> bool {
        self.store.open_handles() <= 1 && self.log_store.open_handles() <= 1
    }
}
