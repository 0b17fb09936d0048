//! A damaged `state.redb` is set aside and rebuilt; it is never served, and never opened as
//! less than it held (docs/CONSISTENCY.md, "Damaged disks"). The state is damaged when:
//! - redb cannot open it (a header, commit slot or checksum is wrong);
//! - its applied state does not decode;
//! - it has applied less than the log has purged (opened empty, or replaced by an old copy: the
//!   entries it lacks are gone from this log);
//! - a check of the running node found it damaged and left `state-damaged` in the data dir.
//!
//! It is rebuilt, in this order of preference:
//! 1. from this node's own current snapshot, if that is whole and the log holds every entry
//!    after it: nothing is lost (a single node repairs itself this way too);
//! 2. from the log alone, if the log was never purged;
//! 3. from the cluster, if this node has other voters: the log is set aside too, as a repair of
//!    everything it held ([`LogStore::set_aside_for_state_repair`]); a leader sends a snapshot
//!    and the entries again, and until then the node stands for no election, votes only for a
//!    log reaching as far as its own did, and serves no local read.
//!
//! Otherwise the node refuses to start, naming the file. The damaged file is kept in
//! `damaged/` for a post-mortem.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use openraft::{LogId, StorageError};
use pkraft_state::{Store, StoreError};

use super::codec::{decode, encode};
use super::log_store::LogStore;
use super::snapshot_file::{Meta, SnapshotFile};
use super::state_machine::AppliedState;
use super::type_config::NodeId;
use super::{SNAPSHOT_DIR, STATE_FILE};
use crate::sync_dir;

/// Why the state store could not be opened whole. Each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateOpenError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state store {path}: {source} (a damaged file is never opened as an empty one; see \
         docs/OPERATIONS.md, \"Repair\")"
    )]
    StateFile { path: PathBuf, source: StoreError },
    #[error(
        "state store {path} is damaged: {damage}; it cannot be rebuilt here: {why} (see \
         docs/OPERATIONS.md, \"Repair\")"
    )]
    StateDamaged {
        path: PathBuf,
        #[source]
        damage: StateDamage,
        /// Why nothing on this node holds the state (composed here: no cause of its own).
        why: String,
    },
    #[error("raft log: {0}")]
    Log(#[from] StorageError<NodeId>),
}

/// What is wrong with a damaged state store ([`StateOpenError::StateDamaged`], and the log).
#[derive(Debug, thiserror::Error)]
pub enum StateDamage {
    /// It does not open: damage redb or the store's own checks name.
    #[error(transparent)]
    Unopenable(StoreError),
    /// It opens, but its applied state (the last applied log id and membership) does not read.
    #[error("its applied state: {0}")]
    AppliedStateUnreadable(#[source] StoreError),
    /// Its applied state reads but does not decode.
    #[error("its applied state does not decode: {0}")]
    AppliedStateUndecodable(#[source] postcard::Error),
    /// It is older than the log's purge point: made durable before that purge, it is not the
    /// file it was.
    #[error(
        "it has applied the log through {applied:?}, but the log was purged through {purged:?} \
         (the state was made durable before that purge: it is not the file it was)"
    )]
    BehindPurgedLog {
        applied: Option<LogId<NodeId>>,
        purged: Option<LogId<NodeId>>,
    },
    /// The running node's scrub found it damaged and left its finding in the data dir
    /// ([`mark_damaged`]): text as the scrub wrote it, read back from the file.
    #[error("the scrub found {0}")]
    ScrubFinding(String),
}

impl StateDamage {
    /// The scrub's finding, if the scrub found this damage.
    fn scrub_finding(&self) -> Option<&str> {
        match self {
            StateDamage::ScrubFinding(finding) => Some(finding),
            _ => None,
        }
    }
}

/// Left in the data dir by a check that found the running node's state damaged; the next start
/// rebuilds the state. Holds what was found.
pub(crate) const STATE_DAMAGED_FILE: &str = "state-damaged";
/// Where damaged files of the data dir are kept (the log keeps its own in `raft-log/damaged/`).
const DAMAGED_DIR: &str = "damaged";
/// In the data dir: the scrub's findings that a rebuild of the state from the cluster was for,
/// one per line. The same finding after such a rebuild is the cluster's copy, not damage on this
/// disk (`scrub`).
const SCRUB_REBUILT_FILE: &str = "scrub-rebuilt";
/// Findings kept in `SCRUB_REBUILT_FILE` (the newest).
const SCRUB_REBUILT_MAX: usize = 64;

/// How a damaged state store was rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebuilt {
    /// From the node's own snapshot (through this index) and the log after it.
    OwnSnapshot { through: Option<u64> },
    /// From the whole log, which was never purged.
    OwnLog,
    /// Empty, with the log set aside: a leader sends a snapshot and the entries again.
    Cluster,
}

/// Opens the state store `opened` came from, or rebuilds it if it is damaged (see the module
/// docs). `has_peers`: this node's snapshot has other voters (the applied membership is not
/// asked: it may be what is damaged; the log's last membership is asked here).
pub fn open_whole(
    data_dir: &Path,
    opened: Result<Store, StoreError>,
    cache_bytes: usize,
    log: &LogStore,
    node_id: NodeId,
    has_peers: bool,
) -> Result<(Store, Option<Rebuilt>), StateOpenError> {
    let path = data_dir.join(STATE_FILE);
    let damage = match opened {
        Ok(store) => match damage_in(&store, data_dir, log)? {
            None => return Ok((store, None)),
            Some(found) => {
                // Closes the file before it is moved.
                drop(store);
                found
            }
        },
        Err(source) if source.is_damage() => StateDamage::Unopenable(source),
        Err(source) => return Err(StateOpenError::StateFile { path, source }),
    };
    let scrub_finding = damage.scrub_finding().map(str::to_string);
    tracing::error!(state = %path.display(), %damage, "the state store is damaged");
    let has_peers = has_peers || log.had_peers();
    let (rebuilt, covering) = plan_rebuild(data_dir, log, scrub_finding.is_some(), has_peers)
        .map_err(|why| match why {
            NoRebuild::Log(e) => StateOpenError::from(e),
            NoRebuild::Nothing(why) => StateOpenError::StateDamaged {
                path: path.clone(),
                damage,
                why,
            },
        })?;
    // The state file first: a crash after it finds no state file (a new, empty one has applied
    // nothing, below the log's purge point, or the scrub's mark is still there) and takes the
    // same way again.
    let aside = set_aside(data_dir, &path).map_err(|source| StateOpenError::DataDir {
        path: path.clone(),
        source,
    })?;
    if rebuilt == Rebuilt::Cluster {
        // Recorded (durably) before the segments move. A start after a crash here finds the log
        // empty and never purged: it sets nothing aside again, and the repair recorded now
        // holds local reads and votes until a leader has sent it all.
        log.set_aside_for_state_repair(node_id)?;
    }
    let store =
        Store::open_with_cache(&path, cache_bytes).map_err(|source| StateOpenError::StateFile {
            path: path.clone(),
            source,
        })?;
    if let Some((meta, mut data)) = covering {
        import(&store, &meta, &mut data).map_err(|source| StateOpenError::StateFile {
            path: path.clone(),
            source,
        })?;
    }
    if let (Some(finding), Rebuilt::Cluster) = (&scrub_finding, &rebuilt) {
        // Only a rebuild from the cluster says what the cluster holds (this node's snapshot may
        // carry the damage it was built from).
        remember_rebuilt_for(data_dir, finding).map_err(|source| StateOpenError::DataDir {
            path: data_dir.join(SCRUB_REBUILT_FILE),
            source,
        })?;
    }
    clear_mark(data_dir).map_err(|source| StateOpenError::DataDir {
        path: data_dir.join(STATE_DAMAGED_FILE),
        source,
    })?;
    tracing::warn!(
        kept_in = %aside.display(),
        rebuilt = ?rebuilt,
        "the damaged state store was set aside and a new one built"
    );
    Ok((store, Some(rebuilt)))
}

/// Why a damaged state cannot be rebuilt on this node.
enum NoRebuild {
    /// The log's purge point could not be read.
    Log(StorageError<NodeId>),
    /// Nothing holds it: no other voter, no whole snapshot covering the log, and the log alone
    /// does not hold it (why, for the error).
    Nothing(String),
}

/// How a damaged state is rebuilt, and the snapshot it is rebuilt from, if any: this node's own
/// snapshot if it is whole and covers the log's purge point, else its own log if nothing was
/// ever purged, else the cluster (`has_peers`). Damage the scrub found in a packet
/// (`scrub_finding`) may be in this node's snapshot and log too (built from the damaged state):
/// with peers, the cluster's copy is taken.
fn plan_rebuild(
    data_dir: &Path,
    log: &LogStore,
    scrub_finding: bool,
    has_peers: bool,
) -> Result<(Rebuilt, Option<(Meta, File)>), NoRebuild> {
    let snapshot = if scrub_finding && has_peers {
        Ok(None)
    } else {
        whole_snapshot(&data_dir.join(SNAPSHOT_DIR))
    };
    let purged = log.purged().map_err(NoRebuild::Log)?;
    let covering = match snapshot {
        Ok(Some((meta, data))) if purged <= meta.last_log_id => Some((meta, data)),
        Ok(Some((meta, _))) => {
            tracing::warn!(
                snapshot_through = ?meta.last_log_id,
                log_purged_through = ?purged,
                "this node's snapshot is older than the log's purge point: it cannot rebuild the state"
            );
            None
        }
        Ok(None) => None,
        Err(why) => {
            tracing::warn!(%why, "this node's snapshot cannot rebuild the state");
            None
        }
    };
    let rebuilt = if let Some((meta, _)) = &covering {
        Rebuilt::OwnSnapshot {
            through: meta.last_log_id.map(|log_id| log_id.index),
        }
    } else if purged.is_none() && !(scrub_finding && has_peers) {
        Rebuilt::OwnLog
    } else if has_peers {
        Rebuilt::Cluster
    } else {
        return Err(NoRebuild::Nothing(format!(
            "this node has no other voter to repair it from, no whole snapshot covering the \
             log (purged through {purged:?}), and the log alone does not hold it"
        )));
    };
    Ok((rebuilt, covering))
}

/// What is wrong with a state store that opened, if anything, and the scrub's finding if it
/// was the scrub that found it.
fn damage_in(
    store: &Store,
    data_dir: &Path,
    log: &LogStore,
) -> Result<Option<StateDamage>, StateOpenError> {
    let mark = data_dir.join(STATE_DAMAGED_FILE);
    match std::fs::read_to_string(&mark) {
        Ok(found) => return Ok(Some(StateDamage::ScrubFinding(found.trim().to_string()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(StateOpenError::DataDir { path: mark, source }),
    }
    // An I/O error is not damage: the start fails, and the file stays as it is.
    let applied = match store.applied_state() {
        Ok(bytes) => bytes,
        Err(e) if e.is_damage() => return Ok(Some(StateDamage::AppliedStateUnreadable(e))),
        Err(source) => {
            return Err(StateOpenError::StateFile {
                path: data_dir.join(STATE_FILE),
                source,
            });
        }
    };
    let applied = match applied
        .map(|bytes| decode::<AppliedState>(&bytes))
        .transpose()
    {
        Ok(applied) => applied.unwrap_or_default(),
        Err(e) => return Ok(Some(StateDamage::AppliedStateUndecodable(e))),
    };
    let purged = log.purged()?;
    if applied.last_applied < purged {
        return Ok(Some(StateDamage::BehindPurgedLog {
            applied: applied.last_applied,
            purged,
        }));
    }
    Ok(None)
}

/// Why this node's snapshot cannot rebuild the state.
#[derive(Debug, thiserror::Error)]
enum SnapshotUnusable {
    #[error("the snapshot cannot be read: {0}")]
    Unreadable(#[source] std::io::Error),
    #[error("snapshot {} is damaged: {source}", path.display())]
    Damaged { path: PathBuf, source: StoreError },
}

/// The current snapshot in `dir` with its data, if it checks whole.
fn whole_snapshot(dir: &Path) -> Result<Option<(Meta, File)>, SnapshotUnusable> {
    let snapshot_file =
        SnapshotFile::open(dir.to_path_buf()).map_err(SnapshotUnusable::Unreadable)?;
    let Some((meta, mut data)) = snapshot_file.load().map_err(SnapshotUnusable::Unreadable)? else {
        return Ok(None);
    };
    pkraft_state::check_snapshot(BufReader::new(&data)).map_err(|source| {
        SnapshotUnusable::Damaged {
            path: snapshot_file.data_path().ok().flatten().unwrap_or_default(),
            source,
        }
    })?;
    data.seek(SeekFrom::Start(0))
        .map_err(SnapshotUnusable::Unreadable)?;
    Ok(Some((meta, data)))
}

/// Replaces the (new, empty) state with the snapshot's.
fn import(store: &Store, meta: &Meta, data: &mut File) -> Result<(), StoreError> {
    let applied = AppliedState {
        last_applied: meta.last_log_id,
        membership: meta.last_membership.clone(),
    };
    let applied = encode(&applied).map_err(|source| StoreError::SnapshotEncode {
        what: "the applied state",
        source,
    })?;
    let summary = store.import_snapshot_from(BufReader::new(data), &applied)?;
    tracing::info!(
        packets = summary.packets,
        through = ?meta.last_log_id,
        "rebuilt the state from this node's snapshot; the log after it is applied next"
    );
    Ok(())
}

/// The voters of the membership this node's current snapshot holds (none if it has no
/// snapshot, or its pointer cannot be read): what the node knows of its cluster when its state
/// cannot be read.
pub fn snapshot_voters(data_dir: &Path) -> Vec<NodeId> {
    SnapshotFile::open(data_dir.join(SNAPSHOT_DIR))
        .and_then(|snapshot_file| snapshot_file.load_meta())
        .ok()
        .flatten()
        .map(|meta| meta.last_membership.membership().voter_ids().collect())
        .unwrap_or_default()
}

/// Moves the damaged `state` file to `damaged/` in the data dir, durably.
fn set_aside(data_dir: &Path, state: &Path) -> std::io::Result<PathBuf> {
    let aside = data_dir.join(DAMAGED_DIR);
    std::fs::create_dir_all(&aside)?;
    let stamp = pkraft_types::world::unix_nanos_now();
    let kept = aside.join(format!("{STATE_FILE}.{stamp}"));
    match std::fs::rename(state, &kept) {
        Ok(()) => {}
        // Already moved by a start that crashed after it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    sync_dir(&aside)?;
    sync_dir(data_dir)?;
    Ok(kept)
}

/// Records, durably, that the running node's scrub found its state damaged (`finding`, one
/// line): the next start rebuilds it.
pub fn mark_damaged(data_dir: &Path, finding: &str) -> std::io::Result<()> {
    write_synced(data_dir, STATE_DAMAGED_FILE, finding)
}

/// Whether a rebuild of the state from the cluster was for `finding` (the scrub's).
pub fn rebuilt_for(data_dir: &Path, finding: &str) -> bool {
    rebuilt_findings(data_dir)
        .iter()
        .any(|rebuilt| rebuilt == finding)
}

fn rebuilt_findings(data_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(data_dir.join(SCRUB_REBUILT_FILE))
        .map(|text| text.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

fn remember_rebuilt_for(data_dir: &Path, finding: &str) -> std::io::Result<()> {
    let mut findings = rebuilt_findings(data_dir);
    if !findings.iter().any(|rebuilt| rebuilt == finding) {
        findings.push(finding.to_string());
    }
    let keep_from = findings.len().saturating_sub(SCRUB_REBUILT_MAX);
    let mut text = findings[keep_from..].join("\n");
    text.push('\n');
    write_synced(data_dir, SCRUB_REBUILT_FILE, &text)
}

/// Writes `text` to `name` in `dir` and makes it durable.
fn write_synced(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let file = File::create(dir.join(name))?;
    std::io::Write::write_all(&mut &file, text.as_bytes())?;
    pkraft_types::world::sync_all(&file)?;
    sync_dir(dir)
}

fn clear_mark(data_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(data_dir.join(STATE_DAMAGED_FILE)) {
        Ok(()) => sync_dir(data_dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
