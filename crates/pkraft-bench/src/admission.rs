//! Issue 50's admission scenario (tests/bench/admission.sh): for `duration`, well-behaved
//! endpoints republish the keys stored before, each from an address of its own at one PUT a
//! second, while (optionally) a flood from many other addresses PUTs keys never seen before as
//! fast as it can. Reports what each side got: the republishes' statuses and latency, and how
//! many of the flood's keys were stored per second.
//!
//! With `resolve`, the same shape for reads: each well-behaved address GETs its keys (one a
//! second) and asks for the same name over DoH, and, with DNS servers given, one UDP query a
//! second; the flood GETs the stored keys and asks for them over DoH, in turn, round and round,
//! as fast as it can.
//!
//! The flood's PUTs are new keys (version 0 of keys never stored), or changes of keys stored
//! before (`flood_from_version`: each version of every key in turn, oldest first). Its
//! addresses are its own, or (`flood_forwarded_v6`) one address acting as a trusted reverse
//! proxy that names a /56 of one IPv6 /48 per client in `X-Forwarded-For`.
//!
//! A DoH answer counts as served when its status is 200 (an error answer is a 200 too: the
//! UDP queries, which count only answers with records, check the names).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use hyper::Method;
use serde::Serialize;

use crate::dataset::DataSet;
use crate::http_load::{Job, Outcome, client, send};
use crate::stats::Summary;
use crate::udp_flood::{self, ResolverReport};

/// One PUT a second per well-behaved address: an endpoint republishes every few minutes, so an
/// address holding many of them sends about this much.
const REPUBLISH_INTERVAL: Duration = Duration::from_secs(1);

pub struct Spec<'a> {
    /// Keys stored before the run; each republisher PUTs `version` of its share of them.
    pub stored: &'a DataSet,
    pub version: usize,
    /// The flood's keys (module docs), or no flood.
    pub flood: Option<&'a DataSet>,
    /// The flood PUTs versions `flood_from_version..` of its keys (0: version 0 only).
    pub flood_from_version: usize,
    /// Relay base URLs (`http://…/pkarr`); the load is spread over them.
    pub urls: &'a [String],
    pub flood_sources: Vec<IpAddr>,
    /// Every flood request comes from this address (a trusted proxy) and names the n-th
    /// source's client as `2001:db8:50:<n << 8>::1` (at most 256: the /56s of one /48) in
    /// `X-Forwarded-For`.
    pub flood_forwarded_v6: Option<IpAddr>,
    pub flood_concurrency: usize,
    pub republishers: Vec<IpAddr>,
    pub duration: Duration,
    /// GETs and DoH instead of PUTs (module docs).
    pub resolve: bool,
    /// With `resolve`: the `_iroh` name of each stored key (in `stored`'s order), and the
    /// nodes' DNS addresses for the well-behaved UDP queries (none: no UDP).
    pub names: Vec<Name>,
    pub dns: Vec<SocketAddr>,
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
    /// With `resolve`: the well-behaved DoH GETs, and those answered 200 of all sent.
    pub doh: Option<Summary>,
    pub doh_ok_ratio: Option<f64>,
    /// With `resolve` and DNS servers: the well-behaved UDP queries, summed.
    pub udp: Option<ResolverReport>,
}

pub async fn run(spec: Spec<'_>) -> anyhow::Result<Report> {
    anyhow::ensure!(!spec.urls.is_empty(), "at least one --url is needed");
    anyhow::ensure!(!spec.republishers.is_empty(), "at least one republisher");
    spec.stored.check_version(spec.version)?;
    if let Some(flood) = spec.flood {
        flood.check_version(spec.flood_from_version)?;
    }
    anyhow::ensure!(
        !spec.resolve || spec.names.len() == spec.stored.keys.len(),
        "one name per stored key"
    );
    anyhow::ensure!(
        spec.flood_forwarded_v6.is_none() || spec.flood_sources.len() <= 256,
        "a /48 holds 256 /56s: at most 256 flood sources with a proxy"
    );
    let started = Instant::now();
    let deadline = started + spec.duration;
    // Each node's root: a job names its whole path (`/pkarr/…`, `/dns-query?…`).
    let sites: Vec<String> = spec
        .urls
        .iter()
        .map(|url| {
            let url = url.trim_end_matches('/');
            url.strip_suffix("/pkarr")
                .map(str::to_string)
                .ok_or_else(|| anyhow::anyhow!("--url {url}: a relay base URL ends in /pkarr"))
        })
        .collect::<anyhow::Result<_>>()?;
    let doh_jobs: Vec<Job> = spec.names.iter().map(doh).collect::<anyhow::Result<_>>()?;

    let mut republishers = tokio::task::JoinSet::new();
    let count = spec.republishers.len();
    for (index, source) in spec.republishers.iter().copied().enumerate() {
        // This address's keys, each with its DoH query when resolving.
        let jobs: Vec<(Job, Option<Job>)> = spec
            .stored
            .keys
            .iter()
            .enumerate()
            .skip(index)
            .step_by(count)
            .map(|(key_index, key)| {
                if spec.resolve {
                    (get(&key.z32), doh_jobs.get(key_index).cloned())
                } else {
                    (put(&key.z32, &key.versions[spec.version].payload), None)
                }
            })
            .collect();
        let site = sites[index % sites.len()].clone();
        republishers.spawn(async move {
            let client = client(Some(source));
            let mut interval = tokio::time::interval(REPUBLISH_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut outcomes, mut doh_outcomes) = (Vec::new(), Vec::new());
            // Each key once at most: a second PUT of the same version would be a replay.
            for (job, doh_job) in &jobs {
                interval.tick().await;
                if Instant::now() >= deadline {
                    break;
                }
                outcomes.push(send(&client, &site, job).await);
                if let Some(doh_job) = doh_job {
                    doh_outcomes.push(send(&client, &site, doh_job).await);
                }
            }
            (outcomes, doh_outcomes)
        });
    }
    // With DNS servers, each well-behaved address also asks for its first key over UDP.
    let mut udp_resolvers = tokio::task::JoinSet::new();
    if spec.resolve && !spec.dns.is_empty() {
        for (index, source) in spec.republishers.iter().copied().enumerate() {
            let Some(name) = spec.names.get(index) else {
                break;
            };
            let query = txt_query(name)?;
            let server = spec.dns[index % spec.dns.len()];
            let duration = spec.duration;
            udp_resolvers.spawn(udp_flood::resolve(
                source,
                REPUBLISH_INTERVAL,
                server,
                query,
                duration,
            ));
        }
    }

    let flood = flood_jobs(&spec, &doh_jobs).map(|jobs| {
        let jobs = Arc::new(jobs);
        let resolve = spec.resolve;
        let next = Arc::new(AtomicUsize::new(0));
        let mut workers = tokio::task::JoinSet::new();
        let sources = Arc::new(spec.flood_sources.clone());
        let forwarded_v6 = spec.flood_forwarded_v6;
        let concurrency = spec.flood_concurrency.max(1);
        for worker in 0..concurrency {
            let (jobs, next, sources) = (jobs.clone(), next.clone(), sources.clone());
            let wrap = if resolve { jobs.len() } else { usize::MAX };
            let site = sites[worker % sites.len()].clone();
            workers.spawn(async move {
                // This worker's share of the addresses, one keep-alive client each (or one
                // client from the proxy naming each in turn), taken in turn: every address
                // sends, however few workers there are.
                let proxy = forwarded_v6.map(|proxy| client(Some(proxy)));
                let senders: Vec<_> = (worker..sources.len())
                    .step_by(concurrency)
                    .map(|n| match &proxy {
                        Some(proxy) => (proxy.clone(), Some(slash_56(n))),
                        None => (client(Some(sources[n])), None),
                    })
                    .collect();
                let senders = if senders.is_empty() {
                    vec![(client(None), None)]
                } else {
                    senders
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
                    let (sender, forwarded_for) = &senders[turn % senders.len()];
                    let outcome = match forwarded_for {
                        Some(address) => {
                            let job = Job {
                                forwarded_for: Some(*address),
                                ..job.clone()
                            };
                            send(sender, &site, &job).await
                        }
                        None => send(sender, &site, job).await,
                    };
                    outcomes.push(outcome);
                }
                (outcomes, Instant::now(), ran_dry)
            });
        }
        workers
    });

    // What a served request is answered: 204 for a PUT, 200 for a GET.
    let served = if spec.resolve { 200 } else { 204 };
    let mut outcomes = Vec::new();
    let mut doh_outcomes = Vec::new();
    while let Some(done) = republishers.join_next().await {
        let (republished, resolved_over_doh) = done?;
        outcomes.push(republished);
        doh_outcomes.push(resolved_over_doh);
    }
    let (latencies, status, errors) = tally(outcomes.into_iter().flatten());
    let republish_ok_ratio = ok_ratio(&status, served, latencies.len());
    let republish = Summary::new(
        "republish",
        count,
        started.elapsed(),
        latencies,
        status,
        errors,
    );
    let (doh, doh_ok_ratio) = if spec.resolve {
        let (latencies, status, errors) = tally(doh_outcomes.into_iter().flatten());
        let ratio = ok_ratio(&status, 200, latencies.len());
        let summary = Summary::new("doh", count, started.elapsed(), latencies, status, errors);
        (Some(summary), Some(ratio))
    } else {
        (None, None)
    };
    let udp = if udp_resolvers.is_empty() {
        None
    } else {
        Some(ResolverReport::sum(&mut udp_resolvers).await?)
    };
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
        republish_ok_ratio,
        republish,
        flood,
        flood_stored_per_second,
        flood_ran_dry,
        doh,
        doh_ok_ratio,
        udp,
    })
}

/// The flood's requests: with `resolve` the stored keys' GETs and DoH queries in turn (sent
/// round and round); else the flood's versions of its keys, oldest version first.
fn flood_jobs(spec: &Spec<'_>, doh_jobs: &[Job]) -> Option<Vec<Job>> {
    if spec.resolve {
        let gets = spec.stored.keys.iter().map(|key| get(&key.z32));
        let jobs = gets
            .zip(doh_jobs.iter().cloned())
            .flat_map(|(get, doh)| [get, doh])
            .collect();
        return Some(jobs);
    }
    let flood = spec.flood?;
    let versions = if spec.flood_from_version == 0 {
        0..1
    } else {
        spec.flood_from_version..flood.version_count()
    };
    let jobs = versions
        .flat_map(|version| {
            flood
                .keys
                .iter()
                .map(move |key| put(&key.z32, &key.versions[version].payload))
        })
        .collect();
    Some(jobs)
}

/// Client `n` of the forged /48: `2001:db8:50:<n << 8>::1`, the first address of its n-th /56.
fn slash_56(n: usize) -> IpAddr {
    let subnet = u16::try_from(n % 256).unwrap_or(0) << 8;
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x50, subnet, 0, 0, 0, 1))
}

fn ok_ratio(status: &BTreeMap<u16, u64>, ok: u16, sent: usize) -> f64 {
    let answered = status.get(&ok).copied().unwrap_or(0);
    if sent == 0 {
        0.0
    } else {
        answered as f64 / sent as f64
    }
}

/// A `TXT` query for `name`, in wire format.
fn txt_query(name: &Name) -> anyhow::Result<Vec<u8>> {
    let mut query = Message::query();
    query.add_query(Query::query(name.clone(), RecordType::TXT));
    Ok(query.to_vec()?)
}

/// A DoH GET (RFC 8484) of `name`'s `TXT` records, with ID 0 as the RFC asks.
fn doh(name: &Name) -> anyhow::Result<Job> {
    let mut query = txt_query(name)?;
    query[..2].copy_from_slice(&[0, 0]);
    Ok(Job {
        method: Method::GET,
        path: format!("/dns-query?dns={}", URL_SAFE_NO_PAD.encode(&query)),
        body: Bytes::new(),
        forwarded_for: None,
    })
}

fn get(z32: &str) -> Job {
    Job {
        method: Method::GET,
        path: format!("/pkarr/{z32}"),
        body: Bytes::new(),
        forwarded_for: None,
    }
}

fn put(z32: &str, payload: &[u8]) -> Job {
    Job {
        method: Method::PUT,
        path: format!("/pkarr/{z32}"),
        body: Bytes::copy_from_slice(payload),
        forwarded_for: None,
    }
}

type Collected = (Vec<Duration>, BTreeMap<u16, u64>, u64);

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
