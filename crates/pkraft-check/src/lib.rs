//! What a history of client operations against a pkraft cluster must satisfy, checked the same
//! way whether the cluster was real processes under faults (the chaos harness, pkraft-chaos) or
//! the simulated one (pkraft-sim):
//!
//! - [`history`]: the operations recorded (PUTs, linearizable and local GETs, DNS reads), each
//!   with its node, invoke and answer times, and what it got back; saved as JSON lines;
//! - [`check`]: per-key linearizability, reads only of proposed packets, monotonic local reads,
//!   durability of acknowledged PUTs, convergence of the replicas.

pub mod check;
pub mod history;
