//! [`AnswerCache`]: ready UDP answers, byte for byte as hickory-server encodes them, so that a
//! query asked before is answered without parsing it, without a task, and without the `Catalog`.
//!
//! # What an entry is keyed by, and why that is exact
//! The key is the whole query message after its 2-byte ID: header flags, counts, question (with
//! the letter case the client used), and the OPT record with its buffer size, version, DO bit and
//! options. hickory's answer is a function of those bytes, the protocol (always UDP here), the
//! config, and what the zones read from the store; nothing else (no views, no per-client state,
//! TTLs are not counted down). So a query whose bytes after the ID equal a cached one gets the
//! cached answer with its own ID, which is the answer hickory would have encoded for it.
//!
//! # How an entry stays current
//! Only the local answers (`crate::local`) are kept: they report the key they
//! read from the store with the [`KeyVersion`](pkraft_state::KeyVersion) read before it. The entry is served only while
//! that key is still at its version, so a packet applied to the local replica retires the
//! answers that used it at once. Answers that read no key (the apex, names that are no key)
//! depend on the config and on the short-lived records (a name above one exists): they are
//! served only while the records are at the generation read before the answer was built, and
//! not past the end of the first record answered then (records end without a change). What
//! hickory's chain answers is not kept: it may have asked the DHT, which no version covers.
//!
//! # Which answers are kept
//! An answer is kept the second time its query's bytes are seen, not the first (a doorkeeper,
//! as TinyLFU's): an authoritative server mostly sees names it has not answered lately
//! (resolvers cache each answer for its TTL), and keeping each of those cost a miss about 5 %
//! of its CPU in allocation and eviction, for entries that are evicted again before anyone asks
//! twice. A query seen before marks one bit in [`SeenOnce`], a fixed bitmap that is cleared
//! after a bounded number of marks, so neither a flood of distinct names nor time grows it.
//!
//! Answers that stand for a passing failure are never cached. The SERVFAIL of a stale node is
//! not a local answer, and the local answers leave the REFUSED of a replica that could not be
//! read to the chain, so they never reach the cache; the rcode check in [`AnswerCache::insert`]
//! is a safety net for them and keeps out the REFUSED of names in no zone (cheap to answer
//! anyway). The staleness bound is asked before every hit by the caller.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use hickory_proto::op::ResponseCode;
use pkraft_state::Store;
use pkraft_types::short_lived::ShortLivedRecords;
use pkraft_types::unix_micros_now;

use crate::zone::Read;

/// A DNS header is 12 bytes; the ID is its first 2.
const HEADER_LEN: usize = 12;
const ID_LEN: usize = 2;
/// Queries longer than this are answered but not cached: real queries are well under 100 bytes,
/// and long keys would only make room for junk.
const MAX_KEY_LEN: usize = 512;
/// Fixed cost of an entry beyond its key and answer: the `Arc`, the boxes and the map's own slot
/// (an estimate, so that a flood of distinct queries stays within the bound).
const ENTRY_OVERHEAD: usize = 256;
/// The size of an entry for an iroh `_iroh` TXT answer, to size the map up front.
const TYPICAL_ENTRY_BYTES: u64 = 512;

/// What an answer that read no key depended on of the short-lived records.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShortLivedStamp {
    generation: u64,
    /// When the first record answered then ends (µs since the epoch; `u64::MAX`:
    /// none).
    ends_at: u64,
}

impl ShortLivedStamp {
    /// For a cache without short-lived records.
    const NONE: ShortLivedStamp = ShortLivedStamp {
        generation: 0,
        ends_at: u64::MAX,
    };
}

/// One cached answer.
struct Entry {
    read: Option<Read>,
    /// For an answer that read no key: the short-lived records before it was built.
    short_lived: ShortLivedStamp,
    /// The answer as encoded for the query that filled the entry (its ID included).
    wire: Box<[u8]>,
}

/// Ready answers; see the module docs.
pub(crate) struct AnswerCache {
    store: Store,
    /// The short-lived records the zones answer from, if any (module docs).
    short_lived: Option<Arc<ShortLivedRecords>>,
    entries: quick_cache::sync::Cache<Box<[u8]>, Arc<Entry>, Weight>,
    /// The queries seen once, whose next miss is kept.
    seen: SeenOnce,
}

impl AnswerCache {
    /// A cache over `store` holding about `max_bytes` of entries.
    pub(crate) fn new(
        store: Store,
        max_bytes: u64,
        short_lived: Option<Arc<ShortLivedRecords>>,
    ) -> Self {
        let estimated_entries = usize::try_from(max_bytes / TYPICAL_ENTRY_BYTES)
            .unwrap_or(usize::MAX)
            .max(16);
        let entries = quick_cache::sync::Cache::with_weighter(estimated_entries, max_bytes, Weight);
        AnswerCache {
            store,
            short_lived,
            entries,
            seen: SeenOnce::new(estimated_entries),
        }
    }

    /// Writes the cached answer to `query` into `answer`, with the query's ID, if there is one
    /// and every key it read is unchanged. `query` is the whole message as received.
    pub(crate) fn answer(&self, query: &[u8], answer: &mut Vec<u8>) -> bool {
        let Some(key) = cache_key(query) else {
            return false;
        };
        // A hit marks the entry as used (one atomic store) and clones its `Arc`: no queue of
        // reads to replay, unlike an LRU or TinyLFU cache.
        let Some(entry) = self.entries.get(key) else {
            return false;
        };
        let current = match &entry.read {
            Some((read_key, version)) => self.store.key_version(read_key) == *version,
            None => self.short_lived_unchanged_since(entry.short_lived),
        };
        if !current {
            return false;
        }
        answer.clear();
        answer.extend_from_slice(&entry.wire);
        answer[..ID_LEN].copy_from_slice(&query[..ID_LEN]);
        true
    }

    /// The short-lived records now; taken before building an answer to
    /// [`AnswerCache::insert`].
    pub(crate) fn short_lived_stamp(&self) -> ShortLivedStamp {
        match &self.short_lived {
            None => ShortLivedStamp::NONE,
            Some(records) => ShortLivedStamp {
                generation: records.generation(),
                ends_at: records.next_end(unix_micros_now()).unwrap_or(u64::MAX),
            },
        }
    }

    /// Whether the short-lived records answered are still those answered at `stamp`.
    fn short_lived_unchanged_since(&self, stamp: ShortLivedStamp) -> bool {
        let Some(records) = &self.short_lived else {
            return true;
        };
        records.generation() == stamp.generation
            && (stamp.ends_at == u64::MAX || unix_micros_now() < stamp.ends_at)
    }

    /// Keeps `wire`, the answer to `query`, which read `read` (and the short-lived records as
    /// `short_lived` says), unless it must not be cached or `query` was not seen before (module
    /// docs).
    pub(crate) fn insert(
        &self,
        query: &[u8],
        wire: &[u8],
        read: Option<Read>,
        short_lived: ShortLivedStamp,
    ) {
        let Some(key) = cache_key(query) else {
            return;
        };
        if !self.seen.seen_before(key) {
            return;
        }
        if wire.len() < HEADER_LEN {
            return;
        }
        let rcode = ResponseCode::from_low(wire[3] & 0x0f);
        if matches!(rcode, ResponseCode::ServFail | ResponseCode::Refused) {
            return;
        }
        let entry = Entry {
            read,
            short_lived,
            wire: wire.into(),
        };
        self.entries.insert(key.into(), Arc::new(entry));
    }
}

impl AnswerCache {
    /// Entries held and their estimated bytes.
    pub(crate) fn size(&self) -> (u64, u64) {
        (
            u64::try_from(self.entries.len()).unwrap_or(u64::MAX),
            self.entries.weight(),
        )
    }
}

/// Which cache keys were seen since the bitmap was last cleared: one bit per key (by hash), so
/// that a key seen once takes no memory of its own. A key whose bit another key set passes as
/// seen; with at most an eighth of the bits set (the bitmap is cleared then), that is at most
/// one key in eight.
struct SeenOnce {
    bits: Box<[AtomicU64]>,
    /// Bits set since the last clear.
    marked: AtomicUsize,
    hasher: quick_cache::DefaultHashBuilder,
}

impl SeenOnce {
    /// Bits per entry the cache is sized for, so that keys asked twice within about twice the
    /// cache's entries are kept.
    const BITS_PER_ENTRY: usize = 16;
    const WORDS_MIN: usize = 1 << 10;
    /// 2 MiB of bits at most, whatever the cache's bound.
    const WORDS_MAX: usize = 1 << 18;

    fn new(entries: usize) -> Self {
        let words = (entries.saturating_mul(Self::BITS_PER_ENTRY) / 64)
            .clamp(Self::WORDS_MIN, Self::WORDS_MAX)
            .next_power_of_two();
        SeenOnce {
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            marked: AtomicUsize::new(0),
            hasher: quick_cache::DefaultHashBuilder::default(),
        }
    }

    /// Whether `key` was seen since the last clear; marks it seen.
    fn seen_before(&self, key: &[u8]) -> bool {
        let hash = self.hasher.hash_one(key);
        // The word count is a power of two: the low bits pick the word, the next six the bit.
        let word = usize::try_from(hash).unwrap_or(usize::MAX) & (self.bits.len() - 1);
        let bit = 1u64 << ((hash >> 58) & 63);
        let Some(slot) = self.bits.get(word) else {
            return false;
        };
        if slot.load(Ordering::Relaxed) & bit != 0 {
            return true;
        }
        let before = slot.fetch_or(bit, Ordering::Relaxed);
        if before & bit == 0
            && self.marked.fetch_add(1, Ordering::Relaxed) + 1 >= self.bits.len() * 64 / 8
        {
            self.clear();
        }
        before & bit != 0
    }

    /// Forgets every key. Loops racing with it may mark a key a clear then drops: that key is
    /// kept a miss later.
    fn clear(&self) {
        self.marked.store(0, Ordering::Relaxed);
        for word in &*self.bits {
            word.store(0, Ordering::Relaxed);
        }
    }
}

/// An entry's weight against the bound: about the bytes it holds.
#[derive(Clone, Copy)]
struct Weight;

impl quick_cache::Weighter<Box<[u8]>, Arc<Entry>> for Weight {
    fn weight(&self, key: &Box<[u8]>, entry: &Arc<Entry>) -> u64 {
        u64::try_from(ENTRY_OVERHEAD + key.len() + entry.wire.len()).unwrap_or(u64::MAX)
    }
}

/// The bytes after the ID, if `query` is long enough to be a query and short enough to cache.
fn cache_key(query: &[u8]) -> Option<&[u8]> {
    (HEADER_LEN..=MAX_KEY_LEN)
        .contains(&query.len())
        .then(|| &query[ID_LEN..])
}

#[cfg(test)]
mod tests {
    use super::SeenOnce;

    /// A key is seen before from its second sighting on, until the bitmap is cleared; other
    /// keys are not. One may share a bit set before it (the seed is random; here at most 65 of
    /// 65,536 bits are set, about 0.03 collisions expected among 64 keys), so the test allows a
    /// few: 8 or more would take a broken bitmap (chance below 1e-15 otherwise).
    #[test]
    fn a_key_is_seen_before_from_its_second_sighting() {
        let seen = SeenOnce::new(1_000);
        assert!(!seen.seen_before(b"one"));
        assert!(seen.seen_before(b"one"));
        assert!(seen.seen_before(b"one"));
        let others_seen = (0..64)
            .filter(|i| seen.seen_before(format!("other {i}").as_bytes()))
            .count();
        assert!(
            others_seen < 8,
            "{others_seen} of 64 new keys passed as seen"
        );
    }

    /// Distinct keys set at most an eighth of the bits before the bitmap is cleared, so the
    /// bitmap never fills: most keys sighted once are new, and keys seen before the clear are
    /// new again after it.
    ///
    /// The hasher is seeded at random, so any one key may share its bit with a key marked since
    /// the clear (at most one in eight): the test asks it of many keys, not of one.
    #[test]
    fn distinct_keys_clear_the_bitmap_before_it_fills() {
        let seen = SeenOnce::new(1_000);
        let bits = seen.bits.len() * 64;
        let early: Vec<String> = (0..64).map(|i| format!("early {i}")).collect();
        let early_new = early
            .iter()
            .filter(|k| !seen.seen_before(k.as_bytes()))
            .count();
        assert!(
            early_new > early.len() / 2,
            "{early_new} of 64 early keys were new"
        );
        let sightings = bits / 2;
        let passed = (0..sightings)
            .filter(|i| seen.seen_before(format!("key {i}").as_bytes()))
            .count();
        assert!(
            passed < sightings / 8,
            "{passed} of {sightings} distinct keys passed as seen"
        );
        let set: u32 = seen
            .bits
            .iter()
            .map(|w| w.load(std::sync::atomic::Ordering::Relaxed).count_ones())
            .sum();
        assert!(set as usize <= bits / 8, "{set} of {bits} bits set");
        // Without the clear every early key would pass as seen; with it about one in eight at
        // most does, and more than half failing to is a chance below 1e-15 (binomial, p = 1/8).
        let early_again = early
            .iter()
            .filter(|k| seen.seen_before(k.as_bytes()))
            .count();
        assert!(
            early_again < early.len() / 2,
            "{early_again} of 64 early keys passed as seen after the clear"
        );
    }
}
