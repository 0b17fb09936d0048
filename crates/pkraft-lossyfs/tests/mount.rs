//! Goal: the lossy disk, mounted, loses exactly what a power cut may lose, and its faults reach
//! programs as the errors a real disk gives.
//! Method: a real FUSE mount in a temp dir, used through std::fs (the system calls pkraft
//! makes); cuts and faults through the `LossyDisk` handle.
//! Needs root and /dev/fuse; without them each test prints SKIPPED and passes, unless
//! PKRAFT_TEST_REQUIRE_FUSE is set (CI sets it), when it fails.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pkraft_lossyfs::{Cut, LossyDisk};

struct Mounted {
    disk: LossyDisk,
    _dirs: tempfile::TempDir,
}

impl Mounted {
    fn path(&self, name: &str) -> PathBuf {
        self.disk.path().join(name)
    }
}

fn mount(test: &str) -> Option<Mounted> {
    if !pkraft_lossyfs::usable_in_test(test) {
        return None;
    }
    let dirs = tempfile::tempdir().expect("tempdir");
    let mountpoint = dirs.path().join("mnt");
    let backing = dirs.path().join("backing");
    std::fs::create_dir(&mountpoint).expect("mountpoint");
    std::fs::create_dir(&backing).expect("backing dir");
    let disk = LossyDisk::mount(&mountpoint, &backing).expect("mount");
    Some(Mounted { disk, _dirs: dirs })
}

fn sync_dir(dir: &Path) {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("directory fsync");
}

fn cut(mounted: &Mounted, how: Cut) {
    mounted.disk.cut_power(how);
    mounted.disk.power_on();
}

#[test]
fn a_write_without_fsync_is_gone_after_a_cut_and_one_with_fsync_is_not() {
    let Some(m) = mount("fsync") else { return };
    let path = m.path("data");
    let mut file = File::create(&path).expect("create");
    sync_dir(m.disk.path());
    file.write_all(b"acknowledged").expect("write");
    file.sync_all().expect("fsync");
    file.write_all(b" and not yet synced").expect("write");
    assert_eq!(
        std::fs::read(&path).expect("read"),
        b"acknowledged and not yet synced"
    );
    assert_eq!(m.disk.unsynced_bytes(), 19);
    drop(file);

    cut(&m, Cut::Clean);
    assert_eq!(std::fs::read(&path).expect("read"), b"acknowledged");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 12);
}

#[test]
fn a_file_whose_directory_was_not_synced_is_gone_after_a_cut() {
    let Some(m) = mount("dir entries") else {
        return;
    };
    std::fs::create_dir(m.path("snapshot")).expect("mkdir");
    sync_dir(m.disk.path());
    let mut file = File::create(m.path("snapshot/7.snap")).expect("create");
    file.write_all(b"snapshot data").expect("write");
    file.sync_all()
        .expect("fsync of the file, not of its directory");
    drop(file);
    cut(&m, Cut::Clean);
    assert!(m.path("snapshot").is_dir());
    assert_eq!(
        std::fs::read(m.path("snapshot/7.snap"))
            .expect_err("gone")
            .kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn a_rename_is_durable_only_after_its_directory_is_synced() {
    let Some(m) = mount("rename") else { return };
    let target = m.path("current.meta");
    let tmp = m.path("current.meta.tmp");
    let write_synced = |path: &Path, data: &[u8]| {
        let mut file = File::create(path).expect("create");
        file.write_all(data).expect("write");
        file.sync_all().expect("fsync");
    };
    write_synced(&target, b"old");
    sync_dir(m.disk.path());

    write_synced(&tmp, b"new");
    std::fs::rename(&tmp, &target).expect("rename");
    assert_eq!(std::fs::read(&target).expect("read"), b"new");
    cut(&m, Cut::Clean);
    assert_eq!(std::fs::read(&target).expect("read"), b"old");

    write_synced(&tmp, b"new");
    std::fs::rename(&tmp, &target).expect("rename");
    sync_dir(m.disk.path());
    cut(&m, Cut::Clean);
    assert_eq!(std::fs::read(&target).expect("read"), b"new");
    assert!(!tmp.exists());
}

#[test]
fn a_torn_cut_keeps_a_prefix_of_the_last_write() {
    let Some(m) = mount("torn") else { return };
    let path = m.path("segment");
    let mut file = File::create(&path).expect("create");
    sync_dir(m.disk.path());
    file.write_all(b"header").expect("write");
    file.sync_all().expect("fsync");
    file.write_all(b"|record-1").expect("write");
    file.write_all(b"|record-2").expect("write");
    drop(file);
    let report = m.disk.cut_power(Cut::TornLastWrite { keep: 4 });
    m.disk.power_on();
    assert_eq!(report.torn_bytes, 4);
    // The torn prefix lands at its offset; the write before it, never synced, reads as zeros.
    let mut expected = b"header".to_vec();
    expected.extend_from_slice(&[0; 9]);
    expected.extend_from_slice(b"|rec");
    assert_eq!(std::fs::read(&path).expect("read"), expected);
}

#[test]
fn a_failed_fsync_is_eio_and_the_data_is_lost() {
    let Some(m) = mount("fsync eio") else { return };
    let path = m.path("f");
    let mut file = File::create(&path).expect("create");
    sync_dir(m.disk.path());
    file.write_all(b"never safe").expect("write");
    m.disk.fail_fsyncs(true);
    let error = file.sync_all().expect_err("EIO");
    assert_eq!(error.raw_os_error(), Some(5), "{error}");
    m.disk.fail_fsyncs(false);
    file.sync_all().expect("a later fsync succeeds");
    assert_eq!(std::fs::read(&path).expect("read"), b"");
}

#[test]
fn a_full_disk_refuses_growth_with_enospc_and_recovers() {
    let Some(m) = mount("enospc") else { return };
    let path = m.path("f");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("create");
    file.write_all(b"0123").expect("write");
    m.disk.limit_free_space(Some(0));
    let stat = nix::sys::statvfs::statvfs(m.disk.path()).expect("statvfs");
    assert_eq!(stat.blocks_available(), 0, "a full disk says so");
    let error = file.write_all(b"more").expect_err("ENOSPC");
    assert_eq!(error.raw_os_error(), Some(28), "{error}");
    file.write_all_at(b"ab", 0)
        .expect("an overwrite needs no space");
    assert!(File::create(m.path("g")).is_err());
    m.disk.limit_free_space(Some(1 << 20));
    let stat = nix::sys::statvfs::statvfs(m.disk.path()).expect("statvfs");
    assert_eq!(stat.blocks_available() * stat.fragment_size(), 1 << 20);
    file.seek(SeekFrom::End(0)).expect("seek");
    file.write_all(b"more").expect("write after space returns");
    let mut content = String::new();
    File::open(&path)
        .expect("open")
        .read_to_string(&mut content)
        .expect("read");
    assert_eq!(content, "ab23more");
}

#[test]
fn a_slow_fsync_takes_at_least_its_delay() {
    let Some(m) = mount("slow fsync") else { return };
    let file = File::create(m.path("f")).expect("create");
    m.disk.slow_fsyncs(Duration::from_millis(300));
    let started = Instant::now();
    file.sync_all().expect("fsync");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn nothing_lands_between_a_cut_and_power_on() {
    let Some(m) = mount("powered off") else {
        return;
    };
    let path = m.path("f");
    let mut file = File::create(&path).expect("create");
    sync_dir(m.disk.path());
    file.sync_all().expect("fsync");
    m.disk.cut_power(Cut::Clean);
    let error = file
        .write_all(b"late")
        .expect_err("EIO while the power is off");
    assert_eq!(error.raw_os_error(), Some(5), "{error}");
    assert!(file.sync_all().is_err());
    drop(file);
    m.disk.power_on();
    assert_eq!(std::fs::read(&path).expect("read"), b"");
}
