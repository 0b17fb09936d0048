//! One HTTP/1.1 request to a node, for the command-line clients (`pkraft cluster`, `backup`,
//! `publish`, `resolve`): plain HTTP, a bound on the whole exchange and on the answer's size (or,
//! for a backup, on the answer's head, the body read as it comes).

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
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
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
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
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    tokio::time::timeout(timeout, client.request(request))
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {uri} within {timeout:?}"))?
        .with_context(|| format!("cannot reach {uri}"))
}
