//! [`Admission`]: what the local replica holds for a PUT's key, read once, and everything the
//! node decides from it before the packet goes anywhere: whether the PUT is a republish or a new
//! key (which rate-limit class pays for it, whether the cap on stored packets applies), whether
//! it would change what is stored (whether the key's own rate pays for it) and whether the
//! replica already answers it (stale: 409; the same packet: 204) without a round of consensus.
//!
//! The HTTP relay's rate limits and [`Writes::publish_admitted`] both take their answers from
//! here, so a PUT reads the store once on the node that takes it, and the ordering rule is
//! applied in one place before the log (and again by every replica's apply, which decides for
//! good).
//!
//! The read is synchronous on the caller's worker: one key from the read buffer or, MVCC, from
//! the page cache; it never waits for the writer and costs less than a hop to the blocking pool.

use std::sync::Arc;

use pkraft_state::StoreError;
use pkraft_types::{KeyBytes, Payload, PublishOutcome, VerifiedPacket, decide};

use super::Writes;

/// What this node's replica holds for one key (see the module docs).
#[derive(Debug, Clone)]
pub struct Admission {
    key: KeyBytes,
    held: Held,
}

#[derive(Debug, Clone)]
enum Held {
    /// The replica stores this packet for the key.
    Packet(Payload),
    /// It stores none.
    Nothing,
    /// It stores one that this node found damaged (the scrub): the log decides, as for a key
    /// this node does not hold, but it is no new key (its owner's republish repairs it).
    Damaged,
    /// The replica could not be read.
    Unreadable(Arc<StoreError>),
}

impl Writes {
    /// Reads what the local replica holds for `key`: the one read of the store a PUT makes on
    /// the node that takes it (`pkraft_store_packet_reads_total`).
    pub fn admit(&self, key: &KeyBytes) -> Admission {
        let held = match self.core.store.get(key) {
            Ok(Some(stored)) => Held::Packet(stored.payload),
            Ok(None) => Held::Nothing,
            Err(StoreError::Quarantined(_)) => Held::Damaged,
            Err(e) => Held::Unreadable(Arc::new(e)),
        };
        Admission { key: *key, held }
    }
}

impl Admission {
    /// The key this admission was read for.
    pub fn key(&self) -> &KeyBytes {
        &self.key
    }

    /// Whether the replica holds a packet for the key: a PUT of it is a republish (the
    /// `publish` class of rate limits; never refused as a new key at the cap). A key this node
    /// cannot read (found damaged, or a failed read) counts as held: its owner's republish is
    /// what repairs it, and a new-key refusal must not stop that.
    pub fn is_republish(&self) -> bool {
        !matches!(self.held, Held::Nothing)
    }

    /// What the ordering rule says of `packet` against the stored packet: `Stored` when it
    /// would change the replica (no packet is stored, or it is newer, or this node cannot read
    /// its copy), `Identical` or `Stale` when the replica already answers it.
    pub fn outcome(&self, packet: &VerifiedPacket) -> PublishOutcome {
        self.check_key(packet);
        match &self.held {
            Held::Packet(stored) => decide(Some(stored), packet.payload()),
            Held::Nothing | Held::Damaged | Held::Unreadable(_) => PublishOutcome::Stored,
        }
    }

    /// Whether `packet` would change what is stored: only such a PUT spends the key's own rate
    /// (a replay of the stored packet or an older one costs the key nothing).
    pub fn changes_store(&self, packet: &VerifiedPacket) -> bool {
        self.outcome(packet) == PublishOutcome::Stored
    }

    /// Why the replica could not be read, if it could not.
    pub(super) fn unreadable(&self) -> Option<&Arc<StoreError>> {
        match &self.held {
            Held::Unreadable(e) => Some(e),
            _ => None,
        }
    }

    /// An admission read for one key and used for another would answer a PUT from the wrong
    /// packet: a bug, never a client's doing (the relay reads the key from the URL once).
    fn check_key(&self, packet: &VerifiedPacket) {
        assert!(
            packet.key_bytes() == self.key,
            "an admission read for one key was used for another"
        );
    }
}
