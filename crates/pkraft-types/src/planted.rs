//! Bugs this project had and fixed, put back on purpose, one at a time, to show that the
//! simulated cluster finds them (docs/SIMULATION.md, "Planted bugs"; `make sim-planted`).
//!
//! Only a build with the feature `planted-bugs` (pkraft-sim's feature of the same name) can
//! plant one. In every other build [`is_planted`] is a constant `false`, and the compiler drops
//! the branch it guards. A build with the feature (`--all-features` makes one) compiles the
//! switch in but leaves it off: only pkraft-sim's tests call [`plant`] (a code_shape test holds
//! both), so the daemon never runs a planted bug.

/// A bug that can be planted, each where its fix is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PlantedBug {
    /// A forwarded publish whose first answer was lost, and which its retry finds stale, is
    /// answered 409 ("not stored"), although the lost attempt may have committed it before a
    /// newer packet was stored (found by the chaos harness; fixed in e3107e8 and 7341c59:
    /// its outcome is unknown, 503). Planted in pkraft-raft's `unknown_if_stale`.
    RetriedForwardAnswered409 = 1,
    /// The leader expires packets older than `raft.record_max_age` by its own wall clock,
    /// whatever the other voters' clocks say: a leader stepped ahead deletes what the cluster
    /// acknowledged (fixed in 61c7be0: expiry goes by cluster time, and a leader whose clock is
    /// off the voters' expires nothing; the chaos harness's clock faults, added in 4e56f2f,
    /// found 64 violations against the old expiry). Planted in pkraft-raft's `expire_now`.
    ExpiryByOwnWallClock = 2,
    /// The Raft log reports an append done once it is written, before its `fdatasync` and
    /// before the synced mark's: what it acknowledged is still in the page cache, and a power
    /// cut loses it (the log's rule, in `segments.rs`: an append is reported done only after
    /// both syncs; the chaos harness's lossy disk tests it). Planted in pkraft-raft-storage's
    /// `AppendTarget::write_and_sync` and `MarkFile::write`, which then sync nothing.
    AppendDoneBeforeFsync = 3,
    /// At open, a record of the last segment whose length field says it runs past the end of
    /// the file is taken for a torn tail and cut, with every record after it, whatever follows
    /// and whatever the synced mark says: a bit of damage to one length field silently drops
    /// acknowledged entries (what the log's format 1 did: its records had no header checksum
    /// and no index; fixed in 5e51cba, format 2, which tells damage from a tear, and e460353,
    /// the synced mark, which says which appends were reported done). Planted in
    /// pkraft-raft-storage's `BadRecord::damage` (`scan.rs`), and in `Segments::open`, which
    /// then does not check the log's end against the synced mark.
    EnlargedLengthReadAsTornTail = 4,
    /// A leader that kept its leadership across a restart takes the read index of a
    /// linearizable read as at least the last entry its log held at start, while it leads in
    /// that entry's term; the bug reads the term after the leadership check instead of before
    /// it, so a leader that lost its leadership during the check drops the floor and answers
    /// at its commit index on disk, below a write acknowledged before the restart (found by
    /// the simulator, seed 57 of `make sim-ci`, 2026-12-01). Planted in pkraft-raft's
    /// `read_index_as_leader`.
    ReadFloorByTermAfterTheCheck = 5,
}

impl PlantedBug {
    /// Every bug that can be planted.
    pub const ALL: [PlantedBug; 5] = [
        PlantedBug::RetriedForwardAnswered409,
        PlantedBug::ExpiryByOwnWallClock,
        PlantedBug::AppendDoneBeforeFsync,
        PlantedBug::EnlargedLengthReadAsTornTail,
        PlantedBug::ReadFloorByTermAfterTheCheck,
    ];
}

#[cfg(feature = "planted-bugs")]
static PLANTED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Plants `bug` for the whole process (`None`: none), in place of the one planted before.
#[cfg(feature = "planted-bugs")]
pub fn plant(bug: Option<PlantedBug>) {
    PLANTED.store(
        bug.map_or(0, |bug| bug as u8),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// Whether `bug` is planted: always `false` without the feature `planted-bugs`.
#[inline(always)]
pub fn is_planted(bug: PlantedBug) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        PLANTED.load(std::sync::atomic::Ordering::Relaxed) == bug as u8
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = bug;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(feature = "planted-bugs"))]
    #[test]
    fn without_the_feature_no_bug_is_planted() {
        assert!(PlantedBug::ALL.iter().all(|&bug| !is_planted(bug)));
    }

    #[cfg(feature = "planted-bugs")]
    #[test]
    fn a_planted_bug_is_the_only_one_planted_until_taken_out() {
        for &bug in &PlantedBug::ALL {
            plant(Some(bug));
            assert!(is_planted(bug));
            plant(None);
            assert!(!is_planted(bug));
        }
    }
}
