//! Read consistency. Reads come from the local replica; this module says how stale it may be and
//! provides the linearizable read barrier (ReadIndex) for reads that ask for one.

use std::time::Duration;

use openraft::ServerState;
use openraft::error::{CheckIsLeaderError, RaftError};

use crate::NodeId;
use crate::node::Node;
use crate::peer::{PeerError, path};

/// Why a linearizable read cannot be served now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("linearizable read unavailable: {0}")]
pub struct ReadError(pub String);

/// Committed entries a ready node may not have applied yet. openraft records the commit index
/// before it hands the entries to the state machine, so a node under write load is always a
/// batch or two behind for a moment; a node catching up after a restart is thousands behind.
pub const READY_APPLY_LAG_MAX: u64 = 256;

/// What `/readyz` reports; see [`Node::readiness`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Why not, when not ready.
    pub reasons: Vec<String>,
    pub leader: Option<NodeId>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Since this node last knew its replica to be current (see [`Node::staleness`]).
    pub staleness_ms: Option<u64>,
}

impl Node {
    /// How long ago this node last had confirmation that its replica is current: on the leader,
    /// the last time a quorum acknowledged it (zero when it is the only voter); elsewhere, the
    /// last accepted `append-entries` from the leader. `None` if never since start.
    pub fn staleness(&self) -> Option<Duration> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        if metrics.state == ServerState::Leader {
            let only_voter = metrics
                .membership_config
                .membership()
                .voter_ids()
                .eq([self.id]);
            if only_voter {
                return Some(Duration::ZERO);
            }
            return metrics.millis_since_quorum_ack.map(Duration::from_millis);
        }
        self.leader_contact.elapsed()
    }

    /// Whether this node should get traffic (`/readyz`): it knows a leader, has heard from it
    /// (or, leading, from a quorum) within `max_stale`, is not catching up after a crash (see
    /// [`Node::catching_up`]), and has applied the entries it knows to be committed, up to
    /// [`READY_APPLY_LAG_MAX`]. The reasons say what is missing.
    pub fn readiness(&self, max_stale: Duration) -> Readiness {
        let metrics = self.raft.metrics().borrow().clone();
        let staleness = self.staleness();
        let committed = self.log_store.committed_index();
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
        }
    }

    /// Returns once this node's replica holds every write committed before the call (ReadIndex):
    /// the leader confirms it still leads with a quorum round and names its commit index; this
    /// node waits until it has applied that far. Bounded by `raft.publish_timeout`.
    pub async fn read_barrier(&self) -> Result<(), ReadError> {
        let index = if self.is_leader() {
            self.read_index_as_leader()
                .await
                .map_err(|e| ReadError(e.to_string()))?
        } else {
            let (leader, addr) = self
                .known_leader()
                .ok_or_else(|| ReadError("no leader is elected".to_string()))?;
            let answer: Result<Option<u64>, PeerError> = self
                .peers
                .call(
                    &addr,
                    Some(leader),
                    path::READ_INDEX,
                    &(),
                    self.publish_timeout,
                )
                .await
                .map_err(|e| ReadError(e.to_string()))?;
            answer.map_err(|e| ReadError(e.to_string()))?
        };
        if index.is_some() {
            self.raft
                .wait(Some(self.publish_timeout))
                .applied_index_at_least(index, "apply up to the read index")
                .await
                .map_err(|e| ReadError(format!("catching up to the read index: {e}")))?;
        }
        Ok(())
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
    pub(crate) async fn read_index_as_leader(&self) -> Result<Option<u64>, PeerError> {
        let ensured = tokio::time::timeout(self.publish_timeout, self.raft.ensure_linearizable())
            .await
            .map_err(|_| {
                PeerError::Unavailable(format!(
                    "no quorum confirmed leadership within {:?}",
                    self.publish_timeout
                ))
            })?;
        match ensured {
            Ok(log_id) => {
                let term = self.raft.metrics().borrow().current_term;
                let floor = self
                    .log_end_at_start
                    .filter(|log_end| log_end.leader_id.term == term)
                    .map(|log_end| log_end.index);
                Ok(log_id.map(|log_id| log_id.index).max(floor))
            }
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                Err(PeerError::NotLeader {
                    leader: forward.leader_id,
                })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(PeerError::Unavailable(e.to_string()))
            }
            Err(RaftError::Fatal(fatal)) => Err(PeerError::Fatal(fatal.to_string())),
        }
    }
}
