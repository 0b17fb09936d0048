//! The voters of the membership a node knows, read from openraft's metrics (every configuration
//! of a joint membership): for the parts that ask every voter something (clocks, the scrub).

use openraft::Raft;

use crate::{NodeId, TypeConfig};

/// The voters of the membership `raft` knows.
pub(crate) fn ids(raft: &Raft<TypeConfig>) -> Vec<NodeId> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    metrics.membership_config.membership().voter_ids().collect()
}

/// The voters other than `me`, with their peer addresses.
pub(crate) fn others(raft: &Raft<TypeConfig>, me: NodeId) -> Vec<(NodeId, String)> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    membership
        .voter_ids()
        .filter(|id| *id != me)
        .filter_map(|id| Some((id, membership.get_node(&id)?.addr.clone())))
        .collect()
}

/// Whether the membership has a voter other than `me`: a copy of the log and the state to
/// repair from.
pub(crate) fn has_others(raft: &Raft<TypeConfig>, me: NodeId) -> bool {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    metrics
        .membership_config
        .membership()
        .voter_ids()
        .any(|voter| voter != me)
}
