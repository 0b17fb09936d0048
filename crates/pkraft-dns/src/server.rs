//! [`DnsServer`]: hickory-server on one UDP socket and one TCP listener sharing a port.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::rr::LowerName;
use hickory_server::Server;
use hickory_server::zone_handler::{Catalog, ZoneHandler};
use pkraft_store::Store;
use tokio::net::{TcpListener, UdpSocket};

use crate::freshness::{FreshnessGuard, Staleness};
use crate::settings::{Settings, SettingsError};
use crate::zone::PkarrZone;

/// Responses queued per TCP connection before the connection stops reading requests.
const TCP_RESPONSE_QUEUE_LEN: usize = 32;
/// Attempts to find a port free for both UDP and TCP when the configured port is 0.
const SHARED_PORT_ATTEMPTS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("dns.listen {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("dns server: {0}")]
    Server(String),
}

/// A running DNS frontend. Answers until [`DnsServer::shutdown`].
pub struct DnsServer {
    server: Server<FreshnessGuard<Catalog>>,
    local_addr: SocketAddr,
}

impl DnsServer {
    /// Binds UDP and TCP on `settings.listen` and starts answering from `store`, or SERVFAIL
    /// while `staleness` exceeds `settings.max_stale`.
    pub async fn bind(
        settings: &Settings,
        store: Store,
        staleness: Staleness,
    ) -> Result<DnsServer, DnsError> {
        let zones = settings.zones()?;
        let mut catalog = Catalog::new();
        for origin in &zones.origins {
            let zone: Arc<dyn ZoneHandler> =
                Arc::new(PkarrZone::new(origin, &zones, store.clone()));
            catalog.upsert(LowerName::new(origin), vec![zone]);
        }
        let (udp, tcp) = bind_shared_port(settings.listen).await?;
        let local_addr = udp.local_addr().map_err(|source| DnsError::Bind {
            addr: settings.listen,
            source,
        })?;
        let handler = FreshnessGuard::new(catalog, staleness, settings.max_stale);
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, settings.tcp_idle_timeout, TCP_RESPONSE_QUEUE_LEN);
        Ok(DnsServer { server, local_addr })
    }

    /// The address answering on UDP and TCP.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting queries and waits for in-flight ones to finish.
    pub async fn shutdown(mut self) -> Result<(), DnsError> {
        self.server
            .shutdown_gracefully()
            .await
            .map_err(|e| DnsError::Server(e.to_string()))
    }
}

/// Binds UDP and TCP on the same port. With port 0 the kernel picks the UDP port, and TCP may find
/// it taken; then both are retried, a bounded number of times.
async fn bind_shared_port(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let bind_error = |source| DnsError::Bind { addr, source };
    if addr.port() != 0 {
        let udp = UdpSocket::bind(addr).await.map_err(bind_error)?;
        let tcp = TcpListener::bind(addr).await.map_err(bind_error)?;
        return Ok((udp, tcp));
    }
    let mut last_error = None;
    for _ in 0..SHARED_PORT_ATTEMPTS {
        let udp = UdpSocket::bind(addr).await.map_err(bind_error)?;
        let port = udp.local_addr().map_err(bind_error)?.port();
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_error = Some(e),
            Err(e) => return Err(bind_error(e)),
        }
    }
    Err(bind_error(last_error.unwrap_or_else(|| {
        io::Error::from(io::ErrorKind::AddrInUse)
    })))
}
