//! Append-only segment files: where the Raft log keeps its entries.
//!
//! Every PUT waits for one log append, so its latency bounds the commit pipeline. As a redb
//! commit, an append copied B-tree pages and took ≈ 1.6 ms under load; as a write at the end of a
//! file and one `fdatasync` it takes ≈ 0.2 ms on the same disk (docs/BENCHMARKS.md).
//!
//! A segment is `<first index, 20 digits>.seg` in the log directory: a magic naming the format
//! and its version, then one record per log index, record `i` holding index `first + i`.
//! Payloads are opaque here (the log store puts postcard-encoded entries in them). The segments
//! together hold one contiguous run of indexes. A new segment starts when the last one reaches
//! the target size, the next index does not follow it (after the log was purged past its end),
//! or it is in the old format.
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
//!
//! Crash safety, and telling a crash from damage:
//! - An append is one write and one `fdatasync`, reported done only after both; appends never
//!   overlap, and a new segment's header and directory entry are synced before anything is
//!   appended to it. So a crash can only leave the *last append* of the *last segment* short.
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
//!   - Anything else (a whole record of a later append follows, or the bad record is in an
//!     earlier segment) is damage to synced data, which may have been acknowledged: the open
//!     fails with [`Damage`], naming the file, the byte, the first damaged index and the last
//!     index held after it. It is never cut silently.
//! - Truncation removes whole segments from the last one backwards, syncing the directory after
//!   each, and then cuts the one holding the new end, so a crash in between leaves a prefix of
//!   the old log (as if it had not run).
//!   Purging removes whole segments from the first one forwards, after the caller has recorded
//!   the purge point, so leftovers of an interrupted purge are removed at the next open.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::synced_mark::{self, MarkFile, SyncedMark};

/// The first bytes of every segment written now: the format name and its version.
const MAGIC: &[u8; 8] = b"PKRLOG2\0";
/// The first bytes of a segment in the old format, still read.
const MAGIC_V1: &[u8; 8] = b"PKRLOG1\0";
const MAGIC_LEN: usize = 8;
/// A format 2 segment's header: the magic and a random salt (u64 LE), which every record
/// header's checksum covers. A record is a whole record of this segment only with it: bytes a
/// client chose (a packet inside a payload) cannot pass for one.
const SEGMENT_HEADER: usize = 16;
/// Where damaged records are kept once set aside ([`set_aside`]), inside the log directory.
pub(crate) const DAMAGED_DIR: &str = "damaged";
const RECORD_HEADER: usize = 36;
const RECORD_HEADER_V1: usize = 8;
/// Size at which the next append starts a new segment. Purging frees disk a whole segment at a
/// time, so this is also roughly how much purged log a node keeps on disk.
pub(crate) const SEGMENT_TARGET_BYTES: u64 = 64 * 1024 * 1024;
/// No record is larger (a log entry holds at most one publish batch, a few MiB); a larger length
/// field is garbage, not a record.
const RECORD_MAX: u32 = 256 * 1024 * 1024;
/// No append writes more records (openraft sends at most a few thousand entries at once); a
/// header claiming a larger append is garbage.
const APPEND_MAX: u64 = 1 << 24;

/// A segment's record format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// `PKRLOG1`: length, CRC of length and payload; no index, no header checksum.
    V1,
    /// `PKRLOG2`, with the segment's salt: see the module docs.
    V2 { salt: u64 },
}

impl Format {
    /// Reads the format (and salt) from a segment's first bytes, if they are a whole header.
    fn of(bytes: &[u8]) -> Option<(Format, usize)> {
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

    fn is_current(self) -> bool {
        matches!(self, Format::V2 { .. })
    }
}

/// Damage to synced records of the log: what the open found instead of a torn tail. Carried
/// inside the `io::Error` (kind `InvalidData`) that [`Segments::open`] returns; the log store
/// takes it out with [`Damage::of`].
#[derive(Clone, PartialEq, Eq)]
pub struct Damage {
    /// The segment file.
    pub segment: PathBuf,
    /// Where in it the first bad record starts.
    pub offset: u64,
    /// The index that record should hold: the first index the log lost.
    pub first_index: u64,
    /// The last index a whole record holds after the damage (in this segment or a later one),
    /// if any: the log held entries up to it, synced after the damaged one.
    pub last_index_after: Option<u64>,
    /// What is wrong with the record.
    pub reason: &'static str,
    /// The payload of the record holding `last_index_after`: the last entry the log held.
    pub last_record_after: Option<Vec<u8>>,
    /// The synced mark, when it is what shows that the damaged records were synced and
    /// reported done (no whole record follows them): `last_index_after` is its last index.
    pub synced_last: Option<SyncedMark>,
}

impl Damage {
    /// The damage an error from [`Segments::open`] reports, if it is one.
    pub fn of(error: &io::Error) -> Option<&Damage> {
        error.get_ref()?.downcast_ref::<Damage>()
    }

    /// The damage, reaching at least as far as the synced mark: whatever is damaged, the log
    /// held (and may have acknowledged) every entry up to the mark's, which the repair must
    /// not vote below. (A partly lost append leaves whole records short of the mark.)
    fn reaching(mut self, mark: Option<SyncedMark>) -> Damage {
        if let Some(mark) = mark
            && self
                .last_index_after
                .is_none_or(|after| after < mark.last_index)
        {
            self.last_index_after = Some(mark.last_index.max(self.first_index));
            self.synced_last = Some(mark);
        }
        self
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the Raft log is damaged: segment {} at byte {}: {} (index {})",
            self.segment.display(),
            self.offset,
            self.reason,
            self.first_index
        )?;
        match (self.synced_last, self.last_index_after) {
            (Some(mark), _) => write!(
                f,
                "; the log synced and reported done entries up to index {} (raft-log/{}), so \
                 this is a lost or damaged write, not a torn one: entries {}..={} may have \
                 been acknowledged",
                mark.last_index,
                synced_mark::FILE,
                self.first_index,
                mark.last_index
            ),
            (None, Some(last)) => write!(
                f,
                "; whole records up to index {last} follow it, synced after it, so this is \
                 damage, not a torn write: entries {}..={last} may have been acknowledged",
                self.first_index
            ),
            (None, None) => write!(
                f,
                "; it is not the end of the log, so this is damage, not a torn write"
            ),
        }
    }
}

impl fmt::Debug for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Damage {}

/// The segments of one log directory, with the offset of every record.
pub(crate) struct Segments {
    dir: PathBuf,
    target_bytes: u64,
    /// Ascending by first index, contiguous.
    segments: Vec<Segment>,
    /// Where the last append reported done ended (`synced_mark`).
    mark: Arc<MarkFile>,
}

struct Segment {
    first_index: u64,
    path: PathBuf,
    file: Arc<File>,
    format: Format,
    /// Start of each record; record `i` holds index `first_index + i`.
    offsets: Vec<u64>,
    /// End of the last record, where the next one goes.
    end: u64,
}

impl Segment {
    /// The index the next record in this segment gets.
    fn next_index(&self) -> u64 {
        self.first_index + self.offsets.len() as u64
    }

    fn last_index(&self) -> Option<u64> {
        self.next_index()
            .checked_sub(1)
            .filter(|_| !self.offsets.is_empty())
    }

    fn record_end(&self, position: usize) -> u64 {
        self.offsets.get(position + 1).copied().unwrap_or(self.end)
    }
}

/// Where an append writes, from [`Segments::prepare_append`]. The write and the sync happen
/// outside any lock around [`Segments`]; [`Segments::finish_append`] then publishes the records.
pub(crate) struct AppendTarget {
    file: Arc<File>,
    offset: u64,
    first_index: u64,
    salt: u64,
    /// The segment's first index, for the synced mark.
    segment_first_index: u64,
    mark: Arc<MarkFile>,
}

/// The last entry of an append, for the synced mark: index, term and the node that led it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LastEntry {
    pub(crate) index: u64,
    pub(crate) term: u64,
    pub(crate) leader: u64,
}

impl AppendTarget {
    /// Appends the records of one append, holding `payloads` at indexes from the target's first
    /// on, to `out` for [`AppendTarget::write_and_sync`]; returns each record's length.
    pub(crate) fn encode<P: AsRef<[u8]>>(
        &self,
        payloads: &[P],
        out: &mut Vec<u8>,
    ) -> io::Result<Vec<u64>> {
        encode_records(self.salt, self.first_index, payloads, out)
    }

    /// Writes `encoded` (from [`AppendTarget::encode`]) at the end of the segment and syncs it,
    /// then sets the synced mark to its end (`last`: the append's last entry), durably. Only
    /// then may the append be reported done.
    pub(crate) fn write_and_sync(&self, encoded: &[u8], last: LastEntry) -> io::Result<()> {
        let written = self
            .file
            .write_all_at(encoded, self.offset)
            .and_then(|()| self.file.sync_data());
        if written.is_err() {
            // Leave no partial record behind the last good one: once a later append exists,
            // the open would take it for damage rather than a torn tail.
            let _ = self.file.set_len(self.offset);
            return written;
        }
        self.mark.write(Some(SyncedMark {
            segment_first_index: self.segment_first_index,
            end: self.offset + encoded.len() as u64,
            last_index: last.index,
            last_term: last.term,
            last_leader: last.leader,
        }))
    }
}

/// One contiguous run of records in one segment, from [`Segments::locate`].
pub(crate) struct Span {
    file: Arc<File>,
    path: PathBuf,
    format: Format,
    first_index: u64,
    start: u64,
    end: u64,
    count: usize,
}

impl Span {
    /// Bytes of records in the span.
    pub(crate) fn byte_len(&self) -> u64 {
        self.end - self.start
    }

    /// Reads the span and calls `each` with every record's payload, checking each checksum and
    /// index: damage that came after the open is named, never served.
    pub(crate) fn read(&self, mut each: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        let len = usize::try_from(self.end - self.start)
            .map_err(|_| corrupt(&self.path, self.start, "span larger than memory"))?;
        let mut buffer = vec![0; len];
        self.file.read_exact_at(&mut buffer, self.start)?;
        let mut at = 0;
        for index in (self.first_index..).take(self.count) {
            let record = parse_record(self.format, &buffer[at..], index).map_err(|reason| {
                io::Error::new(
                    ErrorKind::InvalidData,
                    Damage {
                        segment: self.path.clone(),
                        offset: self.start + at as u64,
                        first_index: index,
                        last_index_after: None,
                        reason,
                        last_record_after: None,
                        synced_last: None,
                    },
                )
            })?;
            each(record.payload)?;
            at += record.size;
        }
        Ok(())
    }
}

/// Appends the records of one append to a segment of salt `salt`, holding `payloads` at indexes
/// `first_index..`, to `out`; returns each record's length.
fn encode_records<P: AsRef<[u8]>>(
    salt: u64,
    first_index: u64,
    payloads: &[P],
    out: &mut Vec<u8>,
) -> io::Result<Vec<u64>> {
    let count = u64::try_from(payloads.len())
        .ok()
        .filter(|count| (1..=APPEND_MAX).contains(count))
        .ok_or_else(|| {
            io::Error::new(ErrorKind::InvalidInput, "append of no or too many records")
        })?;
    let append_last = first_index
        .checked_add(count - 1)
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "log index overflow"))?;
    let mut lengths = Vec::with_capacity(payloads.len());
    for (index, payload) in (first_index..).zip(payloads) {
        let payload = payload.as_ref();
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|len| *len <= RECORD_MAX)
            .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "log record too large"))?;
        if len == 0 {
            return Err(io::Error::new(ErrorKind::InvalidInput, "empty log record"));
        }
        let start = out.len();
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(&first_index.to_le_bytes());
        out.extend_from_slice(&append_last.to_le_bytes());
        out.extend_from_slice(&crc(payload).to_le_bytes());
        let header_crc = header_crc(salt, &out[start..]);
        out.extend_from_slice(&header_crc.to_le_bytes());
        out.extend_from_slice(payload);
        lengths.push((RECORD_HEADER + payload.len()) as u64);
    }
    Ok(lengths)
}

impl Segments {
    /// Opens the segments in `dir` (creating it), with a new segment started whenever the last
    /// one reaches `target_bytes`. Segments that only hold indexes up to `purged` are removed
    /// (the rest of an interrupted purge), a torn append at the end of the last segment is cut
    /// off, and damage is an error naming the file (carrying a [`Damage`] where records are
    /// damaged).
    pub(crate) fn open(dir: &Path, purged: Option<u64>, target_bytes: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for dir_entry in fs::read_dir(dir)? {
            let path = dir_entry?.path();
            if let Some(first_index) = segment_first_index(&path) {
                found.push((first_index, path));
            }
        }
        found.sort();
        let (mark_file, mark) = MarkFile::open(dir)?;
        // Entries up to the purge point are gone anyway; a mark below it covers nothing.
        let mark = mark.filter(|mark| purged.is_none_or(|purged| mark.last_index > purged));
        let mut segments = Segments {
            dir: dir.to_path_buf(),
            target_bytes,
            segments: Vec::with_capacity(found.len()),
            mark: Arc::new(mark_file),
        };
        let count = found.len();
        for (position, (first_index, path)) in found.into_iter().enumerate() {
            let is_last = position + 1 == count;
            let synced = mark.filter(|mark| mark.segment_first_index == first_index);
            match scan(first_index, path, is_last, synced) {
                Ok(segment) => segments.segments.push(segment),
                Err(ScanError::Io(e)) => return Err(e),
                Err(ScanError::Damaged(mut damage)) => {
                    // The log held more after the damaged segment: those entries too were
                    // synced after the damaged one.
                    if let Some((last, payload)) = segments_after(dir, &damage.segment)? {
                        damage.last_index_after = Some(last);
                        damage.last_record_after = Some(payload);
                    }
                    return Err(io::Error::new(
                        ErrorKind::InvalidData,
                        damage.reaching(mark),
                    ));
                }
            }
        }
        if let Some(mark) = mark {
            segments.check_mark(mark)?;
        }
        // Empty segments (a crash right after one was created) hold nothing.
        let (empty, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut segments.segments)
            .into_iter()
            .partition(|segment| segment.offsets.is_empty());
        segments.segments = kept;
        for segment in empty {
            fs::remove_file(&segment.path)?;
        }
        if let Some(purged) = purged {
            segments.remove_through(purged)?;
        }
        for pair in segments.segments.windows(2) {
            if pair[0].next_index() != pair[1].first_index {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    Damage {
                        segment: pair[1].path.clone(),
                        offset: 0,
                        first_index: pair[0].next_index(),
                        last_index_after: segments.last_index(),
                        reason: "the previous segment ends before this one starts: entries are missing",
                        last_record_after: segments.last_index().and_then(|last| {
                            let mut payload = None;
                            for span in segments.locate(last, last + 1) {
                                let _ = span.read(|bytes| {
                                    payload = Some(bytes.to_vec());
                                    Ok(())
                                });
                            }
                            payload
                        }),
                        synced_last: None,
                    }
                    .reaching(mark),
                ));
            }
        }
        sync_dir(dir)?;
        Ok(segments)
    }

    /// The segment holding `index` (its first index) and the byte its record ends at.
    fn end_of(&self, index: u64) -> Option<(u64, u64)> {
        let segment = self
            .segments
            .iter()
            .rev()
            .find(|segment| segment.first_index <= index)?;
        let position = usize::try_from(index - segment.first_index).ok()?;
        (position < segment.offsets.len())
            .then(|| (segment.first_index, segment.record_end(position)))
    }

    /// Fails with [`Damage`] if the log ends before the synced mark says it does: a segment
    /// shorter than the mark's end with no bad record in it (a lost write that took the file's
    /// new length with it), or the mark's segment missing.
    fn check_mark(&self, mark: SyncedMark) -> io::Result<()> {
        let short = match self
            .segments
            .iter()
            .find(|segment| segment.first_index == mark.segment_first_index)
        {
            Some(segment) if segment.end >= mark.end => return Ok(()),
            Some(segment) => Some((segment.path.clone(), segment.end, segment.next_index())),
            None if self
                .last_index()
                .is_some_and(|last| last >= mark.last_index) =>
            {
                return Ok(());
            }
            None => None,
        };
        let (segment, offset, first_index, reason) = match short {
            Some((path, end, next)) => (
                path,
                end,
                next,
                "the segment ends before the last append reported done",
            ),
            None => (
                self.dir.join(segment_file_name(mark.segment_first_index)),
                0,
                self.last_index()
                    .map_or(mark.segment_first_index, |last| last + 1),
                "the segment the last append reported done went to is missing",
            ),
        };
        Err(io::Error::new(
            ErrorKind::InvalidData,
            Damage {
                segment,
                offset,
                first_index,
                last_index_after: Some(mark.last_index),
                reason,
                last_record_after: None,
                synced_last: Some(mark),
            },
        ))
    }

    /// The directory the segments are in.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The size a segment grows to before the next one is started.
    pub(crate) fn target_bytes(&self) -> u64 {
        self.target_bytes
    }

    #[cfg(test)]
    pub(crate) fn first_index(&self) -> Option<u64> {
        self.segments.first().map(|segment| segment.first_index)
    }

    pub(crate) fn last_index(&self) -> Option<u64> {
        // The last segment is empty while its first append is under way (or after it failed).
        self.segments.iter().rev().find_map(Segment::last_index)
    }

    /// Picks where records starting at `first_index` go, starting a new segment (synced, with
    /// its directory entry) when the last one is full, empty or in the old format, or the index
    /// does not follow it.
    pub(crate) fn prepare_append(&mut self, first_index: u64) -> io::Result<AppendTarget> {
        let follows = self
            .segments
            .last()
            .is_some_and(|last| last.next_index() == first_index);
        if !follows && self.last_index().is_some() {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "append at index {first_index} does not follow the log's last index {:?}",
                    self.last_index()
                ),
            ));
        }
        let closed = self
            .segments
            .last()
            .is_some_and(|last| last.end >= self.target_bytes || !last.format.is_current());
        if !follows || closed {
            let path = self.dir.join(segment_file_name(first_index));
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?;
            let salt: u64 = rand::random();
            file.write_all(MAGIC)?;
            file.write_all(&salt.to_le_bytes())?;
            file.sync_all()?;
            sync_dir(&self.dir)?;
            self.segments.push(Segment {
                first_index,
                path,
                file: Arc::new(file),
                format: Format::V2 { salt },
                offsets: Vec::new(),
                end: SEGMENT_HEADER as u64,
            });
        }
        let last = self
            .segments
            .last()
            .ok_or_else(|| io::Error::other("no segment to append to"))?;
        let Format::V2 { salt } = last.format else {
            return Err(io::Error::other("appending to a segment in the old format"));
        };
        Ok(AppendTarget {
            file: last.file.clone(),
            offset: last.end,
            first_index,
            salt,
            segment_first_index: last.first_index,
            mark: self.mark.clone(),
        })
    }

    /// Publishes records written through `target`, of the given lengths (from
    /// [`AppendTarget::encode`]), once they are synced.
    pub(crate) fn finish_append(&mut self, target: &AppendTarget, lengths: &[u64]) {
        let Some(last) = self.segments.last_mut() else {
            return;
        };
        debug_assert_eq!(last.next_index(), target.first_index);
        debug_assert_eq!(last.end, target.offset);
        for length in lengths {
            last.offsets.push(last.end);
            last.end += length;
        }
    }

    /// Removes the records from `index` on, durably. The synced mark is lowered first to the
    /// new end (`new_last`: the entry at `index - 1`, if the log keeps it; else cleared), so
    /// that the next open neither takes the removed records for lost ones nor leaves the
    /// records kept unguarded. A mark below the data is safe whichever way a crash falls.
    pub(crate) fn truncate(&mut self, index: u64, new_last: Option<LastEntry>) -> io::Result<()> {
        if self.last_index().is_some_and(|last| last >= index) {
            let lowered = new_last
                .filter(|last| last.index.checked_add(1) == Some(index))
                .and_then(|last| {
                    let (segment_first_index, end) = self.end_of(last.index)?;
                    Some(SyncedMark {
                        segment_first_index,
                        end,
                        last_index: last.index,
                        last_term: last.term,
                        last_leader: last.leader,
                    })
                });
            self.mark.write(lowered)?;
        }
        while let Some(last) = self.segments.last() {
            if last.first_index < index {
                break;
            }
            fs::remove_file(&last.path)?;
            self.segments.pop();
            // One at a time: the removals must reach the disk in this order.
            sync_dir(&self.dir)?;
        }
        if let Some(last) = self.segments.last_mut()
            && let Ok(position) = usize::try_from(index - last.first_index)
            && let Some(&cut) = last.offsets.get(position)
        {
            last.file.set_len(cut)?;
            last.file.sync_all()?;
            last.offsets.truncate(position);
            last.end = cut;
        }
        Ok(())
    }

    /// Removes the segments that hold only indexes up to `index`. Records up to `index` in the
    /// segment that also holds later ones stay on disk; the caller no longer asks for them.
    pub(crate) fn remove_through(&mut self, index: u64) -> io::Result<()> {
        let mut removed = false;
        while let Some(first) = self.segments.first() {
            if first.last_index().is_some_and(|last| last > index) {
                break;
            }
            fs::remove_file(&first.path)?;
            self.segments.remove(0);
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The spans holding indexes `start..end` that the log has, in order: a gap or a range past
    /// the end just yields fewer records.
    pub(crate) fn locate(&self, start: u64, end: u64) -> Vec<Span> {
        let mut spans = Vec::new();
        for segment in &self.segments {
            let from = start.max(segment.first_index);
            let to = end.min(segment.next_index());
            if from >= to {
                continue;
            }
            // Both fit: they are within `offsets`, which is in memory.
            let (Ok(first), Ok(last)) = (
                usize::try_from(from - segment.first_index),
                usize::try_from(to - 1 - segment.first_index),
            ) else {
                continue;
            };
            spans.push(Span {
                file: segment.file.clone(),
                path: segment.path.clone(),
                format: segment.format,
                first_index: from,
                start: segment.offsets[first],
                end: segment.record_end(last),
                count: last - first + 1,
            });
        }
        spans
    }
}

enum ScanError {
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
fn scan(
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
        let after = records_after(format, &bytes, position, index);
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
        if !torn || reported_done.is_some() {
            let (last_index_after, last_record_after) = match after {
                Some(after) => (Some(after.last_index), Some(after.last_payload)),
                None => (None, None),
            };
            let last_index_after = match (last_index_after, reported_done) {
                (Some(after), Some(mark)) => Some(after.max(mark.last_index)),
                (after, mark) => after.or(mark.map(|mark| mark.last_index)),
            };
            return Err(ScanError::Damaged(Damage {
                segment: path,
                offset: position as u64,
                first_index: index,
                last_index_after,
                reason,
                last_record_after,
                synced_last: reported_done,
            }));
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
        file.sync_all()?;
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

/// The whole records found after a bad one.
struct RecordsAfter {
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
fn records_after(format: Format, bytes: &[u8], bad: usize, bad_index: u64) -> Option<RecordsAfter> {
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

/// A record parsed off the front of some bytes.
struct Record<'a> {
    payload: &'a [u8],
    /// Header and payload.
    size: usize,
    /// The index it says it holds (format 2).
    index: u64,
    /// The first and last index of the append that wrote it (format 2).
    append: Option<(u64, u64)>,
}

/// Parses one record off the front of `bytes`, which must hold index `index`.
fn parse_record(format: Format, bytes: &[u8], index: u64) -> Result<Record<'_>, &'static str> {
    let record = find_record_checked(format, bytes)?;
    if format.is_current() && record.index != index {
        // A write that landed at the wrong offset, or a record of another log.
        return Err("record holds another index than its place (a misdirected write)");
    }
    Ok(record)
}

fn find_record(format: Format, bytes: &[u8]) -> Option<Record<'_>> {
    find_record_checked(format, bytes).ok()
}

/// Parses one record off the front of `bytes`, checking its checksums, whatever index it holds.
fn find_record_checked(format: Format, bytes: &[u8]) -> Result<Record<'_>, &'static str> {
    match format {
        Format::V2 { salt } => parse_v2(salt, bytes),
        Format::V1 => parse_v1(bytes),
    }
}

fn parse_v2(salt: u64, bytes: &[u8]) -> Result<Record<'_>, &'static str> {
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

fn parse_v1(bytes: &[u8]) -> Result<Record<'_>, &'static str> {
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

/// The last index held by the segments after `damaged` in `dir`, by their names and a count of
/// their whole records, with that record's payload (for the damage report; they are not opened
/// for use).
fn segments_after(dir: &Path, damaged: &Path) -> io::Result<Option<(u64, Vec<u8>)>> {
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

/// Moves damaged records out of the log, keeping them for a post-mortem in `damaged/` beside
/// the segments: the damaged segment is copied there and cut back to its last whole record
/// before the damage, and every later segment is moved there. What remains opens cleanly (or
/// shows the next damage). The caller has recorded what was lost, durably, before.
pub(crate) fn set_aside(dir: &Path, damage: &Damage) -> io::Result<PathBuf> {
    // The caller recorded the loss; the mark, which may cover what is set aside, goes first.
    synced_mark::clear(dir)?;
    let (aside, kept_name) = aside_dir(dir)?;
    let damaged_first = segment_first_index(&damage.segment);
    // (Missing when the synced mark names a segment that is gone: nothing to keep or cut.)
    let present = damage.segment.exists();
    if present {
        fs::copy(&damage.segment, kept_name(&damage.segment))?;
        File::open(kept_name(&damage.segment))?.sync_all()?;
    }
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if segment_first_index(&path).is_some_and(|first| Some(first) > damaged_first) {
            fs::rename(&path, kept_name(&path))?;
        }
    }
    sync_dir(&aside)?;
    if present {
        let file = OpenOptions::new().write(true).open(&damage.segment)?;
        file.set_len(damage.offset)?;
        file.sync_all()?;
    }
    sync_dir(dir)?;
    Ok(aside)
}

/// Moves every segment out of the log into `damaged/` (when the state they were applied to is
/// lost and the log must come again from a leader, with a snapshot); the log is then empty.
pub(crate) fn set_aside_all(dir: &Path) -> io::Result<PathBuf> {
    synced_mark::clear(dir)?;
    let (aside, kept_name) = aside_dir(dir)?;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if segment_first_index(&path).is_some() {
            fs::rename(&path, kept_name(&path))?;
        }
    }
    sync_dir(&aside)?;
    sync_dir(dir)?;
    Ok(aside)
}

/// `damaged/` in `dir`, created, and the name a file set aside there gets.
fn aside_dir(dir: &Path) -> io::Result<(PathBuf, impl Fn(&Path) -> PathBuf)> {
    let aside = dir.join(DAMAGED_DIR);
    fs::create_dir_all(&aside)?;
    // Nanoseconds: a set-aside again soon after (a crash loop) must not overwrite this one.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    let kept_in = aside.clone();
    let kept_name = move |path: &Path| {
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        kept_in.join(format!("{name}.{stamp}"))
    };
    Ok((aside, kept_name))
}

fn segment_file_name(first_index: u64) -> String {
    format!("{first_index:020}.seg")
}

fn segment_first_index(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// CRC-32 of the segment's salt and a record header's first 32 bytes.
fn header_crc(salt: u64, header: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&salt.to_le_bytes());
    hasher.update(header);
    hasher.finalize()
}

/// Makes file creations and removals in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn corrupt(path: &Path, offset: u64, why: &str) -> io::Error {
    io::Error::new(
        ErrorKind::InvalidData,
        format!(
            "Raft log segment {} at byte {offset}: {why}",
            path.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(segments: &mut Segments, first_index: u64, payloads: &[&[u8]]) {
        let target = segments.prepare_append(first_index).expect("prepare");
        let mut encoded = Vec::new();
        let lengths = target.encode(payloads, &mut encoded).expect("encode");
        let last = LastEntry {
            index: first_index + payloads.len() as u64 - 1,
            term: 1,
            leader: 1,
        };
        target.write_and_sync(&encoded, last).expect("write");
        segments.finish_append(&target, &lengths);
    }

    /// The mark's view of entry `index` (every test entry is of term 1, led by node 1).
    fn entry(index: u64) -> LastEntry {
        LastEntry {
            index,
            term: 1,
            leader: 1,
        }
    }

    /// An append whose records were written and synced, and whose synced mark was not (the
    /// crash came in between): it was never reported done, so a tear of it is a torn tail.
    fn append_unreported(segments: &mut Segments, first_index: u64, payloads: &[&[u8]]) {
        let target = segments.prepare_append(first_index).expect("prepare");
        let mut encoded = Vec::new();
        let lengths = target.encode(payloads, &mut encoded).expect("encode");
        target
            .file
            .write_all_at(&encoded, target.offset)
            .expect("write");
        target.file.sync_data().expect("sync");
        segments.finish_append(&target, &lengths);
    }

    fn read(segments: &Segments, start: u64, end: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for span in segments.locate(start, end) {
            span.read(|payload| {
                out.push(payload.to_vec());
                Ok(())
            })
            .expect("read");
        }
        out
    }

    /// The salt of the segment at `path`.
    fn salt_of(path: &Path) -> u64 {
        match Format::of(&fs::read(path).expect("read")) {
            Some((Format::V2 { salt }, _)) => salt,
            _ => panic!("not a format 2 segment"),
        }
    }

    fn payload(index: u64) -> Vec<u8> {
        format!("entry {index}").into_bytes()
    }

    /// Appends indexes `from..to`, one record per append.
    fn fill(segments: &mut Segments, from: u64, to: u64) {
        for index in from..to {
            append(segments, index, &[&payload(index)]);
        }
    }

    fn expected(from: u64, to: u64) -> Vec<Vec<u8>> {
        (from..to).map(payload).collect()
    }

    fn segment_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".seg"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn records_survive_reopening_across_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Tiny segments: every few records start a new one.
        let mut segments = Segments::open(dir.path(), None, 64).expect("open");
        fill(&mut segments, 1, 20);
        assert!(segment_files(dir.path()).len() > 3);
        assert_eq!(read(&segments, 3, 17), expected(3, 17));
        drop(segments);

        let segments = Segments::open(dir.path(), None, 64).expect("reopen");
        assert_eq!(segments.first_index(), Some(1));
        assert_eq!(segments.last_index(), Some(19));
        assert_eq!(read(&segments, 0, 100), expected(1, 20));
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_appending_continues() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES).expect("open");
        fill(&mut segments, 1, 4);
        drop(segments);
        // A crash mid-append: half of a record's header and payload reached the disk.
        let path = dir.path().join(segment_file_name(1));
        let mut torn = Vec::new();
        encode_records(salt_of(&path), 4, &[payload(4)], &mut torn).expect("encode");
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(&torn[..torn.len() / 2]).expect("write");
        drop(file);

        let mut segments = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES).expect("reopen");
        assert_eq!(segments.last_index(), Some(3));
        fill(&mut segments, 4, 6);
        drop(segments);
        let segments = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES).expect("reopen");
        assert_eq!(read(&segments, 1, 6), expected(1, 6));
    }

    #[test]
    fn damage_before_the_end_is_an_error_naming_the_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = Segments::open(dir.path(), None, 64).expect("open");
        fill(&mut segments, 1, 20);
        drop(segments);
        // Flip a payload byte of the first record of the first segment.
        let path = dir.path().join(segment_file_name(1));
        let mut bytes = fs::read(&path).expect("read");
        let at = SEGMENT_HEADER + RECORD_HEADER;
        bytes[at] ^= 0xff;
        fs::write(&path, bytes).expect("write");

        let err = Segments::open(dir.path(), None, 64)
            .err()
            .expect("a damaged record before the end must fail the open");
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        assert!(err.to_string().contains("checksum"), "{err}");
        assert!(err.to_string().contains(&segment_file_name(1)), "{err}");
    }

    /// Offset of record `position` (0-based) in a segment written by `fill`.
    fn record_offset(path: &Path, position: usize) -> usize {
        let bytes = fs::read(path).expect("read");
        let (format, mut at) = Format::of(&bytes).expect("a segment header");
        for _ in 0..position {
            at += find_record_checked(format, &bytes[at..])
                .expect("record")
                .size;
        }
        at
    }

    #[test]
    fn damage_inside_the_last_segment_is_an_error_not_a_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES).expect("open");
        fill(&mut segments, 1, 20);
        drop(segments);
        // Records after the damaged one were synced (and maybe acknowledged): cutting them off
        // silently would make a voter forget them.
        let path = dir.path().join(segment_file_name(1));
        let at = record_offset(&path, 3) + RECORD_HEADER;
        let mut bytes = fs::read(&path).expect("read");
        bytes[at] ^= 0xff;
        fs::write(&path, bytes).expect("write");

        let err = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES)
            .err()
            .expect("damage followed by whole records must fail the open");
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn a_damaged_last_record_and_zeros_at_the_end_are_torn_tails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES).expect("open");
        fill(&mut segments, 1, 5);
        append_unreported(&mut segments, 5, &[&payload(5)]);
        drop(segments);
        let path = dir.path().join(segment_file_name(1));

        // The last record complete in length but not in content.
        let at = record_offset(&path, 4) + RECORD_HEADER;
        let mut bytes = fs::read(&path).expect("read");
        bytes[at] ^= 0xff;
        fs::write(&path, bytes).expect("write");
        let segments = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES).expect("reopen");
        assert_eq!(segments.last_index(), Some(4));
        drop(segments);

        // Zeros where an append's bytes never arrived: no record (a record is never empty).
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(&[0; 64]).expect("write");
        drop(file);
        let segments = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES).expect("reopen");
        assert_eq!(segments.last_index(), Some(4));
        assert_eq!(read(&segments, 0, 100), expected(1, 5));
    }

    fn damage_of(err: &io::Error) -> Damage {
        Damage::of(err)
            .unwrap_or_else(|| panic!("not a damage report: {err}"))
            .clone()
    }

    /// The case: one bit that enlarges a length field in the middle of the last segment
    /// made the old format cut every later record of it as a "torn tail".
    #[test]
    fn an_enlarged_length_field_in_the_last_segment_is_damage_naming_the_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES).expect("open");
        fill(&mut segments, 1, 101);
        drop(segments);
        let path = dir.path().join(segment_file_name(1));
        let at = record_offset(&path, 49);
        let mut bytes = fs::read(&path).expect("read");
        let length = bytes.len();
        // The length's third byte: the record now claims to run far past the end of the file.
        bytes[at + 2] |= 0x10;
        fs::write(&path, bytes).expect("write");

        let err = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES)
            .err()
            .expect("damage followed by whole records must fail the open");
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        let damage = damage_of(&err);
        assert_eq!(damage.first_index, 50);
        assert_eq!(damage.last_index_after, Some(100));
        assert_eq!(damage.offset, at as u64);
        assert!(err.to_string().contains("50..=100"), "{err}");
        // Nothing was cut.
        assert_eq!(fs::read(&path).expect("read").len(), length);
    }

    #[test]
    fn a_multi_record_append_torn_out_of_order_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES).expect("open");
        fill(&mut segments, 1, 6);
        let last = [payload(6), payload(7), payload(8)];
        append_unreported(&mut segments, 6, &[&last[0], &last[1], &last[2]]);
        drop(segments);
        // The disk wrote the append's later sectors and not its first: record 6 is zeros,
        // 7 and 8 are whole. Nothing of that append was acknowledged (one fdatasync for all).
        let path = dir.path().join(segment_file_name(1));
        let from = record_offset(&path, 5);
        let to = record_offset(&path, 6);
        let mut bytes = fs::read(&path).expect("read");
        bytes[from..to].fill(0);
        fs::write(&path, bytes).expect("write");

        let mut segments = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES)
            .expect("a torn append is cut, not reported as damage");
        assert_eq!(segments.last_index(), Some(5));
        fill(&mut segments, 6, 8);
        assert_eq!(read(&segments, 0, 100), expected(1, 8));
    }

    /// The case a record's own bytes cannot tell: the last append's bytes lost (zeros, the
    /// file's length kept) by a disk that acknowledged its fsync. The synced mark says it was
    /// reported done, so it is damage, not a torn tail.
    #[test]
    fn a_lost_last_append_reported_done_is_damage_not_a_tear() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES).expect("open");
        fill(&mut segments, 1, 6);
        drop(segments);
        let path = dir.path().join(segment_file_name(1));
        let from = record_offset(&path, 4);
        let mut bytes = fs::read(&path).expect("read");
        let length = bytes.len();
        bytes[from..].fill(0);
        fs::write(&path, bytes).expect("write");

        let err = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES)
            .err()
            .expect("a lost append that was reported done is damage");
        let damage = damage_of(&err);
        assert_eq!((damage.first_index, damage.last_index_after), (5, Some(5)));
        assert_eq!(damage.synced_last.map(|mark| mark.last_index), Some(5));
        assert!(
            err.to_string().contains("may have been acknowledged"),
            "{err}"
        );
        assert_eq!(fs::read(&path).expect("read").len(), length, "nothing cut");
    }

    /// The same loss with the file's new length lost too: the segment reads whole, and ends
    /// before the mark.
    #[test]
    fn a_segment_shorter_than_the_synced_mark_is_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES).expect("open");
        fill(&mut segments, 1, 6);
        drop(segments);
        let path = dir.path().join(segment_file_name(1));
        let cut = record_offset(&path, 3);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open")
            .set_len(cut as u64)
            .expect("cut");

        let err = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES)
            .err()
            .expect("a segment shorter than the mark is damage");
        let damage = damage_of(&err);
        assert_eq!((damage.first_index, damage.last_index_after), (4, Some(5)));
        assert_eq!(damage.offset, cut as u64);

        // Set aside (as a repair does), the mark is cleared with it: the log opens, shorter.
        set_aside(dir.path(), &damage).expect("set aside");
        let segments = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES).expect("reopen");
        assert_eq!(segments.last_index(), Some(3));
    }

    #[test]
    fn a_truncation_clears_the_mark_so_the_removed_entries_are_not_taken_for_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = Segments::open(dir.path(), None, 64).expect("open");
        fill(&mut segments, 1, 12);
        segments.truncate(6, Some(entry(5))).expect("truncate");
        drop(segments);
        let mut segments = Segments::open(dir.path(), None, 64).expect("reopen");
        assert_eq!(segments.last_index(), Some(5));
        fill(&mut segments, 6, 8);
        drop(segments);
        let segments = Segments::open(dir.path(), None, 64).expect("reopen");
        assert_eq!(read(&segments, 0, 100), expected(1, 8));
        drop(segments);

        // The mark was lowered to the new end, not dropped: the entry kept at the end, lost
        // after the truncation, is still damage, not a tear.
        let mut segments = Segments::open(dir.path(), None, 64).expect("reopen");
        segments.truncate(7, Some(entry(6))).expect("truncate");
        let (first, end) = segments.end_of(6).expect("entry 6 is held");
        drop(segments);
        let path = dir.path().join(segment_file_name(first));
        let start = usize::try_from(end).expect("end") - payload(6).len();
        let mut bytes = fs::read(&path).expect("read");
        bytes[start..].fill(0);
        fs::write(&path, bytes).expect("write");
        let err = Segments::open(dir.path(), None, 64)
            .err()
            .expect("the kept last entry, lost, is damage");
        assert_eq!(
            damage_of(&err).synced_last.map(|mark| mark.last_index),
            Some(6)
        );
    }

    #[test]
    fn a_lost_record_followed_by_a_later_append_is_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES).expect("open");
        fill(&mut segments, 1, 8);
        drop(segments);
        // Record 5's bytes never reached the disk (a lost write), though later appends did:
        // they were synced after it, so it was synced too, and may have been acknowledged.
        let path = dir.path().join(segment_file_name(1));
        let from = record_offset(&path, 4);
        let to = record_offset(&path, 5);
        let mut bytes = fs::read(&path).expect("read");
        bytes[from..to].fill(0);
        fs::write(&path, bytes).expect("write");

        let err = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES)
            .err()
            .expect("a lost record before later appends is damage");
        let damage = damage_of(&err);
        assert_eq!((damage.first_index, damage.last_index_after), (5, Some(7)));
    }

    #[test]
    fn a_misdirected_write_is_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES).expect("open");
        fill(&mut segments, 1, 8);
        drop(segments);
        // Record 3's bytes written over record 2's place (same size): both checksums pass.
        let path = dir.path().join(segment_file_name(1));
        let (two, three, four) = (
            record_offset(&path, 1),
            record_offset(&path, 2),
            record_offset(&path, 3),
        );
        let mut bytes = fs::read(&path).expect("read");
        let copy = bytes[three..four].to_vec();
        bytes[two..three].copy_from_slice(&copy);
        fs::write(&path, bytes).expect("write");

        let err = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES)
            .err()
            .expect("a record at another index's place is damage");
        let damage = damage_of(&err);
        assert_eq!(damage.first_index, 2);
        assert!(damage.reason.contains("misdirected"), "{damage}");
    }

    #[test]
    fn damage_after_the_open_is_reported_on_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES).expect("open");
        fill(&mut segments, 1, 8);
        let path = dir.path().join(segment_file_name(1));
        let at = record_offset(&path, 3) + RECORD_HEADER;
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.write_all_at(b"X", at as u64).expect("write");
        let span = segments.locate(1, 8).pop().expect("span");
        let err = span
            .read(|_| Ok(()))
            .expect_err("a bad record is not served");
        assert_eq!(damage_of(&err).first_index, 4);
    }

    #[test]
    fn an_append_after_a_truncation_torn_out_of_order_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES).expect("open");
        fill(&mut segments, 1, 4);
        let five = [payload(4), payload(5), payload(6), payload(7), payload(8)];
        append(
            &mut segments,
            4,
            &[&five[0], &five[1], &five[2], &five[3], &five[4]],
        );
        // A new leader replaces 6..: records 4 and 5 keep the append range 4..=8.
        segments.truncate(6, Some(entry(5))).expect("truncate");
        let three = [payload(6), payload(7), payload(8)];
        append_unreported(&mut segments, 6, &[&three[0], &three[1], &three[2]]);
        drop(segments);
        // That append torn out of order: 6 never written, 7 and 8 whole.
        let path = dir.path().join(segment_file_name(1));
        let (from, to) = (record_offset(&path, 5), record_offset(&path, 6));
        let mut bytes = fs::read(&path).expect("read");
        bytes[from..to].fill(0);
        fs::write(&path, bytes).expect("write");

        let segments = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES)
            .expect("an unacknowledged append torn out of order is cut");
        assert_eq!(segments.last_index(), Some(5));
    }

    /// A payload is bytes a client chose (a signed packet): one that holds a record, header
    /// checksum and all, must not pass for a whole record after a torn tail. The segment's
    /// random salt, in every header checksum, is what a client cannot know.
    #[test]
    fn a_record_inside_a_payload_does_not_count_as_a_whole_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES).expect("open");
        fill(&mut segments, 1, 4);
        // A record of a later append as a client would forge it, with another salt.
        let mut forged = Vec::new();
        encode_records(12345, 1_000, &[b"forged".as_slice()], &mut forged).expect("encode");
        let mut carrier = b"packet:".to_vec();
        carrier.extend_from_slice(&forged);
        append_unreported(&mut segments, 4, &[&carrier]);
        drop(segments);
        // The carrier's own header is torn (a crash during that append).
        let path = dir.path().join(segment_file_name(1));
        let at = record_offset(&path, 3);
        let mut bytes = fs::read(&path).expect("read");
        bytes[at..at + 8].fill(0);
        fs::write(&path, bytes).expect("write");

        let segments = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES)
            .expect("a torn tail, whatever its payload holds");
        assert_eq!(segments.last_index(), Some(3));
    }

    /// Format 1 segments, written before the format carried indexes and header checksums.
    fn write_v1_segment(dir: &Path, first_index: u64, payloads: &[Vec<u8>]) -> PathBuf {
        let mut bytes = MAGIC_V1.to_vec();
        for payload in payloads {
            let len = payload.len() as u32;
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&len.to_le_bytes());
            hasher.update(payload);
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&hasher.finalize().to_le_bytes());
            bytes.extend_from_slice(payload);
        }
        let path = dir.join(segment_file_name(first_index));
        fs::write(&path, bytes).expect("write");
        path
    }

    #[test]
    fn format_1_segments_are_read_and_appends_go_to_a_new_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_v1_segment(dir.path(), 1, &expected(1, 6));
        let mut segments = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES).expect("open");
        assert_eq!(read(&segments, 0, 100), expected(1, 6));
        fill(&mut segments, 6, 9);
        assert_eq!(
            segment_files(dir.path()),
            [segment_file_name(1), segment_file_name(6)]
        );
        drop(segments);
        let segments = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES).expect("reopen");
        assert_eq!(read(&segments, 0, 100), expected(1, 9));
    }

    #[test]
    fn an_enlarged_length_in_a_format_1_segment_is_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_v1_segment(dir.path(), 1, &expected(1, 21));
        let mut bytes = fs::read(&path).expect("read");
        // Record 10 (0-based 9): every record before it is 8 bytes of header and 7 or 8 of
        // payload ("entry N").
        let at = MAGIC_LEN
            + (0..9)
                .map(|i| RECORD_HEADER_V1 + payload(i + 1).len())
                .sum::<usize>();
        bytes[at + 2] |= 0x10;
        fs::write(&path, bytes).expect("write");
        let err = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES)
            .err()
            .expect("whole records follow: damage, not a tear");
        let damage = damage_of(&err);
        assert_eq!(damage.first_index, 10);
        assert!(
            damage.last_index_after.is_some_and(|last| last > 10),
            "{damage}"
        );
    }

    #[test]
    fn a_zeroed_last_segment_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = Segments::open(dir.path(), None, 64).expect("open");
        fill(&mut segments, 1, 4);
        drop(segments);
        fs::write(dir.path().join(segment_file_name(4)), [0u8; 16]).expect("write");
        let segments = Segments::open(dir.path(), None, 64).expect("reopen");
        assert_eq!(segments.last_index(), Some(3));
        assert!(!dir.path().join(segment_file_name(4)).exists());
    }

    #[test]
    fn a_missing_segment_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = Segments::open(dir.path(), None, 64).expect("open");
        fill(&mut segments, 1, 20);
        drop(segments);
        let files = segment_files(dir.path());
        fs::remove_file(dir.path().join(&files[1])).expect("remove");
        let err = Segments::open(dir.path(), None, 64)
            .err()
            .expect("a gap must fail the open");
        assert!(err.to_string().contains("entries are missing"), "{err}");
    }

    #[test]
    fn truncate_removes_the_tail_durably() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = Segments::open(dir.path(), None, 64).expect("open");
        fill(&mut segments, 1, 20);
        segments.truncate(7, Some(entry(6))).expect("truncate");
        assert_eq!(segments.last_index(), Some(6));
        assert_eq!(read(&segments, 0, 100), expected(1, 7));
        // The next append continues at the cut, in the segment that held index 6 or a new one.
        fill(&mut segments, 7, 9);
        drop(segments);
        let segments = Segments::open(dir.path(), None, 64).expect("reopen");
        assert_eq!(read(&segments, 0, 100), expected(1, 9));
    }

    #[test]
    fn truncating_everything_leaves_an_empty_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = Segments::open(dir.path(), None, 64).expect("open");
        fill(&mut segments, 5, 12);
        segments.truncate(5, Some(entry(4))).expect("truncate");
        assert_eq!(segments.last_index(), None);
        assert!(segment_files(dir.path()).is_empty());
        fill(&mut segments, 5, 7);
        assert_eq!(read(&segments, 0, 100), expected(5, 7));
    }

    #[test]
    fn purging_removes_whole_segments_and_an_interrupted_purge_finishes_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = Segments::open(dir.path(), None, 64).expect("open");
        fill(&mut segments, 1, 20);
        let before = segment_files(dir.path()).len();
        segments.remove_through(10).expect("purge");
        let after = segment_files(dir.path()).len();
        assert!(after < before, "{before} -> {after}");
        let first = segments.first_index().expect("records remain");
        assert!(first <= 11, "index 11 is still held: first is {first}");
        assert_eq!(read(&segments, 11, 20), expected(11, 20));
        drop(segments);

        // The purge point was recorded but the segments were not removed yet (a crash): the
        // open removes them.
        let segments = Segments::open(dir.path(), Some(15), 64).expect("reopen");
        assert!(segments.first_index().is_some_and(|first| first <= 16));
        assert!(segment_files(dir.path()).len() < after);
        assert_eq!(read(&segments, 16, 20), expected(16, 20));
    }

    #[test]
    fn a_purge_past_the_end_lets_the_log_restart_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = Segments::open(dir.path(), None, SEGMENT_TARGET_BYTES).expect("open");
        fill(&mut segments, 1, 5);
        // Installing a snapshot purges past the last entry; the log continues after it.
        segments.remove_through(100).expect("purge");
        assert_eq!(segments.last_index(), None);
        fill(&mut segments, 101, 103);
        assert!(segments.prepare_append(200).is_err(), "appends must follow");
        drop(segments);
        let segments = Segments::open(dir.path(), Some(100), SEGMENT_TARGET_BYTES).expect("reopen");
        assert_eq!(read(&segments, 0, 1000), expected(101, 103));
    }

    #[test]
    fn a_segment_cut_inside_its_header_is_dropped_when_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = Segments::open(dir.path(), None, 64).expect("open");
        fill(&mut segments, 1, 4);
        drop(segments);
        // A crash while the next segment was being created.
        fs::write(dir.path().join(segment_file_name(4)), &MAGIC[..3]).expect("write");
        let mut segments = Segments::open(dir.path(), None, 64).expect("reopen");
        assert_eq!(segments.last_index(), Some(3));
        fill(&mut segments, 4, 6);
        assert_eq!(read(&segments, 0, 100), expected(1, 6));
    }
}
