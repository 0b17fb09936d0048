//! [`Writer`]: the one owner of the state file's write transactions, on a thread of its own
//! (`pkraft-state-writer`).
//!
//! Applies go into one redb write transaction that stays open across many of them (etcd's
//! batch transaction, iroh-dns-server's open write) and is committed every
//! [`ApplyBatching::interval`] or once it holds [`ApplyBatching::packets`] packets, whichever
//! comes first. Each commit of a redb transaction has a fixed cost (the commit itself, and the
//! copies of every B-tree page the next transaction touches again), which a transaction per
//! apply paid for every batch of about 15 packets (docs/BENCHMARKS.md, "The budget of a PUT").
//! What an apply wrote is visible at once through the [`ReadBuffer`]; the commit only moves it
//! into the tables readers read otherwise.
//!
//! Every other writer of the state goes through the same owner: a flush (snapshots and the
//! clean stop make the state durable) is a commit job; an import (a snapshot install, a state
//! rebuilt, a backup restored), the scrub's rewrite of compiled answers and a transaction of
//! its own ([`crate::Store::begin_apply`]) each *pause* the writer, which commits what it holds
//! first and then waits until they are done. So redb's single-writer lock is never waited for
//! while an open transaction holds it.
//!
//! Durability: commits are not fsynced, but once [`DURABLE_EVERY_ENTRIES`] entries or
//! [`DURABLE_EVERY_PACKETS`] packets were applied since the last durable one, and at every
//! flush. The state is a projection of the Raft log, which is fsynced before an entry counts:
//! after a crash redb rolls back to its last durable commit and the consensus layer applies the
//! entries after it again from the log (docs/ARCHITECTURE.md, "Durability").
//!
//! The queue of jobs is unbounded in type only: every caller waits for its job to be done, so it
//! holds at most one job per calling thread (openraft's state machine worker, a snapshot build,
//! the scrub, a stop).
//!
//! In a simulation ([`pkraft_types::world::runs_blocking_work_inline`]) there is no thread: the
//! same owner runs each job at once on the thread that submits it (the simulation's), jobs
//! submitted while it is paused wait in a queue until the pause ends, and the commit that the
//! thread's timer makes is a task on the submitting runtime, on its simulated clock.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

// tokio's: std's outside a runtime (the writer's thread), a simulated host's paused clock inline.
use tokio::time::Instant;

use crate::StoreError;
use crate::apply::ApplyTxn;
use crate::shared::{AppliedCounts, Paused, Shared};

/// A commit once this many entries were applied since the last durable commit is durable. Counts,
/// not a timer: a restart applies at most this much again (about a second's work on these
/// machines). A durable commit writes every page the non-durable ones left dirty and applies
/// wait for it, so it is kept rare (once every 128 entries, the stalls doubled PUT p99:
/// docs/BENCHMARKS.md).
pub const DURABLE_EVERY_ENTRIES: u64 = 4096;
/// The same bound in packets, for entries that carry large publish batches.
pub const DURABLE_EVERY_PACKETS: u64 = 65_536;

/// When the open apply transaction is committed (`raft.apply_batch_interval`,
/// `raft.apply_batch_packets`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyBatching {
    /// At most this long after its first apply. Bounds how stale the committed tables (which
    /// snapshot-free sweeps read: the DHT republish, the scrub, expiry's oldest packet) are,
    /// never what a GET or a DNS query sees.
    pub interval: Duration,
    /// Once it holds this many packets: bounds the read buffer's memory (a row is at most a
    /// 1072-byte payload and its compiled answers).
    pub packets: u64,
}

impl ApplyBatching {
    /// etcd commits its batch transaction every 100 ms or 10,000 writes.
    pub const DEFAULT: ApplyBatching = ApplyBatching {
        interval: Duration::from_millis(100),
        packets: 8192,
    };
    /// A transaction per apply, as before the open transaction (for comparisons).
    pub const EACH_APPLY: ApplyBatching = ApplyBatching {
        interval: Duration::ZERO,
        packets: 0,
    };
}

impl Default for ApplyBatching {
    fn default() -> Self {
        ApplyBatching::DEFAULT
    }
}

/// Work for the open transaction: given it (or why there is none), it returns how to answer its
/// caller, or `Err` with the reason it failed (it has told its caller), and the writer then
/// aborts the transaction.
pub(crate) type ApplyWork =
    Box<dyn FnOnce(Result<&mut ApplyTxn, StoreError>) -> Result<AnswerApply, String> + Send>;

/// Answers an apply's caller once what it wrote is as visible as it must be: at once for rows
/// (the read buffer), after the commit for what readers find only in the committed tables (a
/// removed node: [`ApplyTxn::commit_asked`]). Given why that commit failed, if it did.
pub(crate) type AnswerApply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

pub(crate) enum Job {
    Apply(ApplyWork),
    /// Commit what is open (durably: also when nothing is).
    Commit {
        durable: bool,
        done: Sender<Result<(), StoreError>>,
    },
    /// Commit what is open, say so on `paused`, then wait until `resume` closes.
    Pause {
        paused: Sender<Result<(), StoreError>>,
        resume: Receiver<()>,
    },
    Batching(ApplyBatching),
}

/// The writer's handle; see the module docs. Dropping the last one (with the last
/// [`crate::Store`] handle) commits what is open and ends the thread.
pub(crate) struct Writer {
    kind: Kind,
}

enum Kind {
    Thread(WriterThread),
    /// A simulation's: the owner runs each job on the thread that submits it.
    Inline(Arc<Mutex<Inline>>),
}

struct WriterThread {
    jobs: Option<Sender<Job>>,
    handle: Option<JoinHandle<()>>,
    id: ThreadId,
}

impl Writer {
    pub(crate) fn start(shared: Shared) -> Result<Writer, StoreError> {
        let owner = Owner::new(shared);
        if pkraft_types::world::runs_blocking_work_inline() {
            return Ok(Writer {
                kind: Kind::Inline(Arc::new(Mutex::new(Inline {
                    owner,
                    paused: false,
                    queued: VecDeque::new(),
                    commit_due: None,
                }))),
            });
        }
        let (jobs, queue) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("pkraft-state-writer".to_string())
            .spawn(move || owner.run(&queue))
            .map_err(StoreError::WriterThread)?;
        Ok(Writer {
            kind: Kind::Thread(WriterThread {
                jobs: Some(jobs),
                id: handle.thread().id(),
                handle: Some(handle),
            }),
        })
    }

    pub(crate) fn submit(&self, job: Job) -> Result<(), StoreError> {
        match &self.kind {
            Kind::Thread(thread) => thread
                .jobs
                .as_ref()
                .and_then(|jobs| jobs.send(job).ok())
                .ok_or(StoreError::WriterStopped),
            Kind::Inline(inline) => {
                Inline::submit(inline, job);
                Ok(())
            }
        }
    }

    /// Commits what is open, durably if `durable` (then also when nothing is open), and waits.
    pub(crate) fn commit(&self, durable: bool) -> Result<(), StoreError> {
        let (done, result) = mpsc::channel();
        self.submit(Job::Commit { durable, done })?;
        result.recv().unwrap_or(Err(StoreError::WriterStopped))
    }

    /// Has the writer commit what it holds and wait until the returned guard is dropped; the
    /// caller may then begin a write transaction of its own. It must not wait for the writer
    /// meanwhile (an apply, a flush): the writer waits for it.
    pub(crate) fn pause(&self) -> Result<Paused, StoreError> {
        let (paused, result) = mpsc::channel();
        let (resume, resumed) = mpsc::channel();
        self.submit(Job::Pause {
            paused,
            resume: resumed,
        })?;
        result.recv().unwrap_or(Err(StoreError::WriterStopped))?;
        Ok(match &self.kind {
            Kind::Thread(_) => Paused::holding(resume),
            Kind::Inline(inline) => Paused::holding(ResumeInline(Arc::downgrade(inline))),
        })
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        // The thread ends once the queue closes, after committing what is open.
        drop(self.jobs.take());
        if let Some(handle) = self.handle.take()
            && std::thread::current().id() != self.id
            && handle.join().is_err()
        {
            tracing::error!("the state writer thread panicked");
        }
    }
}

/// The owner where it runs inline (a simulation; module docs).
struct Inline {
    owner: Owner,
    /// Paused ([`Writer::pause`]): jobs wait in `queued` until the guard is dropped.
    paused: bool,
    queued: VecDeque<Job>,
    /// When the task that commits the open transaction is due, if one waits (a task whose
    /// runtime has gone, a crashed host's, is known by its moment having passed).
    commit_due: Option<Instant>,
}

impl Inline {
    /// The owner, locked. A panic while it was held (outside an apply's own guard: a commit,
    /// redb) leaves it failed, as the thread's death does in thread mode: nothing is committed
    /// or flushed after it.
    fn lock(inline: &Mutex<Inline>) -> MutexGuard<'_, Inline> {
        inline.lock().unwrap_or_else(|poisoned| {
            inline.clear_poison();
            let mut this = poisoned.into_inner();
            this.owner
                .failed
                .get_or_insert_with(|| "the state writer panicked".to_string());
            this
        })
    }

    fn submit(inline: &Arc<Mutex<Inline>>, job: Job) {
        let mut this = Inline::lock(inline);
        if this.paused {
            match job {
                // Its caller waits for the answer on this thread: it would wait for good.
                Job::Commit { done, .. } => {
                    let _ = done.send(Err(StoreError::WriterPaused));
                }
                Job::Pause { paused, .. } => {
                    let _ = paused.send(Err(StoreError::WriterPaused));
                }
                job @ (Job::Apply(_) | Job::Batching(_)) => this.queued.push_back(job),
            }
            return;
        }
        this.run(job);
        this.schedule_commit(inline);
    }

    /// Runs `job` as the thread would, except that a pause returns at once: the caller resumes
    /// the writer by dropping its guard ([`ResumeInline`]).
    fn run(&mut self, job: Job) {
        match job {
            Job::Pause { paused, resume: _ } => {
                let committed = self.owner.commit(false);
                self.paused = committed.is_ok();
                let _ = paused.send(committed);
            }
            job => self.owner.handle(job),
        }
    }

    /// The jobs that waited out a pause, in order, until one pauses the writer again.
    fn resume(&mut self) {
        self.paused = false;
        while !self.paused
            && let Some(job) = self.queued.pop_front()
        {
            self.run(job);
        }
    }

    /// The thread's timer, as a task on the current runtime: the open transaction is committed
    /// once its interval is up. Without a runtime the next job commits it when due.
    fn schedule_commit(&mut self, inline: &Arc<Mutex<Inline>>) {
        let Some(open) = &self.owner.open else {
            return;
        };
        if self.commit_due.is_some_and(|due| due >= Instant::now()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let due = open.began + self.owner.batching.interval;
        self.commit_due = Some(due);
        let inline = Arc::downgrade(inline);
        runtime.spawn(async move {
            tokio::time::sleep_until(due).await;
            let Some(inline) = inline.upgrade() else {
                return;
            };
            let mut this = Inline::lock(&inline);
            this.commit_due = None;
            if !this.paused && this.owner.is_due() {
                this.owner.commit_logged(false);
            }
            this.schedule_commit(&inline);
        });
    }
}

impl Drop for Inline {
    /// The last handle is gone: what is open is committed, as the thread does when its queue
    /// closes. Here, not in the writer's drop: that may run on the thread holding the lock.
    fn drop(&mut self) {
        self.owner.commit_logged(false);
    }
}

/// Resumes an inline writer as it drops (the guard inside [`Paused`]).
struct ResumeInline(Weak<Mutex<Inline>>);

impl Drop for ResumeInline {
    fn drop(&mut self) {
        if let Some(inline) = self.0.upgrade() {
            let mut this = Inline::lock(&inline);
            this.resume();
            this.schedule_commit(&inline);
        }
    }
}

/// The writer's state, on its thread or inline.
struct Owner {
    shared: Shared,
    batching: ApplyBatching,
    open: Option<Open>,
    /// Applied since the last durable commit.
    since_durable: AppliedCounts,
    /// Why an apply or a commit failed: no transaction is opened after it (the node stops; the
    /// next start applies the log again).
    failed: Option<String>,
}

struct Open {
    txn: ApplyTxn,
    /// When its first apply began: it commits `batching.interval` after.
    began: Instant,
}

impl Owner {
    fn new(shared: Shared) -> Owner {
        Owner {
            shared,
            batching: ApplyBatching::DEFAULT,
            open: None,
            since_durable: AppliedCounts::default(),
            failed: None,
        }
    }

    fn run(mut self, queue: &Receiver<Job>) {
        loop {
            let job = match self
                .open
                .as_ref()
                .map(|open| open.began + self.batching.interval)
            {
                Some(due) => {
                    // Real time: this thread is never a simulation's (module docs).
                    match queue.recv_timeout(due.saturating_duration_since(Instant::now())) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout) => {
                            self.commit_logged(false);
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match queue.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
            };
            self.handle(job);
        }
        // The last handle is gone: what is open is committed as an apply's commit would be.
        self.commit_logged(false);
    }

    fn handle(&mut self, job: Job) {
        match job {
            Job::Apply(work) => self.apply(work),
            Job::Commit { durable, done } => {
                let committed = if self.open.is_none() && durable {
                    self.flush_committed()
                } else {
                    self.commit(durable)
                };
                let _ = done.send(committed);
            }
            Job::Pause { paused, resume } => {
                let committed = self.commit(false);
                let ok = committed.is_ok();
                let _ = paused.send(committed);
                if ok {
                    // Until the guard is dropped; an error means the same.
                    let _ = resume.recv();
                }
            }
            Job::Batching(batching) => {
                self.batching = batching;
                if self.is_due() {
                    self.commit_logged(false);
                }
            }
        }
    }

    /// After a failure, no commit, flush or pause succeeds either: the applies the aborted
    /// transaction held were answered, so a commit or flush that said `Ok` would claim the state
    /// holds them (a clean stop would skip the next start's catch-up, and a transaction of its
    /// own would empty the read buffer), and readers would see the node's answers go back.
    fn refuse_if_failed(&self) -> Result<(), StoreError> {
        match &self.failed {
            Some(reason) => Err(StoreError::WriterFailed(reason.clone())),
            None => Ok(()),
        }
    }

    fn apply(&mut self, work: ApplyWork) {
        if let Err(failed) = self.refuse_if_failed() {
            let _ = work(Err(failed));
            return;
        }
        let open = match self.open.take() {
            Some(open) => open,
            None => match ApplyTxn::begin_open(self.shared.clone()) {
                Ok(txn) => Open {
                    txn,
                    began: Instant::now(),
                },
                Err(e) => {
                    let _ = work(Err(e));
                    return;
                }
            },
        };
        let mut open = open;
        let before = open.txn.applied();
        match work(Ok(&mut open.txn)) {
            Ok(answer) => {
                let after = open.txn.applied();
                self.since_durable.entries += after.entries - before.entries;
                self.since_durable.packets += after.packets - before.packets;
                let commit_asked = open.txn.commit_asked();
                self.open = Some(open);
                if commit_asked {
                    answer(self.commit(false));
                } else {
                    answer(Ok(()));
                    if self.is_due() {
                        self.commit_logged(false);
                    }
                }
            }
            Err(reason) => {
                // Dropping the transaction aborts it; the buffer keeps what readers saw.
                drop(open);
                tracing::error!(error = %reason, "an apply failed: the open state transaction is aborted");
                self.failed = Some(reason);
            }
        }
    }

    /// Whether what is open should be committed now.
    fn is_due(&self) -> bool {
        let Some(open) = &self.open else {
            return false;
        };
        open.txn.commit_asked()
            || open.txn.applied().packets >= self.batching.packets
            || open.began.elapsed() >= self.batching.interval
            || self.durable_due()
    }

    fn durable_due(&self) -> bool {
        self.since_durable.entries >= DURABLE_EVERY_ENTRIES
            || self.since_durable.packets >= DURABLE_EVERY_PACKETS
    }

    /// Commits what is open (durably if asked or due); nothing open is nothing to do.
    fn commit(&mut self, durable: bool) -> Result<(), StoreError> {
        self.refuse_if_failed()?;
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let durable = durable || self.durable_due();
        let committed = open.txn.commit_open(durable);
        match &committed {
            Ok(()) if durable => self.since_durable = AppliedCounts::default(),
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, "a commit of the state failed");
                self.failed = Some(e.to_string());
            }
        }
        committed
    }

    /// [`Owner::commit`] where no caller waits: a failure is logged and refuses later applies.
    fn commit_logged(&mut self, durable: bool) {
        let _ = self.commit(durable);
    }

    /// Makes the commits so far durable when nothing is open.
    fn flush_committed(&mut self) -> Result<(), StoreError> {
        self.refuse_if_failed()?;
        self.shared.flush_committed()?;
        self.since_durable = AppliedCounts::default();
        Ok(())
    }
}
