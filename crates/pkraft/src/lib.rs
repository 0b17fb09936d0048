//! pkraft: a Raft-replicated pkarr relay and DNS server.
//!
//! # Layout
//! The daemon:
//! - [`config`]: the TOML config and command-line overrides.
//! - [`Server`]: binds every listener for one node and shuts them down in order.
//! - [`daemon`]: `pkraft serve` and `pkraft dev`: run a [`Server`] until a signal or a fatal error.
//! - [`descriptors`]: the file-descriptor budget every listener's connection cap comes out of.
//! - [`https`]: the `[https]` listener's TLS config.
//!
//! The command-line clients, [`cli`]: `keygen`, `publish`, `resolve`, `cluster …`, `backup`,
//! `restore`, `verify`. [`logging`] serves both; `main.rs` holds the clap definitions and the
//! dispatch. The HTTP connection loop every listener uses is `pkraft_http::serve`.
//!
//! The layers live in their own crates: `pkraft-http` (relay API), `pkraft-dns` (DNS frontend),
//! `pkraft-dht` (Mainline DHT bridge), `pkraft-raft` (consensus), `pkraft-peer` (the peer wire
//! under it), `pkraft-raft-storage` (the Raft log and state machine under it), `pkraft-state` (redb
//! state), `pkraft-types` (domain types).

pub mod acme;
pub mod certificates;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod descriptors;
pub mod https;
pub mod logging;
mod raft_runtime;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pkraft_dns::{DnsServer, FreshnessProbe, MissingKeys, ReplicaFreshness};
use pkraft_limits::connections::{Admission, ConnectionCaps};
use pkraft_raft::Node;
use pkraft_types::{KeyBytes, Payload};
use raft_runtime::RaftRuntime;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::Config;

/// This build's version (the workspace's) and commit (`build.rs`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("PKRAFT_COMMIT");

/// This build, as a node reports it and records it in its data dir.
pub fn build_info() -> pkraft_types::BuildInfo {
    pkraft_types::BuildInfo {
        version: VERSION.to_string(),
        commit: COMMIT.to_string(),
    }
}

/// How long shutdown waits for in-flight requests on each listener (a PUT may be waiting for its
/// commit).
const HTTP_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// One running node: Raft, the peer and admin listeners, the public HTTP listener and the DNS
/// frontend.
pub struct Server {
    node: Arc<Node>,
    http_addr: SocketAddr,
    peer_addr: SocketAddr,
    admin_addr: SocketAddr,
    http: Listener,
    /// The `[https]` listener, when configured.
    https: Option<HttpsListener>,
    admin: Listener,
    peer: Listener,
    dns: DnsServer,
    /// The Mainline DHT bridge (`[dht]`), when enabled.
    dht: Option<pkraft_dht::DhtBridge>,
    /// What reloads the certificates of `[https]` and `[cluster.tls]`, with their periodic
    /// checks of the files.
    certificates: Vec<(Arc<certificates::CertificateReloader>, JoinHandle<()>)>,
    /// Where Raft, the node's tasks and the peer listener run (`raft_runtime`). Declared last:
    /// dropped after everything that runs on it.
    _raft_runtime: RaftRuntime,
}

/// The `[https]` listener.
struct HttpsListener {
    listener: Listener,
    addr: SocketAddr,
    /// The ACME client's task, with `[https.acme]`.
    acme: Option<JoinHandle<()>>,
}

/// An axum server on its own socket, with its graceful stop.
struct Listener {
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Listener {
    /// Serves `app` on `listener`, over TLS when `tls` is set, within `limits`, admitting
    /// connections through `admission` (see `pkraft_http::serve`), on the current runtime.
    fn serve(
        listener: tokio::net::TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        app: axum::Router,
        limits: pkraft_http::serve::ConnectionLimits,
        admission: Arc<Admission>,
    ) -> Listener {
        Listener::serve_on(&Handle::current(), listener, tls, app, limits, admission)
    }

    /// [`Listener::serve`] on `runtime`: its connections' tasks run there too.
    fn serve_on(
        runtime: &Handle,
        listener: tokio::net::TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        app: axum::Router,
        limits: pkraft_http::serve::ConnectionLimits,
        admission: Arc<Admission>,
    ) -> Listener {
        let (stop, stopped) = oneshot::channel::<()>();
        let tls = tls.map(tokio_rustls::TlsAcceptor::from);
        let task = runtime.spawn(pkraft_http::serve::serve(
            listener, tls, app, limits, admission, stopped,
        ));
        Listener { stop, task }
    }

    /// Stops accepting and waits (bounded) for in-flight requests.
    async fn stop(self, name: &str) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        match tokio::time::timeout(HTTP_DRAIN_TIMEOUT, self.task).await {
            Ok(joined) => joined
                .with_context(|| format!("{name} task"))?
                .with_context(|| format!("{name} server"))?,
            Err(_) => tracing::warn!(
                listener = name,
                timeout = ?HTTP_DRAIN_TIMEOUT,
                "in-flight requests did not finish; stopping anyway"
            ),
        }
        Ok(())
    }
}

async fn bind_tcp(addr: SocketAddr, field: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{field} {addr}"))
}

/// Every TCP listener's connection caps (their shares of the descriptor budget, see
/// `descriptors`), exported together as `pkraft_listener_*`.
#[derive(Default)]
struct Admissions(Vec<Arc<Admission>>);

impl Admissions {
    /// The admission of listener `name`, kept for the metrics.
    fn add(&mut self, name: &'static str, caps: ConnectionCaps) -> Arc<Admission> {
        let admission = Admission::new(name, caps);
        self.0.push(admission.clone());
        admission
    }
}

/// What the public listeners (HTTP, HTTPS) serve, and with which limits.
struct PublicListeners {
    app: axum::Router,
    limits: pkraft_http::serve::ConnectionLimits,
    caps: ConnectionCaps,
}

/// Starts the node (Raft on the data dir) on a runtime of its own (`raft_runtime`): Raft and
/// every task the node starts run there. `peer_addr` is advertised unless
/// `cluster.advertise` says otherwise.
async fn start_node(
    config: &Config,
    secret: Option<pkraft_raft::ClusterSecret>,
    peer_addr: SocketAddr,
    peer_tls: Option<&(
        pkraft_raft::peer::tls::PeerTlsSettings,
        Arc<pkraft_raft::peer::tls::PeerTls>,
    )>,
) -> anyhow::Result<(Arc<Node>, RaftRuntime)> {
    let cluster = pkraft_raft::Participation {
        advertise: config
            .cluster
            .advertise
            .clone()
            .unwrap_or_else(|| peer_addr.to_string()),
        secret,
        bootstrap: config.cluster.bootstrap,
        join: config.cluster.join.clone(),
        voter: config.cluster.voter,
        tls: peer_tls.map(|(_, tls)| tls.clone()),
        transport: pkraft_raft::peer::PeerTransport::Tcp,
        build: build_info(),
    };
    let raft_runtime = RaftRuntime::new(config.raft.runtime_threads)?;
    let (node_id, data_dir, raft_settings) =
        (config.node_id, config.data_dir.clone(), config.raft.clone());
    let node = raft_runtime
        .handle()
        .spawn(async move { Node::start(node_id, &data_dir, &raft_settings, cluster).await })
        .await
        .context("the raft node's start stopped")?
        .context("cannot start the raft node")?;
    Ok((node, raft_runtime))
}

/// The listeners' names: the `listener` label of their connection metrics, and the `task` of
/// their accept loop in `pkraft_task_panics_total`.
const PEER_LISTENER: &str = "peer";
const HTTP_LISTENER: &str = "http";
const HTTPS_LISTENER: &str = "https";
const ADMIN_LISTENER: &str = "admin";

/// Everything the admin listener's /metrics exports (docs/METRICS.md), so far: the process,
/// the node, and the panics of the supervised loops (the listeners' accept loops among them),
/// every one's series from the start.
fn registry_of(node: &Arc<Node>) -> anyhow::Result<prometheus::Registry> {
    let registry = prometheus::Registry::new();
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .context("process metrics")?;
    node.register_metrics(&registry).context("raft metrics")?;
    let mut supervised = pkraft_raft::task::ALL.to_vec();
    supervised.extend([
        pkraft_dns::UDP_TASK,
        pkraft_dht::TASK_SIZE,
        pkraft_dht::TASK_PUBLISHER,
        certificates::RELOAD_TASK,
        acme::ACME_TASK,
    ]);
    // Each listener's accept loop is supervised too, and its connections are guarded.
    let listeners = [
        PEER_LISTENER,
        HTTP_LISTENER,
        HTTPS_LISTENER,
        ADMIN_LISTENER,
        pkraft_dns::TCP_LISTENER,
    ];
    supervised.extend(listeners);
    pkraft_tasks::register(&registry, &supervised, &listeners).context("task metrics")?;
    Ok(registry)
}

/// Serves the peer routes on `listener`, on the node's runtime: its socket is registered with
/// that runtime's I/O driver, which then wakes the accepts (the clients' may be held up by
/// reads waiting on the disk).
fn serve_peer(
    config: &Config,
    node: &Arc<Node>,
    raft_runtime: &RaftRuntime,
    listener: tokio::net::TcpListener,
    peer_tls: Option<&(
        pkraft_raft::peer::tls::PeerTlsSettings,
        Arc<pkraft_raft::peer::tls::PeerTls>,
    )>,
    admissions: &mut Admissions,
) -> anyhow::Result<Listener> {
    let listener = {
        let listener = listener.into_std().context("cluster.peer_listen")?;
        let _on_raft_runtime = raft_runtime.handle().enter();
        tokio::net::TcpListener::from_std(listener).context("cluster.peer_listen")?
    };
    Ok(Listener::serve_on(
        raft_runtime.handle(),
        listener,
        peer_tls.map(|(_, tls)| tls.server.clone()),
        pkraft_raft::routes::router(node.clone()),
        pkraft_http::serve::ConnectionLimits::peer(),
        admissions.add(
            PEER_LISTENER,
            pkraft_http::admin::private_caps(
                config.cluster.peer_max_connections,
                config.cluster.peer_max_connections_per_client,
            ),
        ),
    ))
}

/// How current the node's replica is, for the DNS frontend's `dns.max_stale`.
struct NodeFreshness(Arc<Node>);

impl ReplicaFreshness for NodeFreshness {
    fn catching_up(&self) -> bool {
        self.0.reads().catching_up()
    }

    fn last_confirmed(&self) -> Option<Duration> {
        self.0.reads().staleness()
    }
}

/// Binds the DNS listeners, answering from the node's replica (refused while it catches up
/// or is staler than `dns.max_stale`), the DHT for keys it lacks, and the short-lived records.
async fn start_dns(
    config: &Config,
    node: &Arc<Node>,
    dht_resolver: Option<Arc<pkraft_dht::Resolver>>,
    registry: &prometheus::Registry,
) -> anyhow::Result<DnsServer> {
    let freshness: FreshnessProbe = Arc::new(NodeFreshness(node.clone()));
    let dns = DnsServer::bind_with(
        &config.dns,
        node.store().clone(),
        freshness,
        pkraft_dns::AnswerSources {
            dht: dht_resolver
                .map(|resolver| Arc::new(DhtMissingKeys(resolver)) as Arc<dyn MissingKeys>),
            // Every node answers the ACME DNS-01 challenges, whichever node orders (`acme`).
            short_lived: Some(pkraft_dns::ShortLivedNames {
                first_label: acme::CHALLENGE_LABEL.to_string(),
                records: node.short_lived().records(),
            }),
        },
    )
    .await?;
    dns.register_metrics(registry).context("DNS metrics")?;
    Ok(dns)
}

/// The public router (the relay, DoH, the probes), with its metrics and rate limits.
fn public_router(
    config: &Config,
    node: &Arc<Node>,
    dns: &DnsServer,
    dht_resolver: Option<Arc<pkraft_dht::Resolver>>,
    registry: &prometheus::Registry,
) -> anyhow::Result<axum::Router> {
    let http_metrics = Arc::new(pkraft_http::metrics::HttpMetrics::new()?);
    http_metrics.register(registry).context("HTTP metrics")?;
    let rate_limits = Arc::new(pkraft_http::rate_limit::RateLimits::new(
        &config.rate_limit,
    )?);
    rate_limits
        .register(registry)
        .context("rate limit metrics")?;
    let keys = pkraft_http::key_cache::KeyCache::new(config.http.key_cache_entries)?;
    keys.register(registry).context("key cache metrics")?;
    Ok(pkraft_http::router(pkraft_http::AppState {
        node: node.clone(),
        settings: Arc::new(config.http.clone()),
        dns: dns.answerer(),
        metrics: http_metrics,
        rate_limits,
        keys,
        dht: dht_resolver,
    }))
}

/// The public listeners serving, and the certificate reloaders of the peer and HTTPS files.
struct ServedPublic {
    https: Option<HttpsListener>,
    http: Listener,
    http_addr: SocketAddr,
    reloaders: Vec<certificates::CertificateReloader>,
}

/// Binds `[https]` (when configured) and `http.listen` and serves the public router on them;
/// with reloaders of the certificate files of the peer network (`peer_tls`) and of `[https]`.
async fn serve_public(
    config: &Config,
    node: &Arc<Node>,
    registry: &prometheus::Registry,
    public: PublicListeners,
    admissions: &mut Admissions,
    peer_tls: Option<(
        pkraft_raft::peer::tls::PeerTlsSettings,
        Arc<pkraft_raft::peer::tls::PeerTls>,
    )>,
) -> anyhow::Result<ServedPublic> {
    let certificate_metrics = certificates::CertificateMetrics::new()?;
    certificate_metrics
        .register(registry)
        .context("certificate metrics")?;
    let mut reloaders = Vec::new();
    if let Some((settings, tls)) = peer_tls {
        reloaders.push(certificates::CertificateReloader::new(
            "peer",
            Box::new(certificates::PeerFiles {
                settings: settings.clone(),
                tls: tls.clone(),
            }),
            &tls.certificate(),
            settings.reload_interval,
            certificate_metrics.clone(),
        ));
    }
    let https = match &config.https {
        Some(settings) => Some(
            serve_https(
                config,
                settings,
                node,
                registry,
                &public,
                admissions,
                (&certificate_metrics, &mut reloaders),
            )
            .await?,
        ),
        None => None,
    };
    let http_listener = bind_tcp(config.http.listen, "http.listen").await?;
    let http_addr = http_listener.local_addr()?;
    let http = Listener::serve(
        http_listener,
        None,
        public.app,
        public.limits,
        admissions.add(HTTP_LISTENER, public.caps),
    );
    Ok(ServedPublic {
        https,
        http,
        http_addr,
        reloaders,
    })
}

/// Binds `[https]` and serves the public router on it, with its certificate from an ACME CA
/// (the client's task started) or from files reloaded on change (a reloader added).
async fn serve_https(
    config: &Config,
    settings: &https::HttpsSettings,
    node: &Arc<Node>,
    registry: &prometheus::Registry,
    public: &PublicListeners,
    admissions: &mut Admissions,
    (certificate_metrics, reloaders): (
        &certificates::CertificateMetrics,
        &mut Vec<certificates::CertificateReloader>,
    ),
) -> anyhow::Result<HttpsListener> {
    let (certificate, acme): (Arc<dyn rustls::server::ResolvesServerCert>, _) = match &settings.acme
    {
        Some(acme) => {
            let acme_metrics = acme::AcmeMetrics::new()?;
            acme_metrics.register(registry).context("ACME metrics")?;
            let client = acme::start(
                acme,
                &config.data_dir,
                node.clone(),
                certificate_metrics.clone(),
                acme_metrics,
            )
            .await?;
            (client.resolver, Some(client.task))
        }
        None => {
            let files = https::HttpsFiles::load_first(settings)?;
            let certificate = files.certificate();
            reloaders.push(certificates::CertificateReloader::new(
                "https",
                Box::new(files),
                &certificate.current(),
                settings.reload_interval,
                certificate_metrics.clone(),
            ));
            (certificate, None)
        }
    };
    let tls_alpn_01 = settings
        .acme
        .as_ref()
        .is_some_and(|acme| acme.challenge == acme::Challenge::TlsAlpn01);
    let tls = https::server_config(certificate, tls_alpn_01)?;
    let listener = bind_tcp(settings.listen, "https.listen").await?;
    let addr = listener.local_addr()?;
    let listener = Listener::serve(
        listener,
        Some(tls),
        public.app.clone(),
        public.limits.clone(),
        admissions.add(HTTPS_LISTENER, public.caps.clone()),
    );
    Ok(HttpsListener {
        listener,
        addr,
        acme,
    })
}

impl Server {
    /// Binds the peer listener (its address goes into the membership), starts Raft on the data
    /// dir, then binds the admin, HTTP and DNS listeners. `secrets` come from
    /// [`Config::secrets`].
    pub async fn bind(config: &Config, secrets: config::Secrets) -> anyhow::Result<Server> {
        config.validate()?;
        let peer_tls = config
            .cluster
            .tls
            .as_ref()
            .map(|settings| {
                settings
                    .load(config.node_id)
                    .map(|tls| (settings.clone(), Arc::new(tls)))
            })
            .transpose()?;
        let peer_listener = bind_tcp(config.cluster.peer_listen, "cluster.peer_listen").await?;
        let peer_addr = peer_listener.local_addr()?;
        let (node, raft_runtime) =
            start_node(config, secrets.cluster, peer_addr, peer_tls.as_ref()).await?;
        let registry = registry_of(&node)?;
        let mut admissions = Admissions::default();
        let peer = serve_peer(
            config,
            &node,
            &raft_runtime,
            peer_listener,
            peer_tls.as_ref(),
            &mut admissions,
        )?;
        let admin_listener = bind_tcp(config.admin.listen, "admin.listen").await?;
        let admin_addr = admin_listener.local_addr()?;
        let admin = Listener::serve(
            admin_listener,
            None,
            pkraft_http::admin::router(pkraft_http::admin::AdminState {
                node: node.clone(),
                token: secrets.admin_token,
                registry: registry.clone(),
                ready_max_stale: config.http.ready_max_stale,
                import_rules: pkraft_http::import::ImportRules {
                    record_max_age: config.raft.record_max_age,
                    max_future_skew: config.http.max_future_skew,
                },
            }),
            pkraft_http::serve::ConnectionLimits::admin(),
            admissions.add(ADMIN_LISTENER, config.admin.connection_caps()),
        );
        let dht =
            pkraft_dht::DhtBridge::start(&config.dht, node.clone(), config.http.max_future_skew)
                .await?;
        if let Some(dht) = &dht {
            dht.metrics().register(&registry).context("DHT metrics")?;
        }
        let dht_resolver = dht.as_ref().and_then(pkraft_dht::DhtBridge::resolver);
        let dns = start_dns(config, &node, dht_resolver.clone(), &registry).await?;
        let public = public_router(config, &node, &dns, dht_resolver, &registry)?;
        let public_listeners = PublicListeners {
            app: public,
            limits: pkraft_http::serve::ConnectionLimits::public(&config.http),
            caps: config
                .http
                .connection_caps(&config.rate_limit.trusted_proxies),
        };
        let served = serve_public(
            config,
            &node,
            &registry,
            public_listeners,
            &mut admissions,
            peer_tls,
        )
        .await?;
        admissions.0.push(dns.tcp_admission());
        registry
            .register(Box::new(pkraft_http::metrics::ListenerCollector::new(
                admissions.0,
            )?))
            .context("listener metrics")?;
        Ok(Server {
            node,
            http_addr: served.http_addr,
            https: served.https,
            peer_addr,
            admin_addr,
            http: served.http,
            admin,
            peer,
            dns,
            dht,
            certificates: served
                .reloaders
                .into_iter()
                .map(|reloader| {
                    let reloader = Arc::new(reloader);
                    (reloader.clone(), certificates::spawn_checks(reloader))
                })
                .collect(),
            _raft_runtime: raft_runtime,
        })
    }

    /// The DHT node's UDP address, when `[dht]` is enabled.
    pub fn dht_addr(&self) -> Option<std::net::SocketAddrV4> {
        self.dht.as_ref().map(pkraft_dht::DhtBridge::local_addr)
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The `[https]` address, when configured.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().map(|https| https.addr)
    }

    /// Loads every listener's certificate files again, changed or not (SIGHUP), on a blocking
    /// thread of its own: the caller does not wait, so a file on a hung mount cannot hold up a
    /// stop. Files that cannot be used are refused and the certificate loaded before keeps
    /// serving ([`certificates`]).
    pub fn reload_certificates(&self, reason: &'static str) {
        if self.certificates.is_empty() {
            tracing::info!(reason, "no certificate files to reload");
            return;
        }
        let reloaders: Vec<_> = self
            .certificates
            .iter()
            .map(|(reloader, _)| reloader.clone())
            .collect();
        tokio::task::spawn_blocking(move || {
            for reloader in reloaders {
                reloader.reload_now(reason);
            }
        });
    }

    /// The DNS address (UDP and TCP).
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns.local_addr()
    }

    /// Resolves if Raft stops on its own (a fatal storage or consensus error), with the reason.
    pub async fn wait_fatal(&self) -> String {
        self.node.wait_fatal().await
    }

    /// Hands leadership over if this node leads, stops accepting client work, lets in-flight
    /// requests finish (bounded), stops DNS, then Raft; the peer listener goes last, so the
    /// cluster hears from this node until it is gone.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        // First, while every listener still serves: a leader hands its leadership to a
        // caught-up voter, so the cluster goes on taking writes without waiting out a failover
        // (its own clients' publishes are forwarded to the new leader meanwhile).
        self.node.handover().hand_over().await;
        self.http.stop("http").await?;
        for (_, checks) in &self.certificates {
            checks.abort();
        }
        if let Some(https) = self.https {
            if let Some(acme) = https.acme {
                acme.abort();
            }
            https.listener.stop("https").await?;
        }
        self.admin.stop("admin").await?;
        self.dns.shutdown().await?;
        if let Some(dht) = &self.dht {
            dht.shutdown();
        }
        self.node.shutdown().await;
        self.peer.stop("peer").await?;
        Ok(())
    }
}

/// The DHT bridge's resolver as the DNS zones ask it for keys the local replica does not hold
/// (pkraft-dns does not depend on the DHT bridge, which links the consensus layer).
struct DhtMissingKeys(Arc<pkraft_dht::Resolver>);

#[async_trait::async_trait]
impl MissingKeys for DhtMissingKeys {
    async fn resolve(&self, key: &KeyBytes) -> Option<Payload> {
        self.0.resolve(key).await
    }
}
