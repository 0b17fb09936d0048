//! Group commit: concurrent publishes share one log entry.
//!
//! Each log entry costs a fsynced log append and a state commit, so one entry per PUT capped a
//! node at a few hundred PUT/s. Publishes instead wait in a bounded queue; whenever the append
//! slot is free, everything queued (up to `publish_batch_max`) becomes one `Command::Publish`.
//! There is no artificial wait: a lone publish commits at once, and under load the batches grow
//! by themselves while the one before is appended.
//!
//! A batch holds the append slot until its entry is in this node's log (openraft 0.9's core
//! makes one append at a time, so a batch proposed earlier would only wait in its queue,
//! smaller), then gives it up and waits for its quorum and apply: the next batch is appended
//! meanwhile. At most two batches are in flight, so a leader cut off from its quorum with one
//! batch waiting still answers the next `no_quorum` at once, and a follower has two forwards
//! under way.
//!
//! On a follower the same batches are forwarded to the leader in one peer request, where they
//! join the leader's own batches; the follower answers once the leader has committed them and
//! (briefly, bounded) once its own replica has applied them, so a client reads its write back from
//! the node it wrote to.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;
use pkraft_types::planted::{self, PlantedBug};
use pkraft_types::{Command, PublishItem, PublishOutcome};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Writes;
use super::queue::{Batcher, Origin, Pending, PublishError, Published, Reply};
use super::{publish_error, replicas_holding};
use crate::peer::{ForwardedPublish, PeerError, WirePublishError, path};
use crate::reason::Reason;
use crate::store_cap::{NewKeyRefusal, Reservation};
use crate::{NodeId, TypeConfig};

/// Batches formed and not yet answered. The second lets a batch be appended while the one
/// before waits for its quorum and apply, and lets a leader cut off from its quorum answer the
/// next batch 503 at once (CONSISTENCY.md) while the first waits for a commit that does not
/// come. (When both were proposed before the leader knew, publishes wait until the first one's
/// deadline, as with two slots before.) Three were no faster (docs/BENCHMARKS.md).
const BATCHES_IN_FLIGHT: usize = 2;
/// How long a follower waits for its own replica to apply a publish the leader committed, before
/// answering anyway (the publish is committed either way; this only gives read-your-writes on the
/// node written to).
const LOCAL_APPLY_WAIT: Duration = Duration::from_secs(1);

/// Starts the batching task for a queue of at most `queue_max` publishes. It ends when the
/// `Batcher` is dropped and the queue is drained.
pub(crate) fn spawn(
    writes: Arc<Writes>,
    queue_max: usize,
    batch_max: usize,
) -> (Batcher, JoinHandle<()>) {
    let (batcher, pending) = Batcher::new(queue_max);
    let task = tokio::spawn(run(writes, pending, batch_max.max(1)));
    (batcher, task)
}

async fn run(writes: Arc<Writes>, mut pending: mpsc::Receiver<Pending>, batch_max: usize) {
    let in_flight_places = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let append_slots = Arc::new(Semaphore::new(1));
    let mut commits = tokio::task::JoinSet::new();
    while let Some(first) = pending.recv().await {
        // While this waits for its slots, more publishes queue up and join the batch.
        let waiting = Instant::now();
        let Ok(in_flight) = in_flight_places.clone().acquire_owned().await else {
            break;
        };
        let Ok(append) = append_slots.clone().acquire_owned().await else {
            break;
        };
        writes
            .core
            .metrics
            .publish_batch_wait
            .observe(waiting.elapsed().as_secs_f64());
        let mut batch = vec![first];
        while batch.len() < batch_max {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let writes = writes.clone();
        let slot = AppendSlot::new(append, writes.appends.clone());
        commits.spawn(async move {
            commit(&writes, batch, slot).await;
            drop(in_flight);
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

/// The batcher's one append slot, held by a batch until its entry is in this node's log (or it
/// is forwarded, or answered), so that the next batch forms meanwhile and is proposed only when
/// openraft can append it.
struct AppendSlot {
    permit: Option<OwnedSemaphorePermit>,
    /// The log's count of durable appends (`LogStore::appends`).
    appends: watch::Receiver<u64>,
}

impl AppendSlot {
    fn new(permit: OwnedSemaphorePermit, appends: watch::Receiver<u64>) -> AppendSlot {
        AppendSlot {
            permit: Some(permit),
            appends,
        }
    }

    fn give_up(&mut self) {
        self.permit = None;
    }

    /// The log's append count now, read before a proposal. Any append counted after it frees
    /// the slot; one that is not the proposal's own (an election's blank entry, a membership
    /// change, an append left by a batch that timed out) only lets the next batch wait in
    /// openraft's queue, still bounded by `BATCHES_IN_FLIGHT`.
    fn appends_before_proposal(&mut self) -> u64 {
        *self.appends.borrow_and_update()
    }

    /// Gives the slot up once the log has counted an append past `before`, then never returns
    /// (it is raced against the proposal's answer). A log that closed ends the wait too.
    async fn give_up_once_appended(&mut self, before: u64) -> Infallible {
        if self.permit.is_some() {
            // An error means the log was dropped (the node stops): nothing left to wait for.
            let _ = self.appends.wait_for(|appends| *appends != before).await;
            self.give_up();
        }
        std::future::pending().await
    }
}

/// A commit task that panicked has dropped its publishers' replies (they see "stopping"); that is
/// a bug, so say it loudly.
fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(error = %e, "a publish batch task failed");
    }
}

/// Commits one batch where the leader is (here, or forwarded to it) and answers each publisher
/// with its own outcome.
async fn commit(writes: &Writes, batch: Vec<Pending>, slot: AppendSlot) {
    let formed = Instant::now();
    commit_until_answered(writes, batch, slot).await;
    writes
        .core
        .metrics
        .publish_batch
        .observe(formed.elapsed().as_secs_f64());
}

/// [`commit`]'s work: every way a batch is answered returns from here.
async fn commit_until_answered(writes: &Writes, batch: Vec<Pending>, slot: AppendSlot) {
    let deadline = Instant::now() + writes.core.publish_timeout;
    writes
        .core
        .metrics
        .batch_packets
        .observe(batch.len() as f64);
    let mut attempt = Attempt {
        batch,
        deadline,
        earlier_attempt_unknown: false,
        slot,
    };
    loop {
        attempt = match writes.leadership.known_leader() {
            Some((leader, _)) if leader == writes.core.id && !writes.leadership.handing_over() => {
                match commit_here(writes, attempt).await {
                    Some(again) => again,
                    None => return,
                }
            }
            // This leader is handing over (see `handover`): wait for the next one.
            Some((leader, _)) if leader == writes.core.id && Instant::now() < deadline => {
                writes
                    .leadership
                    .wait_for_leader_news(Some(leader), deadline)
                    .await;
                attempt
            }
            Some((leader, _)) if leader == writes.core.id => {
                let batch = attempt.batch;
                writes.core.metrics.publish_refused("handover", batch.len());
                return answer_all(
                    batch,
                    PublishError::Unavailable("leadership is being handed over".into()),
                );
            }
            // A leader that has gone silent is not sent more; the followers elect its
            // successor within an election timeout.
            Some((leader, _)) if writes.leadership.leader_gone(leader).is_some() => {
                if Instant::now() >= deadline {
                    let reason = writes
                        .leadership
                        .leader_gone(leader)
                        .unwrap_or_else(|| format!("leader {leader} did not answer in time"));
                    let batch = attempt.batch;
                    writes
                        .core
                        .metrics
                        .publish_refused("forward_failed", batch.len());
                    return answer_all(batch, PublishError::Unavailable(reason.into()));
                }
                writes
                    .leadership
                    .wait_for_leader_news(Some(leader), deadline)
                    .await;
                attempt
            }
            Some((leader, addr)) => match commit_forwarded(writes, leader, &addr, attempt).await {
                Some(again) => again,
                None => return,
            },
            None if Instant::now() < deadline => {
                writes.leadership.wait_for_leader_news(None, deadline).await;
                attempt
            }
            None => {
                let batch = attempt.batch;
                writes
                    .core
                    .metrics
                    .publish_refused("no_leader", batch.len());
                return answer_all(
                    batch,
                    PublishError::Unavailable("no leader is elected".into()),
                );
            }
        };
    }
}

/// A batch on its way to a commit, and what its attempts so far leave unknown.
struct Attempt {
    batch: Vec<Pending>,
    /// The publishers' deadline.
    deadline: Instant,
    /// Whether an earlier forward of this batch may have reached the leader and committed (its
    /// answer was lost). A retry then cannot tell "refused as stale" from "committed by the
    /// first attempt and superseded since", so it must not answer 409.
    earlier_attempt_unknown: bool,
    /// Held while the batch waits for a leader, given up once it is appended or forwarded.
    slot: AppendSlot,
}

/// Proposes the batch on this node, the leader: answered here (`None`), or given back when a
/// handover began meanwhile, to wait for the next leader.
async fn commit_here(writes: &Writes, attempt: Attempt) -> Option<Attempt> {
    let batch = &attempt.batch;
    if let Some(reason) = writes.leadership.cut_off_from_quorum() {
        writes
            .core
            .metrics
            .publish_refused("no_quorum", batch.len());
        answer_all(attempt.batch, PublishError::Unavailable(reason.into()));
        return None;
    }
    if let Some(reason) = writes.core.disk_space.refusal() {
        writes
            .core
            .metrics
            .publish_refused("disk_full", batch.len());
        answer_all(attempt.batch, PublishError::Unavailable(reason.into()));
        return None;
    }
    // This node became leader after its publishers' deadline (waiting for news of a leader):
    // nobody waits for the answer, and a proposal begun now would be handed to Raft only after
    // its guard below is gone.
    if Instant::now() >= attempt.deadline {
        writes.core.metrics.publish_refused("timeout", batch.len());
        let reason = format!("no leader took it within {:?}", writes.core.publish_timeout);
        answer_all(attempt.batch, PublishError::Unavailable(reason.into()));
        return None;
    }
    // The handover began since the caller's check: go round and wait for the next leader.
    let Some(_proposal) = writes.leadership.begin_proposal() else {
        return Some(attempt);
    };
    // New keys count against the cap until the proposal has returned.
    let (batch, new_keys) = admit_new_keys(writes, attempt.batch);
    if !batch.is_empty() {
        let unknown = attempt.earlier_attempt_unknown;
        propose(
            writes,
            batch,
            new_keys,
            attempt.deadline,
            unknown,
            attempt.slot,
        )
        .await;
    }
    None
}

/// Forwards the batch to `leader` at `addr`: answered (`None`), or given back to try again once
/// the leader is known anew.
async fn commit_forwarded(
    writes: &Writes,
    leader: NodeId,
    addr: &str,
    mut attempt: Attempt,
) -> Option<Attempt> {
    // Publishes forwarded to this node while it led must not travel on.
    let (local, forwarded) = std::mem::take(&mut attempt.batch)
        .into_iter()
        .partition(|pending| pending.origin == Origin::Local);
    answer_all(
        forwarded,
        PublishError::Unavailable("leadership moved; retry".into()),
    );
    attempt.batch = local;
    if attempt.batch.is_empty() {
        return None;
    }
    // This node appends nothing for a forwarded batch: the next batch may form.
    attempt.slot.give_up();
    match forward(writes, leader, addr, &attempt.batch, attempt.deadline).await {
        Ok(answers) => {
            writes
                .core
                .metrics
                .forwarded_packets
                .inc_by(u64::try_from(attempt.batch.len()).unwrap_or(u64::MAX));
            let answers = if attempt.earlier_attempt_unknown {
                answers.into_iter().map(unknown_if_stale).collect()
            } else {
                answers
            };
            answer_forwarded(writes, attempt.batch, answers).await;
            None
        }
        Err(Reroute::Retry {
            reason,
            maybe_delivered,
        }) if Instant::now() < attempt.deadline => {
            tracing::debug!(%reason, leader, "forwarding a publish batch failed; rerouting");
            attempt.earlier_attempt_unknown |= maybe_delivered;
            writes
                .leadership
                .wait_for_leader_news(Some(leader), attempt.deadline)
                .await;
            Some(attempt)
        }
        Err(Reroute::Retry { reason, .. } | Reroute::Fail(reason)) => {
            writes
                .core
                .metrics
                .publish_refused("forward_failed", attempt.batch.len());
            answer_all(attempt.batch, PublishError::Unavailable(reason));
            None
        }
    }
}

/// The publishes of `batch` this leader may propose: those of new keys short of room
/// (`store_cap`) are answered here, `NoRoom` (or `Unavailable` when room may come with the
/// batches under way). The reservation counts the admitted new keys against the cap until it
/// is dropped.
fn admit_new_keys(writes: &Writes, batch: Vec<Pending>) -> (Vec<Pending>, Reservation) {
    let disk = writes
        .core
        .disk_space
        .new_keys_refusal()
        .map(NewKeyRefusal::disk);
    let admission = writes.store_cap.admit(
        &writes.core.store,
        disk,
        batch.iter().map(|pending| &pending.item.key),
    );
    if admission.refused.is_empty() {
        return (batch, admission.reservation);
    }
    debug_assert_eq!(admission.refused.len(), batch.len());
    let mut admitted = Vec::with_capacity(batch.len());
    for (pending, refusal) in batch.into_iter().zip(admission.refused) {
        match refusal {
            None => admitted.push(pending),
            Some(refusal) => {
                writes.core.metrics.publish_refused(refusal.label, 1);
                let error = if refusal.transient {
                    PublishError::Unavailable(refusal.reason.into())
                } else {
                    PublishError::NoRoom(refusal.reason)
                };
                answer(pending.reply, Err(error));
            }
        }
    }
    (admitted, admission.reservation)
}

/// Proposes the batch as one log entry on this node (the leader), waiting for the commit until
/// `deadline`: an entry a cut-off leader appended may commit only when the partition heals, and
/// its slots must not stay taken (nor its publishers wait) until then. The append slot is given
/// up as soon as the entry is in the log. `earlier_attempt_unknown`: this node forwarded the
/// batch before it led, and that attempt may have committed (see `unknown_if_stale`).
async fn propose(
    writes: &Writes,
    batch: Vec<Pending>,
    new_keys: Reservation,
    deadline: Instant,
    earlier_attempt_unknown: bool,
    mut slot: AppendSlot,
) {
    let (packets, replies): (Vec<PublishItem>, Vec<Reply>) =
        batch.into_iter().map(|p| (p.item, p.reply)).unzip();
    tracing::debug!(packets = packets.len(), "proposing a publish batch");
    let raft = &writes.core.raft;
    let appends_before = slot.appends_before_proposal();
    let mut write = spawn_write(writes, packets, new_keys);
    // The second branch never ends: it gives the slot up when the entry is appended, while
    // the first waits for the answer or the deadline.
    let written = tokio::select! {
        written = tokio::time::timeout_at(deadline, &mut write) => written,
        never = slot.give_up_once_appended(appends_before) => match never {},
    };
    drop(slot);
    let written = match written {
        Ok(Ok(written)) => Ok(written),
        // The task panicked or was aborted (the runtime is stopping): its outcome is unknown.
        Ok(Err(e)) => {
            tracing::error!(error = %e, "a proposal's task failed");
            writes
                .core
                .metrics
                .publish_refused("timeout", replies.len());
            let error = PublishError::Unavailable(Reason::caused("the proposal's task ended", e));
            for reply in replies {
                answer(reply, Err(error.clone()));
            }
            return;
        }
        Err(elapsed) => Err(elapsed),
    };
    let Ok(written) = written else {
        writes
            .core
            .metrics
            .publish_refused("timeout", replies.len());
        let error = PublishError::Unavailable(
            format!(
                "not committed within {:?}; it may still commit",
                writes.core.publish_timeout
            )
            .into(),
        );
        for reply in replies {
            answer(reply, Err(error.clone()));
        }
        return;
    };
    let answers: Vec<Result<Published, PublishError>> = match written {
        Ok(response) if response.data.outcomes.len() == replies.len() => {
            let log_index = response.log_id.index;
            let replicas = replicas_holding(raft, log_index);
            response
                .data
                .outcomes
                .into_iter()
                .map(|outcome| {
                    Ok(Published {
                        outcome,
                        replicas,
                        log_index,
                    })
                })
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
            vec![Err(PublishError::Fatal(reason.into())); replies.len()]
        }
        Err(e) => vec![Err(publish_error(e)); replies.len()],
    };
    for (reply, result) in replies.into_iter().zip(answers) {
        let result = if earlier_attempt_unknown {
            unknown_if_stale(result)
        } else {
            result
        };
        answer(reply, result);
    }
}

/// What openraft answers a proposal.
type Written =
    Result<ClientWriteResponse<TypeConfig>, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>;

/// Proposes `packets` as one entry in a task of its own, which holds the batch's new keys
/// against the cap until openraft answers: a proposal that outlives its publishers' deadline
/// may still commit, and its keys must count until then.
fn spawn_write(
    writes: &Writes,
    packets: Vec<PublishItem>,
    new_keys: Reservation,
) -> JoinHandle<Written> {
    let command = Command::Publish {
        // Cluster time on the leader when it proposes the batch, never its wall clock alone: the
        // stamps are the log's time, a fence of cluster time (`cluster_clock`).
        leader_time_micros: writes.clock.now().stamp_micros(),
        packets,
    };
    let raft = writes.core.raft.clone();
    tokio::spawn(async move {
        let written = raft.client_write(command).await;
        drop(new_keys);
        written
    })
}

/// A retried packet found stale may have been committed by the lost first attempt and
/// superseded since: its outcome is unknown (503), not 409. (Found by the chaos harness:
/// `docs/TESTING.md`, "a PUT answered 409 although it was stored".)
fn unknown_if_stale(answer: Result<Published, PublishError>) -> Result<Published, PublishError> {
    if planted::is_planted(PlantedBug::RetriedForwardAnswered409) {
        return answer;
    }
    match answer {
        Ok(Published {
            outcome: PublishOutcome::Stale,
            ..
        }) => Err(PublishError::Unavailable(
            "an earlier attempt to commit this packet may have succeeded before a newer packet \
             was stored; its outcome is unknown"
                .into(),
        )),
        other => other,
    }
}

/// Why a forward did not produce outcomes.
enum Reroute {
    /// The leader moved, is down, or did not answer: find the leader again and retry. Safe,
    /// because publishing the same packet twice changes nothing. `maybe_delivered`: the leader
    /// may have committed the batch (its answer was lost), unlike a refusal as not the leader.
    Retry {
        reason: Reason,
        maybe_delivered: bool,
    },
    /// An answer that retrying will not change.
    Fail(Reason),
}

async fn forward(
    writes: &Writes,
    leader: u64,
    addr: &str,
    batch: &[Pending],
    deadline: Instant,
) -> Result<Vec<Result<Published, PublishError>>, Reroute> {
    let request = ForwardedPublish {
        packets: batch.iter().map(|p| p.item.clone()).collect(),
        answers_no_room: true,
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    let call = writes
        .core
        .peers
        .call(addr, Some(leader), path::PUBLISH, &request, remaining);
    // The answer is waited for while the leader is heard from (it is committing, however long
    // that takes under load), and no longer once it has gone silent or lost its leadership:
    // dropped packets are never answered.
    let answer: Result<Vec<Result<Published, WirePublishError>>, PeerError> = tokio::select! {
        answer = call => answer.map_err(|e| Reroute::Retry {
            reason: Reason::of(e),
            maybe_delivered: true,
        })?,
        reason = writes.leadership.until_leader_gone(leader) => {
            return Err(Reroute::Retry { reason: reason.into(), maybe_delivered: true });
        }
    };
    // The leader's own errors are the causes: their text is what the publishers are told.
    match answer {
        Ok(answers) if answers.len() == batch.len() => Ok(answers
            .into_iter()
            .map(|answer| answer.map_err(PublishError::from_wire))
            .collect()),
        Ok(answers) => Err(Reroute::Fail(
            format!(
                "the leader answered {} outcomes for {} packets",
                answers.len(),
                batch.len()
            )
            .into(),
        )),
        Err(e @ PeerError::NotLeader { .. }) => Err(Reroute::Retry {
            reason: Reason::of(e),
            maybe_delivered: false,
        }),
        Err(e @ PeerError::Unavailable(_)) => Err(Reroute::Retry {
            reason: Reason::of(e),
            maybe_delivered: true,
        }),
        Err(e @ (PeerError::Refused(_) | PeerError::Fatal(_))) => Err(Reroute::Fail(Reason::of(e))),
    }
}

/// Answers forwarded publishes once this node's replica has applied them (bounded wait).
async fn answer_forwarded(
    writes: &Writes,
    batch: Vec<Pending>,
    answers: Vec<Result<Published, PublishError>>,
) {
    let last_index = answers
        .iter()
        .filter_map(|a| a.as_ref().ok().map(|p| p.log_index))
        .max();
    if let Some(index) = last_index {
        let applied = writes
            .core
            .raft
            .wait(Some(LOCAL_APPLY_WAIT))
            .applied_index_at_least(Some(index), "apply a forwarded publish locally")
            .await;
        if applied.is_err() {
            tracing::debug!(
                index,
                "answering a forwarded publish before applying it locally"
            );
        }
    }
    for (pending, result) in batch.into_iter().zip(answers) {
        answer(pending.reply, result);
    }
}

fn answer_all(batch: Vec<Pending>, error: PublishError) {
    for pending in batch {
        answer(pending.reply, Err(error.clone()));
    }
}

fn answer(reply: Reply, result: Result<Published, PublishError>) {
    // A publisher that timed out has dropped its receiver; nothing to tell it.
    let _ = reply.send(result);
}
