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
//! The record format is `record.rs`'s; the open's reading of every record, which tells a crash
//! from damage, is `scan.rs`'s; damage and setting it aside are `damage.rs`'s. A new segment
//! takes a file zero-filled ahead of time when one is ready (`spare.rs`), so that an append's
//! `fdatasync` does not also write a new file size; the last segment's zeros after its records
//! are space never written, and a segment is cut to its records before the next one starts.
//!
//! Crash safety:
//! - An append is one write and one `fdatasync`, reported done only after both; appends never
//!   overlap, and a new segment's header and directory entry are synced before anything is
//!   appended to it. So a crash can only leave the *last append* of the *last segment* short.
//! - Truncation removes whole segments from the last one backwards, syncing the directory after
//!   each, and then cuts the one holding the new end, so a crash in between leaves a prefix of
//!   the old log (as if it had not run).
//!   Purging removes whole segments from the first one forwards, after the caller has recorded
//!   the purge point, so leftovers of an interrupted purge are removed at the next open.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pkraft_types::planted::{self, PlantedBug};

use super::damage::{Damage, corrupt};
#[cfg(test)]
use super::record::encode_records;
use super::record::{Format, MAGIC, SEGMENT_HEADER, encode_records_with, parse_record};
use super::scan::{ScanError, scan, segments_after};
use super::segment_file::{Segment, segment_file_name, segment_first_index};
use super::spare::Spare;
use super::synced_mark::{MarkFile, SyncedMark};
use crate::sync_dir;

/// Size at which the next append starts a new segment. Purging frees disk a whole segment at a
/// time, so this is also roughly how much purged log a node keeps on disk.
pub(crate) const SEGMENT_TARGET_BYTES: u64 = 64 * 1024 * 1024;

/// How a log directory's segments are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// The size at which the next append starts a new segment.
    pub(crate) target_bytes: u64,
    /// Whether a new segment takes a file zero-filled ahead of time (`spare.rs`). Off where a
    /// test lays files out byte by byte: when a spare is ready depends on a thread's timing.
    pub(crate) preallocate: bool,
}

impl Layout {
    /// Segments of `target_bytes`, made as the appends come.
    pub(crate) fn new(target_bytes: u64) -> Layout {
        Layout {
            target_bytes,
            preallocate: false,
        }
    }

    /// Segments of `target_bytes`, each zero-filled ahead of time (the log's own).
    pub(crate) fn preallocated(target_bytes: u64) -> Layout {
        Layout {
            target_bytes,
            preallocate: true,
        }
    }
}

/// The segments of one log directory, with the offset of every record.
pub(crate) struct Segments {
    dir: PathBuf,
    layout: Layout,
    /// Ascending by first index, contiguous.
    segments: Vec<Segment>,
    /// Where the last append reported done ended (`synced_mark`).
    mark: Arc<MarkFile>,
    /// The next segment's file, zero-filled ahead of time (`spare.rs`), with
    /// `Layout::preallocate`.
    spare: Option<Spare>,
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
    #[cfg(test)]
    pub(crate) fn encode<P: AsRef<[u8]>>(
        &self,
        payloads: &[P],
        out: &mut Vec<u8>,
    ) -> io::Result<Vec<u64>> {
        encode_records(self.salt, self.first_index, payloads, out)
    }

    /// [`AppendTarget::encode`] of `count` records whose payloads `write_payload` writes in
    /// place (see [`encode_records_with`]).
    pub(crate) fn encode_with(
        &self,
        count: usize,
        out: &mut Vec<u8>,
        write_payload: impl FnMut(usize, &mut Vec<u8>) -> io::Result<()>,
    ) -> io::Result<Vec<u64>> {
        encode_records_with(self.salt, self.first_index, count, out, write_payload)
    }

    /// Writes `encoded` (from [`AppendTarget::encode`]) at the end of the segment and syncs it,
    /// then sets the synced mark to its end (`last`: the append's last entry), durably. Only
    /// then may the append be reported done.
    pub(crate) fn write_and_sync(&self, encoded: &[u8], last: LastEntry) -> io::Result<()> {
        let written = self.file.write_all_at(encoded, self.offset).and_then(|()| {
            if planted::is_planted(PlantedBug::AppendDoneBeforeFsync) {
                return Ok(());
            }
            pkraft_types::world::sync_data(&self.file)
        });
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

impl Segments {
    /// Opens the segments in `dir` (creating it), with a new segment started whenever the last
    /// one reaches `target_bytes`. Segments that only hold indexes up to `purged` are removed
    /// (the rest of an interrupted purge), a torn append at the end of the last segment is cut
    /// off, and damage is an error naming the file (carrying a [`Damage`] where records are
    /// damaged).
    pub(crate) fn open(dir: &Path, purged: Option<u64>, layout: Layout) -> io::Result<Self> {
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
        let spare = match layout.preallocate {
            true => Some(Spare::new(dir, layout.target_bytes)?),
            false => None,
        };
        let mut segments = Segments {
            dir: dir.to_path_buf(),
            layout,
            segments: Vec::with_capacity(found.len()),
            mark: Arc::new(mark_file),
            spare,
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
        // The planted bug is the log before the synced mark: a cut it took for a torn tail is
        // not held against the mark.
        let trusts_its_cuts = planted::is_planted(PlantedBug::EnlargedLengthReadAsTornTail);
        if let Some(mark) = mark.filter(|_| !trusts_its_cuts) {
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

    /// How the segments are laid out.
    pub(crate) fn layout(&self) -> Layout {
        self.layout
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
            .is_some_and(|last| last.end >= self.layout.target_bytes || !last.format.is_current());
        if !follows || closed {
            if let Some(last) = self.segments.last() {
                cut_to_records(last)?;
            }
            let path = self.dir.join(segment_file_name(first_index));
            let file = match self.spare.as_ref().and_then(Spare::take) {
                // Zero-filled ahead of time (`spare.rs`): the appends write into its bytes.
                Some((file, spare)) => {
                    fs::rename(&spare, &path)?;
                    file
                }
                None => OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)?,
            };
            let salt = pkraft_types::world::random_u64();
            let mut header = [0u8; SEGMENT_HEADER];
            header[..MAGIC.len()].copy_from_slice(MAGIC);
            header[MAGIC.len()..].copy_from_slice(&salt.to_le_bytes());
            file.write_all_at(&header, 0)?;
            pkraft_types::world::sync_all(&file)?;
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
    /// [`AppendTarget::encode`]), once they are synced. The records must end the log where
    /// `target` was prepared: offsets recorded under other indexes would serve one entry as
    /// another's, so anything else is refused and nothing is published in memory (the records
    /// are already written and synced; the error stops the node). Only a bug gets here: the
    /// log's writer thread alone changes the log.
    pub(crate) fn finish_append(
        &mut self,
        target: &AppendTarget,
        lengths: &[u64],
    ) -> io::Result<()> {
        let last = self.segments.last_mut().filter(|last| {
            Arc::ptr_eq(&last.file, &target.file)
                && last.next_index() == target.first_index
                && last.end == target.offset
        });
        let Some(last) = last else {
            return Err(io::Error::other(format!(
                "an append of index {} at byte {} does not end the log (its last segment starts at {:?}): not published",
                target.first_index,
                target.offset,
                self.segments.last().map(|last| last.first_index),
            )));
        };
        for length in lengths {
            last.offsets.push(last.end);
            last.end += length;
        }
        if let Some(spare) = &self.spare
            && last.end >= self.layout.target_bytes / 2
        {
            spare.prepare();
        }
        Ok(())
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
            pkraft_types::world::sync_all(&last.file)?;
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

/// Cuts `segment` to its records before the next segment starts: a segment made from a spare
/// has zeros after them, and only the last segment may (`spare.rs`).
fn cut_to_records(segment: &Segment) -> io::Result<()> {
    if segment.file.metadata()?.len() > segment.end {
        segment.file.set_len(segment.end)?;
        pkraft_types::world::sync_all(&segment.file)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
