//! When this node builds a snapshot. openraft's own policy (`SnapshotPolicy::LogsSinceLast`) is
//! turned off, and this task triggers the builds instead.
//!
//! Why: a build reads the whole state and writes it out (about 6 GB at 10M records, tens of
//! seconds of disk), while openraft's policy counts only log entries. With the fixed 10,000
//! entries a node at 10M records under load started the next build about as soon as the last
//! one ended, and served PUT, GET and DNS at half the rate of a small node (docs/BENCHMARKS.md,
//! "Scale"). So a build starts once `raft.snapshot_after_entries` entries have been applied
//! since the last snapshot, *and* at least [`BUILD_PAUSE_FACTOR`] times the last build's
//! duration has passed since it ended: builds take at most a tenth of the node's time, whatever
//! the size of the state. The log grows in between (at most the writes of that pause), which is
//! what the snapshot is for bounding; a small state builds in milliseconds, so there the count
//! alone decides, as before.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{Raft, RaftMetrics};
use tokio::time::Instant;

use crate::disk_space::DiskSpace;
use crate::{NodeId, TypeConfig};

/// The pause after a build, as a multiple of its duration: builds take at most
/// 1 / (1 + `BUILD_PAUSE_FACTOR`) of the time.
pub const BUILD_PAUSE_FACTOR: u32 = 9;
/// The longest pause, whatever the last build took: one build slowed down by a busy disk must
/// not let the log grow for hours.
const BUILD_PAUSE_MAX: Duration = Duration::from_secs(600);
/// A trigger is sent again if no build has ended and the snapshot has not moved this long
/// after it (a build that fails stops Raft, so this only guards against a trigger openraft
/// did not act on). Sending one during a build is harmless: openraft ignores it.
const TRIGGER_RETRY: Duration = Duration::from_secs(60);
/// How often a build that is due but has no room on the disk (`disk_space`) looks again.
const NO_ROOM_RETRY: Duration = Duration::from_secs(5);

/// The last build's timing, written by the state machine when a build ends.
#[derive(Debug, Default)]
pub struct BuildTimes {
    last: Mutex<Option<Build>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Build {
    /// Builds ended so far (so the schedule can tell a new one from the last).
    pub(crate) count: u64,
    pub(crate) ended: Instant,
    pub(crate) took: Duration,
}

impl BuildTimes {
    /// Records a build that took `took` and has just ended.
    pub(crate) fn ended(&self, took: Duration) {
        if let Ok(mut last) = self.last.lock() {
            let count = last.map_or(0, |build| build.count) + 1;
            *last = Some(Build {
                count,
                ended: Instant::now(),
                took,
            });
        }
    }

    fn last(&self) -> Option<Build> {
        self.last.lock().ok().and_then(|last| *last)
    }
}

/// What the schedule does next.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Build,
    /// Not before this instant (the pause after the last build), if entries are still due then.
    WaitUntil(Instant),
    /// Until more entries are applied.
    WaitForEntries,
}

fn next(since_snapshot: u64, after_entries: u64, last: Option<Build>, now: Instant) -> Next {
    if since_snapshot < after_entries.max(1) {
        return Next::WaitForEntries;
    }
    if let Some(build) = last {
        let pause = build
            .took
            .saturating_mul(BUILD_PAUSE_FACTOR)
            .min(BUILD_PAUSE_MAX);
        let ready = build.ended + pause;
        if now < ready {
            return Next::WaitUntil(ready);
        }
    }
    Next::Build
}

/// Entries applied since the current snapshot, and the snapshot's index.
fn entries_since_snapshot(
    metrics: &RaftMetrics<NodeId, openraft::BasicNode>,
) -> (u64, Option<u64>) {
    let snapshot = metrics.snapshot.map(|log_id| log_id.index);
    let applied_end = metrics.last_applied.map_or(0, |log_id| log_id.index + 1);
    let snapshot_end = snapshot.map_or(0, |index| index + 1);
    (applied_end.saturating_sub(snapshot_end), snapshot)
}

/// A trigger sent and not yet answered by a build or by a new snapshot.
struct Pending {
    builds_before: Option<u64>,
    snapshot_before: Option<u64>,
    sent: Instant,
}

/// Bytes of the snapshot files in `dir`: about what the next build writes, before the last
/// snapshot is removed.
fn snapshot_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|entry| entry.ok()?.metadata().ok())
        .filter(|metadata| metadata.is_file())
        .map(|metadata| metadata.len())
        .sum()
}

/// What the schedule watches and asks.
pub(crate) struct Schedule {
    pub(crate) raft: Raft<TypeConfig>,
    /// When the last builds ended (the state machine records them).
    pub(crate) build_times: Arc<BuildTimes>,
    /// `raft.snapshot_after_entries`.
    pub(crate) after_entries: u64,
    pub(crate) disk_space: Arc<DiskSpace>,
    pub(crate) snapshot_dir: PathBuf,
}

/// Runs until Raft stops.
pub(crate) async fn run(schedule: Arc<Schedule>) {
    let Schedule {
        raft,
        build_times: builds,
        after_entries,
        disk_space: disk,
        snapshot_dir,
    } = &*schedule;
    let after_entries = *after_entries;
    let mut metrics = raft.metrics();
    let mut pending: Option<Pending> = None;
    // While a due build has no room on the disk: when to look again. The metrics change about
    // every heartbeat; the disk is not measured, nor the refusal logged, that often.
    let mut no_room_until: Option<Instant> = None;
    loop {
        let (since, snapshot, stopped) = {
            let current = metrics.borrow_and_update();
            let (since, snapshot) = entries_since_snapshot(&current);
            (since, snapshot, current.running_state.is_err())
        };
        if stopped {
            return;
        }
        let last = builds.last();
        let now = Instant::now();
        let wake = match &pending {
            Some(p)
                if last.map(|b| b.count) == p.builds_before
                    && snapshot == p.snapshot_before
                    && now < p.sent + TRIGGER_RETRY =>
            {
                Some(p.sent + TRIGGER_RETRY)
            }
            _ => match next(since, after_entries, last, now) {
                Next::Build if no_room_until.is_some_and(|until| now < until) => no_room_until,
                // A build that fails for lack of space stops Raft; the log grows meanwhile,
                // until the writes that grow it are refused below the reserve.
                Next::Build if !disk.has_room_for_build(snapshot_bytes(snapshot_dir)) => {
                    if no_room_until.is_none() {
                        tracing::warn!(
                            "a snapshot build is due, but the disk has no room for it \
                             (raft.min_free_disk_mib); waiting for space"
                        );
                    }
                    no_room_until = Some(now + NO_ROOM_RETRY);
                    no_room_until
                }
                Next::Build => {
                    if no_room_until.take().is_some() {
                        tracing::info!("the disk has room for the due snapshot build again");
                    }
                    if raft.trigger().snapshot().await.is_err() {
                        return;
                    }
                    pending = Some(Pending {
                        builds_before: last.map(|b| b.count),
                        snapshot_before: snapshot,
                        sent: now,
                    });
                    Some(now + TRIGGER_RETRY)
                }
                Next::WaitUntil(at) => Some(at),
                Next::WaitForEntries => None,
            },
        };
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            () = sleep => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(ended: Instant, took_ms: u64) -> Option<Build> {
        Some(Build {
            count: 1,
            ended,
            took: Duration::from_millis(took_ms),
        })
    }

    #[test]
    fn the_first_build_starts_once_enough_entries_are_applied() {
        let now = Instant::now();
        assert_eq!(next(9, 10, None, now), Next::WaitForEntries);
        assert_eq!(next(10, 10, None, now), Next::Build);
    }

    #[test]
    fn a_build_waits_out_nine_times_the_last_builds_duration() {
        let ended = Instant::now();
        let last = build(ended, 1_000);
        assert_eq!(
            next(10, 10, last, ended + Duration::from_secs(8)),
            Next::WaitUntil(ended + Duration::from_secs(9))
        );
        assert_eq!(
            next(10, 10, last, ended + Duration::from_secs(9)),
            Next::Build
        );
        // Entries decide first: no wake-up is scheduled for a log that has not grown enough.
        assert_eq!(
            next(3, 10, last, ended + Duration::from_secs(1)),
            Next::WaitForEntries
        );
    }

    #[test]
    fn the_pause_is_at_most_ten_minutes() {
        let ended = Instant::now();
        let slow = build(ended, 3_600_000);
        assert_eq!(
            next(10, 10, slow, ended),
            Next::WaitUntil(ended + BUILD_PAUSE_MAX)
        );
        assert_eq!(next(10, 10, slow, ended + BUILD_PAUSE_MAX), Next::Build);
    }

    #[test]
    fn zero_entries_still_needs_one() {
        assert_eq!(next(0, 0, None, Instant::now()), Next::WaitForEntries);
        assert_eq!(next(1, 0, None, Instant::now()), Next::Build);
    }
}
