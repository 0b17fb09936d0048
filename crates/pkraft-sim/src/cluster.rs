//! A run of the simulated cluster: `nodes` nodes (node 1 initialized alone, the others joining
//! it as voters through the peer network), `packets` packets published through whichever node
//! runs, faults drawn from the seed (`faults.rs`), and every replica checked for every packet
//! acknowledged once the run settles.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use pkraft_raft::peer::ClusterSecret;
use pkraft_raft::{Node, Participation, Settings};
use pkraft_testkit::{iroh_packet, keypair};
use pkraft_types::{KeyBytes, VerifiedPacket};
use tokio::sync::{mpsc, oneshot};

use crate::faults::{Fault, FaultKind, Faults, host_name, schedule};
use crate::network::{PEER_PORT, serve_peers, transport};

/// What a run does.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// What the run draws: the faults, the network's and the nodes' randomness, the keys, and,
    /// in `make sim`'s build (`--cfg tokio_unstable`), tokio's scheduler (docs/SIMULATION.md).
    pub seed: u64,
    pub nodes: u64,
    pub packets: u64,
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
}

/// What a run saw.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Simulated time from the start until every replica held every packet, looked at once
    /// every fault drawn had ended.
    pub settled_after: Duration,
    /// Turmoil steps taken.
    pub steps: u64,
    /// The faults made, in order (one drawn for a node under another fault then, or on links
    /// while another fault is on links, is not made).
    pub faults: Vec<Fault>,
    /// A fingerprint of what the run did, as a client and the replicas saw it: each publish's
    /// answer, key and the simulated moment it came, the faults made, and each replica's last
    /// applied log index once every packet was held. A run that does the same gives the same
    /// one; a run of the same seed that gives another one is not deterministic.
    pub history: u64,
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

/// What the driver saw: when every replica held every packet, and what it recorded on the way.
struct Driven {
    settled_after: Duration,
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
    #[error(
        "seed {seed}: after {after:?} of simulated time, {missing} (again: SIM_SEEDS={seed} make sim)"
    )]
    NotSettled {
        seed: u64,
        after: Duration,
        missing: String,
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

fn settings() -> Settings {
    Settings {
        heartbeat_interval: Duration::from_millis(50),
        election_timeout_min: Duration::from_millis(300),
        election_timeout_max: Duration::from_millis(600),
        // The data dirs are on the machine's disk, whose free space is not the simulation's.
        min_free_disk_mib: 0,
        new_keys_min_free_disk_mib: Some(0),
        max_stored_packets: Some(0),
        ..Settings::default()
    }
}

fn participation(id: u64) -> Result<Participation, String> {
    let secret = ClusterSecret::new(SECRET).map_err(|e| format!("the secret: {e}"))?;
    let mut participation = Participation::standalone();
    participation.advertise = format!("{}:{PEER_PORT}", host_name(id));
    participation.secret = Some(secret);
    participation.bootstrap = id == 1;
    participation.join = if id == 1 {
        Vec::new()
    } else {
        vec![format!("{}:{PEER_PORT}", host_name(1))]
    };
    participation.voter = true;
    participation.transport = transport();
    Ok(participation)
}

fn packet(seed: u64, index: u64) -> VerifiedPacket {
    // The keys differ per run, the timestamps are the simulated clock's.
    let key = keypair(seed.wrapping_mul(1_000_003).wrapping_add(index));
    let timestamp = pkraft_types::unix_micros_now();
    let payload = iroh_packet(&key, timestamp, &["192.0.2.1:1"]).to_relay_payload();
    VerifiedPacket::verify(&key.public_key(), payload).expect("a packet of the test keys verifies")
}

/// A publish a client asks of a node, and where its answer goes.
type PublishRequest = (VerifiedPacket, oneshot::Sender<Result<(), String>>);

/// A node running, as the driver reaches it: its replica to read, and its publish requests,
/// which a task on the node's own host serves (so the node's work runs on its runtime, and a
/// crash ends it with the host, as a client's connection to a killed process would end).
#[derive(Clone)]
struct Running {
    node: Arc<Node>,
    publishes: mpsc::Sender<PublishRequest>,
}

/// The nodes running, by id.
type Started = Rc<RefCell<BTreeMap<u64, Running>>>;

/// One run at a time in a process: a thread outside the simulation reads the wall clock the
/// simulation's thread read last (`world`), which two runs at once would mix.
static ONE_RUN_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `run` to its end: `Ok` when every replica holds every packet published.
pub fn run(run: Run) -> Result<RunReport, RunError> {
    let _alone = ONE_RUN_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    crate::world::install();
    crate::log::install_from_env();
    crate::world::start_run(run.seed, EPOCH_SECS * 1_000_000);
    align_task_ids().map_err(|reason| RunError::Simulation {
        seed: run.seed,
        reason,
    })?;
    let seed = run.seed;
    let dirs = (1..=run.nodes)
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
    let started: Started = Rc::default();
    for (&id, dir) in &dirs {
        let dir: PathBuf = dir.path().to_path_buf();
        let started = started.clone();
        sim.host(host_name(id), move || {
            let (dir, started) = (dir.clone(), started.clone());
            async move {
                let node = start_node(id, &dir).await?;
                let (publishes, requests) = mpsc::channel(PUBLISH_REQUESTS_MAX);
                tokio::spawn(serve_publishes(node.clone(), requests));
                let running = Running {
                    node: node.clone(),
                    publishes,
                };
                started.borrow_mut().insert(id, running);
                serve_peers(node).await?;
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
    let (driver_started, driver_outcome) = (started.clone(), outcome.clone());
    let (nodes, packets) = (run.nodes, run.packets);
    let faults = schedule(run.seed, run.nodes, run.faults, run.kinds);
    // The replicas are checked once every fault drawn has ended.
    let faults_end = faults.iter().map(Fault::ends).max().unwrap_or_default();
    sim.client("driver", async move {
        let result = drive(
            driver_started,
            seed,
            nodes,
            packets,
            faults_end,
            run.limit * 3 / 4,
        )
        .await;
        *driver_outcome.borrow_mut() = Some(result);
        Ok(())
    });
    // Watches the steps, and the end of the simulation: `sim` (its hosts' runtimes) and the
    // driver's last hold on the nodes are dropped, and the nodes' threads joined with them,
    // before the watchdog is.
    let watchdog = Watchdog::start(seed);
    let stepped = step_to_the_end(&mut sim, &watchdog, &started, &faults, run.nodes);
    let elapsed = sim.elapsed();
    let ending = watchdog.step();
    drop(sim);
    started.borrow_mut().clear();
    drop(ending);
    let (steps, faults) = stepped.map_err(|reason| RunError::Simulation { seed, reason })?;
    let result = outcome.borrow_mut().take();
    match result {
        Some(Ok(Driven {
            settled_after,
            mut history,
        })) => {
            for fault in &faults {
                history.record(&format!("{fault:?}"));
            }
            history.record(&format!("{steps} steps"));
            Ok(RunReport {
                settled_after,
                steps,
                faults,
                history: history.hash,
            })
        }
        Some(Err(missing)) => Err(RunError::NotSettled {
            seed,
            after: elapsed,
            missing,
        }),
        None => Err(RunError::Simulation {
            seed,
            reason: "the driver ended without an outcome".to_string(),
        }),
    }
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

/// Publish requests a node holds before the driver waits to send more.
const PUBLISH_REQUESTS_MAX: usize = 64;
/// How long the driver waits for a node's answer to a publish: longer than the node's own
/// `raft.publish_timeout`, so a node that runs always answers first.
const PUBLISH_ANSWER_WAIT: Duration = Duration::from_secs(30);
/// Starts node `id` on `dir`. Once: the storage runs inline, so a crashed run of the node holds
/// nothing of its files by the time it restarts, and a restart that fails (a data dir a crash
/// left unreadable) is a finding, which ends the run with its seed.
async fn start_node(
    id: u64,
    dir: &std::path::Path,
) -> Result<Arc<Node>, Box<dyn std::error::Error>> {
    Node::start(id, dir, &settings(), participation(id)?)
        .await
        .map_err(|error| format!("node {id} did not start on its data dir: {error}").into())
}

/// Steps `sim` until the driver is done, beginning and ending `faults` as their moments come
/// (one drawn while [`Faults::may_begin`] says no is skipped). The steps taken and the faults
/// made, or why the simulation stopped.
fn step_to_the_end(
    sim: &mut turmoil::Sim<'_>,
    watchdog: &Watchdog,
    started: &Started,
    faults: &[Fault],
    nodes: u64,
) -> Result<(u64, Vec<Fault>), String> {
    let mut made = Vec::new();
    let mut under_way = Faults::default();
    let mut due = faults.iter().peekable();
    let mut steps = 0u64;
    loop {
        let now = sim.elapsed();
        // A crash drops the host's runtime and a restart starts the node: watched like a step.
        let changing = watchdog.step();
        under_way.end_due(sim, now, nodes);
        while let Some(fault) = due.next_if(|fault| fault.at <= now) {
            if !under_way.may_begin(fault) {
                continue;
            }
            if fault.kind == FaultKind::Crash {
                // The driver must not keep the crashed node's files open past its restart.
                started.borrow_mut().remove(&fault.node);
            }
            under_way.begin(sim, *fault, nodes);
            made.push(*fault);
            tracing::info!(?fault, at = ?now, "simulated fault");
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

/// Publishes `packets`, each on the lowest-numbered node running (node 1 unless it is down; a
/// follower forwards to the leader), then, from `faults_end` on (the run's faults are over),
/// waits until every node's replica holds every packet published: the simulated time that
/// took, or what was missing at `limit`.
async fn drive(
    started: Started,
    seed: u64,
    nodes: u64,
    packets: u64,
    faults_end: Duration,
    limit: Duration,
) -> Result<Driven, String> {
    let began = tokio::time::Instant::now();
    let mut history = History::new();
    let mut keys: Vec<KeyBytes> = Vec::new();
    for index in 0..packets {
        let packet = packet(seed, index);
        keys.push(packet.key_bytes());
        // Retried while refused, unanswered or while no node runs (a crash, a leader not
        // known yet): a publish answered with an error may still have committed, which the
        // retry finds.
        loop {
            let publishes = started
                .borrow()
                .values()
                .next()
                .map(|running| running.publishes.clone());
            let published = match publishes {
                Some(publishes) => {
                    let wait = PUBLISH_ANSWER_WAIT.min(limit.saturating_sub(began.elapsed()));
                    ask_to_publish(&publishes, packet.clone(), wait).await
                }
                None => Err("no node runs".to_string()),
            };
            history.record(&format!(
                "{:?} packet {index} {}: {published:?}",
                began.elapsed(),
                packet.key().to_z32()
            ));
            match published {
                Ok(()) => break,
                Err(error) if began.elapsed() < limit => {
                    tracing::debug!(%error, "a simulated publish is retried");
                    tokio::time::sleep(POLL).await;
                }
                Err(error) => return Err(format!("packet {index} never published: {error}")),
            }
        }
    }
    tokio::time::sleep(faults_end.saturating_sub(began.elapsed())).await;
    loop {
        let missing = missing(&started.borrow(), nodes, &keys);
        if missing.is_empty() {
            for (id, running) in started.borrow().iter() {
                history.record(&format!(
                    "node {id} applied {:?}",
                    running.node.last_applied_index()
                ));
            }
            return Ok(Driven {
                settled_after: began.elapsed(),
                history,
            });
        }
        if began.elapsed() >= limit.saturating_sub(POLL * 10) {
            return Err(missing.join("; "));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Asks a node to publish `packet`: its answer, or why there was none within `wait` (the node
/// crashed, or its host is cut off).
async fn ask_to_publish(
    publishes: &mpsc::Sender<PublishRequest>,
    packet: VerifiedPacket,
    wait: Duration,
) -> Result<(), String> {
    let (reply, answer) = oneshot::channel();
    publishes
        .send((packet, reply))
        .await
        .map_err(|_| "the node stopped".to_string())?;
    match tokio::time::timeout(wait, answer).await {
        Ok(Ok(answered)) => answered,
        Ok(Err(_)) => Err("the node stopped before answering".to_string()),
        Err(_) => Err(format!("no answer within {wait:?}")),
    }
}

/// Serves a node's publish requests on its own host, each in a task of its own.
async fn serve_publishes(node: Arc<Node>, mut requests: mpsc::Receiver<PublishRequest>) {
    while let Some((packet, reply)) = requests.recv().await {
        let node = node.clone();
        tokio::spawn(async move {
            let published = node.writes().publish(packet).await;
            // The driver may have stopped waiting; nothing to tell it then.
            let _ = reply.send(published.map(|_| ()).map_err(|e| e.to_string()));
        });
    }
}

/// What each node's replica lacks of `keys`, by node.
fn missing(started: &BTreeMap<u64, Running>, nodes: u64, keys: &[KeyBytes]) -> Vec<String> {
    let mut missing = Vec::new();
    for id in 1..=nodes {
        let Some(Running { node, .. }) = started.get(&id) else {
            missing.push(format!("node {id} is not running"));
            continue;
        };
        let lacking = keys
            .iter()
            .filter(|key| !matches!(node.store().get(key), Ok(Some(_))))
            .count();
        if lacking > 0 {
            missing.push(format!(
                "node {id} lacks {lacking} of {} packets",
                keys.len()
            ));
        }
    }
    missing
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
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A step under way, as the watchdog sees it; dropped when the step ends.
struct Stepping<'a>(&'a Watchdog);

impl Watchdog {
    fn start(seed: u64) -> Watchdog {
        let began: Arc<Mutex<Option<std::time::Instant>>> = Arc::default();
        let stop: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let (watched, stopped) = (began.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
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
            stop,
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
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
