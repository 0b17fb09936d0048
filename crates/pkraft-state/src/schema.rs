//! The state file's schema version and the migrations from older ones, run as the file opens.

use std::path::Path;

use redb::{Database, ReadableTable, WriteTransaction};

use crate::StoreError;
use crate::expiry_index::{self, EXPIRY_BUCKETS, EXPIRY_EXACT, META_EXACT_BELOW};
use crate::latest::LatestTables;
use crate::rows::{StoredPacket, answers_row};
use crate::shared::begin_durable_write;
use crate::synced_backend::create_database;
use crate::tables::{ANSWERS, META, META_SCHEMA_VERSION, PACKETS, REMOVED_NODES};

/// On-disk format version of this file. Bump it (and add a migration) when the layout changes.
/// 2: the `expiry` index (built from `packets` when a version-1 file is opened).
/// 3: the `removed_nodes` table (empty when an older file is opened; an older build refuses the
/// file rather than forget which node ids were removed).
/// 4: the `answers` table (compiled from `packets` when an older file is opened).
/// 5: the expiry index by bucket (`expiry_buckets`, `expiry_index.rs`), with the index by exact
/// timestamp (`expiry`) kept for the buckets at expiry's cut-off only; built from `packets`
/// when an older file is opened.
pub const SCHEMA_VERSION: u64 = 5;

/// The schema the previous minor release reads (`pkraft downgrade` writes it: [`downgrade`]).
pub const PREVIOUS_SCHEMA_VERSION: u64 = 4;

/// What [`downgrade`] did to a state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Downgraded {
    /// Rewritten from [`SCHEMA_VERSION`] to [`PREVIOUS_SCHEMA_VERSION`]: the index by exact
    /// timestamp built for this many packets.
    Rewritten { packets: u64 },
    /// Already at [`PREVIOUS_SCHEMA_VERSION`]: nothing written.
    AlreadyPrevious,
}

/// Rewrites the state file at `path`, of a stopped node, in the schema the previous minor
/// release reads (schema 5 → 4: every packet's expiry row by exact timestamp, in `expiry`, and
/// no rows by bucket), in one durable transaction, so that the older build starts on the node's
/// data dir as it was; this build converts it back when it next opens it. Nothing else in the
/// file differs between the two schemas (the older build ignores `meta` keys it does not
/// know). A file of another version is refused and left as it is; so is a file another
/// process holds open (redb's lock).
pub fn downgrade(path: &Path) -> Result<Downgraded, StoreError> {
    // Not created when missing (`create_database` would).
    std::fs::metadata(path).map_err(|e| StoreError::Db(redb::Error::Io(e)))?;
    let db = create_database(&Database::builder(), path).map_err(redb::Error::from)?;
    let txn = begin_durable_write(&db)?;
    let packets = {
        let mut meta = txn.open_table(META)?;
        let found = meta
            .get(META_SCHEMA_VERSION)?
            .map(|v| decode_u64(v.value()))
            .transpose()?;
        match found {
            Some(PREVIOUS_SCHEMA_VERSION) => return Ok(Downgraded::AlreadyPrevious),
            Some(SCHEMA_VERSION) => {}
            found => return Err(StoreError::NotDowngradable { found }),
        }
        txn.delete_table(EXPIRY_BUCKETS)?;
        meta.remove(META_EXACT_BELOW)?;
        txn.open_table(EXPIRY_EXACT)?.retain(|_, ()| false)?;
        let indexed =
            expiry_index::index_every_packet(&txn, EXPIRY_EXACT, expiry_index::exact_row)?;
        meta.insert(
            META_SCHEMA_VERSION,
            PREVIOUS_SCHEMA_VERSION.to_be_bytes().as_slice(),
        )?;
        indexed
    };
    txn.commit()?;
    Ok(Downgraded::Rewritten { packets })
}

/// Creates the tables, checks the schema version and migrates an older file, before the
/// writer starts (it owns every write transaction after).
pub(crate) fn init(db: &Database, latest: &LatestTables) -> Result<(), StoreError> {
    {
        let txn = begin_durable_write(db)?;
        {
            txn.open_table(PACKETS)?;
            txn.open_table(ANSWERS)?;
            txn.open_table(EXPIRY_BUCKETS)?;
            txn.open_table(EXPIRY_EXACT)?;
            txn.open_table(REMOVED_NODES)?;
            let mut meta = txn.open_table(META)?;
            let found = meta
                .get(META_SCHEMA_VERSION)?
                .map(|v| decode_u64(v.value()))
                .transpose()?;
            match found {
                None | Some(SCHEMA_VERSION) => {}
                Some(4) => {
                    meta.remove(META_EXACT_BELOW)?;
                    rebuild_expiry_index(&txn)?;
                }
                Some(1..=3) => {
                    meta.remove(META_EXACT_BELOW)?;
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

/// Builds the expiry index from the `packets` table, every row by bucket, in place of schema
/// 4's by exact timestamp (schemas 1 to 4 → 5).
fn rebuild_expiry_index(txn: &WriteTransaction) -> Result<(), StoreError> {
    expiry_index::empty_tables(txn)?;
    let started = tokio::time::Instant::now();
    let indexed = expiry_index::index_every_packet(txn, EXPIRY_BUCKETS, expiry_index::row_of)?;
    tracing::info!(
        packets = indexed,
        seconds = started.elapsed().as_secs_f64(),
        "built the expiry index by bucket of every stored packet (state schema {SCHEMA_VERSION})"
    );
    Ok(())
}

fn decode_u64(bytes: &[u8]) -> Result<u64, StoreError> {
    let be: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("u64 field of {} bytes", bytes.len())))?;
    Ok(u64::from_be_bytes(be))
}
