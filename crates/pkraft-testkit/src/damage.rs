//! Damage to a stopped node's files, the way a disk damages them (bit rot, a lost write, a
//! misdirected write), for the damaged-disk tests and the chaos harness's corruption kinds. It
//! reads the log's on-disk format 2 (docs/ARCHITECTURE.md, "Files on disk"): an 8-byte magic and
//! an 8-byte salt, then records of a 36-byte header (payload length u32 LE, index u64 LE, first and last index
//! of the append u64 LE each, two CRCs) and the payload.

use std::io;
use std::path::{Path, PathBuf};

use crate::rng::SplitMix64;

const MAGIC: &[u8; 8] = b"PKRLOG2\0";
/// The segment's header: the magic and the salt.
const SEGMENT_HEADER: usize = 16;
const HEADER: usize = 36;

/// One record of a log segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub segment: PathBuf,
    /// Where the record starts in the segment.
    pub offset: usize,
    /// Header and payload.
    pub size: usize,
    /// The log index it holds.
    pub index: u64,
    /// The first and last index of the append that wrote it.
    pub append: (u64, u64),
}

/// The records of every format 2 segment in `data_dir/raft-log`, in index order (segments of
/// another format are skipped). Stops at the first record of a segment it cannot parse.
pub fn log_records(data_dir: &Path) -> io::Result<Vec<LogRecord>> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(data_dir.join("raft-log"))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    segments.sort();
    let mut records = Vec::new();
    for segment in segments {
        let bytes = std::fs::read(&segment)?;
        if bytes.get(..8) != Some(MAGIC.as_slice()) {
            continue;
        }
        let mut at = SEGMENT_HEADER;
        while let Some(header) = bytes.get(at..at + HEADER) {
            let u64_at = |from: usize| {
                let mut word = [0; 8];
                word.copy_from_slice(&header[from..from + 8]);
                u64::from_le_bytes(word)
            };
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let size = HEADER + len;
            if len == 0 || at + size > bytes.len() {
                break;
            }
            records.push(LogRecord {
                segment: segment.clone(),
                offset: at,
                size,
                index: u64_at(4),
                append: (u64_at(12), u64_at(20)),
            });
            at += size;
        }
    }
    Ok(records)
}

/// How a record is damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordDamage {
    /// One bit flipped, in the header or the payload (bit rot).
    BitFlip,
    /// The record's length field made larger (one bit), so that it seems to run past the end
    /// of the file: the case the old format took for a torn tail.
    EnlargedLength,
    /// The record's bytes read back as zeros: a write the disk acknowledged and never made.
    LostWrite,
    /// Another record's bytes where this one should be: a write that landed at the wrong
    /// offset.
    Misdirected,
}

impl RecordDamage {
    pub const ALL: [RecordDamage; 4] = [
        RecordDamage::BitFlip,
        RecordDamage::EnlargedLength,
        RecordDamage::LostWrite,
        RecordDamage::Misdirected,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RecordDamage::BitFlip => "bit-flip",
            RecordDamage::EnlargedLength => "enlarged-length",
            RecordDamage::LostWrite => "lost-write",
            RecordDamage::Misdirected => "misdirected-write",
        }
    }

    /// What this damage did to `record`, for a fault's report.
    pub fn describe(self, record: &LogRecord) -> String {
        format!(
            "{} of the record holding index {} ({} at byte {})",
            self.name(),
            record.index,
            record.segment.display(),
            record.offset
        )
    }
}

/// Damages `record` as `how` says, choosing bits and the misdirected source with `rng`.
pub fn damage_record(
    records: &[LogRecord],
    record: &LogRecord,
    how: RecordDamage,
    rng: &mut SplitMix64,
) -> io::Result<()> {
    let mut bytes = std::fs::read(&record.segment)?;
    let span = record.offset..record.offset + record.size;
    match how {
        RecordDamage::BitFlip => {
            let at = record.offset + rng.below(record.size as u64) as usize;
            bytes[at] ^= 1 << rng.below(8);
        }
        RecordDamage::EnlargedLength => bytes[record.offset + 2] |= 0x10,
        RecordDamage::LostWrite => bytes[span].fill(0),
        RecordDamage::Misdirected => {
            let others: Vec<&LogRecord> = records.iter().filter(|r| r != &record).collect();
            let Some(source) = rng.pick(&others) else {
                bytes[span].fill(0);
                return std::fs::write(&record.segment, bytes);
            };
            let source_bytes = std::fs::read(&source.segment)?;
            let source_span = &source_bytes[source.offset..source.offset + source.size];
            let n = record.size.min(source.size);
            bytes[record.offset..record.offset + n].copy_from_slice(&source_span[..n]);
        }
    }
    std::fs::write(&record.segment, bytes)
}

/// The records that are damage, not a tear, if damaged: those with a whole record of a later
/// append after them. (Damage to the log's last append looks exactly like a torn write and is
/// cut as one, which a real disk can do too; pkraft does not claim to survive it.)
pub fn damageable_records(records: &[LogRecord]) -> Vec<LogRecord> {
    let Some(last_append) = records.last().map(|record| record.append) else {
        return Vec::new();
    };
    records
        .iter()
        .filter(|record| record.append.1 < last_append.0)
        .cloned()
        .collect()
}

/// Damages one record of the log in `data_dir` that has a later append after it, chosen and
/// damaged with `rng`; returns the record it damaged (`RecordDamage::describe` names it), or
/// `None` if the log has no such record.
pub fn damage_log(
    data_dir: &Path,
    how: RecordDamage,
    rng: &mut SplitMix64,
) -> io::Result<Option<LogRecord>> {
    let records = log_records(data_dir)?;
    let candidates = damageable_records(&records);
    let Some(record) = rng.pick(&candidates) else {
        return Ok(None);
    };
    damage_record(&records, record, how, rng)?;
    Ok(Some(record.clone()))
}

/// Flips one bit of the current snapshot data file in `data_dir/snapshot` (chosen with `rng`);
/// returns the file, or `None` if there is none. The node may be running: a snapshot it builds
/// meanwhile replaces the file (found by the chaos harness: "No such file or directory"), so a
/// file gone before it is opened is looked for again, a few times. The flip is written in
/// place, into the file opened, never into a new one.
pub fn damage_snapshot(data_dir: &Path, rng: &mut SplitMix64) -> io::Result<Option<PathBuf>> {
    use std::os::unix::fs::FileExt;
    const ATTEMPTS: usize = 5;
    for attempt in 1..=ATTEMPTS {
        let Some(path) = std::fs::read_dir(data_dir.join("snapshot"))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .find(|path| path.extension().is_some_and(|ext| ext == "snap"))
        else {
            return Ok(None);
        };
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < ATTEMPTS => continue,
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        if len == 0 {
            return Ok(None);
        }
        let at = rng.below(len);
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, at)?;
        byte[0] ^= 1 << rng.below(8);
        file.write_all_at(&byte, at)?;
        return Ok(Some(path));
    }
    Ok(None)
}

/// How [`damage_state`] damages a stopped node's `state.redb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateDamage {
    /// One byte of the root page number in each of redb's two commit slots (its super-header:
    /// a 64-byte header, then two 128-byte slots): redb finds both checksums wrong.
    CommitSlots,
    /// The file cut to nothing, as a lost file-system metadata update can leave it: redb opens
    /// it as a new, empty database.
    Emptied,
}

impl StateDamage {
    pub const ALL: [StateDamage; 2] = [StateDamage::CommitSlots, StateDamage::Emptied];

    pub fn name(self) -> &'static str {
        match self {
            StateDamage::CommitSlots => "commit-slots",
            StateDamage::Emptied => "emptied",
        }
    }
}

/// Damages the `state.redb` of a stopped node's data dir; returns the file.
pub fn damage_state(data_dir: &Path, damage: StateDamage) -> io::Result<PathBuf> {
    let file = data_dir.join("state.redb");
    match damage {
        StateDamage::CommitSlots => {
            let mut bytes = std::fs::read(&file)?;
            for slot in [64, 192] {
                let byte = bytes.get_mut(slot + 8).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "state.redb is too short")
                })?;
                *byte ^= 0x5a;
            }
            std::fs::write(&file, bytes)?;
        }
        StateDamage::Emptied => std::fs::File::create(&file)?.sync_all()?,
    }
    Ok(file)
}
