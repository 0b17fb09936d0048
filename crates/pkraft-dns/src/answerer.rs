//! Answering DNS messages that arrive outside hickory's own listeners with the same handler chain
//! as they do (the freshness guard, the `Catalog`, the zones and the record cache), encoded by
//! hickory's own response handle:
//! - [`Answerer`]: DNS-over-HTTPS on the HTTP listener. Its answers are the TCP answers, byte for
//!   byte.
//! - [`answer_as_hickory`]: the UDP listener's misses (`crate::udp`), answered as hickory's own
//!   UDP listener would answer them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hickory_server::net::BufDnsStreamHandle;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::{Protocol, StreamReceiver};
use hickory_server::proto::op::{Header, MessageType, ResponseCode};
use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_server::server::{
    Request, RequestHandler, ResponseHandle, ResponseHandler, ResponseInfo,
};
use hickory_server::zone_handler::{Catalog, MessageResponseBuilder, Queries};

use crate::freshness::FreshnessGuard;
use crate::metrics::{DnsMetrics, Transport, wire_rcode};

/// The handler chain, shared by the hickory `Server`, the UDP loops of `crate::udp` and the
/// [`Answerer`].
#[derive(Clone)]
pub(crate) struct SharedHandler(pub(crate) Arc<FreshnessGuard<Catalog>>);

#[async_trait::async_trait]
impl RequestHandler for SharedHandler {
    async fn handle_request<R: ResponseHandler, T: hickory_server::net::runtime::Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.0
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

impl SharedHandler {
    /// Whether answers are SERVFAIL now (`dns.max_stale` exceeded).
    pub(crate) fn too_stale(&self) -> bool {
        self.0.too_stale()
    }
}

/// The handler of hickory's own listeners: the chain, with every query counted.
#[derive(Clone)]
pub(crate) struct CountedHandler {
    pub(crate) handler: SharedHandler,
    pub(crate) metrics: Arc<DnsMetrics>,
}

#[async_trait::async_trait]
impl RequestHandler for CountedHandler {
    async fn handle_request<R: ResponseHandler, T: hickory_server::net::runtime::Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let info = self
            .handler
            .handle_request::<R, T>(request, response_handle)
            .await;
        let transport = match request.protocol() {
            Protocol::Udp => Transport::Udp,
            _ => Transport::Tcp,
        };
        let rcode = u16::from(info.response_code);
        self.metrics.answered(transport, rcode, started.elapsed());
        info
    }
}

/// Why a message got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// Not a DNS query (the header or question does not parse, or it is a response).
    #[error("not a DNS query: {0}")]
    Malformed(String),
    #[error("the answer could not be encoded: {0}")]
    Encode(String),
}

/// Answers DNS wire messages; see the module docs. Cheap to clone.
#[derive(Clone)]
pub struct Answerer {
    handler: SharedHandler,
    metrics: Arc<DnsMetrics>,
}

impl Answerer {
    pub(crate) fn new(handler: SharedHandler, metrics: Arc<DnsMetrics>) -> Self {
        Answerer { handler, metrics }
    }

    /// The wire answer to the wire query `query` from `src`. Answers are encoded as for TCP: DoH
    /// carries them whole, with no truncation (RFC 8484 §5.2 leaves size to HTTP).
    pub async fn answer(&self, query: Vec<u8>, src: SocketAddr) -> Result<Vec<u8>, AnswerError> {
        let started = Instant::now();
        let request = Request::from_bytes(query, src, Protocol::Tcp)
            .map_err(|e| AnswerError::Malformed(e.to_string()))?;
        if request.metadata.message_type != MessageType::Query {
            return Err(AnswerError::Malformed(
                "a response, not a query".to_string(),
            ));
        }
        let answer = respond(&self.handler, &request)
            .await
            .ok_or_else(|| AnswerError::Encode("no answer was sent".to_string()))?;
        let rcode = wire_rcode(&answer);
        self.metrics
            .answered(Transport::Doh, rcode, started.elapsed());
        Ok(answer)
    }
}

/// The answer hickory-server's own listener for `protocol` gives to `query` from `src`: what
/// `ServerContext::handle_request` (private to hickory) does, minus its per-query log lines.
/// `None` where it sends nothing: fewer than 12 bytes, or a response (answering those would
/// let anyone bounce traffic off this server).
pub(crate) async fn answer_as_hickory(
    handler: &SharedHandler,
    query: Vec<u8>,
    src: SocketAddr,
    protocol: Protocol,
) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(&query)).ok()?;
    match Request::from_bytes(query, src, protocol) {
        Ok(request) if request.metadata.message_type == MessageType::Response => None,
        Ok(request) => respond(handler, &request).await,
        Err(error) => {
            // The header parsed but the rest did not: FORMERR, with no question and no OPT.
            tracing::debug!(%error, %src, "malformed DNS query");
            let no_queries = Queries::read(&mut BinDecoder::new(&[]), 0).ok()?;
            let response = MessageResponseBuilder::new(&no_queries, None)
                .error_msg(&header, ResponseCode::FormErr);
            let (mut response_handle, mut encoded) = capture(src, protocol);
            response_handle.send_response(response).await.ok()?;
            take_captured(&mut encoded)
        }
    }
}

/// The handler chain's answer to `request`, encoded the way hickory encodes it for the
/// request's protocol (UDP: truncated to the client's EDNS size, or 512 bytes without EDNS).
async fn respond(handler: &SharedHandler, request: &Request) -> Option<Vec<u8>> {
    let (response_handle, mut encoded) = capture(request.src(), request.protocol());
    handler
        .handle_request::<_, TokioTime>(request, response_handle)
        .await;
    take_captured(&mut encoded)
}

/// hickory's own response handle, whose sends land in the returned receiver instead of a socket.
fn capture(src: SocketAddr, protocol: Protocol) -> (ResponseHandle, StreamReceiver) {
    let (stream_handle, encoded) = BufDnsStreamHandle::new(src);
    (ResponseHandle::new(src, stream_handle, protocol), encoded)
}

/// The message sent through a [`capture`] handle, if one was.
fn take_captured(encoded: &mut StreamReceiver) -> Option<Vec<u8>> {
    let message = encoded.get_mut().get_mut().try_recv().ok()?;
    Some(message.into_parts().0)
}
