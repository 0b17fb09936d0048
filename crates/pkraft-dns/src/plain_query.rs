//! [`PlainQuery`]: the shape nearly every query to an authoritative server has, read straight
//! from its bytes with no allocation, so that a query for a stored key's compiled answers
//! (`crate::local`) needs neither hickory's parse nor its owned names.
//!
//! Why: hickory's `Request::from_bytes` copies the message, builds an owned and a lower-cased
//! name, a vector of queries and one of labels, about 5 % of a never-asked query's CPU
//! (docs/BENCHMARKS.md). It stays the path for everything this module declines.
//!
//! What is plain: a standard query (QR clear, opcode QUERY) with exactly one question of class
//! IN whose name is written as labels (no compression pointer), no answer or authority records,
//! and at most one additional record, an EDNS version 0 OPT record at the root with no options,
//! no extended rcode and no flag but DO. Nothing may follow. For these, hickory's parse yields
//! exactly the header, question and buffer size read here, so an answer built from them is the
//! one the `Catalog` builds (`tests/udp_answers.rs` compares them); anything else is `None`, and
//! the caller takes hickory's path.

use hickory_proto::op::{Header, MessageType, OpCode};
use hickory_proto::rr::{DNSClass, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

/// A DNS header's length.
const HEADER_LEN: usize = 12;
/// Labels a name can have: 255 bytes, at least two per label and one for the root.
const LABELS_MAX: usize = 127;
/// The longest name in wire form (RFC 1035 §2.3.4).
const NAME_LEN_MAX: usize = 255;
/// The DO bit of an OPT record's flags (RFC 3225), which the `Catalog` does not echo.
const FLAG_DNSSEC_OK: u16 = 0x8000;

/// A plain query; see the module docs.
pub(crate) struct PlainQuery<'q> {
    pub(crate) header: Header,
    /// The question as the client wrote it: name, type and class.
    pub(crate) question: &'q [u8],
    labels: [&'q [u8]; LABELS_MAX],
    label_count: usize,
    pub(crate) rtype: RecordType,
    /// The OPT record's buffer size, if the query has one.
    pub(crate) edns_payload: Option<u16>,
}

impl<'q> PlainQuery<'q> {
    /// `message` read as a plain query, or `None` if it is not one.
    pub(crate) fn parse(message: &'q [u8]) -> Option<Self> {
        let header = Header::read(&mut BinDecoder::new(message.get(..HEADER_LEN)?)).ok()?;
        let counts = header.counts;
        if header.metadata.message_type != MessageType::Query
            || header.metadata.op_code != OpCode::Query
            || counts.queries != 1
            || counts.answers != 0
            || counts.authorities != 0
            || counts.additionals > 1
        {
            return None;
        }
        let mut labels = [&[][..]; LABELS_MAX];
        let mut label_count = 0;
        let mut at = HEADER_LEN;
        loop {
            let len = usize::from(*message.get(at)?);
            if len == 0 {
                at += 1;
                break;
            }
            // 64 and above: a compression pointer or an extended label type.
            if len > 63 || label_count == LABELS_MAX {
                return None;
            }
            *labels.get_mut(label_count)? = message.get(at + 1..at + 1 + len)?;
            label_count += 1;
            at += 1 + len;
        }
        if at - HEADER_LEN > NAME_LEN_MAX {
            return None;
        }
        let rtype = RecordType::from(read_u16(message, at)?);
        if DNSClass::from(read_u16(message, at + 2)?) != DNSClass::IN {
            return None;
        }
        let question = message.get(HEADER_LEN..at + 4)?;
        let rest = message.get(at + 4..)?;
        let edns_payload = match counts.additionals {
            0 if rest.is_empty() => None,
            1 => Some(plain_opt(rest)?),
            _ => return None,
        };
        Some(PlainQuery {
            header,
            question,
            labels,
            label_count,
            rtype,
            edns_payload,
        })
    }

    /// The question name's labels, leftmost first, as the client wrote them.
    pub(crate) fn labels(&self) -> &[&'q [u8]] {
        &self.labels[..self.label_count]
    }
}

/// The buffer size of `record` if it is exactly a plain OPT record (module docs): root owner,
/// type OPT, the buffer size as class, extended rcode and version 0, flags, no RDATA.
fn plain_opt(record: &[u8]) -> Option<u16> {
    let [
        0,
        type_hi,
        type_lo,
        size_hi,
        size_lo,
        0,
        0,
        flags_hi,
        flags_lo,
        0,
        0,
    ] = *record
    else {
        return None;
    };
    let flags = u16::from_be_bytes([flags_hi, flags_lo]);
    (u16::from_be_bytes([type_hi, type_lo]) == u16::from(RecordType::OPT)
        && flags & !FLAG_DNSSEC_OK == 0)
        .then(|| u16::from_be_bytes([size_hi, size_lo]))
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::Name;
    use hickory_proto::rr::rdata::opt::{EdnsOption, NSIDPayload};

    use super::*;

    /// An OPT record with no options: root owner, type, class, TTL, RDATA length.
    const OPT_LEN: usize = 1 + 2 + 2 + 4 + 2;

    fn query(name: &str, rtype: RecordType, edns: Option<Edns>) -> Message {
        let mut message = Message::query();
        message.metadata.id = 7;
        // `from_ascii` keeps the letter case (`from_str` lower-cases).
        message.add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
        if let Some(edns) = edns {
            message.set_edns(edns);
        }
        message
    }

    fn wire(message: &Message) -> Vec<u8> {
        message.to_vec().expect("encode")
    }

    fn edns(payload: u16) -> Edns {
        let mut edns = Edns::new();
        edns.set_max_payload(payload);
        edns
    }

    /// The shapes a resolver sends are plain, with their parts read as hickory reads them.
    #[test]
    fn plain_queries_are_read_as_hickory_reads_them() {
        for (edns, payload) in [(None, None), (Some(edns(1232)), Some(1232))] {
            let message = query("_iroh.Key.pkarr.test.", RecordType::TXT, edns);
            let bytes = wire(&message);
            let plain = PlainQuery::parse(&bytes).expect("plain");
            assert_eq!(plain.header.metadata, message.metadata);
            assert_eq!(plain.rtype, RecordType::TXT);
            assert_eq!(plain.edns_payload, payload);
            assert_eq!(
                plain.labels(),
                [&b"_iroh"[..], &b"Key"[..], &b"pkarr"[..], &b"test"[..]]
            );
            let question_len = bytes.len() - 12 - if payload.is_some() { OPT_LEN } else { 0 };
            assert_eq!(plain.question, &bytes[12..12 + question_len]);
        }
        let mut dnssec = edns(4096);
        dnssec.set_dnssec_ok(true);
        let bytes = wire(&query("a.b.", RecordType::A, Some(dnssec)));
        assert_eq!(
            PlainQuery::parse(&bytes).expect("DO").edns_payload,
            Some(4096)
        );
    }

    /// Every shape outside the module docs' list is declined, for hickory's parse to handle.
    #[test]
    fn other_shapes_are_not_plain() {
        let plain = wire(&query(
            "_iroh.key.pkarr.test.",
            RecordType::TXT,
            Some(edns(1232)),
        ));
        assert!(PlainQuery::parse(&plain).is_some());
        let mut declined: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut response = query("a.b.", RecordType::A, None);
        response.metadata.message_type = MessageType::Response;
        declined.push(("a response", wire(&response)));
        let mut notify = query("a.b.", RecordType::SOA, None);
        notify.metadata.op_code = OpCode::Notify;
        declined.push(("NOTIFY", wire(&notify)));
        let mut two = query("a.b.", RecordType::A, None);
        two.add_query(Query::query(
            Name::from_ascii("c.d.").expect("name"),
            RecordType::A,
        ));
        declined.push(("two questions", wire(&two)));
        let mut chaos = query("a.b.", RecordType::TXT, None);
        chaos.queries[0].set_query_class(DNSClass::CH);
        declined.push(("class CH", wire(&chaos)));
        let mut nsid = edns(1232);
        nsid.options_mut().insert(EdnsOption::NSID(
            NSIDPayload::new(Vec::new()).expect("nsid"),
        ));
        declined.push((
            "an EDNS option",
            wire(&query("a.b.", RecordType::A, Some(nsid))),
        ));
        let mut version = edns(1232);
        version.set_version(1);
        declined.push((
            "EDNS version 1",
            wire(&query("a.b.", RecordType::A, Some(version))),
        ));
        let mut trailing = plain.clone();
        trailing.push(0);
        declined.push(("a byte after the message", trailing));
        declined.push(("cut short", plain[..plain.len() - 1].to_vec()));
        let mut flag = plain.clone();
        let flags_at = flag.len() - 4;
        flag[flags_at] = 0x40;
        declined.push(("an unknown OPT flag", flag));
        let mut rcode = plain.clone();
        let rcode_at = rcode.len() - 6;
        rcode[rcode_at] = 1;
        declined.push(("an extended rcode", rcode));
        let mut owner = plain.clone();
        let opt_at = owner.len() - OPT_LEN;
        owner[opt_at] = 1;
        declined.push(("an OPT record not at the root", owner));
        // The question's name as a pointer to the header: hickory follows it, this does not.
        let mut pointer = wire(&query("a.", RecordType::A, None));
        pointer.splice(12..15, [0xc0, 0x00]);
        declined.push(("a compression pointer", pointer));
        for (what, bytes) in declined {
            assert!(
                PlainQuery::parse(&bytes).is_none(),
                "{what} was read as plain"
            );
        }
    }
}
