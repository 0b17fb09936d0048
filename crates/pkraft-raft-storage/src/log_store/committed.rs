//! The committed log id openraft saves: kept in memory, written to `meta.redb` at most once per
//! [`COMMITTED_SYNC_INTERVAL`] by a task of its own, and at a clean stop.

use std::sync::Arc;
use std::time::Duration;

use openraft::{ErrorSubject, ErrorVerb, LogId};
use redb::Error as DbError;
use tokio::time::Instant;

use super::meta::{META_COMMITTED, put_meta};
use super::{Inner, LogStore, Result, poisoned};
use crate::codec::storage_error;
use crate::type_config::NodeId;

/// How stale the committed id on disk may get: it is written (and fsynced) at most once per
/// interval, by a task of its own. A restarted node re-applies its log up to that id before it
/// hears from a leader.
pub(super) const COMMITTED_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The latest committed id and its writer's state.
pub(super) struct Committed {
    latest: Option<LogId<NodeId>>,
    last_write: Instant,
    /// A write is scheduled or under way; it writes whatever is latest when it runs, and
    /// schedules another if a newer id arrived meanwhile.
    writing: bool,
}

impl Committed {
    /// Nothing saved yet.
    pub(super) fn new() -> Committed {
        Committed {
            latest: None,
            last_write: Instant::now(),
            writing: false,
        }
    }
}

impl LogStore {
    /// The index of the committed log id openraft last saved (it saves it as the commit index
    /// advances, on followers as on the leader), whether or not it is on disk yet.
    pub fn committed_index(&self) -> Option<u64> {
        let committed = self.inner.committed.lock().ok()?;
        committed.latest.map(|log_id| log_id.index)
    }

    /// Writes the latest committed log id to disk (it is written at most once a second while
    /// running); for a clean stop.
    pub fn flush(&self) -> Result<()> {
        write_committed(&self.inner)
            .map(|_| ())
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, &e))
    }

    /// Lets a restarting node re-apply committed entries before it hears from a leader. Kept in
    /// memory; a task of its own writes the latest to disk at most once per
    /// [`COMMITTED_SYNC_INTERVAL`] and at most that long after it changed (an fsync on
    /// openraft's path once a second showed as a PUT p99 tail), and a clean stop writes the last
    /// one ([`LogStore::flush`]). A stale value only makes a restart re-apply less on its own:
    /// a single voter then commits the rest of its log as soon as it leads again, and
    /// pkraft-raft's `Node::start` waits for that before serving; a cluster member gets the
    /// commit index from its leader, and until then serves a replica up to about that interval
    /// older than before the crash.
    pub(super) fn save_committed_id(&self, committed: Option<LogId<NodeId>>) -> Result<()> {
        let delay = {
            let mut state =
                self.inner.committed.lock().map_err(|_| {
                    storage_error(ErrorSubject::Store, ErrorVerb::Write, &poisoned())
                })?;
            state.latest = committed;
            if state.writing {
                // The scheduled write picks this id up (or schedules one more that does).
                return Ok(());
            }
            state.writing = true;
            COMMITTED_SYNC_INTERVAL.saturating_sub(state.last_write.elapsed())
        };
        schedule_committed_write(&self.inner, delay);
        Ok(())
    }

    /// The committed id saved last, in memory or (after a start) on disk.
    pub(super) fn read_committed_id(&self) -> Result<Option<LogId<NodeId>>> {
        let latest = self
            .inner
            .committed
            .lock()
            .map_err(|_| storage_error(ErrorSubject::Store, ErrorVerb::Read, &poisoned()))?
            .latest;
        if latest.is_some() {
            return Ok(latest);
        }
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>(META_COMMITTED)?
            .flatten())
    }
}

/// Writes the latest committed id durably, if openraft saved one, and returns what it wrote.
fn write_committed(inner: &Inner) -> std::result::Result<Option<LogId<NodeId>>, DbError> {
    let txn = inner.meta.begin_write()?;
    // Read after `begin_write`: of two writers, the one that commits last wrote the newer id.
    let latest = inner
        .committed
        .lock()
        .map_err(|_| DbError::Io(poisoned()))?
        .latest;
    if let Some(latest) = latest {
        put_meta(&txn, META_COMMITTED, &Some(latest))?;
        txn.commit()?;
    }
    Ok(latest)
}

/// Writes the committed id after `delay`, then again after each interval for as long as newer
/// ids keep arriving. The wait holds no handle to the log, so a stopping node does not wait for
/// it (and `LogStore::flush` writes the last id anyway).
fn schedule_committed_write(inner: &Arc<Inner>, delay: Duration) {
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let writer = inner.clone();
        let written = pkraft_tasks::blocking(move || write_committed(&writer)).await;
        let written = match written {
            Ok(Ok(written)) => written,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not write the committed log id");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "the committed log id writer failed");
                None
            }
        };
        let again = match inner.committed.lock() {
            Ok(mut state) => {
                state.last_write = Instant::now();
                let again = state.latest != written;
                state.writing = again;
                again
            }
            Err(_) => false,
        };
        if again {
            schedule_committed_write(&inner, COMMITTED_SYNC_INTERVAL);
        }
    });
}
