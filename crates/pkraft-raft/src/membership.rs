//! Membership: initializing a cluster, joining one, adding, promoting and removing nodes, and the
//! cluster status operators see.
//!
//! Every change is made by the leader. A node asked for a change it cannot make forwards it to the
//! leader once over the peer network; the leader makes changes one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use openraft::error::{ChangeMembershipError, ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, Membership, RaftMetrics, ServerState};
use serde::{Deserialize, Serialize};

use crate::NodeId;
use crate::cluster_clock::ClusterClock;
use crate::leadership::Leadership;
use crate::node_core::Core;
use crate::peer::{CallError, MembershipChange, path};
use crate::reads::Reads;
use crate::reason::Reason;
use crate::request_error::{RequestError, ask};
pub use crate::status_wire::NodeStatus;
use crate::status_wire::PeerNodeStatus;
use crate::voters;

/// How long the leader waits for a new node to catch up before making it a voter. The joining
/// node asks again if this passes (a large snapshot on a slow link).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// A learner within this many entries of the leader's log counts as caught up.
const CATCH_UP_SLACK_ENTRIES: u64 = 64;
/// Pause between rounds of join requests while no member admits this node.
const JOIN_RETRY: Duration = Duration::from_secs(1);
/// Time one join request may take: catching up plus promotion.
const JOIN_CALL_TIMEOUT: Duration = Duration::from_secs(45);
/// Time one membership change may take on the leader, waiting for the changes queued before it
/// included; shorter than `JOIN_CALL_TIMEOUT`, so the caller hears why.
const MEMBERSHIP_CHANGE_TIMEOUT: Duration = Duration::from_secs(40);
/// Time a status probe of one member may take.
pub(crate) const STATUS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A membership request as sent over the peer network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MembershipRequest {
    pub change: MembershipChange,
    /// Already forwarded once: the receiver must be the leader, not forward again.
    pub forwarded: bool,
}

/// One member as the cluster status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub addr: String,
    /// A voter in every voter set of the configuration. While a change is under way (see
    /// [`MembershipStatus::joint`]) a node being added or removed is not counted as one.
    pub voter: bool,
    /// The member's own report, if it answered.
    pub status: Option<NodeStatus>,
    /// Why it did not answer.
    pub error: Option<String>,
    /// Entries the member's log is behind the leader's: as the leader tracks it when the
    /// answering node leads, else from the leader's and the member's own reports.
    pub lag_entries: Option<u64>,
}

/// The membership configuration the answering node uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipStatus {
    /// Log index of the entry that holds it; a member whose applied index has reached it uses
    /// the same configuration.
    pub log_index: Option<u64>,
    /// A voter change is under way: the old and the new voter sets both need a majority until
    /// the leader commits the new set alone. A configuration that stays joint (its leader died
    /// mid-change) is finished by the next membership change: the join of the node being added
    /// (it asks again after a restart), or `remove` again for a node being removed.
    pub joint: bool,
}

/// The cluster as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node: NodeStatus,
    /// Absent from older servers' answers.
    #[serde(default)]
    pub membership: MembershipStatus,
    pub members: Vec<MemberStatus>,
}

/// Why an operator's membership request failed; the admin API sends its text on as its JSON
/// error. A request is made by the leader, so its reasons mostly come back over the peer wire
/// as text ([`crate::peer::PeerError`]); one found on this node keeps its cause.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MembershipError {
    /// Already initialized (a second `init` would start a second cluster).
    #[error(transparent)]
    AlreadyInitialized(Reason),
    /// The request cannot be done as asked.
    #[error(transparent)]
    Refused(Reason),
    /// No leader, or it did not answer; retry later.
    #[error(transparent)]
    Unavailable(Reason),
}

impl From<RequestError> for MembershipError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Refused(reason) => MembershipError::Refused(reason),
            other => MembershipError::Unavailable(Reason::of(other)),
        }
    }
}

/// The node's part in its cluster's membership: initializing it, joining it, the changes this
/// node makes or forwards to the leader, and the status of every member.
pub struct Members {
    /// The node's handles and fixed settings (`node_core`).
    pub(crate) core: Arc<Core>,
    leadership: Arc<Leadership>,
    reads: Arc<Reads>,
    clock: Arc<ClusterClock>,
    /// Serializes the membership changes this node makes as leader: openraft refuses a change
    /// while another is in progress, and operators expect them queued, not refused.
    change_lock: tokio::sync::Mutex<()>,
}

impl Members {
    pub(crate) fn new(
        core: &Arc<Core>,
        leadership: Arc<Leadership>,
        reads: Arc<Reads>,
        clock: Arc<ClusterClock>,
    ) -> Members {
        Members {
            core: core.clone(),
            leadership,
            reads,
            clock,
            change_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// `pkraft cluster init`: makes this node the only voter of a new cluster.
    pub async fn initialize(&self) -> Result<(), MembershipError> {
        let members =
            BTreeMap::from([(self.core.id, BasicNode::new(&self.core.cluster.advertise))]);
        match self.core.raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(node_id = self.core.id, "initialized a new cluster");
                Ok(())
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                Err(MembershipError::AlreadyInitialized(Reason::caused(
                    "this node is already part of a cluster",
                    e,
                )))
            }
            Err(e) => Err(MembershipError::Unavailable(Reason::of(e))),
        }
    }

    /// Makes `change` through the leader: here if this node leads, else forwarded to it.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), MembershipError> {
        self.handle_membership(MembershipRequest {
            change,
            forwarded: false,
        })
        .await
        .map_err(MembershipError::from)
    }

    /// A membership request from the admin API or a peer.
    pub(crate) async fn handle_membership(
        &self,
        request: MembershipRequest,
    ) -> Result<(), RequestError> {
        // Refused here too, not only on the leader: the answer must not depend on whether a
        // leader is reachable right now.
        if let MembershipChange::Join { node_id, .. } = &request.change {
            self.refuse_removed(*node_id)?;
        }
        if self.leadership.is_leader() {
            return self.change_as_leader(request.change).await;
        }
        let leader = self.leadership.known_leader();
        match leader {
            Some((leader, addr)) if !request.forwarded => {
                let forwarded = MembershipRequest {
                    change: request.change,
                    forwarded: true,
                };
                ask(
                    &self.core.peers,
                    &addr,
                    Some(leader),
                    path::MEMBERSHIP,
                    &forwarded,
                    JOIN_CALL_TIMEOUT,
                )
                .await
                .map_err(|e| RequestError::Unavailable(Reason::of(e)))?
            }
            _ => Err(RequestError::NotLeader {
                leader: leader.map(|(id, _)| id),
            }),
        }
    }

    /// Runs one change, after the changes queued before it, within `MEMBERSHIP_CHANGE_TIMEOUT`
    /// in all (a leader cut off from its quorum never commits one; the lock must not stay held).
    async fn change_as_leader(&self, change: MembershipChange) -> Result<(), RequestError> {
        tokio::time::timeout(MEMBERSHIP_CHANGE_TIMEOUT, async {
            let _serialized = self.change_lock.lock().await;
            self.change_serialized(change).await
        })
        .await
        .map_err(|_| {
            RequestError::Unavailable(
                format!(
                    "the membership change did not complete within {MEMBERSHIP_CHANGE_TIMEOUT:?} \
                 (it may still complete; see `pkraft cluster status`)"
                )
                .into(),
            )
        })?
    }

    async fn change_serialized(&self, change: MembershipChange) -> Result<(), RequestError> {
        // A leader that has removed itself leads on for a moment (openraft's "non-member
        // leader", openraft issue 923): its state is no longer Leader, but its core still takes
        // a change, and appends a membership entry as if it led (openraft 0.9.25's debug
        // assertion "Only leader is allowed to call update_effective_membership()" fires on it;
        // a release build makes the change from outside the cluster). Found by the simulator
        // (seed 3655 from seed 1001, 2026-12-01): a learner's promotion asked of the leader that
        // had just removed itself. The caller asks again, and the next leader makes it.
        if !voters::ids(&self.core.raft).contains(&self.core.id) {
            return Err(RequestError::NotLeader { leader: None });
        }
        match change {
            MembershipChange::Join {
                node_id,
                addr,
                voter,
            } => {
                self.add_learner(node_id, &addr).await?;
                if voter {
                    self.promote(node_id).await?;
                }
                Ok(())
            }
            MembershipChange::Promote { node_id } => self.promote(node_id).await,
            MembershipChange::Remove { node_id } => self.remove(node_id).await,
        }
    }

    async fn add_learner(&self, node_id: NodeId, addr: &str) -> Result<(), RequestError> {
        self.refuse_removed(node_id)?;
        let metrics = self.core.raft.metrics().borrow().clone();
        if let Some(node) = metrics.membership_config.membership().get_node(&node_id) {
            return if node.addr == addr {
                Ok(())
            } else {
                Err(RequestError::Refused(
                    format!(
                        "node id {node_id} is already a member at {}; node ids are never reused",
                        node.addr
                    )
                    .into(),
                ))
            };
        }
        self.core
            .raft
            .add_learner(node_id, BasicNode::new(addr), false)
            .await
            .map_err(change_error)?;
        tracing::info!(node_id, addr, "added a learner");
        Ok(())
    }

    /// Whether `node_id` left the cluster before (as of this node's applied log).
    pub(crate) fn was_removed(&self, node_id: NodeId) -> Result<bool, RequestError> {
        self.core
            .store
            .is_removed_node(node_id)
            .map_err(|e| RequestError::Fatal(Reason::caused("reading the removed node ids", e)))
    }

    /// Refuses a node that was removed, or is being removed (a removal left joint when its
    /// leader died): admitting it would undo the removal.
    fn refuse_removed(&self, node_id: NodeId) -> Result<(), RequestError> {
        if self.was_removed(node_id)? {
            return Err(RequestError::Refused(format!(
                "node id {node_id} was removed from this cluster and node ids are never reused; \
                 give the new node a new node_id and an empty data dir"
            ).into()));
        }
        let metrics = self.core.raft.metrics();
        if is_being_removed(metrics.borrow().membership_config.membership(), node_id) {
            return Err(RequestError::Refused(format!(
                "node {node_id} is being removed from this cluster (the removal was interrupted); \
                 finish it with `pkraft cluster remove --node-id {node_id}`"
            ).into()));
        }
        Ok(())
    }

    async fn promote(&self, node_id: NodeId) -> Result<(), RequestError> {
        let metrics = self.core.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        // A node in the new voter set of a joint configuration is not promoted yet: the change
        // below finishes the joint configuration (openraft moves on from its last voter set).
        if is_full_voter(membership, node_id) {
            return Ok(());
        }
        self.refuse_removed(node_id)?;
        if membership.get_node(&node_id).is_none() {
            return Err(RequestError::Refused(
                format!("node {node_id} is not a member; add it first").into(),
            ));
        }
        self.core
            .raft
            .wait(Some(CATCH_UP_TIMEOUT))
            .metrics(|m| caught_up(m, node_id), "learner catches up")
            .await
            .map_err(|_| {
                RequestError::Unavailable(
                    format!("node {node_id} has not caught up within {CATCH_UP_TIMEOUT:?}").into(),
                )
            })?;
        self.core
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), true)
            .await
            .map_err(change_error)?;
        tracing::info!(node_id, "promoted to voter");
        Ok(())
    }

    async fn remove(&self, node_id: NodeId) -> Result<(), RequestError> {
        let metrics = self.core.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let ids = BTreeSet::from([node_id]);
        let change = if membership.voter_ids().any(|id| id == node_id) {
            ChangeMembers::RemoveVoters(ids)
        } else if membership.get_node(&node_id).is_some() {
            ChangeMembers::RemoveNodes(ids)
        } else {
            return self.removal_committed(node_id).await;
        };
        // `retain: false`: a removed voter does not stay on as a learner.
        self.core
            .raft
            .change_membership(change, false)
            .await
            .map_err(change_error)?;
        tracing::info!(node_id, "removed from the cluster");
        Ok(())
    }

    /// Returns once this node has applied (so the cluster has committed) a membership without
    /// `node_id`, which the membership it holds now already is. That one may not be committed
    /// yet: a change whose leader was cut off from its quorum appends it and gives up at the
    /// timeout, and its next leader may go on from the joint configuration, with the node still
    /// a voter. Answering at once made an operator's `remove` say ok for a removal that did not
    /// hold (found by review of the simulator's removals, 2026-12-01). Bounded by the caller's
    /// `MEMBERSHIP_CHANGE_TIMEOUT`.
    async fn removal_committed(&self, node_id: NodeId) -> Result<(), RequestError> {
        self.core
            .raft
            .wait(None)
            .metrics(
                |metrics| {
                    let held = &metrics.membership_config;
                    let applied = metrics.last_applied.map(|log_id| log_id.index);
                    held.membership().get_node(&node_id).is_none()
                        && held
                            .log_id()
                            .is_none_or(|log_id| applied.is_some_and(|at| at >= log_id.index))
                },
                "the membership without the node committed",
            )
            .await
            .map(|_| ())
            .map_err(|e| RequestError::Unavailable(Reason::caused("waiting for the removal", e)))
    }

    /// This node's own view.
    pub fn local_status(&self) -> NodeStatus {
        let metrics = self.core.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let role = match metrics.state {
            _ if membership.nodes().next().is_none() => "uninitialized",
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "stopped",
        };
        NodeStatus {
            id: self.core.id,
            role: role.to_string(),
            term: metrics.current_term,
            leader: metrics.current_leader,
            last_log_index: metrics.last_log_index,
            applied_index: metrics.last_applied.map(|log_id| log_id.index),
            millis_since_leader_contact: self
                .reads
                .staleness()
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            packets: self.core.store.packet_count().ok(),
            low_on_disk: self.core.disk_space.refusal().is_some(),
            log_repair: self.core.log_store.repair(),
            clock: Some(self.clock.report()),
            build: Some(self.core.cluster.build.clone()),
        }
    }

    /// Asks each of `members` (id, peer address) for its status over the peer network, in
    /// parallel, each within `timeout`.
    pub(crate) async fn probe_statuses(
        &self,
        members: impl Iterator<Item = (NodeId, String)>,
        timeout: Duration,
    ) -> Vec<(NodeId, String, Result<NodeStatus, String>)> {
        let mut probes = tokio::task::JoinSet::new();
        for (id, addr) in members {
            let peers = self.core.peers.clone();
            probes.spawn(async move {
                // Read as a peer of an earlier or later release sends it (`status_wire`).
                let status = peers
                    .call::<(), PeerNodeStatus>(&addr, Some(id), path::STATUS, &(), timeout)
                    .await
                    .map(|status| status.0)
                    .map_err(|e| e.to_string());
                (id, addr, status)
            });
        }
        let mut answers = Vec::new();
        while let Some(joined) = probes.join_next().await {
            if let Ok(answer) = joined {
                answers.push(answer);
            }
        }
        answers
    }

    /// Every member, each asked for its own status over the peer network (in parallel, bounded).
    pub async fn cluster_status(&self) -> ClusterStatus {
        let metrics = self.core.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let membership_status = MembershipStatus {
            log_index: metrics
                .membership_config
                .log_id()
                .map(|log_id| log_id.index),
            joint: membership.get_joint_config().len() > 1,
        };
        let others = membership
            .nodes()
            .filter(|(id, _)| **id != self.core.id)
            .map(|(id, node)| (*id, node.addr.clone()));
        let mut probes = self.probe_statuses(others, STATUS_PROBE_TIMEOUT).await;
        if let Some(node) = membership.get_node(&self.core.id) {
            probes.push((self.core.id, node.addr.clone(), Ok(self.local_status())));
        }
        let mut members = Vec::new();
        for (id, addr, probe) in probes {
            let lag_entries = leader_view_of_lag(&metrics, id);
            let (status, error) = match probe {
                Ok(status) => (Some(status), None),
                Err(error) => (None, Some(error)),
            };
            members.push(MemberStatus {
                id,
                addr,
                voter: is_full_voter(&membership, id),
                status,
                error,
                lag_entries,
            });
        }
        members.sort_by_key(|m| m.id);
        fill_lag_from_reports(&mut members, metrics.current_leader);
        ClusterStatus {
            node: self.local_status(),
            membership: membership_status,
            members,
        }
    }
}

/// Asks the `cluster.join` addresses to admit this node until it is a member in the role it
/// wants. Runs for the life of the node: after a restart it checks again (a node added as a
/// learner that stopped before its promotion asks for the promotion again). A node that
/// already follows a leader (a learner) asks that leader first: the join addresses are where
/// a new node first finds its cluster, and the nodes they name may have been removed since
/// (the simulator's seed 3334 with a planted bug: node 2, a learner whose only join address
/// was node 1, asked node 1 for its promotion for good once node 1 was removed, and every
/// forward of the removed node was refused).
pub(crate) async fn keep_joining(members: Arc<Members>) {
    let want_voter = members.core.cluster.voter;
    let mut failures = 0u64;
    loop {
        if is_member(&members, want_voter) {
            tracing::info!(
                node_id = members.core.id,
                voter = want_voter,
                "this node is a member of the cluster"
            );
            return;
        }
        if is_being_removed(
            members
                .core
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership(),
            members.core.id,
        ) {
            tracing::error!(
                node_id = members.core.id,
                "the cluster refused to admit this node: it is being removed; not asking again"
            );
            return;
        }
        let request = MembershipRequest {
            change: MembershipChange::Join {
                node_id: members.core.id,
                addr: members.core.cluster.advertise.clone(),
                voter: want_voter,
            },
            forwarded: false,
        };
        // The leader this node follows, if it knows one (never itself: a node that leads is a
        // voter), then the join addresses.
        let leader = members
            .leadership
            .known_leader()
            .filter(|(id, _)| *id != members.core.id)
            .map(|(_, addr)| addr);
        let join = &members.core.cluster.join;
        let asked = leader
            .iter()
            .chain(join.iter().filter(|addr| Some(*addr) != leader.as_ref()));
        for addr in asked {
            let answer: Result<Result<(), RequestError>, _> = ask(
                &members.core.peers,
                addr,
                None,
                path::MEMBERSHIP,
                &request,
                JOIN_CALL_TIMEOUT,
            )
            .await;
            match answer {
                Ok(Ok(())) => break,
                // A refusal, or the peer listener's 403 to every request of a removed node.
                Ok(Err(RequestError::Refused(reason))) => {
                    refused_to_admit(&reason, addr);
                    return;
                }
                Err(CallError::Status {
                    status: StatusCode::FORBIDDEN,
                    body: reason,
                    ..
                }) => {
                    refused_to_admit(&reason, addr);
                    return;
                }
                Ok(Err(e)) => log_join_failure(&mut failures, addr, &e),
                Err(e) => log_join_failure(&mut failures, addr, &e),
            }
        }
        // Give the membership entry a moment to reach this node before checking again.
        let waited = members
            .core
            .raft
            .wait(Some(JOIN_RETRY))
            .metrics(|_| is_member(&members, want_voter), "become a member")
            .await;
        if let Err(openraft::metrics::WaitError::ShuttingDown) = waited {
            // Raft has stopped (the node stops next): the wait returns at once, and asking
            // again without the pause would call every join address back to back.
            tokio::time::sleep(JOIN_RETRY).await;
        }
    }
}

/// The cluster refused to admit this node: its leader's refusal, or the peer listener's 403 to
/// every request of a removed node.
fn refused_to_admit(reason: &dyn std::fmt::Display, via: &str) {
    tracing::error!(%reason, %via, "the cluster refused to admit this node; not asking again");
}

/// Logs the first join failure and then every 30th, so a node waiting for its cluster does not
/// flood the log.
fn log_join_failure(failures: &mut u64, addr: &str, reason: &dyn std::error::Error) {
    if failures.is_multiple_of(30) {
        tracing::warn!(via = %addr, %reason, attempts = *failures + 1, "cannot join the cluster yet; retrying");
    }
    *failures += 1;
}

/// Whether this node (`members.core.id`) is a member in the role it asks for. A voter counts only
/// once it votes in every voter set: in a joint configuration whose leader died mid-change,
/// asking again is what gets the change finished.
fn is_member(members: &Members, as_voter: bool) -> bool {
    let metrics = members.core.raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    if as_voter {
        is_full_voter(membership, members.core.id)
    } else {
        membership.get_node(&members.core.id).is_some()
    }
}

/// In a voter set of a joint configuration but not in its last (new) one: a removal under way,
/// possibly left unfinished by a leader that died. Such a node must not be promoted again.
fn is_being_removed(membership: &Membership<NodeId, BasicNode>, node_id: NodeId) -> bool {
    let voter_sets = membership.get_joint_config();
    voter_sets
        .last()
        .is_some_and(|last| !last.contains(&node_id))
        && voter_sets.iter().any(|voters| voters.contains(&node_id))
}

/// A voter in every voter set of `membership` (one set, or the old and new ones of a joint
/// configuration). openraft's `voter_ids` is their union, which counts a node being added before
/// its votes are needed. An uninitialized node has no voter sets and no voters.
fn is_full_voter(membership: &Membership<NodeId, BasicNode>, node_id: NodeId) -> bool {
    let voter_sets = membership.get_joint_config();
    !voter_sets.is_empty() && voter_sets.iter().all(|voters| voters.contains(&node_id))
}

fn caught_up(metrics: &RaftMetrics<NodeId, BasicNode>, node_id: NodeId) -> bool {
    leader_view_of_lag(metrics, node_id).is_some_and(|lag| lag <= CATCH_UP_SLACK_ENTRIES)
}

/// Entries `node_id`'s log is behind the leader's, if this node leads and has heard from it.
fn leader_view_of_lag(metrics: &RaftMetrics<NodeId, BasicNode>, node_id: NodeId) -> Option<u64> {
    let replication = metrics.replication.as_ref()?;
    let last = metrics.last_log_index.unwrap_or(0);
    if node_id == metrics.id {
        return Some(0);
    }
    let matched = replication.get(&node_id)?.map_or(0, |log_id| log_id.index);
    Some(last.saturating_sub(matched))
}

/// Off the leader, `lag_entries` comes from the members' own reports: the leader's last log
/// index minus each member's, as each answered its probe (a moment apart, so approximate).
fn fill_lag_from_reports(members: &mut [MemberStatus], leader: Option<NodeId>) {
    let leader_last_log = members
        .iter()
        .find(|m| Some(m.id) == leader)
        .and_then(|m| m.status.as_ref())
        .and_then(|status| status.last_log_index);
    let Some(leader_last_log) = leader_last_log else {
        return;
    };
    for member in members.iter_mut().filter(|m| m.lag_entries.is_none()) {
        member.lag_entries = member
            .status
            .as_ref()
            .and_then(|status| status.last_log_index)
            .map(|last_log| leader_last_log.saturating_sub(last_log));
    }
}

pub(crate) fn change_error(
    e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
) -> RequestError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            RequestError::NotLeader {
                leader: forward.leader_id,
            }
        }
        // Another change is still committing (or a new leader has not committed its first
        // entry yet): retrying later works, so this must not read as a final refusal.
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            e @ ChangeMembershipError::InProgress(_),
        )) => RequestError::Unavailable(Reason::of(e)),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            RequestError::Refused(Reason::of(e))
        }
        RaftError::Fatal(fatal) => RequestError::Fatal(Reason::of(fatal)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership(voter_sets: Vec<Vec<NodeId>>) -> Membership<NodeId, BasicNode> {
        let configs: Vec<BTreeSet<NodeId>> = voter_sets
            .into_iter()
            .map(|set| set.into_iter().collect())
            .collect();
        let nodes: BTreeMap<NodeId, BasicNode> = configs
            .iter()
            .flatten()
            .map(|id| (*id, BasicNode::new(format!("127.0.0.1:{id}"))))
            .collect();
        Membership::new(configs, nodes)
    }

    /// Goal: a node being added is not a voter until the change leaves joint consensus, so the
    /// status and the joining node's own check do not call a half-done change finished.
    #[test]
    fn a_node_is_a_full_voter_only_in_every_voter_set() {
        let uniform = membership(vec![vec![1, 2, 3]]);
        assert!(is_full_voter(&uniform, 3));
        assert!(!is_full_voter(&uniform, 4));

        let adding_3 = membership(vec![vec![1, 2], vec![1, 2, 3]]);
        assert!(is_full_voter(&adding_3, 1));
        assert!(!is_full_voter(&adding_3, 3), "3 is still being added");

        let removing_3 = membership(vec![vec![1, 2, 3], vec![1, 2]]);
        assert!(!is_full_voter(&removing_3, 3), "3 is being removed");
        assert!(is_full_voter(&removing_3, 2));

        let uninitialized = membership(vec![]);
        assert!(!is_full_voter(&uninitialized, 1));
    }

    /// Goal: a removal left joint is recognised, so the removed node's own join request cannot
    /// promote it back.
    #[test]
    fn a_node_only_in_the_old_voter_set_is_being_removed() {
        let removing_3 = membership(vec![vec![1, 2, 3], vec![1, 2]]);
        assert!(is_being_removed(&removing_3, 3));
        assert!(!is_being_removed(&removing_3, 2));
        let adding_3 = membership(vec![vec![1, 2], vec![1, 2, 3]]);
        assert!(!is_being_removed(&adding_3, 3));
        let uniform = membership(vec![vec![1, 2, 3]]);
        assert!(!is_being_removed(&uniform, 3));
        assert!(!is_being_removed(&membership(vec![]), 1));
    }

    fn member(id: NodeId, last_log_index: Option<u64>) -> MemberStatus {
        MemberStatus {
            id,
            addr: format!("127.0.0.1:{id}"),
            voter: true,
            status: last_log_index.map(|index| NodeStatus {
                id,
                role: "follower".to_string(),
                term: 1,
                leader: Some(1),
                last_log_index: Some(index),
                applied_index: Some(index),
                millis_since_leader_contact: Some(0),
                packets: Some(0),
                low_on_disk: false,
                log_repair: None,
                clock: None,
                build: None,
            }),
            error: None,
            lag_entries: None,
        }
    }

    /// Goal: `status` asked on a follower still shows each member's lag behind the leader.
    #[test]
    fn lag_off_the_leader_comes_from_the_reports() {
        let mut members = vec![member(1, Some(100)), member(2, Some(97)), member(3, None)];
        fill_lag_from_reports(&mut members, Some(1));
        let lags: Vec<Option<u64>> = members.iter().map(|m| m.lag_entries).collect();
        assert_eq!(lags, vec![Some(0), Some(3), None], "node 3 did not answer");

        let mut leaderless = vec![member(1, Some(100)), member(2, Some(97))];
        fill_lag_from_reports(&mut leaderless, None);
        assert!(leaderless.iter().all(|m| m.lag_entries.is_none()));
    }
}
