//! Goal: the command-line client checks a cluster without code: `pkraft keygen` makes a key,
//! `pkraft publish` signs records given on the command line and PUTs them through one node, and
//! `pkraft resolve` reads them back through other nodes, over HTTP (every record, verified) and
//! DNS (UDP and TCP). Failures say what happened and exit non-zero.
//! Method: the real binary against a 3-node cluster and a single dev node on loopback.

use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use pkraft_testkit::pkarr::{Keypair, Timestamp};
use pkraft_testkit::{iroh_packet, keypair};

use crate::cluster::{TestCluster, eventually};
use crate::harness::{ORIGIN, TestServer};

/// Runs the binary without blocking the runtime: the cluster's peer proxies run on it.
async fn pkraft(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_pkraft"))
        .args(args)
        .env_remove("PKRAFT_RELAY")
        .output()
        .await
        .expect("run pkraft")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `pkraft publish -k KEY --relay RELAY RECORD`.
async fn publish_one(key_path: &str, relay: &str, record: &str) -> Output {
    pkraft(&["publish", "-k", key_path, "--relay", relay, record]).await
}

/// Runs `pkraft resolve` until it succeeds (the packet has reached that node's replica).
async fn resolved(args: &[&str]) -> String {
    eventually(&format!("pkraft resolve {args:?} succeeds"), || async {
        let mut all = vec!["resolve"];
        all.extend_from_slice(args);
        let output = pkraft(&all).await;
        output.status.success().then(|| stdout(&output))
    })
    .await
}

#[tokio::test]
async fn keygen_publish_through_one_node_resolve_through_the_others() {
    let cluster = TestCluster::start(3, "").await;
    let [node1, node2, node3] = [1, 2, 3].map(|id| &cluster.member(id).server);
    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = dir.path().join("key");
    let key_path = key_file.to_str().expect("utf-8 path");

    let keygen = pkraft(&["keygen", key_path]).await;
    assert!(keygen.status.success(), "keygen: {}", stderr(&keygen));
    let z32 = stdout(&keygen).trim().to_string();
    assert_eq!(z32.len(), 52, "prints the public key: {z32:?}");
    let mode = std::fs::metadata(&key_file)
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the secret key is private");
    let secret = std::fs::read(&key_file).expect("read key");
    let again = pkraft(&["keygen", key_path]).await;
    assert!(!again.status.success(), "keygen must not replace a key");
    assert!(
        stderr(&again).contains("refusing to overwrite"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::read(&key_file).expect("read key"),
        secret,
        "key unchanged"
    );

    let relay1 = node1.url("/pkarr");
    let publish = pkraft(&[
        "publish",
        "--secret-key",
        key_path,
        "--relay",
        &relay1,
        "--ttl",
        "60",
        "_iroh TXT addr=192.0.2.7:4433",
        "@ A 192.0.2.7",
        "note TXT \"two words\"",
    ])
    .await;
    assert!(publish.status.success(), "publish: {}", stderr(&publish));
    assert_eq!(stdout(&publish).trim(), z32, "publish prints the key");

    // HTTP through node 2: the whole packet, verified.
    let text = resolved(&[&z32, "--relay", &node2.url("/pkarr")]).await;
    for line in [
        format!("_iroh.{z32}. 60 IN TXT \"addr=192.0.2.7:4433\""),
        format!("{z32}. 60 IN A 192.0.2.7"),
        format!("note.{z32}. 60 IN TXT \"two words\""),
    ] {
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    }
    assert!(text.starts_with(&format!("; key {z32} signed ")), "{text}");

    // DNS through node 3: `_iroh` TXT by default over UDP, any name and type over TCP.
    let dns3 = node3.dns.to_string();
    let txt = resolved(&[&z32, "--dns", &dns3, "--origin", ORIGIN]).await;
    assert!(
        txt.contains(&format!(
            "_iroh.{z32}.{ORIGIN}. 60 IN TXT \"addr=192.0.2.7:4433\""
        )),
        "{txt}"
    );
    let apex = resolved(&[
        &z32,
        "--dns",
        &dns3,
        "--transport",
        "tcp",
        "--origin",
        ORIGIN,
        "--name",
        "@",
        "--type",
        "a",
    ])
    .await;
    assert!(
        apex.contains(&format!("{z32}.{ORIGIN}. 60 IN A 192.0.2.7")),
        "{apex}"
    );

    // A second publish replaces the packet.
    let republish = publish_one(key_path, &relay1, "_iroh TXT addr=192.0.2.8:4433").await;
    assert!(republish.status.success(), "{}", stderr(&republish));
    eventually("node 3 serves the new packet only", || async {
        let text = stdout(&pkraft(&["resolve", &z32, "--relay", &node3.url("/pkarr")]).await);
        (text.contains("addr=192.0.2.8:4433") && !text.contains("192.0.2.7")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn client_failures_are_explained_and_exit_non_zero() {
    let server = TestServer::start();
    let relay = server.url("/pkarr");
    let dns = server.dns.to_string();
    let unknown = keypair(901).public_key().to_z32();

    let missing = pkraft(&["resolve", &unknown, "--relay", &relay]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("no packet for"),
        "{}",
        stderr(&missing)
    );
    let nxdomain = pkraft(&["resolve", &unknown, "--dns", &dns]).await;
    assert_eq!(nxdomain.status.code(), Some(1));
    assert!(
        stderr(&nxdomain).contains("Non-Existent Domain"),
        "{}",
        stderr(&nxdomain)
    );
    let bad_key = pkraft(&["resolve", "not-a-key", "--relay", &relay]).await;
    assert!(!bad_key.status.success());
    assert!(
        stderr(&bad_key).contains("not-a-key"),
        "{}",
        stderr(&bad_key)
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = dir.path().join("key");
    let key_path = key_file.to_str().expect("utf-8 path");

    std::fs::write(&key_file, "not hex").expect("write");
    let garbage = publish_one(key_path, &relay, "@ A 192.0.2.1").await;
    assert!(!garbage.status.success());
    assert!(
        stderr(&garbage).contains(key_path),
        "names the file: {}",
        stderr(&garbage)
    );

    std::fs::remove_file(&key_file).expect("remove");
    assert!(pkraft(&["keygen", key_path]).await.status.success());
    let bad_record = publish_one(key_path, &relay, "@ A 300.0.0.1").await;
    assert_eq!(bad_record.status.code(), Some(2), "a usage error");
    assert!(
        stderr(&bad_record).contains("@ A 300.0.0.1"),
        "{}",
        stderr(&bad_record)
    );

    // The node holds a newer packet for the key (signed a minute ahead): 409, explained.
    let key = Keypair::from_secret_key_file(&key_file).expect("read key");
    let ahead = Timestamp::now().as_u64() + 60_000_000;
    server
        .publish(&key, &iroh_packet(&key, ahead, &["192.0.2.9:1"]))
        .await;
    let stale = publish_one(key_path, &relay, "@ A 192.0.2.1").await;
    assert!(!stale.status.success());
    assert!(stderr(&stale).contains("409"), "{}", stderr(&stale));
    assert!(
        stderr(&stale).contains("newer timestamp"),
        "{}",
        stderr(&stale)
    );

    // https:// works (tests/it/https.rs); other schemes are refused, naming the two.
    let ftp = pkraft(&[
        "publish",
        "-k",
        key_path,
        "--relay",
        "ftp://127.0.0.1:1/pkarr",
        "@ A 192.0.2.1",
    ])
    .await;
    assert!(!ftp.status.success(), "an ftp relay URL is refused");
    assert!(
        stderr(&ftp).contains("use http:// or https://"),
        "{}",
        stderr(&ftp)
    );
}
