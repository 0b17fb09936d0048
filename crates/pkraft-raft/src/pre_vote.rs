//! PreVote for openraft 0.9: a voter stands for election only after a quorum of voters said it
//! could win, so a node cut off from the cluster does not raise its term, and once it can talk
//! again it does not depose a healthy leader.
//!
//! openraft 0.9 has no PreVote (0.10 has). A voter that hears nothing from its leader for an
//! election timeout stands at once, in a new term, and stands again after every timeout; an
//! isolated follower's term therefore climbs for as long as it is cut off. When it is healed,
//! its answers carry the higher term, the leader steps down on seeing it, and the cluster holds
//! an election it did not need (every time a flaky link heals).
//!
//! So openraft's own election timer is off (`enable_elect = false`), and [`run`] keeps one
//! instead. When this voter has heard nothing from a leader for the leader lease plus a random
//! election timeout (the same wait as openraft's timer), it asks every other voter
//! (`pre-vote` peer route): "would you vote for me, with my log?". A voter says yes
//! (`PreVote::answer_pre_vote`) only if both hold:
//! - the candidate's last log id is at least its own (Raft's up-to-date rule, as in a real vote);
//! - no leader has reached it within the lease (`election_timeout_max`; openraft refuses a real
//!   vote within it too, when its vote is committed), and it is not itself a leader that a
//!   quorum still accepts.
//!
//! Terms are not compared (as in Ongaro's thesis, 9.6): a voter with a higher term would only
//! refuse the real vote of that round, and the candidate stands again one term higher; refusing
//! the pre-vote instead could leave the only candidate with the longest log unable to stand.
//!
//! With a yes from a majority of every configuration (both while a membership change is joint;
//! its own included) the node calls openraft's election (`trigger().elect()`); otherwise it
//! waits another timeout and asks again. Answering changes nothing on the voter: no term, no
//! vote, no timer.
//!
//! Why this is safe: Raft's safety (one leader per term, a leader holds every committed entry)
//! rests on the vote itself, which openraft still runs unchanged: the term, the vote persisted
//! before it is granted, the log comparison, the lease. PreVote only decides *when* a node calls
//! that vote, and Raft is safe whatever the timing of elections. The argument and its liveness
//! half are in docs/CONSISTENCY.md, "Silent partitions and PreVote".

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use openraft::storage::RaftLogStorage;
use openraft::{LogId, ServerState};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::NodeId;
use crate::leadership::Leadership;
use crate::node_core::Core;
use crate::peer::client::CallError;
use crate::peer::path;

/// How often the timer looks whether an election is due. Well under the election timeouts, so
/// it adds little to a failover.
const TICK: Duration = Duration::from_millis(20);

/// A would-be candidate's question to one voter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PreVoteRequest {
    pub candidate: NodeId,
    /// The term it would stand in, its own term plus one: for the voter's logs only (see the
    /// module docs on terms).
    pub term: u64,
    /// Its last log id, for the up-to-date rule.
    pub last_log_id: Option<LogId<NodeId>>,
}

/// A voter's answer: whether it would vote for the candidate now, and if not, why (for logs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PreVoteAnswer {
    pub granted: bool,
    pub reason: Option<String>,
}

/// The election timer's timing: `raft.election_timeout_min` and `_max`; the max is also the
/// leader lease.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ElectionTiming {
    pub timeout_min: Duration,
    pub timeout_max: Duration,
}

impl ElectionTiming {
    fn random_timeout(&self) -> Duration {
        pkraft_types::world::random_between(self.timeout_min, self.timeout_max)
    }
}

/// What this node's Raft state says about standing for election.
struct Standing {
    state: ServerState,
    term: u64,
    /// Every voter: of the one configuration, or of both while a change is joint.
    voters: Vec<NodeId>,
    /// The configurations whose majorities a vote needs: one, or two while a change is joint.
    configs: Vec<BTreeSet<NodeId>>,
}

impl Standing {
    /// Whether `granted` holds a majority of every configuration (Raft's joint quorum).
    fn is_quorum(&self, granted: &BTreeSet<NodeId>) -> bool {
        self.configs
            .iter()
            .all(|config| config.intersection(granted).count() > config.len() / 2)
    }
}

/// Pre-vote rounds lost in a row logged at `info`: the first, then one in this many (a node cut
/// off for hours would otherwise log every election timeout). All are counted.
const LOST_ROUNDS_PER_LOG: u64 = 100;

/// The election timer of a node with PreVote; runs as long as the node.
pub(crate) async fn run(pre_vote: Arc<PreVote>, timing: ElectionTiming) {
    let lease = timing.timeout_max;
    let mut timeout = timing.random_timeout();
    // The last pre-vote round this node started; a failed round is retried after a timeout,
    // not a lease plus a timeout.
    let mut last_round: Option<Instant> = None;
    // When this node last saw itself lead: a leader that just stepped down heard from no leader
    // meanwhile, but was not silent either.
    let mut led_at: Option<Instant> = None;
    let mut lost_in_a_row: u64 = 0;
    loop {
        tokio::time::sleep(TICK).await;
        if pre_vote.leadership.may_stand().is_err() {
            continue;
        }
        let Some(standing) = pre_vote.standing() else {
            // openraft has stopped; the node is going down.
            return;
        };
        if standing.state == ServerState::Leader {
            led_at = Some(Instant::now());
            continue;
        }
        if !standing.voters.contains(&pre_vote.core.id) {
            continue;
        }
        if standing.voters.len() == 1 {
            // The only voter needs nobody's word, and openraft ends its own election at once.
            if standing.state != ServerState::Candidate {
                pre_vote.stand("the only voter").await;
            }
            continue;
        }
        let silent = led_at.map_or(pre_vote.leadership.since_leader_reached(), |led| {
            pre_vote
                .leadership
                .since_leader_reached()
                .min(led.elapsed())
        });
        let due = match last_round {
            // Rounds since the leader was last heard from: one timeout apart.
            Some(round) if round.elapsed() < silent => round.elapsed() >= timeout,
            // The first round after a leader: its lease must have lapsed too.
            _ => silent >= lease + timeout,
        };
        if !due {
            continue;
        }
        last_round = Some(Instant::now());
        timeout = timing.random_timeout();
        match pre_vote.pre_vote_round(&standing, timing.timeout_min).await {
            Ok(granted) => {
                lost_in_a_row = 0;
                pre_vote
                    .core
                    .metrics
                    .pre_vote_rounds
                    .with_label_values(&["won"])
                    .inc();
                tracing::info!(
                    term = standing.term + 1,
                    ?granted,
                    silent_ms = silent.as_millis(),
                    "pre-vote won; standing for election"
                );
                pre_vote.stand("pre-vote won").await;
            }
            Err(refusals) => {
                pre_vote
                    .core
                    .metrics
                    .pre_vote_rounds
                    .with_label_values(&["lost"])
                    .inc();
                lost_in_a_row += 1;
                if lost_in_a_row % LOST_ROUNDS_PER_LOG == 1 {
                    tracing::info!(
                        term = standing.term + 1,
                        silent_ms = silent.as_millis(),
                        lost_in_a_row,
                        %refusals,
                        "pre-vote lost; not standing (logged once per {LOST_ROUNDS_PER_LOG} in a row)"
                    );
                } else {
                    tracing::debug!(%refusals, lost_in_a_row, "pre-vote lost; not standing");
                }
            }
        }
    }
}

/// The node's PreVote: its election timer's rounds, and its answers to other nodes' pre-votes
/// (which it gives whether or not its own timer runs PreVote).
pub(crate) struct PreVote {
    /// The node's handles and fixed settings (`node_core`).
    pub(crate) core: Arc<Core>,
    leadership: Arc<Leadership>,
}

impl PreVote {
    pub(crate) fn new(core: &Arc<Core>, leadership: Arc<Leadership>) -> PreVote {
        PreVote {
            core: core.clone(),
            leadership,
        }
    }

    /// This node's state, term and voters, from openraft's metrics (read every tick, so not
    /// through the Raft core's queue); `None` once Raft has stopped.
    fn standing(&self) -> Option<Standing> {
        let metrics = self.core.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        (metrics.state != ServerState::Shutdown).then(|| Standing {
            state: metrics.state,
            term: metrics.current_term,
            voters: membership.voter_ids().collect(),
            configs: membership.get_joint_config().clone(),
        })
    }

    /// The id of the last entry of this node's log, or of the last one purged with everything
    /// before it (a snapshot's): what Raft's up-to-date rule compares.
    async fn last_log_id(&self) -> Result<Option<LogId<NodeId>>, String> {
        let mut log = self.core.log_store.clone();
        log.get_log_state()
            .await
            .map(|state| state.last_log_id)
            .map_err(|e| format!("reading the log: {e}"))
    }

    async fn stand(&self, why: &str) {
        if let Err(e) = self.core.raft.trigger().elect().await {
            tracing::warn!(error = %e, why, "could not start an election");
        }
    }

    /// Asks every other voter whether it would vote for this node in the next term; `Ok` with
    /// the voters that said yes once they (and this node) are a quorum of every configuration,
    /// else `Err` with the refusals. Each answer may take up to `timeout` (an unreachable voter
    /// says nothing). A node of an older build, which has no `pre-vote` route (404), counts as
    /// a yes: it would take part in the election by openraft's own rules, as before PreVote.
    async fn pre_vote_round(
        &self,
        standing: &Standing,
        timeout: Duration,
    ) -> Result<BTreeSet<NodeId>, String> {
        let request = PreVoteRequest {
            candidate: self.core.id,
            term: standing.term + 1,
            last_log_id: self.last_log_id().await?,
        };
        let addrs: Vec<(NodeId, String)> = {
            let metrics = self.core.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            standing
                .voters
                .iter()
                .filter(|id| **id != self.core.id)
                .filter_map(|id| membership.get_node(id).map(|n| (*id, n.addr.clone())))
                .collect()
        };
        let mut asks = tokio::task::JoinSet::new();
        for (id, addr) in addrs {
            let peers = self.core.peers.clone();
            let request = request.clone();
            asks.spawn(async move {
                let answer = peers
                    .call::<_, PreVoteAnswer>(&addr, Some(id), path::PRE_VOTE, &request, timeout)
                    .await
                    .unwrap_or_else(|e| {
                        let older_build = matches!(
                            &e,
                            CallError::Status { status, .. } if *status == StatusCode::NOT_FOUND
                        );
                        PreVoteAnswer {
                            granted: older_build,
                            reason: Some(e.to_string()),
                        }
                    });
                (id, answer)
            });
        }
        let mut granted = BTreeSet::from([self.core.id]);
        let mut refusals = Vec::new();
        while let Some(done) = asks.join_next().await {
            let Ok((id, answer)) = done else { continue };
            if answer.granted {
                granted.insert(id);
                if standing.is_quorum(&granted) {
                    // The rest need not be waited for (dropping the set aborts them).
                    return Ok(granted);
                }
            } else {
                refusals.push(format!(
                    "node {id}: {}",
                    answer.reason.as_deref().unwrap_or("refused")
                ));
            }
        }
        Err(refusals.join("; "))
    }

    /// A voter's answer to a pre-vote (module docs). Changes nothing here.
    pub(crate) async fn answer_pre_vote(&self, request: PreVoteRequest) -> PreVoteAnswer {
        let refuse = |reason: String| PreVoteAnswer {
            granted: false,
            reason: Some(reason),
        };
        let Some(standing) = self.standing() else {
            return refuse("this node is stopping".to_string());
        };
        if !standing.voters.contains(&request.candidate) {
            return refuse(format!("node {} is not a voter", request.candidate));
        }
        if let Some(reason) = self.core.log_store.vote_refusal(request.last_log_id) {
            return refuse(reason);
        }
        let last_log_id = match self.last_log_id().await {
            Ok(last_log_id) => last_log_id,
            Err(e) => return refuse(e),
        };
        if request.last_log_id < last_log_id {
            return refuse(format!(
                "the candidate's log ends at {:?}, before this node's {last_log_id:?}",
                request.last_log_id
            ));
        }
        if standing.state == ServerState::Leader {
            return match self.leadership.cut_off_from_quorum() {
                Some(reason) => PreVoteAnswer {
                    granted: true,
                    reason: Some(reason),
                },
                None => refuse("this node leads and a quorum accepts it".to_string()),
            };
        }
        let reached = self.leadership.since_leader_reached();
        if reached <= self.core.lease {
            return refuse(format!(
                "a leader reached this node {} ms ago",
                reached.as_millis()
            ));
        }
        PreVoteAnswer {
            granted: true,
            reason: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standing(configs: &[&[NodeId]]) -> Standing {
        let configs: Vec<BTreeSet<NodeId>> = configs
            .iter()
            .map(|c| c.iter().copied().collect())
            .collect();
        Standing {
            state: ServerState::Follower,
            term: 1,
            voters: configs.iter().flatten().copied().collect(),
            configs,
        }
    }

    #[test]
    fn a_quorum_is_a_majority_of_every_configuration() {
        let one = standing(&[&[1, 2, 3]]);
        assert!(!one.is_quorum(&BTreeSet::from([1])));
        assert!(one.is_quorum(&BTreeSet::from([1, 3])));
        // Joint {1,2,3} and {1,2,4}: {1,2} is a majority of both, though 2 of the 4 voters.
        let joint = standing(&[&[1, 2, 3], &[1, 2, 4]]);
        assert!(joint.is_quorum(&BTreeSet::from([1, 2])));
        assert!(joint.is_quorum(&BTreeSet::from([1, 3, 4])));
        // A majority of the first configuration only, and of neither.
        assert!(!joint.is_quorum(&BTreeSet::from([1, 3])));
        assert!(!joint.is_quorum(&BTreeSet::from([3, 4])));
    }
}
