//! Visibility lag: PUT a new version to one node, then ask every DNS address (over UDP, all at
//! once) until the new record is served. A node's lag is the time from the PUT's acknowledgement
//! to its first answer holding the new record.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::net::UdpSocket;

use crate::dataset::DataSet;
use crate::stats::{millis, percentile};

/// How long one key may take to become visible on a node before the run fails.
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one DNS answer; an unanswered poll is retried.
const QUERY_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Serialize)]
pub struct LagReport {
    pub op: &'static str,
    pub samples: usize,
    pub put_p50_ms: f64,
    pub put_p99_ms: f64,
    /// One entry per DNS address, in the order given.
    pub nodes: Vec<NodeLag>,
}

#[derive(Debug, Serialize)]
pub struct NodeLag {
    pub dns: SocketAddr,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Polls that got no answer in time (and were retried).
    pub unanswered_polls: u64,
}

pub struct LagSpec<'a> {
    pub data: &'a DataSet,
    pub version: usize,
    pub put_url: &'a str,
    pub dns: &'a [SocketAddr],
    pub origin: &'a str,
    pub samples: usize,
}

pub async fn run(spec: LagSpec<'_>) -> anyhow::Result<LagReport> {
    spec.data.check_version(spec.version)?;
    anyhow::ensure!(!spec.dns.is_empty(), "at least one --dns address is needed");
    anyhow::ensure!(
        spec.samples <= spec.data.keys.len(),
        "more samples than keys"
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let base = spec.put_url.trim_end_matches('/');
    let mut puts = Vec::with_capacity(spec.samples);
    let mut lags: Vec<Vec<Duration>> = vec![Vec::with_capacity(spec.samples); spec.dns.len()];
    let mut unanswered = vec![0u64; spec.dns.len()];

    for key in spec.data.keys.iter().take(spec.samples) {
        let version = &key.versions[spec.version];
        let expected = version.txt.last().cloned().unwrap_or_default();
        let body = Bytes::from(version.payload.clone());
        let request = Request::put(format!("{base}/{}", key.z32)).body(Full::new(body))?;
        let start = Instant::now();
        let response = client.request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        anyhow::ensure!(status.is_success(), "PUT {} answered {status}", key.z32);
        let acked = Instant::now();
        puts.push(acked - start);

        let qname = Name::from_ascii(format!(
            "_iroh.{}.{}.",
            key.z32,
            spec.origin.trim_end_matches('.')
        ))?;
        let mut polls = tokio::task::JoinSet::new();
        for (node, dns) in spec.dns.iter().copied().enumerate() {
            let (qname, expected) = (qname.clone(), expected.clone());
            polls.spawn(async move {
                (
                    node,
                    poll_until_visible(dns, &qname, &expected, acked).await,
                )
            });
        }
        while let Some(joined) = polls.join_next().await {
            let (node, result) = joined?;
            let (lag, misses) = result?;
            lags[node].push(lag);
            unanswered[node] += misses;
        }
    }
    puts.sort_unstable();
    let nodes = spec
        .dns
        .iter()
        .zip(lags)
        .zip(unanswered)
        .map(|((dns, mut lag), unanswered_polls)| {
            lag.sort_unstable();
            NodeLag {
                dns: *dns,
                p50_ms: millis(percentile(&lag, 50.0)),
                p99_ms: millis(percentile(&lag, 99.0)),
                max_ms: millis(lag.last().copied().unwrap_or_default()),
                unanswered_polls,
            }
        })
        .collect();
    Ok(LagReport {
        op: "lag",
        samples: spec.samples,
        put_p50_ms: millis(percentile(&puts, 50.0)),
        put_p99_ms: millis(percentile(&puts, 99.0)),
        nodes,
    })
}

/// Polls `dns` until it serves `expected`; returns the lag since `acked` and the polls that went
/// unanswered. Polls back to back (one outstanding query at a time), yielding in between.
async fn poll_until_visible(
    dns: SocketAddr,
    qname: &Name,
    expected: &str,
    acked: Instant,
) -> anyhow::Result<(Duration, u64)> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(dns).await?;
    let mut unanswered = 0;
    loop {
        match serves(&socket, qname, expected).await? {
            Some(true) => return Ok((acked.elapsed(), unanswered)),
            Some(false) => {}
            None => unanswered += 1,
        }
        anyhow::ensure!(
            acked.elapsed() < VISIBLE_TIMEOUT,
            "{qname} not visible on {dns} within {VISIBLE_TIMEOUT:?}"
        );
        tokio::task::yield_now().await;
    }
}

/// Whether the server answers `qname` TXT with a record holding `expected`; `None` when no answer
/// came in time.
async fn serves(socket: &UdpSocket, qname: &Name, expected: &str) -> anyhow::Result<Option<bool>> {
    let mut query = Message::query();
    query.add_query(Query::query(qname.clone(), RecordType::TXT));
    socket.send(&query.to_vec()?).await?;
    let mut buf = [0u8; 4096];
    let answer = async {
        loop {
            let len = socket.recv(&mut buf).await?;
            // Skip late answers to earlier polls and anything that is not DNS.
            let Ok(response) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            if response.metadata.id != query.metadata.id {
                continue;
            }
            return anyhow::Ok(response.answers.iter().any(|record| {
                match &record.data {
                    RData::TXT(txt) => txt
                        .txt_data
                        .iter()
                        .any(|s| s.as_ref() == expected.as_bytes()),
                    _ => false,
                }
            }));
        }
    };
    match tokio::time::timeout(QUERY_TIMEOUT, answer).await {
        Ok(found) => Ok(Some(found?)),
        Err(_) => Ok(None),
    }
}
