//! [`Reachability`]: whether each peer takes openraft's RPCs, logged when that changes.
//!
//! openraft 0.9 logs every failed RPC to a peer it cannot reach at `ERROR` (`RPCError`,
//! `heartbeat error`, `while requesting vote`, ...) and `WARN` (`error replication to target`,
//! and `backoff mode` for each backoff): several lines every half second for each peer down,
//! through every rolling restart and for as long as an outage lasts. A peer that is down is not
//! an error of this node, and the cluster goes on while a quorum is left. The node's logging
//! drops those lines of openraft's (`pkraft::logging`) and this module says the same once: when
//! a peer stops taking RPCs, again at most every [`STILL_UNREACHABLE_EVERY`] while it stays so,
//! and when it takes them again. A peer that cannot be reached is a `WARN`; one that refuses
//! this node for good (a wrong secret, the wrong node at its address) is a misconfiguration,
//! an `ERROR`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pkraft_storage::NodeId;

/// How often a peer that stays unreachable is logged again.
pub const STILL_UNREACHABLE_EVERY: Duration = Duration::from_secs(60);

/// The peers that did not answer their last openraft RPC, shared by the connections to them.
/// Its keys are node ids of the membership (set by the operator), so it stays small.
#[derive(Debug, Clone, Default)]
pub struct Reachability(Arc<Mutex<HashMap<NodeId, Unreached>>>);

#[derive(Debug, Clone, Copy)]
struct Unreached {
    since: Instant,
    logged: Instant,
    failed_calls: u64,
}

/// What a failed call says of its peer (`CallError::heard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// It answered, if only to refuse for now (503: low on disk, or stopping) or to fail (500).
    Answered,
    /// It was missed.
    Missed(Miss),
    /// Neither: the call timed out or was cut off, or its answer did not decode.
    Unknown,
}

/// How a call missed its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// Not connected (down, not listening), or a gateway in front of it says so (502, 504).
    Unreachable,
    /// Refused for good: a wrong secret (401), the wrong node at the address (421), no secret
    /// on this node. The configuration is wrong, not the network.
    Refused,
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
    /// Records that a call to `node` could not reach it, at `now`.
    pub fn failed(&self, node: NodeId, now: Instant) -> Change {
        let mut peers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match peers.get_mut(&node) {
            None => {
                peers.insert(
                    node,
                    Unreached {
                        since: now,
                        logged: now,
                        failed_calls: 1,
                    },
                );
                Change::Lost
            }
            Some(unreached) => {
                unreached.failed_calls += 1;
                if now.saturating_duration_since(unreached.logged) < STILL_UNREACHABLE_EVERY {
                    return Change::None;
                }
                unreached.logged = now;
                Change::StillLost {
                    down_for: now.saturating_duration_since(unreached.since),
                    failed_calls: unreached.failed_calls,
                }
            }
        }
    }

    /// Records that a call to `node` reached it (whatever it answered), at `now`.
    pub fn reached(&self, node: NodeId, now: Instant) -> Change {
        let mut peers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match peers.remove(&node) {
            None => Change::None,
            Some(unreached) => Change::Back {
                down_for: now.saturating_duration_since(unreached.since),
            },
        }
    }

    /// Logs `change` of the peer `node` at `addr`; `missed` is how the failed call missed it,
    /// with its error.
    pub fn log(
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
        match (change, miss) {
            (Change::None, _) => {}
            (Change::Lost, Some(Miss::Refused)) => tracing::error!(
                peer = node,
                addr,
                %error,
                "a peer refuses this node's calls: check cluster.secret on both and the peer's address"
            ),
            (Change::Lost, _) => tracing::warn!(
                peer = node,
                addr,
                %error,
                "a peer cannot be reached; the cluster goes on without it while a quorum answers"
            ),
            (
                Change::StillLost {
                    down_for,
                    failed_calls,
                },
                Some(Miss::Refused),
            ) => tracing::error!(
                peer = node,
                addr,
                down_for = ?down_for,
                failed_calls,
                %error,
                "a peer still refuses this node's calls"
            ),
            (
                Change::StillLost {
                    down_for,
                    failed_calls,
                },
                _,
            ) => tracing::warn!(
                peer = node,
                addr,
                down_for = ?down_for,
                failed_calls,
                %error,
                "a peer still cannot be reached"
            ),
            (Change::Back { down_for }, _) => {
                tracing::info!(peer = node, addr, down_for = ?down_for, "a peer takes this node's calls again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_down_is_said_once_then_every_minute_and_its_return_once() {
        let peers = Reachability::default();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(peers.reached(2, at(0)), Change::None);
        assert_eq!(peers.failed(2, at(0)), Change::Lost);
        // openraft's backoff: a call every 500 ms, silent until a minute has passed.
        for ms in (500..60_000).step_by(500) {
            assert_eq!(peers.failed(2, at(ms)), Change::None, "at {ms} ms");
        }
        assert_eq!(
            peers.failed(2, at(60_000)),
            Change::StillLost {
                down_for: Duration::from_secs(60),
                failed_calls: 121
            }
        );
        assert_eq!(peers.failed(2, at(60_500)), Change::None);
        // Another peer is its own.
        assert_eq!(peers.failed(3, at(61_000)), Change::Lost);
        assert_eq!(
            peers.reached(2, at(61_000)),
            Change::Back {
                down_for: Duration::from_secs(61)
            }
        );
        assert_eq!(peers.reached(2, at(61_500)), Change::None);
        // Down again: said again.
        assert_eq!(peers.failed(2, at(62_000)), Change::Lost);
    }
}
