//! Batched UDP I/O for the DNS loops: many datagrams per system call where the system has it
//! (`recvmmsg`/`sendmmsg` on Linux, through nix's safe wrappers), one per call elsewhere or with
//! `dns.udp_batch = 1`.
//!
//! Why: with the answer cache, a query costs about a microsecond in pkraft and several in the
//! kernel, and most of the kernel's share is the two system calls per query
//! (docs/BENCHMARKS.md). NSD batches the same way; dnsdist measured about 15 % less CPU with it.
//! The portable path is the same code as before batching: `recv_from` until the socket is
//! empty or the batch is full, `send_to` per answer.

use std::io;
use std::net::SocketAddr;

use tokio::io::Interest;
use tokio::net::UdpSocket;

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

    /// Reads what `socket` has, up to the batch, without waiting: `WouldBlock` when it has
    /// nothing (tokio's readiness is then cleared, so `socket.readable()` waits for more).
    pub(crate) fn try_receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.datagrams.clear();
        #[cfg(target_os = "linux")]
        if self.buffers.len() > 1 {
            let datagrams = &mut self.datagrams;
            let buffers = &mut self.buffers;
            socket.try_io(Interest::READABLE, || {
                receive_many(socket, buffers, datagrams)
            })?;
            return Ok(self.datagrams.len());
        }
        for buffer in &mut self.buffers {
            match socket.try_recv_from(buffer) {
                Ok(datagram) => self.datagrams.push(datagram),
                // What was read is answered; a lasting error comes back on the next call.
                Err(_) if !self.datagrams.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        Ok(self.datagrams.len())
    }

    /// Datagram `index` of the last call and its source.
    pub(crate) fn get(&self, index: usize) -> Option<(&[u8], SocketAddr)> {
        let (len, src) = *self.datagrams.get(index)?;
        Some((self.buffers.get(index)?.get(..len)?, src))
    }
}

/// One `recvmmsg` into `buffers`. The headers are allocated per call (a few kilobytes, once per
/// batch), for two reasons: they hold raw pointers, so they cannot live in the loop's future
/// across an await; and the kernel shrinks each header's address length to the address it
/// wrote, which nix 0.30 does not reset when headers are reused.
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
        MsgFlags::MSG_DONTWAIT,
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

    /// Sends every queued answer, waiting while the socket's send buffer is full. An answer the
    /// kernel refuses (an unreachable destination) is dropped with a debug line, as a lost
    /// datagram would be. The answers stay queued (for counting) until [`Outgoing::clear`].
    pub(crate) async fn flush(&mut self, socket: &UdpSocket) {
        let mut next = 0;
        while next < self.len {
            match self.try_send_from(socket, next) {
                Ok(sent) => next += sent.max(1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(error) = socket.writable().await {
                        tracing::debug!(%error, "UDP socket not writable; answers dropped");
                        break;
                    }
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
    fn try_send_from(&mut self, socket: &UdpSocket, first: usize) -> io::Result<usize> {
        #[cfg(target_os = "linux")]
        if self.buffers.len() > 1 {
            let buffers = &self.buffers[first..self.len];
            let destinations = &self.destinations[first..self.len];
            return socket.try_io(Interest::WRITABLE, || {
                send_many(socket, buffers, destinations)
            });
        }
        socket.try_send_to(&self.buffers[first], self.destinations[first])?;
        Ok(1)
    }
}

/// One `sendmmsg` of `buffers`, each to its destination; how many were sent. Headers as in
/// [`receive_many`].
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
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    Ok(results.count())
}
