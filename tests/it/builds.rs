//! Goal: builds can be told apart, as an operator upgrading a cluster needs: `pkraft --version`
//! names the release and the commit, every member's `/cluster/status` report carries its build
//! (as the member itself says it, over the peer wire), and a data dir records the build that
//! created it and the last one started on it.
//! Method: the real binary (`--version`), a 3-node cluster on loopback, the `build` file of each
//! data dir after a start and a restart.

use serde_json::{Value, json};

use crate::cluster::{TestCluster, admin_status, eventually};
use crate::harness::pkraft_command;

/// This binary's version and commit, from `pkraft --version` (`pkraft 0.2.0 (0123456789ab)`).
fn this_build() -> (String, String) {
    let output = pkraft_command(None)
        .arg("--version")
        .output()
        .expect("pkraft --version runs");
    assert!(output.status.success(), "{output:?}");
    let line = String::from_utf8(output.stdout).expect("UTF-8");
    let line = line.trim();
    let (version, commit) = line
        .strip_prefix("pkraft ")
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|rest| rest.split_once(" ("))
        .unwrap_or_else(|| panic!("not `pkraft VERSION (COMMIT)`: {line:?}"));
    (version.to_string(), commit.to_string())
}

/// HEAD of the clone the tests run in, as the build script reads it (`None` outside a clone).
fn git_head() -> Option<String> {
    let output = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let head = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (output.status.success() && !head.is_empty()).then_some(head)
}

#[test]
fn the_version_names_the_release_and_the_commit() {
    let (version, commit) = this_build();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    let hex = commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit());
    assert!(hex || commit == "unknown", "commit {commit:?}");
    // Built in a clone without PKRAFT_BUILD_COMMIT (as `make test` builds): the clone's HEAD.
    if std::env::var_os("PKRAFT_BUILD_COMMIT").is_none()
        && let Some(head) = git_head()
    {
        assert_eq!(commit, head);
    }
}

#[tokio::test]
async fn each_member_reports_its_build_and_each_data_dir_records_it() {
    let (version, commit) = this_build();
    let build = json!({ "version": version, "commit": commit });
    let mut cluster = TestCluster::start(3, "").await;
    let status = eventually("every member's report", || async {
        admin_status(&cluster.member(1).server)
            .await
            .filter(|status| {
                status["members"]
                    .as_array()
                    .is_some_and(|members| members.iter().all(|m| !m["status"].is_null()))
            })
    })
    .await;
    assert_eq!(status["node"]["build"], build, "{status}");
    let members: &Vec<Value> = status["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{status}");
    for member in members {
        // Nodes 2 and 3 answered over the peer wire.
        assert_eq!(member["status"]["build"], build, "{member}");
    }
    let record = format!("created_by {version} {commit}\nlast_started_by {version} {commit}\n");
    for id in 1..=3 {
        let path = cluster.member(id).server.data_dir().join("build");
        let text = std::fs::read_to_string(&path).expect("the data dir's build record");
        assert_eq!(text, record, "node {id}");
    }
    // A restart of the same build leaves the record as it was.
    cluster.member_mut(2).server.terminate();
    cluster.restart(2);
    let path = cluster.member(2).server.data_dir().join("build");
    assert_eq!(std::fs::read_to_string(&path).expect("record"), record);
}
