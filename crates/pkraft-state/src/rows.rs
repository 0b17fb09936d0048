//! The byte forms of the rows: a stored packet (`packets`), its compiled DNS answers with their
//! checksum (`answers`), and the check a stored packet gets when it is read back whole.

use bytes::Bytes;
use pkraft_types::{KeyBytes, Payload};

use crate::StoreError;

/// Bytes of the `applied_at_micros` prefix in a `packets` value.
pub(crate) const APPLIED_AT_LEN: usize = 8;

/// A packet as stored on a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPacket {
    /// Leader clock time of the log entry that stored the packet (µs since the Unix epoch).
    pub applied_at_micros: u64,
    pub payload: Payload,
}

impl StoredPacket {
    pub(crate) fn encode(&self) -> Vec<u8> {
        Self::encode_parts(self.applied_at_micros, &self.payload)
    }

    /// The `packets` value of `payload` applied at `applied_at_micros`.
    pub(crate) fn encode_parts(applied_at_micros: u64, payload: &Payload) -> Vec<u8> {
        let mut value = Vec::with_capacity(APPLIED_AT_LEN + payload.byte_len());
        value.extend_from_slice(&applied_at_micros.to_be_bytes());
        value.extend_from_slice(payload.as_bytes());
        value
    }

    /// [`StoredPacket::decode`] of a value held in memory, sharing its bytes.
    pub(crate) fn decode_shared(value: &Bytes) -> Result<Self, StoreError> {
        if value.len() < APPLIED_AT_LEN {
            return Self::decode(value);
        }
        let mut be = [0u8; APPLIED_AT_LEN];
        be.copy_from_slice(&value[..APPLIED_AT_LEN]);
        let payload = Payload::new(value.slice(APPLIED_AT_LEN..)).map_err(|source| {
            StoreError::CorruptPacket {
                what: format!("a packet value of {} bytes", value.len()),
                source: pkraft_types::PacketError::Length(source),
            }
        })?;
        Ok(StoredPacket {
            applied_at_micros: u64::from_be_bytes(be),
            payload,
        })
    }

    pub(crate) fn decode(value: &[u8]) -> Result<Self, StoreError> {
        let (time, payload) = value
            .split_at_checked(APPLIED_AT_LEN)
            .ok_or_else(|| StoreError::Corrupt(format!("packet value of {} bytes", value.len())))?;
        let mut be = [0u8; APPLIED_AT_LEN];
        be.copy_from_slice(time);
        let payload = Payload::new(Bytes::copy_from_slice(payload)).map_err(|source| {
            StoreError::CorruptPacket {
                what: format!("a packet value of {} bytes", value.len()),
                source: pkraft_types::PacketError::Length(source),
            }
        })?;
        Ok(StoredPacket {
            applied_at_micros: u64::from_be_bytes(be),
            payload,
        })
    }
}

/// A row of the `answers` table, checked ([`crate::Store::answers`]): committed, holding the read
/// transaction it came from until dropped, or one the open apply transaction holds.
pub struct AnswersRow(pub(crate) AnswersBytes);

pub(crate) enum AnswersBytes {
    Committed(redb::OwnedAccessGuard<&'static [u8]>),
    /// From the read buffer: compiled by this process, or a stored row the apply kept for a
    /// republish of the same DNS message after checking its checksum.
    Buffered(Bytes),
}

impl AnswersRow {
    /// The compiled form, for [`pkraft_types::compiled::CompiledPacket::read`].
    pub fn form(&self) -> &[u8] {
        let row = match &self.0 {
            AnswersBytes::Committed(row) => row.value(),
            AnswersBytes::Buffered(row) => row,
        };
        // The checksum was checked when the row was read or kept (or the row was compiled
        // here).
        &row[..row.len().saturating_sub(ANSWERS_CRC_LEN)]
    }
}

/// Bytes of the CRC-32 after a compiled form in the `answers` table.
const ANSWERS_CRC_LEN: usize = 4;

/// The `answers` row of `payload`, the packet stored for `key`: its compiled form, then the
/// CRC-32 of key and form (so a row written under another key fails the check too).
pub(crate) fn answers_row(key: &KeyBytes, payload: &Payload) -> Vec<u8> {
    let mut row = pkraft_types::compiled::compile(key, payload);
    let crc = answers_crc(key, &row);
    row.extend_from_slice(&crc.to_be_bytes());
    row
}

pub(crate) fn answers_crc(key: &KeyBytes, form: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(key);
    crc.update(form);
    crc.finalize()
}

/// The compiled form in an `answers` row, if its checksum holds.
pub(crate) fn answers_form<'r>(key: &KeyBytes, row: &'r [u8]) -> Option<&'r [u8]> {
    let (form, crc) = row.split_at_checked(row.len().checked_sub(ANSWERS_CRC_LEN)?)?;
    let crc = u32::from_be_bytes(crc.try_into().ok()?);
    (answers_crc(key, form) == crc).then_some(form)
}

/// A stored row checked as a PUT verifies a packet (decode, signature, length, DNS parse).
pub(crate) fn verify_row(key: &KeyBytes, value: &[u8]) -> Result<StoredPacket, StoreError> {
    let stored = StoredPacket::decode(value)?;
    let body = stored.payload.as_bytes().clone();
    pkraft_types::VerifiedPacket::verify_stored(key, body).map_err(|source| {
        StoreError::CorruptPacket {
            what: "a packet that does not verify".to_string(),
            source,
        }
    })?;
    Ok(stored)
}

/// `key` in lower-case hex, as errors and logs name it.
pub(crate) fn hex(key: &KeyBytes) -> String {
    key.iter().map(|byte| format!("{byte:02x}")).collect()
}
