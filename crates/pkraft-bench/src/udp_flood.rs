//! A UDP query flood: sends `_iroh.<z32>.<origin> TXT` queries as fast as the sockets take them
//! (or at a given rate) for `duration`, without waiting for answers, and counts what comes back
//! (full answers, empty truncated ones, which are response rate limiting's slips, and their
//! bytes). From one address,
//! or from many networks at once, one socket each (`127.<block + n / 256>.<n % 256>.2`: every
//! one a /24 of its own), as a flood forged from many networks looks to the server.
//!
//! With a [`Resolver`], well-behaved resolvers on addresses of their own ask meanwhile, one
//! query at a time each at a steady pace, and count how many they got answered over UDP (with
//! records), truncated (a slip: a real resolver would retry over TCP), or not at all.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};
use serde::Serialize;
use tokio::net::UdpSocket;

/// How long to keep counting answers after the last query.
const DRAIN: Duration = Duration::from_millis(500);

#[derive(Debug, Serialize)]
pub struct Report {
    pub op: &'static str,
    pub seconds: f64,
    /// Sending sockets (client networks).
    pub networks: usize,
    pub sent: u64,
    pub sent_per_second: f64,
    pub sent_bytes: u64,
    /// Answers with records.
    pub answered: u64,
    pub answered_per_second: f64,
    /// Empty answers with TC set.
    pub truncated: u64,
    /// Bytes of every answer received, and per second of the run.
    pub received_bytes: u64,
    pub received_bytes_per_second: f64,
    /// Received bytes over sent bytes.
    pub amplification: f64,
    pub largest_answer: u64,
    /// The well-behaved resolver's results, if one asked.
    pub resolver: Option<ResolverReport>,
}

/// Well-behaved resolvers asking during the flood, one query at a time each.
pub struct Resolver {
    /// One resolver on each of these addresses.
    pub sources: Vec<IpAddr>,
    /// One query, then the next this long after the last was sent.
    pub every: Duration,
}

#[derive(Debug, Default, Serialize)]
pub struct ResolverReport {
    pub asked: u64,
    /// Answered over UDP with records.
    pub answered: u64,
    /// Answered empty with TC (an RRL slip).
    pub truncated: u64,
    /// No answer within `RESOLVER_WAIT`.
    pub lost: u64,
    /// Answered with an error or no records (REFUSED, SERVFAIL, NXDOMAIN, ...).
    pub other: u64,
    pub answered_ratio: f64,
}

impl ResolverReport {
    /// The reports of `resolvers`, added up (with their ratio).
    pub(crate) async fn sum(
        resolvers: &mut tokio::task::JoinSet<anyhow::Result<ResolverReport>>,
    ) -> anyhow::Result<ResolverReport> {
        let mut all = ResolverReport::default();
        while let Some(report) = resolvers.join_next().await {
            let report = report??;
            all.asked += report.asked;
            all.answered += report.answered;
            all.truncated += report.truncated;
            all.lost += report.lost;
            all.other += report.other;
        }
        all.answered_ratio = all.answered as f64 / all.asked.max(1) as f64;
        Ok(all)
    }
}

/// How long the resolver waits for each answer.
const RESOLVER_WAIT: Duration = Duration::from_secs(1);

/// Where the queries come from.
pub enum Sources {
    One(IpAddr),
    /// This many networks, from `127.<block>.0.2` on.
    Networks {
        count: usize,
        block: u8,
    },
}

impl Sources {
    fn addresses(&self) -> Vec<IpAddr> {
        match *self {
            Sources::One(ip) => vec![ip],
            Sources::Networks { count, block } => (0..count)
                .map(|n| {
                    let second = block.saturating_add(u8::try_from(n / 256).unwrap_or(u8::MAX));
                    IpAddr::V4(Ipv4Addr::new(127, second, (n % 256) as u8, 2))
                })
                .collect(),
        }
    }
}

#[derive(Default)]
struct Received {
    answered: AtomicU64,
    truncated: AtomicU64,
    bytes: AtomicU64,
    largest: AtomicU64,
}

pub async fn run(
    server: SocketAddr,
    names: Vec<Name>,
    duration: Duration,
    sources: Sources,
    edns: Option<u16>,
    resolver: Option<Resolver>,
    per_second: Option<u64>,
) -> anyhow::Result<Report> {
    anyhow::ensure!(!names.is_empty(), "no query names");
    let queries: Vec<Vec<u8>> = names
        .iter()
        .map(|name| {
            let mut query = Message::query();
            query.add_query(Query::query(name.clone(), RecordType::TXT));
            if let Some(size) = edns {
                let mut opt = Edns::new();
                opt.set_max_payload(size);
                query.set_edns(opt);
            }
            query.to_vec()
        })
        .collect::<Result<_, _>>()?;
    let mut sockets = Vec::new();
    for address in sources.addresses() {
        let socket = UdpSocket::bind(SocketAddr::new(address, 0)).await?;
        socket.connect(server).await?;
        sockets.push(Arc::new(socket));
    }
    let received = Arc::new(Received::default());
    let mut readers = tokio::task::JoinSet::new();
    for socket in &sockets {
        let (socket, received) = (socket.clone(), received.clone());
        readers.spawn(async move {
            let mut buf = vec![0_u8; 65_535];
            let started = Instant::now();
            // Until the flood has ended and no answer came for `DRAIN`.
            loop {
                match tokio::time::timeout(DRAIN, socket.recv(&mut buf)).await {
                    Ok(Ok(len)) => count(&received, &buf[..len]),
                    Ok(Err(_)) => {}
                    Err(_) if started.elapsed() > duration => break,
                    Err(_) => {}
                }
            }
        });
    }
    let resolver = resolver.map(|resolver| {
        let mut tasks = tokio::task::JoinSet::new();
        for source in resolver.sources {
            tasks.spawn(resolve(
                source,
                resolver.every,
                server,
                queries[0].clone(),
                duration,
            ));
        }
        tasks
    });
    let started = Instant::now();
    let (mut sent, mut sent_bytes) = (0_u64, 0_u64);
    let mut turn = 0_usize;
    while started.elapsed() < duration {
        // Paced: ahead of `per_second`, wait a moment.
        if let Some(per_second) = per_second
            && sent as f64 >= per_second as f64 * started.elapsed().as_secs_f64()
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let socket = &sockets[turn % sockets.len()];
        let query = &queries[turn % queries.len()];
        turn = turn.wrapping_add(1);
        if socket.send(query).await.is_ok() {
            sent += 1;
            sent_bytes += query.len() as u64;
        }
        if sent.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    while readers.join_next().await.is_some() {}
    let resolver = match resolver {
        Some(mut tasks) => Some(ResolverReport::sum(&mut tasks).await?),
        None => None,
    };
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let (answered, received_bytes) = (load(&received.answered), load(&received.bytes));
    Ok(Report {
        op: "udp-flood",
        seconds,
        networks: sockets.len(),
        sent,
        sent_per_second: sent as f64 / seconds,
        sent_bytes,
        answered,
        answered_per_second: answered as f64 / seconds,
        truncated: load(&received.truncated),
        received_bytes,
        received_bytes_per_second: received_bytes as f64 / seconds,
        amplification: received_bytes as f64 / sent_bytes.max(1) as f64,
        largest_answer: load(&received.largest),
        resolver,
    })
}

/// One well-behaved resolver on `source`: `query` (with a fresh ID each time) every `every` for
/// `duration`, one at a time.
pub(crate) async fn resolve(
    source: IpAddr,
    every: Duration,
    server: SocketAddr,
    query: Vec<u8>,
    duration: Duration,
) -> anyhow::Result<ResolverReport> {
    let socket = UdpSocket::bind(SocketAddr::new(source, 0)).await?;
    socket.connect(server).await?;
    let mut report = ResolverReport::default();
    let mut buf = vec![0_u8; 65_535];
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut id = 0_u16;
    loop {
        tick.tick().await;
        if started.elapsed() >= duration {
            break;
        }
        id = id.wrapping_add(1);
        let mut query = query.clone();
        query[..2].copy_from_slice(&id.to_be_bytes());
        socket.send(&query).await?;
        report.asked += 1;
        let asked = Instant::now();
        // The answer to this query (one to an earlier, lost query may still come).
        let answer = loop {
            let left = RESOLVER_WAIT.saturating_sub(asked.elapsed());
            match tokio::time::timeout(left, socket.recv(&mut buf)).await {
                Ok(Ok(len)) => match Message::from_vec(&buf[..len]) {
                    Ok(answer) if answer.metadata.id == id => break Some(answer),
                    _ => continue,
                },
                Ok(Err(error)) => return Err(error.into()),
                Err(_) => break None,
            }
        };
        match answer {
            Some(answer) if answer.metadata.truncation => report.truncated += 1,
            Some(answer) if !answer.answers.is_empty() => report.answered += 1,
            Some(_) => report.other += 1,
            None => report.lost += 1,
        }
    }
    report.answered_ratio = report.answered as f64 / report.asked.max(1) as f64;
    Ok(report)
}

fn count(received: &Received, answer: &[u8]) {
    received
        .bytes
        .fetch_add(answer.len() as u64, Ordering::Relaxed);
    received
        .largest
        .fetch_max(answer.len() as u64, Ordering::Relaxed);
    match Message::from_vec(answer) {
        Ok(message) if message.metadata.truncation => {
            received.truncated.fetch_add(1, Ordering::Relaxed);
        }
        Ok(_) => {
            received.answered.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => {}
    }
}
