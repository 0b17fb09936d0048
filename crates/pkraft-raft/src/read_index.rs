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

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::NodeId;
use crate::metrics::NodeMetrics;
use crate::peer::PeerError;
use crate::reads::Reads;

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
        reason: String,
    },
    /// Asking again will not change it.
    Failed(PeerError),
}

/// One read waiting for a read index.
struct Request {
    /// May the round ask the leader for it (a read on this node), or must this node answer as
    /// leader itself (a follower's `read-index` request: forwarding it would loop).
    forward: bool,
    reply: oneshot::Sender<RoundAnswer>,
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
            return RoundAnswer::Failed(PeerError::Unavailable(format!(
                "{QUEUE_MAX} linearizable reads are already waiting for a read index on this node"
            )));
        }
        answer.await.unwrap_or_else(|_| {
            RoundAnswer::Failed(PeerError::Unavailable(
                "the read-index task stopped".to_string(),
            ))
        })
    }
}

/// The node's read-index task: rounds one after the other, each for every read queued when it
/// starts. Supervised (`pkraft_tasks`): after a panic it takes the queue again.
pub(crate) async fn run(reads: Arc<Reads>) {
    let receiver = reads
        .read_index()
        .receiver
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let Some(receiver) = receiver else {
        tracing::error!("the read-index queue has no receiver; linearizable reads fail");
        return;
    };
    // Given back on every exit (a panic unwinds through it), so a new run takes it again.
    let mut held = Held {
        queue: &reads.read_index().receiver,
        receiver: Some(receiver),
    };
    let Some(queue) = held.receiver.as_mut() else {
        return;
    };
    let mut batch = Vec::new();
    loop {
        let Some(first) = queue.recv().await else {
            return;
        };
        batch.push(first);
        while let Ok(next) = queue.try_recv() {
            batch.push(next);
        }
        round(&reads, &mut batch).await;
    }
}

/// The queue's receiver while the task runs; put back when the run ends.
struct Held<'a> {
    queue: &'a Mutex<Option<mpsc::Receiver<Request>>>,
    receiver: Option<mpsc::Receiver<Request>>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(receiver) = self.receiver.take() {
            *self.queue.lock().unwrap_or_else(PoisonError::into_inner) = Some(receiver);
        }
    }
}

/// One round for `batch` (emptied): one leadership check, or one request to the leader.
async fn round(reads: &Reads, batch: &mut Vec<Request>) {
    let started = Instant::now();
    let count = batch.len();
    reads.metrics.read_index_batch.observe(count as f64);
    if reads.leadership.is_leader() {
        let answer = match reads.read_index_as_leader().await {
            Ok(index) => RoundAnswer::Index(index),
            Err(error @ PeerError::NotLeader { .. }) => RoundAnswer::Reroute {
                leader: None,
                reason: error.to_string(),
            },
            Err(error) => RoundAnswer::Failed(error),
        };
        answer_all(batch, |_| answer.clone());
    } else {
        let leader = reads.leadership.known_leader();
        let leader_id = leader.as_ref().map(|(id, _)| *id);
        let answer = match leader {
            None => RoundAnswer::Reroute {
                leader: None,
                reason: "no leader is elected".to_string(),
            },
            // openraft names this node leader while it is not (yet) one: asking itself would
            // queue behind this very round.
            Some((leader, _)) if leader == reads.id => RoundAnswer::Reroute {
                leader: Some(leader),
                reason: "this node is named leader but does not lead yet".to_string(),
            },
            Some(leader) if batch.iter().any(|request| request.forward) => {
                let id = leader.0;
                let deadline = Instant::now() + reads.publish_timeout;
                match reads.read_index_from(leader, deadline).await {
                    Ok(index) => RoundAnswer::Index(index),
                    Err(crate::reads::ReadIndexFailed::Reroute(reason)) => RoundAnswer::Reroute {
                        leader: Some(id),
                        reason,
                    },
                    Err(crate::reads::ReadIndexFailed::Final(reason)) => {
                        RoundAnswer::Failed(PeerError::Unavailable(reason))
                    }
                }
            }
            Some(leader) => RoundAnswer::Reroute {
                leader: Some(leader.0),
                reason: "not the leader".to_string(),
            },
        };
        let not_leader = PeerError::NotLeader { leader: leader_id };
        // A follower's request that reached a node that no longer leads: it asks the leader.
        answer_all(batch, |request| {
            if request.forward {
                answer.clone()
            } else {
                RoundAnswer::Failed(not_leader.clone())
            }
        });
    }
    tracing::trace!(reads = count, took = ?started.elapsed(), "read-index round");
}

fn answer_all(batch: &mut Vec<Request>, answer: impl Fn(&Request) -> RoundAnswer) {
    for request in batch.drain(..) {
        let answer = answer(&request);
        // A read that gave up meanwhile (its client left) is not waiting any more.
        let _ = request.reply.send(answer);
    }
}
