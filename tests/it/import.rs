//! Goal: `pkraft import` moves every packet of an iroh-dns-server store into a cluster, verified
//! and replicated, is safe to run again, and names what it did not import and why
//! (docs/DEPLOY.md, "Moving from iroh-dns-server").
//! Method: the store in tests/fixtures/iroh-dns-server was written by the real iroh-dns-server
//! 1.4.1 (its make.sh); a copy gets a few rows more, written the way iroh-dns-server writes
//! them; the real binary imports it into a real cluster, and every packet is read back over the
//! relay API of every node.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pkraft_testkit::{iroh_packet, keypair};
use serde_json::Value;

use crate::cluster::{TestCluster, eventually};
use crate::harness::{TestServer, http_client};

const TOKEN: &str = "test-admin-token-0123456789";
const IROH_PACKETS: redb::TableDefinition<&[u8; 32], &[u8]> =
    redb::TableDefinition::new("signed-packets-1");

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/iroh-dns-server")
}

/// The packets the fixture's store holds (`packets.txt`): z32 key and relay payload.
fn fixture_packets() -> Vec<(String, Vec<u8>)> {
    let text = std::fs::read_to_string(fixture_dir().join("packets.txt")).expect("packets.txt");
    text.lines()
        .map(|line| {
            let (key, hex) = line.split_once(' ').expect("`<key> <hex>`");
            let payload = (0..hex.len())
                .step_by(2)
                .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).expect("hex"))
                .collect();
            (key.to_string(), payload)
        })
        .collect()
}

/// A copy of the fixture's store in a new directory, as iroh-dns-server's data dir holds it.
fn store_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        fixture_dir().join("signed-packets-1.db"),
        dir.path().join("signed-packets-1.db"),
    )
    .expect("copy the fixture");
    dir
}

/// Writes rows into iroh-dns-server's table as it writes them (or as it did before 0.35).
fn add_rows(store: &Path, rows: &[([u8; 32], Vec<u8>)]) {
    let db = redb::Database::open(store.join("signed-packets-1.db")).expect("open the copy");
    let write = db.begin_write().expect("write");
    {
        let mut table = write
            .open_table(IROH_PACKETS)
            .expect("iroh-dns-server's table");
        for (key, value) in rows {
            table.insert(key, value.as_slice()).expect("insert");
        }
    }
    write.commit().expect("commit");
}

/// iroh-dns-server 1.4's row: `last_seen (8) ‖ key ‖ signature ‖ timestamp ‖ DNS packet`.
fn current_row(key: &[u8; 32], payload: &[u8]) -> Vec<u8> {
    let mut row = 1_795_132_800_000_000u64.to_be_bytes().to_vec();
    row.extend_from_slice(key);
    row.extend_from_slice(payload);
    row
}

/// Runs `pkraft import --json` to its end without blocking the test's runtime.
async fn pkraft_import(admin: &str, token_file: &Path, store: &Path) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_pkraft"))
        .args(["import", "--json", "--admin", admin, "--token-file"])
        .arg(token_file)
        .arg(store)
        .env_remove("PKRAFT_ADMIN_TOKEN")
        .output()
        .await
        .expect("run pkraft import")
}

/// The summary of an import that succeeded.
fn summary(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "pkraft import failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("a JSON summary")
}

fn counts(summary: &Value) -> [u64; 6] {
    [
        "rows",
        "imported",
        "unchanged",
        "newer_stored",
        "expired",
        "invalid",
    ]
    .map(|field| summary[field].as_u64().unwrap_or(u64::MAX))
}

#[tokio::test]
async fn an_iroh_dns_server_store_is_imported_into_a_cluster_and_again_changes_nothing() {
    // The fixture's packets were signed on 2026-11-20: keep them whatever their age.
    let cluster = TestCluster::start(3, "record_max_age = \"0s\"\n").await;
    let packets = fixture_packets();
    assert_eq!(packets.len(), 120, "the fixture as make.sh writes it");
    let store = store_copy();
    let token_file = store.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token file");

    // Rows besides the real server's: one from before iroh-dns-server 0.35 (no last_seen), one
    // whose key has a newer packet in the cluster already, one with a broken signature, one
    // that is no packet at all.
    let old_format = keypair(902);
    let old_format_packet = iroh_packet(&old_format, 5_000, &["192.0.2.2:1"]);
    let mut old_format_row = old_format.public_key().to_bytes().to_vec();
    old_format_row.extend_from_slice(&old_format_packet.to_relay_payload());
    let newer_in_cluster = keypair(900);
    let older = iroh_packet(&newer_in_cluster, 1_000, &["192.0.2.1:1"]);
    let newer = iroh_packet(&newer_in_cluster, 2_000, &["192.0.2.1:2"]);
    let mut broken = iroh_packet(&keypair(901), 1_000, &["192.0.2.1:3"])
        .to_relay_payload()
        .to_vec();
    broken[10] ^= 0x40;
    add_rows(
        store.path(),
        &[
            (old_format.public_key().to_bytes(), old_format_row),
            (
                newer_in_cluster.public_key().to_bytes(),
                current_row(
                    &newer_in_cluster.public_key().to_bytes(),
                    &older.to_relay_payload(),
                ),
            ),
            (
                keypair(901).public_key().to_bytes(),
                current_row(&keypair(901).public_key().to_bytes(), &broken),
            ),
            ([7; 32], b"not a packet".to_vec()),
        ],
    );
    let first = &cluster.members[0].server;
    first.publish(&newer_in_cluster, &newer).await;
    // One of the real server's packets is in the cluster already (its endpoint republished).
    let (already_key, already_payload) = &packets[0];
    let response = first
        .put(
            &first.url(&format!("/pkarr/{already_key}")),
            already_payload.clone().into(),
        )
        .await;
    assert_eq!(response.status(), 204);

    // Through a node that may well not lead: the write path forwards.
    let admin = cluster.members[2].server.admin.to_string();
    let report = summary(&pkraft_import(&admin, &token_file, store.path()).await);
    assert_eq!(
        counts(&report),
        [124, 120, 1, 1, 0, 2],
        "rows, imported, unchanged, newer, expired, invalid: {report:#}"
    );
    let invalid = report["invalid_rows"].to_string();
    assert!(
        invalid.contains(&keypair(901).public_key().to_z32()) && invalid.contains("signature"),
        "the broken signature is named: {invalid}"
    );
    assert!(
        invalid.contains("no packet for its key"),
        "the junk row is named: {invalid}"
    );

    // Every packet of the real store (and the old-format row's) on every node, byte for byte.
    let mut expected = packets.clone();
    expected.push((
        old_format.public_key().to_z32(),
        old_format_packet.to_relay_payload().to_vec(),
    ));
    for member in &cluster.members {
        let node = &member.server;
        for (key, payload) in &expected {
            let url = node.url(&format!("/pkarr/{key}"));
            eventually(&format!("{key} on node {}", member.id), || async {
                let response = http_client().get(&url).send().await.ok()?;
                let body = response.bytes().await.ok()?;
                (body.as_ref() == payload.as_slice()).then_some(())
            })
            .await;
        }
        let kept = node.get(&node.relay_url(&newer_in_cluster)).await;
        assert_eq!(kept.bytes().await.expect("body"), newer.to_relay_payload());
    }

    // Again: nothing changes, and the summary says so.
    let again = summary(&pkraft_import(&admin, &token_file, store.path()).await);
    assert_eq!(counts(&again), [124, 0, 121, 1, 0, 2], "{again:#}");

    // The text summary (without --json) has the lines DEPLOY.md names, and names the invalid.
    let text = tokio::process::Command::new(env!("CARGO_BIN_EXE_pkraft"))
        .args(["import", "--admin", &admin, "--token-file"])
        .arg(&token_file)
        .arg(store.path())
        .env_remove("PKRAFT_ADMIN_TOKEN")
        .output()
        .await
        .expect("run pkraft import");
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    for line in [
        "imported:                   0",
        "unchanged (already stored): 121",
        "newer packet stored:        1",
        "older than record_max_age:  0",
        "invalid:                    2",
    ] {
        assert!(text.contains(&format!("{line}\n")), "{line:?} in {text}");
    }
    assert!(
        text.contains(&format!("invalid {}", keypair(901).public_key().to_z32())),
        "{text}"
    );
}

#[tokio::test]
async fn import_counts_expired_packets_and_explains_a_store_it_cannot_read() {
    // make.sh signs the fixture's packets on 2026-11-20: more than a day before any run.
    let config = format!(
        "[cluster]\nbootstrap = true\n[raft]\nrecord_max_age = \"1day\"\n[admin]\ntoken = \"{TOKEN}\"\n"
    );
    let server = TestServer::start_with_config(&config);
    let admin = server.admin.to_string();
    let store = store_copy();
    let token_file = store.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token file");

    // The file itself may be named instead of the data dir.
    let report = summary(
        &pkraft_import(
            &admin,
            &token_file,
            &store.path().join("signed-packets-1.db"),
        )
        .await,
    );
    assert_eq!(counts(&report), [120, 0, 0, 0, 120, 0], "{report:#}");
    let (key, _) = &fixture_packets()[0];
    let response = server.get(&server.url(&format!("/pkarr/{key}"))).await;
    assert_eq!(response.status(), 404, "an expired packet is not imported");

    // Without the token: refused, nothing read.
    let refused = Command::new(env!("CARGO_BIN_EXE_pkraft"))
        .args(["import", "--admin", &admin])
        .arg(store.path())
        .env_remove("PKRAFT_ADMIN_TOKEN")
        .output()
        .expect("run pkraft import");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // POST /import itself: a torn batch is 400, a body past a full batch of the largest
    // payloads is 413 (docs/API.md), and neither changes anything.
    let url = format!("http://{admin}/import");
    let post = |body: Vec<u8>| {
        http_client()
            .post(&url)
            .bearer_auth(TOKEN)
            .body(body)
            .send()
    };
    let torn = post(vec![1; 40]).await.expect("POST /import");
    assert_eq!(torn.status(), 400);
    let error = torn.text().await.expect("body");
    assert!(error.contains("not an import batch"), "{error}");
    let oversized = post(vec![0; 512 * (34 + 1072) + 1])
        .await
        .expect("POST /import");
    assert_eq!(oversized.status(), 413);

    // A store iroh-dns-server still has open: the error says what to do.
    let open = redb::Database::open(store.path().join("signed-packets-1.db")).expect("open");
    let locked = pkraft_import(&admin, &token_file, store.path()).await;
    let stderr = String::from_utf8_lossy(&locked.stderr);
    assert!(
        !locked.status.success() && stderr.contains("open in another process"),
        "{stderr}"
    );
    drop(open);

    // A redb file that is not iroh-dns-server's, and no file at all.
    let other = tempfile::tempdir().expect("tempdir");
    redb::Database::create(other.path().join("signed-packets-1.db")).expect("an empty redb file");
    let wrong = pkraft_import(&admin, &token_file, other.path()).await;
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        !wrong.status.success() && stderr.contains("not an iroh-dns-server store"),
        "{stderr}"
    );
    let missing = pkraft_import(&admin, &token_file, &other.path().join("nothing")).await;
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && stderr.contains("does not exist"),
        "{stderr}"
    );
}
