//! [`RecentEntries`]: the entries appended last, kept in memory, so that the apply and the
//! replication to followers that keep up take them from there instead of reading the segment
//! back and decoding it again (openraft 0.9 reads every entry it applies, and every entry it
//! sends to each follower, through the log reader).
//!
//! It always holds a suffix of the log (the entries from some index to the last one), or
//! nothing: an append that does not follow it starts it anew, a truncation cuts it, a purge
//! drops its front. So a range that starts inside it is answered whole from it. Older entries
//! (a follower far behind, a restart) are read from the segments, with every checksum checked.
//! Bounded by [`RECENT_BYTES_MAX`] of encoded entries: the oldest go first.

use std::collections::VecDeque;
use std::io;

use openraft::Entry;

use crate::type_config::TypeConfig;

/// Encoded bytes of entries kept: a few seconds of writes at full load, well beyond what a
/// follower that keeps up lags by.
pub(crate) const RECENT_BYTES_MAX: usize = 32 * 1024 * 1024;

/// See the module docs.
#[derive(Default)]
pub(crate) struct RecentEntries {
    /// Contiguous, ascending by index, ending at the log's last entry.
    entries: VecDeque<(Entry<TypeConfig>, usize)>,
    /// Encoded bytes of `entries`.
    bytes: usize,
}

impl RecentEntries {
    /// After an append is on disk: `entries`, with their encoded sizes.
    pub(crate) fn appended(
        &mut self,
        entries: impl IntoIterator<Item = (Entry<TypeConfig>, usize)>,
    ) {
        for (entry, bytes) in entries {
            if self.next_index() != Some(entry.log_id.index) {
                self.clear();
            }
            self.bytes += bytes;
            self.entries.push_back((entry, bytes));
        }
        while self.bytes > RECENT_BYTES_MAX
            && let Some((_, bytes)) = self.entries.pop_front()
        {
            self.bytes -= bytes;
        }
    }

    /// After the log was cut from `index` on.
    pub(crate) fn truncated(&mut self, index: u64) {
        while self
            .entries
            .back()
            .is_some_and(|(entry, _)| entry.log_id.index >= index)
        {
            if let Some((_, bytes)) = self.entries.pop_back() {
                self.bytes -= bytes;
            }
        }
    }

    /// After the log was purged up to `index`.
    pub(crate) fn purged(&mut self, index: u64) {
        while self
            .entries
            .front()
            .is_some_and(|(entry, _)| entry.log_id.index <= index)
        {
            if let Some((_, bytes)) = self.entries.pop_front() {
                self.bytes -= bytes;
            }
        }
    }

    /// The entries `start..end` (`end` past the last entry: up to it), if `start` is held; else
    /// `None`, and the caller reads the segments. Entries that are not the indexes asked for
    /// (a bug in keeping the suffix) are an error, never served: the apply and the replication
    /// would take one entry for another.
    pub(crate) fn get(&self, start: u64, end: u64) -> io::Result<Option<Vec<Entry<TypeConfig>>>> {
        let Some(first) = self.entries.front().map(|(entry, _)| entry.log_id.index) else {
            return Ok(None);
        };
        if start < first {
            return Ok(None);
        }
        let Ok(skip) = usize::try_from(start - first) else {
            return Ok(None);
        };
        let take = usize::try_from(end.saturating_sub(start)).unwrap_or(usize::MAX);
        let entries: Vec<_> = self
            .entries
            .iter()
            .skip(skip)
            .take(take)
            .map(|(entry, _)| entry.clone())
            .collect();
        if let Some((entry, index)) = entries
            .iter()
            .zip(start..)
            .find(|(entry, index)| entry.log_id.index != *index)
        {
            return Err(io::Error::other(format!(
                "the recent log entries are not contiguous: asked from {start}, found {} where {index} belongs",
                entry.log_id
            )));
        }
        Ok(Some(entries))
    }

    fn next_index(&self) -> Option<u64> {
        self.entries.back().map(|(entry, _)| entry.log_id.index + 1)
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;

    fn entry(index: u64) -> (Entry<TypeConfig>, usize) {
        (
            Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Blank,
            },
            100,
        )
    }

    fn indexes(entries: io::Result<Option<Vec<Entry<TypeConfig>>>>) -> Option<Vec<u64>> {
        entries
            .expect("contiguous entries")
            .map(|entries| entries.iter().map(|entry| entry.log_id.index).collect())
    }

    /// A range is answered only when its start is held, and then up to the log's end; an append
    /// that does not follow starts over, truncation and purge cut the ends, and the oldest go
    /// past the byte bound.
    #[test]
    fn holds_a_suffix_of_the_log() {
        let mut recent = RecentEntries::default();
        assert_eq!(indexes(recent.get(1, 5)), None);
        recent.appended((1..=10).map(entry));
        assert_eq!(indexes(recent.get(3, 6)), Some(vec![3, 4, 5]));
        assert_eq!(indexes(recent.get(9, u64::MAX)), Some(vec![9, 10]));
        assert_eq!(indexes(recent.get(11, 20)), Some(vec![]));
        assert_eq!(indexes(recent.get(0, 3)), None);
        recent.truncated(8);
        assert_eq!(indexes(recent.get(6, 20)), Some(vec![6, 7]));
        recent.appended([entry(8)]);
        assert_eq!(indexes(recent.get(7, 20)), Some(vec![7, 8]));
        recent.purged(4);
        assert_eq!(indexes(recent.get(4, 6)), None);
        assert_eq!(indexes(recent.get(5, 6)), Some(vec![5]));
        // A gap (the log was purged past its end, then appended to after it).
        recent.appended([entry(20)]);
        assert_eq!(indexes(recent.get(5, 6)), None);
        assert_eq!(indexes(recent.get(20, 21)), Some(vec![20]));
        let many = RECENT_BYTES_MAX / 100 + 10;
        recent.appended((21..21 + many as u64).map(entry));
        assert!(recent.bytes <= RECENT_BYTES_MAX);
        assert_eq!(indexes(recent.get(20, 21)), None);
    }

    /// Entries that are not the indexes asked for are an error, never served: a gap made in
    /// the cache (the fault) is found by the read that crosses it.
    #[test]
    fn a_gap_in_the_recent_entries_is_an_error_not_served() {
        let mut recent = RecentEntries::default();
        recent.appended((1..=5).map(entry));
        recent.entries.remove(2);
        assert_eq!(
            indexes(recent.get(1, 3)),
            Some(vec![1, 2]),
            "before the gap"
        );
        let error = recent.get(1, 5).expect_err("a range across the gap");
        assert!(error.to_string().contains("not contiguous"), "{error}");
    }
}
