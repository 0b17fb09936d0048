//! What the writer (`writer.rs`) and the transactions it runs (`apply.rs`) share: the handles a
//! commit and an apply use, what an apply counts, the guard of a paused writer, and the durable
//! transaction every durable commit begins with.

use std::sync::Arc;

use redb::{Database, Durability, ReadableTable, ReadableTableMetadata};

use crate::StoreError;
use crate::latest::LatestTables;
use crate::quarantine::Quarantine;
use crate::read_buffer::ReadBuffer;
use crate::tables::{META, META_APPLIED_STATE, PACKETS};
use crate::versions::KeyVersions;

/// The handles a commit and an apply use: the database, what readers read, and the caches they
/// check.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) db: Arc<Database>,
    pub(crate) latest: Arc<LatestTables>,
    pub(crate) versions: Arc<KeyVersions>,
    pub(crate) quarantine: Arc<Quarantine>,
    pub(crate) buffer: Arc<ReadBuffer>,
}

impl Shared {
    /// After a commit: readers get the committed tables, then the buffer's rows (all in them now)
    /// go. In that order: see "Order" in `read_buffer.rs`.
    pub(crate) fn committed(&self) {
        self.latest.refresh(&self.db);
        self.buffer.clear();
    }

    /// Makes every commit so far durable when no transaction is open: a durable transaction that
    /// writes the applied state again (redb persists the non-durable commits before it with it).
    pub(crate) fn flush_committed(&self) -> Result<(), StoreError> {
        let txn = begin_durable_write(&self.db)?;
        {
            let mut meta = txn.open_table(META)?;
            let applied = meta.get(META_APPLIED_STATE)?.map(|v| v.value().to_vec());
            if let Some(applied) = applied {
                meta.insert(META_APPLIED_STATE, applied.as_slice())?;
            }
        }
        txn.commit()?;
        self.latest.refresh(&self.db);
        Ok(())
    }
}

/// A write transaction that commits with fsync and saves redb's allocator state, so that
/// opening the file after a crash needs no full repair (see `Store::open_with_cache`). The cost
/// is a second fsync per durable commit; they are rare.
pub(crate) fn begin_durable_write(db: &Database) -> Result<redb::WriteTransaction, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    txn.set_quick_repair(true);
    Ok(txn)
}

/// What a transaction applied: log entries, and packets stored or deleted (each a row of the
/// read buffer).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AppliedCounts {
    pub(crate) entries: u64,
    pub(crate) packets: u64,
}

/// Held while the writer is paused; dropping it lets the writer go on.
pub(crate) struct Paused {
    /// Dropping it resumes the writer: the sender its thread waits on, or, when the writer runs
    /// inline (a simulation), a guard that resumes it as it drops.
    _resume: Box<dyn Send>,
}

impl Paused {
    /// Holds the writer until this guard is dropped, which drops `resume`.
    pub(crate) fn holding(resume: impl Send + 'static) -> Paused {
        Paused {
            _resume: Box::new(resume),
        }
    }
}

/// Packets the committed `packets` table holds, read in `txn`.
pub(crate) fn packets_in(txn: &redb::WriteTransaction) -> Result<u64, StoreError> {
    Ok(txn.open_table(PACKETS)?.len()?)
}
