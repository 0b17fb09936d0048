//! The simulated cluster (docs/SIMULATION.md): the real node code (`pkraft_raft::Node`, its peer
//! routes and its peer client) run as turmoil hosts on one thread, under turmoil's simulated
//! network and each host's paused tokio clock, with the wall clock and randomness drawn from
//! the run's seed (`pkraft_types::world`).
//!
//! What is simulated so far: the peer network (each node's peer listener is a turmoil listener,
//! its peer client connects through turmoil), monotonic time, the wall clock and randomness;
//! the node's storage work runs on the simulation's thread
//! (`pkraft_types::world::runs_blocking_work_inline`); in `make sim`'s build tokio's scheduler
//! too, so a seed replays its run exactly. Faults drawn from the seed: crashes and restarts,
//! partitions both ways and one way, stalled links, a node's clock stepped or drifting, power
//! cuts of one node and of every node at once (what no sync made durable dropped), a record
//! of a stopped node's Raft log damaged, a node's clean stop (a leader's handover, then the
//! node's shutdown, as on SIGTERM), failing and slow syncs, and answers lost; snapshots
//! installed, a node joining and a voter removed while they go on. The clients go through each
//! node's public router (the relay's handlers). Every run's history is checked as the chaos
//! harness's is (linearizability per key, reads only of proposed packets, monotonic local
//! reads, durability, convergence). What is not yet: the files are real files in a data dir
//! per node (their syncs and latency the simulator's), and the disk's other faults (damage to
//! the state's and the snapshots' files, names lost at a cut, a full disk) are not made
//! (docs/SIMULATION.md).
//!
//! - [`world`]: the seeded wall clock (each node's, with its clock fault) and generator,
//!   installed once for the process.
//! - [`disk`]: power cuts: what each node's files held at their last sync, put back.
//! - [`faults`]: the faults a run draws from its seed, and how each is made and ended.
//! - [`log`]: `SIM_LOG=<filter>`, the nodes' log lines stamped with simulated time.
//! - [`network`]: the peer transport over turmoil, and a node's peer routes served on it.
//! - [`public`]: each node's public and admin routers served over turmoil, and the HTTP
//!   calls to them.
//! - [`removal`]: a voter removed as an operator replaces a node.
//! - [`workload`]: the clients: PUTs, linearizable and local GETs through the nodes the seed
//!   draws, each recorded for the checks.
//! - [`cluster`]: a run: N nodes that form a cluster, the clients, faults drawn from the seed,
//!   and the history and the replicas checked as the chaos harness checks them (pkraft-check).

pub mod cluster;
pub mod disk;
pub mod faults;
pub mod log;
pub mod network;
pub mod public;
pub mod removal;
pub mod workload;
pub mod world;

pub use cluster::{Run, RunError, RunReport};
pub use faults::{Fault, FaultKind};
pub use workload::Workload;

use std::ops::RangeInclusive;

/// The seeds a test runs: those `SIM_SEEDS` names (one seed, `23`; a range, `1-500`; or a
/// range open at its end, `1001-`, which runs on to `default`'s last) if it is set, else
/// `default`. A failure names the command that runs its seed again.
pub fn seeds(default: RangeInclusive<u64>) -> RangeInclusive<u64> {
    let Ok(named) = std::env::var("SIM_SEEDS") else {
        return default;
    };
    let parse = |text: &str| {
        text.trim().parse::<u64>().unwrap_or_else(|_| {
            panic!("SIM_SEEDS={named}: not a seed or a range of seeds (7, 1-500, 1001-)")
        })
    };
    match named.split_once('-') {
        Some((first, "")) => parse(first)..=*default.end(),
        Some((first, last)) => parse(first)..=parse(last),
        None => parse(&named)..=parse(&named),
    }
}
