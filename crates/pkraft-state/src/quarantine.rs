//! Keys whose stored packet this node found damaged (the background scrub): [`crate::Store::get`]
//! refuses them instead of serving the damaged bytes, until an applied entry stores or deletes
//! the key (which replaces the damaged row), a snapshot is imported, or the node restarts (its
//! start rebuilds the state). Bounded: a disk with more damaged packets than this is one to
//! replace, and the node that found them stops or reports them anyway.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use pkraft_types::KeyBytes;

/// Most keys held at once.
pub const QUARANTINE_MAX: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct Quarantine {
    /// Whether any key is held: the read path's only cost while none is.
    any: AtomicBool,
    keys: Mutex<HashSet<KeyBytes>>,
}

impl Quarantine {
    /// Holds `key`; false if it could not (the bound is reached).
    pub(crate) fn add(&self, key: &KeyBytes) -> bool {
        let Ok(mut keys) = self.keys.lock() else {
            return false;
        };
        if keys.len() >= QUARANTINE_MAX && !keys.contains(key) {
            return false;
        }
        keys.insert(*key);
        self.any.store(true, Ordering::SeqCst);
        true
    }

    pub(crate) fn contains(&self, key: &KeyBytes) -> bool {
        if !self.any.load(Ordering::SeqCst) {
            return false;
        }
        // A poisoned lock holds it: refusing a read is the safe side.
        self.keys.lock().map_or(true, |keys| keys.contains(key))
    }

    /// Lets `key` be read again: its row was replaced.
    pub(crate) fn release(&self, key: &KeyBytes) {
        if !self.any.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(mut keys) = self.keys.lock() {
            keys.remove(key);
            self.any.store(!keys.is_empty(), Ordering::SeqCst);
        }
    }

    /// Lets every key be read again: the whole state was replaced.
    pub(crate) fn clear(&self) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.clear();
            self.any.store(false, Ordering::SeqCst);
        }
    }
}
