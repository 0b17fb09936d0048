//! The one way a DNS query is answered, on every transport (the UDP loops of `crate::udp`, the
//! TCP connections of `crate::tcp`, DNS-over-HTTPS through [`Answerer`]):
//!
//! 1. the freshness bound, asked once ([`FreshnessBound::replica`]): a node that may not
//!    answer sends SERVFAIL;
//! 2. the fast case, [`LocalAnswers`] (`dns.direct_answers`, on by default): the answer written
//!    from the local replica, for a stored key from the answers the store compiled, in place;
//! 3. the fallback, hickory's handler chain (its `Catalog` over the zones), for what the fast
//!    case leaves to it (module docs of `crate::local`): awaited, so over UDP in a task of its
//!    own.
//!
//! The UDP loops put their answer cache in front of step 2; it keeps only answers of step 2.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hickory_proto::ProtoError;
use hickory_server::net::BufDnsStreamHandle;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::{Protocol, StreamReceiver};
use hickory_server::proto::op::{Header, MessageType};
use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_server::server::{Request, RequestHandler, ResponseHandle};
use hickory_server::zone_handler::Catalog;

use crate::freshness::{FreshnessBound, Replica};
use crate::local::{LocalAnswers, Plain, Source, Written, advertise_payload, truncated_answer};
use crate::metrics::{DnsMetrics, Transport, wire_rcode};

/// Answers queries; see the module docs. Shared by every listener.
pub(crate) struct Answering {
    freshness: FreshnessBound,
    local: LocalAnswers,
    /// `dns.direct_answers`: off, every query the node may answer goes to the chain.
    local_on: bool,
    chain: Catalog,
    /// The UDP payload size this server's OPT records advertise (`dns.udp_payload_max`).
    advertised_payload: u16,
}

/// What [`Answering::answer`] made of a wire query.
pub(crate) enum Answered {
    /// The fast case's answer is in the buffer; the answer cache may keep it.
    Local(Written),
    /// SERVFAIL is in the buffer: the node may not answer now. No cache keeps it.
    Refused,
    /// The message does not parse: FORMERR is in the buffer if its header parses, else the
    /// buffer is empty and nothing is sent.
    Malformed(ProtoError),
    /// A response, not a query: nothing is sent (answering responses would let anyone bounce
    /// traffic off this server).
    NotAQuery,
    /// hickory's chain must answer it ([`Answering::chain`]).
    Chain(Box<Request>),
}

impl Answering {
    pub(crate) fn new(
        freshness: FreshnessBound,
        local: LocalAnswers,
        local_on: bool,
        chain: Catalog,
        advertised_payload: u16,
    ) -> Self {
        Answering {
            freshness,
            local,
            local_on,
            chain,
            advertised_payload,
        }
    }

    /// Whether the node must answer SERVFAIL now (catching up after a crash, or staler than
    /// `dns.max_stale`). Asked once per query, by the listener, before any answer is looked up.
    pub(crate) fn replica(&self) -> Replica {
        self.freshness.replica()
    }

    /// Answers the wire message `query` from `src` over `protocol` into `out`, the way
    /// hickory's listeners and `Catalog` would, or hands it back for the chain. `replica`: what
    /// [`Answering::replica`] said for this query.
    pub(crate) fn answer(
        &self,
        query: &[u8],
        src: SocketAddr,
        protocol: Protocol,
        replica: Replica,
        out: &mut Vec<u8>,
    ) -> Answered {
        // Most queries: a plain query for a stored key, with no parse.
        let plain = if replica == Replica::Refused || !self.local_on {
            Plain::Declined
        } else {
            self.local.answer_plain(query, protocol, out)
        };
        if let Plain::Answered(written) = plain {
            return Answered::Local(written);
        }
        out.clear();
        let request = match Request::from_bytes(query.to_vec(), src, protocol) {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(%error, %src, "malformed DNS query");
                let formerr = Header::read(&mut BinDecoder::new(query))
                    .ok()
                    .and_then(|header| self.local.malformed(&header, protocol));
                if let Some(formerr) = formerr {
                    out.extend_from_slice(&formerr);
                }
                return Answered::Malformed(error);
            }
        };
        if request.metadata.message_type == MessageType::Response {
            return Answered::NotAQuery;
        }
        if replica == Replica::Refused {
            self.freshness.count_refusal();
            self.local.refuse(&request, protocol, out);
            return Answered::Refused;
        }
        let source = match plain {
            Plain::TooBig => Source::Records,
            Plain::Answered(_) | Plain::Declined => Source::Compiled,
        };
        if self.local_on
            && let Some(written) = self.local.answer_request(&request, protocol, source, out)
        {
            return Answered::Local(written);
        }
        out.clear();
        Answered::Chain(Box::new(request))
    }

    /// The chain's answer to `request`, encoded the way hickory's response handle encodes it
    /// for the request's protocol (UDP: within the client's EDNS size, or 512 bytes without
    /// EDNS), its OPT record advertising the server's size.
    pub(crate) async fn chain(&self, request: &Request) -> Option<Vec<u8>> {
        let (response_handle, mut encoded) = capture(request.src(), request.protocol());
        self.chain
            .handle_request::<_, TokioTime>(request, response_handle)
            .await;
        let mut answer = take_captured(&mut encoded)?;
        advertise_payload(&mut answer, self.advertised_payload);
        Some(answer)
    }

    /// A truncated answer to `query` (no records, TC set: the client asks again over TCP), its
    /// OPT record advertising the server's size.
    pub(crate) fn truncated(&self, query: &[u8]) -> Option<Vec<u8>> {
        truncated_answer(query, self.advertised_payload)
    }
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

/// Why a DNS-over-HTTPS message got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// The header or the question does not parse.
    #[error("not a DNS query: {0}")]
    Malformed(#[source] ProtoError),
    #[error("not a DNS query: a response")]
    NotAQuery,
    /// hickory's chain sent no answer (its response handle was not written to).
    #[error("no answer was sent")]
    NoAnswer,
}

/// Answers DNS messages that arrive over HTTP (DNS-over-HTTPS, served by `pkraft-http`) the way
/// the TCP listener answers them, byte for byte. Cheap to clone.
#[derive(Clone)]
pub struct Answerer {
    answering: Arc<Answering>,
    metrics: Arc<DnsMetrics>,
}

impl Answerer {
    pub(crate) fn new(answering: Arc<Answering>, metrics: Arc<DnsMetrics>) -> Self {
        Answerer { answering, metrics }
    }

    /// The wire answer to the wire query `query` from `src`. Answers are encoded as for TCP: DoH
    /// carries them whole, with no truncation (RFC 8484 §5.2 leaves size to HTTP).
    pub async fn answer(&self, query: Vec<u8>, src: SocketAddr) -> Result<Vec<u8>, AnswerError> {
        let started = Instant::now();
        let answering = &self.answering;
        let mut answer = Vec::new();
        let replica = answering.replica();
        match answering.answer(&query, src, Protocol::Tcp, replica, &mut answer) {
            Answered::Local(_) | Answered::Refused => {}
            Answered::Malformed(error) => return Err(AnswerError::Malformed(error)),
            Answered::NotAQuery => return Err(AnswerError::NotAQuery),
            Answered::Chain(request) => {
                answer = answering
                    .chain(&request)
                    .await
                    .ok_or(AnswerError::NoAnswer)?;
            }
        }
        let rcode = wire_rcode(&answer);
        self.metrics
            .answered(Transport::Doh, rcode, started.elapsed());
        Ok(answer)
    }
}
