//! Leader handover: a leader told to stop makes a caught-up voter the leader before it exits, so
//! a rolling restart costs an election round trip instead of a failover. A leader whose disk is
//! below `raft.min_free_disk_mib` (`disk_space`) does the same while it runs, to a caught-up voter
//! that has room, and goes on as a follower: otherwise the cluster would refuse every write until
//! space is freed on this one node, though a quorum of others has room.
//!
//! openraft 0.9 has no leader transfer, and every voter refuses votes for
//! `election_timeout_max` after its leader's last `append-entries` (the leader lease). A
//! candidate needs a quorum of votes, and three kinds of voter can give one:
//! - itself;
//! - the leader: a leader's lease runs from the moment it was elected and is never renewed, so
//!   once it has led for `election_timeout_max` it grants a vote to a candidate whose log is as
//!   long as its own, and steps down by doing so;
//! - a voter that has heard nothing from the leader for `election_timeout_max`.
//!
//! With 3 voters the first two are a quorum. With more, the leader stops replicating to a few
//! voters (`quorum - 2`, the least caught up), so that their leases lapse, while it goes on
//! committing writes with the rest, which are still a quorum. The handover is therefore:
//!
//! 1. silence those voters (the peer network treats them as unreachable), then wait until this
//!    node has led for longer than its lease and the silenced voters' leases have lapsed, serving
//!    writes meanwhile;
//! 2. stop proposing (the batcher waits for the next leader; forwarded publishes are refused as
//!    "not the leader", so followers reroute) and stop heartbeats and elections on this node;
//! 3. wait (bounded) until the proposals under way have returned, so the log no longer grows,
//!    then until a voter that was not silenced holds all of it: that voter is the target (the
//!    silenced ones lag, so they cannot win; and this node would refuse its vote to a target
//!    whose log is shorter than its own);
//! 4. ask the target (peer route `elect`) to stand, and wait until another leader is known. If it
//!    did not win (a silenced voter whose lease had not lapsed after all), it wins once the
//!    others' leases have passed, at most `election_timeout_max` after the heartbeats stopped,
//!    and it is asked once more at that point in case its first attempt lost.
//!
//! A silenced voter stays silent for about the lease, less than the lease plus its own election
//! timeout after which it would stand itself. Every wait is bounded; a handover that does not
//! complete leaves a normal failover behind it. Leaving out replication to a voter never risks
//! safety: to Raft it looks like a slow network.
//!
//! A low-disk handover differs in three ways. It starts only if a quorum of voters reports room
//! on their disks (peer route `status`), since a leader elsewhere commits nothing otherwise, and
//! only a voter with room that already holds this node's whole log may be the target: leadership
//! never moves to a node that would refuse writes too (when every disk is low, as on replicas of
//! one size, it stays put). If the conditions do not hold, nothing is stopped, and the leader
//! looks again after `LOW_DISK_RETRY` (`LOW_DISK_RETRY_AFTER_FAILURE` after a handover that
//! failed). And when the handover ends, done or not, this node takes up heartbeats, elections
//! and (if it still leads) proposals again.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio::time::Instant;

use crate::NodeId;
use crate::leadership::Leadership;
use crate::membership::Members;
use crate::node_core::Core;
use crate::peer::{CallError, path};
use crate::reason::Reason;
use crate::request_error::{RequestError, ask};

/// How long the outgoing leader waits for a voter to hold its whole log (the batches in flight
/// when it stopped proposing commit in milliseconds).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);
/// Margin past the leader lease before this node's vote is asked for, for timer granularity.
const LEASE_MARGIN: Duration = Duration::from_millis(20);
/// How long a leader low on disk waits after a handover it did not start (too few voters with
/// room, or none holding its log) before it looks again.
const LOW_DISK_RETRY: Duration = Duration::from_secs(5);
/// ... and after one that failed: each attempt stops heartbeats for a lease or more, which may
/// cost an election, so a failing handover is not repeated every few seconds.
const LOW_DISK_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// What a handover is for: it decides who may take the leadership, and what this node does
/// after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Occasion {
    /// This node stops: any caught-up voter may lead, and this node proposes and stands no more.
    Stopping,
    /// This node's disk is below the reserve: a caught-up voter with room may lead, and this
    /// node goes on.
    LowOnDisk,
}

/// What a handover achieved. The reasons of `NoTarget` and `Failed` are composed by the
/// handover from what it counted and waited for: no error lies beneath them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandoverOutcome {
    /// This node was not the leader, or the only voter: nothing to hand over.
    NotNeeded,
    /// No voter could take over (a low-disk handover found none with room holding the log), so
    /// nothing was changed; the reason says why.
    NoTarget(String),
    /// `to` leads now, `took` after this node stopped taking writes.
    Done { to: NodeId, took: Duration },
    /// No other leader emerged within the bound: a stopping node leaves the usual failover
    /// behind it; a node low on disk goes on (leading, if no one else does).
    Failed(String),
}

/// Why a voter could not be asked to stand for election. Logged only: the handover waits for
/// a new leader either way (an election timeout elects one without the ask).
#[derive(Debug, thiserror::Error)]
enum AskToStandError {
    #[error("node {0} is not in the membership")]
    NotMember(NodeId),
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("it refused: {0}")]
    Refused(#[from] RequestError),
}

/// The node's leader handover (see the module docs), and its side of another's (`elect`).
pub struct Handover {
    /// The node's handles and fixed settings (`node_core`).
    pub(crate) core: Arc<Core>,
    leadership: Arc<Leadership>,
    /// To ask the voters for their disk space.
    members: Arc<Members>,
}

impl Handover {
    pub(crate) fn new(
        core: &Arc<Core>,
        leadership: Arc<Leadership>,
        members: Arc<Members>,
    ) -> Handover {
        Handover {
            core: core.clone(),
            leadership,
            members,
        }
    }

    /// Hands leadership to a caught-up voter (see the module docs). Call it before the node stops
    /// serving; afterwards this node neither proposes nor stands for election, so call it only on
    /// the way out. Bounded by about 2 × `CATCH_UP_TIMEOUT` + 4 × `election_timeout_max`, twice
    /// that if a low-disk handover is under way when it is called.
    pub async fn hand_over(&self) -> HandoverOutcome {
        // A low-disk handover under way finishes first; this node then most likely leads no more.
        let _one_at_a_time = self.leadership.handover_lock().lock().await;
        let result = self.try_hand_over(Occasion::Stopping).await;
        self.record_handover(&result, Occasion::Stopping);
        result
    }

    fn record_handover(&self, result: &HandoverOutcome, occasion: Occasion) {
        match result {
            HandoverOutcome::NotNeeded | HandoverOutcome::NoTarget(_) => {}
            HandoverOutcome::Done { to, took } => {
                self.core
                    .metrics
                    .handovers
                    .with_label_values(&["done"])
                    .inc();
                tracing::info!(to, took = ?took, reason = ?occasion, "handed leadership over");
            }
            HandoverOutcome::Failed(why) => {
                self.core
                    .metrics
                    .handovers
                    .with_label_values(&["failed"])
                    .inc();
                let after = match occasion {
                    Occasion::Stopping => "the cluster fails over instead",
                    Occasion::LowOnDisk => "this node goes on as before",
                };
                tracing::warn!(reason = %why, "leadership handover failed; {after}");
            }
        }
    }

    async fn try_hand_over(&self, occasion: Occasion) -> HandoverOutcome {
        let metrics = self.core.raft.metrics().borrow().clone();
        // A node whose Raft stopped on a fatal error leads nobody, whatever its last metrics say.
        if metrics.state != ServerState::Leader || metrics.running_state.is_err() {
            return HandoverOutcome::NotNeeded;
        }
        let others: Vec<NodeId> = metrics
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != self.core.id)
            .collect();
        if others.is_empty() {
            return HandoverOutcome::NotNeeded;
        }
        let eligible = match occasion {
            Occasion::Stopping => others.clone(),
            Occasion::LowOnDisk => {
                // A leader elsewhere commits nothing unless a quorum takes its entries: with
                // fewer voters with room, moving leadership gains no writes and stalls the reads
                // and membership changes this leader still serves.
                let with_room = self.voters_with_room(&others, &metrics).await;
                let voters = others.len() + 1;
                let quorum = voters / 2 + 1;
                if with_room.len() < quorum {
                    return HandoverOutcome::NoTarget(format!(
                        "{} of {voters} voters have room on their disks, fewer than a quorum \
                         ({quorum})",
                        with_room.len(),
                    ));
                }
                // Heartbeats stop only once a target is certain: while writes are refused the
                // log barely grows, so a voter with room has it all already.
                let holds_log =
                    |id: &NodeId| matched_index(&metrics, *id) >= metrics.last_log_index;
                let eligible: Vec<NodeId> = with_room.into_iter().filter(holds_log).collect();
                if eligible.is_empty() {
                    return HandoverOutcome::NoTarget(
                        "no voter with room on its disk holds this leader's whole log yet".into(),
                    );
                }
                eligible
            }
        };
        let result = self.hand_over_to_one_of(occasion, &others, &eligible).await;
        if occasion == Occasion::LowOnDisk {
            self.resume_leading();
        }
        result
    }

    /// Steps 1 to 4 of the handover (see the module docs), to one of `eligible`.
    async fn hand_over_to_one_of(
        &self,
        occasion: Occasion,
        others: &[NodeId],
        eligible: &[NodeId],
    ) -> HandoverOutcome {
        let metrics = self.core.raft.metrics().borrow().clone();
        let lease = self.core.lease;
        let silenced = least_caught_up(
            &metrics,
            others,
            eligible,
            silenced_needed(others.len() + 1),
        );
        let silenced_since = Instant::now();
        self.leadership.silenced().set(&silenced);
        // Still leading and serving meanwhile: this node's own vote is granted only once its
        // lease has passed, and a silenced voter's once the lease since it last heard from this
        // node has.
        let mut votes_ready = self
            .leadership
            .leading_since()
            .map(|since| since + lease + LEASE_MARGIN);
        if !silenced.is_empty() {
            votes_ready = votes_ready.max(Some(silenced_since + lease + LEASE_MARGIN));
        }
        if let Some(ready) = votes_ready {
            tokio::time::sleep_until(ready).await;
            if !self.leadership.is_leader() {
                self.leadership.silenced().set(&[]);
                return HandoverOutcome::NotNeeded;
            }
            if occasion == Occasion::LowOnDisk && self.core.disk_space.refusal().is_none() {
                // Space was freed here meanwhile.
                self.leadership.silenced().set(&[]);
                return HandoverOutcome::NotNeeded;
            }
        }
        self.stop_leading();
        let heartbeats_stopped = Instant::now();
        let candidates: Vec<NodeId> = eligible
            .iter()
            .copied()
            .filter(|id| !silenced.contains(id))
            .collect();
        let result = self.elect_successor(&candidates, heartbeats_stopped).await;
        self.leadership.silenced().set(&[]);
        result
    }

    /// Which of `voters` report room on their disks (peer route `status`, asked in parallel;
    /// one that does not answer within the lease counts as without).
    async fn voters_with_room(
        &self,
        voters: &[NodeId],
        metrics: &openraft::RaftMetrics<NodeId, openraft::BasicNode>,
    ) -> Vec<NodeId> {
        let membership = metrics.membership_config.membership();
        let addrs = voters
            .iter()
            .filter_map(|id| Some((*id, membership.get_node(id)?.addr.clone())));
        let mut with_room = Vec::new();
        for (id, _, status) in self.members.probe_statuses(addrs, self.core.lease).await {
            match status {
                Ok(status) if !status.low_on_disk => with_room.push(id),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(node = id, error = %e, "a voter did not report its disk space");
                }
            }
        }
        with_room.sort_unstable();
        with_room
    }

    /// Steps 3 and 4 of the handover (see the module docs): the target is one of `candidates`.
    async fn elect_successor(
        &self,
        candidates: &[NodeId],
        heartbeats_stopped: Instant,
    ) -> HandoverOutcome {
        let lease = self.core.lease;
        // A batch proposed just before would still lengthen this node's log after the target
        // matched it, and this node would then refuse the target its vote.
        if !self.leadership.proposals_settled(CATCH_UP_TIMEOUT).await {
            return HandoverOutcome::Failed(format!(
                "proposals under way did not return within {CATCH_UP_TIMEOUT:?}"
            ));
        }
        let Some(target) = self.caught_up_voter(candidates).await else {
            return HandoverOutcome::Failed(format!(
                "no voter caught up with this node's log within {CATCH_UP_TIMEOUT:?}"
            ));
        };
        if let Err(e) = self.ask_to_elect(target).await {
            tracing::debug!(target, error = %e, "asking a voter to stand failed");
        }
        // The target's vote, this node's and the silenced voters' are a quorum: it wins at once.
        // Failing that, it wins once the other voters' leases have passed.
        let first_try = (heartbeats_stopped + lease + LEASE_MARGIN).max(Instant::now() + lease);
        if let Some(to) = self.next_leader(first_try).await {
            return HandoverOutcome::Done {
                to,
                took: heartbeats_stopped.elapsed(),
            };
        }
        if let Err(e) = self.ask_to_elect(target).await {
            tracing::debug!(target, error = %e, "asking a voter to stand again failed");
        }
        match self.next_leader(Instant::now() + 2 * lease).await {
            Some(to) => HandoverOutcome::Done {
                to,
                took: heartbeats_stopped.elapsed(),
            },
            None => HandoverOutcome::Failed(format!(
                "node {target} was asked to stand but no other leader emerged within {:?}",
                heartbeats_stopped.elapsed()
            )),
        }
    }

    /// Stops proposing and forwarding (see `batcher`), heartbeats and elections on this node.
    fn stop_leading(&self) {
        self.leadership.start_handover();
        self.core.raft.runtime_config().heartbeat(false);
        self.leadership.allow_elections(false);
    }

    /// Undoes `stop_leading`, for a node that goes on after a handover.
    fn resume_leading(&self) {
        self.core.raft.runtime_config().heartbeat(true);
        self.leadership.allow_elections(true);
        self.leadership.end_handover();
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
            .core
            .raft
            .wait(Some(CATCH_UP_TIMEOUT))
            .metrics(|m| caught_up(m).is_some(), "a voter holds the whole log")
            .await
            .ok()?;
        caught_up(&reached)
    }

    async fn ask_to_elect(&self, target: NodeId) -> Result<(), AskToStandError> {
        let addr = {
            let metrics = self.core.raft.metrics();
            let metrics = metrics.borrow();
            let node = metrics.membership_config.membership().get_node(&target);
            node.map(|n| n.addr.clone())
                .ok_or(AskToStandError::NotMember(target))?
        };
        let answer: Result<(), RequestError> = ask(
            &self.core.peers,
            &addr,
            Some(target),
            path::ELECT,
            &(),
            self.core.lease,
        )
        .await?;
        Ok(answer?)
    }

    /// Waits until `deadline` for a leader other than this node.
    async fn next_leader(&self, deadline: Instant) -> Option<NodeId> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let id = self.core.id;
        let metrics = self
            .core
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
    pub(crate) async fn stand_for_election(&self) -> Result<(), RequestError> {
        if self.core.log_store.repair().is_some() {
            return Err(RequestError::Unavailable(
                self.leadership.may_stand().err().unwrap_or_default().into(),
            ));
        }
        self.core
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|e| RequestError::Fatal(Reason::of(e)))
    }
}

/// How many voters besides the target and the outgoing leader must vote for the target: with
/// `voters` voters, a quorum minus those two.
fn silenced_needed(voters: usize) -> usize {
    (voters / 2 + 1).saturating_sub(2)
}

/// The `count` voters among `others` least useful as targets: those not `eligible` first, then
/// those whose replicated log is shortest (unknown counts as shortest), which also holds back the
/// fewest writes. `count` is below `others.len()`, so an eligible voter is always left.
fn least_caught_up(
    metrics: &openraft::RaftMetrics<NodeId, openraft::BasicNode>,
    others: &[NodeId],
    eligible: &[NodeId],
    count: usize,
) -> Vec<NodeId> {
    let mut by_usefulness = others.to_vec();
    by_usefulness.sort_by_key(|id| (eligible.contains(id), matched_index(metrics, *id), *id));
    by_usefulness.truncate(count);
    by_usefulness
}

/// The index of the last entry the leader knows `voter` holds (`None`: not known, or not leader).
fn matched_index(
    metrics: &openraft::RaftMetrics<NodeId, openraft::BasicNode>,
    voter: NodeId,
) -> Option<u64> {
    metrics
        .replication
        .as_ref()
        .and_then(|replication| replication.get(&voter).copied().flatten())
        .map(|log_id| log_id.index)
}

/// While this node leads with its disk below the reserve (`disk_space`), hands leadership to a
/// voter with room (see the module docs). Looks every `disk_space::CHECK_INTERVAL`; after a
/// handover that did not start waits `LOW_DISK_RETRY`, after one that failed
/// `LOW_DISK_RETRY_AFTER_FAILURE`. Runs until the node stops.
pub(crate) async fn hand_over_while_low_on_disk(handover: Arc<Handover>) {
    let mut interval = tokio::time::interval(crate::disk_space::CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_try = Instant::now();
    // The last reason nothing was handed over, logged once for as long as it stays the same.
    let mut told: Option<String> = None;
    loop {
        interval.tick().await;
        if !handover.leadership.is_leader() || handover.core.disk_space.refusal().is_none() {
            told = None;
            continue;
        }
        if Instant::now() < next_try {
            continue;
        }
        // A stop's handover holds the lock, or has taken leadership off this node for good.
        let Ok(_one_at_a_time) = handover.leadership.handover_lock().try_lock() else {
            continue;
        };
        if handover.leadership.handing_over() {
            continue;
        }
        let result = handover.try_hand_over(Occasion::LowOnDisk).await;
        handover.record_handover(&result, Occasion::LowOnDisk);
        match result {
            HandoverOutcome::Done { .. } | HandoverOutcome::NotNeeded => told = None,
            HandoverOutcome::NoTarget(why) => {
                if told.as_ref() != Some(&why) {
                    tracing::warn!(
                        reason = %why,
                        "this leader is low on disk and keeps leading: the cluster takes no \
                         writes until space is freed here, or on enough voters for a quorum"
                    );
                    told = Some(why);
                }
                next_try = Instant::now() + LOW_DISK_RETRY;
            }
            // Logged as it happened (`record_handover`).
            HandoverOutcome::Failed(_) => next_try = Instant::now() + LOW_DISK_RETRY_AFTER_FAILURE,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openraft::{BasicNode, CommittedLeaderId, LogId, RaftMetrics};

    use super::*;

    /// Goal: the voters a handover silences are the least useful targets: not eligible first
    /// (a low-disk handover's voters without room), then the least caught up; so an eligible
    /// voter is always left to stand.
    #[test]
    fn silences_voters_that_cannot_be_the_target_first() {
        let mut metrics = RaftMetrics::<NodeId, BasicNode>::new_initial(1);
        let matched = |index| Some(LogId::new(CommittedLeaderId::new(1, 1), index));
        metrics.replication = Some(BTreeMap::from([
            (2, matched(5)),
            (3, matched(9)),
            (4, None),
            (5, matched(9)),
        ]));
        let others = [2, 3, 4, 5];
        // All eligible (a stop): the least caught up, an unknown one before any known.
        assert_eq!(least_caught_up(&metrics, &others, &others, 1), vec![4]);
        assert_eq!(least_caught_up(&metrics, &others, &others, 2), vec![4, 2]);
        // Only 4 eligible: the others go first, even though 4 lags most.
        assert_eq!(least_caught_up(&metrics, &others, &[4], 1), vec![2]);
        assert_eq!(least_caught_up(&metrics, &others, &[4], 3), vec![2, 3, 5]);
        assert_eq!(matched_index(&metrics, 3), Some(9));
        assert_eq!(matched_index(&metrics, 4), None);
    }

    #[test]
    fn silences_enough_voters_for_a_quorum_and_never_the_quorum_itself() {
        for (voters, silenced) in [(1, 0), (2, 0), (3, 0), (4, 1), (5, 1), (6, 2), (7, 2)] {
            assert_eq!(silenced_needed(voters), silenced, "{voters} voters");
            // The leader still reaches a quorum with the voters it does not silence.
            let quorum = voters / 2 + 1;
            assert!(voters - silenced >= quorum, "{voters} voters");
            // The target, the leader and the silenced voters make a quorum.
            if voters >= 2 {
                assert!(silenced + 2 >= quorum, "{voters} voters");
            }
        }
    }
}
