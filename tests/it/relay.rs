//! Goal: the pkarr relay contract of DESIGN.md §2.1, one test per status code and header.
//! Method: real HTTP requests with reqwest against `pkraft dev` on port 0.

use bytes::Bytes;
use pkraft_testkit::pkarr::{SignedPacket, Timestamp};
use pkraft_testkit::{iroh_packet, keypair, txt};

use crate::harness::{TestServer, http_client};

const PAYLOAD_TYPE: &str = "application/pkarr.org/relays#payload";

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn put_returns_204_with_stored_nodes_and_get_returns_the_payload() {
    let server = TestServer::start();
    let key = keypair(1);
    let packet = iroh_packet(&key, 1_700_000_000_000_000, &["192.0.2.1:4433"]);

    let put = server
        .put(&server.relay_url(&key), packet.to_relay_payload())
        .await;
    assert_eq!(put.status(), 204);
    assert_eq!(header(&put, "pkarr-dht-stored-nodes"), Some("1"));

    let get = server.get(&server.relay_url(&key)).await;
    assert_eq!(get.status(), 200);
    assert_eq!(header(&get, "content-type"), Some(PAYLOAD_TYPE));
    assert_eq!(get.bytes().await.expect("body"), packet.to_relay_payload());
}

#[tokio::test]
async fn root_routes_serve_the_same_store() {
    let server = TestServer::start();
    let key = keypair(2);
    let packet = iroh_packet(&key, 1_000, &["192.0.2.1:1"]);
    let root_url = server.url(&format!("/{}", key.public_key().to_z32()));

    let put = server.put(&root_url, packet.to_relay_payload()).await;
    assert_eq!(put.status(), 204);
    let via_pkarr = server.get(&server.relay_url(&key)).await;
    assert_eq!(
        via_pkarr.bytes().await.expect("body"),
        packet.to_relay_payload()
    );
    let via_root = server.get(&root_url).await;
    assert_eq!(via_root.status(), 200);
    assert_eq!(
        via_root.bytes().await.expect("body"),
        packet.to_relay_payload()
    );
}

#[tokio::test]
async fn key_in_url_matches_in_any_case() {
    let server = TestServer::start();
    let key = keypair(10);
    let packet = iroh_packet(&key, 1_000, &["192.0.2.1:1"]);
    let upper = server.url(&format!(
        "/pkarr/{}",
        key.public_key().to_z32().to_uppercase()
    ));
    assert_eq!(
        server.put(&upper, packet.to_relay_payload()).await.status(),
        204
    );
    let get = server.get(&server.relay_url(&key)).await;
    assert_eq!(get.bytes().await.expect("body"), packet.to_relay_payload());
    assert_eq!(server.get(&upper).await.status(), 200);
}

/// PUTs that race past the local fast path are ordered by consensus: every answer is 204 or
/// 409, the newest version always gets 204, and the newest is what stays stored.
#[tokio::test]
async fn concurrent_versions_of_one_key_end_with_the_newest() {
    // 24 versions of one key at once: far over the shipped per-key rate, which is not what
    // this test is about.
    let server = TestServer::start_with_config(
        "[cluster]\nbootstrap = true\n[rate_limit]\npublish_per_key = { per_minute = 0, burst = 0 }\n",
    );
    let key = keypair(11);
    let url = server.relay_url(&key);
    let versions: Vec<u64> = (1..=24).collect();
    let mut puts = tokio::task::JoinSet::new();
    for version in versions.iter().copied() {
        let body = iroh_packet(&key, version * 1_000, &[&format!("192.0.2.1:{version}")])
            .to_relay_payload();
        let url = url.clone();
        puts.spawn(async move {
            let response = http_client()
                .put(&url)
                .body(body)
                .send()
                .await
                .expect("PUT");
            (version, response.status().as_u16())
        });
    }
    let newest = versions.iter().copied().max().expect("versions");
    let mut statuses = Vec::new();
    while let Some(joined) = puts.join_next().await {
        let (version, status) = joined.expect("task");
        assert!(
            status == 204 || status == 409,
            "version {version}: {status}"
        );
        if version == newest {
            assert_eq!(status, 204, "the newest version is never stale");
        }
        statuses.push(status);
    }
    let stored = server.get(&url).await.bytes().await.expect("body");
    let expected = iroh_packet(&key, newest * 1_000, &[&format!("192.0.2.1:{newest}")]);
    assert_eq!(
        stored,
        expected.to_relay_payload(),
        "statuses: {statuses:?}"
    );
}

#[tokio::test]
async fn get_unknown_key_is_404_and_bad_key_is_400() {
    let server = TestServer::start();
    let unknown = server.get(&server.relay_url(&keypair(3))).await;
    assert_eq!(unknown.status(), 404);

    for bad in [
        "not-a-key",
        "yg4gxe7z1r7mr6orids9fh95y7gxhdsxjqi6nngsxxtakqaxr5n",
        "favicon.ico",
        // 52 z-base-32 characters (32 bytes of 0x02) that are no point on the curve: GET looks the
        // bytes up first and checks the point only to explain the miss.
        "yebyryonyebyryonyebyryonyebyryonyebyryonyebyryonyeby",
    ] {
        let response = server.get(&server.url(&format!("/pkarr/{bad}"))).await;
        assert_eq!(response.status(), 400, "GET key {bad}");
        let body = response.text().await.expect("body");
        assert!(
            body.contains("public key"),
            "400 body says what is wrong: {body}"
        );
    }
}

#[tokio::test]
async fn get_takes_a_consistency_and_refuses_an_unknown_one() {
    let server = TestServer::start();
    let kp = keypair(4);
    let payload = iroh_packet(&kp, 1_000, &["192.0.2.1:1"]).to_relay_payload();
    let put = server.put(&server.relay_url(&kp), payload.clone()).await;
    assert_eq!(put.status(), 204);
    for consistency in ["", "?consistency=local", "?consistency=linearizable"] {
        let url = format!("{}{consistency}", server.relay_url(&kp));
        let response = server.get(&url).await;
        assert_eq!(response.status(), 200, "GET {consistency:?}");
        assert_eq!(
            response.bytes().await.expect("body"),
            payload,
            "GET {consistency:?}"
        );
    }
    let url = format!("{}?consistency=eventual", server.relay_url(&kp));
    let response = server.get(&url).await;
    assert_eq!(response.status(), 400);
    let body = response.text().await.expect("body");
    assert!(
        body.contains("unknown consistency \"eventual\""),
        "400 body names the value: {body}"
    );
}

#[tokio::test]
async fn older_packet_is_409_and_identical_repeat_is_204() {
    let server = TestServer::start();
    let key = keypair(4);
    let newer = iroh_packet(&key, 2_000, &["192.0.2.1:2"]);
    let older = iroh_packet(&key, 1_000, &["192.0.2.1:1"]);
    server.publish(&key, &newer).await;

    let stale = server
        .put(&server.relay_url(&key), older.to_relay_payload())
        .await;
    assert_eq!(stale.status(), 409);
    let repeat = server
        .put(&server.relay_url(&key), newer.to_relay_payload())
        .await;
    assert_eq!(repeat.status(), 204);
    assert_eq!(header(&repeat, "pkarr-dht-stored-nodes"), Some("1"));

    let stored = server
        .get(&server.relay_url(&key))
        .await
        .bytes()
        .await
        .expect("body");
    assert_eq!(stored, newer.to_relay_payload(), "the newer packet stays");
}

/// Goal: a PUT reads the store once on the node that takes it, whatever it comes to, with the
/// default rate limits on: the republish-or-new-key class, the new-key refusal at the cap, the
/// key's own rate and the fast answer all come from that one read (`Admission`), and the apply
/// reads the stored row by writing the new one. Method: the dev node (default limits);
/// `pkraft_store_packet_reads_total` scraped around each of a new key, a newer version, a
/// repeat and an older one (nothing else reads packets by key here: no GET, no DNS, no DHT).
#[tokio::test]
async fn a_put_reads_the_store_once_whatever_it_comes_to() {
    let server = TestServer::start();
    let key = keypair(44);
    let reads = || async {
        crate::metrics::value(
            &crate::metrics::scrape(&server).await,
            "pkraft_store_packet_reads_total",
            "",
        )
    };
    let put = |timestamp: u64| {
        let packet = iroh_packet(&key, timestamp, &["192.0.2.1:1"]);
        let url = server.relay_url(&key);
        let server = &server;
        async move {
            server
                .put(&url, packet.to_relay_payload())
                .await
                .status()
                .as_u16()
        }
    };
    for (what, timestamp, status) in [
        ("a new key", 1_000, 204),
        ("a newer version", 2_000, 204),
        ("the same packet again", 2_000, 204),
        ("an older version", 1_500, 409),
    ] {
        let before = reads().await;
        assert_eq!(put(timestamp).await, status, "{what}");
        assert_eq!(reads().await - before, 1.0, "store reads of {what}");
    }
}

/// Goal: a republish takes its key's curve point from the key cache (`pkraft-http`'s
/// `key_cache.rs`), its signature is checked against it all the same, and only a key whose
/// packet verified is kept. Method: the dev node; `pkraft_http_key_cache_lookups_total` scraped
/// around a forged packet of a new key, its first real one, a republish, and a forgery once the
/// key is kept.
#[tokio::test]
async fn a_republish_takes_its_key_from_the_cache_and_is_still_checked() {
    let server = TestServer::start();
    let key = keypair(45);
    let url = server.relay_url(&key);
    let lookups = |result: &'static str| {
        let server = &server;
        async move {
            crate::metrics::value(
                &crate::metrics::scrape(server).await,
                "pkraft_http_key_cache_lookups_total",
                &format!("result=\"{result}\""),
            )
        }
    };
    let forged = |timestamp: u64| {
        let mut payload = iroh_packet(&key, timestamp, &["192.0.2.1:1"])
            .to_relay_payload()
            .to_vec();
        payload[0] ^= 1; // the signature's first byte
        Bytes::from(payload)
    };
    let real = |timestamp: u64| iroh_packet(&key, timestamp, &["192.0.2.1:1"]).to_relay_payload();
    for (what, payload, status, result) in [
        ("a forgery for a new key", forged(1_000), 400, "miss"),
        (
            "the key's first packet (the forgery's key was not kept)",
            real(2_000),
            204,
            "miss",
        ),
        ("a republish", real(3_000), 204, "hit"),
        ("a forgery once the key is kept", forged(4_000), 400, "hit"),
    ] {
        let (hits, misses) = (lookups("hit").await, lookups("miss").await);
        assert_eq!(
            server.put(&url, payload).await.status().as_u16(),
            status,
            "{what}"
        );
        let counted = if result == "hit" {
            lookups("hit").await - hits
        } else {
            lookups("miss").await - misses
        };
        assert_eq!(counted, 1.0, "{what}: one {result}");
        assert_eq!(
            lookups("hit").await + lookups("miss").await - hits - misses,
            1.0,
            "{what}"
        );
    }
    let stored = server.get(&url).await.bytes().await.expect("body");
    assert_eq!(
        stored,
        real(3_000),
        "the republish is stored, neither forgery"
    );
}

#[tokio::test]
async fn equal_timestamps_the_larger_dns_packet_wins() {
    let server = TestServer::start();
    let key = keypair(5);
    let a = iroh_packet(&key, 5_000, &["192.0.2.1:1"]);
    let b = iroh_packet(&key, 5_000, &["192.0.2.1:2"]);
    let (small, large) = if a.encoded_packet() < b.encoded_packet() {
        (a, b)
    } else {
        (b, a)
    };

    server.publish(&key, &small).await;
    server.publish(&key, &large).await;
    let back = server
        .put(&server.relay_url(&key), small.to_relay_payload())
        .await;
    assert_eq!(back.status(), 409);
    let stored = server
        .get(&server.relay_url(&key))
        .await
        .bytes()
        .await
        .expect("body");
    assert_eq!(stored, large.to_relay_payload());
}

#[tokio::test]
async fn cache_control_is_the_smallest_ttl_clamped() {
    let server = TestServer::start();
    // (record TTLs, expected max-age): the floor is 30 s, the ceiling one day.
    let cases: [(&[u32], u64); 4] = [
        (&[30], 30),
        (&[3600, 600], 600),
        (&[5], 30),
        (&[900_000], 86_400),
    ];
    for (seed, (ttls, expected)) in cases.iter().enumerate() {
        let key = keypair(100 + seed as u64);
        let mut builder = SignedPacket::builder();
        for (i, ttl) in ttls.iter().enumerate() {
            builder = builder.txt(
                format!("r{i}").as_str().try_into().expect("name"),
                txt("v=1"),
                *ttl,
            );
        }
        let packet = builder
            .timestamp(Timestamp::from(1_000))
            .sign(&key)
            .expect("sign");
        server.publish(&key, &packet).await;
        let get = server.get(&server.relay_url(&key)).await;
        let expected = format!("public, max-age={expected}");
        assert_eq!(
            header(&get, "cache-control"),
            Some(expected.as_str()),
            "TTLs {ttls:?}"
        );
    }
}

#[tokio::test]
async fn last_modified_and_if_modified_since() {
    let server = TestServer::start();
    let key = keypair(6);
    // 10.5 s after an exact second: HTTP dates have whole seconds.
    let signed_at = 1_700_000_010_500_000u64;
    let packet = iroh_packet(&key, signed_at, &["192.0.2.1:1"]);
    server.publish(&key, &packet).await;
    let url = server.relay_url(&key);

    let get = server.get(&url).await;
    let last_modified = header(&get, "last-modified")
        .expect("Last-Modified")
        .to_string();
    assert_eq!(last_modified, Timestamp::from(signed_at).format_http_date());

    let since = |micros: u64| Timestamp::from(micros).format_http_date();
    let conditional = |value: String| {
        let url = url.clone();
        async move {
            http_client()
                .get(&url)
                .header("if-modified-since", value)
                .send()
                .await
                .expect("GET")
        }
    };
    // Not older than the packet: 304, empty body, validators repeated.
    let later = conditional(since(signed_at + 1_000_000)).await;
    assert_eq!(later.status(), 304);
    assert_eq!(
        header(&later, "last-modified"),
        Some(last_modified.as_str())
    );
    assert!(later.bytes().await.expect("body").is_empty());
    // Its own Last-Modified is 0.5 s before the signing time, so the packet is newer: 200.
    // (Comparing in whole seconds would hide a second packet signed within the same second.)
    assert_eq!(conditional(last_modified.clone()).await.status(), 200);
    assert_eq!(
        conditional(since(signed_at - 60_000_000)).await.status(),
        200
    );
    assert_eq!(conditional("not a date".to_string()).await.status(), 200);
}

#[tokio::test]
async fn cors_allows_any_origin_and_exposes_stored_nodes() {
    let server = TestServer::start();
    let key = keypair(7);
    let packet = iroh_packet(&key, 1_000, &["192.0.2.1:1"]);
    let url = server.relay_url(&key);

    let preflight = http_client()
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PUT")
        .send()
        .await
        .expect("OPTIONS");
    assert!(preflight.status().is_success());
    assert_eq!(header(&preflight, "access-control-allow-origin"), Some("*"));
    let methods = header(&preflight, "access-control-allow-methods").unwrap_or_default();
    // The methods docs/API.md ("CORS") lists: POST is DoH's.
    for method in ["GET", "PUT", "POST", "OPTIONS"] {
        assert!(methods.contains(method), "{method} in {methods}");
    }

    let put = http_client()
        .put(&url)
        .header("origin", "https://app.example")
        .body(packet.to_relay_payload())
        .send()
        .await
        .expect("PUT");
    assert_eq!(put.status(), 204);
    assert_eq!(header(&put, "access-control-allow-origin"), Some("*"));
    let exposed = header(&put, "access-control-expose-headers").unwrap_or_default();
    for name in ["pkarr-dht-stored-nodes", "pkarr-invalid-signed-packet-seq"] {
        assert!(
            exposed.to_ascii_lowercase().contains(name),
            "{name}: {exposed}"
        );
    }
}

#[tokio::test]
async fn healthz_answers() {
    let server = TestServer::start();
    let response = server.get(&server.url("/healthz")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), r#"{"status":"ok"}"#);
}

/// The body limit applies before the body is read in full: 413, and the server keeps serving.
#[tokio::test]
async fn oversized_body_is_413() {
    let server = TestServer::start();
    let key = keypair(8);
    for size in [1073usize, 64 * 1024] {
        let response = server
            .put(&server.relay_url(&key), Bytes::from(vec![0u8; size]))
            .await;
        assert_eq!(response.status(), 413, "{size}-byte body");
    }
    server
        .publish(&key, &iroh_packet(&key, 1, &["192.0.2.1:1"]))
        .await;
}
