//! Snapshots: the whole packets table and the removed node ids as one versioned byte string.
//!
//! Format: `MAGIC (8) ‖ SNAPSHOT_FORMAT_VERSION (4, big-endian) ‖ postcard(SnapshotBody)`.
//! Version 1 holds `postcard(Vec<SnapshotEntry>)` and no removed ids; it is still written while
//! no node was ever removed, so that nodes of the previous build can install it.
//! The Raft position a snapshot stands for (its meta) is kept by the consensus layer, next to it.

use pkraft_types::{KeyBytes, Payload};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::{
    META, META_APPLIED_STATE, PACKETS, REMOVED_NODES, Store, StoreError, StoredPacket,
    rebuild_expiry_index,
};

const MAGIC: &[u8; 8] = b"PKRSNAP\0";
/// Version of the snapshot byte format this build writes once a node was removed. It reads this
/// and version 1.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 2;
/// The first format: packets only.
const SNAPSHOT_FORMAT_V1: u32 = 1;
const HEADER_LEN: usize = MAGIC.len() + 4;

#[derive(Serialize, Deserialize)]
struct SnapshotEntry {
    key: KeyBytes,
    applied_at_micros: u64,
    payload: Payload,
}

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    packets: Vec<SnapshotEntry>,
    removed_nodes: Vec<u64>,
}

/// A consistent export of the state: the packets and the `applied_state` they correspond to, read
/// in one read transaction.
#[derive(Debug)]
pub struct Export {
    pub applied_state: Option<Vec<u8>>,
    pub data: Vec<u8>,
    /// Packets in `data`.
    pub records: u64,
}

impl Store {
    /// Exports every packet from one read transaction (a consistent point in the log), together
    /// with the `applied_state` of that same transaction.
    pub fn export_snapshot(&self) -> Result<Export, StoreError> {
        let txn = self.db.begin_read()?;
        let applied_state = txn
            .open_table(META)?
            .get(META_APPLIED_STATE)?
            .map(|v| v.value().to_vec());
        let packets = txn.open_table(PACKETS)?;
        let mut entries = Vec::new();
        for row in packets.iter()? {
            let (key, value) = row?;
            let stored = StoredPacket::decode(value.value())?;
            entries.push(SnapshotEntry {
                key: *key.value(),
                applied_at_micros: stored.applied_at_micros,
                payload: stored.payload,
            });
        }
        let records = u64::try_from(entries.len()).unwrap_or(u64::MAX);
        let mut removed_nodes = Vec::new();
        for row in txn.open_table(REMOVED_NODES)?.iter()? {
            removed_nodes.push(row?.0.value());
        }
        let mut data = Vec::with_capacity(HEADER_LEN);
        data.extend_from_slice(MAGIC);
        // Format 1 as long as no node was ever removed: it says the same, and a node of the
        // previous build (during a rolling upgrade) can still install it.
        let encoded = if removed_nodes.is_empty() {
            data.extend_from_slice(&SNAPSHOT_FORMAT_V1.to_be_bytes());
            postcard::to_extend(&entries, data)
        } else {
            data.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_be_bytes());
            let body = SnapshotBody {
                packets: entries,
                removed_nodes,
            };
            postcard::to_extend(&body, data)
        };
        let data = encoded.map_err(|e| StoreError::Snapshot(format!("encode: {e}")))?;
        Ok(Export {
            applied_state,
            data,
            records,
        })
    }

    /// Replaces the whole state with the snapshot `data` and records `applied_state`, in one write
    /// transaction. The snapshot is decoded and checked completely before anything is written, so a
    /// bad snapshot leaves the state untouched.
    pub fn import_snapshot(&self, data: &[u8], applied_state: &[u8]) -> Result<(), StoreError> {
        let body = decode(data)?;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        txn.delete_table(PACKETS)?;
        txn.delete_table(REMOVED_NODES)?;
        {
            let mut removed = txn.open_table(REMOVED_NODES)?;
            for node_id in body.removed_nodes {
                removed.insert(node_id, ())?;
            }
            let mut packets = txn.open_table(PACKETS)?;
            for entry in body.packets {
                let value = StoredPacket {
                    applied_at_micros: entry.applied_at_micros,
                    payload: entry.payload,
                }
                .encode();
                packets.insert(&entry.key, value.as_slice())?;
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(META_APPLIED_STATE, applied_state)?;
        }
        rebuild_expiry_index(&txn)?;
        txn.commit()?;
        self.versions.bump_all();
        Ok(())
    }
}

fn decode(data: &[u8]) -> Result<SnapshotBody, StoreError> {
    let (header, body) = data
        .split_at_checked(HEADER_LEN)
        .ok_or_else(|| StoreError::Snapshot(format!("{} bytes is too short", data.len())))?;
    let (magic, version) = header.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err(StoreError::Snapshot("not a pkraft snapshot".into()));
    }
    let mut be = [0u8; 4];
    be.copy_from_slice(version);
    match u32::from_be_bytes(be) {
        SNAPSHOT_FORMAT_VERSION => decode_all(body),
        SNAPSHOT_FORMAT_V1 => decode_all(body).map(|packets| SnapshotBody {
            packets,
            removed_nodes: Vec::new(),
        }),
        version => Err(StoreError::Snapshot(format!(
            "format version {version}, this build reads {SNAPSHOT_FORMAT_V1} to \
             {SNAPSHOT_FORMAT_VERSION}"
        ))),
    }
}

/// Decodes `bytes` as one `T` that must use them all.
fn decode_all<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    let (value, rest) = postcard::take_from_bytes(bytes)
        .map_err(|e| StoreError::Snapshot(format!("decode: {e}")))?;
    if !rest.is_empty() {
        return Err(StoreError::Snapshot(format!(
            "{} bytes after the end",
            rest.len()
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a node of this build installs a snapshot that a node of the previous build sent
    /// (format 1: packets only), so a cluster can be upgraded one node at a time.
    #[test]
    fn format_1_snapshots_are_still_read() {
        let entry = SnapshotEntry {
            key: [7u8; 32],
            applied_at_micros: 5,
            payload: Payload::new(bytes::Bytes::from(vec![0u8; 80])).expect("payload"),
        };
        let mut data = MAGIC.to_vec();
        data.extend_from_slice(&SNAPSHOT_FORMAT_V1.to_be_bytes());
        let data = postcard::to_extend(&vec![entry], data).expect("encode");
        let body = decode(&data).expect("decode");
        assert_eq!(body.packets.len(), 1);
        assert_eq!(body.packets[0].key, [7u8; 32]);
        assert!(body.removed_nodes.is_empty());
    }
}
