//! Goal: DNS-over-HTTPS (RFC 8484) and the JSON form on the public listener give the answers the
//! DNS listeners give, with the status codes and headers DoH clients rely on.
//! Method: the real binary and reqwest; the same wire query sent over TCP and over DoH (GET and
//! POST) must get byte-identical answers.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::RecordType;
use pkraft_testkit::pkarr::SignedPacket;
use pkraft_testkit::pkarr::dns::Name as PkarrName;
use pkraft_testkit::{iroh_packet, keypair, txt};
use serde_json::Value;

use crate::dns_client::{Transport, exchange, key_name, name};
use crate::harness::{TestServer, http_client};

fn wire_query(qname: &str, qtype: RecordType) -> Vec<u8> {
    let mut query = Message::query();
    query.metadata.id = 4242;
    query.add_query(Query::query(name(qname), qtype));
    query.to_vec().expect("encode")
}

#[tokio::test]
async fn get_and_post_answer_byte_for_byte_as_tcp_does() {
    let server = TestServer::start();
    let key = keypair(60);
    server
        .publish(&key, &iroh_packet(&key, 1_000, &["192.0.2.6:6"]))
        .await;
    let client = http_client();
    let unknown = keypair(61);
    for (qname, qtype) in [
        (key_name("_iroh", &key), RecordType::TXT),
        (key_name("_iroh", &key), RecordType::A),
        (key_name("_iroh", &unknown), RecordType::TXT),
        ("pkarr.test.".to_string(), RecordType::SOA),
    ] {
        let query = wire_query(&qname, qtype);
        let over_tcp = exchange(server.dns, Transport::Tcp, &query).await;

        let get = client
            .get(server.url(&format!(
                "/dns-query?dns={}",
                URL_SAFE_NO_PAD.encode(&query)
            )))
            .send()
            .await
            .expect("GET");
        assert_eq!(get.status(), 200, "{qname} {qtype}");
        assert_eq!(
            get.headers()["content-type"],
            "application/dns-message",
            "{qname} {qtype}"
        );
        assert_eq!(
            get.bytes().await.expect("body"),
            over_tcp,
            "GET {qname} {qtype}"
        );

        let post = client
            .post(server.url("/dns-query"))
            .header("content-type", "application/dns-message")
            .header("accept", "*/*")
            .body(query.clone())
            .send()
            .await
            .expect("POST");
        assert_eq!(post.status(), 200, "{qname} {qtype}");
        assert_eq!(
            post.bytes().await.expect("body"),
            over_tcp,
            "POST {qname} {qtype}"
        );
    }
}

#[tokio::test]
async fn max_age_is_the_smallest_ttl_of_the_answer() {
    let server = TestServer::start();
    let key = keypair(62);
    // Two TXT records at `_iroh` with different TTLs: the smaller one bounds the answer.
    let packet = SignedPacket::builder()
        .txt(
            PkarrName::new("_iroh").expect("name"),
            txt("addr=192.0.2.6:6"),
            300,
        )
        .txt(
            PkarrName::new("_iroh").expect("name"),
            txt("relay=http://r"),
            45,
        )
        .build(&key)
        .expect("sign");
    server.publish(&key, &packet).await;
    let get = |qname: String, qtype| {
        let url = server.url(&format!(
            "/dns-query?dns={}",
            URL_SAFE_NO_PAD.encode(wire_query(&qname, qtype))
        ));
        async move { http_client().get(url).send().await.expect("GET") }
    };

    let response = get(key_name("_iroh", &key), RecordType::TXT).await;
    assert_eq!(response.headers()["cache-control"], "max-age=45");
    let answer = Message::from_vec(&response.bytes().await.expect("body")).expect("decode");
    assert_eq!(answer.metadata.id, 4242);
    assert_eq!(answer.answers.len(), 2);

    // NXDOMAIN: the SOA's MINIMUM (dns.negative_ttl, 30 s) bounds it, not its TTL (5 min).
    let response = get(key_name("_iroh", &keypair(65)), RecordType::TXT).await;
    assert_eq!(response.headers()["cache-control"], "max-age=30");

    // REFUSED (a name under no origin) has no records: not cacheable.
    let response = get("example.com.".to_string(), RecordType::A).await;
    assert_eq!(response.headers()["cache-control"], "no-store");
    let answer = Message::from_vec(&response.bytes().await.expect("body")).expect("decode");
    assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn the_json_form_answers_like_google_and_iroh_dns_server() {
    let server = TestServer::start();
    let key = keypair(63);
    server
        .publish(&key, &iroh_packet(&key, 1_000, &["192.0.2.6:6"]))
        .await;
    let client = http_client();
    let qname = key_name("_iroh", &key);
    for accept in [None, Some("application/dns-json"), Some("*/*")] {
        let mut request = client.get(server.url(&format!("/dns-query?name={qname}&type=TXT")));
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        let response = request.send().await.expect("GET");
        assert_eq!(response.status(), 200, "accept {accept:?}");
        assert_eq!(response.headers()["content-type"], "application/dns-json");
        let json: Value =
            serde_json::from_slice(&response.bytes().await.expect("body")).expect("json");
        assert_eq!(json["Status"], 0, "{json}");
        assert_eq!(json["Question"][0]["type"], 16, "{json}");
        assert_eq!(json["Answer"][0]["TTL"], 30, "{json}");
        let data = json["Answer"][0]["data"].as_str().expect("data");
        assert!(data.contains("addr=192.0.2.6:6"), "{json}");
    }

    // A key that is not published: NXDOMAIN with the SOA; the type as a number.
    let unknown = key_name("_iroh", &keypair(64));
    let body = client
        .get(server.url(&format!("/dns-query?name={unknown}&type=16")))
        .send()
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("body");
    let json: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(json["Status"], u16::from(ResponseCode::NXDomain), "{json}");
    assert_eq!(json["Authority"][0]["type"], 6, "{json}");
}

#[tokio::test]
async fn bad_requests_get_4xx_with_a_reason() {
    let server = TestServer::start();
    let client = http_client();
    let cases = [
        ("/dns-query", 400),
        ("/dns-query?dns=%%%", 400),
        // Base64url of three bytes: no DNS header.
        ("/dns-query?dns=AAAA", 400),
        ("/dns-query?name=bad..name&type=TXT", 400),
        ("/dns-query?name=pkarr.test&type=NOTATYPE", 400),
    ];
    for (path, status) in cases {
        let response = client.get(server.url(path)).send().await.expect("GET");
        assert_eq!(response.status(), status, "{path}");
        assert!(!response.text().await.expect("body").is_empty(), "{path}");
    }
    let wrong_type = client
        .post(server.url("/dns-query"))
        .header("content-type", "text/plain")
        .body(wire_query("pkarr.test.", RecordType::SOA))
        .send()
        .await
        .expect("POST");
    assert_eq!(wrong_type.status(), 415);
}

/// Goal: what docs/API.md states of the public listener's less travelled answers (issue 38: a
/// doc that states a status code, a header or a field is tied to the code): the 429 of the
/// `resolve`, `doh` and `health` rate-limit classes with `Retry-After` and `RateLimit-*`; CORS
/// on `/dns-query`, allowing any request header; a DoH body over 65,535 bytes is 413; `dns=`
/// with base64 padding; `type` defaulting to `A`; the JSON form's flags and its empty sections
/// left out; a 304 carries `Cache-Control`; a request whose body does not come within
/// `http.request_timeout` gets 408.
/// Method: the real binary with small limits for these classes (`publish` off), raw requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_api_answers_what_the_docs_state() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let server = TestServer::start_with_config(
        "[cluster]\nbootstrap = true\n[raft]\npublish_timeout = \"500ms\"\n[http]\nrequest_timeout = \"1s\"\n[rate_limit]\n\
         publish = { per_client = { per_second = 0, burst = 0 }, global = { per_second = 0, burst = 0 } }\n\
         publish_new_keys = { per_client = { per_second = 0, burst = 0 }, global = { per_second = 0, burst = 0 } }\n\
         resolve = { per_client = { per_second = 1, burst = 5 }, global = { per_second = 0, burst = 0 } }\n\
         doh = { per_client = { per_second = 1, burst = 5 }, global = { per_second = 0, burst = 0 } }\n\
         health = { per_client = { per_second = 1, burst = 5 }, global = { per_second = 0, burst = 0 } }\n",
    );
    let client = http_client();
    let key = keypair(62);
    server
        .publish(&key, &iroh_packet(&key, 1_000_000, &["192.0.2.7:7"]))
        .await;

    // DoH details, within the doh class's burst of 3.
    // A query whose length is no multiple of 3, so that its base64 has padding.
    let query = ["x.", "xy.", "xyz."]
        .iter()
        .map(|prefix| {
            wire_query(
                &format!("{prefix}{}", key_name("_iroh", &key)),
                RecordType::TXT,
            )
        })
        .find(|query| query.len() % 3 != 0)
        .expect("one of three lengths in a row");
    let padded = base64::engine::general_purpose::URL_SAFE.encode(&query);
    assert!(padded.ends_with('='), "a query whose base64 is padded");
    let answer = client
        .get(server.url(&format!("/dns-query?dns={padded}")))
        .header("origin", "https://app.example")
        .send()
        .await
        .expect("DoH GET");
    assert_eq!(answer.status(), 200, "padding is optional, and accepted");
    assert_eq!(
        answer
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("*"),
        "CORS on /dns-query"
    );
    let json: Value = serde_json::from_slice(
        &client
            .get(server.url("/dns-query?name=pkarr.test"))
            .header("accept", "application/dns-json")
            .send()
            .await
            .expect("JSON GET")
            .bytes()
            .await
            .expect("body"),
    )
    .expect("JSON");
    assert_eq!(json["Question"][0]["type"], 1, "type defaults to A: {json}");
    for flag in ["TC", "RD", "RA", "AD", "CD"] {
        assert!(json[flag].is_boolean(), "{flag}: {json}");
    }
    assert!(
        json.get("Answer").is_none(),
        "an empty section is left out: {json}"
    );
    let too_large = client
        .post(server.url("/dns-query"))
        .header("content-type", "application/dns-message")
        .body(vec![0_u8; 65_536])
        .send()
        .await
        .expect("DoH POST");
    assert_eq!(too_large.status(), 413);
    // The limit is /dns-query's own (65,535), not the relay routes' 1,072 bytes.
    let larger_than_a_relay_body = client
        .post(server.url("/dns-query"))
        .header("content-type", "application/dns-message")
        .body(vec![0_u8; 2_000])
        .send()
        .await
        .expect("DoH POST");
    assert_ne!(
        larger_than_a_relay_body.status(),
        413,
        "2,000 bytes are within /dns-query's limit"
    );
    let refused = until_refused(|| {
        client
            .get(server.url(&format!("/dns-query?dns={padded}")))
            .send()
    })
    .await;
    assert_rate_limited(&refused);

    // CORS allows any request header (a preflight asking for one of its own).
    let preflight = client
        .request(reqwest::Method::OPTIONS, server.url("/dns-query"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-anything-at-all")
        .send()
        .await
        .expect("preflight");
    let allowed = preflight
        .headers()
        .get("access-control-allow-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        allowed == "*" || allowed.contains("x-anything-at-all"),
        "allowed headers: {allowed:?}"
    );

    // The resolve class: a 304 carries Cache-Control; GETs beyond the burst are refused.
    let url = server.relay_url(&key);
    let first = client.get(&url).send().await.expect("GET");
    assert_eq!(first.status(), 200);
    let modified = first
        .headers()
        .get("last-modified")
        .cloned()
        .expect("Last-Modified");
    let not_modified = client
        .get(&url)
        .header("if-modified-since", modified)
        .send()
        .await
        .expect("GET");
    assert_eq!(not_modified.status(), 304);
    assert!(
        not_modified.headers().get("cache-control").is_some(),
        "a 304 carries Cache-Control"
    );
    let refused = until_refused(|| client.get(&url).send()).await;
    assert_rate_limited(&refused);

    // The health class: per client.
    let refused = until_refused(|| client.get(server.url("/healthz")).send()).await;
    assert_rate_limited(&refused);

    // A body that does not come within http.request_timeout (1 s): 408.
    let mut stream = tokio::net::TcpStream::connect(server.http)
        .await
        .expect("connect");
    let head = format!(
        "PUT /pkarr/{} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial",
        key.public_key().to_z32()
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("an answer or a close within 10 s");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

/// The first 429 of requests sent back to back (at most 20: a burst of 5 at 1/s is spent long
/// before, however slow the machine).
async fn until_refused<F, Fut>(mut send: F) -> reqwest::Response
where
    F: FnMut() -> Fut,
    Fut: Future<Output = reqwest::Result<reqwest::Response>>,
{
    for _ in 0..20 {
        let response = send().await.expect("an answer");
        if response.status() == 429 {
            return response;
        }
        assert!(
            response.status().is_success() || response.status() == 304,
            "{response:?}"
        );
    }
    panic!("20 requests in a row and none refused");
}

/// A 429 as docs/API.md describes it: `Retry-After` and the `RateLimit-*` headers.
fn assert_rate_limited(response: &reqwest::Response) {
    for header in [
        "retry-after",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "ratelimit-policy",
    ] {
        assert!(
            response.headers().get(header).is_some(),
            "{header} missing: {:?}",
            response.headers()
        );
    }
}
