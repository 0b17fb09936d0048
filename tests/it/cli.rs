//! Goal: the documented command line works: `check-config` accepts the shipped configs and
//! rejects a bad one naming the field; `serve --config` runs from a file.
//! Method: run the real binary.

use std::process::Command;

use crate::harness::TestServer;

fn pkraft(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pkraft"))
        .args(args)
        .output()
        .expect("run pkraft")
}

fn config_path(name: &str) -> String {
    format!("{}/../../config/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_config_accepts_the_shipped_files() {
    for file in ["dev.toml", "example.toml"] {
        let output = pkraft(&["check-config", &config_path(file)]);
        assert!(
            output.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn check_config_rejects_a_bad_file_and_names_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[dns]\norigins = [\"ok.test\", \"bad..name\"]\n").expect("write");
    let output = pkraft(&["check-config", &path.display().to_string()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("dns.origins[1]"), "{stderr}");

    std::fs::write(&path, "[http]\nlisten = \"127.0.0.1:8080\"\nlistne = 1\n").expect("write");
    let output = pkraft(&["check-config", &path.display().to_string()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("listne"));
}

#[tokio::test]
async fn serve_runs_from_a_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node.toml");
    std::fs::write(
        &path,
        "[dns]\norigins = [\"example.test\"]\n[http]\ncache_max_age_min = \"60s\"\n\
         [cluster]\nbootstrap = true\n",
    )
    .expect("write");
    let server = TestServer::start_serve(&path);
    let key = pkraft_testkit::keypair(70);
    server
        .publish(
            &key,
            &pkraft_testkit::iroh_packet(&key, 1, &["192.0.2.1:1"]),
        )
        .await;
    let get = server.get(&server.relay_url(&key)).await;
    let cache = get
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok());
    assert_eq!(
        cache,
        Some("public, max-age=60"),
        "the file's [http] section applies"
    );
    assert!(server.log().contains("example.test"), "{}", server.log());
}
