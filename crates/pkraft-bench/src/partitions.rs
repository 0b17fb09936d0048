//! `partitions`: what a leader lost to a real network fault costs, beside one that is killed.
//! Three release nodes, each in a network namespace of its own (`pkraft_testkit::netns`); this
//! process talks to them from the lab's client namespace. Trials, each on a settled cluster:
//!
//! - `kill`: SIGKILL the leader;
//! - `blackhole`: iptables drops every packet between the leader and the other nodes;
//! - `leader-cannot-receive`: the leader drops what the others send it;
//! - `leader-cannot-send`: the leader's packets to the others are dropped;
//!
//! then time the first PUT of a new packet accepted (204) through a survivor, and count the
//! attempts refused before it (`accept`, started at the fault). The fault is healed (the killed
//! node restarted) and the cluster settles before the next trial. Last, `rejoin`: a follower is
//! cut off for a while under a light write load through the leader, then healed; the leader
//! changes every node counted, and the terms, before and after.
//!
//! (At the IP level a one-way drop breaks TCP both ways, since acknowledgements cannot return;
//! the two one-way kinds differ in which side's packets vanish, not in what gets through.)

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

use pkraft_testkit::netns::{LabCluster, NetnsLab};
use pkraft_testkit::node::LIMITS_OFF_TOML;
use pkraft_testkit::waits::CONVERGE_TIMEOUT;

use crate::accept::{AcceptReport, AcceptSpec};
use crate::dataset::DataSet;

const NODES: u8 = 3;
const SECRET: &str = "bench-partitions-secret-0123456789";
/// Quiet time on a settled cluster before a trial (elections, catch-up and restarts done).
const SETTLE_PAUSE: Duration = Duration::from_secs(1);
/// How long one `accept` may take.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);
/// The rejoin run's write load through the leader: one PUT every this long.
const REJOIN_WRITE_EVERY: Duration = Duration::from_millis(100);
/// After the heal, how long the rejoin run waits before it counts leader changes.
const REJOIN_AFTERMATH: Duration = Duration::from_secs(5);

pub struct PartitionSpec<'a> {
    pub pkraft: &'a Path,
    pub data: &'a DataSet,
    pub work: &'a Path,
    /// Trials of `kill` and `blackhole` each.
    pub trials: usize,
    /// Trials of each one-way kind.
    pub one_way_trials: usize,
    /// Rejoin runs, and how long the follower is cut off in each.
    pub rejoin_runs: usize,
    pub rejoin_isolation: Duration,
    /// Extra `[raft]` lines (`pre_vote = false`, timing).
    pub raft_extra: &'a str,
}

#[derive(Debug, Serialize)]
struct Trial {
    kind: &'static str,
    /// The node the fault hit (the leader) and the survivor written through.
    leader: u8,
    through: u8,
    #[serde(flatten)]
    accepted: AcceptReport,
}

#[derive(Debug, Serialize)]
struct Rejoin {
    follower: u8,
    isolated_s: f64,
    /// `pkraft_raft_leader_changes_total` summed over the nodes, before the cut and
    /// `REJOIN_AFTERMATH` after the heal; and the leader's term then and now.
    leader_changes: u64,
    term_before: u64,
    term_after: u64,
    leader_before: u8,
    leader_after: u8,
    /// PUTs of the write load accepted and refused during the run.
    writes_accepted: u64,
    writes_refused: u64,
}

#[derive(Debug, Serialize)]
pub struct PartitionReport {
    op: &'static str,
    trials: Vec<Trial>,
    rejoins: Vec<Rejoin>,
    /// Per kind: median and max time to the first 204 (ms), and trials with a refused attempt.
    summary: Value,
}

/// Waits until a confirmed leader has every node applying the membership; its id.
async fn settle(cluster: &LabCluster<'_>) -> anyhow::Result<u8> {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        // Seen from any node: the one asked first may be the one that just restarted.
        for id in cluster.ids() {
            let seen =
                crate::cluster::settled(admin(cluster, id), u64::from(NODES), SETTLE_PAUSE).await;
            if let Ok(leader) = seen
                && all_follow(cluster, leader).await
            {
                tokio::time::sleep(SETTLE_PAUSE).await;
                return u8::try_from(leader).context("leader id");
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the cluster did not settle within {CONVERGE_TIMEOUT:?}"
        );
    }
}

fn admin(cluster: &LabCluster<'_>, id: u8) -> SocketAddr {
    cluster.listening(id).admin
}

/// Whether every node names `leader` as its leader: a healed old leader may still believe
/// it leads until the new leader's first heartbeat reaches it.
async fn all_follow(cluster: &LabCluster<'_>, leader: u64) -> bool {
    for id in cluster.ids() {
        let named = crate::cluster::node_status(admin(cluster, id))
            .await
            .and_then(|status| status["node"]["leader"].as_u64());
        if named != Some(leader) {
            return false;
        }
    }
    true
}

/// `pkraft_raft_leader_changes_total` summed over the nodes.
async fn leader_changes(cluster: &LabCluster<'_>) -> anyhow::Result<u64> {
    let mut sum = 0;
    for id in cluster.ids() {
        sum += metric(cluster, id, "pkraft_raft_leader_changes_total").await?;
    }
    Ok(sum)
}

async fn metric(cluster: &LabCluster<'_>, id: u8, name: &str) -> anyhow::Result<u64> {
    let url = format!("http://{}/metrics", admin(cluster, id));
    let text = crate::cluster::get_text(&url)
        .await
        .with_context(|| format!("scraping node {id}"))?;
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .with_context(|| format!("{name} on node {id}"))?;
    Ok(value.trim().parse::<f64>()? as u64)
}

pub async fn run(lab: &NetnsLab, spec: PartitionSpec<'_>) -> anyhow::Result<PartitionReport> {
    let mut cluster = LabCluster::start(lab, spec.pkraft, spec.work, SECRET, |config| {
        config.raft = spec.raft_extra.trim_end().to_string();
        if !config.raft.is_empty() {
            config.raft.push('\n');
        }
        config.http_request_timeout = Some("10s".to_string());
        config.sections = LIMITS_OFF_TOML.to_string();
    })
    .await
    .map_err(anyhow::Error::msg)?;
    let mut next_key = 0usize;
    let mut trials = Vec::new();
    let kinds: [(&'static str, usize); 4] = [
        ("kill", spec.trials),
        ("blackhole", spec.trials),
        ("leader-cannot-receive", spec.one_way_trials),
        ("leader-cannot-send", spec.one_way_trials),
    ];
    for (kind, count) in kinds {
        for trial in 1..=count {
            let leader = settle(&cluster).await?;
            let through = leader % NODES + 1;
            eprintln!("partitions: {kind} {trial}/{count}: leader {leader}, PUT through {through}");
            match kind {
                "kill" => cluster.kill(leader).map_err(anyhow::Error::msg)?,
                "blackhole" => lab.isolate(leader).map_err(anyhow::Error::msg)?,
                "leader-cannot-receive" => {
                    for other in (1..=NODES).filter(|o| *o != leader) {
                        lab.drop_from(leader, other).map_err(anyhow::Error::msg)?;
                    }
                }
                _ => {
                    for other in (1..=NODES).filter(|o| *o != leader) {
                        lab.drop_to(leader, other).map_err(anyhow::Error::msg)?;
                    }
                }
            }
            let since = crate::accept::unix_ms_now()?;
            let url = cluster.url(through, "/pkarr");
            let accepted = crate::accept::run(AcceptSpec {
                data: spec.data,
                version: 1,
                key: next_key,
                url: &url,
                timeout: ACCEPT_TIMEOUT,
                since_unix_ms: Some(since),
            })
            .await;
            next_key += 1;
            lab.heal().map_err(anyhow::Error::msg)?;
            if kind == "kill" {
                cluster.start_node(leader).map_err(anyhow::Error::msg)?;
            }
            trials.push(Trial {
                kind,
                leader,
                through,
                accepted: accepted?,
            });
        }
    }
    let mut rejoins = Vec::new();
    for run in 1..=spec.rejoin_runs {
        let leader = settle(&cluster).await?;
        let follower = leader % NODES + 1;
        eprintln!(
            "partitions: rejoin {run}/{}: follower {follower} cut off for {:?}",
            spec.rejoin_runs, spec.rejoin_isolation
        );
        let changes_before = leader_changes(&cluster).await?;
        let term_before = metric(&cluster, leader, "pkraft_raft_term").await?;
        lab.isolate(follower).map_err(anyhow::Error::msg)?;
        let cut = Instant::now();
        let (accepted, refused, used) = write_load(
            &cluster.url(leader, "/pkarr"),
            spec.data,
            next_key,
            spec.rejoin_isolation,
        )
        .await;
        next_key += used;
        lab.heal().map_err(anyhow::Error::msg)?;
        let isolated = cut.elapsed();
        tokio::time::sleep(REJOIN_AFTERMATH).await;
        let leader_after = settle(&cluster).await?;
        rejoins.push(Rejoin {
            follower,
            isolated_s: isolated.as_secs_f64(),
            leader_changes: leader_changes(&cluster)
                .await?
                .saturating_sub(changes_before),
            term_before,
            term_after: metric(&cluster, leader_after, "pkraft_raft_term").await?,
            leader_before: leader,
            leader_after,
            writes_accepted: accepted,
            writes_refused: refused,
        });
    }
    drop(cluster);
    let summary = summarize(&trials);
    Ok(PartitionReport {
        op: "partitions",
        trials,
        rejoins,
        summary,
    })
}

/// A PUT of a new packet every `REJOIN_WRITE_EVERY` through `url` for `length`; how many were
/// accepted and refused, and how many keys from `first_key` it used.
async fn write_load(
    url: &str,
    data: &DataSet,
    first_key: usize,
    length: Duration,
) -> (u64, u64, usize) {
    let client = crate::http_load::client(None);
    let end = Instant::now() + length;
    let (mut accepted, mut refused, mut used) = (0, 0, 0);
    while Instant::now() < end {
        let Some(key) = data.keys.get(first_key + used) else {
            break;
        };
        used += 1;
        let job = crate::http_load::Job {
            method: hyper::Method::PUT,
            path: format!("/{}", key.z32),
            body: bytes::Bytes::from(key.versions[1].payload.clone()),
            forwarded_for: None,
        };
        match crate::http_load::send(&client, url, &job).await.status {
            Some(204) => accepted += 1,
            _ => refused += 1,
        }
        tokio::time::sleep(REJOIN_WRITE_EVERY).await;
    }
    (accepted, refused, used)
}

fn summarize(trials: &[Trial]) -> Value {
    let mut by_kind = serde_json::Map::new();
    for kind in [
        "kill",
        "blackhole",
        "leader-cannot-receive",
        "leader-cannot-send",
    ] {
        let of_kind: Vec<&Trial> = trials.iter().filter(|t| t.kind == kind).collect();
        if of_kind.is_empty() {
            continue;
        }
        let mut ms: Vec<f64> = of_kind.iter().map(|t| t.accepted.accepted_ms).collect();
        ms.sort_by(f64::total_cmp);
        let median = ms[ms.len() / 2];
        let max = ms[ms.len() - 1];
        let with_refusals = of_kind
            .iter()
            .filter(|t| !t.accepted.refused.is_empty())
            .count();
        by_kind.insert(
            kind.to_string(),
            serde_json::json!({
                "trials": ms.len(),
                "median_ms": median,
                "min_ms": ms[0],
                "max_ms": max,
                "trials_with_refused_attempts": with_refusals,
            }),
        );
    }
    Value::Object(by_kind)
}
