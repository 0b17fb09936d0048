//! Goal: `/metrics` on the admin listener counts what the node did, and `/readyz` tells a node
//! that can serve from one that cannot (docs/METRICS.md, docs/OPERATIONS.md).
//! Method: the real binary; PUTs, DNS queries over UDP (the same bytes twice: a cache miss,
//! then a hit), TCP and DoH; then one scrape, parsed from Prometheus's text format.

use bytes::Bytes;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use pkraft_testkit::{iroh_packet, keypair};

use crate::dns_client::{Transport, key_name, raw_query};
use crate::harness::{TestServer, http_client};
use pkraft_raft_storage::machine_memory;

/// The value of the sample `name{labels}` (labels exactly as the text format prints them, in
/// their sorted order; "" for none), if the scrape has it.
pub(crate) fn sample(scrape: &str, name: &str, labels: &str) -> Option<f64> {
    let series = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    scrape.lines().find_map(|line| {
        let (head, value) = line.rsplit_once(' ')?;
        (head == series).then(|| value.parse().expect("a number"))
    })
}

pub(crate) fn value(scrape: &str, name: &str, labels: &str) -> f64 {
    sample(scrape, name, labels).unwrap_or_else(|| panic!("{name}{{{labels}}} in\n{scrape}"))
}

pub(crate) async fn scrape(server: &TestServer) -> String {
    let response = http_client()
        .get(format!("http://{}/metrics", server.admin))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().expect("ascii");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.expect("body")
}

#[tokio::test]
async fn metrics_count_requests_queries_and_the_replica() {
    let server = TestServer::start();
    let before_the_put = scrape(&server).await;
    let key = keypair(70);
    server
        .publish(&key, &iroh_packet(&key, 1_000, &["192.0.2.70:1"]))
        .await;
    let bad = server
        .put(&server.url("/pkarr/not-a-key"), Bytes::from_static(b"x"))
        .await;
    assert_eq!(bad.status(), 400);

    let qname = key_name("_iroh", &key).to_string();
    // The answer cache keeps an answer the second time its query is seen: a miss, a miss that
    // is kept, a hit.
    for _ in 0..3 {
        let answer = raw_query(server.dns, Transport::Udp, &qname, RecordType::TXT, None).await;
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    }
    raw_query(server.dns, Transport::Tcp, &qname, RecordType::TXT, None).await;
    let doh = http_client()
        .get(server.url("/dns-query?name=_iroh.nokey.pkarr.test&type=TXT"))
        .send()
        .await
        .expect("DoH");
    assert_eq!(doh.status(), 200);

    let text = scrape(&server).await;
    let requests = "pkraft_http_requests_total";
    let route = |status: &str| format!(r#"method="PUT",route="/pkarr/{{key}}",status="{status}""#);
    assert_eq!(value(&text, requests, &route("204")), 1.0);
    assert_eq!(value(&text, requests, &route("400")), 1.0);
    assert_eq!(
        value(&text, "pkraft_http_put_duration_seconds_count", ""),
        2.0
    );

    let queries = "pkraft_dns_queries_total";
    assert_eq!(
        value(&text, queries, r#"rcode="NOERROR",transport="udp""#),
        3.0
    );
    assert_eq!(
        value(&text, queries, r#"rcode="NOERROR",transport="tcp""#),
        1.0
    );
    assert_eq!(
        value(&text, queries, r#"rcode="NXDOMAIN",transport="doh""#),
        1.0
    );
    assert_eq!(
        value(&text, "pkraft_dns_answer_cache_misses_total", ""),
        2.0
    );
    assert_eq!(value(&text, "pkraft_dns_answer_cache_hits_total", ""), 1.0);
    assert_eq!(
        value(&text, "pkraft_dns_cache_entries", r#"cache="answers""#),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "pkraft_dns_answer_duration_seconds_count",
            r#"transport="udp""#
        ),
        3.0
    );

    assert_eq!(value(&text, "pkraft_store_records", ""), 1.0);
    assert!(value(&text, "pkraft_store_file_bytes", "") > 0.0);
    assert_eq!(value(&text, "pkraft_raft_is_leader", ""), 1.0);
    assert_eq!(value(&text, "pkraft_raft_leader_id", ""), 1.0);
    let committed = value(&text, "pkraft_raft_committed_index", "");
    assert!(
        committed >= 2.0,
        "the initial membership and the PUT: {committed}"
    );
    assert_eq!(value(&text, "pkraft_raft_applied_index", ""), committed);
    assert_eq!(value(&text, "pkraft_raft_batch_packets_count", ""), 1.0);
    // The PUT's batch, timed at each stage of the write path (the single node leads): its wait
    // to be formed, the batch from forming to answered, and the log append and the apply
    // of its entry.
    let grew = |name: &str| value(&text, name, "") - value(&before_the_put, name, "");
    assert_eq!(grew("pkraft_raft_publish_batch_wait_seconds_count"), 1.0);
    assert_eq!(grew("pkraft_raft_publish_batch_seconds_count"), 1.0);
    assert!(grew("pkraft_raft_publish_batch_seconds_sum") > 0.0);
    for stage in [
        "pkraft_raft_log_append_seconds",
        "pkraft_raft_apply_seconds",
    ] {
        let count = grew(&format!("{stage}_count"));
        assert!(count >= 1.0, "{stage}: {count}");
        assert!(grew(&format!("{stage}_sum")) > 0.0, "{stage}");
    }
    assert_eq!(
        value(&text, "pkraft_raft_leader_contact_age_seconds", ""),
        0.0,
        "the only voter is never stale"
    );
    assert!(value(&text, "process_resident_memory_bytes", "") > 0.0);
    // `raft.state_cache_mib` unset: derived from the memory this node may use, the same as this
    // test's (the node is its child, in its cgroup). tests/it/snapshot_memory.rs has a node
    // whose cgroup limit sets it.
    let limit = machine_memory::memory_limit().expect("/proc/meminfo");
    let derived_mib = machine_memory::derived_state_cache_mib(limit.bytes);
    assert_eq!(
        value(&text, "pkraft_state_cache_bytes", ""),
        (derived_mib << 20) as f64,
        "derived from {limit:?}"
    );
    // And the log says it was derived, and from what: the metric's value alone is also the
    // fallback for a machine whose memory cannot be read.
    let log = server.log();
    let derived = log
        .lines()
        .find(|line| line.contains("state cache derived from"))
        .unwrap_or_else(|| panic!("no line saying the state cache was derived\n{log}"));
    assert!(
        derived.contains(&format!("state cache derived from {}", limit.source))
            && derived.contains(&format!("state_cache_mib={derived_mib} ")),
        "{derived}"
    );
}

/// A `raft.state_cache_mib` given is the cache, whatever the machine.
#[tokio::test]
async fn the_state_cache_given_in_the_config_is_the_one_reported() {
    let server = TestServer::start_with_config(
        "[raft]\nstate_cache_mib = 24\n[cluster]\nbootstrap = true\n",
    );
    let text = scrape(&server).await;
    assert_eq!(
        value(&text, "pkraft_state_cache_bytes", ""),
        (24u64 << 20) as f64
    );
}

#[tokio::test]
async fn readyz_is_ready_on_a_serving_node_and_says_why_not_on_one_without_a_leader() {
    let server = TestServer::start();
    for addr in [server.http, server.admin] {
        let response = http_client()
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .expect("readyz");
        assert_eq!(response.status(), 200, "{addr}");
        let body: serde_json::Value =
            serde_json::from_str(&response.text().await.expect("body")).expect("JSON");
        assert_eq!(body["ready"], true, "{body}");
        assert_eq!(body["leader"], 1, "{body}");
    }

    // A node that is in no cluster yet (not bootstrapped, joining nobody) knows no leader.
    let lonely = TestServer::start_with_config(
        "[cluster]\nbootstrap = false\nsecret = \"test-cluster-secret-0123456789\"\n",
    );
    let response = http_client()
        .get(format!("http://{}/readyz", lonely.http))
        .send()
        .await
        .expect("readyz");
    assert_eq!(response.status(), 503);
    let body: serde_json::Value =
        serde_json::from_str(&response.text().await.expect("body")).expect("JSON");
    assert_eq!(body["ready"], false, "{body}");
    let reasons = body["reasons"].to_string();
    assert!(reasons.contains("no leader is known"), "{body}");
}
