//! An iroh endpoint that uses a pkraft cluster for address lookup, for trying pkraft out (README
//! "Quick start"). Offline: no relays, no port mapping, direct addresses only.
//!
//! ```text
//! # terminal 1: publish through node 1, wait until node 2's DNS answers for it, then echo
//! cargo run -p pkraft --example iroh-endpoint -- listen
//! # terminal 2: find that endpoint through node 3 (its DNS and its relay) and connect to it
//! cargo run -p pkraft --example iroh-endpoint -- \
//!     --relay http://127.0.0.1:8083/pkarr --dns 127.0.0.1:5303 connect <ENDPOINT_ID>
//! ```
//!
//! The defaults fit `make cluster` (HTTP 127.0.0.1:8081-8083, DNS 127.0.0.1:5301-5303, origin
//! pkarr.test).

mod pkraft_lookup;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use iroh::address_lookup::AddrFilter;
use iroh::endpoint::PortmapperConfig;
use iroh::{Endpoint, EndpointId, RelayMode};
use pkraft_lookup::PkraftCluster;

/// The example's protocol: the listener echoes one stream per connection.
const ALPN: &[u8] = b"pkraft/example/echo/0";
/// How long `listen` waits for its record to show up in the cluster's DNS.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
struct Args {
    /// The relay URL the endpoint publishes to and looks up through.
    #[arg(long, default_value = "http://127.0.0.1:8081/pkarr")]
    relay: url::Url,
    /// The DNS server it looks endpoints up through.
    #[arg(long, default_value = "127.0.0.1:5302")]
    dns: SocketAddr,
    /// The cluster's DNS origin.
    #[arg(long, default_value = "pkarr.test")]
    origin: String,
    /// The local address to bind.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    #[command(subcommand)]
    command: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Publish this endpoint's addresses, wait until the cluster serves them, then echo.
    Listen,
    /// Find an endpoint through the cluster and exchange a message with it.
    Connect { id: EndpointId },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // iroh and pkraft's test build both link rustls; choose its crypto provider once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let cluster = PkraftCluster {
        relay: args.relay,
        dns: args.dns,
        origin: args.origin,
    };
    let endpoint = cluster
        .endpoint_builder(AddrFilter::unfiltered())
        .relay_mode(RelayMode::Disabled)
        .portmapper_config(PortmapperConfig::Disabled)
        .clear_ip_transports()
        .bind_addr(args.bind)?
        .alpns(vec![ALPN.to_vec()])
        .bind()
        .await?;
    let result = match args.command {
        Mode::Listen => listen(&endpoint, &cluster).await,
        Mode::Connect { id } => connect(&endpoint, id).await,
    };
    endpoint.close().await;
    result
}

async fn listen(endpoint: &Endpoint, cluster: &PkraftCluster) -> anyhow::Result<()> {
    let id = endpoint.id();
    println!("endpoint {id}, bound to {:?}", endpoint.bound_sockets());
    let resolver = cluster.resolver();
    let deadline = Instant::now() + PUBLISH_TIMEOUT;
    loop {
        if let Ok(info) = resolver.lookup_endpoint_by_id(&id, &cluster.origin).await
            && info.ip_addrs().next().is_some()
        {
            let addrs: Vec<_> = info.ip_addrs().collect();
            println!("published through {}: {addrs:?}", cluster.relay);
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not answer for this endpoint within {PUBLISH_TIMEOUT:?}",
                cluster.dns
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "check: dig @{} -p {} _iroh.{}.{} TXT",
        cluster.dns.ip(),
        cluster.dns.port(),
        id.to_z32(),
        cluster.origin
    );
    println!("waiting for connections (Ctrl-C to stop)");
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { return Ok(()) };
                tokio::spawn(async move {
                    if let Err(e) = echo(incoming).await {
                        eprintln!("connection failed: {e:#}");
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn echo(incoming: iroh::endpoint::Incoming) -> anyhow::Result<()> {
    let connection = incoming.await?;
    let (mut send, mut recv) = connection.accept_bi().await?;
    let message = recv.read_to_end(1024).await?;
    send.write_all(&message).await?;
    send.finish()?;
    println!(
        "echoed {} bytes to {}",
        message.len(),
        connection.remote_id()
    );
    connection.closed().await;
    Ok(())
}

async fn connect(endpoint: &Endpoint, id: EndpointId) -> anyhow::Result<()> {
    // Only the id: the addresses come from the cluster.
    let connection = endpoint
        .connect(id, ALPN)
        .await
        .with_context(|| format!("connect to {id}"))?;
    let (mut send, mut recv) = connection.open_bi().await?;
    send.write_all(b"hello through pkraft").await?;
    send.finish()?;
    let echoed = recv.read_to_end(1024).await?;
    println!(
        "connected to {id}; it echoed {:?}",
        String::from_utf8_lossy(&echoed)
    );
    connection.close(0u8.into(), b"done");
    Ok(())
}
