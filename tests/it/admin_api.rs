//! Goal: the admin API answers each status docs/API.md ("Admin API") gives it, with the JSON
//! error it promises, and the public PUT's and linearizable GET's 503 say what the docs say
//! (issue 38: a doc that states a status code or a field is tied to the code).
//! Method: the real binary with an admin token, started without a cluster (no `bootstrap`), so
//! that the no-leader answers come first; then `init`; raw HTTP requests with reqwest. A second
//! node without a token for the 403.

use reqwest::StatusCode;
use serde_json::Value;

use crate::cluster::eventually;
use crate::harness::{TestServer, http_client};

const TOKEN: &str = "admin-api-test-token-0123456789";

/// A POST to `path` on `node`'s admin listener with the token, `body` as JSON.
async fn post(node: &TestServer, path: &str, body: Option<&str>) -> reqwest::Response {
    let mut request = http_client()
        .post(format!("http://{}{path}", node.admin))
        .bearer_auth(TOKEN);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    request.send().await.expect("admin request")
}

/// The status and the `error` of a JSON error answer; panics if the body is no such JSON.
async fn json_error(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "an error of the admin API is JSON ({status})"
    );
    let body: Value =
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("a JSON body");
    let error = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{{\"error\": ...}}: {body}"))
        .to_string();
    (status, error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_answers_each_documented_status_with_a_json_error() {
    let node = TestServer::start_with_config(&format!(
        "[raft]\npublish_timeout = \"500ms\"\n[admin]\ntoken = \"{TOKEN}\"\n"
    ));

    // No cluster yet: no leader answers.
    let status = crate::cluster::admin_status(&node).await.expect("status");
    assert_eq!(status["node"]["role"], "uninitialized", "{status}");
    let key = pkraft_testkit::keypair(5);
    let packet = pkraft_testkit::iroh_packet(&key, 1, &["192.0.2.1:1"]);
    let put = node
        .put(&node.relay_url(&key), packet.to_relay_payload())
        .await;
    assert_eq!(put.status(), 503);
    assert!(put.headers().get("retry-after").is_some());
    let text = put.text().await.expect("body");
    assert!(
        text.starts_with("cluster unavailable, retry later: "),
        "{text}"
    );
    let linearizable = node
        .get(&format!(
            "{}?consistency=linearizable",
            node.relay_url(&key)
        ))
        .await;
    assert_eq!(
        linearizable.status(),
        503,
        "a linearizable read that cannot be confirmed"
    );
    assert!(linearizable.headers().get("retry-after").is_some());
    // An import batch no leader can take: every record is to be sent again, with the reason.
    let recent =
        pkraft_testkit::iroh_packet(&key, pkraft_types::unix_micros_now(), &["192.0.2.1:2"]);
    let mut batch = Vec::new();
    pkraft_http::import::encode_record(
        &mut batch,
        &key.public_key().to_bytes(),
        &recent.to_relay_payload(),
    )
    .expect("a record");
    let import = http_client()
        .post(format!("http://{}/import", node.admin))
        .bearer_auth(TOKEN)
        .header("content-type", "application/octet-stream")
        .body(batch)
        .send()
        .await
        .expect("import");
    assert_eq!(import.status(), 200);
    let report: Value = serde_json::from_slice(&import.bytes().await.expect("body")).expect("JSON");
    assert_eq!(report["retry"], serde_json::json!([0]), "{report}");
    assert!(report["retry_reason"].is_string(), "{report}");
    assert_eq!(report["imported"], 0, "{report}");
    let no_leader = post(
        &node,
        "/cluster/add-learner",
        Some(r#"{"node_id": 2, "addr": "127.0.0.1:1"}"#),
    )
    .await;
    assert_eq!(
        no_leader
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(json_error(no_leader).await.0, 503, "no leader answers");

    // init: 200 {"ok": true}, then 409.
    let init = post(&node, "/cluster/init", None).await;
    assert_eq!(init.status(), 200);
    let body: Value = serde_json::from_slice(&init.bytes().await.expect("body")).expect("JSON");
    assert_eq!(body, serde_json::json!({ "ok": true }));
    eventually("this node leads", || async {
        let status = crate::cluster::admin_status(&node).await?;
        (status["node"]["role"] == "leader").then_some(())
    })
    .await;
    let (status, error) = json_error(post(&node, "/cluster/init", None).await).await;
    assert_eq!(status, 409, "{error}");

    // add-learner: 400 for a bad address, 409 for a member at another address.
    let (status, error) = json_error(
        post(
            &node,
            "/cluster/add-learner",
            Some(r#"{"node_id": 2, "addr": "not an address"}"#),
        )
        .await,
    )
    .await;
    assert_eq!(status, 400, "{error}");
    let (status, error) = json_error(
        post(
            &node,
            "/cluster/add-learner",
            Some(r#"{"node_id": 1, "addr": "127.0.0.1:9"}"#),
        )
        .await,
    )
    .await;
    assert_eq!(status, 409, "{error}");
    // promote: 409 when not a member.
    let (status, error) =
        json_error(post(&node, "/cluster/promote", Some(r#"{"node_id": 9}"#)).await).await;
    assert_eq!(status, 409, "{error}");

    // Bodies that are no such JSON: still a JSON error.
    let untyped = http_client()
        .post(format!("http://{}/cluster/promote", node.admin))
        .bearer_auth(TOKEN)
        .body(r#"{"node_id": 9}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(json_error(untyped).await.0, 415, "no Content-Type");
    let (status, _) = json_error(post(&node, "/cluster/promote", Some("{")).await).await;
    assert_eq!(status, 400, "malformed JSON");
    let (status, _) = json_error(
        post(
            &node,
            "/cluster/remove",
            Some(r#"{"node_id": 9, "extra": 1}"#),
        )
        .await,
    )
    .await;
    assert_eq!(status, 422, "an unknown field");
    let too_large = http_client()
        .post(format!("http://{}/import", node.admin))
        .bearer_auth(TOKEN)
        .header("content-type", "application/octet-stream")
        .body(vec![0_u8; 600_000])
        .send()
        .await
        .expect("send");
    assert_eq!(
        json_error(too_large).await.0,
        413,
        "an import batch too large"
    );

    // /backup: the file, as application/octet-stream.
    let backup = post(&node, "/backup", None).await;
    assert_eq!(backup.status(), 200);
    assert_eq!(
        backup
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/octet-stream")
    );
    assert!(!backup.bytes().await.expect("the backup").is_empty());

    // /healthz and /readyz on the admin listener, as on the public one; no CORS here.
    for base in [
        format!("http://{}", node.admin),
        format!("http://{}", node.http),
    ] {
        let health = http_client()
            .get(format!("{base}/healthz"))
            .header("origin", "https://example.org")
            .send()
            .await
            .expect("healthz");
        assert_eq!(health.status(), 200, "{base}");
        let cors = health.headers().get("access-control-allow-origin").cloned();
        if base.contains(&node.admin.to_string()) {
            assert_eq!(cors, None, "the admin listener answers no CORS");
        } else {
            assert_eq!(cors.as_ref().and_then(|v| v.to_str().ok()), Some("*"));
        }
        let ready: Value = http_client()
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz")
            .bytes()
            .await
            .map(|body| serde_json::from_slice(&body).expect("JSON"))
            .expect("body");
        for field in [
            "ready",
            "reasons",
            "leader",
            "committed_index",
            "applied_index",
            "staleness_ms",
            "clock",
        ] {
            assert!(
                ready.get(field).is_some(),
                "{base}/readyz has no {field}: {ready}"
            );
        }
    }

    // A node without an admin token refuses every mutation with 403.
    let tokenless = TestServer::start();
    let refused = http_client()
        .post(format!("http://{}/cluster/init", tokenless.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("send");
    let (status, error) = json_error(refused).await;
    assert_eq!(status, 403, "{error}");
    assert!(error.contains("no admin token"), "{error}");
}
