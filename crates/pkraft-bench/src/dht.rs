//! The DHT-fallback benchmark's two halves:
//!
//! - `dht-testnet`: a local Mainline DHT (`mainline::Testnet`, every node on 127.0.0.1) with
//!   some packets of a data set put to it only; it writes its bootstrap list to a file and runs
//!   until its time is up or it is signalled. Nothing leaves loopback.
//! - `dht-resolve`: asks a DNS server for `_iroh.<key>.<origin>` TXT of a range of keys, one
//!   query at a time (each key once, so every query is the server's first for that key), and
//!   reports the answer time percentiles and what the answers were.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use mainline::{Dht, MutableItem, Testnet};
use serde::Serialize;
use tokio::net::UdpSocket;

use crate::dataset::DataSet;
use crate::stats::{millis, percentile};

/// Puts under way at once while the testnet is filled.
const PUTS_AT_ONCE: usize = 32;

#[derive(Debug, Serialize)]
pub struct TestnetReport {
    op: &'static str,
    nodes: usize,
    bootstrap: Vec<String>,
    put: usize,
    put_failed: usize,
    put_p50_ms: f64,
}

/// Starts a testnet of `nodes`, puts keys `first_key..first_key + count` (version `version`)
/// to it, writes the bootstrap list (one `ip:port` a line) to `bootstrap_out`, prints the
/// report, then keeps the testnet up for `seconds` or until SIGTERM/SIGINT.
pub async fn testnet(
    nodes: usize,
    data: &DataSet,
    version: usize,
    keys: std::ops::Range<usize>,
    bootstrap_out: &Path,
    seconds: u64,
) -> anyhow::Result<()> {
    let testnet = Testnet::builder(nodes)
        .bind_address(Ipv4Addr::LOCALHOST)
        .build()
        .context("testnet")?;
    let client = Dht::builder()
        .bootstrap(&testnet.bootstrap)
        .bind_address(Ipv4Addr::LOCALHOST)
        .build()
        .context("DHT client")?
        .as_async();
    // Puts before the client has a routing table fail with "no closest nodes".
    anyhow::ensure!(
        client.bootstrapped().await,
        "the DHT client did not bootstrap"
    );
    // 32 puts at once: each waits out its slowest DHT node, so one at a time takes minutes.
    let mut put = 0;
    let mut times = Vec::new();
    let mut failed = Vec::new();
    let mut running = tokio::task::JoinSet::new();
    let mut record = |done: (bool, Duration, MutableItem)| {
        let (ok, took, item) = done;
        times.push(took);
        if ok {
            put += 1;
        } else {
            failed.push(item);
        }
    };
    for index in keys {
        let key = data.keys.get(index).context("key out of range")?;
        let payload = &key
            .versions
            .get(version)
            .context("no such version")?
            .payload;
        let item = to_item(&key.z32, payload)?;
        if running.len() >= PUTS_AT_ONCE
            && let Some(done) = running.join_next().await
        {
            record(done?);
        }
        let client = client.clone();
        running.spawn(async move {
            let started = Instant::now();
            let ok = client.put_mutable(item.clone(), None).await.is_ok();
            (ok, started.elapsed(), item)
        });
    }
    while let Some(done) = running.join_next().await {
        record(done?);
    }
    // Under load a put may see no answer within the request timeout: those are put again one
    // at a time, so that every key the benchmark counts as "on the DHT" is.
    let mut put_failed = 0;
    for item in failed {
        let mut ok = false;
        for _ in 0..3 {
            if client.put_mutable(item.clone(), None).await.is_ok() {
                ok = true;
                break;
            }
        }
        if ok {
            put += 1;
        } else {
            put_failed += 1;
        }
    }
    times.sort_unstable();
    let lines: String = testnet.bootstrap.iter().map(|b| format!("{b}\n")).collect();
    std::fs::write(bootstrap_out, lines)
        .with_context(|| format!("write {}", bootstrap_out.display()))?;
    crate::print(&TestnetReport {
        op: "dht-testnet",
        nodes,
        bootstrap: testnet.bootstrap.clone(),
        put,
        put_failed,
        put_p50_ms: millis(percentile(&times, 50.0)),
    })?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(seconds)) => {}
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(testnet);
    Ok(())
}

/// The BEP 44 item of a relay payload (signature ‖ timestamp ‖ DNS packet) for key `z32`.
fn to_item(z32: &str, payload: &[u8]) -> anyhow::Result<MutableItem> {
    let key = pkarr::PublicKey::try_from(z32).context("key")?;
    anyhow::ensure!(payload.len() > 72, "payload too short");
    let signature: [u8; 64] = payload[..64].try_into()?;
    let seq = i64::from_be_bytes(payload[64..72].try_into()?);
    Ok(MutableItem::new_signed_unchecked(
        key.to_bytes(),
        signature,
        &payload[72..],
        seq,
        None,
    ))
}

#[derive(Debug, Serialize)]
pub struct ResolveReport {
    op: &'static str,
    server: SocketAddr,
    queries: usize,
    /// NOERROR with TXT records.
    answered: usize,
    nxdomain: usize,
    other_rcode: usize,
    /// No answer within the client timeout.
    timeouts: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// Asks `server` for the `_iroh` TXT of keys `keys` of `data`, one query at a time, waiting up
/// to `timeout` for each answer.
pub async fn resolve(
    data: &DataSet,
    keys: std::ops::Range<usize>,
    server: SocketAddr,
    origin: &str,
    timeout: Duration,
) -> anyhow::Result<ResolveReport> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(server).await?;
    let mut report = ResolveReport {
        op: "dht-resolve",
        server,
        queries: 0,
        answered: 0,
        nxdomain: 0,
        other_rcode: 0,
        timeouts: 0,
        p50_ms: 0.0,
        p90_ms: 0.0,
        p99_ms: 0.0,
        max_ms: 0.0,
    };
    let mut times = Vec::new();
    let mut buf = vec![0u8; 4096];
    for index in keys {
        let key = data.keys.get(index).context("key out of range")?;
        let name = Name::from_ascii(format!("_iroh.{}.{origin}.", key.z32))?;
        let mut query = Message::query();
        query.add_query(Query::query(name, RecordType::TXT));
        let started = Instant::now();
        socket.send(&query.to_vec()?).await?;
        report.queries += 1;
        let answer = loop {
            let remaining = timeout.saturating_sub(started.elapsed());
            match tokio::time::timeout(remaining, socket.recv(&mut buf)).await {
                Err(_) => break None,
                Ok(received) => {
                    let len = received?;
                    let Ok(response) = Message::from_vec(&buf[..len]) else {
                        continue;
                    };
                    if response.metadata.id == query.metadata.id {
                        break Some(response);
                    }
                }
            }
        };
        let elapsed = started.elapsed();
        match answer {
            None => report.timeouts += 1,
            Some(response) => {
                times.push(elapsed);
                match response.metadata.response_code {
                    ResponseCode::NoError if !response.answers.is_empty() => report.answered += 1,
                    ResponseCode::NXDomain => report.nxdomain += 1,
                    _ => report.other_rcode += 1,
                }
            }
        }
    }
    times.sort_unstable();
    report.p50_ms = millis(percentile(&times, 50.0));
    report.p90_ms = millis(percentile(&times, 90.0));
    report.p99_ms = millis(percentile(&times, 99.0));
    report.max_ms = millis(times.last().copied().unwrap_or_default());
    Ok(report)
}
