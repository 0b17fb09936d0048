//! The relay as the clients of a run reach it: each node's public router, the daemon's own
//! (`pkraft_http::router`, with its relay handlers, admission and error answers), served on
//! [`PUBLIC_PORT`] of the node's host over turmoil, and the clients' HTTP/1.1 requests to it.
//! Beside it, each node's admin router (`pkraft_http::admin::router`) on [`ADMIN_PORT`], for
//! the membership changes an operator makes (`pkraft cluster remove`).
//!
//! The daemon builds the same router (`pkraft::public_router`) with three differences, each
//! because the real one would escape the simulation: the rate limits are off (governor's
//! clock is the machine's), the DNS answerer behind `/dns-query` binds no listener
//! ([`pkraft_dns::Answerer::unbound`]), and the listener's connection caps and admission
//! (`pkraft_http::serve`) are not in front, as for the peer routes (`network.rs`).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use pkraft_dns::{AnswerSources, Answerer, ReplicaFreshness};
use pkraft_http::rate_limit::{RateLimitSettings, RateLimits};
use pkraft_limits::{ClassLimits, KeyRate, Rate};
use pkraft_raft::Node;

use crate::network::{host_name, serve};

/// The port every simulated node's public router listens on.
pub const PUBLIC_PORT: u16 = 8080;
/// The port every simulated node's admin router listens on (the daemon's default).
pub const ADMIN_PORT: u16 = 7401;
/// The admin token of every simulated node.
const ADMIN_TOKEN: &str = "simulated-admin-token";

/// Node `node`'s public router, built as the daemon builds it but for the differences in the
/// module docs.
pub(crate) fn router(node: Arc<Node>) -> Result<axum::Router, String> {
    let no_limit = ClassLimits {
        per_client: Rate::OFF,
        global: Rate::OFF,
    };
    let limits = RateLimitSettings {
        publish: no_limit,
        publish_new_keys: no_limit,
        publish_per_key: KeyRate::OFF,
        resolve: no_limit,
        doh: no_limit,
        health: no_limit,
        ..RateLimitSettings::default()
    };
    let rate_limits =
        RateLimits::new(&limits).map_err(|e| format!("the relay's rate limits: {e}"))?;
    let freshness = Arc::new(Freshness(node.clone()));
    let dns = Answerer::unbound(
        &pkraft_dns::Settings::default(),
        node.store(),
        freshness,
        AnswerSources::default(),
    )
    .map_err(|e| format!("the DoH answerer: {e}"))?;
    let settings = pkraft_http::Settings::default();
    let keys = pkraft_http::key_cache::KeyCache::new(settings.key_cache_entries)
        .map_err(|e| format!("the relay's key cache: {e}"))?;
    let metrics = pkraft_http::metrics::HttpMetrics::new()
        .map_err(|e| format!("the relay's metrics: {e}"))?;
    Ok(pkraft_http::router(pkraft_http::AppState {
        node,
        settings: Arc::new(settings),
        dns,
        metrics: Arc::new(metrics),
        rate_limits: Arc::new(rate_limits),
        keys,
        dht: None,
    }))
}

/// Serves `node`'s public router on [`PUBLIC_PORT`] of the current host until the host stops.
/// Its answers are never lost: a client's call that fails is one the network fails on its way
/// (a crash, a partition), as the chaos harness's.
pub async fn serve_public(node: Arc<Node>) -> io::Result<()> {
    let router = router(node).map_err(io::Error::other)?;
    serve(PUBLIC_PORT, router, None).await
}

/// Serves `node`'s admin router on [`ADMIN_PORT`] of the current host until the host stops,
/// built as the daemon builds it (its token [`ADMIN_TOKEN`]; no metrics registered;
/// `record_max_age` the node's `raft.record_max_age`, for `/import`).
pub async fn serve_admin(node: Arc<Node>, record_max_age: Duration) -> io::Result<()> {
    let import_rules = pkraft_http::import::ImportRules {
        record_max_age,
        max_future_skew: pkraft_http::Settings::default().max_future_skew,
    };
    let router = pkraft_http::admin::router(pkraft_http::admin::AdminState {
        node,
        token: Some(Arc::from(ADMIN_TOKEN)),
        registry: prometheus::Registry::new(),
        ready_max_stale: Duration::from_secs(5),
        import_rules,
    });
    serve(ADMIN_PORT, router, None).await
}

/// How current the node's replica is, as the daemon tells its DNS answers.
struct Freshness(Arc<Node>);

impl ReplicaFreshness for Freshness {
    fn catching_up(&self) -> bool {
        self.0.reads().catching_up()
    }

    fn last_confirmed(&self) -> Option<Duration> {
        self.0.reads().staleness()
    }
}

/// An answer from a node's public router: its status and body.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

/// Sends `method` `path` with `body` to node `node`'s public router, over a connection of
/// its own, as the chaos harness's clients do: a refused connection, a reset or a connection
/// closed before the answer is the error.
pub(crate) async fn call(node: u64, method: Method, path: &str, body: Bytes) -> io::Result<Answer> {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, host_name(node))
        .body(Full::new(body))
        .map_err(io::Error::other)?;
    send(node, PUBLIC_PORT, request).await
}

/// Posts `json` to `path` of node `node`'s admin router with the admin token, as `pkraft
/// cluster` does; errors as [`call`]'s.
pub(crate) async fn call_admin(node: u64, path: &str, json: String) -> io::Result<Answer> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(hyper::header::HOST, host_name(node))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::AUTHORIZATION,
            format!("Bearer {ADMIN_TOKEN}"),
        )
        .body(Full::new(Bytes::from(json)))
        .map_err(io::Error::other)?;
    send(node, ADMIN_PORT, request).await
}

async fn send(node: u64, port: u16, request: Request<Full<Bytes>>) -> io::Result<Answer> {
    let stream = turmoil::net::TcpStream::connect((host_name(node), port)).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    // Ends when the answer is read and `sender` dropped, or when the connection fails.
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(io::Error::other)?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(io::Error::other)?
        .to_bytes();
    Ok(Answer { status, body })
}
