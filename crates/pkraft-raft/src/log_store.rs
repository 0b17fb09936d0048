//! The Raft log on redb (`raft-log.redb`): entries by index, plus the vote and the purge point.
//!
//! Entries, votes, truncations and purges commit with `Durability::Immediate` before they are
//! reported done, so anything openraft was told about survives a crash. (The committed index is
//! the exception; see `save_committed`.) Writes run on tokio's blocking pool.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader, StorageError,
    Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use redb::{Error as DbError, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{blocking, decode, encode, storage_error};
use crate::{NodeId, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const META_VOTE: &str = "vote";
const META_COMMITTED: &str = "committed";
const META_LAST_PURGED: &str = "last_purged";
const META_SCHEMA_VERSION: &str = "schema_version";
const META_NODE_ID: &str = "node_id";

/// On-disk format version of the log file.
pub const LOG_SCHEMA_VERSION: u64 = 1;

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// Handle to the log database. Clones share the database, so the log reader openraft keeps per
/// replication stream sees entries appended later.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// Opens (or creates) the log at `path`, checking its schema version.
    pub fn open(path: &Path) -> Result<Self> {
        let open = || -> std::result::Result<Database, DbError> {
            let db = Database::create(path)?;
            let txn = db.begin_write()?;
            txn.open_table(LOG)?;
            let version = get_meta::<u64>(&txn.open_table(META)?, META_SCHEMA_VERSION)?;
            match version {
                None => put_meta(&txn, META_SCHEMA_VERSION, &LOG_SCHEMA_VERSION)?,
                Some(LOG_SCHEMA_VERSION) => {}
                Some(found) => {
                    return Err(DbError::Corrupted(format!(
                        "log schema version {found}, this build reads {LOG_SCHEMA_VERSION}"
                    )));
                }
            }
            txn.commit()?;
            Ok(db)
        };
        let db = open().map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        Ok(LogStore { db: Arc::new(db) })
    }

    /// True for a log that has never held a vote or an entry: a data dir that was never part of
    /// a cluster.
    pub fn is_pristine(&self) -> Result<bool> {
        let vote = self.read_meta::<Vote<NodeId>>(META_VOTE)?;
        let purged = self.read_meta::<LogId<NodeId>>(META_LAST_PURGED)?;
        Ok(vote.is_none() && purged.is_none() && self.last_log_id()?.is_none())
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let read = || -> std::result::Result<Option<T>, DbError> {
            let txn = self.db.begin_read()?;
            get_meta(&txn.open_table(META)?, key)
        };
        read().map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Read, &e))
    }

    /// The id of the last entry in the log, if it holds any.
    pub(crate) fn last_log_id(&self) -> Result<Option<LogId<NodeId>>> {
        let read = || -> std::result::Result<Option<LogId<NodeId>>, DbError> {
            let txn = self.db.begin_read()?;
            let log = txn.open_table(LOG)?;
            let last = log.last()?;
            let entry = last.map(|(_, v)| decode_db::<Entry<TypeConfig>>(v.value()));
            Ok(entry.transpose()?.map(|e| e.log_id))
        };
        read().map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, &e))
    }

    /// Records which node this log belongs to, or checks that it is `node_id`. Starting a data
    /// dir under another id would make the node a stranger to its own cluster: openraft would run
    /// it as a learner that can never accept a write.
    pub fn claim_node_id(&self, node_id: NodeId) -> Result<()> {
        let claim = || -> std::result::Result<(), DbError> {
            let txn = self.db.begin_write()?;
            let owner = get_meta::<NodeId>(&txn.open_table(META)?, META_NODE_ID)?;
            match owner {
                None => put_meta(&txn, META_NODE_ID, &node_id)?,
                Some(owner) if owner == node_id => {}
                Some(owner) => {
                    return Err(DbError::Corrupted(format!(
                        "this data dir belongs to node {owner}, not node {node_id}"
                    )));
                }
            }
            txn.commit()?;
            Ok(())
        };
        claim().map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, &e))
    }

    /// Handles to the log database that are still open (this one included).
    pub(crate) fn open_handles(&self) -> usize {
        Arc::strong_count(&self.db)
    }

    /// Runs `f` in one write transaction on the blocking pool and commits it with `durability`.
    async fn write<F>(
        &self,
        subject: ErrorSubject<NodeId>,
        durability: Durability,
        f: F,
    ) -> Result<()>
    where
        F: FnOnce(&WriteTransaction) -> std::result::Result<(), DbError> + Send + 'static,
    {
        let db = self.db.clone();
        blocking(subject, ErrorVerb::Write, move || {
            let mut txn = db.begin_write()?;
            txn.set_durability(durability)?;
            f(&txn)?;
            txn.commit()?;
            Ok(())
        })
        .await
    }
}

fn get_meta<T: DeserializeOwned>(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> std::result::Result<Option<T>, DbError> {
    let value = meta.get(key)?;
    value.map(|v| decode_db(v.value())).transpose()
}

fn put_meta<T: Serialize>(
    txn: &WriteTransaction,
    key: &str,
    value: &T,
) -> std::result::Result<(), DbError> {
    txn.open_table(META)?
        .insert(key, encode_db(value)?.as_slice())?;
    Ok(())
}

/// Undecodable bytes in the log file mean the file is corrupt.
fn decode_db<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, DbError> {
    decode(bytes).map_err(|e| DbError::Corrupted(format!("log record: {e}")))
}

fn encode_db<T: Serialize>(value: &T) -> std::result::Result<Vec<u8>, DbError> {
    encode(value).map_err(|e| DbError::Io(std::io::Error::other(e)))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let range: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        let read = || -> std::result::Result<Vec<Entry<TypeConfig>>, DbError> {
            let txn = self.db.begin_read()?;
            let log = txn.open_table(LOG)?;
            let mut entries = Vec::new();
            for row in log.range(range)? {
                entries.push(decode_db(row?.1.value())?);
            }
            Ok(entries)
        };
        read().map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, &e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let last_purged_log_id = self.read_meta::<LogId<NodeId>>(META_LAST_PURGED)?;
        // With every entry purged, the last log id is the purge point.
        let last_log_id = self.last_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        let vote = *vote;
        self.write(ErrorSubject::Vote, Durability::Immediate, move |txn| {
            put_meta(txn, META_VOTE, &vote)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        self.read_meta(META_VOTE)
    }

    /// Lets a restarting node re-apply committed entries before it hears from a leader. Written
    /// without fsync: redb makes it durable with the next log append (a later `Immediate`
    /// commit). A stale value only makes a restart re-apply less on its own: a single voter then
    /// commits the rest of its log as soon as it leads again, and `Node::start` waits for that
    /// before serving; a cluster member gets the commit index from its leader.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        self.write(ErrorSubject::Store, Durability::None, move |txn| {
            put_meta(txn, META_COMMITTED, &committed)
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>(META_COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        self.write(ErrorSubject::Logs, Durability::Immediate, move |txn| {
            let mut log = txn.open_table(LOG)?;
            for entry in &entries {
                log.insert(entry.log_id.index, encode_db(entry)?.as_slice())?;
            }
            Ok(())
        })
        .await?;
        // The transaction above committed with Durability::Immediate: the entries are on disk.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        self.write(ErrorSubject::Logs, Durability::Immediate, move |txn| {
            txn.open_table(LOG)?
                .retain_in(log_id.index.., |_, _| false)?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        self.write(ErrorSubject::Logs, Durability::Immediate, move |txn| {
            // Recorded even when no entry has this id (openraft may purge past the last entry).
            put_meta(txn, META_LAST_PURGED, &log_id)?;
            txn.open_table(LOG)?
                .retain_in(..=log_id.index, |_, _| false)?;
            Ok(())
        })
        .await
    }
}
