//! Goal: hostile clients cannot take a node of a cluster off the air, grow its memory or its
//! metric series, or make it an amplifier (issue 34): connection floods on every listener past
//! the node's descriptor limit, idle and slow connections, strangers on the peer and admin
//! listeners, method/path/header floods, and a UDP flood from many networks with large EDNS
//! sizes. While each runs, a well-behaved client keeps publishing and resolving, and must keep
//! being answered.
//! Method: 3-node clusters of the real binary, each node started with a low descriptor limit
//! (soft 128, hard 512: the node raises the soft one) and caps that fit it; attackers bind
//! addresses of 127.0.0.0/8 other than 127.0.0.1 (each address a client, each /24 a network),
//! the well-behaved client uses 127.0.0.1. Small sizes, so that `make test` stays fast;
//! `make bench-abuse` runs the same attacks at full size against release builds
//! (docs/TESTING.md, "Hostile clients"). Every loop is bounded in count and time.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::RecordType;
use pkraft_testkit::pkarr::{Keypair, SignedPacket};
use pkraft_testkit::rng::SplitMix64;
use pkraft_testkit::{iroh_packet, keypair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::task::JoinSet;

use crate::cluster::{ClusterOptions, TestCluster};
use crate::dns_client::{Transport, exchange, key_name, name};
use crate::harness::{Launch, TestServer, http_client};
use crate::metrics::{scrape, value};

/// Every node's descriptor limits: it starts with the soft one and raises it to the hard one.
const NOFILE: (u64, u64) = (128, 512);
/// Bound on one request of the well-behaved client, or one attacker's connect.
const WAIT: Duration = Duration::from_secs(5);

/// Caps that fit [`NOFILE`]: 160 + 96 + 64 + 16 connections and 128 reserved make 464 of 512.
fn hardened(extra: &[(&str, &str)]) -> ClusterOptions {
    let settings = [
        ("http", "max_connections = 160"),
        ("http", "max_connections_per_client = 32"),
        ("dns", "tcp_max_connections = 96"),
        ("dns", "tcp_max_connections_per_client = 32"),
        ("cluster", "peer_max_connections = 64"),
        ("cluster", "peer_max_connections_per_client = 64"),
        ("admin", "max_connections = 16"),
        ("admin", "max_connections_per_client = 8"),
        ("limits", "reserved_descriptors = 128"),
    ];
    ClusterOptions {
        settings: settings
            .iter()
            .chain(extra)
            .map(|(section, line)| ((*section).to_string(), (*line).to_string()))
            .collect(),
        launch: Launch {
            nofile: Some(NOFILE),
            ..Launch::default()
        },
        ..ClusterOptions::default()
    }
}

/// Attacker address number `n` (never 127.0.0.1): `127.<block>.<n / 200>.<n % 200 + 2>`, so
/// that 200 consecutive addresses share a /24.
fn attacker(block: u8, n: usize) -> IpAddr {
    let third = u8::try_from(n / 200).unwrap_or(u8::MAX);
    let fourth = u8::try_from(n % 200 + 2).unwrap_or(u8::MAX);
    IpAddr::V4(Ipv4Addr::new(127, block, third, fourth))
}

async fn connect_from(source: IpAddr, target: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(source, 0)).ok()?;
    tokio::time::timeout(WAIT, socket.connect(target))
        .await
        .ok()?
        .ok()
}

/// What the well-behaved client got: operations answered as asked, and the others.
#[derive(Debug, Default)]
struct Outcomes {
    answered: AtomicU64,
    failed: AtomicU64,
    /// The slowest answered operation, in ms.
    slowest_ms: AtomicU64,
}

impl Outcomes {
    fn record(&self, ok: bool, took: Duration) {
        if ok {
            self.answered.fetch_add(1, Ordering::Relaxed);
            let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
            self.slowest_ms.fetch_max(ms, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.answered.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// The well-behaved client on 127.0.0.1: publishes a new key through `put_to`, reads it back
/// from `get_from` and resolves it over UDP at `dns`, one operation after another until
/// stopped (at most 60 s).
struct WellBehaved {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Outcomes>,
    task: tokio::task::JoinHandle<()>,
}

impl WellBehaved {
    fn start(put_to: &TestServer, get_from: &TestServer, dns: SocketAddr, seed: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Outcomes::default());
        let client = reqwest::Client::builder()
            .local_address(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .timeout(WAIT)
            .build()
            .expect("client");
        let (put_url, get_url) = (put_to.url("/pkarr/"), get_from.url("/pkarr/"));
        let (stopped, counted) = (stop.clone(), outcomes.clone());
        let task = tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut n = 0;
            while !stopped.load(Ordering::Relaxed) && Instant::now() < deadline {
                let key = keypair(seed + n);
                n += 1;
                let z32 = key.public_key().to_z32();
                let body = iroh_packet(&key, 1_000, &["192.0.2.1:1"]).to_relay_payload();
                let started = Instant::now();
                let put = client
                    .put(format!("{put_url}{z32}"))
                    .body(body)
                    .send()
                    .await;
                let put_ok = put.is_ok_and(|r| r.status() == 204);
                counted.record(put_ok, started.elapsed());
                if !put_ok {
                    continue;
                }
                // Reads are local: another node may apply the entry a moment later.
                let started = Instant::now();
                let mut got = false;
                for _ in 0..50 {
                    let get = client.get(format!("{get_url}{z32}")).send().await;
                    match get.map(|r| r.status().as_u16()) {
                        Ok(200) => {
                            got = true;
                            break;
                        }
                        Ok(404) => tokio::time::sleep(Duration::from_millis(20)).await,
                        _ => break,
                    }
                }
                counted.record(got, started.elapsed());
                let started = Instant::now();
                let resolved = resolve_udp(dns, &key).await;
                counted.record(resolved, started.elapsed());
            }
        });
        WellBehaved {
            stop,
            outcomes,
            task,
        }
    }

    /// Stops it and returns what it got.
    async fn finish(self) -> Arc<Outcomes> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.outcomes
    }
}

/// Whether `_iroh.<key>` TXT resolves over UDP from 127.0.0.1 (the key may reach this replica
/// a moment after it was acknowledged elsewhere: asked again for up to a second).
async fn resolve_udp(dns: SocketAddr, key: &Keypair) -> bool {
    let Ok(socket) = UdpSocket::bind("127.0.0.1:0").await else {
        return false;
    };
    let mut query = Message::query();
    query.add_query(Query::query(name(&key_name("_iroh", key)), RecordType::TXT));
    let Ok(bytes) = query.to_vec() else {
        return false;
    };
    let mut buf = vec![0_u8; 4_096];
    for _ in 0..50 {
        if socket.send_to(&bytes, dns).await.is_err() {
            return false;
        }
        let Ok(Ok(len)) = tokio::time::timeout(WAIT, socket.recv(&mut buf)).await else {
            return false;
        };
        match Message::from_vec(&buf[..len]) {
            Ok(answer) if !answer.answers.is_empty() => return true,
            Ok(answer) if answer.metadata.response_code == ResponseCode::NXDomain => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => return false,
        }
    }
    false
}

/// Asserts that the well-behaved client got at least 99 % of its operations answered.
fn assert_served(outcomes: &Outcomes, what: &str) {
    let (answered, failed) = outcomes.counts();
    assert!(
        answered >= 30,
        "{what}: only {answered} operations answered"
    );
    assert!(
        failed * 100 <= answered + failed,
        "{what}: {failed} of {} operations failed (slowest answered: {} ms)",
        answered + failed,
        outcomes.slowest_ms.load(Ordering::Relaxed)
    );
}

/// Holds `count` connections to `target` from `sources` addresses of block `block`; each
/// writes `hello` once, then `keepalive` every `every` (if given) until `hold` has passed.
/// Returns how many connected.
#[allow(clippy::too_many_arguments)]
fn hold_connections(
    tasks: &mut JoinSet<bool>,
    target: SocketAddr,
    block: u8,
    sources: usize,
    count: usize,
    hello: &'static [u8],
    keepalive: Option<(&'static [u8], Duration)>,
    hold: Duration,
) {
    for n in 0..count {
        let source = attacker(block, n % sources);
        tasks.spawn(async move {
            let deadline = Instant::now() + hold;
            let Some(mut stream) = connect_from(source, target).await else {
                return false;
            };
            let _ = stream.write_all(hello).await;
            let mut buf = [0_u8; 512];
            while Instant::now() < deadline {
                let pause = keepalive.map_or(Duration::from_millis(200), |(_, every)| every);
                // Drain what the node sends; EOF: it closed the connection, so open it again
                // (as an attacker would, to keep the slot).
                match tokio::time::timeout(pause, stream.read(&mut buf)).await {
                    Ok(Ok(0) | Err(_)) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let Some(again) = connect_from(source, target).await else {
                            return true;
                        };
                        stream = again;
                        let _ = stream.write_all(hello).await;
                    }
                    Ok(Ok(_)) => {}
                    Err(_) => {
                        if let Some((bytes, _)) = keepalive {
                            let _ = stream.write_all(bytes).await;
                        }
                    }
                }
            }
            true
        });
    }
}

/// A DNS query over TCP, length-prefixed, for the apex SOA.
fn tcp_soa_query() -> &'static [u8] {
    // ID 0x0001, RD, one question: pkarr.test. SOA IN.
    b"\x00\x1c\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05pkarr\x04test\x00\x00\x06\x00\x01"
}

/// The value of a counter or gauge on `server`'s scrape (0 when it has no such series yet).
async fn metric(server: &TestServer, name: &str, labels: &str) -> f64 {
    let scrape = scrape(server).await;
    let series = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    scrape
        .lines()
        .find_map(|line| {
            let (head, value) = line.rsplit_once(' ')?;
            (head == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Connections far past the descriptor limit on every listener of the leader (HTTP, DNS over
/// TCP, admin, peer) and on a follower's peer listener, held open with a request now and then
/// or not at all, while the leader writes snapshots (new files) for the well-behaved client's
/// publishes: no node exits, the leader stays, the client is served, and each listener holds no
/// more than its cap.
#[tokio::test]
async fn connection_floods_past_the_descriptor_limit_leave_the_cluster_serving() {
    let cluster =
        TestCluster::start_as(3, hardened(&[("raft", "snapshot_after_entries = 50")])).await;
    let leader = cluster.leader().await;
    let followers = cluster.ids_except(leader);
    let (target, follower) = (
        &cluster.member(leader).server,
        &cluster.member(followers[0]).server,
    );
    let other = &cluster.member(followers[1]).server;
    let changes_before = metric(follower, "pkraft_raft_leader_changes_total", "").await;
    let snapshots_before = metric(target, "pkraft_raft_snapshot_build_seconds_count", "").await;
    let client = WellBehaved::start(follower, other, target.dns, 10_000);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 1,100 connections in all to a node that may open 512 descriptors.
    let hold = Duration::from_secs(8);
    let mut attack = JoinSet::new();
    // DNS over TCP: a query every 500 ms keeps each alive even under pressure.
    let soa = tcp_soa_query();
    hold_connections(
        &mut attack,
        target.dns,
        11,
        20,
        300,
        soa,
        Some((soa, Duration::from_millis(500))),
        hold,
    );
    // HTTP: half-sent requests (slowloris) and silent connections.
    let partial = b"GET /healthz HTTP/1.1\r\nHost: x\r\n";
    hold_connections(
        &mut attack,
        target.http,
        12,
        20,
        200,
        partial,
        Some((b"X", Duration::from_millis(300))),
        hold,
    );
    hold_connections(&mut attack, target.http, 13, 20, 200, b"", None, hold);
    // Admin: silent connections.
    hold_connections(&mut attack, target.admin, 14, 20, 100, b"", None, hold);
    // Peer: strangers with requests that carry no secret, and silent ones.
    let stranger =
        b"POST /peer/v1/append-entries HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n";
    hold_connections(&mut attack, target.peer, 15, 20, 100, stranger, None, hold);
    hold_connections(&mut attack, target.peer, 16, 20, 100, b"", None, hold);
    hold_connections(
        &mut attack,
        follower.peer,
        17,
        20,
        100,
        stranger,
        None,
        hold,
    );

    // While the flood holds: caps hold, and the descriptors stay within the limit.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let scraped = scrape(target).await;
    for (listener, cap) in [
        ("dns_tcp", 96.0),
        ("http", 160.0),
        ("admin", 16.0),
        ("peer", 64.0),
    ] {
        let open = value(
            &scraped,
            "pkraft_listener_connections",
            &format!("listener=\"{listener}\""),
        );
        assert!(
            open <= cap,
            "{listener}: {open} connections open, cap {cap}"
        );
    }
    let fds = value(&scraped, "process_open_fds", "");
    assert!(fds < 512.0, "{fds} descriptors open");
    while attack.join_next().await.is_some() {}
    let outcomes = client.finish().await;

    for member in &cluster.members {
        assert!(
            crate::cluster::admin_status(&member.server).await.is_some(),
            "node {} does not answer after the flood\n{}",
            member.id,
            member.server.log()
        );
    }
    assert_served(&outcomes, "the well-behaved client");
    assert_eq!(cluster.leader().await, leader, "the leader changed");
    assert_eq!(
        metric(follower, "pkraft_raft_leader_changes_total", "").await,
        changes_before,
        "the follower saw leader changes"
    );
    // The leader kept writing files while clients held everything they could.
    let snapshots = metric(target, "pkraft_raft_snapshot_build_seconds_count", "").await;
    assert!(
        snapshots > snapshots_before,
        "no snapshot was built during the flood"
    );
    let scraped = scrape(target).await;
    assert!(
        value(
            &scraped,
            "pkraft_listener_accept_errors_total",
            "listener=\"dns_tcp\""
        ) == 0.0
    );
    assert!(
        value(
            &scraped,
            "pkraft_listener_evicted_unauthenticated_total",
            "listener=\"peer\""
        ) + value(
            &scraped,
            "pkraft_listener_accepted_total",
            "listener=\"peer\""
        ) > 100.0,
        "the strangers reached the peer listener"
    );
}

/// Requests with made-up methods, paths and headers (on the public listener) and queries with
/// made-up types, classes and opcodes (on DNS): a second flood of new values adds nothing to
/// `/metrics` (at most 1 %: counter values grow digits) once the first has made every series
/// it can.
#[tokio::test]
async fn method_path_header_and_query_floods_do_not_grow_the_metrics() {
    let cluster = TestCluster::start_as(3, hardened(&[])).await;
    let node = &cluster.member(cluster.follower().await).server;
    let mut rng = SplitMix64::new(34);
    flood_http_and_dns(node, &mut rng, 0, 300).await;
    let first = scrape(node).await.len();
    flood_http_and_dns(node, &mut rng, 1, 300).await;
    let second = scrape(node).await.len();
    let growth = second.saturating_sub(first) as f64 / first as f64;
    assert!(
        growth <= 0.01,
        "/metrics grew from {first} to {second} bytes ({:.1} %)\n{}",
        growth * 100.0,
        scrape(node).await
    );
}

/// `count` raw HTTP requests with random methods, paths and headers, each from an address of
/// block 20 + `round` and over a connection of its own, and `count` DNS queries with random
/// types, classes and opcodes over UDP and TCP.
async fn flood_http_and_dns(node: &TestServer, rng: &mut SplitMix64, round: u8, count: usize) {
    let mut requests = JoinSet::new();
    for n in 0..count {
        let method_len = 20 + rng.below(20) as usize;
        let method = random_token(rng, method_len);
        let segments = 1 + rng.below(3);
        let path: String = (0..segments)
            .map(|_| {
                let len = 1 + rng.below(60) as usize;
                format!("/{}", random_token(rng, len))
            })
            .collect();
        let header = random_token(rng, 30);
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nX-{header}: {header}\r\nConnection: close\r\n\r\n"
        );
        let (source, target) = (attacker(20 + round, n), node.http);
        requests.spawn(async move {
            let mut stream = connect_from(source, target).await?;
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
            Some(())
        });
    }
    while requests.join_next().await.is_some() {}
    for n in 0..count {
        let mut query = Message::query();
        let qtype = RecordType::from(u16::try_from(rng.below(65_536)).unwrap_or(1));
        let mut question = Query::query(name(&format!("x{n}.pkarr.test")), qtype);
        question.set_query_class(hickory_proto::rr::DNSClass::from(
            u16::try_from(rng.below(65_536)).unwrap_or(1),
        ));
        query.add_query(question);
        query.metadata.op_code =
            hickory_proto::op::OpCode::from_u8(u8::try_from(rng.below(16)).unwrap_or(0));
        let Ok(bytes) = query.to_vec() else {
            continue;
        };
        let transport = if n % 2 == 0 {
            Transport::Udp
        } else {
            Transport::Tcp
        };
        let _ = tokio::time::timeout(WAIT, exchange(node.dns, transport, &bytes)).await;
    }
}

/// `len` random characters of an HTTP token (letters and digits).
fn random_token(rng: &mut SplitMix64, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..len.max(1))
        .map(|_| char::from(ALPHABET[rng.below(ALPHABET.len() as u64) as usize]))
        .collect()
}

/// A packet large enough that its answer is about 14 times a query's size.
fn big_packet(key: &Keypair) -> SignedPacket {
    let addrs: Vec<String> = (0..24)
        .map(|n| format!("192.0.2.{n}:{}", 40_000 + n))
        .collect();
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    iroh_packet(key, 1_000, &addrs)
}

/// A UDP flood forged from 200 networks, each under its own limit, asking with EDNS 4096 for a
/// key whose answer is large: what the node sends is held to the global budget (answers and
/// bytes), no answer is larger than `dns.udp_payload_max`, and a client on another network is
/// still answered (over UDP, or over TCP after a truncated answer).
#[tokio::test]
async fn a_udp_flood_from_many_networks_is_held_to_the_global_budget() {
    let cluster = TestCluster::start_as(
        3,
        hardened(&[
            ("dns", "udp_payload_max = 1232"),
            ("dns.rrl", "global_responses_per_second = 200"),
            ("dns.rrl", "global_responses_burst = 200"),
            ("dns.rrl", "global_bytes_per_second = 100000"),
            ("dns.rrl", "global_bytes_burst = 100000"),
        ]),
    )
    .await;
    let leader = cluster.leader().await;
    let node = &cluster.member(leader).server;
    let key = keypair(34_000);
    node.publish(&key, &big_packet(&key)).await;
    let mut query = Message::query();
    query.add_query(Query::query(
        name(&key_name("_iroh", &key)),
        RecordType::TXT,
    ));
    let mut opt = Edns::new();
    opt.set_max_payload(4_096);
    query.set_edns(opt);
    let bytes = query.to_vec().expect("encode");
    let answer = exchange(node.dns, Transport::Tcp, &bytes).await;
    assert!(
        answer.len() > 8 * bytes.len(),
        "an answer of {} bytes to a query of {}",
        answer.len(),
        bytes.len()
    );
    let sent_before = metric(node, "pkraft_dns_udp_answer_bytes_total", "").await;

    // 200 networks (127.30.<n>.2, one /24 each), 20 queries each, as fast as they go.
    let started = Instant::now();
    let mut flood = JoinSet::new();
    for n in 0..200_u8 {
        let (bytes, target) = (bytes.clone(), node.dns);
        flood.spawn(async move {
            let socket = UdpSocket::bind((Ipv4Addr::new(127, 30, n, 2), 0))
                .await
                .ok()?;
            for _ in 0..20 {
                socket.send_to(&bytes, target).await.ok()?;
            }
            let (mut received, mut largest) = (0_u64, 0_usize);
            let mut buf = vec![0_u8; 65_535];
            while let Ok(Ok(len)) =
                tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf)).await
            {
                received += len as u64;
                largest = largest.max(len);
            }
            Some((received, largest))
        });
    }
    // Meanwhile the well-behaved client resolves from 127.0.0.1.
    let client = async {
        let mut answered = 0;
        for _ in 0..20 {
            if resolve_with_fallback(node.dns, &bytes).await {
                answered += 1;
            }
        }
        answered
    };
    let (answered, results) = tokio::join!(client, flood.join_all());
    let elapsed = started.elapsed().as_secs_f64();
    let (received, largest) = results
        .into_iter()
        .flatten()
        .fold((0, 0), |(sum, max), (received, largest)| {
            (sum + received, max.max(largest))
        });
    // The rate for the time, the burst, and the debt the networks within their share may run
    // up past an empty bucket (another burst: `pkraft_limits::fair`).
    let allowed = 2.0 * 100_000.0 + 100_000.0 * elapsed;
    assert!(
        (received as f64) <= allowed,
        "the flood got {received} bytes in {elapsed:.1} s; the budget allows {allowed:.0}"
    );
    let sent = metric(node, "pkraft_dns_udp_answer_bytes_total", "").await - sent_before;
    assert!(
        sent <= allowed + 20.0 * 1_232.0,
        "the node sent {sent} bytes"
    );
    assert!(largest <= 1_232, "a UDP answer of {largest} bytes");
    assert!(
        metric(node, "pkraft_dns_rrl_global_limited_total", "").await > 0.0,
        "the global budget refused nothing"
    );
    assert_eq!(answered, 20, "the well-behaved client was not answered");
}

/// Whether `query` gets an answer with records: over UDP, or over TCP when the UDP answer is
/// truncated or does not come (as a resolver retries).
async fn resolve_with_fallback(dns: SocketAddr, query: &[u8]) -> bool {
    let Ok(socket) = UdpSocket::bind("127.0.0.1:0").await else {
        return false;
    };
    let mut buf = vec![0_u8; 65_535];
    if socket.send_to(query, dns).await.is_ok()
        && let Ok(Ok(len)) =
            tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf)).await
        && let Ok(answer) = Message::from_vec(&buf[..len])
        && !answer.metadata.truncation
    {
        return !answer.answers.is_empty();
    }
    let Ok(answer) = tokio::time::timeout(WAIT, exchange(dns, Transport::Tcp, query)).await else {
        return false;
    };
    Message::from_vec(&answer).is_ok_and(|answer| !answer.answers.is_empty())
}

/// A config whose caps do not fit the descriptor limit is refused at start, naming the fields;
/// one that fits starts with the soft limit raised to the hard one.
#[tokio::test]
async fn the_descriptor_budget_is_checked_at_start_and_the_soft_limit_raised() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[cluster]\nbootstrap = true\n").expect("write");
    let output = Launch {
        nofile: Some((256, 1_024)),
        ..Launch::default()
    }
    .command()
    .args(["serve", "--config"])
    .arg(&config)
    .arg("--data-dir")
    .arg(dir.path().join("data"))
    .args(pkraft_testkit::node::LOOPBACK_PORT_0_ARGS)
    .output()
    .expect("run pkraft");
    assert!(!output.status.success(), "started with caps past the limit");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for part in [
        "http.max_connections 4096",
        "dns.tcp_max_connections 1024",
        "cluster.peer_max_connections 512",
        "admin.max_connections 64",
        "limits.reserved_descriptors 256",
        "may open 1024",
    ] {
        assert!(stderr.contains(part), "{part:?} not in {stderr}");
    }

    let fits = "[cluster]\nbootstrap = true\npeer_max_connections = 64\n\
                [http]\nmax_connections = 300\n\
                [dns]\ntcp_max_connections = 100\n[limits]\nreserved_descriptors = 64\n";
    std::fs::write(&config, fits).expect("write");
    let launch = Launch {
        nofile: Some((128, 1_024)),
        ..Launch::default()
    };
    let server = TestServer::start_serve_at(&config, dir.path().join("data2"), launch);
    server.wait_for_log("file descriptors limit=1024").await;
    assert_eq!(
        value(&scrape(&server).await, "process_max_fds", ""),
        1_024.0,
        "the soft limit was not raised to the hard one"
    );
}

/// Under pressure (three quarters of a listener's slots taken) connections idle for a second
/// are closed, on HTTP and DNS over TCP alike; without it they stay for the idle timeout. On the
/// peer listener a request without the secret is answered 401 and its connection closed, a
/// silent connection is closed after 5 s, and strangers beyond the probation places push the
/// oldest out.
#[tokio::test]
async fn idle_connections_make_room_under_pressure_and_strangers_leave_the_peer_listener() {
    let server = TestServer::start_with_config(
        "[cluster]\nbootstrap = true\nsecret = \"0123456789abcdef0123\"\n\
         [http]\nmax_connections = 40\nidle_timeout = \"30s\"\n\
         [dns]\ntcp_max_connections = 40\ntcp_idle_timeout = \"30s\"\n",
    );
    for (listener, target, block) in [("http", server.http, 40), ("dns_tcp", server.dns, 41)] {
        // Below pressure (10 of 40): an idle connection stays.
        let mut calm = Vec::new();
        for n in 0..10 {
            calm.push(
                connect_from(attacker(block, n), target)
                    .await
                    .expect("connect"),
            );
        }
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let labels = format!("listener=\"{listener}\"");
        assert_eq!(
            metric(&server, "pkraft_listener_connections", &labels).await,
            10.0,
            "{listener}: idle connections closed without pressure"
        );
        // 35 of 40: pressure; idle ones go within about a second.
        for n in 10..35 {
            calm.push(
                connect_from(attacker(block, n), target)
                    .await
                    .expect("connect"),
            );
        }
        // Pressure lasts until fewer than half the slots are taken: at least 16 of the 35 go.
        let started = Instant::now();
        let mut reads = JoinSet::new();
        for mut stream in calm {
            reads.spawn(async move {
                let mut buf = [0_u8; 64];
                let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf));
                matches!(read.await, Ok(Ok(0) | Err(_)))
            });
        }
        let closed = reads
            .join_all()
            .await
            .into_iter()
            .filter(|closed| *closed)
            .count();
        assert!(
            (16..=35).contains(&closed),
            "{listener}: {closed} idle connections closed in {:?}",
            started.elapsed()
        );
        assert!(
            metric(
                &server,
                "pkraft_listener_closed_under_pressure_total",
                &labels
            )
            .await
                >= 15.0
        );
    }

    // A stranger's request on the peer listener: 401 before the body, then the connection ends.
    let mut stranger = connect_from(attacker(42, 0), server.peer)
        .await
        .expect("connect");
    stranger
        .write_all(b"POST /peer/v1/vote HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stranger.read_to_end(&mut answer))
        .await
        .expect("the connection ends")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // A silent one is closed within the first-request deadline (5 s).
    let mut silent = connect_from(attacker(42, 1), server.peer)
        .await
        .expect("connect");
    let started = Instant::now();
    let mut buf = [0_u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    let took = started.elapsed();
    assert!(
        (Duration::from_secs(4)..Duration::from_secs(8)).contains(&took),
        "a silent peer connection closed after {took:?}"
    );
    // 100 silent strangers from 100 addresses: the oldest are pushed out at once.
    let mut strangers = Vec::new();
    for n in 0..100 {
        if let Some(stream) = connect_from(attacker(43, n), server.peer).await {
            strangers.push(stream);
        }
    }
    let mut pushed_out = 0;
    for stream in strangers.iter_mut().take(30) {
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            pushed_out += 1;
        }
    }
    assert_eq!(pushed_out, 30, "the oldest strangers were not pushed out");
    assert!(
        metric(
            &server,
            "pkraft_listener_evicted_unauthenticated_total",
            "listener=\"peer\""
        )
        .await
            >= 30.0
    );
    // The node still answers its own clients meanwhile.
    let health = http_client()
        .get(server.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
}
