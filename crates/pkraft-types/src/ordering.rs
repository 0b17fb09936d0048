//! The pkarr ordering rule (DESIGN.md §2.1). It must give the same answer on every replica, so it
//! depends only on the two payloads: the larger signer timestamp wins; on equal timestamps the
//! lexicographically larger DNS packet wins; equal timestamp and DNS packet is the same record.

use serde::{Deserialize, Serialize};

use crate::Payload;

/// What happened to one published packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PublishOutcome {
    /// The packet replaced the stored one, or there was none.
    Stored,
    /// The stored packet is the same record; nothing changed. (Relay answer: 204.)
    Identical,
    /// The stored packet is more recent; nothing changed. (Relay answer: 409.)
    Stale,
}

/// Decides what publishing `incoming` does when `stored` is the current packet for the key.
pub fn decide(stored: Option<&Payload>, incoming: &Payload) -> PublishOutcome {
    let Some(stored) = stored else {
        return PublishOutcome::Stored;
    };
    match rank(incoming).cmp(&rank(stored)) {
        std::cmp::Ordering::Greater => PublishOutcome::Stored,
        std::cmp::Ordering::Equal => PublishOutcome::Identical,
        std::cmp::Ordering::Less => PublishOutcome::Stale,
    }
}

/// Packets compare by signer timestamp, then by DNS packet bytes.
fn rank(payload: &Payload) -> (u64, &[u8]) {
    (payload.timestamp_micros(), payload.dns_packet())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::payload::{HEADER_LEN, SIGNATURE_LEN};

    fn payload(timestamp: u64, dns: &[u8], signature_byte: u8) -> Payload {
        let mut raw = vec![signature_byte; SIGNATURE_LEN];
        raw.extend_from_slice(&timestamp.to_be_bytes());
        raw.extend_from_slice(dns);
        assert!(raw.len() >= HEADER_LEN);
        Payload::new(Bytes::from(raw)).expect("valid length")
    }

    #[test]
    fn first_packet_is_stored() {
        assert_eq!(decide(None, &payload(1, b"a", 0)), PublishOutcome::Stored);
    }

    #[test]
    fn newer_timestamp_wins_even_with_smaller_dns() {
        let stored = payload(10, b"zzz", 0);
        assert_eq!(
            decide(Some(&stored), &payload(11, b"a", 0)),
            PublishOutcome::Stored
        );
        assert_eq!(
            decide(Some(&stored), &payload(9, b"zzzz", 0)),
            PublishOutcome::Stale
        );
    }

    #[test]
    fn equal_timestamp_larger_dns_packet_wins() {
        let stored = payload(10, b"abc", 0);
        assert_eq!(
            decide(Some(&stored), &payload(10, b"abd", 0)),
            PublishOutcome::Stored
        );
        assert_eq!(
            decide(Some(&stored), &payload(10, b"abb", 0)),
            PublishOutcome::Stale
        );
        // A longer packet with the stored one as prefix is lexicographically larger.
        assert_eq!(
            decide(Some(&stored), &payload(10, b"abc\0", 0)),
            PublishOutcome::Stored
        );
    }

    #[test]
    fn same_timestamp_and_dns_is_identical_whatever_the_signature_bytes() {
        let stored = payload(10, b"abc", 0);
        assert_eq!(
            decide(Some(&stored), &payload(10, b"abc", 0)),
            PublishOutcome::Identical
        );
        assert_eq!(
            decide(Some(&stored), &payload(10, b"abc", 7)),
            PublishOutcome::Identical
        );
    }

    #[test]
    fn rule_is_antisymmetric() {
        let a = payload(10, b"abc", 0);
        let b = payload(10, b"abd", 0);
        assert_eq!(decide(Some(&a), &b), PublishOutcome::Stored);
        assert_eq!(decide(Some(&b), &a), PublishOutcome::Stale);
    }
}
