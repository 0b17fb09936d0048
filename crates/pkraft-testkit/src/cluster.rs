//! A cluster node's place before its process starts, as the integration tests' `TestCluster`
//! and the chaos harness's `Cluster` both lay it out: its peer proxy (the address the other
//! nodes reach it at), its config file and its data dir, on a lossy disk if asked. Each starts
//! the process its own way ([`crate::process`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pkraft_lossyfs::LossyDisk;

use crate::lossy::mount_lossy_disk;
use crate::node::NodeConfig;
use crate::proxy::{Network, PeerProxy};

/// A prepared node. Fields drop in order: a caller keeps its process before the slot, so the
/// process is gone before the disk is unmounted.
pub struct NodeSlot {
    pub proxy: PeerProxy,
    /// `<dir>/node.toml`.
    pub config: PathBuf,
    /// `<dir>/data`, the lossy disk's mount point if there is one.
    pub data_dir: PathBuf,
    pub disk: Option<LossyDisk>,
}

impl NodeSlot {
    /// Starts the node's peer proxy under `network` (relaying with `client`), writes `config`
    /// advertising the proxy to `dir/node.toml`, and creates the data dir `dir/data`, mounting a
    /// new lossy disk there with `lossy` (its durable content in `dir/backing`).
    pub async fn prepare(
        dir: &Path,
        mut config: NodeConfig,
        network: Arc<Network>,
        client: reqwest::Client,
        lossy: bool,
    ) -> std::io::Result<NodeSlot> {
        let proxy = PeerProxy::start(config.node_id, network, client).await?;
        config.advertise = Some(proxy.addr.to_string());
        std::fs::create_dir_all(dir)?;
        let config_path = dir.join("node.toml");
        std::fs::write(&config_path, config.to_toml())?;
        let (data_dir, disk) = if lossy {
            let (disk, mountpoint) = mount_lossy_disk(dir)?;
            (mountpoint, Some(disk))
        } else {
            let data_dir = dir.join("data");
            std::fs::create_dir_all(&data_dir)?;
            (data_dir, None)
        };
        Ok(NodeSlot {
            proxy,
            config: config_path,
            data_dir,
            disk,
        })
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
