//! The `pkraft` command line: the clap definitions and the dispatch. Running a node is
//! `pkraft::daemon`; every other subcommand is a client in `pkraft::cli`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use pkraft::cli::{self, admin::AdminClient, admin::ClusterChange, pkarr_client};
use pkraft::config::{Config, Overrides};
use pkraft::logging::LogFormat;

/// mimalloc instead of glibc malloc: the PUT and DNS paths allocate per request, and glibc's
/// malloc/free took about 9% of the CPU under load (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "pkraft",
    // `pkraft 0.2.0 (0123456789ab)`: the release and the commit it was built from.
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("PKRAFT_COMMIT"), ")"),
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
        /// The node's admin address (`admin.listen`, host:port), or a URL such as
        /// `https://host:port` for an admin API behind a TLS proxy.
        #[arg(long, env = "PKRAFT_ADMIN", default_value = "127.0.0.1:7401")]
        admin: String,
        /// File holding the admin token (or set PKRAFT_ADMIN_TOKEN).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Where to write the backup (written to OUT.tmp, then renamed).
        out: PathBuf,
    },
    /// Copy every packet of an iroh-dns-server store into the cluster, through a node's admin
    /// API: each is verified and published as a PUT is (a newer stored packet is kept). Safe to
    /// run again. Prints how many were imported, already stored, older than the stored packet,
    /// expired (raft.record_max_age) and invalid.
    Import {
        /// The node's admin address (`admin.listen`, host:port), or a URL such as
        /// `https://host:port` for an admin API behind a TLS proxy.
        #[arg(long, env = "PKRAFT_ADMIN", default_value = "127.0.0.1:7401")]
        admin: String,
        /// File holding the admin token (or set PKRAFT_ADMIN_TOKEN).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// iroh-dns-server's data dir (which holds signed-packets-1.db), or that file. Stop
        /// iroh-dns-server first, or give a copy taken while it was stopped. The file is only
        /// read (one not closed cleanly is repaired in a copy in $TMPDIR).
        store: PathBuf,
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
    /// Rewrite a stopped node's data dir in the formats the previous minor release reads, so
    /// that it starts on it (a downgrade; docs/OPERATIONS.md, "Going back"). This build
    /// converts it back when it next starts on it. Safe to run again.
    Downgrade {
        #[arg(long)]
        data_dir: PathBuf,
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
        /// The node's relay URL (`http://` or `https://`; the node's certificate is checked
        /// against the system's CAs, or SSL_CERT_FILE's); the packet goes to `{URL}/{z32}`.
        #[arg(long, env = "PKRAFT_RELAY", default_value = pkarr_client::DEFAULT_RELAY_URL)]
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
        records: Vec<pkarr_client::RecordSpec>,
    },
    /// Fetch a key's packet over HTTP (verified, every record printed), or ask a DNS server for
    /// one name of it (`--dns`). Exit status 1 if nothing is found.
    Resolve(ResolveArgs),
    /// Inspect or change the cluster through a node's admin API.
    Cluster {
        /// The node's admin address (`admin.listen`, host:port), or a URL such as
        /// `https://host:port` for an admin API behind a TLS proxy.
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
    /// The node's relay URL (`http://` or `https://`, as for `publish`); the packet comes
    /// from `{URL}/{z32}`.
    #[arg(long, env = "PKRAFT_RELAY", default_value = pkarr_client::DEFAULT_RELAY_URL)]
    relay: String,
    /// Ask this DNS server (host:port) instead of fetching over HTTP.
    #[arg(long, value_name = "ADDR")]
    dns: Option<std::net::SocketAddr>,
    /// DNS transport.
    #[arg(long, value_enum, default_value_t = pkarr_client::DnsTransport::Udp, requires = "dns")]
    transport: pkarr_client::DnsTransport,
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
    pkraft::logging::init(cli.log_format);
    match cli.command {
        Command::Serve {
            config: path,
            overrides,
        } => {
            let mut config = Config::load(&path)?;
            config.apply(&overrides);
            tracing::info!(path = %path.display(), node_id = config.node_id, "config loaded");
            pkraft::daemon::run(config).await
        }
        Command::Dev { overrides } => {
            let mut config = Config::dev()?;
            config.apply(&overrides);
            tracing::info!(
                node_id = config.node_id,
                "built-in development config loaded"
            );
            pkraft::daemon::run(config).await
        }
        Command::CheckConfig { config: path } => check_config(&path),
        Command::Cluster {
            admin,
            token_file,
            action,
        } => cluster(admin, token_file, action).await,
        Command::Backup {
            admin,
            token_file,
            out,
        } => cli::data::backup(admin, token_file, &out).await,
        Command::Import {
            admin,
            token_file,
            json,
            store,
        } => cli::import::import(admin, token_file, &store, json).await,
        Command::Restore {
            data_dir,
            node_id,
            advertise,
            input,
        } => cli::data::restore(&data_dir, node_id, &advertise, &input).await,
        Command::Verify { data_dir, json } => cli::data::verify(&data_dir, json),
        Command::Downgrade { data_dir } => cli::data::downgrade(&data_dir),
        Command::Keygen { out } => {
            let keypair = pkarr_client::write_new_secret_key(&out)?;
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
            let keypair = pkarr_client::read_secret_key(&secret_key)?;
            let packet = pkarr_client::sign_packet(&keypair, &records, ttl)?;
            pkarr_client::publish(&relay, &packet, attempts).await?;
            println!("{}", keypair.public_key().to_z32());
            Ok(())
        }
        Command::Resolve(args) => {
            pkarr_client::resolve(&pkarr_client::ResolveQuery {
                key: &args.key,
                relay: &args.relay,
                dns: args.dns.map(|server| (server, args.transport)),
                origin: &args.origin,
                name: &args.name,
                record_type: &args.record_type,
            })
            .await
        }
    }
}

/// `pkraft check-config`: loads the file and its secrets, prints the config with the secrets
/// redacted, and whether a node started in this shell would fit its descriptor budget.
fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    config.secrets(|name| std::env::var(name).ok())?;
    println!("{}: ok\n{:#?}", path.display(), config.redacted());
    // The descriptor budget depends on the machine's limit, not on the file alone: say what a
    // node started here would find.
    let hard = pkraft::descriptors::hard_open_file_limit()?;
    match pkraft::descriptors::Budget::check(&config, hard) {
        Ok(budget) => println!(
            "file descriptors: the connection caps and the reserve fit this shell's hard \
             RLIMIT_NOFILE ({hard}), {} spare",
            budget.spare()
        ),
        Err(e) => println!("file descriptors: a node started here would not start: {e:#}"),
    }
    Ok(())
}

/// `pkraft cluster ...`: the cluster's status, or a membership change, through a node's admin
/// API.
async fn cluster(
    admin: String,
    token_file: Option<PathBuf>,
    action: ClusterAction,
) -> anyhow::Result<()> {
    let client = AdminClient {
        admin,
        token: cli::read_token(token_file)?,
    };
    let change = match action {
        ClusterAction::Status { json } => {
            return cli::admin::print_status(&client, json).await;
        }
        ClusterAction::Init => ClusterChange::Init,
        ClusterAction::AddLearner { node_id, addr } => ClusterChange::AddLearner { node_id, addr },
        ClusterAction::Promote { node_id } => ClusterChange::Promote { node_id },
        ClusterAction::Remove { node_id } => ClusterChange::Remove { node_id },
    };
    cli::admin::change(&client, change).await
}
