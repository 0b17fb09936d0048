//! The checkers run over a recorded history and the cluster's final state:
//!
//! - `linearizable`: per key, PUTs and linearizable GETs against the pkarr register model;
//! - proposals: every read (of any kind) returns a packet some PUT proposed before the read
//!   completed, byte for byte, and never one that was refused with 409;
//! - monotonic reads: a node's replica (stale GET and DNS) never goes backwards, neither within
//!   one process nor across a restart of that node;
//! - durability: every PUT acknowledged with 204 is on every node at the end, or superseded;
//! - convergence: every node ends with the same key → payload map.

pub mod linearizable;

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::history::{Op, OpKind, PutOutcome, ReadOutcome, Version};
use linearizable::{Action, Entry, Verdict};

/// Search states the linearizability checker may explore per key before it gives up.
pub const SEARCH_BUDGET: usize = 5_000_000;

#[derive(Clone, Debug)]
pub struct Violation {
    pub check: &'static str,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.check, self.detail)
    }
}

/// What one node holds for each key at the end (index = key).
#[derive(Clone, Debug)]
pub struct FinalState {
    pub node: u64,
    pub packets: Vec<Option<FinalPacket>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalPacket {
    pub version: Version,
    pub payload: Vec<u8>,
    /// Whether `payload` is byte for byte the packet the harness PUT for `version`.
    pub matches_proposed: bool,
}

/// Counts of what was checked, for the summary.
#[derive(Debug, Default)]
pub struct Checked {
    pub linearizable_ops: usize,
    pub reads_checked: usize,
    pub acknowledged_puts: usize,
    pub nodes_compared: usize,
}

/// Runs every checker. `keys` is the number of keys written (at least; keys found in the
/// history beyond it are checked too).
pub fn check_all(ops: &[Op], keys: usize, finals: &[FinalState]) -> (Checked, Vec<Violation>) {
    let mut violations = Vec::new();
    let mut checked = Checked::default();
    let keys = ops.iter().map(|op| op.key + 1).max().unwrap_or(0).max(keys);
    unexpected_answers(ops, &mut violations);
    checked.linearizable_ops = linearizability(ops, keys, &mut violations);
    checked.reads_checked = proposals(ops, finals, &mut violations);
    monotonic_reads(ops, &mut violations);
    checked.acknowledged_puts = durability(ops, finals, &mut violations);
    checked.nodes_compared = convergence(finals, &mut violations);
    (checked, violations)
}

fn describe(ops: &[Op], index: usize) -> String {
    match ops.get(index) {
        Some(op) => format!(
            "#{index} client {} node {}#{} {:?} [{} µs .. {} µs]",
            op.client, op.node, op.incarnation, op.kind, op.invoke_us, op.complete_us
        ),
        None => format!("#{index}"),
    }
}

/// Answers outside the contract (a PUT answered 400 or 500, a read with a malformed answer).
fn unexpected_answers(ops: &[Op], violations: &mut Vec<Violation>) {
    for (index, op) in ops.iter().enumerate() {
        let unexpected = match &op.kind {
            OpKind::Put {
                outcome: PutOutcome::Unexpected(_),
                ..
            } => true,
            _ => matches!(op.read_outcome(), Some(ReadOutcome::Unexpected(_))),
        };
        if unexpected {
            violations.push(Violation {
                check: "contract",
                detail: format!("answer outside the API contract: {}", describe(ops, index)),
            });
        }
    }
}

/// Returns the number of operations checked.
fn linearizability(ops: &[Op], keys: usize, violations: &mut Vec<Violation>) -> usize {
    let mut per_key: Vec<Vec<Entry>> = vec![Vec::new(); keys];
    for (index, op) in ops.iter().enumerate() {
        let action = match &op.kind {
            OpKind::Put { version, outcome } => match outcome {
                PutOutcome::Stored => Action::Stored(*version),
                PutOutcome::Conflict => Action::Conflict(*version),
                PutOutcome::Unknown(_) | PutOutcome::Unexpected(_) => Action::Unknown(*version),
            },
            OpKind::LinearizableGet(read) => match read.observed() {
                Some(version) => Action::Read(version),
                None => continue,
            },
            OpKind::StaleGet(_) | OpKind::Dns(_) => continue,
        };
        let complete_us = match action {
            Action::Unknown(_) => u64::MAX,
            _ => op.complete_us,
        };
        if let Some(entries) = per_key.get_mut(op.key) {
            entries.push(Entry {
                op: index,
                invoke_us: op.invoke_us,
                complete_us,
                action,
            });
        }
    }
    let mut total = 0;
    for (key, entries) in per_key.into_iter().enumerate() {
        total += entries.len();
        match linearizable::check(entries, SEARCH_BUDGET) {
            Verdict::Linearizable => {}
            Verdict::Violation(stuck) => {
                let next: Vec<String> = stuck.next.iter().map(|&i| describe(ops, i)).collect();
                violations.push(Violation {
                    check: "linearizability",
                    detail: format!(
                        "key {key}: no linearization exists. The longest found places {} of {} \
                         operations, with version {} stored; none of the operations that could \
                         come next fits:\n    {}",
                        stuck.placed,
                        stuck.total,
                        stuck.state,
                        next.join("\n    ")
                    ),
                });
            }
            Verdict::Undecided { explored } => violations.push(Violation {
                check: "linearizability",
                detail: format!(
                    "key {key}: undecided after exploring {explored} states (raise SEARCH_BUDGET \
                     or shorten the run)"
                ),
            }),
        }
    }
    total
}

/// Every read returns a packet that some PUT of that key proposed before the read completed,
/// exactly, and never one whose PUT was refused (409); so does every node at the end. Returns
/// the number of reads checked.
fn proposals(ops: &[Op], finals: &[FinalState], violations: &mut Vec<Violation>) -> usize {
    // (key, version) → (index of the PUT, its invoke time, refused?)
    let mut puts: HashMap<(usize, Version), (usize, u64, bool)> = HashMap::new();
    for (index, op) in ops.iter().enumerate() {
        if let OpKind::Put { version, outcome } = &op.kind {
            let refused = *outcome == PutOutcome::Conflict;
            puts.insert((op.key, *version), (index, op.invoke_us, refused));
        }
    }
    let mut checked = 0;
    for (index, op) in ops.iter().enumerate() {
        let Some(ReadOutcome::Found {
            version,
            matches_proposed,
        }) = op.read_outcome()
        else {
            continue;
        };
        checked += 1;
        let problem = match puts.get(&(op.key, *version)) {
            None => Some("a version no PUT proposed".to_string()),
            Some((put, invoked, _)) if *invoked > op.complete_us => Some(format!(
                "a version whose PUT ({}) started after the read completed",
                describe(ops, *put)
            )),
            Some((put, _, true)) => Some(format!(
                "a packet whose PUT was refused with 409 ({})",
                describe(ops, *put)
            )),
            Some(_) if !matches_proposed => {
                Some("bytes that differ from the proposed packet".to_string())
            }
            Some(_) => None,
        };
        if let Some(problem) = problem {
            violations.push(Violation {
                check: "proposals",
                detail: format!("{} returned {problem}", describe(ops, index)),
            });
        }
    }
    for state in finals {
        for (key, packet) in state.packets.iter().enumerate() {
            let Some(packet) = packet else { continue };
            let problem = match puts.get(&(key, packet.version)) {
                None => Some("a version no PUT proposed".to_string()),
                Some((put, _, true)) => Some(format!(
                    "a packet whose PUT was refused with 409 ({})",
                    describe(ops, *put)
                )),
                Some(_) if !packet.matches_proposed => {
                    Some("bytes that differ from the proposed packet".to_string())
                }
                Some(_) => None,
            };
            if let Some(problem) = problem {
                violations.push(Violation {
                    check: "proposals",
                    detail: format!(
                        "node {} ends with version {} of key {key}: {problem}",
                        state.node, packet.version
                    ),
                });
            }
        }
    }
    checked
}

/// Reads of a node's own replica (stale GET and DNS) never go backwards: a read that started
/// after another read of the same node and key completed returns at least its version.
fn monotonic_reads(ops: &[Op], violations: &mut Vec<Violation>) {
    let mut groups: BTreeMap<(u64, usize), Vec<usize>> = BTreeMap::new();
    for (index, op) in ops.iter().enumerate() {
        if matches!(op.kind, OpKind::StaleGet(_) | OpKind::Dns(_))
            && op.read_outcome().and_then(ReadOutcome::observed).is_some()
        {
            groups.entry((op.node, op.key)).or_default().push(index);
        }
    }
    for ((node, key), reads) in groups {
        let mut by_invoke = reads.clone();
        by_invoke.sort_by_key(|&i| ops[i].invoke_us);
        let mut by_complete = reads;
        by_complete.sort_by_key(|&i| ops[i].complete_us);
        // The newest version among reads completed so far, and which read it was.
        let mut newest: Option<(Version, usize)> = None;
        let mut completed = by_complete.iter().peekable();
        let mut reported = 0;
        for &read in &by_invoke {
            while let Some(&&done) = completed.peek() {
                if ops[done].complete_us >= ops[read].invoke_us {
                    break;
                }
                let version = ops[done]
                    .read_outcome()
                    .and_then(ReadOutcome::observed)
                    .unwrap_or(0);
                if newest.is_none_or(|(v, _)| version > v) {
                    newest = Some((version, done));
                }
                completed.next();
            }
            let version = ops[read]
                .read_outcome()
                .and_then(ReadOutcome::observed)
                .unwrap_or(0);
            if let Some((seen, earlier)) = newest
                && version < seen
            {
                let across = if ops[earlier].incarnation == ops[read].incarnation {
                    "within one process"
                } else {
                    "across a restart"
                };
                violations.push(Violation {
                    check: "monotonic reads",
                    detail: format!(
                        "node {node} key {key} went backwards {across}: {} after {}",
                        describe(ops, read),
                        describe(ops, earlier)
                    ),
                });
                reported += 1;
                if reported >= 5 {
                    break; // one group's first few are enough to diagnose
                }
            }
        }
    }
}

/// Every PUT answered 204 is, at the end, on every node (or a newer packet is); so is every
/// version any read returned, since a replica only serves committed packets. Returns the number
/// of acknowledged PUTs.
fn durability(ops: &[Op], finals: &[FinalState], violations: &mut Vec<Violation>) -> usize {
    let mut acknowledged = 0;
    // key → (newest version that must survive, the operation that proves it)
    // Ordered, so that the violations come in the same order every time (a simulated run's
    // report is compared across replays).
    let mut must_survive: BTreeMap<usize, (Version, usize)> = BTreeMap::new();
    for (index, op) in ops.iter().enumerate() {
        let proven = match &op.kind {
            OpKind::Put {
                version,
                outcome: PutOutcome::Stored,
            } => {
                acknowledged += 1;
                Some(*version)
            }
            OpKind::Put { .. } => None,
            _ => op.read_outcome().and_then(ReadOutcome::observed),
        };
        if let Some(version) = proven {
            let newest = must_survive.entry(op.key).or_insert((0, index));
            if version > newest.0 {
                *newest = (version, index);
            }
        }
    }
    for state in finals {
        for (key, (version, proof)) in &must_survive {
            let held = state
                .packets
                .get(*key)
                .and_then(|p| p.as_ref())
                .map_or(0, |p| p.version);
            if held < *version {
                violations.push(Violation {
                    check: "durability",
                    detail: format!(
                        "node {} ends with version {held} of key {key}, older than {}",
                        state.node,
                        describe(ops, *proof)
                    ),
                });
            }
        }
    }
    acknowledged
}

/// Every node ends with the same packets. Returns the number of nodes compared.
fn convergence(finals: &[FinalState], violations: &mut Vec<Violation>) -> usize {
    let Some(first) = finals.first() else {
        return 0;
    };
    for other in &finals[1..] {
        for (key, (a, b)) in first.packets.iter().zip(&other.packets).enumerate() {
            if a != b {
                let version = |p: &Option<FinalPacket>| p.as_ref().map_or(0, |p| p.version);
                violations.push(Violation {
                    check: "convergence",
                    detail: format!(
                        "key {key}: node {} holds version {}, node {} holds version {}{}",
                        first.node,
                        version(a),
                        other.node,
                        version(b),
                        if version(a) == version(b) {
                            " (same version, different bytes)"
                        } else {
                            ""
                        }
                    ),
                });
            }
        }
    }
    finals.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(node: u64, incarnation: u32, t: (u64, u64), kind: OpKind) -> Op {
        Op {
            client: 0,
            key: 0,
            node,
            incarnation,
            invoke_us: t.0,
            complete_us: t.1,
            kind,
        }
    }

    fn put(version: Version, outcome: PutOutcome, t: (u64, u64)) -> Op {
        op(1, 1, t, OpKind::Put { version, outcome })
    }

    fn found(version: Version) -> ReadOutcome {
        ReadOutcome::Found {
            version,
            matches_proposed: true,
        }
    }

    fn checks(ops: &[Op], finals: &[FinalState]) -> Vec<&'static str> {
        check_all(ops, 1, finals)
            .1
            .iter()
            .map(|v| v.check)
            .collect()
    }

    fn final_state(node: u64, version: Version) -> FinalState {
        FinalState {
            node,
            packets: vec![Some(FinalPacket {
                version,
                payload: version.to_be_bytes().to_vec(),
                matches_proposed: true,
            })],
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let ops = vec![
            put(10, PutOutcome::Stored, (0, 5)),
            op(2, 1, (6, 7), OpKind::Dns(found(10))),
            op(2, 1, (8, 9), OpKind::StaleGet(found(10))),
            op(3, 1, (6, 7), OpKind::LinearizableGet(found(10))),
        ];
        let finals = [final_state(1, 10), final_state(2, 10)];
        assert!(checks(&ops, &finals).is_empty());
    }

    #[test]
    fn a_stale_read_going_backwards_is_reported_within_and_across_restarts() {
        let ops = vec![
            put(10, PutOutcome::Stored, (0, 1)),
            put(20, PutOutcome::Stored, (2, 3)),
            op(2, 1, (4, 5), OpKind::Dns(found(20))),
            op(2, 1, (6, 7), OpKind::StaleGet(found(10))),
            op(2, 2, (8, 9), OpKind::StaleGet(ReadOutcome::NotFound)),
        ];
        let violations = check_all(&ops, 1, &[final_state(2, 20)]).1;
        let details: Vec<&str> = violations.iter().map(|v| v.detail.as_str()).collect();
        assert_eq!(violations.len(), 2, "{details:?}");
        assert!(details[0].contains("within one process"), "{details:?}");
        assert!(details[1].contains("across a restart"), "{details:?}");
    }

    #[test]
    fn overlapping_stale_reads_may_see_either_version() {
        let ops = vec![
            put(10, PutOutcome::Stored, (0, 1)),
            put(20, PutOutcome::Unknown("timeout".into()), (2, 30)),
            op(2, 1, (4, 9), OpKind::Dns(found(20))),
            op(2, 1, (5, 8), OpKind::StaleGet(found(10))),
        ];
        assert!(checks(&ops, &[final_state(2, 20)]).is_empty());
    }

    #[test]
    fn reads_of_refused_unproposed_or_altered_packets_are_reported() {
        let ops = vec![
            put(20, PutOutcome::Stored, (0, 1)),
            put(10, PutOutcome::Conflict, (2, 3)),
            op(2, 1, (4, 5), OpKind::Dns(found(10))),
            op(2, 1, (4, 5), OpKind::StaleGet(found(99))),
            op(
                3,
                1,
                (4, 5),
                OpKind::StaleGet(ReadOutcome::Found {
                    version: 20,
                    matches_proposed: false,
                }),
            ),
            put(30, PutOutcome::Stored, (10, 11)),
            op(3, 1, (6, 7), OpKind::StaleGet(found(30))),
        ];
        let found: Vec<&str> = checks(&ops, &[final_state(2, 30), final_state(3, 30)])
            .into_iter()
            .filter(|c| *c == "proposals")
            .collect();
        assert_eq!(found.len(), 4);
    }

    #[test]
    fn a_lost_acknowledged_put_and_diverged_nodes_are_reported() {
        let ops = vec![
            put(10, PutOutcome::Stored, (0, 1)),
            put(20, PutOutcome::Stored, (2, 3)),
        ];
        let found = checks(&ops, &[final_state(1, 20), final_state(2, 10)]);
        assert_eq!(found, ["durability", "convergence"]);
    }

    #[test]
    fn a_version_once_read_must_survive_and_finals_must_be_proposed_packets() {
        let ops = vec![
            put(10, PutOutcome::Stored, (0, 1)),
            put(20, PutOutcome::Unknown("timeout".into()), (2, 9)),
            op(2, 1, (4, 5), OpKind::StaleGet(found(20))),
        ];
        // Version 20 was read, so it was committed: ending at 10 loses it.
        assert_eq!(checks(&ops, &[final_state(1, 10)]), ["durability"]);
        // Ending at a version nobody proposed.
        assert_eq!(checks(&ops, &[final_state(1, 25)]), ["proposals"]);
        let mut altered = final_state(1, 20);
        if let Some(Some(packet)) = altered.packets.first_mut() {
            packet.matches_proposed = false;
        }
        assert_eq!(checks(&ops, &[altered]), ["proposals"]);
        assert!(checks(&ops, &[final_state(1, 20)]).is_empty());
    }

    #[test]
    fn an_answer_outside_the_contract_is_reported() {
        let ops = vec![put(10, PutOutcome::Unexpected("500".into()), (0, 1))];
        assert_eq!(checks(&ops, &[]), ["contract"]);
    }
}
