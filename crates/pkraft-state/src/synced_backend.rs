//! redb's own file backend with its syncs made through `pkraft_types::world::sync_data` (in a
//! simulation, the simulated disk's sync in place of the kernel's), so that a simulated power
//! cut keeps of the state's file what redb made durable (its durable commits) and drops the
//! rest (its non-durable ones, which the node re-applies from its log).
//!
//! Every redb file of the node is opened by [`create_database`]: the state (`Store::open`) and
//! the log's `meta.redb` (the vote, the committed id). Only a simulation opens one through the
//! backend: outside one the file is opened as redb's own `Builder::create` opens it, and pays
//! nothing for the seam. Every other method of the backend is redb's file backend's,
//! unchanged, locks included (a restarted node's open is refused while a crashed one still
//! holds the file, as it is with redb's own open).

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::path::Path;

use redb::backends::FileBackend;
use redb::{BackendError, Builder, Database, DatabaseError, StorageBackend};

/// Opens (or creates) the redb file at `path` with `builder`'s settings, as
/// [`Builder::create`] does; in a simulation through [`SyncedBackend`], so that a power cut
/// keeps what redb synced.
pub fn create_database(builder: &Builder, path: &Path) -> Result<Database, DatabaseError> {
    if !pkraft_types::world::is_simulated() {
        return builder.create(path);
    }
    // As redb's own `create` opens it.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    builder.create_with_backend(SyncedBackend::new(file)?)
}

#[derive(Debug)]
pub(crate) struct SyncedBackend {
    backend: FileBackend,
    /// The same file, to sync through the seam: redb's backend does not lend its own.
    file: File,
}

impl SyncedBackend {
    pub(crate) fn new(file: File) -> Result<SyncedBackend, DatabaseError> {
        let synced = file.try_clone()?;
        Ok(SyncedBackend {
            backend: FileBackend::new(file)?,
            file: synced,
        })
    }
}

impl StorageBackend for SyncedBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.backend.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.backend.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.backend.set_len(len)
    }

    /// Through the seam, as every sync of the node's files: the simulated disk's sync in a
    /// simulation (the only place this backend is used), the kernel's otherwise.
    fn sync_data(&self) -> Result<(), io::Error> {
        pkraft_types::world::sync_data(&self.file)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.backend.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.backend.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.backend.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.backend.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.backend.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.backend.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.backend.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.backend.query_lock_range(start, end)
    }
}
