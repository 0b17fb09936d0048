//! Consensus for pkraft: openraft 0.9 over redb, and the [`Node`] handle the rest of the daemon
//! uses. openraft types stop here: callers see [`Node::publish`], [`Published`] and
//! [`PublishError`].
//!
//! # Layout
//! - [`type_config`]: the openraft `TypeConfig` (log payload = [`pkraft_types::Command`]).
//! - [`log_store`]: the Raft log (append-only segment files) and its vote and purge point, in
//!   `raft-log/`.
//! - [`state_machine`]: applies committed entries to [`pkraft_store::Store`] (`state.redb`);
//!   builds and installs snapshots, keeping the current one in `snapshot/`.
//! - [`peer`]: the peer network: openraft RPCs, forwarded publishes, read barriers and membership
//!   requests over authenticated HTTP (client and the peer listener's router).
//! - [`node`]: [`Node`]: start (bootstrapping or joining), publish, shutdown, and a watch for
//!   fatal errors.
//! - `batcher`: group commit: concurrent publishes share one log entry; followers forward
//!   their batches to the leader.
//! - [`handover`]: a leader that stops hands its leadership to a caught-up voter first.
//! - `expiry`: the leader proposes the deletion of packets older than `raft.record_max_age`.
//! - `quorum`: when a quorum last accepted this leader (a cut-off leader refuses publishes).
//! - [`membership`]: init, join, add/promote/remove, cluster status.
//! - [`reads`]: staleness of the local replica and the linearizable read barrier.
//! - `snapshot_file`: the current snapshot on disk, replaced atomically.
//! - `codec`: postcard encoding and the blocking-pool helper for storage work.
//! - [`settings`]: the `[raft]` config section.

// openraft's `StorageError` (224 bytes) is the error type of the storage traits implemented here;
// the helpers that feed them return it too. Boxing it in between would only add conversions on
// paths that run once per IO, not per packet.
#![allow(clippy::result_large_err)]

pub mod backup;
mod batcher;
mod codec;
mod expiry;
pub mod handover;
pub mod log_store;
pub mod membership;
mod metrics;
pub mod node;
pub mod peer;
mod quorum;
pub mod reads;
pub mod settings;
mod snapshot_file;
pub mod state_machine;
pub mod type_config;

pub use handover::Handover;
pub use membership::{ClusterStatus, MemberStatus, MembershipError, MembershipStatus, NodeStatus};
pub use node::{Cluster, Node, PublishError, Published, StartError};
pub use peer::{ClusterSecret, MembershipChange};
pub use reads::{ReadError, Readiness};
pub use settings::{ClusterSettings, Settings};
pub use type_config::{NodeId, TypeConfig};
