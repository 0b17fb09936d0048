//! A UDP query flood from one address: sends `_iroh.<z32>.<origin> TXT` queries as fast as the
//! socket takes them for `duration`, without waiting for answers, and counts what comes back
//! (full answers, and empty truncated ones: response rate limiting's slips).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use serde::Serialize;
use tokio::net::UdpSocket;

/// How long to keep counting answers after the last query.
const DRAIN: Duration = Duration::from_millis(500);

#[derive(Debug, Serialize)]
pub struct Report {
    pub op: &'static str,
    pub seconds: f64,
    pub sent: u64,
    pub sent_per_second: f64,
    /// Answers with records.
    pub answered: u64,
    pub answered_per_second: f64,
    /// Empty answers with TC set.
    pub truncated: u64,
}

pub async fn run(
    server: SocketAddr,
    names: Vec<Name>,
    duration: Duration,
    source: IpAddr,
) -> anyhow::Result<Report> {
    anyhow::ensure!(!names.is_empty(), "no query names");
    let socket = Arc::new(UdpSocket::bind(SocketAddr::new(source, 0)).await?);
    socket.connect(server).await?;
    let queries: Vec<Vec<u8>> = names
        .iter()
        .map(|name| {
            let mut query = Message::query();
            query.add_query(Query::query(name.clone(), RecordType::TXT));
            query.to_vec()
        })
        .collect::<Result<_, _>>()?;
    let answered = Arc::new(AtomicU64::new(0));
    let truncated = Arc::new(AtomicU64::new(0));
    let receiver = {
        let (socket, answered, truncated) = (socket.clone(), answered.clone(), truncated.clone());
        tokio::spawn(async move {
            let mut buf = [0_u8; 4096];
            while let Ok(Ok(len)) = tokio::time::timeout(DRAIN, socket.recv(&mut buf)).await {
                match Message::from_vec(&buf[..len]) {
                    Ok(answer) if answer.metadata.truncation => {
                        truncated.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {}
                }
            }
        })
    };
    let started = Instant::now();
    let mut sent = 0_u64;
    while started.elapsed() < duration {
        let query = &queries[usize::try_from(sent).unwrap_or(0) % queries.len()];
        if socket.send(query).await.is_ok() {
            sent += 1;
        }
        if sent.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    receiver.await?;
    let answered = answered.load(Ordering::Relaxed);
    Ok(Report {
        op: "udp-flood",
        seconds,
        sent,
        sent_per_second: sent as f64 / seconds,
        answered,
        answered_per_second: answered as f64 / seconds,
        truncated: truncated.load(Ordering::Relaxed),
    })
}
