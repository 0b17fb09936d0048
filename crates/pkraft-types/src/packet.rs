//! [`VerifiedPacket`]: a relay payload whose signature verifies for its key and whose DNS packet
//! parses. Verification happens before consensus, so invalid data never enters the Raft log.

use bytes::Bytes;
use hickory_proto::op::Message;
use hickory_proto::rr::Record;
use pkarr::errors::SignedPacketVerifyError;
use pkarr::{PublicKey, SignedPacket};

use crate::payload::{Payload, PayloadLengthError, TIMESTAMP_MICROS_MAX};
use crate::{KeyBytes, PublishItem};

/// Why a relay payload was rejected. The messages are shown to HTTP clients (status 400 or 413).
/// `Dns` and `Invalid` keep the parser's message as text: it is what the client is told, and
/// the type is cloned and compared (a batch's packets, the tests) where the parsers' errors
/// are neither.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error(transparent)]
    Length(#[from] PayloadLengthError),
    #[error("signature does not verify for the public key in the URL")]
    Signature,
    #[error("DNS packet does not parse: {0}")]
    Dns(String),
    #[error("timestamp {0} µs is after the year 9999")]
    Timestamp(u64),
    /// A check pkarr makes that the ones above already cover; kept with pkarr's own message.
    #[error("invalid signed packet: {0}")]
    Invalid(String),
}

/// A packet that passed every check a relay makes before it accepts a PUT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedPacket {
    key: PublicKey,
    payload: Payload,
}

impl VerifiedPacket {
    /// Checks the payload length, the ed25519 signature over the BEP44 string
    /// `3:seqi<ts>e1:v<len>:<dns>` (pkarr does this), and that both pkarr (simple-dns) and the DNS
    /// frontend (hickory) can parse the DNS packet, so that anything stored can also be served.
    pub fn verify(key: &PublicKey, body: Bytes) -> Result<Self, PacketError> {
        let payload = Payload::new(body)?;
        verify_signed_packet(key, &payload)?;
        if payload.timestamp_micros() > TIMESTAMP_MICROS_MAX {
            return Err(PacketError::Timestamp(payload.timestamp_micros()));
        }
        dns_message(&payload)?;
        Ok(VerifiedPacket {
            key: key.clone(),
            // A verified packet is kept: in the recent log entries, the state's read buffer,
            // a batch. The body it came in may be a `Bytes` cut from a far larger buffer
            // (hyper hands a request body out of its connection's read buffer, an import batch
            // is cut into records), and a slice keeps all of that buffer alive: loading 1M keys
            // peaked at 1,051 MiB without this copy and 554 MiB with it (`make bench-memory`,
            // docs/BENCHMARKS.md). About 1 KiB is copied once, here, into an allocation of the
            // payload's own.
            payload: payload.detached(),
        })
    }

    /// [`VerifiedPacket::verify`] for a key given as its 32 bytes (as stored).
    pub fn verify_stored(key: &KeyBytes, body: Bytes) -> Result<Self, PacketError> {
        let key = PublicKey::try_from(key).map_err(|_| {
            PacketError::Invalid("the key is not a valid ed25519 point".to_string())
        })?;
        VerifiedPacket::verify(&key, body)
    }

    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    pub fn key_bytes(&self) -> KeyBytes {
        self.key.to_bytes()
    }

    pub fn payload(&self) -> &Payload {
        &self.payload
    }
}

/// What `pkarr::SignedPacket::from_relay_payload` checks, with the same answer for every
/// payload, but decompressing the key's curve point only once: `from_relay_payload` takes a
/// parsed key and parses it again out of `key ‖ payload` (a decompression costs about 4 % of a
/// PUT's CPU; docs/BENCHMARKS.md). pkarr still does the work: `SignedPacket::deserialize` parses
/// the DNS packet (it verifies nothing), and `PublicKey::verify` checks the signature over the
/// BEP44 string pkarr signs. A payload whose DNS packet does not parse goes through
/// `from_relay_payload` itself, so that one that is wrong in both ways gets pkarr's own first
/// error (the signature). `the_fast_check_answers_as_pkarr_does` compares the two.
fn verify_signed_packet(key: &PublicKey, payload: &Payload) -> Result<(), PacketError> {
    // `deserialize` reads `last_seen (8 bytes) ‖ key ‖ payload`; the time is not used.
    let mut serialized = Vec::with_capacity(8 + 32 + payload.byte_len());
    serialized.extend_from_slice(&[0; 8]);
    serialized.extend_from_slice(key.as_bytes());
    serialized.extend_from_slice(payload.as_bytes());
    let Ok(packet) = SignedPacket::deserialize(&serialized) else {
        return pkarr_verify(key, payload);
    };
    key.verify(
        &bep44_signable(payload.timestamp_micros(), payload.dns_packet()),
        &packet.signature(),
    )
    .map_err(|_| PacketError::Signature)
}

/// `pkarr::SignedPacket::from_relay_payload`, with its errors as [`PacketError`]s.
fn pkarr_verify(key: &PublicKey, payload: &Payload) -> Result<(), PacketError> {
    SignedPacket::from_relay_payload(key, payload.as_bytes())
        .map(drop)
        .map_err(|e| match e {
            SignedPacketVerifyError::SignatureError(_) => PacketError::Signature,
            SignedPacketVerifyError::DnsError(e) => PacketError::Dns(e.to_string()),
            other => PacketError::Invalid(other.to_string()),
        })
}

/// The string a pkarr packet's signature covers (BEP44's mutable item: `seq` is the timestamp,
/// `v` the DNS packet), as pkarr builds it. Public for the benchmark of signature checks alone
/// (`pkraft-bench verify`).
pub fn bep44_signable(timestamp_micros: u64, dns: &[u8]) -> Vec<u8> {
    let mut signable = format!("3:seqi{timestamp_micros}e1:v{}:", dns.len()).into_bytes();
    signable.extend_from_slice(dns);
    signable
}

impl From<VerifiedPacket> for PublishItem {
    fn from(packet: VerifiedPacket) -> PublishItem {
        PublishItem {
            key: packet.key.to_bytes(),
            payload: packet.payload,
        }
    }
}

/// Parses the payload's DNS packet with hickory. [`VerifiedPacket::verify`] runs this same
/// function, so for a stored payload it fails only if the store is corrupt.
pub fn dns_message(payload: &Payload) -> Result<Message, PacketError> {
    Message::from_vec(payload.dns_packet()).map_err(|e| PacketError::Dns(e.to_string()))
}

/// The answer records of the payload's DNS packet: the records a pkarr packet publishes.
pub fn dns_records(payload: &Payload) -> Result<Vec<Record>, PacketError> {
    Ok(dns_message(payload)?.answers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{HEADER_LEN, SIGNATURE_LEN};
    use pkraft_testkit::{iroh_packet, keypair};

    #[test]
    fn accepts_a_signed_iroh_packet() {
        let kp = keypair(1);
        let packet = iroh_packet(&kp, 1_000, &["192.0.2.1:4433"]);
        let verified = VerifiedPacket::verify(&kp.public_key(), packet.to_relay_payload())
            .expect("valid packet");
        assert_eq!(verified.payload().timestamp_micros(), 1_000);
        let records = dns_records(verified.payload()).expect("parses");
        assert_eq!(records.len(), 1);
    }

    #[test]
    fn a_verified_payload_does_not_keep_the_buffer_it_was_cut_from() {
        let kp = keypair(1);
        let payload = iroh_packet(&kp, 1_000, &["192.0.2.1:4433"]).to_relay_payload();
        // A body cut from the middle of a larger read buffer, as hyper hands one out.
        let mut buffer = vec![0u8; 64 * 1024];
        buffer[100..100 + payload.len()].copy_from_slice(&payload);
        let buffer = Bytes::from(buffer);
        let body = buffer.slice(100..100 + payload.len());
        let verified = VerifiedPacket::verify(&kp.public_key(), body).expect("valid packet");
        let kept = verified.payload().as_bytes().as_ptr_range();
        let whole = buffer.as_ptr_range();
        assert!(
            kept.end <= whole.start || kept.start >= whole.end,
            "the verified payload points into the 64 KiB buffer its body was cut from"
        );
        assert_eq!(verified.payload().as_bytes(), &payload);
    }

    #[test]
    fn rejects_a_packet_signed_by_another_key() {
        let packet = iroh_packet(&keypair(1), 1_000, &[]);
        let err = VerifiedPacket::verify(&keypair(2).public_key(), packet.to_relay_payload());
        assert_eq!(err, Err(PacketError::Signature));
    }

    #[test]
    fn rejects_a_tampered_timestamp() {
        let kp = keypair(1);
        let mut raw = iroh_packet(&kp, 1_000, &[]).to_relay_payload().to_vec();
        raw[SIGNATURE_LEN + 7] ^= 1;
        let err = VerifiedPacket::verify(&kp.public_key(), Bytes::from(raw));
        assert_eq!(err, Err(PacketError::Signature));
    }

    #[test]
    fn rejects_short_and_long_payloads() {
        let key = keypair(1).public_key();
        let short = VerifiedPacket::verify(&key, Bytes::from(vec![0; HEADER_LEN - 1]));
        assert_eq!(
            short,
            Err(PacketError::Length(PayloadLengthError(HEADER_LEN - 1)))
        );
        let long = VerifiedPacket::verify(&key, Bytes::from(vec![0; 2000]));
        assert_eq!(long, Err(PacketError::Length(PayloadLengthError(2000))));
    }

    #[test]
    fn rejects_timestamps_after_year_9999() {
        let kp = keypair(1);
        let last = iroh_packet(&kp, TIMESTAMP_MICROS_MAX, &[]).to_relay_payload();
        assert!(VerifiedPacket::verify(&kp.public_key(), last).is_ok());
        let after = iroh_packet(&kp, TIMESTAMP_MICROS_MAX + 1, &[]).to_relay_payload();
        let err = VerifiedPacket::verify(&kp.public_key(), after);
        assert_eq!(err, Err(PacketError::Timestamp(TIMESTAMP_MICROS_MAX + 1)));
    }

    /// The fast check gives pkarr's answer for valid packets and for packets damaged anywhere:
    /// signature, timestamp, DNS packet, length, and both signature and DNS packet at once.
    #[test]
    fn the_fast_check_answers_as_pkarr_does() {
        // xorshift64: deterministic, no dependency.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut compared = 0;
        for seed in 0..8 {
            let kp = keypair(seed);
            let key = kp.public_key();
            let valid = iroh_packet(&kp, 1_000 + seed, &["192.0.2.1:4433", "[2001:db8::1]:7"])
                .to_relay_payload()
                .to_vec();
            let garbage_dns =
                pkraft_testkit::sign_raw(&kp, 7, b"\xff\xff not a dns packet").to_vec();
            for base in [&valid, &garbage_dns] {
                let mut variants = vec![base.clone()];
                for _ in 0..24 {
                    let mut damaged = base.clone();
                    for _ in 0..=(next() % 3) {
                        let at = usize::try_from(next()).unwrap_or(0) % damaged.len();
                        damaged[at] ^= 1 << (next() % 8);
                    }
                    variants.push(damaged);
                }
                let mut shorter = base.clone();
                shorter.truncate(HEADER_LEN + (base.len() - HEADER_LEN) / 2);
                variants.push(shorter);
                for raw in variants {
                    let Ok(payload) = Payload::new(Bytes::from(raw)) else {
                        continue;
                    };
                    assert_eq!(
                        verify_signed_packet(&key, &payload),
                        pkarr_verify(&key, &payload),
                        "payload {:?}",
                        payload.as_bytes()
                    );
                    compared += 1;
                }
            }
        }
        assert!(compared > 300, "{compared} payloads compared");
    }

    #[test]
    fn rejects_garbage_dns_with_a_valid_signature() {
        let kp = keypair(1);
        let garbage = b"\xff\xff not a dns packet";
        let body = pkraft_testkit::sign_raw(&kp, 1_000, garbage);
        match VerifiedPacket::verify(&kp.public_key(), body) {
            Err(PacketError::Dns(_)) => {}
            other => panic!("expected a DNS error, got {other:?}"),
        }
    }
}
