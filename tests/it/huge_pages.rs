//! Goal: a node runs with transparent huge pages off for its process (`crates/pkraft/src/
//! daemon.rs`; docs/BENCHMARKS.md, "The read path in wire form, continued"): with
//! them on, zeroing fresh huge pages for the buffers redb reads pages into was a sixth of the
//! node's CPU on DNS misses at 10M records.
//! Method: `pkraft dev`, started as users start it; once it listens, the kernel's
//! `THP_enabled` line of `/proc/<pid>/status` (Linux 5.0 and later) must say 0.

use crate::harness::TestServer;

#[test]
fn a_node_runs_with_transparent_huge_pages_off() {
    let server = TestServer::start();
    let pid = server.pid().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = status
        .lines()
        .find(|line| line.starts_with("THP_enabled:"))
        .expect("the kernel reports THP_enabled (Linux 5.0 and later)");
    assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
}
