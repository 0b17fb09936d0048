//! `raft-log/synced`: where the log's last append ended, written after that append's
//! `fdatasync` and synced before the append is reported done (the "persist record" of
//! "Protocol-Aware Recovery for Consensus-Based Storage", FAST 2018).
//!
//! A crash can only leave the last append short, and a short last append is cut as a torn
//! write, which was never acknowledged. A disk that acknowledged an append and lost it (or
//! wrote it elsewhere, or lost the file's new length) leaves the same bytes behind, though the
//! append *was* acknowledged. The mark tells the two apart: an append it covers was synced and
//! reported done, so if it does not read back, that is damage, never a tear. An append it does
//! not cover is one whose mark was never synced, so it was never reported done either.
//!
//! The mark is one fixed-size record, overwritten in place: a write torn while the power goes
//! fails its checksum and reads as no mark, which is safe, since the append before it is
//! whole by then. Whatever takes entries out of the log other than a purge moves the mark
//! first, or the next open would take the removed entries for lost ones: a truncation lowers it
//! to the new last entry, a repair that sets records aside clears it (its `LogRepair` record
//! carries what the mark knew). A build without the mark leaves the file as it was: going back
//! to one and then forward again, remove `raft-log/synced` first (a truncation made meanwhile
//! would read as a loss).
//!
//! Layout (53 bytes): `PKRSYNC1` ‖ 1 if a mark is set, else 0 ‖ the first index of the segment
//! the append went to ‖ the byte its records end at ‖ the last entry's index, term and leader
//! node (u64 LE each, zeros when unset) ‖ CRC-32 of every byte before it (u32 LE).

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::Path;

use pkraft_types::planted::{self, PlantedBug};

/// The mark's file name in the log directory.
pub(crate) const FILE: &str = "synced";
const MAGIC: &[u8; 8] = b"PKRSYNC1";
const LEN: usize = 8 + 1 + 5 * 8 + 4;

/// Where the last append reported done ended, and the entry it ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncedMark {
    /// The segment the append went to (its first index).
    pub segment_first_index: u64,
    /// The byte of that segment its records end at.
    pub end: u64,
    /// The last entry it wrote: index, term and the node that led that term.
    pub last_index: u64,
    pub last_term: u64,
    pub last_leader: u64,
}

/// The open mark file.
#[derive(Debug)]
pub(crate) struct MarkFile {
    file: File,
}

impl MarkFile {
    /// Opens (creating it, durably, if missing) the mark file in `dir`, and reads the mark. A
    /// file that is too short, of another format or fails its checksum holds no mark.
    pub(crate) fn open(dir: &Path) -> io::Result<(MarkFile, Option<SyncedMark>)> {
        let path = dir.join(FILE);
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if !existed {
            pkraft_types::world::sync_all(&file)?;
            pkraft_types::world::sync_all(&File::open(dir)?)?;
        }
        let mut bytes = [0u8; LEN];
        let mark = match file.read_exact_at(&mut bytes, 0) {
            Ok(()) => decode(&bytes).unwrap_or_else(|| {
                tracing::warn!(
                    file = %path.display(),
                    "the log's synced mark does not read back (a write torn by a crash); taken \
                     as no mark"
                );
                None
            }),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => None,
            Err(e) => return Err(e),
        };
        Ok((MarkFile { file }, mark))
    }

    /// Sets the mark (`None` clears it), durably.
    pub(crate) fn write(&self, mark: Option<SyncedMark>) -> io::Result<()> {
        self.file.write_all_at(&encode(mark), 0)?;
        if planted::is_planted(PlantedBug::AppendDoneBeforeFsync) {
            return Ok(());
        }
        pkraft_types::world::sync_data(&self.file)
    }
}

/// Clears the mark in `dir`, durably, if there is a mark file: for a repair about to set the
/// records it covers aside.
pub(crate) fn clear(dir: &Path) -> io::Result<()> {
    let path = dir.join(FILE);
    if !path.exists() {
        return Ok(());
    }
    let file = OpenOptions::new().write(true).open(&path)?;
    file.write_all_at(&encode(None), 0)?;
    pkraft_types::world::sync_data(&file)
}

fn encode(mark: Option<SyncedMark>) -> [u8; LEN] {
    let mut bytes = [0u8; LEN];
    bytes[..8].copy_from_slice(MAGIC);
    if let Some(mark) = mark {
        bytes[8] = 1;
        let fields = [
            mark.segment_first_index,
            mark.end,
            mark.last_index,
            mark.last_term,
            mark.last_leader,
        ];
        for (i, field) in fields.iter().enumerate() {
            bytes[9 + 8 * i..17 + 8 * i].copy_from_slice(&field.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&bytes[..LEN - 4]);
    bytes[LEN - 4..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// The mark in `bytes`: `Some(None)` for a cleared one, `None` if they do not read back.
fn decode(bytes: &[u8; LEN]) -> Option<Option<SyncedMark>> {
    let crc = u32::from_le_bytes(bytes[LEN - 4..].try_into().ok()?);
    if &bytes[..8] != MAGIC || crc != crc32fast::hash(&bytes[..LEN - 4]) {
        return None;
    }
    let field = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            bytes[9 + 8 * i..17 + 8 * i].try_into().ok()?,
        ))
    };
    match bytes[8] {
        0 => Some(None),
        1 => Some(Some(SyncedMark {
            segment_first_index: field(0)?,
            end: field(1)?,
            last_index: field(2)?,
            last_term: field(3)?,
            last_leader: field(4)?,
        })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARK: SyncedMark = SyncedMark {
        segment_first_index: 4096,
        end: 65_536,
        last_index: 5000,
        last_term: 7,
        last_leader: 3,
    };

    #[test]
    fn a_mark_reads_back_and_a_cleared_one_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (file, mark) = MarkFile::open(dir.path()).expect("open");
        assert_eq!(mark, None, "a new file holds no mark");
        file.write(Some(MARK)).expect("write");
        assert_eq!(MarkFile::open(dir.path()).expect("open").1, Some(MARK));
        clear(dir.path()).expect("clear");
        assert_eq!(MarkFile::open(dir.path()).expect("open").1, None);
    }

    #[test]
    fn a_torn_or_damaged_mark_is_no_mark() {
        let good = encode(Some(MARK));
        for at in [0, 8, 20, LEN - 1] {
            let mut bad = good;
            bad[at] ^= 0x10;
            assert_eq!(decode(&bad), None, "byte {at}");
        }
        let mut torn = good;
        torn[30..].fill(0);
        assert_eq!(decode(&torn), None);
        assert_eq!(decode(&good), Some(Some(MARK)));
    }
}
