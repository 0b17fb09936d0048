//! The faults of a run, drawn from its seed, and how each is made and ended on turmoil's
//! simulation: a node's process killed and started again, its links cut both ways, cut one
//! way, or stalled, and its wall clock stepped or drifting (`world::ClockFault`).

use std::collections::BTreeMap;
use std::time::Duration;

use pkraft_testkit::rng::SplitMix64;

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
}

impl FaultKind {
    /// Every kind a run can draw.
    pub const ALL: [FaultKind; 6] = [
        FaultKind::Crash,
        FaultKind::Isolated,
        FaultKind::Muted,
        FaultKind::Stalled,
        FaultKind::ClockStepped,
        FaultKind::ClockDrifting,
    ];

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
/// second for `ClockDrifting`, negative for behind or slow (0 for the other kinds).
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
}

/// The earliest and latest moment of a fault, and its shortest and longest time.
const FAULT_AT: (Duration, Duration) = (Duration::from_millis(200), Duration::from_millis(3500));
const FAULT_LASTING: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));
/// The largest clock step, in seconds: past a week (`raft.record_max_age`'s default), as the
/// chaos harness's 8 days ahead.
const CLOCK_STEP_MAX_SECS: u64 = 700_000;
/// The fastest drift, in µs a second: half as fast again, or half as slow.
const CLOCK_DRIFT_MAX: u64 = 500_000;

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
                    _ => 0,
                },
            }
        })
        .collect();
    faults.sort_by_key(|fault| fault.at);
    faults
}

/// The faults under way on a simulation, and the rule for which may begin: at most one on a
/// node at a time, and at most one on links at a time.
#[derive(Default)]
pub(crate) struct Faults {
    active: BTreeMap<u64, Fault>,
}

impl Faults {
    /// Whether `fault` may begin now (else it is skipped, not made).
    pub(crate) fn may_begin(&self, fault: &Fault) -> bool {
        let links_busy = self.active.values().any(|active| active.kind.on_links());
        !self.active.contains_key(&fault.node) && (!fault.kind.on_links() || !links_busy)
    }

    /// Begins `fault` on `sim` (a crash's node must be let go of by its caller first).
    pub(crate) fn begin(&mut self, sim: &mut turmoil::Sim<'_>, fault: Fault, nodes: u64) {
        let links = Links::of(fault.node, nodes);
        match fault.kind {
            FaultKind::Crash => sim.crash(host_name(fault.node)),
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
        self.active.insert(fault.node, fault);
    }

    /// Ends every fault whose time is up at `now`.
    pub(crate) fn end_due(&mut self, sim: &mut turmoil::Sim<'_>, now: Duration, nodes: u64) {
        let due: Vec<Fault> = self
            .active
            .values()
            .filter(|fault| fault.ends() <= now)
            .copied()
            .collect();
        for fault in due {
            self.active.remove(&fault.node);
            let links = Links::of(fault.node, nodes);
            match fault.kind {
                FaultKind::Crash => sim.bounce(host_name(fault.node)),
                FaultKind::Isolated => links.each(|node, other| sim.repair(node, other)),
                FaultKind::Muted => links.each(|node, other| sim.repair_oneway(node, other)),
                FaultKind::Stalled => links.each(|node, other| sim.release(node, other)),
                FaultKind::ClockStepped | FaultKind::ClockDrifting => {
                    set_clock_fault(fault.node, None)
                }
            }
        }
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

/// The turmoil host name of node `id`.
pub(crate) fn host_name(id: u64) -> String {
    format!("n{id}")
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
        let mut faults = Faults::default();
        faults.active.insert(1, fault(FaultKind::Isolated, 1));
        assert!(!faults.may_begin(&fault(FaultKind::Crash, 1)));
        assert!(!faults.may_begin(&fault(FaultKind::Stalled, 2)));
        assert!(faults.may_begin(&fault(FaultKind::Crash, 2)));
        // A clock fault acts on its node only: beside a fault on links, not beside its node's.
        assert!(faults.may_begin(&fault(FaultKind::ClockStepped, 2)));
        assert!(!faults.may_begin(&fault(FaultKind::ClockDrifting, 1)));
    }
}
