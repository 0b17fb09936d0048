//! The Raft log's application payload.

use serde::{Deserialize, Serialize};

use crate::{KeyBytes, Payload};

/// One state change, proposed by the leader and applied identically on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Store each packet, subject to the ordering rule ([`crate::decide`]).
    Publish {
        /// The leader's wall clock when it proposed the entry, in microseconds since the Unix
        /// epoch. Replicas record it as the time the packet was applied, so that `apply` never
        /// reads a clock and every replica stores the same bytes.
        leader_time_micros: u64,
        packets: Vec<PublishItem>,
    },
    /// Delete up to `limit` packets whose signed timestamp is before `before_micros`, oldest
    /// first. The leader computes `before_micros` from its clock and the configured maximum age;
    /// replicas only compare numbers, so they delete exactly the same rows. The limit travels in
    /// the entry (not in a constant of the code) so that replicas running different versions
    /// still agree.
    Expire { before_micros: u64, limit: u32 },
}

/// One verified packet inside a [`Command::Publish`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishItem {
    pub key: KeyBytes,
    pub payload: Payload,
}
