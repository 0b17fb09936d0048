//! Segments on real files in a temp dir: appends, reopening, torn tails and damage.

use std::io::Write;

use super::*;
use crate::log_store::damage::{Damage, set_aside};
use crate::log_store::record::*;

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
    segments.finish_append(&target, &lengths).expect("finish");
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
    segments.finish_append(&target, &lengths).expect("finish");
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
    let mut segments = Segments::open(dir.path(), None, Layout::new(64)).expect("open");
    fill(&mut segments, 1, 20);
    assert!(segment_files(dir.path()).len() > 3);
    assert_eq!(read(&segments, 3, 17), expected(3, 17));
    drop(segments);

    let segments = Segments::open(dir.path(), None, Layout::new(64)).expect("reopen");
    assert_eq!(segments.first_index(), Some(1));
    assert_eq!(segments.last_index(), Some(19));
    assert_eq!(read(&segments, 0, 100), expected(1, 20));
}

#[test]
fn a_torn_tail_is_cut_off_and_appending_continues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut segments =
        Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES)).expect("open");
    fill(&mut segments, 1, 4);
    drop(segments);
    // A crash mid-append: half of a record's header and payload reached the disk.
    let path = dir.path().join(segment_file_name(1));
    let mut torn = Vec::new();
    encode_records(salt_of(&path), 4, &[payload(4)], &mut torn).expect("encode");
    let mut file = OpenOptions::new().append(true).open(&path).expect("open");
    file.write_all(&torn[..torn.len() / 2]).expect("write");
    drop(file);

    let mut segments =
        Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES)).expect("reopen");
    assert_eq!(segments.last_index(), Some(3));
    fill(&mut segments, 4, 6);
    drop(segments);
    let segments =
        Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES)).expect("reopen");
    assert_eq!(read(&segments, 1, 6), expected(1, 6));
}

#[test]
fn damage_before_the_end_is_an_error_naming_the_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut segments = Segments::open(dir.path(), None, Layout::new(64)).expect("open");
    fill(&mut segments, 1, 20);
    drop(segments);
    // Flip a payload byte of the first record of the first segment.
    let path = dir.path().join(segment_file_name(1));
    let mut bytes = fs::read(&path).expect("read");
    let at = SEGMENT_HEADER + RECORD_HEADER;
    bytes[at] ^= 0xff;
    fs::write(&path, bytes).expect("write");

    let err = Segments::open(dir.path(), None, Layout::new(64))
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
    let mut segments =
        Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES)).expect("open");
    fill(&mut segments, 1, 20);
    drop(segments);
    // Records after the damaged one were synced (and maybe acknowledged): cutting them off
    // silently would make a voter forget them.
    let path = dir.path().join(segment_file_name(1));
    let at = record_offset(&path, 3) + RECORD_HEADER;
    let mut bytes = fs::read(&path).expect("read");
    bytes[at] ^= 0xff;
    fs::write(&path, bytes).expect("write");

    let err = Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES))
        .err()
        .expect("damage followed by whole records must fail the open");
    assert!(err.to_string().contains("checksum"), "{err}");
}

#[test]
fn a_damaged_last_record_and_zeros_at_the_end_are_torn_tails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut segments =
        Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES)).expect("open");
    fill(&mut segments, 1, 5);
    append_unreported(&mut segments, 5, &[&payload(5)]);
    drop(segments);
    let path = dir.path().join(segment_file_name(1));

    // The last record complete in length but not in content.
    let at = record_offset(&path, 4) + RECORD_HEADER;
    let mut bytes = fs::read(&path).expect("read");
    bytes[at] ^= 0xff;
    fs::write(&path, bytes).expect("write");
    let segments =
        Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES)).expect("reopen");
    assert_eq!(segments.last_index(), Some(4));
    drop(segments);

    // Zeros where an append's bytes never arrived: no record (a record is never empty).
    let mut file = OpenOptions::new().append(true).open(&path).expect("open");
    file.write_all(&[0; 64]).expect("write");
    drop(file);
    let segments =
        Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES)).expect("reopen");
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
    let mut segments =
        Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES)).expect("open");
    fill(&mut segments, 1, 101);
    drop(segments);
    let path = dir.path().join(segment_file_name(1));
    let at = record_offset(&path, 49);
    let mut bytes = fs::read(&path).expect("read");
    let length = bytes.len();
    // The length's third byte: the record now claims to run far past the end of the file.
    bytes[at + 2] |= 0x10;
    fs::write(&path, bytes).expect("write");

    let err = Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES))
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
    let mut segments =
        Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES)).expect("open");
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

    let mut segments = Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES))
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
    let mut segments =
        Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES)).expect("open");
    fill(&mut segments, 1, 6);
    drop(segments);
    let path = dir.path().join(segment_file_name(1));
    let from = record_offset(&path, 4);
    let mut bytes = fs::read(&path).expect("read");
    let length = bytes.len();
    bytes[from..].fill(0);
    fs::write(&path, bytes).expect("write");

    let err = Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES))
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
    let mut segments =
        Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES)).expect("open");
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

    let err = Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES))
        .err()
        .expect("a segment shorter than the mark is damage");
    let damage = damage_of(&err);
    assert_eq!((damage.first_index, damage.last_index_after), (4, Some(5)));
    assert_eq!(damage.offset, cut as u64);

    // Set aside (as a repair does), the mark is cleared with it: the log opens, shorter.
    set_aside(dir.path(), &damage).expect("set aside");
    let segments =
        Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES)).expect("reopen");
    assert_eq!(segments.last_index(), Some(3));
}

#[test]
fn a_truncation_clears_the_mark_so_the_removed_entries_are_not_taken_for_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut segments = Segments::open(dir.path(), None, Layout::new(64)).expect("open");
    fill(&mut segments, 1, 12);
    segments.truncate(6, Some(entry(5))).expect("truncate");
    drop(segments);
    let mut segments = Segments::open(dir.path(), None, Layout::new(64)).expect("reopen");
    assert_eq!(segments.last_index(), Some(5));
    fill(&mut segments, 6, 8);
    drop(segments);
    let segments = Segments::open(dir.path(), None, Layout::new(64)).expect("reopen");
    assert_eq!(read(&segments, 0, 100), expected(1, 8));
    drop(segments);

    // The mark was lowered to the new end, not dropped: the entry kept at the end, lost
    // after the truncation, is still damage, not a tear.
    let mut segments = Segments::open(dir.path(), None, Layout::new(64)).expect("reopen");
    segments.truncate(7, Some(entry(6))).expect("truncate");
    let (first, end) = segments.end_of(6).expect("entry 6 is held");
    drop(segments);
    let path = dir.path().join(segment_file_name(first));
    let start = usize::try_from(end).expect("end") - payload(6).len();
    let mut bytes = fs::read(&path).expect("read");
    bytes[start..].fill(0);
    fs::write(&path, bytes).expect("write");
    let err = Segments::open(dir.path(), None, Layout::new(64))
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
    let mut segments =
        Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES)).expect("open");
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

    let err = Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES))
        .err()
        .expect("a lost record before later appends is damage");
    let damage = damage_of(&err);
    assert_eq!((damage.first_index, damage.last_index_after), (5, Some(7)));
}

#[test]
fn a_misdirected_write_is_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut segments =
        Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES)).expect("open");
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

    let err = Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES))
        .err()
        .expect("a record at another index's place is damage");
    let damage = damage_of(&err);
    assert_eq!(damage.first_index, 2);
    assert!(damage.reason.contains("misdirected"), "{damage}");
}

#[test]
fn damage_after_the_open_is_reported_on_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut segments =
        Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES)).expect("open");
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
    let mut segments =
        Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES)).expect("open");
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

    let segments = Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES))
        .expect("an unacknowledged append torn out of order is cut");
    assert_eq!(segments.last_index(), Some(5));
}

/// A payload is bytes a client chose (a signed packet): one that holds a record, header
/// checksum and all, must not pass for a whole record after a torn tail. The segment's
/// random salt, in every header checksum, is what a client cannot know.
#[test]
fn a_record_inside_a_payload_does_not_count_as_a_whole_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut segments =
        Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES)).expect("open");
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

    let segments = Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES))
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
    let mut segments =
        Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES)).expect("open");
    assert_eq!(read(&segments, 0, 100), expected(1, 6));
    fill(&mut segments, 6, 9);
    assert_eq!(
        segment_files(dir.path()),
        [segment_file_name(1), segment_file_name(6)]
    );
    drop(segments);
    let segments =
        Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES)).expect("reopen");
    assert_eq!(read(&segments, 0, 100), expected(1, 9));
}

/// The segment format's number is the log schema's: a later segment format raises
/// `LOG_SCHEMA_VERSION` with it, so that an older build refuses the whole log at open (naming
/// both versions) instead of taking the new segments for damage and setting them aside.
#[test]
fn the_segment_format_is_the_log_schema_version() {
    let magic = format!("PKRLOG{}\0", crate::log_store::LOG_SCHEMA_VERSION);
    assert_eq!(MAGIC, magic.as_bytes());
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
    let err = Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES))
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
    let mut segments = Segments::open(dir.path(), None, Layout::new(64)).expect("open");
    fill(&mut segments, 1, 4);
    drop(segments);
    fs::write(dir.path().join(segment_file_name(4)), [0u8; 16]).expect("write");
    let segments = Segments::open(dir.path(), None, Layout::new(64)).expect("reopen");
    assert_eq!(segments.last_index(), Some(3));
    assert!(!dir.path().join(segment_file_name(4)).exists());
}

#[test]
fn a_missing_segment_in_the_middle_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut segments = Segments::open(dir.path(), None, Layout::new(64)).expect("open");
    fill(&mut segments, 1, 20);
    drop(segments);
    let files = segment_files(dir.path());
    fs::remove_file(dir.path().join(&files[1])).expect("remove");
    let err = Segments::open(dir.path(), None, Layout::new(64))
        .err()
        .expect("a gap must fail the open");
    assert!(err.to_string().contains("entries are missing"), "{err}");
}

#[test]
fn truncate_removes_the_tail_durably() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut segments = Segments::open(dir.path(), None, Layout::new(64)).expect("open");
    fill(&mut segments, 1, 20);
    segments.truncate(7, Some(entry(6))).expect("truncate");
    assert_eq!(segments.last_index(), Some(6));
    assert_eq!(read(&segments, 0, 100), expected(1, 7));
    // The next append continues at the cut, in the segment that held index 6 or a new one.
    fill(&mut segments, 7, 9);
    drop(segments);
    let segments = Segments::open(dir.path(), None, Layout::new(64)).expect("reopen");
    assert_eq!(read(&segments, 0, 100), expected(1, 9));
}

#[test]
fn truncating_everything_leaves_an_empty_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut segments = Segments::open(dir.path(), None, Layout::new(64)).expect("open");
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
    let mut segments = Segments::open(dir.path(), None, Layout::new(64)).expect("open");
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
    let segments = Segments::open(dir.path(), Some(15), Layout::new(64)).expect("reopen");
    assert!(segments.first_index().is_some_and(|first| first <= 16));
    assert!(segment_files(dir.path()).len() < after);
    assert_eq!(read(&segments, 16, 20), expected(16, 20));
}

#[test]
fn a_purge_past_the_end_lets_the_log_restart_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut segments =
        Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES)).expect("open");
    fill(&mut segments, 1, 5);
    // Installing a snapshot purges past the last entry; the log continues after it.
    segments.remove_through(100).expect("purge");
    assert_eq!(segments.last_index(), None);
    fill(&mut segments, 101, 103);
    assert!(segments.prepare_append(200).is_err(), "appends must follow");
    drop(segments);
    let segments =
        Segments::open(dir.path(), Some(100), Layout::new(SEGMENT_TARGET_BYTES)).expect("reopen");
    assert_eq!(read(&segments, 0, 1000), expected(101, 103));
}

#[test]
fn a_segment_cut_inside_its_header_is_dropped_when_last() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut segments = Segments::open(dir.path(), None, Layout::new(64)).expect("open");
    fill(&mut segments, 1, 4);
    drop(segments);
    // A crash while the next segment was being created.
    fs::write(dir.path().join(segment_file_name(4)), &MAGIC[..3]).expect("write");
    let mut segments = Segments::open(dir.path(), None, Layout::new(64)).expect("reopen");
    assert_eq!(segments.last_index(), Some(3));
    fill(&mut segments, 4, 6);
    assert_eq!(read(&segments, 0, 100), expected(1, 6));
}

/// A new segment takes a file zero-filled ahead of time (`spare.rs`), prepared once the last
/// one is half full: its appends write into the zeros (the file keeps its size), a reopen reads
/// the zeros as space never written (every record there, nothing cut, the zeros kept for the
/// appends to come), a segment is cut to its records once the next one starts, and a record
/// the synced mark covers that reads back as zeros is damage, never taken for that space.
#[test]
fn a_preallocated_segment_is_appended_into_and_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = Layout::preallocated(4096);
    let len = |first: u64| {
        fs::metadata(dir.path().join(segment_file_name(first)))
            .expect("segment")
            .len()
    };
    // Appends one record at a time until the log has `count` segments, waiting for the spare
    // once the last segment is half full (so that the next one always takes it).
    let fill_to = |segments: &mut Segments, next: &mut u64, count: usize| {
        while segments.segments.len() < count {
            if segments
                .segments
                .last()
                .is_some_and(|last| last.end >= 2048)
            {
                segments.spare.as_ref().expect("spares").wait_ready();
            }
            fill(segments, *next, *next + 1);
            *next += 1;
        }
    };
    let mut segments = Segments::open(dir.path(), None, layout).expect("open");
    let mut next = 1;
    fill_to(&mut segments, &mut next, 2);
    assert_eq!(
        len(1),
        segments.segments[0].end,
        "the first segment grew with its appends"
    );
    let second = segments.segments[1].first_index;
    assert_eq!(len(second), 4096, "the second segment is a spare");
    fill(&mut segments, next, next + 3);
    next += 3;
    assert_eq!(len(second), 4096, "the appends write into the zeros");
    drop(segments);

    let mut segments = Segments::open(dir.path(), None, layout).expect("reopen");
    assert_eq!(read(&segments, 0, 1000), expected(1, next));
    assert_eq!(len(second), 4096, "nothing cut at the reopen");
    fill_to(&mut segments, &mut next, 3);
    let third = segments.segments[2].first_index;
    assert_eq!(
        len(second),
        segments.segments[1].end,
        "a segment is cut to its records when the next starts"
    );
    assert_eq!(len(third), 4096);
    fill(&mut segments, next, next + 3);
    next += 3;
    drop(segments);

    let segments = Segments::open(dir.path(), None, layout).expect("reopen");
    assert_eq!(read(&segments, 0, 1000), expected(1, next));
    // The last record, synced and reported done, reads back as zeros: a lost write.
    let last = segments.segments[2]
        .offsets
        .last()
        .copied()
        .expect("a record");
    drop(segments);
    let path = dir.path().join(segment_file_name(third));
    let mut bytes = fs::read(&path).expect("read");
    bytes[last as usize..].fill(0);
    fs::write(&path, bytes).expect("write");
    let error = match Segments::open(dir.path(), None, layout) {
        Ok(_) => panic!("a lost write under the synced mark opened as never-written space"),
        Err(error) => error,
    };
    let damage = Damage::of(&error).expect("damage");
    assert_eq!(damage.first_index, next - 1, "{damage}");
}

/// Offsets published under other indexes would serve one entry as another's: an append
/// finished a second time (the fault) no longer ends the log, so it is refused and the log
/// keeps exactly what it held.
#[test]
fn an_append_finished_twice_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut segments =
        Segments::open(dir.path(), None, Layout::new(SEGMENT_TARGET_BYTES)).expect("open");
    let target = segments.prepare_append(1).expect("prepare");
    let mut encoded = Vec::new();
    let lengths = target.encode(&[b"one"], &mut encoded).expect("encode");
    target.write_and_sync(&encoded, entry(1)).expect("write");
    segments.finish_append(&target, &lengths).expect("finish");
    let error = segments
        .finish_append(&target, &lengths)
        .expect_err("the same append finished again");
    assert!(
        error.to_string().contains("does not end the log"),
        "{error}"
    );
    assert_eq!(segments.last_index(), Some(1));
    assert_eq!(read(&segments, 0, 10), vec![b"one".to_vec()]);
}
