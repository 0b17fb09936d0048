//! The pkarr relay payload: `signature (64) ‖ timestamp (8, big-endian µs) ‖ DNS packet (≤ 1000)`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Bytes of the ed25519 signature at the start of a payload.
pub const SIGNATURE_LEN: usize = 64;
/// Bytes of the big-endian microsecond timestamp after the signature.
pub const TIMESTAMP_LEN: usize = 8;
/// Bytes before the DNS packet.
pub const HEADER_LEN: usize = SIGNATURE_LEN + TIMESTAMP_LEN;
/// Largest DNS packet a pkarr record may carry (the BEP44 value limit of the Mainline DHT).
pub const DNS_PACKET_LEN_MAX: usize = 1000;
/// Largest relay payload: 1072 bytes. Larger PUT bodies get 413.
pub const PAYLOAD_LEN_MAX: usize = HEADER_LEN + DNS_PACKET_LEN_MAX;
/// Latest accepted signer timestamp: 9999-12-31T23:59:59.999999Z. HTTP dates (`Last-Modified`)
/// cannot express later times, and no honest clock is near it.
pub const TIMESTAMP_MICROS_MAX: u64 = 253_402_300_799_999_999;

/// A relay payload whose length is within bounds. The signature is *not* checked here: see
/// [`crate::VerifiedPacket`] for that. Stored payloads are wrapped in this type so that reading the
/// timestamp or the DNS packet can never go out of bounds.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Bytes", into = "Bytes")]
pub struct Payload(Bytes);

/// The payload length is outside `HEADER_LEN..=PAYLOAD_LEN_MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("relay payload is {0} bytes; it must be {HEADER_LEN} to {PAYLOAD_LEN_MAX}")]
pub struct PayloadLengthError(pub usize);

impl Payload {
    pub fn new(bytes: Bytes) -> Result<Self, PayloadLengthError> {
        if (HEADER_LEN..=PAYLOAD_LEN_MAX).contains(&bytes.len()) {
            Ok(Payload(bytes))
        } else {
            Err(PayloadLengthError(bytes.len()))
        }
    }

    /// The signer's timestamp in microseconds since the Unix epoch.
    pub fn timestamp_micros(&self) -> u64 {
        let mut be = [0u8; TIMESTAMP_LEN];
        be.copy_from_slice(&self.0[SIGNATURE_LEN..HEADER_LEN]);
        u64::from_be_bytes(be)
    }

    /// The encoded DNS packet.
    pub fn dns_packet(&self) -> &[u8] {
        &self.0[HEADER_LEN..]
    }

    /// The same payload in an allocation of its own: a `Bytes` sliced from a larger buffer
    /// keeps the whole buffer alive for as long as the payload lives.
    pub fn detached(self) -> Payload {
        Payload(Bytes::copy_from_slice(&self.0))
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Length in bytes (always within `HEADER_LEN..=PAYLOAD_LEN_MAX`).
    pub fn byte_len(&self) -> usize {
        self.0.len()
    }
}

impl TryFrom<Bytes> for Payload {
    type Error = PayloadLengthError;
    fn try_from(bytes: Bytes) -> Result<Self, Self::Error> {
        Payload::new(bytes)
    }
}

impl From<Payload> for Bytes {
    fn from(payload: Payload) -> Bytes {
        payload.0
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payload")
            .field("timestamp_micros", &self.timestamp_micros())
            .field("dns_len", &self.dns_packet().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_bounds() {
        assert!(Payload::new(Bytes::from(vec![0; HEADER_LEN - 1])).is_err());
        assert!(Payload::new(Bytes::from(vec![0; HEADER_LEN])).is_ok());
        assert!(Payload::new(Bytes::from(vec![0; PAYLOAD_LEN_MAX])).is_ok());
        assert!(Payload::new(Bytes::from(vec![0; PAYLOAD_LEN_MAX + 1])).is_err());
    }

    #[test]
    fn reads_timestamp_and_dns() {
        let mut raw = vec![0u8; HEADER_LEN];
        raw[SIGNATURE_LEN..HEADER_LEN].copy_from_slice(&42u64.to_be_bytes());
        raw.extend_from_slice(b"dns");
        let payload = Payload::new(Bytes::from(raw)).expect("valid length");
        assert_eq!(payload.timestamp_micros(), 42);
        assert_eq!(payload.dns_packet(), b"dns");
    }
}
