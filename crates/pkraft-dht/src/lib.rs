//! pkraft's Mainline DHT bridge (`[dht]`): pkarr packets live on the BitTorrent Mainline DHT
//! (BEP 44). With the bridge on, every node runs a DHT node:
//!
//! - the leader puts what the cluster stores, in the background and never in a request's path,
//!   and republishes every stored packet about once an hour within a put budget
//!   ([`publisher`](crate::publisher));
//! - every node answers misses of its local replica (DNS, DoH, GET) from the DHT, with a hard
//!   deadline, one lookup per key, a bound on lookups and in-memory caches ([`Resolver`]).
//!
//! Where the leader has got is replicated through Raft ([`pkraft_raft::DhtOutbox`]), so a new
//! leader carries on where the old one stopped.

mod item;
pub mod metrics;
mod publisher;
pub mod resolver;
pub mod settings;

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use mainline::Dht;
use mainline::async_dht::AsyncDht;
use pkraft_raft::Node;
use tokio::task::JoinHandle;

pub use metrics::DhtMetrics;
pub use resolver::{DhtAnswer, FromDht, Lookup, Resolver};
pub use settings::{DhtSettings, SettingsError};

/// How often the DHT size estimate is read for its gauge.
const INFO_INTERVAL: Duration = Duration::from_secs(10);

/// The DHT bridge's supervised tasks (`pkraft_task_panics_total{task}`): the size gauge's.
pub const TASK_SIZE: &str = "dht-size";
/// ... and the publisher's.
pub const TASK_PUBLISHER: &str = "dht-publisher";

/// The running bridge of one node. Stops its tasks when dropped or shut down.
pub struct DhtBridge {
    resolver: Option<Arc<Resolver>>,
    metrics: Arc<DhtMetrics>,
    tasks: Vec<JoinHandle<()>>,
    local_addr: SocketAddrV4,
}

/// Why the bridge did not start.
#[derive(Debug, thiserror::Error)]
pub enum DhtError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("dht.listen {addr}: {source}")]
    Bind {
        addr: SocketAddrV4,
        source: std::io::Error,
    },
    #[error("DHT metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl DhtBridge {
    /// Starts the DHT node and the bridge's tasks for `node`, or `None` when `[dht]` is off.
    /// `max_future_skew` is `http.max_future_skew`: a newer packet the publisher finds on the
    /// DHT is held to it before it is published to the cluster, as a PUT is.
    pub async fn start(
        settings: &DhtSettings,
        node: Arc<Node>,
        max_future_skew: Duration,
    ) -> Result<Option<DhtBridge>, DhtError> {
        if !settings.enabled {
            return Ok(None);
        }
        settings.validate()?;
        let mut builder = Dht::builder();
        builder
            .bootstrap(&settings.bootstrap)
            .bind_address(*settings.listen.ip())
            // Always set: without a port, mainline tries 6881 first.
            .port(settings.listen.port())
            .request_timeout(settings.request_timeout);
        if settings.server_mode {
            builder.server_mode();
        }
        let dht = builder
            .build()
            .map_err(|source| DhtError::Bind {
                addr: settings.listen,
                source,
            })?
            .as_async();
        let local_addr = dht.info().await.local_addr();
        let metrics = Arc::new(DhtMetrics::new()?);
        let resolver = Arc::new(Resolver::new(dht.clone(), settings, metrics.clone()));
        let watched = (dht.clone(), metrics.clone());
        let mut tasks = vec![pkraft_tasks::spawn(TASK_SIZE, move || {
            watch_size(watched.0.clone(), watched.1.clone())
        })];
        if settings.publish || !settings.republish_interval.is_zero() {
            node.dht()
                .outbox()
                .enable(settings.publish_backlog_max, settings.publish);
            let publisher = Arc::new(publisher::Publisher::new(
                node,
                dht.clone(),
                resolver.clone(),
                settings,
                metrics.clone(),
                max_future_skew,
            ));
            tasks.push(pkraft_tasks::spawn(TASK_PUBLISHER, move || {
                publisher.clone().run()
            }));
        }
        tracing::info!(%local_addr, bootstrap = ?settings.bootstrap, "DHT node started");
        Ok(Some(DhtBridge {
            resolver: settings.resolve.then_some(resolver),
            metrics,
            tasks,
            local_addr,
        }))
    }

    /// Answers misses from the DHT (`None` with `dht.resolve = false`).
    pub fn resolver(&self) -> Option<Arc<Resolver>> {
        self.resolver.clone()
    }

    pub fn metrics(&self) -> &Arc<DhtMetrics> {
        &self.metrics
    }

    /// The DHT node's UDP address.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local_addr
    }

    /// Stops publishing; lookups under way end at their deadline.
    pub fn shutdown(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for DhtBridge {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn watch_size(dht: AsyncDht, metrics: Arc<DhtMetrics>) {
    loop {
        let (estimate, _) = dht.info().await.dht_size_estimate();
        metrics
            .dht_size_estimate
            .set(i64::try_from(estimate).unwrap_or(i64::MAX));
        tokio::time::sleep(INFO_INTERVAL).await;
    }
}
