//! [`DhtOutbox`]: the packets this replica applied that the Mainline DHT publisher (`pkraft-dht`,
//! `[dht]`) has not put yet, and how far the publisher has got.
//!
//! Every replica keeps the outbox, not only the leader: each notes the keys its applies store,
//! and drops them again when it applies the leader's [`pkraft_types::Command::DhtProgress`]. So when the
//! leader changes, the new one already holds exactly the keys stored after the last progress
//! its predecessor committed and carries on from there; what it puts again is at most what the
//! old leader put after its last progress entry (about `dht.progress_interval` of work), never
//! the whole store.
//!
//! The outbox lives in memory only. After a restart it holds what the node applied since it
//! started; keys stored before that and not yet put are left to the republish sweep (at most
//! `dht.republish_interval` later). It is bounded: past `dht.publish_backlog_max` keys new keys
//! are left to the sweep too, and counted.
//!
//! A key updated again before it was put is put once, in its newest version (the publisher
//! reads the store when it puts): iroh re-signs its packet every few minutes, and a burst of
//! updates needs one put.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use pkraft_types::KeyBytes;
use tokio::time::Instant;

/// Failed puts of one key before it is left to the republish sweep.
pub const PUT_ATTEMPTS_MAX: u8 = 5;
/// Keys [`DhtOutbox::take_ready`] looks at, oldest change first.
const TAKE_SCAN_MAX: usize = 4096;

/// See the module docs.
#[derive(Debug, Default)]
pub struct DhtOutbox {
    /// Off unless `[dht]` is enabled: then the applies note nothing and cost nothing.
    enabled: AtomicBool,
    /// Keys not noted because the outbox was full (left to the republish sweep).
    overflowed: AtomicU64,
    /// Keys [`DhtOutbox::finish`]ed so far: the publisher commits progress only when this moved
    /// (the applied index alone moves with every entry, progress entries included).
    finished: AtomicU64,
    state: Mutex<OutboxState>,
}

#[derive(Debug, Default)]
struct OutboxState {
    max_keys: usize,
    note_keys: bool,
    pending: HashMap<KeyBytes, Pending>,
    /// `pending` ordered by the log index that last stored each key.
    by_index: BTreeSet<(u64, KeyBytes)>,
    /// The highest log index applied while enabled.
    applied_through: u64,
    /// The last progress the cluster committed (applied here).
    progress: Progress,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Log index of the entry that last stored the key.
    index: u64,
    /// When the key was noted (or its last put ended while a newer version waited): a key is
    /// put only once it has waited `dht.publish_delay`, so a burst of updates needs one put.
    since: Instant,
    /// Taken by the publisher and not yet finished.
    taken: bool,
    /// Failed puts of this key in a row.
    failures: u8,
}

pub use crate::state_machine::Progress;

/// A key the publisher should put now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxItem {
    pub key: KeyBytes,
    /// The log index that stored the version the outbox knows of (for [`DhtOutbox::finish`]).
    pub index: u64,
}

impl DhtOutbox {
    /// Starts following the publisher's progress and, with `note_keys`, noting applied keys
    /// (at most `max_keys`). Without `note_keys` (republishing only) just the progress is kept.
    pub fn enable(&self, max_keys: usize, note_keys: bool) {
        if let Ok(mut state) = self.state.lock() {
            state.max_keys = if note_keys { max_keys } else { 0 };
            state.note_keys = note_keys;
        }
        self.enabled.store(true, Ordering::Release);
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Records what one apply call did: `stored` are the keys whose packet changed, with the
    /// index of the entry that changed them; `progress` the progress entries applied, in order;
    /// `through` the last index applied.
    pub fn applied(&self, stored: &[(KeyBytes, u64)], progress: &[Progress], through: u64) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let now = Instant::now();
        let mut overflowed = 0;
        if state.note_keys {
            for &(key, index) in stored {
                state.note(key, index, now, &mut overflowed);
            }
        }
        for &progress in progress {
            state.prune(progress);
        }
        state.applied_through = state.applied_through.max(through);
        if overflowed > 0 {
            self.overflowed.fetch_add(overflowed, Ordering::Relaxed);
        }
    }

    /// Up to `max` keys that have waited at least `delay` and are not being put, oldest change
    /// first; they are marked taken until [`DhtOutbox::finish`].
    pub fn take_ready(&self, delay: Duration, max: usize) -> Vec<OutboxItem> {
        let Ok(mut state) = self.state.lock() else {
            return Vec::new();
        };
        let now = Instant::now();
        let OutboxState {
            pending, by_index, ..
        } = &mut *state;
        let mut ready = Vec::new();
        // The oldest changes only: during a DHT outage every key waits out its retry, and a scan
        // of the whole backlog would hold the lock the applies take for long.
        for &(index, key) in by_index.iter().take(TAKE_SCAN_MAX) {
            if ready.len() >= max {
                break;
            }
            let Some(entry) = pending.get_mut(&key) else {
                continue;
            };
            if entry.taken || now < entry.since.checked_add(delay).unwrap_or(now) {
                continue;
            }
            entry.taken = true;
            ready.push(OutboxItem { key, index });
        }
        ready
    }

    /// The put of `item` ended (stored, failed for good, or nothing to put). The key leaves the
    /// outbox unless a newer version was applied meanwhile; that one waits its own delay.
    pub fn finish(&self, item: OutboxItem) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let Some(entry) = state.pending.get_mut(&item.key) else {
            return;
        };
        if entry.index == item.index {
            state.pending.remove(&item.key);
            state.by_index.remove(&(item.index, item.key));
        } else {
            entry.taken = false;
            entry.since = Instant::now();
            entry.failures = 0;
        }
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    /// Keys finished so far (see the field).
    pub fn finished(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }

    /// The put of `item` failed: it is handed out again once `after` and the publish delay have
    /// passed (the DHT may be unreachable; trying at once would only burn the budget). After
    /// [`PUT_ATTEMPTS_MAX`] failures the key is finished instead and left to the republish
    /// sweep, so that one key the DHT never takes cannot hold the progress back on every
    /// replica.
    pub fn retry(&self, item: OutboxItem, after: Duration) {
        let gave_up = match self.state.lock() {
            Ok(mut state) => match state.pending.get_mut(&item.key) {
                Some(entry) if entry.failures + 1 >= PUT_ATTEMPTS_MAX => true,
                Some(entry) => {
                    entry.failures += 1;
                    entry.taken = false;
                    let now = Instant::now();
                    entry.since = now.checked_add(after).unwrap_or(now);
                    false
                }
                None => false,
            },
            Err(_) => false,
        };
        if gave_up {
            self.finish(item);
        }
    }

    /// Gives a key taken by a leader that lost leadership back to the outbox, so the next leader
    /// (which may be this node again) puts it.
    pub fn release(&self, item: OutboxItem) {
        if let Ok(mut state) = self.state.lock()
            && let Some(entry) = state.pending.get_mut(&item.key)
        {
            entry.taken = false;
        }
    }

    /// The log index below which every stored key has been put: what the next
    /// [`pkraft_types::Command::DhtProgress`] may say.
    pub fn published_through(&self) -> u64 {
        let Ok(state) = self.state.lock() else {
            return 0;
        };
        match state.by_index.first() {
            Some(&(index, _)) => index.saturating_sub(1),
            None => state.applied_through,
        }
    }

    /// The progress last committed by the cluster.
    pub fn committed_progress(&self) -> Progress {
        self.state
            .lock()
            .map_or(Progress::default(), |s| s.progress)
    }

    /// Whether `key` waits for its put (the republish sweep leaves it to the publisher).
    pub fn is_pending(&self, key: &KeyBytes) -> bool {
        self.state
            .lock()
            .is_ok_and(|state| state.pending.contains_key(key))
    }

    /// Keys waiting to be put (taken ones included).
    pub fn backlog(&self) -> usize {
        self.state.lock().map_or(0, |s| s.pending.len())
    }

    /// Keys never noted because the outbox was full.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }
}

impl OutboxState {
    fn note(&mut self, key: KeyBytes, index: u64, now: Instant, overflowed: &mut u64) {
        if index <= self.progress.published_through {
            // Already covered by a progress entry (a replay after a restart).
            return;
        }
        let full = self.pending.len() >= self.max_keys;
        match self.pending.get_mut(&key) {
            Some(entry) => {
                self.by_index.remove(&(entry.index, key));
                entry.index = index;
                self.by_index.insert((index, key));
            }
            None if full => *overflowed += 1,
            None => {
                self.pending.insert(
                    key,
                    Pending {
                        index,
                        since: now,
                        taken: false,
                        failures: 0,
                    },
                );
                self.by_index.insert((index, key));
            }
        }
    }

    fn prune(&mut self, progress: Progress) {
        // Progress only moves forward (a publisher that just took over may propose from a
        // replica a few entries behind).
        if progress.published_through < self.progress.published_through {
            return;
        }
        self.progress = progress;
        while let Some(&(index, key)) = self.by_index.first() {
            if index > progress.published_through {
                break;
            }
            self.by_index.pop_first();
            self.pending.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> KeyBytes {
        [n; 32]
    }

    #[test]
    fn a_key_updated_before_its_put_is_put_once_and_progress_follows_the_oldest() {
        let outbox = DhtOutbox::default();
        outbox.enable(100, true);
        outbox.applied(&[(key(1), 5), (key(2), 6)], &[], 6);
        outbox.applied(&[(key(1), 7)], &[], 8);
        assert_eq!(outbox.backlog(), 2);
        // key 2 (index 6) is now the oldest change.
        assert_eq!(outbox.published_through(), 5);
        let ready = outbox.take_ready(Duration::ZERO, 10);
        assert_eq!(
            ready,
            vec![
                OutboxItem {
                    key: key(2),
                    index: 6
                },
                OutboxItem {
                    key: key(1),
                    index: 7
                }
            ]
        );
        // Taken keys are not handed out twice.
        assert!(outbox.take_ready(Duration::ZERO, 10).is_empty());
        outbox.finish(ready[0]);
        assert_eq!(outbox.published_through(), 6);
        // A newer version applied while the put ran stays for a put of its own.
        outbox.applied(&[(key(1), 9)], &[], 9);
        outbox.finish(ready[1]);
        assert_eq!(outbox.backlog(), 1);
        assert_eq!(outbox.published_through(), 8);
        let again = outbox.take_ready(Duration::ZERO, 10);
        assert_eq!(again.len(), 1);
        outbox.finish(again[0]);
        assert_eq!(outbox.published_through(), 9);
    }

    #[test]
    fn a_follower_drops_what_the_leaders_progress_covers() {
        let outbox = DhtOutbox::default();
        outbox.enable(100, true);
        outbox.applied(&[(key(1), 3), (key(2), 4), (key(3), 10)], &[], 10);
        let progress = Progress {
            published_through: 4,
            republished_through: Some(key(9)),
        };
        outbox.applied(&[], &[progress], 11);
        assert_eq!(outbox.backlog(), 1);
        assert_eq!(outbox.committed_progress(), progress);
        // Replayed entries below the progress are not noted again.
        outbox.applied(&[(key(1), 3)], &[], 11);
        assert_eq!(outbox.backlog(), 1);
    }

    #[test]
    fn keys_wait_their_delay_and_a_full_outbox_counts_what_it_leaves_out() {
        let outbox = DhtOutbox::default();
        outbox.enable(2, true);
        outbox.applied(&[(key(1), 1), (key(2), 2), (key(3), 3)], &[], 3);
        assert_eq!(outbox.backlog(), 2);
        assert_eq!(outbox.overflowed(), 1);
        assert!(outbox.take_ready(Duration::from_secs(60), 10).is_empty());
        let ready = outbox.take_ready(Duration::ZERO, 1);
        assert_eq!(ready.len(), 1);
        outbox.release(ready[0]);
        let both = outbox.take_ready(Duration::ZERO, 10);
        assert_eq!(both.len(), 2);
        // A failed put waits before it is handed out again.
        outbox.retry(both[0], Duration::from_secs(60));
        outbox.release(both[1]);
        assert_eq!(outbox.take_ready(Duration::ZERO, 10), vec![both[1]]);
    }

    #[test]
    fn a_key_that_keeps_failing_is_left_to_the_sweep_and_progress_moves_on() {
        let outbox = DhtOutbox::default();
        outbox.enable(10, true);
        outbox.applied(&[(key(1), 4), (key(2), 5)], &[], 5);
        for attempt in 1..=PUT_ATTEMPTS_MAX {
            let ready = outbox.take_ready(Duration::ZERO, 1);
            assert_eq!(ready.len(), 1, "attempt {attempt}");
            assert_eq!(ready[0].key, key(1));
            outbox.retry(ready[0], Duration::ZERO);
        }
        assert_eq!(outbox.backlog(), 1);
        assert_eq!(outbox.published_through(), 4);
        assert_eq!(outbox.finished(), 1);
    }

    #[test]
    fn republishing_only_keeps_the_progress_but_notes_no_keys() {
        let outbox = DhtOutbox::default();
        outbox.enable(10, false);
        let progress = Progress {
            published_through: 3,
            republished_through: Some(key(4)),
        };
        outbox.applied(&[(key(1), 4)], &[progress], 5);
        assert_eq!(outbox.backlog(), 0);
        assert_eq!(outbox.committed_progress(), progress);
        // An entry with an older publish position does not move the progress back.
        let older = Progress {
            published_through: 2,
            republished_through: Some(key(2)),
        };
        outbox.applied(&[], &[older], 6);
        assert_eq!(outbox.committed_progress(), progress);
    }
}
