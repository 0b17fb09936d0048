//! A run of the simulated cluster: `nodes` nodes (node 1 initialized alone, the others joining
//! it as voters through the peer network), `packets` packets published on node 1 through its
//! write path, and every replica checked for every packet once the run settles.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use pkraft_raft::peer::ClusterSecret;
use pkraft_raft::{Node, Participation, Settings};
use pkraft_testkit::{iroh_packet, keypair};
use pkraft_types::{KeyBytes, VerifiedPacket};

use crate::network::{PEER_PORT, serve_peers, transport};

/// What a run does.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Everything random in the run is drawn from it.
    pub seed: u64,
    pub nodes: u64,
    pub packets: u64,
    /// Simulated time the run may take before it is called stuck.
    pub limit: Duration,
    /// A node cut off from every other for the whole run (a partition the run never heals).
    pub cut_off: Option<u64>,
}

/// What a run saw.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Simulated time from the start until every replica held every packet.
    pub settled_after: Duration,
    /// Turmoil steps taken.
    pub steps: u64,
}

/// Why a run failed: each says what to look at, and names the seed that replays it.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("seed {seed}: a data dir could not be made: {source}")]
    DataDir { seed: u64, source: std::io::Error },
    #[error("seed {seed}: the simulation stopped: {reason}")]
    Simulation { seed: u64, reason: String },
    #[error("seed {seed}: after {after:?} of simulated time, {missing}")]
    NotSettled {
        seed: u64,
        after: Duration,
        missing: String,
    },
}

/// The simulated wall clock's start: a fixed moment (2026-01-01), so that a seed is all a run
/// depends on.
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

fn host_name(id: u64) -> String {
    format!("n{id}")
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

/// The nodes a run started, by id, for the driver to look at.
type Started = Rc<RefCell<BTreeMap<u64, Arc<Node>>>>;

/// One run at a time in a process: a thread outside the simulation reads the wall clock the
/// simulation's thread read last (`world`), which two runs at once would mix.
static ONE_RUN_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `run` to its end: `Ok` when every replica holds every packet published.
pub fn run(run: Run) -> Result<RunReport, RunError> {
    let _alone = ONE_RUN_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    crate::world::install();
    crate::world::seed(run.seed);
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
                let node = Node::start(id, &dir, &settings(), participation(id)?).await?;
                started.borrow_mut().insert(id, node.clone());
                serve_peers(node).await?;
                Ok(())
            }
        });
    }
    if let Some(cut_off) = run.cut_off {
        for other in (1..=run.nodes).filter(|&other| other != cut_off) {
            sim.partition(host_name(cut_off), host_name(other));
        }
    }
    let outcome: Rc<RefCell<Option<Result<Duration, String>>>> = Rc::default();
    let (driver_started, driver_outcome) = (started.clone(), outcome.clone());
    let (nodes, packets) = (run.nodes, run.packets);
    sim.client("driver", async move {
        let result = drive(driver_started, seed, nodes, packets, run.limit).await;
        *driver_outcome.borrow_mut() = Some(result);
        Ok(())
    });
    let mut steps = 0u64;
    loop {
        steps += 1;
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => {
                return Err(RunError::Simulation {
                    seed,
                    reason: error.to_string(),
                });
            }
        }
    }
    let result = outcome.borrow_mut().take();
    match result {
        Some(Ok(settled_after)) => Ok(RunReport {
            settled_after,
            steps,
        }),
        Some(Err(missing)) => Err(RunError::NotSettled {
            seed,
            after: sim.elapsed(),
            missing,
        }),
        None => Err(RunError::Simulation {
            seed,
            reason: "the driver ended without an outcome".to_string(),
        }),
    }
}

/// Publishes `packets` on node 1 once it runs, then waits until every node's replica holds
/// them all: the simulated time that took, or what was missing at `limit`.
async fn drive(
    started: Started,
    seed: u64,
    nodes: u64,
    packets: u64,
    limit: Duration,
) -> Result<Duration, String> {
    let began = tokio::time::Instant::now();
    let node_1 = loop {
        if let Some(node) = started.borrow().get(&1) {
            break node.clone();
        }
        tokio::time::sleep(POLL).await;
    };
    let mut keys: Vec<KeyBytes> = Vec::new();
    for index in 0..packets {
        let packet = packet(seed, index);
        keys.push(packet.key_bytes());
        // Node 1 leads until it hands over, which nothing in this run asks of it; a refusal
        // (no room, a membership change under way) is retried.
        loop {
            match node_1.writes().publish(packet.clone()).await {
                Ok(_) => break,
                Err(error) if began.elapsed() < limit => {
                    tracing::debug!(%error, "a simulated publish is retried");
                    tokio::time::sleep(POLL).await;
                }
                Err(error) => return Err(format!("packet {index} never published: {error}")),
            }
        }
    }
    loop {
        let missing = missing(&started.borrow(), nodes, &keys);
        if missing.is_empty() {
            return Ok(began.elapsed());
        }
        if began.elapsed() >= limit.saturating_sub(POLL * 10) {
            return Err(missing.join("; "));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What each node's replica lacks of `keys`, by node.
fn missing(started: &BTreeMap<u64, Arc<Node>>, nodes: u64, keys: &[KeyBytes]) -> Vec<String> {
    let mut missing = Vec::new();
    for id in 1..=nodes {
        let Some(node) = started.get(&id) else {
            missing.push(format!("node {id} never started"));
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
