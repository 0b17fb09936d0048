//! [`Spare`]: the next segment's file, zero-filled to the segment size ahead of time by a thread
//! of its own, so that appends write into bytes the file already has.
//!
//! An append's `fdatasync` on a file that grows must also write the file's new size (on ext4 a
//! journal commit); on bytes the file already holds it writes the data alone. Measured on these
//! machines' ext4 (docs/BENCHMARKS.md, "Preallocated segments"): an append of a few KiB and its
//! synced mark took about a quarter less wall time in a zero-filled file than at the end of a
//! growing one, and the same CPU. `fallocate` alone (unwritten extents) did not help: the first
//! write to such an extent changes the file's metadata just the same.
//!
//! The zeros never count as records: a segment's records end where the first zero header is,
//! and the open reads the rest of the last segment, all zeros and not covered by the synced
//! mark, as space never written (`scan.rs`). A segment that is closed for the next one is cut
//! to its records first, so that only the last segment ever has such a tail.
//!
//! A spare is prepared once the last segment is half full, and is `spare-<random>.tmp` in the
//! log directory until a segment takes it (a rename); an open removes the ones a stop left
//! behind. Preparing one is best effort: without one, the next segment is made the old way and
//! grows with its appends.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Zeros written at a time while a spare is prepared.
const CHUNK_BYTES: usize = 1024 * 1024;

/// See the module docs.
pub(crate) struct Spare {
    dir: PathBuf,
    bytes: u64,
    state: Arc<Mutex<State>>,
}

enum State {
    Idle,
    Preparing,
    Ready(File, PathBuf),
}

impl Spare {
    /// Spares of `bytes` in `dir`, none prepared yet; removes the ones an earlier process left.
    pub(crate) fn new(dir: &Path, bytes: u64) -> io::Result<Spare> {
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if is_spare(&path) {
                fs::remove_file(&path)?;
            }
        }
        Ok(Spare {
            dir: dir.to_path_buf(),
            bytes,
            state: Arc::new(Mutex::new(State::Idle)),
        })
    }

    /// The prepared file and its path, if one is ready.
    pub(crate) fn take(&self) -> Option<(File, PathBuf)> {
        let mut state = self.state.lock().ok()?;
        match std::mem::replace(&mut *state, State::Idle) {
            State::Ready(file, path) => Some((file, path)),
            other => {
                *state = other;
                None
            }
        }
    }

    /// Waits until a spare is ready (tests: when one is depends on a thread's timing).
    #[cfg(test)]
    pub(crate) fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !matches!(self.state.lock().as_deref(), Ok(State::Ready(..))) {
            assert!(std::time::Instant::now() < deadline, "no spare within 30 s");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Starts preparing a spare on a thread of its own, unless one is ready or under way. The
    /// segments ask once the last one is half full: a log that never gets that far (a node
    /// started briefly, a test) writes no spare.
    pub(crate) fn prepare(&self) {
        {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            if !matches!(*state, State::Idle) {
                return;
            }
            *state = State::Preparing;
        }
        let path = self.dir.join(format!(
            "spare-{:016x}.tmp",
            pkraft_types::world::random_u64()
        ));
        let state = self.state.clone();
        let bytes = self.bytes;
        let prepare = move || {
            let prepared = zero_filled(&path, bytes);
            let Ok(mut state) = state.lock() else {
                return;
            };
            match prepared {
                Ok(file) => *state = State::Ready(file, path),
                Err(e) => {
                    tracing::debug!(error = %e, "could not prepare the next log segment");
                    let _ = fs::remove_file(&path);
                    *state = State::Idle;
                }
            }
        };
        // A simulation runs it at once, on its own thread (`runs_blocking_work_inline`).
        if pkraft_types::world::runs_blocking_work_inline() {
            prepare();
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("pkraft-log-spare".to_string())
            .spawn(prepare);
        if spawned.is_err()
            && let Ok(mut state) = self.state.lock()
        {
            *state = State::Idle;
        }
    }
}

/// A new file at `path` holding `bytes` zeros, synced.
fn zero_filled(path: &Path, bytes: u64) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    let zeros = vec![0u8; CHUNK_BYTES];
    let mut left = bytes;
    while left > 0 {
        let now = usize::try_from(left).map_or(CHUNK_BYTES, |left| left.min(CHUNK_BYTES));
        file.write_all(&zeros[..now])?;
        left -= now as u64;
    }
    pkraft_types::world::sync_all(&file)?;
    Ok(file)
}

fn is_spare(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with("spare-") && name.ends_with(".tmp"))
}
