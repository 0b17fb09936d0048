//! The simulated cluster (docs/SIMULATION.md): the real node code (`pkraft_raft::Node`, its peer
//! routes and its peer client) run as turmoil hosts on one thread, under turmoil's simulated
//! network and each host's paused tokio clock, with the wall clock and randomness drawn from
//! the run's seed (`pkraft_types::world`).
//!
//! What is simulated so far: the peer network (each node's peer listener is a turmoil listener,
//! its peer client connects through turmoil), monotonic time, the wall clock and randomness.
//! What is not yet: the disk (each node has a real data dir, and its log and state writers
//! are threads of their own, so a run is not yet exactly the same twice: step 2 of the plan),
//! and faults.
//!
//! - [`world`]: the seeded wall clock and generator, installed once for the process.
//! - [`network`]: the peer transport over turmoil, and a node's peer routes served on it.
//! - [`cluster`]: a run: N nodes that form a cluster, publishes on one, every replica checked.

pub mod cluster;
pub mod network;
pub mod world;

pub use cluster::{Run, RunError, RunReport};
