//! [`Handles`]: what the node's parts are made from. Each part keeps clones of the handles it
//! uses (the Raft handle, the replica and the peer client are cheap to clone: each is a handle
//! on shared state), so no part holds, or imports, the node.

use std::sync::Arc;
use std::time::Duration;

use openraft::Raft;
use pkraft_storage::log_store::LogStore;
use pkraft_store::Store;

use crate::disk_space::DiskSpace;
use crate::metrics::NodeMetrics;
use crate::peer::PeerClient;
use crate::{NodeId, TypeConfig};

/// The node's handles, fixed at start.
pub(crate) struct Handles {
    pub(crate) id: NodeId,
    pub(crate) raft: Raft<TypeConfig>,
    /// The local replica.
    pub(crate) store: Store,
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
}
