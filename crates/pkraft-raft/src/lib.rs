//! Consensus for pkraft: openraft 0.9 over redb, and the [`Node`] handle the rest of the daemon
//! uses. openraft types stop here: callers see [`Node::publish`], [`Published`] and
//! [`PublishError`].
//!
//! # Layout
//! Two sides: [`storage`], what openraft's storage traits need, which never imports the node
//! service; and the node service built on it.
//!
//! - [`storage`]: the type config, the Raft log ([`log_store`], `raft-log/`), the state machine
//!   ([`state_machine`], applying entries to `state.redb` and keeping snapshots in
//!   `snapshot/`), snapshot files and their checks on receipt, the repair of a damaged
//!   `state.redb`, and the codec.
//! - [`node`]: [`Node`]: the node's state and the small core of handles every other module
//!   shares, shutdown, a watch for fatal errors. `start`: [`Node::start`] (bootstrapping or
//!   joining), where the parts are put together; the only module that imports them all.
//! - [`peer`]: the peer network: openraft RPCs, forwarded publishes, read barriers and membership
//!   requests over authenticated HTTP (client and the peer listener's router).
//! - [`write_path`]: [`Node::publish`], the one way into the store: the fast answer from the
//!   local replica, group commit (concurrent publishes share one log entry), and forwarding of
//!   followers' batches to the leader.
//! - [`dht_outbox`]: the keys stored and not yet put to the Mainline DHT, and the publisher's
//!   committed progress, kept by every replica so a new leader carries on (`pkraft-dht`).
//! - `leadership`: the leadership state a node keeps beside openraft's (since when it leads,
//!   quorum contact, a handover under way); `leading`: who leads, and whether this leader may
//!   still propose.
//! - [`handover`]: a leader that stops hands its leadership to a caught-up voter first.
//! - `expiry`: the leader proposes the deletion of packets older than `raft.record_max_age` by
//!   cluster time, fenced by a share of the store per hour.
//! - [`cluster_clock`]: cluster time, from the voters' clocks and the log's stamps (no node's
//!   wall clock alone changes replicated state).
//! - `quorum`: when a quorum last accepted this leader (a cut-off leader refuses publishes).
//! - [`membership`]: init, join, add/promote/remove, cluster status.
//! - [`reads`]: [`Node::read`] at a [`Consistency`], staleness of the local replica and the
//!   linearizable read barrier; `freshness`: what it knows of the replica's freshness.
//! - `scrub`: the background scrub, which reads the log back and re-verifies every stored
//!   packet at a bounded rate.
//! - `snapshot_schedule`, `disk_space`, `pre_vote`, `metrics`: when to build snapshots, the
//!   free-space reserve, PreVote, the node's metrics.
//! - [`settings`]: the `[raft]` config section.

// openraft's `StorageError` (224 bytes) is the error type of the storage traits implemented here;
// the helpers that feed them return it too. Boxing it in between would only add conversions on
// paths that run once per IO, not per packet.
#![allow(clippy::result_large_err)]

mod acme_challenges;
pub mod backup;
pub mod cluster_clock;
pub mod dht_outbox;
mod dht_publishing;
mod disk_space;
mod expiry;
mod freshness;
pub mod handover;
mod leadership;
mod leading;
pub mod membership;
mod metrics;
pub mod node;
pub mod peer;
mod pre_vote;
mod quorum;
mod read_index;
pub mod reads;
mod scrub;
pub mod settings;
mod snapshot_schedule;
mod start;
mod store_cap;
pub mod write_path;

// The storage crate's modules, at the paths they had inside this crate (`crate::log_store`).
use pkraft_storage as storage;
pub(crate) use pkraft_storage::{codec, snapshot_file, snapshot_receipt, state_repair};
pub use pkraft_storage::{log_store, state_machine, type_config};

pub use acme_challenges::ChallengeHolder;
pub use cluster_clock::{ClockReport, ClockState, ClusterTime};
pub use dht_outbox::{DhtOutbox, OutboxItem, Progress, ProgressError};
pub use handover::Handover;
pub use membership::{ClusterStatus, MemberStatus, MembershipError, MembershipStatus, NodeStatus};
pub use node::{Cluster, Node, StartError};
pub use peer::{ClusterSecret, MembershipChange};
pub use reads::{Consistency, ReadError, Readiness, UnknownConsistency};
pub use settings::{ClusterSettings, Settings};
pub use start::task;
pub use type_config::{NodeId, TypeConfig};
pub use write_path::{PublishError, Published};
