//! [`Silenced`]: the voters a handing-over leader sends nothing to.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use pkraft_raft_storage::NodeId;

/// The voters a handing-over leader sends no `append-entries` (heartbeats included) to, shared
/// with the peer network.
#[derive(Debug, Clone, Default)]
pub struct Silenced(Arc<Mutex<BTreeSet<NodeId>>>);

impl Silenced {
    pub fn contains(&self, node: NodeId) -> bool {
        self.0.lock().is_ok_and(|silenced| silenced.contains(&node))
    }

    pub fn set(&self, nodes: &[NodeId]) {
        if let Ok(mut silenced) = self.0.lock() {
            *silenced = nodes.iter().copied().collect();
        }
    }
}
