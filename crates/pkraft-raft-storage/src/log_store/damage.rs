//! [`Damage`]: synced records of the log found damaged, as the open or a read names them, and
//! where damaged records go once set aside (`raft-log/damaged/`), kept for a post-mortem.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};

use super::segment_file::segment_first_index;
use super::synced_mark::{self, SyncedMark};
use crate::sync_dir;

/// Where damaged records are kept once set aside ([`set_aside`]), inside the log directory.
pub(crate) const DAMAGED_DIR: &str = "damaged";

/// Damage to synced records of the log: what the open found instead of a torn tail. Carried
/// inside the `io::Error` (kind `InvalidData`) that `Segments::open` returns; the log store
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
    /// The damage an error from `Segments::open` (or a read) reports, if it is one.
    pub fn of(error: &io::Error) -> Option<&Damage> {
        error.get_ref()?.downcast_ref::<Damage>()
    }

    /// The damage, reaching at least as far as the synced mark: whatever is damaged, the log
    /// held (and may have acknowledged) every entry up to the mark's, which the repair must
    /// not vote below. (A partly lost append leaves whole records short of the mark.)
    pub(crate) fn reaching(mut self, mark: Option<SyncedMark>) -> Damage {
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
        pkraft_types::world::sync_all(&File::open(kept_name(&damage.segment))?)?;
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
        pkraft_types::world::sync_all(&file)?;
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
    let stamp = pkraft_types::world::unix_nanos_now();
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

pub(crate) fn corrupt(path: &Path, offset: u64, why: &str) -> io::Error {
    io::Error::new(
        ErrorKind::InvalidData,
        format!(
            "Raft log segment {} at byte {offset}: {why}",
            path.display()
        ),
    )
}
