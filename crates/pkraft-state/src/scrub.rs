//! The background scrub's reads: a page of stored packets re-verified and their compiled
//! answers compared ([`Store::scrub_packets`]), the rewrite of stale answers, and the check of
//! one key another node's scrub asks for.

use pkraft_types::KeyBytes;
use redb::{Durability, ReadableDatabase, ReadableTable};

use crate::rows::{StoredPacket, answers_form, answers_row, hex, verify_row};
use crate::tables::{ANSWERS, PACKETS, keys_after};
use crate::{Store, StoreError};

impl Store {
    /// One page of the background scrub: re-verifies up to `limit` stored packets in key order
    /// after `after` (from the first key when `None`), as a PUT verifies them (signature,
    /// length, DNS parse), and stops at the first that fails. It also compares the `answers`
    /// rows of its key range with what its packets compile to ([`ScrubPage::stale_answers`]).
    /// A sweep asks for pages until one holds no packet. Each page is its own read transaction.
    pub fn scrub_packets(
        &self,
        after: Option<&KeyBytes>,
        limit: usize,
    ) -> Result<ScrubPage, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PACKETS)?;
        let rows = table.range::<&KeyBytes>(keys_after(after))?;
        let mut page = ScrubPage::default();
        // The compiled answers each verified packet's row should hold, in key order.
        let mut expected: Vec<(KeyBytes, Vec<u8>)> = Vec::with_capacity(limit.min(1024));
        for row in rows.take(limit) {
            let (key, value) = row?;
            let key = *key.value();
            let value = value.value();
            page.last_key = Some(key);
            page.packets += 1;
            match verify_row(&key, value) {
                Ok(stored) => expected.push((key, answers_row(&key, &stored.payload))),
                Err(e) => {
                    page.damaged = Some(DamagedPacket {
                        key,
                        value_crc: crc32fast::hash(value),
                        reason: e.to_string(),
                    });
                    break;
                }
            }
        }
        // The `answers` rows of the same keys: up to the page's last packet. A sweep ends with
        // a page that holds no packet (the caller asks again until it gets one), which checks
        // the rows past the last packet: they have none.
        let upper = match page.last_key {
            Some(last) => std::ops::Bound::Included(last),
            None => std::ops::Bound::Unbounded,
        };
        let lower = after.map_or(std::ops::Bound::Unbounded, |after| {
            std::ops::Bound::Excluded(*after)
        });
        let answers = txn.open_table(ANSWERS)?;
        let damaged_key = page.damaged.as_ref().map(|damaged| damaged.key);
        let mut expected = expected.into_iter().peekable();
        for row in answers.range::<&KeyBytes>((lower.as_ref(), upper.as_ref()))? {
            // Rows without a packet are not bounded by the page's packets: the next pass finds
            // the rest, once these are removed.
            if page.stale_answers.len() >= limit {
                return Ok(page);
            }
            let (key, value) = row?;
            let key = *key.value();
            // Packets before this key with no row at all.
            while let Some((missing, _)) = expected.next_if(|(packet_key, _)| *packet_key < key) {
                page.stale_answers.push(StaleAnswers {
                    key: missing,
                    problem: AnswersProblem::Missing,
                });
            }
            let problem = match expected.next_if(|(packet_key, _)| *packet_key == key) {
                Some((_, row)) if row.as_slice() == value.value() => continue,
                Some(_) if answers_form(&key, value.value()).is_none() => AnswersProblem::Damaged,
                Some(_) => AnswersProblem::Differs,
                // The damaged packet's row is not judged: the packet is not served.
                None if damaged_key == Some(key) => continue,
                None => AnswersProblem::WithoutPacket,
            };
            page.stale_answers.push(StaleAnswers { key, problem });
        }
        page.stale_answers
            .extend(expected.map(|(key, _)| StaleAnswers {
                key,
                problem: AnswersProblem::Missing,
            }));
        Ok(page)
    }

    /// Writes `keys`' rows of the `answers` table again from their stored packets (removes the
    /// row of a key with no packet): what the scrub does with the [`StaleAnswers`] it finds.
    /// Each packet is read in the same transaction as its row is written, so a packet applied
    /// since the scrub read it is compiled, not the older one.
    ///
    /// The writer commits what it holds first and waits meanwhile (its open transaction holds
    /// redb's one write lock), so the packets read here are every one applied.
    pub fn recompile_answers(&self, keys: &[KeyBytes]) -> Result<(), StoreError> {
        let _paused = self.writer.pause()?;
        let mut txn = self.db.begin_write()?;
        // Rows derived from packets that are already durable: a crash before the next durable
        // commit loses the rewrite, and the next scrub pass finds the row again.
        txn.set_durability(Durability::None)?;
        {
            let packets = txn.open_table(PACKETS)?;
            let mut answers = txn.open_table(ANSWERS)?;
            for key in keys {
                let stored = packets
                    .get(key)?
                    .map(|value| StoredPacket::decode(value.value()))
                    .transpose()?;
                match stored {
                    Some(stored) => {
                        answers.insert(key, answers_row(key, &stored.payload).as_slice())?;
                    }
                    None => {
                        answers.remove(key)?;
                    }
                }
            }
        }
        txn.commit()?;
        self.latest.refresh(&self.db);
        for key in keys {
            self.versions.bump(key);
        }
        Ok(())
    }

    /// What this node stores for `key`, checked as the scrub checks it: for another node's
    /// scrub, which asks whether a packet it found damaged is whole here.
    pub fn check_packet(&self, key: &KeyBytes) -> Result<PacketCheck, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PACKETS)?;
        let Some(value) = table.get(key)? else {
            return Ok(PacketCheck::Absent);
        };
        let value = value.value();
        let value_crc = crc32fast::hash(value);
        Ok(match verify_row(key, value) {
            Ok(_) => PacketCheck::Whole { value_crc },
            Err(_) => PacketCheck::Damaged { value_crc },
        })
    }
}

/// What one page of the scrub read ([`Store::scrub_packets`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubPage {
    /// The last key read: the next page starts after it. `None`: the sweep has passed the last
    /// key.
    pub last_key: Option<KeyBytes>,
    /// Packets read.
    pub packets: usize,
    /// The packet that failed its check, if one did (the page ends at it).
    pub damaged: Option<DamagedPacket>,
    /// Rows of the `answers` table in the page's key range that are not what the page's
    /// packets compile to ([`Store::recompile_answers`] writes them again).
    pub stale_answers: Vec<StaleAnswers>,
}

/// A row of the `answers` table that does not match its packet, found by the scrub. The DNS
/// frontend answers a key whose row fails its checksum from the packet itself, but a whole row
/// that is stale (a write the disk lost) or has no packet would be served as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleAnswers {
    pub key: KeyBytes,
    pub problem: AnswersProblem,
}

/// What is wrong with a [`StaleAnswers`] row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswersProblem {
    /// The packet has no row.
    Missing,
    /// The row fails its checksum.
    Damaged,
    /// The row is whole, but not what the stored packet compiles to.
    Differs,
    /// The row's key has no packet.
    WithoutPacket,
}

impl std::fmt::Display for StaleAnswers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.problem {
            AnswersProblem::Missing => "missing",
            AnswersProblem::Damaged => "damaged (checksum mismatch)",
            AnswersProblem::Differs => "not what the stored packet compiles to",
            AnswersProblem::WithoutPacket => "stored without a packet",
        };
        write!(f, "compiled DNS answers of key {}: {what}", hex(&self.key))
    }
}

/// A stored packet that does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedPacket {
    pub key: KeyBytes,
    /// CRC-32 of the stored value: the same bytes found again have the same one.
    pub value_crc: u32,
    pub reason: String,
}

impl std::fmt::Display for DamagedPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "packet {} (stored value crc {:08x}): {}",
            hex(&self.key),
            self.value_crc,
            self.reason
        )
    }
}

/// What [`Store::check_packet`] found for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketCheck {
    /// No packet is stored for the key.
    Absent,
    /// The stored packet verifies. `value_crc` is the CRC-32 of the stored value (the same bytes
    /// give the same one, as in [`DamagedPacket::value_crc`]).
    Whole { value_crc: u32 },
    /// The stored packet does not verify.
    Damaged { value_crc: u32 },
}
