//! Issue 50's admission scenario (tests/bench/admission.sh): for `duration`, well-behaved
//! endpoints republish the keys stored before, each from an address of its own at one PUT a
//! second, while (optionally) a flood from many other addresses PUTs keys never seen before as
//! fast as it can. Reports what each side got: the republishes' statuses and latency, and how
//! many of the flood's keys were stored per second.
//!
//! With `resolve`, the same shape for reads: each well-behaved address GETs its keys (one a
//! second), and the flood GETs the stored keys, round and round, as fast as it can.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use serde::Serialize;

use crate::dataset::DataSet;
use crate::http_load::{Job, Outcome, client, send};
use crate::stats::Summary;

/// One PUT a second per well-behaved address: an endpoint republishes every few minutes, so an
/// address holding many of them sends about this much.
const REPUBLISH_INTERVAL: Duration = Duration::from_secs(1);

pub struct Spec<'a> {
    /// Keys stored before the run; each republisher PUTs `version` of its share of them.
    pub stored: &'a DataSet,
    pub version: usize,
    /// Keys never stored (version 0 is PUT), or no flood.
    pub flood: Option<&'a DataSet>,
    /// Relay base URLs (`http://…/pkarr`); the load is spread over them.
    pub urls: &'a [String],
    pub flood_sources: Vec<IpAddr>,
    pub flood_concurrency: usize,
    pub republishers: Vec<IpAddr>,
    pub duration: Duration,
    /// GETs instead of PUTs (module docs).
    pub resolve: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub op: &'static str,
    pub republish: Summary,
    /// Republishes answered 204 (with `resolve`: GETs answered 200), of all sent.
    pub republish_ok_ratio: f64,
    pub flood: Option<Summary>,
    /// The flood's PUTs answered 204 (GETs answered 200), per second of the flood (until its
    /// last connection stopped).
    pub flood_stored_per_second: f64,
    /// The flood ran out of keys before the round's end: its load stopped early.
    pub flood_ran_dry: bool,
}

pub async fn run(spec: Spec<'_>) -> anyhow::Result<Report> {
    anyhow::ensure!(!spec.urls.is_empty(), "at least one --url is needed");
    anyhow::ensure!(!spec.republishers.is_empty(), "at least one republisher");
    spec.stored.check_version(spec.version)?;
    let started = Instant::now();
    let deadline = started + spec.duration;
    let urls: Vec<String> = spec
        .urls
        .iter()
        .map(|url| url.trim_end_matches('/').to_string())
        .collect();

    let mut republishers = tokio::task::JoinSet::new();
    let count = spec.republishers.len();
    for (index, source) in spec.republishers.iter().copied().enumerate() {
        let jobs: Vec<Job> = spec
            .stored
            .keys
            .iter()
            .skip(index)
            .step_by(count)
            .map(|key| {
                if spec.resolve {
                    get(&key.z32)
                } else {
                    put(&key.z32, &key.versions[spec.version].payload)
                }
            })
            .collect();
        let base = urls[index % urls.len()].clone();
        republishers.spawn(async move {
            let client = client(Some(source));
            let mut interval = tokio::time::interval(REPUBLISH_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut outcomes = Vec::new();
            // Each key once at most: a second PUT of the same version would be a replay.
            for job in &jobs {
                interval.tick().await;
                if Instant::now() >= deadline {
                    break;
                }
                outcomes.push(send(&client, &base, job).await);
            }
            outcomes
        });
    }

    // A resolve flood reads the stored keys (round and round: it never runs dry).
    let flood_data = if spec.resolve {
        Some(spec.stored)
    } else {
        spec.flood
    };
    let flood = flood_data.map(|flood| {
        let jobs: Arc<Vec<Job>> = Arc::new(
            flood
                .keys
                .iter()
                .map(|key| {
                    if spec.resolve {
                        get(&key.z32)
                    } else {
                        put(&key.z32, &key.versions[0].payload)
                    }
                })
                .collect(),
        );
        let resolve = spec.resolve;
        let next = Arc::new(AtomicUsize::new(0));
        let mut workers = tokio::task::JoinSet::new();
        let sources = Arc::new(spec.flood_sources.clone());
        let concurrency = spec.flood_concurrency.max(1);
        for worker in 0..concurrency {
            let (jobs, next, sources) = (jobs.clone(), next.clone(), sources.clone());
            let wrap = if resolve { jobs.len() } else { usize::MAX };
            let base = urls[worker % urls.len()].clone();
            workers.spawn(async move {
                // This worker's share of the addresses, one keep-alive client each, taken in
                // turn: every address sends, however few workers there are.
                let clients: Vec<_> = sources
                    .iter()
                    .skip(worker)
                    .step_by(concurrency)
                    .map(|source| client(Some(*source)))
                    .collect();
                let clients = if clients.is_empty() {
                    vec![client(None)]
                } else {
                    clients
                };
                let mut outcomes = Vec::new();
                let mut ran_dry = false;
                for turn in 0.. {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed) % wrap) else {
                        ran_dry = true;
                        break;
                    };
                    outcomes.push(send(&clients[turn % clients.len()], &base, job).await);
                }
                (outcomes, Instant::now(), ran_dry)
            });
        }
        workers
    });

    // What a served request is answered: 204 for a PUT, 200 for a GET.
    let served = if spec.resolve { 200 } else { 204 };
    let (latencies, status, errors) = collect(&mut republishers).await?;
    let sent = latencies.len();
    let ok = status.get(&served).copied().unwrap_or(0);
    let republish = Summary::new(
        "republish",
        count,
        started.elapsed(),
        latencies,
        status,
        errors,
    );
    let (flood, flood_stored_per_second, flood_ran_dry) = match flood {
        Some(mut workers) => {
            // The flood's own time: until its last worker stopped (at the deadline, or when
            // the keys ran out).
            let mut ended = started;
            let mut ran_dry = false;
            let mut outcomes = Vec::new();
            while let Some(done) = workers.join_next().await {
                let (worker_outcomes, worker_ended, worker_ran_dry) = done?;
                outcomes.push(worker_outcomes);
                ended = ended.max(worker_ended);
                ran_dry |= worker_ran_dry;
            }
            let (latencies, status, errors) = tally(outcomes.into_iter().flatten());
            let elapsed = ended - started;
            let stored = status.get(&served).copied().unwrap_or(0);
            let summary = Summary::new(
                "flood",
                spec.flood_concurrency,
                elapsed,
                latencies,
                status,
                errors,
            );
            (
                Some(summary),
                stored as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
                ran_dry,
            )
        }
        None => (None, 0.0, false),
    };
    Ok(Report {
        op: "admission",
        republish_ok_ratio: if sent == 0 {
            0.0
        } else {
            ok as f64 / sent as f64
        },
        republish,
        flood,
        flood_stored_per_second,
        flood_ran_dry,
    })
}

fn get(z32: &str) -> Job {
    Job {
        method: Method::GET,
        path: format!("/{z32}"),
        body: Bytes::new(),
        forwarded_for: None,
    }
}

fn put(z32: &str, payload: &[u8]) -> Job {
    Job {
        method: Method::PUT,
        path: format!("/{z32}"),
        body: Bytes::copy_from_slice(payload),
        forwarded_for: None,
    }
}

type Collected = (Vec<Duration>, BTreeMap<u16, u64>, u64);

async fn collect(tasks: &mut tokio::task::JoinSet<Vec<Outcome>>) -> anyhow::Result<Collected> {
    let mut outcomes = Vec::new();
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done?);
    }
    Ok(tally(outcomes.into_iter().flatten()))
}

fn tally(outcomes: impl Iterator<Item = Outcome>) -> Collected {
    let mut latencies = Vec::new();
    let mut status = BTreeMap::new();
    let mut errors = 0;
    for outcome in outcomes {
        latencies.push(outcome.latency);
        match outcome.status {
            Some(code) => *status.entry(code).or_insert(0) += 1,
            None => errors += 1,
        }
    }
    (latencies, status, errors)
}
