//! [`ClockState`]: this node's clock as the cluster sees it (`cluster_clock`).

use serde::{Deserialize, Serialize};

/// This node's clock as the cluster sees it. Gauge `pkraft_clock_state{state}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockState {
    /// Within `raft.max_clock_offset` of the voters' median, and the median within the log's
    /// bound.
    Synchronized,
    /// More than `raft.max_clock_offset` from the voters' median: this node leads no expiry.
    Offset,
    /// The voters' median is ahead of the log's time by more than `raft.max_clock_jump`:
    /// expiry goes by the log's time, which catches up by an eighth of the time elapsed. After
    /// a whole cluster was down longer than the jump, or when a majority of clocks (a single
    /// node's, alone in its cluster) stepped forward together.
    HeldByLog,
    /// Fewer than a majority of voters' clocks are known (peers unreachable, or run a build
    /// without the `clock` route), or those known do not agree (two clocks a day apart): no
    /// expiry, and no node is called wrong.
    Unknown,
}

impl ClockState {
    pub(crate) const ALL: [ClockState; 4] = [
        ClockState::Synchronized,
        ClockState::Offset,
        ClockState::HeldByLog,
        ClockState::Unknown,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            ClockState::Synchronized => "synchronized",
            ClockState::Offset => "offset",
            ClockState::HeldByLog => "held_by_log",
            ClockState::Unknown => "unknown",
        }
    }
}
