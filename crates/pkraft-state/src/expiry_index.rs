//! The expiry index: one row per stored packet, so that `Command::Expire` finds the oldest
//! packets without a scan of `packets`, kept in two tables.
//!
//! - `expiry_buckets`: `bucket (4, big-endian) ‖ key (32)`, the bucket being the signed
//!   timestamp divided by [`BUCKET_MICROS`] (about 72 minutes). An iroh endpoint republishes its
//!   packet every few minutes, each time with a new timestamp; by bucket, a republish within its
//!   bucket writes no row here, where an index by exact timestamp moved the key's row on every
//!   republish (a remove anywhere in the tree and an insert at its end: about 10 µs of a PUT's
//!   CPU on every replica, docs/BENCHMARKS.md, "The write path's targets at 9fb2ce1").
//! - `expiry`: `signed timestamp (8, big-endian) ‖ key (32)`, schema 4's index by exact
//!   timestamp, now holding only the packets of the buckets at and just past expiry's cut-off:
//!   every bucket below `exact_below` (kept in `meta`, [`META_EXACT_BELOW`]) has its rows here,
//!   the bucket `exact_below` has each row in one table or the other, and later buckets are in
//!   `expiry_buckets` only.
//!
//! `Command::Expire { before_micros, limit }` keeps its meaning exactly, "the `limit` oldest
//! packets signed before `before_micros`, by (timestamp, key)", so that replicas of this build
//! and of the previous one (schema 4) delete the same rows from the same entry. An expiry first
//! converts the buckets up to its cut-off into exact rows, reading each one's packet for its
//! timestamp (normally nothing: see below), then takes the oldest rows of `expiry` as schema 4
//! did. After it, it converts up to [`CONVERT_AHEAD_ROWS`] rows of the next
//! [`CONVERT_AHEAD_BUCKETS`] buckets, so that the cut-off, moving a minute at each expiry, finds
//! its buckets converted already: a packet is converted once, when it is about to expire and
//! only if it was not republished, and an expiry entry's work stays bounded by its limit and
//! that budget. (A bucket reached before it was converted, after a clock step or a change of
//! `raft.record_max_age`, is converted by the entry that reaches it, whole; a cut-off far
//! ahead converts only until it has its `limit` rows, see [`ExpiryIndex::expire`]. Republishes
//! into a converted bucket write an exact row, as schema 4 did, until their timestamps pass
//! `exact_below`: at most a bucket's time after such a cut-off.)

use std::cmp::Ordering;

use pkraft_types::KeyBytes;
use pkraft_types::payload::{HEADER_LEN, SIGNATURE_LEN};
use redb::{ReadableTable, TableDefinition, WriteTransaction};

use crate::StoreError;
use crate::rows::{APPLIED_AT_LEN, StoredPacket, hex};
use crate::tables::{META, PACKETS};

/// The rows by bucket.
pub(crate) const EXPIRY_BUCKETS: TableDefinition<&BucketRow, ()> =
    TableDefinition::new("expiry_buckets");

/// The rows by exact timestamp: the buckets below `exact_below` (schema 4's table, with its
/// name and row; there it held every packet).
pub(crate) const EXPIRY_EXACT: TableDefinition<&ExactRow, ()> = TableDefinition::new("expiry");

/// `meta` key: the first bucket not wholly in `expiry` (u64, big-endian); absent: 0.
pub(crate) const META_EXACT_BELOW: &str = "expiry_exact_below";

/// `bucket (4, big-endian) ‖ public key (32)`: sorts by bucket, then key.
pub(crate) type BucketRow = [u8; 36];

/// `signed timestamp (8, big-endian) ‖ public key (32)`: sorts by timestamp, then key.
pub(crate) type ExactRow = [u8; 40];

/// log2 of a bucket's width in microseconds.
const BUCKET_BITS: u32 = 32;
/// A bucket's width: 2^32 µs, about 71.6 minutes. Wider than iroh's republish interval (5
/// minutes), so that about 14 in 15 republishes stay in their bucket.
pub(crate) const BUCKET_MICROS: u64 = 1 << BUCKET_BITS;

/// Rows an expiry converts ahead of its cut-off, at most: with one expiry a minute, about
/// 700,000 in a bucket's time, above the rate the default new-key limits let a bucket fill
/// at (200 a second: `rate_limit.publish_new_keys`).
pub(crate) const CONVERT_AHEAD_ROWS: usize = 10_000;
/// Buckets past the cut-off's an expiry converts.
const CONVERT_AHEAD_BUCKETS: u64 = 2;
/// Rows converted per read of `expiry_buckets` (bounds what a conversion holds in memory).
const CONVERT_CHUNK: usize = 1024;

/// Rows of the oldest bucket [`oldest_timestamp`] reads for an exact answer; past it, the
/// bucket's start is the answer (a lower bound).
const OLDEST_READ_MAX: usize = 4096;

/// The bucket of a signed timestamp. Every u64 fits: 2^64 µs / 2^32.
fn bucket_of(timestamp_micros: u64) -> u32 {
    // Lossless: a u64 shifted right by 32 is below 2^32.
    (timestamp_micros >> BUCKET_BITS) as u32
}

fn bucket_start(bucket: u32) -> u64 {
    // At most (2^32 - 1) * 2^32 < 2^64.
    u64::from(bucket) * BUCKET_MICROS
}

fn bucket_row(bucket: u32, key: &KeyBytes) -> BucketRow {
    let mut row = [0u8; 36];
    row[..4].copy_from_slice(&bucket.to_be_bytes());
    row[4..].copy_from_slice(key);
    row
}

/// The bucket row of the packet signed at `timestamp_micros` for `key`.
pub(crate) fn row_of(timestamp_micros: u64, key: &KeyBytes) -> BucketRow {
    bucket_row(bucket_of(timestamp_micros), key)
}

/// The exact row of the packet signed at `timestamp_micros` for `key`.
pub(crate) fn exact_row(timestamp_micros: u64, key: &KeyBytes) -> ExactRow {
    let mut row = [0u8; 40];
    row[..8].copy_from_slice(&timestamp_micros.to_be_bytes());
    row[8..].copy_from_slice(key);
    row
}

fn bucket_of_row(row: &BucketRow) -> u32 {
    let mut be = [0u8; 4];
    be.copy_from_slice(&row[..4]);
    u32::from_be_bytes(be)
}

fn key_of_bucket_row(row: &BucketRow) -> KeyBytes {
    let mut key = [0u8; 32];
    key.copy_from_slice(&row[4..]);
    key
}

/// The timestamp and key of an exact row.
pub(crate) fn exact_parts(row: &ExactRow) -> (u64, KeyBytes) {
    let mut be = [0u8; 8];
    be.copy_from_slice(&row[..8]);
    let mut key = [0u8; 32];
    key.copy_from_slice(&row[8..]);
    (u64::from_be_bytes(be), key)
}

/// The first and the last row `bucket` can hold.
fn bucket_bounds(bucket: u32) -> (BucketRow, BucketRow) {
    (
        bucket_row(bucket, &[0u8; 32]),
        bucket_row(bucket, &[0xff; 32]),
    )
}

/// The signed timestamp in a `packets` value (`applied_at (8) ‖ payload`), read in place.
fn signed_timestamp(key: &KeyBytes, value: &[u8]) -> Result<u64, StoreError> {
    value
        .get(APPLIED_AT_LEN + SIGNATURE_LEN..APPLIED_AT_LEN + HEADER_LEN)
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "packet {}: a value of {} bytes has no timestamp",
                hex(key),
                value.len()
            ))
        })
}

/// The signed timestamp of `key`'s stored packet; `None` when none is stored (an index row
/// left without its packet: only damage makes one).
fn stored_timestamp(
    packets: &impl ReadableTable<&'static KeyBytes, &'static [u8]>,
    key: &KeyBytes,
) -> Result<Option<u64>, StoreError> {
    packets
        .get(key)?
        .map(|value| signed_timestamp(key, value.value()))
        .transpose()
}

/// `exact_below` as `meta` records it (0 when absent).
pub(crate) fn read_exact_below(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<u64, StoreError> {
    match meta.get(META_EXACT_BELOW)? {
        None => Ok(0),
        Some(value) => <[u8; 8]>::try_from(value.value())
            .map(u64::from_be_bytes)
            .map_err(|_| {
                StoreError::Corrupt(format!(
                    "meta {META_EXACT_BELOW}: a value of {} bytes",
                    value.value().len()
                ))
            }),
    }
}

/// Where a bucket's rows are, against `exact_below`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Zone {
    /// Below `exact_below`: in `expiry` only.
    Exact,
    /// `exact_below` itself, being converted: each row in one table or the other.
    Converting,
    /// Past it: in `expiry_buckets` only.
    Buckets,
}

pub(crate) fn zone(exact_below: u64, timestamp_micros: u64) -> Zone {
    match u64::from(bucket_of(timestamp_micros)).cmp(&exact_below) {
        Ordering::Less => Zone::Exact,
        Ordering::Equal => Zone::Converting,
        Ordering::Greater => Zone::Buckets,
    }
}

/// The index's two tables in a write transaction, with `exact_below` as this transaction has it.
pub(crate) struct ExpiryIndex<'txn> {
    buckets: redb::Table<'txn, &'static BucketRow, ()>,
    exact: redb::Table<'txn, &'static ExactRow, ()>,
    exact_below: u64,
    /// [`CONVERT_AHEAD_ROWS`], smaller in tests (to leave buckets half converted).
    convert_ahead_rows: usize,
}

impl<'txn> ExpiryIndex<'txn> {
    /// `exact_below`: as `meta` has it in `txn` ([`read_exact_below`]).
    pub(crate) fn open(
        txn: &'txn WriteTransaction,
        exact_below: u64,
    ) -> Result<ExpiryIndex<'txn>, StoreError> {
        Ok(ExpiryIndex {
            buckets: txn.open_table(EXPIRY_BUCKETS)?,
            exact: txn.open_table(EXPIRY_EXACT)?,
            exact_below,
            convert_ahead_rows: CONVERT_AHEAD_ROWS,
        })
    }

    #[cfg(test)]
    pub(crate) fn converting_ahead(mut self, rows: usize) -> ExpiryIndex<'txn> {
        self.convert_ahead_rows = rows;
        self
    }

    /// The first bucket not wholly converted; to be written to `meta` when it moved.
    pub(crate) fn exact_below(&self) -> u64 {
        self.exact_below
    }

    fn insert(&mut self, key: &KeyBytes, timestamp_micros: u64) -> Result<(), StoreError> {
        match zone(self.exact_below, timestamp_micros) {
            Zone::Exact => self.exact.insert(&exact_row(timestamp_micros, key), ())?,
            // The converting bucket takes new rows by bucket: its conversion moves them.
            Zone::Converting | Zone::Buckets => {
                self.buckets.insert(&row_of(timestamp_micros, key), ())?
            }
        };
        Ok(())
    }

    fn remove(&mut self, key: &KeyBytes, timestamp_micros: u64) -> Result<(), StoreError> {
        match zone(self.exact_below, timestamp_micros) {
            Zone::Exact => {
                self.exact.remove(&exact_row(timestamp_micros, key))?;
            }
            Zone::Converting => {
                if self
                    .buckets
                    .remove(&row_of(timestamp_micros, key))?
                    .is_none()
                {
                    self.exact.remove(&exact_row(timestamp_micros, key))?;
                }
            }
            Zone::Buckets => {
                self.buckets.remove(&row_of(timestamp_micros, key))?;
            }
        }
        Ok(())
    }

    /// `key`'s packet signed at `new_micros` replaces one signed at `old_micros` (`None`: a new
    /// key). A republish within a bucket past the converted ones writes nothing.
    pub(crate) fn replace(
        &mut self,
        key: &KeyBytes,
        old_micros: Option<u64>,
        new_micros: u64,
    ) -> Result<(), StoreError> {
        if let Some(old) = old_micros {
            if bucket_of(old) == bucket_of(new_micros)
                && zone(self.exact_below, old) == Zone::Buckets
            {
                return Ok(());
            }
            self.remove(key, old)?;
        }
        self.insert(key, new_micros)
    }

    /// The first bucket that holds a row by bucket, if one is at or below `through`, with
    /// `exact_below` moved up to it (the buckets in between hold no row at all: a bucket at or
    /// past `exact_below` takes its new rows by bucket). `None`: every row of the buckets up to
    /// `through` is exact. `exact_below` never runs past the rows there are, so that a far
    /// cut-off does not make the buckets new packets land in exact ones.
    fn next_to_convert(&mut self, through: u64) -> Result<Option<u64>, StoreError> {
        let first = match self.buckets.first()? {
            Some((row, _)) => u64::from(bucket_of_row(row.value())),
            None => return Ok(None),
        };
        if first < self.exact_below {
            // Only damage (or a `meta` key left from another index) puts one there; converting
            // it would never move `exact_below` on.
            return Err(StoreError::Corrupt(format!(
                "the expiry index has a row by bucket in bucket {first}, below the buckets \
                 converted ({} on)",
                self.exact_below
            )));
        }
        if first > through {
            return Ok(None);
        }
        self.exact_below = self.exact_below.max(first);
        Ok(Some(first))
    }

    /// Moves up to `budget` rows of the bucket `exact_below` (`None`: all) into exact rows, and
    /// past it once none is left; returns how many it moved. Each row's packet is read for its
    /// timestamp; a row without its packet (damage) is given its bucket's start, so that
    /// expiry clears it.
    fn convert_bucket(
        &mut self,
        packets: &impl ReadableTable<&'static KeyBytes, &'static [u8]>,
        budget: Option<usize>,
    ) -> Result<usize, StoreError> {
        let Ok(bucket) = u32::try_from(self.exact_below) else {
            // Past the last bucket a timestamp can have: nothing to convert.
            return Ok(0);
        };
        let (first, last) = bucket_bounds(bucket);
        let mut moved = 0usize;
        loop {
            let room = budget.map_or(CONVERT_CHUNK, |budget| {
                budget.saturating_sub(moved).min(CONVERT_CHUNK)
            });
            if room == 0 {
                return Ok(moved);
            }
            let mut keys = Vec::with_capacity(room);
            for row in self.buckets.range::<&BucketRow>(&first..=&last)?.take(room) {
                keys.push(key_of_bucket_row(row?.0.value()));
            }
            if keys.is_empty() {
                self.exact_below += 1;
                return Ok(moved);
            }
            for key in &keys {
                let timestamp = stored_timestamp(packets, key)?.unwrap_or(bucket_start(bucket));
                self.exact.insert(&exact_row(timestamp, key), ())?;
                self.buckets.remove(&bucket_row(bucket, key))?;
            }
            moved += keys.len();
        }
    }

    /// Converts bucket by bucket from `exact_below` until every bucket up to `through` is
    /// converted or `budget` rows are moved.
    fn convert_ahead(
        &mut self,
        packets: &impl ReadableTable<&'static KeyBytes, &'static [u8]>,
        through: u64,
        budget: usize,
    ) -> Result<(), StoreError> {
        let mut moved = 0usize;
        while moved < budget && self.next_to_convert(through)?.is_some() {
            moved += self.convert_bucket(packets, Some(budget - moved))?;
        }
        Ok(())
    }

    /// Picks and removes the rows `Command::Expire { before_micros, limit }` deletes: the
    /// `limit` oldest packets signed before `before_micros`, by (timestamp, key), as schema 4
    /// picked them. Returns their keys, oldest first.
    ///
    /// First the buckets up to the cut-off's are converted, bucket by bucket, but only until
    /// the rows wholly converted already hold `limit` before the cut-off: the rows left by
    /// bucket are all later, so they cannot be among the oldest. (So a cut-off far ahead, which
    /// the cluster clock's fences are there to prevent, converts about `limit` rows, not the
    /// store.) Then, when every bucket up to the cut-off's is converted, it converts ahead (see
    /// the module docs).
    pub(crate) fn expire(
        &mut self,
        packets: &impl ReadableTable<&'static KeyBytes, &'static [u8]>,
        before_micros: u64,
        limit: usize,
    ) -> Result<Vec<KeyBytes>, StoreError> {
        let Some(newest) = before_micros.checked_sub(1) else {
            return Ok(Vec::new());
        };
        let through = u64::from(bucket_of(newest));
        let end = exact_row(before_micros, &[0u8; 32]);
        let mut complete = true;
        // Exact rows before the cut-off known complete, counted up to `limit` (each range of
        // them counted once), and the timestamp they are counted up to.
        let mut counted = 0usize;
        let mut counted_below = 0u64;
        while self.next_to_convert(through)?.is_some() {
            // Every row signed before the converting bucket's start is exact.
            let complete_below = u32::try_from(self.exact_below).map_or(u64::MAX, bucket_start);
            let bound = complete_below.min(before_micros);
            if bound > counted_below {
                let (from, to) = (
                    exact_row(counted_below, &[0u8; 32]),
                    exact_row(bound, &[0u8; 32]),
                );
                counted += self
                    .exact
                    .range::<&ExactRow>(&from..&to)?
                    .take(limit - counted)
                    .count();
                counted_below = bound;
            }
            if counted == limit {
                complete = false;
                break;
            }
            self.convert_bucket(packets, None)?;
        }
        let mut rows = Vec::new();
        for row in self.exact.range::<&ExactRow>(..&end)?.take(limit) {
            rows.push(*row?.0.value());
        }
        for row in &rows {
            self.exact.remove(row)?;
        }
        if complete {
            self.convert_ahead(
                packets,
                through.saturating_add(CONVERT_AHEAD_BUCKETS),
                self.convert_ahead_rows,
            )?;
        }
        Ok(rows.iter().map(|row| exact_parts(row).1).collect())
    }
}

/// The smallest signed timestamp of any stored packet, if one is stored: the first exact row's
/// when it is older than every row by bucket; else read from the oldest bucket's packets when it
/// holds at most [`OLDEST_READ_MAX`] rows, else that bucket's start (no later than the oldest:
/// expiry only compares it with its cut-off).
pub(crate) fn oldest_timestamp(
    buckets: &impl ReadableTable<&'static BucketRow, ()>,
    exact: &impl ReadableTable<&'static ExactRow, ()>,
    packets: &impl ReadableTable<&'static KeyBytes, &'static [u8]>,
) -> Result<Option<u64>, StoreError> {
    let oldest_exact = exact.first()?.map(|(row, _)| exact_parts(row.value()).0);
    let Some((first, _)) = buckets.first()? else {
        return Ok(oldest_exact);
    };
    let bucket = bucket_of_row(first.value());
    if let Some(exact) = oldest_exact
        && exact < bucket_start(bucket)
    {
        return Ok(Some(exact));
    }
    let mut oldest = oldest_exact;
    let (first, last) = bucket_bounds(bucket);
    for (read, row) in buckets.range::<&BucketRow>(&first..=&last)?.enumerate() {
        if read == OLDEST_READ_MAX {
            return Ok(Some(bucket_start(bucket)));
        }
        let key = key_of_bucket_row(row?.0.value());
        let timestamp = stored_timestamp(packets, &key)?.unwrap_or(bucket_start(bucket));
        oldest = Some(oldest.map_or(timestamp, |oldest| oldest.min(timestamp)));
    }
    Ok(oldest)
}

/// Empties both tables and forgets `exact_below` (in `meta`, which the caller must not hold
/// open), in `txn`: before the index is built anew from the packets (a snapshot import).
pub(crate) fn clear(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(META)?.remove(META_EXACT_BELOW)?;
    empty_tables(txn)
}

/// Inserts into `index` the row `row(timestamp, key)` of every stored packet, in `txn`; returns
/// how many. The migration builds the index by bucket with it, and `pkraft downgrade` schema 4's
/// index by exact timestamp.
pub(crate) fn index_every_packet<const N: usize>(
    txn: &WriteTransaction,
    index: TableDefinition<'_, &'static [u8; N], ()>,
    row: fn(u64, &KeyBytes) -> [u8; N],
) -> Result<u64, StoreError> {
    let packets = txn.open_table(PACKETS)?;
    let mut index = txn.open_table(index)?;
    let mut indexed = 0u64;
    for entry in packets.iter()? {
        let (key, value) = entry?;
        let stored = StoredPacket::decode(value.value())?;
        index.insert(&row(stored.payload.timestamp_micros(), key.value()), ())?;
        indexed += 1;
    }
    Ok(indexed)
}

/// Empties both tables (a migration: `meta`'s `exact_below` is the caller's to remove).
pub(crate) fn empty_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.delete_table(EXPIRY_BUCKETS)?;
    txn.delete_table(EXPIRY_EXACT)?;
    txn.open_table(EXPIRY_BUCKETS)?;
    txn.open_table(EXPIRY_EXACT)?;
    Ok(())
}

/// A `packets` value with all the index reads of one: the applied time and a zeroed signature,
/// then the timestamp (tests that fill the tables by hand).
#[cfg(test)]
pub(crate) fn bare_packet_value(timestamp_micros: u64) -> Vec<u8> {
    let mut value = vec![0u8; APPLIED_AT_LEN + HEADER_LEN];
    value[APPLIED_AT_LEN + SIGNATURE_LEN..].copy_from_slice(&timestamp_micros.to_be_bytes());
    value
}

#[cfg(test)]
mod tests {
    //! The index against a model, on a real redb file: packets are bare `packets` values (the
    //! applied time, a zeroed signature and the timestamp: all the index reads of them).

    use std::collections::BTreeMap;

    use redb::{Database, ReadableTableMetadata};

    use super::*;
    use crate::tables::PACKETS;

    struct Draws(u64);

    impl Draws {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % bound
        }
    }

    fn key(n: u64) -> KeyBytes {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&n.to_be_bytes());
        key
    }

    /// Every stored key indexed once, where its zone says (what `check_integrity` checks).
    fn check_rows(txn: &WriteTransaction, exact_below: u64, model: &BTreeMap<KeyBytes, u64>) {
        let buckets = txn.open_table(EXPIRY_BUCKETS).expect("buckets");
        let exact = txn.open_table(EXPIRY_EXACT).expect("exact");
        for (key, &timestamp) in model {
            let by_bucket = buckets.get(&row_of(timestamp, key)).expect("get").is_some();
            let by_time = exact
                .get(&exact_row(timestamp, key))
                .expect("get")
                .is_some();
            match zone(exact_below, timestamp) {
                Zone::Exact => assert!(by_time && !by_bucket),
                Zone::Converting => assert!(by_time != by_bucket),
                Zone::Buckets => assert!(!by_time && by_bucket),
            }
        }
        let rows = buckets.len().expect("len") + exact.len().expect("len");
        assert_eq!(rows, model.len() as u64, "one row per packet, no other");
    }

    /// Seeded publishes (new keys, republishes within a bucket and across, timestamps that tie
    /// and ones near the largest), and expiries with cut-offs inside buckets, on their edges, at
    /// 0 and past every row, limits from 0, and conversions ahead cut short by small budgets:
    /// each expiry deletes the `limit` oldest by (timestamp, key) before its cut-off, as the
    /// index by exact timestamp did, and every packet stays indexed once.
    #[test]
    fn expiry_deletes_what_an_index_by_exact_timestamp_deleted() {
        for seed in 1..=6u64 {
            let dir = tempfile::tempdir().expect("tempdir");
            let db = Database::create(dir.path().join("index.redb")).expect("create");
            let mut draws = Draws(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let base = if seed % 3 == 0 {
                // The last buckets a timestamp can have.
                u64::MAX - 8 * BUCKET_MICROS
            } else {
                1000 * BUCKET_MICROS
            };
            let mut model: BTreeMap<KeyBytes, u64> = BTreeMap::new();
            let mut exact_below = 0u64;
            let mut partial = 0;
            for round in 0..400u64 {
                // Time moves on: the cut-off crosses six buckets over the rounds, and packets
                // are signed from it to three buckets past it.
                let now = base + round * (6 * BUCKET_MICROS / 400);
                let txn = db.begin_write().expect("write");
                {
                    let mut packets = txn.open_table(PACKETS).expect("packets");
                    let budget = 1 + draws.below(8) as usize;
                    let mut index = ExpiryIndex::open(&txn, exact_below)
                        .expect("open")
                        .converting_ahead(budget);
                    if draws.below(5) > 0 {
                        let n = draws.below(200);
                        let old = model.get(&key(n)).copied();
                        let timestamp = match (old, draws.below(4)) {
                            // Ties: timestamps on a coarse grid.
                            (None, 0) => now.saturating_add(draws.below(12) * (BUCKET_MICROS / 4)),
                            (None, _) => now.saturating_add(draws.below(3 * BUCKET_MICROS)),
                            (Some(old), 0 | 1) => old.saturating_add(1 + draws.below(1000)),
                            (Some(old), _) => old.saturating_add(1 + draws.below(BUCKET_MICROS)),
                        };
                        if old.is_some_and(|old| old >= timestamp) {
                            continue;
                        }
                        packets
                            .insert(&key(n), bare_packet_value(timestamp).as_slice())
                            .expect("packet");
                        index.replace(&key(n), old, timestamp).expect("replace");
                        model.insert(key(n), timestamp);
                    } else {
                        let before = match draws.below(10) {
                            0 => 0,
                            1 => u64::MAX,
                            2 => (now >> BUCKET_BITS << BUCKET_BITS).saturating_add(BUCKET_MICROS),
                            3 => (now >> BUCKET_BITS << BUCKET_BITS).saturating_sub(1),
                            _ => now.saturating_sub(draws.below(BUCKET_MICROS)),
                        };
                        let limit = draws.below(12) as usize;
                        let mut oldest: Vec<(u64, KeyBytes)> = model
                            .iter()
                            .filter(|(_, ts)| **ts < before)
                            .map(|(key, ts)| (*ts, *key))
                            .collect();
                        oldest.sort();
                        oldest.truncate(limit);
                        let deleted = index.expire(&packets, before, limit).expect("expire");
                        let expected: Vec<KeyBytes> = oldest.iter().map(|(_, key)| *key).collect();
                        assert_eq!(deleted, expected, "seed {seed}, round {round}");
                        for key in &deleted {
                            packets.remove(key).expect("remove");
                            model.remove(key);
                        }
                    }
                    exact_below = index.exact_below();
                    drop(index);
                    drop(packets);
                    check_rows(&txn, exact_below, &model);
                    let buckets = txn.open_table(EXPIRY_BUCKETS).expect("buckets");
                    let exact = txn.open_table(EXPIRY_EXACT).expect("exact");
                    if let Ok(converting) = u32::try_from(exact_below) {
                        let has = |bucket_rows: bool| {
                            model.iter().any(|(key, ts)| {
                                bucket_of(*ts) == converting
                                    && if bucket_rows {
                                        buckets.get(&row_of(*ts, key)).expect("get").is_some()
                                    } else {
                                        exact.get(&exact_row(*ts, key)).expect("get").is_some()
                                    }
                            })
                        };
                        if has(true) && has(false) {
                            partial += 1;
                        }
                    }
                    let packets = txn.open_table(PACKETS).expect("packets");
                    assert_eq!(
                        oldest_timestamp(&buckets, &exact, &packets).expect("oldest"),
                        model.values().min().copied(),
                        "seed {seed}, round {round}"
                    );
                }
                txn.commit().expect("commit");
            }
            assert!(
                partial > 0,
                "seed {seed}: no round left a bucket half converted"
            );
        }
    }

    /// `n` packets in each of `buckets` buckets from `first`, by bucket, in one transaction;
    /// a packet of bucket `b`, number `i`, signed `i` µs after the bucket's start.
    fn fill(db: &Database, first: u32, buckets: u32, n: u64) {
        let txn = db.begin_write().expect("write");
        {
            let mut packets = txn.open_table(PACKETS).expect("packets");
            let mut index = ExpiryIndex::open(&txn, 0).expect("open");
            for bucket in first..first + buckets {
                for i in 0..n {
                    let k = key(u64::from(bucket) << 20 | i);
                    let timestamp = bucket_start(bucket) + i;
                    packets
                        .insert(&k, bare_packet_value(timestamp).as_slice())
                        .expect("packet");
                    index.replace(&k, None, timestamp).expect("insert");
                }
            }
        }
        txn.commit().expect("commit");
    }

    fn rows_by_bucket(txn: &WriteTransaction) -> u64 {
        txn.open_table(EXPIRY_BUCKETS)
            .expect("buckets")
            .len()
            .expect("len")
    }

    /// A cut-off far past every packet (a clock gone wrong) converts the oldest bucket for its
    /// 3 rows, not the store; a cut-off inside a bucket converts up to it, then at most the
    /// budget ahead; the rest stays by bucket.
    #[test]
    fn an_expiry_converts_what_it_needs_and_a_budget_ahead() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::create(dir.path().join("index.redb")).expect("create");
        fill(&db, 100, 5, 20);
        let txn = db.begin_write().expect("write");
        {
            let packets = txn.open_table(PACKETS).expect("packets");
            let mut index = ExpiryIndex::open(&txn, 0)
                .expect("open")
                .converting_ahead(5);
            let deleted = index.expire(&packets, u64::MAX, 3).expect("expire");
            assert_eq!(
                deleted,
                vec![key(100 << 20), key(100 << 20 | 1), key(100 << 20 | 2)]
            );
            assert_eq!(index.exact_below(), 101, "only the first bucket converted");
            drop(index);
            assert_eq!(
                rows_by_bucket(&txn),
                80,
                "four buckets of 20 left by bucket"
            );

            let mut index = ExpiryIndex::open(&txn, 101)
                .expect("open")
                .converting_ahead(5);
            // Inside bucket 102: 101 and 102 converted whole, then 5 rows of 103.
            let deleted = index
                .expire(&packets, bucket_start(102) + 10, 1000)
                .expect("expire");
            assert_eq!(
                deleted.len(),
                17 + 20 + 10,
                "the rest of 100, all of 101, 10 of 102"
            );
            assert_eq!(index.exact_below(), 103);
            drop(index);
            assert_eq!(
                rows_by_bucket(&txn),
                15 + 20,
                "5 of bucket 103 converted ahead"
            );
        }
        txn.abort().expect("abort");
    }

    /// A row by bucket below the converted buckets (damage, or a stale `exact_below`) fails
    /// the expiry as damage instead of spinning on it.
    #[test]
    fn a_row_by_bucket_below_the_converted_ones_is_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::create(dir.path().join("index.redb")).expect("create");
        fill(&db, 100, 2, 3);
        let txn = db.begin_write().expect("write");
        {
            let packets = txn.open_table(PACKETS).expect("packets");
            let mut index = ExpiryIndex::open(&txn, 101).expect("open");
            let refused = index
                .expire(&packets, bucket_start(102), 10)
                .expect_err("a row by bucket in bucket 100, below 101");
            assert!(matches!(refused, StoreError::Corrupt(_)), "{refused}");
        }
        txn.abort().expect("abort");
    }
}
