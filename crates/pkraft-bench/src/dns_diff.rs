//! Differential DNS conformance: the same queries to pkraft and to a reference server (NSD)
//! serving the same records (the zone file of `pkraft-bench queries`), over UDP and TCP, and a
//! report of every answer that differs.
//!
//! Compared, after normalising owner names to lower case and sorting each section: the rcode, the
//! AA and TC flags, whether an OPT record came back, and the answer and authority sections
//! (owner, type, TTL, data). Differences that are intended are described in [`INTENDED`], each
//! with its reason and a test that recognises it; the rest fail the run.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, Record, RecordType};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::dataset::DataSet;

const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Transport {
    Udp,
    Tcp,
}

/// One query of the set.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub what: &'static str,
    pub name: String,
    pub qtype: String,
    pub transport: Transport,
    /// EDNS buffer size, or `None` for a query without EDNS.
    pub edns: Option<u16>,
}

/// An answer with what is compared, normalised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Normalised {
    pub rcode: String,
    pub aa: bool,
    pub tc: bool,
    pub opt: bool,
    pub answer: Vec<String>,
    pub authority: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Difference {
    pub case: Case,
    pub pkraft: Option<Normalised>,
    pub reference: Option<Normalised>,
    /// Why this difference is intended, if it is.
    pub intended: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub cases: usize,
    pub identical: usize,
    pub differences: Vec<Difference>,
}

impl Report {
    /// Differences not listed as intended.
    pub fn unexpected(&self) -> usize {
        self.differences
            .iter()
            .filter(|d| d.intended.is_none())
            .count()
    }
}

/// A kind of difference that is intended: why, and how to recognise it from the two answers.
pub struct Intended {
    pub reason: &'static str,
    pub matches: fn(&Normalised, &Normalised) -> bool,
}

/// The intended differences.
pub const INTENDED: &[Intended] = &[
    Intended {
        reason: "NSD adds the zone's NS records to the authority section of every positive answer \
             (it does not do minimal responses by default); pkraft, like BIND with \
             minimal-responses and Knot, leaves them out: they are optional (the algorithm of \
             RFC 1034 section 4.3.2 puts none in an authoritative answer), resolvers of pkarr \
             names never need them, and leaving them out keeps answers within small UDP buffers",
        matches: |ours, theirs| {
            let without_ns: Vec<String> = theirs
                .authority
                .iter()
                .filter(|line| line.split_whitespace().nth(2) != Some("NS"))
                .cloned()
                .collect();
            !ours.answer.is_empty()
                && ours.authority.is_empty()
                && !without_ns.len().eq(&theirs.authority.len())
                && Normalised {
                    authority: without_ns,
                    ..theirs.clone()
                } == *ours
        },
    },
    Intended {
        reason: "An answer too large for the UDP buffer: both set TC, NSD with an empty answer \
             section, pkraft (hickory's encoder) with the records that fit. RFC 2181 section 9 \
             allows both (a partial RRset may be left in; a client must ignore a TC answer and \
             ask again over TCP). NSD's is the safer one for clients that do not honour TC; \
             pkraft cannot choose without control over hickory's UDP encoding",
        matches: |ours, theirs| {
            ours.tc
                && theirs.tc
                && theirs.answer.is_empty()
                && !ours.answer.is_empty()
                && Normalised {
                    answer: Vec::new(),
                    ..ours.clone()
                } == *theirs
        },
    },
];

/// The query set: for the first `keys` keys of `data`, and names around them.
pub fn cases(data: &DataSet, origin: &str, keys: usize) -> Vec<Case> {
    let origin = origin.trim_end_matches('.');
    let mut names: Vec<(&'static str, String, RecordType)> = vec![
        ("apex SOA", format!("{origin}."), RecordType::SOA),
        ("apex NS", format!("{origin}."), RecordType::NS),
        ("apex A", format!("{origin}."), RecordType::A),
        (
            "apex AAAA (none configured)",
            format!("{origin}."),
            RecordType::AAAA,
        ),
        ("apex TXT (none)", format!("{origin}."), RecordType::TXT),
        (
            "a label that is not a key",
            format!("www.{origin}."),
            RecordType::A,
        ),
        (
            "an unknown key",
            format!("_iroh.yg4gxe7z1r7mr6orids9fh95y7gxhdsxjqi6nngsxxtakqaxr5no.{origin}."),
            RecordType::TXT,
        ),
        (
            "a name under no origin",
            "example.com.".to_string(),
            RecordType::A,
        ),
    ];
    for key in data.keys.iter().take(keys) {
        let z32 = &key.z32;
        names.extend([
            (
                "a published TXT",
                format!("_iroh.{z32}.{origin}."),
                RecordType::TXT,
            ),
            (
                "a published TXT, mixed case",
                format!("_IrOh.{}.{}.", z32.to_uppercase(), origin.to_uppercase()),
                RecordType::TXT,
            ),
            (
                "a published name, other type",
                format!("_iroh.{z32}.{origin}."),
                RecordType::A,
            ),
            (
                "the key itself (empty non-terminal)",
                format!("{z32}.{origin}."),
                RecordType::TXT,
            ),
            (
                "an unpublished name under a key",
                format!("nothere.{z32}.{origin}."),
                RecordType::TXT,
            ),
            (
                "below a published name",
                format!("deeper._iroh.{z32}.{origin}."),
                RecordType::TXT,
            ),
        ]);
    }
    let mut cases = Vec::new();
    for (what, name, qtype) in names {
        for (transport, edns) in [
            (Transport::Udp, None),
            (Transport::Udp, Some(512)),
            (Transport::Udp, Some(1232)),
            (Transport::Tcp, None),
            (Transport::Tcp, Some(4096)),
        ] {
            cases.push(Case {
                what,
                name: name.clone(),
                qtype: qtype.to_string(),
                transport,
                edns,
            });
        }
    }
    cases
}

/// Sends every case to both servers and compares the answers.
pub async fn run(
    pkraft: SocketAddr,
    reference: SocketAddr,
    cases: Vec<Case>,
) -> anyhow::Result<Report> {
    let mut report = Report {
        cases: cases.len(),
        identical: 0,
        differences: Vec::new(),
    };
    for case in cases {
        let query = query_bytes(&case)?;
        let ours = exchange(pkraft, case.transport, &query)
            .await
            .map(normalise);
        let theirs = exchange(reference, case.transport, &query)
            .await
            .map(normalise);
        if ours == theirs {
            report.identical += 1;
            continue;
        }
        let intended = match (&ours, &theirs) {
            (Some(ours), Some(theirs)) => INTENDED
                .iter()
                .find(|intended| (intended.matches)(ours, theirs))
                .map(|intended| intended.reason),
            _ => None,
        };
        report.differences.push(Difference {
            case,
            pkraft: ours,
            reference: theirs,
            intended,
        });
    }
    Ok(report)
}

fn query_bytes(case: &Case) -> anyhow::Result<Vec<u8>> {
    let mut query = Message::query();
    query.metadata.id = 0x5ca1;
    let qtype: RecordType = case.qtype.parse()?;
    query.add_query(Query::query(Name::from_ascii(&case.name)?, qtype));
    if let Some(size) = case.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(size);
        query.set_edns(edns);
    }
    Ok(query.to_vec()?)
}

/// The answer to `query`, or `None` if none came within the timeout or it did not parse.
async fn exchange(server: SocketAddr, transport: Transport, query: &[u8]) -> Option<Message> {
    let exchange = async {
        match transport {
            Transport::Udp => {
                let socket = UdpSocket::bind("127.0.0.1:0").await.ok()?;
                socket.send_to(query, server).await.ok()?;
                let mut buf = vec![0u8; 65_535];
                let len = socket.recv(&mut buf).await.ok()?;
                buf.truncate(len);
                Some(buf)
            }
            Transport::Tcp => {
                let mut stream = TcpStream::connect(server).await.ok()?;
                let len = u16::try_from(query.len()).ok()?;
                stream.write_all(&len.to_be_bytes()).await.ok()?;
                stream.write_all(query).await.ok()?;
                let len = stream.read_u16().await.ok()?;
                let mut buf = vec![0u8; usize::from(len)];
                stream.read_exact(&mut buf).await.ok()?;
                Some(buf)
            }
        }
    };
    let bytes = tokio::time::timeout(QUERY_TIMEOUT, exchange).await.ok()??;
    Message::from_vec(&bytes).ok()
}

fn normalise(message: Message) -> Normalised {
    let section = |records: &[Record]| {
        let mut lines: Vec<String> = records
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {}",
                    r.name.to_ascii().to_ascii_lowercase(),
                    r.ttl,
                    r.record_type(),
                    r.data
                )
            })
            .collect();
        lines.sort();
        lines
    };
    Normalised {
        rcode: message.metadata.response_code.to_string(),
        aa: message.metadata.authoritative,
        tc: message.metadata.truncation,
        opt: message.edns.is_some(),
        answer: section(&message.answers),
        authority: section(&message.authorities),
    }
}
