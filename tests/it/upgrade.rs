//! Goal: a data dir an older build wrote (state schema 3, before the compiled DNS answers of
//! issue 37) is upgraded when this build starts on it: the answers of every stored packet are
//! compiled, DNS serves them (from the compiled form where it can, from the packet where it
//! cannot), and `pkraft verify` finds one compiled row per packet.
//! Method: `tests/fixtures/state-schema3/data-dir.tar.gz`, written by the real older binary
//! (`make.sh` beside it), unpacked into a temp dir; the real binary; DNS over UDP.

use std::path::Path;
use std::process::Command;

use hickory_proto::rr::{RData, RecordType};
use pkraft_testkit::pkarr::Keypair;

use crate::dns_client::{Transport, key_name, raw_query, txt_strings};
use crate::harness::{TestServer, http_client};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/state-schema3"
);

/// The fixture's key `n` (a secret-key file of `pkraft keygen`'s format: 64 hex characters).
fn fixture_key(n: u32) -> Keypair {
    let text = std::fs::read_to_string(Path::new(FIXTURE).join(format!("key{n}"))).expect("key");
    let hex = text.trim();
    let mut secret = [0u8; 32];
    for (i, byte) in secret.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    Keypair::from_secret_key(&secret)
}

#[tokio::test]
async fn a_schema_3_data_dir_gets_compiled_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unpacked = Command::new("tar")
        .arg("-xzf")
        .arg(Path::new(FIXTURE).join("data-dir.tar.gz"))
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("run tar");
    assert!(unpacked.success(), "tar failed");
    let data = dir.path().join("data");
    let mut server = TestServer::start_dev_at(data.clone());
    server
        .wait_for_log("compiled the DNS answers of every stored packet")
        .await;
    // The older build kept no record of its builds: the data dir's creator is unknown, and
    // this build is the last started on it.
    let record = std::fs::read_to_string(data.join("build")).expect("the build record");
    let this_build = format!("last_started_by {} ", env!("CARGO_PKG_VERSION"));
    assert!(
        record.starts_with(&format!("created_by unknown unknown\n{this_build}")),
        "{record}"
    );

    let (key1, key2, key3) = (fixture_key(1), fixture_key(2), fixture_key(3));
    let ask = |sub: &str, key: &Keypair, rtype| {
        let name = key_name(sub, key);
        async move { raw_query(server.dns, Transport::Udp, &name, rtype, Some(1232)).await }
    };
    let iroh1 = ask("_iroh", &key1, RecordType::TXT).await;
    assert_eq!(txt_strings(&iroh1.answers), ["addr=192.0.2.1:4433"]);
    let iroh3 = ask("_iroh", &key3, RecordType::TXT).await;
    assert_eq!(
        txt_strings(&iroh3.answers),
        ["relay=https://relay.example/"]
    );
    let aaaa = ask("sub", &key3, RecordType::AAAA).await;
    assert!(
        matches!(&aaaa.answers[..], [record] if matches!(&record.data, RData::AAAA(ip) if ip.0 == "2001:db8::3".parse::<std::net::Ipv6Addr>().expect("ip"))),
        "{aaaa:?}"
    );
    // Key 2's packet holds a CNAME, which is not compiled: answered from the packet.
    let alias = ask("alias", &key2, RecordType::CNAME).await;
    assert_eq!(alias.answers.len(), 1, "{alias:?}");
    let iroh2 = ask("_iroh", &key2, RecordType::TXT).await;
    assert_eq!(txt_strings(&iroh2.answers), ["addr=192.0.2.2:4433"]);

    let metrics = http_client()
        .get(format!("http://{}/metrics", server.admin))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    let compiled = metrics
        .lines()
        .find_map(|line| line.strip_prefix("pkraft_dns_udp_compiled_answers_total "))
        .and_then(|value| value.trim().parse::<u64>().ok());
    assert_eq!(
        compiled,
        Some(3),
        "keys 1 and 3 from the compiled form:\n{metrics}"
    );

    assert!(server.terminate().success());
    let verified = Command::new(env!("CARGO_BIN_EXE_pkraft"))
        .args(["verify", "--data-dir"])
        .arg(&data)
        .output()
        .expect("run pkraft verify");
    let report = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{report}");
    assert!(
        report.contains("3 packets, 3 expiry rows, 3 compiled answer rows")
            && report.ends_with("ok\n"),
        "{report}"
    );
}
