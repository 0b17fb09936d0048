//! The UDP listener: a loop per socket, each on a thread of its own with a blocking socket (why:
//! module docs of [`crate::udp_io`]), that reads datagrams in batches, applies response rate
//! limiting ([`Rrl`]), answers repeated queries from the [`AnswerCache`] and the rest the one
//! way of [`crate::answering`] (the local answers of `crate::local` inline), and sends the
//! batch's answers together. Only what the local answers leave to hickory's handler chain gets
//! a task of its own on the runtime, the way hickory's UDP listener handles every query.
//!
//! A hit costs a hash lookup, a version check of the key the answer read, and a copy: no parse.
//! A miss costs a read of the query in place (`crate::plain_query`; hickory's parse for other
//! shapes) and one point read of the key's compiled answers, then a copy of their bytes (or,
//! for what they do not answer, a zone lookup and an encode), with no task, no channel and no
//! boxed future. Every answer is byte-identical to what hickory's own
//! listener sends (tested in `tests/udp_answers.rs`): a miss is written by hickory's encoder from
//! the compiled bytes or the zone's records as its `Catalog` writes them, a hit is the bytes of
//! an earlier miss with the query's ID.
//!
//! A query that must go to the chain never holds up its batch: its task is spawned and the loop
//! goes on with the next datagram. Its answer is sent only if the socket's send buffer has room
//! at once ([`udp_io::send_now`]): a runtime worker never waits on the loop's blocking socket.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, watch};

use crate::answer_cache::AnswerCache;
use crate::answering::{Answered, Answering};
use crate::freshness::Replica;
use crate::local::Written;
use crate::metrics::{DnsMetrics, Transport, UdpAnswerStats, UdpReport, wire_rcode};
use crate::rrl::{Rrl, SlipDice, Verdict};
use crate::settings::Settings;
use crate::udp_io::{self, Outgoing, Received};
use pkraft_limits::Scope;

/// One socket loop's counters, on a cache line of its own so that loops on different cores do
/// not contend for it.
#[derive(Default)]
#[repr(align(64))]
struct LoopCounters {
    hits: AtomicU64,
    misses: AtomicU64,
    chain: AtomicU64,
    compiled: AtomicU64,
    rrl_slipped: AtomicU64,
    rrl_dropped: AtomicU64,
    rrl_global_limited: AtomicU64,
    overload_dropped: AtomicU64,
    /// Bytes of the answers sent.
    answer_bytes: AtomicU64,
}

/// What every socket's loop shares.
pub(crate) struct UdpFrontend {
    answering: Arc<Answering>,
    /// `None` when `dns.answer_cache_mib` is 0.
    answers: Option<AnswerCache>,
    rrl: Option<Rrl>,
    /// Most queries being answered by the chain at once per socket loop.
    pending_max: usize,
    /// Datagrams per receive and send call (`dns.udp_batch`).
    batch: usize,
    /// The largest answer (`dns.udp_payload_max`).
    payload_max: u16,
    counters: Box<[LoopCounters]>,
    /// Bytes of the chain's answers sent (their tasks have no loop's counters).
    chain_answer_bytes: AtomicU64,
    /// Chain answers dropped for the byte budget.
    chain_over_budget: AtomicU64,
    metrics: Arc<DnsMetrics>,
}

impl UdpFrontend {
    /// The frontend for `loops` socket loops.
    pub(crate) fn new(
        answering: Arc<Answering>,
        answers: Option<AnswerCache>,
        rrl: Option<Rrl>,
        settings: &Settings,
        loops: usize,
        metrics: Arc<DnsMetrics>,
    ) -> Self {
        UdpFrontend {
            answering,
            answers,
            rrl,
            pending_max: settings.udp_pending_max,
            batch: settings.udp_batch,
            payload_max: settings.udp_payload_max,
            counters: (0..loops).map(|_| LoopCounters::default()).collect(),
            chain_answer_bytes: AtomicU64::new(0),
            chain_over_budget: AtomicU64::new(0),
            metrics,
        }
    }

    /// Answers one datagram: queues its answer in `state.outgoing` (which has room), or spawns
    /// the chain's task, or drops it.
    fn handle(self: &Arc<Self>, query: &[u8], src: SocketAddr, state: &mut LoopState<'_>) {
        if !can_answer(src) {
            tracing::debug!(%src, "not answering a datagram from this address");
            return;
        }
        let counters = state.counters;
        let Some(out) = state.outgoing.next_buffer() else {
            return;
        };
        if let Some(rrl) = &self.rrl {
            let verdict = rrl.verdict(src.ip(), &mut state.dice);
            if verdict != Verdict::Answer {
                if refuse(
                    rrl,
                    src.ip(),
                    &self.answering,
                    verdict,
                    query,
                    out,
                    counters,
                ) {
                    state.outgoing.queue(src);
                }
                return;
            }
        }
        // Asked once: a node that may not answer sends SERVFAIL, never a cached answer.
        let replica = self.answering.replica();
        if replica == Replica::Answerable
            && let Some(answers) = &self.answers
            && answers.answer(query, out)
        {
            counters.hits.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.misses.fetch_add(1, Ordering::Relaxed);
            match self.answer(query, src, replica, out) {
                Answered::Local(Written { compiled: true, .. }) => {
                    counters.compiled.fetch_add(1, Ordering::Relaxed);
                }
                Answered::Local(_) | Answered::Refused => {}
                // FORMERR, or nothing when not even the header parses.
                Answered::Malformed(_) if !out.is_empty() => {}
                Answered::Malformed(_) | Answered::NotAQuery => return,
                Answered::Chain(request) => {
                    self.spawn_chain(request, state);
                    return;
                }
            }
        }
        // The answer count passed; the answer's bytes must fit the byte budget too.
        if let Some(rrl) = &self.rrl
            && !rrl.take_bytes(src.ip(), out.len())
        {
            let verdict = rrl.refusal(Scope::Global, &mut state.dice);
            if !refuse(
                rrl,
                src.ip(),
                &self.answering,
                verdict,
                query,
                out,
                counters,
            ) {
                return;
            }
        }
        state.outgoing.queue(src);
    }

    /// The answer to `query`, written to `out`, and kept in the answer cache when it is a local
    /// answer.
    fn answer(
        &self,
        query: &[u8],
        src: SocketAddr,
        replica: Replica,
        out: &mut Vec<u8>,
    ) -> Answered {
        // Before the answer is built: a change of the short-lived records after it retires the
        // entry.
        let short_lived = self.answers.as_ref().map(AnswerCache::short_lived_stamp);
        let answered = self
            .answering
            .answer(query, src, Protocol::Udp, replica, out);
        if let (Answered::Local(Written { read, .. }), Some(answers), Some(short_lived)) =
            (&answered, &self.answers, short_lived)
        {
            answers.insert(query, out, *read, short_lived);
        }
        answered
    }

    /// Hands `request` to hickory's chain in a task of its own on the runtime, unless
    /// `dns.udp_pending_max` are already being answered for this socket.
    fn spawn_chain(self: &Arc<Self>, request: Box<Request>, state: &mut LoopState<'_>) {
        let Ok(permit) = state.chain_permits.clone().try_acquire_owned() else {
            state
                .counters
                .overload_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        state.counters.chain.fetch_add(1, Ordering::Relaxed);
        let (socket, frontend, arrived) = (state.socket.clone(), self.clone(), state.arrived);
        state.runtime.spawn(async move {
            // Held until the answer is sent: the loop's count of queries with the chain.
            let _permit = permit;
            let src = request.src();
            // The local answers already declined it: straight to the chain.
            if let Some(answer) = frontend.answering.chain(&request).await {
                // hickory keeps within the client's EDNS size only; past `udp_payload_max` the
                // client gets the empty truncated answer and asks again over TCP.
                let answer = if answer.len() > usize::from(frontend.payload_max) {
                    let Some(truncated) = frontend.answering.truncated(request.as_slice()) else {
                        return;
                    };
                    truncated
                } else {
                    answer
                };
                // Over the byte budget a chain answer is dropped: it has no dice to slip with,
                // and such answers are rare (module docs of `crate::local`).
                if frontend
                    .rrl
                    .as_ref()
                    .is_some_and(|rrl| !rrl.take_bytes(src.ip(), answer.len()))
                {
                    frontend.chain_over_budget.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                frontend
                    .chain_answer_bytes
                    .fetch_add(answer.len() as u64, Ordering::Relaxed);
                if let Err(error) = udp_io::send_now(&socket, &answer, src) {
                    tracing::debug!(%error, %src, "UDP send failed");
                }
                frontend
                    .metrics
                    .answered(Transport::Udp, wire_rcode(&answer), arrived.elapsed());
            }
        });
    }

    /// Sends the queued answers, then counts them.
    fn flush(&self, state: &mut LoopState<'_>) {
        state.outgoing.flush(&state.socket);
        let took = state.arrived.elapsed();
        let mut bytes = 0;
        for (answer, _) in state.outgoing.queued() {
            bytes += answer.len() as u64;
            self.metrics
                .answered(Transport::Udp, wire_rcode(answer), took);
        }
        state
            .counters
            .answer_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        state.outgoing.clear();
    }
}

/// Writes what an answer refused with `verdict` becomes into `out`, and counts it: the empty
/// truncated answer when it is a slip and the byte budget has room for it; otherwise nothing.
/// Whether there is something to send.
fn refuse(
    rrl: &Rrl,
    client: IpAddr,
    answering: &Answering,
    verdict: Verdict,
    query: &[u8],
    out: &mut Vec<u8>,
    counters: &LoopCounters,
) -> bool {
    let (Verdict::Slip(scope) | Verdict::Drop(scope)) = verdict else {
        return true;
    };
    if scope == Scope::Global {
        counters.rrl_global_limited.fetch_add(1, Ordering::Relaxed);
    }
    out.clear();
    if matches!(verdict, Verdict::Slip(_))
        // Not a query hickory can parse: nothing to truncate, so it is dropped.
        && let Some(truncated) = answering.truncated(query)
        && rrl.take_bytes(client, truncated.len())
    {
        out.extend_from_slice(&truncated);
        counters.rrl_slipped.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    counters.rrl_dropped.fetch_add(1, Ordering::Relaxed);
    false
}

/// What one socket's loop keeps from datagram to datagram.
struct LoopState<'c> {
    socket: Arc<UdpSocket>,
    counters: &'c LoopCounters,
    /// Which of RRL's refusals on this socket are slipped.
    dice: SlipDice,
    outgoing: Outgoing,
    /// Where the chain's tasks run.
    runtime: Handle,
    /// One per query that may be with the chain at once (`dns.udp_pending_max`); a task holds
    /// one until it has answered.
    chain_permits: Arc<Semaphore>,
    /// When the current batch was read.
    arrived: Instant,
}

impl UdpReport for UdpFrontend {
    fn answer_cache_size(&self) -> Option<(u64, u64)> {
        self.answers.as_ref().map(AnswerCache::size)
    }

    fn rrl_tracked_clients(&self) -> u64 {
        self.rrl.as_ref().map_or(0, Rrl::tracked_clients)
    }

    fn stats(&self) -> UdpAnswerStats {
        let chain = UdpAnswerStats {
            answer_bytes: self.chain_answer_bytes.load(Ordering::Relaxed),
            rrl_dropped: self.chain_over_budget.load(Ordering::Relaxed),
            rrl_global_limited: self.chain_over_budget.load(Ordering::Relaxed),
            ..UdpAnswerStats::default()
        };
        self.counters.iter().fold(chain, |sum, counters| {
            let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
            UdpAnswerStats {
                hits: sum.hits + load(&counters.hits),
                misses: sum.misses + load(&counters.misses),
                chain: sum.chain + load(&counters.chain),
                compiled: sum.compiled + load(&counters.compiled),
                rrl_slipped: sum.rrl_slipped + load(&counters.rrl_slipped),
                rrl_dropped: sum.rrl_dropped + load(&counters.rrl_dropped),
                rrl_global_limited: sum.rrl_global_limited + load(&counters.rrl_global_limited),
                overload_dropped: sum.overload_dropped + load(&counters.overload_dropped),
                answer_bytes: sum.answer_bytes + load(&counters.answer_bytes),
            }
        })
    }
}

/// Starts loop number `index` on a thread of its own, serving `socket` (made blocking, with the
/// timeouts of [`udp_io::configure`]) until `stop` changes. The returned task ends when the loop
/// has stopped and the queries it gave the chain are answered.
pub(crate) fn spawn(
    socket: UdpSocket,
    frontend: Arc<UdpFrontend>,
    index: usize,
    stop: watch::Receiver<bool>,
) -> io::Result<impl Future<Output = ()> + Send + 'static> {
    udp_io::configure(&socket)?;
    let pending_max = frontend.pending_max;
    let chain_permits = Arc::new(Semaphore::new(pending_max));
    let (stopped, loop_stopped) = tokio::sync::oneshot::channel::<()>();
    let runtime = Handle::current();
    let permits = chain_permits.clone();
    let socket = Arc::new(socket);
    std::thread::Builder::new()
        .name(format!("pkraft-dns-udp-{index}"))
        .spawn(move || {
            // Supervised: a panic would otherwise leave the socket bound, taking its share of
            // the kernel's SO_REUSEPORT traffic with no one answering it.
            pkraft_tasks::run_thread(UDP_TASK, || {
                serve(
                    &socket,
                    &frontend,
                    index,
                    &stop,
                    runtime.clone(),
                    permits.clone(),
                );
            });
            let _ = stopped.send(());
        })?;
    Ok(async move {
        // An error: the thread ended without saying so (it panicked); nothing to wait for.
        let _ = loop_stopped.await;
        let all = u32::try_from(pending_max).unwrap_or(u32::MAX);
        let _ = chain_permits.acquire_many(all).await;
    })
}

/// The name of the UDP loops in `pkraft_task_panics_total{task}`.
pub const UDP_TASK: &str = "dns-udp";

/// The loop of [`spawn`]'s thread.
fn serve(
    socket: &Arc<UdpSocket>,
    frontend: &Arc<UdpFrontend>,
    index: usize,
    stop: &watch::Receiver<bool>,
    runtime: Handle,
    chain_permits: Arc<Semaphore>,
) {
    let Some(counters) = frontend.counters.get(index) else {
        tracing::error!(index, "no counters for this UDP loop; it does not serve");
        return;
    };
    let socket = socket.clone();
    let mut received = Received::new(frontend.batch);
    let mut state = LoopState {
        socket: socket.clone(),
        counters,
        dice: SlipDice::new(index),
        outgoing: Outgoing::new(frontend.batch),
        runtime,
        chain_permits,
        arrived: Instant::now(),
    };
    // The stop is looked for after every receive call, which returns at least every
    // `udp_io::STOP_POLL` (a timeout when no datagram came).
    while !stop.has_changed().unwrap_or(true) {
        let count = match received.receive(&socket) {
            Ok(count) => count,
            Err(error) if udp_io::is_timeout(&error) => continue,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) if is_unrecoverable(&error) => {
                tracing::error!(%error, "UDP socket failed; it is no longer served");
                break;
            }
            Err(error) => {
                tracing::debug!(%error, "UDP receive error");
                continue;
            }
        };
        state.arrived = Instant::now();
        pkraft_tasks::injected_panic(UDP_TASK);
        for datagram in 0..count {
            let Some((query, src)) = received.get(datagram) else {
                continue;
            };
            frontend.handle(query, src, &mut state);
            if state.outgoing.is_full() {
                frontend.flush(&mut state);
            }
        }
        frontend.flush(&mut state);
    }
}

/// Whether an answer can be sent to `src`: not to port 0, an unspecified or a broadcast address
/// (hickory's listener drops those datagrams too).
pub(crate) fn can_answer(src: SocketAddr) -> bool {
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
