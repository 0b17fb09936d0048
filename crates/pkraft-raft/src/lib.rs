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
//! - [`node`]: [`Node`]: start (bootstrapping or joining), shutdown, a watch for fatal errors,
//!   and the small core of handles every other module shares.
//! - [`write_path`]: [`Node::publish`], the one way into the store: the fast answer from the
//!   local replica, group commit (concurrent publishes share one log entry), and forwarding of
//!   followers' batches to the leader.
//! - [`dht_outbox`]: the keys stored and not yet put to the Mainline DHT, and the publisher's
//!   committed progress, kept by every replica so a new leader carries on (`pkraft-dht`).
//! - `leadership`: who leads, since when, and whether this leader may still propose.
//! - [`handover`]: a leader that stops hands its leadership to a caught-up voter first.
//! - `expiry`: the leader proposes the deletion of packets older than `raft.record_max_age`.
//! - `quorum`: when a quorum last accepted this leader (a cut-off leader refuses publishes).
//! - [`membership`]: init, join, add/promote/remove, cluster status.
//! - [`reads`]: [`Node::read`] at a [`Consistency`], staleness of the local replica and the
//!   linearizable read barrier.
//! - `snapshot_file`: the current snapshot on disk, replaced atomically.
//! - `scrub`: the background scrub, which reads the log back and re-verifies every stored
//!   packet at a bounded rate.
//! - `state_repair`: a damaged `state.redb` is set aside and rebuilt (from the node's snapshot
//!   and log, or from the cluster).
//! - `codec`: postcard encoding and the blocking-pool helper for storage work.
//! - [`settings`]: the `[raft]` config section.

// openraft's `StorageError` (224 bytes) is the error type of the storage traits implemented here;
// the helpers that feed them return it too. Boxing it in between would only add conversions on
// paths that run once per IO, not per packet.
#![allow(clippy::result_large_err)]

pub mod backup;
mod codec;
pub mod dht_outbox;
mod disk_space;
mod expiry;
pub mod handover;
mod leadership;
pub mod log_store;
pub mod membership;
mod metrics;
pub mod node;
pub mod peer;
mod pre_vote;
mod quorum;
pub mod reads;
mod scrub;
pub mod settings;
mod snapshot_file;
mod snapshot_receipt;
mod snapshot_schedule;
pub mod state_machine;
mod state_repair;
pub mod type_config;
pub mod write_path;

pub use dht_outbox::{DhtOutbox, OutboxItem, Progress, ProgressError};
pub use handover::Handover;
pub use membership::{ClusterStatus, MemberStatus, MembershipError, MembershipStatus, NodeStatus};
pub use node::{Cluster, Node, StartError};
pub use peer::{ClusterSecret, MembershipChange};
pub use reads::{Consistency, ReadError, Readiness, UnknownConsistency};
pub use settings::{ClusterSettings, Settings};
pub use type_config::{NodeId, TypeConfig};
pub use write_path::{PublishError, Published};
