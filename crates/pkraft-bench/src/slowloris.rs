//! Slowloris: CONNECTIONS connections spread over SOURCES loopback addresses, each sending the
//! start of a request head and then one more header byte every `trickle`, never finishing it.
//! Reports how many connections opened, how many the server closed, and when; the server's
//! memory while they are open is measured by the calling script.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// What happened to the connections.
#[derive(Debug, Serialize)]
pub struct Report {
    pub op: &'static str,
    pub connections: usize,
    /// Connections the server accepted (TCP connect succeeded).
    pub opened: usize,
    /// Connections the server closed before `seconds` ran out.
    pub closed_by_server: usize,
    /// Median and largest time from connect to the server's close, in ms.
    pub close_p50_ms: f64,
    pub close_max_ms: f64,
    pub seconds: f64,
}

/// Source address number `index` of `sources`: 127.0.10.1, 127.0.10.2, ...
fn source(index: usize) -> IpAddr {
    let n = u8::try_from(index % 250 + 1).unwrap_or(1);
    IpAddr::from([127, 0, 10, n])
}

pub async fn run(
    target: SocketAddr,
    connections: usize,
    sources: usize,
    trickle: Duration,
    duration: Duration,
) -> anyhow::Result<Report> {
    anyhow::ensure!(sources > 0, "--sources must be at least 1");
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..connections {
        let from = source(index % sources);
        tasks.spawn(async move {
            let socket = TcpSocket::new_v4().ok()?;
            socket.bind(SocketAddr::new(from, 0)).ok()?;
            let mut stream = socket.connect(target).await.ok()?;
            let opened = Instant::now();
            if stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: slowloris\r\n")
                .await
                .is_err()
            {
                return Some(Some(opened.elapsed()));
            }
            let mut buf = [0_u8; 256];
            loop {
                if Instant::now() >= deadline {
                    return Some(None);
                }
                // Wait one trickle step for the server to close; then send one more byte.
                // EOF, a reset or an answer (a 408, say): the server ended the request.
                if tokio::time::timeout(trickle, stream.read(&mut buf))
                    .await
                    .is_ok()
                {
                    return Some(Some(opened.elapsed()));
                }
                if stream.write_all(b"X").await.is_err() {
                    return Some(Some(opened.elapsed()));
                }
            }
        });
    }
    let mut opened = 0;
    let mut closes = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            None => {}
            Some(closed) => {
                opened += 1;
                closes.extend(closed);
            }
        }
    }
    closes.sort();
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1_000.0);
    Ok(Report {
        op: "slowloris",
        connections,
        opened,
        closed_by_server: closes.len(),
        close_p50_ms: ms(closes.get(closes.len() / 2)),
        close_max_ms: ms(closes.last()),
        seconds: started.elapsed().as_secs_f64(),
    })
}
