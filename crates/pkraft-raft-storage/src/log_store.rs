//! The Raft log: a directory (`raft-log/` in the data dir) with the entries in append-only
//! segment files and the vote, the committed and purged log ids, the node id and the schema
//! version in a small redb database (`meta.redb`).
//!
//! Entries, votes, truncations and purges are on disk before they are reported done, so anything
//! openraft was told about survives a crash. (The committed index is the exception; see
//! `committed.rs`.) Every change runs on the log's own writer thread (`writer.rs`), one after
//! the other; the entries appended last are also kept in memory (`recent.rs`), where the apply
//! and the replication to followers that keep up read them.
//!
//! # Modules
//! - this file: [`LogStore`], its open and its reads.
//! - `raft_storage.rs`: openraft's log traits (appends, truncation, purge, the vote).
//! - `segments.rs`: the segment files; `segment_file.rs`: one file's name and offsets;
//!   `record.rs`: their records; `scan.rs`: reading them back
//!   at open, a crash told from damage; `synced_mark.rs`: where the last append reported done
//!   ended; `damage.rs`: [`Damage`], and setting damaged records aside.
//! - `repair.rs`: [`LogRepair`], entries lost to damage until a leader sends them again.
//! - `meta.rs`: `meta.redb`; `committed.rs`: the committed id, written once a second.
//! - `writer.rs`: [`LogWriter`], the thread that makes the changes; `recent.rs`: the entries
//!   appended last.

mod committed;
mod damage;
mod meta;
mod raft_storage;
mod recent;
mod record;
mod repair;
mod scan;
mod segment_file;
mod segments;
mod spare;
mod synced_mark;
mod writer;

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, StorageError, Vote};
use prometheus::Histogram;
use redb::{Database, Durability};
use redb::{Error as DbError, WriteTransaction};
use serde::de::DeserializeOwned;

use super::codec::{decode, storage_error};
use super::type_config::{NodeId, TypeConfig};
use committed::Committed;
pub use damage::Damage;
use meta::{
    META, META_HAD_PEERS, META_LAST_PURGED, META_NODE_ID, META_VOTE, get_meta, put_meta, read_meta,
};
use recent::RecentEntries;
pub use repair::LogRepair;
use segments::{Layout, SEGMENT_TARGET_BYTES, Segments};
use writer::LogWriter;

/// On-disk format version of the log directory. (Version 1 was a single redb file,
/// `raft-log.redb`, with the entries in a table.) A change an older build cannot read (a new
/// segment format, a meta value of another type) raises it: an older build then refuses the
/// whole log at open, naming both versions, before it reads anything it could take for damage.
/// The segment format's number is this one (`the_segment_format_is_the_log_schema_version`).
pub const LOG_SCHEMA_VERSION: u64 = 2;

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// Handle to the log. Clones share it, so the log reader openraft keeps per replication stream
/// sees entries appended later.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
    /// Makes every change to the files (see `writer.rs`).
    writer: Arc<LogWriter>,
    /// Observes each append's wall time (`LogStore::timing_appends`: the node's log; none in
    /// storage tests, backup or restore).
    append_seconds: Option<Histogram>,
}

struct Inner {
    meta: Database,
    /// Readers hold the read lock while they read the files, so a truncation (which takes the
    /// write lock) never cuts a record out from under them. An append writes beyond every
    /// published record and takes the write lock only to pick its place and to publish.
    log: RwLock<Log>,
    /// The committed id openraft last saved, and when it was last written to disk.
    committed: Mutex<Committed>,
    /// Entries lost to damage and not yet received again (a copy of `META_REPAIR`).
    repair: Mutex<Option<LogRepair>>,
    /// Whether `META_HAD_PEERS` is set.
    had_peers: std::sync::atomic::AtomicBool,
    /// How many appends have reached the disk since the log was opened (see
    /// [`LogStore::appends`]).
    appends: tokio::sync::watch::Sender<u64>,
    /// The entries appended last (see `recent.rs`).
    recent: Mutex<RecentEntries>,
}

/// The entries, and the purge point below which they are no longer served.
struct Log {
    segments: Segments,
    purged: Option<LogId<NodeId>>,
    /// The id of the last entry in `segments` (none while they hold none), kept with them so
    /// that an append's first term is checked against it without reading the record back.
    last_appended: Option<LogId<NodeId>>,
}

impl LogStore {
    /// Opens (or creates) the log in directory `dir`, checking its schema version.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_inner(dir, Layout::preallocated(SEGMENT_TARGET_BYTES), None).map(|(log, _)| log)
    }

    /// Observes in `histogram` the wall time of each append, from openraft's call until its
    /// entries are on disk: the hand-off to the blocking pool, the write and the syncs of the
    /// segment and the synced mark (the node's `pkraft_raft_log_append_seconds`, etcd's
    /// `etcd_disk_wal_fsync_duration_seconds`).
    pub fn timing_appends(mut self, histogram: Histogram) -> Self {
        self.append_seconds = Some(histogram);
        self
    }

    /// The number of appends this log has made durable since it was opened, raised after each
    /// append's sync and before openraft hears of it. The write path uses it to learn that the
    /// entry it proposed has been appended (openraft 0.9 says so only with the commit), so that
    /// the next batch can be formed while this one waits for its quorum and apply.
    pub fn appends(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.appends.subscribe()
    }

    /// [`LogStore::open`] with segments of about `segment_bytes` (tests use tiny ones so that
    /// truncation and purging cross segment boundaries), made as the appends come rather than
    /// zero-filled ahead of time, so that their files are laid out the same in every run.
    pub fn open_with_segment_size(dir: &Path, segment_bytes: u64) -> Result<Self> {
        Self::open_inner(dir, Layout::new(segment_bytes), None).map(|(log, _)| log)
    }

    /// Opens the log, and if its records are damaged and this node has peers to repair from
    /// (`has_peers`, or a membership of several nodes in this log before), sets them aside
    /// instead of failing:
    /// each damaged place is moved to `raft-log/damaged/` (with every record after it) and the
    /// loss recorded as a [`LogRepair`] before, durably; the leader sends the entries again.
    /// Returns the damage found. (A single node has no one to repair from: it opens with
    /// [`LogStore::open`], which fails naming the damage.)
    pub fn open_repairing(
        dir: &Path,
        node_id: NodeId,
        has_peers: bool,
    ) -> Result<(Self, Vec<Damage>)> {
        Self::open_inner(
            dir,
            Layout::preallocated(SEGMENT_TARGET_BYTES),
            Some((node_id, has_peers)),
        )
    }

    /// `repair`: `None` never sets damage aside; `Some((node id, has peers))` does if this node
    /// has peers.
    fn open_inner(
        dir: &Path,
        layout: Layout,
        repair: Option<(NodeId, bool)>,
    ) -> Result<(Self, Vec<Damage>)> {
        let meta = meta::open(dir)
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        let purged = read_meta::<LogId<NodeId>>(&meta, META_LAST_PURGED)?;
        let node_id = repair.map(|(node_id, _)| node_id);
        if let Some(node_id) = node_id
            && let Some(owner) = read_meta::<NodeId>(&meta, META_NODE_ID)?
            && owner != node_id
        {
            // Before anything is set aside: this is another node's data dir.
            let wrong = DbError::Corrupted(format!(
                "this data dir belongs to node {owner}, not node {node_id}"
            ));
            return Err(storage_error(ErrorSubject::Store, ErrorVerb::Read, &wrong));
        }
        let sets_aside = match repair {
            Some((_, has_peers)) => {
                has_peers || read_meta::<bool>(&meta, META_HAD_PEERS)? == Some(true)
            }
            None => false,
        };
        let (segments, damages) = repair::open_segments(dir, &meta, purged, layout, sets_aside)?;
        let pending = repair::pending_repair(&meta, &segments, purged, node_id)?;
        let had_peers = read_meta::<bool>(&meta, META_HAD_PEERS)? == Some(true);
        let last_appended = last_entry_id(&segments)
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
        Ok((
            LogStore {
                inner: Arc::new(Inner {
                    meta,
                    log: RwLock::new(Log {
                        segments,
                        purged,
                        last_appended,
                    }),
                    committed: Mutex::new(Committed::new()),
                    repair: Mutex::new(pending),
                    had_peers: std::sync::atomic::AtomicBool::new(had_peers),
                    appends: tokio::sync::watch::Sender::new(0),
                    recent: Mutex::new(RecentEntries::default()),
                }),
                writer: Arc::new(
                    LogWriter::start(dir)
                        .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, &e))?,
                ),
                append_seconds: None,
            },
            damages,
        ))
    }

    /// Whether the last membership this log held had voters other than this node.
    pub(crate) fn had_peers(&self) -> bool {
        self.inner
            .had_peers
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// One step of the background scrub: reads back the records from index `from` on (from
    /// the first one not purged, if that is later), one at a time, until `max_bytes` are read
    /// (at least one record), checking every record's checksums and index. Returns the index to
    /// go on from and the bytes read, or `None` once past the last entry. Damage comes back as
    /// the error, with [`Damage`] in it. Holds the log's read lock while it reads (a truncation
    /// waits): keep `max_bytes` small. On the caller's thread: run it on the blocking pool.
    pub fn scrub(&self, from: u64, max_bytes: u64) -> io::Result<Option<(u64, u64)>> {
        let log = self.log()?;
        let unpurged = log.purged.map_or(0, |p| p.index.saturating_add(1));
        let mut next = from.max(unpurged);
        let Some(last) = log.segments.last_index() else {
            return Ok(None);
        };
        if next > last {
            return Ok(None);
        }
        let mut bytes = 0;
        while next <= last && bytes < max_bytes {
            for span in log.segments.locate(next, next + 1) {
                span.read(|_| Ok(()))?;
                bytes += span.byte_len();
            }
            next += 1;
        }
        Ok(Some((next, bytes)))
    }

    /// True for a log that has never held a vote or an entry: a data dir that was never part of
    /// a cluster.
    pub fn is_pristine(&self) -> Result<bool> {
        let vote = self.read_meta::<Vote<NodeId>>(META_VOTE)?;
        let purged = self.read_meta::<LogId<NodeId>>(META_LAST_PURGED)?;
        Ok(vote.is_none() && purged.is_none() && self.last_log_id()?.is_none())
    }

    /// The node this log belongs to, once claimed.
    pub fn node_id(&self) -> Result<Option<NodeId>> {
        self.read_meta(META_NODE_ID)
    }

    /// The last purged log id: entries up to it are gone from the log.
    pub fn purged(&self) -> Result<Option<LogId<NodeId>>> {
        self.read_meta(META_LAST_PURGED)
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        read_meta(&self.inner.meta, key)
    }

    fn log(&self) -> io::Result<RwLockReadGuard<'_, Log>> {
        self.inner.log.read().map_err(|_| poisoned())
    }

    /// The id of the last entry in the log, if it holds any: the one kept with the segments
    /// (read from the last record at open, then set by every change), which the appends are
    /// checked against too.
    pub fn last_log_id(&self) -> Result<Option<LogId<NodeId>>> {
        let last = self.log().map(|log| log.last_appended);
        last.map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, &e))
    }

    /// Records which node this log belongs to, or checks that it is `node_id`. Starting a data
    /// dir under another id would make the node a stranger to its own cluster: openraft would run
    /// it as a learner that can never accept a write.
    pub fn claim_node_id(&self, node_id: NodeId) -> Result<()> {
        let claim = || -> std::result::Result<(), DbError> {
            let txn = self.inner.meta.begin_write()?;
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

    /// Handles to the log that are still open (this one included).
    pub fn open_handles(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// Runs `f` in one write transaction of the meta database on the writer thread and commits
    /// it with `durability`.
    async fn write_meta<F>(
        &self,
        subject: ErrorSubject<NodeId>,
        durability: Durability,
        f: F,
    ) -> Result<()>
    where
        F: FnOnce(&WriteTransaction) -> std::result::Result<(), DbError> + Send + 'static,
    {
        let inner = self.inner.clone();
        let write = move || -> std::result::Result<(), DbError> {
            let mut txn = inner.meta.begin_write()?;
            txn.set_durability(durability)?;
            f(&txn)?;
            txn.commit()?;
            Ok(())
        };
        self.writer
            .run(move || write().map_err(io::Error::other))
            .await
            .map_err(|e| storage_error(subject, ErrorVerb::Write, &e))
    }

    /// Runs `f` on the entries on the writer thread (it syncs files).
    async fn with_log<F>(&self, f: F) -> Result<()>
    where
        F: FnOnce(&Inner) -> io::Result<()> + Send + 'static,
    {
        let inner = self.inner.clone();
        self.writer
            .run(move || f(&inner))
            .await
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Write, &e))
    }
}

/// The id of the last entry in `segments`, if any.
fn last_entry_id(segments: &Segments) -> io::Result<Option<LogId<NodeId>>> {
    match segments.last_index() {
        Some(last) => entry_id(segments, last),
        None => Ok(None),
    }
}

/// The id of the entry at `index` in `segments`, if they hold it.
fn entry_id(segments: &Segments, index: u64) -> io::Result<Option<LogId<NodeId>>> {
    let mut id = None;
    for span in segments.locate(index, index + 1) {
        span.read(|payload| {
            id = Some(decode_entry(payload)?.log_id);
            Ok(())
        })?;
    }
    Ok(id)
}

/// The log for changing it.
fn lock(inner: &Inner) -> io::Result<RwLockWriteGuard<'_, Log>> {
    inner.log.write().map_err(|_| poisoned())
}

/// The entries appended last.
fn lock_recent(inner: &Inner) -> io::Result<std::sync::MutexGuard<'_, RecentEntries>> {
    inner.recent.lock().map_err(|_| poisoned())
}

fn poisoned() -> io::Error {
    io::Error::other("a Raft log operation panicked earlier")
}

/// A record whose checksum matched but that does not decode was written by another format.
fn decode_entry(payload: &[u8]) -> io::Result<Entry<TypeConfig>> {
    decode(payload)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("log entry: {e}")))
}
