//! [`StoreError`]: what the store's reads and writes fail with.

use pkraft_types::PacketError;

use crate::schema::{PREVIOUS_SCHEMA_VERSION, SCHEMA_VERSION};

/// Errors of the state store. Every variant means the node cannot serve correct data; the caller
/// should stop the node rather than limp on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] redb::Error),
    #[error("database file has schema version {found}, this build reads version {SCHEMA_VERSION}")]
    SchemaVersion { found: u64 },
    /// `pkraft downgrade` on a state file of a version other than this build's (or none).
    #[error(
        "database file has schema version {}; a downgrade rewrites version {SCHEMA_VERSION} as \
         version {PREVIOUS_SCHEMA_VERSION}",
        found.map_or_else(|| "none".to_string(), |found| found.to_string())
    )]
    NotDowngradable { found: Option<u64> },
    #[error("corrupt state store: {0}")]
    Corrupt(String),
    /// A stored packet that does not decode or verify: `what` was read, and the packet's own
    /// error.
    #[error("corrupt state store: {what}: {source}")]
    CorruptPacket {
        what: String,
        #[source]
        source: PacketError,
    },
    #[error("invalid snapshot: {0}")]
    Snapshot(String),
    /// A snapshot's packet frame (starting at byte `at`) that does not decode.
    #[error("invalid snapshot: the packet at byte {at}: {source}")]
    SnapshotPacket {
        at: u64,
        #[source]
        source: PacketError,
    },
    /// A value written with a snapshot (`what`) that does not encode.
    #[error("snapshot: encoding {what}: {source}")]
    SnapshotEncode {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    /// A snapshot's header or summary that does not decode.
    #[error("invalid snapshot: decode: {0}")]
    SnapshotDecode(#[source] postcard::Error),
    /// The file or socket a snapshot is written to or read from failed (`what` it was doing).
    #[error("snapshot I/O: {what}: {source}")]
    SnapshotIo {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The key's stored packet was found damaged on this node's disk and is not served
    /// ([`crate::Store::quarantine`]); other nodes hold it whole.
    #[error("the packet of key {0} is damaged on this node's disk and not served")]
    Quarantined(String),
    /// The writer thread could not be started.
    #[error("starting the state writer thread: {0}")]
    WriterThread(#[source] std::io::Error),
    /// The writer thread has stopped (the store is being closed, or the thread panicked).
    #[error("the state writer has stopped")]
    WriterStopped,
    /// An apply panicked: an invariant it asserts did not hold (the message says which). Its
    /// transaction was aborted, and the writer refuses every apply after it.
    #[error("an apply panicked: {0}")]
    ApplyPanicked(String),
    /// An earlier apply or commit failed, and the open transaction was aborted with what it held
    /// (the error went to the apply that failed, or was logged). Nothing is applied after it:
    /// the node stops, and its next start applies the log again.
    #[error("an earlier write of the state failed: {0}")]
    WriterFailed(String),
    /// A commit or a pause asked of the writer while the same thread holds it paused: on a
    /// thread of its own the writer would wait for the pause to end, and the asker for the
    /// writer, for good (in a simulation, where the writer runs inline, it is refused instead).
    #[error("a commit or a pause of the state writer was asked while it is paused")]
    WriterPaused,
}

impl StoreError {
    /// Whether this says the file's bytes are damaged (redb found a checksum, a page or a
    /// header wrong, or a stored record does not decode), as opposed to an error of the
    /// environment (I/O, a lock, a file of a newer schema) that a restart may not see again.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt(_)
                | StoreError::CorruptPacket { .. }
                | StoreError::Db(redb::Error::Corrupted(_))
        )
    }
}

/// `?` on any redb error type goes through `redb::Error`.
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
