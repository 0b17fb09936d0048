//! The replicated state on disk: one redb file holding every stored packet and the Raft state it
//! reflects.
//!
//! # Layout
//! - `packets` table: 32-byte public key → `applied_at_micros (8, big-endian) ‖ relay payload`.
//! - `meta` table: the schema version and `applied_state`, an opaque blob owned by the consensus
//!   layer (last applied log id and membership). Keeping it opaque keeps openraft out of this crate.
//!
//! Writes happen only through [`ApplyTxn`], whose commit takes the new `applied_state`: the data
//! and the position in the log it corresponds to are always committed in one transaction.
//! Reads ([`Store::get`]) use redb's MVCC read transactions and never wait for the writer.

mod snapshot;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use pkraft_types::{Command, KeyBytes, Payload, PublishOutcome, decide};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use redb::{TableDefinition, WriteTransaction};

pub use snapshot::SNAPSHOT_FORMAT_VERSION;

const PACKETS: TableDefinition<&KeyBytes, &[u8]> = TableDefinition::new("packets");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const META_SCHEMA_VERSION: &str = "schema_version";
const META_APPLIED_STATE: &str = "applied_state";

/// On-disk format version of this file. Bump it (and add a migration) when the layout changes.
pub const SCHEMA_VERSION: u64 = 1;

/// Bytes of the `applied_at_micros` prefix in a `packets` value.
const APPLIED_AT_LEN: usize = 8;

/// Errors of the state store. Every variant means the node cannot serve correct data; the caller
/// should stop the node rather than limp on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] redb::Error),
    #[error("database file has schema version {found}, this build reads version {SCHEMA_VERSION}")]
    SchemaVersion { found: u64 },
    #[error("corrupt state store: {0}")]
    Corrupt(String),
    #[error("invalid snapshot: {0}")]
    Snapshot(String),
}

/// `?` on any redb error type goes through `redb::Error`.
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// A packet as stored on a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPacket {
    /// Leader clock time of the log entry that stored the packet (µs since the Unix epoch).
    pub applied_at_micros: u64,
    pub payload: Payload,
}

impl StoredPacket {
    fn encode(&self) -> Vec<u8> {
        let mut value = Vec::with_capacity(APPLIED_AT_LEN + self.payload.byte_len());
        value.extend_from_slice(&self.applied_at_micros.to_be_bytes());
        value.extend_from_slice(self.payload.as_bytes());
        value
    }

    fn decode(value: &[u8]) -> Result<Self, StoreError> {
        let (time, payload) = value
            .split_at_checked(APPLIED_AT_LEN)
            .ok_or_else(|| StoreError::Corrupt(format!("packet value of {} bytes", value.len())))?;
        let mut be = [0u8; APPLIED_AT_LEN];
        be.copy_from_slice(time);
        let payload = Payload::new(Bytes::copy_from_slice(payload))
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(StoredPacket {
            applied_at_micros: u64::from_be_bytes(be),
            payload,
        })
    }
}

/// Handle to the state database. Cheap to clone; all clones share one redb `Database`.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the state database at `path`, creating the tables and checking the
    /// schema version.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path)?;
        let store = Store { db: Arc::new(db) };
        store.init_schema()?;
        Ok(store)
    }

    fn init_schema(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            txn.open_table(PACKETS)?;
            let mut meta = txn.open_table(META)?;
            let found = meta
                .get(META_SCHEMA_VERSION)?
                .map(|v| decode_u64(v.value()))
                .transpose()?;
            match found {
                None => {
                    meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION.to_be_bytes().as_slice())?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(found) => return Err(StoreError::SchemaVersion { found }),
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The packet stored for `key`, read from the latest committed state.
    pub fn get(&self, key: &KeyBytes) -> Result<Option<StoredPacket>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PACKETS)?;
        let value = table.get(key)?;
        value.map(|v| StoredPacket::decode(v.value())).transpose()
    }

    /// Number of stored packets.
    pub fn packet_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(PACKETS)?.len()?)
    }

    /// Handles to this database that are still open (this one included). redb locks its file, so
    /// the same file can be opened again only after every handle is dropped.
    pub fn open_handles(&self) -> usize {
        Arc::strong_count(&self.db)
    }

    /// The consensus layer's blob committed with the last applied transaction, if any.
    pub fn applied_state(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(META_APPLIED_STATE)?.map(|v| v.value().to_vec()))
    }

    /// Starts the write transaction that applies a run of log entries. Nothing is visible to
    /// readers until [`ApplyTxn::commit`].
    ///
    /// With `durable` false the commit does not wait for fsync. That is safe because the state
    /// is a projection of the Raft log, which is fsynced before an entry is acknowledged: after a
    /// crash, redb rolls back to the last durable commit and the consensus layer applies the
    /// missing entries again from the log. It must make the state durable (a durable apply, or
    /// [`Store::flush`]) before it purges the log entries that state reflects.
    pub fn begin_apply(&self, durable: bool) -> Result<ApplyTxn, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        Ok(ApplyTxn { txn })
    }

    /// Makes every commit so far durable: one fsynced transaction, which in redb also persists
    /// all the non-durable commits before it.
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            // Rewrite the applied state, so the transaction has something to commit.
            let mut meta = txn.open_table(META)?;
            let applied = meta.get(META_APPLIED_STATE)?.map(|v| v.value().to_vec());
            if let Some(applied) = applied {
                meta.insert(META_APPLIED_STATE, applied.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

/// One write transaction over the state: apply commands, then commit them together with the
/// `applied_state` they lead to.
pub struct ApplyTxn {
    txn: WriteTransaction,
}

impl ApplyTxn {
    /// Applies one command and returns one outcome per packet, in order. Deterministic: the result
    /// depends only on the stored state and the command (no clock, no randomness).
    pub fn apply(&mut self, command: &Command) -> Result<Vec<PublishOutcome>, StoreError> {
        match command {
            Command::Publish {
                leader_time_micros,
                packets,
            } => {
                let mut table = self.txn.open_table(PACKETS)?;
                let mut outcomes = Vec::with_capacity(packets.len());
                for item in packets {
                    let stored = table
                        .get(&item.key)?
                        .map(|v| StoredPacket::decode(v.value()))
                        .transpose()?;
                    let outcome = decide(stored.as_ref().map(|s| &s.payload), &item.payload);
                    if outcome == PublishOutcome::Stored {
                        let value = StoredPacket {
                            applied_at_micros: *leader_time_micros,
                            payload: item.payload.clone(),
                        }
                        .encode();
                        table.insert(&item.key, value.as_slice())?;
                    }
                    outcomes.push(outcome);
                }
                Ok(outcomes)
            }
        }
    }

    /// Commits the applied commands and `applied_state` atomically (durably if the transaction
    /// was begun durable).
    pub fn commit(self, applied_state: &[u8]) -> Result<(), StoreError> {
        {
            let mut meta = self.txn.open_table(META)?;
            meta.insert(META_APPLIED_STATE, applied_state)?;
        }
        self.txn.commit()?;
        Ok(())
    }
}

fn decode_u64(bytes: &[u8]) -> Result<u64, StoreError> {
    let be: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("u64 field of {} bytes", bytes.len())))?;
    Ok(u64::from_be_bytes(be))
}

#[cfg(test)]
mod tests;
