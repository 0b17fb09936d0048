//! Disk-full protection: while the file system of the data dir has less than
//! `raft.min_free_disk_mib` available, this node takes no writes, instead of running into ENOSPC.
//!
//! Why a reserve and not ENOSPC itself: a log append or a redb commit that fails stops Raft
//! (openraft treats every storage error as fatal) and the daemon exits, and a failed redb commit
//! leaves the file to be reopened. Refusing early keeps the node up, serving reads, and it takes
//! writes again by itself once space is freed. etcd does the same with its space quota.
//!
//! While space is low:
//! - a PUT on this node is answered 503 (`PublishError::Unavailable`), before anything is queued;
//! - as leader, the batcher refuses every batch, forwarded ones too (`disk_full`);
//! - as follower, `append-entries` carrying entries and `install-snapshot` are answered 503, which
//!   the leader takes as "unreachable" and retries after its back-off; heartbeats (no entries)
//!   are still taken, so the follower does not stand for election;
//! - a snapshot build starts only with room for the last snapshot's size plus a quarter of the
//!   reserve (`has_room_for_build`);
//! - a follower takes a snapshot only with room for its install besides the reserve
//!   (`install_refusal`): the received file, and the import, which writes every table anew
//!   beside the old ones (redb frees their pages only when the import commits). Short of it,
//!   the snapshot is refused like the entries (a 503 the leader retries), instead of an ENOSPC
//!   in the import, which stops the node, again at every restart and resend.
//!
//! Before that, below `raft.new_keys_min_free_disk_mib` (three times the reserve by default), the
//! node stores no new keys (`new_keys_refusal`; PUT 507, and the leader refuses them in its
//! batches), while republishes of keys it holds go on: a flood of new keys cannot take the room
//! the endpoints already stored need to republish (`store_cap` has the cap on their number).
//!
//! What was admitted before still lands (the reserve is there for it): entries already in the
//! log are applied, and an expiry or DHT entry the leader proposes is small.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::time::Instant;

/// How long a measurement is taken as current: a `statvfs` per request would cost a system call
/// each (a round trip on FUSE), and at 10,000 PUT/s a tenth of a second is ~1,000 PUTs, a few
/// hundred KiB of log.
const FRESH_FOR: Duration = Duration::from_millis(100);
/// How often the background check runs, so the metric and the log are current without traffic.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// What an install's import writes, per byte of snapshot: `make bench-scale` measured 868 bytes
/// per record in `state.redb` against 277 in the snapshot at 10M records (3.1 times), and up to
/// 2,247 bytes per record in a `state.redb` written by PUTs at 1M; an import writes its tables
/// in key order, as the 10M store was. A third more than measured, for the answers compiled in
/// the import and redb's own pages.
pub const IMPORT_BYTES_PER_SNAPSHOT_BYTE: u64 = 4;

pub struct DiskSpace {
    data_dir: PathBuf,
    reserve_bytes: u64,
    /// Below this much available, no new keys (`raft.new_keys_min_free_disk_mib`); at least
    /// `reserve_bytes`.
    new_keys_reserve_bytes: u64,
    started: Instant,
    /// Milliseconds since `started` of the last measurement, plus one (0: never measured).
    measured_at: AtomicU64,
    /// Bytes available to this process at the last measurement.
    available: AtomicU64,
    /// Whether writes are refused; kept to log the changes once.
    refusing: AtomicBool,
    /// Whether the last measurement failed; kept to log it once, not every second.
    unknown: AtomicBool,
    /// `pkraft_disk_available_bytes`.
    gauge: IntGauge,
    /// The snapshot last refused for want of room, so that each is logged once.
    last_install_refused: std::sync::Mutex<Option<String>>,
}

/// The disk a snapshot install of `snapshot_bytes` takes, `received` of them written already.
fn install_bytes(snapshot_bytes: u64, received: u64) -> u64 {
    snapshot_bytes
        .saturating_sub(received)
        .saturating_add(snapshot_bytes.saturating_mul(IMPORT_BYTES_PER_SNAPSHOT_BYTE))
}

impl DiskSpace {
    pub fn new(
        data_dir: &Path,
        reserve_bytes: u64,
        new_keys_reserve_bytes: u64,
        gauge: IntGauge,
    ) -> DiskSpace {
        DiskSpace {
            data_dir: data_dir.to_path_buf(),
            reserve_bytes,
            new_keys_reserve_bytes: new_keys_reserve_bytes.max(reserve_bytes),
            started: Instant::now(),
            measured_at: AtomicU64::new(0),
            available: AtomicU64::new(u64::MAX),
            refusing: AtomicBool::new(false),
            unknown: AtomicBool::new(false),
            gauge,
            last_install_refused: std::sync::Mutex::new(None),
        }
    }

    /// Why this node must take no writes now, if it must: the data dir's file system has less
    /// than the reserve available.
    pub fn refusal(&self) -> Option<String> {
        self.refusal_for(self.available())
    }

    /// Why this node must store no new keys now, if it must: less than
    /// `raft.new_keys_min_free_disk_mib` available. Republishes of stored keys go on until
    /// [`DiskSpace::refusal`]; below the reserve that refusal (503) answers every write, new
    /// keys too, and this one is `None`.
    pub fn new_keys_refusal(&self) -> Option<String> {
        let available = self.available();
        (self.reserve_bytes <= available && available < self.new_keys_reserve_bytes).then(|| {
            format!(
                "the disk of {} has {} MiB free, less than raft.new_keys_min_free_disk_mib ({} \
                 MiB): this node takes no new keys until space is freed; republishes of stored \
                 keys go on",
                self.data_dir.display(),
                available / MIB,
                self.new_keys_reserve_bytes / MIB
            )
        })
    }

    /// Why a snapshot of `snapshot_bytes` cannot be installed now, if it cannot: the bytes of it
    /// still to be written (all but `received`, which are on disk already, or will overwrite a
    /// file that is) and its import (`IMPORT_BYTES_PER_SNAPSHOT_BYTE` per byte) must leave the
    /// reserve free. Logged once per snapshot; the leader retries it, and it is taken once space
    /// is freed. A reserve of 0 turns this check off too.
    pub fn install_refusal(
        &self,
        snapshot_id: &str,
        snapshot_bytes: u64,
        received: u64,
    ) -> Option<String> {
        if self.reserve_bytes == 0 {
            return None;
        }
        let needed = install_bytes(snapshot_bytes, received).saturating_add(self.reserve_bytes);
        let available = self.available();
        if available >= needed {
            return None;
        }
        let reason = format!(
            "no room to install snapshot {snapshot_id} ({} MiB): its install needs about {} MiB \
             free beside raft.min_free_disk_mib ({} MiB) and the disk of {} has {} MiB; it is \
             taken once space is freed",
            snapshot_bytes / MIB,
            install_bytes(snapshot_bytes, received) / MIB,
            self.reserve_bytes / MIB,
            self.data_dir.display(),
            available / MIB,
        );
        if let Ok(mut last) = self.last_install_refused.lock()
            && last.as_deref() != Some(snapshot_id)
        {
            *last = Some(snapshot_id.to_string());
            tracing::error!("{reason}");
        }
        Some(reason)
    }

    /// Bytes available, measured again if the last measurement is older than `FRESH_FOR`.
    fn available(&self) -> u64 {
        let now = self.millis_now();
        let last = self.measured_at.load(Ordering::Acquire);
        let stale = last == 0 || now.saturating_sub(last - 1) >= FRESH_FOR.as_millis() as u64;
        // One caller measures; the others use the last measurement meanwhile.
        if stale
            && self
                .measured_at
                .compare_exchange(last, now + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.measure();
        }
        self.available.load(Ordering::Acquire)
    }

    /// Whether a snapshot build that writes about `bytes` (the last snapshot's size) has room:
    /// `bytes` plus a quarter of the reserve. It may use the rest of the reserve, which exists
    /// for it too: a build followed by a log purge is what frees space, and writes are refused
    /// below the reserve, so the log does not grow meanwhile.
    pub fn has_room_for_build(&self, bytes: u64) -> bool {
        self.available() >= bytes.saturating_add(self.reserve_bytes / 4)
    }

    /// Measures now (the background check).
    pub fn measure(&self) {
        self.measured_at
            .store(self.millis_now() + 1, Ordering::Release);
        let available = match available_bytes(&self.data_dir) {
            Ok(bytes) => bytes,
            Err(e) => {
                // Not knowing is not "full": a failing disk shows up as failing writes. Nor is
                // it "space is back": no change is logged, the next good reading decides.
                if !self.unknown.swap(true, Ordering::AcqRel) {
                    tracing::warn!(data_dir = %self.data_dir.display(), error = %e, "cannot tell the free disk space: raft.min_free_disk_mib is not enforced until it can");
                }
                self.available.store(u64::MAX, Ordering::Release);
                self.refusing.store(false, Ordering::Release);
                return;
            }
        };
        self.unknown.store(false, Ordering::Release);
        self.available.store(available, Ordering::Release);
        self.gauge.set(i64::try_from(available).unwrap_or(i64::MAX));
        let refusing = self.refusal_for(available);
        if refusing.is_some() != self.refusing.swap(refusing.is_some(), Ordering::AcqRel) {
            match refusing {
                Some(reason) => tracing::error!("{reason}"),
                None => tracing::warn!(
                    data_dir = %self.data_dir.display(),
                    available_mib = available / MIB,
                    "disk space is back above raft.min_free_disk_mib: this node takes writes again"
                ),
            }
        }
    }

    fn refusal_for(&self, available: u64) -> Option<String> {
        (available < self.reserve_bytes).then(|| {
            format!(
                "the disk of {} has {} MiB free, less than raft.min_free_disk_mib ({} MiB): this \
                 node takes no writes until space is freed",
                self.data_dir.display(),
                available / MIB,
                self.reserve_bytes / MIB
            )
        })
    }

    fn millis_now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }
}

const MIB: u64 = 1024 * 1024;

/// Bytes an unprivileged process may still write on the file system holding `path` (the blocks
/// reserved for root are not counted: a node running as root must not eat them either).
fn available_bytes(path: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    free_bytes(&stat)
}

/// The size of the file system holding `path`, in bytes: what the default cap on stored
/// packets is derived from (`store_cap`).
pub fn file_system_bytes(path: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    if stat.blocks() == 0 {
        return Err(std::io::Error::other(
            "the file system reports a size of 0 blocks",
        ));
    }
    Ok(stat.blocks().saturating_mul(stat.fragment_size()))
}

/// What a `statvfs` answer says is free. A file system of zero blocks does not know its size
/// (Jepsen's LazyFS, several FUSE and network file systems answer so): its space is unknown,
/// not full.
fn free_bytes(stat: &nix::sys::statvfs::Statvfs) -> std::io::Result<u64> {
    if stat.blocks() == 0 {
        return Err(std::io::Error::other(
            "the file system reports a size of 0 blocks (it does not tell its free space)",
        ));
    }
    Ok(stat.blocks_available().saturating_mul(stat.fragment_size()))
}

/// Runs the background check until the node stops (the task is aborted).
pub async fn run(disk: std::sync::Arc<DiskSpace>) {
    let mut interval = tokio::time::interval(CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        disk.measure();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge() -> IntGauge {
        IntGauge::new("test_disk_available_bytes", "test").expect("gauge")
    }

    #[test]
    fn a_reserve_above_what_is_free_refuses_writes_and_names_the_setting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let free = available_bytes(dir.path()).expect("statvfs");
        // Above what is free by more than other writers on the machine change it meanwhile.
        let disk = DiskSpace::new(dir.path(), free.saturating_add(256 << 20), 0, gauge());
        let reason = disk.refusal().expect("refused");
        assert!(reason.contains("raft.min_free_disk_mib"), "{reason}");
        assert!(
            disk.has_room_for_build(0),
            "a build may use part of the reserve"
        );
        assert!(!disk.has_room_for_build(free.saturating_add(1 << 30)));
        assert!(disk.gauge.get() > 0);
    }

    /// Between the two reserves a node refuses new keys and takes republishes; below both,
    /// the refusal of every write speaks for new keys too.
    #[test]
    fn new_keys_are_refused_before_republishes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let free = available_bytes(dir.path()).expect("statvfs");
        let disk = DiskSpace::new(dir.path(), 0, free.saturating_add(256 << 20), gauge());
        assert_eq!(disk.refusal(), None, "republishes go on");
        let reason = disk.new_keys_refusal().expect("new keys refused");
        assert!(
            reason.contains("raft.new_keys_min_free_disk_mib"),
            "{reason}"
        );
        assert!(
            reason.contains("republishes of stored keys go on"),
            "{reason}"
        );

        let disk = DiskSpace::new(dir.path(), free.saturating_add(256 << 20), 0, gauge());
        assert!(disk.refusal().is_some());
        assert_eq!(
            disk.new_keys_refusal(),
            None,
            "below the reserve every write gets the 503"
        );
    }

    #[test]
    fn a_reserve_below_what_is_free_takes_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = DiskSpace::new(dir.path(), 0, 0, gauge());
        assert_eq!(disk.refusal(), None);
        assert_eq!(disk.new_keys_refusal(), None);
        assert!(disk.has_room_for_build(0));
        assert!(!disk.has_room_for_build(u64::MAX));
    }

    /// A snapshot whose install (the file still to come and the import, beside the reserve)
    /// does not fit what is free is refused, naming its size and what it needs; one that fits
    /// is taken. The part of the file already received counts as written.
    #[test]
    fn a_snapshot_is_taken_only_with_room_for_its_install() {
        let dir = tempfile::tempdir().expect("tempdir");
        let free = available_bytes(dir.path()).expect("statvfs");
        let disk = DiskSpace::new(dir.path(), 64 << 20, 64 << 20, gauge());
        assert_eq!(disk.install_refusal("small-1b", 1 << 20, 0), None);
        // Its import alone is four times the free space.
        let huge = free.max(1 << 30);
        let reason = disk.install_refusal("huge-2b", huge, 0).expect("refused");
        assert!(reason.contains("huge-2b"), "{reason}");
        assert!(reason.contains("raft.min_free_disk_mib"), "{reason}");
        assert!(disk.install_refusal("huge-2b", huge, huge).is_some());
        assert_eq!(install_bytes(100, 0), 500);
        assert_eq!(install_bytes(100, 60), 440);
        assert_eq!(install_bytes(100, 100), 400);
        assert_eq!(install_bytes(u64::MAX, 0), u64::MAX);
    }
}
