//! redb's page cache warmed after the store opens ([`Store::warm_step`]): a node just started
//! has an empty cache, and until reads have filled it each name never asked before costs a read
//! of its B-tree's pages from the kernel (or the disk). The warm-up reads the committed
//! `answers` table (what DNS reads), in key order, one step at a time, each step its own read
//! transaction, until it has read rows of [`WARM_CACHE_FILL`] of the cache's size or the table
//! whole. Names are spread evenly over the key space, so the first part of the table is as good
//! as any other for reads of names nobody asked before; what the warm-up adds is every branch
//! page on the way and the leaves a lookup would have to read anyway.
//!
//! Only `answers`: the cache is least recently used first, so reading `packets` (what GET
//! reads) after it would push the answers' pages out again (a first version did: its first
//! round of never-asked DNS names after a restart gained less, 0.82 of a later round against
//! 0.97-1.03 with `answers` alone).
//!
//! The rows' bytes are what it counts: redb tells how full its cache is only in a build with
//! its `cache_metrics` feature, which counts every page read on shared atomics. Leaf pages hold
//! the rows and some room (2.6 GB of pages for 1.7 GB of answers rows at 10M: docs/SCALING.md),
//! so rows of 7/8 of the cache are about 1.3 times the cache in pages, of which the cache keeps
//! the last it read. What bounds the read is the setting, not the store; a budget in pages
//! (from redb's table statistics) would read less for the same result, not yet measured.
//! Nothing it reads is checked: a damaged row is the read path's and the scrub's to find.

use pkraft_types::KeyBytes;
use redb::ReadableDatabase;

use crate::StoreError;
use crate::store::Store;
use crate::tables::{ANSWERS, keys_after};

/// The share of redb's cache a warm-up fills (in rows' bytes) before it stops, 7/8: the rest
/// is left to the writer's buffer and to the reads that come meanwhile.
pub const WARM_CACHE_FILL: (u64, u64) = (7, 8);

/// Where a warm-up goes on from: the last key read (`None`: the start), and the bytes of the
/// rows read so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WarmCursor {
    pub after: Option<KeyBytes>,
    pub read_bytes: u64,
}

/// What one step read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmStep {
    /// Rows read in this step.
    pub rows: u64,
    /// Bytes of the rows the warm-up has read, this step's included.
    pub read_bytes: u64,
    /// Where the next step goes on from; `None` when the warm-up is done (the table read, or
    /// rows of [`WARM_CACHE_FILL`] of the cache read).
    pub next: Option<WarmCursor>,
}

impl Store {
    /// Reads up to `rows` rows of the committed `answers` table after `cursor`'s key, so that
    /// redb's page cache holds their pages; nothing once the rows read are
    /// [`Store::warm_bytes`].
    pub fn warm_step(&self, cursor: &WarmCursor, rows: usize) -> Result<WarmStep, StoreError> {
        assert!(rows > 0, "a warm-up step reads at least one row");
        let budget = self.warm_bytes();
        if cursor.read_bytes >= budget {
            return Ok(WarmStep {
                rows: 0,
                read_bytes: cursor.read_bytes,
                next: None,
            });
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ANSWERS)?;
        let mut read = 0;
        let mut read_bytes = cursor.read_bytes;
        let mut last = None;
        for row in table
            .range::<&KeyBytes>(keys_after(cursor.after.as_ref()))?
            .take(rows)
        {
            let (key, value) = row?;
            read_bytes += (key.value().len() + value.value().len()) as u64;
            last = Some(*key.value());
            read += 1;
        }
        let next = match last {
            Some(after) if read == rows && read_bytes < budget => Some(WarmCursor {
                after: Some(after),
                read_bytes,
            }),
            _ => None,
        };
        Ok(WarmStep {
            rows: read as u64,
            read_bytes,
            next,
        })
    }

    /// The rows' bytes a warm-up reads at most: [`WARM_CACHE_FILL`] of redb's page cache.
    pub fn warm_bytes(&self) -> u64 {
        let (part, whole) = WARM_CACHE_FILL;
        self.cache_bytes as u64 / whole * part
    }
}
