//! The connection loop of every HTTP listener (public, `[https]`, admin, peer): HTTP/1.1 and
//! HTTP/2 through hyper, optionally over TLS, with limits on what a connection may hold.
//!
//! `axum::serve` has none of these limits, and iroh-dns-server, which uses it, leaked connections
//! that clients abandoned. Here:
//! - at most `max_connections` are open; the loop stops accepting while that many are (the
//!   kernel's backlog holds new ones), and frees a slot as each closes;
//! - at most `max_connections_per_client` from one address (trusted proxies exempt); more are
//!   closed at once, so one host cannot take every slot;
//! - request headers must arrive within `header_read_timeout` (also the longest an HTTP/1.1
//!   connection may wait for its next request: hyper starts that timer when a request ends), in
//!   at most `max_headers` fields and `max_header_bytes`;
//! - a connection with no bytes in either direction for `idle_timeout` is shut down gracefully
//!   (HTTP/2 has no other idle limit);
//! - TCP keepalive probes find peers that vanished without a FIN;
//! - a TLS handshake gets `tls_handshake_timeout`, in the connection's own task.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use pkraft_limits::TrustedProxies;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

/// After an accept error (out of file descriptors, say), wait this long before the next accept.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What one listener's connections may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// 0: no per-client limit.
    pub max_connections_per_client: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub tcp_keepalive: Duration,
    pub max_headers: usize,
    /// hyper's HTTP/1 read buffer, which bounds the request head; at least 8,192.
    pub max_header_bytes: usize,
    pub http2_max_concurrent_streams: u32,
    pub tls_handshake_timeout: Duration,
}

impl ConnectionLimits {
    /// The public listeners' limits, from `[http]`.
    pub fn public(http: &pkraft_http::Settings) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: http.max_connections,
            max_connections_per_client: http.max_connections_per_client,
            header_read_timeout: http.header_read_timeout,
            idle_timeout: http.idle_timeout,
            tcp_keepalive: http.tcp_keepalive,
            max_headers: http.max_headers,
            max_header_bytes: http.max_header_bytes,
            http2_max_concurrent_streams: http.http2_max_concurrent_streams,
            tls_handshake_timeout: http.tls_handshake_timeout,
        }
    }

    /// The admin and peer listeners: few, known clients (operators, other nodes). The same
    /// protections against abandoned connections, no per-client limit.
    pub fn internal() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 1_024,
            max_connections_per_client: 0,
            ..ConnectionLimits::public(&pkraft_http::Settings::default())
        }
    }
}

/// Serves `app` on `listener` (over TLS when `tls` is set) until `stopped` resolves; then stops
/// accepting, asks every connection to finish its requests and close, and waits for them.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: axum::Router,
    limits: ConnectionLimits,
    proxies: TrustedProxies,
    stopped: oneshot::Receiver<()>,
) -> io::Result<()> {
    let builder = Arc::new(http_builder(&limits));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_client = Arc::new(PerClient::new(limits.max_connections_per_client, proxies));
    let (stop_connections, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(stopped);
    loop {
        // A free slot first: while every slot is taken, new connections wait in the backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = &mut stopped => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        // Reap finished connection tasks so the set does not grow.
        while connections.try_join_next().is_some() {}
        let Some(client_slot) = per_client.enter(peer.ip()) else {
            tracing::debug!(%peer, "too many connections from this client; closing");
            continue;
        };
        if let Err(e) = tune_socket(&tcp, limits.tcp_keepalive) {
            tracing::debug!(%peer, error = %e, "cannot set socket options");
        }
        let connection = Connection {
            peer,
            app: app.clone(),
            builder: builder.clone(),
            idle_timeout: limits.idle_timeout,
            stopping: stopping.clone(),
            _slots: (slot, client_slot),
        };
        let tls = tls.clone();
        let handshake_timeout = limits.tls_handshake_timeout;
        connections.spawn(async move {
            let stream = TrackedStream::new(tcp);
            match tls {
                None => connection.run(stream).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => connection.run(tls).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    let _ = stop_connections.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// The hyper connection builder with the HTTP/1 and HTTP/2 limits.
fn http_builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8_192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// `TCP_NODELAY` (answers are small and must not wait for an ACK) and keepalive probes.
fn tune_socket(tcp: &TcpStream, keepalive: Duration) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let socket = socket2::SockRef::from(tcp);
    socket.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(keepalive)
            .with_interval(keepalive / 4)
            .with_retries(4),
    )
}

/// One accepted connection, holding its slots until it ends.
struct Connection {
    peer: SocketAddr,
    app: axum::Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    idle_timeout: Duration,
    stopping: watch::Receiver<bool>,
    _slots: (OwnedSemaphorePermit, ClientSlot),
}

impl Connection {
    /// Serves requests until the client closes, the connection is idle too long, or the
    /// server stops.
    async fn run<S>(mut self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + ActivityClock + 'static,
    {
        let activity = stream.activity();
        let peer = self.peer;
        // axum's `ConnectInfo`, which the rate limits read, as `axum::serve` would attach it.
        let service =
            self.app
                .clone()
                .map_request(move |mut request: axum::http::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                });
        let connection = self.builder.serve_connection_with_upgrades(
            TokioIo::new(stream),
            TowerToHyperService::new(service),
        );
        tokio::pin!(connection);
        let mut shutting_down = false;
        loop {
            let idle_deadline = activity.last() + self.idle_timeout;
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = tokio::time::sleep_until(idle_deadline.into()), if !shutting_down => {
                    if activity.last() + self.idle_timeout <= Instant::now() {
                        tracing::debug!(%peer, "closing an idle connection");
                        connection.as_mut().graceful_shutdown();
                        shutting_down = true;
                    }
                }
                _ = self.stopping.wait_for(|stop| *stop), if !shutting_down => {
                    connection.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
            }
        }
    }
}

/// Open connections per client address; holds only addresses with open connections.
type OpenConnections = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Open connections per client address, so one address cannot take every slot.
struct PerClient {
    max: usize,
    exempt: TrustedProxies,
    open: OpenConnections,
}

/// One connection counted against its client; uncounted when dropped.
struct ClientSlot {
    client: Option<(IpAddr, OpenConnections)>,
}

impl PerClient {
    fn new(max: usize, exempt: TrustedProxies) -> PerClient {
        PerClient {
            max,
            exempt,
            open: Arc::default(),
        }
    }

    /// A slot for one more connection from `ip`, or `None` if it has `max` open. The map holds
    /// only addresses with open connections, so it is bounded by the listener's slots.
    fn enter(&self, ip: IpAddr) -> Option<ClientSlot> {
        let ip = ip.to_canonical();
        if self.max == 0 || self.exempt.contains(ip) {
            return Some(ClientSlot { client: None });
        }
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            client: Some((ip, self.open.clone())),
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Some((ip, open)) = self.client.take() {
            let mut open = open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(count) = open.get_mut(&ip) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    open.remove(&ip);
                }
            }
        }
    }
}

/// When a stream last moved bytes.
#[derive(Clone)]
struct Activity {
    origin: Instant,
    /// Milliseconds after `origin`.
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            origin: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A stream that can tell when it last moved bytes (a TLS stream asks the TCP stream inside).
trait ActivityClock {
    fn activity(&self) -> Activity;
}

impl<S: ActivityClock> ActivityClock for tokio_rustls::server::TlsStream<S> {
    fn activity(&self) -> Activity {
        self.get_ref().0.activity()
    }
}

/// An accepted TCP stream that notes when bytes last moved and acknowledges what it reads at
/// once (`TCP_QUICKACK` after every read; Linux clears it again by itself).
///
/// Why the quick ACK: HTTP/2 clients such as nghttp2 (dnsperf, curl) write a POST's HEADERS and
/// DATA frames in two writes with Nagle's algorithm on, so the DATA waits for the HEADERS to be
/// acknowledged, and a server with nothing to send yet delays that ACK by up to 40 ms. Measured
/// with `dnsperf -m doh -O doh-method=POST -c 20`: 5k queries/s at 20 ms mean latency without
/// this, 53k at 1.5 ms with it (GET, one frame, unchanged at ≈ 60k). The cost is one
/// `setsockopt` per read.
struct TrackedStream {
    tcp: TcpStream,
    activity: Activity,
}

impl TrackedStream {
    fn new(tcp: TcpStream) -> TrackedStream {
        let activity = Activity::new();
        activity.touch();
        TrackedStream { tcp, activity }
    }
}

impl ActivityClock for TrackedStream {
    fn activity(&self) -> Activity {
        self.activity.clone()
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if result.is_ready() {
            // Best effort: without it the connection only answers later.
            let _ = socket2::SockRef::from(&self.tcp).set_tcp_quickack(true);
            if buf.filled().len() > before {
                self.activity.touch();
            }
        }
        result
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.tcp).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_client_slots_are_counted_and_given_back() {
        let proxies = TrustedProxies::new(vec!["10.0.0.1/32".parse().expect("net")]);
        let limits = PerClient::new(2, proxies);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let first = limits.enter(a).expect("first");
        let second = limits.enter(a).expect("second");
        assert!(limits.enter(a).is_none(), "a third connection");
        assert!(limits.enter("192.0.2.2".parse().expect("ip")).is_some());
        // A trusted proxy carries many clients.
        let proxy: IpAddr = "10.0.0.1".parse().expect("ip");
        let through_proxy: Vec<_> = (0..10).filter_map(|_| limits.enter(proxy)).collect();
        assert_eq!(through_proxy.len(), 10);
        drop(first);
        let third = limits.enter(a).expect("a slot came back");
        drop((second, third));
        assert!(
            limits.open.lock().expect("lock").is_empty(),
            "closed clients are forgotten"
        );
    }
}
