//! [`ApplyTxn`]: the one way the log's commands change the state, committed with the position in
//! the log they lead to.

use std::sync::Arc;

use pkraft_types::{Command, KeyBytes, PublishOutcome, decide};
use redb::WriteTransaction;
use redb::{Database, Durability, ReadableTable};

use crate::latest::LatestTables;
use crate::quarantine::Quarantine;
use crate::rows::{StoredPacket, answers_row};
use crate::tables::{
    ANSWERS, EXPIRY, ExpiryKey, META, META_APPLIED_STATE, META_LOG_TIME, PACKETS, REMOVED_NODES,
    expiry_key,
};
use crate::versions::KeyVersions;
use crate::{Store, StoreError};

impl Store {
    /// Starts the write transaction that applies a run of log entries. Nothing is visible to
    /// readers until [`ApplyTxn::commit`].
    ///
    /// With `durable` false the commit does not wait for fsync. That is safe because the state
    /// is a projection of the Raft log, which is fsynced before an entry is acknowledged: after a
    /// crash, redb rolls back to the last durable commit and the consensus layer applies the
    /// missing entries again from the log. It must make the state durable (a durable apply, or
    /// [`Store::flush`]) before it purges the log entries that state reflects.
    pub fn begin_apply(&self, durable: bool) -> Result<ApplyTxn, StoreError> {
        let txn = if durable {
            self.begin_durable_write()?
        } else {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::None)?;
            txn
        };
        Ok(ApplyTxn {
            txn,
            db: self.db.clone(),
            latest: self.latest.clone(),
            versions: self.versions.clone(),
            quarantine: self.quarantine.clone(),
            changed: Vec::new(),
            log_time_micros: None,
        })
    }
}

/// One write transaction over the state: apply commands, then commit them together with the
/// `applied_state` they lead to.
pub struct ApplyTxn {
    txn: WriteTransaction,
    /// For the reads after the commit (`latest`).
    db: Arc<Database>,
    latest: Arc<LatestTables>,
    versions: Arc<KeyVersions>,
    quarantine: Arc<Quarantine>,
    /// Keys whose packet this transaction stores or deletes; their versions move on after the
    /// commit.
    changed: Vec<KeyBytes>,
    /// The largest leader stamp of the publishes applied in this transaction.
    log_time_micros: Option<u64>,
}

impl ApplyTxn {
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
        Ok(())
    }

    /// One outcome per packet, in order.
    fn publish(
        &mut self,
        leader_time_micros: u64,
        packets: &[pkraft_types::PublishItem],
    ) -> Result<Vec<PublishOutcome>, StoreError> {
        if leader_time_micros > 0 {
            self.log_time_micros = self.log_time_micros.max(Some(leader_time_micros));
        }
        let mut table = self.txn.open_table(PACKETS)?;
        let mut answers = self.txn.open_table(ANSWERS)?;
        let mut index = self.txn.open_table(EXPIRY)?;
        let mut outcomes = Vec::with_capacity(packets.len());
        for item in packets {
            let stored = table
                .get(&item.key)?
                .map(|v| StoredPacket::decode(v.value()))
                .transpose()?;
            let outcome = decide(stored.as_ref().map(|s| &s.payload), &item.payload);
            if outcome == PublishOutcome::Stored {
                if let Some(old) = &stored {
                    index.remove(&expiry_key(old.payload.timestamp_micros(), &item.key))?;
                }
                let value = StoredPacket {
                    applied_at_micros: leader_time_micros,
                    payload: item.payload.clone(),
                }
                .encode();
                table.insert(&item.key, value.as_slice())?;
                answers.insert(&item.key, answers_row(&item.key, &item.payload).as_slice())?;
                index.insert(&expiry_key(item.payload.timestamp_micros(), &item.key), ())?;
                self.changed.push(item.key);
            }
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// Deletes up to `limit` packets signed before `before_micros`, oldest first; returns how
    /// many.
    fn expire(&mut self, before_micros: u64, limit: u32) -> Result<u64, StoreError> {
        let mut table = self.txn.open_table(PACKETS)?;
        let mut answers = self.txn.open_table(ANSWERS)?;
        let mut index = self.txn.open_table(EXPIRY)?;
        let end = expiry_key(before_micros, &[0u8; 32]);
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut rows = Vec::new();
        for row in index.range::<&ExpiryKey>(..&end)?.take(limit) {
            let (row, _) = row?;
            rows.push(*row.value());
        }
        for row in &rows {
            index.remove(row)?;
            let mut key = [0u8; 32];
            key.copy_from_slice(&row[8..]);
            table.remove(&key)?;
            answers.remove(&key)?;
            self.changed.push(key);
        }
        Ok(rows.len() as u64)
    }

    /// Commits the applied commands and `applied_state` atomically (durably if the transaction
    /// was begun durable).
    pub fn commit(self, applied_state: &[u8]) -> Result<(), StoreError> {
        {
            let mut meta = self.txn.open_table(META)?;
            meta.insert(META_APPLIED_STATE, applied_state)?;
            if let Some(stamp) = self.log_time_micros {
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
        }
        self.txn.commit()?;
        // Also when no packet changed: a kept transaction older than this commit would hold
        // back the reuse of every page freed since.
        self.latest.refresh(&self.db);
        for key in &self.changed {
            // A row written again is no longer the damaged one.
            self.quarantine.release(key);
            self.versions.bump(key);
        }
        Ok(())
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
