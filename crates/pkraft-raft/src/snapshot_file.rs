//! The current snapshot on disk: `<dir>/current`, replaced atomically.
//!
//! Format: `MAGIC (8) ‖ meta length (4, big-endian) ‖ postcard(SnapshotMeta) ‖ snapshot data`.
//! Writing goes to `current.tmp`, which is fsynced and renamed over `current`, and then the
//! directory is fsynced: after a crash there is either the old snapshot or the new one.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::PathBuf;

use openraft::{BasicNode, SnapshotMeta};

use crate::NodeId;
use crate::codec::{decode, encode};

const MAGIC: &[u8; 8] = b"PKRSMETA";
const FILE_NAME: &str = "current";
const TMP_NAME: &str = "current.tmp";

/// A snapshot's meta and data, as stored.
pub(crate) type StoredSnapshot = (SnapshotMeta<NodeId, BasicNode>, Vec<u8>);

#[derive(Clone, Debug)]
pub(crate) struct SnapshotFile {
    dir: PathBuf,
}

impl SnapshotFile {
    pub(crate) fn new(dir: PathBuf) -> Self {
        SnapshotFile { dir }
    }

    pub(crate) fn save(
        &self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        data: &[u8],
    ) -> io::Result<()> {
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
        File::open(&self.dir)?.sync_all()
    }

    pub(crate) fn load(&self) -> io::Result<Option<StoredSnapshot>> {
        let mut file = match File::open(self.dir.join(FILE_NAME)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let corrupt = |what: &str| {
            io::Error::new(io::ErrorKind::InvalidData, format!("snapshot file: {what}"))
        };
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| corrupt("bad magic"))?;
        let (len, rest) = rest
            .split_at_checked(4)
            .ok_or_else(|| corrupt("truncated"))?;
        let mut be = [0u8; 4];
        be.copy_from_slice(len);
        let meta_len = usize::try_from(u32::from_be_bytes(be)).map_err(io::Error::other)?;
        let (meta, data) = rest
            .split_at_checked(meta_len)
            .ok_or_else(|| corrupt("truncated meta"))?;
        let meta = decode(meta).map_err(|e| corrupt(&e.to_string()))?;
        Ok(Some((meta, data.to_vec())))
    }
}
