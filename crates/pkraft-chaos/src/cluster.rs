//! The cluster under test: real `pkraft serve` processes, each with its own data dir, config file
//! and log, on loopback port 0, their peer traffic routed through the fault proxies. Its members
//! are laid out by `pkraft_testkit::cluster` (the integration tests' cluster too); what is the
//! harness's own is a node's process across restarts ([`Node`]: its log file, incarnations,
//! pauses, snapshot counts), the targets the clients send to, power cuts and the waits.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use pkraft_lossyfs::{Cut, CutReport, LossyDisk};
use pkraft_testkit::cluster::{Layout, Member, Peers, Seeds};
use pkraft_testkit::node::{LIMITS_OFF_TOML, Listening, NodeConfig, for_previous_release};
use pkraft_testkit::process::{LogTo, NodeProcess};
use pkraft_testkit::proxy::Network;
use pkraft_testkit::waits::{self, POLL, START_TIMEOUT};

pub const SECRET: &str = "chaos-cluster-secret-0123456789";
pub const ADMIN_TOKEN: &str = "chaos-admin-token-0123456789";
pub const ORIGIN: &str = "pkarr.test";

/// How long a power cut waits for an fsync to happen at (see `Cluster::power_cut`); without
/// one (no writes), it happens after this.
const ARMED_CUT_WAIT: Duration = Duration::from_secs(1);
/// Bound on one admin request; a paused node never answers.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Raft settings of every node: elections in about a second (as in the integration tests), and
/// snapshots with log purges every few dozen entries, so that they happen throughout the run and
/// a follower that falls behind catches up by snapshot.
pub const RAFT_TOML: &str = "heartbeat_interval = \"100ms\"\n\
    election_timeout_min = \"800ms\"\n\
    election_timeout_max = \"1600ms\"\n\
    publish_timeout = \"3s\"\n\
    snapshot_after_entries = 64\n\
    entries_kept_after_snapshot = 16\n\
    expiry_interval = \"500ms\"\n";
/// The longest election timeout above: a pause must outlast it to cause an election.
pub const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(1600);

/// Where clients send requests: the current process of every node that is a member.
#[derive(Clone, Debug)]
pub struct Target {
    pub id: u64,
    pub incarnation: u32,
    pub http: SocketAddr,
    pub dns: SocketAddr,
}

pub type Targets = Arc<RwLock<Vec<Target>>>;

/// A member's process across its restarts (the `server` of its [`Member`], whose slot holds
/// its proxy, config file and data dir, on a lossy disk with `--lossy-disk`, and whose clock
/// the clock faults move with `--clocks`).
pub struct Node {
    log: PathBuf,
    process: Option<NodeProcess>,
    paused: bool,
    incarnation: u32,
    addrs: Option<Listening>,
    /// Snapshot builds and installs counted by this node's earlier processes.
    snapshots: (u64, u64),
}

impl Node {
    pub fn running(&self) -> bool {
        self.process.is_some()
    }
}

/// The binaries the members run: this build, and for the members `previous` names (across all
/// their restarts) the previous release, which makes the cluster a mixed-version one.
#[derive(Clone, Debug)]
pub struct Builds {
    pub current: PathBuf,
    pub previous: Option<(PathBuf, BTreeSet<u64>)>,
}

impl Builds {
    /// This build for every member.
    pub fn current_only(bin: &Path) -> Builds {
        Builds {
            current: bin.to_path_buf(),
            previous: None,
        }
    }

    /// Whether node `id` runs the previous release.
    pub fn runs_previous(&self, id: u64) -> bool {
        self.previous
            .as_ref()
            .is_some_and(|(_, nodes)| nodes.contains(&id))
    }

    fn bin(&self, id: u64) -> &Path {
        match &self.previous {
            Some((bin, nodes)) if nodes.contains(&id) => bin,
            _ => &self.current,
        }
    }
}

pub struct Cluster {
    builds: Builds,
    dir: PathBuf,
    /// The members, joining through every member so far; on their own lossy disks with
    /// `--lossy-disk` (so power cuts can be injected), with clocks of their own with `--clocks`.
    core: pkraft_testkit::cluster::Cluster<Node>,
    pub network: Arc<Network>,
    pub targets: Targets,
    admin: reqwest::Client,
    /// libfaketime's library, when every node's wall clock can be moved (`--clocks`).
    clock_library: Option<PathBuf>,
}

impl Cluster {
    /// Starts node 1 (bootstrapping), then nodes 2..=size joining through it, and waits until
    /// all are voters. With `lossy_disks`, each node's data dir is a lossy disk of its own
    /// (root and FUSE needed: `pkraft_lossyfs::available`). With `clocks`, each node runs with
    /// a wall clock of its own ([`Cluster::set_clock`]; libfaketime needed).
    pub async fn start(
        builds: Builds,
        dir: &Path,
        size: u64,
        network: Arc<Network>,
        lossy_disks: bool,
        clocks: bool,
    ) -> anyhow::Result<Cluster> {
        if lossy_disks {
            pkraft_lossyfs::available()
                .map_err(|why| anyhow::anyhow!("lossy disks need FUSE: {why}"))?;
        }
        let clock_library = if clocks {
            Some(
                pkraft_testkit::clock::library()
                    .context("clock faults need libfaketime (Debian package libfaketime)")?,
            )
        } else {
            None
        };
        let layout = Layout {
            dir: dir.to_path_buf(),
            peers: Peers::Proxied {
                network: network.clone(),
                client: reqwest::Client::builder()
                    .pool_idle_timeout(Duration::from_secs(10))
                    .build()?,
            },
            lossy_disks,
            faked_clocks: clock_library.is_some(),
            seeds: Seeds::All,
        };
        let mut cluster = Cluster {
            builds,
            dir: dir.to_path_buf(),
            core: pkraft_testkit::cluster::Cluster::new(layout),
            network,
            targets: Arc::new(RwLock::new(Vec::new())),
            admin: reqwest::Client::builder().timeout(ADMIN_TIMEOUT).build()?,
            clock_library,
        };
        for id in 1..=size {
            cluster.add_node(id, true).await?;
        }
        cluster
            .wait_settled(size as usize, Duration::from_secs(120))
            .await?;
        Ok(cluster)
    }

    /// Starts a new node `id` that joins through the current members (as a learner unless
    /// `voter`); node 1 of an empty cluster bootstraps instead.
    pub async fn add_node(&mut self, id: u64, voter: bool) -> anyhow::Result<()> {
        let mut config = NodeConfig::new(id, self.core.joining(voter), SECRET);
        config.admin_token = Some(ADMIN_TOKEN.to_string());
        config.http_request_timeout = Some("10s".to_string());
        config.raft = RAFT_TOML.to_string();
        config.origins = vec![ORIGIN.to_string()];
        // The previous release refuses the settings added since, as any build refuses a field
        // it does not know.
        config.sections = if self.builds.runs_previous(id) {
            for_previous_release(LIMITS_OFF_TOML)
        } else {
            LIMITS_OFF_TOML.to_string()
        };
        let log = self.dir.join(format!("node{id}.log"));
        self.core
            .add(id, config, |_, _| {
                Ok::<_, std::convert::Infallible>(Node {
                    log,
                    process: None,
                    paused: false,
                    incarnation: 0,
                    addrs: None,
                    snapshots: (0, 0),
                })
            })
            .await
            .with_context(|| format!("adding node {id}"))?;
        self.spawn(id).await
    }

    /// Which binary each member runs.
    pub fn builds(&self) -> &Builds {
        &self.builds
    }

    /// Node `id`'s data dir.
    pub fn data_dir(&self, id: u64) -> anyhow::Result<PathBuf> {
        Ok(self.node(id)?.slot.data_dir.clone())
    }

    fn node(&self, id: u64) -> anyhow::Result<&Member<Node>> {
        self.core
            .member(id)
            .with_context(|| format!("no node {id}"))
    }

    fn node_mut(&mut self, id: u64) -> anyhow::Result<&mut Member<Node>> {
        self.core
            .member_mut(id)
            .with_context(|| format!("no node {id}"))
    }

    /// Moves node `id`'s wall clock to `offset` from the real time (libfaketime's notation:
    /// `+8d`, `-1d`, `+0`); the node sees it within a second, running or at its next start.
    pub fn set_clock(&self, id: u64, offset: &str) -> anyhow::Result<()> {
        self.core.set_clock(id, offset).map_err(anyhow::Error::msg)
    }

    /// Starts node `id`'s next process on its data dir and waits until it listens.
    pub async fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let bin = self.builds.bin(id).to_path_buf();
        let clock_library = self.clock_library.clone();
        let member = self.node_mut(id)?;
        let node = &mut member.server;
        if node.process.is_some() {
            bail!("node {id} is already running");
        }
        node.incarnation += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        writeln!(
            log,
            "==== chaos: node {id} process {} ====",
            node.incarnation
        )?;
        let mut command = Command::new(&bin);
        command
            .args(["serve", "--config"])
            .arg(&member.slot.config)
            .env("RUST_LOG", "info");
        if let (Some(clock), Some(library)) = (&member.clock, &clock_library) {
            clock.apply(&mut command, library);
        }
        let data_dir = member.slot.data_dir.clone();
        // The start blocks (reading the node's log until it listens): off the async workers.
        let started = tokio::task::spawn_blocking(move || {
            NodeProcess::start(command, &data_dir, LogTo::File(log), START_TIMEOUT)
        })
        .await?;
        let node = &mut member.server;
        let process =
            started.map_err(|e| anyhow::anyhow!("node {id}: {e}; log: {}", node.log.display()))?;
        let addrs = process.listening();
        node.process = Some(process);
        node.paused = false;
        node.addrs = Some(addrs);
        member.slot.route_to(Some(addrs.peer));
        let node = &member.server;
        let target = Target {
            id,
            incarnation: node.incarnation,
            http: addrs.http,
            dns: addrs.dns,
        };
        let mut targets = self.targets.write().unwrap_or_else(|e| e.into_inner());
        // A node that is down keeps its old addresses (clients get refused connections), unless
        // this process was given one of its ports: then the requests would reach this node
        // while being recorded as the other's, so the down node gets no traffic until it is back.
        targets.retain(|t| t.id != id && t.http != target.http && t.dns != target.dns);
        targets.push(target);
        targets.sort_by_key(|t| t.id);
        Ok(())
    }

    /// SIGKILL: no chance to flush or say goodbye. Clients keep sending to its old addresses
    /// (and get refused connections) until it restarts (see `spawn` for a reused port).
    pub async fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        self.harvest_snapshot_counts(id).await;
        self.kill_process(id)
    }

    /// SIGKILL without first reading the snapshot counters (the caller did).
    fn kill_process(&mut self, id: u64) -> anyhow::Result<()> {
        let member = self.node_mut(id)?;
        if let Some(mut process) = member.server.process.take() {
            process.kill().context("SIGKILL")?;
        }
        member.server.paused = false;
        member.slot.route_to(None);
        Ok(())
    }

    /// A power cut of `targets` at one instant, at the worst moment: the cut is armed on every
    /// target's disk, and the first fsync on any of them (within [`ARMED_CUT_WAIT`]) does not
    /// happen: the cut does, there and at once on the others. Every disk drops what was not
    /// fsynced (and fails everything until [`Cluster::power_on`]), then the processes are
    /// killed. Returns what the disks dropped, summed.
    pub async fn power_cut(&mut self, targets: &[u64], cut: Cut) -> anyhow::Result<CutReport> {
        for &id in targets {
            self.harvest_snapshot_counts(id).await;
        }
        let mut disks = Vec::with_capacity(targets.len());
        for &id in targets {
            let disk = self.node(id)?.slot.disk.as_ref().with_context(|| {
                format!("node {id} has no lossy disk (power cuts need --lossy-disk)")
            })?;
            disks.push(disk);
        }
        for disk in &disks {
            disk.arm_cut(cut);
        }
        let deadline = Instant::now() + ARMED_CUT_WAIT;
        while Instant::now() < deadline && !disks.iter().any(|d| d.armed_cut_happened()) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut total = CutReport::default();
        for disk in disks {
            let report = disk.cut_armed_or_now();
            total.dropped_bytes += report.dropped_bytes;
            total.dropped_entries += report.dropped_entries;
            total.torn_bytes += report.torn_bytes;
            total.bad_writes += report.bad_writes;
        }
        // Counted before the cut (above): with its disk off, the node's metrics may fail.
        for &id in targets {
            self.kill_process(id)?;
        }
        Ok(total)
    }

    /// Ends node `id`'s power cut: its disk serves what was durable at the cut.
    pub fn power_on(&mut self, id: u64) -> anyhow::Result<()> {
        let disk = self.node(id)?.slot.disk.as_ref();
        disk.with_context(|| format!("node {id} has no lossy disk"))?
            .power_on();
        Ok(())
    }

    /// Node `id`'s lossy disk.
    pub fn disk(&self, id: u64) -> anyhow::Result<&LossyDisk> {
        self.node(id)?
            .slot
            .disk
            .as_ref()
            .with_context(|| format!("node {id} has no lossy disk (bad writes need one)"))
    }

    /// Limits node `id`'s lossy disk to what it holds now plus `free` bytes; `None` lifts the
    /// limit.
    pub fn limit_free_space(&self, id: u64, free: Option<u64>) -> anyhow::Result<()> {
        let disk = self.node(id)?.slot.disk.as_ref();
        disk.with_context(|| format!("node {id} has no lossy disk (disk faults need one)"))?
            .limit_free_space(free);
        Ok(())
    }

    pub fn signal(&mut self, id: u64, signal: &str) -> anyhow::Result<()> {
        let node = &mut self.node_mut(id)?.server;
        let Some(process) = &node.process else {
            bail!("node {id} is not running");
        };
        process
            .signal(signal)
            .with_context(|| format!("signal node {id}"))?;
        node.paused = signal == "-STOP";
        Ok(())
    }

    /// Stops a node for good (after it was removed from the cluster).
    pub async fn retire(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill(id).await?;
        self.targets
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|t| t.id != id);
        self.core.remove(id);
        Ok(())
    }

    /// Members whose process is running and not paused.
    pub fn live(&self) -> Vec<u64> {
        self.ids_where(|n| n.running() && !n.paused)
    }

    pub fn ids(&self) -> Vec<u64> {
        self.core.ids()
    }

    pub fn stopped(&self) -> Vec<u64> {
        self.ids_where(|n| !n.running())
    }

    pub fn paused(&self) -> Vec<u64> {
        self.ids_where(|n| n.paused)
    }

    fn ids_where(&self, keep: impl Fn(&Node) -> bool) -> Vec<u64> {
        self.core
            .members
            .iter()
            .filter(|member| keep(&member.server))
            .map(|member| member.id)
            .collect()
    }

    pub fn next_id(&self) -> u64 {
        self.core.ids().into_iter().max().unwrap_or(0) + 1
    }

    /// `GET /cluster/status` of node `id`, or None if it does not answer.
    pub async fn status(&self, id: u64) -> Option<Value> {
        let addrs = self.node(id).ok()?.server.addrs?;
        let response = self
            .admin
            .get(format!("http://{}/cluster/status", addrs.admin))
            .send()
            .await
            .ok()?;
        serde_json::from_slice(&response.bytes().await.ok()?).ok()
    }

    /// Whether node `id` answers `/readyz` with 200: it serves local reads (caught up, a leader
    /// known, applying what is committed).
    pub async fn ready(&self, id: u64) -> bool {
        let Some(addrs) = self.node(id).ok().and_then(|member| member.server.addrs) else {
            return false;
        };
        self.admin
            .get(format!("http://{}/readyz", addrs.http))
            .send()
            .await
            .is_ok_and(|response| response.status().is_success())
    }

    /// The node that considers itself leader with the highest term, among the live nodes.
    pub async fn leader(&self) -> Option<u64> {
        waits::leader_by(self.live(), |id| self.status(id)).await
    }

    /// Waits until a leader is elected, it sees `voters` voters and no change in progress, and
    /// every member follows it and has applied what the leader had applied when this started.
    pub async fn wait_settled(&self, voters: usize, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        let mut target_applied = None;
        let mut last = String::from("no status yet");
        while Instant::now() < deadline {
            match self.settled(voters, &mut target_applied).await {
                Ok(leader) => return Ok(leader),
                Err(why) => last = why,
            }
            tokio::time::sleep(POLL).await;
        }
        bail!("the cluster did not settle within {timeout:?}: {last}")
    }

    /// Waits until every member has applied the leader's whole log, with the same log end in
    /// two polls in a row (so nothing is being appended); returns that log end. Used once the
    /// clients have stopped.
    pub async fn wait_quiescent(&self, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        let mut previous = None;
        let mut last = String::from("no status yet");
        while Instant::now() < deadline {
            match self.all_applied().await {
                Ok(log_end) if previous == Some(log_end) => return Ok(log_end),
                Ok(log_end) => previous = Some(log_end),
                Err(why) => {
                    previous = None;
                    last = why;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("the nodes did not all apply the leader's log within {timeout:?}: {last}")
    }

    async fn all_applied(&self) -> Result<u64, String> {
        let leader = self.leader().await.ok_or("no leader")?;
        let status = self.status(leader).await.ok_or("leader went silent")?;
        let log_end = status["node"]["last_log_index"]
            .as_u64()
            .ok_or("no last_log_index")?;
        for member in status["members"].as_array().ok_or("no members")? {
            let applied = member["status"]["applied_index"].as_u64();
            if applied != Some(log_end) {
                return Err(format!(
                    "node {} applied {applied:?} of {log_end}",
                    member["id"]
                ));
            }
        }
        Ok(log_end)
    }

    async fn settled(&self, voters: usize, target: &mut Option<u64>) -> Result<u64, String> {
        let leader = self.leader().await.ok_or("no leader")?;
        let status = self.status(leader).await.ok_or("leader went silent")?;
        if status["membership"]["joint"] != false {
            return Err("membership change in progress".into());
        }
        let members = status["members"].as_array().ok_or("no members")?;
        let voter_count = members.iter().filter(|m| m["voter"] == true).count();
        if voter_count != voters {
            return Err(format!("{voter_count} voters, want {voters}"));
        }
        let leader_applied = status["node"]["applied_index"].as_u64().unwrap_or(0);
        let want = *target.get_or_insert(leader_applied);
        for member in members {
            let id = member["id"].as_u64().unwrap_or(0);
            let applied = member["status"]["applied_index"].as_u64();
            if member["status"]["leader"].as_u64() != Some(leader) {
                return Err(format!("node {id} does not follow leader {leader}"));
            }
            if applied.is_none_or(|a| a < want) {
                return Err(format!("node {id} applied {applied:?} < {want}"));
            }
        }
        Ok(leader)
    }

    /// An admin mutation on node `id`: the HTTP status and body.
    pub async fn admin_post(
        &self,
        id: u64,
        path: &str,
        body: Value,
    ) -> anyhow::Result<(u16, String)> {
        let addrs = self.node(id)?.server.addrs.context("node never started")?;
        let response = self
            .admin
            .post(format!("http://{}{path}", addrs.admin))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(40))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await.unwrap_or_default()))
    }

    /// Adds node `id`'s current snapshot counters (builds, installs) to its running totals;
    /// called before its process is killed, and at the end.
    pub async fn harvest_snapshot_counts(&mut self, id: u64) {
        let Ok(member) = self.node(id) else { return };
        let node = &member.server;
        let Some(addrs) = node.addrs.filter(|_| node.running() && !node.paused) else {
            return;
        };
        let Ok(response) = self
            .admin
            .get(format!("http://{}/metrics", addrs.admin))
            .send()
            .await
        else {
            return;
        };
        let text = response.text().await.unwrap_or_default();
        let count = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map_or(0, |v| v as u64)
        };
        let builds = count("pkraft_raft_snapshot_build_seconds_count");
        let installs = count("pkraft_raft_snapshot_install_seconds_count");
        if let Ok(member) = self.node_mut(id) {
            member.server.snapshots.0 += builds;
            member.server.snapshots.1 += installs;
        }
    }

    /// Snapshot builds and installs over every process so far (harvested ones only).
    pub fn snapshot_totals(&self) -> (u64, u64) {
        self.core.members.iter().fold((0, 0), |(b, i), member| {
            let (builds, installs) = member.server.snapshots;
            (b + builds, i + installs)
        })
    }

    pub fn http_addr(&self, id: u64) -> Option<SocketAddr> {
        self.node(id).ok()?.server.addrs.map(|a| a.http)
    }

    /// Kills every process (used on the way out, also after a failure).
    pub fn kill_all_now(&mut self) {
        for member in &mut self.core.members {
            if let Some(mut process) = member.server.process.take() {
                let _ = process.kill();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all_now();
    }
}
