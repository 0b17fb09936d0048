//! Who leads, and whether this node may still act as leader: since when it leads, whether a quorum
//! still accepts it (`quorum`), and whether it is handing its leadership over (`handover`). The
//! write path asks before every batch it proposes.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::NodeId;
use crate::quorum::QuorumContact;

/// The leadership state a node keeps beside openraft's.
#[derive(Debug, Default)]
pub(crate) struct Leadership {
    /// When this node last became the leader (see `handover`: its vote is granted to another
    /// node only once it has led for `election_timeout_max`).
    since: Mutex<Option<Instant>>,
    /// When the followers last accepted this node as leader; the peer network records it.
    quorum_contact: QuorumContact,
    /// Set while this node hands its leadership over (see `handover`): for good when it stops,
    /// for the handover's length when it is low on disk.
    handing_over: AtomicBool,
    /// Set while a handover holds this node's elections (see `handover`); PreVote's election
    /// timer (`pre_vote`) stands for nothing meanwhile.
    elections_paused: AtomicBool,
    /// Held for a handover's length: one at a time (a stop waits for a low-disk one).
    handover_lock: tokio::sync::Mutex<()>,
    /// Voters this leader stops replicating to while it hands over (see `handover`); the peer
    /// network reads it.
    silenced: Silenced,
}

impl Leadership {
    /// Where the peer network records accepted `append-entries` (clone it for a handle).
    pub(crate) fn quorum_contact(&self) -> &QuorumContact {
        &self.quorum_contact
    }

    /// A handle for the peer network: the voters it must not send `append-entries` to.
    pub(crate) fn silenced(&self) -> Silenced {
        self.silenced.clone()
    }

    /// Whether this node is handing its leadership over: it takes no more publishes as leader.
    pub(crate) fn handing_over(&self) -> bool {
        self.handing_over.load(Ordering::SeqCst)
    }

    /// From now on this node takes no more publishes as leader, until `end_handover`.
    pub(crate) fn start_handover(&self) {
        self.handing_over.store(true, Ordering::SeqCst);
    }

    /// This node may take publishes as leader again (a handover that leaves it running ended).
    pub(crate) fn end_handover(&self) {
        self.handing_over.store(false, Ordering::SeqCst);
    }

    /// Whether this node's elections are held (see `elections_paused`).
    pub(crate) fn elections_paused(&self) -> bool {
        self.elections_paused.load(Ordering::SeqCst)
    }

    /// Held by whoever hands leadership over (see `handover`).
    pub(crate) fn handover_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.handover_lock
    }

    /// Holds this node's elections (`true`, a handover) or lets them run again.
    pub(crate) fn pause_elections(&self, paused: bool) {
        self.elections_paused.store(paused, Ordering::SeqCst);
    }

    /// When this node last became the leader, if it leads.
    pub(crate) fn since(&self) -> Option<Instant> {
        self.since.lock().ok().and_then(|since| *since)
    }

    /// Records whether this node leads (from now on, if it does).
    pub(crate) fn set_leading(&self, leading: bool) {
        if let Ok(mut since) = self.since.lock() {
            *since = leading.then(Instant::now);
        }
    }
}

/// The voters a handing-over leader sends no `append-entries` (heartbeats included) to, shared
/// with the peer network.
#[derive(Debug, Clone, Default)]
pub(crate) struct Silenced(Arc<Mutex<BTreeSet<NodeId>>>);

impl Silenced {
    pub(crate) fn contains(&self, node: NodeId) -> bool {
        self.0.lock().is_ok_and(|silenced| silenced.contains(&node))
    }

    pub(crate) fn set(&self, nodes: &[NodeId]) {
        if let Ok(mut silenced) = self.0.lock() {
            *silenced = nodes.iter().copied().collect();
        }
    }
}
