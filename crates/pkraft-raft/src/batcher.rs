//! Group commit: concurrent publishes share one log entry.
//!
//! Each log entry costs a fsynced log append and a state commit, so one entry per PUT capped a
//! node at a few hundred PUT/s. Publishes instead wait in a bounded queue; whenever a commit slot is free,
//! everything queued (up to `publish_batch_max`) becomes one `Command::Publish`. There is no
//! artificial wait: a lone publish commits at once, and under load the batches grow by
//! themselves while earlier ones are committing. Two batches may be in flight, so one can be
//! appended to the log while the previous one is applied.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::Raft;
use pkraft_types::{Command, PublishItem};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::TypeConfig;
use crate::node::{PublishError, Published, publish_error, replicas_holding};

/// Batches proposed and not yet committed. Two keep the log append of one batch overlapping the
/// apply of the one before it; more only make batches smaller.
const BATCHES_IN_FLIGHT: usize = 2;

type Reply = oneshot::Sender<Result<Published, PublishError>>;
/// Where a queued publish learns its outcome.
pub(crate) type Outcome = oneshot::Receiver<Result<Published, PublishError>>;

pub(crate) fn stopping() -> PublishError {
    PublishError::Unavailable("the node is stopping".to_string())
}

struct Pending {
    item: PublishItem,
    reply: Reply,
}

/// The queue in front of the batching task.
pub(crate) struct Batcher {
    queue: mpsc::Sender<Pending>,
}

impl Batcher {
    /// Starts the batching task. It ends when the `Batcher` is dropped and the queue is drained.
    pub(crate) fn spawn(
        raft: Raft<TypeConfig>,
        queue_max: usize,
        batch_max: usize,
    ) -> (Batcher, JoinHandle<()>) {
        let (queue, pending) = mpsc::channel(queue_max.max(1));
        let task = tokio::spawn(run(raft, pending, batch_max.max(1)));
        (Batcher { queue }, task)
    }

    /// Queues `item` without waiting; the receiver yields the outcome of the entry it is
    /// committed in. A full queue is an immediate error (back-pressure), not a wait.
    pub(crate) fn enqueue(&self, item: PublishItem) -> Result<Outcome, PublishError> {
        let (reply, outcome) = oneshot::channel();
        self.queue
            .try_send(Pending { item, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    PublishError::Unavailable("too many publishes waiting to commit".to_string())
                }
                mpsc::error::TrySendError::Closed(_) => stopping(),
            })?;
        Ok(outcome)
    }
}

async fn run(raft: Raft<TypeConfig>, mut pending: mpsc::Receiver<Pending>, batch_max: usize) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let mut commits = tokio::task::JoinSet::new();
    while let Some(first) = pending.recv().await {
        // While this waits for a slot, more publishes queue up and join the batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < batch_max {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        commits.spawn(async move {
            commit(&raft, batch).await;
            drop(slot);
        });
        // Reap finished commits so the set does not grow with the number of batches.
        while let Some(done) = commits.try_join_next() {
            log_join(done);
        }
    }
    // The queue is closed: let the batches in flight answer their publishers.
    while let Some(done) = commits.join_next().await {
        log_join(done);
    }
}

/// A commit task that panicked has dropped its publishers' replies (they see "stopping"); that is
/// a bug, so say it loudly.
fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(error = %e, "a publish batch task failed");
    }
}

/// Proposes one batch and answers each publisher with its own outcome.
async fn commit(raft: &Raft<TypeConfig>, batch: Vec<Pending>) {
    let (packets, replies): (Vec<PublishItem>, Vec<Reply>) =
        batch.into_iter().map(|p| (p.item, p.reply)).unzip();
    tracing::debug!(packets = packets.len(), "proposing a publish batch");
    let command = Command::Publish {
        leader_time_micros: unix_micros_now(),
        packets,
    };
    let answers: Vec<Result<Published, PublishError>> = match raft.client_write(command).await {
        Ok(response) if response.data.outcomes.len() == replies.len() => {
            let replicas = replicas_holding(raft, response.log_id.index);
            response
                .data
                .outcomes
                .into_iter()
                .map(|outcome| Ok(Published { outcome, replicas }))
                .collect()
        }
        Ok(response) => {
            // The state machine broke its contract: stop Raft, which makes the daemon exit
            // (`Node::wait_fatal`) rather than serve state it cannot vouch for.
            let reason = format!(
                "applying {} packets produced {} outcomes",
                replies.len(),
                response.data.outcomes.len()
            );
            tracing::error!(%reason, "stopping raft");
            if let Err(e) = raft.shutdown().await {
                tracing::error!(error = %e, "raft did not shut down cleanly");
            }
            vec![Err(PublishError::Fatal(reason)); replies.len()]
        }
        Err(e) => vec![Err(publish_error(e)); replies.len()],
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        // A publisher that timed out has dropped its receiver; nothing to tell it.
        let _ = reply.send(answer);
    }
}

/// Wall clock in µs since the Unix epoch, read on the leader when it proposes the batch. A clock
/// before 1970 reads as 0.
fn unix_micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
