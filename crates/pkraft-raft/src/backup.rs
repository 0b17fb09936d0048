//! Backup, restore and verification of a node's data (docs/OPERATIONS.md).
//!
//! - [`Node::backup`]: a consistent copy of the replica (one read transaction) as a backup file.
//! - [`restore`]: seeds a new data dir from a backup file as a single-node cluster (disaster
//!   recovery). The data becomes the node's snapshot and the log starts after it, so nodes that
//!   join later receive the data as a snapshot, never a log that lacks it.
//! - [`verify`]: checks a stopped node's files: the log, the state and the snapshot agree, and
//!   every stored packet verifies again.
//!
//! A backup file is `PKRBAK1\0` ‖ header length (u32 BE) ‖ postcard([`BackupHeader`]) ‖ the
//! store's snapshot data ‖ CRC-32 of everything before it (u32 BE), so a truncated or damaged
//! copy is refused before anything is written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, CommittedLeaderId, LogId, Membership, SnapshotMeta, StoredMembership};
use pkraft_store::{Integrity, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::NodeId;
use crate::codec::{decode, encode};
use crate::log_store::LogStore;
use crate::node::{LOG_DIR, Node, SNAPSHOT_DIR, STATE_FILE};
use crate::snapshot_file::SnapshotFile;
use crate::state_machine::{AppliedState, snapshot_id};

const MAGIC: &[u8; 8] = b"PKRBAK1\0";
const CRC_LEN: usize = 4;

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
    #[error("{0}")]
    Io(String),
    #[error("not a pkraft backup file: {0}")]
    Format(String),
    #[error("{0} already holds pkraft data; restore only into an empty data dir")]
    NotEmpty(PathBuf),
    #[error("the backup's packets do not all verify: {0}")]
    Invalid(String),
}

impl Node {
    /// A backup file of this node's replica as it is now (one read transaction).
    pub async fn backup(&self) -> Result<(BackupHeader, Vec<u8>), BackupError> {
        let store = self.store().clone();
        let source_node = self.id;
        tokio::task::spawn_blocking(move || {
            let export = store.export_snapshot()?;
            let applied: AppliedState = match &export.applied_state {
                Some(bytes) => decode(bytes).map_err(|e| BackupError::Format(e.to_string()))?,
                None => AppliedState::default(),
            };
            let header = BackupHeader {
                source_node,
                applied_index: applied.last_applied.map(|log_id| log_id.index),
                records: export.records,
                created_unix_secs: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            };
            let file = encode_backup(&header, &export.data)?;
            Ok((header, file))
        })
        .await
        .map_err(|e| BackupError::Io(format!("the backup task failed: {e}")))?
    }
}

fn encode_backup(header: &BackupHeader, data: &[u8]) -> Result<Vec<u8>, BackupError> {
    let header = encode(header).map_err(|e| BackupError::Format(e.to_string()))?;
    let header_len =
        u32::try_from(header.len()).map_err(|_| BackupError::Format("header too long".into()))?;
    let mut file = Vec::with_capacity(MAGIC.len() + 4 + header.len() + data.len() + CRC_LEN);
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&header_len.to_be_bytes());
    file.extend_from_slice(&header);
    file.extend_from_slice(data);
    let crc = crc32fast::hash(&file);
    file.extend_from_slice(&crc.to_be_bytes());
    Ok(file)
}

/// The header and the snapshot data of a backup file, after checking its magic and checksum.
pub fn decode_backup(file: &[u8]) -> Result<(BackupHeader, &[u8]), BackupError> {
    let format = |what: &str| BackupError::Format(what.to_string());
    let body_len = file
        .len()
        .checked_sub(CRC_LEN)
        .ok_or_else(|| format("too short"))?;
    let (body, crc) = file.split_at(body_len);
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| format("no PKRBAK1 magic"))?;
    let mut expected = [0u8; CRC_LEN];
    expected.copy_from_slice(crc);
    if crc32fast::hash(body) != u32::from_be_bytes(expected) {
        return Err(format("checksum mismatch (truncated or damaged)"));
    }
    let (len, rest) = rest
        .split_at_checked(4)
        .ok_or_else(|| format("no header"))?;
    let mut len_be = [0u8; 4];
    len_be.copy_from_slice(len);
    let header_len = usize::try_from(u32::from_be_bytes(len_be)).map_err(|_| format("header"))?;
    let (header, data) = rest
        .split_at_checked(header_len)
        .ok_or_else(|| format("header runs past the end"))?;
    let header = decode(header).map_err(|e| BackupError::Format(format!("header: {e}")))?;
    Ok((header, data))
}

/// What [`restore`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Restored {
    pub header: BackupHeader,
    pub records: u64,
}

/// Seeds `data_dir` (which must hold no pkraft data) from a backup file, as a new cluster whose
/// only voter is `node_id` at peer address `advertise`. Every packet is verified before the
/// node can serve it. Start the node afterwards with the same `node_id`, without
/// `cluster.bootstrap` or `cluster.join` being needed.
pub async fn restore(
    data_dir: &Path,
    node_id: NodeId,
    advertise: &str,
    file: &[u8],
) -> Result<Restored, BackupError> {
    let (header, data) = decode_backup(file)?;
    let occupied = [LOG_DIR, STATE_FILE, SNAPSHOT_DIR]
        .iter()
        .any(|name| data_dir.join(name).exists());
    if occupied {
        return Err(BackupError::NotEmpty(data_dir.to_path_buf()));
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| BackupError::Io(format!("{}: {e}", data_dir.display())))?;
    let restored = seed(data_dir, node_id, advertise, data).await;
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
    data: &[u8],
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

    let store = Store::open(&data_dir.join(STATE_FILE))?;
    let applied_bytes = encode(&applied).map_err(|e| BackupError::Format(e.to_string()))?;
    store.import_snapshot(data, &applied_bytes)?;
    let integrity = store.check_integrity()?;
    drop(store);
    if !integrity.problems.is_empty() {
        return Err(BackupError::Invalid(integrity.problems.join("; ")));
    }
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: membership,
        snapshot_id: snapshot_id(Some(log_id)),
    };
    SnapshotFile::new(data_dir.join(SNAPSHOT_DIR))
        .save(&meta, data)
        .map_err(|e| BackupError::Io(format!("snapshot: {e}")))?;
    let mut log = LogStore::open(&data_dir.join(LOG_DIR))
        .map_err(|e| BackupError::Io(format!("raft log: {e}")))?;
    log.claim_node_id(node_id)
        .map_err(|e| BackupError::Io(format!("raft log: {e}")))?;
    log.purge(log_id)
        .await
        .map_err(|e| BackupError::Io(format!("raft log: {e}")))?;
    Ok(integrity.packets)
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
    /// Empty when the data dir is consistent.
    pub problems: Vec<String>,
}

/// Checks a stopped node's data dir (a running node holds its files locked, and this fails).
/// The files are opened as a start opens them: a torn tail of the log is cut off, and an older
/// state schema is migrated, as the node's next start would do anyway.
pub fn verify(data_dir: &Path) -> Result<Verification, BackupError> {
    let io = |what: &str, e: &dyn std::fmt::Display| BackupError::Io(format!("{what}: {e}"));
    for name in [LOG_DIR, STATE_FILE] {
        if !data_dir.join(name).exists() {
            return Err(BackupError::Io(format!(
                "{} has no {name}: not a pkraft data dir",
                data_dir.display()
            )));
        }
    }
    let log = LogStore::open(&data_dir.join(LOG_DIR)).map_err(|e| io("raft log", &e))?;
    let node_id = log.node_id().map_err(|e| io("raft log", &e))?;
    let last_log_index = log
        .last_log_id()
        .map_err(|e| io("raft log", &e))?
        .map(|log_id| log_id.index);
    let purged_index = log
        .purged()
        .map_err(|e| io("raft log", &e))?
        .map(|log_id| log_id.index);
    let store = Store::open(&data_dir.join(STATE_FILE))?;
    let applied: AppliedState = match store.applied_state()? {
        Some(bytes) => decode(&bytes).map_err(|e| io("applied state", &e))?,
        None => AppliedState::default(),
    };
    let applied_index = applied.last_applied.map(|log_id| log_id.index);
    let snapshot_index = SnapshotFile::new(data_dir.join(SNAPSHOT_DIR))
        .load_meta()
        .map_err(|e| io("snapshot", &e))?
        .and_then(|meta| meta.last_log_id.map(|log_id| log_id.index));
    let Integrity {
        packets,
        expiry_rows,
        mut problems,
    } = store.check_integrity()?;

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
        problems,
    })
}

fn show(index: Option<u64>) -> String {
    index.map_or_else(|| "none".to_string(), |index| index.to_string())
}
