//! The `[dht]` config section.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;

/// How this node takes part in the Mainline DHT. Off by default; every node of a cluster should
/// have the same section (only the leader publishes, every node resolves).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DhtSettings {
    /// Run a Mainline DHT node. Default false.
    pub enabled: bool,
    /// DHT nodes to join through, as `host:port`. Required when enabled: pkraft never falls back
    /// to the public bootstrap nodes on its own (`router.bittorrent.com:6881`,
    /// `dht.transmissionbt.com:6881`, `dht.libtorrent.org:25401`, `relay.pkarr.org:6881` are
    /// the usual ones; list them to join the public DHT).
    pub bootstrap: Vec<String>,
    /// The UDP address the DHT node binds. Port 0 picks any free port; give a fixed one to open
    /// it in a firewall. Default `0.0.0.0:0`.
    pub listen: SocketAddrV4,
    /// Answer other DHT nodes' requests and store their items (a full DHT node). Off: a client
    /// that only asks and puts. Default false.
    pub server_mode: bool,
    /// How long the DHT node waits for one remote node's answer. A lookup ends once every node
    /// it asked has answered or timed out, and some node always stays silent, so a key nobody
    /// published is answered "not found" after about this long plus a round trip. Default
    /// 500 ms (mainline's own default is 2 s).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,

    /// Ask the DHT for keys this cluster does not store (DNS, DoH and GET misses). Default true.
    pub resolve: bool,
    /// The longest a query waits for the DHT, from when it asked; then it gets the answer a
    /// plain miss gets (NXDOMAIN, 404). Keep it below resolvers' patience. Default 2 s.
    #[serde(with = "humantime_serde")]
    pub resolve_timeout: Duration,
    /// DHT lookups at once; a miss beyond this gets the plain-miss answer at once. Default 64.
    pub resolve_in_flight_max: usize,
    /// Packets found on the DHT kept in memory (never written to the Raft log). Default 10,000.
    pub resolve_cache_entries: u64,
    /// A found packet is cached for its smallest record TTL, clamped to this range. Default
    /// 30 s .. 5 min.
    #[serde(with = "humantime_serde")]
    pub resolve_cache_ttl_min: Duration,
    #[serde(with = "humantime_serde")]
    pub resolve_cache_ttl_max: Duration,
    /// How long a key the DHT did not have (or did not answer for in time) is answered as a
    /// miss without asking again. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub negative_cache_ttl: Duration,

    /// The leader puts newly stored packets to the DHT. Default true.
    pub publish: bool,
    /// A stored key is put once it has waited this long, in its newest version, so a burst of
    /// updates costs one put. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub publish_delay: Duration,
    /// Keys waiting for their put on each node, at most; beyond it new keys wait for the
    /// republish sweep. Default 100,000.
    pub publish_backlog_max: usize,
    /// Every stored packet is put again about this often (BEP 44 nodes may drop items after
    /// about 2 hours). 0 s: no republishing, allowed only with `publish` off (keys stored while
    /// no leader noted them reach the DHT through the sweep). Default 1 h, at most 7 days.
    #[serde(with = "humantime_serde")]
    pub republish_interval: Duration,
    /// Puts per second, publishing and republishing together (publishing first). Default 50.
    pub put_rate: NonZeroU32,
    /// Puts under way at once. Default 16.
    pub puts_in_flight: usize,
    /// How often the leader commits how far it got, so a new leader carries on from there.
    /// Default 1 s.
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
}

impl Default for DhtSettings {
    fn default() -> Self {
        DhtSettings {
            enabled: false,
            bootstrap: Vec::new(),
            listen: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            server_mode: false,
            request_timeout: Duration::from_millis(500),
            resolve: true,
            resolve_timeout: Duration::from_secs(2),
            resolve_in_flight_max: 64,
            resolve_cache_entries: 10_000,
            resolve_cache_ttl_min: Duration::from_secs(30),
            resolve_cache_ttl_max: Duration::from_secs(300),
            negative_cache_ttl: Duration::from_secs(30),
            publish: true,
            publish_delay: Duration::from_secs(1),
            publish_backlog_max: 100_000,
            republish_interval: Duration::from_secs(3600),
            put_rate: NonZeroU32::new(50).unwrap_or(NonZeroU32::MIN),
            puts_in_flight: 16,
            progress_interval: Duration::from_secs(1),
        }
    }
}

/// A `[dht]` value that cannot be used. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dht.{field}: {reason}")]
pub struct SettingsError {
    pub field: &'static str,
    pub reason: String,
}

impl DhtSettings {
    /// Checks what serde cannot; errors name the field.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if !self.enabled {
            return Ok(());
        }
        let error = |field, reason: &str| {
            Err(SettingsError {
                field,
                reason: reason.to_string(),
            })
        };
        if self.bootstrap.is_empty() {
            return error(
                "bootstrap",
                "required when dht.enabled: the DHT nodes to join through (host:port); \
                 pkraft does not pick the public ones by itself",
            );
        }
        if let Some(bad) = self.bootstrap.iter().find(|b| b.rsplit_once(':').is_none()) {
            return Err(SettingsError {
                field: "bootstrap",
                reason: format!("{bad:?} is not host:port"),
            });
        }
        // Upper bounds keep every deadline computed from them representable, and catch units
        // typed wrong ("2h" for "2s").
        const MINUTE: Duration = Duration::from_secs(60);
        const DAY: Duration = Duration::from_secs(86_400);
        for (field, value, max) in [
            ("request_timeout", self.request_timeout, MINUTE),
            ("resolve_timeout", self.resolve_timeout, MINUTE),
            ("resolve_cache_ttl_max", self.resolve_cache_ttl_max, DAY),
            ("negative_cache_ttl", self.negative_cache_ttl, DAY),
            ("publish_delay", self.publish_delay, DAY),
            ("republish_interval", self.republish_interval, 7 * DAY),
            ("progress_interval", self.progress_interval, DAY),
        ] {
            if value > max {
                return Err(SettingsError {
                    field,
                    reason: format!("at most {}", humantime::format_duration(max)),
                });
            }
        }
        if self.request_timeout.is_zero() {
            return error("request_timeout", "must be more than 0");
        }
        if self.resolve_timeout.is_zero() {
            return error("resolve_timeout", "must be more than 0");
        }
        if self.publish && self.republish_interval.is_zero() {
            return error(
                "republish_interval",
                "must be more than 0 while dht.publish is on: keys stored while no leader \
                 noted them (before a start, through a snapshot, past dht.publish_backlog_max) \
                 reach the DHT only through the republish sweep",
            );
        }
        if self.resolve_in_flight_max == 0 {
            return error("resolve_in_flight_max", "must be at least 1");
        }
        if self.resolve_cache_ttl_min > self.resolve_cache_ttl_max {
            return error(
                "resolve_cache_ttl_min",
                "must not be more than dht.resolve_cache_ttl_max",
            );
        }
        if self.publish_backlog_max == 0 {
            return error("publish_backlog_max", "must be at least 1");
        }
        if self.puts_in_flight == 0 {
            return error("puts_in_flight", "must be at least 1");
        }
        if self.progress_interval.is_zero() {
            return error("progress_interval", "must be more than 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> DhtSettings {
        toml::from_str(text).expect("parses")
    }

    #[test]
    fn off_by_default_and_bootstrap_is_required_when_on() {
        let settings = DhtSettings::default();
        assert!(!settings.enabled);
        assert_eq!(settings.validate(), Ok(()));
        let error = parse("enabled = true")
            .validate()
            .expect_err("no bootstrap");
        assert_eq!(error.field, "bootstrap");
        assert!(error.to_string().starts_with("dht.bootstrap: required"));
        let error = parse("enabled = true\nbootstrap = [\"nowhere\"]")
            .validate()
            .expect_err("no port");
        assert_eq!(
            error.to_string(),
            "dht.bootstrap: \"nowhere\" is not host:port"
        );
        assert_eq!(
            parse("enabled = true\nbootstrap = [\"127.0.0.1:6881\"]").validate(),
            Ok(())
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        let base = "enabled = true\nbootstrap = [\"127.0.0.1:6881\"]\n";
        for (line, field) in [
            ("resolve_timeout = \"0s\"", "resolve_timeout"),
            ("resolve_in_flight_max = 0", "resolve_in_flight_max"),
            ("resolve_cache_ttl_min = \"10m\"", "resolve_cache_ttl_min"),
            ("puts_in_flight = 0", "puts_in_flight"),
            ("publish_backlog_max = 0", "publish_backlog_max"),
            ("resolve_timeout = \"2h\"", "resolve_timeout"),
            ("republish_interval = \"0s\"", "republish_interval"),
        ] {
            let error = parse(&format!("{base}{line}")).validate().expect_err(line);
            assert_eq!(error.field, field, "{line}");
        }
        assert!(toml::from_str::<DhtSettings>("put_rate = 0").is_err());
        assert!(toml::from_str::<DhtSettings>("bootstap = []").is_err());
    }
}
