//! [`DnsServer`]: UDP sockets (one, or several with `SO_REUSEPORT`) and one TCP listener sharing a
//! port. TCP goes through [`crate::tcp`] (within connection limits), UDP through [`crate::udp`]
//! (which rate-limits answers per client network and answers repeated queries from the answer
//! cache); both answer the one way of [`crate::answering`], as DNS-over-HTTPS does.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::LowerName;
use hickory_server::zone_handler::{Catalog, ZoneHandler};
use pkraft_limits::connections::Admission;
use pkraft_state::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::answer_cache::AnswerCache;
use crate::answering::{Answerer, Answering};
use crate::freshness::{FreshnessBound, FreshnessProbe};
use crate::local::LocalAnswers;
use crate::metrics::{DnsCollector, DnsMetrics, UdpAnswerStats, UdpReport};
use crate::missing_keys::MissingKeys;
use crate::record_cache::RecordCache;
use crate::rrl::Rrl;
use crate::settings::{Settings, SettingsError, Zones};
use crate::tcp::{self, TcpFrontend};
use crate::udp::{self, UdpFrontend};
use crate::zone::{PkarrZone, ShortLivedNames};

/// Attempts to find a port free for both UDP and TCP when the configured port is 0.
const SHARED_PORT_ATTEMPTS: usize = 16;
/// How long `shutdown` waits for queries in flight (a TCP client that never reads its answer
/// must not hold the daemon up).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("dns.listen {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    /// The DNS metrics could not be made.
    #[error("dns metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A running DNS frontend. Answers until [`DnsServer::shutdown`].
pub struct DnsServer {
    /// The TCP listener of [`crate::tcp`] and the UDP loops of [`crate::udp`], and their stop.
    loops: JoinSet<()>,
    stop_loops: watch::Sender<bool>,
    udp_frontend: Arc<UdpFrontend>,
    /// The TCP listener's connection admission (caps, counts).
    tcp_admission: Arc<Admission>,
    records: Arc<RecordCache>,
    metrics: Arc<DnsMetrics>,
    local_addr: SocketAddr,
    answerer: Answerer,
}

/// What answers besides the local replica's packets ([`DnsServer::bind_with`]).
#[derive(Default)]
pub struct AnswerSources {
    /// Asked for keys the local replica does not hold (`[dht]` with `resolve`).
    pub dht: Option<Arc<dyn MissingKeys>>,
    /// The short-lived records committed through the cluster, and the names they are answered
    /// at.
    pub short_lived: Option<ShortLivedNames>,
}

/// hickory's catalog of one [`PkarrZone`] per origin, and the zones themselves (for the local
/// answers), all answering from `records` and the other `sources`.
fn zone_catalog(
    zones: &Zones,
    records: &Arc<RecordCache>,
    dht: &Option<Arc<dyn MissingKeys>>,
    short_lived: &Option<ShortLivedNames>,
) -> (Catalog, Vec<Arc<PkarrZone>>) {
    let mut catalog = Catalog::new();
    let mut pkarr_zones = Vec::new();
    for origin in &zones.origins {
        let zone = Arc::new(PkarrZone::new(
            origin,
            zones,
            records.clone(),
            dht.clone(),
            short_lived.clone(),
        ));
        pkarr_zones.push(zone.clone());
        let zone: Arc<dyn ZoneHandler> = zone;
        catalog.upsert(LowerName::new(origin), vec![zone]);
    }
    (catalog, pkarr_zones)
}

/// The one way every listener answers ([`crate::answering`]): the freshness bound, the local
/// answers of `zones` (when `dns.direct_answers`), and hickory's chain over `catalog`.
fn answering(
    settings: &Settings,
    catalog: Catalog,
    zones: Vec<Arc<PkarrZone>>,
    freshness: FreshnessProbe,
    metrics: &DnsMetrics,
) -> Answering {
    Answering::new(
        FreshnessBound::new(
            freshness,
            settings.max_stale,
            metrics.stale_refusals.clone(),
        ),
        LocalAnswers::new(zones, settings.udp_payload_max),
        settings.direct_answers,
        catalog,
        settings.udp_payload_max,
    )
}

/// What answers a query, whichever way it came: the records read from the replica, the
/// catalog and its answering, and their metrics. Built once for the listeners and DoH alike.
struct Answers {
    records: Arc<RecordCache>,
    answering: Arc<Answering>,
    metrics: Arc<DnsMetrics>,
}

impl Answers {
    fn build(
        settings: &Settings,
        store: &Store,
        freshness: FreshnessProbe,
        sources: AnswerSources,
    ) -> Result<Answers, DnsError> {
        let AnswerSources { dht, short_lived } = sources;
        let zones = settings.zones()?;
        let records = Arc::new(RecordCache::new(
            store.clone(),
            settings.record_cache_bytes(),
        ));
        let (catalog, pkarr_zones) = zone_catalog(&zones, &records, &dht, &short_lived);
        let metrics = Arc::new(DnsMetrics::new()?);
        let answering = Arc::new(answering(
            settings,
            catalog,
            pkarr_zones,
            freshness,
            &metrics,
        ));
        Ok(Answers {
            records,
            answering,
            metrics,
        })
    }
}

impl Answerer {
    /// The answers of [`DnsServer::bind_with`] for DoH, without its listeners: for a host
    /// whose network is not the machine's (the simulated cluster's nodes serve their public
    /// router on a simulated network, where a bound UDP or TCP socket would escape it).
    pub fn unbound(
        settings: &Settings,
        store: &Store,
        freshness: FreshnessProbe,
        sources: AnswerSources,
    ) -> Result<Answerer, DnsError> {
        let Answers {
            answering, metrics, ..
        } = Answers::build(settings, store, freshness, sources)?;
        Ok(Answerer::new(answering, metrics))
    }
}

impl DnsServer {
    /// Binds UDP and TCP on `settings.listen` and starts answering from `store`, or SERVFAIL
    /// while `freshness` says the replica is catching up after a crash or staler than
    /// `settings.max_stale`.
    pub async fn bind(
        settings: &Settings,
        store: Store,
        freshness: FreshnessProbe,
    ) -> Result<DnsServer, DnsError> {
        DnsServer::bind_with(settings, store, freshness, AnswerSources::default()).await
    }

    /// [`DnsServer::bind`], with what else answers besides the local replica.
    pub async fn bind_with(
        settings: &Settings,
        store: Store,
        freshness: FreshnessProbe,
        sources: AnswerSources,
    ) -> Result<DnsServer, DnsError> {
        let short_lived = sources.short_lived.clone();
        let Answers {
            records,
            answering,
            metrics,
        } = Answers::build(settings, &store, freshness, sources)?;
        let (udp, tcp) = bind_shared_port(settings.listen, settings.udp_socket_count()).await?;
        let local_addr = tcp.local_addr().map_err(|source| DnsError::Bind {
            addr: settings.listen,
            source,
        })?;
        let answerer = Answerer::new(answering.clone(), metrics.clone());
        let (stop_loops, stop) = watch::channel(false);
        let mut loops = JoinSet::new();
        let tcp_admission = Admission::new(tcp::TCP_LISTENER, settings.tcp_connection_caps());
        let tcp_frontend = Arc::new(TcpFrontend {
            answering: answering.clone(),
            metrics: metrics.clone(),
            idle_timeout: settings.tcp_idle_timeout,
            max_queries: settings.tcp_max_queries_per_connection,
            pipeline_max: settings.tcp_pipeline_max,
        });
        loops.spawn(tcp::serve(
            tcp,
            tcp_frontend,
            tcp_admission.clone(),
            stop.clone(),
        ));
        let rrl = Rrl::new(&settings.rrl).map_err(SettingsError::from)?;
        // The answer cache keeps local answers only (module docs of `answer_cache`), so it is
        // on only with them.
        let answer_cache_bytes = if settings.direct_answers {
            settings.answer_cache_bytes()
        } else {
            0
        };
        let answers = (answer_cache_bytes > 0).then(|| {
            let records = short_lived.as_ref().map(|names| names.records.clone());
            AnswerCache::new(store, answer_cache_bytes, records)
        });
        let udp_frontend = Arc::new(UdpFrontend::new(
            answering,
            answers,
            rrl,
            settings,
            udp.len(),
            metrics.clone(),
        ));
        for (index, socket) in udp.into_iter().enumerate() {
            let served = udp::spawn(socket, udp_frontend.clone(), index, stop.clone()).map_err(
                |source| DnsError::Bind {
                    addr: settings.listen,
                    source,
                },
            )?;
            loops.spawn(served);
        }
        Ok(DnsServer {
            loops,
            stop_loops,
            udp_frontend,
            tcp_admission,
            records,
            metrics,
            local_addr,
            answerer,
        })
    }

    /// Answers DNS messages that arrive another way (DNS-over-HTTPS) exactly as this server does.
    pub fn answerer(&self) -> Answerer {
        self.answerer.clone()
    }

    /// Registers the DNS frontend's metrics (docs/METRICS.md: `pkraft_dns_*`).
    pub fn register_metrics(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        let udp: Arc<dyn UdpReport> = self.udp_frontend.clone();
        registry.register(Box::new(DnsCollector::new(
            self.metrics.clone(),
            self.records.clone(),
            udp,
        )?))
    }

    /// How UDP queries were answered.
    pub fn udp_answer_stats(&self) -> UdpAnswerStats {
        self.udp_frontend.stats()
    }

    /// The DNS-over-TCP listener's connection admission (for the listener metrics).
    pub fn tcp_admission(&self) -> Arc<Admission> {
        self.tcp_admission.clone()
    }

    /// The address answering on UDP and TCP.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting queries and waits (at most `SHUTDOWN_TIMEOUT`) for in-flight ones to
    /// finish; past it they are dropped, so a stuck connection cannot hold the daemon up.
    pub async fn shutdown(mut self) -> Result<(), DnsError> {
        // The loops see the stop even if every receiver of it is gone (`has_changed` errs).
        let _ = self.stop_loops.send(true);
        let drain = async { while self.loops.join_next().await.is_some() {} };
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, drain).await {
            Ok(()) => Ok(()),
            Err(_) => {
                tracing::warn!(timeout = ?SHUTDOWN_TIMEOUT, "DNS queries still in flight; stopping anyway");
                Ok(())
            }
        }
    }
}

/// Binds `udp_sockets` UDP sockets (with `SO_REUSEPORT` when more than one; non-blocking, as
/// tokio takes them) and a TCP listener on the same port.
///
/// With port 0, TCP picks the port and UDP follows; if UDP finds it taken, both are retried, a
/// bounded number of times. Not the other way round: a UDP socket with `SO_REUSEPORT` that asks
/// for any port may be given one where another process's group of such sockets already listens
/// (Linux counts a port shareable as free), and the two would split each other's queries. A TCP
/// listener's port is its own, and no other pkraft binds UDP to a port it does not hold in TCP.
async fn bind_shared_port(
    addr: SocketAddr,
    udp_sockets: usize,
) -> Result<(Vec<std::net::UdpSocket>, TcpListener), DnsError> {
    let bind_error = |source| DnsError::Bind { addr, source };
    let reuse_port = udp_sockets > 1;
    let bind_udp = |port: u16| -> io::Result<Vec<std::net::UdpSocket>> {
        let shared = SocketAddr::new(addr.ip(), port);
        (0..udp_sockets)
            .map(|_| udp_socket(shared, reuse_port))
            .collect()
    };
    if addr.port() != 0 {
        let udp = bind_udp(addr.port()).map_err(bind_error)?;
        let tcp = TcpListener::bind(addr).await.map_err(bind_error)?;
        return Ok((udp, tcp));
    }
    let mut last_error = None;
    for _ in 0..SHARED_PORT_ATTEMPTS {
        let tcp = TcpListener::bind(addr).await.map_err(bind_error)?;
        let port = tcp.local_addr().map_err(bind_error)?.port();
        match bind_udp(port) {
            Ok(udp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_error = Some(e),
            Err(e) => return Err(bind_error(e)),
        }
    }
    Err(bind_error(last_error.unwrap_or_else(|| {
        io::Error::from(io::ErrorKind::AddrInUse)
    })))
}

/// A non-blocking UDP socket bound to `addr`.
fn udp_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}
