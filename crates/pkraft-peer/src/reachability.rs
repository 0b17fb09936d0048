//! [`Reachability`]: whether each peer takes openraft's RPCs, logged when that changes.
//!
//! openraft 0.9 logs every failed RPC to a peer it cannot reach at `ERROR` (`RPCError`,
//! `heartbeat error`, `while requesting vote`, ...) and `WARN` (`error replication to target`,
//! and `backoff mode` for each backoff): several lines every half second for each peer down,
//! through every rolling restart and for as long as an outage lasts. A peer that is down is not
//! an error of this node, and the cluster goes on while a quorum is left. The node's logging
//! drops those lines of openraft's (`pkraft::logging`) and this module says the same once: when
//! a peer stops taking RPCs (one that only does not answer in time, once it has missed every
//! call for [`SILENT_BEFORE_LOST`]), again when it misses them in a worse way, again at most
//! every [`STILL_UNREACHABLE_EVERY`] while it stays so, and when it takes them again. A peer
//! that cannot be reached, or does not answer in time (a silent network, a hung peer: openraft
//! logged each timed-out retry too, ten a second at the default heartbeat), is a `WARN`; one
//! that refuses this node for good (a wrong secret, the wrong node at its address) is a
//! misconfiguration, an `ERROR`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pkraft_raft_storage::NodeId;
use tokio::time::Instant;

/// How often a peer that stays unreachable is logged again.
pub const STILL_UNREACHABLE_EVERY: Duration = Duration::from_secs(60);

/// How long a peer must have missed every call by not answering in time before it is logged as
/// lost. An append-entries has openraft's heartbeat interval to be answered (100 ms by
/// default), and a peer that is only slow for a moment (a long fsync, a busy machine) misses
/// one or two; those are not worth a line, nor its return.
pub const SILENT_BEFORE_LOST: Duration = Duration::from_secs(1);

/// The peers that did not answer their last openraft RPC, shared by the connections to them.
/// Its keys are node ids of the membership (set by the operator), so it stays small.
#[derive(Debug, Clone, Default)]
pub struct Reachability(Arc<Mutex<HashMap<NodeId, Unreached>>>);

#[derive(Debug, Clone, Copy)]
struct Unreached {
    /// The first of the calls missed in a row.
    since: Instant,
    /// The last of them.
    last_missed: Instant,
    /// When it was last logged as lost, and the worst miss said so far; `None` while a silent
    /// peer is not yet ([`SILENT_BEFORE_LOST`]).
    logged: Option<(Instant, Miss)>,
    failed_calls: u64,
}

impl Unreached {
    fn new(now: Instant) -> Unreached {
        Unreached {
            since: now,
            last_missed: now,
            logged: None,
            failed_calls: 0,
        }
    }
}

/// What a failed call says of its peer (`CallError::heard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// It answered, if only to refuse for now (503: low on disk, or stopping) or to fail (500).
    Answered,
    /// It was missed.
    Missed(Miss),
    /// Neither: the call was cut off, timed out by its own deadline (a snapshot chunk), or its
    /// answer did not decode.
    Unknown,
}

/// How a call missed its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// Not connected (down, not listening), or a gateway in front of it says so (502, 504).
    Unreachable,
    /// Connected, or so it seemed, but no answer in time: a network that drops the peer's
    /// packets, a peer that is stopped (SIGSTOP) or hung, or one too slow for the timeout.
    Silent,
    /// Refused for good: a wrong secret (401), the wrong node at the address (421), no secret
    /// on this node. The configuration is wrong, not the network.
    Refused,
}

impl Miss {
    /// How much a miss says of its peer, for [`Reachability::failed`]: no answer in time may
    /// be a slow moment, no connection is down, a refusal is a wrong configuration.
    fn severity(self) -> u8 {
        match self {
            Miss::Silent => 0,
            Miss::Unreachable => 1,
            Miss::Refused => 2,
        }
    }
}

/// What a call's outcome changes, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing to say.
    None,
    /// The peer stopped answering.
    Lost,
    /// The peer still does not answer, `down_for` after it stopped, after `failed_calls` calls.
    StillLost {
        down_for: Duration,
        failed_calls: u64,
    },
    /// The peer answers again, `down_for` after it stopped.
    Back { down_for: Duration },
}

impl Reachability {
    /// Records that a call to `node` at `addr` missed it (`miss`, with `error`) at `now`, and
    /// logs what that changes. The decision and its line are made under one lock, so that
    /// concurrent calls to one peer (replication, a vote) never log its loss and return out of
    /// order.
    pub fn failed(
        &self,
        node: NodeId,
        addr: &str,
        now: Instant,
        miss: Miss,
        error: &dyn std::fmt::Display,
    ) -> Change {
        let mut peers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let unreached = peers.entry(node).or_insert_with(|| Unreached::new(now));
        // Silent misses never said that ended long ago (this node stopped calling: it stepped
        // down, or an election ended) are not part of this one.
        if unreached.logged.is_none()
            && now.saturating_duration_since(unreached.last_missed) > SILENT_BEFORE_LOST
        {
            *unreached = Unreached::new(now);
        }
        unreached.failed_calls += 1;
        unreached.last_missed = now;
        let change = match unreached.logged {
            None if miss == Miss::Silent
                && now.saturating_duration_since(unreached.since) < SILENT_BEFORE_LOST =>
            {
                Change::None
            }
            None => {
                unreached.logged = Some((now, miss));
                Change::Lost
            }
            // Worse than said (a silent peer now refuses, or cannot be reached): said at once.
            Some((_, said)) if miss.severity() > said.severity() => {
                unreached.logged = Some((now, miss));
                Change::Lost
            }
            Some((logged, _))
                if now.saturating_duration_since(logged) < STILL_UNREACHABLE_EVERY =>
            {
                Change::None
            }
            Some((_, said)) => {
                unreached.logged = Some((now, said));
                Change::StillLost {
                    down_for: now.saturating_duration_since(unreached.since),
                    failed_calls: unreached.failed_calls,
                }
            }
        };
        Reachability::log(change, node, addr, Some((miss, error)));
        change
    }

    /// Records that a call to `node` at `addr` reached it (whatever it answered) at `now`, and
    /// logs its return if it was logged as lost (under the lock, as [`Reachability::failed`]).
    pub fn reached(&self, node: NodeId, addr: &str, now: Instant) -> Change {
        let mut peers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let change = match peers.remove(&node) {
            Some(Unreached {
                since,
                logged: Some(_),
                ..
            }) => Change::Back {
                down_for: now.saturating_duration_since(since),
            },
            // Never lost, or silent for less than `SILENT_BEFORE_LOST`: nothing was said.
            Some(_) | None => Change::None,
        };
        Reachability::log(change, node, addr, None);
        change
    }

    /// Logs `change` of the peer `node` at `addr`; `missed` is how the failed call missed it,
    /// with its error.
    fn log(
        change: Change,
        node: NodeId,
        addr: &str,
        missed: Option<(Miss, &dyn std::fmt::Display)>,
    ) {
        if change == Change::None {
            // The common case while a peer stays down (a call every half second): no line, so
            // no error text either.
            return;
        }
        let (miss, error) = match missed {
            Some((miss, error)) => (Some(miss), error.to_string()),
            None => (None, String::new()),
        };
        let (lost, still_lost) = match miss {
            Some(Miss::Refused) => (
                "a peer refuses this node's calls: check cluster.secret on both and the peer's address",
                "a peer still refuses this node's calls",
            ),
            Some(Miss::Silent) => (
                "a peer does not answer in time; the cluster goes on without it while a quorum answers",
                "a peer still does not answer in time",
            ),
            Some(Miss::Unreachable) | None => (
                "a peer cannot be reached; the cluster goes on without it while a quorum answers",
                "a peer still cannot be reached",
            ),
        };
        // A refusal for good is a misconfiguration (ERROR); the rest is the network (WARN).
        let refused = miss == Some(Miss::Refused);
        match change {
            Change::None => {}
            Change::Lost if refused => tracing::error!(peer = node, addr, %error, "{lost}"),
            Change::Lost => tracing::warn!(peer = node, addr, %error, "{lost}"),
            Change::StillLost {
                down_for,
                failed_calls,
            } if refused => tracing::error!(
                peer = node,
                addr,
                down_for = ?down_for,
                failed_calls,
                %error,
                "{still_lost}"
            ),
            Change::StillLost {
                down_for,
                failed_calls,
            } => tracing::warn!(
                peer = node,
                addr,
                down_for = ?down_for,
                failed_calls,
                %error,
                "{still_lost}"
            ),
            Change::Back { down_for } => {
                tracing::info!(peer = node, addr, down_for = ?down_for, "a peer takes this node's calls again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: &str = "127.0.0.1:7411";

    #[test]
    fn a_peer_down_is_said_once_then_every_minute_and_its_return_once() {
        let peers = Reachability::default();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let down = |node, ms| peers.failed(node, ADDR, at(ms), Miss::Unreachable, &"down");
        assert_eq!(peers.reached(2, ADDR, at(0)), Change::None);
        assert_eq!(down(2, 0), Change::Lost);
        // openraft's backoff: a call every 500 ms, silent until a minute has passed.
        for ms in (500..60_000).step_by(500) {
            assert_eq!(down(2, ms), Change::None, "at {ms} ms");
        }
        assert_eq!(
            down(2, 60_000),
            Change::StillLost {
                down_for: Duration::from_secs(60),
                failed_calls: 121
            }
        );
        assert_eq!(down(2, 60_500), Change::None);
        // Another peer is its own.
        assert_eq!(down(3, 61_000), Change::Lost);
        assert_eq!(
            peers.reached(2, ADDR, at(61_000)),
            Change::Back {
                down_for: Duration::from_secs(61)
            }
        );
        assert_eq!(peers.reached(2, ADDR, at(61_500)), Change::None);
        // Down again: said again.
        assert_eq!(down(2, 62_000), Change::Lost);
    }

    #[test]
    fn a_silent_peer_is_said_only_after_missing_every_call_for_a_second() {
        let peers = Reachability::default();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let silent = |ms| peers.failed(2, ADDR, at(ms), Miss::Silent, &"no answer");
        // A slow moment: a few timed-out calls, then an answer. Nothing is said either way.
        for ms in [0, 100, 200] {
            assert_eq!(silent(ms), Change::None, "at {ms} ms");
        }
        assert_eq!(peers.reached(2, ADDR, at(300)), Change::None);
        // Silent from 400 ms on: lost once the calls have missed it for a second.
        for ms in (400..1_400).step_by(100) {
            assert_eq!(silent(ms), Change::None, "at {ms} ms");
        }
        assert_eq!(silent(1_400), Change::Lost);
        assert_eq!(silent(1_500), Change::None);
        assert_eq!(
            peers.reached(2, ADDR, at(2_400)),
            Change::Back {
                down_for: Duration::from_secs(2)
            }
        );
        // A peer that cannot be reached is said at once, even after silent calls, and one that
        // refuses this node once more, even while it was said to be down.
        assert_eq!(silent(3_000), Change::None);
        let down = |ms| peers.failed(2, ADDR, at(ms), Miss::Unreachable, &"down");
        assert_eq!(down(3_100), Change::Lost);
        assert_eq!(down(3_200), Change::None);
        assert_eq!(silent(3_300), Change::None);
        let refused = |ms| peers.failed(2, ADDR, at(ms), Miss::Refused, &"401");
        assert_eq!(refused(3_400), Change::Lost);
        assert_eq!(down(3_500), Change::None);
        assert_eq!(refused(3_600), Change::None);
    }

    #[test]
    fn silent_calls_long_ago_do_not_count_toward_a_loss() {
        let peers = Reachability::default();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let silent = |ms| peers.failed(2, ADDR, at(ms), Miss::Silent, &"no answer");
        // An election's vote that timed out, then no call for a minute (this node follows).
        assert_eq!(silent(0), Change::None);
        // One slow call a minute later is a moment's slowness, not a loss a minute long.
        assert_eq!(silent(60_000), Change::None);
        assert_eq!(silent(60_900), Change::None);
        assert_eq!(silent(61_000), Change::Lost);
    }
}
