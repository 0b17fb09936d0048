//! Goal: no node's wall clock deletes what the cluster acknowledged (docs/CONSISTENCY.md,
//! "Time"). A leader whose clock steps 8 days ahead expires nothing and says so, and expiry
//! runs again once its clock is back; a node a day behind takes packets signed now (and still
//! refuses ones signed a day ahead); a single node restarted with its clock 8 days ahead keeps
//! every packet; a node restarted with a stepped clock and made leader expires nothing.
//! Method: the real binary with libfaketime moving only its wall clock (the monotonic clock
//! stays: an NTP step, a reset RTC or a restored VM image), each node reading its offset from
//! a file the test rewrites (`pkraft_testkit::clock`). Packets are signed by the real clock;
//! "lost" means younger than `raft.record_max_age` (7 days, the default) by the real clock and
//! gone. Every test also shows expiry working (a packet signed 8 days ago by the real clock is
//! deleted), so "nothing deleted" cannot come from expiry not running at all. Without
//! libfaketime the tests say so and pass, unless `PKRAFT_TEST_REQUIRE_FAKETIME` is set
//! (`.ci/run` sets it and installs Debian's libfaketime).

use std::time::Duration;

use pkraft_testkit::clock::FakedClock;
use pkraft_testkit::pkarr::{Keypair, SignedPacket, Timestamp};
use serde_json::Value;

use crate::cluster::{
    ClusterOptions, TestCluster, admin_status, eventually, get_body, packet, put,
    put_until_accepted, wait_served,
};
use crate::harness::{Launch, TestServer, http_client};
use crate::metrics::{sample, scrape};

const DAY_MICROS: u64 = 24 * 3600 * 1_000_000;
/// Fresh packets per test: enough that a partial expiry would show.
const FRESH: u64 = 40;
/// Expiry looks every this often in these tests, so a wrong deletion would come at once.
const EXPIRY: &str = "expiry_interval = \"200ms\"\n";
/// How long the tests watch a node that must expire nothing: 20 expiry intervals.
const WATCH: Duration = Duration::from_secs(4);

fn now_micros() -> u64 {
    Timestamp::now().as_u64()
}

/// Packets signed now (real clock), seeds `base..base + FRESH`.
fn fresh_packets(base: u64) -> Vec<(Keypair, SignedPacket)> {
    let now = now_micros();
    (0..FRESH).map(|i| packet(base + i, now + i)).collect()
}

/// A packet signed 8 days ago by the real clock: expiry must delete it.
fn expired_packet(seed: u64) -> (Keypair, SignedPacket) {
    packet(seed, now_micros() - 8 * DAY_MICROS)
}

async fn metric(server: &TestServer, name: &str, labels: &str) -> Option<f64> {
    sample(&scrape(server).await, name, labels)
}

/// Waits until `server` reports its clock state as `state` (gauge `pkraft_clock_state`).
async fn wait_clock_state(server: &TestServer, state: &str) {
    let labels = format!("state=\"{state}\"");
    eventually(&format!("clock state {state}"), || async {
        (metric(server, "pkraft_clock_state", &labels).await == Some(1.0)).then_some(())
    })
    .await;
}

async fn readyz(server: &TestServer) -> (u16, Value) {
    let response = http_client()
        .get(format!("http://{}/readyz", server.admin))
        .send()
        .await
        .expect("readyz");
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("body");
    (status, serde_json::from_slice(&body).expect("JSON"))
}

/// Every packet of `packets` is served whole by every node of `servers`.
async fn all_served(servers: &[&TestServer], packets: &[(Keypair, SignedPacket)]) {
    for server in servers {
        for (key, signed) in packets {
            let (status, body) = get_body(server, key, "").await;
            assert_eq!(
                (status, body),
                (200, signed.to_relay_payload()),
                "a packet signed now was deleted\n{}",
                server.log()
            );
        }
    }
}

async fn wait_gone(server: &TestServer, key: &Keypair) {
    eventually("an expired packet gone", || async {
        (get_body(server, key, "").await.0 == 404).then_some(())
    })
    .await;
}

async fn expired_total(server: &TestServer) -> f64 {
    metric(server, "pkraft_store_expired_records_total", "")
        .await
        .unwrap_or_default()
}

/// After the watch: while node `leader` (whose clock is off) still leads, the packet that
/// expired by every clock is kept and nothing was deleted anywhere. A CI machine's load may
/// have moved the leadership meanwhile, and a leader with a right clock rightly deletes that
/// one packet (and nothing else: the caller checks the fresh ones).
async fn assert_kept_while_leading(cluster: &TestCluster, leader: u64, old_key: &Keypair) {
    let servers: Vec<&TestServer> = cluster.members.iter().map(|m| &m.server).collect();
    if cluster.leader().await == leader {
        assert_eq!(get_body(servers[0], old_key, "").await.0, 200);
        for server in &servers {
            assert_eq!(expired_total(server).await, 0.0, "{}", server.log());
        }
    } else {
        eprintln!("the leadership moved during the watch; only the fresh packets are checked");
        for server in &servers {
            assert!(expired_total(server).await <= 1.0, "{}", server.log());
        }
    }
}

async fn faked_cluster(test: &str) -> Option<TestCluster> {
    if !pkraft_testkit::clock::usable_in_test(test) {
        return None;
    }
    let options = ClusterOptions {
        raft_extra: EXPIRY.to_string(),
        faked_clocks: true,
        ..ClusterOptions::default()
    };
    Some(TestCluster::start_as(3, options).await)
}

/// Until node `id` leads: the current leader is stopped (it hands over to a caught-up voter)
/// and started again, at most 8 times (each handover picks one of two voters). The stop waits
/// blocking: the test runs on two worker threads so that the peer proxies, on the test's
/// runtime, go on carrying the handover meanwhile.
async fn make_leader(cluster: &mut TestCluster, id: u64) {
    for _ in 0..8 {
        let leader = cluster.leader().await;
        if leader == id {
            return;
        }
        cluster.member_mut(leader).server.terminate();
        cluster.restart(leader);
        cluster.wait_for_voters(3).await;
    }
    panic!("node {id} did not become leader in 8 handovers");
}

/// The leader's clock steps 8 days ahead: nothing is deleted on any node, the leader says why
/// (`/readyz` 503 with the reason, `cluster status`, `pkraft_clock_state`,
/// `pkraft_expiry_held{reason="clock"}`); once its clock is back, expiry runs again.
#[tokio::test]
async fn a_leader_whose_clock_steps_8_days_ahead_deletes_nothing() {
    let Some(cluster) = faked_cluster("a_leader_whose_clock_steps_8_days_ahead").await else {
        return;
    };
    let servers: Vec<&TestServer> = cluster.members.iter().map(|m| &m.server).collect();
    let fresh = fresh_packets(4_000);
    for (i, (key, signed)) in fresh.iter().enumerate() {
        put_until_accepted(servers[i % 3], key, signed).await;
    }
    let leader = cluster.leader().await;
    let leader_server = &cluster.member(leader).server;
    wait_clock_state(leader_server, "synchronized").await;

    cluster.set_clock(leader, "+8d");
    wait_clock_state(leader_server, "offset").await;
    eventually("expiry held for the clock", || async {
        let held = metric(leader_server, "pkraft_expiry_held", "reason=\"clock\"").await;
        (held == Some(1.0)).then_some(())
    })
    .await;
    let (status, ready) = readyz(leader_server).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["clock"]["state"], "offset", "{ready}");
    let reasons = ready["reasons"].to_string();
    assert!(reasons.contains("wall clock"), "{reasons}");
    let offset_ms = ready["clock"]["offset_ms"].as_i64().expect("an offset");
    assert!(
        (7 * 86_400_000..9 * 86_400_000).contains(&offset_ms),
        "{offset_ms}"
    );
    // A packet that expired by every clock is kept too while this leader leads: it leads no
    // expiry at all.
    let (old_key, old) = expired_packet(4_900);
    assert_eq!(put(servers[0], &old_key, &old).await.status(), 204);
    tokio::time::sleep(WATCH).await;
    all_served(&servers, &fresh).await;
    assert_kept_while_leading(&cluster, leader, &old_key).await;
    // Every node's `cluster status` names the stepped clock.
    let status = admin_status(servers[(leader as usize) % 3])
        .await
        .expect("status");
    let member = status["members"]
        .as_array()
        .and_then(|members| members.iter().find(|m| m["id"] == leader))
        .cloned()
        .expect("the leader in the status");
    assert_eq!(member["status"]["clock"]["state"], "offset", "{status}");
    assert!(
        leader_server
            .log()
            .contains("CLOCK: this node's wall clock is off"),
        "the node logs it"
    );

    // Its clock is back: expiry runs again, deletes the old packet everywhere, and nothing else.
    cluster.set_clock(leader, "+0");
    wait_clock_state(leader_server, "synchronized").await;
    for server in &servers {
        wait_gone(server, &old_key).await;
    }
    all_served(&servers, &fresh).await;
    let (status, ready) = readyz(leader_server).await;
    assert_eq!(status, 200, "{ready}");
}

/// A node a day behind: as leader it deletes nothing, and a PUT through it of a packet signed
/// now is taken (it judges `http.max_future_skew` by cluster time, not by its own clock) while
/// one signed a day ahead is still refused.
#[tokio::test]
async fn a_node_a_day_behind_takes_packets_signed_now() {
    let Some(cluster) = faked_cluster("a_node_a_day_behind").await else {
        return;
    };
    let servers: Vec<&TestServer> = cluster.members.iter().map(|m| &m.server).collect();
    let leader = cluster.leader().await;
    let behind = &cluster.member(leader).server;
    wait_clock_state(behind, "synchronized").await;
    cluster.set_clock(leader, "-1d");
    wait_clock_state(behind, "offset").await;

    let fresh = fresh_packets(5_000);
    for (key, signed) in &fresh {
        let response = put(behind, key, signed).await;
        assert_eq!(response.status(), 204, "{}", behind.log());
    }
    let (ahead_key, ahead) = packet(5_900, now_micros() + DAY_MICROS);
    assert_eq!(put(behind, &ahead_key, &ahead).await.status(), 400);
    for (key, signed) in &fresh {
        for server in &servers {
            wait_served(server, key, signed).await;
        }
    }
    tokio::time::sleep(WATCH).await;
    all_served(&servers, &fresh).await;
    for server in &servers {
        assert_eq!(expired_total(server).await, 0.0);
    }
    // Its clock back, expiry runs (whoever leads): a packet signed 8 days ago goes.
    cluster.set_clock(leader, "+0");
    wait_clock_state(behind, "synchronized").await;
    let (old_key, old) = expired_packet(5_950);
    assert_eq!(put(behind, &old_key, &old).await.status(), 204);
    for server in &servers {
        wait_gone(server, &old_key).await;
    }
    all_served(&servers, &fresh).await;
}

/// A node stopped, its clock stepped 8 days ahead, started again and made leader: it deletes
/// nothing (from its first tick: before it knows the other clocks, cluster time is unknown,
/// and then its own is the odd one out); led by a node with a right clock, expiry deletes what
/// really expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_with_its_clock_8_days_ahead_deletes_nothing_as_leader() {
    let Some(mut cluster) = faked_cluster("a_node_restarted_with_its_clock_8_days_ahead").await
    else {
        return;
    };
    let fresh = fresh_packets(6_000);
    for (i, (key, signed)) in fresh.iter().enumerate() {
        put_until_accepted(&cluster.members[i % 3].server, key, signed).await;
    }
    let stepped = 2;
    cluster.member_mut(stepped).server.terminate();
    cluster.set_clock(stepped, "+8d");
    cluster.restart(stepped);
    cluster.wait_for_voters(3).await;
    make_leader(&mut cluster, stepped).await;
    let stepped_server = &cluster.member(stepped).server;
    wait_clock_state(stepped_server, "offset").await;
    let (old_key, old) = expired_packet(6_900);
    assert_eq!(put(stepped_server, &old_key, &old).await.status(), 204);
    tokio::time::sleep(WATCH).await;
    let servers: Vec<&TestServer> = cluster.members.iter().map(|m| &m.server).collect();
    all_served(&servers, &fresh).await;
    assert_kept_while_leading(&cluster, stepped, &old_key).await;

    // Leadership moves to a node with a right clock: the expired packet goes, nothing else.
    cluster.member_mut(stepped).server.terminate();
    cluster.restart(stepped);
    cluster.wait_for_voters(3).await;
    let servers: Vec<&TestServer> = cluster.members.iter().map(|m| &m.server).collect();
    for server in &servers {
        wait_gone(server, &old_key).await;
    }
    all_served(&servers, &fresh).await;
}

/// A single node (the whole cluster: its clock is the median) restarted with its clock 8 days
/// ahead keeps every packet: the log's time (the last stamp, kept in `state.redb`) holds
/// cluster time back. It reports `held_by_log`.
#[tokio::test]
async fn a_single_node_restarted_with_its_clock_8_days_ahead_keeps_every_packet() {
    if !pkraft_testkit::clock::usable_in_test("a_single_node_restarted_8_days_ahead") {
        return;
    }
    let clock_dir = tempfile::tempdir().expect("tempdir");
    let clock = FakedClock::new(&clock_dir.path().join("clock")).expect("clock file");
    let launch = Launch {
        clock: Some(clock.clone()),
        ..Launch::default()
    };
    let config = format!("[cluster]\nbootstrap = true\n[raft]\n{EXPIRY}");
    let mut server = TestServer::start_with_config_launched(&config, launch);
    let fresh = fresh_packets(7_000);
    for (key, signed) in &fresh {
        put_until_accepted(&server, key, signed).await;
    }
    // Expiry works on this node: a packet signed 8 days ago goes.
    let (old_key, old) = expired_packet(7_900);
    assert_eq!(put(&server, &old_key, &old).await.status(), 204);
    wait_gone(&server, &old_key).await;
    assert_eq!(expired_total(&server).await, 1.0);

    server.terminate();
    clock.set("+8d").expect("step the clock");
    server.restart();
    wait_clock_state(&server, "held_by_log").await;
    tokio::time::sleep(WATCH).await;
    all_served(&[&server], &fresh).await;
    assert_eq!(expired_total(&server).await, 0.0, "{}", server.log());
    assert!(
        server
            .log()
            .contains("CLOCK: the voters' clocks are ahead of the log's time"),
        "the node logs it"
    );
    // Publishes keep working, and expiry runs by the log's time: a packet signed 8 days ago
    // by the real clock goes, the 40 stay.
    let (key, signed) = packet(7_950, now_micros());
    assert_eq!(put(&server, &key, &signed).await.status(), 204);
    let (old_key, old) = expired_packet(7_960);
    assert_eq!(put(&server, &old_key, &old).await.status(), 204);
    wait_gone(&server, &old_key).await;
    all_served(&[&server], &fresh).await;
    assert_eq!(expired_total(&server).await, 1.0, "{}", server.log());
}

/// The rate fence: expiry deletes at most `raft.expiry_max_percent_per_hour` of the store in
/// an hour, at least `FENCE_FLOOR` packets (`pkraft_raft::expiry`), then holds the rest back and
/// says so. Whatever cluster time says, a mass deletion takes hours, not seconds.
#[tokio::test]
async fn expiry_stops_at_its_hourly_share_of_the_store() {
    /// `expiry::FENCE_FLOOR_PER_HOUR`: with 1 % of a store of ~1,100 packets, the floor rules.
    const FENCE_FLOOR: u64 = 1_000;
    const OLD: u64 = FENCE_FLOOR + 100;
    // The PUTs come from one client, faster than a client is allowed by default.
    let config = format!(
        "[cluster]\nbootstrap = true\n[raft]\n{EXPIRY}expiry_max_percent_per_hour = 1\n\
         [rate_limit]\npublish = {{ per_client = {{ per_second = 100000, burst = 100000 }}, \
         global = {{ per_second = 0, burst = 0 }} }}\n\
         publish_new_keys = {{ per_client = {{ per_second = 100000, burst = 100000 }}, \
         global = {{ per_second = 0, burst = 0 }} }}\n"
    );
    let server = TestServer::start_with_config(&config);
    let fresh = fresh_packets(8_000);
    for (key, signed) in &fresh {
        put_until_accepted(&server, key, signed).await;
    }
    // Signed in 1970: expired by any clock.
    let url = |key: &Keypair| server.relay_url(key);
    let mut puts = tokio::task::JoinSet::new();
    for chunk in (0..OLD).collect::<Vec<_>>().chunks(64) {
        let requests: Vec<(String, bytes::Bytes)> = chunk
            .iter()
            .map(|i| {
                let (key, signed) = packet(9_000 + i, 1_000 + i);
                (url(&key), signed.to_relay_payload())
            })
            .collect();
        puts.spawn(async move {
            let client = http_client();
            for (url, body) in requests {
                let status = client
                    .put(url)
                    .body(body)
                    .send()
                    .await
                    .expect("PUT")
                    .status();
                assert_eq!(status, 204);
            }
        });
    }
    while let Some(done) = puts.join_next().await {
        done.expect("PUT task");
    }
    eventually("expiry held at the fence", || async {
        let held = metric(&server, "pkraft_expiry_held", "reason=\"rate\"").await;
        (held == Some(1.0)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(expired_total(&server).await, FENCE_FLOOR as f64);
    let stored = metric(&server, "pkraft_store_records", "").await;
    assert_eq!(stored, Some((FRESH + OLD - FENCE_FLOOR) as f64));
    all_served(&[&server], &fresh).await;
    assert!(server.log().contains("EXPIRY FENCED"), "the node logs it");
}
