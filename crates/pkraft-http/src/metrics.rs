//! Prometheus metrics of the HTTP listeners (names and meanings in docs/METRICS.md), and the
//! `/metrics` and `/readyz` handlers.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, Opts, Registry, TextEncoder,
    exponential_buckets,
};

/// Request counters and the PUT latency, shared by the public listeners.
pub struct HttpMetrics {
    /// `pkraft_http_requests_total{route, method, status}`.
    requests: IntCounterVec,
    /// `pkraft_http_put_duration_seconds`: a relay PUT from its arrival to its answer (for a
    /// 204, that includes the commit).
    put_duration: Histogram,
}

impl HttpMetrics {
    pub fn new() -> prometheus::Result<HttpMetrics> {
        Ok(HttpMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "pkraft_http_requests_total",
                    "HTTP requests answered by the public listeners, by route pattern, method and status.",
                ),
                &["route", "method", "status"],
            )?,
            put_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "pkraft_http_put_duration_seconds",
                    "Relay PUTs from arrival to answer (for 204: verified, committed and applied).",
                )
                // 0.25 ms .. ≈ 4 s.
                .buckets(exponential_buckets(0.000_25, 2.0, 15)?),
            )?,
        })
    }

    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.requests.clone()))?;
        registry.register(Box::new(self.put_duration.clone()))
    }
}

/// Middleware (a route layer, so the route pattern is known) counting every request.
pub async fn track(
    State(metrics): State<Arc<HttpMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = request.method().clone();
    let response = next.run(request).await;
    if method == Method::PUT {
        metrics
            .put_duration
            .observe(started.elapsed().as_secs_f64());
    }
    metrics
        .requests
        .with_label_values(&[route, method.as_str(), response.status().as_str()])
        .inc();
    response
}

/// `GET /metrics`: every registered metric in Prometheus's text format.
pub async fn metrics(State(registry): State<Registry>) -> Response {
    let mut body = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&registry.gather(), &mut body) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    let content_type = HeaderValue::from_str(encoder.format_type())
        .unwrap_or_else(|_| HeaderValue::from_static("text/plain"));
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// `GET /readyz`: 200 when this node should get traffic, else 503; the JSON body says why
/// ([`pkraft_raft::Readiness`]).
pub fn readyz(node: &pkraft_raft::Node, max_stale: std::time::Duration) -> Response {
    let readiness = node.readiness(max_stale);
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(readiness)).into_response()
}
