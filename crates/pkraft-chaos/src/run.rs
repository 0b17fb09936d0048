//! One chaos run: start the cluster, start the clients, carry out the schedule, heal, read the
//! final state from every node, check the history, and save what a failure needs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::check::{self, Checked, FinalPacket, FinalState, Violation};
use crate::cluster::{Builds, Cluster, ELECTION_TIMEOUT_MAX, ORIGIN};
use crate::history::{self, Op, OpKind, PutOutcome, ReadOutcome};
use crate::proxy::Network;
use crate::schedule::{self, Fault, FaultKind};
use crate::workload::{self, Keys, Recorder, Role};

/// How long the cluster may take to elect a leader and catch every node up after a fault is
/// healed; longer is a liveness failure.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// Traffic before the first fault and after the last.
const WARMUP: Duration = Duration::from_secs(2);
/// Rounds of final reads before giving up on a log that keeps growing.
const FINAL_READ_ATTEMPTS: usize = 5;
/// Bound on the clients' last operations after they are told to stop (their longest timeout
/// is 5 s).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// One run's settings; also the `run` subcommand's options.
#[derive(clap::Args)]
pub struct RunConfig {
    /// The pkraft binary to test.
    #[arg(long)]
    pub bin: PathBuf,
    /// Where node configs, data, logs, the schedule and the history go (new or empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Fault schedule seed (random if not given; every run prints it).
    #[arg(long, default_value_t = random_seed(), hide_default_value = true)]
    pub seed: u64,
    /// Cluster size (voters): 3 or 5.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=5))]
    pub nodes: u64,
    /// Rounds of the schedule; each round has every fault kind once.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Keys written.
    #[arg(long, default_value_t = 4)]
    pub keys: usize,
    #[arg(long, default_value_t = 6)]
    pub writers: usize,
    #[arg(long, default_value_t = 2)]
    pub linearizable_readers: usize,
    #[arg(long, default_value_t = 4)]
    pub replica_readers: usize,
    /// Put every node's data dir on a lossy disk (pkraft-lossyfs, a FUSE file system that
    /// drops what was not fsynced at a power cut; needs root and /dev/fuse) and add the power
    /// cuts to every round. Every run on lossy disks also has the bad writes (a log append the
    /// disk acknowledged and lost or misdirected, shown by a power cut) in every round.
    #[arg(long)]
    pub lossy_disk: bool,
    /// Rounds of power cuts only (implies --lossy-disk): the way to count many of them.
    #[arg(long)]
    pub power_cuts_only: bool,
    /// Add disks low on space (below `raft.min_free_disk_mib`: the leader's, a follower's,
    /// every node's) to every round; implies lossy disks.
    #[arg(long)]
    pub disk_faults: bool,
    /// Rounds of the peer network's partitions only (refused, black-holed and one-way cuts):
    /// the way to count many of them.
    #[arg(long, conflicts_with = "power_cuts_only")]
    pub partitions_only: bool,
    /// Add damage to one node's data on disk (its log, its snapshot) to every round.
    #[arg(long)]
    pub corruption: bool,
    /// Rounds of damage to one node's data only: the way to count many of them.
    #[arg(long, conflicts_with_all = ["power_cuts_only", "partitions_only", "corruption"])]
    pub corruption_only: bool,
    /// Add wall clocks stepped ahead, back and drifting (libfaketime, Debian's libfaketime) to
    /// every round; every node runs with a clock of its own.
    #[arg(long)]
    pub clocks: bool,
    /// Rounds of the clock faults only: the way to count many of them.
    #[arg(long, conflicts_with_all = ["power_cuts_only", "partitions_only", "corruption_only", "clocks"])]
    pub clocks_only: bool,
    /// The previous release's binary (`tests/upgrade/previous.sh` builds it), for a
    /// mixed-version cluster: the members `--previous-nodes` names run it across all their
    /// restarts; the others and every node added later run `--bin`. Not with the clock faults:
    /// a leader of a release before 0.2.0 expires by its own clock.
    #[arg(long, conflicts_with_all = ["clocks", "clocks_only"])]
    pub previous_bin: Option<PathBuf>,
    /// The members that run `--previous-bin` (comma-separated ids); without it the seed picks
    /// 1 to NODES-1 of them.
    #[arg(long, value_delimiter = ',', requires = "previous_bin")]
    pub previous_nodes: Vec<u64>,
}

impl RunConfig {
    fn lossy_disks(&self) -> bool {
        self.lossy_disk || self.power_cuts_only || self.disk_faults
    }

    fn faked_clocks(&self) -> bool {
        self.clocks || self.clocks_only
    }

    /// Which binary each member runs.
    fn builds(&self) -> anyhow::Result<Builds> {
        let mut builds = Builds::current_only(&self.bin);
        if let Some(previous) = &self.previous_bin {
            let nodes: BTreeSet<u64> = if self.previous_nodes.is_empty() {
                previous_nodes_for(self.seed, self.nodes)
            } else {
                self.previous_nodes.iter().copied().collect()
            };
            if let Some(id) = nodes.iter().find(|id| !(1..=self.nodes).contains(*id)) {
                anyhow::bail!("--previous-nodes: there is no node {id} of {}", self.nodes);
            }
            builds.previous = Some((previous.clone(), nodes));
        }
        Ok(builds)
    }

    /// The fault kinds of each round.
    fn fault_kinds(&self) -> Vec<FaultKind> {
        if self.clocks_only {
            return FaultKind::CLOCKS.to_vec();
        }
        let mut kinds = if self.corruption_only {
            FaultKind::CORRUPTION.to_vec()
        } else if self.power_cuts_only {
            FaultKind::POWER_CUTS.to_vec()
        } else if self.partitions_only {
            FaultKind::PARTITIONS.to_vec()
        } else if self.lossy_disk {
            FaultKind::ALL
                .iter()
                .chain(&FaultKind::POWER_CUTS)
                .copied()
                .collect()
        } else {
            FaultKind::ALL.to_vec()
        };
        if self.disk_faults {
            kinds.extend(FaultKind::DISK_LOW);
        }
        if self.corruption {
            kinds.extend(FaultKind::CORRUPTION);
        }
        if self.clocks {
            kinds.extend(FaultKind::CLOCKS);
        }
        if self.lossy_disks() {
            kinds.extend(FaultKind::BAD_WRITES);
        }
        kinds
    }

    /// The `make chaos` variables that replay this run's kinds.
    fn replay_vars(&self) -> String {
        let power = if self.power_cuts_only {
            " POWER=only"
        } else if self.lossy_disk {
            " POWER=1"
        } else {
            ""
        };
        let disk = if self.disk_faults { " DISK=1" } else { "" };
        let partitions = if self.partitions_only {
            " PARTITIONS=only"
        } else {
            ""
        };
        let corruption = if self.corruption_only {
            " CORRUPT=only"
        } else if self.corruption {
            " CORRUPT=1"
        } else {
            ""
        };
        let clocks = if self.clocks_only {
            " CLOCKS=only"
        } else if self.clocks {
            " CLOCKS=1"
        } else {
            ""
        };
        // The members the seed picks (`make chaos` cannot name them by hand).
        let mixed = if self.previous_bin.is_some() && self.previous_nodes.is_empty() {
            " MIXED=1"
        } else {
            ""
        };
        format!("{power}{disk}{partitions}{corruption}{clocks}{mixed}")
    }
}

/// The members of a cluster of `nodes` that run the previous release in a mixed run of `seed`:
/// 1 to `nodes - 1` of them, the leader at the start (node 1) among them or not, so that a few
/// seeds cover a majority and a minority of each build.
fn previous_nodes_for(seed: u64, nodes: u64) -> BTreeSet<u64> {
    debug_assert!(nodes >= 2, "a mixed cluster has two members at least");
    let count = 1 + seed % (nodes - 1);
    let first = (seed / (nodes - 1)) % nodes;
    (0..count).map(|i| 1 + (first + i) % nodes).collect()
}

/// A seed from the clock: only the schedule depends on it, and it is printed.
fn random_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_007)
}

pub struct Outcome {
    pub summary: String,
    pub violations: Vec<Violation>,
}

pub async fn run(config: &RunConfig) -> anyhow::Result<Outcome> {
    // A used directory would mix the old data dirs (same keys, older versions) into this run.
    let used = std::fs::read_dir(&config.out).is_ok_and(|mut entries| entries.next().is_some());
    if used {
        anyhow::bail!("{} is not empty; choose a new --out", config.out.display());
    }
    std::fs::create_dir_all(&config.out)
        .with_context(|| format!("create {}", config.out.display()))?;
    let pause_min = ELECTION_TIMEOUT_MAX * 2;
    let faults = schedule::generate(config.seed, config.rounds, pause_min, &config.fault_kinds());
    let mut plan = String::new();
    for (i, fault) in faults.iter().enumerate() {
        let _ = writeln!(plan, "{:3} {fault}", i + 1);
    }
    std::fs::write(config.out.join("schedule.txt"), &plan)?;
    println!(
        "chaos: seed={seed} nodes={nodes} faults={} (replay: make chaos SEED={seed} RUNS=1 \
         NODES={nodes} ROUNDS={}{}); output in {}",
        faults.len(),
        config.rounds,
        config.replay_vars(),
        config.out.display(),
        seed = config.seed,
        nodes = config.nodes,
    );

    let builds = config.builds()?;
    if let Some((bin, nodes)) = &builds.previous {
        println!(
            "chaos: mixed versions: nodes {nodes:?} run {}, the others {}",
            bin.display(),
            config.bin.display()
        );
    }
    let network = Network::new(config.seed);
    let mut cluster = Cluster::start(
        builds.clone(),
        &config.out,
        config.nodes,
        network.clone(),
        config.lossy_disks(),
        config.faked_clocks(),
    )
    .await
    .context("starting the cluster")?;
    let start = Instant::now();
    let recorder = Arc::new(Recorder::new(start));
    let keys = Arc::new(Keys::new(config.keys));
    let stop = Arc::new(AtomicBool::new(false));
    let mut roles = vec![Role::Writer; config.writers];
    roles.extend(vec![Role::LinearizableReader; config.linearizable_readers]);
    roles.extend(vec![Role::ReplicaReader; config.replica_readers]);
    let clients = workload::spawn(
        &roles,
        config.seed,
        keys.clone(),
        cluster.targets.clone(),
        recorder.clone(),
        stop.clone(),
    )?;

    let mut events = String::new();
    let mut violations = Vec::new();
    let mut survived: BTreeMap<&'static str, usize> = BTreeMap::new();
    tokio::time::sleep(WARMUP).await;
    for (i, fault) in faults.iter().enumerate() {
        let at = start.elapsed();
        let result = apply_and_recover(&mut cluster, fault, config.nodes as usize).await;
        let line = match &result {
            Ok(done) => format!(
                "{:>7.1}s fault {:3} {}: {done}",
                at.as_secs_f64(),
                i + 1,
                fault.kind.name()
            ),
            Err(e) => format!(
                "{:>7.1}s fault {:3} {}: FAILED: {e:#}",
                at.as_secs_f64(),
                i + 1,
                fault.kind.name()
            ),
        };
        println!("chaos: {line}");
        events.push_str(&line);
        events.push('\n');
        match result {
            Ok(_) => *survived.entry(fault.kind.name()).or_default() += 1,
            Err(e) => {
                violations.push(Violation {
                    check: "recovery",
                    detail: format!("fault {} ({fault}): {e:#}", i + 1),
                });
                break;
            }
        }
        tokio::time::sleep(fault.settle).await;
    }
    tokio::time::sleep(WARMUP).await;

    stop.store(true, Ordering::Relaxed);
    let aborts: Vec<_> = clients.iter().map(|c| c.abort_handle()).collect();
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, join_all(clients)).await;
    if drained.is_err() {
        // Stragglers must not write after the history is taken.
        for abort in aborts {
            abort.abort();
        }
        violations.push(Violation {
            check: "harness",
            detail: format!("clients did not finish within {DRAIN_TIMEOUT:?} of the stop"),
        });
    }
    let ops = recorder.take();
    history::save(&config.out.join("history.jsonl"), &ops)?;
    std::fs::write(config.out.join("events.txt"), &events)?;

    let finals = match heal_and_read_finals(&mut cluster, &keys, config.nodes as usize).await {
        Ok((finals, problems)) => {
            violations.extend(problems);
            finals
        }
        Err(e) => {
            violations.push(Violation {
                check: "recovery",
                detail: format!("after healing everything: {e:#}"),
            });
            Vec::new()
        }
    };
    for id in cluster.ids() {
        cluster.harvest_snapshot_counts(id).await;
    }
    let (checked, found) = check::check_all(&ops, config.keys, &finals);
    violations.extend(found);
    let summary = summarize(
        config,
        &cluster,
        &ops,
        &survived,
        &checked,
        &violations,
        start.elapsed(),
    );
    std::fs::write(config.out.join("summary.txt"), &summary)?;
    let mut report = String::new();
    for violation in &violations {
        let _ = writeln!(report, "{violation}");
    }
    std::fs::write(config.out.join("violations.txt"), &report)?;
    cluster.kill_all_now();
    Ok(Outcome {
        summary,
        violations,
    })
}

async fn join_all(handles: Vec<tokio::task::JoinHandle<()>>) {
    for handle in handles {
        let _ = handle.await;
    }
}

async fn apply_and_recover(
    cluster: &mut Cluster,
    fault: &Fault,
    voters: usize,
) -> anyhow::Result<String> {
    let done = crate::faults::apply(cluster, fault).await?;
    cluster
        .wait_settled(voters, RECOVERY_TIMEOUT)
        .await
        .context("recovery after healing")?;
    Ok(done)
}

/// Heals everything, restarts what is down, waits until every node has applied the whole log,
/// and reads every key from every node over GET and DNS. Returns the final states, and a
/// violation for each answer that could not be read or where GET and DNS disagree.
async fn heal_and_read_finals(
    cluster: &mut Cluster,
    keys: &Keys,
    voters: usize,
) -> anyhow::Result<(Vec<FinalState>, Vec<Violation>)> {
    cluster.network.heal();
    for id in cluster.paused() {
        cluster.signal(id, "-CONT")?;
    }
    for id in cluster.stopped() {
        cluster.spawn(id).await?;
    }
    cluster.wait_settled(voters, RECOVERY_TIMEOUT).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    // The leader may still append (an expiry, or an unknown PUT's entry): read again if the log
    // moved while the nodes were being read.
    for _ in 0..FINAL_READ_ATTEMPTS {
        let log_end = cluster.wait_quiescent(RECOVERY_TIMEOUT).await?;
        let targets = cluster
            .targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut finals = Vec::new();
        let mut problems = Vec::new();
        for target in targets {
            let mut packets = Vec::new();
            for key in 0..keys.keypairs.len() {
                match final_packet(&http, keys, &target, key).await {
                    Ok(packet) => packets.push(packet),
                    Err(e) => {
                        problems.push(Violation {
                            check: "final reads",
                            detail: format!("node {} key {key}: {e:#}", target.id),
                        });
                        packets.push(None);
                    }
                }
            }
            finals.push(FinalState {
                node: target.id,
                packets,
            });
        }
        if cluster.wait_quiescent(RECOVERY_TIMEOUT).await? == log_end {
            return Ok((finals, problems));
        }
    }
    anyhow::bail!("the log kept growing after the clients stopped")
}

/// Reads the final packet of `key` from one node over GET, and checks that its DNS answer has
/// the same version.
async fn final_packet(
    http: &reqwest::Client,
    keys: &Keys,
    target: &crate::cluster::Target,
    key: usize,
) -> anyhow::Result<Option<FinalPacket>> {
    let url = format!("http://{}/pkarr/{}", target.http, keys.z32(key));
    let response = http.get(url).send().await?;
    let packet = match response.status().as_u16() {
        200 => {
            let body = response.bytes().await?;
            match keys.read_payload(key, &body) {
                ReadOutcome::Found {
                    version,
                    matches_proposed,
                } => Some(FinalPacket {
                    version,
                    payload: body.to_vec(),
                    matches_proposed,
                }),
                other => anyhow::bail!("GET: {other:?}"),
            }
        }
        404 => None,
        other => anyhow::bail!("GET answered {other}"),
    };
    let qname = format!("_chaos.{}.{ORIGIN}.", keys.z32(key));
    let dns = workload::final_dns_version(target.dns, &qname).await?;
    let get_version = packet.as_ref().map_or(0, |p| p.version);
    if dns != get_version {
        anyhow::bail!("DNS answers version {dns}, GET version {get_version}");
    }
    Ok(packet)
}

fn summarize(
    config: &RunConfig,
    cluster: &Cluster,
    ops: &[Op],
    survived: &BTreeMap<&'static str, usize>,
    checked: &Checked,
    violations: &[Violation],
    elapsed: Duration,
) -> String {
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for op in ops {
        let outcome = match &op.kind {
            OpKind::Put { outcome, .. } => match outcome {
                PutOutcome::Stored => "204",
                PutOutcome::Conflict => "409",
                PutOutcome::Unknown(_) => "unknown",
                PutOutcome::Unexpected(_) => "unexpected",
            },
            _ => match op.read_outcome() {
                Some(ReadOutcome::Found { .. }) => "found",
                Some(ReadOutcome::NotFound) => "not-found",
                Some(ReadOutcome::Failed(_)) => "failed",
                Some(ReadOutcome::Unexpected(_)) | None => "unexpected",
            },
        };
        *outcomes
            .entry(format!("{} {outcome}", op.kind_name()))
            .or_default() += 1;
    }
    let (builds, installs) = cluster.snapshot_totals();
    let network = &cluster.network;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "seed {} · {} nodes{} · {:.0} s · {} operations · {} violations",
        config.seed,
        config.nodes,
        if config.lossy_disks() {
            " on lossy disks"
        } else {
            ""
        },
        elapsed.as_secs_f64(),
        ops.len(),
        violations.len()
    );
    let faults: Vec<String> = survived.iter().map(|(k, n)| format!("{k} {n}")).collect();
    if let Some((_, nodes)) = &cluster.builds().previous {
        let _ = writeln!(
            s,
            "mixed versions: nodes {nodes:?} ran the previous release"
        );
    }
    let _ = writeln!(s, "faults survived: {}", faults.join(", "));
    let counts: Vec<String> = outcomes.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let _ = writeln!(s, "operations: {}", counts.join(", "));
    let _ = writeln!(
        s,
        "checked: {} ops for linearizability, {} reads against proposals, {} acknowledged PUTs \
         for durability, {} nodes compared",
        checked.linearizable_ops,
        checked.reads_checked,
        checked.acknowledged_puts,
        checked.nodes_compared
    );
    let _ = writeln!(
        s,
        "peer network: {} requests cut, {} held by black holes, {} lost, {} answers lost, {} \
         delayed; snapshots: {builds} built, {installs} installed (processes that were killed \
         are counted up to their last scrape)",
        network.cut_requests.load(Ordering::Relaxed),
        network.held_requests.load(Ordering::Relaxed),
        network.lost_requests.load(Ordering::Relaxed),
        network.lost_answers.load(Ordering::Relaxed),
        network.delayed_requests.load(Ordering::Relaxed),
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_mix_both_builds_in_every_proportion() {
        let mut seen = BTreeSet::new();
        for nodes in 3..=5 {
            for seed in 0..100 {
                let previous = previous_nodes_for(seed, nodes);
                assert!(
                    !previous.is_empty() && previous.len() < nodes as usize,
                    "{previous:?}"
                );
                assert!(
                    previous.iter().all(|id| (1..=nodes).contains(id)),
                    "{previous:?}"
                );
                seen.insert((nodes, previous));
            }
        }
        // Ten seeds of 3 nodes: the bootstrapping node on either build, either build the majority.
        let ten: BTreeSet<_> = (1..=10).map(|seed| previous_nodes_for(seed, 3)).collect();
        assert!(ten.iter().any(|p| p.contains(&1)) && ten.iter().any(|p| !p.contains(&1)));
        assert!(ten.iter().any(|p| p.len() == 1) && ten.iter().any(|p| p.len() == 2));
        // Every member set of one or two of three appears.
        assert_eq!(seen.iter().filter(|(nodes, _)| *nodes == 3).count(), 6);
    }
}
