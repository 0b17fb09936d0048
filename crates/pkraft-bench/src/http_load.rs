//! HTTP load: a fixed list of requests spread over `concurrency` workers, each with one
//! keep-alive connection, each worker bound to one of the base URLs in turn (so a cluster can be
//! loaded through all its nodes).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::stats::Summary;

/// Bound on one request, so a stuck server ends the run instead of hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One request: a method, a path after the base URL, a body, and the client address it claims
/// in `X-Forwarded-For` (as a reverse proxy would add it), if any.
#[derive(Debug, Clone)]
pub struct Job {
    pub method: Method,
    pub path: String,
    pub body: Bytes,
    pub forwarded_for: Option<IpAddr>,
}

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A keep-alive client whose connections come from `source` (any loopback address names a
/// distinct client to the server's limits), or from the system's choice.
pub(crate) fn client(source: Option<IpAddr>) -> HttpClient {
    let mut connector = HttpConnector::new();
    // Small requests: Nagle's algorithm would add delay to every one of them.
    connector.set_nodelay(true);
    connector.set_local_address(source);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(connector)
}

pub(crate) struct Outcome {
    pub latency: Duration,
    /// `None`: no HTTP answer (refused connection, reset, timeout).
    pub status: Option<u16>,
    /// The delay a 429 named in `Retry-After` (delay-seconds).
    pub retry_after: Option<Duration>,
}

/// How often one job is sent again after a 429 when following `Retry-After`: a bound on the
/// run, far above what a working limit asks for.
const MAX_RETRIES: u32 = 1_000;

/// Runs every job once and summarises the run under `op`. With `follow_retry_after`, a job
/// answered 429 is sent again after the delay its `Retry-After` names (as an honest client
/// does), at most [`MAX_RETRIES`] times; a 429 without one ends the job.
pub async fn run(
    op: &str,
    base_urls: &[String],
    concurrency: usize,
    jobs: Vec<Job>,
    source: Option<IpAddr>,
    follow_retry_after: bool,
) -> anyhow::Result<Summary> {
    anyhow::ensure!(!base_urls.is_empty(), "at least one --url is needed");
    anyhow::ensure!(concurrency > 0, "--concurrency must be at least 1");
    let jobs = Arc::new(jobs);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let base = base_urls[worker % base_urls.len()]
            .trim_end_matches('/')
            .to_string();
        let (jobs, next) = (jobs.clone(), next.clone());
        workers.spawn(async move {
            let client = client(source);
            let mut outcomes = Vec::new();
            let (mut followed, mut longest) = (0_u64, Duration::ZERO);
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(index) else { break };
                let mut outcome = send(&client, &base, job).await;
                for _ in 0..MAX_RETRIES {
                    match outcome.retry_after {
                        Some(wait) if follow_retry_after && outcome.status == Some(429) => {
                            followed += 1;
                            longest = longest.max(wait);
                            tokio::time::sleep(wait).await;
                            outcome = send(&client, &base, job).await;
                        }
                        _ => break,
                    }
                }
                outcomes.push(outcome);
            }
            (outcomes, followed, longest)
        });
    }
    let mut latencies = Vec::with_capacity(jobs.len());
    let mut status = BTreeMap::new();
    let mut errors = 0;
    let (mut followed, mut longest) = (0, Duration::ZERO);
    while let Some(done) = workers.join_next().await {
        let (outcomes, worker_followed, worker_longest) = done?;
        followed += worker_followed;
        longest = longest.max(worker_longest);
        for outcome in outcomes {
            latencies.push(outcome.latency);
            match outcome.status {
                Some(code) => *status.entry(code).or_insert(0) += 1,
                None => errors += 1,
            }
        }
    }
    let mut summary = Summary::new(
        op,
        concurrency,
        started.elapsed(),
        latencies,
        status,
        errors,
    );
    if follow_retry_after {
        summary.refusals_followed = Some(followed);
        summary.longest_retry_after_seconds = Some(longest.as_secs());
    }
    Ok(summary)
}

pub(crate) async fn send(client: &HttpClient, base: &str, job: &Job) -> Outcome {
    let start = Instant::now();
    let mut request = Request::builder()
        .method(job.method.clone())
        .uri(format!("{base}{}", job.path));
    if let Some(client) = job.forwarded_for {
        request = request.header("x-forwarded-for", client.to_string());
    }
    let request = request.body(Full::new(job.body.clone()));
    let status = match request {
        Ok(request) => {
            let exchange = async {
                let response = client.request(request).await.ok()?;
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(hyper::header::RETRY_AFTER)
                    .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
                    .map(Duration::from_secs);
                // Read the whole body so the connection can be reused.
                response.into_body().collect().await.ok()?;
                Some((status, retry_after))
            };
            tokio::time::timeout(REQUEST_TIMEOUT, exchange)
                .await
                .ok()
                .flatten()
        }
        Err(_) => None,
    };
    Outcome {
        latency: start.elapsed(),
        status: status.map(|(status, _)| status),
        retry_after: status.and_then(|(_, retry_after)| retry_after),
    }
}
