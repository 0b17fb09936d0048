//! The background scrub (`raft.scrub_packets_per_second`, `raft.scrub_log_mib_per_second`):
//! reads the Raft log back and re-verifies every stored packet, over and over at a bounded rate,
//! so that damage on disk is found while the other nodes' copies are whole, not when a restart,
//! a read or a follower needs the bytes (docs/CONSISTENCY.md, "Damaged disks").
//!
//! What it does with damage:
//! - a node with another voter records it and stops (the daemon exits non-zero, its supervisor
//!   restarts it), and its next start repairs from the cluster. For the log, the loss is recorded
//!   as a repair in `meta.redb` first (damage in the last append would otherwise be cut at the
//!   open as a torn write); for the state, `state-damaged` is left in the data dir
//!   (`state_repair`). The leader records damage in its state and goes on: a packet every node
//!   stores so must not stop them all, and the followers that stop repair from it;
//! - the only voter has no other copy: it reports the damage (log at ERROR, metric) and goes on
//!   serving the rest, since stopping would only add an outage. Its operator takes a backup
//!   while the state is readable (docs/OPERATIONS.md, "Repair").
//!
//! A damaged packet is not served from the moment it is found (`Store::quarantine`: GET 503,
//! DNS REFUSED for that key), until the key is written again or the node restarts.
//!
//! A packet that does not verify may also be one the whole cluster stores so (a verification
//! rule that changed between builds), not damage on this disk: if the same bytes come back after
//! a rebuild from the cluster (`scrub-rebuilt` lists what such rebuilds were for), the scrub says
//! so and goes on, instead of stopping the node again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pkraft_store::DamagedPacket;
use pkraft_types::KeyBytes;

use crate::log_store::Damage;
use crate::metrics::Damaged;
use crate::node::Node;
use crate::settings::Settings;
use crate::state_repair;

/// Bytes read back in one step of the log sweep (each step holds the log's read lock, which a
/// truncation waits for), and at least one record.
const LOG_STEP_BYTES: u64 = 1024 * 1024;
/// Packets verified in one step of the state sweep (one read transaction).
const STATE_STEP_PACKETS: usize = 64;
/// Findings a running node remembers having reported (more are reported again at each pass).
const REPORTED_MAX: usize = 1024;
/// Pause between two passes, so that a small store is not swept back to back.
const PASS_PAUSE: Duration = Duration::from_secs(10);
/// Wait after an error that is not damage (I/O, a panic in the blocking pool) before trying
/// again.
const RETRY_PAUSE: Duration = Duration::from_secs(5);

/// The rates of the two sweeps; 0 turns a sweep off.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScrubRates {
    pub(crate) packets_per_second: u64,
    pub(crate) log_bytes_per_second: u64,
}

impl ScrubRates {
    pub(crate) fn of(settings: &Settings) -> ScrubRates {
        ScrubRates {
            packets_per_second: settings.scrub_packets_per_second,
            log_bytes_per_second: settings
                .scrub_log_mib_per_second
                .saturating_mul(1024 * 1024),
        }
    }
}

/// Runs both sweeps until the node stops (or one finds damage that stops it).
pub(crate) async fn run(node: Arc<Node>, rates: ScrubRates) {
    tokio::join!(
        sweep_log(&node, rates.log_bytes_per_second),
        sweep_state(&node, rates.packets_per_second)
    );
}

async fn sweep_log(node: &Arc<Node>, bytes_per_second: u64) {
    if bytes_per_second == 0 {
        return;
    }
    let mut next = 0;
    loop {
        let started = Instant::now();
        let log = node.log_store.clone();
        let step = tokio::task::spawn_blocking(move || log.scrub(next, LOG_STEP_BYTES)).await;
        match step {
            Ok(Ok(Some((after, bytes)))) => {
                next = after;
                pace(started, bytes, bytes_per_second).await;
            }
            Ok(Ok(None)) => {
                next = 0;
                node.metrics.scrub_passes.with_label_values(&["log"]).inc();
                tokio::time::sleep(PASS_PAUSE).await;
            }
            Ok(Err(error)) => match Damage::of(&error) {
                Some(damage) => {
                    log_damaged(node, damage);
                    return;
                }
                None => {
                    tracing::warn!(%error, "the scrub could not read the Raft log; trying again");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            },
            Err(error) => {
                tracing::warn!(%error, "a step of the log scrub failed; trying again");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

fn log_damaged(node: &Node, damage: &Damage) {
    node.metrics.damage_found(Damaged::Log);
    if node.has_other_voters() {
        // Before it stops: damage in the last append would otherwise be cut at the next open as
        // a torn write, and the node would vote with the shorter log.
        if let Err(error) = node.log_store.record_found_damage(damage) {
            tracing::error!(
                %error,
                "the scrub found: {damage}, and could not record it; this node goes on (its \
                 next start reads the log and finds the damage, unless it is in the last append)"
            );
            return;
        }
        tracing::error!(
            "the scrub found: {damage}. This node stops; its next start sets the damaged records \
             aside and takes them from the leader again"
        );
        node.stop_for(format!(
            "the scrub found the Raft log damaged ({damage}); a restart repairs it from the cluster"
        ));
    } else {
        tracing::error!(
            "the scrub found: {damage}. This node is the only voter: it has no other copy of \
             these entries. It goes on serving its state, which holds them, but it will refuse \
             to start: take a backup now (`pkraft backup`) and restore it (docs/OPERATIONS.md, \
             \"Repair\")"
        );
    }
}

async fn sweep_state(node: &Arc<Node>, packets_per_second: u64) {
    if packets_per_second == 0 {
        return;
    }
    let mut after: Option<KeyBytes> = None;
    // What was found and reported already: a node that goes on after a finding (the only voter,
    // the leader) says it once.
    let mut reported: BTreeSet<String> = BTreeSet::new();
    loop {
        let started = Instant::now();
        let store = node.store.clone();
        let from = after;
        let step = tokio::task::spawn_blocking(move || {
            store.scrub_packets(from.as_ref(), STATE_STEP_PACKETS)
        })
        .await;
        let page = match step {
            Ok(Ok(page)) => page,
            Ok(Err(error)) if error.is_damage() => {
                // The table itself (a page redb cannot read): no key to skip past.
                state_damaged(node, &format!("reading the packets: {error}"));
                return;
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "the scrub could not read the state; trying again");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "a step of the state scrub failed; trying again");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        if let Some(damaged) = &page.damaged {
            let finding = finding_of(damaged);
            if !reported.contains(&finding) {
                if reported.len() < REPORTED_MAX {
                    reported.insert(finding.clone());
                }
                if state_repair::rebuilt_for(node.data_dir(), &finding) {
                    tracing::warn!(
                        "the scrub found {damaged}, the same bytes as before a rebuild of the \
                         state from the cluster: the cluster stores this packet so; not damage \
                         on this disk"
                    );
                } else {
                    // Not served from here on, whatever this node does next.
                    if !node.store.quarantine(&damaged.key) {
                        tracing::warn!(
                            max = pkraft_store::QUARANTINE_MAX,
                            "too many damaged packets to refuse each; this one is still served"
                        );
                    }
                    if state_damaged(node, &finding) == Stopping::Yes {
                        return;
                    }
                }
            }
        }
        after = page.last_key;
        let packets = page.packets as u64;
        if after.is_none() {
            node.metrics
                .scrub_passes
                .with_label_values(&["state"])
                .inc();
            tokio::time::sleep(PASS_PAUSE).await;
        } else {
            pace(started, packets, packets_per_second).await;
        }
    }
}

/// The line a finding is recorded and recognised by.
fn finding_of(damaged: &DamagedPacket) -> String {
    damaged.to_string()
}

/// Whether a finding stops the node.
#[derive(Debug, PartialEq, Eq)]
enum Stopping {
    Yes,
    No,
}

/// Reports damage the scrub found in the state; a follower with other voters records it and
/// stops (its restart rebuilds the state from the cluster). The leader records it for its next
/// start and goes on: a finding shared by every node (a packet the cluster stores so) must not
/// stop them all, and the followers that stop come back from the leader.
fn state_damaged(node: &Node, finding: &str) -> Stopping {
    node.metrics.damage_found(Damaged::State);
    if node.has_other_voters() {
        if let Err(error) = state_repair::mark_damaged(node.data_dir(), finding) {
            // Without the mark the next start would not know: stopping would only be an outage.
            tracing::error!(
                %error,
                "the scrub found the state damaged: {finding}, and could not record it; this \
                 node goes on"
            );
            return Stopping::No;
        }
        if node.is_leader() {
            tracing::error!(
                "the scrub found the state damaged: {finding}. This node leads: it goes on, and \
                 its next start rebuilds the state from the cluster (restart it once another \
                 node leads, or hand its leadership over with a restart)"
            );
            return Stopping::No;
        }
        tracing::error!(
            "the scrub found the state damaged: {finding}. This node stops; its next start \
             rebuilds the state from the cluster"
        );
        node.stop_for(format!(
            "the scrub found the state damaged ({finding}); a restart rebuilds it from the cluster"
        ));
        Stopping::Yes
    } else {
        tracing::error!(
            "the scrub found the state damaged: {finding}. This node is the only voter: it has \
             no other copy to rebuild it from. Restore that key's packet from a backup, or have \
             its owner publish it again (docs/OPERATIONS.md, \"Repair\")"
        );
        Stopping::No
    }
}

/// Sleeps so that `done` units since `started` take at least `done / per_second` seconds.
async fn pace(started: Instant, done: u64, per_second: u64) {
    let budget = Duration::from_secs_f64(done as f64 / per_second.max(1) as f64);
    if let Some(rest) = budget.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
}
