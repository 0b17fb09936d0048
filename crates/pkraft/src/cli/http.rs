//! One HTTP/1.1 request to a node, for the command-line clients (`pkraft cluster`, `backup`,
//! `publish`, `resolve`): plain HTTP or HTTPS (`https://` URLs: the node's certificate is
//! checked against the system's CA certificates, or the PEM file `SSL_CERT_FILE` names, as curl
//! and OpenSSL do), a bound on the whole exchange and on the answer's size (or, for a backup, on
//! the answer's head, the body read as it comes).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A node's answer.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Sends `request` and reads the whole answer, failing if it takes longer than `timeout` or its
/// body exceeds `max_body` bytes.
pub async fn exchange(
    request: Request<Full<Bytes>>,
    timeout: Duration,
    max_body: usize,
) -> anyhow::Result<Answer> {
    let uri = request.uri().clone();
    let client = client_for(&uri)?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .with_context(|| format!("cannot reach {uri}"))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, max_body)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("{uri}: reading the answer: {e}"))?
            .to_bytes();
        anyhow::Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {uri} within {timeout:?}"))?
}

/// Sends `request` and returns the answer once its head arrived, within `timeout`, for a body
/// the caller reads as it comes (a backup).
pub async fn exchange_streaming(
    request: Request<Full<Bytes>>,
    timeout: Duration,
) -> anyhow::Result<Response<Incoming>> {
    let uri = request.uri().clone();
    let client = client_for(&uri)?;
    tokio::time::timeout(timeout, client.request(request))
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {uri} within {timeout:?}"))?
        .with_context(|| format!("cannot reach {uri}"))
}

/// A client for `uri`: HTTPS trusting the system's CA certificates (read only for an `https://`
/// URL, so that plain HTTP works on a machine without any), or plain HTTP.
fn client_for(uri: &Uri) -> anyhow::Result<Client<HttpsConnector<HttpConnector>, Full<Bytes>>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let connector = hyper_rustls::HttpsConnectorBuilder::new();
    let connector = if uri.scheme_str() == Some("https") {
        connector
            .with_provider_and_native_roots(provider)
            .with_context(|| {
                format!(
                    "{uri}: no CA certificates to check the node's certificate with \
                     (install ca-certificates, or name a PEM file in SSL_CERT_FILE)"
                )
            })?
    } else {
        // Never used for an `http://` URL: no CA store is read.
        connector.with_tls_config(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .context("TLS protocol versions")?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        )
    };
    let connector = connector.https_or_http().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Refuses a relay URL (`given`, parsed as `uri`) without a scheme or with one other than
/// `http` and `https`, the two this client speaks; `what` names the argument in the error.
pub fn check_scheme(uri: &Uri, what: &str, given: &str) -> anyhow::Result<()> {
    match uri.scheme_str() {
        Some("http" | "https") => Ok(()),
        Some(other) => anyhow::bail!("{what} {given:?}: use http:// or https:// (got {other}://)"),
        None => anyhow::bail!("{what} {given:?} needs a scheme, e.g. http://127.0.0.1:8080/pkarr"),
    }
}
