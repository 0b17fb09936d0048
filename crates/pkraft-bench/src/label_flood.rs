//! Requests no two alike for the abuse benchmark: `requests` HTTP/1.1 requests, each on a
//! connection of its own from one of `sources` loopback addresses of `block`, with a made-up
//! method (20 to 40 characters), a made-up path of 1 to 3 segments and a made-up header,
//! `concurrency` at a time. What the server makes of them (its `/metrics` size and memory) is
//! measured by the calling script.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pkraft_testkit::rng::SplitMix64;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// Bound on one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const TOKEN_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Debug, Serialize)]
pub struct Report {
    pub op: &'static str,
    pub requests: usize,
    pub seconds: f64,
    /// Status code of each answer ("none": no answer).
    pub status: BTreeMap<String, u64>,
}

pub struct Spec {
    pub target: SocketAddr,
    pub requests: usize,
    pub concurrency: usize,
    pub sources: usize,
    pub block: u8,
    pub seed: u64,
}

pub async fn run(spec: Spec) -> anyhow::Result<Report> {
    anyhow::ensure!(
        spec.sources > 0 && spec.concurrency > 0,
        "--sources and --concurrency must be at least 1"
    );
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..spec.concurrency {
        let next = next.clone();
        let (target, requests, sources, block) =
            (spec.target, spec.requests, spec.sources, spec.block);
        let mut rng = SplitMix64::new(spec.seed.wrapping_add(worker as u64));
        workers.spawn(async move {
            let mut status = BTreeMap::<String, u64>::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= requests {
                    return status;
                }
                let third = u8::try_from(n % sources / 250).unwrap_or(u8::MAX);
                let fourth = u8::try_from(n % sources % 250 + 2).unwrap_or(u8::MAX);
                let from = IpAddr::V4(Ipv4Addr::new(127, block, third, fourth));
                let code = send(target, from, &request(&mut rng)).await;
                *status
                    .entry(code.unwrap_or_else(|| "none".into()))
                    .or_insert(0) += 1;
            }
        });
    }
    let mut status = BTreeMap::new();
    while let Some(joined) = workers.join_next().await {
        for (code, count) in joined? {
            *status.entry(code).or_insert(0) += count;
        }
    }
    Ok(Report {
        op: "label-flood",
        requests: spec.requests,
        seconds: started.elapsed().as_secs_f64(),
        status,
    })
}

/// One made-up request.
fn request(rng: &mut SplitMix64) -> String {
    let method_len = 20 + rng.below(21) as usize;
    let method = token(rng, method_len);
    let mut path = String::new();
    for _ in 0..1 + rng.below(3) {
        let len = 1 + rng.below(60) as usize;
        path.push('/');
        path.push_str(&token(rng, len));
    }
    let header = token(rng, 30);
    format!(
        "{method} {path} HTTP/1.1\r\nHost: flood\r\nX-{header}: {header}\r\nConnection: close\r\n\r\n"
    )
}

fn token(rng: &mut SplitMix64, len: usize) -> String {
    (0..len)
        .map(|_| char::from(TOKEN_CHARS[rng.below(TOKEN_CHARS.len() as u64) as usize]))
        .collect()
}

/// Sends `request` from `from` on a new connection; the status code of the answer.
async fn send(target: SocketAddr, from: IpAddr, request: &str) -> Option<String> {
    let exchange = async {
        let socket = TcpSocket::new_v4().ok()?;
        socket.bind(SocketAddr::new(from, 0)).ok()?;
        let mut stream = socket.connect(target).await.ok()?;
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let text = String::from_utf8_lossy(&answer);
        text.split(' ').nth(1).map(str::to_string)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
}
