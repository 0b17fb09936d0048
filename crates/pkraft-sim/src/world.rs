//! The simulation's wall clock and randomness, put in place of the system's for the process
//! (`pkraft_types::world::simulate`).
//!
//! The generator is the test kit's SplitMix64, one per thread, and seeded by [`seed`] on the thread
//! that runs the simulation: every host runs there, in the order turmoil steps them, so each
//! draw is the seed's. A thread of the node's own (the log writer, the blocking pool) draws from
//! its own state, seeded 0: the same on every run, though not yet ordered with the rest (step 2
//! of docs/SIMULATION.md moves that work onto the simulation's thread).

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

/// Seeds this thread's generator: call on the thread that runs the simulation, before it starts.
pub fn seed(seed: u64) {
    GENERATOR.with(|generator| *generator.borrow_mut() = SplitMix64::new(seed));
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
