//! The records of a segment, in its two formats: how an append encodes them and how they are
//! parsed and checked back.
//!
//! Record format 2 (`PKRLOG2`), a 36-byte header and the payload (never empty):
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | payload length (u32 LE) |
//! | 4..12 | the log index the record holds (u64 LE) |
//! | 12..20, 20..28 | the first and last index of the append that wrote it (u64 LE) |
//! | 28..32 | CRC-32 of the payload |
//! | 32..36 | CRC-32 of bytes 0..32 |
//!
//! Format 1 (`PKRLOG1`, before 2026-11) is still read: `length (u32) ‖ CRC-32 of length and
//! payload (u32) ‖ payload`. Nothing is appended to a format 1 segment.

use std::io::{self, ErrorKind};

/// The first bytes of every segment written now: the format name and its version.
pub(crate) const MAGIC: &[u8; 8] = b"PKRLOG2\0";
/// The first bytes of a segment in the old format, still read.
pub(crate) const MAGIC_V1: &[u8; 8] = b"PKRLOG1\0";
/// Bytes of either magic.
pub(crate) const MAGIC_LEN: usize = 8;
/// A format 2 segment's header: the magic and a random salt (u64 LE), which every record
/// header's checksum covers. A record is a whole record of this segment only with it: bytes a
/// client chose (a packet inside a payload) cannot pass for one.
pub(crate) const SEGMENT_HEADER: usize = 16;
/// A format 2 record's header (the table above).
pub(crate) const RECORD_HEADER: usize = 36;
/// A format 1 record's header: length and checksum.
pub(crate) const RECORD_HEADER_V1: usize = 8;
/// No record is larger (a log entry holds at most one publish batch, a few MiB); a larger length
/// field is garbage, not a record.
pub(crate) const RECORD_MAX: u32 = 256 * 1024 * 1024;
/// No append writes more records (openraft sends at most a few thousand entries at once); a
/// header claiming a larger append is garbage.
pub(crate) const APPEND_MAX: u64 = 1 << 24;

/// A segment's record format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// `PKRLOG1`: length, CRC of length and payload; no index, no header checksum.
    V1,
    /// `PKRLOG2`, with the segment's salt: see the module docs.
    V2 { salt: u64 },
}

impl Format {
    /// Reads the format (and salt) from a segment's first bytes, if they are a whole header.
    pub(crate) fn of(bytes: &[u8]) -> Option<(Format, usize)> {
        match bytes.get(..MAGIC_LEN)? {
            magic if magic == MAGIC => {
                let salt = bytes.get(MAGIC_LEN..SEGMENT_HEADER)?;
                let mut word = [0; 8];
                word.copy_from_slice(salt);
                Some((
                    Format::V2 {
                        salt: u64::from_le_bytes(word),
                    },
                    SEGMENT_HEADER,
                ))
            }
            magic if magic == MAGIC_V1 => Some((Format::V1, MAGIC_LEN)),
            _ => None,
        }
    }

    pub(crate) fn is_current(self) -> bool {
        matches!(self, Format::V2 { .. })
    }
}

/// Appends the records of one append to a segment of salt `salt`, holding `payloads` at indexes
/// `first_index..`, to `out`; returns each record's length. (Tests write records from bytes.)
#[cfg(test)]
pub(crate) fn encode_records<P: AsRef<[u8]>>(
    salt: u64,
    first_index: u64,
    payloads: &[P],
    out: &mut Vec<u8>,
) -> io::Result<Vec<u64>> {
    encode_records_with(salt, first_index, payloads.len(), out, |position, out| {
        out.extend_from_slice(payloads[position].as_ref());
        Ok(())
    })
}

/// [`encode_records`] of `count` records whose payloads `write_payload` appends to `out` in
/// place (given the record's position in the append): each payload is written once, straight
/// into the bytes that go to the disk.
pub(crate) fn encode_records_with(
    salt: u64,
    first_index: u64,
    count: usize,
    out: &mut Vec<u8>,
    mut write_payload: impl FnMut(usize, &mut Vec<u8>) -> io::Result<()>,
) -> io::Result<Vec<u64>> {
    let records = u64::try_from(count)
        .ok()
        .filter(|count| (1..=APPEND_MAX).contains(count))
        .ok_or_else(|| {
            io::Error::new(ErrorKind::InvalidInput, "append of no or too many records")
        })?;
    let append_last = first_index
        .checked_add(records - 1)
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "log index overflow"))?;
    let mut lengths = Vec::with_capacity(count);
    for (position, index) in (first_index..).take(count).enumerate() {
        let start = out.len();
        out.resize(start + RECORD_HEADER, 0);
        write_payload(position, out)?;
        let payload_len = out.len() - start - RECORD_HEADER;
        let len = u32::try_from(payload_len)
            .ok()
            .filter(|len| *len <= RECORD_MAX)
            .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "log record too large"))?;
        if len == 0 {
            return Err(io::Error::new(ErrorKind::InvalidInput, "empty log record"));
        }
        let payload_crc = crc(&out[start + RECORD_HEADER..]);
        let header = &mut out[start..start + RECORD_HEADER];
        header[0..4].copy_from_slice(&len.to_le_bytes());
        header[4..12].copy_from_slice(&index.to_le_bytes());
        header[12..20].copy_from_slice(&first_index.to_le_bytes());
        header[20..28].copy_from_slice(&append_last.to_le_bytes());
        header[28..32].copy_from_slice(&payload_crc.to_le_bytes());
        let header_crc = header_crc(salt, &header[..32]);
        header[32..36].copy_from_slice(&header_crc.to_le_bytes());
        lengths.push((RECORD_HEADER + payload_len) as u64);
    }
    Ok(lengths)
}

/// A record parsed off the front of some bytes.
pub(crate) struct Record<'a> {
    pub(crate) payload: &'a [u8],
    /// Header and payload.
    pub(crate) size: usize,
    /// The index it says it holds (format 2).
    pub(crate) index: u64,
    /// The first and last index of the append that wrote it (format 2).
    pub(crate) append: Option<(u64, u64)>,
}

/// Parses one record off the front of `bytes`, which must hold index `index`.
pub(crate) fn parse_record(
    format: Format,
    bytes: &[u8],
    index: u64,
) -> Result<Record<'_>, &'static str> {
    let record = find_record_checked(format, bytes)?;
    if format.is_current() && record.index != index {
        // A write that landed at the wrong offset, or a record of another log.
        return Err("record holds another index than its place (a misdirected write)");
    }
    Ok(record)
}

pub(crate) fn find_record(format: Format, bytes: &[u8]) -> Option<Record<'_>> {
    find_record_checked(format, bytes).ok()
}

/// Parses one record off the front of `bytes`, checking its checksums, whatever index it holds.
pub(crate) fn find_record_checked(
    format: Format,
    bytes: &[u8],
) -> Result<Record<'_>, &'static str> {
    match format {
        Format::V2 { salt } => parse_v2(salt, bytes),
        Format::V1 => parse_v1(bytes),
    }
}

pub(crate) fn parse_v2(salt: u64, bytes: &[u8]) -> Result<Record<'_>, &'static str> {
    let header: &[u8; RECORD_HEADER] = bytes
        .get(..RECORD_HEADER)
        .and_then(|h| h.try_into().ok())
        .ok_or("record header cut short")?;
    let u32_at = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let u64_at = |at: usize| {
        let mut word = [0; 8];
        word.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(word)
    };
    if header_crc(salt, &header[..32]) != u32_at(32) {
        return Err("record header checksum mismatch");
    }
    let len = u32_at(0);
    let index = u64_at(4);
    let append = (u64_at(12), u64_at(20));
    if len == 0 || len > RECORD_MAX {
        return Err("record length out of range");
    }
    if !(append.0 <= index && index <= append.1 && append.1 - append.0 < APPEND_MAX) {
        return Err("record append range does not hold its index");
    }
    let end = RECORD_HEADER + len as usize;
    let payload = bytes
        .get(RECORD_HEADER..end)
        .ok_or("record payload cut short")?;
    if crc(payload) != u32_at(28) {
        return Err("record payload checksum mismatch");
    }
    Ok(Record {
        payload,
        size: end,
        index,
        append: Some(append),
    })
}

pub(crate) fn parse_v1(bytes: &[u8]) -> Result<Record<'_>, &'static str> {
    let header: &[u8; RECORD_HEADER_V1] = bytes
        .get(..RECORD_HEADER_V1)
        .and_then(|h| h.try_into().ok())
        .ok_or("record header cut short")?;
    let [l0, l1, l2, l3, c0, c1, c2, c3] = *header;
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    if len == 0 || len > RECORD_MAX {
        return Err("record length out of range");
    }
    let end = RECORD_HEADER_V1 + len as usize;
    let payload = bytes
        .get(RECORD_HEADER_V1..end)
        .ok_or("record payload cut short")?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(payload);
    if hasher.finalize() != crc {
        return Err("record checksum mismatch");
    }
    Ok(Record {
        payload,
        size: end,
        index: 0,
        append: None,
    })
}

pub(crate) fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// CRC-32 of the segment's salt and a record header's first 32 bytes.
pub(crate) fn header_crc(salt: u64, header: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&salt.to_le_bytes());
    hasher.update(header);
    hasher.finalize()
}
