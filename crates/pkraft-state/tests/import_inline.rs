//! A snapshot import where the node's blocking work runs inline, as in a simulation: a test
//! binary of its own, since a simulated world, once installed, is the process's for good.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pkraft_state::Store;
use pkraft_testkit::{iroh_packet, keypair};
use pkraft_types::world::{SimulatedWorld, runs_blocking_work_inline, simulate};
use pkraft_types::{Command, Payload, PublishItem};

fn wall_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        })
}

fn counter_u64() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn synced(file: &File) -> io::Result<()> {
    file.sync_all()
}

fn no_latency(_: &Path) -> Duration {
    Duration::ZERO
}

/// A reader that notes every thread it is read on.
struct NotingThreads<R> {
    inner: R,
    threads: Arc<Mutex<HashSet<ThreadId>>>,
}

impl<R: Read> Read for NotingThreads<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.threads
            .lock()
            .expect("not poisoned")
            .insert(std::thread::current().id());
        self.inner.read(buf)
    }
}

/// Goal: in a simulation the import starts no thread of its own (a real thread would run on in
/// real time beside the simulated clock): the stream is read on the thread that asked, and
/// every packet, its compiled answers and the removed node ids arrive all the same.
#[test]
fn an_import_with_blocking_work_inline_reads_on_the_asking_thread_and_keeps_every_row() {
    simulate(SimulatedWorld {
        unix_micros_now: wall_micros,
        random_u64: counter_u64,
        synced,
        disk_latency: no_latency,
    })
    .expect("the only simulated world of this process");
    assert!(runs_blocking_work_inline());

    let dir = tempfile::tempdir().expect("tempdir");
    let source = Store::open(&dir.path().join("source.redb")).expect("open");
    // More packets than one batch of the threaded import, so a batch boundary is crossed.
    let packets: Vec<PublishItem> = (0..1_200u64)
        .map(|seed| {
            let kp = keypair(seed);
            let payload = iroh_packet(&kp, 1_000 + seed, &["192.0.2.1:1"]).to_relay_payload();
            PublishItem {
                key: kp.public_key().to_bytes(),
                payload: Payload::new(payload).expect("valid length"),
            }
        })
        .collect();
    let mut txn = source.begin_apply(true).expect("begin");
    txn.apply(&Command::Publish {
        leader_time_micros: 5,
        packets: packets.clone(),
    })
    .expect("apply");
    txn.record_removed_nodes(&[7]).expect("record");
    txn.commit(b"at-1").expect("commit");
    let export = source.export_snapshot().expect("export");

    let target = Store::open(&dir.path().join("target.redb")).expect("open");
    let threads = Arc::new(Mutex::new(HashSet::new()));
    let summary = target
        .import_snapshot_from(
            NotingThreads {
                inner: export.data.as_slice(),
                threads: Arc::clone(&threads),
            },
            b"at-1",
        )
        .expect("import");
    assert_eq!(summary.packets, 1_200);
    assert_eq!(summary.removed_nodes, 1);
    let read_on = threads.lock().expect("not poisoned").clone();
    assert_eq!(
        read_on,
        HashSet::from([std::thread::current().id()]),
        "the stream is read on the asking thread only"
    );
    for item in &packets {
        assert_eq!(
            target.get(&item.key).expect("get"),
            source.get(&item.key).expect("get")
        );
        assert!(target.answers(&item.key).expect("answers").is_some());
    }
    assert!(target.is_removed_node(7).expect("read"));
    let check = target.check_integrity().expect("check");
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    assert_eq!(check.answer_rows, 1_200);
}
