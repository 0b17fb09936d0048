//! `pkraft-bench cluster …` and `pkraft-bench free-ports`: the local clusters the benchmark and
//! end-to-end scripts run, so that no script has cluster code of its own (tests/lib/pkraft.sh
//! wraps these). The nodes are real `pkraft serve` processes from config files, each in its own
//! process group (a script kills a node's whole group and counts its CPU), with fixed loopback
//! ports below the kernel's ephemeral range so that a node restarts on the same ports (an
//! ephemeral port may meanwhile be the local end of some connection). `cluster up` lays the
//! cluster out with the one cluster of the tests, the chaos harness and the namespace lab
//! ([`pkraft_testkit::cluster::Cluster`], peers reached directly or through a `delay-proxy`,
//! node 1 the seed): it writes each node's slot, and its processes outlive the command, which is
//! what sets this preset apart (the integration tests and the chaos harness own their nodes'
//! processes, on port 0).
//!
//! A cluster's state is its work dir: `node<N>/node.toml`, `node<N>/data/`, `node<N>/node.log`
//! per node, `cluster.tsv` (`id http dns peer admin https|-` per node) and `pids` (every
//! process started for it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pkraft_testkit::cluster::{Cluster, Layout, Peers, Seeds, voters_applied_membership};
use pkraft_testkit::node::{LIMITS_OFF_TOML, Listening, Membership, NodeConfig};
use pkraft_testkit::waits::{self, POLL, START_TIMEOUT};
use serde_json::Value;

/// One status or health request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const STATE_FILE: &str = "cluster.tsv";

/// What the scripts add to a node's config (`cluster up`, `cluster config`).
pub struct Additions<'a> {
    /// `dns.origins`; none: pkraft's default.
    pub origin: Option<&'a str>,
    /// Whole sections appended.
    pub extra_toml: String,
    /// Rate limits and DNS RRL off (load from one address).
    pub limits_off: bool,
    /// Single settings, `(section, "key = value")`.
    pub settings: Vec<(String, String)>,
}

impl Additions<'_> {
    /// The config of node `id` on the fixed addresses `listen` and data dir `data_dir`, with
    /// these additions.
    pub fn node_config(
        &self,
        id: u64,
        membership: Membership,
        secret: &str,
        listen: Listening,
        data_dir: PathBuf,
    ) -> NodeConfig {
        let mut config = NodeConfig::new(id, membership, secret);
        config.fixed = Some((listen, data_dir));
        config.origins = self.origin.map(str::to_string).into_iter().collect();
        config.sections = self.extra_toml.clone();
        config.settings = self.settings.clone();
        if self.limits_off {
            config.sections.push_str(LIMITS_OFF_TOML);
        }
        config
    }
}

/// What `cluster up` builds.
pub struct ClusterSpec<'a> {
    pub pkraft: &'a Path,
    pub work: &'a Path,
    pub nodes: u64,
    pub secret: &'a str,
    pub additions: Additions<'a>,
    /// An HTTPS listener (DoH) on every node with this certificate and key.
    pub https: Option<(&'a Path, &'a Path)>,
    /// Every node's peer traffic through a `delay-proxy` adding this delay and jitter (ms) each
    /// way: the nodes advertise their proxy's address and join through node 1's.
    pub peer_delay: Option<(u64, u64)>,
    /// Ports handed out earlier in this run, to avoid; the new ones are added.
    pub taken: Option<&'a Path>,
}

/// A node's addresses, as `cluster.tsv` keeps them: `id http dns peer admin https|-`.
struct NodeAddrs {
    listen: Listening,
    https: Option<SocketAddr>,
}

impl NodeAddrs {
    /// Node `id`'s line of `cluster.tsv`, read back by [`node_addrs`].
    fn state_line(&self, id: u64) -> String {
        let Listening {
            http,
            dns,
            peer,
            admin,
        } = self.listen;
        let https = self.https.map_or("-".to_string(), |addr| addr.to_string());
        format!("{id} {http} {dns} {peer} {admin} {https}\n")
    }
}

/// One node as the scripts read it: `id pid http_url dns_port admin peer https_port|- log`.
struct NodeLine {
    id: u64,
    pid: u32,
    addrs: NodeAddrs,
    log: PathBuf,
}

impl std::fmt::Display for NodeLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let listen = &self.addrs.listen;
        let https = self
            .addrs
            .https
            .map_or("-".to_string(), |addr| addr.port().to_string());
        write!(
            f,
            "{} {} http://{}/pkarr {} {} {} {} {}",
            self.id,
            self.pid,
            listen.http,
            listen.dns.port(),
            listen.admin,
            listen.peer,
            https,
            self.log.display()
        )
    }
}

/// `cluster up`: writes the configs of nodes 1..=N (node 1 bootstraps, the others join through
/// it as voters), starts them, waits until the cluster has settled, and prints a line per node.
pub async fn up(spec: &ClusterSpec<'_>) -> anyhow::Result<()> {
    std::fs::create_dir_all(spec.work)
        .with_context(|| format!("create {}", spec.work.display()))?;
    let count = usize::try_from(spec.nodes)?;
    let per_node = 4 + usize::from(spec.https.is_some()) + usize::from(spec.peer_delay.is_some());
    let mut ports = free_ports_avoiding(per_node * count, spec.taken)?.into_iter();
    let mut next = || -> anyhow::Result<SocketAddr> {
        let port = ports.next().context("fewer ports than asked for")?;
        Ok(SocketAddr::from(([127, 0, 0, 1], port)))
    };
    // The members' processes are started below and outlive this command: a member's server is
    // only its addresses.
    let mut cluster: Cluster<NodeAddrs> = Cluster::new(Layout {
        dir: spec.work.to_path_buf(),
        peers: Peers::Direct,
        lossy_disks: false,
        faked_clocks: false,
        seeds: Seeds::First,
    });
    let mut proxies = Vec::new();
    for id in 1..=spec.nodes {
        let listen = Listening {
            http: next()?,
            dns: next()?,
            peer: next()?,
            admin: next()?,
        };
        let https = spec.https.map(|_| next()).transpose()?;
        let proxy = spec.peer_delay.map(|_| next()).transpose()?;
        let mut config = spec.additions.node_config(
            id,
            cluster.joining(true),
            spec.secret,
            listen,
            node_dir(spec.work, id).join("data"),
        );
        // Other nodes reach this one at its proxy, if it has one.
        config.advertise = Some(proxy.unwrap_or(listen.peer).to_string());
        if let (Some((cert, key)), Some(addr)) = (spec.https, https) {
            config.sections.push_str(&format!(
                "[https]\nlisten = \"{addr}\"\ncert = {:?}\nkey = {:?}\n",
                cert.display().to_string(),
                key.display().to_string()
            ));
        }
        cluster
            .add(id, config, |_, _| {
                Ok::<_, std::convert::Infallible>(NodeAddrs { listen, https })
            })
            .await
            .with_context(|| format!("lay out node {id} in {}", spec.work.display()))?;
        if let (Some((delay, jitter)), Some(proxy)) = (spec.peer_delay, proxy) {
            proxies.push((id, proxy, listen.peer, delay, jitter));
        }
    }
    let state: String = cluster
        .members
        .iter()
        .map(|member| member.server.state_line(member.id))
        .collect();
    std::fs::write(spec.work.join(STATE_FILE), &state)?;
    for (id, listen, upstream, delay, jitter) in proxies {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("delay-proxy")
            .args(["--listen", &listen.to_string()])
            .args(["--upstream", &upstream.to_string()])
            .args(["--delay-ms", &delay.to_string()])
            .args(["--jitter-ms", &jitter.to_string()]);
        spawn_detached(
            command,
            spec.work,
            &node_dir(spec.work, id).join("proxy.log"),
        )?;
    }
    let mut lines = Vec::with_capacity(count);
    let started = async {
        for id in cluster.ids() {
            lines.push(start_node(spec.pkraft, spec.work, id).await?);
        }
        let admin = lines.first().context("no nodes")?.addrs.listen.admin;
        settled(admin, spec.nodes, Duration::from_secs(120)).await
    }
    .await;
    if let Err(e) = started {
        // The script learns no pids from a failed `up`: leave nothing behind.
        down(spec.work);
        return Err(e);
    }
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// Node `id`'s dir in the work dir: its config, data dir and log (the one cluster's layout).
fn node_dir(work: &Path, id: u64) -> PathBuf {
    work.join(format!("node{id}"))
}

/// Every process `cluster` started for the cluster in `work` (nodes, each restart, proxies),
/// one per line: `cluster down` stops their process groups.
const PIDS_FILE: &str = "pids";

/// Starts `command` in its own process group, which outlives this command (a script signals
/// the group), output appended to `log`, and records its pid in `work`'s pids file.
fn spawn_detached(
    mut command: Command,
    work: &Path,
    log: &Path,
) -> anyhow::Result<std::process::Child> {
    use std::io::Write;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command
        .spawn()
        .with_context(|| format!("start {:?}", command.get_program()))?;
    let mut pids = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(work.join(PIDS_FILE))?;
    writeln!(pids, "{}", child.id())?;
    Ok(child)
}

/// `cluster down`: SIGTERM to the process group of every process started for the cluster in
/// `work`, and SIGKILL to what is left of them half a second later.
pub fn down(work: &Path) {
    let pids: Vec<String> = std::fs::read_to_string(work.join(PIDS_FILE))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let signal_groups = |signal: &str| {
        for pid in &pids {
            let _ = Command::new("kill")
                .args([signal, "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    };
    signal_groups("-TERM");
    // A clean stop first (a leader hands over, stores close); whatever is left half a second
    // later is killed. Nothing here can await the exit of processes this command did not spawn.
    std::thread::sleep(Duration::from_millis(500));
    signal_groups("-KILL");
}

/// `cluster start N`: (re)starts node N from its config in `work`, on its ports, and prints its
/// line once it answers `/healthz`.
pub async fn start(pkraft: &Path, work: &Path, id: u64) -> anyhow::Result<()> {
    println!("{}", start_node(pkraft, work, id).await?);
    Ok(())
}

async fn start_node(pkraft: &Path, work: &Path, id: u64) -> anyhow::Result<NodeLine> {
    let addrs = node_addrs(work, id)?;
    let dir = node_dir(work, id);
    let log_path = dir.join("node.log");
    let mut command = Command::new(pkraft);
    command
        .args(["serve", "--config"])
        .arg(dir.join("node.toml"));
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "warn");
    }
    let mut child = spawn_detached(command, work, &log_path)?;
    let pid = child.id();
    let client = client();
    let health = format!("http://{}/healthz", addrs.listen.http);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if matches!(get(&client, &health).await, Some((200, _))) {
            // Not waited for: the node outlives this command (the kernel reparents it).
            drop(child);
            return Ok(NodeLine {
                id,
                pid,
                addrs,
                log: log_path,
            });
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "node {id} exited ({status}) during start; log: {}",
                log_path.display()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "node {id} did not answer /healthz within {START_TIMEOUT:?}; log: {}",
                log_path.display()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Node `id`'s addresses from the work dir's `cluster.tsv`.
fn node_addrs(work: &Path, id: u64) -> anyhow::Result<NodeAddrs> {
    let path = work.join(STATE_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let fields: Vec<&str> = text
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&id.to_string().as_str()))
        .with_context(|| format!("no node {id} in {}", path.display()))?;
    let addr = |i: usize| -> anyhow::Result<SocketAddr> {
        fields
            .get(i)
            .and_then(|value| value.parse().ok())
            .with_context(|| format!("{}: bad line for node {id}", path.display()))
    };
    Ok(NodeAddrs {
        listen: Listening {
            http: addr(1)?,
            dns: addr(2)?,
            peer: addr(3)?,
            admin: addr(4)?,
        },
        https: addr(5).ok(),
    })
}

/// `cluster settled`: waits until, seen from the node with admin listener `admin`, a leader
/// that confirms it leads has `voters` voters, no membership change under way, and every voter
/// has applied that membership; returns the leader's id.
pub async fn settled(admin: SocketAddr, voters: u64, timeout: Duration) -> anyhow::Result<u64> {
    let client = client();
    waits::poll_until("the cluster settled", timeout, || {
        settled_once(&client, admin, voters)
    })
    .await
    .map_err(anyhow::Error::msg)
}

async fn settled_once(client: &HttpClient, admin: SocketAddr, voters: u64) -> Result<u64, String> {
    let (leader, status) = confirmed_leader(client, admin).await?;
    let applied = voters_applied_membership(&status)?;
    if applied != voters {
        return Err(format!(
            "{applied} voters have applied the membership, want {voters}"
        ));
    }
    Ok(leader)
}

/// The leader the node at `admin` knows of, once the leader's own report (the member status
/// the node probes) says it leads; with the status of the node at `admin`.
async fn confirmed_leader(client: &HttpClient, admin: SocketAddr) -> Result<(u64, Value), String> {
    let status = status(client, admin).await.ok_or("no status")?;
    let leader = waits::confirmed_leader(&status)?;
    Ok((leader, status))
}

/// `cluster leader`: the leader as confirmed by itself, seen from the node at `admin`.
pub async fn leader(admin: SocketAddr) -> anyhow::Result<u64> {
    confirmed_leader(&client(), admin)
        .await
        .map(|(leader, _)| leader)
        .map_err(anyhow::Error::msg)
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The `/cluster/status` of the node with admin listener `admin`.
pub(crate) async fn node_status(admin: SocketAddr) -> Option<Value> {
    status(&client(), admin).await
}

async fn status(client: &HttpClient, admin: SocketAddr) -> Option<Value> {
    let (code, body) = get(client, &format!("http://{admin}/cluster/status")).await?;
    (code == 200).then(|| serde_json::from_slice(&body).ok())?
}

/// The body of a 200 answer to GET `url` (a metrics scrape), as text.
pub(crate) async fn get_text(url: &str) -> Option<String> {
    match get(&client(), url).await? {
        (200, body) => Some(String::from_utf8_lossy(&body).into_owned()),
        _ => None,
    }
}

async fn get(client: &HttpClient, url: &str) -> Option<(u16, Bytes)> {
    let uri: hyper::Uri = url.parse().ok()?;
    let request = async {
        let response = client.get(uri).await.ok()?;
        let code = response.status().as_u16();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((code, body))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .ok()
        .flatten()
}

/// `free-ports`: `count` ports free on 127.0.0.1 for TCP and UDP, none in `taken` (a file of
/// ports handed out earlier in the run, whitespace-separated), which they are added to.
pub fn free_ports_avoiding(count: usize, taken: Option<&Path>) -> anyhow::Result<Vec<u16>> {
    let avoid: std::collections::HashSet<u16> = match taken {
        Some(path) if path.exists() => std::fs::read_to_string(path)?
            .split_whitespace()
            .filter_map(|port| port.parse().ok())
            .collect(),
        _ => Default::default(),
    };
    let ports = pkraft_testkit::ports::free_loopback_ports(count, &avoid)?;
    if let Some(path) = taken {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let line: Vec<String> = ports.iter().map(u16::to_string).collect();
        writeln!(file, "{}", line.join(" "))?;
    }
    Ok(ports)
}
