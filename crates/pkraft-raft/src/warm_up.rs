//! The state cache warmed at start (`pkraft_state::Store::warm_step`): once the node is up, a
//! task reads the committed `answers` table (what DNS reads) into redb's page cache, a step of
//! [`STEP_ROWS`] rows at a time on the blocking pool, until it has read rows of 7/8 of the
//! cache's size or the table whole, and logs what it read. The first reads after a start or a
//! restart then find in the node's own cache what later reads would (docs/BENCHMARKS.md, "The
//! state cache derived from the machine, and warmed at start", has what it measured). The node
//! serves meanwhile: a read that comes before the warm-up has reached its key reads its pages
//! as it would have anyway.

use std::sync::Arc;

use pkraft_state::WarmCursor;
use tokio::time::Instant;

use crate::node_core::Core;

/// Rows read in one step (one read transaction, one job on the blocking pool): about 2 MB of
/// iroh-sized answers rows, a few milliseconds from the kernel's page cache.
const STEP_ROWS: usize = 4096;

/// Warms the state cache once, then ends (the node's stop ends it sooner).
pub(crate) async fn run(core: Arc<Core>) {
    let started = Instant::now();
    let mut cursor = Some(WarmCursor::default());
    let (mut answers_rows, mut read_bytes) = (0u64, 0u64);
    while let Some(at) = cursor.take() {
        let store = core.store.clone();
        let step = match pkraft_tasks::blocking(move || store.warm_step(&at, STEP_ROWS)).await {
            Ok(Ok(step)) => step,
            Ok(Err(error)) => {
                tracing::warn!(%error, "warming the state cache stopped: a read failed (the reads and the scrub report damage)");
                return;
            }
            // The step panicked (the blocking pool's thread caught it) or the runtime is
            // shutting down: nothing is lost but the warm-up.
            Err(_) => return,
        };
        answers_rows += step.rows;
        read_bytes = step.read_bytes;
        cursor = step.next;
    }
    tracing::info!(
        answers_rows,
        read_mib = read_bytes >> 20,
        budget_mib = core.store.warm_bytes() >> 20,
        millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "state cache warmed"
    );
}
