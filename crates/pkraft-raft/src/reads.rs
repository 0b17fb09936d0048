//! [`Reads`]: reads from the local replica at the consistency the caller asks for, how stale
//! the replica may be, and the linearizable read barrier (ReadIndex) for reads that ask for one.

use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::ServerState;
use openraft::error::{CheckIsLeaderError, RaftError};
use pkraft_state::{StoreError, StoredPacket};
use pkraft_types::KeyBytes;
use tokio::time::Instant;

use std::sync::Arc;

use crate::NodeId;
use crate::cluster_clock::ClusterClock;
use crate::freshness::Freshness;
use crate::leadership::Leadership;
use crate::node_core::Core;
use crate::peer::path;
use crate::read_index::{ReadIndexQueue, RoundAnswer};
use crate::reason::Reason;
use crate::request_error::{RequestError, ask};

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// This node's replica as it is, which may lag the leader by the replication delay (the
    /// default; DNS always reads this way). Refused only while the node catches up after a crash.
    #[default]
    Local,
    /// First make sure this node's replica holds every write committed before the read (a
    /// ReadIndex round through the leader).
    Linearizable,
}

impl Consistency {
    /// The name clients use (`?consistency=` over HTTP).
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Local => "local",
            Consistency::Linearizable => "linearizable",
        }
    }
}

/// A consistency name that is neither `local` nor `linearizable`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown consistency {0:?}: use \"local\" (the default) or \"linearizable\"")]
pub struct UnknownConsistency(pub String);

impl FromStr for Consistency {
    type Err = UnknownConsistency;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        [Consistency::Local, Consistency::Linearizable]
            .into_iter()
            .find(|consistency| consistency.as_str() == name)
            .ok_or_else(|| UnknownConsistency(name.to_string()))
    }
}

/// Why a read cannot be served now.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// This node restarted after a crash and its replica may still be older than what it served
    /// before (see [`Reads::catching_up`]). Retry later or elsewhere.
    #[error(
        "this node restarted after a crash and is catching up with the cluster; its replica may \
         be older than what it served before"
    )]
    CatchingUp,
    /// The linearizable read barrier could not be passed (no leader, no quorum, or not applied
    /// in time). Retry later. The reason is mostly the leader's, over the peer wire (text), and
    /// shared by every read of the round that asked; one found on this node keeps its cause.
    #[error("linearizable read unavailable: {0}")]
    Unavailable(#[source] Reason),
    /// The replica could not be read: this node is failing.
    #[error("reading this node's replica: {0}")]
    Replica(#[from] StoreError),
}

/// Why a read index could not be had from the leader. The round hands the reason to every
/// read waiting on it (`RoundAnswer`, cloned: the cause is shared), and a follower asked for a
/// read index sends it on as text.
pub(crate) enum ReadIndexFailed {
    /// The leader moved, went silent or could not confirm its leadership yet: ask the leader
    /// again (the next one) until the deadline. A read index changes nothing, so asking twice
    /// is harmless.
    Reroute(Reason),
    /// An answer that asking again will not change.
    Final(Reason),
}

/// Committed entries a ready node may not have applied yet. openraft records the commit index
/// before it hands the entries to the state machine, so a node under write load is always a
/// batch or two behind for a moment; a node catching up after a restart is thousands behind.
pub const READY_APPLY_LAG_MAX: u64 = 256;

/// What `/readyz` reports; see [`Reads::readiness`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Why not, when not ready.
    pub reasons: Vec<String>,
    pub leader: Option<NodeId>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Since this node last knew its replica to be current (see [`Reads::staleness`]).
    pub staleness_ms: Option<u64>,
    /// This node's clock against the cluster's (`cluster_clock`).
    pub clock: crate::cluster_clock::ClockReport,
}

/// The node's reads: the replica, what it knows of the replica's freshness, and the read-index
/// rounds of linearizable reads.
pub struct Reads {
    /// The node's handles and fixed settings (`node_core`).
    pub(crate) core: Arc<Core>,
    pub(crate) leadership: Arc<Leadership>,
    clock: Arc<ClusterClock>,
    freshness: Freshness,
    /// Linearizable reads waiting for a shared read-index round (`read_index`).
    read_index: ReadIndexQueue,
}

impl Reads {
    /// `freshness`: what the start found of the replica's freshness.
    pub(crate) fn new(
        core: &Arc<Core>,
        leadership: Arc<Leadership>,
        clock: Arc<ClusterClock>,
        freshness: Freshness,
    ) -> Reads {
        Reads {
            core: core.clone(),
            leadership,
            clock,
            freshness,
            read_index: ReadIndexQueue::default(),
        }
    }

    /// The queue of reads waiting for a read index, for its task (`read_index_task::run`).
    pub(crate) fn read_index(&self) -> &ReadIndexQueue {
        &self.read_index
    }

    /// A read index for a read on this node (asked of the leader when this node does not lead),
    /// from the next round.
    pub(crate) async fn shared_read_index(&self) -> RoundAnswer {
        self.read_index.join(true, &self.core.metrics).await
    }

    /// The leader's read index for a follower's `read-index` request, from the next round;
    /// `NotLeader` when this node does not lead by then.
    pub(crate) async fn shared_read_index_as_leader(&self) -> Result<Option<u64>, RequestError> {
        match self.read_index.join(false, &self.core.metrics).await {
            RoundAnswer::Index(index) => Ok(index),
            RoundAnswer::Reroute { reason, .. } => Err(RequestError::Unavailable(reason)),
            RoundAnswer::Failed(error) => Err(error),
        }
    }

    /// The packet stored for `key` on this node's replica, read at `consistency`: the one read
    /// path of the HTTP relay.
    pub async fn read(
        &self,
        key: &KeyBytes,
        consistency: Consistency,
    ) -> Result<Option<StoredPacket>, ReadError> {
        match consistency {
            Consistency::Local if self.catching_up() => return Err(ReadError::CatchingUp),
            Consistency::Local => {}
            Consistency::Linearizable => self.read_barrier().await?,
        }
        Ok(self.core.store.get(key)?)
    }

    /// Whether local reads must wait: this node restarted after a crash and its replica may
    /// still be older than what it served before (see [`CatchUp`]).
    pub fn catching_up(&self) -> bool {
        let Some(catch_up) = &self.freshness.catch_up else {
            return false;
        };
        if catch_up.done.load(Ordering::Relaxed) {
            return false;
        }
        let applied = self.core.raft.metrics().borrow().last_applied;
        let caught_up = applied.is_some_and(|applied| {
            applied.index >= catch_up.log_end.index
                || applied.leader_id.term > catch_up.log_end.leader_id.term
        });
        if caught_up && !catch_up.done.swap(true, Ordering::Relaxed) {
            tracing::info!("caught up after the unclean stop; answering reads from this replica");
        }
        !caught_up
    }

    /// How long ago this node last had confirmation that its replica is current: on the leader,
    /// the last time a quorum acknowledged it (zero when it is the only voter); elsewhere, the
    /// last accepted `append-entries` from the leader. `None` if never since start.
    pub fn staleness(&self) -> Option<Duration> {
        let metrics = self.core.raft.metrics();
        let metrics = metrics.borrow();
        if metrics.state == ServerState::Leader {
            let only_voter = metrics
                .membership_config
                .membership()
                .voter_ids()
                .eq([self.core.id]);
            if only_voter {
                return Some(Duration::ZERO);
            }
            return metrics.millis_since_quorum_ack.map(Duration::from_millis);
        }
        self.leadership.since_leader_contact()
    }

    /// Whether this node should get traffic (`/readyz`): it knows a leader, has heard from it
    /// (or, leading, from a quorum) within `max_stale`, is not catching up after a crash (see
    /// [`Reads::catching_up`]), and has applied the entries it knows to be committed, up to
    /// [`READY_APPLY_LAG_MAX`]. The reasons say what is missing.
    pub fn readiness(&self, max_stale: Duration) -> Readiness {
        let metrics = self.core.raft.metrics().borrow().clone();
        let staleness = self.staleness();
        let committed = self.core.log_store.committed_index();
        let applied = metrics.last_applied.map(|log_id| log_id.index);
        let mut reasons = Vec::new();
        if metrics.current_leader.is_none() {
            reasons.push("no leader is known".to_string());
        }
        match staleness {
            None => reasons.push("has not heard from a leader since it started".to_string()),
            Some(stale) if stale > max_stale => reasons.push(format!(
                "last heard from the leader {} ms ago (bound {} ms)",
                stale.as_millis(),
                max_stale.as_millis()
            )),
            Some(_) => {}
        }
        let backlog = match (committed, applied) {
            (Some(committed), Some(applied)) => committed.saturating_sub(applied),
            (Some(committed), None) => committed + 1,
            (None, _) => 0,
        };
        if self.catching_up() {
            reasons.push(
                "restarted after a crash and has not caught up with the cluster (local reads are \
                 refused until then)"
                    .to_string(),
            );
        }
        let clock = self.clock.report();
        if clock.state == crate::cluster_clock::ClockState::Offset {
            reasons.push(format!(
                "this node's wall clock is {} ms off the voters' median (bound raft.max_clock_offset = {} ms); check NTP",
                clock.offset_ms.unwrap_or_default(),
                self.clock.bounds().max_offset.as_millis()
            ));
        }
        if backlog > READY_APPLY_LAG_MAX {
            reasons.push(format!(
                "has applied up to index {} of the {} it knows to be committed",
                applied.map_or_else(|| "none".to_string(), |index| index.to_string()),
                committed.unwrap_or_default()
            ));
        }
        Readiness {
            ready: reasons.is_empty(),
            reasons,
            leader: metrics.current_leader,
            committed_index: committed,
            applied_index: applied,
            staleness_ms: staleness
                .map(|stale| u64::try_from(stale.as_millis()).unwrap_or(u64::MAX)),
            clock,
        }
    }

    /// Returns once this node's replica holds every write committed before the call (ReadIndex):
    /// the leader confirms it still leads with a quorum round and names its commit index; this
    /// node waits until it has applied that far. Bounded by `raft.publish_timeout`.
    pub async fn read_barrier(&self) -> Result<(), ReadError> {
        let deadline = Instant::now() + self.core.publish_timeout;
        // The read index comes from a round shared with the reads queued with this one
        // (`read_index`): one leadership check, or one request to the leader, for all of them.
        let index = loop {
            let expired = || Instant::now() >= deadline;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let answer = tokio::time::timeout(remaining, self.shared_read_index()).await;
            let Ok(answer) = answer else {
                return Err(ReadError::Unavailable(
                    "no read index from the leader in time".into(),
                ));
            };
            match answer {
                RoundAnswer::Index(index) => break index,
                RoundAnswer::Failed(error) => {
                    return Err(ReadError::Unavailable(Reason::of(error)));
                }
                RoundAnswer::Reroute { reason, .. } if expired() => {
                    return Err(ReadError::Unavailable(reason));
                }
                RoundAnswer::Reroute { leader, reason } => {
                    tracing::debug!(%reason, ?leader, "read index failed; rerouting");
                    self.leadership.wait_for_leader_news(leader, deadline).await;
                }
            }
        };
        if index.is_some() {
            self.core
                .raft
                .wait(Some(self.core.publish_timeout))
                .applied_index_at_least(index, "apply up to the read index")
                .await
                .map_err(|e| {
                    ReadError::Unavailable(Reason::caused("catching up to the read index", e))
                })?;
        }
        Ok(())
    }

    /// Asks `leader` (id, peer address) for its read index, giving up as soon as it goes
    /// silent or loses its leadership ([`Leadership::leader_gone`]) instead of at `deadline`.
    pub(crate) async fn read_index_from(
        &self,
        (leader, addr): (NodeId, String),
        deadline: Instant,
    ) -> Result<Option<u64>, ReadIndexFailed> {
        if let Some(reason) = self.leadership.leader_gone(leader) {
            return Err(ReadIndexFailed::Reroute(reason.into()));
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let call = ask(
            &self.core.peers,
            &addr,
            Some(leader),
            path::READ_INDEX,
            &(),
            remaining,
        );
        let answer: Result<Option<u64>, RequestError> = tokio::select! {
            answer = call => answer.map_err(|e| ReadIndexFailed::Reroute(Reason::of(e)))?,
            reason = self.leadership.until_leader_gone(leader) => {
                return Err(ReadIndexFailed::Reroute(reason.into()));
            }
        };
        answer.map_err(|e| match e {
            RequestError::NotLeader { .. } | RequestError::Unavailable(_) => {
                ReadIndexFailed::Reroute(Reason::of(e))
            }
            RequestError::Refused(_) | RequestError::Fatal(_) => {
                ReadIndexFailed::Final(Reason::of(e))
            }
        })
    }

    /// The leader's half of ReadIndex: confirm leadership with a quorum and return the index up
    /// to which a reader must have applied.
    ///
    /// openraft's read index is the larger of its commit index and the first entry of this
    /// leader's term. A leader that restarts keeps its leadership when its vote was committed,
    /// and then starts from the commit index on disk, which pkraft writes at most once a second:
    /// entries of its term committed (and acknowledged) in the second before the crash are above
    /// both. So while it leads in the term of the last entry its log held at start (which only
    /// a leader that kept its leadership across the restart does), the read index is also at
    /// least that entry: everything committed before the restart is in its log, and it commits
    /// its own log. A leader elected in a later term needs no floor: its first entry follows
    /// its whole log. (Found by the chaos harness: docs/TESTING.md, "a linearizable GET
    /// returned an older packet after the leader restarted".)
    ///
    /// The term that decides is the one this node led in when it asked, read before the
    /// check: openraft confirms the leadership the node had when the check reached its core,
    /// and the node may have lost it by the time the answer comes back (a higher vote seen
    /// meanwhile). Read after, the term was the new one, the floor was dropped, and a restarted
    /// leader answered a linearizable GET at its commit index on disk, below an acknowledged
    /// write (found by the simulator, seed 57 of `make sim-ci` on 2026-12-01). A term that has
    /// moved on since only makes the floor one the new term's entries pass in time (a read may
    /// then wait for them, or answer 503 at its deadline: never an older packet).
    pub(crate) async fn read_index_as_leader(&self) -> Result<Option<u64>, RequestError> {
        // A leader no quorum has heard from within the lease cannot confirm its leadership
        // before the partition heals; say so now rather than at the deadline.
        if let Some(reason) = self.leadership.cut_off_from_quorum() {
            return Err(RequestError::Unavailable(reason.into()));
        }
        let asked_in_term = if pkraft_types::planted::is_planted(
            pkraft_types::planted::PlantedBug::ReadFloorByTermAfterTheCheck,
        ) {
            None
        } else {
            Some(self.core.raft.metrics().borrow().current_term)
        };
        let ensured = tokio::time::timeout(
            self.core.publish_timeout,
            self.core.raft.ensure_linearizable(),
        )
        .await
        .map_err(|_| {
            RequestError::Unavailable(
                format!(
                    "no quorum confirmed leadership within {:?}",
                    self.core.publish_timeout
                )
                .into(),
            )
        })?;
        match ensured {
            Ok(log_id) => {
                let term =
                    asked_in_term.unwrap_or_else(|| self.core.raft.metrics().borrow().current_term);
                let floor = self
                    .freshness
                    .log_end_at_start
                    .filter(|log_end| log_end.leader_id.term == term)
                    .map(|log_end| log_end.index);
                Ok(log_id.map(|log_id| log_id.index).max(floor))
            }
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                Err(RequestError::NotLeader {
                    leader: forward.leader_id,
                })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(RequestError::Unavailable(Reason::of(e)))
            }
            Err(RaftError::Fatal(fatal)) => Err(RequestError::Fatal(Reason::of(fatal))),
        }
    }
}
