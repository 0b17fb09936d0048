//! Goal: the DNS contract of DESIGN.md §2.3 over UDP and TCP.
//! Method: packets published through the relay, then queried with hickory-resolver (a real
//! stub resolver) and with raw DNS messages over UDP and TCP where rcode, flags and truncation
//! must be checked exactly.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::{Resolver, TokioResolver};
use pkraft_testkit::pkarr::dns::rdata::{A as PkarrA, AAAA as PkarrAAAA, RData as PkarrRData};
use pkraft_testkit::pkarr::dns::{CLASS, Name as PkarrName, ResourceRecord};
use pkraft_testkit::pkarr::{Keypair, SignedPacket, Timestamp};
use pkraft_testkit::{iroh_packet, keypair, txt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{ORIGIN, TestServer};

/// Bound on one raw query: loopback answers in microseconds; this only stops a hung test.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy)]
enum Transport {
    Udp,
    Tcp,
}

fn resolver(addr: SocketAddr, transport: Transport) -> TokioResolver {
    let mut server = match transport {
        Transport::Udp => NameServerConfig::udp(addr.ip()),
        Transport::Tcp => NameServerConfig::tcp(addr.ip()),
    };
    for connection in &mut server.connections {
        connection.port = addr.port();
    }
    let config = ResolverConfig::from_parts(None, vec![], vec![server]);
    let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
    // Every lookup must reach the server: no answers from the resolver's cache.
    builder.options_mut().cache_size = 0;
    builder.build().expect("resolver")
}

fn name(text: &str) -> Name {
    Name::from_str(text).expect("name")
}

fn key_name(sub: &str, key: &Keypair) -> String {
    let z32 = key.public_key().to_z32();
    if sub.is_empty() {
        format!("{z32}.{ORIGIN}.")
    } else {
        format!("{sub}.{z32}.{ORIGIN}.")
    }
}

fn txt_strings(records: &[hickory_proto::rr::Record]) -> Vec<String> {
    let mut strings: Vec<String> = records
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect();
    strings.sort();
    strings
}

/// The negative-answer details a resolver reports: rcode and whether an SOA came with it.
fn no_records(error: NetError) -> (ResponseCode, bool) {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(no)) => (no.response_code, no.soa.is_some()),
        other => panic!("expected a negative answer, got {other:?}"),
    }
}

/// Sends one query as raw wire bytes and returns the raw response.
async fn raw_query(
    addr: SocketAddr,
    transport: Transport,
    qname: &str,
    qtype: RecordType,
    edns: Option<u16>,
) -> Message {
    let mut query = Message::query();
    query.add_query(Query::query(name(qname), qtype));
    if let Some(size) = edns {
        let mut opt = Edns::new();
        opt.set_max_payload(size);
        query.set_edns(opt);
    }
    let bytes = query.to_vec().expect("encode");
    let response = tokio::time::timeout(QUERY_TIMEOUT, async {
        match transport {
            Transport::Udp => {
                let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                socket.send_to(&bytes, addr).await.expect("send");
                let mut buf = vec![0u8; 65_535];
                let len = socket.recv(&mut buf).await.expect("recv");
                buf.truncate(len);
                buf
            }
            Transport::Tcp => {
                let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
                let len = u16::try_from(bytes.len()).expect("small query");
                stream.write_all(&len.to_be_bytes()).await.expect("write");
                stream.write_all(&bytes).await.expect("write");
                let len = stream.read_u16().await.expect("length");
                let mut buf = vec![0u8; usize::from(len)];
                stream.read_exact(&mut buf).await.expect("read");
                buf
            }
        }
    })
    .await
    .expect("DNS answer within the timeout");
    let message = Message::from_vec(&response).expect("decode response");
    assert_eq!(message.metadata.id, query.metadata.id);
    message
}

#[tokio::test]
async fn iroh_txt_records_over_udp_and_tcp() {
    let server = TestServer::start();
    let key = keypair(30);
    let packet = iroh_packet(&key, 1_000, &["192.0.2.1:4433", "[2001:db8::1]:4433"]);
    server.publish(&key, &packet).await;

    for transport in [Transport::Udp, Transport::Tcp] {
        let lookup = resolver(server.dns, transport)
            .lookup(key_name("_iroh", &key), RecordType::TXT)
            .await
            .expect("TXT answer");
        assert_eq!(
            txt_strings(lookup.answers()),
            vec!["addr=192.0.2.1:4433", "addr=[2001:db8::1]:4433"]
        );
        assert!(
            lookup.answers().iter().all(|r| r.ttl <= 30),
            "TTL from the packet"
        );
    }
}

#[tokio::test]
async fn a_aaaa_and_txt_at_other_names() {
    let server = TestServer::start();
    let key = keypair(31);
    let pname = |n: &'static str| PkarrName::new(n).expect("name");
    let packet = SignedPacket::builder()
        .record(ResourceRecord::new(
            pname("www"),
            CLASS::IN,
            300,
            PkarrRData::A(PkarrA {
                address: 0xC000_0205,
            }),
        ))
        .record(ResourceRecord::new(
            pname("www"),
            CLASS::IN,
            300,
            PkarrRData::AAAA(PkarrAAAA {
                address: 0x2001_0db8_0000_0000_0000_0000_0000_0005,
            }),
        ))
        .txt(pname("info"), txt("hello=world"), 120)
        .record(ResourceRecord::new(
            pname("."),
            CLASS::IN,
            60,
            PkarrRData::A(PkarrA {
                address: 0xC000_0206,
            }),
        ))
        .timestamp(Timestamp::from(1_000))
        .sign(&key)
        .expect("sign");
    server.publish(&key, &packet).await;
    let resolver = resolver(server.dns, Transport::Udp);

    let a = resolver
        .lookup(key_name("www", &key), RecordType::A)
        .await
        .expect("A");
    assert_eq!(
        a.answers()[0].data,
        RData::A(Ipv4Addr::new(192, 0, 2, 5).into())
    );
    assert_eq!(a.answers()[0].ttl, 300);
    let aaaa = resolver
        .lookup(key_name("www", &key), RecordType::AAAA)
        .await
        .expect("AAAA");
    let expected = Ipv6Addr::from_str("2001:db8::5").expect("ip");
    assert_eq!(aaaa.answers()[0].data, RData::AAAA(expected.into()));
    let info = resolver
        .lookup(key_name("info", &key), RecordType::TXT)
        .await
        .expect("TXT");
    assert_eq!(txt_strings(info.answers()), vec!["hello=world"]);
    let apex = resolver
        .lookup(key_name("", &key), RecordType::A)
        .await
        .expect("apex A");
    assert_eq!(
        apex.answers()[0].data,
        RData::A(Ipv4Addr::new(192, 0, 2, 6).into())
    );
}

#[tokio::test]
async fn unknown_key_or_name_is_nxdomain_with_soa() {
    let server = TestServer::start();
    let key = keypair(32);
    server
        .publish(&key, &iroh_packet(&key, 1_000, &["192.0.2.1:1"]))
        .await;
    let resolver = resolver(server.dns, Transport::Udp);

    let unknown_key = resolver
        .lookup(key_name("_iroh", &keypair(33)), RecordType::TXT)
        .await;
    assert_eq!(
        no_records(unknown_key.expect_err("no such key")),
        (ResponseCode::NXDomain, true)
    );
    let unknown_name = resolver
        .lookup(key_name("nothing", &key), RecordType::TXT)
        .await;
    assert_eq!(
        no_records(unknown_name.expect_err("no such name")),
        (ResponseCode::NXDomain, true)
    );
    let not_a_key = resolver
        .lookup(format!("_iroh.not-a-key.{ORIGIN}."), RecordType::TXT)
        .await;
    assert_eq!(
        no_records(not_a_key.expect_err("not a key")),
        (ResponseCode::NXDomain, true)
    );
}

#[tokio::test]
async fn known_name_other_type_is_nodata_with_soa() {
    let server = TestServer::start();
    let key = keypair(34);
    server
        .publish(&key, &iroh_packet(&key, 1_000, &["192.0.2.1:1"]))
        .await;
    let resolver = resolver(server.dns, Transport::Udp);

    let other_type = resolver
        .lookup(key_name("_iroh", &key), RecordType::A)
        .await;
    assert_eq!(
        no_records(other_type.expect_err("NODATA")),
        (ResponseCode::NoError, true)
    );
    // The key itself is the parent of `_iroh`: it exists, so NODATA, not NXDOMAIN.
    let parent = resolver.lookup(key_name("", &key), RecordType::TXT).await;
    assert_eq!(
        no_records(parent.expect_err("NODATA")),
        (ResponseCode::NoError, true)
    );
}

#[tokio::test]
async fn names_under_no_origin_are_refused() {
    let server = TestServer::start();
    for transport in [Transport::Udp, Transport::Tcp] {
        let response = raw_query(server.dns, transport, "example.com.", RecordType::A, None).await;
        assert_eq!(response.metadata.response_code, ResponseCode::Refused);
        assert!(response.answers.is_empty());
    }
}

#[tokio::test]
async fn apex_soa_ns_and_a() {
    let server = TestServer::start();
    let resolver = resolver(server.dns, Transport::Udp);
    let apex = format!("{ORIGIN}.");

    let soa = resolver
        .lookup(apex.as_str(), RecordType::SOA)
        .await
        .expect("SOA");
    match &soa.answers()[0].data {
        RData::SOA(soa) => {
            assert_eq!(soa.minimum, 30, "negative TTL from the dev config");
            assert_eq!(soa.mname, name("ns1.pkarr.test."));
            assert_eq!(soa.rname, name("hostmaster.pkarr.test."));
        }
        other => panic!("expected SOA, got {other:?}"),
    }
    let ns = resolver
        .lookup(apex.as_str(), RecordType::NS)
        .await
        .expect("NS");
    assert!(matches!(&ns.answers()[0].data, RData::NS(ns) if ns.0 == name("ns1.pkarr.test.")));
    let a = resolver
        .lookup(apex.as_str(), RecordType::A)
        .await
        .expect("A");
    assert_eq!(a.answers()[0].data, RData::A(Ipv4Addr::LOCALHOST.into()));
    let aaaa = resolver.lookup(apex.as_str(), RecordType::AAAA).await;
    assert_eq!(
        no_records(aaaa.expect_err("no AAAA at apex")),
        (ResponseCode::NoError, true)
    );
}

#[tokio::test]
async fn key_label_matches_in_any_case_and_answers_are_authoritative() {
    let server = TestServer::start();
    let key = keypair(35);
    server
        .publish(&key, &iroh_packet(&key, 1_000, &["192.0.2.1:7"]))
        .await;
    let mixed = format!(
        "_IROH.{}.PkArR.TeSt.",
        key.public_key().to_z32().to_uppercase()
    );

    let response = raw_query(server.dns, Transport::Udp, &mixed, RecordType::TXT, None).await;
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert!(response.metadata.authoritative, "AA is set");
    assert_eq!(txt_strings(&response.answers), vec!["addr=192.0.2.1:7"]);
    let lookup = resolver(server.dns, Transport::Tcp)
        .lookup(mixed.as_str(), RecordType::TXT)
        .await;
    assert_eq!(
        txt_strings(lookup.expect("TXT").answers()),
        vec!["addr=192.0.2.1:7"]
    );
}

#[tokio::test]
async fn edns_is_echoed() {
    let server = TestServer::start();
    let key = keypair(36);
    server
        .publish(&key, &iroh_packet(&key, 1_000, &["192.0.2.1:7"]))
        .await;
    let response = raw_query(
        server.dns,
        Transport::Udp,
        &key_name("_iroh", &key),
        RecordType::TXT,
        Some(1232),
    )
    .await;
    let edns = response.edns.expect("OPT in the response to an EDNS query");
    assert!(edns.max_payload() >= 512);
    let plain = raw_query(
        server.dns,
        Transport::Udp,
        &key_name("_iroh", &key),
        RecordType::TXT,
        None,
    )
    .await;
    assert!(plain.edns.is_none(), "no OPT for a query without one");
}

/// A packet near the 1000-byte limit does not fit in a 512-byte UDP answer: TC is set over UDP,
/// and TCP (or a large EDNS buffer) gets every record.
#[tokio::test]
async fn large_packet_sets_tc_over_udp_and_succeeds_over_tcp() {
    let server = TestServer::start();
    let key = keypair(37);
    let mut builder = SignedPacket::builder();
    let count = 15;
    for i in 0..count {
        let value = format!("addr=192.0.2.{i}:{:0>30}", i);
        builder = builder.txt("_iroh".try_into().expect("name"), txt(&value), 30);
    }
    let packet = builder
        .timestamp(Timestamp::from(1_000))
        .sign(&key)
        .expect("fits in 1000 bytes");
    assert!(
        packet.encoded_packet().len() > 600,
        "the packet must not fit in 512 bytes"
    );
    server.publish(&key, &packet).await;
    let qname = key_name("_iroh", &key);

    let udp = raw_query(server.dns, Transport::Udp, &qname, RecordType::TXT, None).await;
    assert!(udp.metadata.truncation, "TC over UDP without EDNS");
    assert!(udp.answers.len() < count);

    let tcp = raw_query(server.dns, Transport::Tcp, &qname, RecordType::TXT, None).await;
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), count);

    let large_buffer = raw_query(
        server.dns,
        Transport::Udp,
        &qname,
        RecordType::TXT,
        Some(1232),
    )
    .await;
    assert!(
        !large_buffer.metadata.truncation,
        "fits in a 1232-byte EDNS buffer"
    );
    assert_eq!(large_buffer.answers.len(), count);

    let lookup = resolver(server.dns, Transport::Tcp)
        .lookup(qname.as_str(), RecordType::TXT)
        .await;
    assert_eq!(lookup.expect("TXT over TCP").answers().len(), count);
}

/// DNS answers must not log per query above debug (DESIGN.md §4: it halves throughput), even
/// when the operator sets `RUST_LOG=info` (hickory-server logs every query at INFO).
#[tokio::test]
async fn queries_are_not_logged_at_info() {
    let server = TestServer::start();
    let key = keypair(38);
    server
        .publish(&key, &iroh_packet(&key, 1_000, &["192.0.2.1:7"]))
        .await;
    let qname = key_name("_iroh", &key);
    for transport in [Transport::Udp, Transport::Tcp] {
        for _ in 0..5 {
            raw_query(server.dns, transport, &qname, RecordType::TXT, None).await;
        }
    }
    let lines_before = server.log().lines().count();
    raw_query(
        server.dns,
        Transport::Udp,
        "example.com.",
        RecordType::A,
        None,
    )
    .await;
    let log = server.log();
    assert!(
        !log.contains("request:") && !log.contains("query:"),
        "hickory query lines leaked into the log:\n{log}"
    );
    assert_eq!(
        log.lines().count(),
        lines_before,
        "a query added log lines:\n{log}"
    );
}
