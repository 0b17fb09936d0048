//! [`ReadBuffer`]: the rows the open apply transaction holds and has not committed yet, for the
//! readers on this node (etcd's `txReadBuffer` beside its batch transaction).
//!
//! The writer (`writer.rs`) keeps one redb write transaction open across many applies and
//! commits it every `apply_batch.interval` or `apply_batch.packets`. redb's readers see only
//! committed data, so every row an apply writes is also put here, at once, and a reader looks
//! here before it reads the committed tables: what is applied is visible as soon as the apply
//! returns, so a 204 still means a GET and a DNS query on the node that answered it see the
//! packet.
//!
//! - **Order.** A reader looks here first and reads the committed tables only on a miss. The
//!   writer puts a row here *before* it moves the key's version on (`versions.rs`), and after a
//!   commit it swaps in the committed tables (`latest.rs`) *before* it empties this buffer: a
//!   reader that misses a row emptied by a commit therefore reads the tables that commit left.
//! - **Deleted rows** (expiry) are kept as [`Buffered::Deleted`], so a reader does not find the
//!   committed row the open transaction has already removed.
//! - **Bound.** It holds at most what one open transaction applies: the writer commits once it
//!   holds `apply_batch.packets` packets (and each row is at most a 1072-byte payload and its
//!   compiled answers).
//! - **Failure.** If an apply fails, the writer aborts the open transaction and leaves this
//!   buffer as it is, so the node's answers never go back while it stops (the entries are in
//!   the fsynced log; the next start applies them again).

use std::collections::HashMap;
use std::hash::RandomState;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use pkraft_types::KeyBytes;

/// Shards of the map, by the key's first byte: readers on every core and the one writer rarely
/// meet on a lock.
const SHARDS: usize = 64;
/// `packets` while nothing is buffered: the committed table's count is the count.
const NO_COUNT: u64 = u64::MAX;

/// What the open transaction holds for a key.
#[derive(Debug, Clone)]
pub(crate) enum Buffered {
    /// The `packets` value (`applied_at ‖ payload`) and the `answers` row (form ‖ CRC-32).
    Stored { packet: Bytes, answers: Bytes },
    /// The open transaction removed the key's rows.
    Deleted,
}

/// See the module docs.
pub(crate) struct ReadBuffer {
    shards: Box<[RwLock<HashMap<KeyBytes, Buffered, RandomState>>]>,
    /// Rows buffered, over all shards: the readers' only cost while it is 0.
    rows: AtomicUsize,
    /// Packets stored as the open transaction has them (`NO_COUNT`: none buffered).
    packets: AtomicU64,
}

impl ReadBuffer {
    pub(crate) fn new() -> ReadBuffer {
        ReadBuffer {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::with_hasher(RandomState::new())))
                .collect(),
            rows: AtomicUsize::new(0),
            packets: AtomicU64::new(NO_COUNT),
        }
    }

    /// What the open transaction holds for `key`, if it wrote the key.
    pub(crate) fn get(&self, key: &KeyBytes) -> Option<Buffered> {
        if self.rows.load(Ordering::SeqCst) == 0 {
            return None;
        }
        self.read(key).get(key).cloned()
    }

    /// Packets stored as the open transaction has them, if it holds any row.
    pub(crate) fn packet_count(&self) -> Option<u64> {
        Some(self.packets.load(Ordering::SeqCst)).filter(|count| *count != NO_COUNT)
    }

    /// The writer: the open transaction wrote `row` for `key`.
    pub(crate) fn put(&self, key: &KeyBytes, row: Buffered) {
        if self.write(key).insert(*key, row).is_none() {
            self.rows.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The writer: the open transaction holds `packets` packets in all.
    pub(crate) fn set_packet_count(&self, packets: u64) {
        debug_assert_ne!(packets, NO_COUNT);
        self.packets.store(packets, Ordering::SeqCst);
    }

    /// The writer, after a commit whose tables the readers already see: every row buffered is
    /// in them.
    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            let mut rows = shard
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.rows.fetch_sub(rows.len(), Ordering::SeqCst);
            rows.clear();
        }
        self.packets.store(NO_COUNT, Ordering::SeqCst);
        debug_assert_eq!(self.rows.load(Ordering::SeqCst), 0);
    }

    /// Rows buffered now.
    pub(crate) fn len(&self) -> usize {
        self.rows.load(Ordering::SeqCst)
    }

    fn shard(&self, key: &KeyBytes) -> &RwLock<HashMap<KeyBytes, Buffered, RandomState>> {
        &self.shards[usize::from(key[0]) % SHARDS]
    }

    // A poisoned lock guards whole inserts only (a panic cannot leave half a row).
    fn read(&self, key: &KeyBytes) -> RwLockReadGuard<'_, HashMap<KeyBytes, Buffered>> {
        self.shard(key)
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self, key: &KeyBytes) -> RwLockWriteGuard<'_, HashMap<KeyBytes, Buffered>> {
        self.shard(key)
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
