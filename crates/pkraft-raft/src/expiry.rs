//! Replicated expiry: the leader periodically proposes `Command::Expire` for packets whose signed
//! timestamp is older than `raft.record_max_age`. Only the leader reads a clock; every replica
//! applies the same entry and deletes the same rows.

use std::sync::Arc;
use std::time::Duration;

use pkraft_types::Command;

use crate::node::Node;
use pkraft_types::unix_micros_now;

/// Most packets one expiry entry deletes: bounds the entry's apply time (one redb transaction)
/// and keeps publishes flowing in between. The leader proposes more entries right away while
/// there is more to delete.
pub const EXPIRE_ROWS_PER_ENTRY: u32 = 10_000;

pub(crate) async fn run(node: Arc<Node>, max_age: Duration, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick completes at once; the first check is one interval after start.
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if node.is_leader() {
            expire_now(&node, max_age).await;
        }
    }
}

/// Proposes expiry entries until nothing older than `max_age` is left (or a proposal fails:
/// the next tick tries again).
async fn expire_now(node: &Node, max_age: Duration) {
    let max_age_micros = u64::try_from(max_age.as_micros()).unwrap_or(u64::MAX);
    let before_micros = unix_micros_now().saturating_sub(max_age_micros);
    loop {
        match node.store().oldest_timestamp_micros() {
            Ok(Some(oldest)) if oldest < before_micros => {}
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the expiry index");
                return;
            }
        }
        let command = Command::Expire {
            before_micros,
            limit: EXPIRE_ROWS_PER_ENTRY,
        };
        // A leader handing over proposes nothing more (see `handover`).
        let Some(_proposal) = node.begin_proposal() else {
            return;
        };
        // Bounded like a publish: a leader cut off from its quorum must not wait here until the
        // partition heals (the next tick tries again).
        let written =
            tokio::time::timeout(node.publish_timeout, node.raft.client_write(command)).await;
        let Ok(written) = written else {
            tracing::debug!("expiry proposal not committed in time; retrying next interval");
            return;
        };
        match written {
            Ok(response) => {
                tracing::info!(
                    expired = response.data.expired,
                    before_micros,
                    "expired packets older than the maximum age"
                );
                if response.data.expired < u64::from(EXPIRE_ROWS_PER_ENTRY) {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "expiry proposal failed; retrying next interval");
                return;
            }
        }
    }
}
