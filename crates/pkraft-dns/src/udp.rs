//! The UDP listener when `dns.answer_cache_mib` or `[dns.rrl]` is set: a receive loop per socket
//! that applies response rate limiting ([`Rrl`]), answers repeated queries from the
//! [`AnswerCache`] on the spot, and hands every other query to hickory's handler chain in a task
//! of its own, the way hickory's UDP listener does with all of them.
//!
//! A hit costs a hash lookup, a version check per key the answer read, and a copy: no parse, no
//! task, no channel. Measured against hickory's listener, that is what stood between pkraft and
//! NSD (docs/BENCHMARKS.md). A miss gets exactly hickory's answer ([`answer_as_hickory`]), and
//! a hit the bytes of an earlier miss with the query's ID, so every answer is byte-identical to
//! hickory's (tested in `tests/udp_answers.rs`).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hickory_server::net::xfer::Protocol;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::answer_cache::{AnswerCache, record_reads};
use crate::answerer::{SharedHandler, answer_as_hickory};
use crate::metrics::{DnsMetrics, Transport, wire_rcode};
use crate::rrl::{Rrl, SlipDice, Verdict, truncated_answer};

/// Datagrams are read into a buffer this large, as hickory's UDP listener does
/// (`hickory_net::udp::MAX_RECEIVE_BUFFER_SIZE`): a longer one is cut to it in both.
const RECEIVE_BUFFER_LEN: usize = 4_096;

/// How UDP queries were answered since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpAnswerStats {
    /// From the answer cache.
    pub hits: u64,
    /// By hickory's handler chain (including queries that got no answer).
    pub misses: u64,
    /// Over the rate limit, answered with an empty truncated answer (RRL slip).
    pub rrl_slipped: u64,
    /// Over the rate limit, not answered.
    pub rrl_dropped: u64,
    /// Cache misses dropped because `dns.udp_pending_max` were already being answered.
    pub overload_dropped: u64,
}

/// One socket loop's counters, on a cache line of its own so that loops on different cores do
/// not contend for it.
#[derive(Default)]
#[repr(align(64))]
struct LoopCounters {
    hits: AtomicU64,
    misses: AtomicU64,
    rrl_slipped: AtomicU64,
    rrl_dropped: AtomicU64,
    overload_dropped: AtomicU64,
}

/// What every socket's loop shares.
pub(crate) struct UdpFrontend {
    handler: SharedHandler,
    /// `None` when `dns.answer_cache_mib` is 0 (the loop runs for RRL alone).
    answers: Option<AnswerCache>,
    rrl: Option<Rrl>,
    /// Most cache misses being answered at once per socket loop.
    pending_max: usize,
    counters: Box<[LoopCounters]>,
    metrics: Arc<DnsMetrics>,
}

impl UdpFrontend {
    /// The frontend for `loops` socket loops.
    pub(crate) fn new(
        handler: SharedHandler,
        answers: Option<AnswerCache>,
        rrl: Option<Rrl>,
        pending_max: usize,
        loops: usize,
        metrics: Arc<DnsMetrics>,
    ) -> Self {
        UdpFrontend {
            handler,
            answers,
            rrl,
            pending_max,
            counters: (0..loops).map(|_| LoopCounters::default()).collect(),
            metrics,
        }
    }

    /// The answer cache's entries and estimated bytes.
    pub(crate) fn answer_cache_size(&self) -> Option<(u64, u64)> {
        self.answers.as_ref().map(AnswerCache::size)
    }

    /// Client networks with RRL state.
    pub(crate) fn rrl_tracked_clients(&self) -> u64 {
        self.rrl.as_ref().map_or(0, Rrl::tracked_clients)
    }

    pub(crate) fn stats(&self) -> UdpAnswerStats {
        self.counters
            .iter()
            .fold(UdpAnswerStats::default(), |sum, counters| UdpAnswerStats {
                hits: sum.hits + counters.hits.load(Ordering::Relaxed),
                misses: sum.misses + counters.misses.load(Ordering::Relaxed),
                rrl_slipped: sum.rrl_slipped + counters.rrl_slipped.load(Ordering::Relaxed),
                rrl_dropped: sum.rrl_dropped + counters.rrl_dropped.load(Ordering::Relaxed),
                overload_dropped: sum.overload_dropped
                    + counters.overload_dropped.load(Ordering::Relaxed),
            })
    }

    /// The cached answer to `query`, written to `answer`; false if it must go to hickory.
    fn answer_from_cache(&self, query: &[u8], answer: &mut Vec<u8>) -> bool {
        // A node that is too stale answers SERVFAIL, which hickory's chain says.
        let Some(answers) = &self.answers else {
            return false;
        };
        !self.handler.too_stale() && answers.answer(query, answer)
    }

    /// hickory's answer to `query`, kept for the next query with the same bytes after the ID.
    async fn answer_miss(&self, query: Vec<u8>, src: SocketAddr) -> Option<Vec<u8>> {
        let Some(answers) = &self.answers else {
            return answer_as_hickory(&self.handler, query, src, Protocol::Udp).await;
        };
        let key = query.clone();
        let (answer, reads) =
            record_reads(answer_as_hickory(&self.handler, query, src, Protocol::Udp)).await;
        let answer = answer?;
        answers.insert(&key, &answer, reads);
        Some(answer)
    }
}

/// Serves `socket` as loop number `index` until `stop` changes, then waits for the queries still
/// being answered.
pub(crate) async fn serve(
    socket: Arc<UdpSocket>,
    frontend: Arc<UdpFrontend>,
    index: usize,
    mut stop: watch::Receiver<bool>,
) {
    let Some(counters) = frontend.counters.get(index) else {
        tracing::error!(index, "no counters for this UDP loop; it does not serve");
        return;
    };
    let mut query = vec![0; RECEIVE_BUFFER_LEN];
    let mut answer = Vec::with_capacity(512);
    let mut misses = JoinSet::new();
    // Which of RRL's refusals on this socket are slipped.
    let mut dice = SlipDice::new(index);
    loop {
        // Under load the socket always has a datagram: read until it has none, and only then
        // wait (for readiness or the stop), so that a busy loop costs no wake-ups.
        let (len, src) = match socket.try_recv_from(&mut query) {
            Ok(received) => received,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::select! {
                    ready = socket.readable() => match ready {
                        Ok(()) => continue,
                        Err(error) => {
                            tracing::error!(%error, "UDP socket failed; it is no longer served");
                            break;
                        }
                    },
                    _ = stop.changed() => break,
                }
            }
            Err(error) if is_unrecoverable(&error) => {
                tracing::error!(%error, "UDP socket failed; it is no longer served");
                break;
            }
            Err(error) => {
                tracing::debug!(%error, "UDP receive error");
                continue;
            }
        };
        if stop.has_changed().unwrap_or(true) {
            break;
        }
        // A loop that never waits must still let the worker's other tasks run.
        tokio::task::consume_budget().await;
        if !can_answer(src) {
            tracing::debug!(%src, "not answering a datagram from this address");
            continue;
        }
        let received = Instant::now();
        let query = &query[..len];
        if let Some(rrl) = &frontend.rrl {
            match rrl.verdict(src.ip(), &mut dice) {
                Verdict::Answer => {}
                Verdict::Slip => {
                    // Not a query hickory can parse: nothing to truncate, so it is dropped.
                    match truncated_answer(query) {
                        Some(truncated) => {
                            counters.rrl_slipped.fetch_add(1, Ordering::Relaxed);
                            send_answer(&socket, &frontend, &truncated, src, received).await;
                        }
                        None => {
                            counters.rrl_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    continue;
                }
                Verdict::Drop => {
                    counters.rrl_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        if frontend.answer_from_cache(query, &mut answer) {
            counters.hits.fetch_add(1, Ordering::Relaxed);
            send_answer(&socket, &frontend, &answer, src, received).await;
            continue;
        }
        counters.misses.fetch_add(1, Ordering::Relaxed);
        // Reap finished misses, so the set holds only those still being answered.
        while misses.try_join_next().is_some() {}
        if misses.len() >= frontend.pending_max {
            counters.overload_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let (socket, frontend, query) = (socket.clone(), frontend.clone(), query.to_vec());
        misses.spawn(async move {
            if let Some(answer) = frontend.answer_miss(query, src).await {
                send_answer(&socket, &frontend, &answer, src, received).await;
            }
        });
    }
    while misses.join_next().await.is_some() {}
}

/// Sends `answer` to `src` and counts it, timed from when its query was `received`.
async fn send_answer(
    socket: &UdpSocket,
    frontend: &UdpFrontend,
    answer: &[u8],
    src: SocketAddr,
    received: Instant,
) {
    if let Err(error) = socket.send_to(answer, src).await {
        tracing::debug!(%error, %src, "UDP send failed");
    }
    frontend
        .metrics
        .answered(Transport::Udp, wire_rcode(answer), received.elapsed());
}

/// Whether an answer can be sent to `src`: not to port 0, an unspecified or a broadcast address
/// (hickory's listener drops those datagrams too).
fn can_answer(src: SocketAddr) -> bool {
    src.port() != 0
        && !src.ip().is_unspecified()
        && !matches!(src.ip(), IpAddr::V4(ip) if ip.is_broadcast())
}

/// Receive errors after which the socket cannot be used (as hickory's listener judges them).
fn is_unrecoverable(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::NotConnected | io::ErrorKind::ConnectionAborted
    )
}
