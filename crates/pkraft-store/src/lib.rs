//! The replicated state on disk: one redb file holding every stored packet and the Raft state it
//! reflects.
//!
//! # Layout
//! - `packets` table: 32-byte public key → `applied_at_micros (8, big-endian) ‖ relay payload`.
//! - `expiry` table: `signed timestamp (8, big-endian) ‖ key (32)` → `()`, one row per stored
//!   packet, so `Command::Expire` finds the oldest packets without a scan.
//! - `answers` table: 32-byte public key → the packet's DNS records compiled into wire form
//!   ([`pkraft_types::compiled`]) ‖ CRC-32 of key and form; one row per stored packet, written
//!   in the same transaction as it, so the DNS frontend answers a name without parsing the
//!   packet ([`Store::answers`]).
//! - `removed_nodes` table: node id → `()` for every node ever removed from the cluster, so that
//!   a removed id is never admitted again (the consensus layer fills it as it applies membership
//!   changes).
//! - `meta` table: the schema version and `applied_state`, an opaque blob owned by the consensus
//!   layer (last applied log id and membership). Keeping it opaque keeps openraft out of this crate.
//!
//! Writes happen only through [`ApplyTxn`], whose commit takes the new `applied_state`: the data
//! and the position in the log it corresponds to are always committed in one transaction. The
//! one exception writes nothing the log decides: [`Store::recompile_answers`] rewrites `answers`
//! rows the scrub found not to match their packets, from the packets.
//! Reads ([`Store::get`]) use redb's MVCC read transactions and never wait for the writer.

mod latest;
mod quarantine;
mod snapshot;
mod versions;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use pkraft_types::{Command, KeyBytes, Payload, PublishOutcome, decide};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use redb::{TableDefinition, WriteTransaction};

pub use quarantine::QUARANTINE_MAX;
pub use snapshot::{
    Export, SNAPSHOT_FORMAT_VERSION, SnapshotSource, SnapshotSummary, StreamCheck, StreamVerdict,
    check_snapshot,
};
pub use versions::KeyVersion;

use latest::LatestTables;
use quarantine::Quarantine;
use versions::KeyVersions;

const PACKETS: TableDefinition<&KeyBytes, &[u8]> = TableDefinition::new("packets");
const ANSWERS: TableDefinition<&KeyBytes, &[u8]> = TableDefinition::new("answers");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const EXPIRY: TableDefinition<&ExpiryKey, ()> = TableDefinition::new("expiry");
const REMOVED_NODES: TableDefinition<u64, ()> = TableDefinition::new("removed_nodes");

/// `signed timestamp (8, big-endian) ‖ public key (32)`: sorts by timestamp.
type ExpiryKey = [u8; 40];

fn expiry_key(timestamp_micros: u64, key: &KeyBytes) -> ExpiryKey {
    let mut row = [0u8; 40];
    row[..8].copy_from_slice(&timestamp_micros.to_be_bytes());
    row[8..].copy_from_slice(key);
    row
}

const META_SCHEMA_VERSION: &str = "schema_version";
const META_APPLIED_STATE: &str = "applied_state";
/// The largest leader stamp (`Command::Publish::leader_time_micros`) applied, u64 big-endian:
/// the log's time, one of the fences of cluster time (pkraft-raft's `cluster_clock`). Absent
/// before the first publish with a stamp (a stamp of 0 says the leader knew no agreed time, and
/// is not recorded); a snapshot install leaves it as it was (the install does not replace
/// `meta`'s other keys); builds that do not know it ignore it.
const META_LOG_TIME: &str = "log_time_micros";

/// On-disk format version of this file. Bump it (and add a migration) when the layout changes.
/// 2: the `expiry` index (built from `packets` when a version-1 file is opened).
/// 3: the `removed_nodes` table (empty when an older file is opened; an older build refuses the
/// file rather than forget which node ids were removed).
/// 4: the `answers` table (compiled from `packets` when an older file is opened).
pub const SCHEMA_VERSION: u64 = 4;

/// redb page cache of [`Store::open`]: the default of `raft.state_cache_mib`. (redb's own
/// default is 1 GiB.)
pub const DEFAULT_CACHE_BYTES: usize = 256 * 1024 * 1024;

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
    /// The file or socket a snapshot is written to or read from failed.
    #[error("snapshot I/O: {0}")]
    SnapshotIo(String),
    /// The key's stored packet was found damaged on this node's disk and is not served
    /// ([`Store::quarantine`]); other nodes hold it whole.
    #[error("the packet of key {0} is damaged on this node's disk and not served")]
    Quarantined(String),
}

impl StoreError {
    /// Whether this says the file's bytes are damaged (redb found a checksum, a page or a
    /// header wrong, or a stored record does not decode), as opposed to an error of the
    /// environment (I/O, a lock, a file of a newer schema) that a restart may not see again.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt(_) | StoreError::Db(redb::Error::Corrupted(_))
        )
    }
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

/// A row of the `answers` table, checked ([`Store::answers`]); holds the read transaction it
/// came from until dropped.
pub struct AnswersRow(redb::OwnedAccessGuard<&'static [u8]>);

impl AnswersRow {
    /// The compiled form, for [`pkraft_types::compiled::CompiledPacket::read`].
    pub fn form(&self) -> &[u8] {
        let row = self.0.value();
        // The checksum was checked when the row was read.
        &row[..row.len().saturating_sub(ANSWERS_CRC_LEN)]
    }
}

/// Bytes of the CRC-32 after a compiled form in the `answers` table.
const ANSWERS_CRC_LEN: usize = 4;

/// The `answers` row of `payload`, the packet stored for `key`: its compiled form, then the
/// CRC-32 of key and form (so a row written under another key fails the check too).
fn answers_row(key: &KeyBytes, payload: &Payload) -> Vec<u8> {
    let mut row = pkraft_types::compiled::compile(key, payload);
    let crc = answers_crc(key, &row);
    row.extend_from_slice(&crc.to_be_bytes());
    row
}

fn answers_crc(key: &KeyBytes, form: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(key);
    crc.update(form);
    crc.finalize()
}

/// The compiled form in an `answers` row, if its checksum holds.
fn answers_form<'r>(key: &KeyBytes, row: &'r [u8]) -> Option<&'r [u8]> {
    let (form, crc) = row.split_at_checked(row.len().checked_sub(ANSWERS_CRC_LEN)?)?;
    let crc = u32::from_be_bytes(crc.try_into().ok()?);
    (answers_crc(key, form) == crc).then_some(form)
}

/// Compiles the `answers` table from the `packets` table (schema 3 → 4).
fn rebuild_answers(txn: &WriteTransaction) -> Result<(), StoreError> {
    let packets = txn.open_table(PACKETS)?;
    let mut answers = txn.open_table(ANSWERS)?;
    answers.retain(|_, _| false)?;
    let started = std::time::Instant::now();
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

/// Handle to the state database. Cheap to clone; all clones share one redb `Database`.
#[derive(Clone)]
pub struct Store {
    /// Declared before `db`: the last handle lets go of the kept read transaction before it
    /// closes the database.
    latest: Arc<LatestTables>,
    db: Arc<Database>,
    versions: Arc<KeyVersions>,
    /// Keys found damaged, refused by `get` (see `quarantine`).
    quarantine: Arc<Quarantine>,
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
        let started = std::time::Instant::now();
        let repaired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let db = {
            let repaired = repaired.clone();
            Database::builder()
                .set_cache_size(cache_bytes)
                .set_repair_callback(move |session| {
                    repaired.store(true, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(
                        "{shown} was not closed cleanly: redb is repairing it ({:.0} % done)",
                        session.progress() * 100.0
                    );
                })
                .create(path)?
        };
        if repaired.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                "{} repaired in {:.1} s",
                path.display(),
                started.elapsed().as_secs_f64()
            );
        }
        let store = Store {
            latest: Arc::new(LatestTables::new()),
            db: Arc::new(db),
            versions: Arc::new(KeyVersions::new()),
            quarantine: Arc::new(Quarantine::default()),
        };
        store.init_schema()?;
        Ok(store)
    }

    /// A write transaction that commits with fsync and saves redb's allocator state, so that
    /// opening the file after a crash needs no full repair (see [`Store::open_with_cache`]).
    /// The cost is a second fsync per durable commit; they are rare (every 4,096 applied
    /// entries, snapshot installs, clean stops).
    fn begin_durable_write(&self) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.set_quick_repair(true);
        Ok(txn)
    }

    fn init_schema(&self) -> Result<(), StoreError> {
        let txn = self.begin_durable_write()?;
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
        self.latest.refresh(&self.db);
        Ok(())
    }

    /// The version of `key`'s packet, for caches of [`Store::get`]: read it before the packet,
    /// and the cached packet is current for as long as the version stays the same.
    pub fn key_version(&self, key: &KeyBytes) -> KeyVersion {
        self.versions.of(key)
    }

    /// The packet stored for `key`, read from the latest committed state. A key this node found
    /// damaged ([`Store::quarantine`]) is [`StoreError::Quarantined`].
    pub fn get(&self, key: &KeyBytes) -> Result<Option<StoredPacket>, StoreError> {
        let value = self.point_read(key, PACKETS, |tables| &tables.packets)?;
        value.map(|v| StoredPacket::decode(v.value())).transpose()
    }

    /// Whether a packet is stored for `key` in the latest committed state, without reading it
    /// out. A key this node found damaged is [`StoreError::Quarantined`], as in [`Store::get`].
    pub fn holds(&self, key: &KeyBytes) -> Result<bool, StoreError> {
        Ok(self
            .point_read(key, PACKETS, |tables| &tables.packets)?
            .is_some())
    }

    /// `key`'s row of `table` in the latest committed state: through the transaction kept since
    /// the last commit (`kept` picks its table), or one of its own when none is kept. Refused
    /// for a key this node found damaged ([`Store::quarantine`]).
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
        if self.quarantine.contains(key) {
            return Err(StoreError::Quarantined(hex(key)));
        }
        // After the caller's `key_version`: see `latest.rs` for why the order matters.
        Ok(match self.latest.load() {
            Some(tables) => kept(&tables).get_owned(key)?,
            None => self.db.begin_read()?.open_table(table)?.get_owned(key)?,
        })
    }

    /// The DNS answers compiled from the packet stored for `key` ([`pkraft_types::compiled`]),
    /// read from the latest committed state and checked against their checksum; `None` when no
    /// packet is stored. A row whose checksum fails is [`StoreError::Corrupt`], naming the key;
    /// a key this node found damaged is [`StoreError::Quarantined`], as in [`Store::get`].
    pub fn answers(&self, key: &KeyBytes) -> Result<Option<AnswersRow>, StoreError> {
        let Some(row) = self.point_read(key, ANSWERS, |tables| &tables.answers)? else {
            return Ok(None);
        };
        if answers_form(key, row.value()).is_none() {
            return Err(StoreError::Corrupt(format!(
                "compiled answers of key {}: checksum mismatch",
                hex(key)
            )));
        }
        Ok(Some(AnswersRow(row)))
    }

    /// The smallest signed timestamp of any stored packet (µs), if any packet is stored.
    pub fn oldest_timestamp_micros(&self) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let index = txn.open_table(EXPIRY)?;
        let first = index.first()?;
        Ok(first.map(|(row, _)| timestamp_of(row.value())))
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
        let rows = match after {
            Some(after) => table.range::<&KeyBytes>((
                std::ops::Bound::Excluded(after),
                std::ops::Bound::Unbounded,
            ))?,
            None => table.range::<&KeyBytes>(..)?,
        };
        let mut page = Vec::with_capacity(limit.min(1024));
        for row in rows.take(limit) {
            let (key, value) = row?;
            page.push((*key.value(), StoredPacket::decode(value.value())?));
        }
        Ok(page)
    }

    /// Refuses reads of `key` ([`Store::get`]) from now on: its stored packet was found damaged.
    /// Until an applied entry stores or deletes the key, a snapshot is imported or the node
    /// restarts; at most [`QUARANTINE_MAX`] keys (false when the bound is reached). Caches of
    /// `get` see the key's version move on.
    pub fn quarantine(&self, key: &KeyBytes) -> bool {
        let held = self.quarantine.add(key);
        self.versions.bump(key);
        held
    }

    /// One page of the background scrub: re-verifies up to `limit` stored packets in key order
    /// after `after` (from the first key when `None`), as a PUT verifies them (signature,
    /// length, DNS parse), and stops at the first that fails. It also compares the `answers`
    /// rows of its key range with what its packets compile to ([`ScrubPage::stale_answers`]).
    /// A sweep asks for pages until one holds no packet. Each page is its own read transaction.
    pub fn scrub_packets(
        &self,
        after: Option<&KeyBytes>,
        limit: usize,
    ) -> Result<ScrubPage, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PACKETS)?;
        let rows = match after {
            Some(after) => table.range::<&KeyBytes>((
                std::ops::Bound::Excluded(after),
                std::ops::Bound::Unbounded,
            ))?,
            None => table.range::<&KeyBytes>(..)?,
        };
        let mut page = ScrubPage::default();
        // The compiled answers each verified packet's row should hold, in key order.
        let mut expected: Vec<(KeyBytes, Vec<u8>)> = Vec::with_capacity(limit.min(1024));
        for row in rows.take(limit) {
            let (key, value) = row?;
            let key = *key.value();
            let value = value.value();
            page.last_key = Some(key);
            page.packets += 1;
            match verify_row(&key, value) {
                Ok(stored) => expected.push((key, answers_row(&key, &stored.payload))),
                Err(e) => {
                    page.damaged = Some(DamagedPacket {
                        key,
                        value_crc: crc32fast::hash(value),
                        reason: e.to_string(),
                    });
                    break;
                }
            }
        }
        // The `answers` rows of the same keys: up to the page's last packet. A sweep ends with
        // a page that holds no packet (the caller asks again until it gets one), which checks
        // the rows past the last packet: they have none.
        let upper = match page.last_key {
            Some(last) => std::ops::Bound::Included(last),
            None => std::ops::Bound::Unbounded,
        };
        let lower = after.map_or(std::ops::Bound::Unbounded, |after| {
            std::ops::Bound::Excluded(*after)
        });
        let answers = txn.open_table(ANSWERS)?;
        let damaged_key = page.damaged.as_ref().map(|damaged| damaged.key);
        let mut expected = expected.into_iter().peekable();
        for row in answers.range::<&KeyBytes>((lower.as_ref(), upper.as_ref()))? {
            // Rows without a packet are not bounded by the page's packets: the next pass finds
            // the rest, once these are removed.
            if page.stale_answers.len() >= limit {
                return Ok(page);
            }
            let (key, value) = row?;
            let key = *key.value();
            // Packets before this key with no row at all.
            while let Some((missing, _)) = expected.next_if(|(packet_key, _)| *packet_key < key) {
                page.stale_answers.push(StaleAnswers {
                    key: missing,
                    problem: AnswersProblem::Missing,
                });
            }
            let problem = match expected.next_if(|(packet_key, _)| *packet_key == key) {
                Some((_, row)) if row.as_slice() == value.value() => continue,
                Some(_) if answers_form(&key, value.value()).is_none() => AnswersProblem::Damaged,
                Some(_) => AnswersProblem::Differs,
                // The damaged packet's row is not judged: the packet is not served.
                None if damaged_key == Some(key) => continue,
                None => AnswersProblem::WithoutPacket,
            };
            page.stale_answers.push(StaleAnswers { key, problem });
        }
        page.stale_answers
            .extend(expected.map(|(key, _)| StaleAnswers {
                key,
                problem: AnswersProblem::Missing,
            }));
        Ok(page)
    }

    /// Writes `keys`' rows of the `answers` table again from their stored packets (removes the
    /// row of a key with no packet): what the scrub does with the [`StaleAnswers`] it finds.
    /// Each packet is read in the same transaction as its row is written, so a packet applied
    /// since the scrub read it is compiled, not the older one.
    pub fn recompile_answers(&self, keys: &[KeyBytes]) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        // Rows derived from packets that are already durable: a crash before the next durable
        // commit loses the rewrite, and the next scrub pass finds the row again.
        txn.set_durability(Durability::None)?;
        {
            let packets = txn.open_table(PACKETS)?;
            let mut answers = txn.open_table(ANSWERS)?;
            for key in keys {
                let stored = packets
                    .get(key)?
                    .map(|value| StoredPacket::decode(value.value()))
                    .transpose()?;
                match stored {
                    Some(stored) => {
                        answers.insert(key, answers_row(key, &stored.payload).as_slice())?;
                    }
                    None => {
                        answers.remove(key)?;
                    }
                }
            }
        }
        txn.commit()?;
        self.latest.refresh(&self.db);
        for key in keys {
            self.versions.bump(key);
        }
        Ok(())
    }

    /// What this node stores for `key`, checked as the scrub checks it: for another node's
    /// scrub, which asks whether a packet it found damaged is whole here.
    pub fn check_packet(&self, key: &KeyBytes) -> Result<PacketCheck, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PACKETS)?;
        let Some(value) = table.get(key)? else {
            return Ok(PacketCheck::Absent);
        };
        let value = value.value();
        let value_crc = crc32fast::hash(value);
        Ok(match verify_row(key, value) {
            Ok(_) => PacketCheck::Whole { value_crc },
            Err(_) => PacketCheck::Damaged { value_crc },
        })
    }

    /// Lets `key` be read again after [`Store::quarantine`]: its row was written again between
    /// the scrub's read and the quarantine, so the damaged bytes are gone.
    pub fn release_quarantine(&self, key: &KeyBytes) {
        self.quarantine.release(key);
        self.versions.bump(key);
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

    /// Starts the write transaction that applies a run of log entries. Nothing is visible to
    /// readers until [`ApplyTxn::commit`].
    ///
    /// With `durable` false the commit does not wait for fsync. That is safe because the state
    /// is a projection of the Raft log, which is fsynced before an entry is acknowledged: after a
    /// crash, redb rolls back to the last durable commit and the consensus layer applies the
    /// missing entries again from the log. It must make the state durable (a durable apply, or
    /// [`Store::flush`]) before it purges the log entries that state reflects.
    pub fn begin_apply(&self, durable: bool) -> Result<ApplyTxn, StoreError> {
        let txn = if durable {
            self.begin_durable_write()?
        } else {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::None)?;
            txn
        };
        Ok(ApplyTxn {
            txn,
            db: self.db.clone(),
            latest: self.latest.clone(),
            versions: self.versions.clone(),
            quarantine: self.quarantine.clone(),
            changed: Vec::new(),
            log_time_micros: None,
        })
    }

    /// Makes every commit so far durable: one fsynced transaction, which in redb also persists
    /// all the non-durable commits before it.
    pub fn flush(&self) -> Result<(), StoreError> {
        let txn = self.begin_durable_write()?;
        {
            // Rewrite the applied state, so the transaction has something to commit.
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

/// One write transaction over the state: apply commands, then commit them together with the
/// `applied_state` they lead to.
pub struct ApplyTxn {
    txn: WriteTransaction,
    /// For the reads after the commit (`latest`).
    db: Arc<Database>,
    latest: Arc<LatestTables>,
    versions: Arc<KeyVersions>,
    quarantine: Arc<Quarantine>,
    /// Keys whose packet this transaction stores or deletes; their versions move on after the
    /// commit.
    changed: Vec<KeyBytes>,
    /// The largest leader stamp of the publishes applied in this transaction.
    log_time_micros: Option<u64>,
}

impl ApplyTxn {
    /// Applies one command. Deterministic: the result depends only on the stored state and the
    /// command (no clock, no randomness).
    pub fn apply(&mut self, command: &Command) -> Result<Applied, StoreError> {
        match command {
            Command::Publish {
                leader_time_micros,
                packets,
            } => Ok(Applied {
                outcomes: self.publish(*leader_time_micros, packets)?,
                expired: 0,
            }),
            Command::Expire {
                before_micros,
                limit,
            } => Ok(Applied {
                outcomes: Vec::new(),
                expired: self.expire(*before_micros, *limit)?,
            }),
            // The consensus layer keeps the DHT publisher's progress; no stored data changes.
            Command::DhtProgress { .. } => Ok(Applied::default()),
            // Each replica keeps short-lived records in memory (`ShortLivedRecords`); none is
            // stored.
            Command::ShortLivedRecord(_) => Ok(Applied::default()),
        }
    }

    /// Records that these nodes left the cluster, for good. Called by the consensus layer for
    /// the nodes a membership entry drops, so every replica records the same ids.
    pub fn record_removed_nodes(&mut self, node_ids: &[u64]) -> Result<(), StoreError> {
        let mut removed = self.txn.open_table(REMOVED_NODES)?;
        for node_id in node_ids {
            removed.insert(*node_id, ())?;
        }
        Ok(())
    }

    /// One outcome per packet, in order.
    fn publish(
        &mut self,
        leader_time_micros: u64,
        packets: &[pkraft_types::PublishItem],
    ) -> Result<Vec<PublishOutcome>, StoreError> {
        if leader_time_micros > 0 {
            self.log_time_micros = self.log_time_micros.max(Some(leader_time_micros));
        }
        let mut table = self.txn.open_table(PACKETS)?;
        let mut answers = self.txn.open_table(ANSWERS)?;
        let mut index = self.txn.open_table(EXPIRY)?;
        let mut outcomes = Vec::with_capacity(packets.len());
        for item in packets {
            let stored = table
                .get(&item.key)?
                .map(|v| StoredPacket::decode(v.value()))
                .transpose()?;
            let outcome = decide(stored.as_ref().map(|s| &s.payload), &item.payload);
            if outcome == PublishOutcome::Stored {
                if let Some(old) = &stored {
                    index.remove(&expiry_key(old.payload.timestamp_micros(), &item.key))?;
                }
                let value = StoredPacket {
                    applied_at_micros: leader_time_micros,
                    payload: item.payload.clone(),
                }
                .encode();
                table.insert(&item.key, value.as_slice())?;
                answers.insert(&item.key, answers_row(&item.key, &item.payload).as_slice())?;
                index.insert(&expiry_key(item.payload.timestamp_micros(), &item.key), ())?;
                self.changed.push(item.key);
            }
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// Deletes up to `limit` packets signed before `before_micros`, oldest first; returns how
    /// many.
    fn expire(&mut self, before_micros: u64, limit: u32) -> Result<u64, StoreError> {
        let mut table = self.txn.open_table(PACKETS)?;
        let mut answers = self.txn.open_table(ANSWERS)?;
        let mut index = self.txn.open_table(EXPIRY)?;
        let end = expiry_key(before_micros, &[0u8; 32]);
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut rows = Vec::new();
        for row in index.range::<&ExpiryKey>(..&end)?.take(limit) {
            let (row, _) = row?;
            rows.push(*row.value());
        }
        for row in &rows {
            index.remove(row)?;
            let mut key = [0u8; 32];
            key.copy_from_slice(&row[8..]);
            table.remove(&key)?;
            answers.remove(&key)?;
            self.changed.push(key);
        }
        Ok(rows.len() as u64)
    }

    /// Commits the applied commands and `applied_state` atomically (durably if the transaction
    /// was begun durable).
    pub fn commit(self, applied_state: &[u8]) -> Result<(), StoreError> {
        {
            let mut meta = self.txn.open_table(META)?;
            meta.insert(META_APPLIED_STATE, applied_state)?;
            if let Some(stamp) = self.log_time_micros {
                // Only forward: an older stamp (or a damaged value, which reads as none and is
                // replaced) never lowers the log's time.
                let stored = meta
                    .get(META_LOG_TIME)?
                    .and_then(|value| <[u8; 8]>::try_from(value.value()).ok())
                    .map(u64::from_be_bytes);
                if stored.is_none_or(|stored| stamp > stored) {
                    meta.insert(META_LOG_TIME, stamp.to_be_bytes().as_slice())?;
                }
            }
        }
        self.txn.commit()?;
        // Also when no packet changed: a kept transaction older than this commit would hold
        // back the reuse of every page freed since.
        self.latest.refresh(&self.db);
        for key in &self.changed {
            // A row written again is no longer the damaged one.
            self.quarantine.release(key);
            self.versions.bump(key);
        }
        Ok(())
    }
}

/// What applying one command did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// One per published packet, in order (empty for other commands).
    pub outcomes: Vec<PublishOutcome>,
    /// Packets deleted by expiry.
    pub expired: u64,
}

fn timestamp_of(row: &ExpiryKey) -> u64 {
    let mut be = [0u8; 8];
    be.copy_from_slice(&row[..8]);
    u64::from_be_bytes(be)
}

/// What one page of the scrub read ([`Store::scrub_packets`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubPage {
    /// The last key read: the next page starts after it. `None`: the sweep has passed the last
    /// key.
    pub last_key: Option<KeyBytes>,
    /// Packets read.
    pub packets: usize,
    /// The packet that failed its check, if one did (the page ends at it).
    pub damaged: Option<DamagedPacket>,
    /// Rows of the `answers` table in the page's key range that are not what the page's
    /// packets compile to ([`Store::recompile_answers`] writes them again).
    pub stale_answers: Vec<StaleAnswers>,
}

/// A row of the `answers` table that does not match its packet, found by the scrub. The DNS
/// frontend answers a key whose row fails its checksum from the packet itself, but a whole row
/// that is stale (a write the disk lost) or has no packet would be served as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleAnswers {
    pub key: KeyBytes,
    pub problem: AnswersProblem,
}

/// What is wrong with a [`StaleAnswers`] row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswersProblem {
    /// The packet has no row.
    Missing,
    /// The row fails its checksum.
    Damaged,
    /// The row is whole, but not what the stored packet compiles to.
    Differs,
    /// The row's key has no packet.
    WithoutPacket,
}

impl std::fmt::Display for StaleAnswers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.problem {
            AnswersProblem::Missing => "missing",
            AnswersProblem::Damaged => "damaged (checksum mismatch)",
            AnswersProblem::Differs => "not what the stored packet compiles to",
            AnswersProblem::WithoutPacket => "stored without a packet",
        };
        write!(f, "compiled DNS answers of key {}: {what}", hex(&self.key))
    }
}

/// A stored packet that does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedPacket {
    pub key: KeyBytes,
    /// CRC-32 of the stored value: the same bytes found again have the same one.
    pub value_crc: u32,
    pub reason: String,
}

impl std::fmt::Display for DamagedPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "packet {} (stored value crc {:08x}): {}",
            hex(&self.key),
            self.value_crc,
            self.reason
        )
    }
}

/// A stored row checked as a PUT verifies a packet (decode, signature, length, DNS parse).
fn verify_row(key: &KeyBytes, value: &[u8]) -> Result<StoredPacket, StoreError> {
    let stored = StoredPacket::decode(value)?;
    let body = stored.payload.as_bytes().clone();
    pkraft_types::VerifiedPacket::verify_stored(key, body)
        .map_err(|e| StoreError::Corrupt(format!("does not verify: {e}")))?;
    Ok(stored)
}

/// What [`Store::check_packet`] found for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketCheck {
    /// No packet is stored for the key.
    Absent,
    /// The stored packet verifies. `value_crc` is the CRC-32 of the stored value (the same bytes
    /// give the same one, as in [`DamagedPacket::value_crc`]).
    Whole { value_crc: u32 },
    /// The stored packet does not verify.
    Damaged { value_crc: u32 },
}

/// What [`Store::check_integrity`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Integrity {
    /// Packets stored.
    pub packets: u64,
    /// Rows of the expiry index.
    pub expiry_rows: u64,
    /// Rows of the compiled DNS answers.
    pub answer_rows: u64,
    /// Every problem found, one line each (empty: none).
    pub problems: Vec<String>,
}

/// Problems listed one by one before the rest are only counted (a damaged file could have
/// millions).
const PROBLEMS_LISTED: usize = 20;

impl Store {
    /// Re-verifies every stored packet (signature, length, DNS parse: what a PUT checks) and
    /// checks that the expiry index has exactly one row per packet, at its timestamp, and the
    /// compiled DNS answers one row per packet, equal to what the packet compiles to. Reads the
    /// whole table in one read transaction; meant for `pkraft verify` on a stopped node.
    pub fn check_integrity(&self) -> Result<Integrity, StoreError> {
        let txn = self.db.begin_read()?;
        let packets = txn.open_table(PACKETS)?;
        let index = txn.open_table(EXPIRY)?;
        let answers = txn.open_table(ANSWERS)?;
        let mut report = Integrity::default();
        let mut unlisted = 0u64;
        let mut problem = |report: &mut Integrity, text: String| {
            if report.problems.len() < PROBLEMS_LISTED {
                report.problems.push(text);
            } else {
                unlisted += 1;
            }
        };
        for row in packets.iter()? {
            let (key, value) = row?;
            let key = *key.value();
            report.packets += 1;
            let stored = match StoredPacket::decode(value.value()) {
                Ok(stored) => stored,
                Err(e) => {
                    problem(&mut report, format!("packet {}: {e}", hex(&key)));
                    continue;
                }
            };
            let body = stored.payload.as_bytes().clone();
            if let Err(e) = pkraft_types::VerifiedPacket::verify_stored(&key, body) {
                problem(
                    &mut report,
                    format!("packet {}: does not verify: {e}", hex(&key)),
                );
            }
            let row = expiry_key(stored.payload.timestamp_micros(), &key);
            if index.get(&row)?.is_none() {
                problem(
                    &mut report,
                    format!("packet {}: no expiry index row", hex(&key)),
                );
            }
            let compiled = answers.get(&key)?;
            let compiled = compiled.as_ref().map(|row| row.value());
            if compiled != Some(answers_row(&key, &stored.payload).as_slice()) {
                let what = match compiled {
                    None => "no compiled DNS answers",
                    Some(row) if answers_form(&key, row).is_none() => {
                        "compiled DNS answers damaged (checksum mismatch)"
                    }
                    Some(_) => "compiled DNS answers differ from the packet's",
                };
                problem(&mut report, format!("packet {}: {what}", hex(&key)));
            }
        }
        report.expiry_rows = index.len()?;
        report.answer_rows = answers.len()?;
        if report.answer_rows != report.packets {
            let text = format!(
                "the compiled DNS answers have {} rows for {} packets",
                report.answer_rows, report.packets
            );
            problem(&mut report, text);
        }
        if report.expiry_rows != report.packets {
            let text = format!(
                "the expiry index has {} rows for {} packets",
                report.expiry_rows, report.packets
            );
            problem(&mut report, text);
        }
        if unlisted > 0 {
            report
                .problems
                .push(format!("and {unlisted} more problems"));
        }
        Ok(report)
    }
}

fn hex(key: &KeyBytes) -> String {
    key.iter().map(|byte| format!("{byte:02x}")).collect()
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

#[cfg(test)]
mod tests;
