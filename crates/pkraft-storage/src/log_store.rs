//! The Raft log: a directory (`raft-log/` in the data dir) with the entries in append-only
//! segment files ([`segments`]) and the vote, the committed and purged log ids, the node id and
//! the schema version in a small redb database (`meta.redb`).
//!
//! Entries, votes, truncations and purges are on disk before they are reported done, so anything
//! openraft was told about survives a crash. (The committed index is the exception; see
//! `save_committed`.) Writes run on tokio's blocking pool.

mod segments;
mod synced_mark;

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend,
    RaftLogReader, StorageError, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use redb::{Error as DbError, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec::{blocking, decode, encode, storage_error};
use super::type_config::{NodeId, TypeConfig};
pub use segments::Damage;
use segments::{LastEntry, SEGMENT_TARGET_BYTES, Segments};

const META_FILE: &str = "meta.redb";
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const META_VOTE: &str = "vote";
const META_COMMITTED: &str = "committed";
const META_LAST_PURGED: &str = "last_purged";
const META_SCHEMA_VERSION: &str = "schema_version";
const META_NODE_ID: &str = "node_id";
const META_REPAIR: &str = "repair";
/// Whether the last membership the log held had other voters: then a damaged log can be
/// repaired from them.
const META_HAD_PEERS: &str = "had_peers";

/// At most this many damaged places are set aside in one open; more is a disk to replace.
const SET_ASIDE_MAX: usize = 16;

/// Entries this node's log lost to damage, set aside at an open (`LogStore::open_repairing`),
/// and what it takes to be whole again. Kept in `meta.redb` until the log holds them again
/// (from a leader): until then this node stands for no election, and votes only for a
/// candidate whose log reaches as far as the damaged log did (docs/CONSISTENCY.md, "Damaged
/// disks").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LogRepair {
    /// The first index lost.
    pub lost_from: u64,
    /// The last index the log held before the damage (at least `lost_from`).
    pub lost_through: u64,
    /// The id of that last entry, if it could be read.
    pub held_through: Option<LogId<NodeId>>,
    /// The term of the node's vote when the damage was found. With `held_through` unknown,
    /// only a log ending in an entry of a later term is sure to hold every entry this log held
    /// (a leader of a later term holds every entry committed before it).
    pub vote_term: u64,
}

impl LogRepair {
    /// Whether a log ending at `last` holds, again, what the damaged log held.
    fn repaired_by(&self, last: Option<LogId<NodeId>>) -> bool {
        match self.held_through {
            Some(held) => last >= Some(held),
            None => last.is_some_and(|last| last.leader_id.term > self.vote_term),
        }
    }

    /// This repair and `other` as one (two damaged places found).
    fn merge(self, other: LogRepair) -> LogRepair {
        LogRepair {
            lost_from: self.lost_from.min(other.lost_from),
            lost_through: self.lost_through.max(other.lost_through),
            held_through: match (self.held_through, other.held_through) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            },
            vote_term: self.vote_term.max(other.vote_term),
        }
    }
}

/// On-disk format version of the log directory. (Version 1 was a single redb file,
/// `raft-log.redb`, with the entries in a table.)
pub const LOG_SCHEMA_VERSION: u64 = 2;

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// Handle to the log. Clones share it, so the log reader openraft keeps per replication stream
/// sees entries appended later.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
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
}

/// How stale the committed id on disk may get: it is written (and fsynced) at most once per
/// interval, by a task of its own. A restarted node re-applies its log up to that id before it
/// hears from a leader.
const COMMITTED_SYNC_INTERVAL: Duration = Duration::from_secs(1);

struct Committed {
    latest: Option<LogId<NodeId>>,
    last_write: Instant,
    /// A write is scheduled or under way; it writes whatever is latest when it runs, and
    /// schedules another if a newer id arrived meanwhile.
    writing: bool,
}

/// The entries, and the purge point below which they are no longer served.
struct Log {
    segments: Segments,
    purged: Option<LogId<NodeId>>,
}

impl LogStore {
    /// Opens (or creates) the log in directory `dir`, checking its schema version.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with_segment_size(dir, SEGMENT_TARGET_BYTES)
    }

    /// [`LogStore::open`] with segments of about `segment_bytes` (tests use tiny ones so that
    /// truncation and purging cross segment boundaries).
    pub fn open_with_segment_size(dir: &Path, segment_bytes: u64) -> Result<Self> {
        Self::open_inner(dir, segment_bytes, None).map(|(log, _)| log)
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
        Self::open_inner(dir, SEGMENT_TARGET_BYTES, Some((node_id, has_peers)))
    }

    /// `repair`: `None` never sets damage aside; `Some((node id, has peers))` does if this node
    /// has peers.
    fn open_inner(
        dir: &Path,
        segment_bytes: u64,
        repair: Option<(NodeId, bool)>,
    ) -> Result<(Self, Vec<Damage>)> {
        let open_meta = || -> std::result::Result<Database, DbError> {
            std::fs::create_dir_all(dir)?;
            let db = Database::create(dir.join(META_FILE))?;
            let txn = db.begin_write()?;
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
        let meta =
            open_meta().map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, &e))?;
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
        let repair = match repair {
            Some((_, has_peers)) => {
                has_peers || read_meta::<bool>(&meta, META_HAD_PEERS)? == Some(true)
            }
            None => false,
        };
        let logs_error = |e: &io::Error| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e);
        let mut damages = Vec::new();
        let segments = loop {
            let opened = Segments::open(dir, purged.map(|p| p.index), segment_bytes);
            let error = match opened {
                Ok(segments) => break segments,
                Err(error) => error,
            };
            let damage = match Damage::of(&error) {
                Some(damage) if repair && damages.len() < SET_ASIDE_MAX => damage.clone(),
                _ => return Err(logs_error(&error)),
            };
            tracing::error!(
                "{damage}. This node has peers: the damaged records are set aside and the \
                 leader sends them again"
            );
            // The loss first, durably: a crash while setting aside must not forget it.
            let lost = LogRepair {
                lost_from: damage.first_index,
                lost_through: damage
                    .last_index_after
                    .unwrap_or(damage.first_index)
                    .max(damage.first_index),
                // The furthest of what the records after the damage and the synced mark show.
                held_through: damage
                    .last_record_after
                    .as_deref()
                    .and_then(|payload| decode_entry(payload).ok())
                    .map(|entry| entry.log_id)
                    .max(damage.synced_last.map(|mark| {
                        LogId::new(
                            CommittedLeaderId::new(mark.last_term, mark.last_leader),
                            mark.last_index,
                        )
                    })),
                vote_term: read_meta::<Vote<NodeId>>(&meta, META_VOTE)?
                    .map_or(0, |vote| vote.leader_id.term),
            };
            record_repair(&meta, lost)
                .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, &e))?;
            let aside = segments::set_aside(dir, &damage).map_err(|e| logs_error(&e))?;
            tracing::warn!(kept_in = %aside.display(), "set the damaged records aside");
            damages.push(damage);
        };
        let pending = read_meta::<LogRepair>(&meta, META_REPAIR)?;
        if pending.is_some() {
            // (On every start while the repair is pending: a crash may have come between the
            // set-aside and this.)
            // The committed id may point past what is left: openraft re-applies the log up to
            // it at the start, and the lost entries are not there to apply. Brought back to the
            // last entry left; the leader tells the commit index again.
            let kept_last = last_entry_id(&segments).map_err(|e| logs_error(&e))?;
            let clamp = || -> std::result::Result<(), DbError> {
                let txn = meta.begin_write()?;
                let committed =
                    get_meta::<Option<LogId<NodeId>>>(&txn.open_table(META)?, META_COMMITTED)?
                        .flatten();
                let kept_floor = kept_last.max(purged);
                if committed > kept_floor {
                    put_meta(&txn, META_COMMITTED, &kept_floor)?;
                }
                txn.commit()?;
                Ok(())
            };
            clamp().map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, &e))?;
            if let Some(node_id) = node_id {
                demote_own_leadership(&meta, node_id)
                    .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, &e))?;
            }
        }
        let had_peers = read_meta::<bool>(&meta, META_HAD_PEERS)? == Some(true);
        Ok((
            LogStore {
                inner: Arc::new(Inner {
                    meta,
                    log: RwLock::new(Log { segments, purged }),
                    committed: Mutex::new(Committed {
                        latest: None,
                        last_write: Instant::now(),
                        writing: false,
                    }),
                    repair: Mutex::new(pending),
                    had_peers: std::sync::atomic::AtomicBool::new(had_peers),
                }),
            },
            damages,
        ))
    }

    /// Entries this log lost to damage and has not received again, if any.
    pub fn repair(&self) -> Option<LogRepair> {
        self.inner
            .repair
            .lock()
            .ok()
            .and_then(|repair| repair.clone())
    }

    /// Whether the last membership this log held had voters other than this node.
    pub(crate) fn had_peers(&self) -> bool {
        self.inner
            .had_peers
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets the whole log aside because the state it was applied to is lost and cannot be
    /// rebuilt on this node (`state_repair`): the state needs entries this log purged, so a
    /// leader must send a snapshot and the entries again. Recorded first, durably, as a repair
    /// of every entry the log held (until a leader has sent them, this node stands for no
    /// election and votes only for a log that reaches as far); then the segments go to
    /// `raft-log/damaged/`, and the purge point and the committed id are cleared, so that the
    /// log is empty. Before Raft starts. A log already empty and never purged (a start that
    /// crashed after this) has nothing to set aside: the repair recorded then stays as it is.
    /// Returns the repair pending.
    pub(crate) fn set_aside_for_state_repair(&self, node_id: NodeId) -> Result<Option<LogRepair>> {
        let set_aside = || -> std::result::Result<Option<LogRepair>, DbError> {
            let mut log = lock(&self.inner)?;
            let held_through = last_entry_id(&log.segments)?.max(log.purged);
            if held_through.is_none() {
                return Ok(self.repair());
            }
            let vote = get_meta::<Vote<NodeId>>(
                &self.inner.meta.begin_read()?.open_table(META)?,
                META_VOTE,
            )?;
            let lost = LogRepair {
                lost_from: 0,
                lost_through: held_through.map_or(0, |log_id| log_id.index),
                held_through,
                vote_term: vote.map_or(0, |vote| vote.leader_id.term),
            };
            record_repair(&self.inner.meta, lost)?;
            let dir = log.segments.dir().to_path_buf();
            let aside = segments::set_aside_all(&dir)?;
            log.segments = Segments::open(&dir, None, log.segments.target_bytes())?;
            log.purged = None;
            let txn = self.inner.meta.begin_write()?;
            {
                let mut table = txn.open_table(META)?;
                table.remove(META_LAST_PURGED)?;
            }
            put_meta(&txn, META_COMMITTED, &None::<LogId<NodeId>>)?;
            txn.commit()?;
            demote_own_leadership(&self.inner.meta, node_id)?;
            let repair = get_meta::<LogRepair>(
                &self.inner.meta.begin_read()?.open_table(META)?,
                META_REPAIR,
            )?;
            let repair = repair.ok_or_else(|| {
                DbError::Corrupted("the repair just recorded is not in meta.redb".to_string())
            })?;
            *self
                .inner
                .repair
                .lock()
                .map_err(|_| DbError::Io(poisoned()))? = Some(repair.clone());
            tracing::warn!(
                kept_in = %aside.display(),
                held_through = ?held_through,
                "set the whole Raft log aside: the leader sends a snapshot and the entries again"
            );
            Ok(Some(repair))
        };
        set_aside().map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Write, &e))
    }

    /// Why this node must not vote for a candidate whose log ends at `candidate_last`, if it
    /// must not: its own log lost entries to damage, and the candidate's log does not reach
    /// where this log reached before (Raft's vote rule, against the log as it was).
    pub fn vote_refusal(&self, candidate_last: Option<LogId<NodeId>>) -> Option<String> {
        let repair = self.repair()?;
        if repair.repaired_by(candidate_last) {
            return None;
        }
        let needed = match repair.held_through {
            Some(held) => format!("a log reaching {held}"),
            None => format!(
                "a log ending in an entry of a term after {}",
                repair.vote_term
            ),
        };
        Some(format!(
            "this node's Raft log lost entries {}..={} to damage; until a leader sends them again \
             it votes only for {needed}, and the candidate's ends at {candidate_last:?}",
            repair.lost_from, repair.lost_through
        ))
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

    /// Records, durably, that the entries from `damage.first_index` on may be lost: the scrub
    /// found them damaged while the node ran, and the node stops so that its next open repairs
    /// them. Without this, damage in the last append would be cut at that open as a torn write,
    /// and the node would vote with the shorter log. Only on disk: the running node's repair
    /// state is left alone, so that an append before it stops cannot end the repair.
    pub fn record_found_damage(&self, damage: &Damage) -> Result<()> {
        let record = || -> std::result::Result<(), DbError> {
            // The last entry's id, if it still reads (the damage may be in it).
            let last = last_entry_id(&self.log()?.segments).ok().flatten();
            let vote = get_meta::<Vote<NodeId>>(
                &self.inner.meta.begin_read()?.open_table(META)?,
                META_VOTE,
            )?;
            let lost_through = last
                .map_or(damage.first_index, |last| last.index)
                .max(damage.first_index);
            record_repair(
                &self.inner.meta,
                LogRepair {
                    lost_from: damage.first_index,
                    lost_through,
                    held_through: last,
                    vote_term: vote.map_or(0, |vote| vote.leader_id.term),
                },
            )
        };
        record().map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, &e))
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

    /// The id of the last entry in the log, if it holds any.
    pub fn last_log_id(&self) -> Result<Option<LogId<NodeId>>> {
        let read = || last_entry_id(&self.log()?.segments);
        read().map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, &e))
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

    /// The index of the committed log id openraft last saved (it saves it as the commit index
    /// advances, on followers as on the leader), whether or not it is on disk yet.
    pub fn committed_index(&self) -> Option<u64> {
        let committed = self.inner.committed.lock().ok()?;
        committed.latest.map(|log_id| log_id.index)
    }

    /// Writes the latest committed log id to disk (it is written at most once a second while
    /// running); for a clean stop.
    pub fn flush(&self) -> Result<()> {
        write_committed(&self.inner)
            .map(|_| ())
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, &e))
    }

    /// Handles to the log that are still open (this one included).
    pub fn open_handles(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// Runs `f` in one write transaction of the meta database on the blocking pool and commits
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
        blocking(subject, ErrorVerb::Write, move || {
            let mut txn = inner.meta.begin_write()?;
            txn.set_durability(durability)?;
            f(&txn)?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    /// Runs `f` on the entries on the blocking pool (it syncs files).
    async fn with_log<F>(&self, f: F) -> Result<()>
    where
        F: FnOnce(&Inner) -> io::Result<()> + Send + 'static,
    {
        let inner = self.inner.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Write, move || Ok(f(&inner)?)).await
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

fn poisoned() -> io::Error {
    io::Error::other("a Raft log operation panicked earlier")
}

/// Writes the latest committed id durably, if openraft saved one, and returns what it wrote.
fn write_committed(inner: &Inner) -> std::result::Result<Option<LogId<NodeId>>, DbError> {
    let txn = inner.meta.begin_write()?;
    // Read after `begin_write`: of two writers, the one that commits last wrote the newer id.
    let latest = inner
        .committed
        .lock()
        .map_err(|_| DbError::Io(poisoned()))?
        .latest;
    if let Some(latest) = latest {
        put_meta(&txn, META_COMMITTED, &Some(latest))?;
        txn.commit()?;
    }
    Ok(latest)
}

/// Writes the committed id after `delay`, then again after each interval for as long as newer
/// ids keep arriving. The wait holds no handle to the log, so a stopping node does not wait for
/// it (and `LogStore::flush` writes the last id anyway).
fn schedule_committed_write(inner: &Arc<Inner>, delay: Duration) {
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let writer = inner.clone();
        let written = tokio::task::spawn_blocking(move || write_committed(&writer)).await;
        let written = match written {
            Ok(Ok(written)) => written,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not write the committed log id");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "the committed log id writer failed");
                None
            }
        };
        let again = match inner.committed.lock() {
            Ok(mut state) => {
                state.last_write = Instant::now();
                let again = state.latest != written;
                state.writing = again;
                again
            }
            Err(_) => false,
        };
        if again {
            schedule_committed_write(&inner, COMMITTED_SYNC_INTERVAL);
        }
    });
}

/// Records `lost` (merged with a repair already under way), durably.
fn record_repair(meta: &Database, lost: LogRepair) -> std::result::Result<(), DbError> {
    let txn = meta.begin_write()?;
    let earlier = get_meta::<LogRepair>(&txn.open_table(META)?, META_REPAIR)?;
    let repair = earlier.map_or(lost.clone(), |earlier| earlier.merge(lost));
    put_meta(&txn, META_REPAIR, &repair)?;
    txn.commit()?;
    Ok(())
}

/// A leader's vote is saved as committed, and openraft resumes leading at start with a committed
/// vote of its own, without an election. A node whose log lost entries must not lead (it lacks
/// them), so its own committed vote is saved back as a vote for itself in the same term: it
/// starts as a follower and still votes for no one else in that term.
fn demote_own_leadership(meta: &Database, node_id: NodeId) -> std::result::Result<(), DbError> {
    let txn = meta.begin_write()?;
    let vote = get_meta::<Vote<NodeId>>(&txn.open_table(META)?, META_VOTE)?;
    if let Some(vote) = vote
        && vote.committed
        && vote.leader_id.node_id == node_id
    {
        tracing::warn!(%vote, "this node led with the damaged log: it starts as a follower");
        put_meta(&txn, META_VOTE, &Vote::new(vote.leader_id.term, node_id))?;
    }
    txn.commit()?;
    Ok(())
}

/// Ends the repair once the log reaches `last` (appended or purged to it), if that makes it
/// whole; durably, before the caller reports the append or purge done.
fn end_repair_if_whole(inner: &Inner, last: Option<LogId<NodeId>>) -> io::Result<()> {
    let mut repair = inner.repair.lock().map_err(|_| poisoned())?;
    let Some(pending) = repair.as_ref() else {
        return Ok(());
    };
    if !pending.repaired_by(last) {
        return Ok(());
    }
    let end = || -> std::result::Result<(), DbError> {
        let txn = inner.meta.begin_write()?;
        txn.open_table(META)?.remove(META_REPAIR)?;
        txn.commit()?;
        Ok(())
    };
    end().map_err(io::Error::other)?;
    tracing::warn!(
        lost_from = pending.lost_from,
        lost_through = pending.lost_through,
        last_log_id = ?last,
        "the Raft log is whole again: the entries lost to damage came back from the leader; this node votes and stands for election again"
    );
    *repair = None;
    Ok(())
}

fn read_meta<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>> {
    let read = || -> std::result::Result<Option<T>, DbError> {
        let txn = db.begin_read()?;
        get_meta(&txn.open_table(META)?, key)
    };
    read().map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Read, &e))
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

/// Undecodable bytes in the meta database mean the file is corrupt.
fn decode_db<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, DbError> {
    decode(bytes).map_err(|e| DbError::Corrupted(format!("log meta record: {e}")))
}

fn encode_db<T: Serialize>(value: &T) -> std::result::Result<Vec<u8>, DbError> {
    encode(value).map_err(|e| DbError::Io(io::Error::other(e)))
}

/// A record whose checksum matched but that does not decode was written by another format.
fn decode_entry(payload: &[u8]) -> io::Result<Entry<TypeConfig>> {
    decode(payload)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("log entry: {e}")))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let read = || -> io::Result<Vec<Entry<TypeConfig>>> {
            // Held until the records are read (see `Inner::log`).
            let log = self.log()?;
            let spans = {
                // Purged entries may still sit in the first segment; they are not served.
                let unpurged = log.purged.map_or(0, |p| p.index.saturating_add(1));
                let start = match range.start_bound() {
                    Bound::Included(&i) => i,
                    Bound::Excluded(&i) => i.saturating_add(1),
                    Bound::Unbounded => 0,
                };
                let end = match range.end_bound() {
                    Bound::Included(&i) => i.saturating_add(1),
                    Bound::Excluded(&i) => i,
                    Bound::Unbounded => u64::MAX,
                };
                log.segments.locate(start.max(unpurged), end)
            };
            let mut entries = Vec::new();
            for span in spans {
                span.read(|payload| {
                    entries.push(decode_entry(payload)?);
                    Ok(())
                })?;
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
        self.write_meta(ErrorSubject::Vote, Durability::Immediate, move |txn| {
            put_meta(txn, META_VOTE, &vote)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        self.read_meta(META_VOTE)
    }

    /// Lets a restarting node re-apply committed entries before it hears from a leader. Kept in
    /// memory; a task of its own writes the latest to disk at most once per
    /// [`COMMITTED_SYNC_INTERVAL`] and at most that long after it changed (an fsync on
    /// openraft's path once a second showed as a PUT p99 tail), and a clean stop writes the last
    /// one ([`LogStore::flush`]). A stale value only makes a restart re-apply less on its own:
    /// a single voter then commits the rest of its log as soon as it leads again, and
    /// pkraft-raft's `Node::start` waits for that before serving; a cluster member gets the
    /// commit index from its leader, and until then serves a replica up to about that interval
    /// older than before the crash.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        let delay = {
            let mut state =
                self.inner.committed.lock().map_err(|_| {
                    storage_error(ErrorSubject::Store, ErrorVerb::Write, &poisoned())
                })?;
            state.latest = committed;
            if state.writing {
                // The scheduled write picks this id up (or schedules one more that does).
                return Ok(());
            }
            state.writing = true;
            COMMITTED_SYNC_INTERVAL.saturating_sub(state.last_write.elapsed())
        };
        schedule_committed_write(&self.inner, delay);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        let latest = self
            .inner
            .committed
            .lock()
            .map_err(|_| storage_error(ErrorSubject::Store, ErrorVerb::Read, &poisoned()))?
            .latest;
        if latest.is_some() {
            return Ok(latest);
        }
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
        let Some(first_index) = entries.first().map(|entry| entry.log_id.index) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let last_log_id = entries.last().map(|entry| entry.log_id);
        let last_entry = entries.last().map(|entry| LastEntry {
            index: entry.log_id.index,
            term: entry.log_id.leader_id.term,
            leader: entry.log_id.leader_id.node_id,
        });
        // Whether the last membership in this append has other voters; written when it changes
        // (rare: membership changes).
        let peers_now = entries
            .iter()
            .rev()
            .find_map(|entry| match &entry.payload {
                EntryPayload::Membership(membership) => Some(membership.voter_ids().count() > 1),
                _ => None,
            })
            .filter(|peers| {
                *peers
                    != self
                        .inner
                        .had_peers
                        .load(std::sync::atomic::Ordering::Acquire)
            });
        let payloads = entries
            .iter()
            .map(encode)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
        self.with_log(move |inner| {
            let target = lock(inner)?.segments.prepare_append(first_index)?;
            let mut encoded = Vec::new();
            let lengths = target.encode(&payloads, &mut encoded)?;
            // The write and its sync hold no lock, so readers (replication, apply) go on.
            let last_entry =
                last_entry.ok_or_else(|| io::Error::other("an append without entries"))?;
            target.write_and_sync(&encoded, last_entry)?;
            lock(inner)?.segments.finish_append(&target, &lengths);
            if let Some(peers) = peers_now {
                let mark = || -> std::result::Result<(), DbError> {
                    let txn = inner.meta.begin_write()?;
                    put_meta(&txn, META_HAD_PEERS, &peers)?;
                    txn.commit()?;
                    Ok(())
                };
                mark().map_err(io::Error::other)?;
                inner
                    .had_peers
                    .store(peers, std::sync::atomic::Ordering::Release);
            }
            end_repair_if_whole(inner, last_log_id)
        })
        .await?;
        // `write_and_sync` returned: the entries are on disk.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        self.with_log(move |inner| {
            let mut log = lock(inner)?;
            // The entry that becomes the last: the synced mark is lowered to it.
            let new_last = match log_id.index.checked_sub(1) {
                Some(index) => entry_id(&log.segments, index)?.map(|id| LastEntry {
                    index: id.index,
                    term: id.leader_id.term,
                    leader: id.leader_id.node_id,
                }),
                None => None,
            };
            log.segments.truncate(log_id.index, new_last)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        // The purge point first, durably: entries up to it are then never served again, and an
        // open removes whatever segments a crash below left behind.
        // (Recorded even when no entry has this id: openraft may purge past the last entry.)
        self.write_meta(ErrorSubject::Logs, Durability::Immediate, move |txn| {
            put_meta(txn, META_LAST_PURGED, &log_id)
        })
        .await?;
        self.with_log(move |inner| {
            let mut log = lock(inner)?;
            log.purged = Some(log_id);
            log.segments.remove_through(log_id.index)?;
            end_repair_if_whole(inner, Some(log_id))
        })
        .await
    }
}
