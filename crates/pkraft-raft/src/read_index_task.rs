//! The node's read-index task: it runs the rounds that `read_index.rs` queues reads for, one
//! after the other, and asks [`Reads`] for each round's index (this node's leadership check,
//! or the leader's `read-index` route).

use std::sync::Arc;
use tokio::time::Instant;

use tokio::sync::mpsc;

use crate::read_index::{ReadIndexQueue, Request, RoundAnswer};
use crate::reads::{ReadIndexFailed, Reads};
use crate::reason::Reason;
use crate::request_error::RequestError;

/// The node's read-index task: rounds one after the other, each for every read queued when it
/// starts. Supervised (`pkraft_tasks`): after a panic it takes the queue again.
pub(crate) async fn run(reads: Arc<Reads>) {
    let Some(receiver) = reads.read_index().take_receiver() else {
        tracing::error!("the read-index queue has no receiver; linearizable reads fail");
        return;
    };
    // Given back on every exit (a panic unwinds through it), so a new run takes it again.
    let mut held = Held {
        queue: reads.read_index(),
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
    queue: &'a ReadIndexQueue,
    receiver: Option<mpsc::Receiver<Request>>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(receiver) = self.receiver.take() {
            self.queue.put_back(receiver);
        }
    }
}

/// One round for `batch` (emptied): one leadership check, or one request to the leader.
async fn round(reads: &Reads, batch: &mut Vec<Request>) {
    let started = Instant::now();
    let count = batch.len();
    reads.core.metrics.read_index_batch.observe(count as f64);
    if reads.leadership.is_leader() {
        let answer = match reads.read_index_as_leader().await {
            Ok(index) => RoundAnswer::Index(index),
            // This node has just lost its leadership and its metrics may still name it: news
            // is a leader other than itself (with `None` the wait would find the stale
            // metrics' answer at once, and the read would ask again without a pause).
            Err(error @ RequestError::NotLeader { .. }) => RoundAnswer::Reroute {
                leader: Some(reads.core.id),
                reason: Reason::of(error),
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
                reason: "no leader is elected".into(),
            },
            // openraft names this node leader while it is not (yet) one: asking itself would
            // queue behind this very round.
            Some((leader, _)) if leader == reads.core.id => RoundAnswer::Reroute {
                leader: Some(leader),
                reason: "this node is named leader but does not lead yet".into(),
            },
            Some(leader) if batch.iter().any(|request| request.forward) => {
                let id = leader.0;
                let deadline = Instant::now() + reads.core.publish_timeout;
                match reads.read_index_from(leader, deadline).await {
                    Ok(index) => RoundAnswer::Index(index),
                    Err(ReadIndexFailed::Reroute(reason)) => RoundAnswer::Reroute {
                        leader: Some(id),
                        reason,
                    },
                    Err(ReadIndexFailed::Final(reason)) => {
                        RoundAnswer::Failed(RequestError::Unavailable(reason))
                    }
                }
            }
            Some(leader) => RoundAnswer::Reroute {
                leader: Some(leader.0),
                reason: "not the leader".into(),
            },
        };
        let not_leader = RequestError::NotLeader { leader: leader_id };
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
