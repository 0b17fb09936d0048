//! [`blocking`]: work that blocks its thread (a redb transaction, a file read and synced), run
//! where it does not stall the runtime: on tokio's blocking pool, or, in a simulation, at once
//! on the thread that asks ([`pkraft_types::world::runs_blocking_work_inline`]).

use std::panic::AssertUnwindSafe;

/// Why blocking work gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum BlockingFailed {
    /// The pool's task panicked, or the runtime was shutting down and cancelled it. The cause is
    /// in the message (callers log the message alone), so it is not also the error's source.
    #[error("blocking work did not finish: {0}")]
    Pool(tokio::task::JoinError),
    /// Work run inline panicked.
    #[error("blocking work panicked: {0}")]
    Panicked(String),
}

/// Runs `work` on tokio's blocking pool and waits for it without blocking the runtime; in a
/// simulation, runs it at once on this thread (a panic in it comes back as
/// [`BlockingFailed::Panicked`], as the pool's comes back as [`BlockingFailed::Pool`]).
pub async fn blocking<T, F>(work: F) -> Result<T, BlockingFailed>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if pkraft_types::world::runs_blocking_work_inline() {
        return std::panic::catch_unwind(AssertUnwindSafe(work))
            .map_err(|panic| BlockingFailed::Panicked(crate::panic_message(&*panic)));
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(BlockingFailed::Pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_on_the_pool_answers_and_a_panic_is_named() {
        assert_eq!(blocking(|| 6 * 7).await.expect("answers"), 42);
        let failed = blocking(|| -> u8 { panic!("the disk is gone") })
            .await
            .expect_err("a panic is no answer");
        assert!(matches!(failed, BlockingFailed::Pool(_)), "{failed}");
    }
}
