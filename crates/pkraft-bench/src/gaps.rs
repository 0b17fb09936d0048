//! Write availability while nodes stop: a steady stream of PUTs (each a packet not stored
//! before) through the given relays, for a fixed time, reporting the longest run without an
//! acknowledgement. The harness stops a node (SIGTERM) in the middle of the run; the PUTs go to
//! the other nodes only, so the gap is what the cluster's clients see.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use serde::Serialize;

use crate::dataset::DataSet;
use crate::http_load::{Job, client, send};
use crate::stats::{millis, percentile};

/// Pause between a worker's PUTs, so the stream is steady rather than a saturating load: gaps
/// are then read against a regular beat of acknowledgements, not against queueing.
const PUT_PAUSE: Duration = Duration::from_millis(10);
/// Pause after a refused PUT (503 while leadership moves, or a refused connection).
const RETRY_PAUSE: Duration = Duration::from_millis(5);

#[derive(Debug, Serialize)]
pub struct GapReport {
    pub op: &'static str,
    /// Longest time between two acknowledgements (or from the start to the first, or from the
    /// last to the end).
    pub longest_gap_ms: f64,
    /// The same for the PUTs through each URL alone (workers are assigned URLs round robin):
    /// what a client that always writes through that node sees.
    pub longest_gap_ms_by_url: BTreeMap<String, f64>,
    pub acknowledged: u64,
    /// Latency of the acknowledged PUTs (from sending to the 204), median and 99th percentile.
    pub put_p50_ms: f64,
    pub put_p99_ms: f64,
    /// Status codes of the PUTs not acknowledged ("error": no HTTP answer).
    pub refused: BTreeMap<String, u64>,
    /// Keys used, from `first_key`: the next run starts after them.
    pub keys_used: usize,
}

pub struct GapSpec<'a> {
    pub data: &'a DataSet,
    pub version: usize,
    /// PUT keys from this one on, each once until acknowledged: every PUT is a new write.
    pub first_key: usize,
    pub urls: &'a [String],
    pub concurrency: usize,
    pub duration: Duration,
    /// Where to write the z32 key of every acknowledged PUT, one per line (a check that each
    /// is stored afterwards: tests/upgrade/rolling.sh).
    pub acked_out: Option<&'a std::path::Path>,
}

pub async fn run(spec: GapSpec<'_>) -> anyhow::Result<GapReport> {
    spec.data.check_version(spec.version)?;
    anyhow::ensure!(!spec.urls.is_empty(), "at least one --url is needed");
    anyhow::ensure!(spec.concurrency > 0, "--concurrency must be at least 1");
    let jobs: Arc<Vec<Job>> = Arc::new(
        spec.data
            .keys
            .iter()
            .skip(spec.first_key)
            .map(|key| Job {
                method: Method::PUT,
                path: format!("/{}", key.z32),
                body: Bytes::from(key.versions[spec.version].payload.clone()),
                forwarded_for: None,
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let end = started + spec.duration;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..spec.concurrency {
        let base = spec.urls[worker % spec.urls.len()]
            .trim_end_matches('/')
            .to_string();
        let (jobs, next) = (jobs.clone(), next.clone());
        workers.spawn(async move {
            let client = client(None);
            let mut acks = Vec::new();
            let mut acked_keys = Vec::new();
            let mut latencies = Vec::new();
            let mut refused = BTreeMap::<String, u64>::new();
            let mut job = None;
            while Instant::now() < end {
                let index = match job {
                    Some(index) => index,
                    None => next.fetch_add(1, Ordering::Relaxed),
                };
                let Some(put) = jobs.get(index) else { break };
                let outcome = send(&client, &base, put).await;
                match outcome.status {
                    Some(204) => {
                        acks.push(Instant::now());
                        acked_keys.push(index);
                        latencies.push(outcome.latency);
                        job = None;
                        tokio::time::sleep(PUT_PAUSE).await;
                    }
                    other => {
                        let status = other.map_or("error".to_string(), |s| s.to_string());
                        *refused.entry(status).or_default() += 1;
                        job = Some(index);
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }
            (base, acks, acked_keys, latencies, refused)
        });
    }
    let mut acks = Vec::new();
    let mut latencies = Vec::new();
    let mut acks_by_url = BTreeMap::<String, Vec<Instant>>::new();
    let mut refused = BTreeMap::new();
    let mut acked_keys = Vec::new();
    while let Some(joined) = workers.join_next().await {
        let (base, worker_acks, worker_acked_keys, worker_latencies, worker_refused) = joined?;
        acked_keys.extend(worker_acked_keys);
        latencies.extend(worker_latencies);
        acks_by_url
            .entry(base)
            .or_default()
            .extend(worker_acks.iter().copied());
        acks.extend(worker_acks);
        for (status, count) in worker_refused {
            *refused.entry(status).or_default() += count;
        }
    }
    anyhow::ensure!(
        next.load(Ordering::Relaxed) < jobs.len(),
        "the data set ran out of keys after {} PUTs; give it more keys",
        jobs.len()
    );
    let finished = Instant::now();
    if let Some(path) = spec.acked_out {
        let mut lines = String::new();
        for index in acked_keys {
            lines.push_str(&spec.data.keys[spec.first_key + index].z32);
            lines.push('\n');
        }
        std::fs::write(path, lines)
            .map_err(|e| anyhow::anyhow!("write {}: {e}", path.display()))?;
    }
    latencies.sort_unstable();
    let acknowledged = u64::try_from(acks.len())?;
    let longest = longest_gap(acks, started, finished);
    let longest_gap_ms_by_url = acks_by_url
        .into_iter()
        .map(|(url, acks)| (url, millis(longest_gap(acks, started, finished))))
        .collect();
    Ok(GapReport {
        op: "gaps",
        longest_gap_ms: millis(longest),
        longest_gap_ms_by_url,
        acknowledged,
        put_p50_ms: millis(percentile(&latencies, 50.0)),
        put_p99_ms: millis(percentile(&latencies, 99.0)),
        refused,
        keys_used: next.load(Ordering::Relaxed).min(jobs.len()),
    })
}

/// The longest time without an acknowledgement between `started` and `finished` (including from
/// the start to the first and from the last to the end).
fn longest_gap(mut acks: Vec<Instant>, started: Instant, finished: Instant) -> Duration {
    acks.sort();
    let mut last = started;
    let mut longest = Duration::ZERO;
    for at in acks {
        longest = longest.max(at.saturating_duration_since(last));
        last = at;
    }
    longest.max(finished.saturating_duration_since(last))
}
