//! [`Leadership`]: the node as leader, or waiting on one. Whether it leads and whom it knows to
//! lead; since when it leads and whether a quorum still accepts it (`quorum`); when a leader last
//! reached this node, and when to stop waiting on one that is gone; the proposals under way and
//! whether this leader may begin another (not while it hands its leadership over, `handover`);
//! whether this node may stand for election. Also the task that logs leader and membership
//! changes. The write path asks before every batch it proposes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{BasicNode, RaftMetrics, ServerState};
use tokio::time::Instant;

use crate::NodeId;
use crate::freshness::LeaderContact;
use crate::node_core::Core;
use crate::peer::Silenced;
use crate::peer::quorum::QuorumContact;

/// How often a caller waiting on another node's answer checks that it still leads and is heard
/// from ([`Leadership::until_leader_gone`]): a fraction of the default heartbeat interval.
const LEADER_WATCH_INTERVAL: Duration = Duration::from_millis(20);
/// After a failed call to the leader (it moved or is down), how long to wait for news of a leader
/// before trying again.
const REROUTE_PAUSE: Duration = Duration::from_millis(100);
/// How often a handover checks whether the proposals under way have returned.
const PROPOSALS_POLL: Duration = Duration::from_millis(1);

/// The leadership state a node keeps beside openraft's, and what it asks of openraft about who
/// leads.
pub struct Leadership {
    /// The node's handles and fixed settings (`node_core`).
    pub(crate) core: Arc<Core>,
    /// Whether this node's election timer runs PreVote (`raft.pre_vote`) instead of openraft's.
    pre_vote: bool,
    /// When this node last became the leader (see `handover`: its vote is granted to another
    /// node only once it has led for the lease).
    since: Mutex<Option<Instant>>,
    /// When the followers last accepted this node as leader; the peer network records it.
    quorum_contact: QuorumContact,
    /// Set while this node hands its leadership over (see `handover`): for good when it stops,
    /// for the handover's length when it is low on disk.
    handing_over: AtomicBool,
    /// Set while a handover holds this node's elections (see `handover`); PreVote's election
    /// timer (`pre_vote`) stands for nothing meanwhile.
    elections_paused: AtomicBool,
    /// Held for a handover's length: one at a time (a stop waits for a low-disk one).
    handover_lock: tokio::sync::Mutex<()>,
    /// Voters this leader stops replicating to while it hands over (see `handover`); the peer
    /// network reads it.
    silenced: Silenced,
    /// Proposals this node has handed to Raft that have not returned (see [`Proposal`]).
    proposing: AtomicUsize,
    /// When this node last heard from a leader it accepted and took its entries from; written
    /// by the peer listener, read for the replica's staleness (`reads`).
    leader_contact: LeaderContact,
    /// When a current leader last reached this node, also with entries it refused for lack of
    /// disk space: whether the leader is alive (see [`Leadership::leader_gone`]), not whether
    /// this replica is fresh.
    leader_reached: LeaderContact,
    /// `append-entries` and `install-snapshot` requests being handled now: a leader whose last
    /// snapshot chunk takes seconds to install is busy with this node, not silent.
    leader_requests_in_flight: AtomicUsize,
}

/// A proposal to Raft under way on this leader. A handover waits until none is, so that the log
/// it asks a successor to match no longer grows (see `handover`).
pub(crate) struct Proposal<'a>(&'a AtomicUsize);

impl Drop for Proposal<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A replication request from a leader being handled ([`Leadership::leader_request`]).
pub(crate) struct LeaderRequest<'a>(&'a AtomicUsize);

impl Drop for LeaderRequest<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Leadership {
    /// `quorum_contact` and `silenced` are shared with the peer network, made before Raft;
    /// `pre_vote`: `raft.pre_vote`.
    pub(crate) fn new(
        core: &Arc<Core>,
        pre_vote: bool,
        quorum_contact: QuorumContact,
        silenced: Silenced,
    ) -> Leadership {
        Leadership {
            core: core.clone(),
            pre_vote,
            since: Mutex::new(None),
            quorum_contact,
            handing_over: AtomicBool::new(false),
            elections_paused: AtomicBool::new(false),
            handover_lock: tokio::sync::Mutex::new(()),
            silenced,
            proposing: AtomicUsize::new(0),
            leader_contact: LeaderContact::new(),
            leader_reached: LeaderContact::new(),
            leader_requests_in_flight: AtomicUsize::new(0),
        }
    }

    /// Whether this node believes it is the leader (it may have been deposed a moment ago).
    pub fn is_leader(&self) -> bool {
        self.core.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The leader this node knows of, with its peer address.
    pub(crate) fn known_leader(&self) -> Option<(NodeId, String)> {
        leader_with_address(&self.core.raft.metrics().borrow())
    }

    /// Why this node must stop waiting on `leader`, another node, for an answer (a forwarded
    /// publish, a read index): this node knows another leader or none, or `leader` has not
    /// reached it for longer than the leader lease (`election_timeout_max`), after which the
    /// followers may be electing a successor. A leader behind a silent partition (packets
    /// dropped) never answers, and a caller that waited for its deadline would refuse writes
    /// long after a new leader exists. `None` while `leader` leads and is heard from.
    pub(crate) fn leader_gone(&self, leader: NodeId) -> Option<String> {
        let current = self.core.raft.metrics().borrow().current_leader;
        if current != Some(leader) {
            return Some(match current {
                Some(current) => format!("leadership moved from node {leader} to node {current}"),
                None => format!("node {leader} is no longer known to lead"),
            });
        }
        let silent = self.since_leader_reached();
        (silent > self.core.lease).then(|| {
            format!(
                "leader {leader} has not been heard from for {} ms",
                silent.as_millis()
            )
        })
    }

    /// Resolves once [`Leadership::leader_gone`] says why; for racing a call to `leader`.
    pub(crate) async fn until_leader_gone(&self, leader: NodeId) -> String {
        loop {
            if let Some(reason) = self.leader_gone(leader) {
                return reason;
            }
            tokio::time::sleep(LEADER_WATCH_INTERVAL).await;
        }
    }

    /// Waits (bounded by `deadline` and [`REROUTE_PAUSE`]) until this node knows of a leader
    /// other than `previous`.
    pub(crate) async fn wait_for_leader_news(&self, previous: Option<NodeId>, deadline: Instant) {
        let pause = deadline
            .saturating_duration_since(Instant::now())
            .min(REROUTE_PAUSE);
        let waited = self
            .core
            .raft
            .wait(Some(pause))
            // The news a caller can act on: a leader whose address this node knows, as
            // `known_leader` reads it. A node that has heard from a leader before it holds the
            // membership naming it (a node joining) must wait for that, not return at once.
            .metrics(
                |m| leader_with_address(m).is_some_and(|(leader, _)| Some(leader) != previous),
                "learn of a leader",
            )
            .await;
        if let Err(openraft::metrics::WaitError::ShuttingDown) = waited {
            // Raft has stopped (a fatal error; the node stops next): no news will come, and
            // returning at once would have the caller (a batch looking for its leader, a read
            // rerouting) ask again in a loop that never yields until its deadline. Found by the
            // simulated cluster, where such a loop stops simulated time itself.
            tokio::time::sleep(pause).await;
        }
    }

    /// When this node last became the leader, if it leads.
    pub(crate) fn leading_since(&self) -> Option<Instant> {
        self.since.lock().ok().and_then(|since| *since)
    }

    /// Records whether this node leads (from now on, if it does).
    fn set_leading(&self, leading: bool) {
        if let Ok(mut since) = self.since.lock() {
            *since = leading.then(Instant::now);
        }
    }

    /// Why this leader should not propose: it has led for longer than the leader lease and no
    /// quorum of voters has accepted it within the lease, so it is cut off (and perhaps already
    /// replaced). `None` when it may propose.
    pub(crate) fn cut_off_from_quorum(&self) -> Option<String> {
        let since = self.leading_since()?;
        if since.elapsed() <= self.core.lease {
            return None;
        }
        let voters: Vec<NodeId> = {
            let metrics = self.core.raft.metrics();
            let metrics = metrics.borrow();
            metrics.membership_config.membership().voter_ids().collect()
        };
        match self.quorum_contact.age(self.core.id, &voters) {
            Some(age) if age <= self.core.lease => None,
            Some(age) => Some(format!(
                "this leader has not reached a quorum for {} ms",
                age.as_millis()
            )),
            None => Some("this leader has not reached a quorum".to_string()),
        }
    }

    /// This node accepted an `append-entries` (or snapshot) from its leader just now.
    pub(crate) fn heard_from_leader(&self) {
        self.reached_by_leader();
        if let Some(gap) = self.leader_contact.record() {
            self.core
                .metrics
                .leader_contact_gap
                .observe(gap.as_secs_f64());
        }
    }

    /// A current leader's request reached this node just now, whether or not its entries were
    /// taken (see `heard_from_leader`).
    pub(crate) fn reached_by_leader(&self) {
        self.leader_reached.record();
    }

    /// How long since a current leader last reached this node (zero while one of its requests
    /// is being handled); since start if none has.
    pub(crate) fn since_leader_reached(&self) -> Duration {
        if self.leader_requests_in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        self.leader_reached.elapsed_or_since_start()
    }

    /// How long since this node last accepted a leader's entries; `None` if never since start.
    pub(crate) fn since_leader_contact(&self) -> Option<Duration> {
        self.leader_contact.elapsed()
    }

    /// Counts a replication request from a leader as contact while it is handled.
    pub(crate) fn leader_request(&self) -> LeaderRequest<'_> {
        self.leader_requests_in_flight
            .fetch_add(1, Ordering::Relaxed);
        LeaderRequest(&self.leader_requests_in_flight)
    }

    /// Marks a proposal to Raft as under way, or `None` if this leader is handing over and must
    /// propose nothing more. The count goes up before the check, and the handover sets its flag
    /// before it reads the count (both sequentially consistent), so a proposal either sees the
    /// flag or is waited for.
    pub(crate) fn begin_proposal(&self) -> Option<Proposal<'_>> {
        self.proposing.fetch_add(1, Ordering::SeqCst);
        let proposal = Proposal(&self.proposing);
        (!self.handing_over()).then_some(proposal)
    }

    /// Waits until no proposal is under way, for at most `timeout`; whether none is.
    pub(crate) async fn proposals_settled(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.proposing.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(PROPOSALS_POLL).await;
        }
        true
    }

    /// Whether this node is handing its leadership over: it takes no more publishes as leader.
    pub(crate) fn handing_over(&self) -> bool {
        self.handing_over.load(Ordering::SeqCst)
    }

    /// From now on this node takes no more publishes as leader, until `end_handover`.
    pub(crate) fn start_handover(&self) {
        self.handing_over.store(true, Ordering::SeqCst);
    }

    /// This node may take publishes as leader again (a handover that leaves it running ended).
    pub(crate) fn end_handover(&self) {
        self.handing_over.store(false, Ordering::SeqCst);
    }

    /// Held by whoever hands leadership over (see `handover`).
    pub(crate) fn handover_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.handover_lock
    }

    /// The voters this leader sends no `append-entries` to while it hands over.
    pub(crate) fn silenced(&self) -> &Silenced {
        &self.silenced
    }

    /// Whether this node's elections are held (see `elections_paused`).
    pub(crate) fn elections_paused(&self) -> bool {
        self.elections_paused.load(Ordering::SeqCst)
    }

    /// Lets this node stand for election again (`true`), or stops it (a handover): openraft's
    /// own timer, or with PreVote the node's (`pre_vote`), which keeps openraft's off.
    pub(crate) fn allow_elections(&self, allowed: bool) {
        self.elections_paused.store(!allowed, Ordering::SeqCst);
        if !self.pre_vote {
            // Not while the log is being repaired (`hold_elections_while_repairing` turns it on).
            self.core
                .raft
                .runtime_config()
                .elect(allowed && self.core.log_store.repair().is_none());
        }
    }

    /// Whether this node may stand for election: not while its log is being repaired (it lacks
    /// entries it had, which a leader must hold), nor while a handover holds its elections.
    pub(crate) fn may_stand(&self) -> Result<(), String> {
        if let Some(repair) = self.core.log_store.repair() {
            return Err(format!(
                "this node's Raft log is being repaired (entries {}..={} lost to damage)",
                repair.lost_from, repair.lost_through
            ));
        }
        if self.elections_paused() {
            return Err("a handover holds this node's elections".to_string());
        }
        Ok(())
    }
}

/// Logs (and counts) the changes of the leader this node knows of, and logs the membership
/// changes it applies, for as long as the node runs: one line per event, on every node.
pub(crate) async fn watch_cluster_state(leadership: Arc<Leadership>) {
    let mut metrics = leadership.core.raft.metrics();
    // Nothing known yet: the state at start is logged as the first change.
    let (mut leader, mut membership) = (None, None);
    loop {
        let now = metrics.borrow_and_update().clone();
        if now.current_leader != leader {
            leadership.core.metrics.leader_changes.inc();
            leader = now.current_leader;
            leadership.set_leading(leader == Some(leadership.core.id));
            match leader {
                Some(leader) => {
                    tracing::info!(leader, term = now.current_term, "leader changed");
                }
                None => tracing::info!(term = now.current_term, "no leader known"),
            }
        }
        if *now.membership_config.log_id() != membership {
            membership = *now.membership_config.log_id();
            let config = now.membership_config.membership();
            let voters: Vec<NodeId> = config.voter_ids().collect();
            let learners: Vec<NodeId> = config.learner_ids().collect();
            tracing::info!(?voters, ?learners, "membership changed");
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Without PreVote, openraft's own election timer runs: it starts off while the log is being
/// repaired (`Node::start`), and this turns it on once the log is whole (with PreVote, the
/// node's timer asks [`Leadership::may_stand`]).
pub(crate) async fn hold_elections_while_repairing(leadership: Arc<Leadership>) {
    while leadership.core.log_store.repair().is_some() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !leadership.elections_paused() {
        leadership.core.raft.runtime_config().elect(true);
    }
}

/// The leader `metrics` name and its peer address, if this node's membership names it.
fn leader_with_address(metrics: &RaftMetrics<NodeId, BasicNode>) -> Option<(NodeId, String)> {
    let leader = metrics.current_leader?;
    let node = metrics.membership_config.membership().get_node(&leader)?;
    Some((leader, node.addr.clone()))
}
