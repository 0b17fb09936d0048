//! Goal: the DNS contract of DESIGN.md §2.3, over UDP and TCP.
//! Method: packets published through the relay, then queried with hickory-resolver (a real stub
//! resolver) and with raw DNS messages where rcode, flags and truncation must be checked exactly.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use pkraft_testkit::pkarr::dns::rdata::{A as PkarrA, AAAA as PkarrAAAA, RData as PkarrRData};
use pkraft_testkit::pkarr::dns::{CLASS, Name as PkarrName, ResourceRecord};
use pkraft_testkit::pkarr::{SignedPacket, Timestamp};
use pkraft_testkit::{iroh_packet, keypair, txt};

use crate::dns_client::{
    TRANSPORTS, Transport, key_name, name, no_records, raw_query, resolver, txt_strings,
};
use crate::harness::{ORIGIN, TestServer};

#[tokio::test]
async fn iroh_txt_records_over_udp_and_tcp() {
    let server = TestServer::start();
    let key = keypair(30);
    let packet = iroh_packet(&key, 1_000, &["192.0.2.1:4433", "[2001:db8::1]:4433"]);
    server.publish(&key, &packet).await;

    for transport in TRANSPORTS {
        let lookup = resolver(server.dns, transport)
            .lookup(key_name("_iroh", &key), RecordType::TXT)
            .await
            .expect("TXT answer");
        assert_eq!(
            txt_strings(lookup.answers()),
            vec!["addr=192.0.2.1:4433", "addr=[2001:db8::1]:4433"],
            "{transport:?}"
        );
        assert!(
            lookup.answers().iter().all(|r| r.ttl == 30),
            "TTL from the packet"
        );
    }
}

#[tokio::test]
async fn a_aaaa_and_txt_at_other_names() {
    let server = TestServer::start();
    let key = keypair(31);
    let pname = |n: &'static str| PkarrName::new(n).expect("name");
    let a = |address: u32| PkarrRData::A(PkarrA { address });
    let packet = SignedPacket::builder()
        .record(ResourceRecord::new(
            pname("www"),
            CLASS::IN,
            300,
            a(0xC000_0205),
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
            a(0xC000_0206),
        ))
        .timestamp(Timestamp::from(1_000))
        .sign(&key)
        .expect("sign");
    server.publish(&key, &packet).await;

    for transport in TRANSPORTS {
        let resolver = resolver(server.dns, transport);
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
}

#[tokio::test]
async fn unknown_key_or_name_is_nxdomain_with_soa() {
    let server = TestServer::start();
    let key = keypair(32);
    server
        .publish(&key, &iroh_packet(&key, 1_000, &["192.0.2.1:1"]))
        .await;

    for transport in TRANSPORTS {
        let resolver = resolver(server.dns, transport);
        for qname in [
            key_name("_iroh", &keypair(33)),      // unknown key
            key_name("nothing", &key),            // unpublished name under a known key
            format!("_iroh.not-a-key.{ORIGIN}."), // a label that is not a key
        ] {
            let error = resolver
                .lookup(qname.as_str(), RecordType::TXT)
                .await
                .expect_err(&qname);
            assert_eq!(
                no_records(error),
                (ResponseCode::NXDomain, true),
                "{qname} {transport:?}"
            );
        }
    }
}

/// RFC 2308 §3: the SOA in a negative answer carries min(SOA TTL, MINIMUM), so resolvers cache
/// "no such name" for at most MINIMUM (`dns.negative_ttl`, 30 s), while the SOA asked for
/// directly keeps its own TTL (`dns.apex_ttl`, 5 min). Found by the differential check against
/// NSD (tests/e2e/nsd_diff.sh).
#[tokio::test]
async fn the_soa_of_a_negative_answer_has_the_negative_ttl() {
    let server = TestServer::start();
    let key = keypair(38);
    server
        .publish(&key, &iroh_packet(&key, 1_000, &["192.0.2.1:1"]))
        .await;
    for transport in TRANSPORTS {
        for (qname, qtype, rcode) in [
            (
                key_name("_iroh", &keypair(37)),
                RecordType::TXT,
                ResponseCode::NXDomain,
            ),
            (
                key_name("_iroh", &key),
                RecordType::A,
                ResponseCode::NoError,
            ),
        ] {
            let answer = raw_query(server.dns, transport, &qname, qtype, None).await;
            assert_eq!(
                answer.metadata.response_code, rcode,
                "{qname} {transport:?}"
            );
            let soa = answer
                .authorities
                .iter()
                .find(|r| r.record_type() == RecordType::SOA)
                .expect("an SOA in the authority section");
            assert_eq!(soa.ttl, 30, "{qname} {transport:?}");
        }
        let direct = raw_query(server.dns, transport, ORIGIN, RecordType::SOA, None).await;
        assert_eq!(direct.answers[0].ttl, 300, "{transport:?}");
    }
}

#[tokio::test]
async fn known_name_other_type_is_nodata_with_soa() {
    let server = TestServer::start();
    let key = keypair(34);
    server
        .publish(&key, &iroh_packet(&key, 1_000, &["192.0.2.1:1"]))
        .await;

    for transport in TRANSPORTS {
        let resolver = resolver(server.dns, transport);
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
}

#[tokio::test]
async fn names_under_no_origin_and_zone_transfers_are_refused() {
    let server = TestServer::start();
    for transport in TRANSPORTS {
        let response = raw_query(server.dns, transport, "example.com.", RecordType::A, None).await;
        assert_eq!(
            response.metadata.response_code,
            ResponseCode::Refused,
            "{transport:?}"
        );
        assert!(response.answers.is_empty());
    }
    let axfr = raw_query(
        server.dns,
        Transport::Tcp,
        &format!("{ORIGIN}."),
        RecordType::AXFR,
        None,
    )
    .await;
    assert_eq!(axfr.metadata.response_code, ResponseCode::Refused);
    assert!(axfr.answers.is_empty());
}

#[tokio::test]
async fn apex_soa_ns_and_a() {
    let server = TestServer::start();
    let apex = format!("{ORIGIN}.");
    for transport in TRANSPORTS {
        let resolver = resolver(server.dns, transport);
        let soa = resolver
            .lookup(apex.as_str(), RecordType::SOA)
            .await
            .expect("SOA");
        match &soa.answers()[0].data {
            RData::SOA(soa) => {
                assert_eq!(soa.minimum, 30, "negative TTL from the dev config");
                assert_eq!(soa.mname, name("pkarr.test."), "the first nameserver");
                assert_eq!(soa.rname, name("hostmaster.pkarr.test."));
            }
            other => panic!("expected SOA, got {other:?}"),
        }
        let ns = resolver
            .lookup(apex.as_str(), RecordType::NS)
            .await
            .expect("NS");
        assert!(matches!(&ns.answers()[0].data, RData::NS(ns) if ns.0 == name("pkarr.test.")));
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

    for transport in TRANSPORTS {
        let response = raw_query(server.dns, transport, &mixed, RecordType::TXT, None).await;
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert!(response.metadata.authoritative, "AA is set");
        assert_eq!(txt_strings(&response.answers), vec!["addr=192.0.2.1:7"]);
        assert!(
            response
                .answers
                .iter()
                .all(|r| r.name.eq_case(&name(&mixed))),
            "answers carry the query's own spelling"
        );
    }
    let lookup = resolver(server.dns, Transport::Udp)
        .lookup(mixed.as_str(), RecordType::TXT)
        .await;
    assert_eq!(
        txt_strings(lookup.expect("TXT").answers()),
        vec!["addr=192.0.2.1:7"]
    );
}

/// `dns.ttl_min`/`ttl_max`: a packet's records are served with TTLs held within them (over UDP
/// and TCP, fresh and from the answer cache); a TTL of 0, or of 2^31 s or more (RFC 2181 §8
/// reads it as 0), takes the floor. The relay GET still returns the packet as signed.
#[tokio::test]
async fn ttls_are_served_within_their_floor_and_ceiling() {
    let server = TestServer::start_with_config(
        "[cluster]\nbootstrap = true\n[dns]\nttl_min = \"45s\"\nttl_max = \"1h\"\n",
    );
    let key = keypair(36);
    let pname = |n: &'static str| PkarrName::new(n).expect("name");
    let packet = SignedPacket::builder()
        .txt(pname("zero"), txt("ttl=0"), 0)
        .txt(pname("top"), txt("ttl=2^31"), 1 << 31)
        .txt(pname("long"), txt("ttl=2d"), 172_800)
        .txt(pname("fine"), txt("ttl=300"), 300)
        .timestamp(Timestamp::from(1_000))
        .sign(&key)
        .expect("sign");
    server.publish(&key, &packet).await;
    for transport in TRANSPORTS {
        // Twice: the second UDP answer comes from the answer cache.
        for _ in 0..2 {
            for (sub, ttl) in [("zero", 45), ("top", 45), ("long", 3_600), ("fine", 300)] {
                let qname = key_name(sub, &key);
                let answer = raw_query(server.dns, transport, &qname, RecordType::TXT, None).await;
                let ttls: Vec<u32> = answer.answers.iter().map(|r| r.ttl).collect();
                assert_eq!(ttls, vec![ttl], "{sub} over {transport:?}");
            }
        }
    }
    let body = server
        .get(&server.relay_url(&key))
        .await
        .bytes()
        .await
        .expect("body");
    assert_eq!(
        body,
        packet.to_relay_payload(),
        "the packet is kept as signed"
    );
}

/// The OPT record names the server's UDP payload size (`dns.udp_payload_max`, 1,232 by
/// default), whatever size the client asked with (RFC 6891 §6.2.5).
#[tokio::test]
async fn the_opt_record_names_the_servers_size() {
    let server = TestServer::start();
    let key = keypair(36);
    server
        .publish(&key, &iroh_packet(&key, 1_000, &["192.0.2.1:7"]))
        .await;
    let qname = key_name("_iroh", &key);
    for client_size in [512, 1232, 4096] {
        for transport in [Transport::Udp, Transport::Tcp] {
            let response = raw_query(
                server.dns,
                transport,
                &qname,
                RecordType::TXT,
                Some(client_size),
            )
            .await;
            let edns = response.edns.expect("OPT in the response to an EDNS query");
            assert_eq!(edns.max_payload(), 1232, "{client_size} over {transport:?}");
        }
    }
    let plain = raw_query(server.dns, Transport::Udp, &qname, RecordType::TXT, None).await;
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
        let value = format!("addr=192.0.2.{i}:{i:0>30}");
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
    let mut server = TestServer::start();
    let key = keypair(38);
    server
        .publish(&key, &iroh_packet(&key, 1_000, &["192.0.2.1:7"]))
        .await;
    let qname = key_name("_iroh", &key);
    for transport in TRANSPORTS {
        for _ in 0..5 {
            raw_query(server.dns, transport, &qname, RecordType::TXT, None).await;
        }
        raw_query(server.dns, transport, "example.com.", RecordType::A, None).await;
    }
    // hickory logs after sending the answer; stopping the server and waiting for its last line
    // ensures every line it could write is in the captured log.
    assert!(server.terminate().success());
    server.wait_for_log("stopped").await;
    let log = server.log();
    assert!(
        !log.contains("request:") && !log.contains("query:"),
        "hickory query lines leaked into the log:\n{log}"
    );
}

/// `dns.udp_sockets`: several UDP sockets share the port with `SO_REUSEPORT` and the kernel
/// spreads queries over them by source address. Goal: every socket answers, and answers
/// correctly. Method: 4 sockets (counted in the kernel's socket table), 40 queries each from a
/// new client socket (so new source ports, spread over the 4), every one answered with the
/// packet's record.
#[tokio::test]
async fn several_udp_sockets_share_the_port() {
    let server =
        TestServer::start_with_config("[dns]\nudp_sockets = 4\n[cluster]\nbootstrap = true\n");
    let key = keypair(39);
    server
        .publish(&key, &iroh_packet(&key, 1_000, &["192.0.2.9:9"]))
        .await;
    for _ in 0..40 {
        assert_eq!(
            crate::dns_client::iroh_txt(server.dns, &key).await,
            vec!["addr=192.0.2.9:9".to_string()]
        );
    }
    // Four UDP sockets on the port, from the kernel's socket table (local address 127.0.0.1,
    // port in hex).
    let table = std::fs::read_to_string("/proc/net/udp").expect("read /proc/net/udp");
    let local = format!("0100007F:{:04X}", server.dns.port());
    let bound = table
        .lines()
        .filter(|line| line.split_whitespace().nth(1) == Some(local.as_str()))
        .count();
    assert_eq!(bound, 4, "UDP sockets on {local}:\n{table}");
}
