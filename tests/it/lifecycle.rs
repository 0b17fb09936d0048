//! Goal: a rolling restart of a 3-node cluster (SIGTERM one node, start it again, next node)
//! loses no acknowledged write, the other nodes keep answering DNS throughout, and a leader that
//! is stopped hands its leadership over instead of leaving a failover behind
//! (docs/OPERATIONS.md, "Rolling restart").
//! Method: a writer PUTs increasing versions of a few keys through whichever nodes are up for
//! the whole restart; every acknowledged (204) version must be on every node at the end. While
//! each node is down, the two others answer DNS for a key written before and go on
//! acknowledging writes (after a failover if it led); a restarted node must be ready (`/readyz`)
//! before the next one stops. The longest time between two acknowledged writes while a leader
//! stops must stay far below what a failover takes with the test timing (at least the lease
//! plus an election timeout, 2.4 s).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use pkraft_testkit::proxy::CutKind;
use pkraft_testkit::{iroh_packet, keypair};

use crate::cluster::{TestCluster, eventually};
use crate::dns_client::{Transport, key_name, raw_query};
use crate::harness::http_client;

const KEYS: u64 = 4;
/// Bounds of the writer: it stops at whichever comes first.
const WRITER_MAX_PUTS: u64 = 5_000;
const WRITER_MAX_TIME: Duration = Duration::from_secs(120);
const PUT_TIMEOUT: Duration = Duration::from_secs(5);

/// The writer's view: each node's HTTP address while it is up.
type UpNodes = Arc<Mutex<Vec<Option<SocketAddr>>>>;

/// Writes acknowledged before a node counts as written to while another is down.
const ACKS_WHILE_DOWN: u64 = 5;
/// Longest accepted time without an acknowledged write while the leader stops. A handover takes
/// a few round trips (docs/BENCHMARKS.md measures it on the release build); a failover with the
/// test timing (lease 1.6 s + election timeout ≥ 0.8 s) cannot fit.
const HANDOVER_GAP_MAX: Duration = Duration::from_millis(1_500);

/// The same bound for a cluster of 5 voters: half the test lease (1.6 s). The handover target
/// needs a vote besides its own and the leader's, from a voter whose lease has lapsed; without
/// the leader silencing one voter while it still serves, writes would stop for the whole lease.
const FIVE_VOTER_HANDOVER_GAP_MAX: Duration = Duration::from_millis(800);

/// When each write was acknowledged, in order.
type AckTimes = Arc<Mutex<Vec<Instant>>>;

/// The longest time without an acknowledgement in `from..to`.
fn longest_gap(acks: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut last = from;
    let mut longest = Duration::ZERO;
    for &at in acks.iter().filter(|&&at| at > from && at <= to) {
        longest = longest.max(at - last);
        last = at;
    }
    longest.max(to.saturating_duration_since(last))
}

/// PUTs version after version of keys `first_key..first_key + KEYS`, round robin over the nodes
/// that are up, counts the acknowledged ones in `acks`, and returns the newest acknowledged
/// timestamp per key.
async fn write_until(
    up: UpNodes,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    ack_times: AckTimes,
    first_key: u64,
) -> Vec<u64> {
    let client = http_client();
    let mut acknowledged = vec![0u64; KEYS as usize];
    let started = Instant::now();
    let mut put = 0u64;
    while !stop.load(Ordering::Relaxed)
        && put < WRITER_MAX_PUTS
        && started.elapsed() < WRITER_MAX_TIME
    {
        put += 1;
        let nodes: Vec<SocketAddr> = up.lock().expect("lock").iter().flatten().copied().collect();
        let Some(node) = nodes.get(usize::try_from(put).unwrap_or(0) % nodes.len().max(1)) else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let index = put % KEYS;
        let key = keypair(600 + first_key + index);
        let timestamp = 1_000 + put;
        let payload =
            iroh_packet(&key, timestamp, &[&format!("192.0.2.60:{put}")]).to_relay_payload();
        let response = client
            .put(format!("http://{node}/pkarr/{}", key.public_key().to_z32()))
            .body(Bytes::from(payload.to_vec()))
            .timeout(PUT_TIMEOUT)
            .send()
            .await;
        match response {
            Ok(response) if response.status() == 204 => {
                acknowledged[index as usize] = timestamp;
                acks.fetch_add(1, Ordering::Relaxed);
                ack_times.lock().expect("lock").push(Instant::now());
            }
            // 503 while a new leader is elected, or the node went down under the request: the
            // outcome is unknown, and nothing is claimed for it.
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    acknowledged
}

/// The timestamp of the packet `node` serves for key `index` of the writers (0 if none).
async fn served_timestamp(node: SocketAddr, index: u64) -> Option<u64> {
    let key = keypair(600 + index);
    let response = http_client()
        .get(format!("http://{node}/pkarr/{}", key.public_key().to_z32()))
        .send()
        .await
        .ok()?;
    if response.status() == 404 {
        return Some(0);
    }
    let body = response.bytes().await.ok()?;
    let mut be = [0u8; 8];
    be.copy_from_slice(body.get(64..72)?);
    Some(u64::from_be_bytes(be))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_no_acknowledged_write_and_dns_keeps_answering() {
    let mut cluster = TestCluster::start(3, "").await;
    // A key every node serves before the restart begins.
    let witness = keypair(699);
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    cluster
        .member(leader)
        .server
        .publish(&witness, &iroh_packet(&witness, 1_000, &["192.0.2.69:1"]))
        .await;
    let witness_name = key_name("_iroh", &witness).to_string();

    let up: UpNodes = Arc::new(Mutex::new(
        cluster
            .members
            .iter()
            .map(|m| Some(m.server.http))
            .collect(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let ack_times: AckTimes = Arc::default();
    let writer = tokio::spawn(write_until(
        up.clone(),
        stop.clone(),
        acks.clone(),
        ack_times.clone(),
        0,
    ));
    let mut leader_stops = 0;

    for id in 1..=3u64 {
        let slot = usize::try_from(id - 1).expect("small");
        up.lock().expect("lock")[slot] = None;
        let others = cluster.ids_except(id);
        let was_leader = cluster.leader_among(&[1, 2, 3]).await == id;
        let stopping = Instant::now();
        let status = cluster.member_mut(id).server.terminate();
        assert_eq!(status.code(), Some(0), "node {id} stops cleanly on SIGTERM");
        if was_leader {
            leader_stops += 1;
            // Writes through the others resume within the bound once a new leader serves them.
            let new_leader = cluster.leader_among(&others).await;
            let before = acks.load(Ordering::Relaxed);
            eventually(
                &format!("a write acknowledged after node {id} stopped"),
                || {
                    let done = acks.load(Ordering::Relaxed) > before;
                    async move { done.then_some(()) }
                },
            )
            .await;
            let resumed = *ack_times.lock().expect("lock").last().expect("an ack");
            let gap = longest_gap(&ack_times.lock().expect("lock"), stopping, resumed);
            eprintln!(
                "leader {id} stopped: longest run without a 204 {gap:?}, new leader {new_leader}"
            );
            assert!(
                gap < HANDOVER_GAP_MAX,
                "writes stalled for {gap:?} while leader {id} stopped (a failover, not a handover?)"
            );
        }
        for other in cluster.ids_except(id) {
            let dns = cluster.member(other).server.dns;
            let answer = raw_query(dns, Transport::Udp, &witness_name, RecordType::TXT, None).await;
            assert_eq!(
                answer.metadata.response_code,
                ResponseCode::NoError,
                "node {other} answers DNS while node {id} is down"
            );
            assert_eq!(answer.answers.len(), 1, "node {other}");
        }
        // Writes go on through the two others (after a failover if `id` led).
        let before = acks.load(Ordering::Relaxed);
        eventually(
            &format!("writes acknowledged while node {id} is down"),
            || {
                let done = acks.load(Ordering::Relaxed) >= before + ACKS_WHILE_DOWN;
                async move { done.then_some(()) }
            },
        )
        .await;
        cluster.restart(id);
        let restarted = cluster.member(id).server.http;
        up.lock().expect("lock")[slot] = Some(restarted);
        eventually(
            &format!("node {id} ready after its restart"),
            || async move {
                let response = http_client()
                    .get(format!("http://{restarted}/readyz"))
                    .send()
                    .await
                    .ok()?;
                (response.status() == 200).then_some(())
            },
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    let acknowledged = writer.await.expect("writer");
    assert!(leader_stops >= 1, "the rolling restart stopped a leader");

    for member in &cluster.members {
        let node = member.server.http;
        for (index, acked) in acknowledged.iter().enumerate() {
            let index = index as u64;
            let what = format!("node {} holds key {index} at >= {acked}", member.id);
            eventually(&what, || async {
                let served = served_timestamp(node, index).await?;
                (served >= *acked).then_some(())
            })
            .await;
        }
    }
}

/// A leader of 5 voters hands over as fast as one of 3: it silences a voter while it still
/// serves, so that voter's lease lapses and it can vote for the target (docs/OPERATIONS.md,
/// "Shutdown"). Every write acknowledged around the stop is on every node that stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_of_five_voters_hands_over_without_waiting_out_the_lease() {
    let cluster = TestCluster::start(5, "").await;
    let all: Vec<u64> = (1..=5).collect();
    let leader = cluster.leader_among(&all).await;
    // One writer per other node, each on keys of its own: a PUT through the voter the leader
    // silences waits for that voter to apply it (read-your-writes), which holds up only the
    // writer using that node.
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let ack_times: AckTimes = Arc::default();
    let writers: Vec<_> = cluster
        .members
        .iter()
        .filter(|m| m.id != leader)
        .map(|m| {
            let first_key = m.id * KEYS;
            let up: UpNodes = Arc::new(Mutex::new(vec![Some(m.server.http)]));
            let writer = tokio::spawn(write_until(
                up,
                stop.clone(),
                acks.clone(),
                ack_times.clone(),
                first_key,
            ));
            (first_key, writer)
        })
        .collect();
    eventually("writes acknowledged before the leader stops", || {
        let done = acks.load(Ordering::Relaxed) >= ACKS_WHILE_DOWN;
        async move { done.then_some(()) }
    })
    .await;

    let stopping = Instant::now();
    let mut cluster = cluster;
    let status = cluster.member_mut(leader).server.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "leader {leader} stops cleanly on SIGTERM"
    );
    let others = cluster.ids_except(leader);
    let new_leader = cluster.leader_among(&others).await;
    let before = acks.load(Ordering::Relaxed);
    eventually("a write acknowledged after the leader stopped", || {
        let done = acks.load(Ordering::Relaxed) > before;
        async move { done.then_some(()) }
    })
    .await;
    let resumed = *ack_times.lock().expect("lock").last().expect("an ack");
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for (first_key, writer) in writers {
        let newest = writer.await.expect("writer");
        acknowledged.extend((first_key..).zip(newest));
    }
    let gap = longest_gap(&ack_times.lock().expect("lock"), stopping, resumed);
    eprintln!(
        "leader {leader} of 5 stopped: longest run without a 204 {gap:?}, new leader {new_leader}"
    );
    assert!(
        gap < FIVE_VOTER_HANDOVER_GAP_MAX,
        "writes stalled for {gap:?} while leader {leader} of 5 voters stopped (the handover \
         waited out the lease?)"
    );

    for id in others {
        let node = cluster.member(id).server.http;
        for &(index, acked) in &acknowledged {
            let what = format!("node {id} holds key {index} at >= {acked}");
            eventually(&what, || async {
                let served = served_timestamp(node, index).await?;
                (served >= acked).then_some(())
            })
            .await;
        }
    }
}

/// A follower that stops is logged by the leader once (WARN), and once when it takes calls again
/// (INFO); none of openraft's lines for each retry (`RPCError` at ERROR, `backoff mode`, several
/// every half second, `Unreachable node: ...`) reach the log (`pkraft_peer::reachability`,
/// `pkraft::logging`). A follower that is stopping answers 503, never openraft's fatal error
/// (`RPCError` with a remote `Stopped`, which is not filtered).
#[tokio::test]
async fn a_stopped_peer_is_logged_once_and_its_return_once() {
    let mut cluster = TestCluster::start(3, "").await;
    let log = leader_logs_a_loss_and_return_once(
        &mut cluster,
        "a peer cannot be reached; the cluster goes on without it while a quorum answers",
        Duration::ZERO,
        |cluster, _, follower| {
            cluster.member_mut(follower).server.terminate();
        },
        |cluster, _, follower| cluster.restart(follower),
    )
    .await;
    for openraft_says in [
        "Unreachable node",
        "RPCError",
        "backoff mode",
        "error replication",
    ] {
        assert!(!log.contains(openraft_says), "{openraft_says}:\n{log}");
    }
}

/// A follower whose packets the network drops (a silent cut: the leader's calls to it are held
/// unanswered) is logged once by the leader as not answering in time, after a second of missed
/// calls (`SILENT_BEFORE_LOST`), and its return once, after it. openraft's own two lines for
/// every append-entries that timed out (ten a second at the default heartbeat of 100 ms) are
/// dropped (`pkraft::logging`).
#[tokio::test]
async fn a_silent_peer_is_logged_once_and_its_return_once() {
    let mut cluster = TestCluster::start(3, "").await;
    let log = leader_logs_a_loss_and_return_once(
        &mut cluster,
        "a peer does not answer in time; the cluster goes on without it while a quorum answers",
        // `SILENT_BEFORE_LOST` of missed calls, each ending 95 ms after it began.
        pkraft_raft::peer::reachability::SILENT_BEFORE_LOST - Duration::from_millis(100),
        |cluster, leader, follower| cluster.faults.cut_as(leader, follower, CutKind::Silent),
        |cluster, _, _| cluster.faults.heal(),
    )
    .await;
    // The deadline's text only in the peer network's own line.
    assert_eq!(
        log.matches(pkraft_raft::peer::client::TIMED_OUT_SAYS)
            .count(),
        1,
        "{log}"
    );
    for openraft_says in ["RPCError", "error replication"] {
        assert!(!log.contains(openraft_says), "{openraft_says}:\n{log}");
    }
}

/// Takes a follower of the 3-node `cluster` away (`fault`, given the leader and the follower)
/// and back (`mend`), about 3 s apart, and checks that its leader said the loss (`lost_says`)
/// once about it, not before `lost_not_before` from the fault, and its return once, after the
/// loss. Returns the leader's log from the fault on.
async fn leader_logs_a_loss_and_return_once(
    cluster: &mut TestCluster,
    lost_says: &str,
    lost_not_before: Duration,
    fault: impl FnOnce(&mut TestCluster, u64, u64),
    mend: impl FnOnce(&mut TestCluster, u64, u64),
) -> String {
    cluster.wait_for_voters(3).await;
    let leader = cluster.leader().await;
    let follower = cluster.ids_except(leader)[0];
    // Only what the leader logs from the fault on (its peers may have been late at the start).
    let logged_before = cluster.member(leader).server.log().len();
    let log_of_leader = |cluster: &TestCluster| {
        let log = cluster.member(leader).server.log();
        log.get(logged_before..).unwrap_or(&log).to_string()
    };
    fault(cluster, leader, follower);
    let fault_at = Instant::now();
    let lost = format!("{lost_says} peer={follower} ");
    let back = format!("a peer takes this node's calls again peer={follower} ");
    eventually("the leader says it lost the follower", || async {
        log_of_leader(cluster).contains(&lost).then_some(())
    })
    .await;
    let lost_after = fault_at.elapsed();
    assert!(
        lost_after >= lost_not_before,
        "the loss was said {lost_after:?} after the fault, before {lost_not_before:?}"
    );
    // openraft retries every half second (a peer it cannot reach) or at every heartbeat (one
    // that does not answer): some retries, all quiet.
    tokio::time::sleep(Duration::from_secs(3)).await;
    mend(cluster, leader, follower);
    eventually("the leader says the follower takes calls again", || async {
        log_of_leader(cluster).contains(&back).then_some(())
    })
    .await;
    let log = log_of_leader(cluster);
    assert_eq!(log.matches(lost_says).count(), 1, "{log}");
    assert_eq!(log.matches(&back).count(), 1, "{log}");
    let lost_at = log.find(&lost).expect("the loss is logged");
    let back_at = log.find(&back).expect("the return is logged");
    assert!(
        lost_at < back_at,
        "the return is logged after the loss:\n{log}"
    );
    log
}
