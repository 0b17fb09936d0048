//! Goal: no long-lived loop of a node dies silently (`pkraft_tasks`). A UDP loop that panics is
//! logged, counted and serves again on its socket (before, the socket stayed bound and the
//! kernel kept sending it a share of the resolvers, unanswered); a background task that panics
//! (expiry) is logged, counted and started again, and does its work; an accept loop that panics
//! (HTTP, DNS over TCP) is logged, counted and accepts again on its listener (before, the loop's
//! task ended: the listener closed and its open connections were cut). A request whose handler
//! panics is answered 500 on a connection that goes on, and a connection whose task panics ends
//! alone; both are logged and counted by listener (before, the connection was cut without a
//! word, its panic message on stderr only).
//! Method: the real binary with `PKRAFT_TEST_PANIC` naming the loop (or the place) to panic once
//! (fault injection read by `pkraft_tasks::injected_panic`); clients are real sockets on
//! loopback.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cluster::{eventually, get_body, packet, put, put_until_accepted};
use crate::dns_client::{Transport, raw_query};
use crate::harness::{Launch, ORIGIN, TestServer};
use crate::metrics::{sample, scrape};

/// Clients (each its own UDP socket, so SO_REUSEPORT spreads them over the node's sockets) and
/// queries each sends, one after the other.
const CLIENTS: usize = 16;
const QUERIES: usize = 8;
/// A client waits this long for an answer, then asks once more from the same socket (as a
/// resolver does): only the query a loop was handling when it panicked is lost.
const ANSWER_WAIT: Duration = Duration::from_secs(1);

fn launch_panicking(task: &str) -> Launch {
    Launch {
        env: vec![("PKRAFT_TEST_PANIC".to_string(), task.to_string())],
        ..Launch::default()
    }
}

async fn panics(server: &TestServer, task: &str) -> Option<f64> {
    sample(
        &scrape(server).await,
        "pkraft_task_panics_total",
        &format!("task=\"{task}\""),
    )
}

async fn connection_panics(server: &TestServer, listener: &str) -> Option<f64> {
    sample(
        &scrape(server).await,
        "pkraft_connection_panics_total",
        &format!("listener=\"{listener}\""),
    )
}

/// The origin's SOA, asked over DNS over TCP, is answered.
async fn assert_soa_over_tcp(server: &TestServer) {
    let answer = raw_query(
        server.dns,
        Transport::Tcp,
        &format!("{ORIGIN}."),
        RecordType::SOA,
        None,
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(!answer.answers.is_empty(), "no SOA over TCP");
}

/// Whether the server closes `stream` without a byte, within 10 s.
async fn closed_without_answer(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// Sends `GET /healthz` on `stream` (HTTP/1.1, kept alive) and reads the answer: its status.
async fn healthz_status(stream: &mut TcpStream) -> u16 {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write the request");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let head_end = loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .expect("read the answer");
        assert!(read > 0, "closed before the answer's head");
        answer.extend_from_slice(&buf[..read]);
    };
    let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .expect("a content-length")
        .trim()
        .parse()
        .expect("a number");
    while answer.len() < head_end + length {
        let read = stream.read(&mut buf).await.expect("read the body");
        assert!(read > 0, "closed before the answer's body");
        answer.extend_from_slice(&buf[..read]);
    }
    head.split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .expect("a status line")
}

/// One client's queries for the origin's SOA; how many got no answer after a retry.
async fn unanswered(dns: SocketAddr) -> usize {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut lost = 0;
    for _ in 0..QUERIES {
        let mut query = Message::query();
        query.add_query(Query::query(
            Name::from_ascii(format!("{ORIGIN}.")).expect("name"),
            RecordType::SOA,
        ));
        let bytes = query.to_vec().expect("encode");
        let mut answered = false;
        for _try in 0..2 {
            socket.send_to(&bytes, dns).await.expect("send");
            let mut buf = vec![0u8; 4096];
            if let Ok(Ok((len, _))) =
                tokio::time::timeout(ANSWER_WAIT, socket.recv_from(&mut buf)).await
            {
                let answer = Message::from_vec(&buf[..len]).expect("decode");
                assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
                answered = true;
                break;
            }
        }
        lost += usize::from(!answered);
    }
    lost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_udp_loop_is_logged_counted_and_serves_again() {
    let config = "[cluster]\nbootstrap = true\n[dns]\nudp_sockets = 2\n";
    let server = TestServer::start_with_config_launched(config, launch_panicking("dns-udp"));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        clients.spawn(unanswered(server.dns));
    }
    let mut lost = 0;
    while let Some(client) = clients.join_next().await {
        lost += client.expect("client task");
    }
    assert_eq!(
        lost,
        0,
        "queries unanswered after a retry\n{}",
        server.log()
    );
    assert_eq!(panics(&server, "dns-udp").await, Some(1.0));
    let log = server.log();
    assert!(
        log.contains("a task panicked") && log.contains("dns-udp"),
        "{log}"
    );
}

#[tokio::test]
async fn a_panicking_background_task_is_logged_counted_and_does_its_work() {
    let config = "[cluster]\nbootstrap = true\n[raft]\nexpiry_interval = \"200ms\"\n";
    let server = TestServer::start_with_config_launched(config, launch_panicking("expiry"));
    eventually("the expiry task's panic counted", || async {
        (panics(&server, "expiry").await == Some(1.0)).then_some(())
    })
    .await;
    // Started again, it expires: a packet signed in 1970 goes.
    let (key, signed) = packet(9_500, 1_000);
    assert_eq!(put(&server, &key, &signed).await.status(), 204);
    eventually("the old packet expired", || async {
        (get_body(&server, &key, "").await.0 == 404).then_some(())
    })
    .await;
    assert!(
        server
            .log()
            .contains("PKRAFT_TEST_PANIC: injected panic in expiry")
    );
    // Every other supervised loop has its series, at 0.
    assert_eq!(panics(&server, "scrub").await, Some(0.0));
}

#[tokio::test]
async fn a_panicking_accept_loop_is_logged_counted_and_accepts_again() {
    // The HTTP and the DNS-over-TCP accept loops each panic on their first round, before
    // their first connection.
    let server = TestServer::start_with_config_launched(
        "[cluster]\nbootstrap = true\n",
        launch_panicking("http,dns_tcp"),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    let (key, signed) = packet(9_600, u64::try_from(now.as_micros()).expect("fits"));
    put_until_accepted(&server, &key, &signed).await;
    assert_eq!(get_body(&server, &key, "").await.0, 200);
    assert_soa_over_tcp(&server).await;
    for task in ["http", "dns_tcp"] {
        assert_eq!(panics(&server, task).await, Some(1.0), "{task}");
    }
    let log = server.log();
    assert!(
        log.contains("PKRAFT_TEST_PANIC: injected panic in http")
            && log.contains("PKRAFT_TEST_PANIC: injected panic in dns_tcp"),
        "{log}"
    );
    // The other listeners' accept loops have their series, at 0.
    assert_eq!(panics(&server, "peer").await, Some(0.0));
}

#[tokio::test]
async fn a_panicking_request_is_answered_500_and_a_panicking_connection_ends_alone() {
    // The HTTP and DNS-over-TCP listeners' first connections panic as they start, and so does
    // the first `/healthz` handler.
    let server = TestServer::start_with_config_launched(
        "[cluster]\nbootstrap = true\n",
        launch_panicking("http/connection,dns_tcp/connection,healthz"),
    );
    let mut first = TcpStream::connect(server.http).await.expect("connect");
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert!(
        closed_without_answer(&mut first).await,
        "the panicking connection"
    );
    // The next connection is served. Its handler panics: 500, and the connection goes on.
    let mut second = TcpStream::connect(server.http).await.expect("connect");
    assert_eq!(healthz_status(&mut second).await, 500);
    assert_eq!(healthz_status(&mut second).await, 200);

    let mut first_dns = TcpStream::connect(server.dns).await.expect("connect");
    assert!(
        closed_without_answer(&mut first_dns).await,
        "the panicking DNS connection"
    );
    assert_soa_over_tcp(&server).await;

    assert_eq!(connection_panics(&server, "http").await, Some(2.0));
    assert_eq!(connection_panics(&server, "dns_tcp").await, Some(1.0));
    assert_eq!(connection_panics(&server, "peer").await, Some(0.0));
    // Not a loop's panic: the accept loops went on as they were.
    assert_eq!(panics(&server, "http").await, Some(0.0));
    let log = server.log();
    assert!(
        log.contains("a connection's task panicked")
            && log.contains("a request's handler panicked")
            && log.contains("injected panic in http/connection")
            && log.contains("injected panic in dns_tcp/connection")
            && log.contains("injected panic in healthz"),
        "{log}"
    );
}
