//! A private network of Linux network namespaces for one test or benchmark, where partitions
//! are real packet drops (iptables `DROP`, nothing refused, TCP retransmitting) instead of the
//! peer proxy's answers: a "switch" namespace with a bridge, one namespace per node and one for
//! the test's client, each attached to the bridge by a veth pair, all on [`SUBNET`]. Nothing of
//! it is in the host's own namespace, so its addresses and rules cannot touch the host's
//! network. Removed when dropped.
//!
//! Needs root, `ip` (iproute2) and `iptables`; [`NetnsLab::create`] says what is missing.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::cluster::{Cluster, Layout, Peers, Seeds};
use crate::node::{Listening, Membership, NodeConfig};
use crate::process::{LogTo, NodeProcess};
use crate::waits::{self, START_TIMEOUT};

/// The lab's addresses: node `i` is `10.77.0.i`, the client [`CLIENT_HOST`].
const SUBNET: [u8; 3] = [10, 77, 0];
const CLIENT_HOST: u8 = 200;
/// Every node listens on its own address, so the ports can be fixed.
const HTTP_PORT: u16 = 8080;
const DNS_PORT: u16 = 5300;
const PEER_PORT: u16 = 7000;
const ADMIN_PORT: u16 = 9000;

/// The namespaces of one lab (see the module docs).
pub struct NetnsLab {
    /// Prefix of every namespace name: unique per process and lab.
    prefix: String,
    nodes: u8,
    /// Namespaces created so far, removed on drop.
    created: Vec<String>,
}

/// Runs `ip` or `iptables` with `args`; the error quotes the command and its stderr.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl NetnsLab {
    /// A lab of `nodes` node namespaces (1 to 99) and a client namespace; `Err` says why it
    /// cannot be built here (not root, no `ip` or `iptables`, no namespaces).
    pub fn create(nodes: u8) -> Result<NetnsLab, String> {
        if !(1..100).contains(&nodes) {
            return Err(format!("{nodes} nodes: 1 to 99"));
        }
        if !nix::unistd::geteuid().is_root() {
            return Err("network namespaces need root".to_string());
        }
        run("iptables", &["--version"])?;
        static LABS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let lab = LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut built = NetnsLab {
            prefix: format!("pkt{}-{lab}", std::process::id()),
            nodes,
            created: Vec::new(),
        };
        let switch = built.namespace("sw");
        built.add_namespace(&switch)?;
        run(
            "ip",
            &["-n", &switch, "link", "add", "br0", "type", "bridge"],
        )?;
        run("ip", &["-n", &switch, "link", "set", "br0", "up"])?;
        let members: Vec<(String, Ipv4Addr)> = (1..=nodes)
            .map(|i| (built.node_namespace(i), built.node_ip(i)))
            .chain([(built.namespace("client"), built.client_ip())])
            .collect();
        for (index, (namespace, ip)) in members.iter().enumerate() {
            built.add_namespace(namespace)?;
            let port = format!("v{index}");
            run(
                "ip",
                &[
                    "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", namespace,
                ],
            )?;
            run(
                "ip",
                &["-n", &switch, "link", "set", &port, "master", "br0", "up"],
            )?;
            let address = format!("{ip}/24");
            run(
                "ip",
                &["-n", namespace, "addr", "add", &address, "dev", "eth0"],
            )?;
            run("ip", &["-n", namespace, "link", "set", "eth0", "up"])?;
        }
        Ok(built)
    }

    fn namespace(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn add_namespace(&mut self, name: &str) -> Result<(), String> {
        run("ip", &["netns", "add", name])?;
        self.created.push(name.to_string());
        run("ip", &["-n", name, "link", "set", "lo", "up"])
    }

    /// The namespace of node `i` (1-based).
    pub fn node_namespace(&self, i: u8) -> String {
        self.namespace(&format!("n{i}"))
    }

    /// Node `i`'s address.
    pub fn node_ip(&self, i: u8) -> Ipv4Addr {
        Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], i)
    }

    /// The client namespace's address: never dropped by [`NetnsLab::isolate`].
    pub fn client_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], CLIENT_HOST)
    }

    /// Where node `i` listens.
    pub fn node_listening(&self, i: u8) -> Listening {
        let at = |port: u16| SocketAddr::from((self.node_ip(i), port));
        Listening {
            http: at(HTTP_PORT),
            dns: at(DNS_PORT),
            peer: at(PEER_PORT),
            admin: at(ADMIN_PORT),
        }
    }

    /// The config of node `i` of a cluster in the lab, on `data_dir`: its listeners on its own
    /// address, node 1 bootstraps and the others join it as voters, peer traffic in plain HTTP
    /// (the lab's network is the test's alone). The caller adds timing and sections.
    pub fn node_config(&self, i: u8, secret: &str, data_dir: PathBuf) -> NodeConfig {
        let listening = self.node_listening(i);
        let membership = if i == 1 {
            Membership::Bootstrap
        } else {
            Membership::Join {
                seeds: vec![self.node_listening(1).peer.to_string()],
                voter: true,
            }
        };
        let mut config = NodeConfig::new(u64::from(i), membership, secret);
        config.advertise = Some(listening.peer.to_string());
        config.fixed = Some((listening, data_dir));
        config
            .settings
            .push(("cluster".to_string(), "plaintext_peers = true".to_string()));
        config
    }

    /// Starts `binary serve --config CONFIG` in node `i`'s namespace (logging at `info`, kept
    /// in memory) and waits until it listens.
    pub fn start_node(&self, i: u8, binary: &Path, config: &Path) -> Result<NodeProcess, String> {
        let mut command = self.command_in_node(i, binary);
        command
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info");
        NodeProcess::start_configured(command, LogTo::Memory, START_TIMEOUT)
            .map_err(|e| format!("node {i} in its namespace: {e}"))
    }

    /// A command that runs `program` in node `i`'s namespace.
    pub fn command_in_node(&self, i: u8, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.node_namespace(i)])
            .arg(program);
        command
    }

    /// Moves the calling thread into the client namespace: the sockets it opens from then on
    /// (a current-thread runtime's, say) reach the nodes. Threads have namespaces of their own,
    /// so the rest of the process stays where it was.
    pub fn enter_client(&self) -> Result<(), String> {
        let path = format!("/run/netns/{}", self.namespace("client"));
        let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("setns {path}: {e}"))
    }

    /// Drops every packet between node `i` and every other node, both ways (iptables in `i`'s
    /// namespace); the client still reaches every node.
    pub fn isolate(&self, i: u8) -> Result<(), String> {
        for other in (1..=self.nodes).filter(|other| *other != i) {
            self.drop_from(i, other)?;
            self.drop_to(i, other)?;
        }
        Ok(())
    }

    /// Node `i` receives no packet from node `from` (its own to `from` still leave).
    pub fn drop_from(&self, i: u8, from: u8) -> Result<(), String> {
        let source = self.node_ip(from).to_string();
        let namespace = self.node_namespace(i);
        run(
            "ip",
            &[
                "netns", "exec", &namespace, "iptables", "-A", "INPUT", "-s", &source, "-j", "DROP",
            ],
        )
    }

    /// Node `i`'s packets to node `to` are dropped as they leave (`to`'s to `i` still arrive).
    pub fn drop_to(&self, i: u8, to: u8) -> Result<(), String> {
        let destination = self.node_ip(to).to_string();
        let namespace = self.node_namespace(i);
        run(
            "ip",
            &[
                "netns",
                "exec",
                &namespace,
                "iptables",
                "-A",
                "OUTPUT",
                "-d",
                &destination,
                "-j",
                "DROP",
            ],
        )
    }

    /// Removes every drop rule.
    pub fn heal(&self) -> Result<(), String> {
        for i in 1..=self.nodes {
            let namespace = self.node_namespace(i);
            run("ip", &["netns", "exec", &namespace, "iptables", "-F"])?;
        }
        Ok(())
    }
}

impl Drop for NetnsLab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth ends; processes still in one keep it alive
        // until they exit.
        for namespace in self.created.iter().rev() {
            if let Err(e) = run("ip", &["netns", "del", namespace]) {
                eprintln!("netns lab: {e}");
            }
        }
    }
}

/// The cluster of a lab's nodes ([`crate::cluster::Cluster`] with direct peers), for the
/// silent-partition test and `make bench-partitions`: node `i` runs in namespace `i` from its
/// config (`<dir>/node<i>/node.toml`), its data in `<dir>/data<i>`, logging to memory. Every
/// process is killed when the cluster is dropped (a failed assertion or trial must not leave
/// one running in a namespace).
pub struct LabCluster<'a> {
    lab: &'a NetnsLab,
    binary: PathBuf,
    /// Each member's server is its process while it runs.
    core: Cluster<Option<NodeProcess>>,
}

impl<'a> LabCluster<'a> {
    /// Lays out every node (the lab's [`NetnsLab::node_config`] with `secret`, then
    /// `configure`: timing, sections) in `dir` and starts `binary serve` for nodes 1, 2, …
    /// in order (node 1 bootstraps, the others join it).
    pub async fn start(
        lab: &'a NetnsLab,
        binary: &Path,
        dir: &Path,
        secret: &str,
        configure: impl Fn(&mut NodeConfig),
    ) -> Result<LabCluster<'a>, String> {
        let layout = Layout {
            dir: dir.to_path_buf(),
            peers: Peers::Direct,
            lossy_disks: false,
            faked_clocks: false,
            // What `joining` would give; the lab's configs name node 1 as the seed themselves.
            seeds: Seeds::First,
        };
        let mut cluster = LabCluster {
            lab,
            binary: binary.to_path_buf(),
            core: Cluster::new(layout),
        };
        for i in cluster.ids() {
            let mut config = lab.node_config(i, secret, dir.join(format!("data{i}")));
            configure(&mut config);
            cluster
                .core
                .add(u64::from(i), config, |_, _| {
                    Ok::<_, std::convert::Infallible>(None)
                })
                .await
                .map_err(|e| e.to_string())?;
            cluster.start_node(i)?;
        }
        Ok(cluster)
    }

    /// The nodes' ids, 1 to the lab's size.
    pub fn ids(&self) -> std::ops::RangeInclusive<u8> {
        1..=self.lab.nodes
    }

    /// Starts node `i` (again) on its config and data, and waits until it listens.
    pub fn start_node(&mut self, i: u8) -> Result<(), String> {
        let (lab, binary) = (self.lab, &self.binary);
        let member = self
            .core
            .member_mut(u64::from(i))
            .ok_or_else(|| format!("no node {i} in a lab of {}", lab.nodes))?;
        if member.server.is_some() {
            return Err(format!("node {i} is running already"));
        }
        member.server = Some(lab.start_node(i, binary, &member.slot.config)?);
        Ok(())
    }

    /// SIGKILLs node `i`, if it runs.
    pub fn kill(&mut self, i: u8) -> Result<(), String> {
        let nodes = self.lab.nodes;
        let member = self
            .core
            .member_mut(u64::from(i))
            .ok_or_else(|| format!("no node {i} in a lab of {nodes}"))?;
        if let Some(mut process) = member.server.take() {
            process
                .kill()
                .map_err(|e| format!("SIGKILL node {i}: {e}"))?;
        }
        Ok(())
    }

    /// Where node `i` listens (fixed by the lab, whether it runs or not).
    pub fn listening(&self, i: u8) -> Listening {
        self.lab.node_listening(i)
    }

    /// `http://<node i's public listener><path>`.
    pub fn url(&self, i: u8, path: &str) -> String {
        format!("http://{}{path}", self.listening(i).http)
    }

    /// Node `i`'s `/cluster/status` (admin listener) asked with `client`, if it answers within
    /// 5 s. (The caller's client: reqwest needs the caller's choice of rustls crypto provider.)
    pub async fn status(&self, client: &reqwest::Client, i: u8) -> Option<serde_json::Value> {
        let url = format!("http://{}/cluster/status", self.listening(i).admin);
        let asked = client.get(url).timeout(Duration::from_secs(5)).send();
        let response = asked.await.ok()?;
        serde_json::from_slice(&response.bytes().await.ok()?).ok()
    }

    /// The node that says it leads in the highest term ([`waits::leader_of`]), every node asked
    /// with `client`; `None` when none does (yet).
    pub async fn leader(&self, client: &reqwest::Client) -> Option<u8> {
        let ids = self.ids().map(u64::from);
        let leader = waits::leader_by(ids, |id| async move {
            self.status(client, u8::try_from(id).ok()?).await
        })
        .await?;
        u8::try_from(leader).ok()
    }

    /// What every running node logged, each under a heading, for failure messages.
    pub fn logs(&self) -> String {
        self.core
            .members
            .iter()
            .filter_map(|member| Some((member.id, member.server.as_ref()?)))
            .map(|(id, process)| format!("==== node {id} ====\n{}", process.log().text()))
            .collect()
    }
}

impl Drop for LabCluster<'_> {
    fn drop(&mut self) {
        for member in &mut self.core.members {
            if let Some(mut process) = member.server.take() {
                let _ = process.kill();
            }
        }
    }
}
