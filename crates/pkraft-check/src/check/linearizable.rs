//! Per-key linearizability of PUT and linearizable GET, checked the way porcupine does it: a
//! depth-first search for a total order of the operations that respects real time (WGL, Wing &
//! Gong, with Lowe's memoisation of (set of linearized operations, model state)), over a model of
//! one key's register.
//!
//! The model is pkarr's ordering rule with the harness's unique versions: the stored version only
//! ever grows, a PUT of version `v` answers 204 if the stored version is at most `v` (and stores
//! `v`), 409 if it is larger (and changes nothing), and a read returns the stored version (0 for
//! nothing). A PUT whose outcome is unknown (503, timeout, connection error) may take effect at
//! any time after it was invoked, or never: it has no return time, and taking effect when the
//! stored version is already larger is the same as never taking effect.
//!
//! Because the state only grows, two reductions keep the search small without changing its
//! answer. An operation that may come next, is legal and changes nothing is linearized at once:
//! in any valid order of the rest, moving it to the front keeps the order valid (every other
//! operation sees the same states, and nothing left must precede it). And an operation that
//! needs a smaller state than the current one is dead: the branch fails at once.

use std::collections::HashSet;

use crate::history::Version;
use pkraft_testkit::rng::SplitMix64;

/// What one operation did, as the model sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// A PUT that answered 204.
    Stored(Version),
    /// A PUT that answered 409.
    Conflict(Version),
    /// A PUT with no definite answer.
    Unknown(Version),
    /// A linearizable GET that returned this version (0: nothing stored).
    Read(Version),
}

#[derive(Clone, Debug)]
pub struct Entry {
    /// Index of the operation in the recorded history (for reports).
    pub op: usize,
    pub invoke_us: u64,
    /// `u64::MAX` for an operation that may take effect at any later time.
    pub complete_us: u64,
    pub action: Action,
}

#[derive(Debug)]
pub enum Verdict {
    Linearizable,
    /// No order exists. The report describes the deepest point the search reached.
    Violation(Stuck),
    /// The search gave up after `budget` states without an answer either way.
    Undecided {
        explored: usize,
    },
}

/// Where the longest partial linearization got stuck: how many operations it placed, the
/// register's version there, and the operations (history indices) that could come next.
#[derive(Debug)]
pub struct Stuck {
    pub placed: usize,
    pub total: usize,
    pub state: Version,
    pub next: Vec<usize>,
}

/// The model: the state after `action` in `state`, or None if the action cannot happen there.
fn step(state: Version, action: Action) -> Option<Version> {
    match action {
        Action::Stored(v) => (state <= v).then_some(v),
        Action::Conflict(v) => (state > v).then_some(state),
        Action::Unknown(v) => Some(state.max(v)),
        Action::Read(v) => (state == v).then_some(state),
    }
}

/// True if the action can never happen from `state` on, since the state never decreases.
fn dead(state: Version, action: Action) -> bool {
    match action {
        Action::Stored(v) | Action::Read(v) => state > v,
        Action::Conflict(_) | Action::Unknown(_) => false,
    }
}

/// One level of the depth-first search: the state-changing choices available there.
struct Level {
    choices: Vec<usize>,
    next: usize,
    /// The choice currently applied at this level, with what it changed.
    applied: Option<Applied>,
}

struct Applied {
    linearized: Vec<usize>,
    prev_state: Version,
}

struct Search<'a> {
    entries: &'a [Entry],
    done: Vec<bool>,
    done_count: usize,
    first_undone: usize,
    state: Version,
    /// Zobrist hash of the set of linearized entries (two words, so collisions are negligible).
    hash: (u64, u64),
    zobrist: Vec<(u64, u64)>,
    deepest: Option<Stuck>,
}

impl<'a> Search<'a> {
    fn new(entries: &'a [Entry]) -> Search<'a> {
        let mut rng = SplitMix64::new(0x5eed);
        Search {
            entries,
            done: vec![false; entries.len()],
            done_count: 0,
            first_undone: 0,
            state: 0,
            hash: (0, 0),
            zobrist: (0..entries.len())
                .map(|_| (rng.next_u64(), rng.next_u64()))
                .collect(),
            deepest: None,
        }
    }

    fn mark(&mut self, i: usize, done: bool) {
        self.done[i] = done;
        self.hash.0 ^= self.zobrist[i].0;
        self.hash.1 ^= self.zobrist[i].1;
        if done {
            self.done_count += 1;
            while self.first_undone < self.done.len() && self.done[self.first_undone] {
                self.first_undone += 1;
            }
        } else {
            self.done_count -= 1;
            self.first_undone = self.first_undone.min(i);
        }
    }

    /// The entries that may be linearized next: not yet linearized, and invoked no later than
    /// the earliest completion among the entries not yet linearized (an entry that completed
    /// before another was invoked must come first).
    fn candidates(&self) -> Vec<usize> {
        let mut earliest_complete = u64::MAX;
        let mut found = Vec::new();
        for i in self.first_undone..self.entries.len() {
            if self.done[i] {
                continue;
            }
            let entry = &self.entries[i];
            if entry.invoke_us > earliest_complete {
                break; // sorted by invoke: no later entry qualifies either
            }
            found.push(i);
            earliest_complete = earliest_complete.min(entry.complete_us);
        }
        found.retain(|&i| self.entries[i].invoke_us <= earliest_complete);
        found
    }

    /// Linearizes every candidate that is legal and changes nothing, until none is left;
    /// returns them (to undo).
    fn absorb(&mut self) -> Vec<usize> {
        let mut absorbed = Vec::new();
        loop {
            let before = absorbed.len();
            for i in self.candidates() {
                if step(self.state, self.entries[i].action) == Some(self.state) {
                    self.mark(i, true);
                    absorbed.push(i);
                }
            }
            if absorbed.len() == before {
                return absorbed;
            }
        }
    }

    /// The state-changing choices here, soonest-completing first; None if a candidate is dead.
    fn level(&mut self) -> Option<Level> {
        let candidates = self.candidates();
        self.note_depth(&candidates);
        if candidates
            .iter()
            .any(|&i| dead(self.state, self.entries[i].action))
        {
            return None;
        }
        let mut choices: Vec<usize> = candidates
            .into_iter()
            .filter(|&i| {
                step(self.state, self.entries[i].action).is_some_and(|next| next != self.state)
            })
            .collect();
        choices.sort_by_key(|&i| self.entries[i].complete_us);
        Some(Level {
            choices,
            next: 0,
            applied: None,
        })
    }

    fn note_depth(&mut self, candidates: &[usize]) {
        if self
            .deepest
            .as_ref()
            .is_some_and(|d| d.placed >= self.done_count)
        {
            return;
        }
        self.deepest = Some(Stuck {
            placed: self.done_count,
            total: self.entries.len(),
            state: self.state,
            next: candidates.iter().map(|&i| self.entries[i].op).collect(),
        });
    }

    fn undo(&mut self, applied: Applied) {
        for i in applied.linearized {
            self.mark(i, false);
        }
        self.state = applied.prev_state;
    }
}

/// Checks one key's operations. `budget` bounds the number of search states explored.
pub fn check(mut entries: Vec<Entry>, budget: usize) -> Verdict {
    entries.sort_by_key(|e| (e.invoke_us, e.complete_us));
    let mut search = Search::new(&entries);
    search.absorb();
    if search.done_count == entries.len() {
        return Verdict::Linearizable;
    }
    let mut seen: HashSet<(u64, u64, Version)> = HashSet::new();
    let mut stack: Vec<Level> = match search.level() {
        Some(level) => vec![level],
        None => Vec::new(),
    };
    let mut explored = 0usize;
    while let Some(level) = stack.last_mut() {
        if let Some(applied) = level.applied.take() {
            search.undo(applied);
        }
        let Some(&choice) = level.choices.get(level.next) else {
            stack.pop();
            continue;
        };
        level.next += 1;
        explored += 1;
        if explored > budget {
            return Verdict::Undecided { explored };
        }
        let prev_state = search.state;
        let Some(next_state) = step(prev_state, entries[choice].action) else {
            continue;
        };
        search.state = next_state;
        search.mark(choice, true);
        let mut linearized = vec![choice];
        linearized.extend(search.absorb());
        if search.done_count == entries.len() {
            return Verdict::Linearizable;
        }
        let fresh = seen.insert((search.hash.0, search.hash.1, search.state));
        let deeper = if fresh { search.level() } else { None };
        let applied = Applied {
            linearized,
            prev_state,
        };
        match deeper {
            Some(deeper) => {
                // Keep what this level applied until the deeper levels are exhausted.
                if let Some(level) = stack.last_mut() {
                    level.applied = Some(applied);
                }
                stack.push(deeper);
            }
            None => search.undo(applied),
        }
    }
    Verdict::Violation(search.deepest.unwrap_or(Stuck {
        placed: 0,
        total: entries.len(),
        state: 0,
        next: Vec::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: usize = 1_000_000;
    const NEVER: u64 = u64::MAX;

    fn e(invoke_us: u64, complete_us: u64, action: Action) -> Entry {
        Entry {
            op: 0,
            invoke_us,
            complete_us,
            action,
        }
    }

    fn linearizable(entries: Vec<Entry>) -> bool {
        match check(entries, BUDGET) {
            Verdict::Linearizable => true,
            Verdict::Violation(_) => false,
            Verdict::Undecided { explored } => panic!("undecided after {explored}"),
        }
    }

    #[test]
    fn sequential_writes_and_reads() {
        assert!(linearizable(vec![
            e(0, 1, Action::Read(0)),
            e(2, 3, Action::Stored(10)),
            e(4, 5, Action::Read(10)),
            e(6, 7, Action::Conflict(5)),
            e(8, 9, Action::Stored(20)),
            e(10, 11, Action::Read(20)),
        ]));
    }

    #[test]
    fn a_read_of_an_older_version_after_an_acknowledged_write_is_a_violation() {
        assert!(!linearizable(vec![
            e(0, 1, Action::Stored(10)),
            e(2, 3, Action::Stored(20)),
            e(4, 5, Action::Read(10)),
        ]));
    }

    #[test]
    fn a_lost_acknowledged_write_is_a_violation() {
        assert!(!linearizable(vec![
            e(0, 1, Action::Stored(10)),
            e(2, 3, Action::Read(0)),
        ]));
    }

    #[test]
    fn a_conflict_needs_a_newer_version_stored_first() {
        // 409 for version 10 while nothing newer was ever written.
        assert!(!linearizable(vec![
            e(0, 1, Action::Stored(5)),
            e(2, 3, Action::Conflict(10)),
        ]));
        // A concurrent unknown write of 15 explains it, but then 15 must stay visible.
        assert!(linearizable(vec![
            e(0, 1, Action::Stored(5)),
            e(1, NEVER, Action::Unknown(15)),
            e(2, 3, Action::Conflict(10)),
            e(4, 5, Action::Read(15)),
        ]));
        assert!(!linearizable(vec![
            e(0, 1, Action::Stored(5)),
            e(1, NEVER, Action::Unknown(15)),
            e(2, 3, Action::Conflict(10)),
            e(4, 5, Action::Read(5)),
        ]));
    }

    #[test]
    fn a_stored_write_after_a_newer_one_completed_is_a_violation() {
        assert!(!linearizable(vec![
            e(0, 1, Action::Stored(20)),
            e(2, 3, Action::Stored(10)),
        ]));
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        assert!(linearizable(vec![
            e(0, 10, Action::Stored(20)),
            e(1, 9, Action::Conflict(10)),
            e(2, 3, Action::Read(0)),
            e(11, 12, Action::Read(20)),
        ]));
        assert!(linearizable(vec![
            e(0, 10, Action::Stored(10)),
            e(0, 10, Action::Stored(20)),
            e(2, 3, Action::Read(20)),
            e(4, 5, Action::Read(20)),
        ]));
        // Once 20 was read, a later read cannot go back to 10.
        assert!(!linearizable(vec![
            e(0, 10, Action::Stored(10)),
            e(0, 10, Action::Stored(20)),
            e(2, 3, Action::Read(20)),
            e(4, 5, Action::Read(10)),
        ]));
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        assert!(linearizable(vec![
            e(0, NEVER, Action::Unknown(10)),
            e(5, 6, Action::Read(0)),
            e(7, 8, Action::Read(10)),
        ]));
        assert!(linearizable(vec![
            e(0, NEVER, Action::Unknown(10)),
            e(5, 6, Action::Read(0)),
        ]));
        // But not before it was invoked.
        assert!(!linearizable(vec![
            e(0, 1, Action::Read(10)),
            e(5, NEVER, Action::Unknown(10)),
        ]));
    }

    #[test]
    fn many_unknown_writes_stay_tractable() {
        // 2,000 rounds of: an unknown write, a stored write above it, a read of the stored one.
        let mut entries = Vec::new();
        for round in 0..2_000u64 {
            let t = round * 10;
            entries.push(e(t, NEVER, Action::Unknown(t * 3 + 1)));
            entries.push(e(t + 1, t + 4, Action::Stored(t * 3 + 2)));
            entries.push(e(t + 5, t + 6, Action::Read(t * 3 + 2)));
        }
        assert!(linearizable(entries));
    }
}
