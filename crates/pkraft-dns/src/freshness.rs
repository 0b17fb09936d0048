//! The optional `dns.max_stale` bound (DESIGN.md §4): a node that has not known its replica to be
//! current for longer than that answers SERVFAIL instead of records that may be outdated, and
//! resolvers then ask another server (iroh's resolver and stub resolvers treat SERVFAIL as "try
//! the next one"). A node catching up after a crash answers SERVFAIL whatever the bound.
//!
//! [`FreshnessBound::replica`] is asked once per query, before any answer is looked up
//! (`crate::answering`), and asks the replica's age only when a bound is set.

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;

/// How current this node's replica is, as the consensus layer (which this crate does not depend
/// on) knows it.
pub trait ReplicaFreshness: Send + Sync {
    /// Whether the node restarted after a crash and has not caught up with the cluster: its
    /// replica may be older than what it answered before. Always refused, so answers never go
    /// backwards. Asked on every query: it must be cheap once caught up.
    fn catching_up(&self) -> bool;

    /// How long ago the node last knew its replica to be current (on a follower, its last
    /// contact with the leader); `None` if never since it started. Asked only with a bound.
    fn last_confirmed(&self) -> Option<Duration>;
}

/// A replica that never catches up after a crash, whose age is what the closure says (tests,
/// and nodes with no consensus behind them).
impl<F: Fn() -> Option<Duration> + Send + Sync> ReplicaFreshness for F {
    fn catching_up(&self) -> bool {
        false
    }

    fn last_confirmed(&self) -> Option<Duration> {
        self()
    }
}

/// What the DNS frontend asks about its replica.
pub type FreshnessProbe = Arc<dyn ReplicaFreshness>;

/// Whether this node may answer from its replica now ([`FreshnessBound::replica`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replica {
    /// Answer from the replica.
    Answerable,
    /// Catching up after a crash, or staler than `dns.max_stale`: SERVFAIL, never an answer
    /// from the replica (or the answer cache).
    Refused,
}

/// Whether this node may answer now: not while catching up, not staler than `max_stale`.
pub(crate) struct FreshnessBound {
    probe: FreshnessProbe,
    /// `None`: always answer from the replica, however stale.
    max_stale: Option<Duration>,
    /// Counts the queries refused.
    refusals: IntCounter,
}

impl FreshnessBound {
    pub(crate) fn new(
        probe: FreshnessProbe,
        max_stale: Option<Duration>,
        refusals: IntCounter,
    ) -> FreshnessBound {
        FreshnessBound {
            probe,
            max_stale,
            refusals,
        }
    }

    /// Whether this node may answer from its replica now, or must refuse (SERVFAIL). A node
    /// that never heard from a leader since it started cannot vouch for its replica either.
    pub(crate) fn replica(&self) -> Replica {
        let too_stale = || {
            self.max_stale
                .is_some_and(|max| self.probe.last_confirmed().is_none_or(|stale| stale > max))
        };
        if self.probe.catching_up() || too_stale() {
            Replica::Refused
        } else {
            Replica::Answerable
        }
    }

    /// Counts a query answered SERVFAIL because the replica was [`Replica::Refused`].
    pub(crate) fn count_refusal(&self) {
        self.refusals.inc();
    }
}
