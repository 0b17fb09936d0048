//! A member's [`NodeStatus`] as the peer wire carries it (postcard, `path::STATUS`), read so
//! that builds of different releases understand each other's statuses.
//!
//! postcard writes a struct's fields in order, without names or a length. A newer build's
//! status has fields an older one does not know, at its end: the older build reads the fields
//! it knows and ignores the rest (postcard reads no further than the type needs). An older
//! build's status lacks the fields added since: every field from `packets` on was added after
//! the first release's peers could ask, so [`PeerNodeStatus`] reads each of them while the
//! message goes on and takes its default (`None`, `false`) once it has ended. A field added
//! later goes at the end of [`NodeStatus`], with a default, and is read here with
//! [`added`]; the tests encode the statuses of earlier layouts to prove it.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::NodeId;

/// What one node reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    /// `leader`, `follower`, `candidate`, `learner`, `uninitialized` or `stopped`.
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Milliseconds since this node last heard from a leader (0 on the leader while it holds a
    /// quorum); absent if never.
    pub millis_since_leader_contact: Option<u64>,
    /// Packets in this node's replica (absent if the store could not be read, or from an older
    /// node). Replicas at the same applied index hold the same number.
    #[serde(default)]
    pub packets: Option<u64>,
    /// The node's disk has less free than `raft.min_free_disk_mib`: it takes no writes, and a
    /// leader hands its leadership to a voter that has room (`handover`).
    #[serde(default)]
    pub low_on_disk: bool,
    /// Entries the node's log lost to damage and has not received again from a leader
    /// (docs/OPERATIONS.md, "Repair"); absent when whole.
    #[serde(default)]
    pub log_repair: Option<pkraft_raft_storage::log_store::LogRepair>,
    /// The node's clock against the cluster's (`cluster_clock`); absent from older nodes.
    #[serde(default)]
    pub clock: Option<crate::cluster_clock::ClockReport>,
    /// The build the node runs; absent from development builds before 0.2.0. A field added
    /// after this one goes at the end, with a default, and into `status_wire`. The types of
    /// the fields from `packets` on are frozen (`LogRepair`, `ClockReport`, `BuildInfo`): a
    /// peer of an earlier build would read a changed one as absent, and every field after it.
    #[serde(default)]
    pub build: Option<pkraft_types::BuildInfo>,
}

/// A [`NodeStatus`] read from a peer of this release or of an earlier one (see the module docs).
pub(crate) struct PeerNodeStatus(pub NodeStatus);

/// The fields of [`NodeStatus`], in wire order. postcard reads no more fields than this names
/// (a shorter list would leave the last ones at their defaults: the round-trip test fails).
const FIELDS: &[&str] = &[
    "id",
    "role",
    "term",
    "leader",
    "last_log_index",
    "applied_index",
    "millis_since_leader_contact",
    "packets",
    "low_on_disk",
    "log_repair",
    "clock",
    "build",
];

impl<'de> Deserialize<'de> for PeerNodeStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_struct("NodeStatus", FIELDS, StatusFields)
            .map(PeerNodeStatus)
    }
}

struct StatusFields;

impl<'de> Visitor<'de> for StatusFields {
    type Value = NodeStatus;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a node status")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NodeStatus, A::Error> {
        let seq = &mut seq;
        let mut ended = false;
        Ok(NodeStatus {
            id: required(seq, "id")?,
            role: required(seq, "role")?,
            term: required(seq, "term")?,
            leader: required(seq, "leader")?,
            last_log_index: required(seq, "last_log_index")?,
            applied_index: required(seq, "applied_index")?,
            millis_since_leader_contact: required(seq, "millis_since_leader_contact")?,
            packets: added(seq, &mut ended),
            low_on_disk: added(seq, &mut ended),
            log_repair: added(seq, &mut ended),
            clock: added(seq, &mut ended),
            build: added(seq, &mut ended),
        })
    }
}

/// A field every build sends.
fn required<'de, A: SeqAccess<'de>, T: Deserialize<'de>>(
    seq: &mut A,
    field: &'static str,
) -> Result<T, A::Error> {
    seq.next_element()?
        .ok_or_else(|| de::Error::missing_field(field))
}

/// A field an earlier build does not send: its default once the message has ended. The error
/// reaches this generic reader as the deserializer's own type, so the end of the input and
/// wrong bytes are not told apart: either ends the reading, and every field after it takes its
/// default too (the status is a report, read by operators and the settle checks; a required
/// field that is wrong still fails the read). That is why the types inside these fields are
/// frozen (see [`NodeStatus`]).
fn added<'de, A: SeqAccess<'de>, T: Deserialize<'de> + Default>(
    seq: &mut A,
    ended: &mut bool,
) -> T {
    if *ended {
        return T::default();
    }
    match seq.next_element() {
        Ok(Some(value)) => value,
        Ok(None) | Err(_) => {
            *ended = true;
            T::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use pkraft_raft_storage::codec::{decode, encode};
    use pkraft_types::BuildInfo;
    use serde::Serialize;

    use super::*;

    fn status() -> NodeStatus {
        NodeStatus {
            id: 2,
            role: "follower".to_string(),
            term: 7,
            leader: Some(1),
            last_log_index: Some(40),
            applied_index: Some(39),
            millis_since_leader_contact: Some(12),
            packets: Some(1000),
            low_on_disk: true,
            log_repair: None,
            clock: None,
            build: Some(BuildInfo {
                version: "0.2.0".to_string(),
                commit: "0123456789ab".to_string(),
            }),
        }
    }

    /// The status of development builds before 0.2.0 (3c5e782): no clock, no build.
    #[derive(Serialize, serde::Deserialize)]
    struct WithoutClock {
        id: u64,
        role: String,
        term: u64,
        leader: Option<u64>,
        last_log_index: Option<u64>,
        applied_index: Option<u64>,
        millis_since_leader_contact: Option<u64>,
        packets: Option<u64>,
        low_on_disk: bool,
        log_repair: Option<pkraft_raft_storage::log_store::LogRepair>,
    }

    /// A later build's status: one more field at the end.
    #[derive(Serialize)]
    struct WithMore {
        status: NodeStatus,
        newer: Option<String>,
    }

    #[test]
    fn a_status_of_this_build_reads_back_whole() {
        let bytes = encode(&status()).expect("encode");
        let read: PeerNodeStatus = decode(&bytes).expect("decode");
        assert_eq!(read.0, status());
    }

    #[test]
    fn a_status_of_an_earlier_build_reads_with_the_added_fields_at_their_defaults() {
        let old = WithoutClock {
            id: 2,
            role: "leader".to_string(),
            term: 3,
            leader: Some(2),
            last_log_index: Some(10),
            applied_index: Some(10),
            millis_since_leader_contact: Some(0),
            packets: Some(5),
            low_on_disk: true,
            log_repair: None,
        };
        let read: PeerNodeStatus = decode(&encode(&old).expect("encode")).expect("decode");
        let read = read.0;
        assert_eq!((read.id, read.role.as_str(), read.term), (2, "leader", 3));
        assert_eq!((read.packets, read.low_on_disk), (Some(5), true));
        assert_eq!((read.clock, read.build), (None, None));
        // The derived reading (what this module replaces) fails on it: the reason it exists.
        assert!(decode::<NodeStatus>(&encode(&old).expect("encode")).is_err());
    }

    #[test]
    fn a_status_of_a_later_build_reads_without_its_new_fields() {
        let later = WithMore {
            status: status(),
            newer: Some("a field this build does not know".to_string()),
        };
        let read: PeerNodeStatus = decode(&encode(&later).expect("encode")).expect("decode");
        assert_eq!(read.0, status());
    }

    /// What a development build before 0.2.0 reads of this build's status: the fields it
    /// knows, the new ones after them ignored.
    #[test]
    fn an_earlier_build_reads_this_builds_status() {
        let read: WithoutClock = decode(&encode(&status()).expect("encode")).expect("decode");
        let expected = status();
        assert_eq!((read.id, read.role, read.term), (2, expected.role, 7));
        assert_eq!(
            (read.leader, read.last_log_index, read.applied_index),
            (Some(1), Some(40), Some(39))
        );
        assert_eq!(read.millis_since_leader_contact, Some(12));
        assert_eq!(
            (read.packets, read.low_on_disk, read.log_repair),
            (Some(1000), true, None)
        );
    }

    #[test]
    fn a_status_without_its_first_fields_is_refused() {
        let bytes = encode(&status()).expect("encode");
        assert!(decode::<PeerNodeStatus>(&bytes[..3]).is_err());
    }
}
