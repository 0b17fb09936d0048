//! Whether a leader still reaches a quorum: the time each peer last accepted this node's
//! `append-entries` (heartbeats included), as the peer network saw the answers.
//!
//! openraft 0.9 keeps a leader leading while it is cut off from every follower (it has no
//! check-quorum), and its own `millis_since_quorum_ack` metric is computed only when the core
//! publishes metrics for some other event, so reading it between events gives an old value. The
//! batcher asks this instead (once per batch):
//! a leader that has not heard a quorum accept it for longer than the leader lease
//! (`election_timeout_max`) answers publishes 503 at once rather than proposing entries that
//! cannot commit until the partition heals (the followers may have elected another leader by
//! then).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pkraft_raft_storage::NodeId;
use tokio::time::Instant;

/// Last accepted `append-entries` per peer, shared by the peer network and the node.
#[derive(Debug, Clone, Default)]
pub struct QuorumContact {
    last_accepted: Arc<Mutex<HashMap<NodeId, Instant>>>,
}

impl QuorumContact {
    /// `peer` accepted this node as its leader just now.
    pub fn record(&self, peer: NodeId) {
        if let Ok(mut last) = self.last_accepted.lock() {
            last.insert(peer, Instant::now());
        }
    }

    /// How long ago a quorum of `voters` (this node, `me`, counting as always in touch) last
    /// accepted this node; `None` if a quorum never did.
    pub fn age(&self, me: NodeId, voters: &[NodeId]) -> Option<Duration> {
        let quorum = voters.len() / 2 + 1;
        let others_needed = quorum.saturating_sub(usize::from(voters.contains(&me)));
        if others_needed == 0 {
            return Some(Duration::ZERO);
        }
        let last = self.last_accepted.lock().ok()?;
        let mut ages: Vec<Duration> = voters
            .iter()
            .filter(|id| **id != me)
            .filter_map(|id| last.get(id).map(Instant::elapsed))
            .collect();
        ages.sort();
        ages.get(others_needed - 1).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_voter_is_its_own_quorum() {
        assert_eq!(QuorumContact::default().age(1, &[1]), Some(Duration::ZERO));
    }

    #[test]
    fn a_quorum_needs_that_many_peers_heard_from() {
        let contact = QuorumContact::default();
        assert_eq!(contact.age(1, &[1, 2, 3]), None, "no peer heard from");
        contact.record(2);
        assert!(
            contact.age(1, &[1, 2, 3]).is_some(),
            "1 of 2 peers is a quorum of 3"
        );
        assert_eq!(
            contact.age(1, &[1, 2, 3, 4, 5]),
            None,
            "5 voters need 2 peers"
        );
        contact.record(3);
        assert!(contact.age(1, &[1, 2, 3, 4, 5]).is_some());
        // A learner's answers do not count toward the voters' quorum.
        assert_eq!(contact.age(1, &[1, 4, 5]), None);
    }
}
