//! The `pkraft` command line.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Serve { config, overrides } => {
            let mut config = Config::load(&config)?;
            config.apply(&overrides);
            run(config).await
        }
        Command::Dev { overrides } => {
            let mut config = Config::dev()?;
            config.apply(&overrides);
            run(config).await
        }
        Command::CheckConfig { config: path } => {
            let config = Config::load(&path)?;
            println!("{}: ok\n{config:#?}", path.display());
            Ok(())
        }
    }
}

fn init_logging() {
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn run(config: Config) -> anyhow::Result<()> {
    let server = Server::bind(&config).await?;
    // Tests and scripts read the bound addresses from this line (ports may be 0 in the config).
    tracing::info!(
        node_id = config.node_id,
        data_dir = %config.data_dir.display(),
        http = %server.http_addr(),
        dns = %server.dns_addr(),
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
