//! [`LogRepair`]: entries the log lost to damage, recorded durably before anything is set aside,
//! and what it takes to be whole again; the votes it forbids meanwhile.

use std::io;
use std::path::Path;

use openraft::{CommittedLeaderId, ErrorSubject, ErrorVerb, LogId, Vote};
use redb::Error as DbError;
use redb::{Database, ReadableDatabase};
use serde::Serialize;

use super::damage::{self, Damage};
use super::meta::{
    META, META_COMMITTED, META_LAST_PURGED, META_REPAIR, META_VOTE, get_meta, put_meta, read_meta,
};
use super::segments::{Layout, Segments};
use super::{Inner, LogStore, Result, decode_entry, last_entry_id, lock, poisoned};
use crate::codec::storage_error;
use crate::type_config::NodeId;

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
    pub(super) fn repaired_by(&self, last: Option<LogId<NodeId>>) -> bool {
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

impl LogRepair {
    /// What `damage` lost: from its first index to the furthest the records after it and the
    /// synced mark show the log held.
    fn lost_to(damage: &Damage, vote_term: u64) -> LogRepair {
        LogRepair {
            lost_from: damage.first_index,
            lost_through: damage
                .last_index_after
                .unwrap_or(damage.first_index)
                .max(damage.first_index),
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
            vote_term,
        }
    }
}

/// Opens the segments of `dir`. Damage is an error, unless `sets_aside`: then each damaged place
/// (up to [`SET_ASIDE_MAX`]) is recorded as lost, durably, and moved to `raft-log/damaged/`
/// with every record after it, and the open tried again. Returns the damage set aside.
pub(super) fn open_segments(
    dir: &Path,
    meta: &Database,
    purged: Option<LogId<NodeId>>,
    layout: Layout,
    sets_aside: bool,
) -> Result<(Segments, Vec<Damage>)> {
    let logs_error = |e: &io::Error| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e);
    let mut damages = Vec::new();
    loop {
        let error = match Segments::open(dir, purged.map(|p| p.index), layout) {
            Ok(segments) => return Ok((segments, damages)),
            Err(error) => error,
        };
        let damage = match Damage::of(&error) {
            Some(damage) if sets_aside && damages.len() < SET_ASIDE_MAX => damage.clone(),
            _ => return Err(logs_error(&error)),
        };
        tracing::error!(
            "{damage}. This node has peers: the damaged records are set aside and the \
             leader sends them again"
        );
        // The loss first, durably: a crash while setting aside must not forget it.
        let vote_term =
            read_meta::<Vote<NodeId>>(meta, META_VOTE)?.map_or(0, |vote| vote.leader_id.term);
        record_repair(meta, LogRepair::lost_to(&damage, vote_term))
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        let aside = damage::set_aside(dir, &damage).map_err(|e| logs_error(&e))?;
        tracing::warn!(kept_in = %aside.display(), "set the damaged records aside");
        damages.push(damage);
    }
}

/// The repair pending in `meta`, if any, with the log brought in line with it (on every start
/// while it is pending: a crash may have come between the set-aside and this). The committed
/// id may point past what is left: openraft re-applies the log up to it at the start, and the
/// lost entries are not there to apply. It is brought back to the last entry left (the leader
/// tells the commit index again), and this node's own leadership is demoted.
pub(super) fn pending_repair(
    meta: &Database,
    segments: &Segments,
    purged: Option<LogId<NodeId>>,
    node_id: Option<NodeId>,
) -> Result<Option<LogRepair>> {
    let pending = read_meta::<LogRepair>(meta, META_REPAIR)?;
    if pending.is_none() {
        return Ok(None);
    }
    let kept_last = last_entry_id(segments)
        .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
    let clamp = || -> std::result::Result<(), DbError> {
        let txn = meta.begin_write()?;
        let committed =
            get_meta::<Option<LogId<NodeId>>>(&txn.open_table(META)?, META_COMMITTED)?.flatten();
        let kept_floor = kept_last.max(purged);
        if committed > kept_floor {
            put_meta(&txn, META_COMMITTED, &kept_floor)?;
        }
        txn.commit()?;
        Ok(())
    };
    clamp().map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, &e))?;
    if let Some(node_id) = node_id {
        demote_own_leadership(meta, node_id)
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, &e))?;
    }
    Ok(pending)
}

impl LogStore {
    /// Entries this log lost to damage and has not received again, if any.
    pub fn repair(&self) -> Option<LogRepair> {
        self.inner
            .repair
            .lock()
            .ok()
            .and_then(|repair| repair.clone())
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
            let aside = damage::set_aside_all(&dir)?;
            log.segments = Segments::open(&dir, None, log.segments.layout())?;
            log.purged = None;
            log.last_appended = None;
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
pub(super) fn end_repair_if_whole(inner: &Inner, last: Option<LogId<NodeId>>) -> io::Result<()> {
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
