//! Goal: every kind of bad PUT gets its status code and a message saying what is wrong, stores
//! nothing, and leaves the server serving.
//! Method: real HTTP PUTs of damaged payloads, each followed by checks that nothing was stored;
//! then a valid publish and read.

use bytes::Bytes;
use pkraft_testkit::{iroh_packet, keypair, sign_raw};

use crate::harness::TestServer;

async fn expect_rejected(server: &TestServer, url: &str, body: Bytes, status: u16, says: &str) {
    let response = server.put(url, body).await;
    assert_eq!(response.status(), status, "expected {status} for: {says}");
    let text = response.text().await.expect("body");
    assert!(text.contains(says), "body {text:?} should mention {says:?}");
}

#[tokio::test]
async fn bad_payloads_are_rejected_and_nothing_is_stored() {
    let server = TestServer::start();
    let key = keypair(20);
    let url = server.relay_url(&key);
    let good = iroh_packet(&key, 1_000, &["192.0.2.1:1"]).to_relay_payload();

    // Truncated: shorter than signature + timestamp.
    expect_rejected(
        &server,
        &url,
        good.slice(..40),
        400,
        "relay payload is 40 bytes",
    )
    .await;
    expect_rejected(&server, &url, Bytes::new(), 400, "relay payload is 0 bytes").await;
    // Truncated inside the DNS packet: the signature no longer covers it.
    expect_rejected(
        &server,
        &url,
        good.slice(..good.len() - 5),
        400,
        "signature",
    )
    .await;
    // Flipped signature bit.
    let mut flipped = good.to_vec();
    flipped[3] ^= 0x40;
    expect_rejected(&server, &url, Bytes::from(flipped), 400, "signature").await;
    // Signed by another key than the one in the URL.
    let other = iroh_packet(&keypair(21), 1_000, &["192.0.2.1:1"]).to_relay_payload();
    expect_rejected(&server, &url, other, 400, "signature").await;
    // Valid signature over bytes that are not a DNS packet.
    let garbage = sign_raw(&key, 1_000, b"\x00\x01garbage that is not dns");
    expect_rejected(&server, &url, garbage, 400, "DNS packet").await;
    // A timestamp no HTTP date can express (a far-future packet would also block the owner's
    // real updates; the configurable skew limit is issue 7's).
    let far_future = iroh_packet(&key, u64::MAX, &["192.0.2.1:1"]).to_relay_payload();
    expect_rejected(&server, &url, far_future, 400, "after the year 9999").await;
    // Non-z32 key in the URL.
    let bad_key_url = server.url("/pkarr/0OIl-not-zbase32");
    expect_rejected(&server, &bad_key_url, good.clone(), 400, "public key").await;

    assert_eq!(server.get(&url).await.status(), 404, "nothing was stored");

    // Still serving.
    let response = server.put(&url, good.clone()).await;
    assert_eq!(response.status(), 204, "{}", server.log());
    assert_eq!(server.get(&url).await.bytes().await.expect("body"), good);
}
