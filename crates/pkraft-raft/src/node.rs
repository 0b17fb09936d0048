//! [`Node`]: the handle the rest of the daemon uses for consensus and for the local replica.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft, StorageError};
use pkraft_store::{Store, StoreError};
use pkraft_types::{PublishOutcome, VerifiedPacket};
use tokio::task::JoinHandle;

use crate::batcher::{Batcher, stopping};
use crate::log_store::LogStore;
use crate::network::NoPeers;
use crate::settings::{Settings, SettingsError};
use crate::state_machine::StateMachine;
use crate::{NodeId, TypeConfig};

/// How long `shutdown` waits for openraft's background tasks (the state machine worker, a
/// snapshot build) to release the databases.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll interval while waiting for that release.
const RELEASE_POLL: Duration = Duration::from_millis(5);
/// How long a restarted node may take to apply the log it holds; past it the start fails rather
/// than serve older data than the node acknowledged. The state lags the log by at most
/// `DURABLE_APPLY_EVERY_ENTRIES` entries plus what was not yet known committed, which applies in
/// well under a second.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

/// File names inside the data dir.
const LOG_FILE: &str = "raft-log.redb";
const STATE_FILE: &str = "state.redb";
const SNAPSHOT_DIR: &str = "snapshot";

/// Why a node could not start. Each variant names what to look at.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    #[error("raft log: {0}")]
    Log(#[from] StorageError<NodeId>),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(
        "data dir {0}: the raft log is empty but the state store has applied entries; \
         refusing to start a new cluster over old state (was {LOG_FILE} deleted?)"
    )]
    LogMissing(PathBuf),
    #[error("raft: {0}")]
    Raft(String),
}

/// The result of a committed publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub outcome: PublishOutcome,
    /// Replicas known to hold the log entry (the leader counts itself).
    pub replicas: usize,
}

/// Why a publish has no outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// No leader, or the entry did not commit in time. The packet may still commit later;
    /// retrying is safe, since re-publishing the same packet changes nothing.
    #[error("{0}")]
    Unavailable(String),
    /// Consensus or storage failed on this node; Raft has stopped and the daemon exits (see
    /// [`Node::wait_fatal`]). Retry on another node.
    #[error("{0}")]
    Fatal(String),
}

/// One pkraft node: the Raft instance and the local replica it applies to.
pub struct Node {
    raft: Raft<TypeConfig>,
    store: Store,
    /// Kept to know when openraft has released the log file (see `shutdown`).
    log_store: LogStore,
    /// Group commit in front of `raft` (see `batcher`); taken on shutdown to close the queue.
    batcher: std::sync::Mutex<Option<(Batcher, JoinHandle<()>)>>,
    publish_timeout: Duration,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").finish_non_exhaustive()
    }
}

impl Node {
    /// Opens the data dir and starts Raft. A data dir that was never part of a cluster is
    /// initialized as a single-node cluster with this node as the only voter; an existing one
    /// resumes where it stopped (the only voter elects itself at once).
    pub async fn start(
        id: NodeId,
        data_dir: &Path,
        settings: &Settings,
    ) -> Result<Node, StartError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StartError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let config = Arc::new(settings.openraft_config()?);
        let log_store = LogStore::open(&data_dir.join(LOG_FILE))?;
        log_store.claim_node_id(id)?;
        let store = Store::open(&data_dir.join(STATE_FILE))?;
        let state_machine = StateMachine::open(store.clone(), data_dir.join(SNAPSHOT_DIR))?;

        let pristine = log_store.is_pristine()?;
        if pristine && store.applied_state()?.is_some() {
            return Err(StartError::LogMissing(data_dir.to_path_buf()));
        }
        let log_end = log_store.last_log_id()?.map(|log_id| log_id.index);
        let raft = Raft::new(id, config, NoPeers, log_store.clone(), state_machine)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        if pristine {
            let members = BTreeMap::from([(id, BasicNode::default())]);
            raft.initialize(members)
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?;
            tracing::info!(node_id = id, data_dir = %data_dir.display(), "initialized a new single-node cluster");
        } else if let Some(log_end) = log_end {
            replay_log(&raft, id, log_end).await?;
        }
        let batcher = Batcher::spawn(
            raft.clone(),
            settings.publish_queue_max,
            settings.publish_batch_max,
        );
        Ok(Node {
            raft,
            store,
            log_store,
            batcher: std::sync::Mutex::new(Some(batcher)),
            publish_timeout: settings.publish_timeout,
        })
    }

    /// The local replica. Reads from it are stale by at most the replication lag.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Commits `packet` through Raft and returns once it is applied on this node: the only write
    /// path into the store. Concurrent publishes are committed together (see `batcher`).
    pub async fn publish(&self, packet: VerifiedPacket) -> Result<Published, PublishError> {
        let outcome = {
            let batcher = self.batcher.lock().map_err(|_| {
                PublishError::Fatal("the publish queue lock is poisoned".to_string())
            })?;
            match batcher.as_ref() {
                Some((batcher, _)) => batcher.enqueue(packet.into())?,
                None => return Err(stopping()),
            }
        };
        match tokio::time::timeout(self.publish_timeout, outcome).await {
            Ok(Ok(result)) => result,
            // The batcher dropped the reply: it is stopping.
            Ok(Err(_)) => Err(stopping()),
            Err(_) => Err(PublishError::Unavailable(format!(
                "not committed within {:?}",
                self.publish_timeout
            ))),
        }
    }

    /// Index of the last log entry applied to the local replica, if any.
    pub fn last_applied_index(&self) -> Option<u64> {
        self.raft
            .metrics()
            .borrow()
            .last_applied
            .map(|log_id| log_id.index)
    }

    /// Replicas known to hold everything this node has applied.
    pub fn replica_count(&self) -> usize {
        let applied = self.raft.metrics().borrow().last_applied;
        applied.map_or(1, |log_id| replicas_holding(&self.raft, log_id.index))
    }

    /// Resolves when Raft stops on its own because of a fatal error (a storage failure), with the
    /// reason. A node in that state cannot take writes and would serve a frozen replica, so the
    /// daemon exits instead of limping on.
    pub async fn wait_fatal(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                return fatal.to_string();
            }
            if metrics.changed().await.is_err() {
                return "raft stopped".to_string();
            }
        }
    }

    /// Stops Raft, waits (bounded) until its background tasks have released the data files, so
    /// the same data dir can be opened again at once, and fsyncs the state. (Without this the
    /// data dir is still recoverable: the next start applies from the log what the state lacks.)
    pub async fn shutdown(&self) {
        // Close the publish queue first and let the batches in flight answer their publishers,
        // but not for longer than a publisher would wait: a commit that never returns (a hung
        // disk) must not hang the shutdown.
        let batcher = self.batcher.lock().ok().and_then(|mut b| b.take());
        if let Some((queue, mut task)) = batcher {
            drop(queue);
            match tokio::time::timeout(self.publish_timeout, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "the publish batcher ended abnormally"),
                Err(_) => {
                    tracing::warn!(timeout = ?self.publish_timeout, "publish batches still in flight; stopping anyway");
                    task.abort();
                }
            }
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
        // Node holds one handle to each file; openraft's state machine worker or a snapshot build
        // on the blocking pool may still hold others for a moment.
        let released = || self.store.open_handles() == 1 && self.log_store.open_handles() == 1;
        let wait = async {
            while !released() {
                tokio::time::sleep(RELEASE_POLL).await;
            }
        };
        if tokio::time::timeout(RELEASE_TIMEOUT, wait).await.is_err() {
            tracing::warn!(timeout = ?RELEASE_TIMEOUT, "raft tasks still hold the data files");
        }
        // Applies commit without fsync (see `state_machine`); a clean stop leaves them durable, so
        // the next start need not apply them again.
        if let Err(e) = self.store.flush() {
            tracing::warn!(error = %e, "could not flush the state store");
        }
    }
}

/// After a restart, waits until the entries this node's log already holds are applied, so that
/// it never serves reads older than what it acknowledged before it stopped. (Applies commit
/// without fsync; after a crash the state may lag the fsynced log.) Only the only voter can do
/// this alone: a member of a larger cluster learns what is committed from its leader, and until
/// then serves what it has (see docs/ARCHITECTURE.md, Durability).
async fn replay_log(raft: &Raft<TypeConfig>, id: NodeId, log_end: u64) -> Result<(), StartError> {
    // openraft publishes the state it loaded (log, membership) when its core task first runs;
    // until then the metrics are empty initial ones, so wait for them first.
    let loaded = raft
        .wait(Some(REPLAY_TIMEOUT))
        .metrics(
            |m| m.last_log_index >= Some(log_end),
            "load the log held at start",
        )
        .await
        .map_err(|e| StartError::Raft(format!("loading the log: {e}")))?;
    let only_voter = loaded.membership_config.membership().voter_ids().eq([id]);
    if !only_voter {
        return Ok(());
    }
    raft.wait(Some(REPLAY_TIMEOUT))
        .applied_index_at_least(Some(log_end), "apply the log held at start")
        .await
        .map_err(|e| {
            StartError::Raft(format!(
                "applying the log held at start (up to {log_end}): {e}"
            ))
        })?;
    Ok(())
}

/// Replicas whose log reaches `index`. Only the leader tracks its followers; elsewhere the answer
/// is this node alone.
pub(crate) fn replicas_holding(raft: &Raft<TypeConfig>, index: u64) -> usize {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let Some(replication) = &metrics.replication else {
        return 1;
    };
    let holding = replication
        .values()
        .filter(|matched| matched.is_some_and(|log_id| log_id.index >= index))
        .count();
    holding.max(1)
}

pub(crate) fn publish_error(
    e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
) -> PublishError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            PublishError::Unavailable(match forward.leader_id {
                Some(leader) => format!("node {leader} is the leader"),
                None => "no leader is elected".to_string(),
            })
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            PublishError::Fatal(e.to_string())
        }
        RaftError::Fatal(fatal) => PublishError::Fatal(fatal.to_string()),
    }
}
