//! Replicated expiry: the leader periodically proposes `Command::Expire` for packets whose signed
//! timestamp is older than `raft.record_max_age` by cluster time (`cluster_clock`), never by its
//! own wall clock alone. Every replica applies the same entry and deletes the same rows.
//!
//! Two rules keep a wrong clock from deleting what the cluster acknowledged (docs/CONSISTENCY.md,
//! "Time"):
//! - a leader whose clock is off the voters' (`ClockState::Offset`), or that knows no majority
//!   of their clocks, proposes nothing;
//! - the rate fence: at most `raft.expiry_max_percent_per_hour` of the store (at least
//!   `FENCE_FLOOR_PER_HOUR` packets) is deleted in any hour, counted from the expiry entries
//!   this replica applied (every replica applies the same ones, so a new leader inherits the
//!   count; a restarted node starts from none).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pkraft_types::Command;
use pkraft_types::planted::{self, PlantedBug};
use tokio::time::Instant;

use crate::cluster_clock::{ClockState, ClusterClock};
use crate::leadership::Leadership;
use crate::metrics::{HELD_REASONS, NodeMetrics};
use crate::node_core::Core;
use crate::settings::Settings;

/// Most packets one expiry entry deletes: bounds the entry's apply time (one redb transaction)
/// and keeps publishes flowing in between. The leader proposes more entries right away while
/// there is more to delete.
pub const EXPIRE_ROWS_PER_ENTRY: u32 = 10_000;
/// The window of the rate fence.
const FENCE_WINDOW: Duration = Duration::from_secs(3600);
/// Packets the rate fence always allows in an hour, however small the store.
pub const FENCE_FLOOR_PER_HOUR: u64 = 1_000;

/// The `[raft]` settings expiry follows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExpiryRules {
    pub(crate) max_age: Duration,
    pub(crate) interval: Duration,
    pub(crate) max_percent_per_hour: u32,
}

impl ExpiryRules {
    pub(crate) fn of(settings: &Settings) -> ExpiryRules {
        ExpiryRules {
            max_age: settings.record_max_age,
            interval: settings.expiry_interval,
            max_percent_per_hour: settings.expiry_max_percent_per_hour,
        }
    }

    /// Packets the fence allows in an hour for a store of `stored` packets.
    fn budget_per_hour(&self, stored: u64) -> u64 {
        let share = u128::from(stored) * u128::from(self.max_percent_per_hour) / 100;
        u64::try_from(share)
            .unwrap_or(u64::MAX)
            .max(FENCE_FLOOR_PER_HOUR)
    }
}

/// The expiry deletions this replica applied in the last hour.
#[derive(Default)]
pub struct ExpiryLedger {
    deletions: Mutex<VecDeque<(Instant, u64)>>,
}

impl ExpiryLedger {
    /// Entries applied just now deleted `records` packets.
    pub(crate) fn deleted(&self, records: u64) {
        if records == 0 {
            return;
        }
        let now = Instant::now();
        let mut deletions = self
            .deletions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        prune(&mut deletions, now);
        deletions.push_back((now, records));
    }

    /// Packets deleted within the last hour.
    fn in_last_hour(&self) -> u64 {
        let mut deletions = self
            .deletions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        prune(&mut deletions, Instant::now());
        deletions.iter().map(|(_, records)| *records).sum()
    }
}

/// Drops what is older than the window (so the queue holds at most an hour of apply calls).
fn prune(deletions: &mut VecDeque<(Instant, u64)>, now: Instant) {
    while deletions
        .front()
        .is_some_and(|(at, _)| now.saturating_duration_since(*at) > FENCE_WINDOW)
    {
        deletions.pop_front();
    }
}

/// The leader's expiry: what it proposes and by which rules, and what it needs to.
pub(crate) struct Expiry {
    rules: ExpiryRules,
    /// The node's handles and fixed settings (`node_core`).
    pub(crate) core: Arc<Core>,
    leadership: Arc<Leadership>,
    clock: Arc<ClusterClock>,
    /// What this replica deleted in the last hour (the state machine fills it).
    ledger: Arc<ExpiryLedger>,
}

impl Expiry {
    /// `ledger`: this replica's deletions, which the state machine records.
    pub(crate) fn new(
        core: &Arc<Core>,
        rules: ExpiryRules,
        leadership: Arc<Leadership>,
        clock: Arc<ClusterClock>,
        ledger: Arc<ExpiryLedger>,
    ) -> Expiry {
        Expiry {
            rules,
            core: core.clone(),
            leadership,
            clock,
            ledger,
        }
    }
}

/// Proposes expiry every `raft.expiry_interval` while this node leads.
pub(crate) async fn run(expiry: Arc<Expiry>) {
    let rules = expiry.rules;
    let mut ticker = tokio::time::interval(rules.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick completes at once; the first check is one interval after start.
    ticker.tick().await;
    let mut held = Held::default();
    loop {
        ticker.tick().await;
        let reason = if expiry.leadership.is_leader() {
            expire_now(&expiry).await
        } else {
            None
        };
        held.set(&expiry.core.metrics, reason);
    }
}

/// The reason expiry is held back for, as last reported.
#[derive(Default)]
struct Held(Option<&'static str>);

impl Held {
    fn set(&mut self, metrics: &NodeMetrics, reason: Option<&'static str>) {
        for known in HELD_REASONS {
            metrics
                .expiry_held
                .with_label_values(&[known])
                .set(i64::from(reason == Some(known)));
        }
        if reason != self.0 {
            match reason {
                Some("rate") => tracing::warn!(
                    "EXPIRY FENCED: expiry deleted raft.expiry_max_percent_per_hour of the store within the last hour; holding back the rest (a clock step on a majority of voters, or a real mass expiry: check the clocks)"
                ),
                Some(reason) => tracing::warn!(
                    reason,
                    "expiry held back: this leader's clock does not agree with the cluster's (see pkraft_clock_state)"
                ),
                None if self.0.is_some() => tracing::info!("expiry runs again"),
                None => {}
            }
        }
        self.0 = reason;
    }
}

/// Proposes expiry entries until nothing older than `max_age` by cluster time is left, the rate
/// fence is reached, or a proposal fails (the next tick tries again). Returns why it held back,
/// if it did.
async fn expire_now(expiry: &Expiry) -> Option<&'static str> {
    let rules = &expiry.rules;
    let time = expiry.clock.now();
    let by_own_clock = planted::is_planted(PlantedBug::ExpiryByOwnWallClock);
    let before_micros = match (time.state, time.expiry_micros()) {
        _ if by_own_clock => {
            let max_age_micros = u64::try_from(rules.max_age.as_micros()).unwrap_or(u64::MAX);
            pkraft_types::unix_micros_now().saturating_sub(max_age_micros)
        }
        (ClockState::Offset, _) => return Some("clock"),
        (_, None) => return Some("time_unknown"),
        (_, Some(now)) => {
            let max_age_micros = u64::try_from(rules.max_age.as_micros()).unwrap_or(u64::MAX);
            now.saturating_sub(max_age_micros)
        }
    };
    loop {
        match expiry.core.store.oldest_timestamp_micros() {
            Ok(Some(oldest)) if oldest < before_micros => {}
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the expiry index");
                return None;
            }
        }
        let stored = match expiry.core.store.packet_count() {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(error = %e, "cannot count the stored packets");
                return None;
            }
        };
        let allowed = rules
            .budget_per_hour(stored)
            .saturating_sub(expiry.ledger.in_last_hour());
        if allowed == 0 {
            return Some("rate");
        }
        let limit = u32::try_from(allowed)
            .unwrap_or(u32::MAX)
            .min(EXPIRE_ROWS_PER_ENTRY);
        let command = Command::Expire {
            before_micros,
            limit,
        };
        // A leader handing over proposes nothing more (see `handover`).
        let _proposal = expiry.leadership.begin_proposal()?;
        // Bounded like a publish: a leader cut off from its quorum must not wait here until the
        // partition heals (the next tick tries again).
        let written = tokio::time::timeout(
            expiry.core.publish_timeout,
            expiry.core.raft.client_write(command),
        )
        .await;
        let Ok(written) = written else {
            tracing::debug!("expiry proposal not committed in time; retrying next interval");
            return None;
        };
        match written {
            Ok(response) => {
                tracing::info!(
                    expired = response.data.expired,
                    before_micros,
                    "expired packets older than the maximum age"
                );
                if response.data.expired < u64::from(limit) {
                    return None;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "expiry proposal failed; retrying next interval");
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_a_share_of_the_store_with_a_floor() {
        let rules = ExpiryRules {
            max_age: Duration::from_secs(3600),
            interval: Duration::from_secs(60),
            max_percent_per_hour: 10,
        };
        assert_eq!(rules.budget_per_hour(10_000_000), 1_000_000);
        assert_eq!(rules.budget_per_hour(500), FENCE_FLOOR_PER_HOUR);
        assert_eq!(rules.budget_per_hour(u64::MAX), u64::MAX / 10);
    }

    #[test]
    fn the_ledger_counts_the_last_hour() {
        let ledger = ExpiryLedger::default();
        ledger.deleted(300);
        ledger.deleted(0);
        ledger.deleted(200);
        assert_eq!(ledger.in_last_hour(), 500);
        let mut deletions = ledger.deletions.lock().expect("not poisoned");
        assert_eq!(deletions.len(), 2);
        if let Some(now) = Instant::now().checked_add(FENCE_WINDOW + Duration::from_secs(1)) {
            prune(&mut deletions, now);
            assert!(deletions.is_empty());
        }
    }
}
