//! The write path: the one way a packet gets into the store, on any node.
//!
//! [`Writes::publish`] takes a verified packet and answers with its [`PublishOutcome`]:
//! 1. **Fast answer** from the local replica, read once ([`Admission`], which the relay's rate
//!    limits use too): anything stored there was committed, so a packet that loses to it (or
//!    equals it) under the ordering rule would lose in the log too. It is answered without a
//!    round of consensus (409 or 204 over HTTP).
//! 2. Otherwise it is queued for **group commit** (`batcher`): concurrent publishes share one
//!    log entry. On the leader the batch is proposed; on a follower it is **forwarded** to the
//!    leader in one peer request ([`Writes::publish_forwarded`] on the other side), and answered once
//!    the leader committed it and (bounded) once this node applied it, so a client reads its write
//!    back from the node it wrote to.
//!
//! Every wait is bounded by `raft.publish_timeout`; the answer after it is
//! [`PublishError::Unavailable`] (503 + Retry-After over HTTP).

mod admission;
mod batcher;
pub(crate) mod queue;

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft};
use pkraft_types::{PublishItem, PublishOutcome, VerifiedPacket};

pub use admission::Admission;
use queue::{Origin, Outcome, PublishQueue, stopping};
pub use queue::{PublishError, Published};

use crate::cluster_clock::ClusterClock;
use crate::leadership::Leadership;
use crate::node_core::Core;
use crate::reason::Reason;
use crate::request_error::RequestError;
use crate::settings::Settings;
use crate::store_cap::{NewKeyRefusal, StoreCap};
use crate::{NodeId, TypeConfig};

/// The node's write path: the publish queue, its batching task, and what a publish needs on
/// its way (see the module docs).
pub struct Writes {
    /// The node's handles and fixed settings (`node_core`).
    pub(crate) core: Arc<Core>,
    /// The cap on stored packets and the new keys counted against it (`store_cap`).
    store_cap: StoreCap,
    leadership: Arc<Leadership>,
    /// Stamps each batch the leader proposes.
    clock: Arc<ClusterClock>,
    /// The count of this node's durable log appends (`LogStore::appends`): a proposed batch
    /// gives up its append slot once the count has moved (`batcher`).
    appends: tokio::sync::watch::Receiver<u64>,
    queue: PublishQueue,
}

impl Writes {
    /// A write path that takes nothing until [`Writes::start`]; `store_cap` counts the new keys
    /// against the cap on stored packets.
    pub(crate) fn new(
        core: &Arc<Core>,
        store_cap: StoreCap,
        leadership: Arc<Leadership>,
        clock: Arc<ClusterClock>,
    ) -> Writes {
        Writes {
            core: core.clone(),
            store_cap,
            leadership,
            clock,
            appends: core.log_store.appends(),
            queue: PublishQueue::new(),
        }
    }

    /// Starts the batching task of the publish queue.
    pub(crate) fn start(self: &Arc<Self>, settings: &Settings) {
        self.queue.install(batcher::spawn(
            self.clone(),
            settings.publish_queue_max,
            settings.publish_batch_max,
        ));
    }

    /// Closes the queue and lets the batches in flight answer their publishers, for at most
    /// `raft.publish_timeout`.
    pub(crate) async fn close(&self) {
        self.queue.close(self.core.publish_timeout).await;
    }

    /// Publishes `packet`: answered from the local replica when it would not change it, else
    /// committed through Raft and returned once applied on this node. Concurrent publishes are
    /// committed together (see the module docs).
    pub async fn publish(&self, packet: VerifiedPacket) -> Result<Published, PublishError> {
        let admission = self.admit(&packet.key_bytes());
        self.publish_admitted(packet, admission).await
    }

    /// [`Writes::publish`] with the replica already read for the packet's key
    /// ([`Writes::admit`]: the relay reads it once, for its rate limits and for this).
    pub async fn publish_admitted(
        &self,
        packet: VerifiedPacket,
        admission: Admission,
    ) -> Result<Published, PublishError> {
        if let Some(e) = admission.unreadable() {
            return Err(PublishError::Replica(e.clone()));
        }
        match admission.outcome(&packet) {
            PublishOutcome::Stored => {
                // Refused here too, not only by the leader: this node could not take the entry
                // from the leader, so the client would not read its write back from it.
                if let Some(reason) = self.core.disk_space.refusal() {
                    self.core.metrics.publish_refused("disk_full", 1);
                    return Err(PublishError::Unavailable(reason.into()));
                }
                // The quick check; the leader's is the one that holds (`store_cap`).
                if let Some(reason) = self.refuse_new_key(|| admission.is_republish()) {
                    return Err(PublishError::NoRoom(reason));
                }
                let outcome = self.queue.enqueue(packet.into(), Origin::Local)?;
                let deadline = tokio::time::Instant::now() + self.core.publish_timeout;
                self.await_outcome_until(outcome, deadline).await
            }
            known => Ok(Published {
                outcome: known,
                replicas: self.replica_count(),
                log_index: self
                    .core
                    .raft
                    .metrics()
                    .borrow()
                    .last_applied
                    .map_or(0, |log_id| log_id.index),
            }),
        }
    }

    /// Whether a publish is refused as a new key now, and why: the disk is below
    /// `raft.new_keys_min_free_disk_mib` or the store at its cap (`store_cap`), by what this
    /// node knows (its disk, a count of its replica at most 100 ms old), and `held` (asked only
    /// then) says false: this replica does not hold the key. A refusal is counted in
    /// `pkraft_raft_publish_refused_total`. Two atomic loads while there is room: cheap enough
    /// to ask before a request's body is read.
    pub fn refuse_new_key(&self, held: impl FnOnce() -> bool) -> Option<String> {
        let refusal = self
            .core
            .disk_space
            .new_keys_refusal()
            .map(NewKeyRefusal::disk)
            .or_else(|| self.store_cap.refusal(&self.core.store))?;
        if held() {
            return None;
        }
        self.core.metrics.publish_refused(refusal.label, 1);
        Some(refusal.reason)
    }

    /// Commits publishes a follower forwarded; only the leader takes them (the follower then
    /// retries with the leader it learns of). No fast answer here: the follower gave it already.
    pub(crate) async fn publish_forwarded(
        &self,
        packets: Vec<PublishItem>,
    ) -> Result<Vec<Result<Published, PublishError>>, RequestError> {
        if !self.leadership.is_leader() || self.leadership.handing_over() {
            return Err(RequestError::NotLeader {
                leader: self.leadership.known_leader().map(|(id, _)| id),
            });
        }
        // All are queued before any is awaited, so they share batches, and all wait until one
        // deadline: the follower's request is answered within `publish_timeout`, however many
        // packets it carries.
        let deadline = tokio::time::Instant::now() + self.core.publish_timeout;
        let queued: Vec<_> = packets
            .into_iter()
            .map(|item| self.queue.enqueue(item, Origin::Forwarded))
            .collect();
        let mut answers = Vec::with_capacity(queued.len());
        for outcome in queued {
            answers.push(match outcome {
                Ok(outcome) => self.await_outcome_until(outcome, deadline).await,
                Err(e) => Err(e),
            });
        }
        Ok(answers)
    }

    async fn await_outcome_until(
        &self,
        outcome: Outcome,
        deadline: tokio::time::Instant,
    ) -> Result<Published, PublishError> {
        match tokio::time::timeout_at(deadline, outcome).await {
            Ok(Ok(result)) => result,
            // The batcher dropped the reply: it is stopping.
            Ok(Err(_)) => Err(stopping()),
            Err(_) => Err(PublishError::Unavailable(
                format!("not committed within {:?}", self.core.publish_timeout).into(),
            )),
        }
    }

    /// Replicas known to hold everything this node has applied.
    pub fn replica_count(&self) -> usize {
        let applied = self.core.raft.metrics().borrow().last_applied;
        applied.map_or(1, |log_id| replicas_holding(&self.core.raft, log_id.index))
    }
}

/// Replicas whose log reaches `index`, a committed index. Only the leader tracks its followers;
/// elsewhere the answer is this node alone.
fn replicas_holding(raft: &Raft<TypeConfig>, index: u64) -> usize {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let Some(replication) = &metrics.replication else {
        return 1;
    };
    let holding = replication
        .values()
        .filter(|matched| matched.is_some_and(|log_id| log_id.index >= index))
        .count();
    // A committed entry is held by a majority of the voters, whatever the metrics say yet: Raft
    // publishes them after it answers the write, so they can be a round behind (CI once saw 1
    // for an entry a 3-node cluster had committed: t10_put_through_a_follower_is_served_by_every_node).
    let majority = metrics.membership_config.membership().voter_ids().count() / 2 + 1;
    holding.max(majority)
}

fn publish_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> PublishError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            PublishError::Unavailable(match forward.leader_id {
                Some(leader) => format!("node {leader} is the leader").into(),
                None => "no leader is elected".into(),
            })
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            PublishError::Fatal(Reason::of(e))
        }
        RaftError::Fatal(fatal) => PublishError::Fatal(Reason::of(fatal)),
    }
}
