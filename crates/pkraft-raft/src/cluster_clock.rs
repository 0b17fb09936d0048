//! Cluster time: the wall-clock time that changes replicated state (expiry, the stamp on each
//! publish batch) and that judges how far in the future a packet may be signed
//! (`http.max_future_skew`). No node's wall clock alone decides it (docs/CONSISTENCY.md, "Time").
//!
//! Two fences, each from something a single bad clock cannot move:
//! - **The voters' clocks.** Every node asks every voter for its wall clock once a second (peer
//!   route `clock`) and keeps each answer with the monotonic instant it was taken at (the middle
//!   of the round trip), so an answer stays right however this node's own wall clock steps
//!   afterwards. Cluster time is the lower median of the voters' clocks (this node's own among
//!   them when it votes), and only once a majority of voters have answered within
//!   `READING_MAX_AGE`. One voter's clock, however wrong, cannot move the median of three (two
//!   of five), and the lower median errs towards deleting later.
//! - **The log.** Every publish batch carries its leader's stamp (cluster time when it was
//!   proposed); every replica keeps the largest one applied, on disk with the state (it
//!   survives restarts). Cluster time is never ahead of that stamp by more than the monotonic
//!   time since, plus an eighth of it (`CATCH_UP_DIVISOR`), so a majority of clocks stepping
//!   together (or a single node's clock, where the node is the whole cluster) cannot delete at
//!   once what the step skipped over. The stamps are held the same way, so a stepped median
//!   cannot raise the fence through them.
//!
//! A node whose own wall clock is more than `raft.max_clock_offset` from the voters' median is
//! `Offset`: it does not lead expiry, and its `/readyz`, metrics, `cluster status` and log say
//! so until its clock is back (nothing to reset). A median more than `raft.max_clock_jump` ahead
//! of the log is `HeldByLog` (reported the same way). Timers, leases and timeouts use the
//! monotonic clock only (tokio's `Instant`), never this.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pkraft_types::too_far_ahead;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::NodeId;
pub use crate::clock_state::ClockState;
use crate::node_core::Core;
use crate::peer::path;
use crate::voters;

/// How often every voter's clock is asked for.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Longest a voter's answer counts for. Beyond it the voter is taken as unknown: a median of
/// stale readings could hide a clock that stepped since.
pub(crate) const READING_MAX_AGE: Duration = Duration::from_secs(5);
/// How long one clock probe may take; an answer that took longer than `raft.max_clock_offset`
/// is not used either (its uncertainty, half the round trip, is too large to judge by).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Cluster time may run this much faster than the monotonic clock beyond the log's last stamp
/// (one eighth): after the cluster was down a while, with right clocks, the stamps catch up
/// with them (an hour's downtime in eight hours; expiry runs that much late meanwhile, which
/// loses nothing). A clock stepped by days takes eight times as long to be believed, and the
/// rate fence (`expiry`) bounds what that deletes.
pub(crate) const CATCH_UP_DIVISOR: u32 = 8;

/// A wall-clock time and the monotonic instant it held at: it projects to any later instant
/// without reading the wall clock again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reading {
    pub(crate) wall_micros: u64,
    pub(crate) at: Instant,
}

impl Reading {
    fn projected(&self, now: Instant) -> u64 {
        self.wall_micros
            .saturating_add(micros(now.saturating_duration_since(self.at)))
    }

    /// The log's projection: monotonic time since, plus `CATCH_UP_DIVISOR`'s share.
    fn projected_with_catch_up(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.at);
        self.wall_micros
            .saturating_add(micros(since))
            .saturating_add(micros(since / CATCH_UP_DIVISOR))
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// The bounds the clock is judged by (`[raft]`).
#[derive(Debug, Clone, Copy)]
pub struct ClockBounds {
    /// `raft.max_clock_offset`.
    pub max_offset: Duration,
    /// `raft.max_clock_jump`: how far ahead of the log the voters' median may be before it is
    /// reported (`HeldByLog`).
    pub max_jump: Duration,
}

/// What is known at one instant, for [`evaluate`].
pub(crate) struct Inputs<'a> {
    pub(crate) own_micros: u64,
    pub(crate) now: Instant,
    pub(crate) self_id: NodeId,
    pub(crate) voters: &'a [NodeId],
    pub(crate) readings: &'a HashMap<NodeId, Reading>,
    pub(crate) log: Option<Reading>,
    pub(crate) bounds: ClockBounds,
}

/// Cluster time at one instant, and this node's clock judged against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterTime {
    /// This node's wall clock.
    pub own_micros: u64,
    /// The lower median of the voters' clocks, when a majority of them are known and agree
    /// on it (each within `raft.max_clock_offset`); `None` otherwise.
    pub voters_micros: Option<u64>,
    /// The latest of the clocks known (this node's own among them).
    pub latest_micros: u64,
    /// The largest stamp the log holds, projected to now (see `CATCH_UP_DIVISOR`); `None`
    /// before any publish was applied here.
    pub log_micros: Option<u64>,
    /// The largest stamp the log holds plus the monotonic time since it was applied, without
    /// the catch-up: a time some leader stamped. Not proof that it has passed (a stamp may be
    /// held to the log's catch-up, or be a leader's own clock while the voters' time was
    /// unknown), so it counts only where the voters' time does not. `None` as `log_micros`.
    pub log_floor_micros: Option<u64>,
    pub state: ClockState,
}

impl ClusterTime {
    /// The time expiry deletes by: the voters' median, held to the log's time. `None` when the
    /// voters' clocks are not known (then nothing is deleted).
    pub fn expiry_micros(&self) -> Option<u64> {
        let median = self.voters_micros?;
        Some(self.log_micros.map_or(median, |log| median.min(log)))
    }

    /// The stamp a leader puts on a publish batch: the voters' median (this node's clock when
    /// it is not known), held to the log's time, so stamps never carry a stepped clock into
    /// the log.
    ///
    /// With neither the voters' time nor the log's known (a new cluster, or the first leader of
    /// this build before its first clock probes), 0: no agreed time, which the log's time
    /// ignores, so a single clock never seeds the fence.
    pub fn stamp_micros(&self) -> u64 {
        match (self.voters_micros, self.log_micros) {
            (Some(median), log) => log.map_or(median, |log| median.min(log)),
            (None, Some(log)) => self.own_micros.min(log),
            (None, None) => 0,
        }
    }

    /// The time a packet's signature time is compared with (`http.max_future_skew`): the voters'
    /// median, else the latest clock known and the log's floor, whichever is later (while the
    /// voters' clocks are unknown or disagree, a node whose own clock is behind must not refuse
    /// packets signed now). Not held by the log (its time may lag): a cluster back from a long
    /// outage must not refuse packets signed now either.
    pub fn skew_reference_micros(&self) -> u64 {
        // Without the voters' time, never before the log's floor: a node whose clock is behind
        // and who knows no other clock (its peers unreachable, its probes' answers lost) has
        // still applied the cluster's stamps. With it, the voters' median alone: stamps only
        // grow, so a stamp once ahead of real time would otherwise let packets from the
        // future in for good.
        self.voters_micros.unwrap_or_else(|| {
            self.log_floor_micros
                .map_or(self.latest_micros, |floor| self.latest_micros.max(floor))
        })
    }

    /// Whether the skew reference is the voters' agreed time. Without it a packet ahead of
    /// the reference may be right and this node's clocks behind: it cannot tell which.
    pub fn voters_agree(&self) -> bool {
        self.voters_micros.is_some()
    }

    /// How a packet signed at `timestamp_micros` stands against cluster time
    /// (`http.max_future_skew` = `max_skew`): see [`SignatureTime`].
    pub fn judge_signature_time(&self, timestamp_micros: u64, max_skew: Duration) -> SignatureTime {
        let Some(ahead) = too_far_ahead(self.skew_reference_micros(), timestamp_micros, max_skew)
        else {
            return SignatureTime::Acceptable;
        };
        // The publisher is told its clock is wrong only when the voters' agreed time and this
        // node's own clock both say so. The voters are those of the membership this node's log
        // holds, which can be a single voter's for a while (a log repaired, or cut short by a
        // power cut, back to the first membership, that voter's clock stepped back: simulator
        // seeds 4156 and 8575); a right clock here then keeps a right publisher from a 400.
        let own_says_so = too_far_ahead(self.own_micros, timestamp_micros, max_skew).is_some();
        if self.voters_agree() && own_says_so {
            SignatureTime::FromTheFuture { ahead }
        } else {
            SignatureTime::Undecided { ahead }
        }
    }

    /// This node's clock minus the voters' median, in µs.
    pub fn offset_micros(&self) -> Option<i64> {
        let median = self.voters_micros?;
        let difference = i128::from(self.own_micros) - i128::from(median);
        Some(i64::try_from(difference).unwrap_or(if difference < 0 { i64::MIN } else { i64::MAX }))
    }
}

/// A packet's signature time judged against cluster time ([`ClusterTime::judge_signature_time`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureTime {
    /// Not further ahead of the skew reference than `http.max_future_skew`.
    Acceptable,
    /// Further ahead than the skew of the voters' agreed time and of this node's own clock:
    /// the publisher's clock is wrong (a PUT is answered 400).
    FromTheFuture { ahead: Duration },
    /// Further ahead than the skew of the reference, but the clocks this node knows do not
    /// agree that the packet is wrong (no voters' time, or this node's own clock takes the
    /// packet): the packet may be right and this node's clocks behind, so it is refused for
    /// now, not judged (a PUT is answered 503, to be sent again or to another node).
    Undecided { ahead: Duration },
}

/// Cluster time from what is known (pure: the rules of docs/CONSISTENCY.md, "Time").
pub(crate) fn evaluate(inputs: &Inputs<'_>) -> ClusterTime {
    let mut clocks: Vec<u64> = inputs
        .voters
        .iter()
        .filter_map(|voter| {
            if *voter == inputs.self_id {
                return Some(inputs.own_micros);
            }
            let reading = inputs.readings.get(voter)?;
            (inputs.now.saturating_duration_since(reading.at) <= READING_MAX_AGE)
                .then(|| reading.projected(inputs.now))
        })
        .collect();
    let majority = inputs.voters.len() / 2 + 1;
    clocks.sort_unstable();
    let max_offset = micros(inputs.bounds.max_offset);
    // The voters' time exists only when a majority of the voters' clocks agree on it (each
    // within `max_offset` of their lower median): two clocks a day apart say nothing about which
    // is right, and marking either as the odd one out would take a right node out of service.
    let voters_micros = (!inputs.voters.is_empty() && clocks.len() >= majority)
        .then(|| clocks[(clocks.len() - 1) / 2])
        .filter(|median| {
            let agreeing = clocks
                .iter()
                .filter(|clock| clock.abs_diff(*median) <= max_offset)
                .count();
            agreeing >= majority
        });
    // The latest clock known (this node's own among them): what a packet's signature time is
    // compared with while the voters do not agree, so that no right clock refuses packets
    // signed now.
    let latest_micros = clocks.last().copied().unwrap_or(0).max(inputs.own_micros);
    let log_micros = inputs
        .log
        .map(|log| log.projected_with_catch_up(inputs.now));
    let log_floor_micros = inputs.log.map(|log| log.projected(inputs.now));
    let log_bound_micros = log_micros.map(|log| log.saturating_add(micros(inputs.bounds.max_jump)));
    let state = match voters_micros {
        None => ClockState::Unknown,
        Some(median) if inputs.own_micros.abs_diff(median) > max_offset => ClockState::Offset,
        Some(median) if log_bound_micros.is_some_and(|bound| median > bound) => {
            ClockState::HeldByLog
        }
        Some(_) => ClockState::Synchronized,
    };
    ClusterTime {
        own_micros: inputs.own_micros,
        voters_micros,
        latest_micros,
        log_micros,
        log_floor_micros,
        state,
    }
}

/// What this node knows of the voters' clocks and of the log's time.
pub(crate) struct ClockReadings {
    bounds: ClockBounds,
    known: Mutex<Known>,
}

#[derive(Default)]
struct Known {
    readings: HashMap<NodeId, Reading>,
    /// The largest stamp applied, as a reading at the instant it was applied (or, for the one
    /// loaded from disk, at the start).
    log: Option<Reading>,
    /// The state last reported, to log changes once.
    reported: Option<ClockState>,
}

impl ClockReadings {
    /// `log_micros`: the largest stamp the replica holds (read from the store at start).
    pub(crate) fn new(bounds: ClockBounds, log_micros: Option<u64>) -> ClockReadings {
        let known = Known {
            log: log_micros.map(|wall_micros| Reading {
                wall_micros,
                at: Instant::now(),
            }),
            ..Known::default()
        };
        ClockReadings {
            bounds,
            known: Mutex::new(known),
        }
    }

    pub(crate) fn bounds(&self) -> ClockBounds {
        self.bounds
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A publish stamped `stamp_micros` was applied just now.
    pub(crate) fn applied_stamp(&self, stamp_micros: u64) {
        self.applied_stamp_at(stamp_micros, Instant::now());
    }

    /// A stamp larger than the one the log's time is anchored at becomes the new anchor, at the
    /// instant it was applied: the projection then starts again from a stamp the cluster agreed
    /// on, and its allowance (an eighth of the time since) never grows with uptime. A stamp
    /// applied late (a follower catching up) may lower the projection, which only makes expiry
    /// later; an older one changes nothing.
    fn applied_stamp_at(&self, stamp_micros: u64, now: Instant) {
        if stamp_micros == 0 {
            return; // no agreed time (`ClusterTime::stamp_micros`)
        }
        let mut known = self.known();
        if known.log.is_none_or(|log| stamp_micros > log.wall_micros) {
            known.log = Some(Reading {
                wall_micros: stamp_micros,
                at: now,
            });
        }
    }

    /// Voter `id` said its clock read `wall_micros` at `at` (the middle of the round trip).
    pub(crate) fn record_reading(&self, id: NodeId, wall_micros: u64, at: Instant) {
        self.known()
            .readings
            .insert(id, Reading { wall_micros, at });
    }

    /// Drops the readings of nodes that are no longer voters (bounded by the membership).
    pub(crate) fn retain_voters(&self, voters: &[NodeId]) {
        self.known().readings.retain(|id, _| voters.contains(id));
    }

    /// Cluster time now, for a node `self_id` in a cluster with `voters`.
    pub(crate) fn now(&self, self_id: NodeId, voters: &[NodeId]) -> ClusterTime {
        let own_micros = pkraft_types::unix_micros_now();
        let known = self.known();
        evaluate(&Inputs {
            own_micros,
            now: Instant::now(),
            self_id,
            voters,
            readings: &known.readings,
            log: known.log,
            bounds: self.bounds,
        })
    }

    /// Remembers `state` as reported; whether it changed.
    fn report(&self, state: ClockState) -> bool {
        let mut known = self.known();
        let changed = known.reported != Some(state);
        known.reported = Some(state);
        changed
    }
}

/// What a node says of its own clock (in `cluster status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockReport {
    pub state: ClockState,
    /// This node's wall clock minus the voters' median, in milliseconds; absent when the
    /// voters' clocks are not known.
    pub offset_ms: Option<i64>,
}

/// The node's cluster time: the voters' clocks it asks for and the log's stamps
/// ([`ClockReadings`]), with what it needs to ask.
pub struct ClusterClock {
    /// The node's handles and fixed settings (`node_core`).
    pub(crate) core: Arc<Core>,
    readings: Arc<ClockReadings>,
}

impl ClusterClock {
    /// `readings`: shared with the state machine, which applies the log's stamps into it.
    pub(crate) fn new(core: &Arc<Core>, readings: Arc<ClockReadings>) -> ClusterClock {
        ClusterClock {
            core: core.clone(),
            readings,
        }
    }

    /// Cluster time now, as this node knows it.
    pub fn now(&self) -> ClusterTime {
        self.readings
            .now(self.core.id, &voters::ids(&self.core.raft))
    }

    /// The time a packet's signature time is compared with (`http.max_future_skew`), in µs
    /// since the Unix epoch; see [`ClusterTime::skew_reference_micros`].
    pub fn skew_reference_micros(&self) -> u64 {
        self.now().skew_reference_micros()
    }

    /// What this node says of its clock.
    pub fn report(&self) -> ClockReport {
        let time = self.now();
        ClockReport {
            state: time.state,
            offset_ms: time.offset_micros().map(|offset| offset / 1000),
        }
    }

    /// `raft.max_clock_offset` and `raft.max_clock_jump`.
    pub fn bounds(&self) -> ClockBounds {
        self.readings.bounds()
    }
}

/// This node's wall clock, for a peer's probe (route `clock`).
pub(crate) fn wall_clock_micros() -> u64 {
    pkraft_types::unix_micros_now()
}

/// Asks every other voter for its clock once per `PROBE_INTERVAL`, and reports this node's
/// clock state (log lines on change, gauges).
pub(crate) async fn run(clock: Arc<ClusterClock>) {
    let mut ticker = tokio::time::interval(PROBE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        probe_voters(&clock).await;
        report_state(&clock);
    }
}

async fn probe_voters(clock: &ClusterClock) {
    let voters = voters::others(&clock.core.raft, clock.core.id);
    clock.readings.retain_voters(&voters::ids(&clock.core.raft));
    let max_round_trip = clock.readings.bounds.max_offset.min(PROBE_TIMEOUT);
    let mut asks = tokio::task::JoinSet::new();
    for (id, addr) in voters {
        let peers = clock.core.peers.clone();
        let readings = clock.readings.clone();
        asks.spawn(async move {
            let sent = Instant::now();
            let answer = peers
                .call::<(), u64>(&addr, Some(id), path::CLOCK, &(), PROBE_TIMEOUT)
                .await;
            let received = Instant::now();
            match answer {
                Ok(wall_micros) => {
                    let round_trip = received.saturating_duration_since(sent);
                    if round_trip <= max_round_trip {
                        readings.record_reading(id, wall_micros, sent + round_trip / 2);
                    }
                }
                Err(e) => tracing::debug!(peer = id, error = %e, "clock probe failed"),
            }
        });
    }
    while asks.join_next().await.is_some() {}
}

fn report_state(clock: &ClusterClock) {
    let time = clock.now();
    let offset_seconds = time
        .offset_micros()
        .map_or(0.0, |offset| offset as f64 / 1e6);
    clock.core.metrics.clock_offset_seconds.set(offset_seconds);
    for state in ClockState::ALL {
        clock
            .core
            .metrics
            .clock_state
            .with_label_values(&[state.label()])
            .set(i64::from(state == time.state));
    }
    if !clock.readings.report(time.state) {
        return;
    }
    let bounds = clock.readings.bounds;
    match time.state {
        ClockState::Synchronized => tracing::info!(
            offset_ms = time.offset_micros().map(|o| o / 1000),
            "this node's clock agrees with the cluster's"
        ),
        ClockState::Offset => tracing::warn!(
            offset_ms = time.offset_micros().map(|o| o / 1000),
            max_offset = ?bounds.max_offset,
            "CLOCK: this node's wall clock is off the voters' median by more than raft.max_clock_offset; it leads no expiry until its clock is right (check NTP)"
        ),
        ClockState::HeldByLog => tracing::warn!(
            ahead_ms = time
                .voters_micros
                .zip(time.log_micros)
                .map(|(median, log)| median.saturating_sub(log) / 1000),
            max_jump = ?bounds.max_jump,
            "CLOCK: the voters' clocks are ahead of the log's time by more than raft.max_clock_jump; expiry goes by the log's time, which catches up by an eighth of the time elapsed (check the clocks; after a long outage of the whole cluster this is expected)"
        ),
        ClockState::Unknown => tracing::info!(
            "no majority of the voters' clocks is known to agree; no expiry until one is"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 3600 * 1_000_000;
    const NOW: u64 = 1_800_000_000_000_000;

    fn bounds() -> ClockBounds {
        ClockBounds {
            max_offset: Duration::from_secs(1),
            max_jump: Duration::from_secs(3600),
        }
    }

    fn readings(now: Instant, clocks: &[(NodeId, u64)]) -> HashMap<NodeId, Reading> {
        clocks
            .iter()
            .map(|(id, wall_micros)| {
                (
                    *id,
                    Reading {
                        wall_micros: *wall_micros,
                        at: now,
                    },
                )
            })
            .collect()
    }

    fn time(own: u64, others: &[(NodeId, u64)], log: Option<u64>) -> ClusterTime {
        let now = Instant::now();
        let readings = readings(now, others);
        evaluate(&Inputs {
            own_micros: own,
            now,
            self_id: 1,
            voters: &[1, 2, 3],
            readings: &readings,
            log: log.map(|wall_micros| Reading {
                wall_micros,
                at: now,
            }),
            bounds: bounds(),
        })
    }

    #[test]
    fn one_voter_ahead_by_days_moves_nothing() {
        let ahead = time(NOW + 8 * DAY, &[(2, NOW), (3, NOW + 10)], None);
        assert_eq!(ahead.voters_micros, Some(NOW + 10));
        assert_eq!(ahead.expiry_micros(), Some(NOW + 10));
        assert_eq!(ahead.state, ClockState::Offset);
        assert_eq!(
            ahead.offset_micros(),
            Some(i64::try_from(8 * DAY - 10).expect("fits"))
        );
        // Its batches carry the cluster's time, not its own.
        assert_eq!(ahead.stamp_micros(), NOW + 10);
        assert_eq!(ahead.skew_reference_micros(), NOW + 10);

        let behind = time(NOW - DAY, &[(2, NOW), (3, NOW + 10)], None);
        assert_eq!(behind.voters_micros, Some(NOW));
        assert_eq!(behind.state, ClockState::Offset);
        // A packet signed now is not "from the future" for a node a day behind.
        assert_eq!(behind.skew_reference_micros(), NOW);
    }

    #[test]
    fn a_majority_is_needed_and_the_lower_median_errs_late() {
        // One of the two others unknown: two clocks of three that agree give their lower one;
        // two that do not agree give nothing, and neither node is called wrong.
        let two = time(NOW + 500_000, &[(2, NOW)], None);
        assert_eq!(two.voters_micros, Some(NOW));
        assert_eq!(two.state, ClockState::Synchronized);
        let apart = time(NOW + 8 * DAY, &[(2, NOW)], None);
        assert_eq!(apart.voters_micros, None);
        assert_eq!(apart.state, ClockState::Unknown);
        assert_eq!(apart.expiry_micros(), None);
        // Only its own clock: no cluster time, no expiry.
        let alone = time(NOW, &[], None);
        assert_eq!(alone.voters_micros, None);
        assert_eq!(alone.expiry_micros(), None);
        assert_eq!(alone.state, ClockState::Unknown);
        // No agreed time and no log: the stamp says so (0), and is not taken as the log's time.
        assert_eq!(alone.stamp_micros(), 0);
        let clock = ClockReadings::new(bounds(), None);
        clock.applied_stamp(0);
        assert!(clock.known().log.is_none());
    }

    #[test]
    fn stale_readings_do_not_count() {
        let now = Instant::now();
        let old = now.checked_sub(READING_MAX_AGE + Duration::from_secs(1));
        let Some(old) = old else {
            return; // the monotonic clock started too recently to go back that far
        };
        let readings: HashMap<NodeId, Reading> = [(
            2,
            Reading {
                wall_micros: NOW,
                at: old,
            },
        )]
        .into();
        let time = evaluate(&Inputs {
            own_micros: NOW,
            now,
            self_id: 1,
            voters: &[1, 2, 3],
            readings: &readings,
            log: None,
            bounds: bounds(),
        });
        assert_eq!(time.state, ClockState::Unknown);
    }

    #[test]
    fn the_log_holds_a_jump_of_the_whole_cluster() {
        // Every voter 8 days ahead of the last stamp: expiry takes the log's bound.
        let jumped = time(
            NOW + 8 * DAY,
            &[(2, NOW + 8 * DAY), (3, NOW + 8 * DAY)],
            Some(NOW),
        );
        assert_eq!(jumped.state, ClockState::HeldByLog);
        assert_eq!(jumped.expiry_micros(), Some(NOW));
        // The stamps are held to the log without the jump, so they cannot raise the bound.
        assert_eq!(jumped.stamp_micros(), NOW);
        // Packets signed by the (agreeing) clocks are not refused as from the future.
        assert_eq!(jumped.skew_reference_micros(), NOW + 8 * DAY);

        // Within the jump: synchronized, but expiry still goes by the log's time (the cluster
        // was down a minute: expiry runs a minute late until the stamps catch up).
        let fine = time(NOW + 60_000_000, &[(2, NOW + 60_000_000)], Some(NOW));
        assert_eq!(fine.state, ClockState::Synchronized);
        assert_eq!(fine.expiry_micros(), Some(NOW));
        // Stamps ahead of the median (an idle cluster's log projects ahead): the median.
        let idle = time(NOW, &[(2, NOW)], Some(NOW + 60_000_000));
        assert_eq!(idle.expiry_micros(), Some(NOW));
        assert_eq!(idle.stamp_micros(), NOW);
    }

    #[test]
    fn a_single_node_stepped_ahead_is_held_by_its_log() {
        let now = Instant::now();
        let readings = HashMap::new();
        let time = evaluate(&Inputs {
            own_micros: NOW + 8 * DAY,
            now,
            self_id: 1,
            voters: &[1],
            readings: &readings,
            log: Some(Reading {
                wall_micros: NOW,
                at: now,
            }),
            bounds: bounds(),
        });
        assert_eq!(time.state, ClockState::HeldByLog);
        assert_eq!(time.expiry_micros(), Some(NOW));
    }

    #[test]
    fn the_log_catches_up_by_an_eighth() {
        let start = Instant::now();
        let log = Reading {
            wall_micros: NOW,
            at: start,
        };
        let later = start + Duration::from_secs(800);
        assert_eq!(log.projected(later), NOW + 800_000_000);
        assert_eq!(log.projected_with_catch_up(later), NOW + 900_000_000);
    }

    /// After a month of uptime with stamps that follow the (right) median, the log's time is
    /// that median, not the start plus 9/8 of a month: the allowance of the catch-up never
    /// grows with uptime, so a clock step after a long uptime is held back as after a restart.
    #[test]
    fn the_log_follows_the_stamps_over_a_long_uptime() {
        let clock = ClockReadings::new(bounds(), Some(NOW));
        let start = clock.known().log.map(|log| log.at).expect("anchored");
        let month = Duration::from_secs(30 * 24 * 3600);
        let later = start + month;
        clock.applied_stamp_at(NOW + micros(month), later);
        let log = clock.known().log.expect("anchored");
        assert_eq!(log.projected_with_catch_up(later), NOW + micros(month));
        // A single node whose clock then steps 8 days ahead: expiry goes by the log's time.
        let readings = HashMap::new();
        let time = evaluate(&Inputs {
            own_micros: NOW + micros(month) + 8 * DAY,
            now: later,
            self_id: 1,
            voters: &[1],
            readings: &readings,
            log: Some(log),
            bounds: bounds(),
        });
        assert_eq!(time.state, ClockState::HeldByLog);
        assert_eq!(time.expiry_micros(), Some(NOW + micros(month)));
    }

    /// Two clocks known, a day apart: neither is called wrong, no expiry, and packets signed
    /// by the later clock are not from the future.
    #[test]
    fn two_clocks_that_disagree_say_nothing() {
        let right = time(NOW, &[(2, NOW - DAY)], None);
        assert_eq!(right.state, ClockState::Unknown);
        assert_eq!(right.expiry_micros(), None);
        assert_eq!(right.skew_reference_micros(), NOW);
        let behind = time(NOW - DAY, &[(2, NOW)], None);
        assert_eq!(behind.state, ClockState::Unknown);
        assert_eq!(behind.skew_reference_micros(), NOW);
        // Five voters, two of them 8 days ahead and one a day behind: no majority agrees.
        let now = Instant::now();
        let readings = readings(
            now,
            &[
                (2, NOW),
                (3, NOW + 8 * DAY),
                (4, NOW + 8 * DAY),
                (5, NOW - DAY),
            ],
        );
        let five = evaluate(&Inputs {
            own_micros: NOW,
            now,
            self_id: 1,
            voters: &[1, 2, 3, 4, 5],
            readings: &readings,
            log: None,
            bounds: bounds(),
        });
        assert_eq!(five.state, ClockState::Unknown);
        assert_eq!(five.expiry_micros(), None);
    }

    /// A node a day behind that knows no other clock (its peers unreachable, its probes'
    /// answers lost: simulator seed 57) still compares packets with the log's floor, the
    /// cluster's last stamp plus the time since: a packet signed now is not from the future.
    /// Without that floor its own clock is all it has, and the voters' time is not agreed.
    #[test]
    fn a_node_behind_that_knows_no_other_clock_is_held_up_by_the_logs_floor() {
        let alone = time(NOW - DAY, &[], Some(NOW));
        assert_eq!(alone.state, ClockState::Unknown);
        assert!(!alone.voters_agree());
        assert_eq!(alone.skew_reference_micros(), NOW);
        // The floor is not the catch-up: no share of the time since is added.
        assert_eq!(alone.log_floor_micros, Some(NOW));

        let no_log = time(NOW - DAY, &[], None);
        assert_eq!(no_log.skew_reference_micros(), NOW - DAY);
        assert!(!no_log.voters_agree());

        // With the voters' time agreed the floor changes nothing, below it or above it: a
        // stamp once ahead of real time (stamps only grow) must not let packets from the
        // future in for good.
        let agreed = time(NOW, &[(2, NOW), (3, NOW)], Some(NOW - DAY));
        assert!(agreed.voters_agree());
        assert_eq!(agreed.skew_reference_micros(), NOW);
        let stamped_ahead = time(NOW, &[(2, NOW), (3, NOW)], Some(NOW + DAY));
        assert!(stamped_ahead.voters_agree());
        assert_eq!(stamped_ahead.skew_reference_micros(), NOW);
    }

    /// A packet is judged from the future only when the voters' time and this node's own clock
    /// both put it past the skew. Simulator seed 8575: a node whose log was repaired back to the
    /// first membership (one voter, the node a learner) took that voter's clock, stepped 464 s
    /// back, for the voters' time and answered packets signed now 400.
    #[test]
    fn a_packet_is_from_the_future_only_if_the_voters_and_this_clock_say_so() {
        let skew = Duration::from_secs(300);
        let now = Instant::now();
        let stepped_back = NOW - 464 * 1_000_000;
        let one_voter_stepped = evaluate(&Inputs {
            own_micros: NOW,
            now,
            self_id: 1,
            voters: &[2],
            readings: &readings(now, &[(2, stepped_back)]),
            log: None,
            bounds: bounds(),
        });
        assert_eq!(one_voter_stepped.voters_micros, Some(stepped_back));
        assert_eq!(
            one_voter_stepped.judge_signature_time(NOW, skew),
            SignatureTime::Undecided {
                ahead: Duration::from_secs(464)
            }
        );

        let agreed = time(NOW, &[(2, NOW), (3, NOW)], None);
        assert_eq!(
            agreed.judge_signature_time(NOW + 300 * 1_000_000, skew),
            SignatureTime::Acceptable
        );
        assert_eq!(
            agreed.judge_signature_time(NOW + DAY, skew),
            SignatureTime::FromTheFuture {
                ahead: Duration::from_micros(DAY)
            }
        );
        // This node's clock a day ahead (Offset) takes a packet signed a day ahead: refused,
        // not judged; the voters' other nodes judge it.
        let ahead = time(NOW + DAY, &[(2, NOW), (3, NOW)], None);
        assert_eq!(ahead.state, ClockState::Offset);
        assert!(matches!(
            ahead.judge_signature_time(NOW + DAY, skew),
            SignatureTime::Undecided { .. }
        ));
        // Without the voters' time, a packet ahead of every clock known is not judged either.
        let alone = time(NOW, &[], None);
        assert!(matches!(
            alone.judge_signature_time(NOW + DAY, skew),
            SignatureTime::Undecided { .. }
        ));
    }

    #[test]
    fn late_stamps_do_not_pull_the_log_back() {
        let clock = ClockReadings::new(bounds(), Some(NOW));
        clock.applied_stamp(NOW - DAY);
        let log = clock.known().log.map(|log| log.wall_micros);
        assert_eq!(log, Some(NOW));
        clock.applied_stamp(NOW + 5_000_000);
        let log = clock.known().log.map(|log| log.wall_micros);
        assert_eq!(log, Some(NOW + 5_000_000));
    }
}
