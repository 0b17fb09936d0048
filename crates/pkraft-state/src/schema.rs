//! The state file's schema version and the migrations from older ones, run as the file opens.

use redb::{Database, ReadableTable, WriteTransaction};

use crate::StoreError;
use crate::latest::LatestTables;
use crate::rows::{StoredPacket, answers_row};
use crate::shared::begin_durable_write;
use crate::tables::{
    ANSWERS, EXPIRY, META, META_SCHEMA_VERSION, PACKETS, REMOVED_NODES, expiry_key,
};

/// On-disk format version of this file. Bump it (and add a migration) when the layout changes.
/// 2: the `expiry` index (built from `packets` when a version-1 file is opened).
/// 3: the `removed_nodes` table (empty when an older file is opened; an older build refuses the
/// file rather than forget which node ids were removed).
/// 4: the `answers` table (compiled from `packets` when an older file is opened).
pub const SCHEMA_VERSION: u64 = 4;

/// Creates the tables, checks the schema version and migrates an older file, before the
/// writer starts (it owns every write transaction after).
pub(crate) fn init(db: &Database, latest: &LatestTables) -> Result<(), StoreError> {
    {
        let txn = begin_durable_write(db)?;
        {
            txn.open_table(PACKETS)?;
            txn.open_table(ANSWERS)?;
            txn.open_table(EXPIRY)?;
            txn.open_table(REMOVED_NODES)?;
            let mut meta = txn.open_table(META)?;
            let found = meta
                .get(META_SCHEMA_VERSION)?
                .map(|v| decode_u64(v.value()))
                .transpose()?;
            match found {
                None | Some(SCHEMA_VERSION) => {}
                Some(2 | 3) => rebuild_answers(&txn)?,
                Some(1) => {
                    rebuild_expiry_index(&txn)?;
                    rebuild_answers(&txn)?;
                }
                Some(found) => return Err(StoreError::SchemaVersion { found }),
            }
            if found != Some(SCHEMA_VERSION) {
                meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION.to_be_bytes().as_slice())?;
            }
        }
        txn.commit()?;
    }
    latest.refresh(db);
    Ok(())
}

/// Compiles the `answers` table from the `packets` table (schema 3 → 4).
fn rebuild_answers(txn: &WriteTransaction) -> Result<(), StoreError> {
    let packets = txn.open_table(PACKETS)?;
    let mut answers = txn.open_table(ANSWERS)?;
    answers.retain(|_, _| false)?;
    let started = tokio::time::Instant::now();
    let mut compiled = 0u64;
    for row in packets.iter()? {
        let (key, value) = row?;
        let stored = StoredPacket::decode(value.value())?;
        answers.insert(
            key.value(),
            answers_row(key.value(), &stored.payload).as_slice(),
        )?;
        compiled += 1;
    }
    tracing::info!(
        packets = compiled,
        seconds = started.elapsed().as_secs_f64(),
        "compiled the DNS answers of every stored packet (state schema {SCHEMA_VERSION})"
    );
    Ok(())
}

/// Builds the `expiry` index from the `packets` table (schema 1 → 2, and after a snapshot
/// import).
fn rebuild_expiry_index(txn: &WriteTransaction) -> Result<(), StoreError> {
    let packets = txn.open_table(PACKETS)?;
    let mut index = txn.open_table(EXPIRY)?;
    index.retain(|_, ()| false)?;
    for row in packets.iter()? {
        let (key, value) = row?;
        let stored = StoredPacket::decode(value.value())?;
        index.insert(
            &expiry_key(stored.payload.timestamp_micros(), key.value()),
            (),
        )?;
    }
    Ok(())
}

fn decode_u64(bytes: &[u8]) -> Result<u64, StoreError> {
    let be: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("u64 field of {} bytes", bytes.len())))?;
    Ok(u64::from_be_bytes(be))
}
