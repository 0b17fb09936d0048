//! The node's wall clock and its randomness, each read in one place, and its file syncs, each
//! made in one place, so that a simulation can put its own in their stead for the whole
//! process: the real node code run under simulated time, with one seeded source of randomness,
//! replays a run from its seed, and a simulated power cut drops what no sync made durable.
//! Outside a simulation all are the system's: the wall clock is `SystemTime::now`, randomness
//! rand's OS-seeded thread generator, a sync the file's `sync_data` or `sync_all` and nothing
//! more. A simulation also says how slow its disk is ([`simulated_disk_latency`]); the real
//! disk is as slow as it is.
//!
//! Monotonic time is not here: the node reads it through tokio (`tokio::time::Instant`, sleeps
//! and timeouts), which a runtime with paused time already simulates. A test in
//! `pkraft-testkit/tests/code_shape.rs` fails when a node crate reads the system's clock or
//! randomness another way.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::{Rng, RngCore};

/// What a simulation supplies in place of the system's wall clock and randomness. Plain
/// functions, not closures: the simulator keeps its state (each simulated host's clock, one
/// seeded generator) where these reach it, and a process that simulates nothing pays one atomic
/// load a read to learn so.
#[derive(Debug, Clone, Copy)]
pub struct SimulatedWorld {
    /// Wall clock in µs since the Unix epoch, as the node asking sees it.
    pub unix_micros_now: fn() -> u64,
    /// The next value of the simulation's seeded generator.
    pub random_u64: fn() -> u64,
    /// The sync of a file (or a directory) in place of the kernel's: what the file holds now is
    /// durable, what a simulated power cut keeps of it. An error is the sync's.
    pub synced: fn(&File) -> io::Result<()>,
    /// How long a change to the files under a directory takes now on the simulated disk
    /// (zero on a healthy one): a slow disk's latency, which the node's storage waits out in
    /// simulated time before it makes the change ([`simulated_disk_latency`]).
    pub disk_latency: fn(&Path) -> Duration,
}

static SIMULATED: OnceLock<SimulatedWorld> = OnceLock::new();

/// A simulation was already installed in this process (it is installed once, for good: a node
/// must never read one clock, then another).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a simulated world is already installed in this process")]
pub struct AlreadySimulated;

/// Installs `world` for the rest of the process: every later read of the wall clock or of
/// randomness by the node's crates is `world`'s.
pub fn simulate(world: SimulatedWorld) -> Result<(), AlreadySimulated> {
    SIMULATED.set(world).map_err(|_| AlreadySimulated)
}

/// Whether a simulated world is installed.
pub fn is_simulated() -> bool {
    SIMULATED.get().is_some()
}

/// Whether the node's blocking work (what it would hand to tokio's blocking pool) and the jobs
/// of its own threads (the log's writer, the state's writer, the spare segment's) run on the
/// thread that asks for them, at once. True in a simulation: its one thread runs every host in
/// an order the seed decides, and work on a real thread would go on in real time, while the
/// simulated clock runs on, finishing in whatever order the machine allows.
pub fn runs_blocking_work_inline() -> bool {
    is_simulated()
}

/// Wall clock in µs since the Unix epoch (the simulation's, if one is installed). A clock
/// before 1970 reads as 0.
pub fn unix_micros_now() -> u64 {
    match SIMULATED.get() {
        Some(world) => (world.unix_micros_now)(),
        None => system_unix_micros(),
    }
}

/// Wall clock in ns since the Unix epoch, for names that must differ from one moment to the
/// next (a file set aside); in a simulation, its µs times 1,000.
pub fn unix_nanos_now() -> u128 {
    match SIMULATED.get() {
        Some(world) => u128::from((world.unix_micros_now)()) * 1_000,
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or(0),
    }
}

fn system_unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `fdatasync`s `file` ([`File::sync_data`]); in a simulation, the simulated disk takes what
/// it holds as what a power cut keeps of it, in place of the kernel's sync (as turmoil's
/// sockets take the place of the kernel's: the real sync makes nothing more durable for the
/// simulated power cut, and would hold the simulation's one thread for a real disk's flush).
/// Every sync of the node's files is this or [`sync_all`] (`code_shape` fails on another).
pub fn sync_data(file: &File) -> io::Result<()> {
    match SIMULATED.get() {
        Some(world) => (world.synced)(file),
        None => file.sync_data(),
    }
}

/// `fsync`s `file` or a directory ([`File::sync_all`]), as [`sync_data`].
pub fn sync_all(file: &File) -> io::Result<()> {
    match SIMULATED.get() {
        Some(world) => (world.synced)(file),
        None => file.sync_all(),
    }
}

/// How long a change to the files under `dir` takes now on the simulated disk, or `None`
/// outside a simulation. The real disk needs no such answer: its slowness is the time its
/// writes and syncs take, on the storage's own threads. A simulation runs those jobs inline
/// and instantly (`runs_blocking_work_inline`), so its slow disk is a wait in simulated time
/// that the storage makes before each change, in the change's order.
pub fn simulated_disk_latency(dir: &Path) -> Option<Duration> {
    SIMULATED.get().map(|world| (world.disk_latency)(dir))
}

/// A random `u64` (the simulation's seeded generator, if one is installed).
pub fn random_u64() -> u64 {
    match SIMULATED.get() {
        Some(world) => (world.random_u64)(),
        None => rand::thread_rng().next_u64(),
    }
}

/// A duration drawn uniformly from `min..=max` (`max` below `min` reads as `min`).
pub fn random_between(min: Duration, max: Duration) -> Duration {
    WorldRng.gen_range(min..=max.max(min))
}

/// A generator over [`random_u64`], for code that takes a `rand::Rng` (openraft's runtime).
#[derive(Debug, Clone, Copy, Default)]
pub struct WorldRng;

impl RngCore for WorldRng {
    fn next_u32(&mut self) -> u32 {
        // The high half: the better-mixed bits of a generator like the simulation's.
        (random_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        random_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = random_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_world_reads_the_system_clock_and_varies() {
        // Installing a simulation here would change every other test of this binary: the
        // simulated side is the simulator crate's to test, in a process of its own.
        assert!(!is_simulated());
        let before = system_unix_micros();
        let now = unix_micros_now();
        assert!(
            now >= before && now - before < 60_000_000,
            "{before} then {now}"
        );
        assert!(unix_nanos_now() / 1_000 >= u128::from(now));
        let draws: std::collections::BTreeSet<u64> = (0..8).map(|_| random_u64()).collect();
        assert!(draws.len() > 1, "eight draws all {draws:?}");
    }

    #[test]
    fn a_random_duration_stays_within_its_bounds() {
        let (min, max) = (Duration::from_millis(150), Duration::from_millis(300));
        for _ in 0..1_000 {
            let drawn = random_between(min, max);
            assert!(min <= drawn && drawn <= max, "{drawn:?}");
        }
        assert_eq!(random_between(max, min), max);
    }
}
