//! A lossy disk for crash tests, after Jepsen's LazyFS: a FUSE file system that keeps every
//! write not yet fsynced in its own memory and drops it on command, so a simulated power cut
//! loses exactly what a real one may lose, which a SIGKILL never does (the kernel's page cache
//! survives it).
//!
//! - [`LossyDisk::mount`] mounts an empty disk on a directory (root and `/dev/fuse` needed:
//!   [`available`]). Programs use the mount like any directory.
//! - [`LossyDisk::cut_power`] drops everything not synced: unsynced file bytes, and directory
//!   entries created, renamed or removed without an fsync of their directory (see `disk.rs` for
//!   the exact model). Optionally a torn write keeps a prefix of the last unsynced write.
//!   [`LossyDisk::arm_cut`] makes the cut happen at the worst moment instead: at the next fsync,
//!   in place of it, when a program has just written something it is about to sync. Until
//!   [`LossyDisk::power_on`], every operation on the mount fails with EIO, so nothing a dying
//!   process still sends lands after the cut: cut, kill the process, then power on.
//! - Faults on command: [`LossyDisk::fail_fsyncs`] (EIO, and the data is lost, as on Linux),
//!   [`LossyDisk::limit_free_space`] (ENOSPC once the files fill it, and `statfs` tells),
//!   [`LossyDisk::slow_fsyncs`], [`LossyDisk::report_unknown_size`] (`statfs` says 0 blocks).
//! - Bad writes ([`BadWrite`]): [`LossyDisk::arm_bad_write`] makes the next fsync of a chosen
//!   file succeed while its bytes are lost or land at another offset, shown once the cache is
//!   gone (the next cut, or [`LossyDisk::reveal_bad_write`]).
//!
//! Durable file content lives in a backing directory (one file per inode); unsynced bytes in
//! memory. Not modelled: hard and symbolic links, special files, xattrs, `RENAME_EXCHANGE`,
//! fallocate modes other than 0, `sync(2)`/`syncfs(2)` (the kernel never sends them to a FUSE
//! file system, so only fsync makes data durable), shared writable `mmap`.

mod disk;
mod extents;
mod fs;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use disk::{BadWrite, BadWriteReport, Cut, CutReport};

use crate::disk::Disk;
use crate::fs::{LossyFs, Shared};

/// Whether this process can mount a lossy disk: root, and `/dev/fuse`. The reason if not.
pub fn available() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("reading /proc/self/status: {e}"))?;
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    if euid != Some("0") {
        return Err("not root (mounting FUSE without fusermount3 needs root)".to_string());
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is missing".to_string());
    }
    Ok(())
}

/// For tests: whether a lossy disk can be mounted here. If not, prints "SKIPPED `test`: why" and
/// returns false, unless the environment variable `PKRAFT_TEST_REQUIRE_FUSE` is set (CI sets
/// it), when it panics: a test that must run never passes by skipping.
pub fn usable_in_test(test: &str) -> bool {
    match available() {
        Ok(()) => true,
        Err(why) => {
            assert!(
                std::env::var_os("PKRAFT_TEST_REQUIRE_FUSE").is_none(),
                "{test}: PKRAFT_TEST_REQUIRE_FUSE is set but FUSE is not available: {why}"
            );
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

/// A mounted lossy disk. Dropping it unmounts it (the programs using it must have exited).
#[derive(Debug)]
pub struct LossyDisk {
    shared: Arc<Shared>,
    mountpoint: PathBuf,
    session: Mutex<Option<fuser::BackgroundSession>>,
}

impl LossyDisk {
    /// Mounts an empty lossy disk on `mountpoint` (an existing, empty directory), keeping its
    /// durable file content in `backing_dir` (an existing, empty directory on a real disk,
    /// outside the mount).
    pub fn mount(mountpoint: &Path, backing_dir: &Path) -> io::Result<Self> {
        available().map_err(io::Error::other)?;
        let shared = Arc::new(Shared {
            disk: Mutex::new(Disk::new(backing_dir.to_path_buf())),
            fsync_delay: Mutex::new(Duration::ZERO),
        });
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("pkraft-lossyfs".to_string()),
            fuser::MountOption::RW,
        ];
        // Other users (a test may drop privileges for the node) see the mount too.
        config.acl = fuser::SessionACL::All;
        // A slow fsync holds one thread; the others keep serving reads and writes.
        config.n_threads = Some(4);
        let session = fuser::spawn_mount(LossyFs(shared.clone()), mountpoint, &config)?;
        Ok(LossyDisk {
            shared,
            mountpoint: mountpoint.to_path_buf(),
            session: Mutex::new(Some(session)),
        })
    }

    /// Where the disk is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// A power cut: drops everything not synced, as `cut` says, and fails every operation with
    /// EIO until [`LossyDisk::power_on`].
    pub fn cut_power(&self, cut: Cut) -> CutReport {
        self.shared.disk().cut(cut)
    }

    /// Arms a cut for the worst moment: at the next fsync, in place of it, so that whatever
    /// that fsync was for is lost (or torn). Then [`LossyDisk::cut_armed_or_now`] waits for
    /// nothing: it returns the armed cut's report, or cuts at once if no fsync came.
    pub fn arm_cut(&self, cut: Cut) {
        self.shared.disk().arm_cut(cut);
    }

    /// Whether the armed cut has happened.
    pub fn armed_cut_happened(&self) -> bool {
        self.shared.disk().armed_report.is_some()
    }

    /// Completes an armed cut: its report if it happened, else the armed cut now. The power is
    /// off afterwards either way.
    pub fn cut_armed_or_now(&self) -> CutReport {
        self.shared.disk().cut_armed_or_now()
    }

    /// Ends a cut: the disk serves again, holding what was durable at the cut.
    pub fn power_on(&self) {
        self.shared.disk().power_on();
    }

    /// While `on`, every fsync fails with EIO and loses its file's unsynced data.
    pub fn fail_fsyncs(&self, on: bool) {
        self.shared.disk().faults.fsync_fails = on;
    }

    /// Limits the disk to what it holds now plus `free` bytes (`statfs` says so too); `None`
    /// lifts the limit. Once the files' lengths reach the limit, a write that grows a file, and
    /// creating an entry, fail with ENOSPC. `Some(0)` is a full disk.
    pub fn limit_free_space(&self, free: Option<u64>) {
        let mut disk = self.shared.disk();
        disk.faults.capacity = free.map(|free| disk.used_bytes().saturating_add(free));
    }

    /// While `on`, `statfs` answers a size of zero blocks (free space unknown), as LazyFS and
    /// several FUSE and network file systems do.
    pub fn report_unknown_size(&self, on: bool) {
        self.shared.disk().faults.size_unknown = on;
    }

    /// Arms a bad write: the next fsync of a file whose name ends with `file_name_suffix`
    /// succeeds, and the bytes it stores are lost or misdirected as `bad` says. Reads go on
    /// seeing what was written until the next cut or [`LossyDisk::reveal_bad_write`] (the
    /// disk's cache held it). Replaces any bad write armed or taken before.
    pub fn arm_bad_write(&self, bad: BadWrite, file_name_suffix: &str) {
        self.shared
            .disk()
            .arm_bad_write(bad, std::ffi::OsStr::new(file_name_suffix));
    }

    /// Where the armed bad write hit, once an fsync took it.
    pub fn bad_write(&self) -> Option<BadWriteReport> {
        self.shared.disk().bad_write_report()
    }

    /// Disarms the bad write, armed or taken: a taken one's bytes stay as written.
    pub fn disarm_bad_write(&self) {
        self.shared.disk().disarm_bad_write();
    }

    /// Shows a taken bad write now, as if the disk's cache had been dropped: reads of its file
    /// see the damage while the programs run. Returns whether there was one to show.
    pub fn reveal_bad_write(&self) -> bool {
        self.shared.disk().reveal_bad_write()
    }

    /// Every fsync takes `delay` longer.
    pub fn slow_fsyncs(&self, delay: Duration) {
        if let Ok(mut current) = self.shared.fsync_delay.lock() {
            *current = delay;
        }
    }

    /// Bytes written and not yet synced: what a cut now would drop.
    pub fn unsynced_bytes(&self) -> u64 {
        self.shared.disk().unsynced_bytes()
    }

    /// Unmounts the disk. Fails (EBUSY) while a process still has files open on it.
    pub fn unmount(&self) -> io::Result<()> {
        let session = self.session.lock().ok().and_then(|mut s| s.take());
        match session {
            Some(session) => session.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for LossyDisk {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!(
                "pkraft-lossyfs: unmounting {}: {e}",
                self.mountpoint.display()
            );
        }
    }
}
