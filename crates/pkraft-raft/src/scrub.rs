//! The background scrub (`raft.scrub_packets_per_second`, `raft.scrub_log_mib_per_second`):
//! reads the Raft log back and re-verifies every stored packet, over and over at a bounded rate,
//! so that damage on disk is found while the other nodes' copies are whole, not when a restart,
//! a read or a follower needs the bytes (docs/CONSISTENCY.md, "Damaged disks").
//!
//! What it does with damage:
//! - a node with another voter records it and stops (the daemon exits non-zero, its supervisor
//!   restarts it), and its next start repairs from the cluster. For the log, the loss is recorded
//!   as a repair in `meta.redb` first (with the exact range; the open would find it too); for
//!   the state, `state-damaged` is left in the data dir
//!   (`state_repair`);
//! - for a damaged packet it first asks the other voters for their copy (peer route
//!   `packet-check`). If every one stores the same bytes, the cluster stores the packet so (a
//!   verification rule that changed between builds, or a snapshot that carried one disk's
//!   damage to the others): not damage on this disk, and nothing stops.
//!   If one holds other, whole bytes, the damage is this disk's, and a leader stops too, after
//!   handing its leadership over (the daemon's stop does). Otherwise the leader records the
//!   damage for its next start and goes on: with the others silent it is the one they would
//!   repair from;
//! - the only voter has no other copy: it reports the damage (log at ERROR, metric) and goes on
//!   serving the rest, since stopping would only add an outage. Its operator takes a backup
//!   while the state is readable (docs/OPERATIONS.md, "Repair").
//!
//! A packet that does not verify is not served from the moment it is found
//! (`Store::quarantine`: GET 503, DNS REFUSED for that key), whatever the other copies hold,
//! until the key is written again or the node restarts.
//!
//! A packet the other voters could not vouch for may still be one the whole cluster stores so:
//! if the same bytes come back after a rebuild from the cluster (`scrub-rebuilt` lists what
//! such rebuilds were for), the scrub says so and goes on, instead of stopping the node again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use pkraft_state::{AnswersProblem, DamagedPacket, PacketCheck, StaleAnswers};
use pkraft_types::KeyBytes;
use tokio::time::Instant;

use pkraft_raft_storage::log_store::Damage;
use pkraft_raft_storage::state_repair;

use crate::leadership::Leadership;
use crate::metrics::Damaged;
use crate::node_core::Core;
use crate::peer::{CallError, PacketCopy, path};
use crate::settings::Settings;

/// The node's background scrub: the two sweeps, and its side of another node's (`packet-check`).
pub(crate) struct Scrub {
    /// The node's handles and fixed settings (`node_core`).
    pub(crate) core: Arc<Core>,
    leadership: Arc<Leadership>,
}

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
pub(crate) async fn run(scrub: Arc<Scrub>, rates: ScrubRates) {
    tokio::join!(
        sweep_log(&scrub, rates.log_bytes_per_second),
        sweep_state(&scrub, rates.packets_per_second)
    );
}

async fn sweep_log(scrub: &Scrub, bytes_per_second: u64) {
    if bytes_per_second == 0 {
        return;
    }
    let mut next = 0;
    loop {
        let started = Instant::now();
        let log = scrub.core.log_store.clone();
        let step = pkraft_tasks::blocking(move || log.scrub(next, LOG_STEP_BYTES)).await;
        match step {
            Ok(Ok(Some((after, bytes)))) => {
                next = after;
                pace(started, bytes, bytes_per_second).await;
            }
            Ok(Ok(None)) => {
                next = 0;
                scrub
                    .core
                    .metrics
                    .scrub_passes
                    .with_label_values(&["log"])
                    .inc();
                tokio::time::sleep(PASS_PAUSE).await;
            }
            Ok(Err(error)) => match Damage::of(&error) {
                Some(damage) => {
                    log_damaged(scrub, damage);
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

fn log_damaged(scrub: &Scrub, damage: &Damage) {
    scrub.core.metrics.damage_found(Damaged::Log);
    if crate::voters::has_others(&scrub.core.raft, scrub.core.id) {
        // Before it stops, with the range it knows: the open finds the damage again (the synced
        // mark covers the last append), but a record written now cannot be missed.
        if let Err(error) = scrub.core.log_store.record_found_damage(damage) {
            tracing::error!(
                %error,
                "the scrub found: {damage}, and could not record it; this node goes on (its \
                 next start reads the log and finds the damage)"
            );
            return;
        }
        tracing::error!(
            "the scrub found: {damage}. This node stops; its next start sets the damaged records \
             aside and takes them from the leader again"
        );
        scrub.stop_for(format!(
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

async fn sweep_state(scrub: &Scrub, packets_per_second: u64) {
    if packets_per_second == 0 {
        return;
    }
    let mut after: Option<KeyBytes> = None;
    // What was found and reported already: a node that goes on after a finding (the only voter,
    // the leader) says it once.
    let mut reported: BTreeSet<String> = BTreeSet::new();
    // Findings the other voters could not yet tell about, with the passes asked so far.
    let mut undecided: BTreeMap<String, u32> = BTreeMap::new();
    loop {
        let started = Instant::now();
        let store = scrub.core.store.clone();
        let from = after;
        let step =
            pkraft_tasks::blocking(move || store.scrub_packets(from.as_ref(), STATE_STEP_PACKETS))
                .await;
        let page = match step {
            Ok(Ok(page)) => page,
            Ok(Err(error)) if error.is_damage() => {
                // The table itself (a page redb cannot read): no key to skip past.
                state_damaged(
                    scrub,
                    &format!("reading the packets: {error}"),
                    OtherCopies::Unknown,
                );
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
        if !page.stale_answers.is_empty() {
            recompile_stale_answers(scrub, &page.stale_answers).await;
        }
        if let Some(damaged) = &page.damaged {
            let finding = finding_of(damaged);
            if !reported.contains(&finding)
                && act_on_damaged_packet(scrub, damaged, &finding, &mut undecided).await
                    == Finding::Decided(Stopping::Yes)
            {
                return;
            }
            if !undecided.contains_key(&finding) && reported.len() < REPORTED_MAX {
                reported.insert(finding);
            }
        }
        after = page.last_key;
        let packets = page.packets as u64;
        if after.is_none() {
            scrub
                .core
                .metrics
                .scrub_passes
                .with_label_values(&["state"])
                .inc();
            tokio::time::sleep(PASS_PAUSE).await;
        } else {
            pace(started, packets, packets_per_second).await;
        }
    }
}

/// Rows of the compiled DNS answers that do not match their packets: named, counted, and
/// written again from the packets, which the same page verified (or removed, for a row with no
/// packet). They are derived from this node's own packets, so no other copy is needed and
/// nothing stops. Until then the DNS frontend answers a damaged row's key from its packet,
/// but would serve a whole, stale row as it is.
async fn recompile_stale_answers(scrub: &Scrub, stale: &[StaleAnswers]) {
    for found in stale {
        scrub.core.metrics.damage_found(Damaged::Answers);
        let action = match found.problem {
            AnswersProblem::WithoutPacket => "removing it",
            _ => "compiling it again from the stored packet",
        };
        tracing::warn!("the scrub found {found}; {action}");
    }
    let keys: Vec<KeyBytes> = stale.iter().map(|found| found.key).collect();
    let store = scrub.core.store.clone();
    let rewritten = pkraft_tasks::blocking(move || store.recompile_answers(&keys)).await;
    match rewritten {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(
            %error,
            "the scrub could not write the compiled DNS answers again; the next pass tries again"
        ),
        Err(error) => tracing::warn!(
            %error,
            "writing the compiled DNS answers again failed; the next pass tries again"
        ),
    }
}

/// Passes over which a finding the other voters cannot tell about (a voter silent, or one of
/// an older build without `packet-check`) is asked again before the node acts as it would
/// without them.
const UNDECIDED_PASSES: u32 = 3;

/// What became of a finding: acted on, or left to ask the other voters again at the next pass.
#[derive(Debug, PartialEq, Eq)]
enum Finding {
    Decided(Stopping),
    AskAgain,
}

/// A packet the scrub found not to verify: not served from now on, then compared with the
/// other voters' copies, and acted on (`state_damaged`) unless every voter stores the same
/// bytes. While they cannot tell, it is asked again at the next passes (`undecided`).
async fn act_on_damaged_packet(
    scrub: &Scrub,
    damaged: &DamagedPacket,
    finding: &str,
    undecided: &mut BTreeMap<String, u32>,
) -> Finding {
    // Never served from here on, whatever the cause: bytes that do not verify are not passed
    // on, even when every copy holds them.
    if !scrub.core.store.quarantine(&damaged.key) {
        tracing::warn!(
            max = pkraft_state::QUARANTINE_MAX,
            "too many damaged packets to refuse each; this one is still served"
        );
    }
    if state_repair::rebuilt_for(&scrub.core.data_dir, finding) {
        tracing::warn!(
            "the scrub found {damaged}, the same bytes as before a rebuild of the state from the \
             cluster: the cluster stores this packet so, not damage on this disk; it is not \
             served until its owner publishes it again"
        );
        return Finding::Decided(Stopping::No);
    }
    if !crate::voters::has_others(&scrub.core.raft, scrub.core.id) {
        return Finding::Decided(state_damaged(scrub, finding, OtherCopies::Unknown));
    }
    let copies = other_copies(scrub, damaged).await;
    // Written again while the others were asked (a publish): the damaged row is gone.
    let here = scrub.packet_copy(damaged.key).await;
    if here
        != (PacketCopy::Damaged {
            value_crc: damaged.value_crc,
        })
    {
        scrub.core.store.release_quarantine(&damaged.key);
        undecided.remove(finding);
        return Finding::Decided(Stopping::No);
    }
    if copies == OtherCopies::Unknown {
        // Bounded like `reported`: past it, a finding is acted on at once.
        let room = undecided.len() < REPORTED_MAX || undecided.contains_key(finding);
        let passes = {
            let passes = undecided.entry(finding.to_string()).or_insert(0);
            *passes += 1;
            *passes
        };
        if passes < UNDECIDED_PASSES && room {
            tracing::warn!(
                "the scrub found {damaged}; the other voters could not tell whether they hold \
                 it whole (pass {passes} of {UNDECIDED_PASSES}): asking again at the next pass; \
                 it is not served meanwhile"
            );
            return Finding::AskAgain;
        }
    }
    undecided.remove(finding);
    if copies == OtherCopies::SameBytesEverywhere {
        tracing::warn!(
            "the scrub found {damaged}; every other voter stores the same bytes: the cluster \
             stores this packet so, not damage on this disk; it is not served until its owner \
             publishes it again"
        );
        return Finding::Decided(Stopping::No);
    }
    Finding::Decided(state_damaged(scrub, finding, copies))
}

/// The line a finding is recorded and recognised by.
fn finding_of(damaged: &DamagedPacket) -> String {
    damaged.to_string()
}

/// What the other voters store for a packet this node's scrub found damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OtherCopies {
    /// Some voter holds other bytes that verify: the damage is this disk's. Whether every
    /// other voter answered: only then does the leader stop (the cluster is whole to hand over
    /// to and to repair from).
    WholeElsewhere { every_voter_answered: bool },
    /// Every other voter answered, each with the same bytes as here: the cluster stores the
    /// packet so (a verification rule that changed between builds), not damage on this disk.
    SameBytesEverywhere,
    /// Neither is known (a voter did not answer, holds no packet for the key, or holds other
    /// bytes that do not verify either).
    Unknown,
}

/// How long each other voter has to answer [`other_copies`].
const COPY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks every other voter, in parallel, for its copy of the damaged packet (peer route
/// `packet-check`) and sums up the answers.
async fn other_copies(scrub: &Scrub, damaged: &DamagedPacket) -> OtherCopies {
    let voters = crate::voters::others(&scrub.core.raft, scrub.core.id);
    if voters.is_empty() {
        return OtherCopies::Unknown;
    }
    let mut asks = tokio::task::JoinSet::new();
    for (id, addr) in &voters {
        let (peers, id, addr, key) = (scrub.core.peers.clone(), *id, addr.clone(), damaged.key);
        asks.spawn(async move {
            peers
                .call::<KeyBytes, PacketCopy>(
                    &addr,
                    Some(id),
                    path::PACKET_CHECK,
                    &key,
                    COPY_CHECK_TIMEOUT,
                )
                .await
        });
    }
    let answers: Vec<Result<PacketCopy, CallError>> = asks.join_all().await.into_iter().collect();
    sum_up(damaged.value_crc, &answers)
}

/// [`OtherCopies`] from the other voters' answers about a packet stored here as `value_crc`
/// (a voter that did not answer counts as not known).
fn sum_up(value_crc: u32, answers: &[Result<PacketCopy, CallError>]) -> OtherCopies {
    let whole_elsewhere = answers.iter().any(|answer| {
        matches!(answer, Ok(PacketCopy::Whole { value_crc: other }) if *other != value_crc)
    });
    if whole_elsewhere {
        return OtherCopies::WholeElsewhere {
            every_voter_answered: answers.iter().all(Result::is_ok),
        };
    }
    let same_everywhere = !answers.is_empty() && answers.iter().all(|answer| {
        matches!(
            answer,
            Ok(PacketCopy::Whole { value_crc: other } | PacketCopy::Damaged { value_crc: other })
                if *other == value_crc
        )
    });
    if same_everywhere {
        OtherCopies::SameBytesEverywhere
    } else {
        OtherCopies::Unknown
    }
}

/// Whether a finding stops the node.
#[derive(Debug, PartialEq, Eq)]
enum Stopping {
    Yes,
    No,
}

/// Reports damage the scrub found in the state (`copies`: what the other voters hold). A node
/// with other voters records it for its next start, which rebuilds the state from the cluster,
/// and stops, a leader after handing its leadership over (the daemon's stop does). The leader
/// stops only when another voter holds whole bytes: a finding shared by every node (a packet
/// the cluster stores so) must not stop them all, and with the others silent it is the one
/// they would repair from. The only voter reports it and goes on.
fn state_damaged(scrub: &Scrub, finding: &str, copies: OtherCopies) -> Stopping {
    scrub.core.metrics.damage_found(Damaged::State);
    if !crate::voters::has_others(&scrub.core.raft, scrub.core.id) {
        tracing::error!(
            "the scrub found the state damaged: {finding}. This node is the only voter: it has \
             no other copy to rebuild it from. Restore that key's packet from a backup, or have \
             its owner publish it again (docs/OPERATIONS.md, \"Repair\")"
        );
        return Stopping::No;
    }
    if let Err(error) = state_repair::mark_damaged(&scrub.core.data_dir, finding) {
        // Without the mark the next start would not know: stopping would only be an outage.
        tracing::error!(
            %error,
            "the scrub found the state damaged: {finding}, and could not record it; this \
             node goes on"
        );
        return Stopping::No;
    }
    let cluster_whole = copies
        == OtherCopies::WholeElsewhere {
            every_voter_answered: true,
        };
    if scrub.leadership.is_leader() && !cluster_whole {
        tracing::error!(
            "the scrub found the state damaged: {finding}. This node leads, and not every other \
             voter answered with whole bytes: it goes on, and its next start rebuilds the state \
             from the cluster (restart it once another node leads, or hand its leadership over \
             with a restart)"
        );
        return Stopping::No;
    }
    let how = if scrub.leadership.is_leader() {
        "Another voter holds whole bytes: this node hands its leadership over and stops"
    } else {
        "This node stops"
    };
    tracing::error!(
        "the scrub found the state damaged: {finding}. {how}; its next start rebuilds the \
         state from the cluster"
    );
    scrub.stop_for(format!(
        "the scrub found the state damaged ({finding}); a restart rebuilds it from the cluster"
    ));
    Stopping::Yes
}

impl Scrub {
    /// A finding is recorded in the core's data dir; a stop asked through its stop signal.
    pub(crate) fn new(core: &Arc<Core>, leadership: Arc<Leadership>) -> Scrub {
        Scrub {
            core: core.clone(),
            leadership,
        }
    }

    /// Asks the daemon to stop this node for `reason` (`Node::wait_fatal`): damage the next
    /// start repairs.
    fn stop_for(&self, reason: String) {
        self.core.stop_reason.send_replace(Some(reason));
    }

    /// This node's copy of `key`'s packet, checked as the scrub checks it, for another node's
    /// scrub (peer route `packet-check`).
    pub(crate) async fn packet_copy(&self, key: KeyBytes) -> PacketCopy {
        let store = self.core.store.clone();
        match pkraft_tasks::blocking(move || store.check_packet(&key)).await {
            Ok(Ok(PacketCheck::Absent)) => PacketCopy::Absent,
            Ok(Ok(PacketCheck::Whole { value_crc })) => PacketCopy::Whole { value_crc },
            Ok(Ok(PacketCheck::Damaged { value_crc })) => PacketCopy::Damaged { value_crc },
            Ok(Err(error)) => {
                tracing::warn!(%error, "a peer asked for a packet this node cannot read");
                PacketCopy::Unreadable
            }
            Err(error) => {
                tracing::warn!(%error, "checking a packet for a peer failed");
                PacketCopy::Unreadable
            }
        }
    }
}

/// Sleeps so that `done` units since `started` take at least `done / per_second` seconds.
async fn pace(started: Instant, done: u64, per_second: u64) {
    let budget = Duration::from_secs_f64(done as f64 / per_second.max(1) as f64);
    if let Some(rest) = budget.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERE: u32 = 0xdead_beef;

    /// A voter that did not answer.
    fn silent() -> Result<PacketCopy, CallError> {
        Err(CallError::Timeout {
            addr: "127.0.0.1:1".to_string(),
            timeout: Duration::from_secs(1),
        })
    }

    #[test]
    fn other_whole_bytes_anywhere_make_the_damage_this_disks() {
        let answers = [
            silent(),
            Ok(PacketCopy::Damaged { value_crc: HERE }),
            Ok(PacketCopy::Whole { value_crc: 7 }),
        ];
        assert_eq!(
            sum_up(HERE, &answers),
            OtherCopies::WholeElsewhere {
                every_voter_answered: false
            }
        );
        let all = [
            Ok(PacketCopy::Whole { value_crc: 7 }),
            Ok(PacketCopy::Absent),
        ];
        assert_eq!(
            sum_up(HERE, &all),
            OtherCopies::WholeElsewhere {
                every_voter_answered: true
            }
        );
    }

    #[test]
    fn the_same_bytes_on_every_other_voter_are_the_clusters_copy() {
        let answers = [
            Ok(PacketCopy::Damaged { value_crc: HERE }),
            // A build that still accepts them: the same bytes, not a whole copy elsewhere.
            Ok(PacketCopy::Whole { value_crc: HERE }),
        ];
        assert_eq!(sum_up(HERE, &answers), OtherCopies::SameBytesEverywhere);
    }

    #[test]
    fn anything_less_is_unknown() {
        for other in [
            silent(),
            Ok(PacketCopy::Absent),
            Ok(PacketCopy::Unreadable),
            Ok(PacketCopy::Damaged { value_crc: 7 }),
        ] {
            let what = format!("{other:?}");
            let answers = [Ok(PacketCopy::Damaged { value_crc: HERE }), other];
            assert_eq!(sum_up(HERE, &answers), OtherCopies::Unknown, "{what}");
        }
        assert_eq!(sum_up(HERE, &[]), OtherCopies::Unknown);
    }
}
