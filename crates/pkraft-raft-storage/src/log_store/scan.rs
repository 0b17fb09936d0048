//! Reading a segment back at open, and telling a crash from damage.
//!
//! - Opening reads every record. At the first one that does not read back (a header or payload
//!   checksum, or an index other than its place), it looks for any whole record after it
//!   (scanning byte by byte, since the bad header's length is not to be trusted).
//!   - No whole record follows, in the last segment: a torn tail. It was never acknowledged, so
//!     the segment is cut back to the last whole record (as etcd's WAL repair does). Unless
//!     the synced mark (`synced_mark`, written after every append's sync and before it is
//!     reported done) says the append was done: then a lost or damaged write, not a tear, and
//!     damage as below. The same if the segment ends before the mark says it does.
//!   - Only records of the append that also wrote the bad one follow (format 2 says which): an
//!     append torn out of order (the disk wrote a later sector and not an earlier one). Also
//!     never acknowledged; also cut.
//!   - Only zeros follow, to the end of the last segment, and the synced mark does not reach
//!     past the bad record: the rest of a segment zero-filled ahead of time (`spare.rs`), never
//!     written. The log ends there, and the zeros stay for the appends to come.
//!   - Anything else (a whole record of a later append follows, or the bad record is in an
//!     earlier segment) is damage to synced data, which may have been acknowledged: the open
//!     fails with [`Damage`], naming the file, the byte, the first damaged index and the last
//!     index held after it. It is never cut silently.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pkraft_types::planted::{self, PlantedBug};

use super::damage::Damage;
use super::record::{
    Format, MAGIC, MAGIC_LEN, RECORD_HEADER, SEGMENT_HEADER, find_record, parse_record,
};
use super::segment_file::{Segment, segment_first_index};
use super::synced_mark::SyncedMark;

/// Why a segment could not be read back: the environment, or damage to synced records.
pub(crate) enum ScanError {
    Io(io::Error),
    Damaged(Damage),
}

impl From<io::Error> for ScanError {
    fn from(e: io::Error) -> Self {
        ScanError::Io(e)
    }
}

/// Reads a segment, checking every record, and cuts a torn append off the last segment.
/// Reads segment `path` (holding indexes from `first_index`), cutting a torn tail off the last
/// one. `synced`: the synced mark, if it names this segment (an append it covers is no torn
/// tail).
pub(crate) fn scan(
    first_index: u64,
    path: PathBuf,
    is_last: bool,
    synced: Option<SyncedMark>,
) -> Result<Segment, ScanError> {
    let file = OpenOptions::new().read(true).write(true).open(&path)?;
    let bytes = fs::read(&path)?;
    let Some((format, header_len)) = Format::of(&bytes) else {
        // Cut inside the header, or never written: the crash came while the segment was being
        // created, before anything was appended to it.
        let unwritten = bytes.len() < SEGMENT_HEADER
            && MAGIC.starts_with(&bytes[..bytes.len().min(MAGIC_LEN)])
            || bytes.iter().all(|b| *b == 0);
        if is_last && unwritten {
            return Ok(Segment {
                first_index,
                path,
                file: Arc::new(file),
                format: Format::V2 { salt: 0 },
                offsets: Vec::new(),
                end: 0,
            });
        }
        return Err(ScanError::Damaged(Damage {
            segment: path,
            offset: 0,
            first_index,
            last_index_after: None,
            reason: "not a pkraft log segment",
            last_record_after: None,
            synced_last: None,
        }));
    };
    let mut offsets = Vec::new();
    let mut position = header_len;
    // The append range of the last whole record, to tell whether a bad record is in it.
    let mut last_append = None;
    while position < bytes.len() {
        let index = first_index + offsets.len() as u64;
        let reason = match parse_record(format, &bytes[position..], index) {
            Ok(record) => {
                offsets.push(position as u64);
                position += record.size;
                last_append = record.append;
                continue;
            }
            Err(reason) => reason,
        };
        // The rest of a segment zero-filled ahead of time (`spare.rs`), never written: the log
        // ends here, unless the synced mark says an append reported done reached past it (a
        // lost write, which `BadRecord::damage` names).
        let never_written = is_last
            && bytes[position..].iter().all(|byte| *byte == 0)
            && synced.is_none_or(|mark| mark.end <= position as u64);
        if never_written {
            break;
        }
        let bad = BadRecord {
            format,
            position,
            index,
            reason,
            last_append,
        };
        if let Some(damage) = bad.damage(&path, &bytes, is_last, synced) {
            return Err(ScanError::Damaged(damage));
        }
        tracing::warn!(
            segment = %path.display(),
            offset = position,
            bytes = bytes.len() - position,
            index,
            reason,
            "cutting off a torn append at the end of the Raft log (interrupted by a crash; it was never acknowledged)"
        );
        file.set_len(position as u64)?;
        pkraft_types::world::sync_all(&file)?;
        break;
    }
    Ok(Segment {
        first_index,
        path,
        file: Arc::new(file),
        format,
        offsets,
        end: position as u64,
    })
}

/// A record that does not read back, found by [`scan`] at `position` of a segment.
struct BadRecord {
    format: Format,
    position: usize,
    /// The index it should hold.
    index: u64,
    reason: &'static str,
    /// The append range of the last whole record before it (format 2).
    last_append: Option<(u64, u64)>,
}

impl BadRecord {
    /// The damage it is, or `None` if it is a torn tail to cut: the last segment's last append,
    /// cut short or torn out of order by a crash, and never reported done (`synced`: the synced
    /// mark, if it names this segment).
    fn damage(
        &self,
        path: &Path,
        bytes: &[u8],
        is_last: bool,
        synced: Option<SyncedMark>,
    ) -> Option<Damage> {
        let BadRecord {
            format,
            position,
            index,
            reason,
            last_append,
        } = *self;
        if planted::is_planted(PlantedBug::EnlargedLengthReadAsTornTail)
            && is_last
            && length_runs_past_the_end(bytes, position)
        {
            return None;
        }
        let after = records_after(format, bytes, position, index);
        // The append that wrote (or was writing) `index`: the last whole record's, if it goes
        // on past that record; else one that starts at `index` (an append never spans
        // segments, so a segment's first record starts one).
        let bad_append_first = match last_append {
            Some((first, last)) if last >= index => first,
            _ => index,
        };
        // Also one that starts at `index`: a truncation keeps the append range of the records
        // before the cut, and the next append starts right at it.
        let torn_append = |(first, last): (u64, u64)| {
            (first == bad_append_first || first == index) && last >= index
        };
        let torn = is_last
            && match (format, &after) {
                (_, None) => true,
                (Format::V2 { .. }, Some(after)) => after.appends.iter().copied().all(torn_append),
                (Format::V1, Some(_)) => false,
            };
        // An append the mark covers was synced and reported done: never a tear.
        let reported_done = synced.filter(|mark| mark.end > position as u64);
        if torn && reported_done.is_none() {
            return None;
        }
        let (last_index_after, last_record_after) = match after {
            Some(after) => (Some(after.last_index), Some(after.last_payload)),
            None => (None, None),
        };
        let last_index_after = match (last_index_after, reported_done) {
            (Some(after), Some(mark)) => Some(after.max(mark.last_index)),
            (after, mark) => after.or(mark.map(|mark| mark.last_index)),
        };
        Some(Damage {
            segment: path.to_path_buf(),
            offset: position as u64,
            first_index: index,
            last_index_after,
            reason,
            last_record_after,
            synced_last: reported_done,
        })
    }
}

/// Whether the length field of the record at `position` (its header's first four bytes, or
/// fewer than four left) says it runs past the end of `bytes`: what the planted bug
/// `EnlargedLengthReadAsTornTail` takes for a torn tail.
fn length_runs_past_the_end(bytes: &[u8], position: usize) -> bool {
    let Some(length) = bytes.get(position..position + 4) else {
        return true;
    };
    let length = u32::from_le_bytes([length[0], length[1], length[2], length[3]]) as usize;
    position + RECORD_HEADER + length > bytes.len()
}

/// The whole records found after a bad one.
pub(crate) struct RecordsAfter {
    /// The highest index they hold (format 1, which records no index: counted from the bad
    /// record's place, a lower bound).
    last_index: u64,
    /// The payload of the record holding `last_index`.
    last_payload: Vec<u8>,
    /// The append ranges they belong to (format 2).
    appends: Vec<(u64, u64)>,
}

/// Looks for whole records in `bytes` after the bad record at `bad` (which should hold
/// `bad_index`), byte by byte: its length field may be what is damaged. A record counts only if
/// its checksums match (format 2: header and payload, a 2⁻⁶⁴ chance for garbage) and, in
/// format 2, it holds a later index than the bad one.
pub(crate) fn records_after(
    format: Format,
    bytes: &[u8],
    bad: usize,
    bad_index: u64,
) -> Option<RecordsAfter> {
    let mut found: Option<RecordsAfter> = None;
    let mut at = bad + 1;
    let mut count = 0;
    while at < bytes.len() {
        let record = find_record(format, &bytes[at..]).filter(|record| {
            // Format 2: a later index than the bad one, and no more later than the bytes
            // between them can hold (a record is at least a header and one byte).
            let most = bad_index
                .saturating_add(((at - bad) / (RECORD_HEADER + 1)) as u64)
                .saturating_add(1);
            !format.is_current() || (record.index > bad_index && record.index <= most)
        });
        let Some(record) = record else {
            at += 1;
            continue;
        };
        count += 1;
        let index = match format {
            Format::V2 { .. } => record.index,
            Format::V1 => bad_index.saturating_add(count),
        };
        let entry = found.get_or_insert(RecordsAfter {
            last_index: index,
            last_payload: Vec::new(),
            appends: Vec::new(),
        });
        if index >= entry.last_index {
            entry.last_index = index;
            entry.last_payload = record.payload.to_vec();
        }
        entry.appends.extend(record.append);
        at += record.size;
    }
    found
}

/// The last index held by the segments after `damaged` in `dir`, by their names and a count of
/// their whole records, with that record's payload (for the damage report; they are not opened
/// for use).
pub(crate) fn segments_after(dir: &Path, damaged: &Path) -> io::Result<Option<(u64, Vec<u8>)>> {
    let damaged_first = segment_first_index(damaged);
    let mut last: Option<(u64, Vec<u8>)> = None;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(first) = segment_first_index(&path).filter(|first| Some(*first) > damaged_first)
        else {
            continue;
        };
        let bytes = fs::read(&path)?;
        let Some((format, header_len)) = Format::of(&bytes) else {
            continue;
        };
        // Every whole record, past any damage in this segment too (`records_after` resyncs
        // byte by byte).
        let Some(found) = records_after(
            format,
            &bytes,
            header_len.saturating_sub(1),
            first.saturating_sub(1),
        ) else {
            continue;
        };
        if last
            .as_ref()
            .is_none_or(|(index, _)| found.last_index > *index)
        {
            last = Some((found.last_index, found.last_payload));
        }
    }
    Ok(last)
}
