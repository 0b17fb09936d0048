//! Consensus for pkraft: openraft 0.9 over the storage of `pkraft-raft-storage`, and the [`Node`]
//! the rest of the daemon uses. openraft types stop here: callers see [`Writes::publish`],
//! [`Published`] and [`PublishError`].
//!
//! # Layout
//! The node service, built on `pkraft-raft-storage` (the type config, the Raft log, the state
//! machine, snapshot files and the repair of a damaged `state.redb`), which never imports it:
//! what the state machine tells the node goes through `StateEvents`, implemented in `start`.
//!
//! The node and how it is put together:
//! - `node_core`: `Core`, what every part is made from (identity, the Raft handle, the replica
//!   and the log, the peer client, the metrics, the stop signal, the fixed settings), shared
//!   through one `Arc`. [`node`]: [`Node`]: the core, its parts, each reached by an accessor,
//!   and its tasks; the stop, in the reverse order of the start. `start`: [`Node::start`] (bootstrapping or joining), where the parts are made and
//!   their tasks started; the only module that imports them all. `build_record`: the builds
//!   that wrote the data dir. [`routes`]: the peer
//!   listener's router, each route wired to the part that answers it.
//!
//! The parts, one type each, owning their state and holding the core and the parts below them:
//! - [`write_path`]: [`Writes`], the one way into the store: the fast answer from the local
//!   replica, group commit (concurrent publishes share one log entry), and forwarding of
//!   followers' batches to the leader.
//! - [`reads`]: [`Reads`], reads at a [`Consistency`], staleness of the local replica and the
//!   linearizable read barrier; `freshness`: the catch-up after a crash; `read_index`: the
//!   read-index rounds reads share, run by `read_index_task`.
//! - [`leadership`]: [`Leadership`], who leads and whether this leader may still propose: since
//!   when it leads, quorum contact (`peer::quorum`), when a leader last reached this node, the
//!   proposals under way and a handover holding them.
//! - [`membership`]: [`Members`], init, join, add/promote/remove, cluster status;
//!   `status_wire`: a member's status read from a peer of another release.
//! - [`handover`]: [`Handover`], a leader that stops hands its leadership to a caught-up voter.
//! - `pre_vote`: PreVote's election timer and its answers to other nodes.
//! - [`cluster_clock`]: [`ClusterClock`], cluster time from the voters' clocks and the log's
//!   stamps (no node's wall clock alone changes replicated state).
//! - `expiry`: the leader proposes the deletion of packets older than `raft.record_max_age` by
//!   cluster time, fenced by a share of the store per hour.
//! - `scrub`: the background scrub, which reads the log back and re-verifies every stored
//!   packet at a bounded rate.
//! - `warm_up`: redb's page cache of the state filled at start and after each snapshot install,
//!   so that the first reads after a start, a restart or a catch-up are as fast as the later
//!   ones.
//! - [`dht_publishing`]: [`DhtPublishing`], the DHT publisher's way in: [`dht_outbox`] (the keys
//!   stored and not yet put to the Mainline DHT, kept by every replica so a new leader carries
//!   on; `pkraft-raft-storage`'s, re-exported) and the commit of its progress.
//! - [`short_lived`]: [`ShortLived`], short-lived records committed through the leader.
//!
//! And what they use: [`peer`] (the peer wire: the client, openraft's network over it, TLS,
//! quorum contact and the message types; the crate `pkraft-peer`, re-exported), `voters` (the
//! voters a node knows), `snapshot_schedule`, `metrics`, [`settings`] (the `[raft]` config
//! section); from `pkraft-raft-storage`: `disk_space` and `store_cap` (the room for writes) and
//! [`backup`] (backup, restore and verify).

// openraft's `StorageError` (224 bytes) is the error type of the storage traits (pkraft-raft-storage)
// that the node's start-up and backup call, and they return it on. Boxing it in between would
// only add conversions on paths that run once per IO, not per packet.
#![allow(clippy::result_large_err)]

mod build_record;
mod clock_state;
pub mod cluster_clock;
pub mod dht_publishing;
mod expiry;
mod freshness;
pub mod handover;
pub mod leadership;
pub mod membership;
mod metrics;
pub mod node;
mod node_core;
mod pre_vote;
mod read_index;
mod read_index_task;
pub mod reads;
mod reason;
mod request_error;
pub mod routes;
mod scrub;
pub mod settings;
pub mod short_lived;
mod snapshot_schedule;
mod start;
mod status_wire;
mod voters;
mod warm_up;
#[cfg(test)]
mod wire_freeze;
pub mod write_path;

pub use cluster_clock::{ClockReport, ClockState, ClusterClock, ClusterTime, SignatureTime};
pub use dht_outbox::{DhtOutbox, OutboxItem, Progress};
pub use dht_publishing::{DhtPublishing, ProgressError};
pub use handover::{Handover, HandoverOutcome};
pub use leadership::Leadership;
pub use membership::{
    ClusterStatus, MemberStatus, Members, MembershipError, MembershipStatus, NodeStatus,
};
pub use node::{Node, Participation, StartError};
pub use peer::{ClusterSecret, MembershipChange};
/// The peer wire (crates/pkraft-peer), which the node's settings and API name.
pub use pkraft_peer as peer;
pub use pkraft_raft_storage::log_store::LogRepair;
pub use pkraft_raft_storage::state_repair::StateOpenError;
pub use pkraft_raft_storage::{NodeId, TypeConfig};
pub use pkraft_raft_storage::{backup, dht_outbox};
use pkraft_raft_storage::{disk_space, store_cap};
pub use reads::{Consistency, ReadError, Readiness, Reads, UnknownConsistency};
pub use reason::Reason;
pub use request_error::RequestError;
pub use settings::{ClusterSettings, Settings};
pub use short_lived::{RecordHolder, ShortLived};
pub use start::task;
pub use write_path::{Admission, PublishError, Published, Writes};
