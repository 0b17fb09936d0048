//! [`DirectAnswers`]: the answer hickory-server's `Catalog` gives a query, built in place from the
//! zones' local lookups, with no task, no boxed future and no capture channel. The UDP loops
//! answer most queries this way, inline as they read them, and TCP and DNS-over-HTTPS use it in
//! front of the `Catalog`.
//!
//! # What is answered here, and what goes to hickory's chain
//! A query is answered here when the answer depends only on its header, its question, its OPT
//! record and the local replica:
//! - a standard query (opcode QUERY) with one question, in an origin: the zone's local lookup
//!   ([`PkarrZone::lookup_local`]) wrapped exactly as `Catalog::lookup` and
//!   `build_authoritative_response` wrap it (AA, the SOA in the authority section of NXDOMAIN and
//!   NODATA, the apex NS with a SOA answer);
//! - the `Catalog`'s error answers that need no zone: REFUSED for a name in no origin, FORMERR
//!   for a question count other than one, NOTIMP for opcodes other than QUERY and UPDATE, and
//!   BADVERS for EDNS versions above 0.
//!
//! Everything else goes to the chain ([`DirectAnswers::prepare`] returns `None`): responses
//! sent as queries, UPDATE, AXFR, a node that is too stale (SERVFAIL, from the freshness guard),
//! a key the local replica does not hold while `[dht]` resolves (the DHT is asked, which waits),
//! and a replica that could not be read (REFUSED, logged by the zone).
//!
//! The response is encoded by hickory's own `MessageResponse`, the type the `Catalog` hands its
//! response handle, so an answer built here is the `Catalog`'s byte for byte when its parts are.
//! A positive answer for a stored key is the exception: it is written from the answers the store
//! compiled when it applied the packet ([`Source::Compiled`], `encode_compiled`), in the bytes
//! hickory's encoder would write for the same records, with no parse of the packet and no
//! encoder.
//! `tests/udp_answers.rs` checks that against the `Catalog` on every query shape it knows, over
//! UDP and TCP.

use std::iter;
use std::sync::Arc;

use hickory_proto::ProtoError;
use hickory_proto::op::{Edns, Header, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{Record, RecordType};
use hickory_proto::serialize::binary::{BinDecoder, BinEncoder};
use hickory_server::net::xfer::Protocol;
use hickory_server::zone_handler::{
    MessageRequest, MessageResponse, MessageResponseBuilder, Queries,
};

use crate::plain_query::PlainQuery;
use crate::zone::{Compiled, CompiledAnswers, Lookup, PkarrZone, Read};

/// The EDNS version hickory-server's `Catalog` speaks.
const EDNS_VERSION: u8 = 0;

/// Builds the `Catalog`'s answers from the zones; see the module docs.
pub(crate) struct DirectAnswers {
    /// Most specific origin first, so the first that contains a name is the one the `Catalog`
    /// picks.
    zones: Vec<Arc<PkarrZone>>,
    /// The UDP payload size this server's OPT records advertise (`dns.udp_payload_max`).
    advertised_payload: u16,
}

/// A response ready to encode, and the key it was read from.
#[derive(Debug)]
pub(crate) struct Prepared {
    metadata: Metadata,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    edns: Option<Edns>,
    /// The largest UDP answer the client takes: its OPT record's size, at least 512 bytes
    /// (512 without EDNS, RFC 1035 §4.2.1). The response's OPT record advertises the server's.
    client_udp_max: u16,
    /// The key the answer was read from and its version before the read (`None`: it read no
    /// key, so it depends on the config alone).
    pub(crate) read: Option<Read>,
    /// A positive answer from the store's compiled answers (`answers` is then empty): encoded
    /// by [`encode_compiled`], not by hickory.
    compiled: Option<CompiledAnswers>,
}

/// Where a [`DirectAnswers::prepare`] may read a key's records from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The compiled answers where they answer, else the parsed packet. Only for callers that
    /// encode with [`Prepared::encode`].
    Compiled,
    /// The parsed packet only: for hickory's response handle, which takes records
    /// ([`Prepared::response`]), and when a compiled answer does not fit.
    Parsed,
}

/// The answer and authority sections of `zone`'s `lookup` for a query of `rtype`, as
/// hickory's `build_authoritative_response` makes them (setting NXDOMAIN in `metadata`); `None`
/// for a failed lookup, which the chain answers.
fn sections(
    zone: &PkarrZone,
    lookup: Lookup,
    rtype: RecordType,
    metadata: &mut Metadata,
) -> Option<(Vec<Record>, Vec<Record>)> {
    Some(match lookup {
        Lookup::Answers(records) => {
            // A SOA answer carries the apex NS records in the authority section.
            let ns = if rtype == RecordType::SOA {
                zone.apex_ns().to_vec()
            } else {
                Vec::new()
            };
            let is_referral = records.first().is_some_and(|record| {
                record.record_type() == RecordType::NS
                    && rtype != RecordType::NS
                    && rtype != RecordType::ANY
            });
            if is_referral {
                (Vec::new(), records.into_iter().chain(ns).collect())
            } else {
                (records, ns)
            }
        }
        Lookup::NoData => (Vec::new(), vec![zone.negative_soa().clone()]),
        Lookup::NxDomain => {
            metadata.response_code = ResponseCode::NXDomain;
            (Vec::new(), vec![zone.negative_soa().clone()])
        }
        Lookup::Failed(_) => return None,
    })
}

impl DirectAnswers {
    /// `advertised_payload`: the UDP payload size the answers' OPT records advertise.
    pub(crate) fn new(mut zones: Vec<Arc<PkarrZone>>, advertised_payload: u16) -> Self {
        zones.sort_by_key(|zone| std::cmp::Reverse(zone.origin_name().num_labels()));
        DirectAnswers {
            zones,
            advertised_payload,
        }
    }

    /// The `Catalog`'s answer to `request`, or `None` if only the chain can give it (module
    /// docs). The caller checks staleness first.
    pub(crate) fn prepare(&self, request: &MessageRequest, source: Source) -> Option<Prepared> {
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let edns = request
            .edns
            .as_ref()
            .map(|_| response_edns(self.advertised_payload));
        let client_udp_max = client_udp_max(request.edns.as_ref().map(Edns::max_payload));
        if let Some(query_edns) = &request.edns
            && query_edns.version() > EDNS_VERSION
        {
            // `send_error_response` puts the rcode's high bits into the OPT record.
            let mut edns = response_edns(self.advertised_payload);
            edns.set_rcode_high(ResponseCode::BADVERS.high());
            return Some(Prepared::error(
                request,
                ResponseCode::BADVERS,
                Some(edns),
                client_udp_max,
            ));
        }
        match request.metadata.op_code {
            OpCode::Query => {}
            OpCode::Update => return None,
            _ => {
                return Some(Prepared::error(
                    request,
                    ResponseCode::NotImp,
                    edns,
                    client_udp_max,
                ));
            }
        }
        let [query] = request.queries.queries() else {
            return Some(Prepared::error(
                request,
                ResponseCode::FormErr,
                edns,
                client_udp_max,
            ));
        };
        let name = query.name();
        let Some(zone) = self
            .zones
            .iter()
            .find(|zone| zone.origin_name().zone_of(name))
        else {
            return Some(Prepared::error(
                request,
                ResponseCode::Refused,
                edns,
                client_udp_max,
            ));
        };
        let rtype = query.query_type();
        if rtype == RecordType::AXFR {
            return None;
        }
        // `build_authoritative_response`, for what a `PkarrZone` returns.
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let compiled = match source {
            Source::Compiled => zone.lookup_compiled(name, rtype),
            Source::Parsed => None,
        };
        let (lookup, read) = match compiled {
            Some((Compiled::Answers(compiled), read)) => {
                return Some(Prepared {
                    metadata,
                    answers: Vec::new(),
                    authorities: Vec::new(),
                    edns,
                    client_udp_max,
                    read: Some(read),
                    compiled: Some(compiled),
                });
            }
            Some((Compiled::Lookup(lookup), read)) => (lookup, Some(read)),
            None => zone.lookup_local(name, rtype, query.original().name())?,
        };
        let (answers, authorities) = sections(zone, lookup, rtype, &mut metadata)?;
        Some(Prepared {
            metadata,
            answers,
            authorities,
            edns,
            client_udp_max,
            read,
            compiled: None,
        })
    }

    /// The `Catalog`'s answer to `query`, written to `out`, when it is a plain query
    /// ([`PlainQuery`]) for a stored key's compiled answers that fit: what
    /// [`DirectAnswers::prepare`] and [`Prepared::encode`] would write for it with
    /// [`Source::Compiled`], without hickory's parse. The key read, with its version before the
    /// read; `None` leaves `out` to be written by the caller's full path. The caller checks
    /// staleness first.
    pub(crate) fn answer_plain(
        &self,
        query: &[u8],
        protocol: Protocol,
        udp_payload_max: u16,
        out: &mut Vec<u8>,
    ) -> Option<Read> {
        let plain = PlainQuery::parse(query)?;
        // `prepare` leaves AXFR to the chain; the rest of it is what a plain query needs.
        if plain.rtype == RecordType::AXFR {
            return None;
        }
        let labels = plain.labels();
        // The most specific origin the name is in, as `prepare` picks it.
        let (zone, origin_at) = self
            .zones
            .iter()
            .find_map(|zone| Some((zone, zone.origin_at(labels)?)))?;
        let (compiled, read) = zone.lookup_compiled_labels(labels, origin_at, plain.rtype)?;
        let Compiled::Answers(compiled) = compiled else {
            return None;
        };
        let mut metadata = Metadata::response_from_request(&plain.header.metadata);
        metadata.authoritative = true;
        let edns = plain
            .edns_payload
            .map(|_| response_edns(self.advertised_payload));
        out.clear();
        encode_compiled(
            &metadata,
            plain.question,
            &compiled,
            edns.as_ref(),
            answer_size_max(
                protocol,
                client_udp_max(plain.edns_payload),
                udp_payload_max,
            ),
            out,
        )
        .ok()?;
        Some(read)
    }
}

impl Prepared {
    /// What `send_error_response` sends: the question, the rcode, and the response's OPT record.
    fn error(
        request: &MessageRequest,
        code: ResponseCode,
        edns: Option<Edns>,
        client_udp_max: u16,
    ) -> Prepared {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = code;
        Prepared {
            metadata,
            answers: Vec::new(),
            authorities: Vec::new(),
            edns,
            client_udp_max,
            read: None,
            compiled: None,
        }
    }

    /// Whether this is a compiled answer, which [`Prepared::encode`] refuses when it does not
    /// fit (the caller prepares it again from the parsed packet, whose records hickory drops to
    /// fit).
    pub(crate) fn is_compiled(&self) -> bool {
        self.compiled.is_some()
    }

    /// The response as hickory's response handle takes it; `queries` are the request's. Not for
    /// UDP: hickory would bound it by the OPT record's size, the server's, not the client's.
    pub(crate) fn response<'q>(
        &'q self,
        queries: &'q Queries,
    ) -> MessageResponse<
        'q,
        'q,
        impl Iterator<Item = &'q Record> + Send + 'q,
        impl Iterator<Item = &'q Record> + Send + 'q,
        impl Iterator<Item = &'q Record> + Send + 'q,
        impl Iterator<Item = &'q Record> + Send + 'q,
    > {
        MessageResponseBuilder::new(queries, self.edns.as_ref()).build(
            self.metadata,
            self.answers.iter(),
            self.authorities.iter(),
            iter::empty(),
            iter::empty(),
        )
    }

    /// Encodes the response into `out` as hickory's response handle does for `protocol`: over
    /// UDP within the client's EDNS size (512 bytes without EDNS) and `udp_payload_max`, records
    /// that do not fit dropped and TC set. An error is returned where hickory would log it and
    /// send SERVFAIL; the caller leaves that answer to the chain.
    pub(crate) fn encode(
        &self,
        queries: &Queries,
        protocol: Protocol,
        udp_payload_max: u16,
        out: &mut Vec<u8>,
    ) -> Result<(), ProtoError> {
        out.clear();
        let max_size = answer_size_max(protocol, self.client_udp_max, udp_payload_max);
        if let Some(compiled) = &self.compiled {
            return encode_compiled(
                &self.metadata,
                queries.as_bytes(),
                compiled,
                self.edns.as_ref(),
                max_size,
                out,
            );
        }
        let mut encoder = BinEncoder::new(out);
        encoder.set_max_size(max_size);
        self.response(queries).destructive_emit(&mut encoder)?;
        Ok(())
    }
}

/// A compiled positive answer in wire form, byte for byte what hickory's encoder writes for the
/// same records (`tests/udp_answers.rs` compares them):
/// - the header, and the question as the client sent it (hickory copies it too);
/// - the first record with the question's name as its owner, written out: hickory keeps the
///   question for compression as name, type and class together, which no owner name matches;
/// - every further record with a pointer to that first owner, as hickory's compression finds;
/// - the OPT record, when the query had one.
///
/// An error when the answer does not fit `max_size` (the caller answers from the parsed packet,
/// whose records hickory drops until it fits, setting TC) or the question's name is not plain
/// labels.
fn encode_compiled(
    metadata: &Metadata,
    question: &[u8],
    compiled: &CompiledAnswers,
    edns: Option<&Edns>,
    max_size: u16,
    out: &mut Vec<u8>,
) -> Result<(), ProtoError> {
    const HEADER_LEN: usize = 12;
    let name_len =
        plain_name_len(question).ok_or(ProtoError::Message("question name is not plain labels"))?;
    let header = Header {
        metadata: *metadata,
        counts: hickory_proto::op::HeaderCounts {
            queries: 1,
            answers: compiled.count,
            authorities: 0,
            additionals: u16::from(edns.is_some()),
        },
    };
    hickory_proto::serialize::binary::BinEncodable::emit(&header, &mut BinEncoder::new(out))?;
    out.extend_from_slice(question);
    // A pointer to the first answer's owner name.
    let owner_at = u16::try_from(HEADER_LEN + question.len())
        .ok()
        .filter(|at| *at < 0x4000)
        .ok_or(ProtoError::Message("question too long to point at"))?;
    let mut records = compiled.records();
    for index in 0..compiled.count {
        let record =
            next_record(&mut records).ok_or(ProtoError::Message("compiled records end early"))?;
        if index == 0 {
            out.extend_from_slice(&question[..name_len]);
        } else {
            out.extend_from_slice(&(0xC000 | owner_at).to_be_bytes());
        }
        // The record is compiled with the packet's TTL (bytes 4..8, after type and class); it
        // is served held within `dns.ttl_min`/`ttl_max`, as the parsed path serves it.
        let ttl_at = out.len() + 4;
        out.extend_from_slice(record);
        let signed = out
            .get(ttl_at..ttl_at + 4)
            .and_then(|ttl| <[u8; 4]>::try_from(ttl).ok())
            .map(u32::from_be_bytes)
            .ok_or(ProtoError::Message("compiled record without a TTL"))?;
        out[ttl_at..ttl_at + 4].copy_from_slice(&compiled.ttl.clamp(signed).to_be_bytes());
    }
    if let Some(edns) = edns {
        // Root owner, type OPT, the buffer size as class, extended rcode 0, version, no flags,
        // no options (`response_edns`).
        out.push(0);
        out.extend_from_slice(&u16::from(RecordType::OPT).to_be_bytes());
        out.extend_from_slice(&edns.max_payload().to_be_bytes());
        out.extend_from_slice(&[0, edns.version(), 0, 0, 0, 0]);
    }
    if out.len() > usize::from(max_size) {
        return Err(ProtoError::Message(
            "compiled answer exceeds the size limit",
        ));
    }
    Ok(())
}

/// The length of the name at the start of `question` (its labels and the root), if it is
/// written as plain labels with no compression pointer.
fn plain_name_len(question: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let len = usize::from(*question.get(at)?);
        if len == 0 {
            return Some(at + 1);
        }
        if len > 63 {
            return None;
        }
        at += 1 + len;
    }
}

/// The next record of compiled records (type, class, TTL, RDATA length, RDATA).
fn next_record<'a>(records: &mut &'a [u8]) -> Option<&'a [u8]> {
    let rdata_len = usize::from(u16::from_be_bytes([*records.get(8)?, *records.get(9)?]));
    let (record, rest) = records.split_at_checked(10 + rdata_len)?;
    *records = rest;
    Some(record)
}

/// The OPT record a query's OPT record is answered with: the server's UDP payload size
/// (`advertised_payload`, RFC 6891 §6.2.5: a responder's OPT carries its own size), version 0,
/// no options (no NSID is configured) and no DO bit (hickory-server is built without DNSSEC, so
/// it does not echo it). The `Catalog` echoes the client's size instead; the chain's answers
/// are given the server's by [`advertise_payload`].
fn response_edns(advertised_payload: u16) -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(advertised_payload);
    edns.set_version(EDNS_VERSION);
    edns
}

/// The largest UDP answer a client takes whose OPT record gave `query_payload` (`None`: no
/// OPT record): at least 512 bytes (RFC 6891 §6.2.5), 512 without EDNS (RFC 1035 §4.2.1).
fn client_udp_max(query_payload: Option<u16>) -> u16 {
    query_payload.map_or(512, |payload| payload.max(512))
}

/// Sets the UDP payload size in the OPT record of the wire message `message`, if it has one,
/// to `advertised_payload`: hickory's `Catalog` echoes the client's size (its answers are
/// already bounded by that), a responder's OPT record carries its own (RFC 6891 §6.2.5).
/// Nothing changes in a message that does not parse as far as its OPT record.
pub(crate) fn advertise_payload(message: &mut [u8], advertised_payload: u16) {
    if let Some(at) = opt_payload_at(message) {
        message[at..at + 2].copy_from_slice(&advertised_payload.to_be_bytes());
    }
}

/// Where the OPT record's payload size (its CLASS field) is in `message`: the header's counts
/// walked through the questions and records, names skipped label by label or at a pointer. Only
/// a record of the additional section owned by the root is the OPT record: a type 41 record
/// elsewhere (a packet's own) is never touched.
fn opt_payload_at(message: &[u8]) -> Option<usize> {
    fn skip_name(message: &[u8], mut at: usize) -> Option<usize> {
        loop {
            let len = *message.get(at)?;
            match len {
                0 => return Some(at + 1),
                // A compression pointer ends the name.
                0xC0..=0xFF => return Some(at + 2),
                1..=63 => at += 1 + usize::from(len),
                _ => return None,
            }
        }
    }
    let count = |at: usize| {
        Some(u16::from_be_bytes([
            *message.get(at)?,
            *message.get(at + 1)?,
        ]))
    };
    let (questions, answers, authorities, additionals) =
        (count(4)?, count(6)?, count(8)?, count(10)?);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(message, at)? + 4;
    }
    let additionals_from = u32::from(answers) + u32::from(authorities);
    for index in 0..additionals_from + u32::from(additionals) {
        let name_end = skip_name(message, at)?;
        let rtype = count(name_end)?;
        let rdata_len = usize::from(count(name_end + 8)?);
        let root_owner = name_end == at + 1;
        if index >= additionals_from && root_owner && rtype == u16::from(RecordType::OPT) {
            return (name_end + 4 <= message.len()).then_some(name_end + 2);
        }
        at = name_end + 10 + rdata_len;
    }
    None
}

/// The FORMERR hickory-server's listeners send for a message whose `header` parses and whose
/// rest does not: no question, no OPT record.
pub(crate) fn malformed_answer(header: &Header, protocol: Protocol) -> Option<Vec<u8>> {
    // An empty question section (hickory's `Queries::empty` is private to it).
    let no_queries = Queries::read(&mut BinDecoder::new(&[]), 0).ok()?;
    let response = MessageResponseBuilder::new(&no_queries, None)
        .error_msg(&header.metadata, ResponseCode::FormErr);
    let mut out = Vec::with_capacity(64);
    let mut encoder = BinEncoder::new(&mut out);
    encoder.set_max_size(answer_size_max(protocol, client_udp_max(None), u16::MAX));
    response.destructive_emit(&mut encoder).ok()?;
    Some(out)
}

/// The largest answer sent over `protocol` to a client that takes `client_udp_max` over UDP:
/// over UDP that and `dns.udp_payload_max`, else unbounded.
fn answer_size_max(protocol: Protocol, client_udp_max: u16, udp_payload_max: u16) -> u16 {
    match protocol {
        Protocol::Udp => client_udp_max.min(udp_payload_max),
        _ => u16::MAX,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::Name;
    use hickory_server::server::Request;
    use pkraft_store::Store;
    use pkraft_testkit::{iroh_packet, keypair};
    use pkraft_types::{Command, Payload, PublishItem};

    use super::*;
    use crate::record_cache::RecordCache;
    use crate::settings::Settings;

    fn query(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = 0x1234;
        message.add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
        if let Some(payload) = edns {
            let mut edns = Edns::new();
            edns.set_max_payload(payload);
            message.set_edns(edns);
        }
        message.to_vec().expect("encode")
    }

    /// What the full path writes: hickory's parse, `prepare` and `encode`.
    fn full_path(direct: &DirectAnswers, query: &[u8]) -> Option<Vec<u8>> {
        let src = SocketAddr::from(([127, 0, 0, 1], 53));
        let request = Request::from_bytes(query.to_vec(), src, Protocol::Udp).expect("parse");
        let prepared = direct.prepare(&request, Source::Compiled)?;
        let mut out = Vec::new();
        prepared
            .encode(&request.queries, Protocol::Udp, 1232, &mut out)
            .ok()?;
        Some(out)
    }

    /// A plain query for a stored key's compiled answers is answered without hickory's parse,
    /// byte for byte as the full path answers it (in any letter case, with and without EDNS);
    /// what the compiled answers do not answer is left to the full path.
    #[test]
    fn plain_queries_for_stored_keys_skip_the_parse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state.redb")).expect("open");
        let (stored, missing) = (keypair(1), keypair(2));
        let payload = iroh_packet(&stored, 1_000, &["192.0.2.1:1"]).to_relay_payload();
        let mut txn = store.begin_apply(false).expect("begin");
        txn.apply(&Command::Publish {
            leader_time_micros: 1_000,
            packets: vec![PublishItem {
                key: stored.public_key().to_bytes(),
                payload: Payload::new(payload).expect("length"),
            }],
        })
        .expect("apply");
        txn.commit(b"state").expect("commit");
        let settings = Settings {
            origins: vec!["pkarr.test".to_string(), "inner.pkarr.test".to_string()],
            ..Settings::default()
        };
        let zones = settings.zones().expect("zones");
        let records = Arc::new(RecordCache::new(store, 1 << 20));
        let direct = DirectAnswers::new(
            zones
                .origins
                .iter()
                .map(|origin| Arc::new(PkarrZone::new(origin, &zones, records.clone(), None, None)))
                .collect(),
            1232,
        );
        let (key, missing) = (stored.public_key().to_z32(), missing.public_key().to_z32());

        for (name, edns) in [
            (format!("_iroh.{key}.pkarr.test."), None),
            (format!("_iroh.{key}.pkarr.test."), Some(1232)),
            (
                format!("_IrOh.{}.PKARR.test.", key.to_uppercase()),
                Some(4096),
            ),
            (format!("_iroh.{key}.inner.pkarr.test."), Some(1232)),
        ] {
            let query = query(&name, RecordType::TXT, edns);
            let mut out = Vec::new();
            let read = direct.answer_plain(&query, Protocol::Udp, 1232, &mut out);
            assert_eq!(
                read.map(|(key, _)| key),
                Some(stored.public_key().to_bytes())
            );
            assert_eq!(Some(out), full_path(&direct, &query), "{name}");
        }
        for (name, rtype) in [
            (format!("_iroh.{missing}.pkarr.test."), RecordType::TXT),
            (format!("_iroh.{key}.pkarr.test."), RecordType::A),
            (format!("nothing.{key}.pkarr.test."), RecordType::TXT),
            ("pkarr.test.".to_string(), RecordType::SOA),
            ("example.com.".to_string(), RecordType::A),
        ] {
            let query = query(&name, rtype, Some(1232));
            let mut out = Vec::new();
            assert_eq!(
                direct.answer_plain(&query, Protocol::Udp, 1232, &mut out),
                None,
                "{name} {rtype}"
            );
        }
    }

    /// The OPT record of a message hickory encoded (compressed names, records in every
    /// section) is found and given the server's size; nothing else changes, and a message
    /// without one, or cut short, is left as it is.
    #[test]
    fn the_opt_record_advertises_the_servers_size() {
        use hickory_proto::rr::rdata::{SOA, TXT};
        use hickory_proto::rr::{Name, RData};

        let name = Name::from_ascii("_iroh.example.pkarr.test.").expect("name");
        let mut message = Message::new(7, MessageType::Response, OpCode::Query);
        message.add_query(Query::query(name.clone(), RecordType::TXT));
        for text in ["one", "two"] {
            message.add_answer(Record::from_rdata(
                name.clone(),
                300,
                RData::TXT(TXT::new(vec![text.to_string()])),
            ));
        }
        let apex = Name::from_ascii("pkarr.test.").expect("name");
        message.add_authority(Record::from_rdata(
            apex.clone(),
            60,
            RData::SOA(SOA::new(apex.clone(), apex, 1, 2, 3, 4, 5)),
        ));
        message.set_edns(Edns::new());
        let mut bytes = message.to_vec().expect("encode");
        let before = bytes.clone();

        advertise_payload(&mut bytes, 1232);
        let parsed = Message::from_vec(&bytes).expect("parse");
        assert_eq!(parsed.edns.as_ref().map(Edns::max_payload), Some(1232));
        let changed: Vec<usize> = (0..bytes.len())
            .filter(|&i| bytes[i] != before[i])
            .collect();
        assert!(changed.len() <= 2, "only the size changes: {changed:?}");

        for cut in [before.len() - 9, 12, 5] {
            let mut short = before[..cut].to_vec();
            let copy = short.clone();
            advertise_payload(&mut short, 1232);
            assert_eq!(short, copy, "cut at {cut}");
        }
        // A type 41 record of the packet's own in the answer section is not the OPT record.
        let mut with_own = message.clone();
        with_own.add_answer(Record::from_rdata(
            name.clone(),
            300,
            RData::OPT(hickory_proto::rr::rdata::OPT::default()),
        ));
        let own = with_own.to_vec().expect("encode");
        // The OPT record hickory writes last: root, type, then its size.
        assert_eq!(opt_payload_at(&own), Some(own.len() - 8));
        assert_eq!(opt_payload_at(&before), Some(before.len() - 8));

        message.edns = None;
        let mut plain = message.to_vec().expect("encode");
        let copy = plain.clone();
        advertise_payload(&mut plain, 1232);
        assert_eq!(plain, copy);
    }
}
