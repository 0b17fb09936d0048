//! [`AnswerCache`]: ready UDP answers, byte for byte as hickory-server encoded them, so that a
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
//! While hickory answers a query, [`record_reads`] notes every key the zones read from the store
//! with the [`KeyVersion`] read before it (the [`crate::record_cache::RecordCache`] reports them).
//! The entry is served only while every one of those keys is still at its version, so a packet
//! applied to the local replica retires the answers that used it at once. Answers that read no
//! key (the apex, names that are no key) depend on the config alone.
//!
//! Answers that stand for a passing failure are never cached: SERVFAIL (the node was too stale,
//! or the answer could not be encoded) and REFUSED (the replica could not be read, or the name is
//! in no zone, which is cheap to answer anyway). The staleness bound is checked again on every
//! hit by the caller.

use std::cell::RefCell;
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use pkraft_store::{KeyVersion, Store};
use pkraft_types::KeyBytes;

/// A DNS header is 12 bytes; the ID is its first 2.
const HEADER_LEN: usize = 12;
const ID_LEN: usize = 2;
/// Queries longer than this are answered but not cached: real queries are well under 100 bytes,
/// and long keys would only make room for junk.
const MAX_KEY_LEN: usize = 512;
/// An answer that read more keys than this is not cached (hickory reads one key per query; CNAME
/// chains inside the zone could make it more).
const MAX_READS: usize = 8;
/// Fixed cost of an entry beyond its key, answer and reads: the `Arc`, the boxes and moka's own
/// bookkeeping (an estimate, so that a flood of distinct queries stays within the bound).
const ENTRY_OVERHEAD: usize = 256;

/// A key the zones read, and its version before the read.
type Read = (KeyBytes, KeyVersion);

tokio::task_local! {
    /// The keys read while answering the query of the current task; `None` once more than
    /// [`MAX_READS`] were read.
    static READS: RefCell<Option<Vec<Read>>>;
}

/// Notes that the packet of `key` was read at `version` (read before the packet). Does nothing
/// outside [`record_reads`], so TCP and DoH answers pay one failed thread-local lookup.
pub(crate) fn note_read(key: &KeyBytes, version: KeyVersion) {
    let _ = READS.try_with(|reads| {
        let mut reads = reads.borrow_mut();
        if let Some(list) = reads.as_mut() {
            if list.len() < MAX_READS {
                list.push((*key, version));
            } else {
                *reads = None;
            }
        }
    });
}

/// Notes that the answer of the current task depends on more than the local replica (the DHT),
/// so it must not be cached. Does nothing outside [`record_reads`].
pub(crate) fn note_uncacheable() {
    let _ = READS.try_with(|reads| *reads.borrow_mut() = None);
}

/// Runs `answer` and returns its output with the keys it read (`None`: too many to cache).
/// `answer` must do its reads in this task: reads of a task it spawns go unnoticed.
pub(crate) async fn record_reads<T>(answer: impl Future<Output = T>) -> (T, Option<Vec<Read>>) {
    READS
        .scope(RefCell::new(Some(Vec::new())), async {
            let output = answer.await;
            let reads = READS.with(|reads| reads.borrow_mut().take());
            (output, reads)
        })
        .await
}

/// One cached answer.
struct Entry {
    reads: Box<[Read]>,
    /// The answer as encoded for the query that filled the entry (its ID included).
    wire: Box<[u8]>,
}

/// Ready answers; see the module docs.
pub(crate) struct AnswerCache {
    store: Store,
    entries: moka::sync::Cache<Box<[u8]>, Arc<Entry>>,
}

impl AnswerCache {
    /// A cache over `store` holding about `max_bytes` of entries.
    pub(crate) fn new(store: Store, max_bytes: u64) -> Self {
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(weight)
            .build();
        AnswerCache { store, entries }
    }

    /// Writes the cached answer to `query` into `answer`, with the query's ID, if there is one
    /// and every key it read is unchanged. `query` is the whole message as received.
    pub(crate) fn answer(&self, query: &[u8], answer: &mut Vec<u8>) -> bool {
        let Some(key) = cache_key(query) else {
            return false;
        };
        let Some(entry) = self.entries.get(key) else {
            return false;
        };
        let current = entry
            .reads
            .iter()
            .all(|(read_key, version)| self.store.key_version(read_key) == *version);
        if !current {
            return false;
        }
        answer.clear();
        answer.extend_from_slice(&entry.wire);
        answer[..ID_LEN].copy_from_slice(&query[..ID_LEN]);
        true
    }

    /// Keeps `wire`, hickory's answer to `query`, which read `reads` (`None`: too many), unless
    /// it must not be cached (module docs).
    pub(crate) fn insert(&self, query: &[u8], wire: &[u8], reads: Option<Vec<Read>>) {
        let (Some(key), Some(reads)) = (cache_key(query), reads) else {
            return;
        };
        if wire.len() < HEADER_LEN {
            return;
        }
        let rcode = ResponseCode::from_low(wire[3] & 0x0f);
        if matches!(rcode, ResponseCode::ServFail | ResponseCode::Refused) {
            return;
        }
        let entry = Entry {
            reads: reads.into_boxed_slice(),
            wire: wire.into(),
        };
        self.entries.insert(key.into(), Arc::new(entry));
    }
}

impl AnswerCache {
    /// Entries held and their estimated bytes (moka counts lazily: approximate).
    pub(crate) fn size(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.entry_count(), self.entries.weighted_size())
    }
}

/// An entry's weight against the bound: about the bytes it holds.
#[expect(clippy::borrowed_box, reason = "moka's weigher is given &K")]
fn weight(key: &Box<[u8]>, entry: &Arc<Entry>) -> u32 {
    let bytes =
        ENTRY_OVERHEAD + key.len() + entry.wire.len() + entry.reads.len() * size_of::<Read>();
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// The bytes after the ID, if `query` is long enough to be a query and short enough to cache.
fn cache_key(query: &[u8]) -> Option<&[u8]> {
    (HEADER_LEN..=MAX_KEY_LEN)
        .contains(&query.len())
        .then(|| &query[ID_LEN..])
}
