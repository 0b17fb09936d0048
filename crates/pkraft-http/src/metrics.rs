//! Prometheus metrics of the HTTP listeners (names and meanings in docs/METRICS.md), and the
//! `/metrics` and `/readyz` handlers.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pkraft_limits::connections::{Admission, AdmissionStats};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
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
        .with_label_values(&[route, method_label(&method), response.status().as_str()])
        .inc();
    response
}

/// The `method` label: one of the methods RFC 9110 defines, or `other`. hyper accepts any token
/// as a method, and a label taken from input would add a series for every one a client invents
/// (2,000 made-up methods grew `/metrics` by 536 KB, never freed).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// The connection counts of every TCP listener (public HTTP and HTTPS, admin, peer, DNS over
/// TCP), read from their admissions when scraped: `pkraft_listener_*{listener}`. The label is
/// the listener's fixed name, never anything a client sent.
pub struct ListenerCollector {
    admissions: Vec<Arc<Admission>>,
    descs: Vec<Desc>,
}

/// The gauges and counters a [`ListenerCollector`] exports: name, help, and the value of each
/// from one listener's stats.
type ListenerSeries = (&'static str, &'static str, fn(&AdmissionStats) -> u64);

const LISTENER_GAUGES: [ListenerSeries; 3] = [
    (
        "pkraft_listener_connections",
        "Connections open on the listener.",
        |stats| stats.open,
    ),
    (
        "pkraft_listener_max_connections",
        "The listener's cap on open connections (its share of the descriptor budget).",
        |stats| stats.max_connections,
    ),
    (
        "pkraft_listener_under_pressure",
        "1 while most of the listener's slots are taken: idle connections are then closed after 1 s.",
        |stats| u64::from(stats.under_pressure),
    ),
];

const LISTENER_COUNTERS: [ListenerSeries; 5] = [
    (
        "pkraft_listener_accepted_total",
        "Connections accepted by the listener.",
        |stats| stats.accepted,
    ),
    (
        "pkraft_listener_refused_per_client_total",
        "Connections closed at once because their client already had its cap open.",
        |stats| stats.refused_per_client,
    ),
    (
        "pkraft_listener_accept_errors_total",
        "Failed accepts (out of descriptors, say); each paused the listener's accepts.",
        |stats| stats.accept_errors,
    ),
    (
        "pkraft_listener_closed_under_pressure_total",
        "Idle connections closed early while the listener was short of slots.",
        |stats| stats.closed_under_pressure,
    ),
    (
        "pkraft_listener_evicted_unauthenticated_total",
        "Connections not yet authenticated dropped to make room for newer ones (peer listener).",
        |stats| stats.evicted_unauthenticated,
    ),
];

impl ListenerCollector {
    pub fn new(admissions: Vec<Arc<Admission>>) -> prometheus::Result<ListenerCollector> {
        let mut descs = Vec::new();
        for (name, help, _) in LISTENER_GAUGES.iter().chain(&LISTENER_COUNTERS) {
            descs.push(Desc::new(
                (*name).to_string(),
                (*help).to_string(),
                vec!["listener".to_string()],
                Default::default(),
            )?);
        }
        Ok(ListenerCollector { admissions, descs })
    }

    /// Every listener's series of one metric, built from the stats read now.
    fn family(
        &self,
        stats: &[(&'static str, AdmissionStats)],
        (name, help, value): &ListenerSeries,
        counter: bool,
    ) -> prometheus::Result<Vec<MetricFamily>> {
        let opts = Opts::new(*name, *help);
        if counter {
            let vec = IntCounterVec::new(opts, &["listener"])?;
            for (listener, stats) in stats {
                vec.with_label_values(&[*listener]).inc_by(value(stats));
            }
            Ok(vec.collect())
        } else {
            let vec = IntGaugeVec::new(opts, &["listener"])?;
            for (listener, stats) in stats {
                vec.with_label_values(&[*listener])
                    .set(i64::try_from(value(stats)).unwrap_or(i64::MAX));
            }
            Ok(vec.collect())
        }
    }
}

impl Collector for ListenerCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let stats: Vec<_> = self
            .admissions
            .iter()
            .map(|admission| (admission.name(), admission.stats()))
            .collect();
        let gauges = LISTENER_GAUGES.iter().map(|series| (series, false));
        let counters = LISTENER_COUNTERS.iter().map(|series| (series, true));
        gauges
            .chain(counters)
            .flat_map(|(series, counter)| {
                self.family(&stats, series, counter).unwrap_or_else(|e| {
                    tracing::error!(error = %e, metric = series.0, "cannot export a listener metric");
                    Vec::new()
                })
            })
            .collect()
    }
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
    let readiness = node.reads().readiness(max_stale);
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(readiness)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_methods_share_one_label() {
        for text in [
            "FOO",
            "get",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "PROPFIND",
        ] {
            let method = Method::from_bytes(text.as_bytes()).expect("a token");
            assert_eq!(method_label(&method), "other", "{text}");
        }
        assert_eq!(method_label(&Method::PUT), "PUT");
    }
}
