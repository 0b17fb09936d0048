//! The `[raft]` config section.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pkraft_types::BuildInfo;
use serde::Deserialize;

use crate::peer::ClusterSecret;

/// Consensus timing and log retention.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// How often the leader sends heartbeats. Default 100 ms (etcd's default too). It is also
    /// the time openraft gives one `append-entries` request (sending it and the follower's
    /// fsync), so keep it above a few round trips plus the disk's fsync p99; fsync p99 on these
    /// machines is 9–26 ms.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Lower bound of the randomised election timeout. Default 300 ms. A follower stands only
    /// after the leader lease (`election_timeout_max`) plus its own timeout have passed without
    /// a heartbeat, so failover takes about `election_timeout_max` + this node's timeout + a
    /// heartbeat, and the leader must be silent for at least `election_timeout_max` +
    /// `election_timeout_min` (800 ms by default) before anyone stands.
    #[serde(with = "humantime_serde")]
    pub election_timeout_min: Duration,
    /// Upper bound of the randomised election timeout, and the leader lease (openraft 0.9 does
    /// not set the lease separately). Default 500 ms: measured failover ≤ 1.5 s (docs/
    /// BENCHMARKS.md); slow disks or long links need more (docs/OPERATIONS.md, "Raft timing").
    #[serde(with = "humantime_serde")]
    pub election_timeout_max: Duration,
    /// PreVote: a voter that hears nothing from its leader stands for election only once a
    /// quorum of voters says it could win (none of them has heard from a leader within the
    /// lease, and its log is as up to date as theirs). A node cut off for a while then does not
    /// raise its term, and does not depose a healthy leader when it is back. Default true. Turn
    /// it off only while upgrading from a version without it, once more than half the voters
    /// run it (docs/OPERATIONS.md, "Upgrading"); docs/CONSISTENCY.md, "PreVote".
    pub pre_vote: bool,
    /// Build a snapshot after this many log entries since the last one, so the log stays bounded.
    /// Default 10 000. A build also waits until nine times the last build's duration (at most
    /// 10 minutes) has passed since it ended, so that a large state is not rebuilt back to back
    /// (`snapshot_schedule`).
    pub snapshot_after_entries: u64,
    /// Entries kept in the log after a snapshot, so a briefly lagging follower catches up from the
    /// log instead of a full snapshot. Default 1 000.
    pub entries_kept_after_snapshot: u64,
    /// How long a PUT waits for its packet to commit before answering 503. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Most packets in one log entry (group commit), 1 to 4096. Default 512: about 130 KiB of
    /// iroh-sized packets, one redb transaction that commits in a few milliseconds. (4096 packets
    /// of the largest size are a 4.4 MB entry.)
    pub publish_batch_max: usize,
    /// Most publishes waiting to be batched, 1 to 65 536; more are answered 503 at once instead of
    /// queueing without bound. Default 4096: several batches' worth, a couple of seconds at full
    /// load. (65 536 payloads of the largest size hold 70 MB.)
    pub publish_queue_max: usize,
    /// Packets whose signed timestamp is older than this are deleted on every replica (the leader
    /// proposes the deletion through the log). Default 7 days, as iroh-dns-server; "0s" keeps
    /// packets forever.
    #[serde(with = "humantime_serde")]
    pub record_max_age: Duration,
    /// How often the leader looks for packets older than `record_max_age`. Default 1 minute.
    #[serde(with = "humantime_serde")]
    pub expiry_interval: Duration,
    /// Most of the store expiry deletes in one hour, in percent of the packets stored, 1 to
    /// 100 (but always 1,000 packets an hour). Default 10. A fence behind cluster time: should
    /// the clocks of a majority step forward together, expiry still cannot empty the store
    /// at once. Reaching it holds expiry back (`pkraft_expiry_held{reason="rate"}`, alert
    /// `PkraftExpiryRateFenced`).
    pub expiry_max_percent_per_hour: u32,
    /// How far this node's wall clock may be from the median of the voters' clocks before it is
    /// taken as wrong: it then leads no expiry, and says so (`/readyz`, `cluster status`,
    /// `pkraft_clock_state`, alert `PkraftClockOffset`) until its clock is back. Default 1 s
    /// (NTP keeps LAN clocks within milliseconds); docs/CONSISTENCY.md, "Time".
    #[serde(with = "humantime_serde")]
    pub max_clock_offset: Duration,
    /// How far the voters' clocks may be ahead of the log's time (the last publish's stamp,
    /// plus the monotonic time since and an eighth of it) before the node reports it
    /// (`pkraft_clock_state{state="held_by_log"}`, alert `PkraftClockHeldByLog`). Default 1 h.
    /// Expiry always goes by the earlier of the two, so a clock step cannot delete at once what
    /// it skipped; a whole cluster back from a longer outage sees this until its stamps have
    /// caught up (by an eighth of the time elapsed; expiry runs late meanwhile, losing nothing).
    #[serde(with = "humantime_serde")]
    pub max_clock_jump: Duration,
    /// The state's open transaction is committed at most this long after its first apply
    /// (applies go into one redb write transaction kept open across many of them, as etcd's
    /// backend does; what they wrote is visible at once on this node through a read buffer).
    /// Default 100 ms (etcd's `--backend-batch-interval`). It bounds how far the committed
    /// tables, which the DHT republish sweep, the scrub and expiry's look for old packets read,
    /// lag what GET and DNS answer; never durability, which is the log's. "0s" commits after
    /// every apply. docs/ARCHITECTURE.md, "Durability".
    #[serde(with = "humantime_serde")]
    pub apply_batch_interval: Duration,
    /// ... or once it holds this many packets, 1 to 65,536. Default 8192: the read buffer
    /// then holds at most about 18 MB (a packet of the largest size and its compiled answers).
    pub apply_batch_packets: u64,
    /// Memory for redb's page cache of `state.redb`, in MiB (at least 1). Unset: derived at start
    /// from the memory the node may use, the machine's or its cgroup's limit, whichever is lower
    /// (an eighth of it, 16 to 256 MiB: `machine_memory::derived_state_cache_mib`); the log and
    /// `pkraft_state_cache_bytes` say what it came to. Reads that miss it go to the kernel's page
    /// cache, which needs no setting and is given back under memory pressure; this one is the
    /// node's own and never shrinks. It is the largest part of a node's memory, and the one that
    /// decides how fast a large store answers names never asked before: docs/OPERATIONS.md,
    /// "Memory", and docs/SCALING.md.
    pub state_cache_mib: Option<u64>,
    /// Space to keep free on the data dir's file system, in MiB. Default 1024. Below it the node
    /// takes no writes (PUT 503, replication to it waits) until space is freed, instead of
    /// running into "no space left", which stops the node. A snapshot build needs room for the
    /// last snapshot's size plus a quarter of this reserve. 0 turns the check off.
    /// docs/OPERATIONS.md, "Disk full".
    pub min_free_disk_mib: u64,
    /// Below this much free space on the data dir's file system, in MiB, the node stores no new
    /// keys (PUT 507) while republishes of stored keys go on down to `min_free_disk_mib`: a flood
    /// of new keys never takes the room the endpoints already stored need. Unset: three times
    /// `min_free_disk_mib`. At least `min_free_disk_mib`. docs/OPERATIONS.md, "Bounded storage".
    pub new_keys_min_free_disk_mib: Option<u64>,
    /// Most packets the cluster stores. At the cap a PUT of a key not stored is refused (507)
    /// while republishes of stored keys go on; expiry makes room again. Unset: derived from the
    /// size of the data dir's file system at start (`store_cap::derived_max_packets`: what is
    /// left beside `new_keys_min_free_disk_mib`, at 4 KiB per packet). 0: no cap.
    /// docs/OPERATIONS.md, "Bounded storage".
    pub max_stored_packets: Option<u64>,
    /// The background scrub re-verifies every stored packet (its signature, as a PUT checks it)
    /// at this many packets a second, over and over, so that damage on disk is found before a
    /// read, a snapshot or a follower takes it. Default 250: a pass over a million packets in
    /// 67 minutes, ten million in 11 hours, for about 1 % of one core here (at 1 000 a second
    /// it cost 7-10 % of the write throughput of a 2-core machine: docs/BENCHMARKS.md, "The
    /// scrub on the write path"). 0 turns it off. docs/OPERATIONS.md, "Repair".
    pub scrub_packets_per_second: u64,
    /// The scrub reads the Raft log back (every record's checksums) at this many MiB a second.
    /// Default 4. 0 turns it off.
    pub scrub_log_mib_per_second: u64,
    /// Threads of the node's own tokio runtime, which runs openraft (its core, heartbeats and
    /// replication), the node's background tasks and the peer listener, apart from the runtime
    /// that serves clients. Default 2. A client's storage read that waits on the disk (a GET or
    /// a DNS-over-TCP answer for a key out of the page cache) holds a client thread, never one
    /// of these, so it cannot hold up a heartbeat. docs/ARCHITECTURE.md, "Runtimes".
    pub runtime_threads: usize,
    /// Longest the leader waits for the answer to a snapshot's last chunk, which the follower
    /// gives once it has installed the whole snapshot ([`SNAPSHOT_INSTALL_TIMEOUT`], the
    /// default). Not a config key: only a network that loses a request for good on a
    /// connection it keeps open needs it lower (the simulator's, whose TCP does not retransmit:
    /// docs/SIMULATION.md); a kernel's TCP sends a request again, or resets the connection.
    #[serde(skip)]
    pub snapshot_install_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(300),
            election_timeout_max: Duration::from_millis(500),
            pre_vote: true,
            snapshot_after_entries: 10_000,
            entries_kept_after_snapshot: 1_000,
            publish_timeout: Duration::from_secs(5),
            publish_batch_max: 512,
            publish_queue_max: 4096,
            record_max_age: Duration::from_secs(7 * 24 * 3600),
            expiry_interval: Duration::from_secs(60),
            expiry_max_percent_per_hour: 10,
            max_clock_offset: Duration::from_secs(1),
            max_clock_jump: Duration::from_secs(3600),
            apply_batch_interval: pkraft_state::ApplyBatching::DEFAULT.interval,
            apply_batch_packets: pkraft_state::ApplyBatching::DEFAULT.packets,
            state_cache_mib: None,
            min_free_disk_mib: 1024,
            new_keys_min_free_disk_mib: None,
            max_stored_packets: None,
            scrub_packets_per_second: 250,
            scrub_log_mib_per_second: 4,
            runtime_threads: 2,
            snapshot_install_timeout: SNAPSHOT_INSTALL_TIMEOUT,
        }
    }
}

/// Most log entries in one `append-entries` request: plenty for a follower catching up on small
/// entries in few round trips.
pub const ENTRIES_PER_APPEND_MAX: u64 = 64;
/// Budget for the entries of one `append-entries` request, per millisecond of
/// `heartbeat_interval`: openraft gives each request that long in all (sending, and the
/// follower's fsync; the peer network's own deadline is 5 % shorter). 40 KiB per ms is 4 MiB
/// at the default 100 ms, which crosses a 1 Gbit/s link in about 35 ms. Without a budget, 64 full batches of 512 packets (40 MB) would time out
/// on every try, and a follower that needs them would never catch up.
const APPEND_BYTES_PER_HEARTBEAT_MS: usize = 40 * 1024;
/// Bytes of snapshot sent in one `install-snapshot` request.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 4 * 1024 * 1024;
/// Time for one snapshot chunk but the last; the peer network holds every chunk but the last
/// to it.
pub use pkraft_peer::client::SNAPSHOT_CHUNK_TIMEOUT;
/// Time for the last snapshot chunk, which the follower answers once it has installed the whole
/// snapshot: an import into redb of every packet, with their answers compiled, and an fsync.
/// That took over a minute at 10M packets, and a timeout there started the transfer and the
/// install over (three installs, 107 s, in docs/BENCHMARKS.md), so the transfer's timeout no
/// longer covers the import: this bound is only there so that a follower that never answers is
/// given up on. openraft applies it to every chunk (`install_snapshot_timeout`).
pub const SNAPSHOT_INSTALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Upper bound of the bytes one published packet takes in an encoded log entry: a relay payload
/// of at most 1072 bytes, its 32-byte key and postcard framing.
const PUBLISH_ITEM_BYTES_MAX: usize = 1_200;

/// Largest `publish_batch_max`: bounds the size of one log entry.
pub const PUBLISH_BATCH_MAX_LIMIT: usize = 4096;
/// Largest `publish_queue_max`: bounds the memory of waiting publishes.
pub const PUBLISH_QUEUE_MAX_LIMIT: usize = 65_536;
/// `new_keys_min_free_disk_mib` when unset, in multiples of `min_free_disk_mib`.
const NEW_KEYS_RESERVE_FACTOR: u64 = 3;
/// Largest `runtime_threads`.
pub const RUNTIME_THREADS_MAX: usize = 64;
/// Largest `apply_batch_packets`: the read buffer's bound (about 140 MB of the largest rows).
pub const APPLY_BATCH_PACKETS_MAX: u64 = 65_536;
/// Largest `apply_batch_interval`: the committed tables then lag GET and DNS by up to an hour
/// (the read buffer's size is bounded by `apply_batch_packets`, not by time).
pub const APPLY_BATCH_INTERVAL_MAX: Duration = Duration::from_secs(3600);

/// A `[raft]` value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A value checked here (the reason names the field).
    #[error("raft settings: {0}")]
    Invalid(String),
    /// openraft refuses the timing made of the values.
    #[error("raft settings: {0}")]
    Refused(#[from] openraft::ConfigError),
}

impl Settings {
    /// When the state's open apply transaction commits.
    pub fn apply_batching(&self) -> pkraft_state::ApplyBatching {
        pkraft_state::ApplyBatching {
            interval: self.apply_batch_interval,
            packets: self.apply_batch_packets,
        }
    }

    /// `state_cache_mib` in bytes, checked; `None` when unset (derived at start from the memory
    /// the node may use).
    pub fn state_cache_bytes(&self) -> Result<Option<usize>, SettingsError> {
        let Some(mib) = self.state_cache_mib else {
            return Ok(None);
        };
        mib.checked_mul(1024 * 1024)
            .and_then(|bytes| usize::try_from(bytes).ok())
            .filter(|_| mib >= 1)
            .map(Some)
            .ok_or_else(|| {
                SettingsError::Invalid(format!(
                    "raft.state_cache_mib = {mib}: must be at least 1 and fit in memory"
                ))
            })
    }

    /// `min_free_disk_mib` in bytes.
    pub fn min_free_disk_bytes(&self) -> u64 {
        self.min_free_disk_mib.saturating_mul(1024 * 1024)
    }

    /// `new_keys_min_free_disk_mib` in bytes (three times the reserve when unset).
    pub fn new_keys_min_free_disk_bytes(&self) -> u64 {
        self.new_keys_min_free_disk_mib
            .unwrap_or(
                self.min_free_disk_mib
                    .saturating_mul(NEW_KEYS_RESERVE_FACTOR),
            )
            .saturating_mul(1024 * 1024)
    }

    /// Largest request body the peer listener accepts: a full `append-entries` of the largest
    /// entries these settings allow, or a snapshot chunk, plus room for framing.
    pub fn peer_body_max(&self) -> usize {
        let entries = usize::try_from(self.entries_per_append()).unwrap_or(usize::MAX);
        let chunk = usize::try_from(SNAPSHOT_CHUNK_BYTES).unwrap_or(usize::MAX);
        let append = entries.saturating_mul(self.entry_bytes_max());
        append.max(chunk).saturating_add(1024 * 1024)
    }

    /// Upper bound of one encoded log entry: a full batch of the largest packets.
    fn entry_bytes_max(&self) -> usize {
        self.publish_batch_max
            .saturating_mul(PUBLISH_ITEM_BYTES_MAX)
    }

    /// Bytes of entries one `append-entries` request may carry (see
    /// `APPEND_BYTES_PER_HEARTBEAT_MS`).
    fn append_bytes_budget(&self) -> usize {
        let heartbeat_ms =
            usize::try_from(self.heartbeat_interval.as_millis()).unwrap_or(usize::MAX);
        heartbeat_ms.saturating_mul(APPEND_BYTES_PER_HEARTBEAT_MS)
    }

    /// Entries per `append-entries` request: as many full batches as fit the budget (at least
    /// one), at most `ENTRIES_PER_APPEND_MAX`.
    fn entries_per_append(&self) -> u64 {
        let fit = self.append_bytes_budget() / self.entry_bytes_max().max(1);
        u64::try_from(fit)
            .unwrap_or(u64::MAX)
            .clamp(1, ENTRIES_PER_APPEND_MAX)
    }

    /// The openraft config these settings stand for, validated by openraft (for example, the
    /// election timeout must exceed the heartbeat interval).
    pub fn openraft_config(&self) -> Result<openraft::Config, SettingsError> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        openraft::Config {
            cluster_name: "pkraft".to_string(),
            heartbeat_interval: millis(self.heartbeat_interval),
            election_timeout_min: millis(self.election_timeout_min),
            election_timeout_max: millis(self.election_timeout_max),
            // With PreVote the node keeps the election timer itself (`pre_vote`).
            enable_elect: !self.pre_vote,
            // The node triggers builds itself (`snapshot_schedule`).
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: self.entries_kept_after_snapshot,
            max_payload_entries: self.entries_per_append(),
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            install_snapshot_timeout: millis(self.snapshot_install_timeout),
            ..Default::default()
        }
        .validate()
        .map_err(SettingsError::Refused)
        .and_then(|config| {
            if !(1..=PUBLISH_BATCH_MAX_LIMIT).contains(&self.publish_batch_max) {
                return Err(SettingsError::Invalid(format!(
                    "publish_batch_max must be 1 to {PUBLISH_BATCH_MAX_LIMIT}, got {}",
                    self.publish_batch_max
                )));
            }
            if self.expiry_interval.is_zero() {
                return Err(SettingsError::Invalid(
                    "expiry_interval must be longer than 0".to_string(),
                ));
            }
            if !(1..=100).contains(&self.expiry_max_percent_per_hour) {
                return Err(SettingsError::Invalid(format!(
                    "expiry_max_percent_per_hour must be 1 to 100, got {}",
                    self.expiry_max_percent_per_hour
                )));
            }
            if self.max_clock_offset.is_zero() {
                return Err(SettingsError::Invalid(
                    "max_clock_offset must be longer than 0".to_string(),
                ));
            }
            if self.max_clock_jump < self.max_clock_offset {
                return Err(SettingsError::Invalid(format!(
                    "max_clock_jump ({:?}) must be at least max_clock_offset ({:?})",
                    self.max_clock_jump, self.max_clock_offset
                )));
            }
            if !(1..=RUNTIME_THREADS_MAX).contains(&self.runtime_threads) {
                return Err(SettingsError::Invalid(format!(
                    "runtime_threads must be 1 to {RUNTIME_THREADS_MAX}, got {}",
                    self.runtime_threads
                )));
            }
            if !(1..=APPLY_BATCH_PACKETS_MAX).contains(&self.apply_batch_packets) {
                return Err(SettingsError::Invalid(format!(
                    "apply_batch_packets must be 1 to {APPLY_BATCH_PACKETS_MAX}, got {}",
                    self.apply_batch_packets
                )));
            }
            if self.apply_batch_interval > APPLY_BATCH_INTERVAL_MAX {
                return Err(SettingsError::Invalid(format!(
                    "apply_batch_interval must be at most {APPLY_BATCH_INTERVAL_MAX:?}, got {:?}",
                    self.apply_batch_interval
                )));
            }
            if let Some(new_keys) = self.new_keys_min_free_disk_mib
                && new_keys < self.min_free_disk_mib
            {
                return Err(SettingsError::Invalid(format!(
                    "new_keys_min_free_disk_mib ({new_keys}) must be at least min_free_disk_mib \
                     ({}): new keys are refused before republishes",
                    self.min_free_disk_mib
                )));
            }
            if !(1..=PUBLISH_QUEUE_MAX_LIMIT).contains(&self.publish_queue_max) {
                return Err(SettingsError::Invalid(format!(
                    "publish_queue_max must be 1 to {PUBLISH_QUEUE_MAX_LIMIT}, got {}",
                    self.publish_queue_max
                )));
            }
            Ok(config)
        })
    }
}

/// The `[cluster]` section: how this node finds and authenticates its peers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// Peer listener for Raft traffic and forwarded publishes. Default `127.0.0.1:7400`. Reachable
    /// only by the other nodes: every request must carry the cluster secret.
    pub peer_listen: SocketAddr,
    /// The peer address other nodes use for this node (`host:port`), recorded in the membership.
    /// Default: the bound `peer_listen` address (which must then not be a wildcard like 0.0.0.0).
    pub advertise: Option<String>,
    /// Initialize a data dir that was never part of a cluster as a new one-voter cluster. Default
    /// false: a fresh node waits to join (see `join`) or for `pkraft cluster init`, so that a node
    /// meant to join can never start a cluster of its own by mistake.
    pub bootstrap: bool,
    /// Peer addresses of existing members. A node that is not yet a member (in the role `voter`
    /// asks for) asks them to add it, until one does. Default empty.
    pub join: Vec<String>,
    /// Join as a voter (added as a learner, promoted once caught up), or stay a learner: a read
    /// replica that serves DNS and GET but does not vote. Default true.
    pub voter: bool,
    /// The cluster secret, shared by every node (at least 16 printable bytes). Prefer
    /// `secret_file` or the `PKRAFT_CLUSTER_SECRET` environment variable, which win over this.
    /// Without a secret the node refuses all peer traffic: fine for a single node only.
    pub secret: Option<String>,
    /// File holding the cluster secret (surrounding whitespace is ignored).
    pub secret_file: Option<PathBuf>,
    /// Mutual TLS on the peer network (`[cluster.tls]`: `cert`, `key`, `ca`). Unset: plain
    /// HTTP, allowed on loopback only unless `plaintext_peers` is set.
    pub tls: Option<crate::peer::tls::PeerTlsSettings>,
    /// Without `[cluster.tls]`, peer traffic (the cluster secret included) travels in clear
    /// text, so a peer listener or a peer address (`advertise`, `join`) that is not on loopback
    /// is a start-up error unless this is set: for a private network or a tunnel (WireGuard,
    /// IPsec) that already encrypts. Default false (etcd and Consul refuse plain peer traffic
    /// between hosts unless told otherwise, too).
    pub plaintext_peers: bool,
    /// Connections open at once on the peer listener; beyond it new ones wait in the kernel's
    /// backlog. Each is a file descriptor (docs/OPERATIONS.md, "Limits and abuse"). Default 512.
    pub peer_max_connections: usize,
    /// Peer connections open at once from one address (an IPv6 /56); more are closed at once.
    /// A node keeps a few to each peer; on one host every node's count is one address's.
    /// Default 128.
    pub peer_max_connections_per_client: usize,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            peer_listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            advertise: None,
            bootstrap: false,
            join: Vec::new(),
            voter: true,
            secret: None,
            secret_file: None,
            tls: None,
            plaintext_peers: false,
            peer_max_connections: 512,
            peer_max_connections_per_client: 128,
        }
    }
}

/// How this node takes part in a cluster.
#[derive(Debug, Clone)]
pub struct Participation {
    /// The peer address (`host:port`) other nodes reach this one at; recorded in the membership.
    pub advertise: String,
    /// Authenticates peer requests both ways. Without it the node can neither call nor answer
    /// peers, which is fine for a cluster of one.
    pub secret: Option<ClusterSecret>,
    /// Initialize a data dir that was never part of a cluster as a one-voter cluster.
    pub bootstrap: bool,
    /// Peer addresses of existing members to ask for admission, until this node is a member
    /// (in the role `voter` asks for).
    pub join: Vec<String>,
    /// Join as a voter (promoted once caught up) rather than as a learner (a read replica).
    pub voter: bool,
    /// The peer network's TLS (`[cluster.tls]`); `None`: plain HTTP.
    pub tls: Option<Arc<crate::peer::tls::PeerTls>>,
    /// The build this node runs: in its status, and recorded in its data dir
    /// (`build_record`).
    pub build: BuildInfo,
    /// How this node's peer calls reach the others: TCP, or a simulation's network.
    pub transport: crate::peer::PeerTransport,
}

impl Participation {
    /// A node on its own: initialized on first start, no peers, no secret.
    pub fn standalone() -> Participation {
        Participation {
            advertise: "127.0.0.1:0".to_string(),
            secret: None,
            bootstrap: true,
            join: Vec::new(),
            voter: true,
            tls: None,
            transport: Default::default(),
            build: BuildInfo {
                version: env!("CARGO_PKG_VERSION").to_string(),
                commit: BuildInfo::UNKNOWN_COMMIT.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = Settings::default().openraft_config().expect("valid");
        assert_eq!(config.heartbeat_interval, 100);
        assert_eq!(config.election_timeout_min, 300);
        assert_eq!(config.election_timeout_max, 500);
    }

    /// New keys are refused before republishes: their reserve is three times the reserve by
    /// default, and never set below it.
    #[test]
    fn the_new_key_reserve_is_at_least_the_reserve() {
        let defaults = Settings::default();
        assert_eq!(
            defaults.new_keys_min_free_disk_bytes(),
            3 * 1024 * 1024 * 1024
        );
        let below = Settings {
            new_keys_min_free_disk_mib: Some(1023),
            ..Settings::default()
        };
        let error = below.openraft_config().expect_err("refused").to_string();
        assert!(error.contains("new_keys_min_free_disk_mib"), "{error}");
        let equal = Settings {
            new_keys_min_free_disk_mib: Some(1024),
            ..Settings::default()
        };
        assert!(equal.openraft_config().is_ok());
        let reserve_off = Settings {
            min_free_disk_mib: 0,
            ..Settings::default()
        };
        assert_eq!(reserve_off.new_keys_min_free_disk_bytes(), 0);
    }

    #[test]
    fn batch_and_queue_sizes_are_bounded() {
        for (batch, queue) in [
            (0, 1),
            (1, 0),
            (PUBLISH_BATCH_MAX_LIMIT + 1, 1),
            (1, PUBLISH_QUEUE_MAX_LIMIT + 1),
        ] {
            let settings = Settings {
                publish_batch_max: batch,
                publish_queue_max: queue,
                ..Settings::default()
            };
            assert!(settings.openraft_config().is_err(), "{batch} {queue}");
        }
    }

    /// Goal: the RPCs that carry the most data can finish within the time openraft gives them,
    /// whatever the batch size (openraft allows one `heartbeat_interval` per append-entries and
    /// `install_snapshot_timeout` per snapshot chunk).
    #[test]
    fn large_rpcs_fit_their_timeouts() {
        for heartbeat_ms in [50, 200, 1000] {
            for batch in [1, 64, 512, PUBLISH_BATCH_MAX_LIMIT] {
                let settings = Settings {
                    publish_batch_max: batch,
                    heartbeat_interval: Duration::from_millis(heartbeat_ms),
                    election_timeout_min: Duration::from_millis(heartbeat_ms * 5),
                    election_timeout_max: Duration::from_millis(heartbeat_ms * 10),
                    ..Settings::default()
                };
                let config = settings.openraft_config().expect("valid");
                let append_bytes = config.max_payload_entries as usize * settings.entry_bytes_max();
                // At most ≈ 335 Mbit/s of the time openraft allows, or a single entry.
                let bytes_per_ms = append_bytes / heartbeat_ms as usize;
                assert!(config.max_payload_entries >= 1);
                assert!(
                    bytes_per_ms <= 42_000 || config.max_payload_entries == 1,
                    "heartbeat {heartbeat_ms} ms, batch {batch}: {append_bytes} bytes per append"
                );
                assert!(settings.peer_body_max() >= append_bytes, "batch {batch}");
                assert!(config.install_snapshot_timeout >= 10_000);
                assert!(SNAPSHOT_CHUNK_TIMEOUT >= Duration::from_secs(10));
                assert!(SNAPSHOT_INSTALL_TIMEOUT > SNAPSHOT_CHUNK_TIMEOUT);
            }
        }
        let small_entries = Settings {
            publish_batch_max: 1,
            ..Settings::default()
        };
        assert_eq!(
            small_entries
                .openraft_config()
                .expect("valid")
                .max_payload_entries,
            ENTRIES_PER_APPEND_MAX
        );
    }

    #[test]
    fn election_timeout_below_heartbeat_is_refused() {
        let settings = Settings {
            election_timeout_min: Duration::from_millis(100),
            election_timeout_max: Duration::from_millis(150),
            ..Settings::default()
        };
        assert!(settings.openraft_config().is_err());
    }
}
