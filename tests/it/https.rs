//! Goal: the optional `[https]` listener serves the public API (relay and DNS-over-HTTPS) over
//! TLS, as a DoH client that insists on `https://` needs, with the same answers as plain DNS.
//! Method: the real binary with the test certificate in tests/fixtures/tls, and reqwest trusting
//! only the test CA, over HTTP/1.1 and HTTP/2 (ALPN).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::RecordType;
use pkraft_testkit::{iroh_packet, keypair};

use crate::dns_client::{Transport, exchange, key_name, name};
use crate::harness::{TestServer, install_crypto_provider};

fn fixture(file: &str) -> String {
    format!(
        "{}/../../tests/fixtures/tls/{file}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The `https=Some(ADDR)` the node logs when it starts.
fn https_port(log: &str) -> u16 {
    let start = log.find("https=Some(").expect("https address in the log") + "https=Some(".len();
    let end = start + log[start..].find(')').expect("closing parenthesis");
    let addr: std::net::SocketAddr = log[start..end].parse().expect("an address");
    addr.port()
}

#[tokio::test]
async fn doh_and_the_relay_over_https_with_http1_and_http2() {
    let server = TestServer::start_with_config(&format!(
        "[https]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n\
             [cluster]\nbootstrap = true\n",
        fixture("localhost.crt"),
        fixture("localhost.key")
    ));
    let port = https_port(&server.log());
    let key = keypair(70);
    let packet = iroh_packet(&key, 1_000, &["192.0.2.7:7"]);
    server.publish(&key, &packet).await;

    let mut query = Message::query();
    query.metadata.id = 7;
    query.add_query(Query::query(
        name(&key_name("_iroh", &key)),
        RecordType::TXT,
    ));
    let query = query.to_vec().expect("encode");
    let over_tcp = exchange(server.dns, Transport::Tcp, &query).await;

    install_crypto_provider();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(fixture("ca.crt")).expect("ca"))
        .expect("ca pem");
    for http2 in [false, true] {
        let mut builder = reqwest::Client::builder().tls_certs_only([ca.clone()]);
        builder = if http2 {
            builder.http2_prior_knowledge()
        } else {
            builder.http1_only()
        };
        let client = builder.build().expect("client");
        let doh = client
            .get(format!(
                "https://localhost:{port}/dns-query?dns={}",
                URL_SAFE_NO_PAD.encode(&query)
            ))
            .send()
            .await
            .expect("DoH over https");
        assert_eq!(doh.status(), 200, "http2 {http2}");
        let expected = if http2 {
            reqwest::Version::HTTP_2
        } else {
            reqwest::Version::HTTP_11
        };
        assert_eq!(doh.version(), expected);
        assert_eq!(doh.bytes().await.expect("body"), over_tcp, "http2 {http2}");

        let relay = client
            .get(format!(
                "https://localhost:{port}/pkarr/{}",
                key.public_key().to_z32()
            ))
            .send()
            .await
            .expect("GET over https");
        assert_eq!(relay.status(), 200);
        assert_eq!(
            relay.bytes().await.expect("body"),
            packet.to_relay_payload()
        );
    }

    // A client that does not trust the test CA is refused at the handshake.
    let untrusting = reqwest::Client::builder().build().expect("client");
    assert!(
        untrusting
            .get(format!("https://localhost:{port}/healthz"))
            .send()
            .await
            .is_err()
    );
}
