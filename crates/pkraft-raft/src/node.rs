//! [`Node`]: the handle the rest of the daemon uses for consensus and for the local replica.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::{Raft, StorageError};
use pkraft_state::{Store, StoreError};
use prometheus::Registry;
use tokio::task::JoinHandle;

use crate::cluster_clock::ClusterClock;
use crate::dht_publishing::DhtPublishing;
use crate::disk_space::DiskSpace;
use crate::handles::HeldHandles;
use crate::handover::Handover;
use crate::leadership::Leadership;
use crate::membership::Members;
use crate::metrics::{NodeMetrics, StateCollector};
use crate::peer::{ClusterSecret, PeerClient};
use crate::pre_vote::PreVote;
use crate::reads::Reads;
use crate::scrub::Scrub;
pub use crate::settings::Participation;
use crate::settings::SettingsError;
use crate::short_lived::ShortLived;
use crate::snapshot_schedule::BuildTimes;
use crate::write_path::Writes;
use crate::{NodeId, TypeConfig};
use pkraft_raft_storage::log_store::LogStore;

/// How long `shutdown` waits for openraft to stop, and then for its background tasks (the state
/// machine worker, a snapshot build) to release the databases.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
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

/// One pkraft node: a small core (its identity, the Raft handle, the replica and the log, the
/// peer client, the metrics, the stop signal and the tasks to abort at shutdown) and its parts,
/// each a type that owns its state and the handles it uses: the write path, reads, leadership,
/// membership, the handover, PreVote, the scrub, cluster time, expiry, the DHT publishing and
/// the short-lived records. Callers reach a part through its accessor (`node.writes()`); the
/// peer routes (`routes`) and the tasks (`start`) are wired to the parts, not to the node.
pub struct Node {
    pub(crate) id: NodeId,
    /// This node's address, secret, TLS and how it joins.
    pub(crate) cluster: Participation,
    pub(crate) raft: Raft<TypeConfig>,
    /// The local replica.
    pub(crate) store: Store,
    /// Kept to know when openraft has released the log file (see `shutdown`), and for the
    /// commit index.
    pub(crate) log_store: LogStore,
    pub(crate) peers: PeerClient,
    pub(crate) metrics: Arc<NodeMetrics>,
    /// Largest peer request body: a full `append-entries` of the biggest entries.
    pub(crate) peer_body_max: usize,
    /// Whether the data dir's disk has room for writes (`raft.min_free_disk_mib`).
    pub(crate) disk_space: Arc<DiskSpace>,
    pub(crate) writes: Arc<Writes>,
    /// Who leads, and whether this node may act as leader (`leadership`).
    pub(crate) leadership: Arc<Leadership>,
    /// Reads of the replica, its freshness, the read-index rounds (`reads`).
    pub(crate) reads: Arc<Reads>,
    /// Membership changes and the cluster's status (`membership`).
    pub(crate) members: Arc<Members>,
    /// The leader handover (`handover`).
    pub(crate) handover: Arc<Handover>,
    /// PreVote's rounds and answers (`pre_vote`).
    pub(crate) pre_vote: Arc<PreVote>,
    /// The background scrub (`scrub`).
    pub(crate) scrub: Arc<Scrub>,
    pub(crate) data_dir: PathBuf,
    /// Tasks that live as long as the node (joining, expiry); aborted on shutdown.
    pub(crate) background: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// The replica's redb file, whose size is a metric.
    pub(crate) state_file: PathBuf,
    /// The DHT publisher's outbox and its progress (`dht_publishing`).
    pub(crate) dht: DhtPublishing,
    /// The short-lived records this replica's DNS answers, and their commit (`short_lived`).
    pub(crate) short_lived: ShortLived,
    /// When the last snapshot build ended, for the snapshot schedule.
    pub(crate) build_times: Arc<BuildTimes>,
    /// Cluster time, from the voters' clocks and the log's time (`cluster_clock`).
    pub(crate) clock: Arc<ClusterClock>,
    /// What expiry deleted in the last hour, for its rate fence (`expiry`).
    pub(crate) expiry: Arc<crate::expiry::Expiry>,
    /// The snapshot being received from the leader, checked chunk by chunk.
    pub(crate) snapshot_receipt: pkraft_raft_storage::snapshot_receipt::SnapshotReceipt,
    /// Set when the node must stop although Raft runs on (the scrub found damage that a
    /// restart repairs); [`Node::wait_fatal`] reports it.
    pub(crate) stop_reason: Arc<tokio::sync::watch::Sender<Option<String>>>,
    /// The replica's and the log's handles the node and its parts hold: at shutdown, openraft
    /// has let go of the files once no more are open (`Handles::held`).
    pub(crate) held_handles: HeldHandles,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").finish_non_exhaustive()
    }
}

impl Node {
    /// Registers this node's metrics (docs/METRICS.md: `pkraft_raft_*`, `pkraft_store_*`).
    pub fn register_metrics(self: &Arc<Self>, registry: &Registry) -> prometheus::Result<()> {
        self.metrics.register(registry)?;
        // Weak: the registry outlives the node in the admin listener's state; it must not keep
        // the node alive. (The collector's own store handles are released with the admin
        // listener, which stops before the node.)
        let node = Arc::downgrade(self);
        let staleness = Box::new(move || node.upgrade().and_then(|node| node.reads.staleness()));
        registry.register(Box::new(StateCollector::new(
            self.raft.clone(),
            staleness,
            self.log_store.clone(),
            self.store.clone(),
            self.state_file.clone(),
        )?))
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    pub(crate) fn secret(&self) -> Option<&ClusterSecret> {
        self.cluster.secret.as_ref()
    }

    /// The write path (`write_path`): publishes.
    pub fn writes(&self) -> &Writes {
        &self.writes
    }

    /// Who leads, and whether this node may act as leader (`leadership`).
    pub fn leadership(&self) -> &Leadership {
        &self.leadership
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
        &self.handover
    }

    /// The local replica. Reads from it are stale by at most the replication lag; the HTTP relay
    /// reads through [`crate::Reads::read`] instead, which applies the read consistency.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Index of the last log entry applied to the local replica, if any.
    pub fn last_applied_index(&self) -> Option<u64> {
        self.raft
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
        let mut metrics = self.raft.metrics();
        let mut stop = self.stop_reason.subscribe();
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

    /// Stops Raft, waits (bounded) until its background tasks have released the data files, so
    /// the same data dir can be opened again at once, and fsyncs the state. (Without this the
    /// data dir is still recoverable: the next start applies from the log what the state lacks.)
    pub async fn shutdown(&self) {
        if let Ok(mut background) = self.background.lock() {
            for task in background.drain(..) {
                task.abort();
            }
        }
        // Close the publish queue first and let the batches in flight answer their publishers.
        self.writes.close().await;
        match tokio::time::timeout(RELEASE_TIMEOUT, self.raft.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "raft did not shut down cleanly"),
            Err(_) => tracing::warn!(timeout = ?RELEASE_TIMEOUT, "raft did not stop in time"),
        }
        // The node and its parts hold `held_handles` to each file; openraft's state machine
        // worker or a snapshot build on the blocking pool may still hold others for a moment.
        let held = self.held_handles;
        let released = || {
            self.store.open_handles() <= held.store
                && self.log_store.open_handles() <= held.log_store
        };
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
        let state_flushed = self.store.flush();
        if let Err(e) = &state_flushed {
            tracing::warn!(error = %e, "could not flush the state store");
        }
        let log_flushed = self.log_store.flush();
        if let Err(e) = &log_flushed {
            tracing::warn!(error = %e, "could not flush the raft log's committed index");
        }
        // Not while still catching up after a crash: the flushed state may then be older than
        // what the node served before that crash, and the next start must catch up too.
        if state_flushed.is_ok()
            && log_flushed.is_ok()
            && !self.reads.catching_up()
            && let Err(e) = write_clean_stop_marker(&self.data_dir)
        {
            tracing::warn!(error = %e, "could not record the clean stop; the next start catches up first");
        }
    }
}

fn write_clean_stop_marker(data_dir: &Path) -> std::io::Result<()> {
    let file = std::fs::File::create(data_dir.join(CLEAN_STOP_FILE))?;
    file.sync_all()?;
    sync_dir(data_dir)
}

pub(crate) use pkraft_raft_storage::sync_dir;
