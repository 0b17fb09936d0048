//! The Raft log's application payload.

use serde::{Deserialize, Serialize};

use crate::short_lived::ShortLivedRecord;
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
    /// How far the leader's Mainline DHT publisher has got (`[dht]`), so that a new leader
    /// carries on where the old one stopped instead of putting everything again. It changes no
    /// stored data: each replica keeps it in memory (pkraft-raft's `DhtOutbox`). Appended last,
    /// so the entries of the other commands keep their encoding.
    DhtProgress {
        /// Every packet stored by an entry at or below this log index has been put to the DHT
        /// (or left to the republish sweep).
        published_through: u64,
        /// The republish sweep (in key order) has put every key up to and including this one.
        /// `None`: a sweep starts from the first key.
        republished_through: Option<KeyBytes>,
    },
    /// A short-lived TXT record for every replica's DNS to answer (the binary crate's ACME
    /// DNS-01 client is its user). It changes no stored data: each replica keeps it in memory
    /// ([`crate::short_lived::ShortLivedRecords`]). Appended last, so the entries of the other
    /// commands keep their encoding; builds before issue 51 wrote the same bytes as
    /// `AcmeChallenge`, so their entries read as this.
    ShortLivedRecord(ShortLivedRecord),
}

/// One verified packet inside a [`Command::Publish`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishItem {
    pub key: KeyBytes,
    pub payload: Payload,
}
