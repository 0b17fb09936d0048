//! [`Handles`]: what the node's parts are made from. Each part keeps clones of the handles it
//! uses (the Raft handle, the replica and the peer client are cheap to clone: each is a handle
//! on shared state), so no part holds, or imports, the node. The clones of the replica's and
//! the log's handles are counted ([`Handles::held`]): at shutdown the node waits until
//! openraft's are gone too, and only its own are left (`Node::shutdown`).

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use openraft::Raft;
use pkraft_raft_storage::log_store::LogStore;
use pkraft_state::Store;

use crate::disk_space::DiskSpace;
use crate::metrics::NodeMetrics;
use crate::peer::PeerClient;
use crate::{NodeId, TypeConfig};

/// The node's handles, fixed at start.
pub(crate) struct Handles {
    pub(crate) id: NodeId,
    pub(crate) raft: Raft<TypeConfig>,
    /// The local replica: cloned through [`Handles::store`], counted.
    pub(crate) store: Store,
    /// The log: cloned through [`Handles::log_store`], counted.
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
    /// The clones of `store` and `log_store` handed out ([`Handles::held`]).
    pub(crate) cloned: Cell<HeldHandles>,
}

impl Handles {
    /// A clone of the replica's handle for a part or the node, counted in [`Handles::held`].
    pub(crate) fn store(&self) -> Store {
        self.cloned.set(self.cloned.get().with_store());
        self.store.clone()
    }

    /// A clone of the log's handle for a part or the node, counted in [`Handles::held`].
    pub(crate) fn log_store(&self) -> LogStore {
        self.cloned.set(self.cloned.get().with_log());
        self.log_store.clone()
    }

    /// The clones handed out so far: the node's and its parts' own, which stay open as long as
    /// the node (this struct's own are dropped with it).
    pub(crate) fn held(&self) -> HeldHandles {
        self.cloned.get()
    }
}

/// Handles of the replica's and the log's files held by the node and its parts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HeldHandles {
    pub(crate) store: usize,
    pub(crate) log_store: usize,
}

impl HeldHandles {
    fn with_store(self) -> HeldHandles {
        HeldHandles {
            store: self.store + 1,
            ..self
        }
    }

    fn with_log(self) -> HeldHandles {
        HeldHandles {
            log_store: self.log_store + 1,
            ..self
        }
    }
}
