//! DNS over TCP (RFC 7766): pkraft's own listener, answering the one way the UDP loops answer
//! (`crate::answering`), byte for byte what hickory-server's TCP listener sends
//! (`tests/udp_answers.rs` compares them), within limits hickory's listener does not have:
//!
//! - connections are admitted by the listener's [`Admission`]: at most `dns.tcp_max_connections`
//!   open (new ones wait in the kernel's backlog), at most `dns.tcp_max_connections_per_client`
//!   from one client, accept errors backed off instead of retried at once;
//! - a connection with no query for `dns.tcp_idle_timeout` and none being answered is closed,
//!   and so is one whose partial query stays incomplete that long (slow senders), or whose
//!   answer cannot be written in that time (a client that stops reading); while the listener is
//!   under pressure the limit is at most `PRESSURE_IDLE_TIMEOUT`;
//! - up to `dns.tcp_pipeline_max` queries of a connection are answered at once (answers may go
//!   out of order, RFC 7766 §6.2.1.1); beyond it the connection is not read, so the kernel's
//!   buffers hold the rest;
//! - after `dns.tcp_max_queries_per_connection` queries the connection is closed once their
//!   answers are sent.
//!
//! Local answers are written as soon as they are built; what goes to hickory's chain (a key only
//! the DHT has, short-lived records, UPDATE, AXFR) is answered in a task of its own.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_server::net::xfer::Protocol;
use pkraft_limits::connections::{Admission, PRESSURE_IDLE_TIMEOUT, Ticket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::answering::{Answered, Answering};
use crate::metrics::{DnsMetrics, Transport, wire_rcode};
use crate::udp::can_answer;

/// A DNS message over TCP is prefixed with its length, two bytes (RFC 1035 §4.2.2).
const LENGTH_PREFIX: usize = 2;
/// Bytes read at a time (a message may take several reads; the buffer never holds more than
/// one message and one read).
const READ_CHUNK: usize = 4 * 1024;

/// The DNS-over-TCP listener's name: the `listener` label of its connection metrics, and the
/// `task` of its accept loop in `pkraft_task_panics_total`.
pub const TCP_LISTENER: &str = "dns_tcp";

/// What every DNS-over-TCP connection shares.
pub(crate) struct TcpFrontend {
    pub(crate) answering: Arc<Answering>,
    pub(crate) metrics: Arc<DnsMetrics>,
    /// `dns.tcp_idle_timeout`.
    pub(crate) idle_timeout: Duration,
    /// `dns.tcp_max_queries_per_connection` (0: no limit).
    pub(crate) max_queries: u32,
    /// `dns.tcp_pipeline_max`.
    pub(crate) pipeline_max: usize,
}

/// Serves `listener` until `stop` changes, then lets every connection send the answers it
/// owes and waits for them.
pub(crate) async fn serve(
    listener: TcpListener,
    frontend: Arc<TcpFrontend>,
    admission: Arc<Admission>,
    stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    // A panic while accepting or starting a connection is logged and counted with the
    // listener's name for its task, and the loop goes on: the listener and the connections it
    // started stay (`pkraft_tasks::Rounds`).
    let mut rounds = pkraft_tasks::Rounds::new(admission.name());
    let mut stopped = stop.clone();
    loop {
        let round = rounds.run(async {
            let (stream, peer, ticket) = admission.accept(&listener).await;
            // Reap finished connections so the set holds only open ones.
            while connections.try_join_next().is_some() {}
            // hickory's listener drops connections it could not answer, too.
            if !can_answer(peer) {
                return;
            }
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
            }
            let connection = Connection {
                peer,
                frontend: frontend.clone(),
                admission: admission.clone(),
                pressure: admission.pressure(),
                stop: stop.clone(),
                _ticket: ticket,
            };
            // A panic while serving it ends this connection alone, logged and counted.
            connections.spawn(pkraft_tasks::guard_connection(
                admission.name(),
                connection.run(stream),
            ));
        });
        tokio::select! {
            _ = round => {}
            _ = stopped.changed() => break,
        }
    }
    while connections.join_next().await.is_some() {}
}

/// One DNS-over-TCP connection, holding its slot until it ends.
struct Connection {
    peer: SocketAddr,
    frontend: Arc<TcpFrontend>,
    admission: Arc<Admission>,
    pressure: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
    _ticket: Ticket,
}

/// Why a connection ended, for the debug log.
#[derive(Debug)]
enum Closed {
    /// The client closed its side and every answer was sent.
    Done,
    Idle,
    IdleUnderPressure,
    QueryLimit,
    Stopping,
    Io(io::Error),
    /// An answer could not be written within the idle timeout.
    WriteStalled,
}

impl Connection {
    async fn run(mut self, stream: TcpStream) {
        let peer = self.peer;
        match self.serve(stream).await {
            Closed::Io(error) => tracing::debug!(%peer, %error, "DNS-over-TCP connection failed"),
            closed => tracing::debug!(%peer, reason = ?closed, "DNS-over-TCP connection closed"),
        }
    }

    async fn serve(&mut self, stream: TcpStream) -> Closed {
        let (mut reader, mut writer) = stream.into_split();
        let mut messages = MessageReader::default();
        let mut chain: JoinSet<Option<(Vec<u8>, Instant)>> = JoinSet::new();
        let mut queries: u32 = 0;
        let mut last_query = Instant::now();
        // Why the connection stops reading (it still sends what it owes).
        let mut stopped_reading: Option<Closed> = None;
        let mut out = Vec::new();
        loop {
            if stopped_reading.is_some() && chain.is_empty() {
                return stopped_reading.unwrap_or(Closed::Done);
            }
            let under_pressure = *self.pressure.borrow_and_update();
            let idle = if under_pressure {
                self.frontend.idle_timeout.min(PRESSURE_IDLE_TIMEOUT)
            } else {
                self.frontend.idle_timeout
            };
            let reading = stopped_reading.is_none() && chain.len() < self.frontend.pipeline_max;
            tokio::select! {
                message = messages.next(&mut reader), if reading => {
                    let query = match message {
                        Ok(Some(query)) => query,
                        Ok(None) => {
                            stopped_reading = Some(Closed::Done);
                            continue;
                        }
                        Err(error) => return Closed::Io(error),
                    };
                    queries = queries.saturating_add(1);
                    last_query = Instant::now();
                    let max = self.frontend.max_queries;
                    if max > 0 && queries >= max {
                        stopped_reading = Some(Closed::QueryLimit);
                    }
                    if let Some(request) = self.answer(&query, &mut out) {
                        let frontend = self.frontend.clone();
                        let arrived = last_query;
                        chain.spawn(async move {
                            let answer = frontend.answering.chain(&request).await?;
                            Some((answer, arrived))
                        });
                    } else if !out.is_empty() {
                        let answered = self.send(&mut writer, &out, last_query, idle).await;
                        if let Err(closed) = answered {
                            return closed;
                        }
                    }
                }
                done = chain.join_next(), if !chain.is_empty() => {
                    match done {
                        Some(Ok(Some((answer, arrived)))) => {
                            if let Err(closed) = self.send(&mut writer, &answer, arrived, idle).await {
                                return closed;
                            }
                        }
                        // That query goes unanswered (the client asks again); the rest go on.
                        Some(Err(error)) if error.is_panic() => pkraft_tasks::request_panicked(
                            self.admission.name(),
                            error.into_panic().as_ref(),
                        ),
                        _ => {}
                    }
                }
                _ = tokio::time::sleep_until((last_query + idle).into()),
                    if chain.is_empty() && stopped_reading.is_none() =>
                {
                    if under_pressure && last_query.elapsed() < self.frontend.idle_timeout {
                        self.admission.count_closed_under_pressure();
                        return Closed::IdleUnderPressure;
                    }
                    return Closed::Idle;
                }
                _ = self.pressure.changed() => {}
                _ = self.stop.changed(), if stopped_reading.is_none() => {
                    stopped_reading = Some(Closed::Stopping);
                }
            }
        }
    }

    /// Answers `query` into `out` (left empty when nothing is sent), or returns the request for
    /// the chain.
    fn answer(
        &self,
        query: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<Box<hickory_server::server::Request>> {
        let answering = &self.frontend.answering;
        let replica = answering.replica();
        match answering.answer(query, self.peer, Protocol::Tcp, replica, out) {
            // FORMERR, or nothing when not even the header parses.
            Answered::Local(_) | Answered::Refused | Answered::Malformed(_) => None,
            Answered::NotAQuery => {
                out.clear();
                None
            }
            Answered::Chain(request) => Some(request),
        }
    }

    /// Writes one answer with its length prefix within `timeout`, and counts it.
    async fn send(
        &self,
        writer: &mut OwnedWriteHalf,
        answer: &[u8],
        arrived: Instant,
        timeout: Duration,
    ) -> Result<(), Closed> {
        let Ok(length) = u16::try_from(answer.len()) else {
            // hickory's encoder keeps TCP answers within 65,535 bytes; an answer that is not has
            // no TCP framing, so it is not sent.
            tracing::warn!(
                len = answer.len(),
                "a DNS answer too large for TCP was not sent"
            );
            return Ok(());
        };
        let mut framed = Vec::with_capacity(LENGTH_PREFIX + answer.len());
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(answer);
        match tokio::time::timeout(timeout, writer.write_all(&framed)).await {
            Ok(Ok(())) => {
                self.frontend.metrics.answered(
                    Transport::Tcp,
                    wire_rcode(answer),
                    arrived.elapsed(),
                );
                Ok(())
            }
            Ok(Err(error)) => Err(Closed::Io(error)),
            Err(_) => Err(Closed::WriteStalled),
        }
    }
}

/// Splits a TCP stream into DNS messages. Cancel-safe: what was read stays in the buffer.
#[derive(Default)]
struct MessageReader {
    buffer: Vec<u8>,
}

impl MessageReader {
    /// The next whole message; `None` once the client closed its side (a partial message then
    /// is dropped).
    async fn next(&mut self, reader: &mut OwnedReadHalf) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(message) = self.take() {
                return Ok(Some(message));
            }
            // At most one message and one chunk: a message is at most 2 + 65,535 bytes, and
            // nothing is read while a whole one waits in the buffer.
            if self.buffer.capacity() - self.buffer.len() < READ_CHUNK {
                self.buffer.reserve(READ_CHUNK);
            }
            if reader.read_buf(&mut self.buffer).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// A whole message from the front of the buffer, if there is one.
    fn take(&mut self) -> Option<Vec<u8>> {
        let [high, low] = *self.buffer.first_chunk::<LENGTH_PREFIX>()?;
        let end = LENGTH_PREFIX + usize::from(u16::from_be_bytes([high, low]));
        let message = self.buffer.get(LENGTH_PREFIX..end)?.to_vec();
        self.buffer.drain(..end);
        Some(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_split_at_their_length_prefix() {
        let mut reader = MessageReader::default();
        assert!(reader.take().is_none(), "empty");
        reader.buffer.extend_from_slice(&[0, 3, b'a', b'b']);
        assert!(reader.take().is_none(), "incomplete");
        reader.buffer.extend_from_slice(&[b'c', 0, 0, 0, 1]);
        assert_eq!(reader.take().as_deref(), Some(&b"abc"[..]));
        assert_eq!(reader.take().as_deref(), Some(&b""[..]), "an empty message");
        assert!(reader.take().is_none(), "one byte of the next");
        assert_eq!(reader.buffer, [0, 1]);
    }
}
