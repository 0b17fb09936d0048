//! The replicated state on disk: one redb file holding every stored packet and the Raft state it
//! reflects.
//!
//! # Layout
//! - `packets` table: 32-byte public key → `applied_at_micros (8, big-endian) ‖ relay payload`.
//! - the expiry index, one row per stored packet in one of two tables, so that `Command::Expire`
//!   finds the oldest packets without a scan of `packets` (`expiry_index.rs`): `expiry_buckets`,
//!   `bucket of the signed timestamp (4, big-endian) ‖ key (32)` → `()` (a bucket is about 72
//!   minutes, so a republish within it writes no row), and `expiry`, `signed timestamp (8,
//!   big-endian) ‖ key (32)` → `()`, for the buckets below `meta`'s `expiry_exact_below`, those
//!   at expiry's cut-off.
//! - `answers` table: 32-byte public key → the packet's DNS records compiled into wire form
//!   ([`pkraft_types::compiled`]) ‖ CRC-32 of key and form; one row per stored packet, written
//!   in the same transaction as it, so the DNS frontend answers a name without parsing the
//!   packet ([`Store::answers`]).
//! - `removed_nodes` table: node id → `()` for every node ever removed from the cluster, so that
//!   a removed id is never admitted again (the consensus layer fills it as it applies membership
//!   changes).
//! - `meta` table: the schema version, `expiry_exact_below`, and `applied_state`, an opaque blob
//!   owned by the consensus layer (last applied log id and membership). Keeping it opaque keeps openraft out of this crate.
//!
//! Writes happen only through [`ApplyTxn`], which records the new `applied_state` with the data:
//! the data and the position in the log it corresponds to are always committed in one
//! transaction. One thread owns every write transaction (`writer.rs`; in a simulation the same
//! owner runs inline, on the simulation's thread): applies go into a
//! transaction it keeps open across many of them and commits every
//! [`ApplyBatching::interval`] or [`ApplyBatching::packets`], and what they wrote is visible at
//! once through a read buffer. The one write the log does not decide is
//! [`Store::recompile_answers`], which rewrites `answers` rows the scrub found not to match
//! their packets, from the packets. Reads ([`Store::get`]) look in the read buffer, then in
//! redb's MVCC read transactions; they never wait for the writer.
//!
//! # Modules
//! - [`Store`] (`store.rs`): the handle, opening the file, the reads.
//! - `schema.rs`: the schema version and the migrations run at open.
//! - `tables.rs`, `rows.rs`: the tables and the byte form of their rows; `expiry_index.rs`: the
//!   expiry index, and which rows an expiry deletes.
//! - [`ApplyTxn`] (`apply.rs`): the log's commands applied and committed with `applied_state`.
//! - `writer.rs`: the thread that owns the write transactions, and when it commits
//!   ([`ApplyBatching`]); `writes.rs`: the store's writes through it; `shared.rs`: what it and
//!   its transactions share; `read_buffer.rs`: what its open transaction holds, for readers.
//! - `scrub.rs`: the background scrub's pages, the rewrite of stale answers, a key's check.
//! - [`Integrity`] (`integrity.rs`): the whole file checked offline.
//! - `snapshot.rs`: the snapshot stream, written and imported.
//! - `latest.rs`, `versions.rs`, `quarantine.rs`: the kept read transaction, the key versions
//!   caches check, the keys found damaged.
//! - `warm.rs`: redb's page cache filled from `answers` after the store opens.

mod apply;
mod error;
mod expiry_index;
mod integrity;
mod latest;
mod quarantine;
mod read_buffer;
mod rows;
mod schema;
mod scrub;
mod shared;
mod snapshot;
mod store;
mod synced_backend;
mod tables;
mod versions;
mod warm;
mod writer;
mod writes;

pub use apply::{Applied, ApplyTxn};
pub use error::StoreError;
pub use integrity::Integrity;
pub use quarantine::QUARANTINE_MAX;
pub use rows::{AnswersRow, StoredPacket};
pub use schema::{Downgraded, PREVIOUS_SCHEMA_VERSION, SCHEMA_VERSION, downgrade};
pub use scrub::{AnswersProblem, DamagedPacket, PacketCheck, ScrubPage, StaleAnswers};
pub use snapshot::{
    Export, SNAPSHOT_FORMAT_VERSION, SnapshotSource, SnapshotSummary, StreamCheck, StreamVerdict,
    check_snapshot,
};
pub use store::{DEFAULT_CACHE_BYTES, Store};
pub use synced_backend::create_database;
pub use versions::KeyVersion;
pub use warm::{WARM_CACHE_FILL, WarmCursor, WarmStep};
pub use writer::{ApplyBatching, DURABLE_EVERY_ENTRIES, DURABLE_EVERY_PACKETS};

#[cfg(test)]
mod tests;
