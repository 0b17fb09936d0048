//! pkraft's UDP loops (local answers, the answer cache, batched I/O) answer byte for byte as
//! hickory-server's own UDP listener and `Catalog` do over the same zones, on a cache miss and
//! on a hit, before and after the key changes, and while the node is too stale.
//!
//! Method: servers over one store, each on a real UDP socket on 127.0.0.1: the reference
//! (hickory-server's `Server` and `Catalog` over pkraft's zones, nothing else of pkraft's), the
//! defaults (local answers, answer cache, `recvmmsg`/`sendmmsg`), local answers without the
//! cache, and the defaults with one datagram per system call (the portable path). Every query of a set covering the shapes a DNS server sees goes to each; each pkraft
//! server gets it three times (the miss, a second miss that the answer cache keeps, and a hit
//! under another ID).

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::LowerName;
use hickory_proto::rr::rdata::opt::{EdnsOption, NSIDPayload};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{Catalog, MessageResponseBuilder, ZoneHandler};
use pkraft_dns::record_cache::RecordCache;
use pkraft_dns::zone::PkarrZone;
use pkraft_dns::{DnsServer, FreshnessProbe, Settings};
use pkraft_state::Store;
use pkraft_testkit::pkarr::Keypair;
use pkraft_testkit::{iroh_packet, keypair};
use pkraft_types::{Command, Payload, PublishItem};
use tokio::net::UdpSocket;

/// The test servers' `dns.udp_payload_max`, which their OPT records advertise; the queries ask
/// with other sizes (512, 1232, 4096, 100).
const SERVER_PAYLOAD: u16 = 1400;

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

/// How a pkraft test server answers UDP.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// The defaults: local answers, the answer cache, batched I/O.
    Defaults,
    /// Local answers with no answer cache.
    DirectOnly,
    /// The defaults with one datagram per system call.
    Unbatched,
}

/// The settings every test server shares.
fn settings() -> Settings {
    Settings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        origins: vec!["pkarr.test".to_string(), "inner.pkarr.test".to_string()],
        nameservers: vec!["ns1.example.net".to_string()],
        apex_a: vec!["192.0.2.53".parse().expect("ip")],
        max_stale: Some(MAX_STALE),
        udp_sockets: 1,
        // These tests send more than any limit allows.
        rrl: pkraft_dns::rrl::RrlSettings::off(),
        udp_payload_max: SERVER_PAYLOAD,
        ..Settings::default()
    }
}

/// The test servers' `dns.max_stale`.
const MAX_STALE: Duration = Duration::from_secs(5);

async fn start(store: &Store, mode: Mode, freshness: FreshnessProbe) -> DnsServer {
    let (answer_cache_mib, udp_batch) = match mode {
        Mode::Defaults => (1, 32),
        Mode::DirectOnly => (0, 32),
        Mode::Unbatched => (1, 1),
    };
    let settings = Settings {
        answer_cache_mib,
        udp_batch,
        ..settings()
    };
    DnsServer::bind(&settings, store.clone(), freshness)
        .await
        .expect("bind")
}

/// hickory-server's own UDP and TCP listeners and `Catalog` over pkraft's zones, with nothing
/// else of pkraft's: what every answer is compared with.
struct Reference {
    server: hickory_server::Server<StaleGuard>,
    addr: SocketAddr,
}

impl Reference {
    async fn start(store: &Store, freshness: FreshnessProbe) -> Reference {
        let settings = settings();
        let zones = settings.zones().expect("zones");
        let records = Arc::new(RecordCache::new(
            store.clone(),
            settings.record_cache_bytes(),
        ));
        let mut catalog = Catalog::new();
        for origin in &zones.origins {
            let zone: Arc<dyn ZoneHandler> =
                Arc::new(PkarrZone::new(origin, &zones, records.clone(), None, None));
            catalog.upsert(LowerName::new(origin), vec![zone]);
        }
        let mut server = hickory_server::Server::new(StaleGuard { catalog, freshness });
        // UDP and TCP on one port: TCP picks it, UDP follows (a few tries if it is taken).
        for _ in 0..16 {
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind TCP");
            let addr = tcp.local_addr().expect("address");
            let Ok(udp) = UdpSocket::bind(addr).await else {
                continue;
            };
            server.register_socket(udp);
            server.register_listener(tcp, ANSWER_TIMEOUT, 65_535);
            return Reference { server, addr };
        }
        panic!("no port free for both UDP and TCP");
    }

    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    async fn shutdown(mut self) -> Result<(), hickory_server::net::NetError> {
        self.server.shutdown_gracefully().await
    }
}

/// The reference's `dns.max_stale`: SERVFAIL with the question echoed and an OPT record if the
/// query had one (RFC 6891 §7), as hickory's handlers send an error, while `freshness` says the
/// node is staler than [`MAX_STALE`].
struct StaleGuard {
    catalog: Catalog,
    freshness: FreshnessProbe,
}

#[async_trait::async_trait]
impl RequestHandler for StaleGuard {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let stale = self.freshness.catching_up()
            || self
                .freshness
                .last_confirmed()
                .is_none_or(|age| age > MAX_STALE);
        if !stale {
            return self
                .catalog
                .handle_request::<R, T>(request, response_handle)
                .await;
        }
        let edns = request.edns.as_ref().map(|query_edns| {
            let mut edns = Edns::new();
            edns.set_max_payload(query_edns.max_payload().max(512));
            edns
        });
        let response = MessageResponseBuilder::new(&request.queries, edns.as_ref())
            .error_msg(&request.metadata, ResponseCode::ServFail);
        response_handle
            .send_response(response)
            .await
            .expect("send SERVFAIL")
    }
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

/// The reference's answer to `query` as pkraft answers it ([`advertised`]).
async fn exchange_reference(
    reference: SocketAddr,
    query: &[u8],
    expect_answer: bool,
) -> Option<Vec<u8>> {
    Some(advertised(exchange(reference, query, expect_answer).await?))
}

/// A reference answer as pkraft answers it: hickory's `Catalog` echoes the client's buffer
/// size in the OPT record, pkraft advertises its own (RFC 6891 §6.2.5); the rest must be the
/// same bytes.
fn advertised(mut answer: Vec<u8>) -> Vec<u8> {
    let has_opt = Message::from_vec(&answer).is_ok_and(|message| message.edns.is_some());
    if has_opt {
        // hickory writes the OPT record last; with no options (no NSID is configured) it is
        // the root, type 41, the size, the extended rcode, version and flags, and RDLENGTH 0.
        let at = answer.len() - 11;
        assert_eq!(answer[at..at + 3], [0, 0, 41], "the OPT record is last");
        assert_eq!(answer[at + 9..], [0, 0], "the OPT record has no options");
        answer[at + 3..at + 5].copy_from_slice(&SERVER_PAYLOAD.to_be_bytes());
    }
    answer
}

/// The answer to `query` from `server` over TCP (RFC 1035 §4.2.2 framing).
async fn exchange_tcp(server: SocketAddr, query: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(server)
            .await
            .expect("connect");
        let len = u16::try_from(query.len()).expect("short query");
        stream.write_all(&len.to_be_bytes()).await.expect("send");
        stream.write_all(query).await.expect("send");
        let mut len = [0; 2];
        stream.read_exact(&mut len).await.expect("length");
        let mut answer = vec![0; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut answer).await.expect("answer");
        answer
    };
    tokio::time::timeout(ANSWER_TIMEOUT, exchange)
        .await
        .expect("a TCP answer in time")
}

/// A query for `name`, written in the letter case given (`Name::from_str` would lower-case it).
fn message(id: u16, name: &str, rtype: RecordType, edns: Option<Edns>) -> Message {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
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

    let inner = format!("_iroh.{small}.inner.pkarr.test.");
    add(
        "nested origin, most specific",
        message(27, &inner, RecordType::TXT, Some(edns(1232))),
    );
    add(
        "nested origin apex SOA",
        message(28, "inner.pkarr.test.", RecordType::SOA, None),
    );
    add(
        "SOA at a key name (NODATA)",
        message(29, &key, RecordType::SOA, None),
    );
    let mut nsid = edns(1232);
    nsid.options_mut().insert(EdnsOption::NSID(
        NSIDPayload::new(Vec::new()).expect("nsid"),
    ));
    add(
        "NSID asked",
        message(30, &iroh, RecordType::TXT, Some(nsid)),
    );
    add(
        "EDNS size below 512",
        message(31, &big, RecordType::TXT, Some(edns(100))),
    );
    let mut do_nx = edns(4096);
    do_nx.set_dnssec_ok(true);
    add(
        "DO bit, NXDOMAIN",
        message(32, &absent, RecordType::AAAA, Some(do_nx)),
    );
    let mut chaos = message(33, &iroh, RecordType::TXT, None);
    chaos.queries[0].set_query_class(DNSClass::CH);
    add("class CH", chaos);
    add("IXFR", message(34, "pkarr.test.", RecordType::IXFR, None));
    add(
        "AXFR (the chain answers)",
        message(35, "pkarr.test.", RecordType::AXFR, None),
    );
    let mut update = message(36, "pkarr.test.", RecordType::SOA, None);
    update.metadata.op_code = OpCode::Update;
    add("UPDATE (the chain answers)", update);
    let mut none = message(37, &iroh, RecordType::TXT, None);
    none.queries.clear();
    add("no question (FORMERR)", none);
    add(
        "root (REFUSED)",
        message(38, ".", RecordType::NS, Some(edns(1232))),
    );
    // Shapes next to a plain query (`plain_query.rs`), which hickory's parse must answer.
    let mut cookie = edns(1232);
    cookie
        .options_mut()
        .insert(EdnsOption::Unknown(10, vec![1, 2, 3, 4, 5, 6, 7, 8]));
    add(
        "a client cookie",
        message(39, &iroh, RecordType::TXT, Some(cookie)),
    );
    let plain = wire(&message(40, &iroh, RecordType::TXT, Some(edns(1232))));
    let mut trailing = plain.clone();
    trailing.push(0);
    set.push(("a byte after the message".to_string(), trailing, true));
    let mut flag = plain;
    let flags_at = flag.len() - 4;
    flag[flags_at] = 0x40;
    set.push(("an OPT flag other than DO".to_string(), flag, true));

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

/// Sends every query to the reference and to each pkraft server, and checks each pkraft
/// server's three answers against the reference's. Returns the reference answers.
async fn compare(
    servers: &[(Mode, SocketAddr)],
    reference: SocketAddr,
    set: &[(String, Vec<u8>, bool)],
) -> Vec<Option<Vec<u8>>> {
    let mut references = Vec::new();
    for (what, query, answered) in set {
        let expected = exchange_reference(reference, query, *answered).await;
        assert_eq!(expected.is_some(), *answered, "{what}: reference answered?");
        for (mode, server) in servers {
            for round in 0..2 {
                let got = exchange(*server, query, *answered).await;
                assert_eq!(got, expected, "{what}: {mode:?}, round {round}");
            }
            if query.len() >= 2 {
                let other_id = with_id(query.clone(), [0xbe, 0xef]);
                let got = exchange(*server, &other_id, *answered).await;
                let expected = expected.clone().map(|e| with_id(e, [0xbe, 0xef]));
                assert_eq!(got, expected, "{what}: {mode:?}, another ID");
            }
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
        Arc::new(move || (!stale.load(Ordering::Relaxed)).then_some(Duration::ZERO))
    };
    let reference = Reference::start(&store, freshness.clone()).await;
    let mut pkraft = Vec::new();
    for mode in [Mode::Defaults, Mode::DirectOnly, Mode::Unbatched] {
        pkraft.push((mode, start(&store, mode, freshness.clone()).await));
    }
    let servers: Vec<(Mode, SocketAddr)> = pkraft
        .iter()
        .map(|(mode, server)| (*mode, server.local_addr()))
        .collect();
    let reference_addr = reference.local_addr();

    let set = queries(&small, &large, &missing);
    let index_of = |what: &str| {
        set.iter()
            .position(|(name, _, _)| name == what)
            .unwrap_or_else(|| panic!("no query {what:?} in the set"))
    };
    let before = compare(&servers, reference_addr, &set).await;
    let truncated = |what: &str| {
        let wire = before[index_of(what)].as_deref().expect("answered");
        Message::from_vec(wire).expect("parse").metadata.truncation
    };
    assert!(
        truncated("large answer, no EDNS (TC)")
            && truncated("large answer, EDNS 512 (TC)")
            && !truncated("large answer, EDNS 4096"),
        "the TC cases are TC"
    );
    // The OPT record advertises the server's size whatever the client's (the answers above are
    // the reference's with that one change), and the answer keeps within the client's.
    for (what, client_size) in [
        ("large answer, EDNS 512 (TC)", 512),
        ("large answer, EDNS 4096", 4096),
    ] {
        let wire = before[index_of(what)].as_deref().expect("answered");
        let answer = Message::from_vec(wire).expect("parse");
        assert_eq!(
            answer.edns.as_ref().map(Edns::max_payload),
            Some(SERVER_PAYLOAD),
            "{what}"
        );
        assert!(
            wire.len() <= usize::from(client_size.min(SERVER_PAYLOAD)),
            "{what}"
        );
    }
    let answered = set.iter().filter(|(_, _, answered)| *answered).count() as u64;
    let (_, defaults) = &pkraft[0];
    let stats = defaults.udp_answer_stats();
    // Every answered query is a hit on its third sending (the second is kept: the answer cache's
    // doorkeeper), but those never cached:
    // REFUSED (out of zone, the root), the FORMERR of a question cut short, and what the chain
    // answers.
    let by_chain = set
        .iter()
        .filter(|(what, _, _)| what.contains("the chain answers"))
        .count() as u64;
    assert!(
        stats.hits >= answered - 3 - by_chain,
        "repeated queries are answered from the cache: {stats:?}"
    );
    // TCP: pkraft's listener with the local answers in front of the `Catalog`, against hickory's
    // listener and `Catalog` alone (messages of at most 20 bytes, the ones cut short, are left
    // out: hickory's TCP listener handles those before any handler).
    for (what, query, answered) in &set {
        if !answered || query.len() <= 20 {
            continue;
        }
        let expected = advertised(exchange_tcp(reference_addr, query).await);
        let got = exchange_tcp(defaults.local_addr(), query).await;
        assert_eq!(got, expected, "{what}: over TCP");
    }
    let (_, direct_only) = &pkraft[1];
    assert_eq!(
        direct_only.udp_answer_stats().chain,
        3 * by_chain,
        "every query of the set gets a local answer but what only the chain answers"
    );
    // The positive answers from stored packets come from the compiled answers (each sent three
    // times with no answer cache), but those too big for the client, which hickory truncates
    // from the parsed packet: 13 of the set (the three _iroh TXT queries, ANY, the nested
    // origin, NSID, the DO bit, CD, class CH, the large answer with EDNS 4096, the client
    // cookie, the byte after the message and the OPT flag other than DO).
    assert_eq!(
        direct_only.udp_answer_stats().compiled,
        3 * 13,
        "positive answers come from the compiled answers"
    );

    // A new packet for the key retires every cached answer read from it, at once.
    publish(&store, &small, 2_000, &["192.0.2.2:2000"]);
    let after = compare(&servers, reference_addr, &set).await;
    let (iroh, missing_key) = (
        index_of("_iroh TXT, EDNS 1232"),
        index_of("missing key (NXDOMAIN)"),
    );
    assert_ne!(before[iroh], after[iroh], "the new packet is served");
    assert_eq!(
        before[missing_key], after[missing_key],
        "the missing key's answer is unchanged"
    );

    // Too stale: SERVFAIL from all, although the answers are cached.
    stale.store(true, Ordering::Relaxed);
    let servfail = compare(&servers, reference_addr, &set[..1]).await;
    let servfail = Message::from_vec(servfail[0].as_deref().expect("answered")).expect("parse");
    assert_eq!(servfail.metadata.response_code, ResponseCode::ServFail);
    stale.store(false, Ordering::Relaxed);
    assert_eq!(
        compare(&servers, reference_addr, &set[..1]).await,
        after[..1]
    );

    for (_, server) in pkraft {
        server.shutdown().await.expect("shutdown");
    }
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
    let fresh: FreshnessProbe = Arc::new(|| Some(Duration::ZERO));
    let server = start(&store, Mode::Defaults, fresh).await;
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

/// Goal: queries handed to hickory's chain are bounded per socket (`dns.udp_pending_max`): a
/// burst of them beyond it is dropped and counted, not queued as tasks.
/// Method: one socket with a bound of 1, its chain's tasks on the test's single-threaded
/// runtime; 300 AXFR queries (which only the chain answers) sent in bursts of 50. Within a
/// burst the test yields to no other task (a send that has room does not), so a task cannot
/// finish while the loop reads the rest of its burst. Every query is answered or counted as
/// dropped.
#[tokio::test(flavor = "current_thread")]
async fn chain_queries_beyond_udp_pending_max_are_dropped_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("state.redb")).expect("store");
    let settings = Settings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        udp_sockets: 1,
        udp_pending_max: 1,
        rrl: pkraft_dns::rrl::RrlSettings::off(),
        ..Settings::default()
    };
    let fresh: FreshnessProbe = Arc::new(|| Some(Duration::ZERO));
    let server = DnsServer::bind(&settings, store, fresh)
        .await
        .expect("bind");
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    const BURST: u16 = 300;
    for id in 0..BURST {
        let query = message(id, &format!("n{id}.pkarr.test."), RecordType::AXFR, None);
        client
            .send_to(&query.to_vec().expect("encode"), server.local_addr())
            .await
            .expect("send");
        // Bursts of 50, each read by the server before the next is sent: the loop reads on a
        // thread of its own, and a burst of 300 at once can overflow its socket's receive
        // buffer (the kernel's drop, which no counter of pkraft sees).
        if id % 50 == 49 {
            let sent = u64::from(id) + 1;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let stats = server.udp_answer_stats();
                if stats.hits + stats.misses >= sent {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the server read {} of {sent} queries in 10 s",
                    stats.hits + stats.misses
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
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

/// Goal: batched receive and send keep every answer with its query: a burst of distinct queries
/// from many clients, read and answered in batches, gets each client the answer to its own
/// query (its ID and question), as the portable path does.
/// Method: 64 client sockets each send 4 distinct queries at once (known keys, missing keys and
/// names that are no key), twice: to a server with `udp_batch = 32` and one with
/// `udp_batch = 1`; every answer is checked against its query and the reference server's
/// answer to the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_gets_every_client_its_own_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("state.redb")).expect("open");
    let keys: Vec<Keypair> = (10..26).map(keypair).collect();
    for (i, key) in keys.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let addr = format!("192.0.2.{i}:{i}");
        publish(&store, key, 1_000, &[addr.as_str()]);
    }
    let fresh: FreshnessProbe = Arc::new(|| Some(Duration::ZERO));
    let reference = Reference::start(&store, fresh.clone()).await;
    const CLIENTS: usize = 64;
    const PER_CLIENT: usize = 4;
    let query = |client: usize, n: usize| {
        let id = u16::try_from(client * PER_CLIENT + n).expect("small");
        let name = match n % 3 {
            0 | 1 => format!(
                "_iroh.{}.pkarr.test.",
                keys[(client + n) % keys.len()].public_key().to_z32()
            ),
            _ => format!("c{client}n{n}.pkarr.test."),
        };
        message(id, &name, RecordType::TXT, Some(edns(1232)))
            .to_vec()
            .expect("encode")
    };
    let mut expected = Vec::new();
    for client in 0..CLIENTS {
        for n in 0..PER_CLIENT {
            let wire = query(client, n);
            expected.push(exchange_reference(reference.local_addr(), &wire, true).await);
        }
    }
    for mode in [Mode::Defaults, Mode::Unbatched] {
        let server = start(&store, mode, fresh.clone()).await;
        let addr = server.local_addr();
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            clients.push(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        }
        for (client, socket) in clients.iter().enumerate() {
            for n in 0..PER_CLIENT {
                socket.send_to(&query(client, n), addr).await.expect("send");
            }
        }
        for (client, socket) in clients.iter().enumerate() {
            let mut got = Vec::new();
            let mut buf = vec![0; 4_096];
            while got.len() < PER_CLIENT {
                let (len, _) = tokio::time::timeout(ANSWER_TIMEOUT, socket.recv_from(&mut buf))
                    .await
                    .unwrap_or_else(|_| panic!("{mode:?}: client {client} got {got:?}"))
                    .expect("receive");
                got.push(buf[..len].to_vec());
            }
            got.sort();
            let mut want: Vec<Vec<u8>> = (0..PER_CLIENT)
                .map(|n| expected[client * PER_CLIENT + n].clone().expect("answered"))
                .collect();
            want.sort();
            assert_eq!(got, want, "{mode:?}: client {client}");
        }
        server.shutdown().await.expect("shutdown");
    }
    reference.shutdown().await.expect("shutdown");
}

/// Compiled answers damaged on disk are not served: the key is answered from its stored packet
/// (byte for byte what hickory answers), and the damage is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_compiled_answers_are_answered_from_the_packet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let key = keypair(11);
    let compiled = {
        let store = Store::open(&path).expect("open");
        publish(&store, &key, 1_000, &["192.0.2.11:1"]);
        let payload = iroh_packet(&key, 1_000, &["192.0.2.11:1"]).to_relay_payload();
        pkraft_types::compiled::compile(
            &key.public_key().to_bytes(),
            &Payload::new(payload).expect("length"),
        )
    };
    // One bit of the TXT string in the compiled row, in the file itself.
    let mut file = std::fs::read(&path).expect("read");
    let at = file
        .windows(compiled.len())
        .position(|window| window == compiled.as_slice())
        .expect("the compiled row is in the file");
    file[at + compiled.len() - 2] ^= 0x01;
    std::fs::write(&path, file).expect("write");

    let store = Store::open(&path).expect("reopen");
    assert!(store.answers(&key.public_key().to_bytes()).is_err());
    let fresh: FreshnessProbe = Arc::new(|| Some(Duration::ZERO));
    let reference = Reference::start(&store, fresh.clone()).await;
    let direct = start(&store, Mode::DirectOnly, fresh).await;
    let iroh = format!("_iroh.{}.pkarr.test.", key.public_key().to_z32());
    let query = message(1, &iroh, RecordType::TXT, Some(edns(1232)))
        .to_vec()
        .expect("encode");
    let expected = exchange_reference(reference.local_addr(), &query, true).await;
    let got = exchange(direct.local_addr(), &query, true).await;
    assert_eq!(got, expected);
    let answer = Message::from_vec(got.as_deref().expect("answered")).expect("parse");
    assert_eq!(answer.answers.len(), 1, "the packet's record is served");
    let stats = direct.udp_answer_stats();
    assert_eq!(stats.compiled, 0, "{stats:?}");
    direct.shutdown().await.expect("shutdown");
    reference.shutdown().await.expect("shutdown");
}

/// Short-lived records, at the names the binary crate's ACME DNS-01 challenges use
/// (`[https.acme]`, `challenge = "dns-01"`), are answered at `_acme-challenge.<name>`, as they
/// come and go: over UDP with the
/// defaults (local answers and the answer cache, which must not keep a "no such name" from
/// before the value came, though the same query was asked often enough to be kept) and TCP. A
/// name above a challenge exists while it is answered (NODATA, RFC 8020), and a key's own
/// `_acme-challenge` name is its packet's.
/// Method: each query asked three times before the value is set, once after, and three times
/// after it is withdrawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_records_are_answered_as_they_come_and_go() {
    use pkraft_types::short_lived::{ShortLivedRecord, ShortLivedRecords};

    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("state.redb")).expect("store");
    // A key whose packet has an `_acme-challenge` TXT record of its own.
    let keypair = keypair(7);
    let packet = pkraft_testkit::pkarr::SignedPacket::builder()
        .txt(
            "_acme-challenge".try_into().expect("name"),
            pkraft_testkit::txt("the-key-s-own"),
            300,
        )
        .timestamp(pkraft_testkit::pkarr::Timestamp::from(1_000))
        .sign(&keypair)
        .expect("sign");
    let mut txn = store.begin_apply(false).expect("begin");
    txn.apply(&Command::Publish {
        leader_time_micros: 1_000,
        packets: vec![PublishItem {
            key: keypair.public_key().to_bytes(),
            payload: Payload::new(packet.to_relay_payload()).expect("length"),
        }],
    })
    .expect("apply");
    txn.commit(b"state").expect("commit");
    let board = Arc::new(ShortLivedRecords::default());
    let settings = Settings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        udp_sockets: 1,
        rrl: pkraft_dns::rrl::RrlSettings::off(),
        ..Settings::default()
    };
    let fresh: FreshnessProbe = Arc::new(|| Some(Duration::ZERO));
    let server = DnsServer::bind_with(
        &settings,
        store,
        fresh,
        pkraft_dns::AnswerSources {
            dht: None,
            short_lived: Some(pkraft_dns::ShortLivedNames {
                first_label: "_acme-challenge".to_string(),
                records: board.clone(),
            }),
        },
    )
    .await
    .expect("bind");
    let addr = server.local_addr();
    let ask = |name: &str, rtype: RecordType| {
        let query = message(9, name, rtype, Some(edns(1232)))
            .to_vec()
            .expect("encode");
        async move {
            let udp = exchange(addr, &query, true).await.expect("a UDP answer");
            let tcp = exchange_tcp(addr, &query).await;
            let udp = Message::from_vec(&udp).expect("answer");
            let tcp = Message::from_vec(&tcp).expect("answer");
            assert_eq!(udp.answers, tcp.answers, "UDP and TCP agree");
            assert_eq!(
                udp.metadata.response_code, tcp.metadata.response_code,
                "UDP and TCP agree"
            );
            let mut texts: Vec<String> = udp
                .answers
                .iter()
                .map(|record| record.data.to_string())
                .collect();
            texts.sort();
            (udp.metadata.response_code, texts)
        }
    };
    let challenge = |name: &str, value: &str, until_micros: u64| ShortLivedRecord {
        name: name.to_string(),
        value: value.to_string(),
        until_micros,
    };
    let nothing = (ResponseCode::NXDomain, Vec::<String>::new());
    let exists = (ResponseCode::NoError, Vec::<String>::new());
    let apex_name = "_ACME-Challenge.Pkarr.Test.";
    let node_name = "_acme-challenge.node1.pkarr.test.";
    let above = "Node1.pkarr.test.";
    for _ in 0..3 {
        assert_eq!(ask(apex_name, RecordType::TXT).await, nothing);
        assert_eq!(ask(node_name, RecordType::TXT).await, nothing);
        assert_eq!(ask(above, RecordType::A).await, nothing);
    }
    let until_micros = pkraft_types::unix_micros_now() + 60_000_000;
    for value in ["first-value", "second-value"] {
        board.apply(&challenge(
            "_acme-challenge.pkarr.test",
            value,
            until_micros,
        ));
    }
    board.apply(&challenge(
        "_acme-challenge.node1.pkarr.test",
        "node-value",
        until_micros,
    ));
    assert_eq!(
        ask(apex_name, RecordType::TXT).await,
        (
            ResponseCode::NoError,
            vec!["first-value".to_string(), "second-value".to_string()]
        )
    );
    assert_eq!(
        ask(node_name, RecordType::TXT).await,
        (ResponseCode::NoError, vec!["node-value".to_string()])
    );
    let query = message(10, node_name, RecordType::TXT, None)
        .to_vec()
        .expect("encode");
    let answer =
        Message::from_vec(&exchange(addr, &query, true).await.expect("an answer")).expect("answer");
    assert!(
        !answer.answers.is_empty() && answer.answers.iter().all(|record| record.ttl == 0),
        "challenge values have TTL 0: {:?}",
        answer.answers
    );
    assert_eq!(
        ask(apex_name, RecordType::A).await,
        exists,
        "another type at a challenge name is NODATA"
    );
    for _ in 0..3 {
        assert_eq!(
            ask(above, RecordType::A).await,
            exists,
            "the name above a challenge exists (an empty non-terminal)"
        );
    }
    assert_eq!(ask("node2.pkarr.test.", RecordType::A).await, nothing);
    // A key's names are its packet's.
    let key = keypair.public_key().to_z32();
    assert_eq!(
        ask(
            &format!("_acme-challenge.{key}.pkarr.test."),
            RecordType::TXT
        )
        .await,
        (ResponseCode::NoError, vec!["the-key-s-own".to_string()])
    );
    for value in ["first-value", "second-value"] {
        board.apply(&challenge("_acme-challenge.pkarr.test", value, 0));
    }
    board.apply(&challenge(
        "_acme-challenge.node1.pkarr.test",
        "node-value",
        0,
    ));
    for _ in 0..3 {
        assert_eq!(ask(apex_name, RecordType::TXT).await, nothing);
        assert_eq!(ask(node_name, RecordType::TXT).await, nothing);
        assert_eq!(ask(above, RecordType::A).await, nothing);
    }

    // A value that ends by itself (its node stopped mid-order): the name above it is NXDOMAIN
    // again from its end on, though the board did not change and the answer was cached.
    let ends = pkraft_types::unix_micros_now() + 1_500_000;
    board.apply(&challenge("_acme-challenge.node3.pkarr.test", "v", ends));
    for _ in 0..3 {
        assert_eq!(ask("node3.pkarr.test.", RecordType::A).await, exists);
    }
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    assert_eq!(ask("node3.pkarr.test.", RecordType::A).await, nothing);
}
