//! The faults of a run, drawn from its seed, and how each is made and ended on turmoil's
//! simulation: a node's process killed and started again, its links cut both ways, cut one
//! way, or stalled, its wall clock stepped or drifting (`world::ClockFault`), its power cut, or
//! every node's at once (`disk.rs`), a record of its Raft log damaged while it is down, and a
//! clean stop (a leader's handover, then the node's shutdown) as SIGTERM makes one.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use pkraft_testkit::damage::{LogRecord, RecordDamage, damage_log};
use pkraft_testkit::rng::SplitMix64;
use tokio::sync::Notify;

use crate::disk;
use crate::network::{self, host_name};
use crate::workload::Removed;
use crate::world::{ClockFault, set_clock_fault};

/// What a fault does to its node, from its moment until it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The node's process killed (its host's runtime and every task on it dropped; what it
    /// wrote stays, as in the page cache), and started again on its data dir when the fault
    /// ends.
    Crash,
    /// Every message between the node and the others dropped, both ways, without a word to
    /// either side (a silent partition); delivered again when the fault ends.
    Isolated,
    /// The node's messages to the others dropped; theirs still reach it (a one-way partition:
    /// it hears the leader and cannot answer, or leads and is not heard).
    Muted,
    /// Every message between the node and the others held, then delivered at once when the
    /// fault ends (a link that stalls: delay, and a burst after it).
    Stalled,
    /// The node's wall clock stepped by [`Fault::amount`] seconds (ahead if positive), and
    /// stepped back when the fault ends.
    ClockStepped,
    /// The node's wall clock gaining (positive) or losing [`Fault::amount`] µs a second, and
    /// set right when the fault ends.
    ClockDrifting,
    /// The node's power cut: its process gone as in a crash, and each of its files put back
    /// to what it held at its last sync (`disk.rs`); started again when the fault ends.
    PowerCut,
    /// Every node's power cut at once (the fault's `node` aside), each as in `PowerCut`; all
    /// started again when the fault ends. Only while no other fault is under way.
    PowerOutage,
    /// The node's process killed, and one record of its Raft log with a later append after it
    /// damaged as a disk damages one (`pkraft_testkit::damage`: a flipped bit, an enlarged
    /// length field, a lost write, a misdirected write; [`Fault::amount`] says which, the
    /// index in `RecordDamage::ALL`); started again on it when the fault ends, to find the
    /// damage and repair its log from the others. Made only when the others can repair it (the
    /// driver's `another_holds_its_log`: every node a voter and none repairing, another holding
    /// all the damaged log holds); other faults may come while it lasts, as while it repairs.
    LogDamaged,
    /// The node stopped cleanly, as the daemon stops on SIGTERM: a leader hands its
    /// leadership to a caught-up voter, then the node shuts down (its state flushed, the clean
    /// stop marked) while its peer listener still serves; started again when the fault ends,
    /// whether or not the stop had finished by then (a stop that outlasts it is killed, as
    /// systemd kills one past `TimeoutStopSec`).
    Stopped,
    /// Every sync of the node's files fails with EIO and makes nothing durable, as on a disk
    /// gone bad: the node must take no write it cannot make durable, and stop (openraft's
    /// storage error; the daemon exits for its supervisor). When the fault ends, its power is
    /// cut (what no sync kept is gone, as a kernel may drop the pages of a failed `fsync`) and
    /// it is started again on its data dir, the disk well again.
    SyncsFailing,
    /// A quarter of the peer requests the node serves (drawn from the fault's draws) are
    /// handled and their answer lost: the connection closes before it, so the caller cannot
    /// tell whether it was handled (a forwarded publish, an append, a vote), as when a link
    /// fails between a request and its answer. The links themselves stay up.
    AnswersLost,
    /// Every change the node's Raft log makes (an append and its sync, a truncation, a purge,
    /// the vote) waits [`Fault::amount`] ms of simulated time first, as on a worn or a busy disk
    /// whose syncs take that long: openraft goes on beside the slow flush as it does beside a
    /// real one, and counts no entry of the node's until its flush is done, and a vote is
    /// granted only once saved. The node's other faults may come while its disk is slow (a
    /// crash or a power cut with appends still waiting: they were never acknowledged).
    DiskSlow,
}

impl FaultKind {
    /// Every kind a run can draw.
    pub const ALL: [FaultKind; 13] = [
        FaultKind::Crash,
        FaultKind::Isolated,
        FaultKind::Muted,
        FaultKind::Stalled,
        FaultKind::ClockStepped,
        FaultKind::ClockDrifting,
        FaultKind::PowerCut,
        FaultKind::PowerOutage,
        FaultKind::LogDamaged,
        FaultKind::Stopped,
        FaultKind::SyncsFailing,
        FaultKind::AnswersLost,
        FaultKind::DiskSlow,
    ];

    /// Whether the nodes it hits stop running (the driver must let go of them first).
    pub(crate) fn stops_nodes(self) -> bool {
        matches!(
            self,
            FaultKind::Crash
                | FaultKind::PowerCut
                | FaultKind::PowerOutage
                | FaultKind::LogDamaged
                | FaultKind::Stopped
        )
    }

    /// Whether the node it hits stops running when it ends (the driver must let go of it
    /// first, after [`Faults::power_off_ending`]).
    pub(crate) fn stops_node_at_its_end(self) -> bool {
        matches!(self, FaultKind::SyncsFailing)
    }

    /// Whether it begins only when no other fault is under way, and keeps any other from
    /// beginning while it lasts.
    fn alone(self) -> bool {
        matches!(self, FaultKind::PowerOutage)
    }

    /// Whether it cuts the power of the nodes it hits.
    pub(crate) fn cuts_power(self) -> bool {
        matches!(self, FaultKind::PowerCut | FaultKind::PowerOutage)
    }

    /// Whether it lasts beside the node's other faults (a disk slow while the node crashes,
    /// loses its power or its links) rather than alone on its node.
    fn beside_others(self) -> bool {
        matches!(self, FaultKind::DiskSlow)
    }

    /// Whether it acts on the node's links (turmoil refuses some of those together on one
    /// pair of hosts, so two such faults never overlap).
    fn on_links(self) -> bool {
        matches!(
            self,
            FaultKind::Isolated | FaultKind::Muted | FaultKind::Stalled
        )
    }
}

/// One fault of a run: `kind` on `node` from `at` (simulated time since the start) for
/// `lasting`; `amount` says how far a clock fault goes: seconds for `ClockStepped`, µs a
/// second for `ClockDrifting`, negative for behind or slow; for `LogDamaged`, the damage's
/// index in `RecordDamage::ALL`; for `DiskSlow`, the latency in ms (0 for the other kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    pub node: u64,
    pub at: Duration,
    pub lasting: Duration,
    pub amount: i64,
}

impl Fault {
    pub fn ends(&self) -> Duration {
        self.at + self.lasting
    }

    /// The nodes it acts on, of nodes 1 to `nodes`.
    pub(crate) fn hits(&self, nodes: u64) -> Vec<u64> {
        match self.kind {
            FaultKind::PowerOutage => (1..=nodes).collect(),
            _ => vec![self.node],
        }
    }

    /// The generator of what the fault draws as it is made (how far a power cut tears a log's
    /// append, which record a damage hits and how), seeded from the fault and so from the run's
    /// seed.
    fn draws(&self) -> SplitMix64 {
        let at = u64::try_from(self.at.as_nanos()).unwrap_or(u64::MAX);
        SplitMix64::new(at ^ self.node.rotate_left(48) ^ 0x7ea5_0f0f_d15c_0000)
    }
}

/// The earliest and latest moment of a fault, and its shortest and longest time.
const FAULT_AT: (Duration, Duration) = (Duration::from_millis(200), Duration::from_millis(3500));
const FAULT_LASTING: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));
/// The largest clock step, in seconds: past a week (`raft.record_max_age`'s default), as the
/// chaos harness's 8 days ahead.
const CLOCK_STEP_MAX_SECS: u64 = 700_000;
/// The fastest drift, in µs a second: half as fast again, or half as slow.
const CLOCK_DRIFT_MAX: u64 = 500_000;
/// The slowest disk's latency a change, in ms: syncs of 1 to 3 s are what a worn SSD or a
/// shared volume under load shows (past a run's election timeout, 300 to 600 ms).
const DISK_LATENCY_MAX_MS: u64 = 3_000;

/// A slow disk's latency (`Fault::amount`), in ms, of a size drawn first as a power of ten
/// (up to 30, 300 or 3,000 ms), so that a disk a little slow and one very slow are both drawn
/// often.
fn disk_latency_ms(rng: &mut SplitMix64) -> i64 {
    let ceiling = 3 * 10u64.pow(u32::try_from(rng.between(1, 3)).unwrap_or(1));
    i64::try_from(rng.between(1, ceiling.min(DISK_LATENCY_MAX_MS))).unwrap_or(1)
}

/// A clock fault's amount (`Fault::amount`): for a drift, µs a second; for a step, seconds, of
/// a size drawn first as a power of ten, so that steps of a second and of a week are both drawn
/// often. Either sign.
fn clock_amount(rng: &mut SplitMix64, kind: FaultKind) -> i64 {
    let magnitude = match kind {
        FaultKind::ClockDrifting => rng.between(1_000, CLOCK_DRIFT_MAX),
        _ => {
            let ceiling = 10u64.pow(u32::try_from(rng.between(0, 5)).unwrap_or(0)) * 7;
            rng.between(1, ceiling.min(CLOCK_STEP_MAX_SECS))
        }
    };
    let signed = i64::try_from(magnitude).unwrap_or(i64::MAX);
    if rng.between(0, 1) == 0 {
        signed
    } else {
        -signed
    }
}

/// `count` faults of the given kinds on nodes 1 to `nodes`, drawn from `seed` (a stream of its
/// own, apart from the nodes' draws), in the order they begin.
pub fn schedule(seed: u64, nodes: u64, count: u32, kinds: &[FaultKind]) -> Vec<Fault> {
    let mut rng = SplitMix64::new(seed ^ 0x00c0_ffee_c4a5_4e5d);
    let millis = |rng: &mut SplitMix64, (low, high): (Duration, Duration)| {
        let (low, high) = (low.as_millis() as u64, high.as_millis() as u64);
        Duration::from_millis(rng.between(low, high))
    };
    if kinds.is_empty() {
        return Vec::new();
    }
    let mut faults: Vec<Fault> = (0..count)
        .map(|_| {
            let pick = rng.between(0, kinds.len() as u64 - 1);
            let kind = kinds[usize::try_from(pick).unwrap_or(0)];
            Fault {
                kind,
                node: rng.between(1, nodes),
                at: millis(&mut rng, FAULT_AT),
                lasting: millis(&mut rng, FAULT_LASTING),
                amount: match kind {
                    FaultKind::ClockStepped | FaultKind::ClockDrifting => {
                        clock_amount(&mut rng, kind)
                    }
                    FaultKind::LogDamaged => rng.below(RecordDamage::ALL.len() as u64) as i64,
                    FaultKind::DiskSlow => disk_latency_ms(&mut rng),
                    _ => 0,
                },
            }
        })
        .collect();
    faults.sort_by_key(|fault| fault.at);
    faults
}

/// The faults under way on a simulation, and the rule for which may begin: at most one on a
/// node at a time (and one more beside it, a slow disk), at most one on links at a time, and an
/// outage alone.
pub(crate) struct Faults {
    /// The fault under way on each node (an outage under every node's).
    active: BTreeMap<u64, Fault>,
    /// The fault under way beside it on each node ([`FaultKind::beside_others`]).
    beside: BTreeMap<u64, Fault>,
    /// Each node's data dir, for its power cuts.
    dirs: BTreeMap<u64, PathBuf>,
    /// Each node's stop signal, for its clean stops.
    stops: Stops,
    /// The node the run removed from the cluster, once it has.
    removed: Removed,
}

impl Faults {
    pub(crate) fn new(dirs: BTreeMap<u64, PathBuf>, stops: Stops, removed: Removed) -> Faults {
        Faults {
            active: BTreeMap::new(),
            beside: BTreeMap::new(),
            dirs,
            stops,
            removed,
        }
    }

    /// The node the run removed from the cluster, if it has: its log is no copy the others
    /// repair from, or repair.
    pub(crate) fn removed(&self) -> Option<u64> {
        self.removed.get()
    }

    /// Whether `fault` may begin now (else it is skipped, not made).
    pub(crate) fn may_begin(&self, fault: &Fault) -> bool {
        let outage = self.active.values().any(|active| active.kind.alone());
        if fault.kind.beside_others() {
            return !outage && !self.beside.contains_key(&fault.node);
        }
        let links_busy = self.active.values().any(|active| active.kind.on_links());
        if fault.kind.alone() || outage {
            return self.active.is_empty();
        }
        !self.active.contains_key(&fault.node) && (!fault.kind.on_links() || !links_busy)
    }

    /// The power of the nodes `fault` cuts goes: call before the driver lets go of them (the
    /// last hold on a node's store, dropped, closes its files, syncing them).
    pub(crate) fn power_off(&self, fault: &Fault, nodes: u64) {
        if fault.kind.cuts_power() {
            self.cut_power_of(&fault.hits(nodes));
        }
    }

    /// The power of `nodes` goes ([`disk::power_off`]).
    fn cut_power_of(&self, nodes: &[u64]) {
        for node in nodes {
            if let Some(dir) = self.dirs.get(node) {
                disk::power_off(dir);
            }
        }
    }

    /// Begins `fault` on `sim` (the nodes it stops must be let go of by its caller first, after
    /// [`Faults::power_off`]). What a power cut dropped, or why it could not be made.
    pub(crate) fn begin(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        fault: Fault,
        nodes: u64,
    ) -> Result<Vec<(u64, disk::Cut)>, String> {
        let links = Links::of(fault.node, nodes);
        let mut cuts = Vec::new();
        match fault.kind {
            FaultKind::Crash => sim.crash(host_name(fault.node)),
            FaultKind::PowerCut | FaultKind::PowerOutage => {
                let mut draws = fault.draws();
                for node in fault.hits(nodes) {
                    sim.crash(host_name(node));
                    let dir = self.dir(node)?;
                    let cut = disk::restore(dir, &mut draws).map_err(|e| {
                        format!("a power cut of node {node} ({}): {e}", dir.display())
                    })?;
                    cuts.push((node, cut));
                }
            }
            FaultKind::LogDamaged => {
                sim.crash(host_name(fault.node));
                let dir = self.dir(fault.node)?;
                let how = usize::try_from(fault.amount)
                    .ok()
                    .and_then(|index| RecordDamage::ALL.get(index))
                    .copied()
                    .ok_or_else(|| format!("no damage numbered {}", fault.amount))?;
                let damaged = damage_a_record(dir, how, &mut fault.draws()).map_err(|e| {
                    format!(
                        "damaging the log of node {} ({}): {e}",
                        fault.node,
                        dir.display()
                    )
                })?;
                tracing::info!(node = fault.node, ?how, ?damaged, "simulated damage");
            }
            FaultKind::Stopped => self.stops.set(fault.node, true)?,
            FaultKind::SyncsFailing => disk::fail_syncs(self.dir(fault.node)?, true),
            FaultKind::AnswersLost => network::lose_answers(fault.node, Some(fault.draws())),
            FaultKind::DiskSlow => {
                let latency = Duration::from_millis(u64::try_from(fault.amount).unwrap_or(0));
                disk::slow_down(self.dir(fault.node)?, Some(latency));
            }
            FaultKind::Isolated => links.each(|node, other| sim.partition(node, other)),
            FaultKind::Muted => links.each(|node, other| sim.partition_oneway(node, other)),
            FaultKind::Stalled => links.each(|node, other| sim.hold(node, other)),
            FaultKind::ClockStepped => {
                let by_micros = fault.amount.saturating_mul(1_000_000);
                set_clock_fault(fault.node, Some(ClockFault::Stepped { by_micros }));
            }
            FaultKind::ClockDrifting => {
                let drifting = ClockFault::Drifting {
                    micros_a_second: fault.amount,
                    since: sim.since_epoch(),
                };
                set_clock_fault(fault.node, Some(drifting));
            }
        }
        let under_way = if fault.kind.beside_others() {
            &mut self.beside
        } else {
            &mut self.active
        };
        for node in fault.hits(nodes) {
            under_way.insert(node, fault);
        }
        Ok(cuts)
    }

    /// The faults whose time is up at `now`, each with a node it is under way on.
    pub(crate) fn due(&self, now: Duration) -> Vec<(u64, Fault)> {
        self.active
            .iter()
            .chain(&self.beside)
            .filter(|(_, fault)| fault.ends() <= now)
            .map(|(&node, &fault)| (node, fault))
            .collect()
    }

    /// The power of the nodes whose fault ends at `now` and stops them as it ends
    /// ([`FaultKind::stops_node_at_its_end`]) goes: call before the driver lets go of them.
    /// Those nodes.
    pub(crate) fn power_off_ending(&self, now: Duration) -> Vec<u64> {
        let ending: Vec<u64> = self
            .due(now)
            .into_iter()
            .filter(|(_, fault)| fault.kind.stops_node_at_its_end())
            .map(|(node, _)| node)
            .collect();
        self.cut_power_of(&ending);
        ending
    }

    /// Node `node`'s data dir.
    fn dir(&self, node: u64) -> Result<&PathBuf, String> {
        self.dirs
            .get(&node)
            .ok_or_else(|| format!("node {node} has no data dir"))
    }

    /// Ends every fault whose time is up at `now` (the nodes one stops as it ends must be let
    /// go of by its caller first, after [`Faults::power_off_ending`]).
    pub(crate) fn end_due(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        now: Duration,
        nodes: u64,
    ) -> Result<(), String> {
        for (node, fault) in self.due(now) {
            if fault.kind.beside_others() {
                self.beside.remove(&node);
            } else {
                self.active.remove(&node);
            }
            let links = Links::of(fault.node, nodes);
            match fault.kind {
                FaultKind::Crash
                | FaultKind::PowerCut
                | FaultKind::PowerOutage
                | FaultKind::LogDamaged => sim.bounce(host_name(node)),
                FaultKind::Stopped => {
                    self.stops.set(node, false)?;
                    sim.bounce(host_name(node));
                }
                FaultKind::SyncsFailing => {
                    sim.crash(host_name(node));
                    let dir = self.dir(node)?;
                    let cut = disk::restore(dir, &mut fault.draws()).map_err(|e| {
                        format!("the power cut ending node {node}'s failing syncs: {e}")
                    })?;
                    disk::fail_syncs(dir, false);
                    tracing::info!(node, ?cut, "simulated failing syncs ended by a power cut");
                    sim.bounce(host_name(node));
                }
                FaultKind::AnswersLost => network::lose_answers(node, None),
                FaultKind::DiskSlow => disk::slow_down(self.dir(node)?, None),
                FaultKind::Isolated => links.each(|node, other| sim.repair(node, other)),
                FaultKind::Muted => links.each(|node, other| sim.repair_oneway(node, other)),
                FaultKind::Stalled => links.each(|node, other| sim.release(node, other)),
                FaultKind::ClockStepped | FaultKind::ClockDrifting => {
                    set_clock_fault(fault.node, None)
                }
            }
        }
        Ok(())
    }
}

/// Damages, as `how` says, one record of the log in `dir` that has a later append after it
/// (`pkraft_testkit::damage::damage_log`, as the chaos harness does), chosen with `draws`, and
/// takes the damaged segment as it now is for what its disk holds (a later power cut must not
/// undo damage to the medium). The record damaged, or `None` if the log has no such record.
fn damage_a_record(
    dir: &std::path::Path,
    how: RecordDamage,
    draws: &mut SplitMix64,
) -> std::io::Result<Option<LogRecord>> {
    let damaged = damage_log(dir, how, draws)?;
    if let Some(record) = &damaged {
        disk::on_the_medium(&record.segment)?;
    }
    Ok(damaged)
}

/// Each node's signal to stop cleanly (`FaultKind::Stopped`), one for the whole run.
#[derive(Clone)]
pub(crate) struct Stops(BTreeMap<u64, Rc<StopSignal>>);

/// A node's stop signal: asked while its `Stopped` fault lasts. A node asked before its host
/// waits (one still starting) stops once it does; a stop that ended before the node waited
/// (its start outlasted the fault) stops no later incarnation.
#[derive(Default)]
pub(crate) struct StopSignal {
    asked: Cell<bool>,
    changed: Notify,
}

impl StopSignal {
    /// Resolves once a stop is asked.
    pub(crate) async fn asked(&self) {
        loop {
            let changed = self.changed.notified();
            if self.asked.get() {
                return;
            }
            changed.await;
        }
    }

    fn set(&self, asked: bool) {
        self.asked.set(asked);
        self.changed.notify_waiters();
    }
}

impl Stops {
    pub(crate) fn of(nodes: u64) -> Stops {
        Stops((1..=nodes).map(|node| (node, Rc::default())).collect())
    }

    /// Node `node`'s signal, which its host waits on.
    pub(crate) fn signal(&self, node: u64) -> Result<Rc<StopSignal>, String> {
        self.0
            .get(&node)
            .cloned()
            .ok_or_else(|| format!("node {node} has no stop signal"))
    }

    fn set(&self, node: u64, asked: bool) -> Result<(), String> {
        self.signal(node)?.set(asked);
        Ok(())
    }
}

/// A node's links to every other node, by turmoil host name.
struct Links {
    node: String,
    others: Vec<String>,
}

impl Links {
    fn of(id: u64, nodes: u64) -> Links {
        Links {
            node: host_name(id),
            others: (1..=nodes)
                .filter(|&other| other != id)
                .map(host_name)
                .collect(),
        }
    }

    /// Calls `act` with (this node, the other) for each link.
    fn each(&self, mut act: impl FnMut(&str, &str)) {
        for other in &self.others {
            act(&self.node, other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_is_the_seeds_and_draws_only_the_kinds_given() {
        let drawn = schedule(5, 3, 40, &[FaultKind::Crash, FaultKind::Stalled]);
        assert_eq!(
            drawn,
            schedule(5, 3, 40, &[FaultKind::Crash, FaultKind::Stalled])
        );
        assert_ne!(
            drawn,
            schedule(6, 3, 40, &[FaultKind::Crash, FaultKind::Stalled])
        );
        assert!(drawn.windows(2).all(|pair| pair[0].at <= pair[1].at));
        assert!(drawn.iter().all(|fault| (1..=3).contains(&fault.node)));
        for kind in [FaultKind::Crash, FaultKind::Stalled] {
            assert!(drawn.iter().any(|fault| fault.kind == kind), "{kind:?}");
        }
        assert!(
            drawn
                .iter()
                .all(|fault| matches!(fault.kind, FaultKind::Crash | FaultKind::Stalled))
        );
        assert!(schedule(5, 3, 40, &[]).is_empty());
    }

    #[test]
    fn faults_on_links_never_overlap_and_a_node_has_one_at_a_time() {
        let fault = |kind, node| Fault {
            kind,
            node,
            at: Duration::ZERO,
            lasting: Duration::from_secs(1),
            amount: 0,
        };
        let mut faults = Faults::new(BTreeMap::new(), Stops::of(3), Removed::default());
        faults.active.insert(1, fault(FaultKind::Isolated, 1));
        assert!(!faults.may_begin(&fault(FaultKind::Crash, 1)));
        assert!(!faults.may_begin(&fault(FaultKind::Stalled, 2)));
        assert!(faults.may_begin(&fault(FaultKind::Crash, 2)));
        // A clock fault acts on its node only: beside a fault on links, not beside its node's.
        assert!(faults.may_begin(&fault(FaultKind::ClockStepped, 2)));
        assert!(!faults.may_begin(&fault(FaultKind::ClockDrifting, 1)));
        // An outage only alone.
        assert!(!faults.may_begin(&fault(FaultKind::PowerOutage, 2)));
        faults.active.clear();
        assert!(faults.may_begin(&fault(FaultKind::PowerOutage, 2)));
        let outage = fault(FaultKind::PowerOutage, 2);
        for node in outage.hits(3) {
            faults.active.insert(node, outage);
        }
        assert_eq!(outage.hits(3), vec![1, 2, 3]);
        assert!(!faults.may_begin(&fault(FaultKind::ClockStepped, 1)));
        // A damaged log beside another node's fault, not beside an outage.
        faults.active.clear();
        faults.active.insert(1, fault(FaultKind::LogDamaged, 1));
        assert!(faults.may_begin(&fault(FaultKind::Crash, 2)));
        assert!(!faults.may_begin(&fault(FaultKind::PowerOutage, 2)));
        // A slow disk beside its node's other fault, one at a time, not during an outage.
        assert!(faults.may_begin(&fault(FaultKind::DiskSlow, 1)));
        faults.beside.insert(1, fault(FaultKind::DiskSlow, 1));
        assert!(!faults.may_begin(&fault(FaultKind::DiskSlow, 1)));
        assert!(faults.may_begin(&fault(FaultKind::DiskSlow, 2)));
        faults.active.clear();
        assert!(faults.may_begin(&fault(FaultKind::Crash, 1)));
        faults.active.insert(2, outage);
        assert!(!faults.may_begin(&fault(FaultKind::DiskSlow, 3)));
    }
}
