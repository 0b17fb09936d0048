//! The public HTTP listener: the pkarr relay API (DESIGN.md §2.1), DNS-over-HTTPS and `/healthz`.
//!
//! # Layout
//! - [`relay`]: `PUT|GET /pkarr/{z32}` and `PUT|GET /{z32}`.
//! - [`doh`]: `GET|POST /dns-query` (RFC 8484 and the JSON form), answered by the DNS frontend's
//!   handler chain.
//! - [`admin`]: the admin listener (cluster status and membership changes, backups).
//! - [`import`]: the admin API's `POST /import` (`pkraft import`).
//! - [`error`]: [`error::RelayError`], the one place where failures become status codes.
//! - [`key_cache`]: the curve points of keys whose packets verified recently (a republish's
//!   key is not decompressed again).
//! - [`rate_limit`]: per-client and global rate limits of the relay and DoH routes (429).
//! - [`serve`]: the connection loop of every HTTP listener (public, `[https]`, admin, peer) with
//!   its limits on connections, request heads, idle time and TLS handshakes.
//! - [`Settings`]: the `[http]` config section.
//!
//! Reads (GET) come from the local replica; writes (PUT) go through [`pkraft_raft::Writes::publish`]
//! and are answered only after the packet is committed.

pub mod admin;
pub mod doh;
pub mod error;
pub mod import;
pub mod key_cache;
pub mod metrics;
pub mod rate_limit;
pub mod relay;
pub mod serve;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Method, StatusCode};
use axum::routing::get;
use pkraft_raft::Node;
use pkraft_types::payload::PAYLOAD_LEN_MAX;
use serde::Deserialize;
use tower_http::cors::{Any, CorsLayer};
use tower_http::timeout::TimeoutLayer;

/// Response header telling a publisher how many replicas hold its packet (pkarr relay spec).
pub const STORED_NODES_HEADER: HeaderName = HeaderName::from_static("pkarr-dht-stored-nodes");
/// Response header of a 404 whose key has only invalid items on the DHT: the newest one's
/// `seq` (pkarr's `PKARR_INVALID_SIGNED_PACKET_SEQ`; pkarr 8.1 clients read it).
pub const INVALID_SEQ_HEADER: HeaderName =
    HeaderName::from_static("pkarr-invalid-signed-packet-seq");

/// `[http]` config section: the public listener and how the relay answers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Public listener for the relay API and health. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Lower bound of `Cache-Control: max-age` on GET, applied to the packet's smallest record
    /// TTL. Default 30 s, the TTL iroh puts on its records: a larger floor (pkarr-relay uses 300 s)
    /// lets HTTP caches serve an endpoint's old addresses for minutes after it moved.
    #[serde(with = "humantime_serde")]
    pub cache_max_age_min: Duration,
    /// Upper bound of `Cache-Control: max-age`. Default 1 day, as pkarr-relay.
    #[serde(with = "humantime_serde")]
    pub cache_max_age_max: Duration,
    /// `Retry-After` sent with 503 when no leader or quorum is available. Default 1 s: about one
    /// election timeout, after which a new leader is normally in place.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// A request (including reading its body) that takes longer is answered 408, so a slow client
    /// cannot hold a connection and a task forever. Default 30 s; it must exceed
    /// `raft.publish_timeout` so that a PUT waiting for its commit gets its own 503 first.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// `/readyz` answers 503 once this node has not heard from a leader (a leader: from a
    /// quorum) for longer than this. Default 5 s: longer than a failover takes with the default
    /// Raft timing (about 4 s), so one election does not take every follower out of rotation.
    #[serde(with = "humantime_serde")]
    pub ready_max_stale: Duration,
    /// A PUT whose packet is timestamped more than this ahead of this node's clock is refused
    /// with 400. The newest timestamp wins, so a packet from the far future (a client with a
    /// broken clock) would block every later real update of its key until that time. Default
    /// 5 min, Kerberos' clock-skew allowance.
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// Connections open at once on each public listener (`[http]`, `[https]`); beyond it new
    /// connections wait in the kernel's backlog. Default 4,096. Each is a file descriptor:
    /// raise the process's open-file limit (`LimitNOFILE`) above the sum of all listeners'.
    pub max_connections: usize,
    /// Connections open at once from one client: an IPv4 address, or an IPv6 network of
    /// `client_ipv6_prefix_len` bits. More are closed at once. Trusted proxies
    /// (`rate_limit.trusted_proxies`) are exempt. 0: no limit. Default 256, room for a NAT with a
    /// few hundred iroh endpoints publishing at the same moment.
    pub max_connections_per_client: usize,
    /// The IPv6 network one client owns for `max_connections_per_client`. Default 56: a site
    /// is usually given a /56 (RIPE-690), so counting /64s would let one site hold 256 times
    /// the cap.
    pub client_ipv6_prefix_len: u8,
    /// A connection whose first request has not started this long after the accept is closed
    /// (HTTP/1.1 and HTTP/2 alike); an HTTP/1.1 request head must also arrive within it, and an
    /// HTTP/1.1 connection waits at most this long for its next request: the slowloris defence.
    /// Default 10 s.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed gracefully; bytes alone
    /// (HTTP/2 PINGs) do not count. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// TCP keepalive: probes start after this much silence, so connections of hosts that
    /// vanished are reclaimed. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// Header fields per HTTP/1.1 request; more is answered 431. Default 100, hyper's own
    /// maximum, which it parses into a stack buffer: any other value costs a heap allocation per
    /// request. (HTTP/2 is bounded by `max_header_bytes` only.)
    pub max_headers: usize,
    /// Bytes of request line and headers (HTTP/1.1), or of the header list (HTTP/2); more is
    /// answered 431. At least 8,192 (hyper's minimum). Default 16,384.
    pub max_header_bytes: usize,
    /// Streams (requests) in flight on one HTTP/2 connection. Default 128.
    pub http2_max_concurrent_streams: u32,
    /// A TLS handshake on `[https]` that takes longer is dropped. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Keys whose curve points are kept once a packet by them verified, so that their
    /// republishes do not decompress the key again ([`key_cache`]; count up to
    /// [`key_cache::ENTRY_BYTES`], 512 bytes, each). 0: none kept. Default 65,536 (at most about
    /// 32 MiB): one relay's iroh endpoints, republishing every few minutes.
    pub key_cache_entries: usize,
}

/// An `[http]` value that cannot be served. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("http.{field}: {reason}")]
pub struct SettingsError {
    pub field: &'static str,
    pub reason: String,
}

/// hyper's smallest HTTP/1 read buffer.
pub const HEADER_BYTES_MIN: usize = 8_192;
/// hyper's default maximum of HTTP/1 header fields (parsed on the stack).
pub const HYPER_MAX_HEADERS: usize = 100;
/// Largest accepted `max_connections` (each is a file descriptor and a task).
pub const CONNECTIONS_MAX: usize = 1 << 20;
/// Largest accepted `key_cache_entries` (up to about 2 GiB of points): more is a typo.
pub const KEY_CACHE_ENTRIES_MAX: usize = 1 << 22;
/// Longest accepted connection timeout: more is a typo, and would overflow deadline arithmetic.
pub const CONNECTION_TIMEOUT_MAX: Duration = Duration::from_secs(86_400);

impl Settings {
    /// The caps of each public listener's connections.
    pub fn connection_caps(
        &self,
        trusted_proxies: &pkraft_limits::TrustedProxies,
    ) -> pkraft_limits::connections::ConnectionCaps {
        pkraft_limits::connections::ConnectionCaps {
            max_connections: self.max_connections,
            max_per_client: self.max_connections_per_client,
            client_prefix: pkraft_limits::ClientPrefix {
                ipv4: 32,
                ipv6: self.client_ipv6_prefix_len,
            },
            exempt: trusted_proxies.clone(),
        }
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        let fail = |field, reason: String| Err(SettingsError { field, reason });
        if let Err((field, reason)) = self
            .connection_caps(&Default::default())
            .validate(["max_connections", "client_ipv6_prefix_len"])
        {
            return fail(field, reason);
        }
        if self.cache_max_age_min > self.cache_max_age_max {
            return fail(
                "cache_max_age_min",
                format!(
                    "{:?} is larger than http.cache_max_age_max ({:?})",
                    self.cache_max_age_min, self.cache_max_age_max
                ),
            );
        }
        if self.max_header_bytes < HEADER_BYTES_MIN {
            return fail(
                "max_header_bytes",
                format!(
                    "must be at least {HEADER_BYTES_MIN}, got {}",
                    self.max_header_bytes
                ),
            );
        }
        if self.key_cache_entries > KEY_CACHE_ENTRIES_MAX {
            return fail(
                "key_cache_entries",
                format!(
                    "must be at most {KEY_CACHE_ENTRIES_MAX}, got {}",
                    self.key_cache_entries
                ),
            );
        }
        for (field, value) in [
            ("max_headers", self.max_headers),
            (
                "http2_max_concurrent_streams",
                self.http2_max_concurrent_streams as usize,
            ),
        ] {
            if value == 0 {
                return fail(field, "must be at least 1".into());
            }
        }
        for (field, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("tcp_keepalive", self.tcp_keepalive),
            ("tls_handshake_timeout", self.tls_handshake_timeout),
        ] {
            if value.is_zero() {
                return fail(field, "must be longer than 0".into());
            }
        }
        Ok(())
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            cache_max_age_min: Duration::from_secs(30),
            cache_max_age_max: Duration::from_secs(86_400),
            retry_after: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            ready_max_stale: Duration::from_secs(5),
            max_future_skew: Duration::from_secs(300),
            max_connections: 4_096,
            max_connections_per_client: 256,
            client_ipv6_prefix_len: 56,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            tcp_keepalive: Duration::from_secs(60),
            max_headers: HYPER_MAX_HEADERS,
            max_header_bytes: 16_384,
            http2_max_concurrent_streams: 128,
            tls_handshake_timeout: Duration::from_secs(10),
            key_cache_entries: 65_536,
        }
    }
}

/// Shared state of every handler. The router holds it in one `Arc` ([`SharedState`]): axum
/// clones the state for each extractor and middleware of every request, and one reference count
/// costs less than one for each `Arc` inside (six with `[dht]` off; `perf` under PUT load: dropping
/// those clones took 1.3 % of the single node's CPU, the one `Arc`'s 0.4 %).
pub struct AppState {
    pub node: Arc<Node>,
    pub settings: Arc<Settings>,
    /// Answers `/dns-query` as the DNS listeners would.
    pub dns: pkraft_dns::Answerer,
    pub metrics: Arc<metrics::HttpMetrics>,
    pub rate_limits: Arc<rate_limit::RateLimits>,
    /// The points of recently verified keys (PUT).
    pub keys: key_cache::KeyCache,
    /// Asked on a GET miss (`[dht]` with `resolve`).
    pub dht: Option<Arc<pkraft_dht::Resolver>>,
}

/// [`AppState`] as the handlers and middleware receive it.
pub type SharedState = Arc<AppState>;

/// The public router: relay routes, health, CORS, rate limits and the body limit.
pub fn router(state: AppState) -> Router {
    let state = SharedState::new(state);
    // Any origin may read and publish (pkarr relays are public); browsers may read the
    // stored-nodes header.
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::PUT, Method::POST, Method::OPTIONS])
        .allow_headers(Any)
        .expose_headers([STORED_NODES_HEADER, INVALID_SEQ_HEADER]);
    // Rate limits run before a body is read. The relay's are its handlers' `RelayLimits`
    // extractor, not a layer: a handler added to these routes is limited only if it takes
    // `RelayLimits` too (before its body). Health checks have a class of their own, with no
    // global limit (a flood must not fail the load balancer's probes).
    let relay = get(relay::get_packet).put(relay::put_packet);
    let health_limit =
        axum::middleware::from_fn_with_state(state.rate_limits.clone(), rate_limit::limit_health);
    Router::new()
        .route("/healthz", get(healthz).route_layer(health_limit.clone()))
        .route("/readyz", get(readyz).route_layer(health_limit))
        .route(
            "/dns-query",
            get(doh::get_query)
                // A DNS message may be larger than a relay payload (the limit below).
                .post(doh::post_query)
                .layer(DefaultBodyLimit::max(doh::DNS_MESSAGE_MAX))
                .route_layer(axum::middleware::from_fn_with_state(
                    state.rate_limits.clone(),
                    rate_limit::limit_doh,
                )),
        )
        .route("/pkarr/{key}", relay.clone())
        .route("/{key}", relay)
        .route_layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .with_state(state.clone())
        // Bodies over the largest legal relay payload are refused with 413 before they are read
        // in full.
        .layer(DefaultBodyLimit::max(PAYLOAD_LEN_MAX))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.settings.request_timeout,
        ))
        .layer(cors)
}

/// Readiness of this node; see [`metrics::readyz`].
async fn readyz(
    axum::extract::State(state): axum::extract::State<SharedState>,
) -> axum::response::Response {
    metrics::readyz(&state.node, state.settings.ready_max_stale)
}

/// Liveness: the process is up and serving HTTP.
pub(crate) async fn healthz() -> axum::Json<serde_json::Value> {
    // Fault injection for tests: a handler that panics (`PKRAFT_TEST_PANIC=healthz`).
    pkraft_tasks::injected_panic("healthz");
    axum::Json(serde_json::json!({ "status": "ok" }))
}
