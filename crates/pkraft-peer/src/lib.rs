//! The peer network: openraft's RPCs, forwarded publishes, read barriers and membership requests
//! between the nodes of a cluster, over HTTP/1.1 on the peer listener (over mutual TLS when
//! `[cluster.tls]` is set).
//!
//! - Bodies are postcard (compact binary, see `codec`) both ways. A response body is a
//!   `Result<T, E>`: the remote's answer or its error, so openraft sees the remote's own error
//!   types.
//! - Every request carries `Authorization: Bearer <cluster secret>`. The listener compares it in
//!   constant time and answers 401, before decoding anything, when it is missing or wrong. A node
//!   with no secret configured refuses every peer request: a single node needs none.
//! - `Pkraft-Target-Node: <id>` names the node the caller means to reach. A node with another id
//!   answers 421, so an address that points at the wrong node fails loudly instead of mixing two
//!   nodes' logs. `Pkraft-Source-Node: <id>` names the sender.
//!
//! # Layout
//! - [`client`]: [`PeerClient`] (keep-alive HTTP client, one connection pool per peer) and the
//!   openraft network factory over it.
//! - [`tls`]: optional mutual TLS (`[cluster.tls]`).
//! - [`transport`]: how a connection reaches a peer: TCP, or a simulation's network.
//! - [`ClusterSecret`] and the wire types below.
//!
//! - [`quorum`]: when each peer last accepted this node's `append-entries`.
//! - [`Silenced`]: the voters a handing-over leader sends nothing to.
//! - [`reachability`]: which peers do not answer openraft's RPCs, logged when that changes.
//!
//! The crate sits between the node and its storage: it knows openraft's network traits and
//! pkraft-raft-storage's type config and codec, nothing of the node. The listener's router, which
//! wires each route to the node's part that answers it, is `pkraft_raft::routes`, beside the
//! node's start-up.

// openraft's network traits return its `RPCError` (128 bytes and more), and the client's helpers
// that feed them return it too: boxing it in between would only add conversions.
#![allow(clippy::result_large_err)]

pub mod client;
pub mod quorum;
pub mod reachability;
mod silenced;
pub mod tls;
pub mod transport;

use std::sync::Arc;

use pkraft_types::PublishItem;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use pkraft_raft_storage::NodeId;

pub use client::{CallError, PeerClient, PeerNetwork};
pub use silenced::Silenced;
pub use transport::PeerTransport;

/// Shortest accepted cluster secret, in bytes.
pub const SECRET_LEN_MIN: usize = 16;

/// The shared secret that authenticates peer requests. Never printed.
#[derive(Clone)]
pub struct ClusterSecret(Arc<str>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

/// Why a configured secret cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("must be at least {SECRET_LEN_MIN} bytes, got {0}")]
    TooShort(usize),
    #[error("must be printable ASCII without spaces (it is sent in an HTTP header)")]
    NotPrintable,
}

impl ClusterSecret {
    /// Takes a secret, trimmed of surrounding whitespace (files usually end in a newline).
    pub fn new(secret: &str) -> Result<ClusterSecret, SecretError> {
        let secret = secret.trim();
        if secret.len() < SECRET_LEN_MIN {
            return Err(SecretError::TooShort(secret.len()));
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SecretError::NotPrintable);
        }
        Ok(ClusterSecret(secret.into()))
    }

    /// Constant-time comparison with what a caller presented. (Only the length can leak, and the
    /// length is not secret.)
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }

    pub(crate) fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

/// Request paths on the peer listener.
pub mod path {
    pub const APPEND_ENTRIES: &str = "/peer/v1/append-entries";
    pub const VOTE: &str = "/peer/v1/vote";
    pub const INSTALL_SNAPSHOT: &str = "/peer/v1/install-snapshot";
    pub const PUBLISH: &str = "/peer/v1/publish";
    pub const READ_INDEX: &str = "/peer/v1/read-index";
    pub const MEMBERSHIP: &str = "/peer/v1/membership";
    pub const STATUS: &str = "/peer/v1/status";
    pub const ELECT: &str = "/peer/v1/elect";
    pub const PRE_VOTE: &str = "/peer/v1/pre-vote";
    pub const PACKET_CHECK: &str = "/peer/v1/packet-check";
    /// A short-lived record to commit, forwarded to the leader.
    pub const SHORT_LIVED_RECORD: &str = "/peer/v1/short-lived-record";
    /// The short-lived records a node answers; 404 from builds before issue 51.
    pub const SHORT_LIVED_RECORDS: &str = "/peer/v1/short-lived-records";
    /// The node's wall clock in µs since the Unix epoch (`cluster_clock`); 404 from builds
    /// before it, whose clocks then count as unknown.
    pub const CLOCK: &str = "/peer/v1/clock";
}

/// A voter's copy of one key's packet, checked as the scrub checks it (route `packet-check`):
/// another node's scrub asks, to tell damage on its own disk (some voter holds other, whole
/// bytes) from bytes the whole cluster stores so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PacketCopy {
    /// No packet is stored for the key.
    Absent,
    /// The stored packet verifies; `value_crc` is the CRC-32 of the stored value.
    Whole { value_crc: u32 },
    /// The stored packet does not verify.
    Damaged { value_crc: u32 },
    /// The node could not read it (an I/O error, or a table redb cannot read).
    Unreadable,
}

/// Header naming the node id a peer request is meant for.
pub const TARGET_NODE_HEADER: &str = "pkraft-target-node";
/// Header naming the node id that sent a peer request.
pub const SOURCE_NODE_HEADER: &str = "pkraft-source-node";

/// An error a peer answered with (inside a 200 response: the request reached the node and was
/// understood). It crosses the peer wire (postcard), so its variants carry their cause as text:
/// the remote's error types do not travel, and an older build must decode what a newer sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PeerError {
    /// The request needs the leader and this node is not it; `leader` is the one it knows of.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// Cannot be done now (no quorum, still catching up); retrying later may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// Will never succeed as asked (a removed node id, an id taken by another address).
    #[error("{0}")]
    Refused(String),
    /// The node has a fatal error.
    #[error("{0}")]
    Fatal(String),
}

/// Why a forwarded publish has no outcome, as the leader answers it (inside the `publish`
/// answer, postcard). Its variants carry their cause as text, as [`PeerError`]'s do; the node
/// keeps the cause on its side (`pkraft_raft::PublishError`) and converts at the route. Postcard
/// writes the variant's index: never reorder these, and add new ones last only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WirePublishError {
    /// No leader, or the entry did not commit in time; retrying is safe.
    #[error("{0}")]
    Unavailable(String),
    /// Consensus or storage failed on the leader.
    #[error("{0}")]
    Fatal(String),
    /// A node could not read its own replica for the fast answer. Never sent between nodes;
    /// kept in its slot so that the variants after it keep their index.
    #[error("reading this node's replica: {0}")]
    Replica(String),
    /// The cluster stores no new keys now (sent only to a follower that says it decodes it,
    /// [`ForwardedPublish::answers_no_room`]).
    #[error("{0}")]
    NoRoom(String),
}

/// Publishes forwarded by a follower to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedPublish {
    pub packets: Vec<PublishItem>,
    /// The follower decodes [`WirePublishError::NoRoom`] in the answers. Last, so that a leader of
    /// an older build decodes the request (postcard ignores trailing bytes); a request without
    /// it comes from a follower of an older build ([`LegacyForwardedPublish`]), which is
    /// answered `Unavailable` instead, an answer it can decode.
    pub answers_no_room: bool,
}

/// [`ForwardedPublish`] as a follower of a build before `NoRoom` sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LegacyForwardedPublish {
    pub packets: Vec<PublishItem>,
}

/// A membership change, asked of the leader (by an operator through a node's admin API, or by a
/// joining node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add `node_id` at peer address `addr` as a learner, wait until it has caught up (bounded),
    /// and make it a voter if `voter`. Repeating it is harmless.
    Join {
        node_id: NodeId,
        addr: String,
        voter: bool,
    },
    /// Make a caught-up learner a voter.
    Promote { node_id: NodeId },
    /// Remove a voter or learner from the cluster.
    Remove { node_id: NodeId },
}

#[cfg(test)]
mod tests {
    use super::*;
    use pkraft_raft_storage::codec::{decode, encode};

    /// ARCHITECTURE.md: the peer wire sits below the node (pkraft-raft) and above its storage:
    /// it knows the type config and the codec, nothing of the node or a service crate.
    #[test]
    fn the_peer_crate_depends_on_storage_and_types_only() {
        let ours = pkraft_testkit::manifest::pkraft_dependencies(include_str!("../Cargo.toml"));
        assert_eq!(ours, ["pkraft-raft-storage", "pkraft-types"]);
    }

    /// Goal: forwarded publishes keep working across a rolling upgrade. A leader of an older
    /// build decodes a new follower's request (the trailing flag is ignored); a new leader
    /// tells an old follower's request (no flag) from a new one, which is what decides whether
    /// its answers may carry `NoRoom`.
    #[test]
    fn forwarded_publishes_decode_across_builds() {
        let packets = Vec::new();
        let new = encode(&ForwardedPublish {
            packets: packets.clone(),
            answers_no_room: true,
        })
        .expect("encode");
        let old_leader: LegacyForwardedPublish = decode(&new).expect("an old leader decodes it");
        assert!(old_leader.packets.is_empty());
        let old = encode(&LegacyForwardedPublish { packets }).expect("encode");
        assert!(
            decode::<ForwardedPublish>(&old).is_err(),
            "an old follower's request is not taken for a new one"
        );
        let new_leader: ForwardedPublish = decode(&new).expect("decode");
        assert!(new_leader.answers_no_room);
    }
}
