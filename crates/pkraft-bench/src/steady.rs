//! A well-behaved client for the abuse benchmark (tests/bench/abuse.sh): for `duration`, from
//! `source`, `rate` operations per second of each kind, paced (not a load test): PUT a new key
//! (keys from `first_key` on, version 0) through one relay, GET a stored key (the first
//! `stored_keys`, published before) from another, and ask a DNS server over UDP for a stored
//! key's `_iroh` TXT. Each kind is one client waiting for each answer, so a stalled server shows
//! as fewer operations and a longer tail rather than as a pile of requests. An operation is
//! answered when it gets what a well-behaved client wants: 204, 200, or a NOERROR answer with
//! records.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use hyper::Method;
use serde::Serialize;
use tokio::net::UdpSocket;

use crate::dataset::DataSet;
use crate::http_load::{Job, client, send};
use crate::stats::Summary;

/// A DNS query unanswered for this long counts as not answered.
const DNS_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Spec<'a> {
    pub data: &'a DataSet,
    pub put_url: &'a str,
    pub get_url: &'a str,
    pub dns: SocketAddr,
    pub origin: &'a str,
    /// Keys `0..stored_keys` are stored already: GET and DNS ask for them.
    pub stored_keys: usize,
    /// PUTs use keys from here on (each once).
    pub first_key: usize,
    pub rate: u32,
    pub duration: Duration,
    pub source: IpAddr,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub op: &'static str,
    pub put: Kind,
    pub get: Kind,
    pub dns: Kind,
}

/// One kind of operation: the summary (status or rcode counts, latency percentiles), and the
/// share answered as wanted.
#[derive(Debug, Serialize)]
pub struct Kind {
    pub answered: u64,
    pub sent: u64,
    pub answered_ratio: f64,
    pub summary: Summary,
}

impl Kind {
    fn new(
        op: &str,
        outcomes: Vec<(Duration, Option<u16>)>,
        wanted: u16,
        elapsed: Duration,
    ) -> Kind {
        let sent = outcomes.len() as u64;
        let mut status = BTreeMap::new();
        let mut errors = 0;
        let mut latencies = Vec::with_capacity(outcomes.len());
        for (latency, code) in outcomes {
            latencies.push(latency);
            match code {
                Some(code) => *status.entry(code).or_insert(0) += 1,
                None => errors += 1,
            }
        }
        let answered = status.get(&wanted).copied().unwrap_or(0);
        Kind {
            answered,
            sent,
            answered_ratio: if sent == 0 {
                0.0
            } else {
                answered as f64 / sent as f64
            },
            summary: Summary::new(op, 1, elapsed, latencies, status, errors),
        }
    }
}

pub async fn run(spec: Spec<'_>) -> anyhow::Result<Report> {
    anyhow::ensure!(spec.rate > 0, "--rate must be at least 1");
    anyhow::ensure!(
        spec.stored_keys > 0 && spec.stored_keys <= spec.data.keys.len(),
        "--stored-keys must be 1 to the data set's {} keys",
        spec.data.keys.len()
    );
    let period = Duration::from_secs(1) / spec.rate;
    let started = Instant::now();
    let deadline = started + spec.duration;
    let (put, get, dns) = tokio::join!(
        puts(&spec, period, deadline),
        gets(&spec, period, deadline),
        queries(&spec, period, deadline)
    );
    let elapsed = started.elapsed();
    Ok(Report {
        op: "steady",
        put: Kind::new("put", put?, 204, elapsed),
        get: Kind::new("get", get, 200, elapsed),
        dns: Kind::new("dns", dns?, 0, elapsed),
    })
}

/// A pacer: ticks every `period`, never catching up in a burst after a slow answer.
fn pacer(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

async fn puts(
    spec: &Spec<'_>,
    period: Duration,
    deadline: Instant,
) -> anyhow::Result<Vec<(Duration, Option<u16>)>> {
    let client = client(Some(spec.source));
    let base = spec.put_url.trim_end_matches('/');
    let mut pace = pacer(period);
    let mut outcomes = Vec::new();
    for key in spec.data.keys.iter().skip(spec.first_key) {
        pace.tick().await;
        if Instant::now() >= deadline {
            return Ok(outcomes);
        }
        let job = Job {
            method: Method::PUT,
            path: format!("/{}", key.z32),
            body: Bytes::from(key.versions[0].payload.clone()),
            forwarded_for: None,
        };
        let outcome = send(&client, base, &job).await;
        outcomes.push((outcome.latency, outcome.status));
    }
    anyhow::bail!(
        "the data set ran out of new keys after {} PUTs (generate more, or lower --rate)",
        outcomes.len()
    )
}

async fn gets(
    spec: &Spec<'_>,
    period: Duration,
    deadline: Instant,
) -> Vec<(Duration, Option<u16>)> {
    let client = client(Some(spec.source));
    let base = spec.get_url.trim_end_matches('/');
    let mut pace = pacer(period);
    let mut outcomes = Vec::new();
    for key in spec.data.keys[..spec.stored_keys].iter().cycle() {
        pace.tick().await;
        if Instant::now() >= deadline {
            break;
        }
        let job = Job {
            method: Method::GET,
            path: format!("/{}", key.z32),
            body: Bytes::new(),
            forwarded_for: None,
        };
        let outcome = send(&client, base, &job).await;
        outcomes.push((outcome.latency, outcome.status));
    }
    outcomes
}

/// DNS outcomes: `Some(0)` for a NOERROR answer with records, the rcode otherwise (NOERROR
/// without records counts as 1000), `None` for no answer. As a resolver does, a query
/// unanswered for [`UDP_RETRY`] is sent again (at most [`UDP_ATTEMPTS`] times) and a truncated
/// answer is asked again over TCP; the latency covers all of it.
async fn queries(
    spec: &Spec<'_>,
    period: Duration,
    deadline: Instant,
) -> anyhow::Result<Vec<(Duration, Option<u16>)>> {
    let socket = UdpSocket::bind(SocketAddr::new(spec.source, 0)).await?;
    socket.connect(spec.dns).await?;
    let mut pace = pacer(period);
    let mut outcomes = Vec::new();
    let mut buf = vec![0_u8; 65_535];
    for (n, key) in spec.data.keys[..spec.stored_keys]
        .iter()
        .cycle()
        .enumerate()
    {
        pace.tick().await;
        if Instant::now() >= deadline {
            break;
        }
        let name = Name::from_ascii(format!("_iroh.{}.{}.", key.z32, spec.origin))?;
        let mut query = Message::query();
        query.metadata.id = u16::try_from(n % 65_536).unwrap_or(0);
        query.add_query(Query::query(name, RecordType::TXT));
        let bytes = query.to_vec()?;
        let started = Instant::now();
        let mut answer = None;
        for _ in 0..UDP_ATTEMPTS {
            socket.send(&bytes).await?;
            answer =
                tokio::time::timeout(UDP_RETRY, udp_answer(&socket, &mut buf, query.metadata.id))
                    .await
                    .ok()
                    .flatten();
            if answer.is_some() {
                break;
            }
        }
        if answer
            .as_ref()
            .is_some_and(|answer| answer.metadata.truncation)
        {
            answer = tcp_answer(spec.dns, spec.source, &bytes).await;
        }
        let rcode = answer.map(|answer| {
            let rcode = u16::from(answer.metadata.response_code);
            if rcode == 0 && answer.answers.is_empty() {
                crate::dns_load::NODATA
            } else {
                rcode
            }
        });
        outcomes.push((started.elapsed(), rcode));
    }
    Ok(outcomes)
}

/// How long a resolver waits for a UDP answer before it asks again.
const UDP_RETRY: Duration = Duration::from_secs(1);
/// UDP attempts per query.
const UDP_ATTEMPTS: u32 = 3;

/// The next answer with `id` on `socket`.
async fn udp_answer(socket: &UdpSocket, buf: &mut [u8], id: u16) -> Option<Message> {
    loop {
        let len = socket.recv(buf).await.ok()?;
        if let Ok(answer) = Message::from_vec(&buf[..len])
            && answer.metadata.id == id
        {
            return Some(answer);
        }
    }
}

/// The answer to `query` over a TCP connection of its own from `source`.
async fn tcp_answer(server: SocketAddr, source: IpAddr, query: &[u8]) -> Option<Message> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket.bind(SocketAddr::new(source, 0)).ok()?;
        let mut stream = socket.connect(server).await.ok()?;
        let mut framed = u16::try_from(query.len()).ok()?.to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        stream.write_all(&framed).await.ok()?;
        let len = stream.read_u16().await.ok()?;
        let mut answer = vec![0_u8; usize::from(len)];
        stream.read_exact(&mut answer).await.ok()?;
        Message::from_vec(&answer).ok()
    };
    tokio::time::timeout(DNS_TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
}
