//! Answering DNS messages that arrive outside hickory's own listeners with the same handler chain
//! as they do (the freshness guard, the `Catalog`, the zones and the record cache), encoded by
//! hickory's own response handle:
//! - [`Answerer`]: DNS-over-HTTPS on the HTTP listener. Its answers are the TCP answers, byte for
//!   byte.
//! - [`respond`]: what the UDP loops (`crate::udp`) leave to the chain, answered as hickory's own
//!   UDP listener would answer it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hickory_server::net::BufDnsStreamHandle;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::{Protocol, StreamReceiver};
use hickory_server::proto::op::{Header, MessageType};
use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_server::server::{
    Request, RequestHandler, ResponseHandle, ResponseHandler, ResponseInfo,
};
use hickory_server::zone_handler::{Catalog, MessageRequest};

use crate::direct::{DirectAnswers, Prepared, Source, advertise_payload, malformed_answer};
use crate::freshness::{FreshnessGuard, servfail_info};
use crate::metrics::{DnsMetrics, Transport, wire_rcode};
use crate::rrl::truncated_answer;
use crate::zone::Read;

/// The handler chain, shared by the hickory `Server`, the UDP loops of `crate::udp` and the
/// [`Answerer`]: [`DirectAnswers`] first when on (`dns.direct_answers`), then hickory's `Catalog`
/// behind the freshness guard for what they leave to it.
#[derive(Clone)]
pub(crate) struct SharedHandler {
    chain: Arc<FreshnessGuard<Catalog>>,
    direct: Option<Arc<DirectAnswers>>,
    /// The UDP payload size this server's OPT records advertise (`dns.udp_payload_max`).
    advertised_payload: u16,
}

#[async_trait::async_trait]
impl RequestHandler for SharedHandler {
    async fn handle_request<R: ResponseHandler, T: hickory_server::net::runtime::Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        // hickory's response handle takes records: the parsed packet's. Over UDP it would bound
        // them by the server's size in the OPT record, so UDP goes to the chain here (only
        // hickory's own UDP listener asks this, and it runs only with the direct answers off).
        if request.protocol() != Protocol::Udp
            && let Some(prepared) = self.prepare_direct(request, self.too_stale(), Source::Parsed)
        {
            return match response_handle
                .send_response(prepared.response(&request.queries))
                .await
            {
                Ok(info) => info,
                Err(error) => {
                    tracing::debug!(%error, "could not send a DNS response");
                    servfail_info(request)
                }
            };
        }
        self.chain
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

impl SharedHandler {
    pub(crate) fn new(
        chain: Arc<FreshnessGuard<Catalog>>,
        direct: Option<Arc<DirectAnswers>>,
        advertised_payload: u16,
    ) -> Self {
        SharedHandler {
            chain,
            direct,
            advertised_payload,
        }
    }

    /// The chain's answer to `request` (see [`respond`]), its OPT record advertising the
    /// server's size.
    pub(crate) async fn respond_chain(&self, request: &Request) -> Option<Vec<u8>> {
        let mut answer = respond(self.chain(), request).await?;
        advertise_payload(&mut answer, self.advertised_payload);
        Some(answer)
    }

    /// A truncated answer to `query` (no records, TC set: the client asks again over TCP), its
    /// OPT record advertising the server's size.
    pub(crate) fn truncated(&self, query: &[u8]) -> Option<Vec<u8>> {
        truncated_answer(query, self.advertised_payload)
    }

    /// Whether answers are SERVFAIL now (`dns.max_stale` exceeded).
    pub(crate) fn too_stale(&self) -> bool {
        self.chain.too_stale()
    }

    /// hickory's chain alone (the freshness guard and the `Catalog`), for what the direct answers
    /// already left to it.
    pub(crate) fn chain(&self) -> &FreshnessGuard<Catalog> {
        &self.chain
    }

    /// The answer [`DirectAnswers`] give `request`, unless they are off, the node is too stale
    /// (`stale`, from [`SharedHandler::too_stale`]: the freshness guard answers SERVFAIL), or
    /// the chain must answer. Every transport asks here, so that none answers directly what the
    /// guard would refuse.
    fn prepare_direct(
        &self,
        request: &MessageRequest,
        stale: bool,
        source: Source,
    ) -> Option<Prepared> {
        if stale {
            return None;
        }
        self.direct.as_ref()?.prepare(request, source)
    }
}

/// What the direct answers made of a wire query (the UDP loops, the TCP connections).
pub(crate) enum Direct {
    /// The answer is in the buffer; with [`Cacheable`] it may be kept in the answer cache.
    Answered(Option<Cacheable>),
    /// Nothing is sent (fewer than 12 bytes, or a response).
    NoAnswer,
    /// hickory's chain must answer it.
    Chain(Box<Request>),
}

/// An answer the answer cache may keep: it is current while the key it read (if any) is
/// unchanged.
pub(crate) struct Cacheable {
    pub(crate) read: Option<Read>,
    /// Built from the store's compiled answers.
    pub(crate) compiled: bool,
}

impl SharedHandler {
    /// Answers the wire message `query` from `src` over `protocol` with the direct answers, into
    /// `out`, the way hickory's listeners and `Catalog` would: no answer to fewer than 12 bytes
    /// or to a response, FORMERR to a message whose header parses and whose rest does not, and
    /// what [`DirectAnswers`] cover (UDP answers within the client's EDNS size and
    /// `udp_payload_max`). The rest is left to the chain. `stale`: the node is too stale for
    /// `dns.max_stale` (the chain answers SERVFAIL).
    pub(crate) fn answer_direct(
        &self,
        query: &[u8],
        src: SocketAddr,
        protocol: Protocol,
        stale: bool,
        udp_payload_max: u16,
        out: &mut Vec<u8>,
    ) -> Direct {
        // Most queries: a plain query for a stored key's compiled answers, with no parse.
        if !stale
            && let Some(direct) = &self.direct
            && let Some(read) = direct.answer_plain(query, protocol, udp_payload_max, out)
        {
            return Direct::Answered(Some(Cacheable {
                read: Some(read),
                compiled: true,
            }));
        }
        let request = match Request::from_bytes(query.to_vec(), src, protocol) {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(%error, %src, "malformed DNS query");
                let formerr = Header::read(&mut BinDecoder::new(query))
                    .ok()
                    .and_then(|header| malformed_answer(&header, protocol));
                return match formerr {
                    Some(formerr) => {
                        out.clear();
                        out.extend_from_slice(&formerr);
                        Direct::Answered(None)
                    }
                    None => Direct::NoAnswer,
                };
            }
        };
        // Answering a response would let anyone bounce traffic off this server.
        if request.metadata.message_type == MessageType::Response {
            return Direct::NoAnswer;
        }
        let Some(mut prepared) = self.prepare_direct(&request, stale, Source::Compiled) else {
            return Direct::Chain(Box::new(request));
        };
        let mut encoded = prepared.encode(&request.queries, protocol, udp_payload_max, out);
        if encoded.is_err() && prepared.is_compiled() {
            // Too big for the client: hickory drops records until the answer fits.
            let Some(parsed) = self.prepare_direct(&request, stale, Source::Parsed) else {
                return Direct::Chain(Box::new(request));
            };
            prepared = parsed;
            encoded = prepared.encode(&request.queries, protocol, udp_payload_max, out);
        }
        if encoded.is_err() {
            return Direct::Chain(Box::new(request));
        }
        Direct::Answered(Some(Cacheable {
            read: prepared.read,
            compiled: prepared.is_compiled(),
        }))
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
        let mut answer = respond(&self.handler, &request)
            .await
            .ok_or_else(|| AnswerError::Encode("no answer was sent".to_string()))?;
        advertise_payload(&mut answer, self.handler.advertised_payload);
        let rcode = wire_rcode(&answer);
        self.metrics
            .answered(Transport::Doh, rcode, started.elapsed());
        Ok(answer)
    }
}

/// The handler chain's answer to `request`, encoded the way hickory encodes it for the
/// request's protocol (UDP: truncated to the client's EDNS size, or 512 bytes without EDNS).
pub(crate) async fn respond(handler: &impl RequestHandler, request: &Request) -> Option<Vec<u8>> {
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
