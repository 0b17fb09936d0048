//! [`Node`]: the handle the rest of the daemon uses for consensus and for the local replica.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Raft, StorageError};
use pkraft_store::{Store, StoreError};
use prometheus::Registry;
use tokio::task::JoinHandle;

use crate::dht_outbox::DhtOutbox;
use crate::disk_space::DiskSpace;
use crate::leadership::{Leadership, watch_cluster_state};
use crate::log_store::LogStore;
use crate::metrics::{Damaged, NodeMetrics, StateCollector};
use crate::peer::{ClusterSecret, PeerClient, PeerNetwork};
use crate::reads::Freshness;
use crate::settings::{Settings, SettingsError};
use crate::snapshot_schedule::BuildTimes;
use crate::state_machine::StateMachine;
use crate::state_repair;
use crate::write_path::WritePath;
use crate::{NodeId, TypeConfig};

/// How long `shutdown` waits for openraft to stop, and then for its background tasks (the state
/// machine worker, a snapshot build) to release the databases.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll interval while waiting for that release.
const RELEASE_POLL: Duration = Duration::from_millis(5);
/// How long a restarted node may take to apply the log it holds; past it the start fails rather
/// than serve older data than the node acknowledged. The state lags the log by at most
/// `DURABLE_APPLY_EVERY_ENTRIES` entries (or `DURABLE_APPLY_EVERY_PACKETS` packets) plus what was
/// not yet known committed, which applies in about a second.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

/// File names inside the data dir.
pub(crate) const LOG_DIR: &str = "raft-log";
/// Where pkraft before log schema 2 kept its Raft log (entries in a redb table).
const LOG_FILE_V1: &str = "raft-log.redb";
pub(crate) const STATE_FILE: &str = "state.redb";
pub(crate) const SNAPSHOT_DIR: &str = "snapshot";
/// Written, fsynced, by a clean stop after the state is flushed; removed (durably) at start. Its
/// absence at start means the last stop was a crash, so the state may be older than what the
/// node served before it (see [`Node::catching_up`]).
const CLEAN_STOP_FILE: &str = "clean-stop";

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
    #[error(
        "state store {path}: {source} (a damaged file is never opened as an empty one; see \
         docs/OPERATIONS.md, \"Repair\")"
    )]
    StateFile { path: PathBuf, source: StoreError },
    #[error(
        "state store {path} is damaged: {damage}; it cannot be rebuilt here: {why} (see \
         docs/OPERATIONS.md, \"Repair\")"
    )]
    StateDamaged {
        path: PathBuf,
        damage: String,
        why: String,
    },
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
    #[error("raft: {0}")]
    Raft(String),
}

/// How this node takes part in a cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The peer address (`host:port`) other nodes reach this one at; recorded in the membership.
    pub advertise: String,
    /// Authenticates peer requests both ways. Without it the node can neither call nor answer
    /// peers, which is fine for a cluster of one.
    pub secret: Option<ClusterSecret>,
    /// Initialize a data dir that was never part of a cluster as a one-voter cluster.
    pub bootstrap: bool,
    /// Peer addresses of existing members to ask for admission, until this node is a member
    /// (in the role `voter` asks for).
    pub join: Vec<String>,
    /// Join as a voter (promoted once caught up) rather than as a learner (a read replica).
    pub voter: bool,
    /// The peer network's TLS (`[cluster.tls]`); `None`: plain HTTP.
    pub tls: Option<Arc<crate::peer::tls::PeerTls>>,
}

impl Cluster {
    /// A node on its own: initialized on first start, no peers, no secret.
    pub fn standalone() -> Cluster {
        Cluster {
            advertise: "127.0.0.1:0".to_string(),
            secret: None,
            bootstrap: true,
            join: Vec::new(),
            voter: true,
            tls: None,
        }
    }
}

/// What every part of a node uses: fixed at start and reached through [`Node`] (which derefs to
/// it). The state only one part keeps lives with that part instead, behind its own methods:
/// the publish queue (`write_path`), leadership (`leadership`), the replica's freshness
/// (`reads`) and the queue of membership changes (`membership`). Public only because `Node`
/// derefs to it; nothing in it is visible outside this crate.
pub struct Core {
    pub(crate) id: NodeId,
    pub(crate) raft: Raft<TypeConfig>,
    /// The local replica.
    pub(crate) store: Store,
    /// Kept to know when openraft has released the log file (see `shutdown`), and for the
    /// commit index.
    pub(crate) log_store: LogStore,
    pub(crate) cluster: Cluster,
    pub(crate) peers: PeerClient,
    pub(crate) metrics: Arc<NodeMetrics>,
    /// Bounds every wait on the way to a commit or a read barrier.
    pub(crate) publish_timeout: Duration,
    /// The leader lease of openraft 0.9 (`raft.election_timeout_max`).
    pub(crate) election_timeout_max: Duration,
    /// Whether this node's election timer runs PreVote (`raft.pre_vote`, `pre_vote`) instead of
    /// openraft's own.
    pub(crate) pre_vote: bool,
    /// Largest peer request body: a full `append-entries` of the biggest entries.
    pub(crate) peer_body_max: usize,
    /// Whether the data dir's disk has room for writes (`raft.min_free_disk_mib`).
    pub(crate) disk_space: Arc<DiskSpace>,
}

/// One pkraft node: the Raft instance and the local replica it applies to.
pub struct Node {
    core: Core,
    writes: WritePath,
    leadership: Leadership,
    freshness: Freshness,
    /// Serializes the membership changes this node makes as leader: openraft refuses a change
    /// while another is in progress, and operators expect them queued, not refused.
    membership_lock: tokio::sync::Mutex<()>,
    data_dir: PathBuf,
    /// Tasks that live as long as the node (joining, expiry); aborted on shutdown.
    background: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// The replica's redb file, whose size is a metric.
    state_file: PathBuf,
    /// What the Mainline DHT publisher has still to put (`dht_outbox`).
    pub(crate) dht_outbox: Arc<DhtOutbox>,
    /// When the last snapshot build ended, for the snapshot schedule.
    build_times: Arc<BuildTimes>,
    /// The snapshot being received from the leader, checked chunk by chunk.
    pub(crate) snapshot_receipt: crate::snapshot_receipt::SnapshotReceipt,
    /// Set when the node must stop although Raft runs on (the scrub found damage that a
    /// restart repairs); [`Node::wait_fatal`] reports it.
    stop_reason: tokio::sync::watch::Sender<Option<String>>,
    /// The `[raft]` scrub rates.
    scrub_rates: crate::scrub::ScrubRates,
}

impl std::ops::Deref for Node {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
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
    ///
    /// A fresh data dir is initialized as a one-voter cluster only with `cluster.bootstrap`;
    /// otherwise the node waits until it is added to a cluster (it asks the `cluster.join`
    /// addresses itself) or `initialize`d by an operator.
    pub async fn start(
        id: NodeId,
        data_dir: &Path,
        settings: &Settings,
        cluster: Cluster,
    ) -> Result<Arc<Node>, StartError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StartError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let mut config = settings.openraft_config()?;
        if data_dir.join(LOG_FILE_V1).exists() {
            return Err(StartError::LogFormatV1(data_dir.to_path_buf()));
        }
        let state_file = data_dir.join(STATE_FILE);
        let cache_bytes = settings.state_cache_bytes()?;
        let opened = Store::open_with_cache(&state_file, cache_bytes);
        // A node with other voters repairs a damaged log or state from them; the only voter has
        // no one to repair from, so it refuses to start, naming what was damaged (unless its
        // own snapshot and log cover it; docs/CONSISTENCY.md, "Damaged disks"). Other voters:
        // in the applied membership (or the snapshot's, if the state cannot be read), or (the
        // log knows) in the last membership the log held.
        let applied_voters = match &opened {
            Ok(store) => crate::state_machine::applied_voters(store).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let has_peers = applied_voters
            .into_iter()
            .chain(state_repair::snapshot_voters(data_dir))
            .any(|voter| voter != id);
        let (log_store, log_damage) =
            LogStore::open_repairing(&data_dir.join(LOG_DIR), id, has_peers)?;
        let (store, state_rebuilt) =
            state_repair::open_whole(data_dir, opened, cache_bytes, &log_store, id, has_peers)?;
        if log_store.repair().is_some() {
            // Held until the log is whole again (`hold_elections_while_repairing`), from the
            // first tick on. (With PreVote openraft's timer is off anyway.)
            config.enable_elect = false;
        }
        let config = Arc::new(config);
        log_store.claim_node_id(id)?;
        let metrics = Arc::new(NodeMetrics::new().map_err(|e| StartError::Raft(e.to_string()))?);
        for _ in &log_damage {
            metrics.damage_found(Damaged::Log);
        }
        if state_rebuilt.is_some() {
            metrics.damage_found(Damaged::State);
        }
        let dht_outbox = Arc::new(DhtOutbox::default());
        let build_times = Arc::new(BuildTimes::default());
        let mut state_machine = StateMachine::open(store.clone(), data_dir.join(SNAPSHOT_DIR))?
            .with_metrics(metrics.clone())
            .with_build_times(build_times.clone())
            .with_dht_outbox(dht_outbox.clone());
        if log_store.repair().is_some() {
            // On every start while a repair is pending: a crash may have come before it was built.
            let log_end = log_store.last_log_id()?.max(log_store.purged()?);
            state_machine.cover_applied_with_snapshot(log_end).await?;
        }
        sync_layout(data_dir).map_err(|source| StartError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;

        let pristine = log_store.is_pristine()?;
        if pristine && store.applied_state()?.is_some() {
            return Err(StartError::LogMissing(data_dir.to_path_buf()));
        }
        let last_log_id = log_store.last_log_id()?;
        let log_end = last_log_id.map(|log_id| log_id.index);
        // A rebuilt state may be older than what was served before (the log after its snapshot
        // is applied again), so reads wait as after a crash.
        let clean_stop = take_clean_stop_marker(data_dir)? && state_rebuilt.is_none();
        let peers = PeerClient::new(id, cluster.secret.clone(), cluster.tls.clone())
            .map_err(|e| StartError::Raft(format!("peer client TLS: {e}")))?;
        let leadership = Leadership::default();
        let network = PeerNetwork::new(
            peers.clone(),
            leadership.quorum_contact(),
            leadership.silenced(),
        );
        let raft = Raft::new(id, config, network, log_store.clone(), state_machine)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        if pristine && cluster.bootstrap {
            let members = BTreeMap::from([(id, BasicNode::new(&cluster.advertise))]);
            raft.initialize(members)
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?;
            tracing::info!(node_id = id, data_dir = %data_dir.display(), "initialized a new single-node cluster");
        } else if let Some(log_end) = log_end {
            replay_log(&raft, id, log_end).await?;
        }
        // A repaired log held more than it holds now, and the state may be older than what was
        // served before: local reads wait until the node has caught up to where the log reached
        // before the damage.
        let catch_up_to =
            last_log_id.max(log_store.repair().and_then(|repair| repair.held_through));
        let disk_space = Arc::new(DiskSpace::new(
            data_dir,
            settings.min_free_disk_bytes(),
            metrics.disk_available_bytes.clone(),
        ));
        let node = Node {
            core: Core {
                id,
                raft,
                store,
                log_store,
                cluster,
                peers,
                metrics,
                publish_timeout: settings.publish_timeout,
                election_timeout_max: settings.election_timeout_max,
                pre_vote: settings.pre_vote,
                peer_body_max: settings.peer_body_max(),
                disk_space,
            },
            writes: WritePath::new(),
            leadership,
            freshness: Freshness::at_start(catch_up_to, clean_stop),
            membership_lock: tokio::sync::Mutex::new(()),
            data_dir: data_dir.to_path_buf(),
            background: std::sync::Mutex::new(Vec::new()),
            state_file,
            dht_outbox,
            build_times,
            snapshot_receipt: Default::default(),
            stop_reason: tokio::sync::watch::channel(None).0,
            scrub_rates: crate::scrub::ScrubRates::of(settings),
        };
        let node = Arc::new(node);
        node.spawn_tasks(settings);
        Ok(node)
    }

    /// Starts the tasks that need the node shared: the write path (it forwards to the leader
    /// through the node's peer client), joining and expiry.
    fn spawn_tasks(self: &Arc<Self>, settings: &Settings) {
        self.writes.start(self.clone(), settings);
        let mut tasks = vec![
            tokio::spawn(watch_cluster_state(self.clone())),
            tokio::spawn(crate::snapshot_schedule::run(
                self.raft.clone(),
                self.build_times.clone(),
                settings.snapshot_after_entries,
                self.disk_space.clone(),
                self.data_dir.join(SNAPSHOT_DIR),
            )),
            tokio::spawn(crate::disk_space::run(self.disk_space.clone())),
            tokio::spawn(crate::handover::hand_over_while_low_on_disk(self.clone())),
            tokio::spawn(crate::scrub::run(self.clone(), self.scrub_rates)),
        ];
        if !self.cluster.join.is_empty() {
            tasks.push(tokio::spawn(crate::membership::keep_joining(self.clone())));
        }
        if !settings.pre_vote && self.log_store.repair().is_some() {
            tasks.push(tokio::spawn(hold_elections_while_repairing(self.clone())));
        }
        if settings.pre_vote {
            tasks.push(tokio::spawn(crate::pre_vote::run(
                self.clone(),
                crate::pre_vote::ElectionTiming {
                    timeout_min: settings.election_timeout_min,
                    timeout_max: settings.election_timeout_max,
                },
            )));
        }
        if !settings.record_max_age.is_zero() {
            tasks.push(tokio::spawn(crate::expiry::run(
                self.clone(),
                settings.record_max_age,
                settings.expiry_interval,
            )));
        }
        if let Ok(mut background) = self.background.lock() {
            background.extend(tasks);
        }
    }

    /// Whether this node may stand for election: not while its log is being repaired (it lacks
    /// entries it had, which a leader must hold), nor while a handover holds its elections.
    pub(crate) fn may_stand(&self) -> Result<(), String> {
        if let Some(repair) = self.log_store.repair() {
            return Err(format!(
                "this node's Raft log is being repaired (entries {}..={} lost to damage)",
                repair.lost_from, repair.lost_through
            ));
        }
        if self.leadership().elections_paused() {
            return Err("a handover holds this node's elections".to_string());
        }
        Ok(())
    }

    /// Registers this node's metrics (docs/METRICS.md: `pkraft_raft_*`, `pkraft_store_*`).
    pub fn register_metrics(self: &Arc<Self>, registry: &Registry) -> prometheus::Result<()> {
        self.metrics.register(registry)?;
        // Weak: the registry outlives the node in the admin listener's state; it must not keep
        // the node alive. (The collector's own store handles are released with the admin
        // listener, which stops before the node.)
        let node = Arc::downgrade(self);
        let staleness = Box::new(move || node.upgrade().and_then(|node| node.staleness()));
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

    /// The publish queue (`write_path`).
    pub(crate) fn writes(&self) -> &WritePath {
        &self.writes
    }

    /// Leadership beside openraft's (`leadership`).
    pub(crate) fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    /// The replica's freshness (`reads`).
    pub(crate) fn freshness(&self) -> &Freshness {
        &self.freshness
    }

    /// Held while this node makes a membership change as leader (`membership`).
    pub(crate) fn membership_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.membership_lock
    }

    /// The local replica. Reads from it are stale by at most the replication lag; the HTTP relay
    /// reads through [`Node::read`] instead, which applies the read consistency.
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
    /// Also when the node must stop for a restart to repair it ([`Node::stop_for`]).
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

    /// Asks the daemon to stop this node (through [`Node::wait_fatal`]) for `reason`: damage
    /// that the next start repairs was found while running. It exits non-zero, and its
    /// supervisor restarts it.
    pub(crate) fn stop_for(&self, reason: String) {
        self.stop_reason.send_replace(Some(reason));
    }

    /// The data dir.
    pub(crate) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Whether the membership this node knows has a voter other than itself: a copy of the
    /// log and the state to repair from.
    pub(crate) fn has_other_voters(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let id = self.id;
        metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|voter| voter != id)
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
        self.writes.close(self.publish_timeout).await;
        match tokio::time::timeout(RELEASE_TIMEOUT, self.raft.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "raft did not shut down cleanly"),
            Err(_) => tracing::warn!(timeout = ?RELEASE_TIMEOUT, "raft did not stop in time"),
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
            && !self.catching_up()
            && let Err(e) = write_clean_stop_marker(&self.data_dir)
        {
            tracing::warn!(error = %e, "could not record the clean stop; the next start catches up first");
        }
    }
}

/// Without PreVote, openraft's own election timer runs: it starts off while the log is being
/// repaired (`Node::start`), and this turns it on once the log is whole (with PreVote, the
/// node's timer asks `Node::may_stand`).
async fn hold_elections_while_repairing(node: Arc<Node>) {
    while node.log_store.repair().is_some() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !node.leadership().elections_paused() {
        node.raft.runtime_config().elect(true);
    }
}

/// Whether the last stop was clean; removes the marker durably, so that a crash later in this
/// run is not mistaken for a clean stop at the next start.
fn take_clean_stop_marker(data_dir: &Path) -> Result<bool, StartError> {
    let marker = data_dir.join(CLEAN_STOP_FILE);
    let io_error = |source| StartError::DataDir {
        path: marker.clone(),
        source,
    };
    match std::fs::remove_file(&marker) {
        Ok(()) => {
            sync_dir(data_dir).map_err(io_error)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error(e)),
    }
}

fn write_clean_stop_marker(data_dir: &Path) -> std::io::Result<()> {
    let file = std::fs::File::create(data_dir.join(CLEAN_STOP_FILE))?;
    file.sync_all()?;
    sync_dir(data_dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Makes the names of the data dir, its subdirectories and the files the stores created durable.
/// Neither `create_dir_all` nor redb fsyncs a directory, so after a power cut a new node's
/// `state.redb`, `raft-log/` or `snapshot/` (and with them entries it had acknowledged) could be
/// gone, on a file system that keeps only what was fsynced (the lossy-disk test found it).
/// Later files (log segments, snapshots, the clean-stop marker) fsync their directory themselves.
fn sync_layout(data_dir: &Path) -> std::io::Result<()> {
    sync_dir(&data_dir.join(LOG_DIR))?;
    sync_dir(&data_dir.join(SNAPSHOT_DIR))?;
    sync_dir(data_dir)?;
    // The data dir's own name, if this start created it.
    match data_dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
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
