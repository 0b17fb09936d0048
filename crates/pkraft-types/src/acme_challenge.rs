//! ACME DNS-01 challenges (`[https.acme]` with `challenge = "dns-01"`): the TXT values a node's
//! ACME client asks the CA to find at `_acme-challenge.<name>`, committed through Raft
//! ([`crate::Command::AcmeChallenge`]) so that every node's DNS answers them, whichever node the
//! CA asks. Each replica keeps them in memory only ([`ChallengeBoard`]): they live for minutes,
//! and a replica that misses one (a restart, a snapshot installed meanwhile) costs at most one
//! failed validation, which the ordering node retries.

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use crate::clock::unix_micros_now;

/// The label a DNS-01 challenge's TXT record is published under (RFC 8555 §8.4).
pub const CHALLENGE_LABEL: &str = "_acme-challenge";

/// Challenges a board keeps at most. A node orders one certificate at a time, for at most a
/// handful of names; even 5 nodes ordering at once stay far below. Beyond it the oldest goes.
pub const BOARD_MAX: usize = 64;

/// Longest challenge name kept (a DNS name's length limit in text form).
pub const NAME_MAX: usize = 253;

/// Longest TXT value kept: a DNS-01 value is the 43-character base64url SHA-256 digest.
pub const VALUE_MAX: usize = 64;

/// One challenge value, as committed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeChallenge {
    /// `_acme-challenge.<name>`, lower case, without the final dot ([`challenge_name`]).
    pub name: String,
    /// The TXT value: base64url(SHA-256(key authorization)).
    pub value: String,
    /// Until when the value is answered, µs since the Unix epoch on the proposing node's clock.
    /// 0 withdraws it.
    pub until_micros: u64,
}

/// The name a DNS-01 challenge for `domain` is published under: `_acme-challenge.` and the
/// domain without a wildcard label, lower case, without the final dot. (A wildcard's challenge
/// is at its base name, RFC 8555 §8.4.)
pub fn challenge_name(domain: &str) -> String {
    let domain = domain.strip_prefix("*.").unwrap_or(domain);
    normalize(&format!("{CHALLENGE_LABEL}.{domain}"))
}

/// `name` lower case, without the final dot: how the board keys its entries.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The challenges this replica answers, in memory.
#[derive(Debug, Default)]
pub struct ChallengeBoard {
    entries: RwLock<Vec<AcmeChallenge>>,
    /// Moves on at every change: an answer built while it had another value may be out of date
    /// (the DNS answer cache checks it).
    generation: AtomicU64,
    /// Entries held: lets the DNS skip the lock while there are none (nearly always).
    held: AtomicUsize,
}

impl ChallengeBoard {
    /// Applies a committed challenge: sets the value (or moves its end), or withdraws it when
    /// `until_micros` is 0. Names and values beyond the limits are not kept (only pkraft nodes
    /// propose challenges, and they never send such).
    pub fn apply(&self, challenge: &AcmeChallenge) {
        self.apply_at(challenge, unix_micros_now());
    }

    /// [`ChallengeBoard::apply`] at `now_micros`: entries past their end go first, then, if the
    /// board is still full, the oldest.
    pub fn apply_at(&self, challenge: &AcmeChallenge, now_micros: u64) {
        let name = normalize(&challenge.name);
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.retain(|entry| {
            entry.until_micros > now_micros
                && !(entry.name == name && entry.value == challenge.value)
        });
        let kept = challenge.until_micros > now_micros
            && name.len() <= NAME_MAX
            && challenge.value.len() <= VALUE_MAX;
        if kept {
            if entries.len() >= BOARD_MAX {
                entries.remove(0);
            }
            entries.push(AcmeChallenge {
                name,
                value: challenge.value.clone(),
                until_micros: challenge.until_micros,
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

    /// Every value answered at `now_micros`, whatever its name.
    pub fn live_values(&self, now_micros: u64) -> Vec<String> {
        if self.held.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        self.read()
            .iter()
            .filter(|entry| entry.until_micros > now_micros)
            .map(|entry| entry.value.clone())
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

    /// When the first value answered at `now_micros` ends (µs), if any: what the board answers
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

    /// Whether the board holds no entry (nearly always): then it answers nothing.
    pub fn is_empty(&self) -> bool {
        self.held.load(Ordering::Acquire) == 0
    }

    /// The board's generation; see [`ChallengeBoard`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<AcmeChallenge>> {
        // A panic while holding the lock leaves a valid Vec: every change is one call.
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether a query name whose leftmost label is `first_label` (any case) is a challenge name:
/// such a name is answered from the [`ChallengeBoard`], never from a key's packet.
pub fn is_challenge_label(first_label: &[u8]) -> bool {
    first_label.eq_ignore_ascii_case(CHALLENGE_LABEL.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(name: &str, value: &str, until_micros: u64) -> AcmeChallenge {
        AcmeChallenge {
            name: name.to_string(),
            value: value.to_string(),
            until_micros,
        }
    }

    #[test]
    fn a_wildcard_and_its_base_share_one_challenge_name() {
        assert_eq!(
            challenge_name("*.Pkarr.Example.org."),
            "_acme-challenge.pkarr.example.org"
        );
        assert_eq!(
            challenge_name("pkarr.example.org"),
            "_acme-challenge.pkarr.example.org"
        );
        assert!(is_challenge_label(b"_ACME-Challenge"));
        assert!(!is_challenge_label(b"_iroh"));
    }

    #[test]
    fn values_are_answered_until_their_end_or_withdrawal() {
        let board = ChallengeBoard::default();
        let name = "_acme-challenge.pkarr.example.org";
        let generation = board.generation();
        board.apply_at(&challenge(name, "a", 100), 0);
        board.apply_at(&challenge(name, "b", 200), 0);
        board.apply_at(&challenge("_acme-challenge.other.example", "c", 200), 0);
        assert!(board.generation() > generation, "every change moves it on");
        assert_eq!(
            board.values("_ACME-challenge.pkarr.example.org.", 50),
            ["a", "b"]
        );
        assert_eq!(board.values(name, 100), ["b"]);
        board.apply_at(&challenge(name, "b", 0), 0);
        assert!(board.values(name, 100).is_empty());
        assert_eq!(board.values("_acme-challenge.other.example", 100), ["c"]);
        // Setting a value again moves its end, and keeps one entry.
        board.apply_at(&challenge(name, "d", 300), 0);
        board.apply_at(&challenge(name, "d", 400), 0);
        assert_eq!(board.values(name, 350), ["d"]);
    }

    #[test]
    fn the_names_above_a_value_exist() {
        let board = ChallengeBoard::default();
        assert!(!board.has_names_below("pkarr.example.org", 0));
        board.apply_at(
            &challenge("_acme-challenge.node1.pkarr.example.org", "v", 100),
            0,
        );
        for above in [
            "node1.pkarr.example.org.",
            "Node1.PKARR.example.org",
            "example.org",
        ] {
            assert!(board.has_names_below(above, 50), "{above}");
        }
        for not_above in [
            "_acme-challenge.node1.pkarr.example.org",
            "node2.pkarr.example.org",
            "ode1.pkarr.example.org",
        ] {
            assert!(!board.has_names_below(not_above, 50), "{not_above}");
        }
        assert!(
            !board.has_names_below("node1.pkarr.example.org", 100),
            "ended"
        );
    }

    #[test]
    fn the_board_stays_bounded_and_refuses_oversized_entries() {
        let board = ChallengeBoard::default();
        for i in 0..BOARD_MAX + 10 {
            board.apply_at(
                &challenge(&format!("_acme-challenge.n{i}.example"), "v", 10),
                0,
            );
        }
        assert_eq!(board.read().len(), BOARD_MAX);
        assert!(board.values("_acme-challenge.n0.example", 0).is_empty());
        assert_eq!(
            board.values(&format!("_acme-challenge.n{}.example", BOARD_MAX + 9), 0),
            ["v"]
        );
        let long_value = "v".repeat(VALUE_MAX + 1);
        board.apply_at(&challenge("_acme-challenge.x.example", &long_value, 10), 0);
        assert!(board.values("_acme-challenge.x.example", 0).is_empty());
        let long_name = format!("_acme-challenge.{}.example", "a".repeat(NAME_MAX));
        board.apply_at(&challenge(&long_name, "v", 10), 0);
        assert!(board.values(&long_name, 0).is_empty());
    }

    #[test]
    fn ended_entries_go_before_a_live_one_is_pushed_out() {
        let board = ChallengeBoard::default();
        for i in 0..BOARD_MAX - 1 {
            board.apply_at(
                &challenge(&format!("_acme-challenge.old{i}.example"), "v", 10),
                0,
            );
        }
        board.apply_at(&challenge("_acme-challenge.live.example", "v", 1_000), 0);
        // The board is full; at 20 every other entry has ended.
        board.apply_at(&challenge("_acme-challenge.new.example", "v", 1_000), 20);
        assert_eq!(board.values("_acme-challenge.live.example", 20), ["v"]);
        assert_eq!(board.values("_acme-challenge.new.example", 20), ["v"]);
        assert_eq!(board.read().len(), 2);
    }
}
