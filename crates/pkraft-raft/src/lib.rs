//! Consensus for pkraft: openraft 0.9 over the storage of `pkraft-storage`, and the [`Node`]
//! handle the rest of the daemon uses. openraft types stop here: callers see
//! [`Node::publish`], [`Published`] and [`PublishError`].
//!
//! # Layout
//! The node service, built on `pkraft-storage` (the type config, the Raft log, the state
//! machine, snapshot files and the repair of a damaged `state.redb`), which never imports it:
//! what the state machine tells the node goes through `StateEvents`, implemented in `start`.
//!
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
//! - [`leadership`]: [`Leadership`], who leads and whether this leader may still propose: since
//!   when it leads, quorum contact, when a leader last reached this node, the proposals under
//!   way and a handover holding them.
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

// openraft's `StorageError` (224 bytes) is the error type of the storage traits (pkraft-storage)
// that the node's start-up and backup call, and they return it on. Boxing it in between would
// only add conversions on paths that run once per IO, not per packet.
#![allow(clippy::result_large_err)]

pub mod backup;
pub mod cluster_clock;
pub mod dht_outbox;
mod dht_publishing;
mod disk_space;
mod expiry;
mod freshness;
pub mod handover;
pub mod leadership;
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
mod short_lived;
mod snapshot_schedule;
mod start;
mod store_cap;
mod voters;
pub mod write_path;

pub use cluster_clock::{ClockReport, ClockState, ClusterClock, ClusterTime};
pub use dht_outbox::{DhtOutbox, OutboxItem, Progress, ProgressError};
pub use dht_publishing::DhtPublishing;
pub use handover::{Handover, HandoverOutcome};
pub use leadership::Leadership;
pub use membership::{
    ClusterStatus, MemberStatus, Members, MembershipError, MembershipStatus, NodeStatus,
};
pub use node::{Cluster, Node, StartError};
pub use peer::{ClusterSecret, MembershipChange};
pub use pkraft_storage::log_store::LogRepair;
pub use pkraft_storage::state_repair::StateOpenError;
pub use pkraft_storage::{NodeId, TypeConfig};
pub use reads::{Consistency, ReadError, Readiness, Reads, UnknownConsistency};
pub use settings::{ClusterSettings, Settings};
pub use short_lived::{RecordHolder, ShortLived};
pub use start::task;
pub use write_path::{PublishError, Published, Writes};
