//! The current snapshot on disk, in its own directory:
//!
//! - `<id>.snap`: the snapshot data, the store's snapshot stream (`pkraft_state`'s format 3,
//!   which carries its own checksum). openraft sends it in chunks straight from this file.
//! - `current.meta`: `MAGIC (8) ‖ length (4, big-endian) ‖ postcard(Pointer)`, the snapshot's
//!   meta and the name of its data file. Replaced atomically: written to `current.meta.tmp`,
//!   fsynced, renamed, and the directory fsynced. So after a crash there is either the old
//!   snapshot or the new one, each with its data file.
//! - `build.tmp`, `incoming.tmp`: a snapshot being built, or being received from the leader.
//!
//! A data file is complete and fsynced before the pointer names it; older data files are removed
//! after the pointer moved on (a transfer that is still reading one keeps its open handle).
//! Nothing here holds a snapshot in memory.
//!
//! openraft builds snapshots in a task of their own, concurrently with installing one received
//! from the leader. Commits are therefore serialized, and a snapshot never replaces one that
//! covers more of the log: a slow build must not roll the current snapshot back behind an install
//! (the log may already be purged up to the installed snapshot).
//!
//! Builds before streaming kept one file, `current` (`PKRSMETA ‖ meta length ‖ meta ‖ data`);
//! [`SnapshotFile::open`] moves it to this layout.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::{BasicNode, SnapshotMeta};
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode};
use super::type_config::NodeId;

const MAGIC: &[u8; 8] = b"PKRSPTR1";
const POINTER: &str = "current.meta";
const POINTER_TMP: &str = "current.meta.tmp";
const BUILD_TMP: &str = "build.tmp";
pub(crate) const INCOMING_TMP: &str = "incoming.tmp";
const DATA_SUFFIX: &str = ".snap";
/// The single file of builds before streaming.
const LEGACY_FILE: &str = "current";
const LEGACY_MAGIC: &[u8; 8] = b"PKRSMETA";
const LEGACY_META_MAX: u64 = 1024 * 1024;

pub type Meta = SnapshotMeta<NodeId, BasicNode>;

/// What `current.meta` holds.
#[derive(Serialize, Deserialize)]
struct Pointer {
    meta: Meta,
    /// The data file's name, in the same directory.
    data_file: String,
}

#[derive(Clone, Debug)]
pub struct SnapshotFile {
    dir: PathBuf,
    /// Serializes commits, and loads against the removal of old data files.
    lock: Arc<Mutex<()>>,
}

impl SnapshotFile {
    /// Opens the snapshot directory, creating it, moving a snapshot of an earlier build to this
    /// layout, and removing what a crash left half-done (temp files, a data file no pointer names).
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        let file = SnapshotFile {
            dir,
            lock: Arc::new(Mutex::new(())),
        };
        file.migrate_legacy()?;
        for name in [POINTER_TMP, BUILD_TMP, INCOMING_TMP] {
            remove_if_present(&file.dir.join(name))?;
        }
        let mut current = file.read_pointer()?.map(|pointer| pointer.data_file);
        if let Some(name) = &current
            && !file.dir.join(name).exists()
        {
            // Only possible if the file system lost the data file's rename but kept the
            // pointer's. Without a snapshot openraft builds a new one when it needs one.
            tracing::warn!(
                data_file = %file.dir.join(name).display(),
                "the current snapshot's data file is missing; dropping the snapshot"
            );
            fs::remove_file(file.dir.join(POINTER))?;
            pkraft_types::world::sync_all(&File::open(&file.dir)?)?;
            current = None;
        }
        file.remove_data_files_except(current.as_deref())?;
        Ok(file)
    }

    /// Where a snapshot build writes its data before [`SnapshotFile::commit`].
    pub fn build_path(&self) -> PathBuf {
        self.dir.join(BUILD_TMP)
    }

    /// A new, empty file to receive a snapshot from the leader into (any earlier one is removed:
    /// openraft dropped the transfer that wrote it).
    pub(crate) fn begin_incoming(&self) -> io::Result<File> {
        let path = self.dir.join(INCOMING_TMP);
        remove_if_present(&path)?;
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
    }

    /// Whether `file` is the one [`SnapshotFile::begin_incoming`] created last.
    pub(crate) fn is_incoming(&self, file: &File) -> io::Result<bool> {
        let ours = match fs::metadata(self.dir.join(INCOMING_TMP)) {
            Ok(ours) => ours,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let theirs = file.metadata()?;
        Ok((ours.dev(), ours.ino()) == (theirs.dev(), theirs.ino()))
    }

    pub(crate) fn incoming_path(&self) -> PathBuf {
        self.dir.join(INCOMING_TMP)
    }

    /// Makes the data at `data` (a complete, fsynced file in this directory: the build or the
    /// incoming file) the current snapshot, unless the current one covers more of the log.
    /// Returns whether it did; either way `data` is gone afterwards, unless it fails.
    pub fn commit(&self, meta: &Meta, data: &Path) -> io::Result<bool> {
        let _serialized = self
            .lock
            .lock()
            .map_err(|_| io::Error::other("a snapshot commit panicked"))?;
        if let Some(current) = self.read_pointer()?
            && current.meta.last_log_id > meta.last_log_id
        {
            fs::remove_file(data)?;
            return Ok(false);
        }
        let data_file = data_file_name(&meta.snapshot_id);
        fs::rename(data, self.dir.join(&data_file))?;
        // The data file's name must be on disk before a pointer names it.
        pkraft_types::world::sync_all(&File::open(&self.dir)?)?;
        let pointer = Pointer {
            meta: meta.clone(),
            data_file,
        };
        self.write_pointer(&pointer)?;
        // The new snapshot is current; an old file left behind is removed at the next commit or
        // start.
        if let Err(e) = self.remove_data_files_except(Some(&pointer.data_file)) {
            tracing::warn!(error = %e, "cannot remove an old snapshot file");
        }
        Ok(true)
    }

    /// The current snapshot's meta and its data file, open for reading at the start.
    pub(crate) fn load(&self) -> io::Result<Option<(Meta, File)>> {
        let _no_commit_meanwhile = self
            .lock
            .lock()
            .map_err(|_| io::Error::other("a snapshot commit panicked"))?;
        let Some(pointer) = self.read_pointer()? else {
            return Ok(None);
        };
        let path = self.dir.join(&pointer.data_file);
        let file = File::open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(Some((pointer.meta, file)))
    }

    /// The current snapshot's meta, without opening its data.
    pub fn load_meta(&self) -> io::Result<Option<Meta>> {
        Ok(self.read_pointer()?.map(|pointer| pointer.meta))
    }

    /// The current snapshot's data file, if there is one.
    pub fn data_path(&self) -> io::Result<Option<PathBuf>> {
        Ok(self
            .read_pointer()?
            .map(|pointer| self.dir.join(pointer.data_file)))
    }

    fn read_pointer(&self) -> io::Result<Option<Pointer>> {
        let path = self.dir.join(POINTER);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let corrupt = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {what}", path.display()),
            )
        };
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| corrupt("bad magic"))?;
        let (len, body) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt("truncated"))?;
        let len = usize::try_from(u32::from_be_bytes(*len)).map_err(io::Error::other)?;
        if body.len() != len {
            return Err(corrupt("truncated"));
        }
        decode(body).map(Some).map_err(|e| corrupt(&e.to_string()))
    }

    fn write_pointer(&self, pointer: &Pointer) -> io::Result<()> {
        let body = encode(pointer).map_err(io::Error::other)?;
        let len = u32::try_from(body.len()).map_err(io::Error::other)?;
        let tmp = self.dir.join(POINTER_TMP);
        {
            let mut file = File::create(&tmp)?;
            file.write_all(MAGIC)?;
            file.write_all(&len.to_be_bytes())?;
            file.write_all(&body)?;
            pkraft_types::world::sync_all(&file)?;
        }
        fs::rename(&tmp, self.dir.join(POINTER))?;
        pkraft_types::world::sync_all(&File::open(&self.dir)?)
    }

    fn remove_data_files_except(&self, keep: Option<&str>) -> io::Result<()> {
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(DATA_SUFFIX) && Some(name) != keep {
                remove_if_present(&self.dir.join(name))?;
            }
        }
        Ok(())
    }

    /// Moves a snapshot of a build before streaming (`current`: meta and data in one file) to
    /// a data file and a pointer, without reading the data into memory.
    fn migrate_legacy(&self) -> io::Result<()> {
        let legacy = self.dir.join(LEGACY_FILE);
        let mut file = match File::open(&legacy) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if self.read_pointer()?.is_none() {
            let meta = read_legacy_meta(&mut file)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", legacy.display())))?;
            let tmp = self.build_path();
            {
                let mut data = File::create(&tmp)?;
                io::copy(&mut file, &mut data)?;
                pkraft_types::world::sync_all(&data)?;
            }
            self.commit(&meta, &tmp)?;
        }
        fs::remove_file(&legacy)?;
        pkraft_types::world::sync_all(&File::open(&self.dir)?)
    }
}

/// Reads the prefix and meta of a legacy `current` file, leaving `file` at the start of the data.
fn read_legacy_meta(file: &mut File) -> io::Result<Meta> {
    let corrupt = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut prefix = [0u8; 12];
    file.read_exact(&mut prefix)
        .map_err(|_| corrupt("truncated"))?;
    let (magic, len) = prefix.split_at(LEGACY_MAGIC.len());
    if magic != LEGACY_MAGIC {
        return Err(corrupt("bad magic"));
    }
    let mut be = [0u8; 4];
    be.copy_from_slice(len);
    let meta_len = u64::from(u32::from_be_bytes(be));
    // A meta (log id, membership, id) is a few hundred bytes.
    if meta_len > LEGACY_META_MAX || meta_len > file.metadata()?.len() {
        return Err(corrupt("truncated meta"));
    }
    let mut meta = Vec::new();
    Read::by_ref(file).take(meta_len).read_to_end(&mut meta)?;
    if meta.len() as u64 != meta_len {
        return Err(corrupt("truncated meta"));
    }
    let meta = decode(&meta).map_err(|e| corrupt(&e.to_string()))?;
    file.seek(SeekFrom::Start(12 + meta_len))?;
    Ok(meta)
}

/// A file name for the data of snapshot `snapshot_id` (unique per build: see `snapshot_id`).
fn data_file_name(snapshot_id: &str) -> String {
    let safe: String = snapshot_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}{DATA_SUFFIX}")
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId};

    use super::*;

    fn meta(index: u64) -> Meta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
            last_membership: Default::default(),
            snapshot_id: format!("s{index}"),
        }
    }

    fn build(file: &SnapshotFile, data: &[u8]) -> PathBuf {
        let path = file.build_path();
        fs::write(&path, data).expect("write");
        path
    }

    fn data_of(file: &SnapshotFile) -> (Meta, Vec<u8>) {
        let (meta, mut data) = file.load().expect("load").expect("present");
        let mut bytes = Vec::new();
        data.read_to_end(&mut bytes).expect("read");
        (meta, bytes)
    }

    fn snap_files(dir: &Path) -> usize {
        fs::read_dir(dir)
            .expect("dir")
            .filter(|entry| {
                entry
                    .as_ref()
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .ends_with(DATA_SUFFIX)
            })
            .count()
    }

    #[test]
    fn commit_load_and_never_roll_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = SnapshotFile::open(dir.path().join("snapshot")).expect("open");
        assert!(file.load().expect("load").is_none());

        assert!(
            file.commit(&meta(10), &build(&file, b"ten"))
                .expect("commit")
        );
        assert_eq!(data_of(&file), (meta(10), b"ten".to_vec()));

        // A build that started before an install and finishes after it must not replace it.
        let (_, mut still_sending) = file.load().expect("load").expect("present");
        assert!(
            !file
                .commit(&meta(5), &build(&file, b"five"))
                .expect("commit")
        );
        assert_eq!(data_of(&file).1, b"ten".to_vec());
        assert!(!file.build_path().exists());

        assert!(
            file.commit(&meta(20), &build(&file, b"twenty"))
                .expect("commit")
        );
        assert_eq!(data_of(&file), (meta(20), b"twenty".to_vec()));
        assert_eq!(
            snap_files(&dir.path().join("snapshot")),
            1,
            "old data removed"
        );
        // A transfer that opened the old data before keeps reading it.
        let mut bytes = Vec::new();
        still_sending.read_to_end(&mut bytes).expect("read");
        assert_eq!(bytes, b"ten");

        // After a restart the same snapshot is current.
        let file = SnapshotFile::open(dir.path().join("snapshot")).expect("reopen");
        assert_eq!(data_of(&file), (meta(20), b"twenty".to_vec()));
    }

    /// Goal: a crash between writing a data file and the pointer leaves the old snapshot
    /// current, and the next start removes the leftovers.
    #[test]
    fn leftovers_of_a_crash_are_removed_and_the_old_snapshot_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshot_dir = dir.path().join("snapshot");
        let file = SnapshotFile::open(snapshot_dir.clone()).expect("open");
        assert!(
            file.commit(&meta(10), &build(&file, b"ten"))
                .expect("commit")
        );
        fs::write(snapshot_dir.join("orphan.snap"), b"x").expect("write");
        fs::write(snapshot_dir.join(BUILD_TMP), b"half").expect("write");
        fs::write(snapshot_dir.join(INCOMING_TMP), b"half").expect("write");
        fs::write(snapshot_dir.join(POINTER_TMP), b"half").expect("write");

        let file = SnapshotFile::open(snapshot_dir.clone()).expect("reopen");
        assert_eq!(data_of(&file), (meta(10), b"ten".to_vec()));
        assert_eq!(snap_files(&snapshot_dir), 1);
        for name in [BUILD_TMP, INCOMING_TMP, POINTER_TMP] {
            assert!(!snapshot_dir.join(name).exists(), "{name}");
        }
    }

    /// Goal: a pointer whose data file the file system lost does not stop the node from
    /// starting: the snapshot is dropped (openraft builds a new one when it needs one).
    #[test]
    fn a_pointer_without_its_data_file_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = SnapshotFile::open(dir.path().to_path_buf()).expect("open");
        assert!(
            file.commit(&meta(3), &build(&file, b"three"))
                .expect("commit")
        );
        let data = file.data_path().expect("read").expect("present");
        fs::remove_file(data).expect("lose the data file");
        let file = SnapshotFile::open(dir.path().to_path_buf()).expect("reopen");
        assert!(file.load().expect("load").is_none());
    }

    #[test]
    fn a_snapshot_of_the_build_before_streaming_is_moved_to_the_new_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshot_dir = dir.path().join("snapshot");
        fs::create_dir_all(&snapshot_dir).expect("mkdir");
        let encoded = encode(&meta(7)).expect("encode");
        let mut legacy = LEGACY_MAGIC.to_vec();
        legacy.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        legacy.extend_from_slice(&encoded);
        legacy.extend_from_slice(b"seven");
        fs::write(snapshot_dir.join(LEGACY_FILE), legacy).expect("write");

        let file = SnapshotFile::open(snapshot_dir.clone()).expect("open");
        assert_eq!(data_of(&file), (meta(7), b"seven".to_vec()));
        assert!(!snapshot_dir.join(LEGACY_FILE).exists());
    }

    #[test]
    fn incoming_files_are_told_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = SnapshotFile::open(dir.path().to_path_buf()).expect("open");
        let first = file.begin_incoming().expect("begin");
        let second = file.begin_incoming().expect("begin again");
        assert!(!file.is_incoming(&first).expect("check"));
        assert!(file.is_incoming(&second).expect("check"));
    }

    #[test]
    fn a_damaged_pointer_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = SnapshotFile::open(dir.path().to_path_buf()).expect("open");
        fs::write(dir.path().join(POINTER), b"not a snapshot").expect("write");
        let error = file.load().expect_err("corrupt");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains(POINTER), "{error}");
    }
}
