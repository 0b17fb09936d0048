//! The current snapshot on disk: `<dir>/current`, replaced atomically.
//!
//! Format: `MAGIC (8) ‖ meta length (4, big-endian) ‖ postcard(SnapshotMeta) ‖ snapshot data`.
//! Writing goes to `current.tmp`, which is fsynced and renamed over `current`, and then the
//! directory is fsynced: after a crash there is either the old snapshot or the new one.
//!
//! openraft builds snapshots in a task of their own, concurrently with installing one received
//! from the leader. Saves are therefore serialized, and a snapshot never replaces one that covers
//! more of the log: a slow build must not roll `current` back behind an install (the log may
//! already be purged up to the installed snapshot).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use openraft::{BasicNode, SnapshotMeta};

use crate::NodeId;
use crate::codec::{decode, encode};

const MAGIC: &[u8; 8] = b"PKRSMETA";
const FILE_NAME: &str = "current";
const TMP_NAME: &str = "current.tmp";
/// Bytes before the meta: magic and meta length.
const PREFIX_LEN: usize = MAGIC.len() + 4;

/// A snapshot's meta and data, as stored.
pub(crate) type StoredSnapshot = (SnapshotMeta<NodeId, BasicNode>, Vec<u8>);

#[derive(Clone, Debug)]
pub(crate) struct SnapshotFile {
    dir: PathBuf,
    /// Serializes saves (see the module docs).
    save_lock: Arc<Mutex<()>>,
}

impl SnapshotFile {
    pub(crate) fn new(dir: PathBuf) -> Self {
        SnapshotFile {
            dir,
            save_lock: Arc::new(Mutex::new(())),
        }
    }

    /// Makes this snapshot the current one, unless the current one covers more of the log.
    /// Returns whether it was saved.
    pub(crate) fn save(
        &self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        data: &[u8],
    ) -> io::Result<bool> {
        let _serialized = self
            .save_lock
            .lock()
            .map_err(|_| io::Error::other("a snapshot save panicked"))?;
        if let Some(current) = self.load_meta()?
            && current.last_log_id > meta.last_log_id
        {
            return Ok(false);
        }
        fs::create_dir_all(&self.dir)?;
        let meta = encode(meta).map_err(io::Error::other)?;
        let meta_len = u32::try_from(meta.len()).map_err(io::Error::other)?;
        let tmp = self.dir.join(TMP_NAME);
        {
            let mut file = File::create(&tmp)?;
            file.write_all(MAGIC)?;
            file.write_all(&meta_len.to_be_bytes())?;
            file.write_all(&meta)?;
            file.write_all(data)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, self.dir.join(FILE_NAME))?;
        File::open(&self.dir)?.sync_all()?;
        Ok(true)
    }

    pub(crate) fn load(&self) -> io::Result<Option<StoredSnapshot>> {
        let Some(mut file) = self.open()? else {
            return Ok(None);
        };
        let meta = read_meta(&mut file)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        Ok(Some((meta, data)))
    }

    /// The current snapshot's meta, without reading its data.
    pub(crate) fn load_meta(&self) -> io::Result<Option<SnapshotMeta<NodeId, BasicNode>>> {
        self.open()?
            .map(|mut file| read_meta(&mut file))
            .transpose()
    }

    fn open(&self) -> io::Result<Option<File>> {
        match File::open(self.dir.join(FILE_NAME)) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Reads the prefix and meta, leaving `file` at the start of the data.
fn read_meta(file: &mut File) -> io::Result<SnapshotMeta<NodeId, BasicNode>> {
    let corrupt =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("snapshot file: {what}"));
    let mut prefix = [0u8; PREFIX_LEN];
    file.read_exact(&mut prefix)
        .map_err(|_| corrupt("truncated"))?;
    let (magic, len) = prefix.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err(corrupt("bad magic"));
    }
    let mut be = [0u8; 4];
    be.copy_from_slice(len);
    let meta_len = usize::try_from(u32::from_be_bytes(be)).map_err(io::Error::other)?;
    let mut meta = vec![0u8; meta_len];
    file.read_exact(&mut meta)
        .map_err(|_| corrupt("truncated meta"))?;
    decode(&meta).map_err(|e| corrupt(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId};

    use super::*;

    fn meta(index: u64) -> SnapshotMeta<NodeId, BasicNode> {
        SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
            last_membership: Default::default(),
            snapshot_id: format!("s{index}"),
        }
    }

    #[test]
    fn save_load_and_never_roll_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = SnapshotFile::new(dir.path().join("snapshot"));
        assert!(file.load().expect("load").is_none());

        assert!(file.save(&meta(10), b"ten").expect("save"));
        let (loaded, data) = file.load().expect("load").expect("present");
        assert_eq!((loaded, data), (meta(10), b"ten".to_vec()));

        // A build that started before an install and finishes after it must not replace it.
        assert!(!file.save(&meta(5), b"five").expect("save"));
        assert_eq!(
            file.load().expect("load").expect("present").1,
            b"ten".to_vec()
        );

        assert!(file.save(&meta(20), b"twenty").expect("save"));
        assert_eq!(file.load().expect("load").expect("present").0, meta(20));
    }

    #[test]
    fn corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = SnapshotFile::new(dir.path().to_path_buf());
        fs::write(dir.path().join(FILE_NAME), b"not a snapshot").expect("write");
        assert_eq!(
            file.load().expect_err("corrupt").kind(),
            io::ErrorKind::InvalidData
        );
    }
}
