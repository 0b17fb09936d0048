//! The daemon's TOML config: one section per layer, every field defaulted and documented.
//! `config/example.toml` shows every field with its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// The built-in single-node development config (`pkraft dev`), the same file as
/// `config/dev.toml`.
pub const DEV_CONFIG: &str = include_str!("../../../config/dev.toml");

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where this node keeps its Raft log, state and snapshots. Default `./data`.
    pub data_dir: PathBuf,
    /// This node's id in the cluster. Ids are never reused. Default 1.
    pub node_id: u64,
    pub http: pkraft_http::Settings,
    pub dns: pkraft_dns::Settings,
    pub raft: pkraft_raft::Settings,
    pub cluster: pkraft_raft::ClusterSettings,
    pub admin: pkraft_http::admin::AdminSettings,
    /// Rate limits of the public HTTP listeners.
    pub rate_limit: pkraft_http::rate_limit::RateLimitSettings,
    /// The public API over TLS too (`[https]`); unset: plain HTTP only.
    pub https: Option<crate::https::HttpsSettings>,
    /// The Mainline DHT bridge (`[dht]`); off by default.
    pub dht: pkraft_dht::DhtSettings,
    /// Limits of the process as a whole (`[limits]`): the file descriptors kept for the node.
    pub limits: crate::descriptors::LimitsSettings,
}

/// Environment variable holding the cluster secret; wins over `cluster.secret_file` and
/// `cluster.secret`.
pub const CLUSTER_SECRET_ENV: &str = "PKRAFT_CLUSTER_SECRET";
/// Environment variable holding the admin token; wins over `admin.token_file` and `admin.token`.
pub const ADMIN_TOKEN_ENV: &str = "PKRAFT_ADMIN_TOKEN";

/// The secrets a node runs with, resolved from environment, file or config.
#[derive(Debug, Clone)]
pub struct Secrets {
    pub cluster: Option<pkraft_raft::ClusterSecret>,
    pub admin_token: Option<std::sync::Arc<str>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            node_id: 1,
            http: pkraft_http::Settings::default(),
            dns: pkraft_dns::Settings::default(),
            raft: pkraft_raft::Settings::default(),
            cluster: pkraft_raft::ClusterSettings::default(),
            admin: pkraft_http::admin::AdminSettings::default(),
            rate_limit: pkraft_http::rate_limit::RateLimitSettings::default(),
            https: None,
            dht: pkraft_dht::DhtSettings::default(),
            limits: crate::descriptors::LimitsSettings::default(),
        }
    }
}

/// Command-line values that replace config values.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Data directory (replaces `data_dir`).
    #[arg(long, env = "PKRAFT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Public HTTP listen address (replaces `http.listen`).
    #[arg(long, env = "PKRAFT_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// DNS listen address, UDP and TCP (replaces `dns.listen`).
    #[arg(long, env = "PKRAFT_DNS_LISTEN")]
    pub dns_listen: Option<SocketAddr>,
    /// Peer listen address for Raft traffic (replaces `cluster.peer_listen`).
    #[arg(long, env = "PKRAFT_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,
    /// Admin listen address (replaces `admin.listen`).
    #[arg(long, env = "PKRAFT_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Peer address of an existing member to join through; repeat for several (replaces
    /// `cluster.join`).
    #[arg(long = "join", value_name = "HOST:PORT")]
    pub join: Vec<String>,
}

impl Config {
    /// Parses TOML text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> anyhow::Result<Config> {
        let config: Config =
            toml::from_str(text).with_context(|| format!("{source}: invalid config"))?;
        config
            .validate()
            .with_context(|| format!("{source}: invalid config"))?;
        Ok(config)
    }

    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// The built-in development config.
    pub fn dev() -> anyhow::Result<Config> {
        Config::parse(DEV_CONFIG, "built-in dev config")
    }

    /// Checks what serde cannot: names, TTL ranges, timing relations. Errors name the field.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.http.validate()?;
        self.rate_limit.validate()?;
        self.dht.validate()?;
        let zones = self.dns.zones()?;
        if let Some(https) = &self.https {
            https.validate()?;
            if let Some(acme) = &https.acme {
                acme.validate_dns_names(&zones.origins)?;
            }
        }
        if let Some(tls) = &self.cluster.tls {
            // Reads the files, so `check-config` catches a wrong path, a key of another cert,
            // or a certificate for another node.
            tls.load(self.node_id)?;
        }
        self.raft.openraft_config()?;
        self.raft.state_cache_bytes()?;
        self.admin.validate()?;
        self.limits.validate()?;
        pkraft_http::admin::private_caps(
            self.cluster.peer_max_connections,
            self.cluster.peer_max_connections_per_client,
        )
        .validate(["peer_max_connections", "peer_max_connections"])
        .map_err(|(field, reason)| anyhow::anyhow!("cluster.{field}: {reason}"))?;
        self.check_peer_plaintext()?;
        if let Some(advertise) = &self.cluster.advertise {
            if !is_host_port(advertise) {
                anyhow::bail!("cluster.advertise ({advertise:?}) must be host:port");
            }
        } else if self.cluster.peer_listen.ip().is_unspecified() {
            anyhow::bail!(
                "cluster.advertise must be set when cluster.peer_listen ({}) is a wildcard \
                 address: other nodes need an address they can reach",
                self.cluster.peer_listen
            );
        }
        if let Some(bad) = self.cluster.join.iter().find(|addr| !is_host_port(addr)) {
            anyhow::bail!("cluster.join: {bad:?} is not host:port");
        }
        if self.cluster.bootstrap && !self.cluster.join.is_empty() {
            anyhow::bail!(
                "cluster.bootstrap and cluster.join exclude each other: a node either starts a \
                 new cluster or joins an existing one"
            );
        }
        if self.http.request_timeout <= self.raft.publish_timeout {
            anyhow::bail!(
                "http.request_timeout ({:?}) must be longer than raft.publish_timeout ({:?}), \
                 so that a PUT waiting for its commit is answered 503, not 408",
                self.http.request_timeout,
                self.raft.publish_timeout
            );
        }
        Ok(())
    }

    /// Without `[cluster.tls]`, peer traffic (the cluster secret in every request) is clear
    /// text: allowed on loopback, and beyond it only with `cluster.plaintext_peers`.
    fn check_peer_plaintext(&self) -> anyhow::Result<()> {
        if self.cluster.tls.is_some() || self.cluster.plaintext_peers {
            return Ok(());
        }
        let listen = self.cluster.peer_listen;
        let off_loopback = if !listen.ip().is_loopback() {
            Some(("cluster.peer_listen", listen.to_string()))
        } else {
            self.cluster
                .advertise
                .iter()
                .map(|addr| ("cluster.advertise", addr))
                .chain(self.cluster.join.iter().map(|addr| ("cluster.join", addr)))
                .find(|(_, addr)| !is_loopback_host_port(addr))
                .map(|(field, addr)| (field, addr.clone()))
        };
        match off_loopback {
            None => Ok(()),
            Some((field, addr)) => anyhow::bail!(
                "{field} ({addr}) is not on loopback, and without [cluster.tls] the cluster \
                 secret and all peer traffic would cross the network in clear text: set \
                 [cluster.tls] (docs/OPERATIONS.md, \"Peer and admin security\"), or, on a \
                 private network or a tunnel that encrypts, cluster.plaintext_peers = true"
            ),
        }
    }

    /// This config with inline secrets replaced by `<redacted>`, for printing.
    pub fn redacted(&self) -> Config {
        let hide = |secret: &Option<String>| secret.as_ref().map(|_| "<redacted>".to_string());
        let mut config = self.clone();
        config.cluster.secret = hide(&self.cluster.secret);
        config.admin.token = hide(&self.admin.token);
        config
    }

    pub fn apply(&mut self, overrides: &Overrides) {
        if let Some(dir) = &overrides.data_dir {
            self.data_dir = dir.clone();
        }
        if let Some(addr) = overrides.http_listen {
            self.http.listen = addr;
        }
        if let Some(addr) = overrides.dns_listen {
            self.dns.listen = addr;
        }
        if let Some(addr) = overrides.peer_listen {
            self.cluster.peer_listen = addr;
        }
        if let Some(addr) = overrides.admin_listen {
            self.admin.listen = addr;
        }
        if !overrides.join.is_empty() {
            self.cluster.join = overrides.join.clone();
            self.cluster.bootstrap = false;
        }
    }

    /// Reads the cluster secret and admin token: the environment (`env`, normally
    /// `std::env::var`) wins over the file, which wins over the inline value. A node that joins
    /// a cluster must have a cluster secret.
    pub fn secrets(&self, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Secrets> {
        let cluster = resolve_secret(
            env(CLUSTER_SECRET_ENV),
            self.cluster.secret_file.as_deref(),
            self.cluster.secret.as_deref(),
            "cluster.secret",
        )?
        .map(|secret| {
            pkraft_raft::ClusterSecret::new(&secret)
                .map_err(|e| anyhow::anyhow!("cluster secret: {e}"))
        })
        .transpose()?;
        if cluster.is_none() && !self.cluster.join.is_empty() {
            anyhow::bail!(
                "cluster.join needs a cluster secret (cluster.secret_file, cluster.secret or \
                 {CLUSTER_SECRET_ENV})"
            );
        }
        let admin_token = resolve_secret(
            env(ADMIN_TOKEN_ENV),
            self.admin.token_file.as_deref(),
            self.admin.token.as_deref(),
            "admin.token",
        )?;
        if let Some(token) = admin_token
            .as_ref()
            .filter(|token| token.len() < pkraft_raft::peer::SECRET_LEN_MIN)
        {
            anyhow::bail!(
                "admin token: must be at least {} bytes, got {}",
                pkraft_raft::peer::SECRET_LEN_MIN,
                token.len()
            );
        }
        Ok(Secrets {
            cluster,
            admin_token: admin_token.map(|t| std::sync::Arc::from(t.as_str())),
        })
    }
}

/// The first of: environment value, file contents, inline value; trimmed, empty counts as unset.
fn resolve_secret(
    from_env: Option<String>,
    file: Option<&Path>,
    inline: Option<&str>,
    field: &str,
) -> anyhow::Result<Option<String>> {
    let value = match (from_env, file) {
        (Some(value), _) => Some(value),
        (None, Some(file)) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("{field}_file: cannot read {}", file.display()))?,
        ),
        (None, None) => inline.map(str::to_string),
    };
    Ok(value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty()))
}

/// Whether `host:port` names this machine over loopback (`127.0.0.0/8`, `[::1]`,
/// `localhost`).
fn is_loopback_host_port(addr: &str) -> bool {
    let Some((host, _)) = addr.rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn is_host_port(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shipped config parses and validates: a broken example is a bug.
    #[test]
    fn every_file_in_config_dir_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).expect("config dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                checked += 1;
            }
        }
        assert!(
            checked >= 2,
            "expected dev.toml and example.toml, found {checked} files"
        );
    }

    /// Goal: every config field a doc names (`raft.publish_timeout`, `https.acme.challenge`, in
    /// backticks) is one the config takes (a doc that states a field is tied to the code). Method: each is parsed with a value of no field's type (`{}`); serde names an
    /// unknown field as such, a known one gets another error (or none).
    #[test]
    fn every_config_field_the_docs_name_exists() {
        const SECTIONS: [&str; 10] = [
            "http",
            "https",
            "dns",
            "raft",
            "cluster",
            "admin",
            "rate_limit",
            "dht",
            "limits",
            "node_id",
        ];
        // Source files and other paths that look like fields (`dht.rs`, `state.redb`).
        const FILE_EXTENSIONS: [&str; 12] = [
            "rs", "md", "toml", "sh", "redb", "py", "yml", "yaml", "json", "pem", "key", "crt",
        ];
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut docs = vec![root.join("README.md")];
        for entry in std::fs::read_dir(root.join("docs")).expect("docs") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "md") {
                docs.push(path);
            }
        }
        let mut fields = std::collections::BTreeMap::new();
        for doc in &docs {
            let text = std::fs::read_to_string(doc).expect("a doc");
            for (number, line) in text.lines().enumerate() {
                for span in line.split('`').skip(1).step_by(2) {
                    let Some(token) = span.split([' ', '=']).next() else {
                        continue;
                    };
                    let segments: Vec<&str> = token.split('.').collect();
                    let is_field = segments.len() >= 2
                        && SECTIONS.contains(&segments[0])
                        && segments.iter().all(|segment| {
                            !segment.is_empty()
                                && segment.chars().all(|c| {
                                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
                                })
                        })
                        && !FILE_EXTENSIONS.contains(&segments[segments.len() - 1]);
                    if is_field {
                        fields
                            .entry(token.to_string())
                            .or_insert_with(|| format!("{}:{}", doc.display(), number + 1));
                    }
                }
            }
        }
        assert!(
            fields.contains_key("raft.publish_timeout") && fields.len() > 50,
            "the scan found too few fields: {fields:?}"
        );
        let mut unknown = Vec::new();
        for (field, at) in &fields {
            let (table, key) = field.rsplit_once('.').expect("a dotted name");
            let text = format!("[{table}]\n{key} = {{}}\n");
            if let Err(e) = Config::parse(&text, "doc")
                && format!("{e:#}").contains(&format!("unknown field `{key}`"))
            {
                unknown.push(format!("{at}: `{field}`"));
            }
        }
        assert!(
            unknown.is_empty(),
            "config fields the docs name that the config does not take:\n{}",
            unknown.join("\n")
        );
    }

    /// example.toml documents the defaults: parsing it must give exactly `Config::default()`.
    #[test]
    fn example_config_shows_the_defaults() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        let example = Config::load(&dir.join("example.toml")).expect("example parses");
        assert_eq!(example, Config::default());
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(
            Config::parse("", "empty").expect("parses"),
            Config::default()
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let err = Config::parse("[dns]\norigin = \"x.test\"\n", "t").expect_err("unknown field");
        assert!(format!("{err:#}").contains("origin"), "{err:#}");
        let err = Config::parse("nodeid = 2\n", "t").expect_err("unknown field");
        assert!(format!("{err:#}").contains("nodeid"), "{err:#}");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let err = Config::parse("[dns]\norigins = []\n", "t").expect_err("no origins");
        assert!(format!("{err:#}").contains("dns.origins"), "{err:#}");
        // ACME DNS-01 names are checked against dns.origins.
        let acme = |domain: &str| {
            format!(
                "[https]\nlisten = \"127.0.0.1:0\"\n[https.acme]\nchallenge = \"dns-01\"\n\
                 domains = [\"{domain}\"]\n[dns]\norigins = [\"pkarr.example.org\"]\n"
            )
        };
        Config::parse(&acme("*.pkarr.example.org"), "t").expect("under the origin");
        let err = Config::parse(&acme("pkarr.example.net"), "t").expect_err("elsewhere");
        assert!(format!("{err:#}").contains("https.acme.domains"), "{err:#}");
        let err =
            Config::parse("[http]\ncache_max_age_min = \"2days\"\n", "t").expect_err("min > max");
        assert!(
            format!("{err:#}").contains("http.cache_max_age_min"),
            "{err:#}"
        );
        let err = Config::parse("[raft]\nelection_timeout_min = \"10ms\"\n", "t")
            .expect_err("timeout below heartbeat");
        assert!(format!("{err:#}").contains("raft"), "{err:#}");
        let err = Config::parse("[http]\nrequest_timeout = \"5s\"\n", "t")
            .expect_err("request timeout not above publish timeout");
        assert!(
            format!("{err:#}").contains("http.request_timeout"),
            "{err:#}"
        );
        let err = Config::parse("[raft]\nheartbeat_interval = \"soon\"\n", "t")
            .expect_err("bad duration");
        assert!(format!("{err:#}").contains("heartbeat_interval"), "{err:#}");
        for (toml, field) in [
            ("[admin]\nmax_connections = 0\n", "admin.max_connections"),
            (
                "[cluster]\npeer_max_connections = 0\n",
                "cluster.peer_max_connections",
            ),
            (
                "[dns]\ntcp_max_connections = 0\n",
                "dns.tcp_max_connections",
            ),
            ("[dns]\nudp_payload_max = 100\n", "dns.udp_payload_max"),
            (
                "[http]\nclient_ipv6_prefix_len = 0\n",
                "http.client_ipv6_prefix_len",
            ),
            (
                "[limits]\nreserved_descriptors = 1\n",
                "limits.reserved_descriptors",
            ),
            (
                "[rate_limit]\nnetwork_ipv4_prefix_len = 33\n",
                "rate_limit.network_ipv4_prefix_len",
            ),
            (
                "[dns.rrl]\nnetwork_ipv6_prefix_len = 0\n",
                "dns.rrl.network_ipv6_prefix_len",
            ),
        ] {
            let err = Config::parse(toml, "t").expect_err(field);
            assert!(format!("{err:#}").contains(field), "{field}: {err:#}");
        }
    }

    /// Without TLS, peer addresses off loopback are refused unless plain text is chosen by name.
    #[test]
    fn plain_peer_traffic_off_loopback_needs_an_explicit_choice() {
        for (toml, field) in [
            (
                "[cluster]\npeer_listen = \"0.0.0.0:7400\"\nadvertise = \"10.0.0.1:7400\"\n",
                "cluster.peer_listen",
            ),
            (
                "[cluster]\nadvertise = \"node1:7400\"\n",
                "cluster.advertise",
            ),
            (
                "[cluster]\njoin = [\"127.0.0.1:7401\", \"10.0.0.2:7400\"]\n",
                "cluster.join",
            ),
        ] {
            let err = Config::parse(toml, "t").expect_err(field);
            let text = format!("{err:#}");
            assert!(
                text.contains(field) && text.contains("plaintext_peers"),
                "{text}"
            );
            let allowed = format!("{toml}plaintext_peers = true\n");
            Config::parse(&allowed, "t").unwrap_or_else(|e| panic!("{field}: {e:#}"));
        }
        let local = "[cluster]\nadvertise = \"localhost:7400\"\njoin = [\"[::1]:7401\", \"127.0.0.2:7402\"]\n";
        Config::parse(local, "t").expect("loopback is fine");
    }
}
