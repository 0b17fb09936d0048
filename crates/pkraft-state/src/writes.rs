//! The store's writes, each through the writer (`writer.rs`): applies in its open transaction
//! ([`Store::apply`]), a transaction of its own while it is paused ([`Store::begin_apply`]),
//! and when it commits ([`Store::set_apply_batching`], [`Store::commit_applied`],
//! [`Store::flush`]).

use redb::Durability;

use crate::apply::ApplyTxn;
use crate::shared::begin_durable_write;
use crate::writer::{AnswerApply, ApplyBatching, ApplyWork, Job};
use crate::{Store, StoreError};

impl Store {
    /// Runs `work` in the open apply transaction, on the writer thread, and returns what it
    /// returns. What it applies is visible to this node's readers when it returns (the read
    /// buffer); the writer commits it later, with the rest of its batch
    /// ([`crate::ApplyBatching`]). An `Err` from `work` aborts the open transaction, and every
    /// later apply is refused ([`StoreError::WriterFailed`]): the caller stops the node, whose
    /// next start applies the log again.
    ///
    /// Not durable by itself: the state is a projection of the Raft log, which is fsynced before
    /// an entry is acknowledged. After a crash, redb rolls back to the last durable commit and
    /// the consensus layer applies the missing entries again from the log. It must make the
    /// state durable ([`Store::flush`]) before it purges the log entries that state reflects.
    pub async fn apply<R, E, F>(&self, work: F) -> Result<R, E>
    where
        F: FnOnce(&mut ApplyTxn) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + std::fmt::Display + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: ApplyWork = Box::new(move |txn| {
            // A panic (an invariant the apply asserts) fails the apply like an error, so the
            // transaction it left half written is aborted, never committed, and the caller is
            // told why.
            let result = txn.map_err(E::from).and_then(|txn| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(txn))).unwrap_or_else(
                    |panic| Err(E::from(StoreError::ApplyPanicked(panic_text(&*panic)))),
                )
            });
            // The caller may have stopped waiting (its node stops); the work is done either way.
            match result {
                Ok(value) => Ok(Box::new(move |committed: Result<(), StoreError>| {
                    let _ = reply.send(committed.map(|()| value).map_err(E::from));
                }) as AnswerApply),
                Err(error) => {
                    let failure = error.to_string();
                    let _ = reply.send(Err(error));
                    Err(failure)
                }
            }
        });
        self.writer.submit(Job::Apply(job))?;
        answer
            .await
            .unwrap_or_else(|_| Err(E::from(StoreError::WriterStopped)))
    }

    /// A write transaction of its own that applies commands and commits them with the
    /// `applied_state` they lead to ([`ApplyTxn::commit`]), durably if `durable`; nothing is
    /// visible to readers until then. The writer commits what it holds first and waits until
    /// this transaction is committed or dropped: do not wait for the writer meanwhile. For
    /// tools and tests; a node applies through [`Store::apply`].
    pub fn begin_apply(&self, durable: bool) -> Result<ApplyTxn, StoreError> {
        let paused = self.writer.pause()?;
        let txn = if durable {
            begin_durable_write(&self.db)?
        } else {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::None)?;
            txn
        };
        Ok(ApplyTxn::own(txn, self.shared(), paused))
    }

    /// Sets when the writer commits its open apply transaction (default
    /// [`ApplyBatching::DEFAULT`]).
    pub fn set_apply_batching(&self, batching: ApplyBatching) -> Result<(), StoreError> {
        self.writer.submit(Job::Batching(batching))
    }

    /// Makes everything applied so far durable: the writer commits its open transaction with
    /// fsync (or, with none open, a durable transaction that persists the commits before it).
    /// Do not call it while holding a transaction of its own ([`Store::begin_apply`]).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.writer.commit(true)
    }

    /// Commits what the writer's open transaction holds, without fsync: the committed tables
    /// (what a snapshot, a backup or a sweep reads) then hold everything applied before.
    pub fn commit_applied(&self) -> Result<(), StoreError> {
        self.writer.commit(false)
    }
}

/// The message of a caught panic.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}
