//! The simulation's wall clock and randomness, put in place of the system's for the process
//! (`pkraft_types::world::simulate`), and its disk's record of each sync (`disk.rs`).
//!
//! Each node reads its own wall clock: turmoil's simulated time since its epoch, off by the
//! node's clock fault if it has one ([`ClockFault`]: stepped, or drifting). A read knows its
//! node by the tokio runtime it runs on (each turmoil host runs one; a node's host registers
//! its runtime as it starts, [`register_host`]); a read on no registered runtime (the driver's)
//! reads the true simulated time.
//!
//! The generator is the test kit's SplitMix64, one per thread, and seeded by [`seed`] on the thread
//! that runs the simulation: every host runs there, in the order turmoil steps them, so each
//! draw is the seed's. The node's blocking work and its storage threads' jobs run on that
//! thread too (`pkraft_types::world::runs_blocking_work_inline`); another thread would draw from
//! its own generator, seeded 0.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pkraft_testkit::rng::SplitMix64;
use pkraft_types::world::{AlreadySimulated, SimulatedWorld, simulate};

thread_local! {
    /// The generator of this thread.
    static GENERATOR: RefCell<SplitMix64> = RefCell::new(SplitMix64::new(0));
}

/// How a node's wall clock is off while a clock fault lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockFault {
    /// Stepped by this many µs (ahead if positive, behind if negative), as by a bad NTP step
    /// or an operator's `date -s`.
    Stepped { by_micros: i64 },
    /// Gaining (positive) or losing (negative) this many µs a second of simulated time since
    /// `since` (simulated time since the epoch): a clock that runs fast or slow.
    Drifting {
        micros_a_second: i64,
        since: Duration,
    },
}

impl ClockFault {
    /// How far the clock is off at `now` (simulated time since the epoch), in µs.
    fn offset_micros(self, now: Duration) -> i64 {
        match self {
            ClockFault::Stepped { by_micros } => by_micros,
            ClockFault::Drifting {
                micros_a_second,
                since,
            } => {
                let elapsed =
                    i64::try_from(now.saturating_sub(since).as_micros()).unwrap_or(i64::MAX);
                // µs a second × µs elapsed / 10^6, in i128 so that no product overflows.
                let offset = i128::from(micros_a_second) * i128::from(elapsed) / 1_000_000;
                i64::try_from(offset).unwrap_or(if offset < 0 { i64::MIN } else { i64::MAX })
            }
        }
    }
}

thread_local! {
    /// The node each running host's tokio runtime runs, by runtime (a restarted host runs a
    /// new runtime, registered anew). Looked up, never iterated.
    static HOSTS: RefCell<std::collections::HashMap<tokio::runtime::Id, u64>> =
        RefCell::default();
    /// The clock fault of each node that has one.
    static CLOCK_FAULTS: RefCell<BTreeMap<u64, ClockFault>> = RefCell::default();
}

/// Registers the current tokio runtime as node `node`'s host: the wall clock read on it is
/// that node's. Call on the host, as the node starts.
pub fn register_host(node: u64) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        HOSTS.with(|hosts| hosts.borrow_mut().insert(runtime.id(), node));
    }
}

/// Gives node `node`'s wall clock `fault` (`None`: the true simulated time again).
pub fn set_clock_fault(node: u64, fault: Option<ClockFault>) {
    CLOCK_FAULTS.with(|faults| match fault {
        Some(fault) => faults.borrow_mut().insert(node, fault),
        None => faults.borrow_mut().remove(&node),
    });
}

/// How far the wall clock read on the current runtime is off at `now`, in µs.
fn offset_here(now: Duration) -> i64 {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return 0;
    };
    let Some(node) = HOSTS.with(|hosts| hosts.borrow().get(&runtime.id()).copied()) else {
        return 0;
    };
    CLOCK_FAULTS.with(|faults| {
        faults
            .borrow()
            .get(&node)
            .map_or(0, |fault| fault.offset_micros(now))
    })
}

/// The wall clock last read on the simulation's thread (µs since the epoch): what a thread
/// outside the simulation reads, since it has no host and so no simulated clock.
static LAST_WALL_MICROS: AtomicU64 = AtomicU64::new(0);

/// Installs the simulation's wall clock and generator for this process. Idempotent: a second
/// call finds them installed.
pub fn install() {
    match simulate(SimulatedWorld {
        unix_micros_now: wall_micros,
        random_u64: next_u64,
        synced: crate::disk::synced,
        disk_latency: crate::disk::latency,
    }) {
        Ok(()) | Err(AlreadySimulated) => {}
    }
}

/// Starts a run: seeds this thread's generator (call on the thread that runs the simulation,
/// before it starts) and sets the wall clock read outside a host to the run's epoch (µs since
/// the Unix epoch), so that nothing a run reads is left over from the run before it.
pub fn start_run(seed: u64, epoch_micros: u64) {
    GENERATOR.with(|generator| *generator.borrow_mut() = SplitMix64::new(seed));
    LAST_WALL_MICROS.store(epoch_micros, Ordering::Relaxed);
    HOSTS.with(|hosts| hosts.borrow_mut().clear());
    CLOCK_FAULTS.with(|faults| faults.borrow_mut().clear());
    crate::disk::start_run();
    crate::network::start_run();
    crate::log::start_run();
}

fn next_u64() -> u64 {
    GENERATOR.with(|generator| generator.borrow_mut().next_u64())
}

fn wall_micros() -> u64 {
    match turmoil::since_epoch() {
        Some(since) => {
            let micros = u64::try_from(since.as_micros()).unwrap_or(u64::MAX);
            LAST_WALL_MICROS.store(micros, Ordering::Relaxed);
            micros.saturating_add_signed(offset_here(since))
        }
        None => LAST_WALL_MICROS.load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drifting_clock_is_off_by_its_rate_times_the_time_since_it_began() {
        let since = Duration::from_secs(100);
        let fast = ClockFault::Drifting {
            micros_a_second: 250_000,
            since,
        };
        assert_eq!(fast.offset_micros(since), 0);
        assert_eq!(
            fast.offset_micros(since + Duration::from_secs(4)),
            1_000_000
        );
        let slow = ClockFault::Drifting {
            micros_a_second: -500_000,
            since,
        };
        assert_eq!(
            slow.offset_micros(since + Duration::from_secs(2)),
            -1_000_000
        );
        // Read before it began (a clock read elsewhere first): not off yet.
        assert_eq!(slow.offset_micros(Duration::from_secs(1)), 0);
        let stepped = ClockFault::Stepped { by_micros: -7 };
        assert_eq!(stepped.offset_micros(Duration::ZERO), -7);
    }
}
