//! [`LatestTables`]: the `packets` and `answers` tables as the latest commit left them, kept
//! open between commits, so that a point read ([`crate::Store::get`], [`crate::Store::answers`])
//! neither begins a read transaction nor opens a table.
//!
//! Both cost more than the lookup they lead to: `begin_read` registers the transaction with
//! redb's tracker (a mutex every reader and the writer share) and `open_table` looks the table
//! up in the table tree; together about a third of the store's share of a DNS miss
//! (docs/BENCHMARKS.md, "Where a miss goes"). The state changes only when a transaction commits,
//! so the store opens one read transaction and its table after each commit, and every read
//! until the next commit shares them.
//!
//! - **Order.** A commit swaps the new table in *before* it moves the key versions on
//!   (`versions.rs`), and a reader loads the version before the table. A reader that sees a new
//!   version therefore sees the new table; one that sees the old version with the new table
//!   caches newer data under an older version, which costs it one more read later, never a
//!   stale answer.
//! - **Pages.** The kept transaction pins one commit's pages, as any reader does, and redb
//!   reuses no page freed after it while it lives. Every commit replaces it (also one that
//!   changed no packet: the applied state alone moves on at each), and it is let go as soon as
//!   the reads that loaded it end, so it holds back page reuse for no longer than one commit.
//! - **Writers.** Besides the apply, the scrub's rewrite of stale compiled rows and the flush
//!   commit too. Refreshes take a lock around the read they open and the swap, so they swap in
//!   the order they read: the table kept is never older than a commit whose refresh returned.
//! - **Failure.** If the table cannot be opened after a commit, reads fall back to a transaction
//!   each, which report the error themselves.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use pkraft_types::KeyBytes;
use redb::{Database, ReadOnlyTable, ReadableDatabase};

use crate::tables::{ANSWERS, PACKETS};

/// A table of key → bytes in a read transaction.
pub(crate) type KeyTable = ReadOnlyTable<&'static KeyBytes, &'static [u8]>;

/// Both tables, from one read transaction.
pub(crate) struct Tables {
    pub(crate) packets: KeyTable,
    pub(crate) answers: KeyTable,
}

/// See the module docs.
pub(crate) struct LatestTables {
    tables: ArcSwapOption<Tables>,
    /// Held from `begin_read` to the swap (see "Writers" in the module docs).
    refreshing: Mutex<()>,
}

impl LatestTables {
    /// Nothing kept yet: reads begin their own transactions until [`LatestTables::refresh`].
    pub(crate) fn new() -> Self {
        LatestTables {
            tables: ArcSwapOption::empty(),
            refreshing: Mutex::new(()),
        }
    }

    /// Opens the tables as `db`'s latest commit has them. Called after every commit (before the
    /// key versions move on), whether or not it changed packets: see "Pages" in the module docs.
    pub(crate) fn refresh(&self, db: &Database) {
        // A poisoned lock guards no data: the swap below is whole or not done.
        let _order = self
            .refreshing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tables = db.begin_read().ok().and_then(|txn| {
            Some(Tables {
                packets: txn.open_table(PACKETS).ok()?,
                answers: txn.open_table(ANSWERS).ok()?,
            })
        });
        self.tables.store(tables.map(Arc::new));
    }

    /// The tables of the latest commit, if they could be opened.
    pub(crate) fn load(&self) -> Option<Arc<Tables>> {
        self.tables.load_full()
    }
}
