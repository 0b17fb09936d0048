//! pkraft: a Raft-replicated pkarr relay and DNS server.
//!
//! # Layout
//! - [`config`]: the TOML config and command-line overrides.
//! - [`Server`]: binds every listener for one node and shuts them down in order.
//! - `main.rs`: the `pkraft` command line (`serve`, `dev`, `check-config`).
//!
//! The layers live in their own crates: `pkraft-http` (relay API), `pkraft-dns` (DNS frontend),
//! `pkraft-raft` (consensus), `pkraft-store` (redb state), `pkraft-types` (domain types).

pub mod config;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pkraft_dns::DnsServer;
use pkraft_raft::Node;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::Config;

/// How long shutdown waits for in-flight HTTP requests (a PUT may be waiting for its commit).
const HTTP_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// One running node: Raft, the public HTTP listener and the DNS frontend.
pub struct Server {
    node: Arc<Node>,
    http_addr: SocketAddr,
    http_stop: oneshot::Sender<()>,
    http_task: JoinHandle<std::io::Result<()>>,
    dns: DnsServer,
}

impl Server {
    /// Starts Raft on the data dir, then binds the HTTP and DNS listeners.
    pub async fn bind(config: &Config) -> anyhow::Result<Server> {
        config.validate()?;
        let node = Node::start(config.node_id, &config.data_dir, &config.raft)
            .await
            .context("cannot start the raft node")?;
        let node = Arc::new(node);

        let http_listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("http.listen {}", config.http.listen))?;
        let http_addr = http_listener.local_addr()?;
        let app = pkraft_http::router(pkraft_http::AppState {
            node: node.clone(),
            settings: Arc::new(config.http.clone()),
        });
        let (http_stop, stopped) = oneshot::channel::<()>();
        let http_task = tokio::spawn(async move {
            axum::serve(http_listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });

        let dns = DnsServer::bind(&config.dns, node.store().clone()).await?;
        Ok(Server {
            node,
            http_addr,
            http_stop,
            http_task,
            dns,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The DNS address (UDP and TCP).
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns.local_addr()
    }

    /// Resolves if Raft stops on its own (a fatal storage or consensus error), with the reason.
    pub async fn wait_fatal(&self) -> String {
        self.node.wait_fatal().await
    }

    /// Stops accepting work, lets in-flight HTTP requests finish (bounded), stops DNS, then Raft.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.http_stop.send(());
        match tokio::time::timeout(HTTP_DRAIN_TIMEOUT, self.http_task).await {
            Ok(joined) => joined.context("http task")?.context("http server")?,
            Err(_) => tracing::warn!(
                timeout = ?HTTP_DRAIN_TIMEOUT,
                "in-flight HTTP requests did not finish; stopping anyway"
            ),
        }
        self.dns.shutdown().await?;
        self.node.shutdown().await;
        Ok(())
    }
}
