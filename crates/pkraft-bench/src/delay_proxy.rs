//! A TCP proxy that adds latency, for measuring a cluster whose nodes are far apart on one
//! machine (netem is not available here). Every chunk read from either side is delivered to the
//! other `delay ± jitter` later, in order, so each direction behaves like a link with that
//! one-way latency: a request and its answer together gain twice the delay. Nodes advertise the
//! proxy in front of their peer listener, as in the chaos harness.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Chunks in flight per direction before the reader waits (bounds memory; far above what a
/// peer connection carries within one delay).
const CHUNKS_IN_FLIGHT_MAX: usize = 4096;
const CHUNK_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct Delay {
    pub base: Duration,
    pub jitter: Duration,
}

/// Proxies every connection to `listen` to `upstream` until the process is stopped.
pub async fn run(listen: SocketAddr, upstream: SocketAddr, delay: Delay) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let mut seed = u64::from(listen.port()) << 32 | u64::from(upstream.port());
    loop {
        let (client, _) = listener.accept().await?;
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                pipe(client_read, server_write, delay, seed),
                pipe(server_read, client_write, delay, seed ^ 1),
            );
        });
    }
}

/// One direction: read chunks, deliver each after its delay, never before the one read before.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Delay, seed: u64) {
    let (chunks, mut due) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT_MAX);
    let reader = async move {
        let mut rng = seed;
        loop {
            let mut buf = vec![0u8; CHUNK_BYTES];
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.truncate(n);
            let at = Instant::now() + one_way(delay, &mut rng);
            if chunks.send((at, buf)).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        let mut last = Instant::now();
        while let Some((at, chunk)) = due.recv().await {
            last = last.max(at);
            tokio::time::sleep_until(last).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// `base ± jitter`, uniform (splitmix64).
fn one_way(delay: Delay, state: &mut u64) -> Duration {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let jitter_us = u64::try_from(delay.jitter.as_micros()).unwrap_or(u64::MAX);
    let span = jitter_us.saturating_mul(2).saturating_add(1);
    let offset = Duration::from_micros(z % span);
    (delay.base + offset).saturating_sub(delay.jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_way_delays_stay_within_the_jitter() {
        let delay = Delay {
            base: Duration::from_millis(40),
            jitter: Duration::from_millis(10),
        };
        let mut state = 7;
        let samples: Vec<Duration> = (0..10_000).map(|_| one_way(delay, &mut state)).collect();
        assert!(samples.iter().all(|d| (30..=50).contains(&d.as_millis())));
        let mean = samples.iter().sum::<Duration>() / 10_000;
        assert!((39..=41).contains(&mean.as_millis()), "{mean:?}");
    }
}
