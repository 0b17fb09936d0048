//! Starts the `pkraft` binary on port 0 and reads the addresses it bound from its log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Once;
use std::time::Duration;

use bytes::Bytes;
use pkraft_testkit::clock::FakedClock;
use pkraft_testkit::pkarr::{Keypair, SignedPacket};
use pkraft_testkit::process::{LogTo, NodeLog, NodeProcess};
use pkraft_testkit::waits::{POLL, START_TIMEOUT};

/// How long a signalled server may take to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a log line may take to reach the captured log.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

/// The dev origin (config/dev.toml).
pub const ORIGIN: &str = "pkarr.test";

/// A running `pkraft dev` process with its own data dir.
pub struct TestServer {
    process: Option<NodeProcess>,
    /// Holds the data dir (`data_path`): it is this directory, or one inside it.
    _holder: tempfile::TempDir,
    data_path: PathBuf,
    /// Holds the config file of [`TestServer::start_with_config`] for restarts.
    _config_dir: Option<tempfile::TempDir>,
    /// The subcommand and its arguments, before the listen and data dir overrides.
    command: Vec<String>,
    /// How the process is started (its cgroup, its descriptor limit).
    launch: Launch,
    pub http: SocketAddr,
    pub dns: SocketAddr,
    pub peer: SocketAddr,
    pub admin: SocketAddr,
    /// The current (or last) process's log.
    log: NodeLog,
}

impl TestServer {
    /// `pkraft dev` with a new data dir.
    pub fn start() -> TestServer {
        TestServer::start_with(vec!["dev".into()])
    }

    /// `pkraft serve --config FILE` instead of `pkraft dev`.
    pub fn start_serve(config: &Path) -> TestServer {
        let command = vec!["serve".into(), "--config".into(), path_arg(config)];
        TestServer::start_with(command)
    }

    /// `pkraft serve --config FILE` followed by `args` (`--join ADDR`, say).
    pub fn start_serve_with_args(config: &Path, args: &[&str]) -> TestServer {
        let mut command = vec!["serve".into(), "--config".into(), path_arg(config)];
        command.extend(args.iter().map(|arg| arg.to_string()));
        TestServer::start_with(command)
    }

    /// `pkraft serve` with `toml` as its config file (listen addresses and the data dir are
    /// still set by the harness).
    pub fn start_with_config(toml: &str) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("node.toml");
        std::fs::write(&config, toml).expect("write config");
        let mut server = TestServer::start_serve(&config);
        server._config_dir = Some(dir);
        server
    }

    /// `pkraft serve` with `toml` as its config, on an existing `data_dir` (e.g. one a
    /// `pkraft restore` filled).
    pub fn start_with_config_in(toml: &str, data_dir: tempfile::TempDir) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("node.toml");
        std::fs::write(&config, toml).expect("write config");
        let command = vec!["serve".into(), "--config".into(), path_arg(&config)];
        let mut server = TestServer::start_in(command, data_dir);
        server._config_dir = Some(dir);
        server
    }

    /// [`TestServer::start_with_config`], started as `launch` says (with a faked clock, say).
    pub fn start_with_config_launched(toml: &str, launch: Launch) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("node.toml");
        std::fs::write(&config, toml).expect("write config");
        let command = vec!["serve".into(), "--config".into(), path_arg(&config)];
        let data_dir = tempfile::tempdir().expect("temp data dir");
        let path = data_dir.path().to_path_buf();
        let mut server = TestServer::spawn_at(command, data_dir, path, launch);
        server._config_dir = Some(dir);
        server
    }

    /// [`TestServer::start_with_config_in`], the process placed in the cgroup at `cgroup`
    /// (a directory of `/sys/fs/cgroup/<controller>`) before it runs anything of its own.
    pub fn start_with_config_in_cgroup(
        toml: &str,
        data_dir: tempfile::TempDir,
        cgroup: &Path,
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("node.toml");
        std::fs::write(&config, toml).expect("write config");
        let command = vec!["serve".into(), "--config".into(), path_arg(&config)];
        let path = data_dir.path().to_path_buf();
        let launch = Launch {
            cgroup: Some(cgroup.to_path_buf()),
            ..Launch::default()
        };
        let mut server = TestServer::spawn_at(command, data_dir, path, launch);
        server._config_dir = Some(dir);
        server
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(NodeProcess::pid)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_path
    }

    /// `pkraft dev` on the data dir `data_path` (e.g. the mount of a lossy disk), which the
    /// caller keeps and removes.
    pub fn start_dev_at(data_path: PathBuf) -> TestServer {
        let unused = tempfile::tempdir().expect("tempdir");
        TestServer::spawn_at(
            vec!["dev".to_string()],
            unused,
            data_path,
            Launch::default(),
        )
    }

    /// `pkraft serve --config FILE` on the data dir `data_path`, which the caller keeps and
    /// removes, started as `launch` says.
    pub fn start_serve_at(config: &Path, data_path: PathBuf, launch: Launch) -> TestServer {
        let command = vec!["serve".into(), "--config".into(), path_arg(config)];
        let unused = tempfile::tempdir().expect("tempdir");
        TestServer::spawn_at(command, unused, data_path, launch)
    }

    fn start_with(command: Vec<String>) -> TestServer {
        TestServer::start_in(command, tempfile::tempdir().expect("temp data dir"))
    }

    fn start_in(command: Vec<String>, data_dir: tempfile::TempDir) -> TestServer {
        let path = data_dir.path().to_path_buf();
        TestServer::spawn_at(command, data_dir, path, Launch::default())
    }

    fn spawn_at(
        command: Vec<String>,
        holder: tempfile::TempDir,
        data_path: PathBuf,
        launch: Launch,
    ) -> TestServer {
        let process = spawn(&data_path, &command, &launch);
        let bound = process.listening();
        TestServer {
            log: process.log(),
            process: Some(process),
            _holder: holder,
            data_path,
            _config_dir: None,
            command,
            launch,
            http: bound.http,
            dns: bound.dns,
            peer: bound.peer,
            admin: bound.admin,
        }
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().expect("SIGKILL");
        }
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.stop_with("-TERM")
    }

    /// SIGINT (Ctrl-C), then wait (bounded) for the exit status.
    pub fn interrupt(&mut self) -> ExitStatus {
        self.stop_with("-INT")
    }

    fn stop_with(&mut self, signal: &str) -> ExitStatus {
        let process = self.process.as_ref().expect("server is running");
        process.signal(signal).expect("signal the server");
        self.wait_exit_after(signal)
    }

    /// Whether the process is still running (it has not exited on its own).
    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|process| matches!(process.try_wait(), Ok(None)))
    }

    /// Waits (bounded) for the process to exit on its own.
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.wait_exit_after("its own end")
    }

    fn wait_exit_after(&mut self, what: &str) -> ExitStatus {
        let mut process = self.process.take().expect("server is running");
        process.wait_timeout(STOP_TIMEOUT).unwrap_or_else(|| {
            let _ = process.kill();
            panic!(
                "server did not exit within {STOP_TIMEOUT:?} of {what}\n{}",
                self.log()
            );
        })
    }

    /// Waits (bounded) until the captured log contains `needle`. The log is copied from the
    /// process's stderr by a thread, so a line can arrive a moment after the event it reports.
    /// Async: the test's other futures go on meanwhile.
    pub async fn wait_for_log(&self, needle: &str) {
        self.wait_for_log_within(needle, LOG_TIMEOUT).await;
    }

    /// [`TestServer::wait_for_log`] for an event that takes up to `timeout`.
    pub async fn wait_for_log_within(&self, needle: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.log().contains(needle) {
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "no {needle:?} in the log within {timeout:?}:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Starts the binary again on the same data dir (new ports, but the DNS port its launch
    /// fixes).
    pub fn restart(&mut self) {
        assert!(
            self.process.is_none(),
            "stop the server before restarting it"
        );
        let process = spawn(&self.data_path, &self.command, &self.launch);
        let bound = process.listening();
        self.http = bound.http;
        self.dns = bound.dns;
        self.peer = bound.peer;
        self.admin = bound.admin;
        self.log = process.log();
        self.process = Some(process);
    }

    /// Starts the binary again on the same data dir, expecting it to refuse to start: returns
    /// its exit status and everything it logged. Panics if it starts.
    pub fn restart_refused(&mut self) -> String {
        assert!(
            self.process.is_none(),
            "stop the server before restarting it"
        );
        let mut pkraft = self.launch.command();
        pkraft.args(&self.command).env("RUST_LOG", "info");
        match NodeProcess::start(pkraft, &self.data_path, LogTo::Memory, START_TIMEOUT) {
            Ok(mut process) => {
                let log = process.log().text();
                let _ = process.kill();
                panic!("the node started, though it should have refused:\n{log}");
            }
            Err(refusal) => refusal,
        }
    }

    /// Everything the process logged so far, for failure messages.
    pub fn log(&self) -> String {
        self.log.text()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn relay_url(&self, key: &Keypair) -> String {
        self.url(&format!("/pkarr/{}", key.public_key().to_z32()))
    }

    /// PUTs a signed packet to `/pkarr/{z32}` and expects 204.
    pub async fn publish(&self, key: &Keypair, packet: &SignedPacket) {
        let response = self
            .put(&self.relay_url(key), packet.to_relay_payload())
            .await;
        assert_eq!(response.status(), 204, "publish failed\n{}", self.log());
    }

    pub async fn put(&self, url: &str, body: Bytes) -> reqwest::Response {
        http_client().put(url).body(body).send().await.expect("PUT")
    }

    pub async fn get(&self, url: &str) -> reqwest::Response {
        http_client().get(url).send().await.expect("GET")
    }

    /// Sends `signal` (as `kill` takes it: `-HUP`) to the running process.
    pub fn signal(&self, signal: &str) {
        let process = self.process.as_ref().expect("server is running");
        process.signal(signal).expect("signal the server");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(data_dir: &Path, command: &[String], launch: &Launch) -> NodeProcess {
    let mut pkraft = launch.command();
    // Plain `info`, as an operator would set it: pkraft must still keep per-query logs off.
    pkraft.args(command).env("RUST_LOG", "info");
    // Every listener on a free loopback port, but DNS where the launch fixes it.
    let dns = launch.dns.map(|dns| dns.to_string());
    let mut flags = pkraft_testkit::node::LOOPBACK_PORT_0_ARGS;
    if let Some(dns) = &dns {
        let flag = flags.iter().position(|flag| *flag == "--dns-listen");
        let value = flag
            .map(|at| at + 1)
            .expect("the port-0 flags set --dns-listen");
        flags[value] = dns;
    }
    pkraft.arg("--data-dir").arg(data_dir).args(flags);
    NodeProcess::start_configured(pkraft, LogTo::Memory, START_TIMEOUT)
        .unwrap_or_else(|e| panic!("pkraft did not start: {e}"))
}

/// How a node process is started: in the test's cgroup and with its descriptor limit, unless
/// told otherwise.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// A cgroup directory (of `/sys/fs/cgroup/<controller>`) the process runs in.
    pub cgroup: Option<PathBuf>,
    /// The soft and hard `RLIMIT_NOFILE` the process starts with (as `ulimit -Sn`, `-Hn`).
    pub nofile: Option<(u64, u64)>,
    /// The process's wall clock, moved by the test (libfaketime; see
    /// `pkraft_testkit::clock`).
    pub clock: Option<FakedClock>,
    /// Environment variables the process gets besides the harness's.
    pub env: Vec<(String, String)>,
    /// The DNS listener's address, kept across restarts (a client told it once, such as a CA
    /// resolving names through the node, reaches the restarted node); a free port otherwise.
    /// For one node: a cluster gives every member the same launch.
    pub dns: Option<SocketAddr>,
}

impl Launch {
    /// A command that runs the `pkraft` binary as this launch says: a shell joins the cgroup,
    /// sets the limits and then becomes `pkraft` (`exec`, same process), so nothing of
    /// pkraft's runs outside them.
    pub fn command(&self) -> Command {
        let mut command = self.command_unclocked();
        command.envs(self.env.iter().map(|(name, value)| (name, value)));
        if let Some(clock) = &self.clock {
            let library = pkraft_testkit::clock::library().expect("libfaketime is installed");
            clock.apply(&mut command, &library);
        }
        command
    }

    fn command_unclocked(&self) -> Command {
        let binary = env!("CARGO_BIN_EXE_pkraft");
        if self.cgroup.is_none() && self.nofile.is_none() {
            return Command::new(binary);
        }
        let mut script = String::new();
        if self.cgroup.is_some() {
            script.push_str("echo $$ > \"$PKRAFT_TEST_CGROUP/cgroup.procs\" && ");
        }
        if let Some((soft, hard)) = self.nofile {
            // The soft limit first: a hard limit below the current soft one is refused.
            script.push_str(&format!("ulimit -Sn {soft} && ulimit -Hn {hard} && "));
        }
        script.push_str("exec \"$0\" \"$@\"");
        let mut command = Command::new("sh");
        command.args(["-c", &script]).arg(binary);
        if let Some(cgroup) = &self.cgroup {
            command.env("PKRAFT_TEST_CGROUP", cgroup);
        }
        command
    }
}

/// A command that runs the `pkraft` binary, inside `cgroup` when given (see [`Launch`]).
pub fn pkraft_command(cgroup: Option<&Path>) -> Command {
    Launch {
        cgroup: cgroup.map(Path::to_path_buf),
        ..Launch::default()
    }
    .command()
}

fn path_arg(path: &Path) -> String {
    PathBuf::from(path).display().to_string()
}

/// A reqwest client. Test builds compile rustls with two crypto providers (ring, and aws-lc via
/// pkarr's `relays` feature), so one must be chosen before the first client is built.
pub fn http_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::new()
}

pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
