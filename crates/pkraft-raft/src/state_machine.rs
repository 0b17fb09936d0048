//! The Raft state machine over [`pkraft_store::Store`].
//!
//! `apply` runs every entry of a call in one store transaction and commits it together with the
//! new [`AppliedState`] (last applied log id + membership), so the data on disk and the position
//! in the log it reflects can never disagree. Snapshots are exports of one read transaction; the
//! current snapshot is kept in a file so that it survives restarts with its exact meta.

use std::io::Cursor;
use std::path::PathBuf;

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StoredMembership,
};
use pkraft_store::Store;
use serde::{Deserialize, Serialize};

use crate::codec::{Message, blocking, decode, encode, storage_error};
use crate::snapshot_file::SnapshotFile;
use crate::type_config::ApplyResult;
use crate::{NodeId, TypeConfig};

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// The Raft position the stored data reflects; committed in the same transaction as the data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
}

impl AppliedState {
    fn load(store: &Store) -> Result<Self> {
        let read_err = |e: &dyn std::fmt::Display| {
            storage_error(
                ErrorSubject::StateMachine,
                ErrorVerb::Read,
                &Message(e.to_string()),
            )
        };
        match store.applied_state().map_err(|e| read_err(&e))? {
            Some(bytes) => decode(&bytes).map_err(|e| read_err(&e)),
            None => Ok(AppliedState::default()),
        }
    }
}

pub struct StateMachine {
    store: Store,
    snapshot_file: SnapshotFile,
    /// Mirror of what is committed in the store, kept to answer `applied_state` without IO.
    applied: AppliedState,
}

impl StateMachine {
    /// Opens the state machine over `store`, keeping its current snapshot in `snapshot_dir`.
    /// `snapshot_dir` must not be shared with another state machine.
    pub fn open(store: Store, snapshot_dir: PathBuf) -> Result<Self> {
        let applied = AppliedState::load(&store)?;
        Ok(StateMachine {
            store,
            snapshot_file: SnapshotFile::new(snapshot_dir),
            applied,
        })
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
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let store = self.store.clone();
        let mut applied = self.applied.clone();
        let (applied, results) =
            blocking(ErrorSubject::StateMachine, ErrorVerb::Write, move || {
                let mut txn = store.begin_apply()?;
                let mut results = Vec::with_capacity(entries.len());
                for entry in entries {
                    applied.last_applied = Some(entry.log_id);
                    let result = match entry.payload {
                        EntryPayload::Blank => ApplyResult::default(),
                        EntryPayload::Normal(command) => ApplyResult {
                            outcomes: txn.apply(&command)?,
                        },
                        EntryPayload::Membership(membership) => {
                            applied.membership =
                                StoredMembership::new(Some(entry.log_id), membership);
                            ApplyResult::default()
                        }
                    };
                    results.push(result);
                }
                txn.commit(&encode(&applied)?)?;
                Ok((applied, results))
            })
            .await?;
        self.applied = applied;
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            snapshot_file: self.snapshot_file.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let applied = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let store = self.store.clone();
        let snapshot_file = self.snapshot_file.clone();
        let meta = meta.clone();
        let state = applied.clone();
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        blocking(subject, ErrorVerb::Write, move || {
            let data = snapshot.into_inner();
            store.import_snapshot(&data, &encode(&state)?)?;
            snapshot_file.save(&meta, &data)?;
            Ok(())
        })
        .await?;
        self.applied = applied;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let snapshot_file = self.snapshot_file.clone();
        let current = blocking(ErrorSubject::Snapshot(None), ErrorVerb::Read, move || {
            Ok(snapshot_file.load()?)
        })
        .await?;
        Ok(current.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Builds snapshots from a consistent read of the store; runs concurrently with `apply`.
pub struct SnapshotBuilder {
    store: Store,
    snapshot_file: SnapshotFile,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let store = self.store.clone();
        let snapshot_file = self.snapshot_file.clone();
        let (meta, data) = blocking(ErrorSubject::Snapshot(None), ErrorVerb::Write, move || {
            // One read transaction: the packets and the applied state they correspond to.
            let export = store.export_snapshot()?;
            let applied: AppliedState = match export.applied_state {
                Some(bytes) => decode(&bytes)?,
                None => AppliedState::default(),
            };
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership,
                snapshot_id: snapshot_id(applied.last_applied),
            };
            snapshot_file.save(&meta, &export.data)?;
            Ok((meta, export.data))
        })
        .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Unique per build: two snapshots of the same log position may differ in bytes (openraft's
/// `SnapshotMeta::snapshot_id` contract), so the build time is part of the id.
fn snapshot_id(last_applied: Option<LogId<NodeId>>) -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or_default();
    match last_applied {
        Some(log_id) => format!("{}-{}-{micros}", log_id.leader_id, log_id.index),
        None => format!("empty-{micros}"),
    }
}
