//! The state cache warmed (`pkraft_state::Store::warm_step`) at start, after every snapshot
//! install, and after a run of writes that has turned the cache over: a task reads the
//! committed `answers` table (what DNS reads) into redb's page cache, a step of [`STEP_ROWS`]
//! rows at a time on the blocking pool, until it has read rows of 7/8 of the cache's size or the
//! table whole, and logs why and what it read. The first reads after a start, a restart, a
//! learner's (or a lagging follower's) catch-up by snapshot, or a bulk load then find in the
//! node's own cache what later reads would (docs/BENCHMARKS.md, "The state cache derived from
//! the machine, and warmed at start", has what it measured). The node serves meanwhile: a read
//! that comes before the warm-up has reached its key reads its pages as it would have anyway.
//!
//! An install replaces the whole state in one commit, so the pages the cache held before are
//! of a state that is gone: the install's own writes are what the cache holds after it (the
//! last rows written, of every table), not the answers a read needs. Writes through the log
//! do the same more slowly: each packet stored reads and writes a leaf of `packets`, of
//! `answers` and of the expiry index, so once there have been as many of them as the warm-up
//! fills pages ([`rows_that_turn_the_cache_over`]) the cache holds mostly what writes touched,
//! whatever reads had kept there before. The warm-up then runs once the writes have settled
//! ([`WRITES_SETTLED`] without one): after a bulk load, an import, or a burst. Under steady
//! writes it never runs (there is no quiet moment), and reads keep their own pages cached as
//! before.

use std::sync::Arc;

use pkraft_state::{Store, WarmCursor};
use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

/// Rows read in one step (one read transaction, one job on the blocking pool): about 2 MB of
/// iroh-sized answers rows, a few milliseconds from the kernel's page cache.
const STEP_ROWS: usize = 4096;

/// How long without a row written before writes count as settled.
const WRITES_SETTLED: Duration = Duration::from_secs(2);
/// How often the warm-up looks at the rows written while it waits for writes to settle (an
/// atomic load).
const WRITES_POLL: Duration = Duration::from_millis(500);
/// The page size of redb's B-trees.
const PAGE_BYTES: u64 = 4096;

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
    Writes,
}

impl Why {
    fn as_str(self) -> &'static str {
        match self {
            Why::Start => "start",
            Why::SnapshotInstalled => "snapshot installed",
            Why::Writes => "writes",
        }
    }
}

/// Warms the state cache at start, then after each snapshot install and each settled run of
/// writes that turned the cache over, for as long as the node runs (its stop ends it).
pub(crate) async fn run(warm_up: Arc<WarmUp>) {
    let mut warmed_at = warm_up.store.rows_written();
    warm(&warm_up.store, Why::Start).await;
    loop {
        let why = tokio::select! {
            () = warm_up.state_replaced.notified() => Why::SnapshotInstalled,
            () = writes_settled(&warm_up.store, warmed_at) => Why::Writes,
        };
        warmed_at = warm_up.store.rows_written();
        warm(&warm_up.store, why).await;
    }
}

/// Rows written after which the cache holds mostly what the writes touched: one per page the
/// warm-up fills (each row written touches a leaf of three tables).
fn rows_that_turn_the_cache_over(store: &Store) -> u64 {
    (store.warm_bytes() / PAGE_BYTES).max(1)
}

/// Returns once at least [`rows_that_turn_the_cache_over`] rows have been written since
/// `since` (a count of [`Store::rows_written`]) and none for [`WRITES_SETTLED`].
async fn writes_settled(store: &Store, since: u64) {
    let enough = rows_that_turn_the_cache_over(store);
    let mut last = store.rows_written();
    let mut quiet_since = Instant::now();
    loop {
        tokio::time::sleep(WRITES_POLL).await;
        let written = store.rows_written();
        if written != last {
            last = written;
            quiet_since = Instant::now();
        } else if written.saturating_sub(since) >= enough && quiet_since.elapsed() >= WRITES_SETTLED
        {
            return;
        }
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
