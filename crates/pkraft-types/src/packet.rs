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
        SignedPacket::from_relay_payload(key, payload.as_bytes()).map_err(|e| match e {
            SignedPacketVerifyError::SignatureError(_) => PacketError::Signature,
            SignedPacketVerifyError::DnsError(e) => PacketError::Dns(e.to_string()),
            other => PacketError::Invalid(other.to_string()),
        })?;
        if payload.timestamp_micros() > TIMESTAMP_MICROS_MAX {
            return Err(PacketError::Timestamp(payload.timestamp_micros()));
        }
        dns_message(&payload)?;
        Ok(VerifiedPacket {
            key: key.clone(),
            payload,
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
