//! Snapshots and backups stream: nodes whose memory is capped (a cgroup memory limit) well
//! below the size of their data restore a backup of it, build a snapshot of it, send it, install
//! it, and send a backup of it to a `pkraft backup` capped lower still. Before snapshots streamed, each of these held the whole data set in memory (two
//! copies while a snapshot was built) and the cap killed the node.
//!
//! Needs root and the memory controller, on cgroup v1 (CI's machines) or v2. Without them the
//! test says so and passes, unless `PKRAFT_TEST_REQUIRE_CGROUP` is set, as `.ci/run` sets it.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pkraft_raft_storage::state_machine::AppliedState;
use pkraft_state::Store;
use pkraft_testkit::pkarr::Keypair;
use pkraft_testkit::{iroh_packet, keypair};
use pkraft_types::{Command, Payload, PublishItem};

use crate::harness::{TestServer, http_client, pkraft_command};
use pkraft_testkit::proxy::{Network, PeerProxy};

/// Packets of about 1 KB: a snapshot of about 300 MB.
const PACKETS: u64 = 290_000;
/// Memory each node may use: half the snapshot.
const CAP_BYTES: u64 = 150_000_000;
/// `pkraft backup`'s cap: a fifth of the data.
const BACKUP_CAP_BYTES: u64 = 64_000_000;
const SECRET: &str = "test-cluster-secret-0123456789";
const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// Small PUTs after the restore, past `snapshot_after_entries`, so node 1 builds a snapshot.
const EXTRA_PUTS: u64 = 25;
/// Restoring, building, sending and installing 300 MB in a debug build on a loaded machine.
const SLOW_STEP: Duration = Duration::from_secs(600);

/// Goal: memory does not grow with the data when a backup is restored and a snapshot is built,
/// sent and installed. Two nodes capped at 150 MiB handle a 300 MB snapshot; neither is killed,
/// and their peak resident memory stays under the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_capped_below_the_data_size_restore_build_send_install_and_back_it_up() {
    let Some(root) = MemoryCgroup::root() else {
        return;
    };
    let started = std::time::Instant::now();
    let work = tempfile::tempdir().expect("tempdir");
    let backup = work.path().join("big.pkrbak");
    let path = backup.clone();
    tokio::task::spawn_blocking(move || write_backup(&path, PACKETS))
        .await
        .expect("backup writer");
    let backup_bytes = std::fs::metadata(&backup).expect("backup").len();
    eprintln!("{:?} backup written", started.elapsed());
    assert!(
        backup_bytes > 2 * CAP_BYTES,
        "the data ({backup_bytes} bytes) must be well over the cap"
    );

    // Node 1: restored from the backup and started, both under the cap.
    let cgroup1 = MemoryCgroup::create(&root, "node1", CAP_BYTES);
    let network = Network::new(0);
    let proxy1 = PeerProxy::start(1, network.clone(), http_client())
        .await
        .expect("proxy");
    let data_dir = tempfile::tempdir().expect("data dir");
    let restore = pkraft_command(Some(cgroup1.path()))
        .args(["restore", "--node-id", "1", "--advertise"])
        .arg(proxy1.addr.to_string())
        .arg("--data-dir")
        .arg(data_dir.path())
        .arg(&backup)
        .output()
        .expect("run pkraft restore");
    assert!(
        restore.status.success(),
        "restore under the cap: {}\n{}",
        restore.status,
        String::from_utf8_lossy(&restore.stderr)
    );
    let restore_peak = cgroup1.peak_bytes();
    eprintln!("{:?} restored", started.elapsed());
    let node1 = TestServer::start_with_config_in_cgroup(
        &config(1, &proxy1.addr.to_string(), ""),
        data_dir,
        cgroup1.path(),
    );
    proxy1.set_upstream(Some(node1.peer));
    // `raft.state_cache_mib` is unset: derived from the cgroup's 150 MB (an eighth, 17 MiB), not
    // from the machine's memory.
    let scrape = crate::metrics::scrape(&node1).await;
    assert_eq!(
        crate::metrics::value(&scrape, "pkraft_state_cache_bytes", ""),
        (17u64 << 20) as f64
    );
    assert!(
        node1
            .log()
            .contains("state cache derived from the cgroup limit in"),
        "{}",
        node1.log()
    );

    // Node 1 builds a snapshot of its own once the log has grown past `snapshot_after_entries`.
    for seed in 0..EXTRA_PUTS {
        let key = keypair(seed);
        node1
            .publish(&key, &iroh_packet(&key, 1_000, &["192.0.2.1:1"]))
            .await;
    }
    node1
        .wait_for_log_within("built a snapshot", SLOW_STEP)
        .await;
    eprintln!("{:?} node 1 built a snapshot", started.elapsed());

    // Node 2 joins under its own cap: node 1 sends it that snapshot, and node 2 installs it.
    let cgroup2 = MemoryCgroup::create(&root, "node2", CAP_BYTES);
    let proxy2 = PeerProxy::start(2, network.clone(), http_client())
        .await
        .expect("proxy");
    let node2 = TestServer::start_with_config_in_cgroup(
        &config(
            2,
            &proxy2.addr.to_string(),
            &format!("join = [\"{}\"]\n", proxy1.addr),
        ),
        tempfile::tempdir().expect("data dir"),
        cgroup2.path(),
    );
    proxy2.set_upstream(Some(node2.peer));
    node2
        .wait_for_log_within("installed a snapshot from the leader", SLOW_STEP)
        .await;
    let log = node2.log();
    let installed = log
        .lines()
        .find(|line| line.contains("installed a snapshot from the leader"))
        .and_then(|line| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix("packets="))
        })
        .and_then(|packets| packets.parse::<u64>().ok());
    assert!(
        installed.is_some_and(|packets| packets > PACKETS),
        "node 2 installed every packet of the data set and some of the PUTs: {installed:?}"
    );
    eprintln!(
        "{:?} node 2 installed {installed:?} packets",
        started.elapsed()
    );
    // Node 2 serves the data set, and the PUTs after the snapshot reach it through the log.
    let keys = [0, PACKETS / 2, PACKETS - 1].map(big_key);
    let puts = [0, EXTRA_PUTS - 1].map(keypair);
    for key in keys.iter().chain(&puts) {
        let url = node2.relay_url(key);
        let mut found = false;
        for _ in 0..100 {
            if node2.get(&url).await.status() == 200 {
                found = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(found, "{url} on node 2");
    }

    // `pkraft backup` of node 1 under a cap of its own, smaller still: it streams the answer to
    // the file and checks the file from disk.
    let cgroup3 = MemoryCgroup::create(&root, "backup", BACKUP_CAP_BYTES);
    let token_file = work.path().join("token");
    std::fs::write(&token_file, ADMIN_TOKEN).expect("token");
    let copy = work.path().join("copy.pkrbak");
    let backup_run = pkraft_command(Some(cgroup3.path()))
        .args([
            "backup",
            "--admin",
            &node1.admin.to_string(),
            "--token-file",
        ])
        .arg(&token_file)
        .arg(&copy)
        .output()
        .expect("run pkraft backup");
    let stdout = String::from_utf8_lossy(&backup_run.stdout);
    assert!(
        backup_run.status.success(),
        "backup under a {BACKUP_CAP_BYTES}-byte cap: {}\n{}",
        backup_run.status,
        String::from_utf8_lossy(&backup_run.stderr)
    );
    assert!(
        stdout.contains(&format!("{} records", PACKETS + EXTRA_PUTS)),
        "{stdout}"
    );
    assert_eq!(cgroup3.oom_kills(), 0, "pkraft backup was OOM-killed");
    eprintln!(
        "{:?} backup taken: {stdout}cgroup peak {} MiB",
        started.elapsed(),
        cgroup3.peak_bytes() / (1 << 20)
    );

    for (name, node, cgroup) in [("node 1", &node1, &cgroup1), ("node 2", &node2, &cgroup2)] {
        let pid = node.pid().expect("running");
        let peak = peak_resident_bytes(pid);
        eprintln!(
            "{name}: peak resident {} MiB (cap {} MiB, data {} MiB, restore peak {} MiB)",
            peak / (1 << 20),
            CAP_BYTES / (1 << 20),
            backup_bytes / (1 << 20),
            restore_peak / (1 << 20),
        );
        assert!(peak < CAP_BYTES, "{name}: peak resident {peak} bytes");
        assert_eq!(cgroup.oom_kills(), 0, "{name} was OOM-killed");
    }
}

/// No `state_cache_mib`: each node derives its cache from its cgroup's limit (17 MiB).
/// `record_max_age = "0s"`: the data set is signed in 1970 (timestamp 1,000 µs), and expiry
/// would delete it 10,000 packets a minute from the first minute on, racing the counts checked
/// here (a run whose restore took longer than a minute backed up 10,000 packets fewer).
fn config(id: u64, advertise: &str, membership: &str) -> String {
    format!(
        "node_id = {id}\n\
         [raft]\nsnapshot_after_entries = 20\nrecord_max_age = \"0s\"\n\
         election_timeout_min = \"800ms\"\nelection_timeout_max = \"1600ms\"\n\
         [admin]\ntoken = \"{ADMIN_TOKEN}\"\n\
         [cluster]\nadvertise = \"{advertise}\"\nsecret = \"{SECRET}\"\n{membership}"
    )
}

/// The keys of the big data set, apart from the small ones the test PUTs.
fn big_key(seed: u64) -> Keypair {
    keypair(1_000_000 + seed)
}

/// Writes a backup file of `packets` packets of about 1 KB each, signed on every core, through a
/// store of its own (the format is the node's: `pkraft_raft::backup`).
pub(crate) fn write_backup(path: &Path, packets: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_with_cache(&dir.path().join("state.redb"), 32 << 20).expect("store");
    let applied = postcard::to_stdvec(&AppliedState::default()).expect("encode");
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let (sender, batches) = std::sync::mpsc::sync_channel::<Vec<PublishItem>>(threads as usize);
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let sender = sender.clone();
            scope.spawn(move || {
                let mut batch = Vec::new();
                for seed in (thread..packets).step_by(threads as usize) {
                    batch.push(big_item(seed));
                    if batch.len() == 2048 {
                        sender.send(std::mem::take(&mut batch)).expect("send");
                    }
                }
                sender.send(batch).expect("send");
            });
        }
        drop(sender);
        for batch in batches {
            let mut txn = store.begin_apply(false).expect("begin");
            txn.apply(&Command::Publish {
                leader_time_micros: 1,
                packets: batch,
            })
            .expect("apply");
            txn.commit(&applied).expect("commit");
        }
    });
    store.flush().expect("flush");
    assert_eq!(store.packet_count().expect("count"), packets);
    let mut out = BufWriter::new(std::fs::File::create(path).expect("create"));
    pkraft_raft::backup::write_store_backup(&store, 9, &mut out).expect("backup");
    out.flush().expect("flush");
}

/// A packet of about 1 KB (the largest is 1000 bytes of DNS): 26 `_iroh` TXT strings.
fn big_item(seed: u64) -> PublishItem {
    let key = big_key(seed);
    let addrs: Vec<String> = (0..26).map(|i| format!("192.0.2.{i}:{seed}")).collect();
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let packet = iroh_packet(&key, 1_000, &addrs);
    PublishItem {
        key: key.public_key().to_bytes(),
        payload: Payload::new(packet.to_relay_payload()).expect("payload"),
    }
}

/// The largest resident set the process had (`VmHWM`), in bytes.
fn peak_resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmHWM in /proc/PID/status")
}

/// A memory cgroup of its own, removed when dropped (after its processes are gone): on cgroup v1
/// in the memory controller's hierarchy, on cgroup v2 (the unified hierarchy, today's default)
/// beside this process's cgroup's root with the memory controller enabled. The two name the same
/// things differently (Documentation/admin-guide/cgroup-v2.rst, "Memory").
struct MemoryCgroup {
    path: PathBuf,
    version: CgroupVersion,
}

#[derive(Clone, Copy, Debug)]
enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    /// The file that caps the cgroup's memory.
    fn limit_file(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "memory.limit_in_bytes",
            CgroupVersion::V2 => "memory.max",
        }
    }

    /// The file with the cgroup's peak usage (v2: since Linux 5.19).
    fn peak_file(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "memory.max_usage_in_bytes",
            CgroupVersion::V2 => "memory.peak",
        }
    }

    /// The file whose `oom_kill N` line counts the processes killed for going over the cap.
    fn oom_file(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "memory.oom_control",
            CgroupVersion::V2 => "memory.events",
        }
    }
}

/// Where cgroup v1's memory controller and cgroup v2's unified hierarchy are mounted.
const CGROUP_V1_MEMORY: &str = "/sys/fs/cgroup/memory";
const CGROUP_V2: &str = "/sys/fs/cgroup";

impl MemoryCgroup {
    /// The hierarchy to make memory cgroups in, if this process may: v1's memory controller if
    /// it is mounted, else v2's root with `+memory` enabled for its children.
    fn root() -> Option<(PathBuf, CgroupVersion)> {
        let (root, version) = if Path::new(CGROUP_V1_MEMORY).is_dir() {
            (PathBuf::from(CGROUP_V1_MEMORY), CgroupVersion::V1)
        } else {
            (PathBuf::from(CGROUP_V2), CgroupVersion::V2)
        };
        let usable = match version {
            CgroupVersion::V1 => Ok(()),
            // The root's children get the memory controller only if the root hands it down.
            CgroupVersion::V2 => std::fs::write(root.join("cgroup.subtree_control"), "+memory"),
        }
        .and_then(|()| {
            let probe = root.join(format!("pkraft-probe-{}", std::process::id()));
            std::fs::create_dir(&probe)?;
            let limit = std::fs::write(probe.join(version.limit_file()), "1000000000");
            let _ = std::fs::remove_dir(&probe);
            limit
        });
        match usable {
            Ok(()) => Some((root, version)),
            Err(e) => {
                assert!(
                    std::env::var_os("PKRAFT_TEST_REQUIRE_CGROUP").is_none(),
                    "PKRAFT_TEST_REQUIRE_CGROUP is set but no memory cgroup can be made in {} \
                     ({version:?}): {e}",
                    root.display()
                );
                eprintln!(
                    "SKIPPED: the memory cap test needs root and a memory cgroup in {} \
                     ({version:?}): {e}",
                    root.display()
                );
                None
            }
        }
    }

    fn create(
        (root, version): &(PathBuf, CgroupVersion),
        name: &str,
        limit_bytes: u64,
    ) -> MemoryCgroup {
        let path = root.join(format!("pkraft-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create cgroup");
        std::fs::write(path.join(version.limit_file()), limit_bytes.to_string())
            .expect("set the limit");
        if let CgroupVersion::V2 = version {
            // v1's limit covers swap only with memsw; keep v2's cap as hard as v1's.
            let _ = std::fs::write(path.join("memory.swap.max"), "0");
        }
        MemoryCgroup {
            path,
            version: *version,
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup's peak usage so far (page cache included), in bytes; 0 where the kernel does
    /// not report it (cgroup v2 before Linux 5.19).
    fn peak_bytes(&self) -> u64 {
        std::fs::read_to_string(self.path.join(self.version.peak_file()))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or_default()
    }

    /// Processes the kernel killed for going over the limit.
    fn oom_kills(&self) -> u64 {
        let file = self.version.oom_file();
        let control = std::fs::read_to_string(self.path.join(file)).expect(file);
        control
            .lines()
            .find_map(|line| line.strip_prefix("oom_kill "))
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or_default()
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Its processes may still be exiting; a cgroup can be removed once they have.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
