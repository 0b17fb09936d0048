//! Goal: a node that loses power comes back with everything it acknowledged. A SIGKILL keeps
//! the kernel's page cache, so `durability.rs` cannot tell a missing fsync; these tests can.
//! Method: the real binary with its data dir on a lossy disk (pkraft-lossyfs, a FUSE file
//! system that drops every write and directory entry not fsynced at a power cut, and can tear
//! the last write). PUT → 204, cut the power (drop, then SIGKILL), power on, restart: every
//! acknowledged packet is served, over and over, with new PUTs between cuts.
//! Needs root and /dev/fuse (CI has both): without them each test prints SKIPPED and passes,
//! unless PKRAFT_TEST_REQUIRE_FUSE is set, as `.ci/run` sets it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pkraft_lossyfs::{BadWrite, Cut, LossyDisk};
use pkraft_testkit::pkarr::{Keypair, SignedPacket};
use pkraft_testkit::{iroh_packet, keypair};

use crate::dns_client::iroh_txt;
use crate::harness::{Launch, TestServer};

/// A node on a lossy disk. Fields drop in order: the server is killed first, then the disk is
/// unmounted (only possible once nothing uses it), then the directory holding the mount point
/// and the backing files is removed.
struct LossyNode {
    server: TestServer,
    disk: LossyDisk,
    _dirs: tempfile::TempDir,
}

fn lossy_node(test: &str) -> Option<LossyNode> {
    lossy_node_with_config(test, None)
}

/// A node on a lossy disk: `pkraft dev`, or `pkraft serve` with `config` (a single node's; the
/// file lives beside the disk, not on it).
fn lossy_node_with_config(test: &str, config: Option<&str>) -> Option<LossyNode> {
    if !pkraft_lossyfs::usable_in_test(test) {
        return None;
    }
    let dirs = tempfile::tempdir().expect("tempdir");
    let (disk, mountpoint) =
        pkraft_testkit::lossy::mount_lossy_disk(dirs.path()).expect("mount a lossy disk");
    let server = match config {
        None => TestServer::start_dev_at(mountpoint),
        Some(toml) => {
            let path = dirs.path().join("node.toml");
            std::fs::write(&path, toml).expect("write the config");
            TestServer::start_serve_at(&path, mountpoint, Launch::default())
        }
    };
    Some(LossyNode {
        server,
        disk,
        _dirs: dirs,
    })
}

impl LossyNode {
    /// Cuts the power (the disk drops what was not fsynced), kills the process, powers on and
    /// restarts it.
    fn power_cycle(&mut self, cut: Cut) {
        self.disk.cut_power(cut);
        self.server.kill();
        self.disk.power_on();
        self.server.restart();
    }
}

fn addr(round: usize, i: usize) -> String {
    format!("192.0.2.{}:{}", round + 1, 1000 + i)
}

/// Publishes `count` packets (keys from `first_seed`), `parallel` at a time so that some share a
/// log entry; returns them with their address.
async fn publish(
    server: &TestServer,
    round: usize,
    first_seed: u64,
    count: usize,
    parallel: usize,
) -> Vec<(Keypair, SignedPacket, String)> {
    let mut published = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(parallel) {
        let mut puts = tokio::task::JoinSet::new();
        for &i in chunk {
            let key = keypair(first_seed + i as u64);
            let address = addr(round, i);
            let packet = iroh_packet(&key, 1_000 * (round as u64 + 1) + i as u64, &[&address]);
            let url = server.relay_url(&key);
            let body = packet.to_relay_payload();
            puts.spawn(async move {
                let status = crate::harness::http_client()
                    .put(url)
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16());
                (key, packet, address, status)
            });
        }
        for (key, packet, address, status) in puts.join_all().await {
            assert_eq!(status.ok(), Some(204), "publish failed\n{}", server.log());
            published.push((key, packet, address));
        }
    }
    published
}

async fn assert_served(server: &TestServer, published: &[(Keypair, SignedPacket, String)]) {
    for (i, (key, packet, address)) in published.iter().enumerate() {
        let get = server.get(&server.relay_url(key)).await;
        assert_eq!(
            get.status(),
            200,
            "acknowledged packet {i} lost at a power cut\n{}",
            server.log()
        );
        assert_eq!(get.bytes().await.expect("body"), packet.to_relay_payload());
        assert_eq!(
            iroh_txt(server.dns, key).await,
            vec![format!("addr={address}")]
        );
    }
}

#[tokio::test]
async fn acknowledged_puts_survive_power_cuts_between_writes() {
    let Some(mut node) = lossy_node("power cuts between writes") else {
        return;
    };
    let cuts = [
        Cut::Clean,
        Cut::TornLastWrite { keep: 1 },
        Cut::TornLastWrite { keep: 700 },
    ];
    // Each round overwrites the keys of the round before (a newer packet per key) and adds new
    // ones; what must survive is every key's newest acknowledged packet.
    let mut newest: Vec<(Keypair, SignedPacket, String)> = Vec::new();
    for (round, cut) in cuts.into_iter().enumerate() {
        let count = 20 + 10 * round;
        let published = publish(&node.server, round, 500, count, 1 + round * 3).await;
        for entry in published {
            match newest
                .iter_mut()
                .find(|(k, ..)| k.public_key() == entry.0.public_key())
            {
                Some(slot) => *slot = entry,
                None => newest.push(entry),
            }
        }
        node.power_cycle(cut);
        assert_served(&node.server, &newest).await;
    }
}

/// A disk that acknowledged an append of the log and did not store it as asked (lost, or
/// written at another offset) shows it after a power cut. A single node has no copy to take the
/// entries from: it refuses to start and names the damage, rather than start without packets it
/// answered 204. With later appends after the bad one, whole records follow it; as the log's
/// last append, only the synced mark (`raft-log/synced`, written after each append's sync and
/// before its 204) tells it from a torn write, which was never acknowledged and is cut.
#[tokio::test]
async fn a_bad_write_the_disk_acknowledged_stops_a_single_node_after_a_power_cut() {
    let cases = [
        (BadWrite::Lost, 8),
        (BadWrite::Misdirected { back: 300 }, 8),
        (BadWrite::Lost, 0),
        (BadWrite::Misdirected { back: 300 }, 0),
    ];
    for (i, (bad, later)) in cases.into_iter().enumerate() {
        let Some(mut node) = lossy_node(&format!("{bad:?} with {later} PUTs after it")) else {
            return;
        };
        publish(&node.server, i, 700, 8, 1).await;
        node.disk.arm_bad_write(bad, ".seg");
        publish(&node.server, i, 708, 1 + later, 1).await;
        let taken = node.disk.bad_write().expect("an append of the log took it");
        if later > 0 {
            assert!(taken.later_syncs >= 1, "{taken:?}: no later append");
        }

        let cut = node.disk.cut_power(Cut::Clean);
        assert_eq!(cut.bad_writes, 1, "{bad:?}, {later} later");
        node.server.kill();
        node.disk.power_on();
        let refusal = node.server.restart_refused();
        assert!(
            refusal.contains("the Raft log is damaged"),
            "{bad:?}, {later} later: {refusal}"
        );
        assert!(
            refusal.contains("may have been acknowledged"),
            "{bad:?}, {later} later: {refusal}"
        );
    }
}

/// Writers PUT newer and newer packets of their own keys until the power goes; every packet
/// answered 204 must be served after the restart, or a newer one (a PUT whose answer the cut
/// swallowed may have committed).
#[tokio::test]
async fn acknowledged_puts_survive_power_cuts_during_writes() {
    // Newer and newer packets of each key as fast as they are taken: far over the shipped
    // per-key rate, which is not what this test is about.
    let config = "[cluster]\nbootstrap = true\n[rate_limit]\n\
                  publish_per_key = { per_minute = 0, burst = 0 }\n";
    let Some(mut node) = lossy_node_with_config("power cuts during writes", Some(config)) else {
        return;
    };
    const WRITERS: u64 = 8;
    const KEYS_PER_WRITER: u64 = 4;
    // (the cut, ms after the round's first acknowledgement, whether it waits for the next
    // fsync: the worst moment, with a write made and not yet synced)
    let cuts = [
        (Cut::Clean, 150, false),
        (Cut::TornLastWrite { keep: 3 }, 400, true),
        (Cut::Clean, 700, true),
        (Cut::TornLastWrite { keep: 2_000 }, 250, false),
        (Cut::TornLastWrite { keep: 40 }, 50, true),
    ];
    // key seed → newest acknowledged timestamp
    let acknowledged = Arc::new(Mutex::new(HashMap::<u64, u64>::new()));
    let acks = Arc::new(AtomicU64::new(0));
    let mut next_timestamp = 1_000u64;
    let mut dropped_at_fsync = 0;
    for (round, (cut, after_ms, at_fsync)) in cuts.into_iter().enumerate() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = tokio::task::JoinSet::new();
        for writer in 0..WRITERS {
            let base = node.server.url("/pkarr/");
            let (acknowledged, acks, stop) = (acknowledged.clone(), acks.clone(), stop.clone());
            let first_timestamp = next_timestamp + writer * 1_000_000;
            writers.spawn(async move {
                let http = crate::harness::http_client();
                let mut timestamp = first_timestamp;
                while !stop.load(Ordering::Relaxed) && timestamp < first_timestamp + 1_000_000 {
                    let seed = 900 + writer * KEYS_PER_WRITER + timestamp % KEYS_PER_WRITER;
                    let key = keypair(seed);
                    let packet = iroh_packet(&key, timestamp, &[&addr(round, seed as usize)]);
                    let url = format!("{base}{}", key.public_key().to_z32());
                    let sent = http.put(url).body(packet.to_relay_payload()).send().await;
                    if sent.is_ok_and(|r| r.status() == 204) {
                        acks.fetch_add(1, Ordering::Relaxed);
                        let mut acked = acknowledged.lock().expect("lock");
                        let newest = acked.entry(seed).or_default();
                        *newest = (*newest).max(timestamp);
                    }
                    timestamp += 1;
                }
            });
        }
        // The cut comes `after_ms` after this round's first acknowledgement (waited for at
        // most 10 s).
        let acks_before = acks.load(Ordering::Relaxed);
        for _ in 0..1_000 {
            if acks.load(Ordering::Relaxed) > acks_before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        let acks_at_cut = acks.load(Ordering::Relaxed);
        if at_fsync {
            node.disk.arm_cut(cut);
            for _ in 0..500 {
                if node.disk.armed_cut_happened() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            assert!(
                node.disk.armed_cut_happened(),
                "round {round}: no fsync within 1 s of arming the cut, under writes"
            );
            dropped_at_fsync += node.disk.cut_armed_or_now().dropped_bytes;
        } else {
            node.disk.cut_power(cut);
        }
        node.server.kill();
        stop.store(true, Ordering::Relaxed);
        writers.join_all().await;
        next_timestamp += WRITERS * 1_000_000;
        node.disk.power_on();
        node.server.restart();

        assert!(
            acks_at_cut > acks_before,
            "round {round}: no PUT was acknowledged before the cut"
        );
        let acked = acknowledged.lock().expect("lock").clone();
        for (seed, timestamp) in acked {
            let key = keypair(seed);
            let get = node.server.get(&node.server.relay_url(&key)).await;
            assert_eq!(
                get.status(),
                200,
                "round {round}: key {seed} (acknowledged at {timestamp}) lost\n{}",
                node.server.log()
            );
            let body = get.bytes().await.expect("body");
            let served = relay_payload_timestamp(&body);
            assert!(
                served >= timestamp,
                "round {round}: key {seed} went back from {timestamp} to {served}\n{}",
                node.server.log()
            );
        }
    }
    // The cuts at an fsync hit data written and not yet synced (a log entry): the test
    // exercises the loss it is about, not a SIGKILL in disguise.
    assert!(dropped_at_fsync > 0, "the cuts at an fsync dropped nothing");
}

/// The signed timestamp of a relay payload (`signature (64) ‖ timestamp (8, big-endian) ‖ …`).
fn relay_payload_timestamp(payload: &[u8]) -> u64 {
    let bytes: [u8; 8] = payload
        .get(64..72)
        .and_then(|b| b.try_into().ok())
        .expect("a relay payload has a timestamp");
    u64::from_be_bytes(bytes)
}

/// An fsync that fails (EIO) must stop the node: the data may be gone (Linux drops the pages'
/// dirty state after a failed writeback, and the lossy disk drops the data), so going on would
/// acknowledge what is not on disk. No PUT is acknowledged meanwhile; after a restart on a
/// healthy disk every earlier acknowledged packet is served.
#[tokio::test]
async fn a_failed_fsync_stops_the_node_and_loses_nothing_acknowledged() {
    let Some(mut node) = lossy_node("fsync eio") else {
        return;
    };
    let published = publish(&node.server, 0, 700, 10, 2).await;
    node.disk.fail_fsyncs(true);
    for i in 0..10u64 {
        let key = keypair(800 + i);
        let packet = iroh_packet(&key, 5_000, &["192.0.2.9:1"]);
        let Ok(response) = crate::harness::http_client()
            .put(node.server.relay_url(&key))
            .body(packet.to_relay_payload())
            .send()
            .await
        else {
            break;
        };
        assert_eq!(
            response.status(),
            503,
            "PUT {i} while every fsync fails\n{}",
            node.server.log()
        );
    }
    let status = node.server.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", node.server.log());
    node.disk.fail_fsyncs(false);
    node.disk.cut_power(Cut::Clean);
    node.disk.power_on();
    node.server.restart();
    assert_served(&node.server, &published).await;
}

/// Sends one PUT of a new packet for `seed`; its status, or `None` if the node did not answer.
async fn put_new(server: &TestServer, seed: u64, timestamp: u64) -> Option<reqwest::Response> {
    let key = keypair(seed);
    let packet = iroh_packet(&key, timestamp, &[&addr(9, seed as usize)]);
    crate::harness::http_client()
        .put(server.relay_url(&key))
        .body(packet.to_relay_payload())
        .send()
        .await
        .ok()
}

/// Whether a PUT of key `seed` is taken (204) within 100 tries 20 ms apart: the node measures
/// its free space at most 100 ms apart, so space that returned is seen well within that.
async fn taken_within_100_puts(server: &TestServer, seed: u64, timestamp: u64) -> bool {
    for _ in 0..100 {
        let response = put_new(server, seed, timestamp).await;
        if response.map(|r| r.status().as_u16()) == Some(204) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A disk that fills up to below `raft.min_free_disk_mib` (1 GiB by default) makes the node
/// refuse PUTs with 503, not stop: it serves everything acknowledged meanwhile, and takes PUTs
/// again once space is freed, without a restart. What it acknowledged survives a power cut.
#[tokio::test]
async fn a_disk_below_the_reserve_refuses_puts_and_takes_them_again_when_space_returns() {
    let Some(mut node) = lossy_node("disk full") else {
        return;
    };
    let mut published = publish(&node.server, 0, 900, 10, 2).await;
    // 64 MiB left: under the reserve, and far more than the PUTs below write, so the node has
    // to notice the reserve, not ENOSPC.
    node.disk.limit_free_space(Some(64 << 20));
    // The node measures the free space at most 100 ms apart: within a bounded number of PUTs
    // one is refused. A PUT acknowledged before that must survive like any other.
    let mut refused = None;
    for i in 0..100u64 {
        let response = put_new(&node.server, 1_000 + i, 7_000)
            .await
            .expect("the node answers");
        if response.status() == 503 {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), 204, "{}", node.server.log());
        let key = keypair(1_000 + i);
        let packet = iroh_packet(&key, 7_000, &[&addr(9, (1_000 + i) as usize)]);
        published.push((key, packet, addr(9, (1_000 + i) as usize)));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = refused.expect("a PUT refused once the disk is below the reserve");
    assert!(refused.headers().contains_key("retry-after"));
    let reason = refused.text().await.expect("body");
    assert!(reason.contains("raft.min_free_disk_mib"), "{reason}");
    for i in 0..5u64 {
        let response = put_new(&node.server, 1_200 + i, 7_000).await;
        assert_eq!(response.map(|r| r.status().as_u16()), Some(503));
    }
    // Still up, serving reads; the metrics say why.
    assert_served(&node.server, &published).await;
    let metrics = node
        .server
        .get(&format!("http://{}/metrics", node.server.admin))
        .await
        .text()
        .await
        .expect("metrics");
    let available: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("pkraft_disk_available_bytes "))
        .and_then(|value| value.trim().parse().ok())
        .expect("pkraft_disk_available_bytes");
    // Below the reserve (1 GiB); not necessarily at most the 64 MiB left at the limit: files
    // the node deletes or shrinks since (log segments, old snapshots) free space again.
    assert!(available < (1u64 << 30) as f64, "{available}");
    assert!(
        metrics.contains("pkraft_raft_publish_refused_total{reason=\"disk_full\"}"),
        "{metrics}"
    );

    node.disk.limit_free_space(None);
    assert!(
        taken_within_100_puts(&node.server, 1_300, 7_000).await,
        "no PUT taken after space returned\n{}",
        node.server.log()
    );
    published.extend(publish(&node.server, 1, 1_400, 10, 2).await);
    node.power_cycle(Cut::Clean);
    assert_served(&node.server, &published).await;
}

/// Between `raft.new_keys_min_free_disk_mib` and `raft.min_free_disk_mib` the node stores no
/// new keys (507, before the body is read) while the keys it holds are republished (204): a
/// flood of new keys cannot take the room stored endpoints need. Below the reserve every write
/// gets the 503. Once space returns new keys are taken again, without a restart.
#[tokio::test]
async fn a_disk_between_its_reserves_refuses_new_keys_and_takes_republishes() {
    let config = "[cluster]\nbootstrap = true\n[raft]\nmin_free_disk_mib = 64\n\
                  new_keys_min_free_disk_mib = 512\n";
    let Some(node) = lossy_node_with_config("disk between its reserves", Some(config)) else {
        return;
    };
    let stored = publish(&node.server, 0, 3_000, 10, 2).await;
    node.disk.limit_free_space(Some(256 << 20));
    // The node measures the free space at most 100 ms apart: within a bounded number of PUTs
    // a new key is refused.
    let mut refused = None;
    for i in 0..100u64 {
        let response = put_new(&node.server, 3_100 + i, 9_000)
            .await
            .expect("the node answers");
        if response.status() == 507 {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), 204, "{}", node.server.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = refused.expect("a new key refused between the reserves");
    assert_eq!(refused.headers()["retry-after"], "60");
    let reason = refused.text().await.expect("body");
    assert!(
        reason.contains("raft.new_keys_min_free_disk_mib"),
        "{reason}"
    );
    // Refused before verification: a body that is no packet gets the 507 too.
    let garbage = crate::harness::http_client()
        .put(node.server.relay_url(&keypair(3_300)))
        .body("not a signed packet")
        .send()
        .await
        .expect("the node answers");
    assert_eq!(garbage.status(), 507);
    // Every stored key's republish is taken.
    for (i, (key, _, address)) in stored.iter().enumerate() {
        let packet = iroh_packet(key, 9_000 + i as u64, &[address]);
        let response = crate::harness::http_client()
            .put(node.server.relay_url(key))
            .body(packet.to_relay_payload())
            .send()
            .await
            .expect("the node answers");
        assert_eq!(response.status(), 204, "republish {i} between the reserves");
    }
    let metrics = node
        .server
        .get(&format!("http://{}/metrics", node.server.admin))
        .await
        .text()
        .await
        .expect("metrics");
    assert!(
        crate::metrics::sample(
            &metrics,
            "pkraft_raft_publish_refused_total",
            "reason=\"new_keys_disk_low\""
        )
        .is_some_and(|refused| refused >= 2.0),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "pkraft_disk_new_keys_min_free_bytes {}",
            512u64 << 20
        )),
        "{metrics}"
    );

    // Below the reserve a republish is refused too, with the reserve's 503.
    node.disk.limit_free_space(Some(32 << 20));
    let mut republish_refused = false;
    for i in 0..100u64 {
        // A key after another: the per-key rate (a burst of 10) is not what this is about.
        let (key, _, address) = &stored[i as usize % stored.len()];
        let packet = iroh_packet(key, 10_000 + i, &[address]);
        let response = crate::harness::http_client()
            .put(node.server.relay_url(key))
            .body(packet.to_relay_payload())
            .send()
            .await
            .expect("the node answers");
        if response.status() == 503 {
            let reason = response.text().await.expect("body");
            assert!(reason.contains("raft.min_free_disk_mib"), "{reason}");
            republish_refused = true;
            break;
        }
        assert_eq!(response.status(), 204);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(republish_refused, "{}", node.server.log());

    node.disk.limit_free_space(None);
    assert!(
        taken_within_100_puts(&node.server, 3_400, 9_000).await,
        "no new key taken after space returned\n{}",
        node.server.log()
    );
}

/// A file system that answers `statfs` with a size of zero blocks (LazyFS, several FUSE and
/// network file systems) does not tell its free space: unknown is not full, so the node takes
/// PUTs with the default reserve (1 GiB), says once in its log that it cannot enforce it, and
/// enforces it again once the size is known.
#[tokio::test]
async fn a_disk_of_unknown_size_is_not_taken_for_a_full_one() {
    let Some(node) = lossy_node("disk of unknown size") else {
        return;
    };
    node.disk.report_unknown_size(true);
    // The node measures at least once a second; give it two measurements of the unknown size.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let published = publish(&node.server, 0, 2_000, 10, 2).await;
    assert_served(&node.server, &published).await;
    let log = node.server.log();
    assert_eq!(
        log.matches("cannot tell the free disk space").count(),
        1,
        "logged once, not every second\n{log}"
    );
    assert!(!log.contains("less than raft.min_free_disk_mib"), "{log}");

    // Known again, and below the reserve: refused as before.
    node.disk.report_unknown_size(false);
    node.disk.limit_free_space(Some(64 << 20));
    let mut refused = false;
    for i in 0..100u64 {
        let status = put_new(&node.server, 2_100 + i, 7_000)
            .await
            .map(|r| r.status().as_u16());
        if status == Some(503) {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refused,
        "the reserve applies once the size is known\n{}",
        node.server.log()
    );
}

/// With the reserve off (`raft.min_free_disk_mib = 0`), a full disk is a storage error like any
/// other: the node stops (exit status 1) rather than acknowledge what it could not write, and
/// after a restart with space every packet it acknowledged is served.
#[tokio::test]
async fn with_the_reserve_off_a_full_disk_stops_the_node_and_loses_nothing_acknowledged() {
    let config = "[cluster]\nbootstrap = true\n[raft]\nmin_free_disk_mib = 0\n";
    let Some(mut node) = lossy_node_with_config("disk full, reserve off", Some(config)) else {
        return;
    };
    let mut published = publish(&node.server, 0, 2_000, 10, 2).await;
    node.disk.limit_free_space(Some(0));
    // The first log append after the limit fails (segments grow as they are written): some PUT
    // gets no 204, and every 204 before it must survive.
    let mut refused = false;
    for i in 0..100u64 {
        let seed = 2_100 + i;
        match put_new(&node.server, seed, 8_000).await {
            Some(response) if response.status() == 204 => {
                let key = keypair(seed);
                let packet = iroh_packet(&key, 8_000, &[&addr(9, seed as usize)]);
                published.push((key, packet, addr(9, seed as usize)));
            }
            _ => {
                refused = true;
                break;
            }
        }
    }
    assert!(
        refused,
        "100 PUTs acknowledged on a full disk\n{}",
        node.server.log()
    );
    let status = node.server.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", node.server.log());
    // Stopped for the full disk, named as such.
    assert!(
        node.server.log().contains("No space left on device"),
        "{}",
        node.server.log()
    );
    node.disk.limit_free_space(None);
    node.server.restart();
    assert_served(&node.server, &published).await;
}
