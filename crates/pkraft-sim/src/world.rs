//! The simulation's wall clock and randomness, put in place of the system's for the process
//! (`pkraft_types::world::simulate`).
//!
//! The generator is the test kit's SplitMix64, one per thread, and seeded by [`seed`] on the thread
//! that runs the simulation: every host runs there, in the order turmoil steps them, so each
//! draw is the seed's. The node's blocking work and its storage threads' jobs run on that
//! thread too (`pkraft_types::world::runs_blocking_work_inline`); another thread would draw from
//! its own generator, seeded 0.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use pkraft_testkit::rng::SplitMix64;
use pkraft_types::world::{AlreadySimulated, SimulatedWorld, simulate};

thread_local! {
    /// The generator of this thread.
    static GENERATOR: RefCell<SplitMix64> = RefCell::new(SplitMix64::new(0));
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
}

fn next_u64() -> u64 {
    GENERATOR.with(|generator| generator.borrow_mut().next_u64())
}

fn wall_micros() -> u64 {
    match turmoil::since_epoch() {
        Some(since) => {
            let micros = u64::try_from(since.as_micros()).unwrap_or(u64::MAX);
            LAST_WALL_MICROS.store(micros, Ordering::Relaxed);
            micros
        }
        None => LAST_WALL_MICROS.load(Ordering::Relaxed),
    }
}
