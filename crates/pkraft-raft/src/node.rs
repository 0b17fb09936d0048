//! [`Node`]: the handle the rest of the daemon uses for consensus and for the local replica.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, LogId, Raft, ServerState, StorageError};
use pkraft_store::{Store, StoreError};
use pkraft_types::{PublishItem, PublishOutcome, VerifiedPacket};
use prometheus::Registry;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::batcher::{Batcher, Origin, stopping};
use crate::log_store::LogStore;
use crate::metrics::{NodeMetrics, StateCollector};
use crate::peer::{ClusterSecret, PeerClient, PeerError, PeerNetwork};
use crate::quorum::QuorumContact;
use crate::settings::{Settings, SettingsError};
use crate::state_machine::StateMachine;
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
/// node served before it (see [`CatchUp`]).
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

/// The result of a committed publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub outcome: PublishOutcome,
    /// Replicas known to hold the log entry (the leader counts itself).
    pub replicas: usize,
    /// Index of the log entry the packet was committed in.
    pub log_index: u64,
}

/// Why a publish has no outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
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
    /// The peer client's TLS (`[cluster.tls]`); `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
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

/// One pkraft node: the Raft instance and the local replica it applies to.
pub struct Node {
    pub(crate) id: NodeId,
    pub(crate) raft: Raft<TypeConfig>,
    store: Store,
    /// Kept to know when openraft has released the log file (see `shutdown`), and for the
    /// commit index.
    pub(crate) log_store: LogStore,
    pub(crate) cluster: Cluster,
    pub(crate) peers: PeerClient,
    /// Group commit in front of `raft` (see `batcher`); taken on shutdown to close the queue.
    batcher: std::sync::Mutex<Option<(Batcher, JoinHandle<()>)>>,
    pub(crate) publish_timeout: Duration,
    /// Largest peer request body: a full `append-entries` of the biggest entries.
    pub(crate) peer_body_max: usize,
    /// Serializes the membership changes this node makes as leader: openraft refuses a change
    /// while another is in progress, and operators expect them queued, not refused.
    pub(crate) membership_lock: tokio::sync::Mutex<()>,
    pub(crate) leader_contact: LeaderContact,
    /// When this node last became the leader (see `handover`: its vote is granted to another
    /// node only once it has led for `election_timeout_max`).
    leading_since: std::sync::Mutex<Option<Instant>>,
    /// When the followers last accepted this node as leader (see `quorum`).
    quorum_contact: QuorumContact,
    /// Set when this node hands its leadership over before it stops (see `handover`).
    pub(crate) handing_over: AtomicBool,
    /// The leader lease of openraft 0.9 (`raft.election_timeout_max`).
    pub(crate) election_timeout_max: Duration,
    /// Set after a crash: local reads wait until the replica is at least as new as before it.
    catch_up: Option<CatchUp>,
    /// The last entry the log held at start: the floor of the read indexes this node gives while
    /// it leads in that entry's term (see `read_index_as_leader`).
    pub(crate) log_end_at_start: Option<LogId<NodeId>>,
    data_dir: PathBuf,
    /// Tasks that live as long as the node (joining, expiry); aborted on shutdown.
    background: std::sync::Mutex<Vec<JoinHandle<()>>>,
    pub(crate) metrics: Arc<NodeMetrics>,
    /// The replica's redb file, whose size is a metric.
    state_file: PathBuf,
}

/// After a crash, the state on disk may be older than what the node served before it (applies
/// commit without fsync, see `state_machine`), and a member of a larger cluster only learns what
/// is committed from its leader. Until it has caught up, serving its replica could answer with an
/// older packet than before the crash, so local reads (DNS, GET) are refused instead.
///
/// Caught up means: it has applied the last entry its log held at start, or an entry of a later
/// term than that one. Either way it holds everything it could have served before: what it
/// served was committed and in its log, and a leader of a later term holds every entry committed
/// before it and appends its own after them. (The second case covers a log tail that was never
/// committed and is replaced by the new leader.)
#[derive(Debug)]
struct CatchUp {
    log_end: LogId<NodeId>,
    done: AtomicBool,
}

/// When this node last heard from a leader it accepted (a successful `append-entries`), for the
/// staleness bound on reads. Lock-free: written on every heartbeat, read on every DNS query.
#[derive(Debug)]
pub(crate) struct LeaderContact {
    epoch: Instant,
    /// Milliseconds after `epoch`; `u64::MAX` for never.
    last_millis: AtomicU64,
}

impl LeaderContact {
    fn new() -> LeaderContact {
        LeaderContact {
            epoch: Instant::now(),
            last_millis: AtomicU64::new(u64::MAX),
        }
    }

    pub(crate) fn record(&self) {
        let millis = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_millis.store(millis, Ordering::Relaxed);
    }

    pub(crate) fn elapsed(&self) -> Option<Duration> {
        let last = self.last_millis.load(Ordering::Relaxed);
        (last != u64::MAX).then(|| {
            self.epoch
                .elapsed()
                .saturating_sub(Duration::from_millis(last))
        })
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
        let config = Arc::new(settings.openraft_config()?);
        if data_dir.join(LOG_FILE_V1).exists() {
            return Err(StartError::LogFormatV1(data_dir.to_path_buf()));
        }
        let log_store = LogStore::open(&data_dir.join(LOG_DIR))?;
        log_store.claim_node_id(id)?;
        let state_file = data_dir.join(STATE_FILE);
        let store = Store::open(&state_file)?;
        let metrics = Arc::new(NodeMetrics::new().map_err(|e| StartError::Raft(e.to_string()))?);
        let state_machine = StateMachine::open(store.clone(), data_dir.join(SNAPSHOT_DIR))?
            .with_metrics(metrics.clone());

        let pristine = log_store.is_pristine()?;
        if pristine && store.applied_state()?.is_some() {
            return Err(StartError::LogMissing(data_dir.to_path_buf()));
        }
        let last_log_id = log_store.last_log_id()?;
        let log_end = last_log_id.map(|log_id| log_id.index);
        let clean_stop = take_clean_stop_marker(data_dir)?;
        let peers = PeerClient::new(id, cluster.secret.clone(), cluster.tls.clone())
            .map_err(|e| StartError::Raft(format!("peer client TLS: {e}")))?;
        let quorum_contact = QuorumContact::default();
        let network = PeerNetwork::new(peers.clone(), quorum_contact.clone());
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
        let node = Node {
            id,
            raft,
            store,
            log_store,
            cluster,
            peers,
            batcher: std::sync::Mutex::new(None),
            publish_timeout: settings.publish_timeout,
            peer_body_max: settings.peer_body_max(),
            membership_lock: tokio::sync::Mutex::new(()),
            leader_contact: LeaderContact::new(),
            leading_since: std::sync::Mutex::new(None),
            quorum_contact,
            handing_over: AtomicBool::new(false),
            election_timeout_max: settings.election_timeout_max,
            catch_up: match last_log_id {
                Some(log_end) if !clean_stop => {
                    tracing::info!(
                        log_end = log_end.index,
                        "the last stop was not clean: DNS and GET answer from this replica once it \
                         has caught up with the cluster"
                    );
                    Some(CatchUp {
                        log_end,
                        done: AtomicBool::new(false),
                    })
                }
                _ => None,
            },
            log_end_at_start: last_log_id,
            data_dir: data_dir.to_path_buf(),
            background: std::sync::Mutex::new(Vec::new()),
            metrics,
            state_file,
        };
        let node = Arc::new(node);
        node.spawn_tasks(settings);
        Ok(node)
    }

    /// Starts the tasks that need the node shared: the batcher (it forwards to the leader through
    /// the node's peer client), joining and expiry.
    fn spawn_tasks(self: &Arc<Self>, settings: &Settings) {
        let batcher = Batcher::spawn(
            self.clone(),
            settings.publish_queue_max,
            settings.publish_batch_max,
        );
        if let Ok(mut slot) = self.batcher.lock() {
            *slot = Some(batcher);
        }
        let mut tasks = vec![tokio::spawn(watch_cluster_state(self.clone()))];
        if !self.cluster.join.is_empty() {
            tasks.push(tokio::spawn(crate::membership::keep_joining(self.clone())));
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

    /// Whether this node believes it is the leader (it may have been deposed a moment ago).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The leader this node knows of, with its peer address.
    pub(crate) fn known_leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        let node = metrics.membership_config.membership().get_node(&leader)?;
        Some((leader, node.addr.clone()))
    }

    /// Why this leader should not propose: it has led for longer than the leader lease and no
    /// quorum of voters has accepted it within the lease, so it is cut off (and perhaps already
    /// replaced). `None` when it may propose.
    pub(crate) fn cut_off_from_quorum(&self) -> Option<String> {
        let since = self.leading_since()?;
        if since.elapsed() <= self.election_timeout_max {
            return None;
        }
        let voters: Vec<NodeId> = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            metrics.membership_config.membership().voter_ids().collect()
        };
        match self.quorum_contact.age(self.id, &voters) {
            Some(age) if age <= self.election_timeout_max => None,
            Some(age) => Some(format!(
                "this leader has not reached a quorum for {} ms",
                age.as_millis()
            )),
            None => Some("this leader has not reached a quorum".to_string()),
        }
    }

    /// When this node last became the leader, if it leads.
    pub(crate) fn leading_since(&self) -> Option<Instant> {
        self.leading_since.lock().ok().and_then(|since| *since)
    }

    /// The local replica. Reads from it are stale by at most the replication lag.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Commits `packet` through Raft and returns once it is applied on this node: the only write
    /// path into the store. Concurrent publishes are committed together (see `batcher`).
    pub async fn publish(&self, packet: VerifiedPacket) -> Result<Published, PublishError> {
        self.publish_item(packet.into(), Origin::Local).await
    }

    /// Commits publishes a follower forwarded; only the leader takes them (the follower then
    /// retries with the leader it learns of).
    pub(crate) async fn publish_forwarded(
        &self,
        packets: Vec<PublishItem>,
    ) -> Result<Vec<Result<Published, PublishError>>, PeerError> {
        if !self.is_leader() || self.handing_over() {
            return Err(PeerError::NotLeader {
                leader: self.known_leader().map(|(id, _)| id),
            });
        }
        // All are queued before any is awaited, so they share batches, and all wait until one
        // deadline: the follower's request is answered within `publish_timeout`, however many
        // packets it carries.
        let deadline = tokio::time::Instant::now() + self.publish_timeout;
        let queued: Vec<_> = packets
            .into_iter()
            .map(|item| self.enqueue(item, Origin::Forwarded))
            .collect();
        let mut answers = Vec::with_capacity(queued.len());
        for outcome in queued {
            answers.push(match outcome {
                Ok(outcome) => self.await_outcome_until(outcome, deadline).await,
                Err(e) => Err(e),
            });
        }
        Ok(answers)
    }

    async fn publish_item(
        &self,
        item: PublishItem,
        origin: Origin,
    ) -> Result<Published, PublishError> {
        let outcome = self.enqueue(item, origin)?;
        self.await_outcome(outcome).await
    }

    fn enqueue(
        &self,
        item: PublishItem,
        origin: Origin,
    ) -> Result<crate::batcher::Outcome, PublishError> {
        let batcher = self
            .batcher
            .lock()
            .map_err(|_| PublishError::Fatal("the publish queue lock is poisoned".to_string()))?;
        match batcher.as_ref() {
            Some((batcher, _)) => batcher.enqueue(item, origin),
            None => Err(stopping()),
        }
    }

    async fn await_outcome(
        &self,
        outcome: crate::batcher::Outcome,
    ) -> Result<Published, PublishError> {
        let deadline = tokio::time::Instant::now() + self.publish_timeout;
        self.await_outcome_until(outcome, deadline).await
    }

    async fn await_outcome_until(
        &self,
        outcome: crate::batcher::Outcome,
        deadline: tokio::time::Instant,
    ) -> Result<Published, PublishError> {
        match tokio::time::timeout_at(deadline, outcome).await {
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
        if let Ok(mut background) = self.background.lock() {
            for task in background.drain(..) {
                task.abort();
            }
        }
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

    /// Whether local reads must wait: this node restarted after a crash and its replica may
    /// still be older than what it served before (see [`CatchUp`]).
    pub fn catching_up(&self) -> bool {
        let Some(catch_up) = &self.catch_up else {
            return false;
        };
        if catch_up.done.load(Ordering::Relaxed) {
            return false;
        }
        let applied = self.raft.metrics().borrow().last_applied;
        let caught_up = applied.is_some_and(|applied| {
            applied.index >= catch_up.log_end.index
                || applied.leader_id.term > catch_up.log_end.leader_id.term
        });
        if caught_up && !catch_up.done.swap(true, Ordering::Relaxed) {
            tracing::info!("caught up after the unclean stop; answering reads from this replica");
        }
        !caught_up
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

/// Logs (and counts) the changes of the leader this node knows of, and logs the membership
/// changes it applies, for as long as the node runs: one line per event, on every node.
async fn watch_cluster_state(node: Arc<Node>) {
    let mut metrics = node.raft.metrics();
    // Nothing known yet: the state at start is logged as the first change.
    let (mut leader, mut membership) = (None, None);
    loop {
        let now = metrics.borrow_and_update().clone();
        if now.current_leader != leader {
            node.metrics.leader_changes.inc();
            leader = now.current_leader;
            if let Ok(mut since) = node.leading_since.lock() {
                *since = (leader == Some(node.id)).then(Instant::now);
            }
            match leader {
                Some(leader) => {
                    tracing::info!(leader, term = now.current_term, "leader changed");
                }
                None => tracing::info!(term = now.current_term, "no leader known"),
            }
        }
        if *now.membership_config.log_id() != membership {
            membership = *now.membership_config.log_id();
            let config = now.membership_config.membership();
            let voters: Vec<NodeId> = config.voter_ids().collect();
            let learners: Vec<NodeId> = config.learner_ids().collect();
            tracing::info!(?voters, ?learners, "membership changed");
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
