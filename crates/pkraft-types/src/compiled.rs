//! [`compile`]: a stored packet's DNS records in the wire form an answer carries them in, made
//! once when the packet is applied, so that a DNS query for a name nobody asked lately neither
//! parses the packet nor encodes its records ([`CompiledPacket`] reads it in place).
//!
//! # What an answer needs, and what it does not
//! The DNS frontend answers `<sub>.<z32>.<origin>` with the packet's records whose owner is
//! `<sub>.<z32>`, their owner rewritten to the query name. So the compiled form groups the
//! records by `<sub>` (lower-cased, as the frontend compares names), and by type within a name,
//! both in the order of first appearance in the packet (an `ANY` query gets the first type at
//! the name, RFC 8482). Each record is kept as hickory's encoder writes it after the owner name:
//! type, class, TTL, RDATA length, RDATA. The owner is left out: the frontend writes the query
//! name in front of the first record and a compression pointer to it in front of the others,
//! as hickory's encoder does.
//!
//! Only records whose RDATA holds no domain name are compiled (A, AAAA, TXT: what iroh and
//! pkarr publish). hickory compresses names in RDATA against whatever the message holds before
//! them, so their bytes depend on the answer around them. A packet with any other record is
//! compiled as [`CompiledPacket::is_complete`] false, and the frontend answers it from the
//! parsed packet as before.
//!
//! # Format (version 1, big-endian)
//! ```text
//! version u8 = 1 | complete u8 (0 or 1) | names u16
//! per name:  sub length u8 | sub (wire labels, lower case, without the key label) | types u8
//! per type:  type u16 | records u16 | bytes u16 | records (type, class, ttl, rdlength, rdata)
//! ```
//! Nothing follows the last name. The store keeps a checksum beside it: this module trusts its
//! input only as far as never reading out of bounds (a malformed form is an error, not a panic).

use hickory_proto::rr::{Name, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

use crate::KeyBytes;
use crate::payload::Payload;

/// The format version this build writes and reads.
///
/// A change to what [`compile`] writes for some packet (this format, or hickory's encoding of a
/// record) needs a new version and a migration of the state that compiles every row again: a
/// replica keeps a stored row as it is when a republish carries the same DNS message
/// (pkraft-state's `apply.rs`, `kept_answers_row`, which checks this version only), so a row
/// of the old output would otherwise stay until the scrub found it.
const VERSION: u8 = 1;

/// Whether `form` is of the format version this build writes (its first byte).
pub fn is_current_version(form: &[u8]) -> bool {
    form.first() == Some(&VERSION)
}

/// The most records one name and type may have to be compiled: the frontend's answers stay
/// within what hickory compresses the same way (its encoder stops compressing after 120 names,
/// and a UDP answer holds far fewer).
const RECORDS_PER_TYPE_MAX: usize = 64;

/// Why a stored form cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompiledError {
    #[error("compiled answers: {0}")]
    Malformed(&'static str),
}

/// The compiled form of `payload`, the packet stored for `key`. A packet whose DNS message does
/// not parse (never one that was verified) is compiled as incomplete, so that the parsed path,
/// which reports it, answers for it.
pub fn compile(key: &KeyBytes, payload: &Payload) -> Vec<u8> {
    match crate::packet::dns_records(payload) {
        Ok(records) => {
            let key_label = base32::encode(base32::Alphabet::Z, key);
            compile_records(key_label.as_bytes(), &records)
        }
        Err(_) => NOT_COMPILED.to_vec(),
    }
}

/// The form of a packet the frontend must answer from its parsed records.
const NOT_COMPILED: [u8; 4] = [VERSION, 0, 0, 0];

/// One name's records by type, in the order they first appear.
struct CompiledName {
    sub: Vec<u8>,
    types: Vec<(u16, Vec<Vec<u8>>)>,
}

fn compile_records(key_label: &[u8], records: &[Record]) -> Vec<u8> {
    let mut names: Vec<CompiledName> = Vec::new();
    let mut complete = true;
    for record in records {
        let Some(relative) = labels_below_key(&record.name, key_label) else {
            continue;
        };
        let (Some(sub), Some(encoded)) = (sub_wire(&relative), encode_after_owner(record)) else {
            complete = false;
            break;
        };
        let rtype = u16::from(record.record_type());
        let name = match names.iter_mut().position(|name| name.sub == sub) {
            Some(at) => &mut names[at],
            None => {
                names.push(CompiledName {
                    sub,
                    types: Vec::new(),
                });
                names.last_mut().expect("just pushed")
            }
        };
        match name.types.iter_mut().find(|(t, _)| *t == rtype) {
            Some((_, records)) => records.push(encoded),
            None => name.types.push((rtype, vec![encoded])),
        }
    }
    let fits = |names: &[CompiledName]| {
        u16::try_from(names.len()).is_ok()
            && names.iter().all(|name| {
                u8::try_from(name.types.len()).is_ok()
                    && name.types.iter().all(|(_, records)| {
                        records.len() <= RECORDS_PER_TYPE_MAX
                            && u16::try_from(records.iter().map(Vec::len).sum::<usize>()).is_ok()
                    })
            })
    };
    if !complete || !fits(&names) {
        return NOT_COMPILED.to_vec();
    }
    let mut out = vec![VERSION, 1];
    push_u16(&mut out, names.len());
    for name in &names {
        out.push(name.sub.len() as u8);
        out.extend_from_slice(&name.sub);
        out.push(name.types.len() as u8);
        for (rtype, records) in &name.types {
            push_u16(&mut out, usize::from(*rtype));
            push_u16(&mut out, records.len());
            push_u16(&mut out, records.iter().map(Vec::len).sum());
            for record in records {
                out.extend_from_slice(record);
            }
        }
    }
    out
}

/// Writes `value`, which the caller checked fits in 16 bits.
fn push_u16(out: &mut Vec<u8>, value: usize) {
    out.extend_from_slice(&(value as u16).to_be_bytes());
}

/// The labels of a packet record's owner `name` left of its key label (none: the key itself),
/// or `None` when its last label is not `key_label` (compared without regard to ASCII case):
/// pkarr writes every owner under the key, so only hand-made packets hold such records, and no
/// query name under the key reaches them. The DNS frontend picks records by the same rule.
pub fn labels_below_key<'n>(name: &'n Name, key_label: &[u8]) -> Option<Vec<&'n [u8]>> {
    let mut labels: Vec<&[u8]> = name.iter().collect();
    let last = labels.pop()?;
    last.eq_ignore_ascii_case(key_label).then_some(labels)
}

/// `labels` in wire form, lower-cased; `None` if they do not fit a name.
fn sub_wire(labels: &[&[u8]]) -> Option<Vec<u8>> {
    let mut wire = Vec::new();
    for label in labels {
        wire.push(u8::try_from(label.len()).ok().filter(|len| *len <= 63)?);
        wire.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    (wire.len() <= 255).then_some(wire)
}

/// The record as hickory's encoder writes it after its owner name (type, class, TTL, RDATA
/// length and RDATA), or `None` for a type whose RDATA may hold a compressed name.
fn encode_after_owner(record: &Record) -> Option<Vec<u8>> {
    if !matches!(
        record.record_type(),
        RecordType::A | RecordType::AAAA | RecordType::TXT
    ) {
        return None;
    }
    let mut rooted = record.clone();
    rooted.name = Name::root();
    let mut bytes = Vec::with_capacity(64);
    let mut encoder = BinEncoder::new(&mut bytes);
    rooted.emit(&mut encoder).ok()?;
    // The root name is one zero byte.
    bytes.split_first().map(|(_, rest)| rest.to_vec())
}

/// A compiled form, read in place.
#[derive(Debug, Clone, Copy)]
pub struct CompiledPacket<'a> {
    complete: bool,
    names: u16,
    body: &'a [u8],
    /// Bytes of the whole form, for the offsets of [`CompiledRecords::start`].
    len: usize,
}

/// The records of one name and type, as [`compile`] wrote them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompiledRecords<'a> {
    /// How many records `bytes` holds.
    pub count: u16,
    /// Where `bytes` starts in the form [`CompiledPacket::read`] was given.
    pub start: usize,
    /// Each record's type, class, TTL, RDATA length and RDATA, one after the other.
    pub bytes: &'a [u8],
}

/// What a compiled packet holds for a name and type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompiledLookup<'a> {
    Answers(CompiledRecords<'a>),
    /// The name exists, with no records of the type (NODATA).
    NoData,
    NxDomain,
}

impl<'a> CompiledPacket<'a> {
    pub fn read(bytes: &'a [u8]) -> Result<Self, CompiledError> {
        let [version, complete, n0, n1, body @ ..] = bytes else {
            return Err(CompiledError::Malformed("shorter than its header"));
        };
        if *version != VERSION {
            return Err(CompiledError::Malformed("unknown version"));
        }
        let complete = match complete {
            0 => false,
            1 => true,
            _ => return Err(CompiledError::Malformed("bad completeness flag")),
        };
        Ok(CompiledPacket {
            complete,
            names: u16::from_be_bytes([*n0, *n1]),
            body,
            len: bytes.len(),
        })
    }

    /// Whether every record of the packet is compiled. When not, the packet must be answered
    /// from its parsed records.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The records for `<sub>.<key>` and `rtype`, chosen as the DNS frontend chooses them from
    /// the parsed packet: the name's records of the type (for `ANY`, of the first type at the
    /// name); none of the type at an existing name, or at a name that exists only as the parent
    /// of another (RFC 8020), is NODATA; otherwise NXDOMAIN. `sub` is compared without regard
    /// to ASCII case. Only for a complete packet (a CNAME, never compiled, would answer other
    /// types).
    pub fn lookup(
        &self,
        sub: &[&[u8]],
        rtype: RecordType,
    ) -> Result<CompiledLookup<'a>, CompiledError> {
        let mut at_name = None;
        let mut has_descendants = false;
        let mut body = Reader(self.body);
        for _ in 0..self.names {
            let len = usize::from(body.u8()?);
            let name = body.take(len)?;
            let types = body.u8()?;
            let types_start = body.0;
            for _ in 0..types {
                body.take(4)?;
                let bytes = usize::from(body.u16()?);
                body.take(bytes)?;
            }
            match relation(name, sub)? {
                Relation::Same if at_name.is_none() => {
                    // The name's types, and where they start in the form.
                    let region = &types_start[..types_start.len() - body.0.len()];
                    at_name = Some((types, region, self.len - types_start.len()));
                }
                Relation::Below => has_descendants = true,
                _ => {}
            }
        }
        let Some((types, region, region_start)) = at_name else {
            return Ok(if has_descendants {
                CompiledLookup::NoData
            } else {
                CompiledLookup::NxDomain
            });
        };
        let wanted = u16::from(rtype);
        let mut rest = region;
        for index in 0..types {
            let mut reader = Reader(rest);
            let found = reader.u16()?;
            let count = reader.u16()?;
            let bytes = usize::from(reader.u16()?);
            let start = region_start + (region.len() - reader.0.len());
            let records = reader.take(bytes)?;
            rest = reader.0;
            if found == wanted || (index == 0 && rtype == RecordType::ANY) {
                return Ok(CompiledLookup::Answers(CompiledRecords {
                    count,
                    start,
                    bytes: records,
                }));
            }
        }
        Ok(CompiledLookup::NoData)
    }
}

/// How a compiled name (wire labels) stands to the asked `sub`.
enum Relation {
    Same,
    /// The compiled name is below `sub` (`sub` is one of its parents).
    Below,
    Other,
}

fn relation(name: &[u8], sub: &[&[u8]]) -> Result<Relation, CompiledError> {
    let mut labels: usize = 0;
    let mut rest = Reader(name);
    while !rest.0.is_empty() {
        let len = usize::from(rest.u8()?);
        rest.take(len)?;
        labels += 1;
    }
    let Some(above) = labels.checked_sub(sub.len()) else {
        return Ok(Relation::Other);
    };
    // Skip the labels left of where `sub` would start, then compare the rest.
    let mut rest = Reader(name);
    for _ in 0..above {
        let len = usize::from(rest.u8()?);
        rest.take(len)?;
    }
    for wanted in sub {
        let len = usize::from(rest.u8()?);
        if !rest.take(len)?.eq_ignore_ascii_case(wanted) {
            return Ok(Relation::Other);
        }
    }
    Ok(if above == 0 {
        Relation::Same
    } else {
        Relation::Below
    })
}

/// Bounds-checked reads from a compiled form.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], CompiledError> {
        let (taken, rest) = self
            .0
            .split_at_checked(len)
            .ok_or(CompiledError::Malformed("truncated"))?;
        self.0 = rest;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, CompiledError> {
        let [byte] = self.take(1)? else {
            return Err(CompiledError::Malformed("truncated"));
        };
        Ok(*byte)
    }

    fn u16(&mut self) -> Result<u16, CompiledError> {
        let [high, low] = self.take(2)? else {
            return Err(CompiledError::Malformed("truncated"));
        };
        Ok(u16::from_be_bytes([*high, *low]))
    }
}

#[cfg(test)]
mod tests;
