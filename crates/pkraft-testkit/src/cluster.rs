//! The one cluster of the integration tests (`TestCluster`), the chaos harness, the network
//! namespace lab ([`crate::netns::LabCluster`]) and the scripts' local clusters
//! (`pkraft-bench cluster up`): a [`Cluster`] of members, laid out one way
//! ([`Layout`]). Each member has its place before its process starts ([`NodeSlot`]: the peer
//! address the other nodes reach it at, its proxy's when [`Peers::Proxied`]; its config file;
//! its data dir, on a lossy disk if asked) and its wall clock if the layout fakes clocks.
//! [`Cluster::joining`] gives the first member a bootstrap and the others a join through the
//! first or through every member ([`Seeds`]); the lab writes its nodes' memberships itself.
//! What runs the node (its `server`) is the caller's: the tests' panicking `TestServer`, the
//! chaos harness's restartable process with a log file, the lab's process in its namespace,
//! the scripts' detached process (only its addresses: it outlives `pkraft-bench`); each
//! starts the process its own way ([`crate::process`]) and adds its own waits.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pkraft_lossyfs::LossyDisk;

use crate::clock::FakedClock;
use crate::lossy::mount_lossy_disk;
use crate::node::{Membership, NodeConfig};
use crate::proxy::{Network, PeerProxy};

/// Whom a joining node asks to join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seeds {
    /// The first member (the tests: a join goes through node 1).
    First,
    /// Every member so far (the chaos harness: any of them may be down).
    All,
}

/// How members reach each other.
pub enum Peers {
    /// Through a peer proxy each (the address a member advertises) under `network`'s faults,
    /// relaying with `client`: members on loopback port 0.
    Proxied {
        network: Arc<Network>,
        client: reqwest::Client,
    },
    /// Directly, at the address each member's config advertises: its own listener, or a proxy
    /// the caller runs (members in a lab's network namespaces, [`crate::netns`], whose
    /// partitions are the lab's iptables rules; `pkraft-bench cluster up`'s delay proxies); the
    /// data dir is the one the config fixes (`<dir>/data` if it fixes none).
    Direct,
}

/// How a cluster's members are laid out.
pub struct Layout {
    /// Member `id` lives in `<dir>/node<id>/` (its config, and its data dir unless the config
    /// fixes one), its clock file at `<dir>/node<id>.clock`.
    pub dir: PathBuf,
    pub peers: Peers,
    /// Every data dir on a lossy disk of its own (root and FUSE needed).
    pub lossy_disks: bool,
    /// Every member gets a wall clock of its own ([`Cluster::set_clock`]; libfaketime needed
    /// to apply it, see [`crate::clock`]).
    pub faked_clocks: bool,
    pub seeds: Seeds,
}

/// A member of a [`Cluster`]. Fields drop in order: its server (the process) goes before its
/// slot, so the process is gone before its lossy disk is unmounted.
pub struct Member<S> {
    pub id: u64,
    pub server: S,
    /// Its peer proxy, config file and data dir.
    pub slot: NodeSlot,
    /// Its wall clock, with [`Layout::faked_clocks`].
    pub clock: Option<FakedClock>,
}

impl<S> Member<S> {
    /// The lossy disk of its data dir. Panics without one (a layout without lossy disks).
    pub fn disk(&self) -> &LossyDisk {
        self.slot.disk.as_ref().expect("a cluster on lossy disks")
    }
}

/// The members of one cluster, laid out by a [`Layout`]; see the module docs.
pub struct Cluster<S> {
    pub members: Vec<Member<S>>,
    layout: Layout,
}

impl<S> Cluster<S> {
    pub fn new(layout: Layout) -> Cluster<S> {
        Cluster {
            members: Vec::new(),
            layout,
        }
    }

    /// The membership a new member starts with: the first bootstraps, every other joins
    /// through the [`Seeds`] as a voter or a learner.
    pub fn joining(&self, voter: bool) -> Membership {
        let asked = match self.layout.seeds {
            Seeds::First => 1,
            Seeds::All => self.members.len(),
        };
        let seeds: Vec<String> = self
            .members
            .iter()
            .take(asked)
            .map(|member| member.slot.advertised.clone())
            .collect();
        if seeds.is_empty() {
            Membership::Bootstrap
        } else {
            Membership::Join { seeds, voter }
        }
    }

    /// Adds member `id`: prepares its slot with `config` (advertising its proxy, if proxied)
    /// and its clock, then makes its server with `server` (which starts it, or not: the
    /// caller's choice). A proxy forwards nowhere until the caller routes it
    /// ([`NodeSlot::route_to`]). An error of `server` leaves no member behind.
    pub async fn add<E>(
        &mut self,
        id: u64,
        config: NodeConfig,
        server: impl FnOnce(&NodeSlot, Option<&FakedClock>) -> Result<S, E>,
    ) -> Result<&mut Member<S>, AddError<E>> {
        if self.members.iter().any(|member| member.id == id) {
            return Err(AddError::Taken(id));
        }
        let layout = &self.layout;
        let slot = NodeSlot::prepare(
            &layout.dir.join(format!("node{id}")),
            config,
            &layout.peers,
            layout.lossy_disks,
        )
        .await
        .map_err(|source| AddError::Prepare { id, source })?;
        let clock = if layout.faked_clocks {
            let path = layout.dir.join(format!("node{id}.clock"));
            Some(FakedClock::new(&path).map_err(|source| AddError::Prepare { id, source })?)
        } else {
            None
        };
        let server = server(&slot, clock.as_ref()).map_err(AddError::Server)?;
        self.members.push(Member {
            id,
            server,
            slot,
            clock,
        });
        Ok(self.members.last_mut().expect("just pushed"))
    }

    pub fn member(&self, id: u64) -> Option<&Member<S>> {
        self.members.iter().find(|member| member.id == id)
    }

    pub fn member_mut(&mut self, id: u64) -> Option<&mut Member<S>> {
        self.members.iter_mut().find(|member| member.id == id)
    }

    /// Every member's id, in the order they were added.
    pub fn ids(&self) -> Vec<u64> {
        self.members.iter().map(|member| member.id).collect()
    }

    /// Takes member `id` out of the cluster (its server, slot and clock dropped by the caller).
    pub fn remove(&mut self, id: u64) -> Option<Member<S>> {
        let index = self.members.iter().position(|member| member.id == id)?;
        Some(self.members.remove(index))
    }

    /// Moves member `id`'s wall clock to `offset` from the real time (libfaketime's notation:
    /// `+8d`, `-1d`, `+0`); the node sees it within a second, running or at its next start.
    pub fn set_clock(&self, id: u64, offset: &str) -> Result<(), String> {
        let member = self.member(id).ok_or_else(|| format!("no node {id}"))?;
        let clock = member
            .clock
            .as_ref()
            .ok_or("the cluster was laid out without faked clocks")?;
        clock
            .set(offset)
            .map_err(|e| format!("node {id}'s clock file: {e}"))
    }
}

/// Why [`Cluster::add`] added no member.
#[derive(Debug)]
pub enum AddError<E> {
    /// A member has this id already.
    Taken(u64),
    /// Its slot or clock file could not be made.
    Prepare { id: u64, source: std::io::Error },
    /// The caller's `server` failed.
    Server(E),
}

impl<E: std::fmt::Display> std::fmt::Display for AddError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddError::Taken(id) => write!(f, "node {id} is a member already"),
            AddError::Prepare { id, source } => write!(f, "preparing node {id}: {source}"),
            AddError::Server(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for AddError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AddError::Taken(_) => None,
            AddError::Prepare { source, .. } => Some(source),
            AddError::Server(e) => e.source(),
        }
    }
}

/// A prepared node. Fields drop in order: a caller keeps its process before the slot, so the
/// process is gone before the disk is unmounted.
pub struct NodeSlot {
    /// Its peer proxy ([`Peers::Proxied`]).
    pub proxy: Option<PeerProxy>,
    /// The peer address the other nodes reach it at (its proxy's, or its own).
    pub advertised: String,
    /// `<dir>/node.toml`.
    pub config: PathBuf,
    /// `<dir>/data` (or the one its config fixes), the lossy disk's mount point if there is one.
    pub data_dir: PathBuf,
    pub disk: Option<LossyDisk>,
}

impl NodeSlot {
    /// With [`Peers::Proxied`], starts the node's peer proxy and advertises it in `config`;
    /// writes `config` to `dir/node.toml` and creates the data dir: `dir/data`, or the one
    /// `config` fixes, mounting a new lossy disk there with `lossy` (its durable content in
    /// `dir/backing`).
    pub async fn prepare(
        dir: &Path,
        mut config: NodeConfig,
        peers: &Peers,
        lossy: bool,
    ) -> std::io::Result<NodeSlot> {
        let proxy = match peers {
            Peers::Proxied { network, client } => {
                let proxy =
                    PeerProxy::start(config.node_id, network.clone(), client.clone()).await?;
                config.advertise = Some(proxy.addr.to_string());
                Some(proxy)
            }
            Peers::Direct => None,
        };
        let advertised = config.advertise.clone().ok_or_else(|| {
            std::io::Error::other("a node reached directly needs `advertise` in its config")
        })?;
        std::fs::create_dir_all(dir)?;
        let config_path = dir.join("node.toml");
        let fixed_data_dir = config.fixed.as_ref().map(|(_, data_dir)| data_dir.clone());
        if lossy && fixed_data_dir.is_some() {
            return Err(std::io::Error::other(
                "a lossy disk is mounted at <dir>/data: not with a data dir the config fixes",
            ));
        }
        std::fs::write(&config_path, config.to_toml())?;
        let (data_dir, disk) = if lossy {
            let (disk, mountpoint) = mount_lossy_disk(dir)?;
            (mountpoint, Some(disk))
        } else {
            let data_dir = fixed_data_dir.unwrap_or_else(|| dir.join("data"));
            std::fs::create_dir_all(&data_dir)?;
            (data_dir, None)
        };
        Ok(NodeSlot {
            proxy,
            advertised,
            config: config_path,
            data_dir,
            disk,
        })
    }

    /// Routes the peer proxy, if there is one, to the node's peer listener (`None`: nowhere,
    /// as for a node that is down).
    pub fn route_to(&self, peer: Option<std::net::SocketAddr>) {
        if let Some(proxy) = &self.proxy {
            proxy.set_upstream(peer);
        }
    }
}

/// From a node's `/cluster/status` answer: the number of voters that have applied its
/// membership configuration, or why the cluster is not settled yet (a voter change under way).
/// Only once every voter has applied a settled configuration does losing any one node leave a
/// majority that can elect a leader: while a change is joint, the old voter set needs its own.
pub fn voters_applied_membership(status: &serde_json::Value) -> Result<u64, String> {
    if status["membership"]["joint"] != false {
        return Err("a membership change is under way".to_string());
    }
    let membership_index = status["membership"]["log_index"]
        .as_u64()
        .ok_or("no membership log index")?;
    let members = status["members"].as_array().ok_or("no members")?;
    let applied = members
        .iter()
        .filter(|m| m["voter"] == true)
        .filter(|m| {
            m["status"]["applied_index"]
                .as_u64()
                .is_some_and(|index| index >= membership_index)
        })
        .count();
    Ok(applied as u64)
}
