//! Running a node: `pkraft serve` and `pkraft dev` start a [`Server`], log where it listens,
//! reload its certificates on SIGHUP, and stop it on SIGINT or SIGTERM, or when Raft stops (exit
//! status 1, for the supervisor).

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use crate::{Config, Server, descriptors};

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`, what mimalloc's
/// `MIMALLOC_ALLOW_THP=0` does), so that memory the allocator takes from the kernel comes in
/// 4 KiB pages. redb reads every page its cache misses into a new buffer; with THP on (this
/// machine's kernel runs them `always`), zeroing fresh huge pages for those buffers was 16 % of
/// the node's CPU on DNS misses at 10M records, and such a miss cost 16.0 µs of CPU against
/// 13.9 µs with THP off (medians of 3 rounds; docs/BENCHMARKS.md, "The read path in wire form,
/// continued").
#[cfg(target_os = "linux")]
fn disable_transparent_huge_pages() {
    if let Err(error) = nix::sys::prctl::set_thp_disable(true) {
        tracing::warn!(%error, "transparent huge pages could not be turned off for this process");
    }
}

/// Runs the node `config` describes until a signal or a fatal error.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // First, before anything is opened or bound: from here on SIGHUP reloads certificates, and
    // SIGINT and SIGTERM stop the node cleanly, instead of ending the process (their default)
    // whenever they come. One that comes while the node starts is kept, and stops it once it
    // has started: after the rest of its start (opening the stores, replaying the log; a
    // supervisor's SIGKILL after its timeout loses nothing acknowledged either). Handlers made
    // later, on the first poll of the shutdown future, left a window after the listeners served
    // in which a supervisor's SIGTERM killed the node without its shutdown (found by CI).
    let mut hangup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    tracing::info!(
        version = crate::VERSION,
        commit = crate::COMMIT,
        ed25519 = pkraft_types::ed25519::arithmetic(),
        "pkraft starting"
    );
    let secrets = config.secrets(|name| std::env::var(name).ok())?;
    // Before anything opens a descriptor: the budget the listeners' caps come out of.
    let limit = descriptors::raise_open_file_limit()?;
    let budget = descriptors::Budget::check(&config, limit)?;
    tracing::info!(
        limit = budget.limit,
        spare = budget.spare(),
        reserved = config.limits.reserved_descriptors,
        "file descriptors"
    );
    #[cfg(target_os = "linux")]
    disable_transparent_huge_pages();
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
    let fatal = loop {
        tokio::select! {
            _ = interrupt.recv() => break None,
            _ = terminate.recv() => break None,
            reason = server.wait_fatal() => break Some(reason),
            _ = hangup.recv() => server.reload_certificates("SIGHUP"),
        }
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
