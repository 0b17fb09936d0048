//! Append-only segment files: where the Raft log keeps its entries.
//!
//! Every PUT waits for one log append, so its latency bounds the commit pipeline. As a redb
//! commit, an append copied B-tree pages and took ≈ 1.6 ms under load; as a write at the end of a
//! file and one `fdatasync` it takes ≈ 0.2 ms on the same disk (docs/BENCHMARKS.md).
//!
//! A segment is `<first index, 20 digits>.seg` in the log directory: [`MAGIC`], then records of
//! `payload length (u32 LE) ‖ CRC-32 of length and payload (u32 LE) ‖ payload` (never empty, so
//! zeroed bytes are no record); record `i` holds log index
//! `first + i`. Payloads are opaque here (the log store puts postcard-encoded entries in them).
//! The segments together hold one contiguous run of indexes. A new segment starts when the last
//! one reaches the target size or the next index does not follow it (after the log was purged
//! past its end).
//!
//! Crash safety:
//! - An append is reported done only after `fdatasync`; a new segment's header and directory
//!   entry are synced before anything is appended to it.
//! - A crash mid-append leaves a torn record at the end of the last segment. It was never
//!   acknowledged, so opening cuts the segment back to its last whole record: when the bad record
//!   runs past the end of the file, is the file's last record, or is followed only by zeros (as
//!   etcd's WAL repair does, for the same shapes). A bad record anywhere else is corruption and
//!   fails the open: it was synced before what follows it, which may have been acknowledged.
//! - Truncation removes whole segments from the last one backwards, syncing the directory after
//!   each, and then cuts the one holding the new end, so a crash in between leaves a prefix of
//!   the old log (as if it had not run).
//!   Purging removes whole segments from the first one forwards, after the caller has recorded
//!   the purge point, so leftovers of an interrupted purge are removed at the next open.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The first bytes of every segment: the format name and its version.
const MAGIC: &[u8; 8] = b"PKRLOG1\0";
const RECORD_HEADER: usize = 8;
/// Size at which the next append starts a new segment. Purging frees disk a whole segment at a
/// time, so this is also roughly how much purged log a node keeps on disk.
pub(crate) const SEGMENT_TARGET_BYTES: u64 = 64 * 1024 * 1024;
/// No record is larger (a log entry holds at most one publish batch, a few MiB); a larger length
/// field is garbage, not a record.
const RECORD_MAX: u32 = 256 * 1024 * 1024;

/// The segments of one log directory, with the offset of every record.
pub(crate) struct Segments {
    dir: PathBuf,
    target_bytes: u64,
    /// Ascending by first index, contiguous.
    segments: Vec<Segment>,
}

struct Segment {
    first_index: u64,
    path: PathBuf,
    file: Arc<File>,
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
}

impl AppendTarget {
    /// Writes `encoded` (from [`encode_records`]) at the end of the segment and syncs it.
    pub(crate) fn write_and_sync(&self, encoded: &[u8]) -> io::Result<()> {
        let written = self
            .file
            .write_all_at(encoded, self.offset)
            .and_then(|()| self.file.sync_data());
        if written.is_err() {
            // Leave no partial record behind the last good one: once a later segment exists,
            // the open would take it for damage rather than a torn tail.
            let _ = self.file.set_len(self.offset);
        }
        written
    }
}

/// One contiguous run of records in one segment, from [`Segments::locate`].
pub(crate) struct Span {
    file: Arc<File>,
    path: PathBuf,
    start: u64,
    end: u64,
    count: usize,
}

impl Span {
    /// Reads the span and calls `each` with every record's payload, checking each checksum.
    pub(crate) fn read(&self, mut each: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        let len = usize::try_from(self.end - self.start)
            .map_err(|_| corrupt(&self.path, self.start, "span larger than memory"))?;
        let mut buffer = vec![0; len];
        self.file.read_exact_at(&mut buffer, self.start)?;
        let mut rest = buffer.as_slice();
        for _ in 0..self.count {
            let (payload, after) = parse_record(rest)
                .map_err(|why| corrupt(&self.path, self.end - rest.len() as u64, why))?;
            each(payload)?;
            rest = after;
        }
        Ok(())
    }
}

/// Appends the framing of each payload and the payload to `out`, for
/// [`AppendTarget::write_and_sync`]; returns each record's length.
pub(crate) fn encode_records<'a>(
    payloads: impl IntoIterator<Item = &'a [u8]>,
    out: &mut Vec<u8>,
) -> io::Result<Vec<u64>> {
    let mut lengths = Vec::new();
    for payload in payloads {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|len| *len <= RECORD_MAX)
            .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "log record too large"))?;
        if len == 0 {
            return Err(io::Error::new(ErrorKind::InvalidInput, "empty log record"));
        }
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&record_checksum(len, payload).to_le_bytes());
        out.extend_from_slice(payload);
        lengths.push((RECORD_HEADER + payload.len()) as u64);
    }
    Ok(lengths)
}

impl Segments {
    /// Opens the segments in `dir` (creating it), with a new segment started whenever the last
    /// one reaches `target_bytes`. Segments that only hold indexes up to `purged` are removed
    /// (the rest of an interrupted purge), a torn record at the end of the last segment is cut
    /// off, and any other damage is an error naming the file.
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
        let mut segments = Segments {
            dir: dir.to_path_buf(),
            target_bytes,
            segments: Vec::with_capacity(found.len()),
        };
        let count = found.len();
        for (position, (first_index, path)) in found.into_iter().enumerate() {
            let is_last = position + 1 == count;
            let segment = scan(first_index, path, is_last)?;
            segments.segments.push(segment);
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
                return Err(corrupt(
                    &pair[1].path,
                    0,
                    &format!(
                        "the previous segment ends before index {}: entries are missing",
                        pair[0].next_index()
                    ),
                ));
            }
        }
        sync_dir(dir)?;
        Ok(segments)
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
    /// its directory entry) when the last one is full or empty or the index does not follow it.
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
        let full = self
            .segments
            .last()
            .is_some_and(|last| last.end >= self.target_bytes);
        if !follows || full {
            let path = self.dir.join(segment_file_name(first_index));
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?;
            file.write_all(MAGIC)?;
            file.sync_all()?;
            sync_dir(&self.dir)?;
            self.segments.push(Segment {
                first_index,
                path,
                file: Arc::new(file),
                offsets: Vec::new(),
                end: MAGIC.len() as u64,
            });
        }
        let last = self
            .segments
            .last()
            .ok_or_else(|| io::Error::other("no segment to append to"))?;
        Ok(AppendTarget {
            file: last.file.clone(),
            offset: last.end,
            first_index,
        })
    }

    /// Publishes records written through `target`, of the given lengths (from
    /// [`encode_records`]), once they are synced.
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

    /// Removes the records from `index` on, durably.
    pub(crate) fn truncate(&mut self, index: u64) -> io::Result<()> {
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
                start: segment.offsets[first],
                end: segment.record_end(last),
                count: last - first + 1,
            });
        }
        spans
    }
}

/// Reads a segment, checking every record, and cuts a torn tail off the last segment.
fn scan(first_index: u64, path: PathBuf, is_last: bool) -> io::Result<Segment> {
    let file = OpenOptions::new().read(true).write(true).open(&path)?;
    let bytes = fs::read(&path)?;
    if bytes.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
        // Cut inside the header, or never written: the crash came while the segment was being
        // created, before anything was appended to it.
        let unwritten = MAGIC.starts_with(&bytes) || bytes.iter().all(|b| *b == 0);
        if is_last && unwritten {
            return Ok(Segment {
                first_index,
                path,
                file: Arc::new(file),
                offsets: Vec::new(),
                end: 0,
            });
        }
        return Err(corrupt(&path, 0, "not a pkraft log segment"));
    }
    let mut offsets = Vec::new();
    let mut position = MAGIC.len();
    while position < bytes.len() {
        let rest = &bytes[position..];
        match parse_record(rest) {
            Ok((payload, _)) => {
                offsets.push(position as u64);
                position += RECORD_HEADER + payload.len();
            }
            Err(why) if is_last && is_torn_tail(rest) => {
                tracing::warn!(
                    segment = %path.display(),
                    offset = position,
                    bytes = rest.len(),
                    reason = why,
                    "cutting off a torn record at the end of the Raft log (an append interrupted by a crash; it was never acknowledged)"
                );
                file.set_len(position as u64)?;
                file.sync_all()?;
                break;
            }
            Err(why) => return Err(corrupt(&path, position as u64, why)),
        }
    }
    Ok(Segment {
        first_index,
        path,
        file: Arc::new(file),
        offsets,
        end: position as u64,
    })
}

/// Whether `rest`, which starts with a bad record, looks like an append a crash interrupted
/// rather than damage to synced data: the record runs past the end of the file, or it is the
/// file's last record, or only zeros follow its start.
fn is_torn_tail(rest: &[u8]) -> bool {
    let Some(header) = rest.get(..RECORD_HEADER) else {
        return true;
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let runs_to_the_end = RECORD_HEADER.saturating_add(len) >= rest.len();
    runs_to_the_end || rest.iter().all(|b| *b == 0)
}

/// Splits one record off the front of `bytes`: its payload and what follows.
fn parse_record(bytes: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    let header: &[u8; RECORD_HEADER] = bytes
        .get(..RECORD_HEADER)
        .and_then(|h| h.try_into().ok())
        .ok_or("record header cut short")?;
    let [l0, l1, l2, l3, c0, c1, c2, c3] = *header;
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    if len == 0 || len > RECORD_MAX {
        return Err("record length out of range");
    }
    let end = RECORD_HEADER + len as usize;
    let payload = bytes
        .get(RECORD_HEADER..end)
        .ok_or("record payload cut short")?;
    if record_checksum(len, payload) != crc {
        return Err("record checksum mismatch");
    }
    Ok((payload, &bytes[end..]))
}

/// CRC-32 of a record's length field and payload: a length damaged into another plausible value
/// does not pass.
fn record_checksum(len: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
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
        let lengths = encode_records(payloads.iter().copied(), &mut encoded).expect("encode");
        target.write_and_sync(&encoded).expect("write");
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
        encode_records([payload(4).as_slice()], &mut torn).expect("encode");
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
        let at = MAGIC.len() + RECORD_HEADER;
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
        let mut at = MAGIC.len();
        for _ in 0..position {
            let (payload, _) = parse_record(&bytes[at..]).expect("record");
            at += RECORD_HEADER + payload.len();
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
        fill(&mut segments, 1, 6);
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
        segments.truncate(7).expect("truncate");
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
        segments.truncate(5).expect("truncate");
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
