//! Goal: `pkraft backup` takes a consistent copy of a running node, `pkraft restore` seeds a new
//! node from it that serves the same records and accepts new writes, and `pkraft verify` checks
//! a stopped node's files (docs/OPERATIONS.md, "Backup and restore").
//! Method: the real binary for every step; records read back over HTTP and DNS.

use std::path::Path;
use std::process::{Command, Output};

use bytes::Bytes;
use hickory_proto::rr::RecordType;
use pkraft_testkit::{iroh_packet, keypair};

use crate::cluster::TestCluster;
use crate::dns_client::{Transport, key_name, raw_query, txt_strings};
use crate::harness::TestServer;

const TOKEN: &str = "test-admin-token-0123456789";

fn pkraft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pkraft"))
        .args(args)
        .env_remove("PKRAFT_ADMIN_TOKEN")
        .output()
        .expect("run pkraft")
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

fn assert_ok(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `pkraft verify` passes on `data_dir`, which holds `packets` packets.
fn assert_verifies(data_dir: &Path, packets: u64) {
    let report = assert_ok(
        &pkraft(&["verify", "--data-dir", &text(data_dir)]),
        &format!("verify {}", data_dir.display()),
    );
    assert!(
        report.contains(&format!("{packets} packets")) && report.ends_with("ok\n"),
        "{report}"
    );
}

#[tokio::test]
async fn backup_restore_and_verify() {
    let config = format!("[cluster]\nbootstrap = true\n[admin]\ntoken = \"{TOKEN}\"\n");
    let mut source = TestServer::start_with_config(&config);
    let keys: Vec<_> = (80..83).map(keypair).collect();
    for (i, key) in keys.iter().enumerate() {
        let addr = format!("192.0.2.80:{i}");
        source
            .publish(key, &iroh_packet(key, 1_000, &[addr.as_str()]))
            .await;
    }

    let work = tempfile::tempdir().expect("tempdir");
    let token_file = work.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token");
    let backup_file = work.path().join("node.pkrbak");
    let admin = source.admin.to_string();
    let refused = pkraft(&["backup", "--admin", &admin, &text(&backup_file)]);
    assert!(!refused.status.success(), "a backup needs the admin token");
    let stdout = assert_ok(
        &pkraft(&[
            "backup",
            "--admin",
            &admin,
            "--token-file",
            &text(&token_file),
            &text(&backup_file),
        ]),
        "backup",
    );
    assert!(stdout.contains("3 records"), "{stdout}");

    // The source, stopped, passes verification.
    assert_eq!(source.terminate().code(), Some(0));
    assert_verifies(source.data_dir(), 3);

    // A damaged backup is refused and leaves the data dir empty.
    let mut damaged = std::fs::read(&backup_file).expect("read backup");
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    let damaged_file = work.path().join("damaged.pkrbak");
    std::fs::write(&damaged_file, damaged).expect("write");
    let target = tempfile::tempdir().expect("tempdir");
    let refused = pkraft(&[
        "restore",
        "--data-dir",
        &text(target.path()),
        "--advertise",
        "127.0.0.1:7400",
        &text(&damaged_file),
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("checksum"));
    assert_eq!(std::fs::read_dir(target.path()).expect("dir").count(), 0);

    let stdout = assert_ok(
        &pkraft(&[
            "restore",
            "--data-dir",
            &text(target.path()),
            "--advertise",
            "127.0.0.1:7400",
            &text(&backup_file),
        ]),
        "restore",
    );
    assert!(stdout.contains("restored 3 records"), "{stdout}");
    let again = pkraft(&[
        "restore",
        "--data-dir",
        &text(target.path()),
        "--advertise",
        "127.0.0.1:7400",
        &text(&backup_file),
    ]);
    assert!(!again.status.success(), "restore never writes over data");

    // The restored node serves the records over HTTP and DNS, and takes new writes.
    let mut restored = TestServer::start_with_config_in("", target);
    for (i, key) in keys.iter().enumerate() {
        let response = restored.get(&restored.relay_url(key)).await;
        assert_eq!(response.status(), 200);
        let qname = key_name("_iroh", key).to_string();
        let answer = raw_query(restored.dns, Transport::Udp, &qname, RecordType::TXT, None).await;
        assert_eq!(
            txt_strings(&answer.answers),
            vec![format!("addr=192.0.2.80:{i}")]
        );
    }
    let newer = iroh_packet(&keys[0], 2_000, &["192.0.2.81:1"]);
    let response = restored
        .put(
            &restored.relay_url(&keys[0]),
            Bytes::from(newer.to_relay_payload().to_vec()),
        )
        .await;
    assert_eq!(response.status(), 204);
    assert_eq!(restored.terminate().code(), Some(0));
    assert_verifies(restored.data_dir(), 3);

    // A damaged snapshot file (what a new member would install) is a problem `verify` names.
    let snapshot_dir = restored.data_dir().join("snapshot");
    let snapshot = std::fs::read_dir(&snapshot_dir)
        .expect("snapshot dir")
        .map(|entry| entry.expect("entry").path())
        .find(|path| path.extension().is_some_and(|ext| ext == "snap"))
        .expect("a snapshot data file");
    let intact = std::fs::read(&snapshot).expect("read snapshot");
    let mut damaged = intact.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    std::fs::write(&snapshot, &damaged).expect("damage snapshot");
    let report = pkraft(&["verify", "--data-dir", &text(restored.data_dir())]);
    assert!(!report.status.success());
    let stdout = String::from_utf8_lossy(&report.stdout);
    assert!(
        stdout.contains(&format!("problem: snapshot {}", snapshot.display()))
            && stdout.contains("checksum"),
        "{stdout}"
    );
    std::fs::write(&snapshot, &intact).expect("repair snapshot");
    assert_verifies(restored.data_dir(), 3);

    // Nodes that join a restored cluster get the restored data (as a snapshot: the log starts
    // after it).
    let cluster = TestCluster::restored(&backup_file, 3).await;
    let joined = &cluster.member(3).server;
    for (i, key) in keys.iter().enumerate() {
        let qname = key_name("_iroh", key).to_string();
        let answer = raw_query(joined.dns, Transport::Udp, &qname, RecordType::TXT, None).await;
        assert_eq!(
            txt_strings(&answer.answers),
            vec![format!("addr=192.0.2.80:{i}")],
            "node 3, key {i}"
        );
    }
}

/// `verify` finds a stored packet that no longer verifies (a damaged or tampered state file).
#[tokio::test]
async fn verify_reports_a_packet_that_does_not_verify() {
    let mut server = TestServer::start_with_config("[cluster]\nbootstrap = true\n");
    let key = keypair(84);
    server
        .publish(&key, &iroh_packet(&key, 1_000, &["192.0.2.84:1"]))
        .await;
    assert_eq!(server.terminate().code(), Some(0));
    assert_ok(
        &pkraft(&["verify", "--data-dir", &text(server.data_dir())]),
        "verify before the damage",
    );
    // A directory that holds no node is an error, not an empty "ok".
    let empty = tempfile::tempdir().expect("tempdir");
    let output = pkraft(&["verify", "--data-dir", &text(empty.path())]);
    assert!(!output.status.success());
    assert_eq!(std::fs::read_dir(empty.path()).expect("dir").count(), 0);

    // Write another key's packet under this key, past the relay's verification.
    let other = keypair(85);
    let forged = iroh_packet(&other, 2_000, &["192.0.2.85:1"]).to_relay_payload();
    {
        let store = pkraft_state::Store::open(&server.data_dir().join("state.redb")).expect("open");
        let mut txn = store.begin_apply(true).expect("begin");
        txn.apply(&pkraft_types::Command::Publish {
            leader_time_micros: 2_000,
            packets: vec![pkraft_types::PublishItem {
                key: key.public_key().to_bytes(),
                payload: pkraft_types::Payload::new(forged).expect("length"),
            }],
        })
        .expect("apply");
        let applied = store.applied_state().expect("read").expect("applied state");
        txn.commit(&applied).expect("commit");
    }
    let output = pkraft(&["verify", "--data-dir", &text(server.data_dir())]);
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("does not verify"), "{stdout}");
}

/// Goal: one backup of a node at a time (docs/API.md, `POST /backup`): a second request while
/// one is being sent gets 429 and starts nothing; once the first ends, a backup can be taken
/// again.
/// Method: a node restored from a 20,000-packet backup (about 20 MB, well over what the socket
/// buffers and the node's chunk queue hold), so a client that reads nothing keeps the first
/// backup running.
#[tokio::test]
async fn a_second_backup_while_one_is_sent_gets_429() {
    let work = tempfile::tempdir().expect("tempdir");
    let seed_file = work.path().join("seed.pkrbak");
    let path = seed_file.clone();
    tokio::task::spawn_blocking(move || crate::snapshot_memory::write_backup(&path, 20_000))
        .await
        .expect("backup writer");
    let data_dir = tempfile::tempdir().expect("data dir");
    assert_ok(
        &pkraft(&[
            "restore",
            "--data-dir",
            &text(data_dir.path()),
            "--advertise",
            "127.0.0.1:7400",
            &text(&seed_file),
        ]),
        "restore",
    );
    let node =
        TestServer::start_with_config_in(&format!("[admin]\ntoken = \"{TOKEN}\"\n"), data_dir);
    let url = format!("http://{}/backup", node.admin);
    let client = crate::harness::http_client();
    let backup = || client.post(&url).bearer_auth(TOKEN).send();

    let first = backup().await.expect("first backup");
    assert_eq!(first.status(), 200);
    // Its body is not read: the node's backup waits for the client.
    let second = backup().await.expect("second backup");
    assert_eq!(second.status(), 429);
    let error = second.text().await.expect("body");
    assert!(error.contains("already running"), "{error}");

    // The first client goes away: its backup ends, and the next one runs to its end.
    drop(first);
    crate::cluster::eventually("a backup after the first ended", || async {
        let response = backup().await.ok()?;
        if response.status() != 200 {
            return None;
        }
        let body = response.bytes().await.ok()?;
        (body.len() > 10_000_000).then_some(())
    })
    .await;
}
