//! [`Store`]: the handle to the state file, its opening and its reads.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pkraft_types::KeyBytes;
use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};

use crate::StoreError;
use crate::expiry_index::{self, EXPIRY_BUCKETS, EXPIRY_EXACT};
use crate::latest::{self, LatestTables};
use crate::quarantine::Quarantine;
use crate::read_buffer::{Buffered, ReadBuffer};
use crate::rows::{AnswersBytes, AnswersRow, StoredPacket, answers_form, hex};
use crate::schema;
use crate::shared::Shared;
use crate::synced_backend::create_database;
use crate::tables::{
    ANSWERS, META, META_APPLIED_STATE, META_LOG_TIME, PACKETS, REMOVED_NODES, keys_after,
};
use crate::versions::{KeyVersion, KeyVersions};
use crate::writer::Writer;

/// redb page cache of [`Store::open`]: the default of `raft.state_cache_mib`. (redb's own
/// default is 1 GiB.)
pub const DEFAULT_CACHE_BYTES: usize = 256 * 1024 * 1024;

/// Handle to the state database. Cheap to clone; all clones share one redb `Database`.
#[derive(Clone)]
pub struct Store {
    /// The owner of every write transaction (`writer.rs`). Declared first: the last handle
    /// stops the writer (which commits what it holds) before anything else goes.
    pub(crate) writer: Arc<Writer>,
    /// Declared before `db`: the last handle lets go of the kept read transaction before it
    /// closes the database.
    pub(crate) latest: Arc<LatestTables>,
    pub(crate) db: Arc<Database>,
    pub(crate) versions: Arc<KeyVersions>,
    /// Keys found damaged, refused by `get` (see `quarantine`).
    pub(crate) quarantine: Arc<Quarantine>,
    /// What the writer's open transaction holds and has not committed (`read_buffer.rs`).
    pub(crate) buffer: Arc<ReadBuffer>,
    /// Reads of the `packets` table by key (`get`, `holds`), for `packet_reads`.
    pub(crate) packet_reads: Arc<AtomicU64>,
    /// The size of redb's page cache (`open_with_cache`), for the warm-up (`warm.rs`).
    pub(crate) cache_bytes: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the state database at `path` with redb's page cache at
    /// [`DEFAULT_CACHE_BYTES`], creating the tables and checking the schema version.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// [`Store::open`] with `cache_bytes` of redb page cache. redb keeps at most this much of
    /// the file in memory, its write buffer (half of it at most) included.
    ///
    /// A file that was not closed cleanly (the process was killed) is repaired by redb as it
    /// opens, which the log reports with its progress. Every durable commit saves redb's allocator
    /// state ("quick repair"), so that repair is a load of that state, not the three full scans of
    /// the file it would otherwise be (24 s at 10M records: docs/BENCHMARKS.md, "Scale").
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        let shown = path.display().to_string();
        let started = tokio::time::Instant::now();
        let repaired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let db = {
            let repaired = repaired.clone();
            let mut builder = Database::builder();
            builder
                .set_cache_size(cache_bytes)
                .set_repair_callback(move |session| {
                    repaired.store(true, Ordering::Relaxed);
                    tracing::warn!(
                        "{shown} was not closed cleanly: redb is repairing it ({:.0} % done)",
                        session.progress() * 100.0
                    );
                });
            create_database(&builder, path)?
        };
        if repaired.load(Ordering::Relaxed) {
            tracing::warn!(
                "{} repaired in {:.1} s",
                path.display(),
                started.elapsed().as_secs_f64()
            );
        }
        let db = Arc::new(db);
        let latest = Arc::new(LatestTables::new());
        // Before the writer starts: it is the only writer from then on.
        schema::init(&db, &latest)?;
        let shared = Shared {
            db,
            latest,
            versions: Arc::new(KeyVersions::new()),
            quarantine: Arc::new(Quarantine::default()),
            buffer: Arc::new(ReadBuffer::new()),
        };
        Ok(Store {
            writer: Arc::new(Writer::start(shared.clone())?),
            latest: shared.latest,
            db: shared.db,
            versions: shared.versions,
            quarantine: shared.quarantine,
            buffer: shared.buffer,
            packet_reads: Arc::new(AtomicU64::new(0)),
            cache_bytes,
        })
    }

    /// Rows the writer's open transaction holds and has not committed: what readers find in the
    /// read buffer (`pkraft_store_uncommitted_rows`).
    pub fn uncommitted_rows(&self) -> usize {
        self.buffer.len()
    }

    /// Reads of stored packets by key ([`Store::get`], [`Store::holds`]) since the store was
    /// opened, by every handle: how many times the write path reads the store per PUT
    /// (`pkraft_store_packet_reads_total`).
    pub fn packet_reads(&self) -> u64 {
        self.packet_reads.load(Ordering::Relaxed)
    }

    /// The version of `key`'s packet, for caches of [`Store::get`]: read it before the packet,
    /// and the cached packet is current for as long as the version stays the same.
    pub fn key_version(&self, key: &KeyBytes) -> KeyVersion {
        self.versions.of(key)
    }

    /// The packet stored for `key` as applied on this node: what the open apply transaction
    /// holds for it, else the latest commit's (see `read_buffer.rs`). A key this node found
    /// damaged ([`Store::quarantine`]) is [`StoreError::Quarantined`].
    pub fn get(&self, key: &KeyBytes) -> Result<Option<StoredPacket>, StoreError> {
        self.packet_reads.fetch_add(1, Ordering::Relaxed);
        match self.buffered(key)? {
            Some(Buffered::Stored { packet, .. }) => StoredPacket::decode_shared(&packet).map(Some),
            Some(Buffered::Deleted) => Ok(None),
            None => {
                let value = self.point_read(key, PACKETS, |tables| &tables.packets)?;
                value.map(|v| StoredPacket::decode(v.value())).transpose()
            }
        }
    }

    /// Whether a packet is stored for `key`, without reading it out. A key this node found
    /// damaged is [`StoreError::Quarantined`], as in [`Store::get`].
    pub fn holds(&self, key: &KeyBytes) -> Result<bool, StoreError> {
        self.packet_reads.fetch_add(1, Ordering::Relaxed);
        match self.buffered(key)? {
            Some(Buffered::Stored { .. }) => Ok(true),
            Some(Buffered::Deleted) => Ok(false),
            None => Ok(self
                .point_read(key, PACKETS, |tables| &tables.packets)?
                .is_some()),
        }
    }

    /// What the open apply transaction holds for `key`, if it wrote it: read before the
    /// committed tables (see `read_buffer.rs`). Refused for a key this node found damaged.
    fn buffered(&self, key: &KeyBytes) -> Result<Option<Buffered>, StoreError> {
        if self.quarantine.contains(key) {
            return Err(StoreError::Quarantined(hex(key)));
        }
        Ok(self.buffer.get(key))
    }

    /// `key`'s row of `table` in the latest committed state: through the transaction kept since
    /// the last commit (`kept` picks its table), or one of its own when none is kept. Only after
    /// [`Store::buffered`] missed: it refuses a damaged key and holds what is newer.
    ///
    /// The row keeps its read transaction alive (redb's `get_owned`) for as long as the caller
    /// holds it. A plain `get` does not: with the kept transaction replaced by a commit
    /// meanwhile, a later non-durable commit frees the row's page while the caller still holds
    /// it, which redb's debug build asserts against (`a_held_row_outlives_the_commits_after_it`).
    fn point_read(
        &self,
        key: &KeyBytes,
        table: TableDefinition<&KeyBytes, &[u8]>,
        kept: fn(&latest::Tables) -> &latest::KeyTable,
    ) -> Result<Option<redb::OwnedAccessGuard<&'static [u8]>>, StoreError> {
        // After the caller's `key_version`: see `latest.rs` for why the order matters.
        Ok(match self.latest.load() {
            Some(tables) => kept(&tables).get_owned(key)?,
            None => self.db.begin_read()?.open_table(table)?.get_owned(key)?,
        })
    }

    /// The DNS answers compiled from the packet stored for `key` ([`pkraft_types::compiled`]),
    /// as applied (see [`Store::get`]), a committed row checked against its checksum; `None` when no
    /// packet is stored. A row whose checksum fails is [`StoreError::Corrupt`], naming the key;
    /// a key this node found damaged is [`StoreError::Quarantined`], as in [`Store::get`].
    pub fn answers(&self, key: &KeyBytes) -> Result<Option<AnswersRow>, StoreError> {
        match self.buffered(key)? {
            Some(Buffered::Stored { answers, .. }) => {
                return Ok(Some(AnswersRow(AnswersBytes::Buffered(answers))));
            }
            Some(Buffered::Deleted) => return Ok(None),
            None => {}
        }
        let Some(row) = self.point_read(key, ANSWERS, |tables| &tables.answers)? else {
            return Ok(None);
        };
        if answers_form(key, row.value()).is_none() {
            return Err(StoreError::Corrupt(format!(
                "compiled answers of key {}: checksum mismatch",
                hex(key)
            )));
        }
        Ok(Some(AnswersRow(AnswersBytes::Committed(row))))
    }

    /// The smallest signed timestamp of any stored packet (µs), if any packet is stored, as
    /// committed; when it is in a bucket of the expiry index that holds more than a few thousand
    /// packets, that bucket's start, which is no later (`expiry_index::oldest_timestamp`).
    pub fn oldest_timestamp_micros(&self) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let buckets = txn.open_table(EXPIRY_BUCKETS)?;
        let exact = txn.open_table(EXPIRY_EXACT)?;
        let packets = txn.open_table(PACKETS)?;
        expiry_index::oldest_timestamp(&buckets, &exact, &packets)
    }

    /// Whether `node_id` was removed from the cluster (as of the last applied entry).
    pub fn is_removed_node(&self, node_id: u64) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(REMOVED_NODES)?.get(node_id)?.is_some())
    }

    /// Up to `limit` stored packets in key order, starting after `after` (from the first key
    /// when `None`): one page of a sweep over every key, each page its own read transaction.
    pub fn packets_after(
        &self,
        after: Option<&KeyBytes>,
        limit: usize,
    ) -> Result<Vec<(KeyBytes, StoredPacket)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PACKETS)?;
        let rows = table.range::<&KeyBytes>(keys_after(after))?;
        let mut page = Vec::with_capacity(limit.min(1024));
        for row in rows.take(limit) {
            let (key, value) = row?;
            page.push((*key.value(), StoredPacket::decode(value.value())?));
        }
        Ok(page)
    }

    /// Refuses reads of `key` ([`Store::get`]) from now on: its stored packet was found damaged.
    /// Until an applied entry stores or deletes the key, a snapshot is imported or the node
    /// restarts; at most [`crate::QUARANTINE_MAX`] keys (false when the bound is reached). Caches of
    /// `get` see the key's version move on.
    ///
    /// A key the open apply transaction wrote is not held: the scrub found the damage in the
    /// committed tables, and what readers see for the key (the read buffer) has replaced it. The
    /// buffer is looked at after the add, so an apply that wrote the key before it (and
    /// released it already) is seen, and one after it releases the key itself.
    pub fn quarantine(&self, key: &KeyBytes) -> bool {
        let held = self.quarantine.add(key);
        if self.buffer.get(key).is_some() {
            self.quarantine.release(key);
        }
        self.versions.bump(key);
        held
    }

    /// Lets `key` be read again after [`Store::quarantine`]: its row was written again between
    /// the scrub's read and the quarantine, so the damaged bytes are gone.
    pub fn release_quarantine(&self, key: &KeyBytes) {
        self.quarantine.release(key);
        self.versions.bump(key);
    }

    /// Number of stored packets, as applied (the open apply transaction's count while it holds
    /// any row).
    pub fn packet_count(&self) -> Result<u64, StoreError> {
        if let Some(count) = self.buffer.packet_count() {
            return Ok(count);
        }
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(PACKETS)?.len()?)
    }

    /// Handles to this database that are still open (this one included). redb locks its file, so
    /// the same file can be opened again only after every handle is dropped.
    pub fn open_handles(&self) -> usize {
        Arc::strong_count(&self.writer)
    }

    /// The consensus layer's blob committed with the last applied transaction, if any.
    pub fn applied_state(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(META_APPLIED_STATE)?.map(|v| v.value().to_vec()))
    }

    /// The largest leader stamp applied to this replica (see `META_LOG_TIME`), if any. A value
    /// that is not 8 bytes is damage, named as such.
    pub fn log_time_micros(&self) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let Some(value) = meta.get(META_LOG_TIME)? else {
            return Ok(None);
        };
        let bytes: [u8; 8] = value.value().try_into().map_err(|_| {
            StoreError::Corrupt(format!(
                "meta {META_LOG_TIME} holds {} bytes, not 8",
                value.value().len()
            ))
        })?;
        Ok(Some(u64::from_be_bytes(bytes)))
    }

    /// The handles the writer and its transactions share with this store.
    pub(crate) fn shared(&self) -> Shared {
        Shared {
            db: self.db.clone(),
            latest: self.latest.clone(),
            versions: self.versions.clone(),
            quarantine: self.quarantine.clone(),
            buffer: self.buffer.clone(),
        }
    }
}
