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
}

/// One verified packet inside a [`Command::Publish`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishItem {
    pub key: KeyBytes,
    pub payload: Payload,
}
