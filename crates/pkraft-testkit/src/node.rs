//! What every harness needs to start `pkraft` nodes: the flags that put the listeners on free
//! loopback ports, the "pkraft listening" line that reports them, and the config file of a
//! cluster node.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

/// `pkraft serve|dev` flags that put every listener on a free loopback port; the node logs the
/// bound addresses in its "pkraft listening" line ([`Listening::parse`]).
pub const LOOPBACK_PORT_0_ARGS: [&str; 8] = [
    "--http-listen",
    "127.0.0.1:0",
    "--dns-listen",
    "127.0.0.1:0",
    "--peer-listen",
    "127.0.0.1:0",
    "--admin-listen",
    "127.0.0.1:0",
];

/// What the line a node logs once it listens starts with.
pub const LISTENING: &str = "pkraft listening";

/// The addresses a node listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listening {
    pub http: SocketAddr,
    pub dns: SocketAddr,
    pub peer: SocketAddr,
    pub admin: SocketAddr,
}

impl Listening {
    /// The addresses in a "pkraft listening … http=A dns=B peer=C admin=D" log line; `None` for
    /// any other line.
    pub fn parse(line: &str) -> Option<Listening> {
        if !line.contains(LISTENING) {
            return None;
        }
        let field = |name: &str| -> Option<SocketAddr> {
            let prefix = format!("{name}=");
            line.split_whitespace()
                .find_map(|token| token.strip_prefix(&prefix))
                .and_then(|value| value.trim_matches('"').parse().ok())
        };
        Some(Listening {
            http: field("http")?,
            dns: field("dns")?,
            peer: field("peer")?,
            admin: field("admin")?,
        })
    }
}

/// The abuse limits off: HTTP rate limits and DNS response rate limiting. For load from one
/// loopback address (the chaos harness, benchmarks), which the limits would otherwise cap by
/// design.
pub const LIMITS_OFF_TOML: &str = "[rate_limit]\n\
    publish = { per_client = { per_second = 0, burst = 0 }, global = { per_second = 0, burst = 0 } }\n\
    publish_new_keys = { per_client = { per_second = 0, burst = 0 }, global = { per_second = 0, burst = 0 } }\n\
    publish_per_key = { per_minute = 0, burst = 0 }\n\
    resolve = { per_client = { per_second = 0, burst = 0 }, global = { per_second = 0, burst = 0 } }\n\
    doh = { per_client = { per_second = 0, burst = 0 }, global = { per_second = 0, burst = 0 } }\n\
    health = { per_client = { per_second = 0, burst = 0 }, global = { per_second = 0, burst = 0 } }\n\
    [dns.rrl]\n\
    responses_per_second = 0\n\
    global_responses_per_second = 0\n\
    global_bytes_per_second = 0\n";

/// The settings this harness writes that were added since the previous release
/// (`tests/upgrade/PREVIOUS`). That release refuses them, as every build refuses a config field
/// it does not know. Update with PREVIOUS.
pub const ADDED_SINCE_PREVIOUS_RELEASE: &[&str] = &["publish_new_keys", "publish_per_key"];

/// `toml` as a node of the previous release takes it: without the lines that set
/// [`ADDED_SINCE_PREVIOUS_RELEASE`]. (Their defaults then hold on that node, as on a node an
/// operator has not yet given the new settings.)
pub fn for_previous_release(toml: &str) -> String {
    toml.lines()
        .filter(|line| {
            let key = line.split('=').next().unwrap_or_default().trim();
            !ADDED_SINCE_PREVIOUS_RELEASE.contains(&key)
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

/// How a cluster node comes to its cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Membership {
    /// Starts a new cluster of itself.
    Bootstrap,
    /// Joins through these peer addresses, as a voter or a learner.
    Join { seeds: Vec<String>, voter: bool },
    /// Neither (a data dir that already holds its cluster, e.g. from `pkraft restore`).
    Existing,
}

/// The config file of a cluster node, as operators write one.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: u64,
    pub membership: Membership,
    /// `cluster.secret`.
    pub secret: String,
    /// `cluster.advertise` (a proxy's address); `None`: the peer listener's own address.
    pub advertise: Option<String>,
    /// `admin.token`, if any.
    pub admin_token: Option<String>,
    /// Lines of `[raft]` (timing, snapshots); none: no `[raft]` section (`sections` may bring
    /// one).
    pub raft: String,
    /// `http.request_timeout` (it must exceed `raft.publish_timeout`).
    pub http_request_timeout: Option<String>,
    /// `dns.origins`; empty: the default.
    pub origins: Vec<String>,
    /// Fixed listen addresses and data dir, for a node restarted on the same ports (the
    /// benchmarks); `None`: the harness passes [`LOOPBACK_PORT_0_ARGS`] and `--data-dir`.
    pub fixed: Option<(Listening, PathBuf)>,
    /// Whole sections appended at the end (`[dht]`, [`LIMITS_OFF_TOML`], ...).
    pub sections: String,
    /// Single settings, `(section, "key = value")`, written into that section (also one this
    /// config writes itself, such as `http` or `cluster`, where `sections` cannot add to).
    pub settings: Vec<(String, String)>,
}

impl NodeConfig {
    /// A node of a cluster with this secret, no admin token, default timing.
    pub fn new(node_id: u64, membership: Membership, secret: &str) -> NodeConfig {
        NodeConfig {
            node_id,
            membership,
            secret: secret.to_string(),
            advertise: None,
            admin_token: None,
            raft: String::new(),
            http_request_timeout: None,
            origins: Vec::new(),
            fixed: None,
            sections: String::new(),
            settings: Vec::new(),
        }
    }

    /// The lines of `settings` for `section`, each ending in a newline.
    fn settings_of(&self, section: &str) -> String {
        self.settings
            .iter()
            .filter(|(name, _)| name == section)
            .map(|(_, line)| format!("{line}\n"))
            .collect()
    }

    /// The TOML text of the config file.
    pub fn to_toml(&self) -> String {
        let mut toml = format!("node_id = {}\n", self.node_id);
        // `write!` to a String cannot fail.
        if let Some((_, data_dir)) = &self.fixed {
            let _ = writeln!(toml, "data_dir = {:?}", data_dir.display().to_string());
        }
        // A section only with something in it: `sections` may bring its own.
        let raft = format!("{}{}", self.raft, self.settings_of("raft"));
        if !raft.is_empty() {
            let _ = write!(toml, "[raft]\n{raft}");
        }
        let mut http = self.settings_of("http");
        if let Some(timeout) = &self.http_request_timeout {
            let _ = writeln!(http, "request_timeout = {timeout:?}");
        }
        if let Some((listen, _)) = &self.fixed {
            let _ = writeln!(http, "listen = \"{}\"", listen.http);
        }
        if !http.is_empty() {
            let _ = write!(toml, "[http]\n{http}");
        }
        let mut dns = self.settings_of("dns");
        if let Some((listen, _)) = &self.fixed {
            let _ = writeln!(dns, "listen = \"{}\"", listen.dns);
        }
        if !self.origins.is_empty() {
            let quoted: Vec<String> = self.origins.iter().map(|o| format!("{o:?}")).collect();
            let _ = writeln!(dns, "origins = [{}]", quoted.join(", "));
        }
        if !dns.is_empty() {
            let _ = write!(toml, "[dns]\n{dns}");
        }
        let _ = writeln!(toml, "[cluster]\nsecret = {:?}", self.secret);
        toml.push_str(&self.settings_of("cluster"));
        if let Some(advertise) = &self.advertise {
            let _ = writeln!(toml, "advertise = {advertise:?}");
        }
        if let Some((listen, _)) = &self.fixed {
            let _ = writeln!(toml, "peer_listen = \"{}\"", listen.peer);
        }
        match &self.membership {
            Membership::Bootstrap => toml.push_str("bootstrap = true\n"),
            Membership::Join { seeds, voter } => {
                let quoted: Vec<String> = seeds.iter().map(|s| format!("{s:?}")).collect();
                let _ = writeln!(toml, "join = [{}]\nvoter = {voter}", quoted.join(", "));
            }
            Membership::Existing => {}
        }
        let mut admin = self.settings_of("admin");
        if let Some(token) = &self.admin_token {
            let _ = writeln!(admin, "token = {token:?}");
        }
        if let Some((listen, _)) = &self.fixed {
            let _ = writeln!(admin, "listen = \"{}\"", listen.admin);
        }
        if !admin.is_empty() {
            let _ = write!(toml, "[admin]\n{admin}");
        }
        let mut others: Vec<&str> = Vec::new();
        for (section, _) in &self.settings {
            let written = ["raft", "http", "dns", "cluster", "admin"].contains(&section.as_str());
            if !written && !others.contains(&section.as_str()) {
                others.push(section);
            }
        }
        for section in others {
            let _ = write!(toml, "[{section}]\n{}", self.settings_of(section));
        }
        toml.push_str(&self.sections);
        toml
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_gives_every_address() {
        let line = "2026-11-24T03:00:00Z  INFO pkraft::daemon: pkraft listening node_id=1 \
                    http=127.0.0.1:8080 dns=127.0.0.1:5353 peer=127.0.0.1:7000 admin=127.0.0.1:9000";
        let listening = Listening::parse(line).expect("parsed");
        assert_eq!(listening.dns, "127.0.0.1:5353".parse().expect("addr"));
        assert_eq!(listening.admin, "127.0.0.1:9000".parse().expect("addr"));
        assert_eq!(Listening::parse("pkraft listening http=127.0.0.1:1"), None);
        assert_eq!(Listening::parse("something else"), None);
    }

    #[test]
    fn a_config_names_its_membership_and_fixed_addresses() {
        let mut config = NodeConfig::new(
            2,
            Membership::Join {
                seeds: vec!["127.0.0.1:7000".to_string()],
                voter: false,
            },
            "s3cret",
        );
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        config.fixed = Some((
            Listening {
                http: addr(1),
                dns: addr(2),
                peer: addr(3),
                admin: addr(4),
            },
            PathBuf::from("/tmp/n2"),
        ));
        config.origins = vec!["pkarr.test".to_string()];
        let toml = config.to_toml();
        for expected in [
            "node_id = 2\n",
            "data_dir = \"/tmp/n2\"\n",
            "join = [\"127.0.0.1:7000\"]\nvoter = false\n",
            "peer_listen = \"127.0.0.1:3\"\n",
            "origins = [\"pkarr.test\"]\n",
            "[admin]\nlisten = \"127.0.0.1:4\"\n",
        ] {
            assert!(toml.contains(expected), "{expected:?} not in\n{toml}");
        }
    }

    #[test]
    fn the_previous_release_gets_the_limits_off_without_the_settings_added_since() {
        let previous = for_previous_release(LIMITS_OFF_TOML);
        for added in ADDED_SINCE_PREVIOUS_RELEASE {
            assert!(LIMITS_OFF_TOML.contains(&format!("{added} = ")), "{added}");
            assert!(!previous.contains(added), "{added} in\n{previous}");
        }
        let kept = LIMITS_OFF_TOML.lines().count() - ADDED_SINCE_PREVIOUS_RELEASE.len();
        assert_eq!(previous.lines().count(), kept, "{previous}");
        assert!(previous.contains("[rate_limit]\npublish = {"), "{previous}");
    }
}
