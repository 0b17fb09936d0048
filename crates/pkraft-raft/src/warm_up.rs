//! The state cache warmed (`pkraft_state::Store::warm_step`) at start and after every snapshot
//! install: a task reads the committed `answers` table (what DNS reads) into redb's page cache,
//! a step of [`STEP_ROWS`] rows at a time on the blocking pool, until it has read rows of 7/8 of
//! the cache's size or the table whole, and logs what it read. The first reads after a start,
//! a restart, or a learner's (or a lagging follower's) catch-up by snapshot then find in the
//! node's own cache what later reads would (docs/BENCHMARKS.md, "The state cache derived from
//! the machine, and warmed at start", has what it measured). The node serves meanwhile: a read
//! that comes before the warm-up has reached its key reads its pages as it would have anyway.
//!
//! An install replaces the whole state in one commit, so the pages the cache held before are
//! of a state that is gone: the install's own writes are what the cache holds after it (the
//! last rows written, of every table), not the answers a read needs. Writes through the log
//! never call for a new warm-up: they change a few rows at a time, and a read of them finds
//! them where the write left them.

use std::sync::Arc;

use pkraft_state::{Store, WarmCursor};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Rows read in one step (one read transaction, one job on the blocking pool): about 2 MB of
/// iroh-sized answers rows, a few milliseconds from the kernel's page cache.
const STEP_ROWS: usize = 4096;

/// What the warm-up task reads, and what tells it to read again.
pub(crate) struct WarmUp {
    pub(crate) store: Store,
    /// Notified by the state machine when a snapshot install has replaced the state; a notice
    /// that comes while a warm-up runs is kept and starts the next one when it ends.
    pub(crate) state_replaced: Arc<Notify>,
}

/// Why a warm-up runs, for its log line.
#[derive(Debug, Clone, Copy)]
enum Why {
    Start,
    SnapshotInstalled,
}

impl Why {
    fn as_str(self) -> &'static str {
        match self {
            Why::Start => "start",
            Why::SnapshotInstalled => "snapshot installed",
        }
    }
}

/// Warms the state cache once, then again after each snapshot install, for as long as the node
/// runs (its stop ends it).
pub(crate) async fn run(warm_up: Arc<WarmUp>) {
    warm(&warm_up.store, Why::Start).await;
    loop {
        warm_up.state_replaced.notified().await;
        warm(&warm_up.store, Why::SnapshotInstalled).await;
    }
}

/// One warm-up, from the first key until the budget or the table's end; a read that fails
/// ends it with a warning (the reads and the scrub report damage).
async fn warm(store: &Store, why: Why) {
    let started = Instant::now();
    let mut cursor = Some(WarmCursor::default());
    let (mut answers_rows, mut read_bytes) = (0u64, 0u64);
    while let Some(at) = cursor.take() {
        let store = store.clone();
        let step = match pkraft_tasks::blocking(move || store.warm_step(&at, STEP_ROWS)).await {
            Ok(Ok(step)) => step,
            Ok(Err(error)) => {
                tracing::warn!(%error, after = why.as_str(), "warming the state cache stopped: a read failed (the reads and the scrub report damage)");
                return;
            }
            // The step panicked (the blocking pool's thread caught it) or the runtime is
            // shutting down: nothing is lost but this warm-up.
            Err(_) => return,
        };
        answers_rows += step.rows;
        read_bytes = step.read_bytes;
        cursor = step.next;
    }
    tracing::info!(
        after = why.as_str(),
        answers_rows,
        read_mib = read_bytes >> 20,
        budget_mib = store.warm_bytes() >> 20,
        millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "state cache warmed"
    );
}
