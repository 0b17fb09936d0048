//! Short-lived replicated records: a TXT value at a DNS name until an end, committed through
//! Raft ([`crate::Command::ShortLivedRecord`]) so that every replica's DNS answers it, whichever
//! node is asked. Each replica keeps them in memory only ([`ShortLivedRecords`]): they live for
//! minutes, and a replica that misses one (a restart, a snapshot installed meanwhile) has lost
//! it until its proposer commits it again. Only nodes propose them, over the authenticated peer
//! network; which names they use is their proposer's business (the binary crate's ACME DNS-01
//! client is the one today, at `_acme-challenge.<name>`).

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use crate::clock::unix_micros_now;

/// Records a replica keeps at most, sized for their one user: a node orders one certificate at a
/// time, for at most a handful of names, and even 5 nodes ordering at once stay far below.
/// Beyond it the oldest goes.
pub const RECORDS_MAX: usize = 64;

/// Longest name kept (a DNS name's length limit in text form).
pub const NAME_MAX: usize = 253;

/// Longest TXT value kept (an ACME DNS-01 value is the 43-character base64url SHA-256 digest).
pub const VALUE_MAX: usize = 64;

/// One record, as committed through Raft. Its encoding is the log's (and the peer wire's): the
/// entry older builds wrote as an ACME challenge has these three fields in this order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShortLivedRecord {
    /// The DNS name, lower case, without the final dot (replicas normalize it when applying).
    pub name: String,
    /// The TXT value.
    pub value: String,
    /// Until when the value is answered, µs since the Unix epoch on the proposing node's clock.
    /// 0 withdraws it.
    pub until_micros: u64,
}

/// `name` lower case, without the final dot: how the records are keyed.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The short-lived records this replica answers, in memory.
#[derive(Debug, Default)]
pub struct ShortLivedRecords {
    entries: RwLock<Vec<ShortLivedRecord>>,
    /// Moves on at every change: an answer built while it had another value may be out of date
    /// (the DNS answer cache checks it).
    generation: AtomicU64,
    /// Entries held: lets the DNS skip the lock while there are none (nearly always).
    held: AtomicUsize,
}

impl ShortLivedRecords {
    /// Applies a committed record: sets the value (or moves its end), or withdraws it when
    /// `until_micros` is 0. Names and values beyond the limits are not kept (only pkraft nodes
    /// propose records, and they never send such).
    pub fn apply(&self, record: &ShortLivedRecord) {
        self.apply_at(record, unix_micros_now());
    }

    /// [`ShortLivedRecords::apply`] at `now_micros`: entries past their end go first, then, if
    /// [`RECORDS_MAX`] are still held, the oldest.
    pub fn apply_at(&self, record: &ShortLivedRecord, now_micros: u64) {
        let name = normalize(&record.name);
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.retain(|entry| {
            entry.until_micros > now_micros && !(entry.name == name && entry.value == record.value)
        });
        let kept = record.until_micros > now_micros
            && name.len() <= NAME_MAX
            && record.value.len() <= VALUE_MAX;
        if kept {
            if entries.len() >= RECORDS_MAX {
                entries.remove(0);
            }
            entries.push(ShortLivedRecord {
                name,
                value: record.value.clone(),
                until_micros: record.until_micros,
            });
        }
        self.held.store(entries.len(), Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The values answered at `name` (any case, final dot or not) at `now_micros`.
    pub fn values(&self, name: &str, now_micros: u64) -> Vec<String> {
        if self.held.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let name = normalize(name);
        self.read()
            .iter()
            .filter(|entry| entry.until_micros > now_micros && entry.name == name)
            .map(|entry| entry.value.clone())
            .collect()
    }

    /// Every record answered at `now_micros`.
    pub fn live(&self, now_micros: u64) -> Vec<ShortLivedRecord> {
        if self.held.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        self.read()
            .iter()
            .filter(|entry| entry.until_micros > now_micros)
            .cloned()
            .collect()
    }

    /// Whether a value is answered at a name below `name` at `now_micros`: then `name` exists
    /// (NODATA, not NXDOMAIN, RFC 8020), as an empty non-terminal.
    pub fn has_names_below(&self, name: &str, now_micros: u64) -> bool {
        if self.held.load(Ordering::Acquire) == 0 {
            return false;
        }
        let suffix = format!(".{}", normalize(name));
        self.read()
            .iter()
            .any(|entry| entry.until_micros > now_micros && entry.name.ends_with(&suffix))
    }

    /// When the first value answered at `now_micros` ends (µs), if any: what is answered
    /// changes then without a change of its generation.
    pub fn next_end(&self, now_micros: u64) -> Option<u64> {
        if self.held.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.read()
            .iter()
            .map(|entry| entry.until_micros)
            .filter(|until| *until > now_micros)
            .min()
    }

    /// Whether no record is held (nearly always): then nothing is answered.
    pub fn is_empty(&self) -> bool {
        self.held.load(Ordering::Acquire) == 0
    }

    /// The generation; see [`ShortLivedRecords`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<ShortLivedRecord>> {
        // A panic while holding the lock leaves a valid Vec: every change is one call.
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, value: &str, until_micros: u64) -> ShortLivedRecord {
        ShortLivedRecord {
            name: name.to_string(),
            value: value.to_string(),
            until_micros,
        }
    }

    #[test]
    fn values_are_answered_until_their_end_or_withdrawal() {
        let records = ShortLivedRecords::default();
        let name = "_probe.pkarr.example.org";
        let generation = records.generation();
        records.apply_at(&record(name, "a", 100), 0);
        records.apply_at(&record(name, "b", 200), 0);
        records.apply_at(&record("_probe.other.example", "c", 200), 0);
        assert!(
            records.generation() > generation,
            "every change moves it on"
        );
        assert_eq!(records.values("_PROBE.pkarr.example.org.", 50), ["a", "b"]);
        assert_eq!(records.values(name, 100), ["b"]);
        records.apply_at(&record(name, "b", 0), 0);
        assert!(records.values(name, 100).is_empty());
        assert_eq!(records.values("_probe.other.example", 100), ["c"]);
        // Setting a value again moves its end, and keeps one entry.
        records.apply_at(&record(name, "d", 300), 0);
        records.apply_at(&record(name, "d", 400), 0);
        assert_eq!(records.values(name, 350), ["d"]);
    }

    #[test]
    fn the_names_above_a_value_exist() {
        let records = ShortLivedRecords::default();
        assert!(!records.has_names_below("pkarr.example.org", 0));
        records.apply_at(&record("_probe.node1.pkarr.example.org", "v", 100), 0);
        for above in [
            "node1.pkarr.example.org.",
            "Node1.PKARR.example.org",
            "example.org",
        ] {
            assert!(records.has_names_below(above, 50), "{above}");
        }
        for not_above in [
            "_probe.node1.pkarr.example.org",
            "node2.pkarr.example.org",
            "ode1.pkarr.example.org",
        ] {
            assert!(!records.has_names_below(not_above, 50), "{not_above}");
        }
        assert!(
            !records.has_names_below("node1.pkarr.example.org", 100),
            "ended"
        );
    }

    #[test]
    fn the_records_stay_bounded_and_refuses_oversized_entries() {
        let records = ShortLivedRecords::default();
        for i in 0..RECORDS_MAX + 10 {
            records.apply_at(&record(&format!("_probe.n{i}.example"), "v", 10), 0);
        }
        assert_eq!(records.read().len(), RECORDS_MAX);
        assert!(records.values("_probe.n0.example", 0).is_empty());
        assert_eq!(
            records.values(&format!("_probe.n{}.example", RECORDS_MAX + 9), 0),
            ["v"]
        );
        let long_value = "v".repeat(VALUE_MAX + 1);
        records.apply_at(&record("_probe.x.example", &long_value, 10), 0);
        assert!(records.values("_probe.x.example", 0).is_empty());
        let long_name = format!("_probe.{}.example", "a".repeat(NAME_MAX));
        records.apply_at(&record(&long_name, "v", 10), 0);
        assert!(records.values(&long_name, 0).is_empty());
    }

    #[test]
    fn ended_entries_go_before_a_live_one_is_pushed_out() {
        let records = ShortLivedRecords::default();
        for i in 0..RECORDS_MAX - 1 {
            records.apply_at(&record(&format!("_probe.old{i}.example"), "v", 10), 0);
        }
        records.apply_at(&record("_probe.live.example", "v", 1_000), 0);
        // RECORDS_MAX are held; at 20 every other entry has ended.
        records.apply_at(&record("_probe.new.example", "v", 1_000), 20);
        assert_eq!(records.values("_probe.live.example", 20), ["v"]);
        assert_eq!(records.values("_probe.new.example", 20), ["v"]);
        assert_eq!(records.read().len(), 2);
    }
}
