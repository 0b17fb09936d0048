//! Visibility lag: PUT a new version to one node, then ask every DNS address (over UDP) until the
//! new record is served. The lag of a node is the time from the PUT's acknowledgement to the first
//! answer that holds the new record.

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

/// How long one key may take to become visible before the run fails.
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one DNS answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

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
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let base = spec.put_url.trim_end_matches('/');
    let mut puts = Vec::with_capacity(spec.samples);
    let mut lags: Vec<Vec<Duration>> = vec![Vec::with_capacity(spec.samples); spec.dns.len()];

    for key in spec.data.keys.iter().take(spec.samples) {
        let version = &key.versions[spec.version];
        let expected = version.txt.last().cloned().unwrap_or_default();
        let request = Request::put(format!("{base}/{}", key.z32))
            .body(Full::new(Bytes::from(version.payload.clone())))?;
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
        for (node, dns) in spec.dns.iter().enumerate() {
            loop {
                if serves(&socket, *dns, &qname, &expected).await? {
                    lags[node].push(acked.elapsed());
                    break;
                }
                anyhow::ensure!(
                    acked.elapsed() < VISIBLE_TIMEOUT,
                    "{} not visible on {dns} within {VISIBLE_TIMEOUT:?}",
                    key.z32
                );
            }
        }
    }
    puts.sort_unstable();
    let nodes = spec
        .dns
        .iter()
        .zip(lags)
        .map(|(dns, mut lag)| {
            lag.sort_unstable();
            NodeLag {
                dns: *dns,
                p50_ms: millis(percentile(&lag, 50.0)),
                p99_ms: millis(percentile(&lag, 99.0)),
                max_ms: millis(lag.last().copied().unwrap_or_default()),
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

/// Whether `dns` answers `qname` TXT with a record holding `expected`.
async fn serves(
    socket: &UdpSocket,
    dns: SocketAddr,
    qname: &Name,
    expected: &str,
) -> anyhow::Result<bool> {
    let mut query = Message::query();
    query.add_query(Query::query(qname.clone(), RecordType::TXT));
    socket.send_to(&query.to_vec()?, dns).await?;
    let mut buf = [0u8; 4096];
    loop {
        let len = tokio::time::timeout(QUERY_TIMEOUT, socket.recv(&mut buf)).await??;
        let Ok(response) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        // Skip late answers to earlier polls.
        if response.metadata.id != query.metadata.id {
            continue;
        }
        return Ok(response.answers.iter().any(|record| match &record.data {
            RData::TXT(txt) => txt
                .txt_data
                .iter()
                .any(|s| s.as_ref() == expected.as_bytes()),
            _ => false,
        }));
    }
}
