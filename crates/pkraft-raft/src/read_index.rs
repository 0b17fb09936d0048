//! Read-index rounds shared by concurrent linearizable reads (etcd coalesces ReadIndex the same
//! way). Every `?consistency=linearizable` GET needs a read index: on the leader, a round of
//! `ensure_linearizable` (openraft 0.9 sends an AppendEntries to every voter for each call); on
//! a follower, a `read-index` request to the leader. One per read made 2,000 reads at once 2,000
//! quorum rounds (p99 0.9 s, connections refused: docs/BENCHMARKS.md).
//!
//! Here one task per node runs the rounds, one at a time: it takes every request queued, asks
//! once for all of them, and answers each with the same index. A request queued while a round
//! runs waits for the next round, which starts after it arrived, so the index still covers
//! every write committed before the read began (linearizability). The queue is bounded
//! (`QUEUE_MAX`): beyond it a read is refused at once (503) instead of waiting without bound.
//! The leader's own `read-index` route joins the same rounds, so followers' requests and the
//! leader's local reads share a leadership check too.
//!
//! This file is the queue and what a round answers; the task that runs the rounds, which asks
//! [`crate::reads::Reads`] for the index, is `read_index_task.rs`.

use std::sync::{Mutex, PoisonError};

use tokio::sync::{mpsc, oneshot};

use crate::NodeId;
use crate::metrics::NodeMetrics;
use crate::reason::Reason;
use crate::request_error::RequestError;

/// Most reads waiting for a read index on one node; more are refused at once.
pub const QUEUE_MAX: usize = 4096;

/// What one round answers a read with.
#[derive(Debug, Clone)]
pub(crate) enum RoundAnswer {
    /// Apply up to this index (`None`: nothing was ever committed), then read.
    Index(Option<u64>),
    /// The leader moved, went silent or could not confirm its leadership: ask again after news
    /// of the leader (`leader` is the one the round asked, if any).
    Reroute {
        leader: Option<NodeId>,
        reason: Reason,
    },
    /// Asking again will not change it.
    Failed(RequestError),
}

/// One read waiting for a read index.
pub(crate) struct Request {
    /// May the round ask the leader for it (a read on this node), or must this node answer as
    /// leader itself (a follower's `read-index` request: forwarding it would loop).
    pub(crate) forward: bool,
    pub(crate) reply: oneshot::Sender<RoundAnswer>,
}

/// The queue of reads and the receiving end its task takes.
pub(crate) struct ReadIndexQueue {
    sender: mpsc::Sender<Request>,
    receiver: Mutex<Option<mpsc::Receiver<Request>>>,
}

impl Default for ReadIndexQueue {
    fn default() -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE_MAX);
        ReadIndexQueue {
            sender,
            receiver: Mutex::new(Some(receiver)),
        }
    }
}

impl ReadIndexQueue {
    /// Queues a read for the next round and waits for its answer. `forward`: the round may ask
    /// the leader for it (see [`Request::forward`]). A full queue is refused at once, counted
    /// in `read_index_refused`.
    pub(crate) async fn join(&self, forward: bool, metrics: &NodeMetrics) -> RoundAnswer {
        let (reply, answer) = oneshot::channel();
        if self.sender.try_send(Request { forward, reply }).is_err() {
            metrics.read_index_refused.inc();
            return RoundAnswer::Failed(RequestError::Unavailable(
                format!(
                    "{QUEUE_MAX} linearizable reads are already waiting for a read index on this \
                     node"
                )
                .into(),
            ));
        }
        answer.await.unwrap_or_else(|_| {
            RoundAnswer::Failed(RequestError::Unavailable(
                "the read-index task stopped".into(),
            ))
        })
    }

    /// The receiving end, for the task that runs the rounds; `None` while a run holds it.
    pub(crate) fn take_receiver(&self) -> Option<mpsc::Receiver<Request>> {
        self.receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Gives the receiving end back when a run ends, so the next run takes it again.
    pub(crate) fn put_back(&self, receiver: mpsc::Receiver<Request>) {
        *self.receiver.lock().unwrap_or_else(PoisonError::into_inner) = Some(receiver);
    }
}
