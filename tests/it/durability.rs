//! Goal: an acknowledged PUT survives a crash. pkraft answers 204 only after the packet is
//! committed to the Raft log and applied to redb, both fsynced, so SIGKILL right after the
//! answer must lose nothing.
//! Method: the real binary; PUT → 204 → SIGKILL → restart on the same data dir → the packet is
//! served by GET and DNS, and the node accepts new writes.

use hickory_proto::op::Message;
use pkraft_testkit::pkarr::Keypair;
use pkraft_testkit::{iroh_packet, keypair};

use crate::harness::{ORIGIN, TestServer};

#[tokio::test]
async fn acknowledged_puts_survive_sigkill() {
    let mut server = TestServer::start();
    let keys: Vec<_> = (0..20).map(|i| keypair(40 + i)).collect();
    for (i, key) in keys.iter().enumerate() {
        let packet = iroh_packet(key, 1_000 + i as u64, &[&format!("192.0.2.1:{}", 1000 + i)]);
        server.publish(key, &packet).await;
    }

    server.kill();
    server.restart();

    for (i, key) in keys.iter().enumerate() {
        let expected = iroh_packet(key, 1_000 + i as u64, &[&format!("192.0.2.1:{}", 1000 + i)]);
        let get = server.get(&server.relay_url(key)).await;
        assert_eq!(get.status(), 200, "key {i} after restart\n{}", server.log());
        assert_eq!(
            get.bytes().await.expect("body"),
            expected.to_relay_payload()
        );
    }
    let answer = dns_txt(&server, &keys[0]).await;
    assert_eq!(answer, vec!["addr=192.0.2.1:1000".to_string()]);

    // The restarted node leads again and takes writes.
    let newer = iroh_packet(&keys[0], 5_000, &["192.0.2.1:5000"]);
    server.publish(&keys[0], &newer).await;
    assert_eq!(
        dns_txt(&server, &keys[0]).await,
        vec!["addr=192.0.2.1:5000".to_string()]
    );
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_keeps_data() {
    let mut server = TestServer::start();
    let key = keypair(60);
    server
        .publish(&key, &iroh_packet(&key, 1_000, &["192.0.2.1:1"]))
        .await;

    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}\n{}", server.log());
    assert!(server.log().contains("stopped"), "{}", server.log());

    server.restart();
    assert_eq!(server.get(&server.relay_url(&key)).await.status(), 200);
}

/// The TXT strings for `_iroh.<key>` over UDP, as raw DNS.
async fn dns_txt(server: &TestServer, key: &Keypair) -> Vec<String> {
    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RData, RecordType};
    let qname = format!("_iroh.{}.{ORIGIN}.", key.public_key().to_z32());
    let mut query = Message::query();
    query.add_query(Query::query(
        qname.parse::<Name>().expect("name"),
        RecordType::TXT,
    ));
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    socket
        .send_to(&query.to_vec().expect("encode"), server.dns)
        .await
        .expect("send");
    let mut buf = vec![0u8; 4096];
    let len = tokio::time::timeout(std::time::Duration::from_secs(5), socket.recv(&mut buf))
        .await
        .expect("answer in time")
        .expect("recv");
    let response = Message::from_vec(&buf[..len]).expect("decode");
    response
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}
