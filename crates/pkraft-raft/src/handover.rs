//! Leader handover on a clean stop: a leader told to stop makes a caught-up voter the leader
//! before it exits, so a rolling restart costs an election round trip instead of a failover.
//!
//! openraft 0.9 has no leader transfer, and every voter refuses votes for
//! `election_timeout_max` after its leader's last heartbeat (the leader lease). The one vote a
//! candidate can get at once is the leader's own: a leader's lease runs from the moment it was
//! elected and is never renewed, so once it has led for `election_timeout_max` it grants a vote to
//! a candidate whose log is as long as its own, and steps down by doing so. In a 3-voter cluster
//! that vote and the candidate's own are a quorum. The handover is therefore:
//!
//! 1. wait, if need be, until this node has led for longer than its lease (serving meanwhile);
//! 2. stop proposing (the batcher waits for the next leader; forwarded publishes are refused as
//!    "not the leader", so followers reroute) and stop heartbeats and elections on this node;
//! 3. wait (bounded) until a voter's log holds everything this node's does: that voter is the
//!    target;
//! 4. ask the target (peer route `elect`) to stand, and wait until another leader is known. With
//!    more than 3 voters the others still honour the lease: the target then wins once it has
//!    passed, which is at most `election_timeout_max` after the heartbeats stopped, and the
//!    target is asked once more at that point in case its first attempt lost.
//!
//! Every wait is bounded; a handover that does not complete leaves a normal failover behind it.

use std::time::{Duration, Instant};

use openraft::ServerState;

use crate::NodeId;
use crate::node::Node;
use crate::peer::{PeerError, path};

/// How long the outgoing leader waits for a voter to hold its whole log (the batches in flight
/// when it stopped proposing commit in milliseconds).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);
/// Margin past the leader lease before this node's vote is asked for, for timer granularity.
const LEASE_MARGIN: Duration = Duration::from_millis(20);

/// What a handover achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handover {
    /// This node was not the leader, or the only voter: nothing to hand over.
    NotNeeded,
    /// `to` leads now, `took` after this node stopped taking writes.
    Done { to: NodeId, took: Duration },
    /// No other leader emerged within the bound; the cluster fails over the usual way once this
    /// node has stopped.
    Failed(String),
}

impl Node {
    /// Hands leadership to a caught-up voter (see the module docs). Call it before the node stops
    /// serving; afterwards this node neither proposes nor stands for election, so call it only on
    /// the way out. Bounded by about `CATCH_UP_TIMEOUT` + 4 × `election_timeout_max`.
    pub async fn hand_over_leadership(&self) -> Handover {
        let result = self.try_hand_over().await;
        match &result {
            Handover::NotNeeded => {}
            Handover::Done { to, took } => {
                self.metrics.handovers.with_label_values(&["done"]).inc();
                tracing::info!(to, took = ?took, "handed leadership over");
            }
            Handover::Failed(reason) => {
                self.metrics.handovers.with_label_values(&["failed"]).inc();
                tracing::warn!(%reason, "leadership handover failed; the cluster fails over instead");
            }
        }
        result
    }

    async fn try_hand_over(&self) -> Handover {
        let metrics = self.raft.metrics().borrow().clone();
        // A node whose Raft stopped on a fatal error leads nobody, whatever its last metrics say.
        if metrics.state != ServerState::Leader || metrics.running_state.is_err() {
            return Handover::NotNeeded;
        }
        let others: Vec<NodeId> = metrics
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != self.id)
            .collect();
        if others.is_empty() {
            return Handover::NotNeeded;
        }
        let lease = self.election_timeout_max;
        // Still leading and serving meanwhile: this node's own vote is granted only once its
        // lease has passed.
        if let Some(since) = self.leading_since() {
            tokio::time::sleep_until((since + lease + LEASE_MARGIN).into()).await;
            if !self.is_leader() {
                return Handover::NotNeeded;
            }
        }
        self.stop_leading();
        let heartbeats_stopped = Instant::now();

        let Some(target) = self.caught_up_voter(&others).await else {
            return Handover::Failed(format!(
                "no voter caught up with this node's log within {CATCH_UP_TIMEOUT:?}"
            ));
        };
        if let Err(e) = self.ask_to_elect(target).await {
            tracing::debug!(target, error = %e, "asking a voter to stand failed");
        }
        // 3 voters: the target wins at once. More: it wins once the others' leases have passed.
        let first_try = (heartbeats_stopped + lease + LEASE_MARGIN).max(Instant::now() + lease);
        if let Some(to) = self.next_leader(first_try).await {
            return Handover::Done {
                to,
                took: heartbeats_stopped.elapsed(),
            };
        }
        if let Err(e) = self.ask_to_elect(target).await {
            tracing::debug!(target, error = %e, "asking a voter to stand again failed");
        }
        match self.next_leader(Instant::now() + 2 * lease).await {
            Some(to) => Handover::Done {
                to,
                took: heartbeats_stopped.elapsed(),
            },
            None => Handover::Failed(format!(
                "node {target} was asked to stand but no other leader emerged within {:?}",
                heartbeats_stopped.elapsed()
            )),
        }
    }

    /// Stops proposing and forwarding (see `batcher`), heartbeats and elections on this node.
    fn stop_leading(&self) {
        self.leadership().start_handover();
        let runtime = self.raft.runtime_config();
        runtime.heartbeat(false);
        runtime.elect(false);
    }

    /// The voter among `others` whose log first reaches this node's last entry.
    async fn caught_up_voter(&self, others: &[NodeId]) -> Option<NodeId> {
        let caught_up = |m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>| {
            let last = m.last_log_index;
            let replication = m.replication.as_ref()?;
            others.iter().copied().find(|id| {
                replication
                    .get(id)
                    .and_then(|matched| matched.map(|log_id| log_id.index))
                    >= last
            })
        };
        let reached = self
            .raft
            .wait(Some(CATCH_UP_TIMEOUT))
            .metrics(|m| caught_up(m).is_some(), "a voter holds the whole log")
            .await
            .ok()?;
        caught_up(&reached)
    }

    async fn ask_to_elect(&self, target: NodeId) -> Result<(), String> {
        let addr = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let node = metrics.membership_config.membership().get_node(&target);
            node.map(|n| n.addr.clone())
                .ok_or_else(|| format!("node {target} is not in the membership"))?
        };
        let answer: Result<(), PeerError> = self
            .peers
            .call(
                &addr,
                Some(target),
                path::ELECT,
                &(),
                self.election_timeout_max,
            )
            .await
            .map_err(|e| e.to_string())?;
        answer.map_err(|e| e.to_string())
    }

    /// Waits until `deadline` for a leader other than this node.
    async fn next_leader(&self, deadline: Instant) -> Option<NodeId> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let id = self.id;
        let metrics = self
            .raft
            .wait(Some(remaining))
            .metrics(
                |m| m.current_leader.is_some_and(|leader| leader != id),
                "another node leads",
            )
            .await
            .ok()?;
        metrics.current_leader
    }

    /// Starts an election on this node, when the leader handing over asks (peer route `elect`).
    pub(crate) async fn stand_for_election(&self) -> Result<(), PeerError> {
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| PeerError::Fatal(e.to_string()))
    }
}
