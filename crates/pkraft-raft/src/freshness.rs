//! What a node knows about the freshness of its replica, beside openraft's metrics: whether it
//! has caught up after a crash (read by `reads` on every local read), and the clock of leader
//! contact (`LeaderContact`), which `leadership` keeps for the leader's requests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use openraft::LogId;
use tokio::time::Instant;

use crate::NodeId;

/// What a node knows about the freshness of its replica, beside openraft's metrics.
#[derive(Debug)]
pub(crate) struct Freshness {
    /// Set after a crash: local reads wait until the replica is at least as new as before it.
    pub(crate) catch_up: Option<CatchUp>,
    /// The last entry the log held at start: the floor of the read indexes this node gives while
    /// it leads in that entry's term (see `read_index_as_leader`).
    pub(crate) log_end_at_start: Option<LogId<NodeId>>,
}

impl Freshness {
    /// `log_end`: the last entry of the log at start; `clean_stop`: whether the node stopped
    /// cleanly before (else it catches up before serving local reads).
    pub(crate) fn at_start(log_end: Option<LogId<NodeId>>, clean_stop: bool) -> Freshness {
        Freshness {
            catch_up: match log_end {
                Some(log_end) if !clean_stop => {
                    tracing::info!(
                        log_end = log_end.index,
                        "the last stop was not clean: DNS and GET answer from this replica once it \
                         has caught up with the cluster"
                    );
                    Some(CatchUp {
                        log_end,
                        done: AtomicBool::new(false),
                    })
                }
                _ => None,
            },
            log_end_at_start: log_end,
        }
    }
}

/// After a crash, the state on disk may be older than what the node served before it (applies
/// commit without fsync, see `state_machine`), and a member of a larger cluster only learns what
/// is committed from its leader. Until it has caught up, serving its replica could answer with an
/// older packet than before the crash, so local reads (DNS, GET) are refused instead.
///
/// Caught up means: it has applied the last entry its log held at start, or an entry of a later
/// term than that one. Either way it holds everything it could have served before: what it
/// served was committed and in its log, and a leader of a later term holds every entry committed
/// before it and appends its own after them. (The second case covers a log tail that was never
/// committed and is replaced by the new leader.)
#[derive(Debug)]
pub(crate) struct CatchUp {
    pub(crate) log_end: LogId<NodeId>,
    pub(crate) done: AtomicBool,
}

/// When this node last heard from a leader it accepted (a successful `append-entries`), for the
/// staleness bound on reads. Lock-free: written on every heartbeat, read on every DNS query.
#[derive(Debug)]
pub(crate) struct LeaderContact {
    epoch: Instant,
    /// Milliseconds after `epoch`; `u64::MAX` for never.
    last_millis: AtomicU64,
}

impl LeaderContact {
    pub(crate) fn new() -> LeaderContact {
        LeaderContact {
            epoch: Instant::now(),
            last_millis: AtomicU64::new(u64::MAX),
        }
    }

    /// Records a contact now; the time since the one before (`None` for the first).
    pub(crate) fn record(&self) -> Option<Duration> {
        let millis = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        match self.last_millis.swap(millis, Ordering::Relaxed) {
            u64::MAX => None,
            last => Some(Duration::from_millis(millis.saturating_sub(last))),
        }
    }

    /// Since the last contact; since this node started if there was none.
    pub(crate) fn elapsed_or_since_start(&self) -> Duration {
        self.elapsed().unwrap_or_else(|| self.epoch.elapsed())
    }

    pub(crate) fn elapsed(&self) -> Option<Duration> {
        let last = self.last_millis.load(Ordering::Relaxed);
        (last != u64::MAX).then(|| {
            self.epoch
                .elapsed()
                .saturating_sub(Duration::from_millis(last))
        })
    }
}
