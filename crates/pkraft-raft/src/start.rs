//! [`Node::start`]: opens the data dir (repairing a damaged log or state), starts Raft, makes
//! the node's parts and starts the tasks that live as long as the node, each on its part. This
//! is where the node service is put together, so it is the one module that imports every part;
//! the parts import `node_core` (what they are made from) and the parts below them, never this.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Raft};
use pkraft_state::Store;
use pkraft_types::{BuildInfo, KeyBytes};
use tokio::runtime::Handle;

use crate::build_record::{self, Before};
use crate::cluster_clock::{ClockBounds, ClockReadings, ClusterClock};
use crate::dht_outbox::DhtOutbox;
use crate::dht_publishing::DhtPublishing;
use crate::disk_space::DiskSpace;
use crate::expiry::{Expiry, ExpiryLedger, ExpiryRules};
use crate::freshness::Freshness;
use crate::handover::Handover;
use crate::leadership::Leadership;
use crate::membership::Members;
use crate::metrics::{Damaged, NodeMetrics};
use crate::node::{
    CLEAN_STOP_FILE, Elections, LOG_DIR, LOG_FILE_V1, Node, Participation, ReplicaChecks,
    SNAPSHOT_DIR, STATE_FILE, StartError, sync_dir,
};
use crate::node_core::Core;
use crate::peer::Silenced;
use crate::peer::quorum::QuorumContact;
use crate::peer::{PeerClient, PeerNetwork};
use crate::pre_vote::PreVote;
use crate::reads::Reads;
use crate::scrub::Scrub;
use crate::settings::Settings;
use crate::short_lived::ShortLived;
use crate::snapshot_schedule::BuildTimes;
use crate::store_cap::{self, StoreCap};
use crate::write_path::Writes;
use crate::{NodeId, TypeConfig};
use pkraft_raft_storage::log_store::LogStore;
use pkraft_raft_storage::machine_memory;
use pkraft_raft_storage::state_machine::{Progress, StateEvents, StateMachine};
use pkraft_raft_storage::state_repair;
use pkraft_types::short_lived::{ShortLivedRecord, ShortLivedRecords};

/// How long a restarted node may take to apply the log it holds; past it the start fails rather
/// than serve older data than the node acknowledged. The state lags the log by at most
/// `pkraft_state::DURABLE_EVERY_ENTRIES` entries (or `DURABLE_EVERY_PACKETS` packets) plus what
/// was not yet known committed, which applies in about a second.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

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
        cluster: Participation,
    ) -> Result<Arc<Node>, StartError> {
        // The settings first: a bad `[raft]` section changes nothing on disk.
        let config = settings.openraft_config()?;
        let metrics = Arc::new(NodeMetrics::new()?);
        let opened = Opened::open(id, data_dir, settings, &metrics)?;
        let held_a_log = held_a_log(&opened.log_store);
        let applied = AppliedMemory::new(settings, &opened.store, &metrics);
        let mut state_machine =
            StateMachine::open(opened.store.clone(), data_dir.join(SNAPSHOT_DIR))?
                .with_events(Arc::new(applied.events(&metrics)));
        if opened.log_store.repair().is_some() {
            // On every start while a repair is pending: a crash may have come before it was built.
            let log_end = opened
                .log_store
                .last_log_id()?
                .max(opened.log_store.purged()?);
            state_machine.cover_applied_with_snapshot(log_end).await?;
        }
        sync_layout(data_dir).map_err(|source| StartError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let raft =
            RaftStarted::start(id, data_dir, config, &cluster, &opened, state_machine).await?;
        // Once this build has taken the data dir (a build that refuses it is not recorded).
        note_build(data_dir, &cluster.build, held_a_log);
        let disk_space = disk_space(data_dir, settings, &metrics);
        let max_stored_packets = max_stored_packets(settings, data_dir);
        warn_if_no_room_for_new_keys(&opened.store, &disk_space, max_stored_packets);
        metrics
            .store_max_packets
            .set(max_stored_packets.map_or(0, |max| i64::try_from(max).unwrap_or(i64::MAX)));
        let core = Arc::new(Core {
            id,
            cluster,
            raft: raft.raft.clone(),
            store: opened.store.clone(),
            log_store: opened.log_store.clone(),
            peers: raft.peers.clone(),
            metrics,
            disk_space,
            publish_timeout: settings.publish_timeout,
            lease: settings.election_timeout_max,
            data_dir: data_dir.to_path_buf(),
            peer_body_max: settings.peer_body_max(),
            stop_reason: tokio::sync::watch::channel(None).0,
        });
        let build_times = applied.build_times.clone();
        let warm_up = Arc::new(crate::warm_up::WarmUp {
            store: core.store.clone(),
            state_replaced: applied.state_replaced.clone(),
        });
        let (node, expiry) = Node::assemble(
            core,
            settings,
            applied,
            raft,
            StoreCap::new(max_stored_packets),
        );
        let node = Arc::new(node);
        node.spawn_tasks(settings, build_times, expiry, warm_up);
        Ok(node)
    }

    /// Makes the node's parts on its core, from the bottom layer up (`node_core`, then
    /// leadership and cluster time, the parts that ask only those, membership, then the
    /// handover and the short-lived records), each given the parts it asks. Expiry is held by
    /// its task alone.
    fn assemble(
        core: Arc<Core>,
        settings: &Settings,
        applied: AppliedMemory,
        raft: RaftStarted,
        store_cap: StoreCap,
    ) -> (Node, Arc<Expiry>) {
        let leadership = Arc::new(Leadership::new(
            &core,
            settings.pre_vote,
            raft.quorum_contact,
            raft.silenced,
        ));
        let clock = Arc::new(ClusterClock::new(&core, applied.clock_readings));
        let writes = Arc::new(Writes::new(
            &core,
            store_cap,
            leadership.clone(),
            clock.clone(),
        ));
        let reads = Arc::new(Reads::new(
            &core,
            leadership.clone(),
            clock.clone(),
            raft.freshness,
        ));
        let pre_vote = Arc::new(PreVote::new(&core, leadership.clone()));
        let scrub = Arc::new(Scrub::new(&core, leadership.clone()));
        let expiry = Arc::new(Expiry::new(
            &core,
            ExpiryRules::of(settings),
            leadership.clone(),
            clock.clone(),
            applied.expiry_ledger,
        ));
        let dht = DhtPublishing::new(&core, applied.dht_outbox, leadership.clone());
        let members = Arc::new(Members::new(
            &core,
            leadership.clone(),
            reads.clone(),
            clock.clone(),
        ));
        let handover = Arc::new(Handover::new(&core, leadership.clone(), members.clone()));
        let short_lived = ShortLived::new(&core, applied.short_lived, leadership.clone());
        let node = Node {
            core,
            writes,
            reads,
            members,
            elections: Elections {
                leadership,
                pre_vote,
                handover,
            },
            replica_checks: ReplicaChecks {
                scrub,
                snapshot_receipt: Default::default(),
            },
            dht,
            short_lived,
            clock,
            tasks: std::sync::Mutex::new(Vec::new()),
        };
        (node, expiry)
    }

    /// Starts the write path's batcher and the tasks that live as long as the node, each on the
    /// part it runs (or the core's disk-space watch, the snapshot schedule, or the warm-up).
    fn spawn_tasks(
        self: &Arc<Self>,
        settings: &Settings,
        build_times: Arc<BuildTimes>,
        expiry: Arc<Expiry>,
        warm_up: Arc<crate::warm_up::WarmUp>,
    ) {
        self.writes.start(settings);
        // Each loop supervised (`pkraft_tasks`): a panic is logged, counted and the loop
        // started again, never a silent end. Every one starts from what it reads (its part,
        // openraft's metrics, the store), so a new run loses nothing a panic did not.
        let snapshot_schedule = crate::snapshot_schedule::Schedule {
            raft: self.core.raft.clone(),
            build_times,
            after_entries: settings.snapshot_after_entries,
            disk_space: self.core.disk_space.clone(),
            snapshot_dir: self.core.data_dir.join(SNAPSHOT_DIR),
        };
        let scrub_rates = crate::scrub::ScrubRates::of(settings);
        // By the layer of what each runs on, lowest first (the core's and the schedule's, then
        // leadership and cluster time, the parts above them, membership, the handover), so
        // that the stop, which ends them one at a time in the reverse order, ends a task before
        // those below it.
        let mut tasks = vec![
            supervise(task::WARM_STATE_CACHE, &warm_up, crate::warm_up::run),
            supervise(
                task::DISK_SPACE,
                &self.core.disk_space,
                crate::disk_space::run,
            ),
            supervise(
                task::SNAPSHOT_SCHEDULE,
                &Arc::new(snapshot_schedule),
                crate::snapshot_schedule::run,
            ),
            supervise(
                task::CLUSTER_STATE,
                &self.elections.leadership,
                crate::leadership::watch_cluster_state,
            ),
        ];
        if !settings.pre_vote && self.core.log_store.repair().is_some() {
            tasks.push(supervise(
                task::HOLD_ELECTIONS,
                &self.elections.leadership,
                crate::leadership::hold_elections_while_repairing,
            ));
        }
        tasks.push(supervise(
            task::CLUSTER_CLOCK,
            &self.clock,
            crate::cluster_clock::run,
        ));
        tasks.push(supervise(
            task::READ_INDEX,
            &self.reads,
            crate::read_index_task::run,
        ));
        tasks.push(supervise(
            task::SCRUB,
            &self.replica_checks.scrub,
            move |scrub| crate::scrub::run(scrub, scrub_rates),
        ));
        if settings.pre_vote {
            let timing = crate::pre_vote::ElectionTiming {
                timeout_min: settings.election_timeout_min,
                timeout_max: settings.election_timeout_max,
            };
            tasks.push(supervise(
                task::PRE_VOTE,
                &self.elections.pre_vote,
                move |pre_vote| crate::pre_vote::run(pre_vote, timing),
            ));
        }
        if !settings.record_max_age.is_zero() {
            tasks.push(supervise(task::EXPIRY, &expiry, crate::expiry::run));
        }
        if !self.core.cluster.join.is_empty() {
            tasks.push(supervise(
                task::KEEP_JOINING,
                &self.members,
                crate::membership::keep_joining,
            ));
        }
        tasks.push(supervise(
            task::HANDOVER_LOW_DISK,
            &self.elections.handover,
            crate::handover::hand_over_while_low_on_disk,
        ));
        match self.tasks.lock() {
            Ok(mut running) => running.extend(tasks),
            Err(poisoned) => poisoned.into_inner().extend(tasks),
        }
    }
}

/// The data dir opened: the replica and the log, each repaired from the cluster where it was
/// damaged and this node has other voters to repair from.
struct Opened {
    store: Store,
    log_store: LogStore,
    /// Why the state was rebuilt from the cluster, if it was.
    state_rebuilt: Option<state_repair::Rebuilt>,
}

impl Opened {
    /// Opens the log and the replica (`metrics` counts the damage found). A node with other
    /// voters repairs a damaged log or state from them; the only voter has no one to repair
    /// from, so it refuses to start, naming what was damaged (unless its own snapshot and log
    /// cover it; docs/CONSISTENCY.md, "Damaged disks"). Other voters: in the applied membership
    /// or the snapshot's, or (the log knows) in the last membership the log held. For a damaged
    /// state, not the applied membership: it may be what is damaged (an old copy of the file).
    fn open(
        id: NodeId,
        data_dir: &Path,
        settings: &Settings,
        metrics: &NodeMetrics,
    ) -> Result<Opened, StartError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StartError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        if data_dir.join(LOG_FILE_V1).exists() {
            return Err(StartError::LogFormatV1(data_dir.to_path_buf()));
        }
        let cache_bytes = state_cache_bytes(settings)?;
        metrics
            .state_cache_bytes
            .set(i64::try_from(cache_bytes).unwrap_or(i64::MAX));
        let opened = Store::open_with_cache(&data_dir.join(STATE_FILE), cache_bytes);
        let snapshot_peers = state_repair::snapshot_voters(data_dir)
            .into_iter()
            .any(|voter| voter != id);
        let applied_peers = match &opened {
            Ok(store) => pkraft_raft_storage::state_machine::applied_voters(store)
                .unwrap_or_default()
                .into_iter()
                .any(|voter| voter != id),
            Err(_) => false,
        };
        let (log_store, log_damage) =
            LogStore::open_repairing(&data_dir.join(LOG_DIR), id, applied_peers || snapshot_peers)?;
        let log_store = log_store.timing_appends(metrics.log_append.clone());
        let (store, state_rebuilt) = state_repair::open_whole(
            data_dir,
            opened,
            cache_bytes,
            &log_store,
            id,
            snapshot_peers,
        )?;
        log_store.claim_node_id(id)?;
        store.set_apply_batching(settings.apply_batching())?;
        for _ in &log_damage {
            metrics.damage_found(Damaged::Log);
        }
        if state_rebuilt.is_some() {
            metrics.damage_found(Damaged::State);
        }
        Ok(Opened {
            store,
            log_store,
            state_rebuilt,
        })
    }
}

/// What the state machine keeps in memory besides the replica, on every replica: the DHT
/// outbox, the short-lived records, the snapshot builds' times, the log's time and expiry's
/// deletions. Each goes to the part that reads it.
struct AppliedMemory {
    dht_outbox: Arc<DhtOutbox>,
    short_lived: Arc<ShortLivedRecords>,
    build_times: Arc<BuildTimes>,
    clock_readings: Arc<ClockReadings>,
    expiry_ledger: Arc<ExpiryLedger>,
    /// Notified when a snapshot install has replaced the state (the warm-up reads it again).
    state_replaced: Arc<tokio::sync::Notify>,
}

impl AppliedMemory {
    /// Empty, but for the log's time, read from `store`.
    fn new(settings: &Settings, store: &Store, metrics: &NodeMetrics) -> AppliedMemory {
        let log_time = match store.log_time_micros() {
            Ok(log_time) => log_time,
            Err(e) => {
                // The next publish applied writes it whole again; until then cluster time has
                // only the voters' clocks (and the rate fence) to go by.
                tracing::warn!(error = %e, "the log's time in state.redb is damaged; ignored until the next publish");
                metrics.damage_found(Damaged::State);
                None
            }
        };
        let bounds = ClockBounds {
            max_offset: settings.max_clock_offset,
            max_jump: settings.max_clock_jump,
        };
        AppliedMemory {
            dht_outbox: Arc::new(DhtOutbox::default()),
            short_lived: Arc::new(ShortLivedRecords::default()),
            build_times: Arc::new(BuildTimes::default()),
            clock_readings: Arc::new(ClockReadings::new(bounds, log_time)),
            expiry_ledger: Arc::new(ExpiryLedger::default()),
            state_replaced: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// The state machine's events, filling these.
    fn events(&self, metrics: &Arc<NodeMetrics>) -> StateMachineEvents {
        StateMachineEvents {
            metrics: metrics.clone(),
            dht_outbox: self.dht_outbox.clone(),
            short_lived: self.short_lived.clone(),
            build_times: self.build_times.clone(),
            clock_readings: self.clock_readings.clone(),
            expiry_ledger: self.expiry_ledger.clone(),
            state_replaced: self.state_replaced.clone(),
        }
    }
}

/// Raft started on the opened data dir, with what the start learned on the way.
struct RaftStarted {
    raft: Raft<TypeConfig>,
    /// The node's peer client (openraft's replication has its own).
    peers: PeerClient,
    /// Shared with the peer network, for the node's leadership.
    quorum_contact: QuorumContact,
    silenced: Silenced,
    /// Whether local reads wait for the replica to catch up, and how far.
    freshness: Freshness,
}

impl RaftStarted {
    /// Starts Raft: initializes a pristine data dir as a one-voter cluster with
    /// `cluster.bootstrap`, else replays the log it holds (the only voter, its log whole), after
    /// taking the clean-stop marker.
    async fn start(
        id: NodeId,
        data_dir: &Path,
        mut config: openraft::Config,
        cluster: &Participation,
        opened: &Opened,
        state_machine: StateMachine,
    ) -> Result<RaftStarted, StartError> {
        let Opened {
            store, log_store, ..
        } = opened;
        if log_store.repair().is_some() {
            // Held until the log is whole again (`hold_elections_while_repairing`), from the
            // first tick on. (With PreVote openraft's timer is off anyway.)
            config.enable_elect = false;
        }
        let pristine = log_store.is_pristine()?;
        if pristine && store.applied_state()?.is_some() {
            return Err(StartError::LogMissing(data_dir.to_path_buf()));
        }
        let last_log_id = log_store.last_log_id()?;
        // A rebuilt state may be older than what was served before (the log after its snapshot
        // is applied again), so reads wait as after a crash.
        // So may a state whose log is being repaired (a start that crashed while rebuilding it
        // from the cluster finds the state new and empty).
        let clean_stop = take_clean_stop_marker(data_dir)?
            && opened.state_rebuilt.is_none()
            && log_store.repair().is_none();
        // `Node::start` runs on the node's runtime: every peer call is made there, whichever
        // runtime asks for it (see `PeerClient`).
        let peer_client = || {
            PeerClient::new(
                id,
                cluster.secret.clone(),
                cluster.tls.clone(),
                cluster.transport.clone(),
                Handle::current(),
            )
            .map_err(|e| StartError::PeerTls(e.into()))
        };
        let peers = peer_client()?;
        let quorum_contact = QuorumContact::default();
        let silenced = Silenced::default();
        // openraft's own client, with connections of its own: replication never waits for a
        // pooled connection that a status probe, a forwarded publish or an admin call holds.
        let network = PeerNetwork::new(peer_client()?, quorum_contact.clone(), silenced.clone());
        let raft = Raft::new(
            id,
            Arc::new(config),
            network,
            log_store.clone(),
            state_machine,
        )
        .await
        .map_err(|e| StartError::raft("starting", e))?;
        if pristine && cluster.bootstrap {
            let members = BTreeMap::from([(id, BasicNode::new(&cluster.advertise))]);
            raft.initialize(members)
                .await
                .map_err(|e| StartError::raft("initializing a new cluster", e))?;
            tracing::info!(node_id = id, data_dir = %data_dir.display(), "initialized a new single-node cluster");
        } else if let Some(log_end) = last_log_id.map(|log_id| log_id.index) {
            replay_log(&raft, id, log_end, log_store.repair().is_some()).await?;
        }
        // A repaired log held more than it holds now, and the state may be older than what was
        // served before: local reads wait until the node has caught up to where the log reached
        // before the damage.
        let catch_up_to =
            last_log_id.max(log_store.repair().and_then(|repair| repair.held_through));
        Ok(RaftStarted {
            raft,
            peers,
            quorum_contact,
            silenced,
            freshness: Freshness::at_start(catch_up_to, clean_stop),
        })
    }
}

/// The data dir's disk, watched for room (`raft.min_free_disk_mib`, and the new-key reserve),
/// with its bounds as gauges.
fn disk_space(data_dir: &Path, settings: &Settings, metrics: &NodeMetrics) -> Arc<DiskSpace> {
    metrics
        .disk_min_free_bytes
        .set(i64::try_from(settings.min_free_disk_bytes()).unwrap_or(i64::MAX));
    metrics
        .disk_new_keys_min_free_bytes
        .set(i64::try_from(settings.new_keys_min_free_disk_bytes()).unwrap_or(i64::MAX));
    Arc::new(DiskSpace::new(
        data_dir,
        settings.min_free_disk_bytes(),
        settings.new_keys_min_free_disk_bytes(),
        metrics.disk_available_bytes.clone(),
    ))
}

/// The names of the node's supervised tasks (`pkraft_task_panics_total{task}`).
pub mod task {
    pub const CLUSTER_STATE: &str = "raft-cluster-state";
    pub const SNAPSHOT_SCHEDULE: &str = "snapshot-schedule";
    pub const DISK_SPACE: &str = "disk-space";
    pub const CLUSTER_CLOCK: &str = "cluster-clock";
    pub const HANDOVER_LOW_DISK: &str = "handover-low-disk";
    pub const SCRUB: &str = "scrub";
    pub const KEEP_JOINING: &str = "keep-joining";
    pub const HOLD_ELECTIONS: &str = "hold-elections";
    pub const PRE_VOTE: &str = "pre-vote";
    pub const EXPIRY: &str = "expiry";
    pub const READ_INDEX: &str = "read-index";
    pub const WARM_STATE_CACHE: &str = "warm-state-cache";

    /// Every name above.
    pub const ALL: [&str; 12] = [
        WARM_STATE_CACHE,
        READ_INDEX,
        CLUSTER_STATE,
        SNAPSHOT_SCHEDULE,
        DISK_SPACE,
        CLUSTER_CLOCK,
        HANDOVER_LOW_DISK,
        SCRUB,
        KEEP_JOINING,
        HOLD_ELECTIONS,
        PRE_VOTE,
        EXPIRY,
    ];
}

/// `pkraft_tasks::spawn` of the loop `run(part)`, for a task of one of the node's parts; with
/// its name, for the stop.
fn supervise<Part, Fut>(
    name: &'static str,
    part: &Arc<Part>,
    run: impl Fn(Arc<Part>) -> Fut + Send + 'static,
) -> (&'static str, tokio::task::JoinHandle<()>)
where
    Part: Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let part = part.clone();
    (name, pkraft_tasks::spawn(name, move || run(part.clone())))
}

/// What the state machine tells this node as it works.
struct StateMachineEvents {
    metrics: Arc<NodeMetrics>,
    dht_outbox: Arc<DhtOutbox>,
    short_lived: Arc<ShortLivedRecords>,
    build_times: Arc<BuildTimes>,
    clock_readings: Arc<ClockReadings>,
    expiry_ledger: Arc<ExpiryLedger>,
    state_replaced: Arc<tokio::sync::Notify>,
}

impl StateEvents for StateMachineEvents {
    fn wants_stored_keys(&self) -> bool {
        self.dht_outbox.is_enabled()
    }

    fn applied(&self, stored: &[(KeyBytes, u64)], progress: &[Progress], through: u64) {
        self.dht_outbox.applied(stored, progress, through);
    }

    fn expired(&self, records: u64) {
        self.metrics.expired_records.inc_by(records);
        self.expiry_ledger.deleted(records);
    }

    fn stamped(&self, leader_time_micros: u64) {
        self.clock_readings.applied_stamp(leader_time_micros);
    }

    fn applied_in(&self, took: Duration) {
        self.metrics.apply.observe(took.as_secs_f64());
    }

    fn snapshot_built(&self, took: Duration) {
        self.metrics.snapshot_build.observe(took.as_secs_f64());
        self.build_times.ended(took);
    }

    fn snapshot_installed(&self, took: Duration) {
        self.metrics.snapshot_install.observe(took.as_secs_f64());
        self.state_replaced.notify_one();
    }

    fn damage_found(&self, what: Damaged) {
        self.metrics.damage_found(what);
    }

    fn short_lived_records(&self, records: &[ShortLivedRecord]) {
        for record in records {
            self.short_lived.apply(record);
        }
    }
}

/// redb's page cache of `state.redb`: `raft.state_cache_mib`, or derived from the memory this
/// process may use (`machine_memory`). Logged either way, so that an operator sees what a
/// derived cache came to and what it was derived from.
fn state_cache_bytes(settings: &Settings) -> Result<usize, StartError> {
    const MIB: usize = 1 << 20;
    if let Some(bytes) = settings.state_cache_bytes()? {
        tracing::info!(
            state_cache_mib = bytes / MIB,
            "state cache (raft.state_cache_mib)"
        );
        return Ok(bytes);
    }
    let mib = match machine_memory::memory_limit() {
        Some(limit) => {
            let mib = machine_memory::derived_state_cache_mib(limit.bytes);
            tracing::info!(
                state_cache_mib = mib,
                memory_mib = limit.bytes >> 20,
                "state cache derived from {} (an eighth, {} to {} MiB; set raft.state_cache_mib to choose it)",
                limit.source,
                machine_memory::STATE_CACHE_MIN_MIB,
                machine_memory::STATE_CACHE_MAX_MIB,
            );
            mib
        }
        None => {
            let mib = machine_memory::STATE_CACHE_UNKNOWN_MEMORY_MIB;
            tracing::warn!(
                state_cache_mib = mib,
                "cannot tell the memory this node may use (no /proc/meminfo): the state cache is the default for an unknown machine (set raft.state_cache_mib to choose it)"
            );
            mib
        }
    };
    // At most `STATE_CACHE_MAX_MIB`: fits the usize of any 32- or 64-bit target.
    Ok(usize::try_from(mib).map_or(usize::MAX, |mib| mib.saturating_mul(MIB)))
}

/// The cap on stored packets: `raft.max_stored_packets` (0: none), or derived from the size of
/// the data dir's file system (`store_cap::derived_max_packets`). Logged, so that an operator
/// sees what a derived cap came to.
fn max_stored_packets(settings: &Settings, data_dir: &Path) -> Option<u64> {
    let keep_free = settings.new_keys_min_free_disk_bytes();
    let max = match settings.max_stored_packets {
        Some(0) => {
            tracing::info!("no cap on stored packets (raft.max_stored_packets = 0)");
            return None;
        }
        Some(max) => max,
        None => match crate::disk_space::file_system_bytes(data_dir) {
            Ok(bytes) => {
                let max = store_cap::derived_max_packets(bytes, keep_free);
                tracing::info!(
                    max_stored_packets = max,
                    file_system_mib = bytes >> 20,
                    "cap on stored packets derived from the data dir's disk (set raft.max_stored_packets to choose it)"
                );
                return Some(max);
            }
            Err(e) => {
                tracing::warn!(
                    data_dir = %data_dir.display(),
                    error = %e,
                    max_stored_packets = store_cap::UNKNOWN_DISK_MAX_PACKETS,
                    "cannot tell the size of the data dir's disk: the cap on stored packets is the default for an unknown disk (set raft.max_stored_packets to choose it)"
                );
                store_cap::UNKNOWN_DISK_MAX_PACKETS
            }
        },
    };
    tracing::info!(max_stored_packets = max, "cap on stored packets");
    Some(max)
}

/// Says at start, loudly, when this node will refuse new keys from the first PUT on: its replica
/// holds the cap already (a store that grew before the cap existed, or a cap set below it), or
/// its disk is below the new-key reserve. Republishes go on either way.
fn warn_if_no_room_for_new_keys(store: &Store, disk: &DiskSpace, max_stored_packets: Option<u64>) {
    if let Some(max) = max_stored_packets
        && let Ok(count) = store.packet_count()
        && count >= max
    {
        tracing::warn!(
            stored_packets = count,
            max_stored_packets = max,
            "this replica holds the cap on stored packets: new keys are refused (507) until \
             expiry makes room; set raft.max_stored_packets to raise it (docs/OPERATIONS.md, \
             \"Bounded storage\")"
        );
    }
    if let Some(reason) = disk.new_keys_refusal() {
        tracing::warn!("{reason}");
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
///
/// Nor does a node whose log is being repaired (`repairing`): its log holds less than it held,
/// and its membership may be older too, cut back to the bootstrap's ("only voter"); it holds
/// its elections until the repair ends, so it could not apply alone, and the start timed out at
/// every restart (the simulator's seed 49: a `LogDamaged` bit flip in entry 3 of node 1's log).
/// It has other voters (`Opened::open` repairs only then), and its local reads wait until it
/// has caught up (`catch_up_to`). Either waits for openraft to load the log first.
async fn replay_log(
    raft: &Raft<TypeConfig>,
    id: NodeId,
    log_end: u64,
    repairing: bool,
) -> Result<(), StartError> {
    // openraft publishes the state it loaded (log, membership) when its core task first runs;
    // until then the metrics are empty initial ones, so wait for them first.
    let loaded = raft
        .wait(Some(REPLAY_TIMEOUT))
        .metrics(
            |m| m.last_log_index >= Some(log_end),
            "load the log held at start",
        )
        .await
        .map_err(|e| StartError::raft("loading the log", e))?;
    let only_voter = loaded.membership_config.membership().voter_ids().eq([id]);
    if !only_voter || repairing {
        return Ok(());
    }
    raft.wait(Some(REPLAY_TIMEOUT))
        .applied_index_at_least(Some(log_end), "apply the log held at start")
        .await
        .map_err(|e| {
            StartError::raft(
                format!("applying the log held at start (up to {log_end})"),
                e,
            )
        })?;
    Ok(())
}

/// Whether the log held entries when the node started (an earlier build made the data dir
/// then, if it keeps no record of its builds). A log that cannot be asked counts as used: the
/// record then names no creator rather than a wrong one.
fn held_a_log(log_store: &LogStore) -> bool {
    match (log_store.last_log_id(), log_store.purged()) {
        (Ok(last), Ok(purged)) => last.is_some() || purged.is_some(),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot tell whether the log held entries");
            true
        }
    }
}

/// Records this build in the data dir (`build_record`) and says when another one ran on it
/// before. The record is a report: failing to write it is a warning, not a failed start.
fn note_build(data_dir: &Path, build: &BuildInfo, held_a_log: bool) {
    match build_record::record_start(data_dir, build, held_a_log) {
        Ok(Before::Record(before)) if before.last_started_by != *build => tracing::info!(
            before = %before.last_started_by,
            now = %build,
            created_by = %before.created_by,
            "another build ran on this data dir before this one"
        ),
        Ok(Before::Record(_)) => {}
        Ok(Before::None) if held_a_log => tracing::info!(
            now = %build,
            "this data dir has no record of its builds (a development build before 0.2.0 made \
             it); recording them from now on"
        ),
        Ok(Before::None) => {}
        Ok(Before::Unreadable(why)) => tracing::warn!(
            file = %data_dir.join(build_record::BUILD_RECORD_FILE).display(),
            %why,
            "the data dir's record of its builds does not parse; written anew"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot record this build in the data dir"),
    }
}
