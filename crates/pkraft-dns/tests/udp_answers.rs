//! The UDP fast path (`dns.answer_cache_mib`) answers byte for byte as hickory-server's own UDP
//! listener does (`dns.answer_cache_mib = 0`), on a cache miss and on a hit, before and after
//! the key changes, and while the node is too stale.
//!
//! Method: two servers over one store, one with the answer cache and one without, each on a real
//! UDP socket on 127.0.0.1. Every query of a set covering the shapes a DNS server sees goes to
//! both; the cached server gets it three times (the miss, a hit, a hit under another ID).

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use pkraft_dns::{DnsServer, Freshness, FreshnessProbe, Settings};
use pkraft_store::Store;
use pkraft_testkit::pkarr::Keypair;
use pkraft_testkit::{iroh_packet, keypair};
use pkraft_types::{Command, Payload, PublishItem};
use tokio::net::UdpSocket;

/// How long a server gets to answer; a query that must get no answer waits this long.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
const NO_ANSWER_WAIT: Duration = Duration::from_millis(300);

fn publish(store: &Store, keypair: &Keypair, timestamp: u64, addrs: &[&str]) {
    let payload = iroh_packet(keypair, timestamp, addrs).to_relay_payload();
    let mut txn = store.begin_apply(false).expect("begin");
    txn.apply(&Command::Publish {
        leader_time_micros: timestamp,
        packets: vec![PublishItem {
            key: keypair.public_key().to_bytes(),
            payload: Payload::new(payload).expect("length"),
        }],
    })
    .expect("apply");
    txn.commit(b"state").expect("commit");
}

async fn start(store: &Store, answer_cache_mib: u32, freshness: FreshnessProbe) -> DnsServer {
    let settings = Settings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        nameservers: vec!["ns1.example.net".to_string()],
        apex_a: vec!["192.0.2.53".parse().expect("ip")],
        max_stale: Some(Duration::from_secs(5)),
        answer_cache_mib,
        udp_sockets: 1,
        // With RRL on, pkraft's own loop would serve UDP even with the cache off; these tests
        // compare against hickory's listener and send more than any limit allows.
        rrl: pkraft_dns::rrl::RrlSettings {
            responses_per_second: 0,
            ..Default::default()
        },
        ..Settings::default()
    };
    DnsServer::bind(&settings, store.clone(), freshness)
        .await
        .expect("bind")
}

/// The answer to `query` from `server`, `None` if it sends none within [`NO_ANSWER_WAIT`].
async fn exchange(server: SocketAddr, query: &[u8], expect_answer: bool) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    socket.send_to(query, server).await.expect("send");
    let mut buf = vec![0; 65_535];
    let wait = if expect_answer {
        ANSWER_TIMEOUT
    } else {
        NO_ANSWER_WAIT
    };
    let (len, _) = tokio::time::timeout(wait, socket.recv_from(&mut buf))
        .await
        .ok()?
        .expect("receive");
    Some(buf[..len].to_vec())
}

fn message(id: u16, name: &str, rtype: RecordType, edns: Option<Edns>) -> Message {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_str(name).expect("name"), rtype));
    if let Some(edns) = edns {
        message.set_edns(edns);
    }
    message
}

fn edns(max_payload: u16) -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(max_payload);
    edns
}

/// The query set: (what it is, wire bytes, whether hickory answers it at all).
fn queries(small: &Keypair, large: &Keypair, missing: &Keypair) -> Vec<(String, Vec<u8>, bool)> {
    let (small, large, missing) = (
        small.public_key().to_z32(),
        large.public_key().to_z32(),
        missing.public_key().to_z32(),
    );
    let wire = |m: &Message| m.to_vec().expect("encode");
    let mut set = Vec::new();
    let mut add = |what: &str, m: Message| set.push((what.to_string(), wire(&m), true));

    let iroh = format!("_iroh.{small}.pkarr.test.");
    add(
        "_iroh TXT, EDNS 1232",
        message(1, &iroh, RecordType::TXT, Some(edns(1232))),
    );
    add(
        "_iroh TXT, no EDNS",
        message(2, &iroh, RecordType::TXT, None),
    );
    let mixed = format!("_IROH.{}.PkArR.TeSt.", small.to_uppercase());
    add(
        "_iroh TXT, mixed case",
        message(3, &mixed, RecordType::TXT, Some(edns(1232))),
    );
    add(
        "_iroh A (NODATA)",
        message(4, &iroh, RecordType::A, Some(edns(1232))),
    );
    add("_iroh ANY", message(5, &iroh, RecordType::ANY, None));
    let key = format!("{small}.pkarr.test.");
    add(
        "key apex TXT (NODATA)",
        message(6, &key, RecordType::TXT, None),
    );
    let below = format!("nothing.{small}.pkarr.test.");
    add(
        "name not in packet (NXDOMAIN)",
        message(7, &below, RecordType::TXT, None),
    );
    let absent = format!("_iroh.{missing}.pkarr.test.");
    add(
        "missing key (NXDOMAIN)",
        message(8, &absent, RecordType::TXT, Some(edns(1232))),
    );
    add(
        "not a key",
        message(9, "_iroh.notakey.pkarr.test.", RecordType::TXT, None),
    );
    for (id, rtype) in [
        (10, RecordType::SOA),
        (11, RecordType::NS),
        (12, RecordType::A),
        (13, RecordType::AAAA),
        (14, RecordType::ANY),
    ] {
        add(
            &format!("apex {rtype}"),
            message(id, "pkarr.test.", rtype, Some(edns(1232))),
        );
    }
    add(
        "out of zone (REFUSED)",
        message(15, "example.com.", RecordType::A, None),
    );
    let big = format!("_iroh.{large}.pkarr.test.");
    add(
        "large answer, no EDNS (TC)",
        message(16, &big, RecordType::TXT, None),
    );
    add(
        "large answer, EDNS 512 (TC)",
        message(17, &big, RecordType::TXT, Some(edns(512))),
    );
    add(
        "large answer, EDNS 4096",
        message(18, &big, RecordType::TXT, Some(edns(4096))),
    );
    let mut badvers = edns(1232);
    badvers.set_version(1);
    add(
        "EDNS version 1 (BADVERS)",
        message(19, &iroh, RecordType::TXT, Some(badvers)),
    );
    let mut dnssec = edns(1232);
    dnssec.set_dnssec_ok(true);
    add("DO bit", message(20, &iroh, RecordType::TXT, Some(dnssec)));
    let mut cd = message(21, &iroh, RecordType::TXT, None);
    cd.metadata.checking_disabled = true;
    cd.metadata.recursion_desired = false;
    add("CD set, RD clear", cd);
    let mut notify = message(22, &iroh, RecordType::TXT, None);
    notify.metadata.op_code = OpCode::Notify;
    add("NOTIFY", notify);
    let mut two = message(23, &iroh, RecordType::TXT, None);
    two.add_query(Query::query(
        Name::from_str(&key).expect("name"),
        RecordType::A,
    ));
    add("two questions", two);

    // Messages hickory's listener handles before its handler: FORMERR, or no answer at all.
    let mut garbage = wire(&message(24, &iroh, RecordType::TXT, None));
    garbage.truncate(20);
    set.push(("question cut short (FORMERR)".to_string(), garbage, true));
    set.push((
        "shorter than a header".to_string(),
        vec![0, 25, 1, 0, 0],
        false,
    ));
    let mut response = message(26, &iroh, RecordType::TXT, None);
    response.metadata.message_type = MessageType::Response;
    set.push(("a response".to_string(), wire(&response), false));
    set
}

fn with_id(mut wire: Vec<u8>, id: [u8; 2]) -> Vec<u8> {
    wire[..2].copy_from_slice(&id);
    wire
}

/// Sends every query to both servers and checks the cached server's three answers against the
/// reference's. Returns the reference answers.
async fn compare(
    cached: SocketAddr,
    reference: SocketAddr,
    set: &[(String, Vec<u8>, bool)],
) -> Vec<Option<Vec<u8>>> {
    let mut references = Vec::new();
    for (what, query, answered) in set {
        let expected = exchange(reference, query, *answered).await;
        assert_eq!(expected.is_some(), *answered, "{what}: reference answered?");
        for round in 0..2 {
            let got = exchange(cached, query, *answered).await;
            assert_eq!(got, expected, "{what}: round {round}");
        }
        if query.len() >= 2 {
            let other_id = with_id(query.clone(), [0xbe, 0xef]);
            let got = exchange(cached, &other_id, *answered).await;
            let expected = expected.clone().map(|e| with_id(e, [0xbe, 0xef]));
            assert_eq!(got, expected, "{what}: another ID");
        }
        references.push(expected);
    }
    references
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_udp_answers_are_hickorys_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("state.redb")).expect("open");
    let (small, large, missing) = (keypair(1), keypair(2), keypair(3));
    publish(&store, &small, 1_000, &["192.0.2.1:1000"]);
    let many: Vec<String> = (0..20).map(|i| format!("192.0.2.{i}:4433")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    publish(&store, &large, 1_000, &many);

    let stale = Arc::new(AtomicBool::new(false));
    let freshness: FreshnessProbe = {
        let stale = stale.clone();
        Arc::new(move || {
            Freshness::LastConfirmed((!stale.load(Ordering::Relaxed)).then_some(Duration::ZERO))
        })
    };
    let cached = start(&store, 1, freshness.clone()).await;
    let reference = start(&store, 0, freshness).await;
    let (cached_addr, reference_addr) = (cached.local_addr(), reference.local_addr());

    let set = queries(&small, &large, &missing);
    let before = compare(cached_addr, reference_addr, &set).await;
    let truncated = |index: usize| {
        let wire = before[index].as_deref().expect("answered");
        Message::from_vec(wire).expect("parse").metadata.truncation
    };
    assert!(
        truncated(15) && truncated(16) && !truncated(17),
        "the TC cases are TC"
    );
    let stats = cached.udp_answer_stats();
    assert!(
        stats.hits >= 2 * 20,
        "repeated queries are answered from the cache: {stats:?}"
    );

    // A new packet for the key retires every cached answer read from it, at once.
    publish(&store, &small, 2_000, &["192.0.2.2:2000"]);
    let after = compare(cached_addr, reference_addr, &set).await;
    assert_ne!(before[0], after[0], "the new packet is served");
    assert_eq!(before[7], after[7], "the missing key's answer is unchanged");

    // Too stale: SERVFAIL from both, although the answers are cached.
    stale.store(true, Ordering::Relaxed);
    let servfail = compare(cached_addr, reference_addr, &set[..1]).await;
    let servfail = Message::from_vec(servfail[0].as_deref().expect("answered")).expect("parse");
    assert_eq!(
        servfail.metadata.response_code,
        hickory_proto::op::ResponseCode::ServFail
    );
    stale.store(false, Ordering::Relaxed);
    assert_eq!(
        compare(cached_addr, reference_addr, &set[..1]).await,
        after[..1]
    );

    cached.shutdown().await.expect("shutdown");
    reference.shutdown().await.expect("shutdown");
}

/// The race the versions exist for, through the UDP fast path: a miss reads the old packet, the
/// new one commits, and only then does the miss fill the answer cache. The writer must still
/// read its own write. Method: two clients hammer the query while the writer publishes versions
/// one by one and queries after each (bounded: 100 versions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_that_read_before_a_commit_never_hides_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("state.redb")).expect("open");
    let key = keypair(7);
    publish(&store, &key, 1, &["192.0.2.7:1"]);
    let fresh: FreshnessProbe = Arc::new(|| Freshness::LastConfirmed(Some(Duration::ZERO)));
    let server = start(&store, 1, fresh).await;
    let addr = server.local_addr();
    let name = format!("_iroh.{}.pkarr.test.", key.public_key().to_z32());
    let query = message(1, &name, RecordType::TXT, None)
        .to_vec()
        .expect("encode");

    let done = Arc::new(AtomicBool::new(false));
    let hammers: Vec<_> = (0..2)
        .map(|_| {
            let (done, query) = (done.clone(), query.clone());
            tokio::spawn(async move {
                let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
                let mut buf = vec![0; 4096];
                while !done.load(Ordering::Relaxed) {
                    socket.send_to(&query, addr).await.expect("send");
                    // A lost datagram only costs this client a round.
                    let _ = tokio::time::timeout(
                        Duration::from_millis(100),
                        socket.recv_from(&mut buf),
                    )
                    .await;
                }
            })
        })
        .collect();
    for version in 2..=100u64 {
        let addr_text = format!("192.0.2.7:{version}");
        publish(&store, &key, version, &[addr_text.as_str()]);
        let answer = exchange(addr, &query, true).await.expect("answer");
        let answer = Message::from_vec(&answer).expect("parse");
        let txt = answer.answers.first().map(|r| r.data.to_string());
        assert!(
            txt.as_deref().is_some_and(|t| t.contains(&addr_text)),
            "version {version}: {txt:?}"
        );
    }
    done.store(true, Ordering::Relaxed);
    for hammer in hammers {
        hammer.await.expect("hammer");
    }
    let stats = server.udp_answer_stats();
    assert!(stats.hits > 0, "the cache was used: {stats:?}");
    server.shutdown().await.expect("shutdown");
}

/// Goal: answer-cache misses in flight are bounded per socket (`dns.udp_pending_max`): a burst
/// of distinct queries beyond it is dropped and counted, not queued as tasks.
/// Method: one socket with a bound of 1 on a single-threaded runtime, so a miss cannot finish
/// while the loop reads the rest of the burst; 300 distinct names sent at once.
#[tokio::test(flavor = "current_thread")]
async fn misses_beyond_udp_pending_max_are_dropped_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("state.redb")).expect("store");
    let settings = Settings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        udp_sockets: 1,
        udp_pending_max: 1,
        rrl: pkraft_dns::rrl::RrlSettings {
            responses_per_second: 0,
            ..Default::default()
        },
        ..Settings::default()
    };
    let fresh: FreshnessProbe = Arc::new(|| Freshness::LastConfirmed(Some(Duration::ZERO)));
    let server = DnsServer::bind(&settings, store, fresh)
        .await
        .expect("bind");
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    const BURST: u16 = 300;
    for id in 0..BURST {
        let query = message(id, &format!("n{id}.pkarr.test."), RecordType::A, None);
        client
            .send_to(&query.to_vec().expect("encode"), server.local_addr())
            .await
            .expect("send");
        // Let the server read in bursts of 50, so no socket buffer overflows.
        if id % 50 == 49 {
            tokio::task::yield_now().await;
        }
    }
    let mut answered = 0_u64;
    let mut buf = vec![0_u8; 4_096];
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(300), client.recv_from(&mut buf)).await
    {
        answered += 1;
    }
    let stats = server.udp_answer_stats();
    assert!(
        stats.overload_dropped > 0,
        "nothing dropped with a bound of 1: {stats:?}"
    );
    assert_eq!(
        answered + stats.overload_dropped,
        u64::from(BURST),
        "every query answered or counted as dropped: {stats:?}"
    );
    server.shutdown().await.expect("shutdown");
}
