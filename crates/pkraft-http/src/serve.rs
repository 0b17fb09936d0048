//! The connection loop of every HTTP listener (public, `[https]`, admin, peer): HTTP/1.1 and
//! HTTP/2 through hyper, optionally over TLS, with limits on what a connection may hold.
//!
//! `axum::serve` has none of these limits, and iroh-dns-server, which uses it, leaked connections
//! that clients abandoned. Here:
//! - connections are admitted by the listener's [`Admission`]: at most `max_connections` open
//!   (the loop stops accepting while that many are; the kernel's backlog holds new ones), at most
//!   `max_per_client` from one client (an IPv4 address or an IPv6 prefix), accept errors backed
//!   off (`pkraft_limits::connections`);
//! - the first request must start within `first_request_timeout` of the accept (whatever the
//!   protocol: hyper-util reads the HTTP/2 preface, and HTTP/2 headers, without a deadline of
//!   its own), and every later HTTP/1.1 request head within `header_read_timeout` of its first
//!   byte or of the previous request's end (hyper's own timer), in at most `max_headers` fields
//!   and `max_header_bytes`;
//! - a connection with no request in flight (a request counts until its answer is ready; on the
//!   admin and peer listeners until its body is sent) for `idle_timeout` is shut down gracefully
//!   (bytes alone, such as HTTP/2 PINGs or a trickled header, do not count as activity), and one
//!   that has not finished within [`SHUTDOWN_GRACE`] after that is dropped;
//! - while the listener is under pressure (most slots taken), both limits above are at most
//!   [`PRESSURE_IDLE_TIMEOUT`], so idle connections make room for new clients;
//! - on the peer listener (`unauthenticated_max`), a connection is on probation until one of its
//!   requests passes authentication: one whose request does not is closed after the answer, and
//!   at most `unauthenticated_max` are on probation at once, the oldest dropped for a new one, so
//!   strangers cannot hold the slots the cluster's own connections need;
//! - TCP keepalive probes and `TCP_USER_TIMEOUT` find peers that vanished or stopped reading;
//! - a TLS handshake gets `tls_handshake_timeout`, in the connection's own task;
//! - a request whose handler panics is answered 500 and its connection goes on, and a panic
//!   elsewhere in a connection's task ends that connection alone: both logged and counted in
//!   `pkraft_connection_panics_total{listener}` (`pkraft_tasks`).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use pkraft_limits::connections::{Admission, PRESSURE_IDLE_TIMEOUT, Ticket};
use pkraft_raft::peer::tls::PeerCertificates;
use pkraft_raft::routes::Authenticated;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;
use tower_http::catch_panic::CatchPanicLayer;

/// How long a connection asked to shut down (idle, or the server stopping) may take to finish
/// its requests before it is dropped: a client that stops reading would hold it forever.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What one listener's connections may hold (the caps on connections are its [`Admission`]'s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// The first request must start within this of the accept (a TLS handshake included).
    pub first_request_timeout: Duration,
    /// hyper's HTTP/1.1 limit: a request head must arrive within this of its first byte, and
    /// the next request within this of the previous one's end.
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub tcp_keepalive: Duration,
    pub max_headers: usize,
    /// hyper's HTTP/1 read buffer, which bounds the request head; at least 8,192.
    pub max_header_bytes: usize,
    pub http2_max_concurrent_streams: u32,
    pub tls_handshake_timeout: Duration,
    /// Whether a request counts as in flight until its answer's body is sent (a streamed backup
    /// may take minutes), rather than until the answer is ready. Only for listeners whose
    /// clients are trusted: an HTTP/2 client that opens no flow-control window would otherwise
    /// hold its connection open for good.
    pub body_counts_as_activity: bool,
    /// Connections whose requests must be authenticated (the router marks the answers of those
    /// that are with [`Authenticated`]): at most this many on probation at once (module docs).
    /// `None`: no probation (the public and admin listeners).
    pub unauthenticated_max: Option<usize>,
}

/// How long a private listener (admin, peer) waits for a connection's first request: its
/// clients are programs that send at once, so a connection silent this long is a stranger's.
const PRIVATE_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections on probation at once on the peer listener. A node's connections leave probation
/// with their first request, within milliseconds of the accept; this many strangers' connections
/// arriving in that time would be needed to push one out.
pub const PEER_UNAUTHENTICATED_MAX: usize = 64;

impl ConnectionLimits {
    /// The public listeners' limits, from `[http]`.
    pub fn public(http: &crate::Settings) -> ConnectionLimits {
        ConnectionLimits {
            first_request_timeout: http.header_read_timeout,
            header_read_timeout: http.header_read_timeout,
            idle_timeout: http.idle_timeout,
            tcp_keepalive: http.tcp_keepalive,
            max_headers: http.max_headers,
            max_header_bytes: http.max_header_bytes,
            http2_max_concurrent_streams: http.http2_max_concurrent_streams,
            tls_handshake_timeout: http.tls_handshake_timeout,
            body_counts_as_activity: false,
            unauthenticated_max: None,
        }
    }

    /// The admin listener: few, known clients (operators, Prometheus, `pkraft cluster`). The same
    /// protections against abandoned connections, a first request within 5 s, and idle limits
    /// well above a scrape interval.
    pub fn admin() -> ConnectionLimits {
        ConnectionLimits {
            first_request_timeout: PRIVATE_FIRST_REQUEST_TIMEOUT,
            header_read_timeout: Duration::from_secs(90),
            idle_timeout: Duration::from_secs(300),
            tls_handshake_timeout: PRIVATE_FIRST_REQUEST_TIMEOUT,
            body_counts_as_activity: true,
            ..ConnectionLimits::public(&crate::Settings::default())
        }
    }

    /// The peer listener: the admin listener's limits, and probation until authenticated (module
    /// docs). Its idle limits are well above the peer client's pool (30 s), so that a pooled
    /// connection is never closed by the listener just as the client sends on it.
    pub fn peer() -> ConnectionLimits {
        ConnectionLimits {
            unauthenticated_max: Some(PEER_UNAUTHENTICATED_MAX),
            ..ConnectionLimits::admin()
        }
    }
}

/// Serves `app` on `listener` (over TLS when `tls` is set), admitting connections through
/// `admission`, until `stopped` resolves; then stops accepting, asks every connection to finish
/// its requests and close, and waits for them.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: axum::Router,
    limits: ConnectionLimits,
    admission: Arc<Admission>,
    stopped: oneshot::Receiver<()>,
) -> io::Result<()> {
    let builder = Arc::new(http_builder(&limits, admission.name()));
    let probation = limits
        .unauthenticated_max
        .map(|max| Arc::new(Probation::new(max)));
    let (stop_connections, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    let listener_name = admission.name();
    // A request whose handler panics is answered 500, logged and counted, and its connection
    // goes on; a panic elsewhere in a connection's task ends that connection alone
    // (`pkraft_tasks::guard_connection`). Either is a bug.
    let app = app.layer(CatchPanicLayer::custom(
        move |payload: Box<dyn std::any::Any + Send>| {
            pkraft_tasks::request_panicked(listener_name, payload.as_ref());
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
        },
    ));
    // A panic while accepting or starting a connection is logged and counted with the
    // listener's name for its task, and the loop goes on: the listener and the connections it
    // started stay (`pkraft_tasks::Rounds`).
    let mut rounds = pkraft_tasks::Rounds::new(listener_name);
    tokio::pin!(stopped);
    loop {
        let round = rounds.run(async {
            let (tcp, peer, ticket) = admission.accept(&listener).await;
            // Reap finished connection tasks so the set does not grow.
            while connections.try_join_next().is_some() {}
            if let Err(e) = tune_socket(&tcp, limits.tcp_keepalive) {
                tracing::debug!(%peer, error = %e, "cannot set socket options");
            }
            let probation = probation
                .as_ref()
                .map(|probation| probation.admit(&admission));
            let connection = Connection {
                peer,
                accepted: Instant::now(),
                app: app.clone(),
                builder: builder.clone(),
                limits: limits.clone(),
                stopping: stopping.clone(),
                pressure: admission.pressure(),
                admission: admission.clone(),
                peer_certificates: None,
                probation,
                _ticket: ticket,
            };
            connections.spawn(pkraft_tasks::guard_connection(
                listener_name,
                run_accepted(connection, tcp, tls.clone(), limits.tls_handshake_timeout),
            ));
        });
        tokio::select! {
            _ = round => {}
            _ = &mut stopped => break,
        }
    }
    let _ = stop_connections.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Serves one accepted connection: over TLS when `tls` is set, after its handshake (within
/// `handshake_timeout`, less under pressure), else as it is.
async fn run_accepted(
    connection: Connection,
    tcp: TcpStream,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
) {
    let peer = connection.peer;
    match tls {
        None => connection.run(tcp).await,
        Some(acceptor) => {
            let stream = QuickAckStream(tcp);
            let handshake = acceptor.accept(stream);
            let limit = handshake_limit(handshake_timeout, connection.pressure.clone());
            match tokio::time::timeout(handshake_timeout, async {
                tokio::select! {
                    done = handshake => Some(done),
                    () = limit => None,
                }
            })
            .await
            {
                Ok(None) => {
                    connection.admission.count_closed_under_pressure();
                    tracing::debug!(%peer, "TLS handshake not done in time under pressure");
                }
                Ok(Some(Ok(tls))) if tls.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) => {
                    // An ACME CA's TLS-ALPN-01 check: the handshake was the answer
                    // (RFC 8737 §3); nothing is served on such a connection.
                    tracing::debug!(%peer, "ACME challenge handshake answered");
                }
                Ok(Some(Ok(tls))) => {
                    // A peer listener's client certificate, for the node-id check
                    // (`pkraft_raft::routes`); public listeners ask for none.
                    let certificates = tls.get_ref().1.peer_certificates().map(|chain| {
                        PeerCertificates(
                            chain.iter().map(|cert| cert.clone().into_owned()).collect(),
                        )
                    });
                    Connection {
                        peer_certificates: certificates,
                        ..connection
                    }
                    .run(tls)
                    .await
                }
                Ok(Some(Err(e))) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                }
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

/// Resolves once a TLS handshake that started now has taken `PRESSURE_IDLE_TIMEOUT` while the
/// listener is under pressure (a handshake is a connection's first request's prelude, so it gets
/// no more time than the first request); pending otherwise (`timeout`, the handshake's own
/// limit, ends it then).
async fn handshake_limit(timeout: Duration, mut pressure: watch::Receiver<bool>) {
    let deadline = tokio::time::Instant::now() + PRESSURE_IDLE_TIMEOUT.min(timeout);
    loop {
        if *pressure.borrow_and_update() {
            tokio::time::sleep_until(deadline).await;
            if *pressure.borrow() {
                return;
            }
        }
        if pressure.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// hyper's executor for the tasks it spawns: each HTTP/2 stream (its handler and its body) runs
/// as a task of its own, outside its connection's. Guarded like a request: a panic in one is
/// logged and counted as the listener's, and the connection's other streams go on.
#[derive(Clone, Copy)]
struct GuardedExecutor {
    listener: &'static str,
}

impl<F> hyper::rt::Executor<F> for GuardedExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        tokio::spawn(pkraft_tasks::guard_request(self.listener, stream));
    }
}

/// The hyper connection builder with the HTTP/1 and HTTP/2 limits, for the listener `listener`.
fn http_builder(
    limits: &ConnectionLimits,
    listener: &'static str,
) -> auto::Builder<GuardedExecutor> {
    let mut builder = auto::Builder::new(GuardedExecutor { listener });
    let mut http1 = builder.http1();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8_192));
    // hyper parses up to its default number of headers into a stack buffer; any other maximum
    // moves that buffer to the heap for every request (hyper's docs: about 5 % slower).
    if limits.max_headers != crate::HYPER_MAX_HEADERS {
        http1.max_headers(limits.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// `TCP_NODELAY` (answers are small and must not wait for an ACK), keepalive probes, and
/// `TCP_USER_TIMEOUT` (sent data unacknowledged that long, or a peer that stopped reading,
/// ends the connection).
fn tune_socket(tcp: &TcpStream, keepalive: Duration) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let socket = socket2::SockRef::from(tcp);
    socket.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(keepalive)
            .with_interval(keepalive / 4)
            .with_retries(4),
    )?;
    socket.set_tcp_user_timeout(Some(keepalive * 2))
}

/// The ALPN protocol of TLS-ALPN-01 challenge handshakes (RFC 8737), which an `[https]`
/// listener with `[https.acme]` answers with the challenge certificate and then closes.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// One accepted connection, holding its slot until it ends.
struct Connection {
    peer: SocketAddr,
    accepted: Instant,
    app: axum::Router,
    builder: Arc<auto::Builder<GuardedExecutor>>,
    limits: ConnectionLimits,
    stopping: watch::Receiver<bool>,
    /// Whether the listener is short of slots (module docs).
    pressure: watch::Receiver<bool>,
    admission: Arc<Admission>,
    /// The client's certificate chain (TLS with client certificates), added to every request.
    peer_certificates: Option<PeerCertificates>,
    /// On the peer listener: the connection's place on probation until it authenticates.
    probation: Option<OnProbation>,
    _ticket: Ticket,
}

/// Answers one request with `app`. On probation (`verdicts`), records whether the answer
/// authenticated the connection, and if not, says on HTTP/1 that the connection closes.
/// `in_flight` counts the request until the answer is ready, or with `body_counts`
/// (`body_counts_as_activity`) until its body is sent.
async fn respond(
    app: axum::Router,
    request: axum::http::Request<Incoming>,
    verdicts: Option<Arc<AuthVerdicts>>,
    (in_flight, body_counts): (InFlight, bool),
) -> Result<axum::http::Response<CountedBody>, std::convert::Infallible> {
    let http1 = request.version() < axum::http::Version::HTTP_2;
    let mut response = app.oneshot(request).await;
    if let (Some(verdicts), Ok(response)) = (&verdicts, &mut response) {
        let refused = !verdicts.record(response.extensions().get::<Authenticated>().is_some());
        if refused && http1 {
            // The connection closes after this answer: say so (RFC 9112 9.6), or a client puts
            // it back in its pool and sends its next request into the closing connection
            // (hyper: `IncompleteMessage`). HTTP/2 has GOAWAY for this, sent by the graceful
            // shutdown.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
    }
    let in_flight = body_counts.then_some(in_flight);
    response.map(|response| {
        response.map(|body| CountedBody {
            body,
            _in_flight: in_flight,
        })
    })
}

impl Connection {
    /// Serves requests until the client closes, no request comes in time, the connection is
    /// idle too long, it fails or is pushed out of probation, or the server stops.
    async fn run<S>(mut self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let requests = Requests::new(self.accepted);
        let peer = self.peer;
        let app = self.app.clone();
        let counted = requests.clone();
        let body_counts = self.limits.body_counts_as_activity;
        let certificates = self.peer_certificates.take();
        let (mut evicted, verdicts) = OnProbation::split(self.probation.take());
        let service_verdicts = verdicts.clone();
        // hyper's `service_fn` borrows the closure for each request; a tower service adapted with
        // `TowerToHyperService` would be cloned for each one.
        let service =
            hyper::service::service_fn(move |mut request: axum::http::Request<Incoming>| {
                // axum's `ConnectInfo`, which the rate limits read, as `axum::serve` attaches it.
                request.extensions_mut().insert(ConnectInfo(peer));
                if let Some(certificates) = &certificates {
                    request.extensions_mut().insert(certificates.clone());
                }
                // Counted until the answer is ready (or, with `body_counts_as_activity`, until
                // its body is sent), or the request is dropped (a reset stream).
                let in_flight = counted.start();
                respond(
                    app.clone(),
                    request,
                    service_verdicts.clone(),
                    (in_flight, body_counts),
                )
            });
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let mut shutdown_since: Option<Instant> = None;
        // Never notified off probation.
        let refused = verdicts.as_ref().map_or_else(
            || Arc::new(Notify::new()),
            |verdicts| verdicts.refused.clone(),
        );
        loop {
            let under_pressure = *self.pressure.borrow_and_update();
            let (first_request, idle) = self.timeouts(under_pressure);
            let deadline = match shutdown_since {
                Some(since) => since + SHUTDOWN_GRACE,
                None => requests.deadline(first_request, idle),
            };
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if shutdown_since.is_some() {
                        tracing::debug!(%peer, "connection did not finish after shutdown; dropping it");
                        return;
                    }
                    if let Some(reason) = requests.expired(first_request, idle) {
                        if under_pressure && requests.expired(
                            self.limits.first_request_timeout, self.limits.idle_timeout,
                        ).is_none() {
                            self.admission.count_closed_under_pressure();
                        }
                        tracing::debug!(%peer, reason, under_pressure, "closing connection");
                        if requests.last().is_none() {
                            // No request ever started: nothing to finish, and hyper would wait
                            // for a trickled head to complete (up to `SHUTDOWN_GRACE`).
                            return;
                        }
                        connection.as_mut().graceful_shutdown();
                        shutdown_since = Some(Instant::now());
                    }
                }
                _ = self.pressure.changed(), if shutdown_since.is_none() => {}
                _ = refused.notified(), if shutdown_since.is_none() => {
                    tracing::debug!(%peer, "request not authenticated; closing connection");
                    connection.as_mut().graceful_shutdown();
                    shutdown_since = Some(Instant::now());
                }
                was_evicted = pushed_out(&mut evicted) => {
                    if was_evicted {
                        tracing::debug!(%peer, "unauthenticated connection pushed out by a newer one");
                        return;
                    }
                    // Left probation (authenticated): nothing more to wait for here.
                    evicted = None;
                }
                _ = self.stopping.wait_for(|stop| *stop), if shutdown_since.is_none() => {
                    connection.as_mut().graceful_shutdown();
                    shutdown_since = Some(Instant::now());
                }
            }
        }
    }

    /// The first-request and idle timeouts now: the configured ones, or at most
    /// [`PRESSURE_IDLE_TIMEOUT`] under pressure.
    fn timeouts(&self, under_pressure: bool) -> (Duration, Duration) {
        let (first, idle) = (self.limits.first_request_timeout, self.limits.idle_timeout);
        if under_pressure {
            (
                first.min(PRESSURE_IDLE_TIMEOUT),
                idle.min(PRESSURE_IDLE_TIMEOUT),
            )
        } else {
            (first, idle)
        }
    }
}

/// Whether the connection was pushed out of probation (`false`: it left probation, its place
/// given up); pending forever off probation.
async fn pushed_out(evicted: &mut Option<oneshot::Receiver<()>>) -> bool {
    match evicted {
        Some(receiver) => receiver.await.is_ok(),
        None => std::future::pending().await,
    }
}

/// The connections of a listener that are on probation (not yet authenticated), oldest first.
struct Probation {
    max: usize,
    next_id: AtomicU64,
    /// Each with the sender that pushes it out.
    waiting: Mutex<VecDeque<(u64, oneshot::Sender<()>)>>,
}

/// One connection's place on probation, and the signal that it was pushed out.
struct OnProbation {
    place: ProbationPlace,
    evicted: oneshot::Receiver<()>,
}

impl OnProbation {
    /// For a connection on probation: the signal it was pushed out, and the verdicts of its
    /// requests that decide whether it stays (neither off probation).
    fn split(
        probation: Option<OnProbation>,
    ) -> (Option<oneshot::Receiver<()>>, Option<Arc<AuthVerdicts>>) {
        match probation {
            Some(on_probation) => (
                Some(on_probation.evicted),
                Some(Arc::new(AuthVerdicts::new(on_probation.place))),
            ),
            None => (None, None),
        }
    }
}

/// A connection's place on probation; leaving it (authenticated, or closed) frees it.
struct ProbationPlace {
    id: u64,
    probation: Arc<Probation>,
}

impl Probation {
    fn new(max: usize) -> Probation {
        Probation {
            max: max.max(1),
            next_id: AtomicU64::new(0),
            waiting: Mutex::default(),
        }
    }

    /// Puts a new connection on probation, pushing out the oldest if `max` are already on it.
    fn admit(self: &Arc<Self>, admission: &Admission) -> OnProbation {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (push_out, evicted) = oneshot::channel();
        let mut waiting = lock(&self.waiting);
        while waiting.len() >= self.max {
            if let Some((_, oldest)) = waiting.pop_front() {
                // A connection that already ended has dropped its receiver; nothing to count.
                if oldest.send(()).is_ok() {
                    admission.count_evicted_unauthenticated();
                }
            }
        }
        waiting.push_back((id, push_out));
        OnProbation {
            place: ProbationPlace {
                id,
                probation: self.clone(),
            },
            evicted,
        }
    }
}

impl Drop for ProbationPlace {
    fn drop(&mut self) {
        let mut waiting = lock(&self.probation.waiting);
        if let Some(index) = waiting.iter().position(|(id, _)| *id == self.id) {
            waiting.remove(index);
        }
    }
}

/// What the requests of a connection on probation showed: authenticated (the place is given
/// up, the connection stays) or not (the connection loop is told to close it).
struct AuthVerdicts {
    place: Mutex<Option<ProbationPlace>>,
    refused: Arc<Notify>,
}

impl AuthVerdicts {
    fn new(place: ProbationPlace) -> AuthVerdicts {
        AuthVerdicts {
            place: Mutex::new(Some(place)),
            refused: Arc::new(Notify::new()),
        }
    }

    /// Records one answer's verdict; whether the connection stays open (`false`: it is closed
    /// after this answer).
    fn record(&self, authenticated: bool) -> bool {
        let mut place = lock(&self.place);
        if place.is_none() {
            // Already authenticated once: the connection is the cluster's.
            return true;
        }
        if authenticated {
            *place = None;
        } else {
            self.refused.notify_one();
        }
        authenticated
    }
}

/// The data behind `mutex`, also if a thread panicked while holding it.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What one connection's requests are doing: how many are in flight and when one last started
/// or ended. Shared by the service (which counts) and the connection's deadlines.
#[derive(Clone)]
struct Requests {
    accepted: Instant,
    in_flight: Arc<AtomicUsize>,
    /// Milliseconds after `accepted` when a request last started or ended; `u64::MAX` before
    /// the first.
    last_ms: Arc<AtomicU64>,
}

/// A request in flight; uncounted when dropped.
struct InFlight(Requests);

/// An answer's body that, holding its request's [`InFlight`], keeps the request counted until
/// hyper has sent the body and drops it.
struct CountedBody {
    body: axum::body::Body,
    _in_flight: Option<InFlight>,
}

impl hyper::body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

impl Requests {
    fn new(accepted: Instant) -> Requests {
        Requests {
            accepted,
            in_flight: Arc::default(),
            last_ms: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }

    fn start(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight(self.clone())
    }

    fn touch(&self) {
        let ms = u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When a request last started or ended; `None` before the first.
    fn last(&self) -> Option<Instant> {
        match self.last_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(self.accepted + Duration::from_millis(ms)),
        }
    }

    /// When to look again: the first request's deadline, the idle deadline, or, while requests
    /// are in flight, one idle period from now.
    fn deadline(&self, first_request: Duration, idle: Duration) -> Instant {
        match self.last() {
            None => self.accepted + first_request,
            Some(_) if self.in_flight.load(Ordering::Relaxed) > 0 => Instant::now() + idle,
            Some(last) => last + idle,
        }
    }

    /// Why the connection should close now, if it should.
    fn expired(&self, first_request: Duration, idle: Duration) -> Option<&'static str> {
        let now = Instant::now();
        match self.last() {
            None if now >= self.accepted + first_request => {
                Some("no request within header_read_timeout")
            }
            Some(last) if self.in_flight.load(Ordering::Relaxed) == 0 && now >= last + idle => {
                Some("idle")
            }
            _ => None,
        }
    }
}

/// A TLS listener's TCP stream, which acknowledges what it reads at once (`TCP_QUICKACK` after
/// every read; Linux clears it again by itself).
///
/// Why: HTTP/2 clients such as nghttp2 (dnsperf, curl) write a POST's HEADERS and DATA frames in
/// two writes with Nagle's algorithm on, so the DATA waits for the HEADERS to be acknowledged,
/// and a server with nothing to send yet delays that ACK by up to 40 ms. Measured with
/// `dnsperf -m doh -O doh-method=POST -c 20`: 5k queries/s at 20 ms mean latency without this,
/// 53k at 1.5 ms with it (GET, one frame, unchanged at ≈ 60k). The cost is one `setsockopt` per
/// read, which plain HTTP does not pay: relay GETs from 64 connections ran at 61k/s with it and
/// 82k/s without (median of 3 alternating runs each, 17 vs 12 µs of server CPU per GET), and
/// plain-HTTP clients that split a request over two writes are rare (DoH is used over TLS).
struct QuickAckStream(TcpStream);

impl AsyncRead for QuickAckStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.0).poll_read(cx, buf);
        if result.is_ready() {
            // Best effort: without it the connection only answers later.
            let _ = socket2::SockRef::from(&self.0).set_tcp_quickack(true);
        }
        result
    }
}

impl AsyncWrite for QuickAckStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
