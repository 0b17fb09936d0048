//! DNS latency under load: `concurrency` closed-loop clients, each with its own UDP socket, send
//! `_iroh.<z32>.<origin> TXT` for the keys in turn for `duration` and time every answer. dnsperf
//! measures throughput (and only mean latency); this gives the percentiles.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::net::UdpSocket;

use crate::stats::Summary;

/// A query unanswered for this long counts as an error (and its client moves on).
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Reported in place of rcode 0 when a NOERROR answer holds no records (NODATA): every query is
/// for a published name, so that is a wrong answer, not a success.
pub const NODATA: u16 = 1000;

/// The shape of a load.
pub struct Load {
    pub concurrency: usize,
    pub duration: Duration,
    /// Local address to send from (default 127.0.0.1).
    pub source: Option<IpAddr>,
    /// Pause after each answer (0: closed loop at full speed).
    pub interval: Duration,
}

pub async fn run(server: SocketAddr, names: Vec<Name>, load: Load) -> anyhow::Result<Summary> {
    let Load {
        concurrency,
        duration,
        source,
        interval,
    } = load;
    let source = source.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    anyhow::ensure!(!names.is_empty(), "no query names");
    anyhow::ensure!(concurrency > 0, "--concurrency must be at least 1");
    let names = Arc::new(names);
    let started = Instant::now();
    let deadline = started + duration;
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..concurrency {
        let names = names.clone();
        clients.spawn(async move {
            let socket = UdpSocket::bind(SocketAddr::new(source, 0)).await?;
            socket.connect(server).await?;
            let mut latencies = Vec::new();
            let mut rcodes: BTreeMap<u16, u64> = BTreeMap::new();
            let mut errors = 0u64;
            let mut buf = [0u8; 4096];
            let mut index = client;
            while Instant::now() < deadline {
                let mut query = Message::query();
                query.add_query(Query::query(
                    names[index % names.len()].clone(),
                    RecordType::TXT,
                ));
                index += concurrency;
                let start = Instant::now();
                socket.send(&query.to_vec()?).await?;
                match answer(&socket, &mut buf, query.metadata.id).await {
                    Some(rcode) => {
                        latencies.push(start.elapsed());
                        *rcodes.entry(rcode).or_insert(0) += 1;
                    }
                    None => errors += 1,
                }
                if !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
            }
            anyhow::Ok((latencies, rcodes, errors))
        });
    }
    let mut latencies = Vec::new();
    let mut rcodes = BTreeMap::new();
    let mut errors = 0;
    while let Some(joined) = clients.join_next().await {
        let (l, r, e) = joined??;
        latencies.extend(l);
        for (code, n) in r {
            *rcodes.entry(code).or_insert(0) += n;
        }
        errors += e;
    }
    // `status` holds DNS rcodes here (0 = NOERROR with records, 3 = NXDOMAIN, NODATA = empty).
    Ok(Summary::new(
        "dns",
        concurrency,
        started.elapsed(),
        latencies,
        rcodes,
        errors,
    ))
}

/// Waits for the answer with `id` and returns its rcode ([`NODATA`] for an empty NOERROR);
/// `None` after the timeout.
async fn answer(socket: &UdpSocket, buf: &mut [u8], id: u16) -> Option<u16> {
    let wait = async {
        loop {
            let len = socket.recv(buf).await.ok()?;
            if let Ok(response) = Message::from_vec(&buf[..len])
                && response.metadata.id == id
            {
                let rcode = u16::from(response.metadata.response_code);
                return Some(if rcode == 0 && response.answers.is_empty() {
                    NODATA
                } else {
                    rcode
                });
            }
        }
    };
    tokio::time::timeout(QUERY_TIMEOUT, wait)
        .await
        .ok()
        .flatten()
}
