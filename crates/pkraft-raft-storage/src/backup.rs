//! Backup, restore and verification of a node's data (docs/OPERATIONS.md).
//!
//! - [`write_store_backup`]: a consistent copy of the replica (one read transaction) written as
//!   a backup file to any writer, as it is read: the admin API streams it to `pkraft backup`.
//! - [`restore`]: seeds a new data dir from a backup file as a single-node cluster (disaster
//!   recovery). The data becomes the node's snapshot and the log starts after it, so nodes that
//!   join later receive the data as a snapshot, never a log that lacks it.
//! - [`verify`]: checks a stopped node's files: the log, the state and the snapshot agree, and
//!   every stored packet verifies again.
//! - [`check_backup_file`]: checks a backup file without restoring it.
//!
//! A backup file is `PKRBAK1\0` ‖ header length (u32 BE) ‖ postcard([`BackupHeader`]) ‖ the
//! store's snapshot stream ‖ CRC-32 of everything before it (u32 BE), so a truncated or damaged
//! copy is refused before anything is written. None of these hold the data in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, CommittedLeaderId, LogId, Membership, SnapshotMeta, StoredMembership};
use pkraft_state::{Integrity, SnapshotSummary, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::log_store::LogStore;
use crate::snapshot_file::SnapshotFile;
use crate::state_machine::{AppliedState, sized_snapshot_id};
use crate::{LOG_DIR, NodeId, SNAPSHOT_DIR, STATE_FILE};

const MAGIC: &[u8; 8] = b"PKRBAK1\0";

/// [`BackupError::Io`]: `what` failed for `source`.
fn io(
    what: impl Into<String>,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> BackupError {
    BackupError::Io {
        what: what.into(),
        source: source.into(),
    }
}
const CRC_LEN: u64 = 4;
/// redb page cache of the offline commands (restore, verify): they read or write each page about
/// once, so a large cache would only cost memory.
const OFFLINE_CACHE_BYTES: usize = 32 * 1024 * 1024;
/// A header is a few dozen bytes; more means the file is not a backup.
const HEADER_LEN_MAX: u32 = 4096;

/// What a backup file says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// The node the backup was taken from.
    pub source_node: NodeId,
    /// The last log index applied to the copied replica.
    pub applied_index: Option<u64>,
    /// Packets in the backup.
    pub records: u64,
    /// When it was taken, in seconds since the Unix epoch.
    pub created_unix_secs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Reading or writing a file, waiting for a task, or the Raft log failed (`what` it was
    /// doing; the cause kept).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The directory holds no `raft-log/` or no `state.redb` (the one named).
    #[error("{0} has no {1}: not a pkraft data dir")]
    NotDataDir(PathBuf, &'static str),
    /// The file is not laid out as a backup (composed here: the path and what is wrong).
    #[error("not a pkraft backup file: {0}")]
    Format(String),
    /// The file's header does not decode.
    #[error("not a pkraft backup file: {}: header: {source}", path.display())]
    Header {
        path: PathBuf,
        #[source]
        source: postcard::Error,
    },
    /// The file's snapshot data does not check.
    #[error("not a pkraft backup file: {}: snapshot data: {source}", path.display())]
    SnapshotData {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    /// The backup's header, or the applied state it records, that does not encode or decode.
    #[error("not a pkraft backup file: {what}: {source}")]
    Encoding {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error("{0} already holds pkraft data; restore only into an empty data dir")]
    NotEmpty(PathBuf),
    #[error("the backup's packets do not all verify: {0}")]
    Invalid(String),
}

/// Writes a backup file of `store` as it is now (one read transaction) to `out`, as it reads
/// it, as node `source_node`'s: what the admin API streams to `pkraft backup`. Blocking: run it
/// off the async runtime. Returns the header and the bytes written.
pub fn write_store_backup(
    store: &Store,
    source_node: NodeId,
    out: impl Write,
) -> Result<(BackupHeader, u64), BackupError> {
    let source = store.snapshot_source()?;
    let applied: AppliedState = match source.applied_state()? {
        Some(bytes) => decode(&bytes).map_err(|source| BackupError::Encoding {
            what: "the store's applied state",
            source,
        })?,
        None => AppliedState::default(),
    };
    let header = BackupHeader {
        source_node,
        applied_index: applied.last_applied.map(|log_id| log_id.index),
        records: source.packets()?,
        created_unix_secs: pkraft_types::unix_micros_now() / 1_000_000,
    };
    let encoded = encode(&header).map_err(|source| BackupError::Encoding {
        what: "the header",
        source,
    })?;
    let header_len =
        u32::try_from(encoded.len()).map_err(|_| BackupError::Format("header too long".into()))?;
    let write_error = |e: io::Error| io("writing the backup", e);
    let mut out = CrcWriter::new(out);
    out.write_all(MAGIC).map_err(write_error)?;
    out.write_all(&header_len.to_be_bytes())
        .map_err(write_error)?;
    out.write_all(&encoded).map_err(write_error)?;
    source.write_to(&mut out)?;
    let (mut out, crc, written) = out.finish();
    out.write_all(&crc.to_be_bytes()).map_err(write_error)?;
    out.flush().map_err(write_error)?;
    Ok((header, written + CRC_LEN))
}

/// Passes bytes through, keeping their CRC-32 and count.
struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> CrcWriter<W> {
    fn new(inner: W) -> Self {
        CrcWriter {
            inner,
            crc: crc32fast::Hasher::new(),
            bytes: 0,
        }
    }

    fn finish(self) -> (W, u32, u64) {
        (self.inner, self.crc.finalize(), self.bytes)
    }
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A backup file opened for reading its snapshot data, after its magic and header.
struct BackupFile {
    header: BackupHeader,
    /// The snapshot data, up to the checksum.
    data: io::Take<BufReader<File>>,
}

impl BackupFile {
    fn open(path: &Path) -> Result<Self, BackupError> {
        let format = |what: &str| BackupError::Format(format!("{}: {what}", path.display()));
        let cannot_read = |e| io(format!("cannot read {}", path.display()), e);
        // The file ends before `what`: a layout error; any other read error is I/O.
        let read_error = |e: io::Error, what: &str| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                format(what)
            } else {
                cannot_read(e)
            }
        };
        let file = File::open(path).map_err(cannot_read)?;
        let len = file
            .metadata()
            .map_err(|e| io(path.display().to_string(), e))?
            .len();
        let mut input = BufReader::with_capacity(256 * 1024, file);
        let mut prefix = [0u8; 12];
        input
            .read_exact(&mut prefix)
            .map_err(|e| read_error(e, "too short"))?;
        let (magic, header_len) = prefix.split_at(MAGIC.len());
        if magic != MAGIC {
            return Err(format("no PKRBAK1 magic"));
        }
        let mut be = [0u8; 4];
        be.copy_from_slice(header_len);
        let header_len = u32::from_be_bytes(be);
        if header_len > HEADER_LEN_MAX {
            return Err(format("the header length is implausible"));
        }
        let mut header = vec![0u8; header_len as usize];
        input
            .read_exact(&mut header)
            .map_err(|e| read_error(e, "the header runs past the end"))?;
        let header: BackupHeader = decode(&header).map_err(|source| BackupError::Header {
            path: path.to_path_buf(),
            source,
        })?;
        let data_len = len
            .checked_sub(12 + u64::from(header_len) + CRC_LEN)
            .ok_or_else(|| format("too short"))?;
        Ok(BackupFile {
            header,
            data: input.take(data_len),
        })
    }
}

/// Checks a backup file as a whole, reading it twice and never holding it: its checksum, then
/// every frame of its snapshot data and the record count its header gives.
pub fn check_backup_file(path: &Path) -> Result<(BackupHeader, SnapshotSummary), BackupError> {
    let format = |what: &str| BackupError::Format(format!("{}: {what}", path.display()));
    let io_error = |e: io::Error| io(format!("cannot read {}", path.display()), e);
    let file = File::open(path).map_err(io_error)?;
    let len = file.metadata().map_err(io_error)?.len();
    let body_len = len
        .checked_sub(CRC_LEN)
        .ok_or_else(|| format("too short"))?;
    let mut input = BufReader::with_capacity(256 * 1024, file);
    let mut hasher = CrcWriter::new(io::sink());
    io::copy(&mut Read::by_ref(&mut input).take(body_len), &mut hasher).map_err(io_error)?;
    let mut expected = [0u8; CRC_LEN as usize];
    input.read_exact(&mut expected).map_err(io_error)?;
    if hasher.finish().1 != u32::from_be_bytes(expected) {
        return Err(format("checksum mismatch (truncated or damaged)"));
    }
    let backup = BackupFile::open(path)?;
    let summary =
        pkraft_state::check_snapshot(backup.data).map_err(|source| BackupError::SnapshotData {
            path: path.to_path_buf(),
            source,
        })?;
    if summary.packets != backup.header.records {
        return Err(format(&format!(
            "the header says {} records, the data holds {}",
            backup.header.records, summary.packets
        )));
    }
    Ok((backup.header, summary))
}

/// What [`restore`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Restored {
    pub header: BackupHeader,
    pub records: u64,
}

/// Seeds `data_dir` (which must hold no pkraft data) from the backup file at `backup`, as a new
/// cluster whose only voter is `node_id` at peer address `advertise`. The file is checked whole
/// before anything is written, and every packet is verified before the node can serve it. Start
/// the node afterwards with the same `node_id`, without `cluster.bootstrap` or `cluster.join`
/// being needed.
pub async fn restore(
    data_dir: &Path,
    node_id: NodeId,
    advertise: &str,
    backup: &Path,
) -> Result<Restored, BackupError> {
    let occupied = [LOG_DIR, STATE_FILE, SNAPSHOT_DIR]
        .iter()
        .any(|name| data_dir.join(name).exists());
    if occupied {
        return Err(BackupError::NotEmpty(data_dir.to_path_buf()));
    }
    let path = backup.to_path_buf();
    let (header, _) = pkraft_tasks::blocking(move || check_backup_file(&path))
        .await
        .map_err(|e| io("the check failed", e))??;
    std::fs::create_dir_all(data_dir).map_err(|e| io(data_dir.display().to_string(), e))?;
    let restored = seed(data_dir, node_id, advertise, backup).await;
    if restored.is_err() {
        // Nothing half-restored is left behind: a start would misread it, and a second restore
        // would find the dir occupied. (None of these existed before: checked above.)
        let _ = std::fs::remove_file(data_dir.join(STATE_FILE));
        let _ = std::fs::remove_dir_all(data_dir.join(LOG_DIR));
        let _ = std::fs::remove_dir_all(data_dir.join(SNAPSHOT_DIR));
    }
    Ok(Restored {
        header,
        records: restored?,
    })
}

/// Writes the state, the snapshot and the purged log of a restored node; returns the records.
async fn seed(
    data_dir: &Path,
    node_id: NodeId,
    advertise: &str,
    backup: &Path,
) -> Result<u64, BackupError> {
    // The position a fresh cluster's first entry has (`Raft::initialize` writes its membership
    // at index 0 under leader T0-N0): the data stands in for that entry, already snapshotted.
    let log_id = LogId::new(CommittedLeaderId::new(0, 0), 0);
    let membership = Membership::new(
        vec![BTreeSet::from([node_id])],
        BTreeMap::from([(node_id, BasicNode::new(advertise))]),
    );
    let membership = StoredMembership::new(Some(log_id), membership);
    let applied = AppliedState {
        last_applied: Some(log_id),
        membership: membership.clone(),
    };
    let state_file = data_dir.join(STATE_FILE);
    let snapshot_dir = data_dir.join(SNAPSHOT_DIR);
    let backup = backup.to_path_buf();
    let packets = pkraft_tasks::blocking(move || {
        let store = Store::open_with_cache(&state_file, OFFLINE_CACHE_BYTES)?;
        let applied_bytes = encode(&applied).map_err(|source| BackupError::Encoding {
            what: "the applied state",
            source,
        })?;
        store.import_snapshot_from(BackupFile::open(&backup)?.data, &applied_bytes)?;
        let integrity = store.check_integrity()?;
        if !integrity.problems.is_empty() {
            return Err(BackupError::Invalid(integrity.problems.join("; ")));
        }
        let snapshot_io = |e: io::Error| io("snapshot", e);
        let snapshots = SnapshotFile::open(snapshot_dir).map_err(snapshot_io)?;
        let path = snapshots.build_path();
        let mut file = File::create(&path).map_err(snapshot_io)?;
        let summary = store.snapshot_source()?.write_to(&mut file)?;
        pkraft_types::world::sync_all(&file).map_err(snapshot_io)?;
        // Its size in the id, as the leader's own snapshots have it: a node joining the
        // restored cluster checks its room for the install on the first chunk.
        let meta = SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: membership,
            snapshot_id: sized_snapshot_id(Some(log_id), summary.bytes),
        };
        snapshots.commit(&meta, &path).map_err(snapshot_io)?;
        Ok(integrity.packets)
    })
    .await
    .map_err(|e| io("the restore task failed", e))??;
    let mut log = LogStore::open(&data_dir.join(LOG_DIR)).map_err(|e| io("raft log", e))?;
    log.claim_node_id(node_id).map_err(|e| io("raft log", e))?;
    log.purge(log_id).await.map_err(|e| io("raft log", e))?;
    Ok(packets)
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub node_id: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub packets: u64,
    pub expiry_rows: u64,
    /// Rows of the compiled DNS answers (one per packet).
    pub answer_rows: u64,
    /// Empty when the data dir is consistent.
    pub problems: Vec<String>,
}

/// Rewrites a stopped node's data dir in the formats the previous minor release reads (`pkraft
/// downgrade`): `state.redb` in its schema ([`pkraft_state::downgrade`]); the log, the snapshots
/// and the rest are in formats both read. Fails, changing nothing, on a running node's data dir
/// (it holds `state.redb` locked).
pub fn downgrade(data_dir: &Path) -> Result<pkraft_state::Downgraded, BackupError> {
    for name in [LOG_DIR, STATE_FILE] {
        if !data_dir.join(name).exists() {
            return Err(BackupError::NotDataDir(data_dir.to_path_buf(), name));
        }
    }
    Ok(pkraft_state::downgrade(&data_dir.join(STATE_FILE))?)
}

/// Checks a stopped node's data dir (a running node holds its files locked, and this fails).
/// The files are opened as a start opens them: a torn tail of the log is cut off, and an older
/// state schema is migrated, as the node's next start would do anyway.
pub fn verify(data_dir: &Path) -> Result<Verification, BackupError> {
    for name in [LOG_DIR, STATE_FILE] {
        if !data_dir.join(name).exists() {
            return Err(BackupError::NotDataDir(data_dir.to_path_buf(), name));
        }
    }
    let log = LogStore::open(&data_dir.join(LOG_DIR)).map_err(|e| io("raft log", e))?;
    let node_id = log.node_id().map_err(|e| io("raft log", e))?;
    let last_log_index = log
        .last_log_id()
        .map_err(|e| io("raft log", e))?
        .map(|log_id| log_id.index);
    let purged_index = log
        .purged()
        .map_err(|e| io("raft log", e))?
        .map(|log_id| log_id.index);
    let store = Store::open_with_cache(&data_dir.join(STATE_FILE), OFFLINE_CACHE_BYTES)?;
    let applied: AppliedState = match store.applied_state()? {
        Some(bytes) => decode(&bytes).map_err(|e| io("applied state", e))?,
        None => AppliedState::default(),
    };
    let applied_index = applied.last_applied.map(|log_id| log_id.index);
    let snapshots =
        SnapshotFile::open(data_dir.join(SNAPSHOT_DIR)).map_err(|e| io("snapshot", e))?;
    let snapshot_index = snapshots
        .load_meta()
        .map_err(|e| io("snapshot", e))?
        .and_then(|meta| meta.last_log_id.map(|log_id| log_id.index));
    let Integrity {
        packets,
        expiry_rows,
        answer_rows,
        mut problems,
    } = store.check_integrity()?;
    // The snapshot's data is what a new member would install: read it whole, checksum included.
    if let Some(path) = snapshots.data_path().map_err(|e| io("snapshot", e))? {
        let checked = File::open(&path)
            .map_err(|e| StoreError::SnapshotIo {
                what: "opening".to_string(),
                source: e,
            })
            .and_then(pkraft_state::check_snapshot);
        if let Err(e) = checked {
            problems.push(format!("snapshot {}: {e}", path.display()));
        }
    }

    let log_end = last_log_index.or(purged_index);
    if applied_index > log_end {
        problems.push(format!(
            "the state has applied up to index {} but the log ends at {}",
            show(applied_index),
            show(log_end)
        ));
    }
    if purged_index > applied_index {
        problems.push(format!(
            "the log is purged up to index {} but the state has applied only up to {}: \
             entries in between are lost",
            show(purged_index),
            show(applied_index)
        ));
    }
    if purged_index > snapshot_index {
        problems.push(format!(
            "the log is purged up to index {} but the snapshot covers only up to {}: \
             a new member could not catch up",
            show(purged_index),
            show(snapshot_index)
        ));
    }
    Ok(Verification {
        node_id,
        last_log_index,
        purged_index,
        applied_index,
        snapshot_index,
        packets,
        expiry_rows,
        answer_rows,
        problems,
    })
}

fn show(index: Option<u64>) -> String {
    index.map_or_else(|| "none".to_string(), |index| index.to_string())
}
