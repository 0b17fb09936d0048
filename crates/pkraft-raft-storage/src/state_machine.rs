//! The Raft state machine over [`pkraft_state::Store`].
//!
//! `apply` runs every entry of a call in the store's open apply transaction, on the store's
//! writer thread, and records the new [`AppliedState`] (last applied log id + membership) in the
//! same transaction, so the data on disk and the position in the log it reflects can never
//! disagree. What it applied is visible to this node's readers when it returns; the store
//! commits it with the applies around it (`pkraft_state::ApplyBatching`). Snapshots are exports
//! of one read transaction; the current snapshot is kept in a file so that it survives restarts
//! with its exact meta.
//!
//! Durability: the Raft log is fsynced before an entry is acknowledged, so the state is a
//! projection that can be rebuilt from it. The store's commits are not fsynced, except when the
//! entries or packets applied since the last durable commit reach
//! [`pkraft_state::DURABLE_EVERY_ENTRIES`] or [`pkraft_state::DURABLE_EVERY_PACKETS`], which
//! bounds what a restart must apply again. Before a snapshot is handed to openraft (which then
//! purges the log up to it) the state it was read from is made durable, so the log never loses
//! entries the durable state lacks. (With an fsync per apply, pkraft used about 20 % more CPU
//! per PUT than without; with one every 128 entries, each stalled the commit pipeline long
//! enough to double PUT p99: docs/BENCHMARKS.md.)

use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, Membership,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use pkraft_state::{ApplyTxn, Store};
use pkraft_types::short_lived::ShortLivedRecord;
use pkraft_types::{Command, KeyBytes, PublishOutcome};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::Damaged;
use super::codec::{BoxError, blocking, decode, encode, storage_error};
use super::snapshot_data::SnapshotData;
use super::snapshot_file::SnapshotFile;
use super::type_config::{ApplyResult, NodeId, TypeConfig};

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// The DHT publisher's position as committed through Raft ([`Command::DhtProgress`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub published_through: u64,
    pub republished_through: Option<KeyBytes>,
}

/// What the state machine tells the node as it works: its metrics, the DHT outbox and the
/// snapshot schedule. The node implements it (storage tests run without), so that the storage
/// side never reaches into the node.
pub trait StateEvents: Send + Sync + 'static {
    /// Whether applies should note the keys they store (the DHT outbox is on); asked once per
    /// apply call.
    fn wants_stored_keys(&self) -> bool;
    /// An apply call through index `through` has committed: the packets it stored (key, index of
    /// the entry) and the DHT progress it committed. Only when
    /// [`StateEvents::wants_stored_keys`] said so for that call.
    fn applied(&self, stored: &[(KeyBytes, u64)], progress: &[Progress], through: u64);
    /// Entries applied removed `records` expired packets.
    fn expired(&self, records: u64);
    /// The publishes applied carried leader stamps up to `leader_time_micros` (the log's time,
    /// a fence of cluster time).
    fn stamped(&self, leader_time_micros: u64);
    /// An apply call with entries ended after `took` (wall time: the hand-off to the blocking
    /// pool and back, the state transaction and its commit).
    fn applied_in(&self, took: Duration);
    /// A snapshot build ended after `took`.
    fn snapshot_built(&self, took: Duration);
    /// A snapshot from the leader was installed in `took`.
    fn snapshot_installed(&self, took: Duration);
    /// Damaged data was found (and not used).
    fn damage_found(&self, what: Damaged);
    /// Entries applied carried these short-lived records (in log order), for this replica's DNS.
    fn short_lived_records(&self, records: &[ShortLivedRecord]);
}

/// The Raft position the stored data reflects; committed in the same transaction as the data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
}

impl AppliedState {
    pub(crate) fn load(store: &Store) -> Result<Self> {
        let bytes = store
            .applied_state()
            .map_err(|e| storage_error(ErrorSubject::StateMachine, ErrorVerb::Read, &e))?;
        match bytes {
            Some(bytes) => decode(&bytes)
                .map_err(|e| storage_error(ErrorSubject::StateMachine, ErrorVerb::Read, &e)),
            None => Ok(AppliedState::default()),
        }
    }
}

/// The voters of the membership the state in `store` was applied with (every configuration of
/// a joint one; empty for a state never applied to).
pub fn applied_voters(store: &Store) -> Result<Vec<NodeId>> {
    let applied = AppliedState::load(store)?;
    Ok(applied.membership.membership().voter_ids().collect())
}

/// What an apply call tells the DHT outbox (through [`StateEvents`]).
#[derive(Default)]
struct OutboxNotes {
    /// Keys whose packet changed, with the index of the entry that changed them.
    stored: Vec<(KeyBytes, u64)>,
    progress: Vec<Progress>,
}

impl OutboxNotes {
    fn record(&mut self, index: u64, command: &Command, outcomes: &[PublishOutcome]) {
        match command {
            Command::Publish { packets, .. } => {
                for (packet, outcome) in packets.iter().zip(outcomes) {
                    if *outcome == PublishOutcome::Stored {
                        self.stored.push((packet.key, index));
                    }
                }
            }
            Command::DhtProgress {
                published_through,
                republished_through,
            } => self.progress.push(Progress {
                published_through: *published_through,
                republished_through: *republished_through,
            }),
            Command::Expire { .. } | Command::ShortLivedRecord(_) => {}
        }
    }
}

pub struct StateMachine {
    store: Store,
    snapshot_file: SnapshotFile,
    /// Mirror of what is applied to the store, kept to answer `applied_state` without IO.
    applied: AppliedState,
    /// Told what happens (none in storage tests).
    events: Option<Arc<dyn StateEvents>>,
}

impl StateMachine {
    /// Opens the state machine over `store`, keeping its current snapshot in `snapshot_dir`.
    /// `snapshot_dir` must not be shared with another state machine.
    pub fn open(store: Store, snapshot_dir: PathBuf) -> Result<Self> {
        let applied = AppliedState::load(&store)?;
        let snapshot_file = SnapshotFile::open(snapshot_dir)
            .map_err(|e| storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e))?;
        Ok(StateMachine {
            store,
            snapshot_file,
            applied,
            events: None,
        })
    }

    /// Tells `events` what happens.
    pub fn with_events(mut self, events: Arc<dyn StateEvents>) -> Self {
        self.events = Some(events);
        self
    }
}

impl StateMachine {
    /// After a log repair set entries aside, the log may end (or have been purged) below what
    /// the state has applied. openraft then purges the log up to the applied entry at start,
    /// which needs a snapshot at least that far along; if the current one is older, one is
    /// built now, from the state. Returns whether it built one.
    pub async fn cover_applied_with_snapshot(
        &mut self,
        log_end: Option<LogId<NodeId>>,
    ) -> Result<bool> {
        let applied = self.applied.last_applied;
        if applied <= log_end {
            return Ok(false);
        }
        let snapshot_file = self.snapshot_file.clone();
        let snapshot_end = blocking(ErrorSubject::Snapshot(None), ErrorVerb::Read, move || {
            Ok(snapshot_file.load_meta()?.and_then(|meta| meta.last_log_id))
        })
        .await?;
        if snapshot_end >= applied {
            return Ok(false);
        }
        tracing::warn!(
            log_end = ?log_end,
            applied = ?applied,
            snapshot = ?snapshot_end,
            "the repaired log ends before the applied state: building a snapshot of the state to restart the log after it"
        );
        self.get_snapshot_builder().await.build_snapshot().await?;
        Ok(true)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let started = Instant::now();
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let applied = self.applied.clone();
        // Off (no `[dht]`): one flag read per apply call, nothing noted.
        let noting = self
            .events
            .as_ref()
            .is_some_and(|events| events.wants_stored_keys());
        let done: std::result::Result<ApplyDone, BoxError> = self
            .store
            .apply(move |txn| apply_entries(txn, applied, entries, noting))
            .await;
        let ApplyDone {
            applied,
            results,
            noted,
            short_lived,
            stamp,
        } = done.map_err(|e| {
            StorageIOError::new(
                ErrorSubject::StateMachine,
                ErrorVerb::Write,
                AnyError::from_dyn(&*e, None),
            )
        })?;
        if noting && let (Some(events), Some(last)) = (&self.events, applied.last_applied) {
            // After the apply: the publisher reads the store when it puts a key, and sees what
            // is applied (the read buffer) whether or not it is committed yet.
            events.applied(&noted.stored, &noted.progress, last.index);
        }
        self.applied = applied;
        if let Some(events) = &self.events {
            events.applied_in(started.elapsed());
            events.expired(results.iter().map(|result| result.expired).sum());
            if !short_lived.is_empty() {
                events.short_lived_records(&short_lived);
            }
            if let Some(stamp) = stamp {
                events.stamped(stamp);
            }
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            snapshot_file: self.snapshot_file.clone(),
            events: self.events.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>> {
        let snapshot_file = self.snapshot_file.clone();
        let file = blocking(ErrorSubject::Snapshot(None), ErrorVerb::Write, move || {
            Ok(snapshot_file.begin_incoming()?)
        })
        .await?;
        Ok(Box::new(SnapshotData::from_std(file)))
    }

    /// Installs a snapshot received from the leader: read from its file in one store transaction
    /// (the old state keeps serving until it commits, and stays if the snapshot is damaged), then
    /// kept as the current snapshot.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<SnapshotData>,
    ) -> Result<()> {
        // The applied index never goes back, by a snapshot either: one behind what this
        // replica applied would undo applies it answered for. openraft installs only snapshots
        // past its committed index; this holds it whatever the caller.
        let behind =
            meta.last_log_id.map(|id| id.index) < self.applied.last_applied.map(|id| id.index);
        if behind {
            let _ = std::fs::remove_file(self.snapshot_file.incoming_path());
            return Err(StorageIOError::new(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                AnyError::error(format!(
                    "install of a snapshot through {:?} behind the applied {:?}: the applied index never goes back",
                    meta.last_log_id, self.applied.last_applied
                )),
            )
            .into());
        }
        let applied = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let started = Instant::now();
        let store = self.store.clone();
        let snapshot_file = self.snapshot_file.clone();
        let meta = meta.clone();
        let state = applied.clone();
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let mut file = snapshot.into_std().await;
        let summary = blocking(subject, ErrorVerb::Write, move || {
            let installed = install_from(&store, &snapshot_file, &meta, &state, &mut file);
            if installed.is_err() {
                // A snapshot-sized file must not stay behind (the next receipt replaces it).
                let _ = std::fs::remove_file(snapshot_file.incoming_path());
            }
            installed
        })
        .await?;
        self.applied = applied;
        if let Some(events) = &self.events {
            events.snapshot_installed(started.elapsed());
        }
        tracing::info!(
            last_log_index = ?self.applied.last_applied.map(|log_id| log_id.index),
            packets = summary.packets,
            bytes = summary.bytes,
            took_ms = started.elapsed().as_millis(),
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    /// The current snapshot, checked first: openraft sends it to a follower that needs it, and
    /// a damaged one would be refused by every follower, each time. A damaged one is dropped
    /// and a new one built in its place, from the state (which is at least as far along).
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let snapshot_file = self.snapshot_file.clone();
        let current = blocking(ErrorSubject::Snapshot(None), ErrorVerb::Read, move || {
            let Some((meta, mut data)) = snapshot_file.load()? else {
                return Ok(None);
            };
            if let Err(damage) = pkraft_state::check_snapshot(std::io::BufReader::new(&data)) {
                let path = snapshot_file.data_path()?.unwrap_or_default();
                return Ok(Some(Err((meta, path, damage))));
            }
            data.seek(SeekFrom::Start(0))?;
            Ok(Some(Ok((meta, data))))
        })
        .await?;
        match current {
            None => Ok(None),
            Some(Ok((meta, data))) => Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(SnapshotData::from_std(data)),
            })),
            Some(Err((meta, path, damage))) => {
                tracing::error!(
                    snapshot = %path.display(),
                    last_log_index = ?meta.last_log_id.map(|log_id| log_id.index),
                    %damage,
                    "the current snapshot is damaged: it is not sent; building a new one in its place"
                );
                if let Some(events) = &self.events {
                    events.damage_found(Damaged::Snapshot);
                }
                self.get_snapshot_builder()
                    .await
                    .build_snapshot()
                    .await
                    .map(Some)
            }
        }
    }
}

/// What one apply call did, for the node.
struct ApplyDone {
    applied: AppliedState,
    results: Vec<ApplyResult>,
    noted: OutboxNotes,
    short_lived: Vec<ShortLivedRecord>,
    /// The largest leader stamp of the publishes applied.
    stamp: Option<u64>,
}

/// Applies `entries`, in order, on top of `applied`, in the store's open transaction (on its
/// writer thread), and records the applied state they lead to with them.
fn apply_entries(
    txn: &mut ApplyTxn,
    mut applied: AppliedState,
    entries: Vec<Entry<TypeConfig>>,
    noting: bool,
) -> std::result::Result<ApplyDone, BoxError> {
    let count = entries.len() as u64;
    let mut results = Vec::with_capacity(entries.len());
    let mut noted = OutboxNotes::default();
    let mut short_lived = Vec::new();
    let mut stamp = None;
    for (position, entry) in entries.into_iter().enumerate() {
        // The applied index never goes back (etcd asserts the same): an entry applied twice
        // would, for one, store an older packet over a newer one, and an expiry applied twice
        // would delete more on this replica than on the others. `LogId`s order by term first,
        // so the index and the term are each checked: a lower index under a later term is
        // an entry applied again too. Entries applied together are consecutive; a gap would
        // leave a committed entry unapplied on this replica. (Across calls openraft's own
        // conformance suite applies with gaps, so only "never back" holds there.)
        if let Some(last) = applied.last_applied {
            assert!(
                entry.log_id.index > last.index && entry.log_id.leader_id >= last.leader_id,
                "apply of {} after {last}: the applied index and term never go back",
                entry.log_id
            );
            assert!(
                position == 0 || entry.log_id.index == last.index + 1,
                "apply of {} after {last} in one call: entries applied together are consecutive",
                entry.log_id
            );
        }
        applied.last_applied = Some(entry.log_id);
        let result = match entry.payload {
            EntryPayload::Blank => ApplyResult::default(),
            EntryPayload::Normal(command) => {
                let outcome = txn.apply(&command)?;
                if noting {
                    noted.record(entry.log_id.index, &command, &outcome.outcomes);
                }
                match command {
                    Command::ShortLivedRecord(record) => short_lived.push(record),
                    // 0: the leader knew no agreed time (`cluster_clock`).
                    Command::Publish {
                        leader_time_micros, ..
                    } if leader_time_micros > 0 => {
                        stamp = stamp.max(Some(leader_time_micros));
                    }
                    _ => {}
                }
                ApplyResult {
                    outcomes: outcome.outcomes,
                    expired: outcome.expired,
                }
            }
            EntryPayload::Membership(membership) => {
                // Every replica applies the same membership entries in the same order, so all
                // record the same removed ids.
                let dropped = dropped_nodes(applied.membership.membership(), &membership);
                if !dropped.is_empty() {
                    txn.record_removed_nodes(&dropped)?;
                }
                applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                ApplyResult::default()
            }
        };
        results.push(result);
    }
    txn.set_applied_state(&encode(&applied)?, count)?;
    Ok(ApplyDone {
        applied,
        results,
        noted,
        short_lived,
        stamp,
    })
}

/// Imports the received snapshot in `file` into `store` and keeps it as the current snapshot.
fn install_from(
    store: &Store,
    snapshot_file: &SnapshotFile,
    meta: &SnapshotMeta<NodeId, BasicNode>,
    state: &AppliedState,
    file: &mut std::fs::File,
) -> std::result::Result<pkraft_state::SnapshotSummary, BoxError> {
    if !snapshot_file.is_incoming(file)? {
        // Not streamed in from a leader (a snapshot handed over whole, as openraft's
        // `install_full_snapshot` and its test suite do): copy it to be kept.
        let mut incoming = snapshot_file.begin_incoming()?;
        file.seek(SeekFrom::Start(0))?;
        std::io::copy(file, &mut incoming)?;
        *file = incoming;
    }
    pkraft_types::world::sync_all(file)?;
    file.seek(SeekFrom::Start(0))?;
    let summary = store.import_snapshot_from(&*file, &encode(state)?)?;
    snapshot_file.commit(meta, &snapshot_file.incoming_path())?;
    Ok(summary)
}

/// Nodes that `before` has and `after` does not: removed from the cluster by that change (node ids
/// are never reused, so they must never be admitted again).
fn dropped_nodes(
    before: &Membership<NodeId, BasicNode>,
    after: &Membership<NodeId, BasicNode>,
) -> Vec<NodeId> {
    before
        .nodes()
        .map(|(id, _)| *id)
        .filter(|id| after.get_node(id).is_none())
        .collect()
}

/// Builds snapshots from a consistent read of the store; runs concurrently with `apply`.
pub struct SnapshotBuilder {
    store: Store,
    snapshot_file: SnapshotFile,
    events: Option<Arc<dyn StateEvents>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    /// Writes the state of one read transaction to a file, makes that state durable, and keeps
    /// the file as the current snapshot. Memory stays flat whatever the state's size.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let started = Instant::now();
        let store = self.store.clone();
        let snapshot_file = self.snapshot_file.clone();
        let build_path = self.snapshot_file.build_path();
        let built = blocking(ErrorSubject::Snapshot(None), ErrorVerb::Write, move || {
            // One read transaction: the packets and the applied state they correspond to.
            let source = store.snapshot_source()?;
            let applied: AppliedState = match source.applied_state()? {
                Some(bytes) => decode(&bytes)?,
                None => AppliedState::default(),
            };
            let path = snapshot_file.build_path();
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?;
            let summary = source.write_to(&mut file)?;
            pkraft_types::world::sync_all(&file)?;
            drop(source);
            // Then make that state durable: openraft purges the log up to this snapshot, so
            // the state it reflects must survive a crash without those entries. (Flushing
            // first would let an apply slip in between and make the export newer than the
            // durable state.)
            store.flush()?;
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership,
                snapshot_id: sized_snapshot_id(applied.last_applied, summary.bytes),
            };
            // The open handle keeps the data readable whether or not it becomes current.
            snapshot_file.commit(&meta, &path)?;
            file.seek(SeekFrom::Start(0))?;
            Ok((meta, file, summary))
        })
        .await;
        let (meta, data, summary) = match built {
            Ok(built) => built,
            Err(e) => {
                // A snapshot-sized file must not stay behind (the next build replaces it).
                let _ = std::fs::remove_file(build_path);
                return Err(e);
            }
        };
        if let Some(events) = &self.events {
            events.snapshot_built(started.elapsed());
        }
        tracing::info!(
            last_log_index = ?meta.last_log_id.map(|log_id| log_id.index),
            packets = summary.packets,
            bytes = summary.bytes,
            took_ms = started.elapsed().as_millis(),
            "built a snapshot"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::from_std(data)),
        })
    }
}

/// [`snapshot_id`] with the snapshot's size in bytes after it (`…-<bytes>b`), so that a follower
/// can tell from the first chunk whether it has room to install it
/// ([`snapshot_bytes_in_id`]).
pub fn sized_snapshot_id(last_applied: Option<LogId<NodeId>>, bytes: u64) -> String {
    format!("{}-{bytes}b", snapshot_id(last_applied))
}

/// The size a [`sized_snapshot_id`] names; `None` for ids without one (a leader of an older
/// build, a backup restored by one).
pub fn snapshot_bytes_in_id(snapshot_id: &str) -> Option<u64> {
    snapshot_id
        .rsplit('-')
        .next()?
        .strip_suffix('b')?
        .parse()
        .ok()
}

/// Unique per build: two snapshots of the same log position may differ in bytes (openraft's
/// `SnapshotMeta::snapshot_id` contract), so the build time is part of the id.
pub(crate) fn snapshot_id(last_applied: Option<LogId<NodeId>>) -> String {
    let micros = pkraft_types::unix_micros_now();
    match last_applied {
        Some(log_id) => format!("{}-{}-{micros}", log_id.leader_id, log_id.index),
        None => format!("empty-{micros}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot's id names its size, which a follower reads back; ids without one (an older
    /// build's, the empty state's) name none.
    #[test]
    fn a_snapshot_id_names_its_size() {
        let log_id = LogId::new(openraft::CommittedLeaderId::new(3, 1), 42);
        let id = sized_snapshot_id(Some(log_id), 123_456);
        assert!(id.ends_with("-123456b"), "{id}");
        assert_eq!(snapshot_bytes_in_id(&id), Some(123_456));
        assert_eq!(snapshot_bytes_in_id(&snapshot_id(Some(log_id))), None);
        assert_eq!(snapshot_bytes_in_id(&snapshot_id(None)), None);
        assert_eq!(snapshot_bytes_in_id(&sized_snapshot_id(None, 7)), Some(7));
        assert_eq!(snapshot_bytes_in_id("x-b"), None);
    }
}
