//! The public HTTP listener: the pkarr relay API (DESIGN.md §2.1), DNS-over-HTTPS and `/healthz`.
//!
//! # Layout
//! - [`relay`]: `PUT|GET /pkarr/{z32}` and `PUT|GET /{z32}`.
//! - [`doh`]: `GET|POST /dns-query` (RFC 8484 and the JSON form), answered by the DNS frontend's
//!   handler chain.
//! - [`admin`]: the admin listener (cluster status and membership changes).
//! - [`error`]: [`error::RelayError`], the one place where failures become status codes.
//! - [`Settings`]: the `[http]` config section.
//!
//! Reads (GET) come from the local replica; writes (PUT) go through [`pkraft_raft::Node::publish`]
//! and are answered only after the packet is committed.

pub mod admin;
pub mod doh;
pub mod error;
pub mod metrics;
pub mod relay;

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
}

/// An `[http]` value that cannot be served. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("http.cache_max_age_min ({min:?}) is larger than http.cache_max_age_max ({max:?})")]
pub struct SettingsError {
    pub min: Duration,
    pub max: Duration,
}

impl Settings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.cache_max_age_min > self.cache_max_age_max {
            return Err(SettingsError {
                min: self.cache_max_age_min,
                max: self.cache_max_age_max,
            });
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
        }
    }
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub node: Arc<Node>,
    pub settings: Arc<Settings>,
    /// Answers `/dns-query` as the DNS listeners would.
    pub dns: pkraft_dns::Answerer,
    pub metrics: Arc<metrics::HttpMetrics>,
}

/// The public router: relay routes, health, CORS and the body limit.
pub fn router(state: AppState) -> Router {
    // Any origin may read and publish (pkarr relays are public); browsers may read the
    // stored-nodes header.
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::PUT, Method::POST, Method::OPTIONS])
        .allow_headers(Any)
        .expose_headers([STORED_NODES_HEADER]);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/dns-query",
            get(doh::get_query)
                // A DNS message may be larger than a relay payload (the limit below).
                .post(doh::post_query)
                .layer(DefaultBodyLimit::max(doh::DNS_MESSAGE_MAX)),
        )
        .route(
            "/pkarr/{key}",
            get(relay::get_packet).put(relay::put_packet),
        )
        .route("/{key}", get(relay::get_packet).put(relay::put_packet))
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
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::response::Response {
    metrics::readyz(&state.node, state.settings.ready_max_stale)
}

/// Liveness: the process is up and serving HTTP.
pub(crate) async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok" }))
}
