//! Connection floods for the abuse benchmark: `connections` connections to one listener, from
//! `sources` loopback addresses (`127.<block>.<n / 250>.<n % 250 + 2>`, so that they are many
//! clients to per-client caps), held for `duration`. Each connection behaves as `mode` says, and
//! is opened again whenever the server closes it, as an attacker who wants the slot would.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Bound on one connect (a full backlog makes the kernel drop SYNs, and a connect then waits).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before opening a connection the server closed, or after a failed connect.
const REOPEN_PAUSE: Duration = Duration::from_millis(100);

/// What each connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Sends nothing.
    Silent,
    /// Sends the start of an HTTP request head, then one more byte every `every`.
    Slowloris,
    /// DNS over TCP: one query for the apex SOA every `every` (idle in between).
    Dns,
    /// A peer request without the cluster secret (`POST /peer/v1/append-entries` with a large
    /// `Content-Length`), once.
    Stranger,
    /// `GET /healthz` on a keep-alive connection every `every`.
    Healthz,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub op: &'static str,
    pub mode: String,
    pub connections: usize,
    pub seconds: f64,
    /// Connects that succeeded (including reopenings).
    pub opened: u64,
    /// Connects that failed or timed out.
    pub connect_failures: u64,
    /// Connections the server closed.
    pub closed_by_server: u64,
}

#[derive(Default)]
struct Counters {
    opened: AtomicU64,
    connect_failures: AtomicU64,
    closed_by_server: AtomicU64,
}

/// Source address number `n` of `block`.
pub(crate) fn source(block: u8, n: usize) -> IpAddr {
    let third = u8::try_from(n / 250).unwrap_or(u8::MAX);
    let fourth = u8::try_from(n % 250 + 2).unwrap_or(u8::MAX);
    IpAddr::V4(Ipv4Addr::new(127, block, third, fourth))
}

/// Address `n` with `per_network` addresses in each /24 of `127.<block>`: `.0` to `.255` when
/// `per_network` is 256, else from `.2` on (as [`source`]).
pub(crate) fn source_in(block: u8, n: usize, per_network: usize) -> anyhow::Result<IpAddr> {
    anyhow::ensure!(
        (1..=254).contains(&per_network) || per_network == 256,
        "addresses per network: 256, or 1 to 254 (from .2 on), not {per_network}"
    );
    let first_host = if per_network == 256 { 0 } else { 2 };
    let (third, fourth) = (n / per_network, n % per_network + first_host);
    let third = u8::try_from(third)
        .map_err(|_| anyhow::anyhow!("address {n} is past 127.{block}.255.x"))?;
    let fourth = u8::try_from(fourth).map_err(|_| anyhow::anyhow!("host {fourth} of a /24"))?;
    Ok(IpAddr::V4(Ipv4Addr::new(127, block, third, fourth)))
}

pub struct Spec {
    pub target: SocketAddr,
    pub connections: usize,
    pub sources: usize,
    pub block: u8,
    pub mode: Mode,
    pub every: Duration,
    pub duration: Duration,
}

pub async fn run(spec: Spec) -> anyhow::Result<Report> {
    anyhow::ensure!(spec.sources > 0, "--sources must be at least 1");
    anyhow::ensure!(
        spec.block != 0,
        "--block 0 is 127.0.x.x, the well-behaved client's"
    );
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let deadline = started + spec.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..spec.connections {
        let from = source(spec.block, n % spec.sources);
        let counters = counters.clone();
        let (target, mode, every) = (spec.target, spec.mode, spec.every);
        tasks.spawn(async move { hold(target, from, mode, every, deadline, &counters).await });
    }
    while tasks.join_next().await.is_some() {}
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    Ok(Report {
        op: "conn-flood",
        mode: format!("{:?}", spec.mode).to_lowercase(),
        connections: spec.connections,
        seconds: started.elapsed().as_secs_f64(),
        opened: load(&counters.opened),
        connect_failures: load(&counters.connect_failures),
        closed_by_server: load(&counters.closed_by_server),
    })
}

/// Keeps one connection open from `from` until `deadline`.
async fn hold(
    target: SocketAddr,
    from: IpAddr,
    mode: Mode,
    every: Duration,
    deadline: Instant,
    counters: &Counters,
) {
    let mut buf = vec![0_u8; 4_096];
    while Instant::now() < deadline {
        let Some(mut stream) = connect(target, from, deadline).await else {
            counters.connect_failures.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(REOPEN_PAUSE).await;
            continue;
        };
        counters.opened.fetch_add(1, Ordering::Relaxed);
        if stream.write_all(hello(mode)).await.is_err() {
            counters.closed_by_server.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(REOPEN_PAUSE).await;
            continue;
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match tokio::time::timeout(every.min(left), stream.read(&mut buf)).await {
                // Closed (or reset) by the server: open another.
                Ok(Ok(0) | Err(_)) => {
                    counters.closed_by_server.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(REOPEN_PAUSE).await;
                    break;
                }
                Ok(Ok(_)) => {}
                Err(_) => {
                    let again = keepalive(mode);
                    if !again.is_empty() && stream.write_all(again).await.is_err() {
                        counters.closed_by_server.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
    }
}

async fn connect(target: SocketAddr, from: IpAddr, deadline: Instant) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(from, 0)).ok()?;
    let wait = CONNECT_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
    tokio::time::timeout(wait, socket.connect(target))
        .await
        .ok()?
        .ok()
}

/// The apex SOA query of `pkarr.test`, with its TCP length prefix.
const DNS_SOA_QUERY: &[u8] =
    b"\x00\x1c\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05pkarr\x04test\x00\x00\x06\x00\x01";
const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: flood\r\n\r\n";

/// What a connection sends first.
fn hello(mode: Mode) -> &'static [u8] {
    match mode {
        Mode::Silent => b"",
        Mode::Slowloris => b"GET /healthz HTTP/1.1\r\nHost: slowloris\r\n",
        Mode::Dns => DNS_SOA_QUERY,
        Mode::Stranger => {
            b"POST /peer/v1/append-entries HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
        }
        Mode::Healthz => HEALTHZ,
    }
}

/// What a connection sends every `every` after that.
fn keepalive(mode: Mode) -> &'static [u8] {
    match mode {
        Mode::Silent | Mode::Stranger => b"",
        Mode::Slowloris => b"X",
        Mode::Dns => DNS_SOA_QUERY,
        Mode::Healthz => HEALTHZ,
    }
}
