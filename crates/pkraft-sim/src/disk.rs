//! Power cuts: what each node's files held at their last sync, and a cut that puts every file
//! of a node's data dir back to it, dropping what no sync made durable.
//!
//! The files are real files in each node's data dir (on the machine's disk). Every sync the
//! node makes goes through `pkraft_types::world` (`sync_data`, `sync_all`; redb's own through
//! `pkraft_state`'s synced backend), which in a simulation makes this module's sync
//! ([`synced`]) in place of the kernel's: it keeps a copy of what the file then held. A
//! power cut ([`power_off`], then [`restore`] once the node's host is dropped) puts each file
//! back to its copy; a file never synced is left empty. A log segment (`*.seg`), which grows by
//! appends, also keeps a prefix, drawn from the seed, of what it had grown by since (a torn
//! append). Other files do not: redb grows its files by `set_len`, a change of size a power cut
//! leaves old or new, never in between (the log's meta.redb cut to a torn length was refused as
//! "File length does not correspond to a valid region layout", seed 160, before this rule).
//!
//! The model: a file's bytes are durable once it is synced, and lost otherwise, all of them;
//! names (a create, a rename, a removal) are durable at once, as ext4's journal orders them in
//! practice. The chaos harness's lossy disk (pkraft-lossyfs, a FUSE file system) also drops
//! names never synced, and writes torn out of order; this model does not (docs/SIMULATION.md).
//! A file is known by its device, inode and birth time, so that a renamed file keeps its copy
//! and a new file on a freed inode is not taken for the old one (unless it is born within the
//! file system's clock tick of the old one's removal: ext4 reuses a freed inode at once, and
//! keeps birth times in ns, read from a clock that moves in ticks).
//!
//! A segment zero-filled ahead of time (`spare.rs`) does not grow by its appends, so a cut
//! tears none of it: the runs' logs never fill half a segment, which is when a spare is made.
//!
//! In a simulation a node's storage runs inline, so an append and its sync are one step: a
//! correct node never has an append written and not synced when its power goes. What a cut
//! drops from a correct node is what it chose not to sync yet: the state's non-durable redb
//! commits, which it applies again from its log.

use std::collections::BTreeMap;
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use pkraft_testkit::rng::SplitMix64;

/// A file, whatever its name: device, inode, and birth time in ns (0 where the file system
/// records none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct FileId {
    dev: u64,
    ino: u64,
    born_nanos: u128,
}

impl FileId {
    fn of(metadata: &Metadata) -> FileId {
        FileId {
            dev: metadata.dev(),
            ino: metadata.ino(),
            born_nanos: metadata
                .created()
                .ok()
                .and_then(|born| born.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |born| born.as_nanos()),
        }
    }
}

#[derive(Default)]
struct Disk {
    /// What each file held at its last sync.
    durable: BTreeMap<FileId, Vec<u8>>,
    /// The data dirs whose node has lost its power: a sync of a file in one is not durable
    /// (a crashed node's store, dropped with its host, closes redb, which syncs as it closes).
    powered_off: Vec<PathBuf>,
    /// The data dirs whose disk fails every sync (`FaultKind::SyncsFailing`): a sync of a file
    /// in one fails with EIO and makes nothing durable.
    failing: Vec<PathBuf>,
    /// Syncs failed so far in the run.
    syncs_failed: u64,
    /// The data dirs whose disk is slow (`FaultKind::DiskSlow`), each with its latency: every
    /// change the node's log makes there waits it out first ([`latency`]).
    slow: Vec<(PathBuf, Duration)>,
    /// How many times a node's storage found its disk slow so far in the run.
    found_slow: u64,
}

/// Linux's EIO, what a failed `fsync` returns.
const EIO: i32 = 5;

/// Every simulated host runs on one thread, but a sync may come from another (a test's own);
/// a lock, not a thread's own copy, so that no sync goes unseen.
static DISK: Mutex<Disk> = Mutex::new(Disk {
    durable: BTreeMap::new(),
    powered_off: Vec::new(),
    failing: Vec::new(),
    syncs_failed: 0,
    slow: Vec::new(),
    found_slow: 0,
});

fn disk() -> MutexGuard<'static, Disk> {
    DISK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Forgets every copy: a run's files are its own.
pub(crate) fn start_run() {
    *disk() = Disk::default();
}

/// `pkraft_types::world`'s `synced`: keeps what `file` holds now as what a power cut leaves
/// of it. Directories are skipped (names are durable at once). On a failing disk
/// ([`fail_syncs`]) every sync, a directory's too, fails with EIO.
pub(crate) fn synced(file: &File) -> io::Result<()> {
    let metadata = file.metadata()?;
    let opened = format!("/proc/self/fd/{}", file.as_raw_fd());
    let path = fs::read_link(&opened)?;
    let mut disk = disk();
    if disk.powered_off.iter().any(|dir| path.starts_with(dir)) {
        return Ok(());
    }
    if disk.failing.iter().any(|dir| path.starts_with(dir)) {
        disk.syncs_failed += 1;
        return Err(io::Error::from_raw_os_error(EIO));
    }
    if !metadata.is_file() {
        return Ok(());
    }
    // Read through a new open of the same file: the node's handle may be open for writing only.
    // Closing it is harmless to redb's locks, which belong to redb's own open file description
    // (redb 4.6 takes open-file-description locks and `flock`, never a process's POSIX locks,
    // which closing any descriptor of the file would drop).
    let mut held = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    File::open(&opened)
        .and_then(|mut reopened| reopened.read_to_end(&mut held))
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    disk.durable.insert(FileId::of(&metadata), held);
    Ok(())
}

/// Takes what the file at `path` holds now as durable, whatever was synced: for damage done
/// to the medium itself (`faults.rs`'s `LogDamaged`), which a later power cut must not undo.
pub(crate) fn on_the_medium(path: &Path) -> io::Result<()> {
    let held = fs::read(path).map_err(|e| in_file(path, e))?;
    let metadata = fs::metadata(path).map_err(|e| in_file(path, e))?;
    disk().durable.insert(FileId::of(&metadata), held);
    Ok(())
}

/// `e`, naming the file it happened to.
fn in_file(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// `dir` as the kernel names it (`/proc/self/fd` links are resolved paths): a data dir under a
/// symlinked `TMPDIR` would otherwise never match the files synced in it.
fn canonical(dir: &Path) -> PathBuf {
    fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// From now on every sync of a file under `dir` fails with EIO and keeps nothing (`failing`),
/// or, once the fault has ended, succeeds again.
pub(crate) fn fail_syncs(dir: &Path, failing: bool) {
    let dir = canonical(dir);
    let mut disk = disk();
    disk.failing.retain(|listed| *listed != dir);
    if failing {
        disk.failing.push(dir);
    }
}

/// From now on every change the node's log makes under `dir` waits `latency` of simulated time
/// first, as on a disk whose writes and syncs take that long (`None`: the disk is well again).
pub(crate) fn slow_down(dir: &Path, latency: Option<Duration>) {
    let dir = canonical(dir);
    let mut disk = disk();
    disk.slow.retain(|(listed, _)| *listed != dir);
    if let Some(latency) = latency {
        disk.slow.push((dir, latency));
    }
}

/// `pkraft_types::world`'s `disk_latency`: how long a change to the files under `dir` takes
/// now ([`slow_down`]; zero on a disk that is well).
pub(crate) fn latency(dir: &Path) -> Duration {
    if disk().slow.is_empty() {
        return Duration::ZERO;
    }
    let dir = canonical(dir);
    let mut disk = disk();
    let latency = disk
        .slow
        .iter()
        .find(|(slow, _)| dir.starts_with(slow))
        .map_or(Duration::ZERO, |(_, latency)| *latency);
    if !latency.is_zero() {
        disk.found_slow += 1;
    }
    latency
}

/// How many times a node's storage found its disk slow so far in the run ([`latency`]).
pub(crate) fn found_slow() -> u64 {
    disk().found_slow
}

/// How many syncs failed so far in the run ([`fail_syncs`]).
pub(crate) fn syncs_failed() -> u64 {
    disk().syncs_failed
}

/// Whether `error` says what a failed sync says (EIO), as an error's text carries it through
/// the node's start: the harness knows a start on a failing disk by it.
pub(crate) fn says_eio(error: &str) -> bool {
    error.contains(&format!("(os error {EIO})"))
}

/// Whether the disk under `dir` fails its syncs now ([`fail_syncs`]).
pub(crate) fn syncs_fail(dir: &Path) -> bool {
    let dir = canonical(dir);
    disk()
        .failing
        .iter()
        .any(|failing| dir.starts_with(failing))
}

/// The power of the node whose data dir is `dir` goes: from now until [`restore`], its syncs
/// keep nothing. Call before the node's host is dropped.
pub(crate) fn power_off(dir: &Path) {
    disk().powered_off.push(canonical(dir));
}

/// What a power cut did to a node's files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cut {
    /// Files put back to what they held at their last sync (or emptied, never synced).
    pub files: usize,
    /// Bytes they had and lost, and bytes kept of what they had grown by (torn appends).
    pub bytes_dropped: u64,
    pub bytes_torn_kept: u64,
}

/// Puts every file under `dir` (whose node's host is dropped, after [`power_off`]) back to what
/// it held at its last sync (a log segment keeping a prefix drawn from `rng` of what it had
/// grown by since), and gives the node its power back.
pub(crate) fn restore(dir: &Path, rng: &mut SplitMix64) -> io::Result<Cut> {
    let mut cut = Cut::default();
    let mut files = Vec::new();
    files_under(dir, &mut files)?;
    let mut disk = disk();
    for path in files {
        let metadata = fs::metadata(&path).map_err(|e| in_file(&path, e))?;
        let id = FileId::of(&metadata);
        let now = fs::read(&path).map_err(|e| in_file(&path, e))?;
        let mut kept = disk.durable.get(&id).cloned().unwrap_or_default();
        let appended = path.extension().is_some_and(|extension| extension == "seg");
        if appended && now.len() > kept.len() && !kept.is_empty() {
            let grown = (now.len() - kept.len()) as u64;
            let torn = usize::try_from(rng.between(0, grown)).unwrap_or(0);
            kept.extend_from_slice(&now[kept.len()..kept.len() + torn]);
            cut.bytes_torn_kept += torn as u64;
        }
        if kept != now {
            fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|file| {
                    file.set_len(kept.len() as u64)?;
                    file.write_all_at(&kept, 0)
                })
                .map_err(|e| in_file(&path, e))?;
            cut.files += 1;
            cut.bytes_dropped += differing_bytes(&now, &kept);
        }
        disk.durable.insert(id, kept);
    }
    let dir = canonical(dir);
    disk.powered_off.retain(|off| *off != dir);
    Ok(cut)
}

/// How many bytes of `now` a cut to `kept` loses: those past `kept`'s end, and those within it
/// that differ.
fn differing_bytes(now: &[u8], kept: &[u8]) -> u64 {
    let changed = now
        .iter()
        .zip(kept)
        .filter(|(then, kept)| then != kept)
        .count();
    (changed + now.len().saturating_sub(kept.len())) as u64
}

/// The regular files under `dir`, in name order (a cut's draws go file by file, the same way
/// every run).
fn files_under(dir: &Path, files: &mut Vec<PathBuf>) -> io::Result<()> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<io::Result<_>>()?;
    entries.sort();
    for path in entries {
        let kind = fs::symlink_metadata(&path)?.file_type();
        if kind.is_dir() {
            files_under(&path, files)?;
        } else if kind.is_file() {
            files.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests below share the one disk with each other: one at a time.
    static ONE_TEST_AT_A_TIME: Mutex<()> = Mutex::new(());

    /// The disk to this test alone, with no copies, and a new dir on it.
    fn a_fresh_disk() -> (MutexGuard<'static, ()>, tempfile::TempDir) {
        let alone = ONE_TEST_AT_A_TIME
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        start_run();
        (alone, tempfile::tempdir().expect("dir"))
    }

    /// A log segment in `dir` holding `bytes`, synced: its path and its open file.
    fn a_synced_segment(dir: &Path, bytes: &[u8]) -> (PathBuf, File) {
        let segment = dir.join("1.seg");
        let file = File::create(&segment).expect("create");
        file.write_all_at(bytes, 0).expect("write");
        synced(&file).expect("synced");
        (segment, file)
    }

    #[test]
    fn a_cut_keeps_what_was_synced_and_tears_what_grew_after() {
        let (_alone, dir) = a_fresh_disk();
        let synced_path = dir.path().join("1.seg");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&synced_path)
            .expect("create");
        file.write_all_at(b"durable", 0).expect("write");
        file.sync_data().expect("sync");
        synced(&file).expect("synced");
        // Overwritten in place and grown, not synced.
        file.write_all_at(b"DURABLE and more, never synced", 0)
            .expect("write");
        // A file made and never synced, in a directory below.
        fs::create_dir(dir.path().join("below")).expect("mkdir");
        fs::write(dir.path().join("below/new"), b"never synced").expect("write");
        // A file that is no segment: grown, not synced, and cut back to its synced length.
        let state = dir.path().join("state.redb");
        let state_file = File::create(&state).expect("create");
        state_file.write_all_at(b"synced", 0).expect("write");
        synced(&state_file).expect("synced");
        state_file.set_len(4096).expect("grow");
        drop(state_file);
        // A sync while the power is off keeps nothing.
        power_off(dir.path());
        file.sync_data().expect("sync");
        synced(&file).expect("synced");
        drop(file);
        let mut rng = SplitMix64::new(3);
        let cut = restore(dir.path(), &mut rng).expect("restore");
        let after = fs::read(&synced_path).expect("read");
        assert!(after.starts_with(b"durable"), "{after:?}");
        assert_eq!(
            &after[7..],
            &b"DURABLE and more, never synced"[7..after.len()],
            "a prefix of what it grew by"
        );
        assert_eq!(cut.bytes_torn_kept, (after.len() - 7) as u64);
        assert!(
            fs::read(dir.path().join("below/new"))
                .expect("read")
                .is_empty()
        );
        assert_eq!(fs::read(&state).expect("read"), b"synced");
        assert_eq!(cut.files, 3);
        // The power is back: a sync keeps again.
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&synced_path)
            .expect("open");
        file.write_all_at(b"again", 0).expect("write");
        synced(&file).expect("synced");
        drop(file);
        let cut = restore(dir.path(), &mut rng).expect("restore");
        assert_eq!(cut, Cut::default(), "nothing unsynced");
        assert!(fs::read(&synced_path).expect("read").starts_with(b"again"));
    }

    /// The log's writer waits out a slow disk's latency in simulated time before each change,
    /// in the changes' order, and not once the disk is well; a crash drops the changes still
    /// waiting with the node's runtime, and the log opens again at once (a queue kept by the
    /// writer itself would keep the log's files open through the handles its jobs hold).
    #[test]
    fn a_slow_disk_holds_each_change_of_the_log_for_its_latency_in_order() {
        use openraft::Vote;
        use openraft::storage::RaftLogStorage;
        use pkraft_raft_storage::log_store::LogStore;
        use tokio::time::Instant;

        let (_alone, dir) = a_fresh_disk();
        crate::world::install();
        let latency = Duration::from_millis(700);
        slow_down(dir.path(), Some(latency));
        let mut sim = turmoil::Builder::new().build();
        let path = dir.path().to_path_buf();
        sim.client("node", async move {
            let mut log = LogStore::open(&path)?;
            let mut other = log.clone();
            let started = Instant::now();
            let (vote_1, vote_2) = (Vote::new(1, 1), Vote::new(2, 1));
            let (first, second) = tokio::join!(log.save_vote(&vote_1), other.save_vote(&vote_2));
            first?;
            second?;
            assert_eq!(started.elapsed(), latency * 2, "one change after the other");
            assert_eq!(log.read_vote().await?, Some(vote_2), "in their order");
            slow_down(&path, None);
            let started = Instant::now();
            log.save_vote(&Vote::new(3, 1)).await?;
            assert_eq!(
                started.elapsed(),
                Duration::ZERO,
                "a disk well again waits no more"
            );
            Ok(())
        });
        sim.run().expect("the log's changes");
        assert!(found_slow() >= 2, "{}", found_slow());

        slow_down(dir.path(), Some(Duration::from_secs(5)));
        let path = dir.path().to_path_buf();
        sim.host("crashing", move || {
            let path = path.clone();
            async move {
                let mut log = LogStore::open(&path)?;
                tokio::spawn(async move { log.save_vote(&Vote::new(4, 1)).await });
                std::future::pending::<()>().await;
                Ok(())
            }
        });
        for _ in 0..100 {
            sim.step().expect("a step");
        }
        sim.crash("crashing");
        let log = LogStore::open(dir.path()).expect("the log opens again after the crash");
        drop(log);
        drop(sim);
    }

    #[test]
    fn a_failing_disk_fails_every_sync_and_keeps_nothing_until_it_is_well() {
        let (_alone, dir) = a_fresh_disk();
        let (segment, file) = a_synced_segment(dir.path(), b"synced");
        fail_syncs(dir.path(), true);
        file.write_all_at(b"SYNCED, then lost", 0).expect("write");
        let failed = synced(&file).expect_err("the disk fails");
        assert_eq!(failed.raw_os_error(), Some(EIO), "{failed}");
        assert!(says_eio(&format!("wrapped: {failed}")), "{failed}");
        let directory = File::open(dir.path()).expect("open the directory");
        assert!(synced(&directory).is_err(), "a directory's sync fails too");
        // Another node's disk is well.
        let elsewhere = tempfile::tempdir().expect("dir");
        let other = File::create(elsewhere.path().join("1.seg")).expect("create");
        synced(&other).expect("another disk syncs");
        assert_eq!(syncs_failed(), 2);
        // What the failed syncs did not keep is gone at a cut.
        power_off(dir.path());
        drop(file);
        restore(dir.path(), &mut SplitMix64::new(1)).expect("restore");
        assert!(fs::read(&segment).expect("read").starts_with(b"synced"));
        fail_syncs(dir.path(), false);
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .expect("open");
        synced(&file).expect("the disk is well again");
    }

    #[test]
    fn damage_on_the_medium_outlives_a_power_cut() {
        let (_alone, dir) = a_fresh_disk();
        let (segment, file) = a_synced_segment(dir.path(), b"whole record");
        file.write_all_at(b"W", 0).expect("damage");
        drop(file);
        on_the_medium(&segment).expect("on the medium");
        power_off(dir.path());
        let cut = restore(dir.path(), &mut SplitMix64::new(1)).expect("restore");
        assert_eq!(cut, Cut::default());
        assert_eq!(fs::read(&segment).expect("read"), b"Whole record");
    }

    #[test]
    fn a_renamed_file_keeps_what_it_held_when_synced() {
        let (_alone, dir) = a_fresh_disk();
        let spare = dir.path().join("spare.tmp");
        let file = File::create(&spare).expect("create");
        file.write_all_at(b"header", 0).expect("write");
        synced(&file).expect("synced");
        drop(file);
        let segment = dir.path().join("1.seg");
        fs::rename(&spare, &segment).expect("rename");
        power_off(dir.path());
        let cut = restore(dir.path(), &mut SplitMix64::new(1)).expect("restore");
        assert_eq!(cut, Cut::default());
        assert_eq!(fs::read(&segment).expect("read"), b"header");
    }
}
