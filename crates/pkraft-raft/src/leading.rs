//! The node as leader, or waiting on one: whether it leads and whom it knows to lead, when to
//! stop waiting on a leader that is gone, whether a leader cut off from its quorum may still
//! propose, and the task that logs leader and membership changes. The state this keeps beside
//! openraft's is `leadership`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;

use crate::NodeId;
use crate::node::Node;

/// How often a caller waiting on another node's answer checks that it still leads and is heard
/// from ([`Node::until_leader_gone`]): a fraction of the default heartbeat interval.
const LEADER_WATCH_INTERVAL: Duration = Duration::from_millis(20);
/// After a failed call to the leader (it moved or is down), how long to wait for news of a leader
/// before trying again.
const REROUTE_PAUSE: Duration = Duration::from_millis(100);

impl Node {
    /// Lets this node stand for election again (`true`), or stops it (a handover): openraft's
    /// own timer, or with PreVote the node's (`pre_vote`), which keeps openraft's off.
    pub(crate) fn allow_elections(&self, allowed: bool) {
        self.leadership().pause_elections(!allowed);
        if !self.pre_vote {
            // Not while the log is being repaired (`hold_elections_while_repairing` turns it on).
            self.raft
                .runtime_config()
                .elect(allowed && self.log_store.repair().is_none());
        }
    }

    /// Whether this node believes it is the leader (it may have been deposed a moment ago).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The leader this node knows of, with its peer address.
    pub(crate) fn known_leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        let node = metrics.membership_config.membership().get_node(&leader)?;
        Some((leader, node.addr.clone()))
    }

    /// Why this node must stop waiting on `leader`, another node, for an answer (a forwarded
    /// publish, a read index): this node knows another leader or none, or `leader` has not
    /// reached it for longer than the leader lease (`election_timeout_max`), after which the
    /// followers may be electing a successor. A leader behind a silent partition (packets
    /// dropped) never answers, and a caller that waited for its deadline would refuse writes
    /// long after a new leader exists. `None` while `leader` leads and is heard from.
    pub(crate) fn leader_gone(&self, leader: NodeId) -> Option<String> {
        let current = self.raft.metrics().borrow().current_leader;
        if current != Some(leader) {
            return Some(match current {
                Some(current) => format!("leadership moved from node {leader} to node {current}"),
                None => format!("node {leader} is no longer known to lead"),
            });
        }
        let silent = self.since_leader_reached();
        (silent > self.election_timeout_max).then(|| {
            format!(
                "leader {leader} has not been heard from for {} ms",
                silent.as_millis()
            )
        })
    }

    /// Resolves once [`Node::leader_gone`] says why; for racing a call to `leader`.
    pub(crate) async fn until_leader_gone(&self, leader: NodeId) -> String {
        loop {
            if let Some(reason) = self.leader_gone(leader) {
                return reason;
            }
            tokio::time::sleep(LEADER_WATCH_INTERVAL).await;
        }
    }

    /// Waits (bounded by `deadline` and [`REROUTE_PAUSE`]) until this node knows of a leader
    /// other than `previous`.
    pub(crate) async fn wait_for_leader_news(&self, previous: Option<NodeId>, deadline: Instant) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let _ = self
            .raft
            .wait(Some(remaining.min(REROUTE_PAUSE)))
            .metrics(
                |m| m.current_leader.is_some() && m.current_leader != previous,
                "learn of a leader",
            )
            .await;
    }

    /// When this node last became the leader, if it leads.
    pub(crate) fn leading_since(&self) -> Option<Instant> {
        self.leadership().since()
    }

    /// Why this leader should not propose: it has led for longer than the leader lease and no
    /// quorum of voters has accepted it within the lease, so it is cut off (and perhaps already
    /// replaced). `None` when it may propose.
    pub(crate) fn cut_off_from_quorum(&self) -> Option<String> {
        let since = self.leading_since()?;
        if since.elapsed() <= self.election_timeout_max {
            return None;
        }
        let voters: Vec<NodeId> = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            metrics.membership_config.membership().voter_ids().collect()
        };
        match self.leadership().quorum_contact().age(self.id, &voters) {
            Some(age) if age <= self.election_timeout_max => None,
            Some(age) => Some(format!(
                "this leader has not reached a quorum for {} ms",
                age.as_millis()
            )),
            None => Some("this leader has not reached a quorum".to_string()),
        }
    }
}

/// Logs (and counts) the changes of the leader this node knows of, and logs the membership
/// changes it applies, for as long as the node runs: one line per event, on every node.
pub(crate) async fn watch_cluster_state(node: Arc<Node>) {
    let mut metrics = node.raft.metrics();
    // Nothing known yet: the state at start is logged as the first change.
    let (mut leader, mut membership) = (None, None);
    loop {
        let now = metrics.borrow_and_update().clone();
        if now.current_leader != leader {
            node.metrics.leader_changes.inc();
            leader = now.current_leader;
            node.leadership().set_leading(leader == Some(node.id));
            match leader {
                Some(leader) => {
                    tracing::info!(leader, term = now.current_term, "leader changed");
                }
                None => tracing::info!(term = now.current_term, "no leader known"),
            }
        }
        if *now.membership_config.log_id() != membership {
            membership = *now.membership_config.log_id();
            let config = now.membership_config.membership();
            let voters: Vec<NodeId> = config.voter_ids().collect();
            let learners: Vec<NodeId> = config.learner_ids().collect();
            tracing::info!(?voters, ?learners, "membership changed");
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
