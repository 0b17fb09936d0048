//! A run of the simulated cluster: `nodes` nodes (node 1 initialized alone, the others joining
//! it as voters through the peer network), clients PUTting and reading through whichever nodes
//! the seed draws (`workload.rs`), faults drawn from the seed (`faults.rs`), and, once the
//! faults have ended and the replicas agree, the history and the replicas checked as the chaos
//! harness checks them (pkraft-check).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use pkraft_check::check::{Checked, FinalState, check_all};
use pkraft_check::history::Op;
use pkraft_raft::peer::ClusterSecret;
use pkraft_raft::{Node, Participation, Settings};

use crate::faults::{Fault, FaultKind, Faults, StopSignal, Stops, schedule};
use crate::network::{PEER_PORT, host_name, serve_peers, transport};
use crate::public::{serve_admin, serve_public};
use crate::removal::{Removal, remove_voter, removing};
use crate::workload::{
    Clients, Keys, Reachable, Reachables, Removed, Workload, role_of, run_client, write_each_key,
};

/// What a run does.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// What the run draws: the faults, the clients' operations, the network's and the nodes'
    /// randomness, the keys, and, in `make sim`'s build (`--cfg tokio_unstable`), tokio's
    /// scheduler (docs/SIMULATION.md).
    pub seed: u64,
    pub nodes: u64,
    pub workload: Workload,
    /// Simulated time the run may take before it is called stuck. The driver gives up at
    /// three quarters of it, naming what each node lacks, before turmoil's own limit.
    pub limit: Duration,
    /// A node cut off from every other for the whole run (a partition the run never heals; not
    /// with `faults`, whose end would heal it).
    pub cut_off: Option<u64>,
    /// Faults, each of a kind drawn from `kinds`, on a node, at a moment and for a time drawn
    /// from the seed ([`crate::faults::schedule`]).
    pub faults: u32,
    pub kinds: &'static [FaultKind],
    /// Whether one more node, `nodes + 1`, may join the cluster as a voter while the run goes
    /// on (in half the runs, drawn from the seed, at a moment from 0.5 to 3 s): a membership
    /// change (a learner added, caught up from the log or a snapshot, promoted through
    /// openraft's joint consensus) under the run's faults. The faults are drawn on nodes 1 to
    /// `nodes` only; the links it cuts and the power outages take the newcomer's too, and the
    /// clients and the checks count it like the others.
    pub may_grow: bool,
}

/// What a run saw.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Simulated time from the start until every replica held the same packets, at least the
    /// newest acknowledged of each key, looked at once every fault drawn had ended.
    pub settled_after: Duration,
    /// Turmoil steps taken.
    pub steps: u64,
    /// The faults made, in order (one drawn for a node under another fault then, or on links
    /// while another fault is on links, is not made).
    pub faults: Vec<Fault>,
    /// The clients' operations, and the PUTs among them acknowledged.
    pub ops: usize,
    pub acknowledged_puts: usize,
    /// Operations the linearizability check ordered, reads checked against the proposals.
    pub linearizable_ops: usize,
    pub reads_checked: usize,
    /// A fingerprint of what the run did, as the clients and the replicas saw it: each
    /// operation with its node, its answer and the simulated moments it was asked and answered,
    /// the faults made, and each replica's last applied log index at the end. A run that does
    /// the same gives the same one; a run of the same seed that gives another one is not
    /// deterministic.
    pub history: u64,
    /// Syncs the disk failed (`SyncsFailing`) and peer answers lost (`AnswersLost`): what
    /// those faults did.
    pub syncs_failed: u64,
    pub answers_lost: u64,
    /// How many times a node's log asked its disk's latency and found it slow (`DiskSlow`):
    /// as it queues a change and again as it comes to run it.
    pub found_disk_slow: u64,
    /// Snapshots the nodes installed from a leader (`raft.snapshot_after_entries` is small in
    /// a run, so a node that lagged behind a purge gets one).
    pub snapshots_installed: u64,
    /// The node that joined while the run went on, if one did ([`Run::may_grow`]).
    pub joined: Option<u64>,
    /// The voter removed while the run went on, if one was (`removal.rs`).
    pub removed: Option<u64>,
}

/// FNV-1a over the events of a run, one at a time: stable across builds and platforms (std's
/// hashers promise neither). With `SIM_HISTORY=1` each event is printed as it is recorded, so
/// that two runs that differ can be compared line by line.
#[derive(Debug, Clone, Copy)]
struct History {
    hash: u64,
    print: bool,
}

impl History {
    fn new() -> History {
        History {
            hash: 0xcbf2_9ce4_8422_2325,
            print: std::env::var_os("SIM_HISTORY").is_some_and(|value| value == "1"),
        }
    }

    fn record(&mut self, event: &str) {
        if self.print {
            eprintln!("history: {event}");
        }
        for byte in event.bytes().chain([b'\n']) {
            self.hash = (self.hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// What the driver saw: when the replicas agreed (or what they lacked when it gave up), the
/// operations, what each node held at the end, and what it recorded on the way.
struct Driven {
    settled_after: Duration,
    unsettled: Option<String>,
    ops: Vec<Op>,
    keys: usize,
    finals: Vec<FinalState>,
    history: History,
}

/// Why a run failed: each says what to look at, and names its seed and the command that runs
/// the simulation with it again (exactly so in `make sim`'s build, with tokio's scheduler
/// seeded: docs/SIMULATION.md).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "seed {seed}: a data dir could not be made: {source} (again: SIM_SEEDS={seed} make sim)"
    )]
    DataDir { seed: u64, source: std::io::Error },
    #[error("seed {seed}: the simulation stopped: {reason} (again: SIM_SEEDS={seed} make sim)")]
    Simulation { seed: u64, reason: String },
    /// The checks failed on the history or the replicas, or the replicas never came to agree.
    #[error(
        "seed {seed}: after {after:?} of simulated time, {found} (again: SIM_SEEDS={seed} make sim)"
    )]
    Violated {
        seed: u64,
        after: Duration,
        found: String,
    },
}

/// The simulated wall clock's start: a fixed moment (2026-01-01), the same on every run.
const EPOCH_SECS: u64 = 1_767_225_600;
/// A simulated step: each host runs this much simulated time at a turn.
const TICK: Duration = Duration::from_millis(1);
/// How often the driver looks at the replicas.
const POLL: Duration = Duration::from_millis(100);
/// The cluster's secret: every node's, so the peer routes admit each other.
const SECRET: &str = "simulated-cluster-secret-0123456789";

/// The node that joins a run while it goes on ([`Run::may_grow`]), and when.
#[derive(Debug, Clone, Copy)]
struct Joiner {
    node: u64,
    at: Duration,
}

/// Whether a node joins the run of `seed` on `nodes` nodes, and when: in half the runs, from a
/// stream of the seed's own (apart from the faults' and the nodes' draws).
fn joining(seed: u64, nodes: u64) -> Option<Joiner> {
    let mut draws = pkraft_testkit::rng::SplitMix64::new(seed ^ 0x6a01_4e55_0000_0000);
    (draws.below(2) == 0).then(|| Joiner {
        node: nodes + 1,
        at: Duration::from_millis(draws.between(500, 3_000)),
    })
}

/// Entries between snapshot builds in a run (`raft.snapshot_after_entries`).
const SNAPSHOT_AFTER_ENTRIES: u64 = 16;

fn settings() -> Settings {
    Settings {
        heartbeat_interval: Duration::from_millis(50),
        election_timeout_min: Duration::from_millis(300),
        election_timeout_max: Duration::from_millis(600),
        // The data dirs are on the machine's disk, whose free space is not the simulation's.
        min_free_disk_mib: 0,
        new_keys_min_free_disk_mib: Some(0),
        max_stored_packets: Some(0),
        // Expiry runs in every run, as in the chaos harness, and an hour is what a clock step
        // drawn (`faults.rs`: up to 8 days, either way) often outruns: a node that expired by
        // its own clock would delete what the cluster acknowledged.
        record_max_age: Duration::from_secs(3600),
        expiry_interval: Duration::from_millis(500),
        // Snapshots built, logs purged and snapshots installed in every run, as in the chaos
        // harness (64 and 16 there), scaled to a run's hundred-odd entries.
        snapshot_after_entries: SNAPSHOT_AFTER_ENTRIES,
        entries_kept_after_snapshot: 4,
        // A snapshot's last chunk lost to a partition is lost for good here (turmoil's TCP
        // does not retransmit) on a connection that stays open: without a bound below the
        // run, the follower would wait out 30 minutes (docs/SIMULATION.md, "Snapshot
        // installs"). A run's snapshots install in milliseconds.
        snapshot_install_timeout: Duration::from_secs(3),
        ..Settings::default()
    }
}

/// Node `id`'s part in a cluster whose first nodes are 1 to `first_nodes`: node 1 bootstraps
/// it, every other node joins as a voter through the first nodes (itself aside), node 1 first,
/// as an operator lists every seed node in `cluster.join` (with node 1 alone, a node whose
/// join outlasted node 1's removal never joined: seed 3655 from seed 1001, 2026-12-01).
fn participation(id: u64, first_nodes: u64) -> Result<Participation, String> {
    let secret = ClusterSecret::new(SECRET).map_err(|e| format!("the secret: {e}"))?;
    let mut participation = Participation::standalone();
    participation.advertise = format!("{}:{PEER_PORT}", host_name(id));
    participation.secret = Some(secret);
    participation.bootstrap = id == 1;
    participation.join = if id == 1 {
        Vec::new()
    } else {
        (1..=first_nodes)
            .filter(|&seed| seed != id)
            .map(|seed| format!("{}:{PEER_PORT}", host_name(seed)))
            .collect()
    };
    participation.voter = true;
    participation.transport = transport();
    Ok(participation)
}

/// One run at a time in a process: a thread outside the simulation reads the wall clock the
/// simulation's thread read last (`world`), which two runs at once would mix.
static ONE_RUN_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `run` to its end: `Ok` when the replicas came to agree and the history and the
/// replicas pass every check (pkraft-check's `check_all`).
pub fn run(run: Run) -> Result<RunReport, RunError> {
    let _alone = ONE_RUN_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    crate::world::install();
    crate::log::install();
    crate::world::start_run(run.seed, EPOCH_SECS * 1_000_000);
    align_task_ids().map_err(|reason| RunError::Simulation {
        seed: run.seed,
        reason,
    })?;
    let seed = run.seed;
    let joining = run.may_grow.then(|| joining(seed, run.nodes)).flatten();
    // Once the newcomer has joined, half such runs remove a voter (`removal.rs`).
    let removal = joining.and_then(|joiner| removing(seed, joiner.node, joiner.at));
    let removed: Removed = Rc::default();
    // Every node the run may have: its first ones and the newcomer.
    let all = run.nodes + u64::from(joining.is_some());
    let dirs = (1..=all)
        .map(|id| Ok((id, tempfile::tempdir()?)))
        .collect::<std::io::Result<BTreeMap<_, _>>>()
        .map_err(|source| RunError::DataDir { seed, source })?;
    let mut sim = turmoil::Builder::new()
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_SECS))
        .simulation_duration(run.limit)
        .tick_duration(TICK)
        .rng_seed(seed)
        // One connection a call at most; the accept queue must not be what fails.
        .tcp_capacity(4_096)
        .build();
    let started: Reachables = Rc::default();
    let incarnations: Rc<RefCell<BTreeMap<u64, u32>>> = Rc::default();
    let stops = Stops::of(all);
    let first_nodes = run.nodes;
    for (&id, dir) in &dirs {
        let joins_at = joining
            .filter(|joiner| joiner.node == id)
            .map(|joiner| joiner.at);
        let dir: PathBuf = dir.path().to_path_buf();
        let (started, incarnations) = (started.clone(), incarnations.clone());
        let stop = stops
            .signal(id)
            .map_err(|reason| RunError::Simulation { seed, reason })?;
        sim.host(host_name(id), move || {
            let (dir, started, incarnations, stop) = (
                dir.clone(),
                started.clone(),
                incarnations.clone(),
                stop.clone(),
            );
            async move {
                // The node's wall clock is read on this host's runtime.
                crate::world::register_host(id);
                // The newcomer's host waits for its moment (again after a power outage
                // before it, which starts the host anew).
                if let Some(at) = joins_at {
                    let now = turmoil::sim_elapsed().unwrap_or_default();
                    tokio::time::sleep(at.saturating_sub(now)).await;
                }
                let node = match start_node(id, first_nodes, &dir).await {
                    Ok(node) => node,
                    // A start still under way when `SyncsFailing` began, failed by its disk:
                    // the node must not run, as the daemon exits; it waits for the fault's end
                    // to start it again. Any other start that fails is a finding.
                    Err(error)
                        if crate::disk::syncs_fail(&dir)
                            && crate::disk::says_eio(&error.to_string()) =>
                    {
                        tracing::info!(node = id, %error, "did not start on a failing disk");
                        return std::future::pending().await;
                    }
                    Err(error) => return Err(error),
                };
                // The relay, until the host stops: a crash ends it with every connection. A
                // listener that fails (its bind, its router) fails the host, and the run, as
                // the peer listener's does.
                let public = node.clone();
                tokio::spawn(async move {
                    if let Err(error) = serve_public(public).await {
                        panic!("node {id}'s public listener failed: {error}");
                    }
                });
                let admin = node.clone();
                tokio::spawn(async move {
                    if let Err(error) = serve_admin(admin, settings().record_max_age).await {
                        panic!("node {id}'s admin listener failed: {error}");
                    }
                });
                let incarnation = {
                    let mut incarnations = incarnations.borrow_mut();
                    let started = incarnations.entry(id).or_insert(0);
                    *started += 1;
                    *started
                };
                let reachable = Reachable {
                    incarnation,
                    node: node.clone(),
                };
                started.borrow_mut().insert(id, reachable);
                serve_until_stopped(node, &stop, &started).await?;
                Ok(())
            }
        });
    }
    if run.cut_off.is_some() && run.faults > 0 {
        return Err(RunError::Simulation {
            seed,
            reason: "a node cut off for the whole run and faults: a fault's end would heal the cut"
                .to_string(),
        });
    }
    if let Some(cut_off) = run.cut_off {
        for other in (1..=run.nodes).filter(|&other| other != cut_off) {
            sim.partition(host_name(cut_off), host_name(other));
        }
    }
    let outcome: Rc<RefCell<Option<Result<Driven, String>>>> = Rc::default();
    let (driver_started, driver_outcome, driver_removed) =
        (started.clone(), outcome.clone(), removed.clone());
    let faults = schedule(run.seed, run.nodes, run.faults, run.kinds);
    // The replicas are checked once every fault drawn has ended.
    let faults_end = faults.iter().map(Fault::ends).max().unwrap_or_default();
    sim.client("driver", async move {
        let plan = Plan {
            seed,
            nodes: all,
            workload: run.workload,
            faults_end,
            limit: run.limit * 3 / 4,
            removal,
        };
        let result = drive(driver_started, driver_removed, plan).await;
        *driver_outcome.borrow_mut() = Some(result);
        Ok(())
    });
    // Watches the steps, and the end of the simulation: `sim` (its hosts' runtimes) and the
    // driver's last hold on the nodes are dropped, and the nodes' threads joined with them,
    // before the watchdog is.
    let watchdog = Watchdog::start(seed);
    let under_way = Faults::new(
        dirs.iter()
            .map(|(&id, dir)| (id, dir.path().to_path_buf()))
            .collect(),
        stops,
        removed.clone(),
    );
    let stepped = step_to_the_end(
        &mut sim,
        &watchdog,
        &started,
        &incarnations,
        &faults,
        under_way,
        all,
    );
    let elapsed = sim.elapsed();
    let ending = watchdog.step();
    drop(sim);
    started.borrow_mut().clear();
    drop(ending);
    let (steps, faults) = stepped.map_err(|reason| RunError::Simulation { seed, reason })?;
    let result = outcome.borrow_mut().take();
    let Some(driven) = result else {
        return Err(RunError::Simulation {
            seed,
            reason: "the driver ended without an outcome".to_string(),
        });
    };
    let Driven {
        settled_after,
        unsettled,
        ops,
        keys,
        finals,
        mut history,
    } = driven.map_err(|reason| RunError::Simulation { seed, reason })?;
    let (checked, violations) = check_all(&ops, keys, &finals);
    let found: Vec<String> = unsettled
        .into_iter()
        .chain(violations.iter().map(ToString::to_string))
        .collect();
    if !found.is_empty() {
        return Err(RunError::Violated {
            seed,
            after: elapsed,
            found: found.join("; "),
        });
    }
    for fault in &faults {
        history.record(&format!("{fault:?}"));
    }
    history.record(&format!("{steps} steps"));
    let Checked {
        linearizable_ops,
        reads_checked,
        acknowledged_puts,
        ..
    } = checked;
    Ok(RunReport {
        settled_after,
        steps,
        faults,
        ops: ops.len(),
        acknowledged_puts,
        linearizable_ops,
        reads_checked,
        history: history.hash,
        syncs_failed: crate::disk::syncs_failed(),
        found_disk_slow: crate::disk::found_slow(),
        answers_lost: crate::network::answers_lost(),
        snapshots_installed: crate::log::snapshots_installed(),
        joined: joining.map(|joiner| joiner.node),
        removed: removed.get(),
    })
}

/// How many tokio task ids a run's first task id is a multiple of: a multiple of the 4 shards
/// of a current-thread runtime's task list.
const TASK_ID_ALIGNMENT: u64 = 64;

/// Takes task ids until the next one is a multiple of [`TASK_ID_ALIGNMENT`], so that every run
/// numbers its tasks alike. tokio numbers tasks from one counter for the whole process, and a
/// runtime that shuts down (a host's crash) drops its tasks shard by shard, a task's shard
/// being its id modulo 4: numbered from another start, a crash closes the host's sockets in
/// another order, and turmoil draws their messages' delays in another order (seed 22 settled
/// after 5.577 s as the first run of a process, after 4.046 s after another run). Runs hold
/// [`ONE_RUN_AT_A_TIME`], so no other run takes ids meanwhile.
fn align_task_ids() -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| format!("a runtime to align task ids: {e}"))?;
    loop {
        let id = runtime.spawn(async {}).id().to_string();
        let id: u64 = id
            .parse()
            .map_err(|_| format!("a tokio task id that is not a number: {id}"))?;
        if id % TASK_ID_ALIGNMENT == TASK_ID_ALIGNMENT - 1 {
            return Ok(());
        }
    }
}

/// Starts node `id` of a cluster whose first nodes are 1 to `first_nodes` on `dir`. Once: the
/// storage runs inline, so a crashed run of the node holds nothing of its files by the time it
/// restarts, and a restart that fails (a data dir a crash left unreadable) is a finding, which
/// ends the run with its seed.
async fn start_node(
    id: u64,
    first_nodes: u64,
    dir: &std::path::Path,
) -> Result<Arc<Node>, Box<dyn std::error::Error>> {
    Node::start(id, dir, &settings(), participation(id, first_nodes)?)
        .await
        .map_err(|error| format!("node {id} did not start on its data dir: {error}").into())
}

/// Serves `node`'s peers until `stop` is signalled (`FaultKind::Stopped`), then stops the node
/// as the daemon's SIGTERM does (`pkraft::Server::shutdown`): a leader hands over, the node
/// shuts down, and the peer listener, which served the cluster throughout, goes last. The
/// host then waits to be started again; the fault's end drops it.
async fn serve_until_stopped(
    node: Arc<Node>,
    stop: &StopSignal,
    started: &Reachables,
) -> std::io::Result<()> {
    // Boxed, so that dropping it closes the listener.
    let mut serving = Box::pin(serve_peers(node.clone()));
    tokio::select! {
        biased;
        served = &mut serving => return served,
        () = stop.asked() => {}
    }
    // The driver let go of the node when the fault began; but a node started since (a stop
    // that begins as another fault's end restarts the host) has put itself back, and the
    // driver's hold on it would keep its files open past its restart (seeds 4089 and 10615:
    // "Database already open").
    started.borrow_mut().remove(&node.id());
    let stopping = async {
        let handed = node.handover().hand_over().await;
        tracing::info!(
            node = node.id(),
            ?handed,
            "simulated clean stop: handed over"
        );
        node.shutdown().await;
        tracing::info!(node = node.id(), "simulated clean stop: shut down");
    };
    tokio::select! {
        biased;
        served = &mut serving => return served,
        () = stopping => {}
    }
    // The listener and every connection it accepted closed, as the process's exit closes them.
    drop(serving);
    std::future::pending().await
}

/// Steps `sim` until the driver is done, beginning and ending `faults` as their moments come
/// (one drawn while [`Faults::may_begin`] says no is skipped). The steps taken and the faults
/// made, or why the simulation stopped.
fn step_to_the_end(
    sim: &mut turmoil::Sim<'_>,
    watchdog: &Watchdog,
    started: &Reachables,
    incarnations: &RefCell<BTreeMap<u64, u32>>,
    faults: &[Fault],
    mut under_way: Faults,
    nodes: u64,
) -> Result<(u64, Vec<Fault>), String> {
    let mut made = Vec::new();
    let mut due = faults.iter().peekable();
    let mut steps = 0u64;
    loop {
        let now = sim.elapsed();
        // A crash drops the host's runtime and a restart starts the node: watched like a step.
        let changing = watchdog.step();
        for node in under_way.power_off_ending(now) {
            // The driver must not keep a stopped node's files open past its restart.
            started.borrow_mut().remove(&node);
        }
        under_way.end_due(sim, now, nodes)?;
        while let Some(fault) = due.next_if(|fault| fault.at <= now) {
            if !under_way.may_begin(fault)
                || (fault.kind == FaultKind::LogDamaged
                    && !another_holds_its_log(
                        &started.borrow(),
                        &incarnations.borrow(),
                        fault.node,
                        under_way.removed(),
                    ))
            {
                continue;
            }
            under_way.power_off(fault, nodes);
            if fault.kind.stops_nodes() {
                // The driver must not keep a stopped node's files open past its restart.
                for node in fault.hits(nodes) {
                    started.borrow_mut().remove(&node);
                }
            }
            let cuts = under_way.begin(sim, *fault, nodes)?;
            made.push(*fault);
            tracing::info!(?fault, at = ?now, ?cuts, "simulated fault");
        }
        drop(changing);
        steps += 1;
        let step = watchdog.step();
        let stepped = sim.step();
        drop(step);
        match stepped {
            Ok(true) => return Ok((steps, made)),
            Ok(false) => {}
            Err(error) => return Err(error.to_string()),
        }
    }
}

/// Whether every node runs as a voter with no repair of its log pending, and another node has
/// applied every entry `node`'s log holds: then damage to `node`'s log is what the cluster
/// promises to repair (docs/CONSISTENCY.md, "Damaged disks": one damaged copy, a whole one
/// elsewhere). Otherwise it is not, and the runs that broke each part of the rule were stuck
/// as CONSISTENCY.md says they must be ("the cluster waits for ... an operator"): seed 286
/// damaged node 1's log at 243 ms, the only voter; seed 147 damaged node 3's while node 1,
/// damaged before, still lacked what it lost, and entries 18 and 19, which only those two held,
/// were lost with both copies; seed 316 damaged the leader's log while it alone held entries 8
/// and 9 (committed or not, it cannot tell, so it votes for no log without them).
///
/// Every node is every one that has started (`incarnations`): a newcomer counts once it has,
/// and a node removed (`removed`) no longer does: the others neither repair its log nor hold
/// theirs for it.
fn another_holds_its_log(
    started: &BTreeMap<u64, Reachable>,
    incarnations: &BTreeMap<u64, u32>,
    node: u64,
    removed: Option<u64>,
) -> bool {
    let Some(damaged) = started.get(&node) else {
        return false;
    };
    if removed == Some(node) {
        return false;
    }
    let members = |id: &&u64| removed != Some(**id);
    let held = damaged.node.members().local_status().last_log_index;
    let every_node_votes_whole = incarnations.keys().filter(members).all(|id| {
        started.get(id).is_some_and(|running| {
            let status = running.node.members().local_status();
            matches!(status.role.as_str(), "leader" | "follower" | "candidate")
                && status.log_repair.is_none()
        })
    });
    every_node_votes_whole
        && started
            .iter()
            .filter(|(id, _)| **id != node && removed != Some(**id))
            .any(|(_, other)| other.node.last_applied_index() >= held)
}

/// What the driver does in a run: its clients, when the faults are over, how long it may take,
/// and the voter it removes, if it removes one.
struct Plan {
    seed: u64,
    nodes: u64,
    workload: Workload,
    faults_end: Duration,
    limit: Duration,
    removal: Option<Removal>,
}

/// Runs the clients of `plan.workload` to their end (and the removal, if the plan has one,
/// beside them), then, from `plan.faults_end` on (the run's faults are over), writes each key
/// until a PUT of it is acknowledged (`write_each_key`) and waits until every node runs and
/// every replica holds the same packets, at least the newest acknowledged of each key; then
/// reads what each holds. What was still missing at `plan.limit` is kept for the report, and
/// the replicas are read as they are. A node removed (`removed`) is left out from the removal
/// on: of the nodes that must agree, and of the replicas checked.
async fn drive(started: Reachables, removed: Removed, plan: Plan) -> Result<Driven, String> {
    let Plan {
        seed,
        nodes,
        workload,
        faults_end,
        limit,
        removal,
    } = plan;
    let began = tokio::time::Instant::now();
    let clients = Rc::new(Clients {
        reachable: started.clone(),
        keys: Keys::new(seed, workload.keys),
        nodes,
        began,
        ops: RefCell::default(),
        removed,
    });
    let give_up_at = began + limit.saturating_sub(POLL * 10);
    let removing = removal.map(|removal| {
        let clients = clients.clone();
        tokio::task::spawn_local(async move { remove_voter(&clients, removal, give_up_at).await })
    });
    // Half the time for the clients, half for the replicas to agree.
    let stop_at = began + limit / 2;
    let running: Vec<_> = (0..workload.clients)
        .map(|client| {
            let clients = clients.clone();
            tokio::task::spawn_local(run_client(clients, seed, client, workload.ops, stop_at))
        })
        .collect();
    for client in running {
        client.await.map_err(|e| format!("a client ended: {e}"))?;
    }
    tokio::time::sleep(faults_end.saturating_sub(began.elapsed())).await;
    // One more client, after the clients: writes each key once the faults have ended.
    let written = write_each_key(&clients, workload.clients, give_up_at).await;
    let mut history = History::new();
    for op in clients.ops.borrow().iter() {
        history.record(&format!("{op:?}"));
    }
    let unsettled = match written {
        Err(unwritten) => Some(unwritten),
        Ok(()) => wait_until_agreed(&started, nodes, &clients, removal, give_up_at).await,
    };
    if let Some(removing) = removing {
        removing.abort();
    }
    history.record(&format!("removed {:?}", clients.removed.get()));
    let mut finals = Vec::new();
    for (&id, running) in started.borrow().iter() {
        history.record(&format!(
            "node {id} applied {:?}",
            running.node.last_applied_index()
        ));
        if !clients.was_removed(id) {
            finals.push(clients.keys.final_state(id, &running.node)?);
        }
    }
    let mut ops = clients.ops.take();
    // The checks read the operations in the order they were asked.
    ops.sort_by_key(|op| op.invoke_us);
    Ok(Driven {
        settled_after: began.elapsed(),
        unsettled,
        ops,
        keys: workload.keys,
        finals,
        history,
    })
}

/// Waits until every node runs and the replicas agree (`lacking` finds nothing): `None`, or
/// what was still lacking at `give_up_at`.
async fn wait_until_agreed(
    started: &Reachables,
    nodes: u64,
    clients: &Clients,
    removal: Option<Removal>,
    give_up_at: tokio::time::Instant,
) -> Option<String> {
    loop {
        let lacking = lacking(&started.borrow(), nodes, clients, removal);
        if lacking.is_empty() {
            return None;
        }
        if tokio::time::Instant::now() >= give_up_at {
            return Some(lacking.join("; "));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What keeps the replicas from agreeing: the run's removal not made yet, a node (of those not
/// removed) not running or not a voter, a replica without the newest acknowledged packet of a
/// key, or two replicas with different packets of one.
fn lacking(
    started: &BTreeMap<u64, Reachable>,
    nodes: u64,
    clients: &Clients,
    removal: Option<Removal>,
) -> Vec<String> {
    let mut lacking = Vec::new();
    if let Some(removal) = removal
        && !clients.was_removed(removal.node)
    {
        lacking.push(format!("node {} is not removed yet", removal.node));
    }
    let acknowledged = clients.acknowledged();
    let mut held: BTreeMap<usize, (u64, Option<u64>)> = BTreeMap::new();
    for id in (1..=nodes).filter(|&id| !clients.was_removed(id)) {
        let Some(Reachable { node, .. }) = started.get(&id) else {
            lacking.push(format!("node {id} is not running"));
            continue;
        };
        // Every node joins as a voter, the one that joins late too: a learner is one whose
        // promotion has not come (yet).
        let (role, votes) = role_of(node);
        if !votes {
            lacking.push(format!("node {id} is a {role}, not a voter"));
        }
        for key in 0..clients.keys.count() {
            let version = match node.store().get(&clients.keys.key_bytes(key)) {
                Ok(stored) => stored.map(|stored| stored.payload.timestamp_micros()),
                Err(e) => {
                    lacking.push(format!("node {id} cannot read key {key}: {e}"));
                    continue;
                }
            };
            if let Some(&newest) = acknowledged.get(&key)
                && version.is_none_or(|version| version < newest)
            {
                lacking.push(format!(
                    "node {id} lacks version {newest} of key {key} (holds {version:?})"
                ));
            }
            match held.get(&key) {
                Some(&(other, theirs)) if theirs != version => lacking.push(format!(
                    "key {key}: node {other} holds {theirs:?}, node {id} {version:?}"
                )),
                Some(_) => {}
                None => {
                    held.insert(key, (id, version));
                }
            }
        }
    }
    lacking
}

/// Real time one simulated step may take. Tasks that keep themselves runnable (one that never
/// yields, two that wake each other) hold a host's paused clock still: its step never ends,
/// and a run would hang for good instead of failing.
const STEP_REAL_TIME_MAX: Duration = Duration::from_secs(60);

/// Ends the process, naming the seed, when one step of a run (or a crash, a restart, the end of
/// the simulation) outlasts [`STEP_REAL_TIME_MAX`]: a step cannot be interrupted from its own
/// thread.
struct Watchdog {
    /// When the step under way began (real time), if one is.
    began: Arc<Mutex<Option<std::time::Instant>>>,
    /// Dropped to stop the watch: its thread wakes at once, not at its next look (a run's end
    /// waits for it; with a sleep of 200 ms between looks, 100 seeds took 20.4 s of real time,
    /// and 9.8 s without).
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A step under way, as the watchdog sees it; dropped when the step ends.
struct Stepping<'a>(&'a Watchdog);

impl Watchdog {
    fn start(seed: u64) -> Watchdog {
        let began: Arc<Mutex<Option<std::time::Instant>>> = Arc::default();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let watched = began.clone();
        let thread = std::thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(Duration::from_millis(200))
            {
                let stuck = watched
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .is_some_and(|began| began.elapsed() > STEP_REAL_TIME_MAX);
                if stuck {
                    // Straight to stderr: the test harness holds back what `eprintln!` prints,
                    // and the abort would lose it.
                    let _ = writeln!(
                        std::io::stderr(),
                        "seed {seed}: one simulated step has run for more than \
                         {STEP_REAL_TIME_MAX:?} of real time: tasks that keep themselves \
                         runnable hold simulated time still (again: SIM_SEEDS={seed} make sim)"
                    );
                    std::process::abort();
                }
            }
        });
        Watchdog {
            began,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn step(&self) -> Stepping<'_> {
        *self.lock() = Some(std::time::Instant::now());
        Stepping(self)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<std::time::Instant>> {
        self.began
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Stepping<'_> {
    fn drop(&mut self) {
        *self.0.lock() = None;
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
