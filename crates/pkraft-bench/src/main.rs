//! `pkraft-bench`: the load generator behind `make bench` (see docs/BENCHMARKS.md).
//!
//! ```text
//! pkraft-bench gen --keys 20000 --versions 4 --out data.bin
//! pkraft-bench put --data data.bin --version 1 --url http://127.0.0.1:8080/pkarr --concurrency 64
//! pkraft-bench get --data data.bin --url http://127.0.0.1:8080/pkarr --concurrency 64 --requests 100000
//! pkraft-bench queries --data data.bin --origin pkarr.test --queries q.txt --zone pkarr.test.zone
//! pkraft-bench dns --data data.bin --server 127.0.0.1:5300 --concurrency 20 --seconds 10
//! pkraft-bench lag --data data.bin --version 2 --put-url http://127.0.0.1:8080/pkarr --dns 127.0.0.1:5300
//! pkraft-bench accept --data data.bin --version 3 --key 0 --url http://127.0.0.1:8080/pkarr
//! pkraft-bench gaps --data data.bin --version 3 --first-key 100 --url http://127.0.0.1:8082/pkarr --seconds 4
//! pkraft-bench delay-proxy --listen 127.0.0.1:7001 --upstream 127.0.0.1:7000 --delay-ms 40 --jitter-ms 10
//! pkraft-bench slowloris --target 127.0.0.1:8080 --connections 2000 --sources 8 --seconds 15
//! pkraft-bench udp-flood --data data.bin --server 127.0.0.1:5300 --seconds 10 [--networks 10000 --edns 4096]
//! pkraft-bench steady --data data.bin --put-url http://127.0.0.1:8081/pkarr --get-url http://127.0.0.1:8082/pkarr --dns 127.0.0.1:5303 --stored-keys 1000 --first-key 1000
//! pkraft-bench conn-flood --target 127.0.0.1:5300 --connections 5000 --block 11 --mode dns
//! pkraft-bench label-flood --target 127.0.0.1:8080 --requests 100000 --block 20
//! pkraft-bench verify --data data.bin --rounds 5
//! pkraft-bench partitions --pkraft target/release/pkraft --data data.bin --work /tmp/p --trials 20
//! pkraft-bench dht-testnet --nodes 10 --data data.bin --first-key 0 --count 100 --bootstrap-out b.txt
//! pkraft-bench dht-resolve --data data.bin --first-key 0 --count 100 --server 127.0.0.1:5300
//! pkraft-bench free-ports --count 4 --taken ports.txt
//! pkraft-bench cluster up --pkraft target/release/pkraft --work /tmp/c --nodes 3 --secret S
//! pkraft-bench cluster start --pkraft target/release/pkraft --work /tmp/c 2
//! pkraft-bench cluster settled --admin 127.0.0.1:9001 --voters 3
//! pkraft-bench cluster leader --admin 127.0.0.1:9001
//! pkraft-bench cluster down --work /tmp/c
//! ```
//! `put`, `get` and `dns` take `--source IP` to send from another loopback address (another
//! client to the server's limits); `get --distinct-forwarded-for` claims a new client address in
//! `X-Forwarded-For` with every request, as a proxy would for a million clients.
//! Every measuring command prints one JSON object on stdout.

mod accept;
mod admission;
mod cluster;
mod conn_flood;
mod dataset;
mod delay_proxy;
mod dht;
mod dns_diff;
mod dns_files;
mod dns_load;
mod gaps;
mod http_load;
mod label_flood;
mod lag;
mod partitions;
mod slowloris;
mod stats;
mod steady;
mod udp_flood;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use hyper::Method;
use pkraft_testkit::node::{LIMITS_OFF_TOML, Listening, Membership};

use crate::dataset::{DataSet, Records};
use crate::http_load::Job;

#[derive(Debug, Parser)]
#[command(
    name = "pkraft-bench",
    about = "Load generator for pkarr relays and DNS servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sign KEYS × VERSIONS iroh-style packets (from SEED) and write them to OUT.
    Gen {
        #[arg(long)]
        keys: usize,
        #[arg(long, default_value_t = 4)]
        versions: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Timestamp of version 0 in µs since the Unix epoch (default: now). Version v is v s later.
        #[arg(long)]
        base_time_micros: Option<u64>,
        /// The first LARGE_KEYS keys get 16 `addr=` strings instead of 2: answers of about 800
        /// bytes, which UDP without EDNS must truncate.
        #[arg(long, default_value_t = 0)]
        large_keys: usize,
        /// `unchanged`: every version of a key carries the same records (iroh's republish),
        /// under a new timestamp; the default gives each version records of its own.
        #[arg(long, value_enum, default_value_t = Records::NewEachVersion)]
        records: Records,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write version VERSION of every key to OUT, one line each: `<z32> <payload in hex>` (the
    /// packets a fixture's store should hold, for tests to compare against).
    Payloads {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        version: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// PUT version VERSION of every key once; prints a JSON summary.
    Put {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        version: usize,
        /// Base URL of a relay, e.g. http://127.0.0.1:8080/pkarr; repeat to spread the load.
        #[arg(long = "url", required = true)]
        urls: Vec<String>,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Local address to send from.
        #[arg(long)]
        source: Option<IpAddr>,
        /// A PUT answered 429 is sent again after the delay its Retry-After names, as an
        /// honest client does (the summary counts the refusals followed and the longest wait).
        #[arg(long)]
        follow_retry_after: bool,
    },
    /// GET REQUESTS keys (cycling through the data set); prints a JSON summary.
    Get {
        #[arg(long)]
        data: PathBuf,
        #[arg(long = "url", required = true)]
        urls: Vec<String>,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 100_000)]
        requests: usize,
        /// Local address to send from.
        #[arg(long)]
        source: Option<IpAddr>,
        /// Every request claims another client in `X-Forwarded-For` (2001:db8:<n>::1).
        #[arg(long)]
        distinct_forwarded_for: bool,
        /// `?consistency=linearizable` on every GET (the read barrier through the leader).
        #[arg(long)]
        linearizable: bool,
    },
    /// Write a dnsperf query file and a zone file with the records of VERSION.
    Queries {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        origin: String,
        #[arg(long, default_value_t = 0)]
        version: usize,
        #[arg(long)]
        queries: PathBuf,
        #[arg(long)]
        zone: PathBuf,
    },
    /// Closed-loop DNS load with latency percentiles: CONCURRENCY clients each send one
    /// `_iroh.<z32>.<origin> TXT` query at a time for SECONDS; prints a JSON summary.
    Dns {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        server: SocketAddr,
        #[arg(long, default_value = "pkarr.test")]
        origin: String,
        #[arg(long, default_value_t = 20)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Local address to send from (default 127.0.0.1).
        #[arg(long)]
        source: Option<IpAddr>,
        /// Pause between one client's queries (a paced, well-behaved client).
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
    },
    /// Send `_iroh.<z32>.<origin> TXT` queries from SOURCE (or from NETWORKS networks) as fast
    /// as the sockets take them for SECONDS, without waiting for answers; count what comes back.
    UdpFlood {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        server: SocketAddr,
        #[arg(long, default_value = "pkarr.test")]
        origin: String,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value = "127.0.0.1", conflicts_with = "networks")]
        source: IpAddr,
        /// Send from this many networks, one socket each (127.<BLOCK + n/256>.<n%256>.2: a /24
        /// each).
        #[arg(long)]
        networks: Option<usize>,
        #[arg(long, default_value_t = 100)]
        block: u8,
        /// An EDNS record with this buffer size in every query.
        #[arg(long)]
        edns: Option<u16>,
        /// Well-behaved resolvers ask one query each every this many milliseconds meanwhile,
        /// and their answers are reported.
        #[arg(long)]
        resolver_every_ms: Option<u64>,
        /// How many resolvers: one on 127.0.0.1, or with more, one on 127.0.<n>.1 each (a /24
        /// each).
        #[arg(long, default_value_t = 1, requires = "resolver_every_ms")]
        resolvers: u8,
        /// Send at most this many queries a second in all (default: as fast as they go).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        rate: Option<u64>,
    },
    /// Time pkraft's packet check (`VerifiedPacket::verify_stored`: signature, timestamp, DNS
    /// parse, from the key's bytes as a forwarded packet carries them) over every packet of
    /// DATA, ROUNDS times; then the ed25519 check alone (keys decompressed beforehand), one
    /// signature at a time as pkarr checks it and in batches of each BATCH
    /// (`ed25519_dalek::verify_batch`). Prints the microseconds per packet of each round, and the
    /// ed25519 arithmetic in use (`ed25519_arithmetic`: AVX-512 IFMA, AVX2 or portable).
    Verify {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Batch sizes of the batch check.
        #[arg(long, value_delimiter = ',', default_values_t = [8, 16, 32, 64],
              value_parser = clap::value_parser!(u16).range(1..))]
        batch: Vec<u16>,
    },
    /// Silent and one-way partitions beside kills, on 3 nodes of PKRAFT in network namespaces
    /// (needs root, ip, iptables): TRIALS kills and black-holed leaders, ONE_WAY_TRIALS of each
    /// one-way cut, then REJOIN_RUNS followers cut off for REJOIN_SECONDS; each trial times the
    /// first PUT accepted through a survivor. DATA needs 2 versions and enough keys (every
    /// trial and every write of the rejoin load takes a new one). Prints a JSON report.
    Partitions {
        #[arg(long)]
        pkraft: PathBuf,
        #[arg(long)]
        data: PathBuf,
        /// Directory for the nodes' configs and data dirs.
        #[arg(long)]
        work: PathBuf,
        #[arg(long, default_value_t = 20)]
        trials: usize,
        #[arg(long, default_value_t = 5)]
        one_way_trials: usize,
        #[arg(long, default_value_t = 3)]
        rejoin_runs: usize,
        #[arg(long, default_value_t = 30.0)]
        rejoin_seconds: f64,
        /// Lines for every node's `[raft]` section (`pre_vote = false`).
        #[arg(long, default_value = "")]
        raft: String,
    },
    /// A well-behaved client: RATE paced operations per second of each kind from SOURCE for
    /// SECONDS (PUT new keys from FIRST_KEY on through PUT_URL, GET the first STORED_KEYS from
    /// GET_URL, ask DNS over UDP for them); prints what was answered and how fast.
    Steady {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        put_url: String,
        #[arg(long)]
        get_url: String,
        #[arg(long)]
        dns: SocketAddr,
        #[arg(long, default_value = "pkarr.test")]
        origin: String,
        #[arg(long)]
        stored_keys: usize,
        #[arg(long)]
        first_key: usize,
        #[arg(long, default_value_t = 20)]
        rate: u32,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value = "127.0.0.1")]
        source: IpAddr,
    },
    /// Issue 50's admission scenario for SECONDS: REPUBLISHERS addresses 127.REPUBLISH_BLOCK.x.y
    /// each PUT VERSION of its share of STORED's keys at one a second, while (with FLOOD)
    /// FLOOD_SOURCES addresses 127.FLOOD_BLOCK.x.y PUT FLOOD's keys (version 0, or versions
    /// FLOOD_FROM_VERSION..) as fast as FLOOD_CONCURRENCY connections can; prints what each
    /// side got.
    Admission {
        #[arg(long)]
        stored: PathBuf,
        #[arg(long)]
        version: usize,
        #[arg(long)]
        flood: Option<PathBuf>,
        /// Relay base URL; repeat to spread the load.
        #[arg(long = "url", required = true)]
        urls: Vec<String>,
        #[arg(long, default_value_t = 64)]
        republishers: usize,
        #[arg(long, default_value_t = 3)]
        republish_block: u8,
        /// The flood PUTs versions FLOOD_FROM_VERSION.. of its keys, version after version
        /// (changes of keys stored before); 0: version 0 only (new keys).
        #[arg(long, default_value_t = 0)]
        flood_from_version: usize,
        #[arg(long, default_value_t = 256)]
        flood_sources: usize,
        #[arg(long, default_value_t = 2)]
        flood_block: u8,
        /// Flood sources per /24: 256 (127.BLOCK.x.0 to .255), or at most 254 (from .2 on).
        #[arg(long, default_value_t = 250)]
        flood_per_network: usize,
        /// The flood comes from this address, a trusted proxy naming FLOOD_SOURCES (at most
        /// 256) clients of one IPv6 /48 (a /56 each, 2001:db8:50:<n << 8>::1) in
        /// X-Forwarded-For.
        #[arg(long, value_name = "PROXY")]
        flood_forwarded_v6: Option<IpAddr>,
        #[arg(long, default_value_t = 64)]
        flood_concurrency: usize,
        #[arg(long, default_value_t = 25)]
        seconds: u64,
        /// Reads instead of writes: the well-behaved addresses GET their keys and ask for them
        /// over DoH (and UDP with --dns), the flood GETs the stored keys and asks for them over
        /// DoH (no --flood file).
        #[arg(long, conflicts_with = "flood")]
        resolve: bool,
        /// With --resolve: the zone the `_iroh` names are in.
        #[arg(long, default_value = "pkarr.test")]
        origin: String,
        /// With --resolve: a node's DNS address, for one UDP query a second from each
        /// well-behaved address; repeat to spread them.
        #[arg(long = "dns", requires = "resolve")]
        dns: Vec<SocketAddr>,
    },
    /// Hold CONNECTIONS connections to TARGET from SOURCES addresses 127.BLOCK.x.y for SECONDS,
    /// each behaving as MODE says and opened again when the server closes it.
    ConnFlood {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        connections: usize,
        #[arg(long, default_value_t = 50)]
        sources: usize,
        #[arg(long)]
        block: u8,
        #[arg(long, value_enum)]
        mode: conn_flood::Mode,
        /// The pause between a connection's keep-alive sends (slowloris bytes, DNS queries,
        /// health checks).
        #[arg(long, default_value_t = 5_000)]
        every_ms: u64,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// REQUESTS HTTP requests to TARGET with made-up methods, paths and headers, each on its own
    /// connection from one of SOURCES addresses 127.BLOCK.x.y, CONCURRENCY at a time.
    LabelFlood {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 100_000)]
        requests: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 1_000)]
        sources: usize,
        #[arg(long)]
        block: u8,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Hold CONNECTIONS half-sent HTTP requests (from SOURCES addresses 127.0.10.x), adding one
    /// header byte every TRICKLE_MS, for at most SECONDS; reports how the server closed them.
    Slowloris {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 1_000)]
        connections: usize,
        #[arg(long, default_value_t = 8)]
        sources: usize,
        #[arg(long, default_value_t = 500)]
        trickle_ms: u64,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Send the same query set (names around the first KEYS keys, apex, out of zone; UDP with
    /// and without EDNS, TCP) to SERVER and to REFERENCE (NSD serving the zone file of `queries`)
    /// and report every answer that differs; exits 1 if a difference is not listed as intended.
    DnsDiff {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        server: SocketAddr,
        #[arg(long)]
        reference: SocketAddr,
        #[arg(long, default_value = "pkarr.test")]
        origin: String,
        #[arg(long, default_value_t = 3)]
        keys: usize,
    },
    /// PUT VERSION of the first SAMPLES keys to PUT_URL and time until each DNS address serves it.
    Lag {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        version: usize,
        #[arg(long)]
        put_url: String,
        #[arg(long = "dns", required = true)]
        dns: Vec<SocketAddr>,
        #[arg(long, default_value = "pkarr.test")]
        origin: String,
        #[arg(long, default_value_t = 200)]
        samples: usize,
    },
    /// Runs a local Mainline DHT of NODES nodes on 127.0.0.1 with keys FIRST_KEY.. (COUNT of
    /// them, version VERSION) put to it only; writes its bootstrap list to BOOTSTRAP_OUT, prints
    /// a JSON report, and stays up for SECONDS or until SIGTERM.
    DhtTestnet {
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 0)]
        version: usize,
        #[arg(long, default_value_t = 0)]
        first_key: usize,
        #[arg(long, default_value_t = 0)]
        count: usize,
        #[arg(long)]
        bootstrap_out: PathBuf,
        #[arg(long, default_value_t = 3600)]
        seconds: u64,
    },
    /// Asks SERVER for `_iroh.<key>.ORIGIN` TXT of COUNT keys from FIRST_KEY, one query at a
    /// time (each key once); prints answer time percentiles and rcodes.
    DhtResolve {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 0)]
        first_key: usize,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        server: SocketAddr,
        #[arg(long, default_value = "pkarr.test")]
        origin: String,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// PUT VERSION of key KEY to URL until it is accepted (204), retrying refusals (503, no
    /// connection) for up to TIMEOUT_SECS; prints the time to acceptance. Failover trials run it
    /// right after killing the leader.
    Accept {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        version: usize,
        #[arg(long)]
        key: usize,
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
        /// Count the time from this moment (ms since the Unix epoch, e.g. `date +%s%3N` right
        /// after the kill) rather than from this command's first attempt.
        #[arg(long)]
        since_unix_ms: Option<u64>,
    },
    /// Proxy TCP from LISTEN to UPSTREAM, delivering every chunk DELAY_MS ± JITTER_MS later in
    /// each direction (a long link on loopback); runs until stopped.
    DelayProxy {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
        #[arg(long)]
        delay_ms: u64,
        #[arg(long, default_value_t = 0)]
        jitter_ms: u64,
    },
    /// PUT a steady stream of new packets (version VERSION of keys from FIRST_KEY on) through the
    /// URLs for SECONDS; print the longest run without an acknowledgement.
    Gaps {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        version: usize,
        #[arg(long, default_value_t = 0)]
        first_key: usize,
        #[arg(long = "url", required = true)]
        urls: Vec<String>,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        #[arg(long)]
        seconds: f64,
        /// Write the z32 key of every acknowledged PUT to this file, one per line.
        #[arg(long)]
        acked_out: Option<PathBuf>,
    },
    /// Print COUNT ports free on 127.0.0.1 for TCP and UDP (space-separated, one line), below
    /// the kernel's ephemeral range; with --taken FILE none listed there, and they are added.
    FreePorts {
        #[arg(long, default_value_t = 1)]
        count: usize,
        #[arg(long)]
        taken: Option<PathBuf>,
    },
    /// Print the TOML that turns pkraft's abuse limits off (HTTP rate limits, DNS response rate
    /// limiting), for load from one loopback address; the scripts append it to their configs.
    LimitsOffToml,
    /// A local cluster of `pkraft serve` processes for the scripts (tests/lib/pkraft.sh).
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

/// What `cluster up` and `cluster config` add to a node's config.
#[derive(Debug, clap::Args)]
struct ConfigExtras {
    /// `dns.origins` (default: pkraft's default).
    #[arg(long)]
    origin: Option<String>,
    /// A file of whole TOML sections appended to the config (repeatable).
    #[arg(long)]
    extra_toml: Vec<PathBuf>,
    /// Rate limits and DNS response rate limiting off (load from one address).
    #[arg(long)]
    limits_off: bool,
    /// One setting, `SECTION.KEY=VALUE` (`http.max_connections=2048`,
    /// `dns.rrl.global_bytes_per_second=1000000`), written into its section (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    settings: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Write configs for nodes 1..=NODES in WORK (node 1 bootstraps, the others join as
    /// voters), start them and wait until settled; print `id pid http_url dns_port admin peer
    /// https_port|- log` per node.
    Up {
        #[arg(long)]
        pkraft: PathBuf,
        #[arg(long)]
        work: PathBuf,
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        #[arg(long)]
        secret: String,
        #[command(flatten)]
        extras: ConfigExtras,
        /// An HTTPS (DoH) listener on every node with this certificate (needs --https-key).
        #[arg(long, requires = "https_key")]
        https_cert: Option<PathBuf>,
        #[arg(long, requires = "https_cert")]
        https_key: Option<PathBuf>,
        /// Every node's peer traffic through a `delay-proxy` adding this many ms each way.
        #[arg(long)]
        peer_delay_ms: Option<u64>,
        #[arg(long, default_value_t = 0, requires = "peer_delay_ms")]
        peer_jitter_ms: u64,
        /// Ports handed out earlier in the run (see `free-ports`).
        #[arg(long)]
        taken: Option<PathBuf>,
    },
    /// Write the config of one node on fixed loopback ports to OUT, with the writer `up` uses,
    /// for a script that starts its node itself (tests/bench/scale.sh): it bootstraps a new
    /// cluster, or joins through --join as a voter (as a learner with --learner).
    Config {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        id: u64,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        http: SocketAddr,
        #[arg(long)]
        dns: SocketAddr,
        #[arg(long)]
        peer: SocketAddr,
        #[arg(long)]
        admin: SocketAddr,
        #[arg(long)]
        secret: String,
        /// The peer address of a member to join through (default: bootstrap a new cluster).
        #[arg(long)]
        join: Option<String>,
        #[arg(long, requires = "join")]
        learner: bool,
        #[command(flatten)]
        extras: ConfigExtras,
    },
    /// Stop every process started for the cluster in WORK (SIGTERM to each process group,
    /// SIGKILL half a second later).
    Down {
        #[arg(long)]
        work: PathBuf,
    },
    /// (Re)start node ID from its config in WORK, on its ports; print its line.
    Start {
        #[arg(long)]
        pkraft: PathBuf,
        #[arg(long)]
        work: PathBuf,
        id: u64,
    },
    /// Wait until the cluster the node with admin listener ADMIN is in has a leader that
    /// confirms it, VOTERS voters and a settled membership they all applied; print the leader.
    Settled {
        #[arg(long)]
        admin: SocketAddr,
        #[arg(long)]
        voters: u64,
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Print the leader the node with admin listener ADMIN knows of, if it confirms it leads
    /// (exit status 1 if none).
    Leader {
        #[arg(long)]
        admin: SocketAddr,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::FreePorts { count, taken } => {
            let ports = cluster::free_ports_avoiding(count, taken.as_deref())?;
            let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
            println!("{}", ports.join(" "));
        }
        Command::LimitsOffToml => print!("{LIMITS_OFF_TOML}"),
        Command::Cluster(command) => run_cluster(command).await?,
        Command::Gen {
            keys,
            versions,
            seed,
            base_time_micros,
            large_keys,
            records,
            out,
        } => {
            let base = match base_time_micros {
                Some(base) => base,
                None => pkarr::Timestamp::now().as_u64(),
            };
            let data = DataSet::generate(keys, versions, seed, base, large_keys, records)?;
            data.write(&out)?;
            eprintln!(
                "wrote {keys} keys × {versions} versions to {}",
                out.display()
            );
        }
        Command::Payloads { data, version, out } => {
            let data = DataSet::read(&data)?;
            data.check_version(version)?;
            let mut lines = String::new();
            for key in &data.keys {
                let hex: String = key.versions[version]
                    .payload
                    .iter()
                    .map(|byte| format!("{byte:02x}"))
                    .collect();
                lines.push_str(&format!("{} {hex}\n", key.z32));
            }
            std::fs::write(&out, lines).with_context(|| format!("write {}", out.display()))?;
        }
        Command::Put {
            data,
            version,
            urls,
            concurrency,
            source,
            follow_retry_after,
        } => {
            let data = DataSet::read(&data)?;
            data.check_version(version)?;
            let jobs = data
                .keys
                .iter()
                .map(|key| Job {
                    method: Method::PUT,
                    path: format!("/{}", key.z32),
                    body: Bytes::from(key.versions[version].payload.clone()),
                    forwarded_for: None,
                })
                .collect();
            print(
                &http_load::run("put", &urls, concurrency, jobs, source, follow_retry_after)
                    .await?,
            )?;
        }
        Command::Get {
            data,
            urls,
            concurrency,
            requests,
            source,
            distinct_forwarded_for,
            linearizable,
        } => {
            let data = DataSet::read(&data)?;
            anyhow::ensure!(!data.keys.is_empty(), "the data set has no keys");
            let query = if linearizable {
                "?consistency=linearizable"
            } else {
                ""
            };
            let jobs = (0..requests)
                .map(|i| Job {
                    method: Method::GET,
                    path: format!("/{}{query}", data.keys[i % data.keys.len()].z32),
                    body: Bytes::new(),
                    forwarded_for: distinct_forwarded_for.then(|| {
                        let n = u128::try_from(i).unwrap_or(u128::MAX);
                        IpAddr::V6(std::net::Ipv6Addr::from_bits(
                            (0x2001_0db8_u128 << 96) | (n << 64) | 1,
                        ))
                    }),
                })
                .collect();
            print(&http_load::run("get", &urls, concurrency, jobs, source, false).await?)?;
        }
        Command::Queries {
            data,
            origin,
            version,
            queries,
            zone,
        } => {
            let data = DataSet::read(&data)?;
            data.check_version(version)?;
            std::fs::write(&queries, dns_files::dnsperf_queries(&data, &origin))
                .with_context(|| format!("write {}", queries.display()))?;
            std::fs::write(&zone, dns_files::zone_file(&data, &origin, version))
                .with_context(|| format!("write {}", zone.display()))?;
        }
        Command::Dns {
            data,
            server,
            origin,
            concurrency,
            seconds,
            source,
            interval_ms,
        } => {
            let names = iroh_names(&DataSet::read(&data)?, &origin)?;
            let duration = std::time::Duration::from_secs(seconds);
            let interval = std::time::Duration::from_millis(interval_ms);
            let load = dns_load::Load {
                concurrency,
                duration,
                source,
                interval,
            };
            print(&dns_load::run(server, names, load).await?)?;
        }
        Command::UdpFlood {
            data,
            server,
            origin,
            seconds,
            source,
            networks,
            block,
            edns,
            resolver_every_ms,
            resolvers,
            rate,
        } => {
            let names = iroh_names(&DataSet::read(&data)?, &origin)?;
            let resolver = resolver_every_ms.map(|ms| udp_flood::Resolver {
                sources: match resolvers {
                    0 | 1 => vec![IpAddr::from([127, 0, 0, 1])],
                    n => (1..=n).map(|n| IpAddr::from([127, 0, n, 1])).collect(),
                },
                every: std::time::Duration::from_millis(ms.max(1)),
            });
            let duration = std::time::Duration::from_secs(seconds);
            let sources = match networks {
                Some(count) => udp_flood::Sources::Networks { count, block },
                None => udp_flood::Sources::One(source),
            };
            print(&udp_flood::run(server, names, duration, sources, edns, resolver, rate).await?)?;
        }
        Command::Partitions {
            pkraft,
            data,
            work,
            trials,
            one_way_trials,
            rejoin_runs,
            rejoin_seconds,
            raft,
        } => {
            let data = DataSet::read(&data)?;
            let rejoin_isolation = std::time::Duration::try_from_secs_f64(rejoin_seconds)
                .map_err(|e| anyhow::anyhow!("--rejoin-seconds {rejoin_seconds}: {e}"))?;
            let spec = partitions::PartitionSpec {
                pkraft: &pkraft,
                data: &data,
                work: &work,
                trials,
                one_way_trials,
                rejoin_runs,
                rejoin_isolation,
                raft_extra: &raft,
            };
            let lab = pkraft_testkit::netns::NetnsLab::create(3).map_err(anyhow::Error::msg)?;
            // This process's sockets must be in the lab's client namespace: a thread of its
            // own enters it and runs the trials on a runtime of its own.
            let report = std::thread::scope(|scope| {
                scope
                    .spawn(|| -> anyhow::Result<_> {
                        lab.enter_client().map_err(anyhow::Error::msg)?;
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()?
                            .block_on(partitions::run(&lab, spec))
                    })
                    .join()
            })
            .map_err(|_| anyhow::anyhow!("the partition trials panicked"))??;
            print(&report)?;
        }
        Command::Verify {
            data,
            rounds,
            batch,
        } => print(&verify_cost(&DataSet::read(&data)?, rounds, &batch)?)?,
        Command::Steady {
            data,
            put_url,
            get_url,
            dns,
            origin,
            stored_keys,
            first_key,
            rate,
            seconds,
            source,
        } => {
            let data = DataSet::read(&data)?;
            let spec = steady::Spec {
                data: &data,
                put_url: &put_url,
                get_url: &get_url,
                dns,
                origin: &origin,
                stored_keys,
                first_key,
                rate,
                duration: std::time::Duration::from_secs(seconds),
                source,
            };
            print(&steady::run(spec).await?)?;
        }
        Command::Admission {
            stored,
            version,
            flood,
            urls,
            republishers,
            republish_block,
            flood_from_version,
            flood_sources,
            flood_block,
            flood_per_network,
            flood_forwarded_v6,
            flood_concurrency,
            seconds,
            resolve,
            origin,
            dns,
        } => {
            let stored = DataSet::read(&stored)?;
            let flood = flood.map(|path| DataSet::read(&path)).transpose()?;
            let names = if resolve {
                iroh_names(&stored, &origin)?
            } else {
                Vec::new()
            };
            let spec = admission::Spec {
                stored: &stored,
                version,
                flood: flood.as_ref(),
                flood_from_version,
                urls: &urls,
                flood_sources: (0..flood_sources)
                    .map(|n| conn_flood::source_in(flood_block, n, flood_per_network))
                    .collect::<anyhow::Result<_>>()?,
                flood_forwarded_v6,
                flood_concurrency,
                republishers: (0..republishers)
                    .map(|n| conn_flood::source(republish_block, n))
                    .collect(),
                duration: std::time::Duration::from_secs(seconds),
                resolve,
                names,
                dns,
            };
            print(&admission::run(spec).await?)?;
        }
        Command::ConnFlood {
            target,
            connections,
            sources,
            block,
            mode,
            every_ms,
            seconds,
        } => {
            let spec = conn_flood::Spec {
                target,
                connections,
                sources,
                block,
                mode,
                every: std::time::Duration::from_millis(every_ms),
                duration: std::time::Duration::from_secs(seconds),
            };
            print(&conn_flood::run(spec).await?)?;
        }
        Command::LabelFlood {
            target,
            requests,
            concurrency,
            sources,
            block,
            seed,
        } => {
            let spec = label_flood::Spec {
                target,
                requests,
                concurrency,
                sources,
                block,
                seed,
            };
            print(&label_flood::run(spec).await?)?;
        }
        Command::DnsDiff {
            data,
            server,
            reference,
            origin,
            keys,
        } => {
            let data = DataSet::read(&data)?;
            let report =
                dns_diff::run(server, reference, dns_diff::cases(&data, &origin, keys)).await?;
            let unexpected = report.unexpected();
            eprintln!(
                "dns-diff: {} cases, {} identical, {} different ({} not intended)",
                report.cases,
                report.identical,
                report.differences.len(),
                unexpected
            );
            print(&report)?;
            anyhow::ensure!(
                unexpected == 0,
                "{unexpected} answers differ from the reference"
            );
        }
        Command::DhtTestnet {
            nodes,
            data,
            version,
            first_key,
            count,
            bootstrap_out,
            seconds,
        } => {
            let data = DataSet::read(&data)?;
            let keys = first_key..first_key + count;
            dht::testnet(nodes, &data, version, keys, &bootstrap_out, seconds).await?;
        }
        Command::DhtResolve {
            data,
            first_key,
            count,
            server,
            origin,
            timeout_ms,
        } => {
            let data = DataSet::read(&data)?;
            let keys = first_key..first_key + count;
            let timeout = std::time::Duration::from_millis(timeout_ms);
            print(&dht::resolve(&data, keys, server, &origin, timeout).await?)?;
        }
        Command::Lag {
            data,
            version,
            put_url,
            dns,
            origin,
            samples,
        } => {
            let data = DataSet::read(&data)?;
            let spec = lag::LagSpec {
                data: &data,
                version,
                put_url: &put_url,
                dns: &dns,
                origin: &origin,
                samples,
            };
            print(&lag::run(spec).await?)?;
        }
        Command::Slowloris {
            target,
            connections,
            sources,
            trickle_ms,
            seconds,
        } => {
            let trickle = std::time::Duration::from_millis(trickle_ms);
            let duration = std::time::Duration::from_secs(seconds);
            print(&slowloris::run(target, connections, sources, trickle, duration).await?)?;
        }
        Command::Accept {
            data,
            version,
            key,
            url,
            timeout_secs,
            since_unix_ms,
        } => {
            let data = DataSet::read(&data)?;
            let spec = accept::AcceptSpec {
                data: &data,
                version,
                key,
                url: &url,
                timeout: std::time::Duration::from_secs(timeout_secs),
                since_unix_ms,
            };
            print(&accept::run(spec).await?)?;
        }
        Command::DelayProxy {
            listen,
            upstream,
            delay_ms,
            jitter_ms,
        } => {
            anyhow::ensure!(
                jitter_ms <= delay_ms,
                "--jitter-ms must not exceed --delay-ms"
            );
            let delay = delay_proxy::Delay {
                base: std::time::Duration::from_millis(delay_ms),
                jitter: std::time::Duration::from_millis(jitter_ms),
            };
            delay_proxy::run(listen, upstream, delay).await?;
        }
        Command::Gaps {
            data,
            version,
            first_key,
            urls,
            concurrency,
            seconds,
            acked_out,
        } => {
            let data = DataSet::read(&data)?;
            let duration = std::time::Duration::try_from_secs_f64(seconds)
                .map_err(|e| anyhow::anyhow!("--seconds {seconds}: {e}"))?;
            let spec = gaps::GapSpec {
                data: &data,
                version,
                first_key,
                urls: &urls,
                concurrency,
                duration,
                acked_out: acked_out.as_deref(),
            };
            print(&gaps::run(spec).await?)?;
        }
    }
    Ok(())
}

/// `_iroh.<z32>.<origin>.` for every key of `data`.
fn iroh_names(data: &DataSet, origin: &str) -> anyhow::Result<Vec<hickory_proto::rr::Name>> {
    let origin = origin.trim_end_matches('.');
    Ok(data
        .keys
        .iter()
        .map(|key| hickory_proto::rr::Name::from_ascii(format!("_iroh.{}.{origin}.", key.z32)))
        .collect::<Result<Vec<_>, _>>()?)
}

/// Prints one JSON line; a closed stdout is an error, not a panic.
fn print(report: &impl serde::Serialize) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", serde_json::to_string(report)?).context("write to stdout")?;
    Ok(())
}

impl ConfigExtras {
    /// The additions these flags ask for, with the `--extra-toml` files read (each ends in a
    /// newline).
    fn additions(&self) -> anyhow::Result<cluster::Additions<'_>> {
        let mut extra_toml = String::new();
        for path in &self.extra_toml {
            extra_toml.push_str(
                &std::fs::read_to_string(path)
                    .with_context(|| format!("read {}", path.display()))?,
            );
            extra_toml.push('\n');
        }
        let settings = self
            .settings
            .iter()
            .map(|setting| parse_setting(setting))
            .collect::<anyhow::Result<_>>()?;
        Ok(cluster::Additions {
            origin: self.origin.as_deref(),
            extra_toml,
            limits_off: self.limits_off,
            settings,
        })
    }
}

/// Microseconds per packet of `VerifiedPacket::verify_stored` over `data`, per round.
fn verify_cost(
    data: &DataSet,
    rounds: usize,
    batches: &[u16],
) -> anyhow::Result<serde_json::Value> {
    let packets: Vec<([u8; 32], Bytes)> = data
        .keys
        .iter()
        .flat_map(|key| {
            key.versions.iter().map(|version| {
                let public: pkarr::PublicKey = key.z32.as_str().try_into()?;
                Ok((public.to_bytes(), Bytes::from(version.payload.clone())))
            })
        })
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!packets.is_empty(), "no packets in the data set");
    verify_cost_of(&packets, rounds, batches)
}

/// [`verify_cost`] over `packets` (each key's bytes and a payload).
fn verify_cost_of(
    packets: &[([u8; 32], Bytes)],
    rounds: usize,
    batches: &[u16],
) -> anyhow::Result<serde_json::Value> {
    let per_packet_us = time_rounds(rounds, packets.len(), || {
        for (key, payload) in packets {
            pkraft_types::VerifiedPacket::verify_stored(key, payload.clone())?;
        }
        Ok(())
    })?;
    // pkarr's `PublicKey::verify` is this trait's `verify` (not `verify_strict`).
    use ed25519_dalek::Verifier as _;
    let signatures = signature_checks(packets)?;
    let single_us = time_rounds(rounds, signatures.len(), || {
        for check in &signatures {
            check.key.verify(&check.message, &check.signature)?;
        }
        Ok(())
    })?;
    // The same checks under ZIP 215's cofactored rule (docs/BENCHMARKS.md, "Batch signature
    // checks"), where a batch accepts exactly what single checks accept.
    let cofactored = cofactored_checks(packets)?;
    let cofactored_single_us = time_rounds(rounds, cofactored.len(), || {
        for check in &cofactored {
            check.key.verify(&check.signature, &check.message)?;
        }
        Ok(())
    })?;
    let mut batch_us = serde_json::Map::new();
    let mut cofactored_batch_us = serde_json::Map::new();
    for &size in batches {
        let size_key = size.to_string();
        let size = usize::from(size);
        let dalek = time_rounds(rounds, signatures.len(), || {
            for chunk in signatures.chunks(size) {
                check_batch(chunk)?;
            }
            Ok(())
        })?;
        batch_us.insert(size_key.clone(), serde_json::json!(dalek));
        let zebra = time_rounds(rounds, cofactored.len(), || {
            for chunk in cofactored.chunks(size) {
                check_cofactored_batch(chunk)?;
            }
            Ok(())
        })?;
        cofactored_batch_us.insert(size_key, serde_json::json!(zebra));
    }
    Ok(serde_json::json!({
        "op": "verify",
        "ed25519_arithmetic": pkraft_types::ed25519::arithmetic(),
        "packets": packets.len(),
        "per_packet_us": per_packet_us,
        "signature_us": single_us,
        "batch_signature_us": batch_us,
        "cofactored_signature_us": cofactored_single_us,
        "cofactored_batch_signature_us": cofactored_batch_us,
    }))
}

/// Runs `run` (which checks `items` things) `rounds` times; the microseconds per item of each.
fn time_rounds(
    rounds: usize,
    items: usize,
    mut run: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<f64>> {
    (0..rounds)
        .map(|_| {
            let started = std::time::Instant::now();
            run()?;
            Ok(started.elapsed().as_secs_f64() * 1e6 / items.max(1) as f64)
        })
        .collect()
}

/// One packet's ed25519 check under ZIP 215's rule (`ed25519-zebra`).
struct CofactoredCheck {
    key: ed25519_zebra::VerificationKey,
    message: Vec<u8>,
    signature: ed25519_zebra::Signature,
}

/// [`signature_checks`] for `ed25519-zebra`: the keys parsed beforehand.
fn cofactored_checks(packets: &[([u8; 32], Bytes)]) -> anyhow::Result<Vec<CofactoredCheck>> {
    signature_checks(packets)?
        .into_iter()
        .map(|check| {
            Ok(CofactoredCheck {
                key: ed25519_zebra::VerificationKey::try_from(check.key.to_bytes())?,
                signature: ed25519_zebra::Signature::from_bytes(&check.signature.to_bytes()),
                message: check.message,
            })
        })
        .collect()
}

/// `checks` in one `ed25519-zebra` batch, its weights from the OS's randomness.
fn check_cofactored_batch(checks: &[CofactoredCheck]) -> Result<(), ed25519_zebra::Error> {
    let mut batch = ed25519_zebra::batch::Verifier::new();
    for check in checks {
        batch.queue((
            ed25519_zebra::VerificationKeyBytes::from(check.key),
            check.signature,
            &check.message,
        ));
    }
    batch.verify(getrandom_sys_rng::rand_core::UnwrapErr(
        getrandom_sys_rng::SysRng,
    ))
}

/// One packet's ed25519 check: what pkarr's `PublicKey::verify` is given.
struct SignatureCheck {
    key: ed25519_dalek::VerifyingKey,
    message: Vec<u8>,
    signature: ed25519_dalek::Signature,
}

/// `checks` in one `ed25519_dalek::verify_batch`: fails if any signature in it is bad.
fn check_batch(checks: &[SignatureCheck]) -> Result<(), ed25519_dalek::SignatureError> {
    let messages: Vec<&[u8]> = checks.iter().map(|c| c.message.as_slice()).collect();
    let signatures: Vec<_> = checks.iter().map(|c| c.signature).collect();
    let keys: Vec<_> = checks.iter().map(|c| c.key).collect();
    ed25519_dalek::verify_batch(&messages, &signatures, &keys)
}

/// The signature checks of `packets`, their keys decompressed (the relay decompresses a key
/// once, when it parses the URL, so the check alone does not pay for it).
fn signature_checks(packets: &[([u8; 32], Bytes)]) -> anyhow::Result<Vec<SignatureCheck>> {
    use pkraft_types::payload::SIGNATURE_LEN;
    packets
        .iter()
        .map(|(key, body)| {
            let payload = pkraft_types::Payload::new(body.clone())?;
            let signature = body
                .get(..SIGNATURE_LEN)
                .context("a payload shorter than its signature")?;
            Ok(SignatureCheck {
                key: ed25519_dalek::VerifyingKey::from_bytes(key)?,
                message: pkraft_types::packet::bep44_signable(
                    payload.timestamp_micros(),
                    payload.dns_packet(),
                ),
                signature: ed25519_dalek::Signature::from_slice(signature)?,
            })
        })
        .collect()
}

/// `SECTION.KEY=VALUE` as `(SECTION, "KEY = VALUE")`; VALUE is TOML as written.
fn parse_setting(setting: &str) -> anyhow::Result<(String, String)> {
    let (path, value) = setting
        .split_once('=')
        .with_context(|| format!("--set {setting:?}: no '='"))?;
    let (section, key) = path
        .rsplit_once('.')
        .with_context(|| format!("--set {setting:?}: no SECTION. before the key"))?;
    Ok((section.to_string(), format!("{key} = {value}")))
}

async fn run_cluster(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Up {
            pkraft,
            work,
            nodes,
            secret,
            extras,
            https_cert,
            https_key,
            peer_delay_ms,
            peer_jitter_ms,
            taken,
        } => {
            anyhow::ensure!(
                peer_jitter_ms <= peer_delay_ms.unwrap_or(0),
                "--peer-jitter-ms must not exceed --peer-delay-ms"
            );
            let spec = cluster::ClusterSpec {
                pkraft: &pkraft,
                work: &work,
                nodes,
                secret: &secret,
                additions: extras.additions()?,
                https: https_cert.as_deref().zip(https_key.as_deref()),
                peer_delay: peer_delay_ms.map(|delay| (delay, peer_jitter_ms)),
                taken: taken.as_deref(),
            };
            cluster::up(&spec).await
        }
        ClusterCommand::Config {
            out,
            id,
            data_dir,
            http,
            dns,
            peer,
            admin,
            secret,
            join,
            learner,
            extras,
        } => {
            let membership = match join {
                None => Membership::Bootstrap,
                Some(seed) => Membership::Join {
                    seeds: vec![seed],
                    voter: !learner,
                },
            };
            let listen = Listening {
                http,
                dns,
                peer,
                admin,
            };
            let config = extras
                .additions()?
                .node_config(id, membership, &secret, listen, data_dir);
            std::fs::write(&out, config.to_toml())
                .with_context(|| format!("write {}", out.display()))
        }
        ClusterCommand::Down { work } => {
            cluster::down(&work);
            Ok(())
        }
        ClusterCommand::Start { pkraft, work, id } => cluster::start(&pkraft, &work, id).await,
        ClusterCommand::Settled {
            admin,
            voters,
            timeout_secs,
        } => {
            let timeout = std::time::Duration::from_secs(timeout_secs);
            println!("{}", cluster::settled(admin, voters, timeout).await?);
            Ok(())
        }
        ClusterCommand::Leader { admin } => {
            println!("{}", cluster::leader(admin).await?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packets of a small data set, as `verify_cost` reads them.
    fn packets() -> Vec<([u8; 32], Bytes)> {
        let data = DataSet::generate(12, 1, 7, 1_700_000_000_000_000, 0, Records::NewEachVersion)
            .expect("data set");
        data.keys
            .iter()
            .map(|key| {
                let public: pkarr::PublicKey = key.z32.as_str().try_into().expect("a key");
                (
                    public.to_bytes(),
                    Bytes::from(key.versions[0].payload.clone()),
                )
            })
            .collect()
    }

    #[test]
    fn the_batch_check_passes_good_signatures_and_fails_a_batch_with_a_bad_one() {
        let mut checks = signature_checks(&packets()).expect("checks");
        use ed25519_dalek::Verifier as _;
        for check in &checks {
            check
                .key
                .verify(&check.message, &check.signature)
                .expect("each signature alone");
        }
        check_batch(&checks).expect("all in one batch");
        // One packet's signed bytes changed: its batch fails, the batch without it passes.
        checks[5].message.push(b'x');
        assert!(check_batch(&checks[..8]).is_err(), "a batch holding it");
        assert!(check_batch(&checks[6..]).is_ok(), "a batch without it");
        assert!(check_batch(&checks[5..6]).is_err(), "a batch of it alone");
    }

    #[test]
    fn the_cofactored_checks_pass_good_signatures_and_fail_a_bad_one() {
        let mut checks = cofactored_checks(&packets()).expect("checks");
        for check in &checks {
            check
                .key
                .verify(&check.signature, &check.message)
                .expect("each signature alone");
        }
        check_cofactored_batch(&checks).expect("all in one batch");
        checks[5].message.push(b'x');
        assert!(
            checks[5]
                .key
                .verify(&checks[5].signature, &checks[5].message)
                .is_err()
        );
        assert!(
            check_cofactored_batch(&checks[..8]).is_err(),
            "a batch holding it"
        );
        assert!(
            check_cofactored_batch(&checks[6..]).is_ok(),
            "a batch without it"
        );
    }

    #[test]
    fn verify_reports_every_batch_size_and_fails_on_a_bad_packet() {
        let mut packets = packets();
        let data = DataSet {
            seed: 7,
            keys: Vec::new(),
        };
        assert!(verify_cost(&data, 1, &[4]).is_err(), "no packets");
        let report = verify_cost_of(&packets, 1, &[1, 4, 32]).expect("good packets");
        let batches = report["batch_signature_us"].as_object().expect("batches");
        let mut sizes: Vec<&str> = batches.keys().map(String::as_str).collect();
        sizes.sort_unstable();
        assert_eq!(sizes, ["1", "32", "4"]);
        let cofactored = report["cofactored_batch_signature_us"]
            .as_object()
            .expect("cofactored batches");
        assert_eq!(cofactored.len(), 3);
        assert_eq!(report["packets"], 12);
        // A flipped bit in the signature fails pkraft's own check first.
        let mut bad = packets[3].1.to_vec();
        bad[10] ^= 1;
        packets[3].1 = Bytes::from(bad);
        assert!(verify_cost_of(&packets, 1, &[4]).is_err());
    }
}
