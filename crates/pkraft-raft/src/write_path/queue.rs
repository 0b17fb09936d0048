//! The publish queue in front of the batching task (`batcher`), and the types of a publish's
//! answer.

use std::time::Duration;

use std::sync::Arc;

use pkraft_state::StoreError;
use pkraft_types::{PublishItem, PublishOutcome};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::peer::WirePublishError;
use crate::reason::Reason;

/// The result of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub outcome: PublishOutcome,
    /// Replicas known to hold the entry the outcome rests on (the leader counts itself).
    pub replicas: usize,
    /// Index of the log entry the packet was committed in; for a packet answered from the local
    /// replica (not `Stored`), the last entry applied there, which holds the packet it lost to.
    pub log_index: u64,
}

/// Why a publish has no outcome. The causes are kept (the reasons' sources, the replica's
/// error); a leader's answer to a forwarded publish crosses the peer wire as text
/// ([`WirePublishError`], converted by [`PublishError::to_wire`] and
/// [`PublishError::from_wire`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// No leader, or the entry did not commit in time. The packet may still commit later;
    /// retrying is safe, since re-publishing the same packet changes nothing.
    #[error(transparent)]
    Unavailable(Reason),
    /// Consensus or storage failed on this node; Raft has stopped and the daemon exits (see
    /// [`Node::wait_fatal`]). Retry on another node.
    #[error(transparent)]
    Fatal(Reason),
    /// This node could not read its own replica for the fast answer (the relay logs it as a
    /// storage failure). Never sent between nodes.
    #[error("reading this node's replica: {0}")]
    Replica(#[source] Arc<StoreError>),
    /// The cluster stores no new keys now: the store is at its cap, or the disk below the
    /// new-key reserve (`store_cap`). A republish of a stored key is not refused so. Sent from
    /// the leader only to a follower that says it decodes it (`ForwardedPublish`); one of an
    /// older build gets `Unavailable` with the same reason.
    #[error("{0}")]
    NoRoom(String),
}

impl PublishError {
    /// As the leader answers a forwarded publish: the text of each reason, and `NoRoom` as
    /// `Unavailable` with the same reason for a follower that does not decode it
    /// (`answers_no_room` false: a follower of an older build).
    pub(crate) fn to_wire(&self, answers_no_room: bool) -> WirePublishError {
        match self {
            PublishError::Unavailable(reason) => WirePublishError::Unavailable(reason.to_string()),
            PublishError::Fatal(reason) => WirePublishError::Fatal(reason.to_string()),
            PublishError::Replica(e) => WirePublishError::Replica(e.to_string()),
            PublishError::NoRoom(reason) if answers_no_room => {
                WirePublishError::NoRoom(reason.clone())
            }
            PublishError::NoRoom(reason) => WirePublishError::Unavailable(reason.clone()),
        }
    }

    /// The leader's answer to a forwarded publish, on the follower that forwarded it.
    pub(crate) fn from_wire(error: WirePublishError) -> PublishError {
        match error {
            WirePublishError::Unavailable(text) => PublishError::Unavailable(text.into()),
            WirePublishError::Fatal(text) => PublishError::Fatal(text.into()),
            // Never sent: a replica the leader could not read is not this node's.
            WirePublishError::Replica(text) => {
                PublishError::Fatal(format!("reading the leader's replica: {text}").into())
            }
            WirePublishError::NoRoom(text) => PublishError::NoRoom(text),
        }
    }
}

/// How long a close waits for the batcher it aborted to be dropped.
const ABORTED_BATCHER_WAIT: Duration = Duration::from_secs(1);

/// The publish queue in front of Raft; see the module docs.
pub(crate) struct PublishQueue {
    /// Taken on shutdown to close the queue.
    batcher: std::sync::Mutex<Option<(Batcher, JoinHandle<()>)>>,
}

impl PublishQueue {
    /// A queue that takes nothing until [`PublishQueue::install`].
    pub(crate) fn new() -> PublishQueue {
        PublishQueue {
            batcher: std::sync::Mutex::new(None),
        }
    }

    /// Takes publishes from now on, into `batcher` (its task: `batcher::spawn`).
    pub(crate) fn install(&self, batcher: (Batcher, JoinHandle<()>)) {
        if let Ok(mut slot) = self.batcher.lock() {
            *slot = Some(batcher);
        }
    }

    pub(crate) fn enqueue(
        &self,
        item: PublishItem,
        origin: Origin,
    ) -> Result<Outcome, PublishError> {
        let batcher = self
            .batcher
            .lock()
            .map_err(|_| PublishError::Fatal("the publish queue lock is poisoned".into()))?;
        match batcher.as_ref() {
            Some((batcher, _)) => batcher.enqueue(item, origin),
            None => Err(stopping()),
        }
    }

    /// Closes the queue and lets the batches in flight answer their publishers, but not for
    /// longer than `timeout` (what a publisher would wait): a commit that never returns (a hung
    /// disk) must not hang the shutdown.
    pub(crate) async fn close(&self, timeout: Duration) {
        let batcher = self.batcher.lock().ok().and_then(|mut b| b.take());
        let Some((queue, mut task)) = batcher else {
            return;
        };
        drop(queue);
        match tokio::time::timeout(timeout, &mut task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the publish batcher ended abnormally"),
            Err(_) => {
                tracing::warn!(?timeout, "publish batches still in flight; stopping anyway");
                task.abort();
                // Until the runtime drops it, the aborted batcher holds the write path (and
                // with it the node's core); a moment, not another `timeout`.
                let _ended = tokio::time::timeout(ABORTED_BATCHER_WAIT, task).await;
            }
        }
    }
}

pub(super) type Reply = oneshot::Sender<Result<Published, PublishError>>;
/// Where a queued publish learns its outcome.
pub(crate) type Outcome = oneshot::Receiver<Result<Published, PublishError>>;

pub(crate) fn stopping() -> PublishError {
    PublishError::Unavailable("the node is stopping".into())
}

/// Where a publish entered the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A client of this node.
    Local,
    /// Forwarded by a follower. Never forwarded again: if this node is no longer the leader, the
    /// follower learns so and reroutes, which keeps publishes from circling.
    Forwarded,
}

pub(super) struct Pending {
    pub(super) item: PublishItem,
    pub(super) origin: Origin,
    pub(super) reply: Reply,
}

/// The queue in front of the batching task.
pub(crate) struct Batcher {
    queue: mpsc::Sender<Pending>,
}

impl Batcher {
    /// A queue of at most `queue_max` publishes, and the end the batching task reads.
    pub(super) fn new(queue_max: usize) -> (Batcher, mpsc::Receiver<Pending>) {
        let (queue, pending) = mpsc::channel(queue_max.max(1));
        (Batcher { queue }, pending)
    }

    /// Queues `item` without waiting; the receiver yields the outcome of the entry it is
    /// committed in. A full queue is an immediate error (back-pressure), not a wait.
    pub(crate) fn enqueue(
        &self,
        item: PublishItem,
        origin: Origin,
    ) -> Result<Outcome, PublishError> {
        let (reply, outcome) = oneshot::channel();
        self.queue
            .try_send(Pending {
                item,
                origin,
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    PublishError::Unavailable("too many publishes waiting to commit".into())
                }
                mpsc::error::TrySendError::Closed(_) => stopping(),
            })?;
        Ok(outcome)
    }
}
