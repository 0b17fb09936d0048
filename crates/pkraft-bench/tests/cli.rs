//! Goal: the load generator's offline commands produce what the benchmark script relies on:
//! a data set with distinct, increasing versions per key, a dnsperf query per key, and a zone file
//! with the TXT records of the chosen version.
//! Method: run the real `pkraft-bench` binary. (This also makes `cargo test` build the binary
//! that `make bench-smoke` runs.)

use std::process::Command;

fn bench(args: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_pkraft-bench"))
        .args(args)
        .output()
        .expect("run pkraft-bench");
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `gen` 5 keys × 3 versions from seed 9 into `out`.
fn gen_small(out: &str) {
    bench(&[
        "gen",
        "--keys",
        "5",
        "--versions",
        "3",
        "--seed",
        "9",
        "--out",
        out,
    ]);
}

/// `queries` for `version` of `data`, writing `queries` and `zone`.
fn write_queries(data: &str, version: &str, queries: &str, zone: &str) {
    bench(&[
        "queries",
        "--data",
        data,
        "--origin",
        "pkarr.test",
        "--version",
        version,
        "--queries",
        queries,
        "--zone",
        zone,
    ]);
}

#[test]
fn gen_and_queries_write_consistent_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).display().to_string();
    gen_small(&path("data.bin"));
    write_queries(&path("data.bin"), "2", &path("q.txt"), &path("z.zone"));
    let queries = std::fs::read_to_string(path("q.txt")).expect("queries");
    let zone = std::fs::read_to_string(path("z.zone")).expect("zone");
    assert_eq!(queries.lines().count(), 5);
    for line in queries.lines() {
        let z32 = line
            .strip_prefix("_iroh.")
            .and_then(|rest| rest.strip_suffix(".pkarr.test TXT"))
            .unwrap_or_else(|| panic!("query line {line:?}"));
        assert_eq!(z32.len(), 52);
        assert!(
            zone.contains(&format!("_iroh.{z32} 30 IN TXT \"addr=")),
            "{z32} in the zone"
        );
    }
    assert!(zone.contains(":10002\""), "version 2's records");
    assert!(!zone.contains(":10001\""), "no other version");

    // The same seed gives the same keys.
    gen_small(&path("again.bin"));
    write_queries(&path("again.bin"), "0", &path("q2.txt"), &path("z2.zone"));
    assert_eq!(
        std::fs::read_to_string(path("q2.txt")).expect("queries"),
        queries
    );
}

#[test]
fn a_missing_version_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data.bin").display().to_string();
    bench(&["gen", "--keys", "1", "--versions", "2", "--out", &data]);
    let output = Command::new(env!("CARGO_BIN_EXE_pkraft-bench"))
        .args([
            "put",
            "--data",
            &data,
            "--version",
            "2",
            "--url",
            "http://127.0.0.1:9",
        ])
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("version 2 requested"));
}

/// `accept` retries refusals only up to its timeout, then fails and says what it saw (the
/// failover trials of `make bench` rely on a failing probe ending the run).
#[test]
fn accept_gives_up_after_its_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data.bin").display().to_string();
    gen_small(&data);
    // A port that nothing listens on: every attempt is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let url = format!("http://{closed}/pkarr");
    // `accept` of version 1 of `key` with a 1 s timeout; it must fail, and says why on stderr.
    let failed_accept = |key: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_pkraft-bench"))
            .args(["accept", "--data", &data, "--version", "1", "--key", key])
            .args(["--url", &url, "--timeout-secs", "1"])
            .output()
            .expect("run pkraft-bench");
        assert!(!output.status.success(), "key {key}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };

    let started = std::time::Instant::now();
    let stderr = failed_accept("0");
    assert!(stderr.contains("no PUT accepted"), "{stderr}");
    assert!(stderr.contains("\"error\""), "refusals counted: {stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));

    let stderr = failed_accept("5");
    assert!(stderr.contains("past the 5 keys"), "{stderr}");
}
