//! [`LocalAnswers`]: the answer hickory-server's `Catalog` gives a query, written from the local
//! replica in place: no task, no boxed future, no capture channel, and for a stored key's
//! records no packet parse and no `Record`. The fast case of the one way a query is answered
//! (`crate::answering`); what it cannot answer goes to hickory's handler chain.
//!
//! # What is answered here, and what goes to the chain
//! A query is answered here when the answer depends only on its header, its question, its OPT
//! record and the local replica:
//! - a standard query (opcode QUERY) with one question, in an origin: for a stored key, the
//!   answers the store compiled when it applied the packet ([`Section::Compiled`]), positive or
//!   NODATA/NXDOMAIN; for the apex, a name that is no key, a key not stored (with no `[dht]`),
//!   a packet whose records are not all compiled and a compiled answer too big for the client
//!   ([`Source::Records`]), the zone's local lookup ([`PkarrZone::lookup_local`], hickory
//!   `Record`s). Both are wrapped exactly as
//!   `Catalog::lookup` and `build_authoritative_response` wrap them (AA, the SOA in the authority
//!   section of NXDOMAIN and NODATA, the apex NS with a SOA answer);
//! - the `Catalog`'s error answers that need no zone: REFUSED for a name in no origin, FORMERR
//!   for a question count other than one, NOTIMP for opcodes other than QUERY and UPDATE, and
//!   BADVERS for EDNS versions above 0; and the SERVFAIL of a node too stale to answer
//!   ([`LocalAnswers::refuse`]).
//!
//! Everything else goes to the chain (`None`): responses sent as queries, UPDATE, AXFR, a key
//! the local replica does not hold while `[dht]` resolves (the DHT is asked, which waits), a
//! short-lived record's name, and a replica that could not be read (REFUSED, logged by the zone).
//!
//! # One encoder
//! Every answer here is written by hickory's own `emit_message_parts`, the function the
//! `Catalog`'s `MessageResponse` is written with, given the question as the client sent it
//! ([`Questions`]) and the sections: so an answer here is the `Catalog`'s byte for byte, with
//! its truncation (records that do not fit the client's size are dropped, TC set) and its
//! compression. A compiled section writes its records' bytes as hickory would write the same
//! records ([`Section::Compiled`]). `tests/udp_answers.rs` checks every query shape it knows
//! against hickory's own listener and `Catalog`, over UDP and TCP.
//!
//! A query is read in one of two ways: a plain query (`crate::plain_query`: what resolvers and
//! iroh send) in place, any other shape by hickory's parse. Both lead to the same lookup and the
//! same encoder.

use std::sync::Arc;

use hickory_proto::ProtoError;
use hickory_proto::op::{
    Edns, EmitAndCount, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode,
    emit_message_parts,
};
use hickory_proto::rr::{Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::net::xfer::Protocol;
use hickory_server::zone_handler::MessageRequest;

use crate::plain_query::PlainQuery;
use crate::zone::{Compiled, CompiledAnswers, Lookup, PkarrZone, Read};

/// The EDNS version hickory-server's `Catalog` speaks.
const EDNS_VERSION: u8 = 0;

/// Writes the `Catalog`'s answers from the zones; see the module docs.
pub(crate) struct LocalAnswers {
    /// Most specific origin first, so the first that contains a name is the one the `Catalog`
    /// picks.
    zones: Vec<Arc<PkarrZone>>,
    /// The OPT record of the answers, advertising `dns.udp_payload_max`.
    server_opt: ServerOpt,
    /// The largest UDP answer (`dns.udp_payload_max`).
    udp_payload_max: u16,
}

/// What [`LocalAnswers::answer_plain`] did with a query.
pub(crate) enum Plain {
    /// The answer is written.
    Answered(Written),
    /// A stored key's compiled answer, too big for the client: hickory's parse, then the zone's
    /// records ([`Source::Records`]), which hickory's encoder drops until the answer fits.
    TooBig,
    /// Not a plain query for a stored key's compiled lookup: hickory's parse reads it.
    Declined,
}

/// Where [`LocalAnswers::answer_request`] reads a stored key's records from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The compiled answers where they answer and fit whole, else the zone's records.
    Compiled,
    /// The zone's records (the parsed packet): for an answer whose compiled form does not fit.
    Records,
}

/// What a local answer was written from, for the answer cache and the counters.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Written {
    /// The key the answer read and its version before the read (`None`: it read no key, so it
    /// depends on the config alone).
    pub(crate) read: Option<Read>,
    /// Its records are the store's compiled answers.
    pub(crate) compiled: bool,
}

/// The question section as the client sent it: hickory's `Catalog` copies it into the answer.
struct Questions<'q> {
    bytes: &'q [u8],
    count: u16,
}

impl EmitAndCount for Questions<'_> {
    /// What hickory's `QueriesEmitAndCount` does: the bytes as they came, kept as a compression
    /// candidate in one piece (name, type and class together, which no later name matches). It
    /// is kept all the same: it takes one of the encoder's bounded number of candidates, so an
    /// answer with many names compresses exactly as hickory's does.
    fn emit(&mut self, encoder: &mut BinEncoder<'_>) -> Result<usize, ProtoError> {
        let start = encoder.offset();
        encoder.emit_vec(self.bytes)?;
        if self.count > 0 {
            encoder.store_label_pointer(start, start + self.bytes.len());
        }
        Ok(usize::from(self.count))
    }
}

/// The OPT record of this server's answers (see [`response_edns`]), made once.
struct ServerOpt {
    edns: Edns,
    /// `edns` as the record hickory's `emit_message_parts` makes of it for an rcode without
    /// high bits (all but BADVERS).
    record: Record,
}

/// The answer section of a local answer.
enum Section<'a> {
    /// Records of the zone's lookup, written by hickory's encoder.
    Records(Vec<Record>),
    /// A stored key's compiled records (type, class, TTL, RDATA length, RDATA each), written
    /// as hickory writes the same records: the first with `owner` (the question's name as the
    /// client sent it, in plain labels) written out, since the question kept for compression
    /// matches no name, and every further one with a pointer to that first owner.
    Compiled {
        owner: &'a [u8],
        answers: CompiledAnswers,
    },
}

/// Why a [`Response`] was not written.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// Its compiled records do not all fit the client's size ([`compiled_fits`]): it is written
    /// again from the zone's records, which hickory's encoder drops until it fits (TC).
    #[error("the compiled answer is too big for the client")]
    TooBig,
    /// hickory's encoder failed (hickory logs such an error and sends SERVFAIL).
    #[error(transparent)]
    Encode(#[from] ProtoError),
}

/// A response ready to write.
struct Response<'a> {
    metadata: Metadata,
    questions: Questions<'a>,
    answers: Section<'a>,
    authorities: Vec<Record>,
    /// The query had an OPT record, so the answer has one ([`ServerOpt`]).
    opt: bool,
    /// The largest answer the transport takes ([`answer_size_max`]).
    max_size: u16,
}

impl Response<'_> {
    /// Writes the response into `out` with hickory's `emit_message_parts`, within `max_size`:
    /// records that do not fit are dropped and TC set, as hickory's response handle does,
    /// except a stored key's compiled records, which are written whole or not at all
    /// ([`compiled_fits`]: hickory also leaves the bytes of the record that did not fit after
    /// the message, which only its own encoding of the records reproduces).
    fn write(self, server_opt: &ServerOpt, out: &mut Vec<u8>) -> Result<(), WriteError> {
        const HEADER_LEN: usize = 12;
        out.clear();
        let Response {
            metadata,
            mut questions,
            answers,
            authorities,
            opt,
            max_size,
        } = self;
        let mut encoder = BinEncoder::new(out);
        encoder.set_max_size(max_size);
        let mut authorities = authorities.iter();
        // The OPT record made once, as the additional record `emit_message_parts` would write
        // from `edns`; an rcode with high bits (BADVERS) has it write them into its own.
        let high_rcode = metadata.response_code.high() > 0;
        let edns = (opt && high_rcode).then_some(&server_opt.edns);
        let mut additionals = (opt && !high_rcode)
            .then_some(&server_opt.record)
            .into_iter();
        match answers {
            Section::Records(records) => emit_message_parts(
                &metadata,
                &mut questions,
                &mut records.iter(),
                &mut authorities,
                &mut additionals,
                edns,
                None,
                &mut encoder,
            )?,
            Section::Compiled { owner, answers } => {
                let room = usize::from(max_size).saturating_sub(HEADER_LEN + questions.bytes.len());
                if compiled_fits(owner, &answers, opt, room) != Some(true) {
                    return Err(WriteError::TooBig);
                }
                emit_message_parts(
                    &metadata,
                    &mut questions,
                    &mut CompiledSection {
                        owner,
                        answers: &answers,
                    },
                    &mut authorities,
                    &mut additionals,
                    edns,
                    None,
                    &mut encoder,
                )?
            }
        };
        Ok(())
    }
}

/// [`Section::Compiled`] as hickory's `emit_message_parts` takes a section.
struct CompiledSection<'a> {
    owner: &'a [u8],
    answers: &'a CompiledAnswers,
}

/// The length of an OPT record with no options.
const OPT_LEN: usize = 11;

/// Whether hickory's encoder writes all of `answers` with `owner` and, if `edns`, the OPT record
/// after them, in `room` bytes: when it does not, it drops records and sets TC, and that answer
/// is written from the zone's records ([`Source::Records`]). hickory writes each owner name
/// out before it looks for a pointer to it, so every record needs room for the whole owner
/// first. `None` when the records cannot be read.
fn compiled_fits(owner: &[u8], answers: &CompiledAnswers, edns: bool, room: usize) -> Option<bool> {
    let mut records = answers.records();
    let mut used = 0;
    for index in 0..answers.count {
        let record = next_record(&mut records)?.len();
        let owner_len = if index == 0 { owner.len() } else { 2 };
        if used + owner.len().max(owner_len + record) > room {
            return Some(false);
        }
        used += owner_len + record;
    }
    Some(!edns || used + OPT_LEN <= room)
}

impl EmitAndCount for CompiledSection<'_> {
    fn emit(&mut self, encoder: &mut BinEncoder<'_>) -> Result<usize, ProtoError> {
        // hickory keeps a name for compression only below this offset.
        const POINTER_MAX: usize = 0x3FFF;
        let owner_at = encoder.offset();
        let pointer = u16::try_from(owner_at)
            .ok()
            .filter(|_| owner_at + self.owner.len() < POINTER_MAX)
            .ok_or(ProtoError::Message(
                "the answer's owner is too far in to point at",
            ))?;
        let mut records = self.answers.records();
        for index in 0..self.answers.count {
            let record = next_record(&mut records)
                .ok_or(ProtoError::Message("compiled records end early"))?;
            if index == 0 {
                encoder.emit_vec(self.owner)?;
            } else {
                encoder.emit_u16(0xC000 | pointer)?;
            }
            // Type and class, then the TTL: compiled with the packet's, served held within
            // `dns.ttl_min`/`ttl_max` as the parsed records are.
            let (type_class, rest) = record
                .split_at_checked(4)
                .ok_or(ProtoError::Message("compiled record too short"))?;
            let (signed, rest) = rest
                .split_first_chunk::<4>()
                .ok_or(ProtoError::Message("compiled record without a TTL"))?;
            encoder.emit_vec(type_class)?;
            encoder.emit_u32(self.answers.ttl.clamp(u32::from_be_bytes(*signed)))?;
            encoder.emit_vec(rest)?;
        }
        Ok(usize::from(self.answers.count))
    }
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

/// The sections of a stored key's compiled lookup: its records, or the SOA of NODATA and
/// NXDOMAIN (setting NXDOMAIN in `metadata`).
fn compiled_sections<'a>(
    zone: &PkarrZone,
    compiled: Compiled,
    owner: &'a [u8],
    metadata: &mut Metadata,
) -> (Section<'a>, Vec<Record>) {
    match compiled {
        Compiled::Answers(answers) => (Section::Compiled { owner, answers }, Vec::new()),
        Compiled::Lookup(lookup) => {
            if matches!(lookup, Lookup::NxDomain) {
                metadata.response_code = ResponseCode::NXDomain;
            }
            (
                Section::Records(Vec::new()),
                vec![zone.negative_soa().clone()],
            )
        }
    }
}

impl LocalAnswers {
    /// `udp_payload_max`: `dns.udp_payload_max`, the largest UDP answer and the size the
    /// answers' OPT records advertise.
    pub(crate) fn new(mut zones: Vec<Arc<PkarrZone>>, udp_payload_max: u16) -> Self {
        zones.sort_by_key(|zone| std::cmp::Reverse(zone.origin_name().num_labels()));
        LocalAnswers {
            zones,
            server_opt: ServerOpt::new(udp_payload_max),
            udp_payload_max,
        }
    }

    /// Writes the `Catalog`'s answer to the plain query `query` ([`PlainQuery`]) into `out`
    /// when it is a stored key's compiled lookup, without hickory's parse.
    pub(crate) fn answer_plain(
        &self,
        query: &[u8],
        protocol: Protocol,
        out: &mut Vec<u8>,
    ) -> Plain {
        match self.write_plain(query, protocol, out) {
            Some(Ok(written)) => Plain::Answered(written),
            Some(Err(WriteError::TooBig)) => Plain::TooBig,
            Some(Err(WriteError::Encode(_))) | None => Plain::Declined,
        }
    }

    /// [`LocalAnswers::answer_plain`]; `None` when the query is not plain or not a stored key's.
    fn write_plain(
        &self,
        query: &[u8],
        protocol: Protocol,
        out: &mut Vec<u8>,
    ) -> Option<Result<Written, WriteError>> {
        let plain = PlainQuery::parse(query)?;
        // AXFR is the chain's.
        if plain.rtype == RecordType::AXFR {
            return None;
        }
        let labels = plain.labels();
        // The most specific origin the name is in, as `answer_request` picks it.
        let (zone, origin_at) = self
            .zones
            .iter()
            .find_map(|zone| Some((zone, zone.origin_at(labels)?)))?;
        let (compiled, read) = zone.lookup_compiled_labels(labels, origin_at, plain.rtype)?;
        let mut metadata = Metadata::response_from_request(&plain.header.metadata);
        metadata.authoritative = true;
        let owner = plain.question.get(..plain_name_len(plain.question)?)?;
        let is_compiled = matches!(compiled, Compiled::Answers(_));
        let (answers, authorities) = compiled_sections(zone, compiled, owner, &mut metadata);
        let response = Response {
            metadata,
            questions: Questions {
                bytes: plain.question,
                count: 1,
            },
            answers,
            authorities,
            opt: plain.edns_payload.is_some(),
            max_size: self.max_size(protocol, plain.edns_payload),
        };
        Some(response.write(&self.server_opt, out).map(|()| Written {
            read: Some(read),
            compiled: is_compiled,
        }))
    }

    /// Writes the `Catalog`'s answer to `request` into `out`, or `None` if only the chain can
    /// give it (module docs). The caller has checked that the node may answer
    /// ([`crate::freshness::FreshnessBound`]). `source`: [`Source::Records`] when the plain path
    /// found the compiled answer too big ([`Plain::TooBig`]).
    pub(crate) fn answer_request(
        &self,
        request: &MessageRequest,
        protocol: Protocol,
        source: Source,
        out: &mut Vec<u8>,
    ) -> Option<Written> {
        let (response, written) = self.respond(request, protocol, source)?;
        match response.write(&self.server_opt, out) {
            Ok(()) => Some(written),
            // hickory drops what does not fit and sets TC: the zone's records, written by it.
            Err(WriteError::TooBig) => {
                let (response, written) = self.respond(request, protocol, Source::Records)?;
                response.write(&self.server_opt, out).ok()?;
                Some(written)
            }
            Err(WriteError::Encode(_)) => None,
        }
    }

    /// The response [`LocalAnswers::answer_request`] writes.
    fn respond<'r>(
        &self,
        request: &'r MessageRequest,
        protocol: Protocol,
        source: Source,
    ) -> Option<(Response<'r>, Written)> {
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let client_payload = request.edns.as_ref().map(Edns::max_payload);
        if let Some(query_edns) = &request.edns
            && query_edns.version() > EDNS_VERSION
        {
            return Some(self.error(request, ResponseCode::BADVERS, protocol));
        }
        match request.metadata.op_code {
            OpCode::Query => {}
            OpCode::Update => return None,
            _ => return Some(self.error(request, ResponseCode::NotImp, protocol)),
        }
        let [query] = request.queries.queries() else {
            return Some(self.error(request, ResponseCode::FormErr, protocol));
        };
        let name = query.name();
        let Some(zone) = self
            .zones
            .iter()
            .find(|zone| zone.origin_name().zone_of(name))
        else {
            return Some(self.error(request, ResponseCode::Refused, protocol));
        };
        let rtype = query.query_type();
        if rtype == RecordType::AXFR {
            return None;
        }
        // `build_authoritative_response`, for what a `PkarrZone` returns.
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let question = request.queries.as_bytes();
        let owner = plain_name_len(question).and_then(|len| question.get(..len));
        // The compiled answers need the owner in plain labels; a question written with a
        // compression pointer takes the zone's records, whose names hickory writes.
        let compiled = owner
            .filter(|_| source == Source::Compiled)
            .and_then(|owner| Some((zone.lookup_compiled(name, rtype)?, owner)));
        let (answers, authorities, read, is_compiled) = match compiled {
            Some(((compiled, read), owner)) => {
                let is_compiled = matches!(compiled, Compiled::Answers(_));
                let (answers, authorities) =
                    compiled_sections(zone, compiled, owner, &mut metadata);
                (answers, authorities, Some(read), is_compiled)
            }
            None => {
                let (lookup, read) = zone.lookup_local(name, rtype, query.original().name())?;
                let (answers, authorities) = sections(zone, lookup, rtype, &mut metadata)?;
                (Section::Records(answers), authorities, read, false)
            }
        };
        let response = Response {
            metadata,
            questions: Questions {
                bytes: question,
                count: 1,
            },
            answers,
            authorities,
            opt: request.edns.is_some(),
            max_size: self.max_size(protocol, client_payload),
        };
        Some((
            response,
            Written {
                read,
                compiled: is_compiled,
            },
        ))
    }

    /// The SERVFAIL of a node too stale to answer (`dns.max_stale`, or catching up after a
    /// crash), written into `out`: the question, and an OPT record if the query had one
    /// (RFC 6891 §7). When that does not fit (the question section alone exceeds the client's
    /// size), what hickory's response handle sends when its encoder fails: the header alone,
    /// opcode QUERY, SERVFAIL.
    pub(crate) fn refuse(&self, request: &MessageRequest, protocol: Protocol, out: &mut Vec<u8>) {
        let (response, _) = self.error(request, ResponseCode::ServFail, protocol);
        if let Err(error) = response.write(&self.server_opt, out) {
            tracing::debug!(%error, "could not encode a SERVFAIL answer; sending its header");
            out.clear();
            let mut metadata =
                Metadata::new(request.metadata.id, MessageType::Response, OpCode::Query);
            metadata.response_code = ResponseCode::ServFail;
            let header = Header {
                metadata,
                counts: HeaderCounts::default(),
            };
            // Twelve bytes into a vector with no size bound: nothing to fail on, but a partial
            // header is never sent.
            if BinEncodable::emit(&header, &mut BinEncoder::new(out)).is_err() {
                out.clear();
            }
        }
    }

    /// What `send_error_response` sends: the question, the rcode, and the response's OPT record
    /// (with the rcode's high bits, which `emit_message_parts` writes into it).
    fn error<'r>(
        &self,
        request: &'r MessageRequest,
        code: ResponseCode,
        protocol: Protocol,
    ) -> (Response<'r>, Written) {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = code;
        let questions = &request.queries;
        let response = Response {
            metadata,
            questions: Questions {
                bytes: questions.as_bytes(),
                count: u16::try_from(questions.queries().len()).unwrap_or(u16::MAX),
            },
            answers: Section::Records(Vec::new()),
            authorities: Vec::new(),
            opt: request.edns.is_some(),
            max_size: self.max_size(protocol, request.edns.as_ref().map(Edns::max_payload)),
        };
        let written = Written {
            read: None,
            compiled: false,
        };
        (response, written)
    }

    /// The FORMERR hickory-server's listeners send for a message whose `header` parses and
    /// whose rest does not: no question, no OPT record.
    pub(crate) fn malformed(&self, header: &Header, protocol: Protocol) -> Option<Vec<u8>> {
        let mut metadata = Metadata::response_from_request(&header.metadata);
        metadata.response_code = ResponseCode::FormErr;
        let mut out = Vec::with_capacity(64);
        Response {
            metadata,
            questions: Questions {
                bytes: &[],
                count: 0,
            },
            answers: Section::Records(Vec::new()),
            authorities: Vec::new(),
            opt: false,
            max_size: answer_size_max(protocol, client_udp_max(None), u16::MAX),
        }
        .write(&self.server_opt, &mut out)
        .ok()?;
        Some(out)
    }

    /// The largest answer over `protocol` to a client whose OPT record gave `client_payload`
    /// (`None`: no OPT record).
    fn max_size(&self, protocol: Protocol, client_payload: Option<u16>) -> u16 {
        answer_size_max(
            protocol,
            client_udp_max(client_payload),
            self.udp_payload_max,
        )
    }
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

impl ServerOpt {
    fn new(advertised_payload: u16) -> ServerOpt {
        let edns = response_edns(advertised_payload);
        let record = Record::from(&edns);
        ServerOpt { edns, record }
    }
}

/// The empty truncated answer to `query`, what a response rate limit slips (`crate::rrl`): its
/// ID, opcode, RD flag, question and (if it had one) a bare OPT record advertising
/// `advertised_payload` (the server's UDP size, as [`response_edns`] writes it for every
/// answer here), TC=1, nothing else; written by hickory's `Message` encoder. Never longer than
/// the query. `None` if `query` is not a query hickory can parse.
pub fn truncated_answer(query: &[u8], advertised_payload: u16) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
    answer.metadata.truncation = true;
    answer.metadata.recursion_desired = query.metadata.recursion_desired;
    answer.add_queries(query.queries.iter().cloned());
    // RFC 6891: a query with OPT gets OPT back (a fresh one: nothing of the query's options).
    answer.edns = query
        .edns
        .as_ref()
        .map(|_| response_edns(advertised_payload));
    answer.to_vec().ok()
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
    use pkraft_state::Store;
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

    fn answered(plain: Plain) -> Option<Written> {
        match plain {
            Plain::Answered(written) => Some(written),
            Plain::TooBig | Plain::Declined => None,
        }
    }

    /// What the full path writes: hickory's parse, then `answer_request`.
    fn full_path(local: &LocalAnswers, query: &[u8]) -> Option<Vec<u8>> {
        let src = SocketAddr::from(([127, 0, 0, 1], 53));
        let request = Request::from_bytes(query.to_vec(), src, Protocol::Udp).expect("parse");
        let mut out = Vec::new();
        local.answer_request(&request, Protocol::Udp, Source::Compiled, &mut out)?;
        Some(out)
    }

    /// A plain query for a stored key's compiled answers is answered without hickory's parse,
    /// byte for byte as the full path answers it (in any letter case, with and without EDNS,
    /// positive, NODATA and NXDOMAIN); what the compiled answers do not answer is left to the
    /// full path.
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
        let local = LocalAnswers::new(
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
            let written = answered(local.answer_plain(&query, Protocol::Udp, &mut out));
            assert_eq!(
                written.and_then(|written| written.read).map(|(key, _)| key),
                Some(stored.public_key().to_bytes())
            );
            assert!(written.is_some_and(|written| written.compiled), "{name}");
            assert_eq!(Some(out), full_path(&local, &query), "{name}");
        }
        // NODATA and NXDOMAIN at a stored key: from the compiled lookup, with the SOA.
        for (name, rtype, rcode) in [
            (
                format!("_iroh.{key}.pkarr.test."),
                RecordType::A,
                ResponseCode::NoError,
            ),
            (
                format!("nothing.{key}.pkarr.test."),
                RecordType::TXT,
                ResponseCode::NXDomain,
            ),
        ] {
            let query = query(&name, rtype, Some(1232));
            let mut out = Vec::new();
            let written = answered(local.answer_plain(&query, Protocol::Udp, &mut out));
            assert!(
                written.is_some_and(|written| !written.compiled && written.read.is_some()),
                "{name} {rtype}"
            );
            let answer = Message::from_vec(&out).expect("parse");
            assert_eq!(answer.metadata.response_code, rcode, "{name} {rtype}");
            assert_eq!(answer.authorities.len(), 1, "the SOA: {name} {rtype}");
            assert_eq!(Some(out), full_path(&local, &query), "{name} {rtype}");
        }
        for (name, rtype) in [
            (format!("_iroh.{missing}.pkarr.test."), RecordType::TXT),
            ("pkarr.test.".to_string(), RecordType::SOA),
            ("example.com.".to_string(), RecordType::A),
        ] {
            let query = query(&name, rtype, Some(1232));
            let mut out = Vec::new();
            assert!(
                matches!(
                    local.answer_plain(&query, Protocol::Udp, &mut out),
                    Plain::Declined
                ),
                "{name} {rtype}"
            );
        }
    }

    /// A stale node's SERVFAIL whose questions alone exceed the client's size is the header
    /// alone, opcode QUERY, as hickory's response handle sends when its encoder fails; one that
    /// fits echoes the question and has the server's OPT record.
    #[test]
    fn a_servfail_too_big_for_the_client_is_its_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state.redb")).expect("open");
        let settings = Settings {
            origins: vec!["pkarr.test".to_string()],
            ..Settings::default()
        };
        let zones = settings.zones().expect("zones");
        let records = Arc::new(RecordCache::new(store, 1 << 20));
        let origin = &zones.origins[0];
        let local = LocalAnswers::new(
            vec![Arc::new(PkarrZone::new(
                origin, &zones, records, None, None,
            ))],
            1232,
        );
        let src = SocketAddr::from(([127, 0, 0, 1], 53));
        let one = query("_iroh.example.pkarr.test.", RecordType::TXT, Some(512));
        let request = Request::from_bytes(one, src, Protocol::Udp).expect("parse");
        let mut out = Vec::new();
        local.refuse(&request, Protocol::Udp, &mut out);
        let answer = Message::from_vec(&out).expect("parse");
        assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(answer.queries.len(), 1);
        assert_eq!(answer.edns.as_ref().map(Edns::max_payload), Some(1232));

        let mut many = Message::query();
        many.metadata.id = 0x4321;
        for n in 0..40 {
            let name = format!("_iroh.a-long-label-number-{n:02}.pkarr.test.");
            many.add_query(Query::query(
                Name::from_ascii(&name).expect("name"),
                RecordType::TXT,
            ));
        }
        let mut edns = Edns::new();
        edns.set_max_payload(512);
        many.set_edns(edns);
        let wire = many.to_vec().expect("encode");
        assert!(wire.len() > 512);
        let request = Request::from_bytes(wire, src, Protocol::Udp).expect("parse");
        local.refuse(&request, Protocol::Udp, &mut out);
        assert_eq!(out.len(), 12, "the header alone");
        let answer = Message::from_vec(&out).expect("parse");
        assert_eq!(answer.metadata.id, 0x4321);
        assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(answer.metadata.op_code, OpCode::Query);
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

    #[test]
    fn a_truncated_answer_is_no_longer_than_its_query() {
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(
            Name::from_ascii("_iroh.example.pkarr.test.").expect("name"),
            RecordType::TXT,
        ));
        let bytes = query.to_vec().expect("encode");
        let answer = truncated_answer(&bytes, 1232).expect("answer");
        assert!(answer.len() <= bytes.len());
        let answer = Message::from_vec(&answer).expect("decode");
        assert_eq!(answer.metadata.id, query.metadata.id);
        assert_eq!(answer.metadata.message_type, MessageType::Response);
        assert!(answer.metadata.truncation);
        assert!(answer.metadata.recursion_desired);
        assert_eq!(answer.queries, query.queries);
        assert!(answer.answers.is_empty());
        assert!(
            answer.edns.is_none(),
            "no OPT record to a query without one"
        );
        // A response is not answered, and garbage is not either.
        assert!(truncated_answer(&answer.to_vec().expect("encode"), 1232).is_none());
        assert!(truncated_answer(&[1, 2], 1232).is_none());
    }

    #[test]
    fn a_truncated_answer_advertises_the_servers_size() {
        let mut query = Message::query();
        query.add_query(Query::query(
            Name::from_ascii("_iroh.example.pkarr.test.").expect("name"),
            RecordType::TXT,
        ));
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        query.edns = Some(edns);
        let answer = truncated_answer(&query.to_vec().expect("encode"), 1400).expect("answer");
        let answer = Message::from_vec(&answer).expect("decode");
        assert_eq!(answer.edns.map(|edns| edns.max_payload()), Some(1400));
    }
}
