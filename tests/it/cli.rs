//! Goal: the documented command line works: `check-config` accepts the shipped configs and
//! rejects a bad one naming the field; `serve --config` runs from a file; `pkraft cluster` starts
//! and inspects a cluster through the admin API; every flag and variable the docs write exists.
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
    for file in [
        "dev.toml",
        "example.toml",
        "node1.toml",
        "node2.toml",
        "node3.toml",
    ] {
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
    assert_eq!(
        output.status.code(),
        Some(1),
        "exit status 1 for an invalid file"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("dns.origins[1]"), "{stderr}");

    std::fs::write(
        &path,
        "[https]\nlisten = \"127.0.0.1:0\"\ncert = \"/nonexistent/cert.pem\"\nkey = \"k.pem\"\n",
    )
    .expect("write");
    let output = pkraft(&["check-config", &path.display().to_string()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("https.cert"), "{stderr}");

    std::fs::write(&path, "[http]\nlisten = \"127.0.0.1:8080\"\nlistne = 1\n").expect("write");
    let output = pkraft(&["check-config", &path.display().to_string()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("listne"));
}

#[test]
fn check_config_names_bad_limits_and_never_prints_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("limits.toml");
    let path_arg = path.display().to_string();
    for (toml, field) in [
        (
            "[rate_limit]\npublish = { per_client = { per_second = 5, burst = 0 }, global = { per_second = 0, burst = 0 } }\n",
            "rate_limit.publish.per_client",
        ),
        (
            "[rate_limit]\ntrusted_proxies = [\"proxy.example\"]\n",
            "proxy.example",
        ),
        (
            "[dns.rrl]\nipv4_prefix_len = 33\n",
            "dns.rrl.ipv4_prefix_len",
        ),
        ("[http]\nmax_header_bytes = 100\n", "http.max_header_bytes"),
        (
            "[http]\nheader_read_timeout = \"0s\"\n",
            "http.header_read_timeout",
        ),
        (
            "[http]\nkey_cache_entries = 1000000000\n",
            "http.key_cache_entries",
        ),
    ] {
        std::fs::write(&path, toml).expect("write");
        let output = pkraft(&["check-config", &path_arg]);
        assert!(!output.status.success(), "{toml} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(field), "{toml}: {stderr}");
    }

    let secret = "cluster-secret-that-must-not-leak";
    let token = "admin-token-that-must-not-leak";
    std::fs::write(
        &path,
        format!("[cluster]\nsecret = \"{secret}\"\n[admin]\ntoken = \"{token}\"\n"),
    )
    .expect("write");
    let output = pkraft(&["check-config", &path_arg]);
    assert!(output.status.success());
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("<redacted>"), "{printed}");
    assert!(
        !printed.contains(secret) && !printed.contains(token),
        "a secret was printed:\n{printed}"
    );
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

/// A node without `bootstrap` waits for `pkraft cluster init`: until then it has no leader and
/// PUTs are 503 with Retry-After. `init` needs the admin token, works once, and `status` then shows
/// this node leading.
#[tokio::test]
async fn cluster_init_and_status_from_the_command_line() {
    const TOKEN: &str = "cli-test-admin-token-0123";
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node.toml");
    std::fs::write(
        &path,
        format!("[raft]\npublish_timeout = \"500ms\"\n[admin]\ntoken = \"{TOKEN}\"\n"),
    )
    .expect("write");
    let server = TestServer::start_serve(&path);
    let admin = server.admin.to_string();
    let key = pkraft_testkit::keypair(71);
    let packet = pkraft_testkit::iroh_packet(&key, 1, &["192.0.2.1:1"]);

    let before = server
        .put(&server.relay_url(&key), packet.to_relay_payload())
        .await;
    assert_eq!(before.status(), 503, "no cluster yet");
    assert!(before.headers().get("retry-after").is_some());

    let cluster = |args: &[&str], token: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pkraft"));
        command.args(["cluster", "--admin", &admin]).args(args);
        command.env_remove("PKRAFT_ADMIN_TOKEN");
        if let Some(token) = token {
            command.env("PKRAFT_ADMIN_TOKEN", token);
        }
        command.output().expect("run pkraft cluster")
    };
    let refused = cluster(&["init"], None);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));

    let init = cluster(&["init"], Some(TOKEN));
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    server.publish(&key, &packet).await;
    let again = cluster(&["init"], Some(TOKEN));
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already part of a cluster"));

    let status = cluster(&["status"], None);
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(table.contains("leader: 1"), "{table}");
    // Node 1's row: ID ADDR ROLE VOTER APPLIED LAST-LOG LAG PACKETS DISK CLOCK BUILD. Its disk
    // has room (above raft.min_free_disk_mib): the DISK column says so; BUILD names this
    // release (and its commit).
    assert!(table.contains("DISK") && table.contains("BUILD"), "{table}");
    let row: Vec<&str> = table
        .lines()
        .find(|line| line.starts_with("1 "))
        .unwrap_or_else(|| panic!("no row for node 1: {table}"))
        .split_whitespace()
        .collect();
    assert_eq!(row.get(8), Some(&"ok"), "DISK: {table}");
    assert_eq!(
        row.get(10),
        Some(&env!("CARGO_PKG_VERSION")),
        "BUILD: {table}"
    );
}

/// `--log-format json` (here through its variable, `PKRAFT_LOG_FORMAT`): every line is one JSON
/// object (for log shippers), and the events an operator looks for are there: the config
/// loaded, the leader elected, the listening addresses. The data dir and listen addresses come
/// from their variables too (`PKRAFT_DATA_DIR`, `PKRAFT_*_LISTEN`), and a flag wins over its
/// variable (docs/OPERATIONS.md, "Running").
#[test]
fn json_logs_are_one_object_per_line_with_the_lifecycle_events() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = tempfile::tempdir().expect("tempdir");
    /// Stops the server however the test ends.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let ports = pkraft_testkit::ports::free_loopback_ports(4, &std::collections::HashSet::new())
        .expect("free ports");
    let (from_variable, from_flag, peer, admin) = (ports[0], ports[1], ports[2], ports[3]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_pkraft"))
        .args(["dev", "--http-listen", &format!("127.0.0.1:{from_flag}")])
        .env("PKRAFT_LOG_FORMAT", "json")
        .env("PKRAFT_DATA_DIR", dir.path())
        .env("PKRAFT_HTTP_LISTEN", format!("127.0.0.1:{from_variable}"))
        .env("PKRAFT_DNS_LISTEN", "127.0.0.1:0")
        .env("PKRAFT_PEER_LISTEN", format!("127.0.0.1:{peer}"))
        .env("PKRAFT_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn pkraft");
    let stderr = child.stderr.take().expect("piped");
    let child = KillOnDrop(child);
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let expected = ["built-in development config loaded", "leader changed"];
    let mut messages: Vec<String> = Vec::new();
    let mut listening = None;
    while listening.is_none() || !expected.iter().all(|e| messages.iter().any(|m| m == e)) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines_rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no listening line; saw {messages:?}"));
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            event["level"].is_string() && event["timestamp"].is_string(),
            "{line}"
        );
        let message = event["fields"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if message == "pkraft listening" {
            listening = Some(event.clone());
        }
        messages.push(message);
    }
    drop(child);
    let listening = listening.expect("listening");
    let address = |field: &str| -> std::net::SocketAddr {
        listening["fields"][field]
            .as_str()
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("{field}: {listening}"))
    };
    assert_eq!(
        address("http").port(),
        from_flag,
        "the flag wins over its variable"
    );
    // The dev config's DNS port is 5300: the variable's port 0 was taken instead.
    assert_ne!(address("dns").port(), 5300, "PKRAFT_DNS_LISTEN is read");
    assert_eq!(address("peer").port(), peer, "PKRAFT_PEER_LISTEN is read");
    assert_eq!(
        address("admin").port(),
        admin,
        "PKRAFT_ADMIN_LISTEN is read"
    );
    assert_eq!(
        listening["fields"]["data_dir"].as_str(),
        Some(dir.path().display().to_string().as_str()),
        "PKRAFT_DATA_DIR is read"
    );
}

/// `PKRAFT_CONFIG` names the config file of `pkraft serve`; `check-config` never reads it (it
/// checks the file it is given), and without a file it says so (docs/OPERATIONS.md, "Running").
#[test]
fn serve_reads_pkraft_config_and_check_config_does_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[dns]\norigins = [\"from-the-variable.test\"]\n").expect("write");
    let mut command = Command::new(env!("CARGO_BIN_EXE_pkraft"));
    command.arg("serve").env("PKRAFT_CONFIG", &config);
    let mut node = pkraft_testkit::process::NodeProcess::start(
        command,
        &dir.path().join("data"),
        pkraft_testkit::process::LogTo::Memory,
        std::time::Duration::from_secs(30),
    )
    .expect("pkraft serve with PKRAFT_CONFIG starts");
    let log = node.log().text();
    node.kill().expect("stop the node");
    assert!(log.contains("from-the-variable.test"), "{log}");
    let checked = Command::new(env!("CARGO_BIN_EXE_pkraft"))
        .arg("check-config")
        .env("PKRAFT_CONFIG", &config)
        .output()
        .expect("run");
    assert!(!checked.status.success(), "check-config needs its file");
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert!(
        stderr.contains("<CONFIG>"),
        "names the missing file: {stderr}"
    );
}

/// The documents the operators read: every `pkraft` command line in them is checked.
fn operator_docs() -> Vec<(String, String)> {
    let root = format!("{}/../..", env!("CARGO_MANIFEST_DIR"));
    let mut docs = vec![format!("{root}/README.md")];
    for entry in std::fs::read_dir(format!("{root}/docs")).expect("docs/") {
        let path = entry.expect("docs/ entry").path();
        if path.extension().is_some_and(|ext| ext == "md") {
            docs.push(path.display().to_string());
        }
    }
    docs.into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("a doc");
            (path, text)
        })
        .collect()
}

/// The commands of `pkraft`, and of `pkraft cluster`.
const COMMANDS: [&str; 12] = [
    "serve",
    "dev",
    "check-config",
    "backup",
    "import",
    "restore",
    "verify",
    "downgrade",
    "keygen",
    "publish",
    "resolve",
    "cluster",
];
const CLUSTER_COMMANDS: [&str; 5] = ["init", "status", "add-learner", "promote", "remove"];

/// The `--flags` of each `pkraft <command> [<subcommand>]` written in `line`, with the command
/// path (`["cluster", "status"]`). Flags end at the end of the code span, a comment or a shell
/// operator.
fn documented_flags(line: &str) -> Vec<(Vec<String>, String)> {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let mut found = Vec::new();
    for (at, token) in tokens.iter().enumerate() {
        if token.trim_start_matches('`') != "pkraft" {
            continue;
        }
        let Some(command) = tokens
            .get(at + 1)
            .map(|t| t.trim_end_matches('`'))
            .filter(|t| COMMANDS.contains(t))
        else {
            continue;
        };
        let mut path = vec![command.to_string()];
        for token in &tokens[at + 2..] {
            if ["|", "&&", ";", "#", "||", ">"].contains(token) || token.starts_with('`') {
                break;
            }
            let bare = token.trim_matches(|c| matches!(c, '[' | ']' | '(' | ')' | ',' | '`'));
            if command == "cluster" && path.len() == 1 && CLUSTER_COMMANDS.contains(&bare) {
                path.push(bare.to_string());
            }
            if let Some(flag) = bare.strip_prefix("--") {
                let flag = flag.split('=').next().unwrap_or_default();
                if !flag.is_empty() {
                    found.push((path.clone(), format!("--{flag}")));
                }
            }
            if token.ends_with('`') {
                break;
            }
        }
    }
    found
}

/// Goal: every flag a doc writes on a `pkraft` command line is one that command has, and every
/// `PKRAFT_*` variable a doc names is read by the binary or by a script of the repository
/// (issue 38: a doc that states a flag is tied to the code). Method: the flags of every
/// `pkraft <command> ...` line of README.md and docs/*.md against the real binary's `--help`
/// for that command (and its `cluster` subcommand); each variable against the binary's help
/// texts and the sources, scripts and deploy files.
#[test]
fn the_docs_name_only_flags_and_variables_that_exist() {
    let docs = operator_docs();
    let mut helps = std::collections::HashMap::new();
    let mut help = |path: &[String]| -> String {
        helps
            .entry(path.to_vec())
            .or_insert_with(|| {
                let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
                args.push("--help");
                let output = pkraft(&args);
                assert!(output.status.success(), "pkraft {args:?}");
                String::from_utf8_lossy(&output.stdout).into_owned()
            })
            .clone()
    };
    // The scan knows every command the binary has (a new one must be added to it).
    for (path, known) in [
        (Vec::new(), &COMMANDS[..]),
        (vec!["cluster".to_string()], &CLUSTER_COMMANDS[..]),
    ] {
        let text = help(&path);
        let mut listed = subcommands(&text);
        listed.sort_unstable();
        let mut known = known.to_vec();
        known.sort_unstable();
        assert_eq!(listed, known, "the commands of `pkraft {}`", path.join(" "));
    }
    let mut checked = 0;
    let mut missing = Vec::new();
    for (doc, text) in &docs {
        for (number, line) in text.lines().enumerate() {
            for (path, flag) in documented_flags(line) {
                checked += 1;
                if !has_flag(&help(&path), &flag) {
                    missing.push(format!(
                        "{doc}:{}: pkraft {} {flag}",
                        number + 1,
                        path.join(" ")
                    ));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "documented flags the binary does not have:\n{}",
        missing.join("\n")
    );
    assert!(
        checked > 40,
        "only {checked} documented flags found: the scan is broken"
    );

    // The variables: each read by the binary or by a script, which name it whole: a string
    // literal in Rust (clap's `env = "..."`, `std::env::var("...")`), `$NAME`/`${NAME}` in a
    // script. This file, which names them all, does not count.
    let root = format!("{}/../..", env!("CARGO_MANIFEST_DIR"));
    let this_file = std::path::Path::new(&root).join("tests/it/cli.rs");
    let (mut rust, mut scripts) = (String::new(), String::new());
    let mut pending = vec![
        std::path::PathBuf::from(format!("{root}/crates")),
        std::path::PathBuf::from(format!("{root}/tests")),
        std::path::PathBuf::from(format!("{root}/deploy")),
        std::path::PathBuf::from(format!("{root}/.ci")),
        std::path::PathBuf::from(format!("{root}/Makefile")),
    ];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("a directory") {
                pending.push(entry.expect("an entry").path());
            }
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        match path.extension().and_then(|ext| ext.to_str()) {
            Some("rs") if path != this_file => rust.push_str(&text),
            Some("sh" | "py") | None => scripts.push_str(&text),
            _ => {}
        }
    }
    let mut variables = std::collections::BTreeSet::new();
    for (_, text) in &docs {
        let mut rest = text.as_str();
        while let Some(at) = rest.find("PKRAFT_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            // `PKRAFT_*_LISTEN` names a family, spelled out elsewhere.
            let pattern = rest[at + name.len()..].starts_with('*');
            if !pattern {
                variables.insert(name.clone());
            }
            rest = &rest[at + name.len()..];
        }
    }
    assert!(
        variables.contains("PKRAFT_CONFIG") && variables.len() > 10,
        "{variables:?}"
    );
    let in_script = |name: &str| {
        [
            format!("${{{name}}}"),
            format!("${{{name}:"),
            format!("${{{name}-"),
        ]
        .iter()
        .any(|form| scripts.contains(form.as_str()))
            || scripts
                .match_indices(&format!("${name}"))
                .any(|(at, found)| {
                    scripts[at + found.len()..]
                        .chars()
                        .next()
                        .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
                })
    };
    let unknown: Vec<_> = variables
        .iter()
        .filter(|name| !rust.contains(&format!("\"{name}\"")) && !in_script(name))
        .collect();
    assert!(
        unknown.is_empty(),
        "documented variables nothing reads: {unknown:?}"
    );
}

/// The subcommands a `--help` text lists (clap's "Commands:" section), `help` aside.
fn subcommands(help: &str) -> Vec<&str> {
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|command| *command != "help")
        .collect()
}

/// Whether a `--help` text has `flag` itself (not only a longer flag it begins).
fn has_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(at, found)| {
        help[at + found.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    })
}

/// The clients read the variables docs/OPERATIONS.md ("Running") gives them, and answer as it
/// says: `PKRAFT_ADMIN` for `pkraft cluster` (whose `status` exits 0 without a leader),
/// `--token-file` for the admin token, `PKRAFT_RELAY` for `publish` and `resolve`; `verify
/// --json` prints its report as JSON; `restore` refuses to run without `--advertise`.
#[test]
fn the_clients_read_their_variables_and_flags() {
    const TOKEN: &str = "client-variables-token-0123";
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("node.toml");
    std::fs::write(&config, format!("[admin]\ntoken = \"{TOKEN}\"\n")).expect("write");
    let mut server = TestServer::start_serve(&config);
    let (admin, relay) = (
        server.admin.to_string(),
        format!("http://{}/pkarr", server.http),
    );
    let client = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pkraft"));
        command
            .args(args)
            .env_remove("PKRAFT_ADMIN_TOKEN")
            .env("PKRAFT_ADMIN", &admin)
            .env("PKRAFT_RELAY", &relay);
        let output = command.output().expect("run pkraft");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = client(&["cluster", "status"]);
    assert!(ok, "status exits 0 without a leader: {stderr}");
    assert!(stdout.contains("leader: none"), "{stdout}");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write");
    let token_file = token_file.display().to_string();
    let (ok, _, stderr) = client(&["cluster", "--token-file", &token_file, "init"]);
    assert!(ok, "init with --token-file: {stderr}");

    let key_file = dir.path().join("me.key").display().to_string();
    let (ok, key, stderr) = client(&["keygen", &key_file]);
    assert!(ok, "{stderr}");
    let key = key.trim().to_string();
    let (ok, _, stderr) = client(&["publish", "-k", &key_file, "_iroh TXT addr=192.0.2.9:9"]);
    assert!(ok, "publish through PKRAFT_RELAY: {stderr}");
    let (ok, stdout, stderr) = client(&["resolve", &key]);
    assert!(ok, "resolve through PKRAFT_RELAY: {stderr}");
    assert!(stdout.contains("addr=192.0.2.9:9"), "{stdout}");

    server.terminate();
    let (ok, stdout, stderr) = client(&[
        "verify",
        "--data-dir",
        &server.data_dir().display().to_string(),
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON report");
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    assert_eq!(report["packets"], 1, "{report}");

    let (ok, _, stderr) = client(&[
        "restore",
        "--data-dir",
        &dir.path().join("restored").display().to_string(),
        "--node-id",
        "1",
        &dir.path().join("no-such-backup").display().to_string(),
    ]);
    assert!(!ok && stderr.contains("--advertise"), "{stderr}");
}

/// `serve --join` joins through the address given, instead of `cluster.join`, and turns
/// `bootstrap` off; `pkraft cluster add-learner`, `promote` and `remove` change the membership
/// as docs/OPERATIONS.md ("Adding, promoting, removing") says.
/// Method: node 1 bootstraps; node 2's config says `bootstrap = true` too, but it is started
/// with `--join` node 1 (with bootstrap it would be a cluster of its own); node 3 has neither
/// and is added, promoted and removed with the commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_join_and_the_membership_commands() {
    use pkraft_testkit::node::{Membership, NodeConfig};

    const SECRET: &str = "join-test-cluster-secret-0123";
    const TOKEN: &str = "join-test-admin-token-0123";
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |id: u64, membership: Membership| {
        let mut config = NodeConfig::new(id, membership, SECRET);
        config.admin_token = Some(TOKEN.to_string());
        let path = dir.path().join(format!("node{id}.toml"));
        std::fs::write(&path, config.to_toml()).expect("write");
        path
    };
    let first = TestServer::start_serve(&config(1, Membership::Bootstrap));
    let peer = first.peer.to_string();
    let second =
        TestServer::start_serve_with_args(&config(2, Membership::Bootstrap), &["--join", &peer]);
    let third = TestServer::start_serve(&config(3, Membership::Existing));
    let members = |status: &serde_json::Value| -> Vec<(u64, bool)> {
        status["members"]
            .as_array()
            .map(|members| {
                members
                    .iter()
                    .filter_map(|m| Some((m["id"].as_u64()?, m["voter"].as_bool()?)))
                    .collect()
            })
            .unwrap_or_default()
    };
    crate::cluster::eventually("node 2 joined through --join as a voter", || async {
        let status = crate::cluster::admin_status(&first).await?;
        (members(&status) == [(1, true), (2, true)]).then_some(())
    })
    .await;
    let second_status = crate::cluster::admin_status(&second).await.expect("status");
    assert_eq!(
        second_status["node"]["leader"], 1,
        "node 2 did not bootstrap: {second_status}"
    );

    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("write");
    let admin = first.admin.to_string();
    let token_file = token_file.display().to_string();
    let cluster = |args: Vec<String>| {
        let admin = admin.clone();
        let token_file = token_file.clone();
        async move {
            let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pkraft"))
                .args(["cluster", "--admin", &admin, "--token-file", &token_file])
                .args(&args)
                .env_remove("PKRAFT_ADMIN_TOKEN")
                .output()
                .await
                .expect("run pkraft cluster");
            assert!(
                output.status.success(),
                "pkraft cluster {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    };
    let third_peer = third.peer.to_string();
    cluster(
        ["add-learner", "--node-id", "3", "--addr", &third_peer]
            .map(String::from)
            .to_vec(),
    )
    .await;
    // Node 1's view (it may lag the leader's by a heartbeat, should leadership move).
    let membership_is = |expected: Vec<(u64, bool)>| {
        let first = &first;
        async move {
            crate::cluster::eventually(&format!("members {expected:?}"), || async {
                let status = crate::cluster::admin_status(first).await?;
                (members(&status) == expected).then_some(())
            })
            .await;
        }
    };
    membership_is(vec![(1, true), (2, true), (3, false)]).await;
    cluster(["promote", "--node-id", "3"].map(String::from).to_vec()).await;
    membership_is(vec![(1, true), (2, true), (3, true)]).await;
    cluster(["remove", "--node-id", "3"].map(String::from).to_vec()).await;
    membership_is(vec![(1, true), (2, true)]).await;

    // A member that does not answer: `status` null and `error` set (docs/API.md).
    let second_status = crate::cluster::admin_status(&second).await.expect("status");
    assert_eq!(second_status["node"]["role"], "follower", "{second_status}");
    let mut second = second;
    second.kill();
    crate::cluster::eventually("node 2 shown as not answering", || async {
        let status = crate::cluster::admin_status(&first).await?;
        let member = status["members"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == 2)?
            .clone();
        (member["status"].is_null() && member["error"].is_string()).then_some(())
    })
    .await;
}

/// The overrides are checked as the file is (docs/OPERATIONS.md, "Running"): a `--peer-listen`
/// off loopback without `[cluster.tls]` or `cluster.plaintext_peers` refuses to start, naming
/// the field; `check-config` reads the secret files the config names.
#[test]
fn overrides_and_secret_files_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[cluster]\nbootstrap = true\n").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_pkraft"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--peer-listen", "0.0.0.0:0", "--http-listen", "127.0.0.1:0"])
        .args([
            "--dns-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env_remove("PKRAFT_CLUSTER_SECRET")
        .output()
        .expect("run pkraft serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("plaintext_peers"),
        "{stderr}"
    );

    let missing = dir.path().join("no-such-secret");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nbootstrap = true\nsecret_file = \"{}\"\n",
            missing.display()
        ),
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_pkraft"))
        .arg("check-config")
        .arg(&config)
        .env_remove("PKRAFT_CLUSTER_SECRET")
        .output()
        .expect("run pkraft check-config");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("cluster.secret_file"),
        "{stderr}"
    );
}
