//! [`Store::check_integrity`]: every stored packet, its expiry row and its compiled answers
//! checked in one read transaction (`pkraft verify` on a stopped node).

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::expiry_index::{self, EXPIRY_BUCKETS, EXPIRY_EXACT, Zone};
use crate::rows::{StoredPacket, answers_form, answers_row, hex};
use crate::tables::{ANSWERS, META, PACKETS};
use crate::{Store, StoreError};

/// What [`Store::check_integrity`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Integrity {
    /// Packets stored.
    pub packets: u64,
    /// Rows of the expiry index.
    pub expiry_rows: u64,
    /// Rows of the compiled DNS answers.
    pub answer_rows: u64,
    /// Every problem found, one line each (empty: none).
    pub problems: Vec<String>,
}

/// Problems listed one by one before the rest are only counted (a damaged file could have
/// millions).
const PROBLEMS_LISTED: usize = 20;

impl Store {
    /// Re-verifies every stored packet (signature, length, DNS parse: what a PUT checks) and
    /// checks that the expiry index has exactly one row per packet, by exact timestamp or by bucket
    /// as its timestamp's bucket says (`expiry_index.rs`), and the
    /// compiled DNS answers one row per packet, equal to what the packet compiles to. Reads the
    /// whole table in one read transaction; meant for `pkraft verify` on a stopped node.
    pub fn check_integrity(&self) -> Result<Integrity, StoreError> {
        let txn = self.db.begin_read()?;
        let packets = txn.open_table(PACKETS)?;
        let buckets = txn.open_table(EXPIRY_BUCKETS)?;
        let exact = txn.open_table(EXPIRY_EXACT)?;
        let exact_below = expiry_index::read_exact_below(&txn.open_table(META)?)?;
        let answers = txn.open_table(ANSWERS)?;
        let mut report = Integrity::default();
        let mut unlisted = 0u64;
        let mut problem = |report: &mut Integrity, text: String| {
            if report.problems.len() < PROBLEMS_LISTED {
                report.problems.push(text);
            } else {
                unlisted += 1;
            }
        };
        for row in packets.iter()? {
            let (key, value) = row?;
            let key = *key.value();
            report.packets += 1;
            let stored = match StoredPacket::decode(value.value()) {
                Ok(stored) => stored,
                Err(e) => {
                    problem(&mut report, format!("packet {}: {e}", hex(&key)));
                    continue;
                }
            };
            let body = stored.payload.as_bytes().clone();
            if let Err(e) = pkraft_types::VerifiedPacket::verify_stored(&key, body) {
                problem(
                    &mut report,
                    format!("packet {}: does not verify: {e}", hex(&key)),
                );
            }
            let timestamp = stored.payload.timestamp_micros();
            let by_bucket = buckets
                .get(&expiry_index::row_of(timestamp, &key))?
                .is_some();
            let by_time = exact
                .get(&expiry_index::exact_row(timestamp, &key))?
                .is_some();
            let missing = match expiry_index::zone(exact_below, timestamp) {
                Zone::Exact => !by_time || by_bucket,
                Zone::Converting => by_time == by_bucket,
                Zone::Buckets => by_time || !by_bucket,
            };
            if missing {
                problem(
                    &mut report,
                    format!(
                        "packet {}: not indexed once for expiry where its timestamp puts it \
                         (by exact timestamp: {by_time}, by bucket: {by_bucket})",
                        hex(&key)
                    ),
                );
            }
            let compiled = answers.get(&key)?;
            let compiled = compiled.as_ref().map(|row| row.value());
            if compiled != Some(answers_row(&key, &stored.payload).as_slice()) {
                let what = match compiled {
                    None => "no compiled DNS answers",
                    Some(row) if answers_form(&key, row).is_none() => {
                        "compiled DNS answers damaged (checksum mismatch)"
                    }
                    Some(_) => "compiled DNS answers differ from the packet's",
                };
                problem(&mut report, format!("packet {}: {what}", hex(&key)));
            }
        }
        report.expiry_rows = buckets.len()? + exact.len()?;
        report.answer_rows = answers.len()?;
        if report.answer_rows != report.packets {
            let text = format!(
                "the compiled DNS answers have {} rows for {} packets",
                report.answer_rows, report.packets
            );
            problem(&mut report, text);
        }
        if report.expiry_rows != report.packets {
            let text = format!(
                "the expiry index has {} rows for {} packets",
                report.expiry_rows, report.packets
            );
            problem(&mut report, text);
        }
        if unlisted > 0 {
            report
                .problems
                .push(format!("and {unlisted} more problems"));
        }
        Ok(report)
    }
}
