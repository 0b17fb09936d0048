//! Batched, blocking UDP I/O for the DNS loops, which run on threads of their own
//! (`crate::udp`): many datagrams per system call where the system has it (`recvmmsg`/`sendmmsg`
//! on Linux, through nix's safe wrappers), one per call elsewhere or with `dns.udp_batch = 1`.
//!
//! Why batches: with the answer cache, a query costs about a microsecond in pkraft and several
//! in the kernel, and most of the kernel's share is the two system calls per query
//! (docs/BENCHMARKS.md). NSD batches the same way; dnsdist measured about 15 % less CPU with it.
//!
//! Why blocking sockets on threads of their own, as NSD's and Knot's UDP workers are, rather
//! than tokio's: a socket tokio registers is watched for writability too, and every datagram
//! sent makes its send buffer writable again, which wakes whichever worker is waiting on tokio's
//! I/O driver, to find nothing to do. With one UDP loop on a busy worker and the other parked on
//! the driver, that is a context switch for most batches sent: 0.3 per query against NSD's 0.1,
//! and about 13 % of a query's CPU (docs/BENCHMARKS.md). A blocking socket is watched by
//! nothing: the loop sleeps in the receive call, and the kernel wakes it when a datagram comes.
//! Its receive timeout ([`STOP_POLL`]) is how often an idle loop looks for the stop.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// How long a loop's receive call waits for a datagram before it returns to look for the
/// stop: the longest a stop waits for an idle loop.
pub(crate) const STOP_POLL: Duration = Duration::from_millis(100);
/// How long a send waits for room in the socket's send buffer before the answers still queued
/// are dropped, as a full queue on the way would drop them.
pub(crate) const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Makes `socket` what the loops expect: blocking, with [`STOP_POLL`] and [`SEND_TIMEOUT`].
pub(crate) fn configure(socket: &UdpSocket) -> io::Result<()> {
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(STOP_POLL))?;
    socket.set_write_timeout(Some(SEND_TIMEOUT))
}

/// Whether a receive or send error is its socket's timeout ([`configure`]).
pub(crate) fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Datagrams are read into buffers this large, as hickory's UDP listener does
/// (`hickory_net::udp::MAX_RECEIVE_BUFFER_SIZE`): a longer one is cut to it in both.
pub(crate) const RECEIVE_BUFFER_LEN: usize = 4_096;
/// The most datagrams `dns.udp_batch` may ask for per call.
pub(crate) const BATCH_MAX: usize = 256;

/// The datagrams of one receive call.
pub(crate) struct Received {
    buffers: Vec<Box<[u8]>>,
    /// Length and source of each datagram received, in order.
    datagrams: Vec<(usize, SocketAddr)>,
}

impl Received {
    /// Room for `batch` datagrams per call (1: the portable path).
    pub(crate) fn new(batch: usize) -> Self {
        let batch = batch.clamp(1, BATCH_MAX);
        Received {
            buffers: (0..batch)
                .map(|_| vec![0; RECEIVE_BUFFER_LEN].into_boxed_slice())
                .collect(),
            datagrams: Vec::with_capacity(batch),
        }
    }

    /// Waits for a datagram (at most [`STOP_POLL`]: then a timeout error, [`is_timeout`]), and
    /// reads it with what else `socket` has, up to the batch.
    pub(crate) fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.datagrams.clear();
        #[cfg(target_os = "linux")]
        if self.buffers.len() > 1 {
            receive_many(socket, &mut self.buffers, &mut self.datagrams)?;
            return Ok(self.datagrams.len());
        }
        // One per call: the portable path, and `dns.udp_batch = 1`.
        let Some(buffer) = self.buffers.first_mut() else {
            return Ok(0);
        };
        self.datagrams.push(socket.recv_from(buffer)?);
        Ok(1)
    }

    /// Datagram `index` of the last call and its source.
    pub(crate) fn get(&self, index: usize) -> Option<(&[u8], SocketAddr)> {
        let (len, src) = *self.datagrams.get(index)?;
        Some((self.buffers.get(index)?.get(..len)?, src))
    }
}

/// One `recvmmsg` into `buffers`: it waits for the first datagram (up to the socket's receive
/// timeout) and takes those already queued behind it (`MSG_WAITFORONE`). The headers are
/// allocated per call (a few kilobytes, once per batch): the kernel shrinks each header's
/// address length to the address it wrote, which nix 0.30 does not reset when headers are
/// reused.
#[cfg(target_os = "linux")]
fn receive_many(
    socket: &UdpSocket,
    buffers: &mut [Box<[u8]>],
    datagrams: &mut Vec<(usize, SocketAddr)>,
) -> io::Result<()> {
    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;

    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(buffers.len(), None);
    let mut slices: Vec<[IoSliceMut<'_>; 1]> = buffers
        .iter_mut()
        .map(|buffer| [IoSliceMut::new(buffer)])
        .collect();
    let results = recvmmsg(
        socket.as_raw_fd(),
        &mut headers,
        slices.iter_mut(),
        MsgFlags::MSG_WAITFORONE,
        None,
    )
    .map_err(io::Error::from)?;
    for message in results {
        // A datagram whose source is not an IP address cannot be answered; keep its place so
        // that indexes match the buffers, with a source the loop refuses to answer.
        let src = message
            .address
            .as_ref()
            .and_then(socket_addr)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        datagrams.push((message.bytes.min(RECEIVE_BUFFER_LEN), src));
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn socket_addr(address: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    address
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

/// Answers waiting to be sent, in one call where the system allows.
pub(crate) struct Outgoing {
    /// Buffers of the answers, reused; the first `len` are queued.
    buffers: Vec<Vec<u8>>,
    destinations: Vec<SocketAddr>,
    len: usize,
}

impl Outgoing {
    /// Room for `batch` answers per call (1: the portable path).
    pub(crate) fn new(batch: usize) -> Self {
        let batch = batch.clamp(1, BATCH_MAX);
        Outgoing {
            buffers: (0..batch).map(|_| Vec::with_capacity(512)).collect(),
            destinations: Vec::with_capacity(batch),
            len: 0,
        }
    }

    /// A cleared buffer for the next answer; [`Outgoing::queue`] sends it, anything else drops
    /// it. `None` when the batch is full: [`Outgoing::flush`] and [`Outgoing::clear`] it first.
    pub(crate) fn next_buffer(&mut self) -> Option<&mut Vec<u8>> {
        let buffer = self.buffers.get_mut(self.len)?;
        buffer.clear();
        Some(buffer)
    }

    /// Queues the answer written into the last [`Outgoing::next_buffer`] for `destination`.
    pub(crate) fn queue(&mut self, destination: SocketAddr) {
        if self.len < self.buffers.len() {
            self.destinations.push(destination);
            self.len += 1;
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len == self.buffers.len()
    }

    /// The queued answers and their destinations.
    pub(crate) fn queued(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        self.buffers[..self.len]
            .iter()
            .map(Vec::as_slice)
            .zip(self.destinations.iter().copied())
    }

    /// Sends every queued answer, waiting while the socket's send buffer is full (up to
    /// [`SEND_TIMEOUT`]; then the rest are dropped). An answer the kernel refuses (an unreachable
    /// destination) is dropped with a debug line, as a lost datagram would be. The answers stay
    /// queued (for counting) until [`Outgoing::clear`].
    pub(crate) fn flush(&mut self, socket: &UdpSocket) {
        let mut next = 0;
        while next < self.len {
            match self.send_from(socket, next) {
                Ok(sent) => next += sent.max(1),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if is_timeout(&error) => {
                    tracing::debug!(
                        dropped = self.len - next,
                        "UDP send buffer full; answers dropped"
                    );
                    break;
                }
                Err(error) => {
                    tracing::debug!(%error, dst = %self.destinations[next], "UDP send failed");
                    next += 1;
                }
            }
        }
    }

    /// Empties the queue.
    pub(crate) fn clear(&mut self) {
        self.len = 0;
        self.destinations.clear();
    }

    /// Sends queued answers from `first` on in one call; how many were sent.
    fn send_from(&self, socket: &UdpSocket, first: usize) -> io::Result<usize> {
        #[cfg(target_os = "linux")]
        if self.buffers.len() > 1 {
            return send_many(
                socket,
                &self.buffers[first..self.len],
                &self.destinations[first..self.len],
            );
        }
        socket.send_to(&self.buffers[first], self.destinations[first])?;
        Ok(1)
    }
}

/// One `sendmmsg` of `buffers`, each to its destination; how many were sent. It waits while
/// the send buffer is full (up to the socket's send timeout). Headers as in [`receive_many`].
#[cfg(target_os = "linux")]
fn send_many(
    socket: &UdpSocket,
    buffers: &[Vec<u8>],
    destinations: &[SocketAddr],
) -> io::Result<usize> {
    use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;

    let slices: Vec<[IoSlice<'_>; 1]> = buffers
        .iter()
        .map(|buffer| [IoSlice::new(buffer)])
        .collect();
    let addresses: Vec<Option<SockaddrStorage>> = destinations
        .iter()
        .map(|destination| Some(SockaddrStorage::from(*destination)))
        .collect();
    let no_control: [ControlMessage<'_>; 0] = [];
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(buffers.len(), None);
    let results = sendmmsg(
        socket.as_raw_fd(),
        &mut headers,
        slices.iter(),
        addresses,
        no_control,
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    Ok(results.count())
}

/// Sends `answer` to `destination` if the socket's send buffer has room now, else drops it as a
/// full queue on the way would: for the tasks of hickory's chain, which must not block the
/// runtime's workers on the loops' blocking socket.
#[cfg(target_os = "linux")]
pub(crate) fn send_now(
    socket: &UdpSocket,
    answer: &[u8],
    destination: SocketAddr,
) -> io::Result<()> {
    use nix::sys::socket::{MsgFlags, SockaddrStorage, sendto};
    use std::os::fd::AsRawFd;

    sendto(
        socket.as_raw_fd(),
        answer,
        &SockaddrStorage::from(destination),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    Ok(())
}

/// Elsewhere std has no per-call `MSG_DONTWAIT`: the send may wait for room, at most the
/// socket's send timeout (`SEND_TIMEOUT`).
#[cfg(not(target_os = "linux"))]
pub(crate) fn send_now(
    socket: &UdpSocket,
    answer: &[u8],
    destination: SocketAddr,
) -> io::Result<()> {
    socket.send_to(answer, destination).map(drop)
}
