//! The chaos harness: a real pkraft cluster (the release binary, one process per node, on
//! loopback) under seeded faults and bounded concurrent traffic, its recorded history checked
//! for per-key linearizability, durability, monotonic stale reads and convergence.
//! docs/TESTING.md describes how to run it and what it has found.

pub mod cluster;
pub mod faults;
pub mod run;
pub mod schedule;
pub mod workload;

/// The checks and the history they read are pkraft-check's, shared with the simulated cluster
/// (pkraft-sim).
pub use pkraft_check::{check, history};

/// The fault proxy and the seeded generator live in pkraft-testkit, shared with the integration
/// tests.
pub use pkraft_testkit::{proxy, rng};
