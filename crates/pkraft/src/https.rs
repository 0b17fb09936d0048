//! The optional `[https]` listener: the public router (relay, DNS-over-HTTPS, health) over TLS,
//! HTTP/1.1 and HTTP/2 (ALPN), from PEM certificate and key files.
//!
//! Every connection gets its own task, and its TLS handshake a deadline: a handshake inside the
//! accept loop would let one slow client stall every other connection.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

/// A TLS handshake that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After an accept error (out of file descriptors, say), wait this long before the next accept.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// `[https]`: serve the public API over TLS too. Unset by default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsSettings {
    /// Listen address, e.g. `0.0.0.0:443`.
    pub listen: SocketAddr,
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl HttpsSettings {
    /// The TLS configuration from the certificate and key files; errors name the field.
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| pem_error("https.cert", &self.cert, e))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "https.cert: {} holds no certificate",
            self.cert.display()
        );
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| pem_error("https.key", &self.key, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("https: TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("https.key does not match https.cert")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn pem_error(field: &str, path: &Path, e: rustls::pki_types::pem::Error) -> anyhow::Error {
    anyhow::anyhow!("{field}: cannot read {}: {e}", path.display())
}

/// Serves `app` over TLS on `listener` until `stopped` resolves, then lets open connections
/// finish their requests.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: axum::Router,
    stopped: oneshot::Receiver<()>,
) -> io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(stopped);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "https accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        let (acceptor, app, builder) = (acceptor.clone(), app.clone(), builder.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(QuickAckStream(tcp)))
                    .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                };
            let service = TowerToHyperService::new(app);
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %e, "https connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
    Ok(())
}

/// A TCP stream that acknowledges what it reads at once (`TCP_QUICKACK` after every read;
/// Linux clears it again by itself).
///
/// Why: HTTP/2 clients such as nghttp2 (dnsperf, curl) write a POST's HEADERS and DATA frames
/// in two writes with Nagle's algorithm on, so the DATA waits for the HEADERS to be
/// acknowledged, and a server with nothing to send yet delays that ACK by up to 40 ms. Measured
/// with `dnsperf -m doh -O doh-method=POST -c 20`: 5k queries/s at 20 ms mean latency without
/// this, 53k at 1.5 ms with it (GET, one frame, unchanged at ≈ 60k). The cost is one
/// `setsockopt` per read.
struct QuickAckStream(TcpStream);

impl AsyncRead for QuickAckStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.0).poll_read(cx, buf);
        if result.is_ready() {
            // Best effort: without it the connection only answers later.
            let _ = socket2::SockRef::from(&self.0).set_tcp_quickack(true);
        }
        result
    }
}

impl AsyncWrite for QuickAckStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
