//! [`KeyVersion`]: lets a cache of what [`crate::Store::get`] returned check that it is current
//! without reading the store.
//!
//! Every commit that changes a key's packet bumps a counter for that key's shard after the commit
//! is visible; importing a snapshot bumps an epoch that covers every key. A cache records the
//! version it read *before* reading the store and serves its entry only while the version is
//! unchanged. If a change commits after the version was read, the version moves on after it and
//! the entry is refused at its next use; so a cached answer never lags the store.
//!
//! Shards, not keys: keys are ed25519 public keys, uniformly distributed, so their first two bytes
//! pick one of 65,536 shards directly. A write also retires the cached entries of the other keys
//! in its shard; at 20,000 writes per second that is one bump per shard every three seconds.

use std::sync::atomic::{AtomicU64, Ordering};

use pkraft_types::KeyBytes;

const SHARDS: usize = 1 << 16;

/// A key's version; equal versions mean the key's packet has not changed in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyVersion {
    epoch: u64,
    shard: u64,
}

pub(crate) struct KeyVersions {
    epoch: AtomicU64,
    shards: Box<[AtomicU64]>,
}

impl KeyVersions {
    pub(crate) fn new() -> Self {
        KeyVersions {
            epoch: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(crate) fn of(&self, key: &KeyBytes) -> KeyVersion {
        KeyVersion {
            epoch: self.epoch.load(Ordering::SeqCst),
            shard: self.shard(key).load(Ordering::SeqCst),
        }
    }

    /// After a commit that changed `key`.
    pub(crate) fn bump(&self, key: &KeyBytes) {
        self.shard(key).fetch_add(1, Ordering::SeqCst);
    }

    /// After a commit that may have changed any key.
    pub(crate) fn bump_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    fn shard(&self, key: &KeyBytes) -> &AtomicU64 {
        &self.shards[usize::from(u16::from_be_bytes([key[0], key[1]])) % SHARDS]
    }
}
