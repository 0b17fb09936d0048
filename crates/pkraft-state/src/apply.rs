//! [`ApplyTxn`]: the one way the log's commands change the state, committed with the position in
//! the log they lead to.
//!
//! Two kinds, one code: the writer's open transaction (`writer.rs`), which `Store::apply` runs
//! applies in and whose rows readers see at once through the read buffer, and a transaction of
//! its own (`Store::begin_apply`, for tools and tests), which pauses the writer and whose rows
//! readers see when it commits (`writes.rs`).

use bytes::Bytes;
use pkraft_types::{Command, KeyBytes, PublishItem, PublishOutcome, decide};
use redb::{Durability, ReadableTable, WriteTransaction};

use crate::StoreError;
use crate::expiry_index::{ExpiryIndex, META_EXACT_BELOW, read_exact_below};
use crate::read_buffer::Buffered;
use crate::rows::{StoredPacket, answers_form, answers_row};
use crate::shared::{AppliedCounts, Paused, Shared, packets_in};
use crate::tables::{ANSWERS, META, META_APPLIED_STATE, META_LOG_TIME, PACKETS, REMOVED_NODES};

/// Where an [`ApplyTxn`]'s rows become visible.
enum Mode {
    /// The writer's open transaction: each row goes to the read buffer as it is written, and
    /// the key's version moves on at once.
    Open {
        /// Packets the `packets` table holds as this transaction has it.
        packets_stored: u64,
        /// A membership change asks for a commit at the end of its apply, and its caller is
        /// answered after that commit, so that `Store::is_removed_node` (committed tables only)
        /// knows of it once the apply is done.
        commit_asked: bool,
    },
    /// A transaction of its own: the keys whose packet changed, whose versions move on after
    /// the commit.
    Own {
        changed: Vec<KeyBytes>,
        _paused: Paused,
    },
}

/// A write transaction over the state: apply commands, then commit them together with the
/// `applied_state` they lead to. See the module docs for its two kinds.
pub struct ApplyTxn {
    txn: WriteTransaction,
    shared: Shared,
    mode: Mode,
    /// The largest leader stamp of the publishes applied in this transaction.
    log_time_micros: Option<u64>,
    /// Entries and packets applied in it.
    applied: AppliedCounts,
    /// The expiry index's `exact_below` as this transaction has it (`expiry_index.rs`), read
    /// from `meta` at the first use.
    expiry_exact_below: Option<u64>,
}

impl ApplyTxn {
    /// A transaction of its own (`Store::begin_apply`): `paused` holds the writer until it is
    /// committed or dropped.
    pub(crate) fn own(txn: WriteTransaction, shared: Shared, paused: Paused) -> ApplyTxn {
        ApplyTxn::new(
            txn,
            shared,
            Mode::Own {
                changed: Vec::new(),
                _paused: paused,
            },
        )
    }

    fn new(txn: WriteTransaction, shared: Shared, mode: Mode) -> ApplyTxn {
        ApplyTxn {
            txn,
            shared,
            mode,
            log_time_micros: None,
            applied: AppliedCounts::default(),
            expiry_exact_below: None,
        }
    }

    /// The writer's open transaction (see `writer.rs`), committed without fsync unless the writer
    /// asks for one.
    pub(crate) fn begin_open(shared: Shared) -> Result<ApplyTxn, StoreError> {
        let mut txn = shared.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        let packets_stored = packets_in(&txn)?;
        Ok(ApplyTxn::new(
            txn,
            shared,
            Mode::Open {
                packets_stored,
                commit_asked: false,
            },
        ))
    }

    /// Applies one command. Deterministic: the result depends only on the stored state and the
    /// command (no clock, no randomness).
    pub fn apply(&mut self, command: &Command) -> Result<Applied, StoreError> {
        match command {
            Command::Publish {
                leader_time_micros,
                packets,
            } => Ok(Applied {
                outcomes: self.publish(*leader_time_micros, packets)?,
                expired: 0,
            }),
            Command::Expire {
                before_micros,
                limit,
            } => Ok(Applied {
                outcomes: Vec::new(),
                expired: self.expire(*before_micros, *limit)?,
            }),
            // The consensus layer keeps the DHT publisher's progress; no stored data changes.
            Command::DhtProgress { .. } => Ok(Applied::default()),
            // Each replica keeps short-lived records in memory (`ShortLivedRecords`); none is
            // stored.
            Command::ShortLivedRecord(_) => Ok(Applied::default()),
        }
    }

    /// Records that these nodes left the cluster, for good. Called by the consensus layer for
    /// the nodes a membership entry drops, so every replica records the same ids.
    pub fn record_removed_nodes(&mut self, node_ids: &[u64]) -> Result<(), StoreError> {
        let mut removed = self.txn.open_table(REMOVED_NODES)?;
        for node_id in node_ids {
            removed.insert(*node_id, ())?;
        }
        if let Mode::Open { commit_asked, .. } = &mut self.mode {
            *commit_asked = true;
        }
        Ok(())
    }

    /// Records the `applied_state` that the `entries` log entries applied since the last call
    /// lead to, in this transaction: the data and its position in the log commit together,
    /// whenever the writer commits. (A transaction of its own takes it at its commit.)
    pub fn set_applied_state(
        &mut self,
        applied_state: &[u8],
        entries: u64,
    ) -> Result<(), StoreError> {
        self.txn
            .open_table(META)?
            .insert(META_APPLIED_STATE, applied_state)?;
        self.applied.entries += entries;
        Ok(())
    }

    /// One outcome per packet, in order. The stored row is read by the insert of the new one
    /// (redb returns the value it replaced), so a packet costs one B-tree walk of `packets`,
    /// not two; a packet that does not win puts the stored row back.
    fn publish(
        &mut self,
        leader_time_micros: u64,
        packets: &[PublishItem],
    ) -> Result<Vec<PublishOutcome>, StoreError> {
        if leader_time_micros > 0 {
            self.log_time_micros = self.log_time_micros.max(Some(leader_time_micros));
        }
        let exact_below = self.expiry_exact_below()?;
        let mut table = self.txn.open_table(PACKETS)?;
        let mut answers = self.txn.open_table(ANSWERS)?;
        let mut index = ExpiryIndex::open(&self.txn, exact_below)?;
        let mut outcomes = Vec::with_capacity(packets.len());
        for item in packets {
            let value = StoredPacket::encode_parts(leader_time_micros, &item.payload);
            let stored = table
                .insert(&item.key, value.as_slice())?
                .map(|v| StoredPacket::decode(v.value()))
                .transpose()?;
            let outcome = decide(stored.as_ref().map(|s| &s.payload), &item.payload);
            if outcome != PublishOutcome::Stored {
                if let Some(stored) = &stored {
                    table.insert(&item.key, stored.encode().as_slice())?;
                }
                outcomes.push(outcome);
                continue;
            }
            index.replace(
                &item.key,
                stored.as_ref().map(|old| old.payload.timestamp_micros()),
                item.payload.timestamp_micros(),
            )?;
            let same_message = stored
                .as_ref()
                .is_some_and(|old| old.payload.dns_packet() == item.payload.dns_packet());
            let kept = if same_message {
                kept_answers_row(&answers, &item.key)?
            } else {
                None
            };
            let answers_bytes = match kept {
                Some(row) => row,
                None => {
                    let row = answers_row(&item.key, &item.payload);
                    answers.insert(&item.key, row.as_slice())?;
                    Bytes::from(row)
                }
            };
            self.applied.packets += 1;
            changed(
                &self.shared,
                &mut self.mode,
                item.key,
                Buffered::Stored {
                    packet: Bytes::from(value),
                    answers: answers_bytes,
                },
                i64::from(stored.is_none()),
            );
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// Deletes up to `limit` packets signed before `before_micros`, oldest first; returns how
    /// many (`ExpiryIndex::expire` picks them).
    fn expire(&mut self, before_micros: u64, limit: u32) -> Result<u64, StoreError> {
        let exact_below = self.expiry_exact_below()?;
        let mut table = self.txn.open_table(PACKETS)?;
        let mut answers = self.txn.open_table(ANSWERS)?;
        let mut index = ExpiryIndex::open(&self.txn, exact_below)?;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let keys = index.expire(&table, before_micros, limit)?;
        for key in &keys {
            let held = table.remove(key)?.is_some();
            answers.remove(key)?;
            // A deletion is a row of the read buffer too: counted for `apply_batch_packets`.
            self.applied.packets += 1;
            changed(
                &self.shared,
                &mut self.mode,
                *key,
                Buffered::Deleted,
                -i64::from(held),
            );
        }
        let moved = index.exact_below();
        if moved != exact_below {
            self.txn
                .open_table(META)?
                .insert(META_EXACT_BELOW, moved.to_be_bytes().as_slice())?;
            self.expiry_exact_below = Some(moved);
        }
        Ok(keys.len() as u64)
    }

    /// The expiry index's `exact_below` in this transaction.
    fn expiry_exact_below(&mut self) -> Result<u64, StoreError> {
        if let Some(exact_below) = self.expiry_exact_below {
            return Ok(exact_below);
        }
        let exact_below = read_exact_below(&self.txn.open_table(META)?)?;
        self.expiry_exact_below = Some(exact_below);
        Ok(exact_below)
    }

    /// Entries and packets applied in this transaction.
    pub(crate) fn applied(&self) -> AppliedCounts {
        self.applied
    }

    /// Whether an apply asked the writer to commit at once (see `Mode::Open`).
    pub(crate) fn commit_asked(&self) -> bool {
        matches!(
            self.mode,
            Mode::Open {
                commit_asked: true,
                ..
            }
        )
    }

    /// Commits the applied commands and `applied_state` atomically (durably if the transaction
    /// was begun durable). A transaction of its own only: the writer commits its open one.
    pub fn commit(self, applied_state: &[u8]) -> Result<(), StoreError> {
        self.txn
            .open_table(META)?
            .insert(META_APPLIED_STATE, applied_state)?;
        self.finish()
    }

    /// The writer's commit of its open transaction: durably when `durable` (and then with
    /// redb's allocator state saved, see [`Store::open_with_cache`]).
    pub(crate) fn commit_open(mut self, durable: bool) -> Result<(), StoreError> {
        // An own transaction commits with the applied state its commands lead to
        // (`commit`); committed here it would store rows without it, and a restart would
        // apply them again on top of themselves.
        assert!(
            matches!(self.mode, Mode::Open { .. }),
            "commit_open on a transaction of its own: it commits with its applied state"
        );
        if durable {
            self.txn.set_durability(Durability::Immediate)?;
            self.txn.set_quick_repair(true);
        }
        self.finish()
    }

    /// Writes the log's time, commits, and lets readers see the commit.
    fn finish(self) -> Result<(), StoreError> {
        if let Some(stamp) = self.log_time_micros {
            let mut meta = self.txn.open_table(META)?;
            // Only forward: an older stamp (or a damaged value, which reads as none and is
            // replaced) never lowers the log's time.
            let stored = meta
                .get(META_LOG_TIME)?
                .and_then(|value| <[u8; 8]>::try_from(value.value()).ok())
                .map(u64::from_be_bytes);
            if stored.is_none_or(|stored| stamp > stored) {
                meta.insert(META_LOG_TIME, stamp.to_be_bytes().as_slice())?;
            }
        }
        self.txn.commit()?;
        // Also when no packet changed: a kept transaction older than this commit would hold
        // back the reuse of every page freed since.
        self.shared.committed();
        if let Mode::Own { changed, .. } = &self.mode {
            for key in changed {
                // The packet row written again is no longer the damaged one.
                self.shared.quarantine.release(key);
                self.shared.versions.bump(key);
            }
        }
        Ok(())
    }
}

/// The stored `answers` row of `key`, when a republish carries the DNS message its packet had:
/// the compiled form depends on the key and the message only (`compiled::compile`, in one
/// build: its format version is checked here), not on the timestamp or the signature, so the
/// row is already the new packet's. iroh endpoints republish unchanged records every few
/// minutes; this spares each such PUT the compile and the row's insert on every replica.
/// `None` (compile it again) when the row is missing, fails its checksum or is of another
/// format version: a republish heals those, as it always did. What the checksum cannot tell, a
/// whole row of an older packet left by a write the disk lost, is kept here; the scrub finds it
/// (docs/CONSISTENCY.md, "Damaged compiled answers").
fn kept_answers_row(
    answers: &redb::Table<'_, &'static KeyBytes, &'static [u8]>,
    key: &KeyBytes,
) -> Result<Option<Bytes>, StoreError> {
    let Some(row) = answers.get(key)? else {
        return Ok(None);
    };
    let row = row.value();
    Ok(answers_form(key, row)
        .filter(|form| pkraft_types::compiled::is_current_version(form))
        .map(|_| Bytes::copy_from_slice(row)))
}

/// `key`'s packet changed to `row` (its count of stored packets by `count_change`): at once
/// for readers in the open transaction (buffer first, then the key's version, see
/// `read_buffer.rs`), at the commit in one of its own.
fn changed(shared: &Shared, mode: &mut Mode, key: KeyBytes, row: Buffered, count_change: i64) {
    match mode {
        Mode::Open { packets_stored, .. } => {
            *packets_stored = packets_stored.saturating_add_signed(count_change);
            shared.buffer.put(&key, row);
            shared.buffer.set_packet_count(*packets_stored);
            // The packet row written again is no longer the damaged one (only a packet row
            // that fails its check puts a key in quarantine).
            shared.quarantine.release(&key);
            shared.versions.bump(&key);
        }
        Mode::Own { changed, .. } => changed.push(key),
    }
}

/// What applying one command did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// One per published packet, in order (empty for other commands).
    pub outcomes: Vec<PublishOutcome>,
    /// Packets deleted by expiry.
    pub expired: u64,
}
