//! The `pkraft` command line.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pkraft::Server;
use pkraft::config::{Config, Overrides};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc malloc: the PUT and DNS paths allocate per request, and glibc's
/// malloc/free took about 9% of the CPU under load (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Log filter when `RUST_LOG` is unset.
const DEFAULT_LOG_FILTER: &str = "info,openraft=warn";
/// hickory-server logs two lines per DNS query at INFO, which costs throughput and floods the log.
/// Each directive applies unless `RUST_LOG` names its target itself.
const HICKORY_LOG_FILTER: [(&str, &str); 2] = [
    ("hickory_server", "hickory_server=warn"),
    ("hickory_proto", "hickory_proto=warn"),
];

#[derive(Debug, Parser)]
#[command(
    name = "pkraft",
    version,
    about = "Raft-replicated pkarr relay and DNS server"
)]
struct Cli {
    /// Log lines as human-readable text, or as one JSON object per line (for log shippers).
    /// The level filter is `RUST_LOG` (default `info,openraft=warn`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PKRAFT_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node from a config file.
    Serve {
        /// TOML config file (see config/example.toml).
        #[arg(long, short, env = "PKRAFT_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Run a single-node server with the built-in development config (config/dev.toml):
    /// data in ./data, HTTP on 127.0.0.1:8080, DNS on 127.0.0.1:5300, origin pkarr.test.
    Dev {
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Check a config file and print the effective config; exit status 1 if it is invalid.
    CheckConfig {
        /// TOML config file.
        config: PathBuf,
    },
    /// Write a consistent backup of a running node's replica to a file (through its admin API).
    Backup {
        /// The node's admin address (`admin.listen`).
        #[arg(long, env = "PKRAFT_ADMIN", default_value = "127.0.0.1:7401")]
        admin: String,
        /// File holding the admin token (or set PKRAFT_ADMIN_TOKEN).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Where to write the backup (written to OUT.tmp, then renamed).
        out: PathBuf,
    },
    /// Seed an empty data dir from a backup as a new single-node cluster (disaster recovery);
    /// then start the node on it with the same node id, and add the other nodes as usual.
    Restore {
        /// The new node's data dir; must hold no pkraft data.
        #[arg(long)]
        data_dir: PathBuf,
        /// The new node's id.
        #[arg(long, default_value_t = 1)]
        node_id: u64,
        /// The new node's peer address as other nodes will reach it (its `cluster.advertise`,
        /// host:port); it goes into the new cluster's membership.
        #[arg(long)]
        advertise: String,
        /// The backup file.
        input: PathBuf,
    },
    /// Check a stopped node's data dir: log, state and snapshot agree, and every stored packet
    /// verifies. Exit status 1 if anything is wrong.
    Verify {
        #[arg(long)]
        data_dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write a new random pkarr secret key to a file (64 hex characters, mode 0600) and print
    /// its public key (z-base-32).
    Keygen {
        /// Where to write the key; an existing file is never replaced.
        out: PathBuf,
    },
    /// Sign a packet with records given on the command line and PUT it to a node's relay.
    /// Prints the public key. The packet replaces every record the key published before.
    Publish {
        /// The secret-key file (`pkraft keygen`; pkarr's format: 64 hex characters).
        #[arg(long, short = 'k')]
        secret_key: PathBuf,
        /// The node's relay URL; the packet goes to `{URL}/{z32}`.
        #[arg(long, env = "PKRAFT_RELAY", default_value = pkraft::client::DEFAULT_RELAY_URL)]
        relay: String,
        /// TTL of every record, in seconds.
        #[arg(long, default_value_t = 300)]
        ttl: u32,
        /// Tries at most this often while the node answers 503 (no leader yet, as during an
        /// election; or not committed in time) or 429, waiting its Retry-After between tries.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
        attempts: u32,
        /// Records as `NAME TYPE DATA`, one argument each: NAME is relative to the key (`@` for
        /// the key itself), DATA is zone-file syntax. Example: '_iroh TXT addr=192.0.2.1:4433'.
        #[arg(required = true, value_name = "RECORD")]
        records: Vec<pkraft::client::RecordSpec>,
    },
    /// Fetch a key's packet over HTTP (verified, every record printed), or ask a DNS server for
    /// one name of it (`--dns`). Exit status 1 if nothing is found.
    Resolve(ResolveArgs),
    /// Inspect or change the cluster through a node's admin API.
    Cluster {
        /// The node's admin address (`admin.listen`).
        #[arg(long, env = "PKRAFT_ADMIN", default_value = "127.0.0.1:7401")]
        admin: String,
        /// File holding the admin token (or set PKRAFT_ADMIN_TOKEN). Needed for changes.
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[command(subcommand)]
        action: ClusterAction,
    },
}

#[derive(Debug, clap::Args)]
struct ResolveArgs {
    /// The public key (z-base-32, 52 characters).
    key: String,
    /// The node's relay URL; the packet comes from `{URL}/{z32}`.
    #[arg(long, env = "PKRAFT_RELAY", default_value = pkraft::client::DEFAULT_RELAY_URL)]
    relay: String,
    /// Ask this DNS server (host:port) instead of fetching over HTTP.
    #[arg(long, value_name = "ADDR")]
    dns: Option<std::net::SocketAddr>,
    /// DNS transport.
    #[arg(long, value_enum, default_value_t = pkraft::client::DnsTransport::Udp, requires = "dns")]
    transport: pkraft::client::DnsTransport,
    /// The DNS origin the key lives under (`dns.origins`; "." for none).
    #[arg(long, default_value = "pkarr.test", requires = "dns")]
    origin: String,
    /// The name to ask for, relative to the key (`@` for the key itself). DNS has no
    /// "every record" query: use HTTP for the whole packet.
    #[arg(long, default_value = "_iroh", requires = "dns")]
    name: String,
    /// The record type to ask for.
    #[arg(long = "type", default_value = "TXT", requires = "dns")]
    record_type: String,
}

#[derive(Debug, Subcommand)]
enum ClusterAction {
    /// Make this node the only voter of a new cluster (once, on one node).
    Init,
    /// Show the leader, the term and every member's role, applied index and lag.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a node as a learner (a read replica; it catches up and serves reads, but does not
    /// vote).
    AddLearner {
        #[arg(long)]
        node_id: u64,
        /// The node's peer address (its `cluster.advertise`), host:port.
        #[arg(long)]
        addr: String,
    },
    /// Make a learner a voter, once it has caught up.
    Promote {
        #[arg(long)]
        node_id: u64,
    },
    /// Remove a node (voter or learner) from the cluster. Its id must not be used again.
    Remove {
        #[arg(long)]
        node_id: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve {
            config: path,
            overrides,
        } => {
            let mut config = Config::load(&path)?;
            config.apply(&overrides);
            tracing::info!(path = %path.display(), node_id = config.node_id, "config loaded");
            run(config).await
        }
        Command::Dev { overrides } => {
            let mut config = Config::dev()?;
            config.apply(&overrides);
            tracing::info!(
                node_id = config.node_id,
                "built-in development config loaded"
            );
            run(config).await
        }
        Command::CheckConfig { config: path } => {
            let config = Config::load(&path)?;
            config.secrets(env_var)?;
            println!("{}: ok\n{:#?}", path.display(), config.redacted());
            Ok(())
        }
        Command::Cluster {
            admin,
            token_file,
            action,
        } => cluster(admin, token_file, action).await,
        Command::Backup {
            admin,
            token_file,
            out,
        } => backup(admin, token_file, &out).await,
        Command::Restore {
            data_dir,
            node_id,
            advertise,
            input,
        } => {
            let restored = pkraft_raft::backup::restore(&data_dir, node_id, &advertise, &input)
                .await
                .with_context(|| format!("restore into {}", data_dir.display()))?;
            println!(
                "restored {} records (backup of node {} at index {}) into {} as node {node_id}",
                restored.records,
                restored.header.source_node,
                restored
                    .header
                    .applied_index
                    .map_or_else(|| "none".to_string(), |index| index.to_string()),
                data_dir.display()
            );
            Ok(())
        }
        Command::Keygen { out } => {
            let keypair = pkraft::client::write_new_secret_key(&out)?;
            println!("{}", keypair.public_key().to_z32());
            Ok(())
        }
        Command::Publish {
            secret_key,
            relay,
            ttl,
            attempts,
            records,
        } => {
            let keypair = pkraft::client::read_secret_key(&secret_key)?;
            let packet = pkraft::client::sign_packet(&keypair, &records, ttl)?;
            pkraft::client::publish(&relay, &packet, attempts).await?;
            println!("{}", keypair.public_key().to_z32());
            Ok(())
        }
        Command::Resolve(args) => resolve(&args).await,
        Command::Verify { data_dir, json } => {
            let report = pkraft_raft::backup::verify(&data_dir)
                .with_context(|| format!("verify {}", data_dir.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", format_verification(&report));
            }
            if report.problems.is_empty() {
                Ok(())
            } else {
                anyhow::bail!(
                    "{} problem(s) found in {}",
                    report.problems.len(),
                    data_dir.display()
                )
            }
        }
    }
}

/// `pkraft resolve`: prints what it found, or fails (exit status 1) when nothing is there.
async fn resolve(args: &ResolveArgs) -> anyhow::Result<()> {
    use pkraft::client::{self, DnsAnswer};
    let key =
        pkraft_types::parse_z32_key(&args.key).with_context(|| format!("key {:?}", args.key))?;
    let Some(server) = args.dns else {
        return match client::fetch(&args.relay, &key).await? {
            Some(packet) => {
                print!("{}", client::format_packet(&packet)?);
                Ok(())
            }
            None => anyhow::bail!("{}: no packet for {}", args.relay, key.to_z32()),
        };
    };
    let qtype: hickory_proto::rr::RecordType = args
        .record_type
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| anyhow::anyhow!("--type {:?}: unknown record type", args.record_type))?;
    let qname = client::query_name(&args.name, &key, &args.origin)?;
    match client::dns_lookup(server, args.transport, qname.clone(), qtype).await? {
        DnsAnswer::Records(records) => {
            print!("{}", client::format_records(&records));
            Ok(())
        }
        DnsAnswer::Empty(rcode) => anyhow::bail!("{qname} {qtype} @{server}: no records ({rcode})"),
    }
}

fn format_verification(report: &pkraft_raft::backup::Verification) -> String {
    let show = |index: Option<u64>| index.map_or_else(|| "none".to_string(), |i| i.to_string());
    let mut text = format!(
        "node id: {}\nlog: last index {}, purged up to {}\nstate: applied up to {}, \
         {} packets, {} expiry rows\nsnapshot: up to {}\n",
        show(report.node_id),
        show(report.last_log_index),
        show(report.purged_index),
        show(report.applied_index),
        report.packets,
        report.expiry_rows,
        show(report.snapshot_index),
    );
    if report.problems.is_empty() {
        text.push_str("ok\n");
    }
    for problem in &report.problems {
        text.push_str(&format!("problem: {problem}\n"));
    }
    text
}

fn read_token(token_file: Option<PathBuf>) -> anyhow::Result<Option<String>> {
    Ok(match token_file {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .with_context(|| format!("--token-file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => env_var(pkraft::config::ADMIN_TOKEN_ENV),
    })
}

/// `pkraft backup`: streams the node's backup into `OUT.tmp`, checks the whole file (checksum,
/// every record), fsyncs it and renames it to `OUT`. Memory stays flat whatever the size.
async fn backup(
    admin: String,
    token_file: Option<PathBuf>,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    use std::io::Write;
    let token = read_token(token_file)?;
    let client = pkraft::admin_client::AdminClient { admin, token };
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut writer = std::io::BufWriter::with_capacity(256 * 1024, file);
    let mut progress = Progress::new("received");
    let received = client
        .backup_into(&mut writer, |bytes| progress.show(bytes))
        .await;
    progress.done();
    let written = received.and_then(|bytes| {
        writer.flush()?;
        writer.get_ref().sync_all()?;
        Ok(bytes)
    });
    let checked = written.and_then(|bytes| {
        let (header, _) = pkraft_raft::backup::check_backup_file(&tmp)
            .context("the node's answer does not check out")?;
        Ok((bytes, header))
    });
    let (bytes, header) = match checked {
        Ok(checked) => checked,
        Err(e) => {
            // Never leave a torn file under a name that looks like a backup.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
    if let Some(dir) = out.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("cannot sync {}", dir.display()))?;
    }
    println!(
        "wrote {} ({bytes} bytes): {} records from node {} at index {}",
        out.display(),
        header.records,
        header.source_node,
        header
            .applied_index
            .map_or_else(|| "none".to_string(), |index| index.to_string())
    );
    Ok(())
}

/// A progress line on stderr, rewritten in place at most a few times a second; silent when
/// stderr is not a terminal (scripts, logs).
struct Progress {
    what: &'static str,
    terminal: bool,
    last: Option<std::time::Instant>,
    shown: bool,
}

impl Progress {
    fn new(what: &'static str) -> Progress {
        use std::io::IsTerminal;
        Progress {
            what,
            terminal: std::io::stderr().is_terminal(),
            last: None,
            shown: false,
        }
    }

    fn show(&mut self, bytes: u64) {
        if !self.terminal
            || self
                .last
                .is_some_and(|last| last.elapsed().as_millis() < 250)
        {
            return;
        }
        self.last = Some(std::time::Instant::now());
        self.shown = true;
        eprint!(
            "\r{} {:.1} MiB",
            self.what,
            bytes as f64 / (1024.0 * 1024.0)
        );
    }

    fn done(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

async fn cluster(
    admin: String,
    token_file: Option<PathBuf>,
    action: ClusterAction,
) -> anyhow::Result<()> {
    use hyper::Method;
    use serde_json::json;
    let token = read_token(token_file)?;
    let client = pkraft::admin_client::AdminClient { admin, token };
    let (path, body) = match action {
        ClusterAction::Status { json } => {
            let status = client.status().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", pkraft::admin_client::format_status(&status));
            }
            return Ok(());
        }
        ClusterAction::Init => ("/cluster/init", json!({})),
        ClusterAction::AddLearner { node_id, addr } => (
            "/cluster/add-learner",
            json!({ "node_id": node_id, "addr": addr }),
        ),
        ClusterAction::Promote { node_id } => ("/cluster/promote", json!({ "node_id": node_id })),
        ClusterAction::Remove { node_id } => ("/cluster/remove", json!({ "node_id": node_id })),
    };
    client.call(Method::POST, path, Some(body)).await?;
    println!("ok");
    Ok(())
}

fn init_logging(format: LogFormat) {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let mut filter = match &from_env {
        Some(value) => EnvFilter::new(value),
        None => EnvFilter::new(DEFAULT_LOG_FILTER),
    };
    for (target, directive) in HICKORY_LOG_FILTER {
        let named = from_env
            .as_deref()
            .is_some_and(|value| value.contains(target));
        if let (false, Ok(directive)) = (named, directive.parse()) {
            filter = filter.add_directive(directive);
        }
    }
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => subscriber.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => subscriber.json().init(),
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let secrets = config.secrets(env_var)?;
    let server = Server::bind(&config, secrets).await?;
    // Tests and scripts read the bound addresses from this line (ports may be 0 in the config).
    tracing::info!(
        node_id = config.node_id,
        data_dir = %config.data_dir.display(),
        http = %server.http_addr(),
        https = ?server.https_addr(),
        dns = %server.dns_addr(),
        peer = %server.peer_addr(),
        admin = %server.admin_addr(),
        dht = ?server.dht_addr(),
        origins = ?config.dns.origins,
        "pkraft listening"
    );
    let fatal = tokio::select! {
        signal = shutdown_signal() => {
            signal?;
            None
        }
        reason = server.wait_fatal() => Some(reason),
    };
    match &fatal {
        None => tracing::info!("shutting down"),
        Some(reason) => tracing::error!(%reason, "raft stopped; shutting down"),
    }
    server.shutdown().await?;
    tracing::info!("stopped");
    match fatal {
        // A non-zero exit lets the supervisor (systemd, Kubernetes) restart the node.
        Some(reason) => Err(anyhow::anyhow!("raft stopped: {reason}")),
        None => Ok(()),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("SIGINT handler")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
