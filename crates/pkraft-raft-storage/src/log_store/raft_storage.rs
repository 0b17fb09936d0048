//! The log store as openraft's `RaftLogReader` and `RaftLogStorage`: reads, the vote, appends,
//! truncations and purges.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use tokio::time::Instant;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader,
    Vote,
};
use redb::{Durability, Error as DbError};

use super::meta::{META_HAD_PEERS, META_LAST_PURGED, META_VOTE, put_meta};
use super::recent::RecentEntries;
use super::repair::end_repair_if_whole;
use super::segments::LastEntry;
use super::{Log, LogStore, Result, decode_entry, entry_id, lock, lock_recent};
use crate::codec::storage_error;
use crate::type_config::{NodeId, TypeConfig};

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
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
        let read = || -> io::Result<Vec<Entry<TypeConfig>>> {
            // The entries appended last, from memory: what the apply and the replication to
            // followers that keep up ask for (see `recent.rs`).
            if let Some(entries) = self.recent()?.get(start, end)? {
                return Ok(entries);
            }
            // Held until the records are read (see `Inner::log`).
            let log = self.log()?;
            let spans = {
                // Purged entries may still sit in the first segment; they are not served.
                let unpurged = log.purged.map_or(0, |p| p.index.saturating_add(1));
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

    /// See [`LogStore::save_committed_id`].
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        self.save_committed_id(committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        self.read_committed_id()
    }

    /// Queues the append to the log's writer thread and returns; the thread writes and syncs
    /// the entries and only then reports them flushed to openraft (which waits for that before
    /// it counts them, or hands the log anything else).
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = Instant::now();
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        if entries.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        let store = self.clone();
        self.writer
            .submit(move || {
                let written = store.write_append(entries);
                if written.is_ok()
                    && let Some(histogram) = &store.append_seconds
                {
                    histogram.observe(started.elapsed().as_secs_f64());
                }
                // Let go of the log before openraft hears of the flush: whoever the report
                // wakes may drop the other handles and open the log again at once, which redb
                // refuses while this one holds its meta file.
                drop(store);
                callback.log_io_completed(written);
            })
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Write, &e))
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        self.with_log(move |inner| {
            let mut log = lock(inner)?;
            // The entry that becomes the last: the synced mark is lowered to it.
            let new_last_id = match log_id.index.checked_sub(1) {
                Some(index) => entry_id(&log.segments, index)?,
                None => None,
            };
            let new_last = new_last_id.map(|id| LastEntry {
                index: id.index,
                term: id.leader_id.term,
                leader: id.leader_id.node_id,
            });
            // The recent entries first, under the log's lock: a reader that misses them waits
            // for this lock and reads the segments as truncated, and one that was served from
            // them read before the truncation began.
            lock_recent(inner)?.truncated(log_id.index);
            log.segments.truncate(log_id.index, new_last)?;
            log.last_appended = new_last_id;
            Ok(())
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
            // The recent entries first, as in `truncate`.
            lock_recent(inner)?.purged(log_id.index);
            log.segments.remove_through(log_id.index)?;
            if log.segments.last_index().is_none() {
                log.last_appended = None;
            }
            end_repair_if_whole(inner, Some(log_id))
        })
        .await
    }
}

/// An append's entries follow one another: consecutive indexes, terms that never go back. A
/// record's index is its position in the log, so entries [5, 7] would be filed as 5 and 6 and
/// entry 7 served as index 6. The entries come from a leader over the network: refused as input
/// (openraft then stops the node), not asserted. That the first follows the log's end is
/// [`Log::check_follows`]. Nothing here takes a lock: the append is the write path's critical
/// section, and the recent entries' lock is held by the replication.
fn check_append(entries: &[Entry<TypeConfig>]) -> io::Result<()> {
    let mut previous: Option<LogId<NodeId>> = None;
    for entry in entries {
        let id = entry.log_id;
        if let Some(before) = previous
            && (before.index.checked_add(1) != Some(id.index) || id.leader_id < before.leader_id)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "append of {id} after {before}: log entries are consecutive and their terms never go back"
                ),
            ));
        }
        previous = Some(id);
    }
    Ok(())
}

impl Log {
    /// An append's first entry follows the log's end: a term no lower than the last entry's (or,
    /// with every entry purged, the purge point's). openraft 0.9 asserts this in debug builds
    /// only; a follower that took a lower term after a higher one would apply entries a later
    /// leader has overwritten. (That the index follows is `Segments::prepare_append`'s check.)
    /// Under the log's lock the append takes anyway, against the id kept in memory.
    fn check_follows(&self, first: LogId<NodeId>) -> io::Result<()> {
        let end = self.last_appended.max(self.purged);
        match end {
            Some(end) if first.leader_id < end.leader_id => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "append of {first} after the log's last entry {end}: log entries' terms never go back"
                ),
            )),
            _ => Ok(()),
        }
    }
}

impl LogStore {
    /// One append, on the writer thread: the entries encoded straight into their records, written
    /// at the end of the segment and synced, the synced mark after them; then published to
    /// readers (the segment's offsets and the recent entries) and counted
    /// ([`LogStore::appends`]). Done only once all of it is on disk.
    fn write_append(&self, entries: Vec<Entry<TypeConfig>>) -> io::Result<()> {
        let inner = &*self.inner;
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        let first_index = first.log_id.index;
        let last_log_id = last.log_id;
        let last_entry = LastEntry {
            index: last_log_id.index,
            term: last_log_id.leader_id.term,
            leader: last_log_id.leader_id.node_id,
        };
        // Whether the last membership in this append has other voters; written when it changes
        // (rare: membership changes).
        let peers_now = entries
            .iter()
            .rev()
            .find_map(|entry| match &entry.payload {
                EntryPayload::Membership(membership) => Some(membership.voter_ids().count() > 1),
                _ => None,
            })
            .filter(|peers| *peers != inner.had_peers.load(std::sync::atomic::Ordering::Acquire));
        check_append(&entries)?;
        let target = {
            let mut log = lock(inner)?;
            log.check_follows(first.log_id)?;
            log.segments.prepare_append(first_index)?
        };
        let mut encoded = Vec::new();
        let lengths = target.encode_with(entries.len(), &mut encoded, |position, out| {
            postcard::to_io(&entries[position], &mut *out)
                .map(|_| ())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
        })?;
        // The write and its sync hold no lock, so readers (replication, apply) go on.
        target.write_and_sync(&encoded, last_entry)?;
        {
            let mut log = lock(inner)?;
            log.segments.finish_append(&target, &lengths)?;
            log.last_appended = Some(last_log_id);
        }
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
        end_repair_if_whole(inner, Some(last_log_id))?;
        let record_bytes = lengths.iter().map(|length| *length as usize);
        lock_recent(inner)?.appended(entries.into_iter().zip(record_bytes));
        // `write_and_sync` returned: the entries are on disk.
        inner
            .appends
            .send_modify(|appends| *appends = appends.wrapping_add(1));
        Ok(())
    }

    /// The entries appended last.
    fn recent(&self) -> io::Result<std::sync::MutexGuard<'_, RecentEntries>> {
        lock_recent(&self.inner)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn blank(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    /// A record's index is its place in the log, so an append with a gap, or with a term
    /// going back, is refused before anything is written: a leader's bad entries (the fault)
    /// never become entries served under other indexes. An append that does not follow the
    /// log's last index is refused as well (`prepare_append`).
    #[test]
    fn an_append_with_a_gap_or_a_term_going_back_is_refused_before_it_is_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = LogStore::open_with_segment_size(dir.path(), 300).expect("open");
        let error = store
            .write_append(vec![blank(1, 1), blank(1, 3)])
            .expect_err("a gap");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(error.to_string().contains("consecutive"), "{error}");
        assert_eq!(store.last_log_id().expect("last"), None);

        store
            .write_append(vec![blank(2, 1), blank(2, 2)])
            .expect("consecutive entries");
        store
            .write_append(vec![blank(2, 4)])
            .expect_err("an append that skips index 3");
        let error = store
            .write_append(vec![blank(2, 3), blank(1, 4)])
            .expect_err("a term going back inside one append");
        assert!(error.to_string().contains("never go back"), "{error}");
        assert_eq!(
            store.last_log_id().expect("last").map(|id| id.index),
            Some(2)
        );
    }

    /// openraft hears of an append's flush only after the writer thread has let go of the
    /// job's handle to the log: whoever the flush wakes may drop the last other handle and open
    /// the log again at once (a node restarted in one process, a tool after the node), and
    /// redb refuses its meta file while any handle holds it. The fault this guards: CI's
    /// `a_restart_applies_log_entries_the_state_lacks_before_returning` failed "Database already
    /// open" on such a reopen, the writer thread descheduled between the report and the drop.
    #[test]
    fn an_append_lets_go_of_the_log_before_it_reports_the_flush() {
        use openraft::storage::RaftLogStorageExt;

        // More logs appending at once than the machine has cores: a writer thread is then
        // often descheduled just after its report, which is when the fault shows.
        let logs: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .expect("runtime");
                    let mut store =
                        LogStore::open_with_segment_size(dir.path(), 1 << 20).expect("open");
                    (1..=300)
                        .filter(|&index| {
                            runtime
                                .block_on(store.blocking_append([blank(1, index)]))
                                .expect("append");
                            store.open_handles() != 1
                        })
                        .count()
                })
            })
            .collect();
        for log in logs {
            let held = log.join().expect("appends");
            assert_eq!(
                held, 0,
                "appends whose writer still held the log when openraft heard of the flush"
            );
        }
    }

    /// An append whose first term is below the log's last entry's is refused, against the end
    /// the log has after each change: appends, a truncation, a purge past every entry, and a
    /// reopen (the faults: a leader, or a bug, sending entries of an older term after newer).
    #[test]
    fn an_append_whose_first_term_is_below_the_logs_last_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut store = LogStore::open_with_segment_size(dir.path(), 300).expect("open");
        store
            .write_append(vec![blank(1, 1), blank(3, 2)])
            .expect("terms going up");
        let error = store
            .write_append(vec![blank(2, 3)])
            .expect_err("a term below the last entry's");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(error.to_string().contains("never go back"), "{error}");
        store
            .write_append(vec![blank(3, 3)])
            .expect("the same term");

        // Truncated back to entry 1 (term 1): an append of term 2 after it is a new leader's.
        runtime
            .block_on(store.truncate(LogId::new(CommittedLeaderId::new(3, 1), 2)))
            .expect("truncate");
        store
            .write_append(vec![blank(2, 2)])
            .expect("term 2 after term 1");
        store
            .write_append(vec![blank(1, 3)])
            .expect_err("term 1 after the new entry 2 of term 2");

        // Purged past every entry: the purge point is the end.
        runtime
            .block_on(store.purge(LogId::new(CommittedLeaderId::new(4, 1), 5)))
            .expect("purge");
        store
            .write_append(vec![blank(3, 6)])
            .expect_err("term 3 after the purge point's term 4");
        store.write_append(vec![blank(4, 6)]).expect("term 4");
        drop(store);

        // The end is read back at open.
        let store = LogStore::open_with_segment_size(dir.path(), 300).expect("reopen");
        store
            .write_append(vec![blank(3, 7)])
            .expect_err("term 3 after entry 6 of term 4, after a reopen");
        store.write_append(vec![blank(5, 7)]).expect("term 5");
        assert_eq!(
            store.last_log_id().expect("last"),
            Some(LogId::new(CommittedLeaderId::new(5, 1), 7))
        );
    }
}
