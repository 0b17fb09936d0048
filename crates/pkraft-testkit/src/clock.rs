//! A node's wall clock moved by the test, the way an NTP step, a reset RTC or a restored VM
//! image moves it: libfaketime (Debian's `libfaketime`) preloaded into the real binary, reading
//! its offset from a file the test rewrites while the node runs. Only the wall clock moves
//! (`FAKETIME_DONT_FAKE_MONOTONIC=1`): timers, leases and timeouts keep the monotonic clock, as
//! on a real machine whose clock is stepped.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian puts the multi-threaded variant (the one for programs with threads).
const LIBRARY_PATHS: [&str; 2] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
];

/// How often (seconds) the library reads the offset file again: a step is seen within this.
const REREAD_SECS: &str = "1";

/// libfaketime's library, if installed.
pub fn library() -> Option<PathBuf> {
    LIBRARY_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
}

/// Whether faked clocks can be used here. Without the library the test says so and passes,
/// unless `PKRAFT_TEST_REQUIRE_FAKETIME` is set (`.ci/run` sets it and installs the library).
pub fn usable_in_test(test: &str) -> bool {
    if library().is_some() {
        return true;
    }
    assert!(
        std::env::var_os("PKRAFT_TEST_REQUIRE_FAKETIME").is_none(),
        "{test}: PKRAFT_TEST_REQUIRE_FAKETIME is set, but libfaketime is not installed (Debian package libfaketime)"
    );
    eprintln!("{test}: skipped: libfaketime is not installed (Debian package libfaketime)");
    false
}

/// One process's wall clock: the offset file it reads.
#[derive(Debug, Clone)]
pub struct FakedClock {
    file: PathBuf,
}

impl FakedClock {
    /// A clock whose offset lives in `file`, starting right (offset `+0`).
    pub fn new(file: &Path) -> std::io::Result<FakedClock> {
        let clock = FakedClock {
            file: file.to_path_buf(),
        };
        clock.set("+0")?;
        Ok(clock)
    }

    /// Moves the clock to `offset` from the real time, in libfaketime's notation: `+8d`,
    /// `-1d`, `+90s`, `+0`. Written whole (rename), so the library never reads half of it.
    pub fn set(&self, offset: &str) -> std::io::Result<()> {
        let partial = self.file.with_extension("partial");
        std::fs::write(&partial, format!("{offset}\n"))?;
        std::fs::rename(&partial, &self.file)
    }

    /// Runs `command` with this clock. `library`: from [`library`].
    pub fn apply(&self, command: &mut Command, library: &Path) {
        command
            .env("LD_PRELOAD", library)
            .env("FAKETIME_TIMESTAMP_FILE", &self.file)
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("FAKETIME_CACHE_DURATION", REREAD_SECS);
    }
}
