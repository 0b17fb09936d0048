//! Snapshots: the whole packets table and the removed node ids as one byte stream, written from
//! one read transaction and read back in one write transaction, never held in memory whole.
//!
//! Format 3 (written by this build):
//!
//! ```text
//! MAGIC (8) ‖ format version 3 (u32 BE)
//! frames, each starting with a tag byte:
//!   1 ‖ key (32) ‖ applied_at_micros (u64 BE) ‖ payload length (u32 BE) ‖ payload
//!   2 ‖ removed node id (u64 BE)
//!   0xFF ‖ packets (u64 BE) ‖ removed node ids (u64 BE) ‖ CRC-32 of every byte before it (u32 BE)
//! end of stream
//! ```
//!
//! Packets come in key order, so an import appends to the B-tree. The trailer makes a torn or
//! damaged stream an error before anything is committed: an import reads to the end, checks the
//! counts and the checksum, and only then commits. Formats 1 and 2 (one postcard value each, no
//! checksum; the builds before streaming wrote them) are still read, in memory as before, so a
//! node of this build installs a snapshot sent by a node of the previous one.
//! The Raft position a snapshot stands for (its meta) is kept by the consensus layer, next to it.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::sync::mpsc::{SyncSender, sync_channel};

use pkraft_types::{KeyBytes, Payload, payload::PAYLOAD_LEN_MAX};
use redb::{ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use crate::expiry_index::{self, BucketRow, EXPIRY_BUCKETS};
use crate::rows::{StoredPacket, answers_row, hex};
use crate::shared::begin_durable_write;
use crate::tables::{ANSWERS, META, META_APPLIED_STATE, PACKETS, REMOVED_NODES};
use crate::{Store, StoreError};

const MAGIC: &[u8; 8] = b"PKRSNAP\0";
/// Version of the snapshot byte format this build writes. It reads this one and 1 and 2.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 3;
/// Packets only, one postcard value.
const SNAPSHOT_FORMAT_V1: u32 = 1;
/// Packets and removed node ids, one postcard value.
const SNAPSHOT_FORMAT_V2: u32 = 2;

const TAG_PACKET: u8 = 1;
const TAG_REMOVED_NODE: u8 = 2;
const TAG_END: u8 = 0xFF;

/// Buffer between the frames and the file or socket.
const IO_BUFFER_BYTES: usize = 256 * 1024;

/// A consistent point of the state to write out as a snapshot: one read transaction, which the
/// writer never waits for (redb's MVCC). Keep it only as long as the export takes: the pages it
/// sees cannot be reused while it is open.
pub struct SnapshotSource {
    txn: ReadTransaction,
}

/// What a snapshot held, as written or as read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotSummary {
    pub packets: u64,
    pub removed_nodes: u64,
    /// Bytes of the whole stream.
    pub bytes: u64,
}

/// A whole snapshot in memory: for tests and small states. Nodes stream ([`SnapshotSource`]).
#[derive(Debug)]
pub struct Export {
    pub applied_state: Option<Vec<u8>>,
    pub data: Vec<u8>,
    /// Packets in `data`.
    pub records: u64,
}

impl Store {
    /// Opens the read transaction a snapshot (or a backup) is written from, once the writer has
    /// committed everything applied before: it holds the applied state and the data of the
    /// same commit.
    pub fn snapshot_source(&self) -> Result<SnapshotSource, StoreError> {
        self.commit_applied()?;
        Ok(SnapshotSource {
            txn: self.db.begin_read()?,
        })
    }

    /// The whole snapshot in memory (see [`Export`]).
    pub fn export_snapshot(&self) -> Result<Export, StoreError> {
        let source = self.snapshot_source()?;
        let mut data = Vec::new();
        let summary = source.write_to(&mut data)?;
        Ok(Export {
            applied_state: source.applied_state()?,
            data,
            records: summary.packets,
        })
    }

    /// [`Store::import_snapshot_from`] over bytes in memory.
    pub fn import_snapshot(
        &self,
        data: &[u8],
        applied_state: &[u8],
    ) -> Result<SnapshotSummary, StoreError> {
        self.import_snapshot_from(data, applied_state)
    }

    /// Replaces the whole state with the snapshot read from `input` and records `applied_state`,
    /// in one write transaction that commits only once the whole stream has been read and its
    /// counts and checksum match: a torn or damaged snapshot leaves the state as it was, and
    /// readers keep seeing the old state until the commit. The stream is read, and each packet's
    /// answers compiled, on a thread beside the one that writes the rows ([`import_frames`]).
    pub fn import_snapshot_from(
        &self,
        input: impl Read + Send,
        applied_state: &[u8],
    ) -> Result<SnapshotSummary, StoreError> {
        let mut input = FrameReader::new(input);
        let version = input.header()?;
        // The writer commits what it holds, then waits until this import is done.
        let _paused = self.writer.pause()?;
        let txn = begin_durable_write(&self.db)?;
        txn.delete_table(PACKETS)?;
        txn.delete_table(ANSWERS)?;
        expiry_index::clear(&txn)?;
        txn.delete_table(REMOVED_NODES)?;
        let summary = {
            let mut tables = ImportTables {
                packets: txn.open_table(PACKETS)?,
                answers: txn.open_table(ANSWERS)?,
                expiry: txn.open_table(EXPIRY_BUCKETS)?,
                removed: txn.open_table(REMOVED_NODES)?,
            };
            let summary = import_frames(input, version, &mut tables)?;
            txn.open_table(META)?
                .insert(META_APPLIED_STATE, applied_state)?;
            summary
        };
        // Dropping `txn` on any error above aborts it.
        txn.commit()?;
        self.latest.refresh(&self.db);
        self.quarantine.clear();
        self.versions.bump_all();
        Ok(summary)
    }
}

/// Reads a whole snapshot stream and checks it (format, every frame, counts and checksum)
/// without a store: for `pkraft verify` and for backup files.
pub fn check_snapshot(input: impl Read) -> Result<SnapshotSummary, StoreError> {
    struct Discard;
    impl Sink for Discard {
        fn packet(&mut self, _key: &KeyBytes, _stored: &StoredPacket) -> Result<(), StoreError> {
            Ok(())
        }
        fn removed_node(&mut self, _node_id: u64) -> Result<(), StoreError> {
            Ok(())
        }
    }
    let mut input = FrameReader::new(input);
    let version = input.header()?;
    read_frames(input, version, &mut Discard)
}

/// Reads the frames that follow the header of a snapshot in format `version` into `sink`,
/// then checks the stream's end (format 3: its trailer).
fn read_frames<R: Read>(
    mut input: FrameReader<R>,
    version: u32,
    sink: &mut impl Sink,
) -> Result<SnapshotSummary, StoreError> {
    match version {
        SNAPSHOT_FORMAT_VERSION => input.frames(sink),
        SNAPSHOT_FORMAT_V1 | SNAPSHOT_FORMAT_V2 => legacy::import(input, version, sink),
        version => Err(StoreError::Snapshot(format!(
            "format version {version}, this build reads {SNAPSHOT_FORMAT_V1} to \
             {SNAPSHOT_FORMAT_VERSION}"
        ))),
    }
}

/// Checks a snapshot stream that arrives in pieces (a follower receiving it from the leader,
/// chunk by chunk), without holding it: the checksum in a format 3 trailer against every byte
/// before it. Only the checksum: an install reads every frame anyway.
#[derive(Debug, Default, Clone)]
pub struct StreamCheck {
    crc: crc32fast::Hasher,
    /// The first 12 bytes (magic and format version).
    head: Vec<u8>,
    /// The last 4 bytes seen, not yet hashed: the checksum, if the stream ends here.
    held: Vec<u8>,
}

/// What [`StreamCheck::verdict`] says of a whole stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamVerdict {
    /// Format 3, and the checksum matches.
    Intact,
    /// Format 1 or 2: no checksum to check.
    Unchecked,
    /// Not a snapshot, or the checksum does not match.
    Damaged(String),
}

impl StreamCheck {
    /// Takes the next bytes of the stream.
    pub fn update(&mut self, bytes: &[u8]) {
        let head_missing = 12usize.saturating_sub(self.head.len());
        self.head
            .extend_from_slice(&bytes[..head_missing.min(bytes.len())]);
        self.held.extend_from_slice(bytes);
        if let Some(ready) = self.held.len().checked_sub(4) {
            self.crc.update(&self.held[..ready]);
            self.held.drain(..ready);
        }
    }

    /// The verdict on the stream taken so far, as a whole snapshot.
    pub fn verdict(&self) -> StreamVerdict {
        let (Some(magic), Some(version)) = (self.head.get(..8), self.head.get(8..12)) else {
            return StreamVerdict::Damaged("too short to be a snapshot".to_string());
        };
        if magic != MAGIC {
            return StreamVerdict::Damaged("not a pkraft snapshot".to_string());
        }
        let version = u32::from_be_bytes([version[0], version[1], version[2], version[3]]);
        match version {
            SNAPSHOT_FORMAT_VERSION => {}
            SNAPSHOT_FORMAT_V1 | SNAPSHOT_FORMAT_V2 => return StreamVerdict::Unchecked,
            version => {
                return StreamVerdict::Damaged(format!("unknown format version {version}"));
            }
        }
        let Ok(trailer) = <[u8; 4]>::try_from(self.held.as_slice()) else {
            return StreamVerdict::Damaged("too short to be a snapshot".to_string());
        };
        if u32::from_be_bytes(trailer) == self.crc.clone().finalize() {
            StreamVerdict::Intact
        } else {
            StreamVerdict::Damaged("checksum mismatch (damaged)".to_string())
        }
    }
}

impl SnapshotSource {
    /// The consensus layer's `applied_state` as of this read.
    pub fn applied_state(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .txn
            .open_table(META)?
            .get(META_APPLIED_STATE)?
            .map(|v| v.value().to_vec()))
    }

    /// Packets this snapshot will hold.
    pub fn packets(&self) -> Result<u64, StoreError> {
        Ok(self.txn.open_table(PACKETS)?.len()?)
    }

    /// Writes the snapshot (format 3) to `out`, through a buffer of its own.
    pub fn write_to(&self, out: impl Write) -> Result<SnapshotSummary, StoreError> {
        let mut out = FrameWriter::new(out);
        out.put(MAGIC)?;
        out.put(&SNAPSHOT_FORMAT_VERSION.to_be_bytes())?;
        let mut summary = SnapshotSummary::default();
        for row in self.txn.open_table(PACKETS)?.iter()? {
            let (key, value) = row?;
            let stored = StoredPacket::decode(value.value())?;
            let payload = stored.payload.as_bytes();
            let len = u32::try_from(payload.len())
                .map_err(|_| StoreError::Corrupt(format!("a payload of {}", payload.len())))?;
            out.put(&[TAG_PACKET])?;
            out.put(key.value())?;
            out.put(&stored.applied_at_micros.to_be_bytes())?;
            out.put(&len.to_be_bytes())?;
            out.put(payload)?;
            summary.packets += 1;
        }
        for row in self.txn.open_table(REMOVED_NODES)?.iter()? {
            out.put(&[TAG_REMOVED_NODE])?;
            out.put(&row?.0.value().to_be_bytes())?;
            summary.removed_nodes += 1;
        }
        out.put(&[TAG_END])?;
        out.put(&summary.packets.to_be_bytes())?;
        out.put(&summary.removed_nodes.to_be_bytes())?;
        summary.bytes = out.finish()?;
        Ok(summary)
    }
}

/// Where the frames of a snapshot go.
trait Sink {
    fn packet(&mut self, key: &KeyBytes, stored: &StoredPacket) -> Result<(), StoreError>;
    fn removed_node(&mut self, node_id: u64) -> Result<(), StoreError>;
}

/// Packets a batch of prepared rows holds: a batch is handed from the reader to the writer at
/// once, so that they meet on the channel once per batch, not per packet.
const IMPORT_BATCH_PACKETS: usize = 512;
/// Batches prepared ahead of the writer, at most. A row set is at most a 1072-byte payload,
/// its compiled answers (a few hundred bytes) and 36 bytes of index: the rows in flight stay
/// under about 8 MiB whatever the snapshot's size.
const IMPORT_BATCHES_AHEAD: usize = 4;

/// The rows one snapshot frame becomes.
enum ImportRow {
    Packet {
        key: KeyBytes,
        /// The `packets` value: `applied_at ‖ payload`.
        packet: Vec<u8>,
        /// The `answers` row, compiled from the packet: snapshots do not carry them.
        answers: Vec<u8>,
        expiry: BucketRow,
    },
    RemovedNode(u64),
}

/// The reader's side of an import: turns each frame into its rows (the packet's compile is
/// most of an import's CPU) and hands them to the writer in batches.
struct PreparingSink {
    batch: Vec<ImportRow>,
    to_writer: SyncSender<Vec<ImportRow>>,
}

impl PreparingSink {
    fn push(&mut self, row: ImportRow) -> Result<(), StoreError> {
        self.batch.push(row);
        if self.batch.len() >= IMPORT_BATCH_PACKETS {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> Result<(), StoreError> {
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(IMPORT_BATCH_PACKETS));
        // The writer drops its end only when it stopped on an error of its own, which is the
        // one the import reports.
        self.to_writer
            .send(batch)
            .map_err(|_| StoreError::Snapshot("the import's writer stopped".to_string()))
    }
}

impl ImportRow {
    fn packet(key: &KeyBytes, stored: &StoredPacket) -> ImportRow {
        ImportRow::Packet {
            key: *key,
            packet: stored.encode(),
            answers: answers_row(key, &stored.payload),
            expiry: expiry_index::row_of(stored.payload.timestamp_micros(), key),
        }
    }
}

impl Sink for PreparingSink {
    fn packet(&mut self, key: &KeyBytes, stored: &StoredPacket) -> Result<(), StoreError> {
        self.push(ImportRow::packet(key, stored))
    }

    fn removed_node(&mut self, node_id: u64) -> Result<(), StoreError> {
        self.push(ImportRow::RemovedNode(node_id))
    }
}

/// An import on the thread that asks for it, when blocking work runs inline (a simulation,
/// `pkraft_types::world::runs_blocking_work_inline`): each frame's rows written as they come.
struct InlineSink<'tables, 'txn> {
    tables: &'tables mut ImportTables<'txn>,
}

impl Sink for InlineSink<'_, '_> {
    fn packet(&mut self, key: &KeyBytes, stored: &StoredPacket) -> Result<(), StoreError> {
        self.tables.insert(&ImportRow::packet(key, stored))
    }

    fn removed_node(&mut self, node_id: u64) -> Result<(), StoreError> {
        self.tables.insert(&ImportRow::RemovedNode(node_id))
    }
}

/// The tables of an import's write transaction.
struct ImportTables<'txn> {
    packets: redb::Table<'txn, &'static KeyBytes, &'static [u8]>,
    answers: redb::Table<'txn, &'static KeyBytes, &'static [u8]>,
    expiry: redb::Table<'txn, &'static BucketRow, ()>,
    removed: redb::Table<'txn, u64, ()>,
}

impl ImportTables<'_> {
    fn insert(&mut self, row: &ImportRow) -> Result<(), StoreError> {
        match row {
            ImportRow::Packet {
                key,
                packet,
                answers,
                expiry,
            } => {
                if self.packets.insert(key, packet.as_slice())?.is_some() {
                    return Err(StoreError::Snapshot(format!(
                        "key {} appears twice",
                        hex(key)
                    )));
                }
                self.answers.insert(key, answers.as_slice())?;
                self.expiry.insert(expiry, ())?;
            }
            ImportRow::RemovedNode(node_id) => {
                self.removed.insert(node_id, ())?;
            }
        }
        Ok(())
    }
}

/// Reads the snapshot after its header (format `version`) on a thread of its own, which also
/// prepares each frame's rows, while this thread writes them into `tables` in the order they
/// came. (The compile off the writer's thread bought little on real rows: the install is
/// bound by redb's one writer; docs/BENCHMARKS.md, "Issue 75, first steps".) Returns the snapshot's
/// summary once both are done and the whole stream checked; on an error, the first one the
/// writer met, else the reader's (which stops the other side at its next batch). Where blocking
/// work runs inline (a simulation) there is no second thread: one reads, prepares and writes.
fn import_frames<R: Read + Send>(
    input: FrameReader<R>,
    version: u32,
    tables: &mut ImportTables<'_>,
) -> Result<SnapshotSummary, StoreError> {
    if pkraft_types::world::runs_blocking_work_inline() {
        return read_frames(input, version, &mut InlineSink { tables });
    }
    let (to_writer, from_reader) = sync_channel::<Vec<ImportRow>>(IMPORT_BATCHES_AHEAD);
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("pkraft-import".to_string())
            .spawn_scoped(scope, move || {
                let mut sink = PreparingSink {
                    batch: Vec::with_capacity(IMPORT_BATCH_PACKETS),
                    to_writer,
                };
                let summary = read_frames(input, version, &mut sink)?;
                sink.send()?;
                Ok(summary)
            })
            .map_err(|source| StoreError::SnapshotIo {
                what: "starting the import's reader".to_string(),
                source,
            })?;
        // `from_reader` is dropped when this stops, on an error too: a reader waiting to send
        // then stops instead of waiting for good.
        let written = from_reader
            .into_iter()
            .try_for_each(|batch| batch.iter().try_for_each(|row| tables.insert(row)));
        let read = reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        written?;
        read
    })
}

/// Writes bytes through a buffer, keeping the checksum and the count.
struct FrameWriter<W: Write> {
    out: BufWriter<W>,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> FrameWriter<W> {
    fn new(out: W) -> Self {
        FrameWriter {
            out: BufWriter::with_capacity(IO_BUFFER_BYTES, out),
            crc: crc32fast::Hasher::new(),
            bytes: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.out.write_all(bytes).map_err(write_error)?;
        self.crc.update(bytes);
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Writes the checksum of everything so far and flushes; returns the bytes written.
    fn finish(mut self) -> Result<u64, StoreError> {
        let crc = self.crc.clone().finalize();
        self.put(&crc.to_be_bytes())?;
        self.out.flush().map_err(write_error)?;
        Ok(self.bytes)
    }
}

fn write_error(e: io::Error) -> StoreError {
    StoreError::SnapshotIo {
        what: "writing".to_string(),
        source: e,
    }
}

/// Reads a snapshot through a buffer, keeping the checksum of what it read and its position for
/// error messages.
struct FrameReader<R: Read> {
    input: BufReader<R>,
    crc: crc32fast::Hasher,
    offset: u64,
}

impl<R: Read> FrameReader<R> {
    fn new(input: R) -> Self {
        FrameReader {
            input: BufReader::with_capacity(IO_BUFFER_BYTES, input),
            crc: crc32fast::Hasher::new(),
            offset: 0,
        }
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<(), StoreError> {
        self.input.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                StoreError::Snapshot(format!("truncated at byte {}", self.offset))
            } else {
                StoreError::SnapshotIo {
                    what: format!("reading at byte {}", self.offset),
                    source: e,
                }
            }
        })?;
        self.crc.update(buf);
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let mut bytes = [0u8; N];
        self.take(&mut bytes)?;
        Ok(bytes)
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Checks the magic; returns the format version.
    fn header(&mut self) -> Result<u32, StoreError> {
        let magic: [u8; 8] = self.array().map_err(|e| match e {
            StoreError::Snapshot(_) => StoreError::Snapshot("too short to be a snapshot".into()),
            e => e,
        })?;
        if &magic != MAGIC {
            return Err(StoreError::Snapshot("not a pkraft snapshot".into()));
        }
        self.u32()
    }

    /// Reads the frames of format 3 into `sink`, then checks the trailer and the end of stream.
    fn frames(&mut self, sink: &mut impl Sink) -> Result<SnapshotSummary, StoreError> {
        let mut seen = SnapshotSummary::default();
        let mut payload = vec![0u8; PAYLOAD_LEN_MAX];
        loop {
            let frame_at = self.offset;
            match self.array::<1>()?[0] {
                TAG_PACKET => {
                    let key: KeyBytes = self.array()?;
                    let applied_at_micros = self.u64()?;
                    let len = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
                    let Some(buf) = payload.get_mut(..len) else {
                        return Err(StoreError::Snapshot(format!(
                            "a payload of {len} bytes at byte {frame_at}"
                        )));
                    };
                    self.take(buf)?;
                    let payload =
                        Payload::new(bytes::Bytes::copy_from_slice(buf)).map_err(|source| {
                            StoreError::SnapshotPacket {
                                at: frame_at,
                                source: pkraft_types::PacketError::Length(source),
                            }
                        })?;
                    let stored = StoredPacket {
                        applied_at_micros,
                        payload,
                    };
                    sink.packet(&key, &stored)?;
                    seen.packets += 1;
                }
                TAG_REMOVED_NODE => {
                    let node_id = self.u64()?;
                    sink.removed_node(node_id)?;
                    seen.removed_nodes += 1;
                }
                TAG_END => break,
                tag => {
                    return Err(StoreError::Snapshot(format!(
                        "unknown frame {tag:#04x} at byte {frame_at}"
                    )));
                }
            }
        }
        let counted = (self.u64()?, self.u64()?);
        let expected_crc = self.crc.clone().finalize();
        let crc = self.u32()?;
        if crc != expected_crc {
            return Err(StoreError::Snapshot(
                "checksum mismatch (damaged)".to_string(),
            ));
        }
        if counted != (seen.packets, seen.removed_nodes) {
            return Err(StoreError::Snapshot(format!(
                "the trailer counts {} packets and {} removed ids, the stream holds {} and {}",
                counted.0, counted.1, seen.packets, seen.removed_nodes
            )));
        }
        let mut rest = [0u8; 1];
        match self.input.read(&mut rest) {
            Ok(0) => {}
            Ok(_) => {
                return Err(StoreError::Snapshot(format!(
                    "bytes after the end at byte {}",
                    self.offset
                )));
            }
            Err(e) => {
                return Err(StoreError::SnapshotIo {
                    what: "reading".to_string(),
                    source: e,
                });
            }
        }
        seen.bytes = self.offset;
        Ok(seen)
    }
}

/// Formats 1 and 2: one postcard value, decoded in memory.
mod legacy {
    use super::*;

    #[derive(Serialize, Deserialize)]
    pub(super) struct Entry {
        pub(super) key: KeyBytes,
        pub(super) applied_at_micros: u64,
        pub(super) payload: Payload,
    }

    #[derive(Serialize, Deserialize)]
    struct Body {
        packets: Vec<Entry>,
        removed_nodes: Vec<u64>,
    }

    pub(super) fn import<R: Read>(
        mut input: FrameReader<R>,
        version: u32,
        sink: &mut impl Sink,
    ) -> Result<SnapshotSummary, StoreError> {
        let mut bytes = Vec::new();
        input
            .input
            .read_to_end(&mut bytes)
            .map_err(|e| StoreError::SnapshotIo {
                what: "reading".to_string(),
                source: e,
            })?;
        let body = if version == SNAPSHOT_FORMAT_V1 {
            Body {
                packets: decode_all(&bytes)?,
                removed_nodes: Vec::new(),
            }
        } else {
            decode_all(&bytes)?
        };
        let summary = SnapshotSummary {
            packets: body.packets.len() as u64,
            removed_nodes: body.removed_nodes.len() as u64,
            bytes: input.offset + bytes.len() as u64,
        };
        for node_id in body.removed_nodes {
            sink.removed_node(node_id)?;
        }
        for entry in body.packets {
            let stored = StoredPacket {
                applied_at_micros: entry.applied_at_micros,
                payload: entry.payload,
            };
            sink.packet(&entry.key, &stored)?;
        }
        Ok(summary)
    }

    /// Decodes `bytes` as one `T` that must use them all.
    fn decode_all<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
        let (value, rest) = postcard::take_from_bytes(bytes).map_err(StoreError::SnapshotDecode)?;
        if !rest.is_empty() {
            return Err(StoreError::Snapshot(format!(
                "{} bytes after the end",
                rest.len()
            )));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: u8) -> legacy::Entry {
        legacy::Entry {
            key: [key; 32],
            applied_at_micros: 5,
            payload: Payload::new(bytes::Bytes::from(vec![0u8; 80])).expect("payload"),
        }
    }

    /// Goal: a node of this build installs a snapshot that a node of an earlier build sent
    /// (format 1: packets only; format 2: packets and removed ids), so a cluster can be upgraded
    /// one node at a time.
    #[test]
    fn formats_1_and_2_are_still_read() {
        let mut v1 = MAGIC.to_vec();
        v1.extend_from_slice(&SNAPSHOT_FORMAT_V1.to_be_bytes());
        let v1 = postcard::to_extend(&vec![entry(7)], v1).expect("encode");
        let summary = check_snapshot(v1.as_slice()).expect("format 1");
        assert_eq!((summary.packets, summary.removed_nodes), (1, 0));

        #[derive(Serialize)]
        struct V2 {
            packets: Vec<legacy::Entry>,
            removed_nodes: Vec<u64>,
        }
        let mut v2 = MAGIC.to_vec();
        v2.extend_from_slice(&SNAPSHOT_FORMAT_V2.to_be_bytes());
        let body = V2 {
            packets: vec![entry(1), entry(2)],
            removed_nodes: vec![4],
        };
        let v2 = postcard::to_extend(&body, v2).expect("encode");
        let summary = check_snapshot(v2.as_slice()).expect("format 2");
        assert_eq!((summary.packets, summary.removed_nodes), (2, 1));
        assert_eq!(summary.bytes, v2.len() as u64);
    }

    /// Goal: an import whose writer stops (here on a key that appears twice, the writer's own
    /// check) stops its reader too and reports the writer's error, even with more batches
    /// behind the bad row than the channel between them holds; the state stays as it was.
    #[test]
    fn an_import_whose_writer_stops_stops_its_reader_and_keeps_the_state() {
        let packets = 2 + IMPORT_BATCH_PACKETS * (IMPORT_BATCHES_AHEAD + 4);
        let mut data = Vec::new();
        let mut out = FrameWriter::new(&mut data);
        out.put(MAGIC).expect("put");
        out.put(&SNAPSHOT_FORMAT_VERSION.to_be_bytes())
            .expect("put");
        let payload = vec![0u8; 80];
        for n in 0..packets {
            // The first key twice, then distinct ones.
            let key = u64::try_from(n.saturating_sub(1)).expect("small");
            let mut key_bytes = [0u8; 32];
            key_bytes[..8].copy_from_slice(&key.to_be_bytes());
            out.put(&[TAG_PACKET]).expect("put");
            out.put(&key_bytes).expect("put");
            out.put(&5u64.to_be_bytes()).expect("put");
            out.put(&80u32.to_be_bytes()).expect("put");
            out.put(&payload).expect("put");
        }
        out.put(&[TAG_END]).expect("put");
        out.put(&(packets as u64).to_be_bytes()).expect("put");
        out.put(&0u64.to_be_bytes()).expect("put");
        out.finish().expect("finish");
        check_snapshot(data.as_slice()).expect("well-formed: only the writer objects");

        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state.redb")).expect("open");
        let mut txn = store.begin_apply(true).expect("begin");
        txn.record_removed_nodes(&[9]).expect("record");
        txn.commit(b"before").expect("commit");
        match store.import_snapshot(&data, b"after") {
            Err(StoreError::Snapshot(message)) => assert!(
                message.contains("appears twice"),
                "the writer's error is the one reported: {message}"
            ),
            other => panic!("a key twice must be refused: {other:?}"),
        }
        assert_eq!(store.packet_count().expect("count"), 0);
        assert!(store.is_removed_node(9).expect("read"));
        assert_eq!(
            store.applied_state().expect("read").as_deref(),
            Some(&b"before"[..])
        );
    }
}
