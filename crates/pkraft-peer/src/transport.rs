//! How the peer client reaches a peer's address: TCP (every deployment), or a connector the
//! caller supplies, which is how a simulation puts its own network under the real client
//! (docs/SIMULATION.md). Everything above the byte stream (HTTP/1.1, TLS, the pool, each
//! call's timeout, the cluster secret) is the same either way; the connect timeout and TCP's
//! keepalive are TCP's (a custom connector's slow connect ends at the call's timeout).

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A connected byte stream to a peer, from a [`PeerTransport::Custom`] connector.
pub trait PeerStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> PeerStream for T {}

/// A connection being opened by a [`PeerTransport::Custom`] connector.
pub type Connecting = Pin<Box<dyn Future<Output = io::Result<Box<dyn PeerStream>>> + Send>>;

/// Opens a connection to a peer's `host:port`.
pub type Connect = Arc<dyn Fn(String) -> Connecting + Send + Sync>;

/// How the node's peer calls reach a peer's address.
#[derive(Clone, Default)]
pub enum PeerTransport {
    /// TCP, with the client's connect timeout, `TCP_NODELAY` and keepalive.
    #[default]
    Tcp,
    /// The caller's connector (a simulated network): called with the peer's `host:port`.
    Custom(Connect),
}

impl fmt::Debug for PeerTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerTransport::Tcp => f.write_str("Tcp"),
            PeerTransport::Custom(_) => f.write_str("Custom"),
        }
    }
}

/// The connector under the client's TLS: TCP or the caller's.
#[derive(Clone)]
pub(crate) enum Connector {
    Tcp(HttpConnector),
    Custom(Connect),
}

type ConnectError = Box<dyn Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = PeerIo;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<PeerIo, ConnectError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        match self {
            Connector::Tcp(tcp) => tcp.poll_ready(cx).map_err(Into::into),
            Connector::Custom(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        match self {
            Connector::Tcp(tcp) => {
                let connecting = tcp.call(uri);
                Box::pin(async move { Ok(PeerIo::Tcp(connecting.await?)) })
            }
            Connector::Custom(connect) => {
                let Some(authority) = uri.authority().map(ToString::to_string) else {
                    let refused = io::Error::new(io::ErrorKind::InvalidInput, "no host:port");
                    return Box::pin(async move { Err(refused.into()) });
                };
                let connecting = connect(authority);
                Box::pin(async move { Ok(PeerIo::Custom(TokioIo::new(connecting.await?))) })
            }
        }
    }
}

/// A connection the [`Connector`] opened.
pub(crate) enum PeerIo {
    Tcp(TokioIo<TcpStream>),
    Custom(TokioIo<Box<dyn PeerStream>>),
}

impl Connection for PeerIo {
    fn connected(&self) -> Connected {
        match self {
            PeerIo::Tcp(tcp) => tcp.connected(),
            PeerIo::Custom(_) => Connected::new(),
        }
    }
}

impl Read for PeerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerIo::Tcp(tcp) => Pin::new(tcp).poll_read(cx, buf),
            PeerIo::Custom(custom) => Pin::new(custom).poll_read(cx, buf),
        }
    }
}

impl Write for PeerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerIo::Tcp(tcp) => Pin::new(tcp).poll_write(cx, buf),
            PeerIo::Custom(custom) => Pin::new(custom).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerIo::Tcp(tcp) => Pin::new(tcp).poll_flush(cx),
            PeerIo::Custom(custom) => Pin::new(custom).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerIo::Tcp(tcp) => Pin::new(tcp).poll_shutdown(cx),
            PeerIo::Custom(custom) => Pin::new(custom).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            PeerIo::Tcp(tcp) => tcp.is_write_vectored(),
            PeerIo::Custom(custom) => custom.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerIo::Tcp(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            PeerIo::Custom(custom) => Pin::new(custom).poll_write_vectored(cx, bufs),
        }
    }
}
