//! Times a snapshot install (`Store::import_snapshot_from`) of iroh-shaped packets into a fresh
//! `state.redb`, the work a learner's catch-up does after the transfer.
//!
//! `make bench-install` (INSTALL_RECORDS, INSTALL_CACHE_MIB, INSTALL_DIR), or
//! `cargo run --release --locked -p pkraft-state --example install_time -- <records> <cache MiB> <dir>`:
//! makes `<dir>/snapshot-<records>` once (iroh-shaped packets, a relay-less `_iroh` TXT with an
//! IPv4 and an IPv6 `addr=`, signed on two threads and applied to a source store, exported;
//! about 17 minutes for 10M here), then imports it into `<dir>/target.redb` (removed first) with
//! a state cache of `<cache MiB>`, prints the time and the imported tables' redb statistics.
//! What it leaves out of a learner's catch-up: the transfer, the node's other work beside the
//! install, and the replay of the log after it (docs/BENCHMARKS.md, "The snapshot install
//! alone").

use std::io::BufReader;
use std::time::Instant;

use pkraft_state::Store;
use pkraft_testkit::{iroh_packet, keypair};
use pkraft_types::{Command, Payload, PublishItem};

fn sign(seeds: std::ops::Range<u64>, base: u64) -> Vec<PublishItem> {
    seeds
        .map(|seed| {
            let kp = keypair(seed);
            let port = 1024 + seed % 60_000;
            let addrs = [
                format!("192.0.{}.{}:{port}", seed / 250 % 250, seed % 250 + 1),
                format!("[2001:db8::{:x}]:{port}", seed + 1),
            ];
            let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
            let payload = iroh_packet(&kp, base + seed, &addrs).to_relay_payload();
            PublishItem {
                key: kp.public_key().to_bytes(),
                payload: Payload::new(payload).expect("length"),
            }
        })
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let records: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let cache_mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(256);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "/tmp/install".into()));
    std::fs::create_dir_all(&dir).expect("dir");
    let snapshot = dir.join(format!("snapshot-{records}"));
    if !snapshot.exists() {
        let started = Instant::now();
        let source_path = dir.join(format!("source-{records}.redb"));
        let _ = std::fs::remove_file(&source_path);
        let source = Store::open_with_cache(&source_path, 1 << 30).expect("open source");
        let base = 1_700_000_000_000_000u64;
        for chunk in 0..records.div_ceil(10_000) {
            let range = chunk * 10_000..((chunk + 1) * 10_000).min(records);
            let middle = range.start + (range.end - range.start) / 2;
            // Signed on two threads: the signing, not the store, is most of the set-up.
            let packets: Vec<PublishItem> = std::thread::scope(|scope| {
                let first = scope.spawn(|| sign(range.start..middle, base));
                let mut second = sign(middle..range.end, base);
                let mut packets = first.join().expect("signing thread");
                packets.append(&mut second);
                packets
            });
            let mut txn = source.begin_apply(false).expect("begin");
            txn.apply(&Command::Publish {
                leader_time_micros: base + records,
                packets,
            })
            .expect("apply");
            txn.commit(b"state").expect("commit");
        }
        let file = std::fs::File::create(&snapshot).expect("create");
        let summary = source
            .snapshot_source()
            .expect("source")
            .write_to(std::io::BufWriter::new(file))
            .expect("export");
        drop(source);
        // Only the snapshot is kept: the source store is several times its size.
        let _ = std::fs::remove_file(&source_path);
        eprintln!(
            "made {} ({} packets, {} bytes) in {:?}",
            snapshot.display(),
            summary.packets,
            summary.bytes,
            started.elapsed()
        );
    }
    let target_path = dir.join("target.redb");
    let _ = std::fs::remove_file(&target_path);
    let target = Store::open_with_cache(&target_path, cache_mib << 20).expect("open target");
    let started = Instant::now();
    let input = BufReader::with_capacity(1 << 20, std::fs::File::open(&snapshot).expect("open"));
    let summary = target
        .import_snapshot_from(input, b"state")
        .expect("import");
    let took = started.elapsed();
    println!(
        "records={} cache_mib={cache_mib} import_s={:.2} us_per_packet={:.2} file_bytes={}",
        summary.packets,
        took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / summary.packets.max(1) as f64,
        std::fs::metadata(&target_path)
            .map(|m| m.len())
            .unwrap_or(0)
    );
    drop(target);
    use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};
    let db = redb::Database::open(&target_path).expect("reopen");
    let txn = db.begin_read().expect("read");
    for name in ["packets", "answers"] {
        let table = txn
            .open_table(TableDefinition::<&[u8; 32], &[u8]>::new(name))
            .expect("table");
        let stats = table.stats().expect("stats");
        println!(
            "{name}: leaf_pages={} branch_pages={} stored={} fragmented={} height={}",
            stats.leaf_pages(),
            stats.branch_pages(),
            stats.stored_bytes(),
            stats.fragmented_bytes(),
            stats.tree_height()
        );
    }
    let table = txn
        .open_table(TableDefinition::<&[u8; 36], ()>::new("expiry_buckets"))
        .expect("table");
    let stats = table.stats().expect("stats");
    println!(
        "expiry_buckets: leaf_pages={} stored={} fragmented={}",
        stats.leaf_pages(),
        stats.stored_bytes(),
        stats.fragmented_bytes()
    );
}
