//! [`Node`]: the handle the rest of the daemon uses for consensus and for the local replica.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::StorageError;
use pkraft_state::{Store, StoreError};
use prometheus::Registry;
use tokio::task::JoinHandle;

use crate::NodeId;
use crate::cluster_clock::ClusterClock;
use crate::dht_publishing::DhtPublishing;
use crate::handover::Handover;
use crate::leadership::Leadership;
use crate::membership::Members;
use crate::metrics::StateCollector;
use crate::node_core::Core;
use crate::peer::ClusterSecret;
use crate::pre_vote::PreVote;
use crate::reads::Reads;
use crate::scrub::Scrub;
pub use crate::settings::Participation;
use crate::settings::SettingsError;
use crate::short_lived::ShortLived;
use crate::write_path::Writes;

/// How long `shutdown` waits for openraft to stop, and then for its background tasks (the state
/// machine worker, a snapshot build) to release the databases.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `shutdown` waits for the node's aborted tasks to end.
const TASKS_STOP_TIMEOUT: Duration = Duration::from_secs(1);
/// Poll interval while waiting for that release.
const RELEASE_POLL: Duration = Duration::from_millis(5);
pub(crate) use pkraft_raft_storage::{LOG_DIR, SNAPSHOT_DIR, STATE_FILE};
/// Where pkraft before log schema 2 kept its Raft log (entries in a redb table).
pub(crate) const LOG_FILE_V1: &str = "raft-log.redb";
/// Written, fsynced, by a clean stop after the state is flushed; removed (durably) at start. Its
/// absence at start means the last stop was a crash, so the state may be older than what the
/// node served before it (see [`crate::Reads::catching_up`]).
pub(crate) const CLEAN_STOP_FILE: &str = "clean-stop";

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
    #[error(transparent)]
    State(#[from] pkraft_raft_storage::state_repair::StateOpenError),
    #[error("raft log: {0}")]
    Log(#[from] StorageError<NodeId>),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(
        "data dir {0}: the raft log is empty but the state store has applied entries; \
         refusing to start a new cluster over old state (was {LOG_DIR}/ deleted?)"
    )]
    LogMissing(PathBuf),
    #[error(
        "data dir {0} holds a Raft log in the format of an earlier pkraft build ({LOG_FILE_V1}), \
         which this build does not read; start this node with a new data dir (a cluster member \
         catches up from its leader; a single node starts empty)"
    )]
    LogFormatV1(PathBuf),
    /// openraft did not start, initialize or replay the log (`what` it was doing; its error,
    /// boxed: openraft's types stop at this crate).
    #[error("raft: {what}: {source}")]
    Raft {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The node's metrics could not be made.
    #[error("raft metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The peer client's TLS (`[cluster.tls]`) could not be set up.
    #[error("peer client TLS: {0}")]
    PeerTls(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StartError {
    /// [`StartError::Raft`]: `what` failed for `source`.
    pub(crate) fn raft(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StartError {
        StartError::Raft {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// One pkraft node: its core (`node_core`: its identity, the Raft handle, the replica and the
/// log, the peer client, the metrics, the stop signal), its parts, each a type that owns its
/// state and holds the core and the parts below it (the write path, reads, membership, the
/// elections: leadership, PreVote and the handover; the replica's checks: the scrub and a
/// received snapshot's; cluster time, the DHT publishing and the short-lived records), and the
/// tasks that live as long as it. Callers reach a part through
/// its accessor (`node.writes()`); the peer routes (`routes`) and the tasks (`start`) are wired
/// to the parts, not to the node.
pub struct Node {
    pub(crate) core: Arc<Core>,
    pub(crate) writes: Arc<Writes>,
    /// Reads of the replica, its freshness, the read-index rounds (`reads`).
    pub(crate) reads: Arc<Reads>,
    /// Membership changes and the cluster's status (`membership`).
    pub(crate) members: Arc<Members>,
    /// Who leads, whether this node stands, and the leader's handover.
    pub(crate) elections: Elections,
    /// The replica's checks against damage that peers take part in.
    pub(crate) replica_checks: ReplicaChecks,
    /// The DHT publisher's outbox and its progress (`dht_publishing`).
    pub(crate) dht: DhtPublishing,
    /// The short-lived records this replica's DNS answers, and their commit (`short_lived`).
    pub(crate) short_lived: ShortLived,
    /// Cluster time, from the voters' clocks and the log's time (`cluster_clock`).
    pub(crate) clock: Arc<ClusterClock>,
    /// The tasks that live as long as the node (joining, expiry, the scrub…), named, in the
    /// order they started: stopped in the reverse order at shutdown.
    pub(crate) tasks: std::sync::Mutex<Vec<(&'static str, JoinHandle<()>)>>,
}

/// The parts that decide who leads, from the lowest layer up: PreVote and the handover each
/// hold `Leadership` (the handover `Members` too), never each other.
pub(crate) struct Elections {
    /// Who leads, and whether this node may act as leader (`leadership`).
    pub(crate) leadership: Arc<Leadership>,
    /// Whether this node stands for election, and its answers to others' PreVote (`pre_vote`).
    pub(crate) pre_vote: Arc<PreVote>,
    /// The leader handing its leadership to a chosen voter (`handover`).
    pub(crate) handover: Arc<Handover>,
}

/// The replica's checks against damage that involve a peer: the background scrub (which asks
/// the other voters for their copy of a damaged packet, and answers their asks) and the check
/// of a snapshot received from the leader, chunk by chunk.
pub(crate) struct ReplicaChecks {
    /// The background scrub (`scrub`).
    pub(crate) scrub: Arc<Scrub>,
    /// The snapshot being received from the leader.
    pub(crate) snapshot_receipt: pkraft_raft_storage::snapshot_receipt::SnapshotReceipt,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").finish_non_exhaustive()
    }
}

impl Node {
    /// Registers this node's metrics (docs/METRICS.md: `pkraft_raft_*`, `pkraft_store_*`).
    pub fn register_metrics(self: &Arc<Self>, registry: &Registry) -> prometheus::Result<()> {
        self.core.metrics.register(registry)?;
        // Weak: the registry outlives the node in the admin listener's state; it must not keep
        // the node alive. (The collector's own store handles are released with the admin
        // listener, which stops before the node.)
        let node = Arc::downgrade(self);
        let staleness = Box::new(move || node.upgrade().and_then(|node| node.reads.staleness()));
        registry.register(Box::new(StateCollector::new(
            self.core.raft.clone(),
            staleness,
            self.core.log_store.clone(),
            self.core.store.clone(),
            self.core.data_dir.join(STATE_FILE),
        )?))
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.core.id
    }

    pub(crate) fn secret(&self) -> Option<&ClusterSecret> {
        self.core.cluster.secret.as_ref()
    }

    /// The write path (`write_path`): publishes.
    pub fn writes(&self) -> &Writes {
        &self.writes
    }

    /// Who leads, and whether this node may act as leader (`leadership`).
    pub fn leadership(&self) -> &Leadership {
        &self.elections.leadership
    }

    /// Cluster time (`cluster_clock`).
    pub fn clock(&self) -> &ClusterClock {
        &self.clock
    }

    /// The DHT publisher's way into the node (`dht_publishing`).
    pub fn dht(&self) -> &DhtPublishing {
        &self.dht
    }

    /// The short-lived records (`short_lived`).
    pub fn short_lived(&self) -> &ShortLived {
        &self.short_lived
    }

    /// Reads of the replica (`reads`).
    pub fn reads(&self) -> &Reads {
        &self.reads
    }

    /// Membership changes and the cluster's status (`membership`).
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// The leader handover (`handover`).
    pub fn handover(&self) -> &Handover {
        &self.elections.handover
    }

    /// The local replica. Reads from it are stale by at most the replication lag; the HTTP relay
    /// reads through [`crate::Reads::read`] instead, which applies the read consistency.
    pub fn store(&self) -> &Store {
        &self.core.store
    }

    /// Index of the last log entry applied to the local replica, if any.
    pub fn last_applied_index(&self) -> Option<u64> {
        self.core
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|log_id| log_id.index)
    }

    /// Resolves when Raft stops on its own because of a fatal error (a storage failure), with the
    /// reason. A node in that state cannot take writes and would serve a frozen replica, so the
    /// daemon exits instead of limping on.
    /// Also when the node must stop for a restart to repair it (the scrub found damage).
    pub async fn wait_fatal(&self) -> String {
        let mut metrics = self.core.raft.metrics();
        let mut stop = self.core.stop_reason.subscribe();
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                return fatal.to_string();
            }
            if let Some(reason) = stop.borrow_and_update().clone() {
                return reason;
            }
            tokio::select! {
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return "raft stopped".to_string();
                    }
                }
                // The sender lives as long as the node.
                _ = stop.changed() => {}
            }
        }
    }

    /// Stops the node's tasks and its publish queue, stops Raft, waits (bounded) until its
    /// background tasks have released the data files, so the same data dir can be opened again
    /// at once, and fsyncs the state. (Without this the data dir is still recoverable: the next
    /// start applies from the log what the state lacks.)
    pub async fn shutdown(&self) {
        // The stop runs in the reverse order of the start (`start.rs`), one step each.
        // 1. The tasks, last started first; awaited, so that none holds a part after this.
        self.stop_tasks().await;
        // 2. The publish queue: the batches in flight answer their publishers, and the batcher
        //    lets go of the write path.
        self.writes.close().await;
        // 3. Raft.
        match tokio::time::timeout(RELEASE_TIMEOUT, self.core.raft.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "raft did not shut down cleanly"),
            Err(_) => tracing::warn!(timeout = ?RELEASE_TIMEOUT, "raft did not stop in time"),
        }
        // 4. The files released: openraft's state machine worker or a snapshot build on the
        //    blocking pool may still hold them for a moment, and so may a part's blocking read.
        let wait = async {
            while !self.core.files_released() {
                tokio::time::sleep(RELEASE_POLL).await;
            }
        };
        if tokio::time::timeout(RELEASE_TIMEOUT, wait).await.is_err() {
            tracing::warn!(timeout = ?RELEASE_TIMEOUT, "raft tasks still hold the data files");
        }
        // 5. The flushes and the clean-stop marker.
        // Applies commit without fsync (see `state_machine`); a clean stop leaves them durable, so
        // the next start need not apply them again.
        let state_flushed = self.core.store.flush();
        if let Err(e) = &state_flushed {
            tracing::warn!(error = %e, "could not flush the state store");
        }
        let log_flushed = self.core.log_store.flush();
        if let Err(e) = &log_flushed {
            tracing::warn!(error = %e, "could not flush the raft log's committed index");
        }
        // Not while still catching up after a crash: the flushed state may then be older than
        // what the node served before that crash, and the next start must catch up too.
        if state_flushed.is_ok()
            && log_flushed.is_ok()
            && !self.reads.catching_up()
            && let Err(e) = write_clean_stop_marker(&self.core.data_dir)
        {
            tracing::warn!(error = %e, "could not record the clean stop; the next start catches up first");
        }
    }
}

impl Node {
    /// Stops the node's tasks one at a time, last started first: each is aborted and awaited
    /// before the next (an aborted task drops its future, and with it its hold on a part, only
    /// when the runtime next reaches it), so a task ends before the tasks below it are touched.
    /// Bounded as a whole: past the bound the rest are aborted without a wait.
    async fn stop_tasks(&self) {
        let tasks = match self.tasks.lock() {
            Ok(mut tasks) => std::mem::take(&mut *tasks),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        let deadline = tokio::time::Instant::now() + TASKS_STOP_TIMEOUT;
        for (name, task) in tasks.into_iter().rev() {
            task.abort();
            match tokio::time::timeout_at(deadline, task).await {
                Ok(Err(e)) if e.is_panic() => {
                    tracing::warn!(task = name, "a node task panicked as it was stopped");
                }
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(task = name, timeout = ?TASKS_STOP_TIMEOUT, "a node task did not end in time");
                }
            }
        }
    }
}

fn write_clean_stop_marker(data_dir: &Path) -> std::io::Result<()> {
    let file = std::fs::File::create(data_dir.join(CLEAN_STOP_FILE))?;
    pkraft_types::world::sync_all(&file)?;
    sync_dir(data_dir)
}

pub(crate) use pkraft_raft_storage::sync_dir;
