//! The `[dns]` config section.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use hickory_proto::rr::Name;
use serde::Deserialize;

/// More pipelined queries per TCP connection than this is a typo: each may hold a task.
const TCP_PIPELINE_MAX: usize = 1_024;
/// More UDP sockets than this is a typo, not a tuning.
const UDP_SOCKETS_MAX: usize = 256;
/// `udp_sockets = 0` binds one socket per core but one, at most this many.
pub const UDP_SOCKETS_AUTO_MAX: usize = 16;

/// How the DNS frontend listens and what it serves at each origin's apex.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// UDP and TCP listen address (one port for both). Default `127.0.0.1:5300`.
    pub listen: SocketAddr,
    /// Zones served: a query `<name>.<z32>.<origin>` is answered from the packet of key `<z32>`.
    /// The most specific origin wins (so nested origins work in any order); `.` serves `<z32>.`
    /// directly. Default `["pkarr.test"]`.
    pub origins: Vec<String>,
    /// NS records at every origin's apex; the first is also the SOA MNAME. Default: none (then NS
    /// queries get NODATA and the SOA MNAME is the origin itself). Names below an origin are
    /// refused: every name there is read as a pkarr key, so their addresses cannot be served. An
    /// origin itself is allowed; its addresses are `apex_a`/`apex_aaaa`.
    pub nameservers: Vec<String>,
    /// SOA RNAME, the zone contact as a domain name. Default `hostmaster.<origin>`.
    pub soa_rname: Option<String>,
    /// SOA serial. pkraft serves no zone transfers, so this is informational. Default 1.
    pub soa_serial: u32,
    /// SOA MINIMUM: how long resolvers cache "no such key" (RFC 2308). Default 30 s, kept low so
    /// that a key published right after a miss resolves soon.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// TTL of the apex records (SOA, NS, A, AAAA). Default 5 min.
    #[serde(with = "humantime_serde")]
    pub apex_ttl: Duration,
    /// Least TTL served for a packet's records. Default 30 s (iroh's own TTL), as
    /// `http.cache_max_age_min`: a packet signed with TTL 0 (or with 2^31 s or more, which RFC
    /// 2181 §8 reads as 0) would make every resolver ask this node for every lookup. The signed
    /// packet is not changed (a relay GET returns it as signed); only DNS answers.
    #[serde(with = "humantime_serde")]
    pub ttl_min: Duration,
    /// Largest TTL served for a packet's records. Default 1 day (as `http.cache_max_age_max`):
    /// resolvers come back at least this often, so a republished packet reaches them.
    #[serde(with = "humantime_serde")]
    pub ttl_max: Duration,
    /// A records at every origin's apex. Default: none.
    pub apex_a: Vec<Ipv4Addr>,
    /// AAAA records at every origin's apex. Default: none.
    pub apex_aaaa: Vec<Ipv6Addr>,
    /// A DNS-over-TCP connection with no query for this long (and none being answered) is
    /// closed, and so is one whose query or answer has not moved for this long (a client that
    /// sends or reads nothing). Default 10 s (Knot's; RFC 7766 §6.2.3 asks for seconds).
    #[serde(with = "humantime_serde")]
    pub tcp_idle_timeout: Duration,
    /// DNS-over-TCP connections open at once; beyond it new ones wait in the kernel's backlog.
    /// Each is a file descriptor (docs/OPERATIONS.md, "Limits and abuse"). Default 1,024.
    pub tcp_max_connections: usize,
    /// DNS-over-TCP connections open at once from one client: an IPv4 address, or an IPv6
    /// network of `tcp_client_ipv6_prefix_len` bits. More are closed at once. 0: no limit.
    /// Default 64: resolvers open a few to retry truncated answers.
    pub tcp_max_connections_per_client: usize,
    /// The IPv6 network one client owns for `tcp_max_connections_per_client`. Default 56.
    pub tcp_client_ipv6_prefix_len: u8,
    /// Queries one DNS-over-TCP connection may send; after the last is answered the connection
    /// is closed (the client opens another). 0: no limit. Default 10,000.
    pub tcp_max_queries_per_connection: u32,
    /// Queries of one DNS-over-TCP connection answered at once (pipelining, RFC 7766 §6.2.1.1;
    /// answers may go out of order). Beyond it the connection is not read until one is
    /// answered. Default 16.
    pub tcp_pipeline_max: usize,
    /// The largest UDP answer, in bytes, whatever buffer size a client's EDNS record names (512
    /// to 65,535): larger answers are truncated (TC=1) and the client retries over TCP. Default
    /// 1,232, DNS Flag Day 2020's size, which avoids IP fragmentation (as NSD and Knot).
    pub udp_payload_max: u16,
    /// Answer SERVFAIL, so that resolvers ask another node, once this node has not heard from a
    /// leader for longer than this (or has not since it started). A leader counts from its last
    /// quorum acknowledgement; a single-node cluster is never stale. Default: unset, always
    /// answer from the local replica. Set it well above `raft.election_timeout_max`, or every
    /// election makes the followers fail queries.
    #[serde(with = "humantime_serde")]
    pub max_stale: Option<Duration>,
    /// Memory for the parsed records of recently asked keys, in MiB (0: no cache; every query
    /// reads the store). An entry is retired the moment its key changes on the local replica, so
    /// the cache never serves older data than the replica. Default 64 MiB, about 60,000 keys of
    /// iroh-sized packets.
    pub record_cache_mib: u32,
    /// Memory for ready UDP answers, in MiB. A query whose bytes (after the ID) were answered
    /// before is answered with the same bytes, as long as the key the answer was read from has
    /// not changed on the local replica since: no parse, byte-identical to hickory-server's
    /// answer. Only local answers are kept, so it is off with `direct_answers = false`. 0: no
    /// answer cache. Default 32 MiB, about 60,000 answers the size of an iroh `_iroh` TXT
    /// answer.
    pub answer_cache_mib: u32,
    /// Write answers in place from the local replica (for a stored key from the answers the
    /// store compiled), byte-identical to hickory-server's `Catalog` (docs/ARCHITECTURE.md, "DNS
    /// flow"), instead of handing every query to the `Catalog`: UDP answers them inline with no
    /// task per query, TCP and DNS-over-HTTPS skip the `Catalog`. What they do not cover (a key
    /// only the DHT has, a short-lived record, UPDATE, AXFR)
    /// still goes to the `Catalog`. Default true; false is for comparison and diagnosis: every
    /// query goes to the `Catalog` (a stale node's SERVFAIL aside), and the answer cache is off.
    /// The UDP loops serve UDP either way.
    pub direct_answers: bool,
    /// UDP sockets bound to `listen` with `SO_REUSEPORT`; the kernel spreads queries over them
    /// by client address and each is served by its own loop, so several cores receive in
    /// parallel. Default 0: one per CPU core but one (at least 1, at most 16), so a UDP flood
    /// always leaves a core to Raft and HTTP. With batched I/O one loop answered more than 200k
    /// queries per second on a 2-core machine, and every socket beyond the cores the server has
    /// to itself adds a tail: NSD with 2 processes showed it too (docs/BENCHMARKS.md, "The
    /// tail"). 1: a single socket, without `SO_REUSEPORT` (with it, another process of the same
    /// user could bind the port too and receive part of the queries).
    pub udp_sockets: usize,
    /// UDP queries being answered by hickory's handler chain at once, per socket: what the
    /// local answers leave to it (keys only the DHT has, short-lived records, UPDATE, AXFR),
    /// each in a task. Beyond it such a query is dropped, as a full socket buffer would drop
    /// it, so a flood of them cannot pile up tasks and memory. Default 1,024.
    pub udp_pending_max: usize,
    /// Datagrams read and sent per system call by each UDP loop (`recvmmsg`/`sendmmsg` on Linux).
    /// The loop answers a batch's queries one after the other before it sends, so a batch that
    /// reads many keys from a cold page cache delays the answers behind them. 1: one per call
    /// (`recvfrom`/`sendto`), the path other systems always use. Default 32, at most 256.
    pub udp_batch: usize,
    /// Response rate limiting of UDP answers per client network (`[dns.rrl]`).
    pub rrl: crate::rrl::RrlSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 5300)),
            origins: vec!["pkarr.test".to_string()],
            nameservers: Vec::new(),
            soa_rname: None,
            soa_serial: 1,
            negative_ttl: Duration::from_secs(30),
            apex_ttl: Duration::from_secs(300),
            ttl_min: Duration::from_secs(30),
            ttl_max: Duration::from_secs(86_400),
            apex_a: Vec::new(),
            apex_aaaa: Vec::new(),
            tcp_idle_timeout: Duration::from_secs(10),
            tcp_max_connections: 1_024,
            tcp_max_connections_per_client: 64,
            tcp_client_ipv6_prefix_len: 56,
            tcp_max_queries_per_connection: 10_000,
            tcp_pipeline_max: 16,
            udp_payload_max: 1_232,
            max_stale: None,
            record_cache_mib: 64,
            answer_cache_mib: 32,
            direct_answers: true,
            udp_sockets: 0,
            udp_pending_max: 1_024,
            udp_batch: 32,
            rrl: crate::rrl::RrlSettings::default(),
        }
    }
}

/// `udp_sockets = 0` on a machine with `cores` CPU cores: one socket per core but one, so a UDP
/// flood leaves a core to Raft and HTTP.
fn auto_udp_sockets(cores: usize) -> usize {
    cores.saturating_sub(1).clamp(1, UDP_SOCKETS_AUTO_MAX)
}

/// A `[dns]` value that cannot be served. The message names the field, and keeps the parse
/// error beneath it if there is one.
#[derive(Debug, thiserror::Error)]
#[error("dns.{field}: {reason}{}", .source.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
pub struct SettingsError {
    pub field: String,
    pub reason: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SettingsError {
    fn new(field: impl Into<String>, reason: impl ToString) -> Self {
        SettingsError {
            field: field.into(),
            reason: reason.to_string(),
            source: None,
        }
    }
}

/// A `[dns.rrl]` error; its field is already named from the config root (`dns.rrl.burst`).
impl From<pkraft_limits::LimitError> for SettingsError {
    fn from(e: pkraft_limits::LimitError) -> Self {
        let field = e.field.strip_prefix("dns.").unwrap_or(&e.field).to_string();
        SettingsError::new(field, e.reason)
    }
}

/// Validated settings: fully qualified names and TTLs in seconds.
#[derive(Debug, Clone)]
pub struct Zones {
    pub origins: Vec<Name>,
    pub nameservers: Vec<Name>,
    /// `None` means `hostmaster.<origin>` for each origin.
    pub soa_rname: Option<Name>,
    pub soa_serial: u32,
    pub negative_ttl_secs: u32,
    pub apex_ttl_secs: u32,
    /// `ttl_min` and `ttl_max`.
    pub ttl: TtlBounds,
    pub apex_a: Vec<Ipv4Addr>,
    pub apex_aaaa: Vec<Ipv6Addr>,
}

impl Settings {
    /// How many UDP sockets to bind: `udp_sockets`, or with 0 one per CPU core but one (at least
    /// 1, at most [`UDP_SOCKETS_AUTO_MAX`]).
    pub fn udp_socket_count(&self) -> usize {
        match self.udp_sockets {
            0 => auto_udp_sockets(std::thread::available_parallelism().map_or(1, usize::from)),
            n => n,
        }
    }

    /// The caps of the DNS-over-TCP listener's connections.
    pub fn tcp_connection_caps(&self) -> pkraft_limits::connections::ConnectionCaps {
        pkraft_limits::connections::ConnectionCaps {
            max_connections: self.tcp_max_connections,
            max_per_client: self.tcp_max_connections_per_client,
            client_prefix: pkraft_limits::ClientPrefix {
                ipv4: 32,
                ipv6: self.tcp_client_ipv6_prefix_len,
            },
            exempt: pkraft_limits::TrustedProxies::default(),
        }
    }

    /// `record_cache_mib` in bytes.
    pub fn record_cache_bytes(&self) -> u64 {
        mib(self.record_cache_mib)
    }

    /// `answer_cache_mib` in bytes.
    pub fn answer_cache_bytes(&self) -> u64 {
        mib(self.answer_cache_mib)
    }

    /// Checks the UDP and TCP listeners' sizes and limits; the error names the field.
    fn check_listener_limits(&self) -> Result<(), SettingsError> {
        if self.udp_sockets > UDP_SOCKETS_MAX {
            return Err(SettingsError::new(
                "udp_sockets",
                format!("must be at most {UDP_SOCKETS_MAX} (0: one per CPU core but one)"),
            ));
        }
        if self.udp_pending_max == 0 || self.udp_pending_max > 1 << 20 {
            return Err(SettingsError::new(
                "udp_pending_max",
                format!("must be 1 to {}, got {}", 1 << 20, self.udp_pending_max),
            ));
        }
        if !(1..=crate::udp_io::BATCH_MAX).contains(&self.udp_batch) {
            return Err(SettingsError::new(
                "udp_batch",
                format!(
                    "must be 1 to {}, got {}",
                    crate::udp_io::BATCH_MAX,
                    self.udp_batch
                ),
            ));
        }
        self.tcp_connection_caps()
            .validate(["tcp_max_connections", "tcp_client_ipv6_prefix_len"])
            .map_err(|(field, reason)| SettingsError::new(field, reason))?;
        if self.tcp_pipeline_max == 0 || self.tcp_pipeline_max > TCP_PIPELINE_MAX {
            return Err(SettingsError::new(
                "tcp_pipeline_max",
                format!(
                    "must be 1 to {TCP_PIPELINE_MAX}, got {}",
                    self.tcp_pipeline_max
                ),
            ));
        }
        if self.tcp_idle_timeout.is_zero() {
            return Err(SettingsError::new(
                "tcp_idle_timeout",
                "must be longer than 0s",
            ));
        }
        if self.udp_payload_max < 512 {
            return Err(SettingsError::new(
                "udp_payload_max",
                format!(
                    "must be at least 512 (RFC 1035's size), got {}",
                    self.udp_payload_max
                ),
            ));
        }
        Ok(())
    }

    /// Checks every name and TTL; the error names the offending field.
    pub fn zones(&self) -> Result<Zones, SettingsError> {
        if self.origins.is_empty() {
            return Err(SettingsError::new(
                "origins",
                "at least one origin is needed",
            ));
        }
        let origins = names("origins", &self.origins)?;
        for (i, origin) in origins.iter().enumerate() {
            if origins[..i].contains(origin) {
                return Err(SettingsError::new(
                    format!("origins[{i}]"),
                    format!("{origin} is listed twice"),
                ));
            }
        }
        self.check_listener_limits()?;
        self.rrl.validate()?;
        if self.max_stale.is_some_and(|max| max.is_zero()) {
            return Err(SettingsError::new(
                "max_stale",
                "must be longer than 0s (leave it unset to never answer SERVFAIL)",
            ));
        }
        let nameservers = names("nameservers", &self.nameservers)?;
        for (i, ns) in nameservers.iter().enumerate() {
            // The apex itself is fine: its A/AAAA come from apex_a/apex_aaaa.
            if let Some(origin) = origins
                .iter()
                .find(|origin| origin.zone_of(ns) && *origin != ns)
            {
                return Err(SettingsError::new(
                    format!("nameservers[{i}]"),
                    format!(
                        "{ns} is inside origin {origin}, where every name is a pkarr key, so \
                         pkraft cannot serve its address; use a name outside the origins"
                    ),
                ));
            }
        }
        let soa_rname = self
            .soa_rname
            .as_deref()
            .map(|name| fqdn("soa_rname", name))
            .transpose()?;
        let ttl = TtlBounds {
            min: ttl_secs("ttl_min", self.ttl_min)?,
            max: ttl_secs("ttl_max", self.ttl_max)?,
        };
        if ttl.min > ttl.max {
            return Err(SettingsError::new(
                "ttl_min",
                format!(
                    "{:?} is larger than dns.ttl_max ({:?})",
                    self.ttl_min, self.ttl_max
                ),
            ));
        }
        Ok(Zones {
            origins,
            nameservers,
            soa_rname,
            soa_serial: self.soa_serial,
            negative_ttl_secs: ttl_secs("negative_ttl", self.negative_ttl)?,
            apex_ttl_secs: ttl_secs("apex_ttl", self.apex_ttl)?,
            ttl,
            apex_a: self.apex_a.clone(),
            apex_aaaa: self.apex_aaaa.clone(),
        })
    }
}

fn mib(mib: u32) -> u64 {
    u64::from(mib) * 1024 * 1024
}

fn names(field: &str, values: &[String]) -> Result<Vec<Name>, SettingsError> {
    values
        .iter()
        .enumerate()
        .map(|(i, value)| fqdn(format!("{field}[{i}]"), value))
        .collect()
}

/// Parses a domain name, the value of `field`, and makes it fully qualified (`pkarr.test` and
/// `pkarr.test.` are the same).
fn fqdn(field: impl Into<String>, text: &str) -> Result<Name, SettingsError> {
    let mut name = Name::from_str(text).map_err(|e| SettingsError {
        field: field.into(),
        reason: format!("{text:?} is not a domain name"),
        source: Some(Box::new(e)),
    })?;
    name.set_fqdn(true);
    Ok(name)
}

/// The TTLs a packet's records are served with (`dns.ttl_min`, `dns.ttl_max`), in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlBounds {
    pub min: u32,
    pub max: u32,
}

impl TtlBounds {
    /// The TTL served for a record signed with `ttl`: one with the top bit set counts as 0
    /// (RFC 2181 §8), then it is held within the bounds.
    pub fn clamp(self, ttl: u32) -> u32 {
        let ttl = if ttl > i32::MAX as u32 { 0 } else { ttl };
        ttl.clamp(self.min, self.max.max(self.min))
    }
}

fn ttl_secs(field: &str, ttl: Duration) -> Result<u32, SettingsError> {
    // RFC 2181 §8: TTLs are at most 2^31 - 1 seconds.
    let secs = ttl.as_secs();
    if secs > i32::MAX as u64 {
        return Err(SettingsError::new(
            field,
            format!("{secs} s exceeds the DNS maximum of 2^31-1 s"),
        ));
    }
    Ok(secs as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_held_within_the_bounds_and_the_top_bit_reads_as_zero() {
        let bounds = TtlBounds {
            min: 30,
            max: 86_400,
        };
        assert_eq!(bounds.clamp(0), 30);
        assert_eq!(bounds.clamp(29), 30);
        assert_eq!(bounds.clamp(300), 300);
        assert_eq!(bounds.clamp(86_401), 86_400);
        assert_eq!(bounds.clamp(u32::MAX), 30);
        assert_eq!(bounds.clamp(1 << 31), 30);
        assert_eq!(bounds.clamp((1 << 31) - 1), 86_400);
        let settings = Settings {
            ttl_min: Duration::from_secs(60),
            ttl_max: Duration::from_secs(59),
            ..Settings::default()
        };
        let error = settings.zones().expect_err("min above max");
        assert_eq!(error.field, "ttl_min", "{error:?}");
    }

    #[test]
    fn default_settings_are_valid() {
        let zones = Settings::default().zones().expect("valid");
        assert_eq!(
            zones.origins,
            vec![Name::from_str("pkarr.test.").expect("name")]
        );
    }

    #[test]
    fn errors_name_the_field() {
        let settings = Settings {
            origins: vec!["ok.test".into(), "bad..name".into()],
            ..Settings::default()
        };
        let err = settings.zones().expect_err("invalid");
        assert_eq!(err.field, "origins[1]");

        let empty = Settings {
            origins: vec![],
            ..Settings::default()
        };
        assert_eq!(empty.zones().expect_err("invalid").field, "origins");

        let twice = Settings {
            origins: vec!["a.test".into(), "A.test.".into()],
            ..Settings::default()
        };
        assert_eq!(twice.zones().expect_err("invalid").field, "origins[1]");

        let never_fresh = Settings {
            max_stale: Some(Duration::ZERO),
            ..Settings::default()
        };
        assert_eq!(never_fresh.zones().expect_err("invalid").field, "max_stale");

        let sockets = Settings {
            udp_sockets: 100_000,
            ..Settings::default()
        };
        assert_eq!(sockets.zones().expect_err("invalid").field, "udp_sockets");
    }

    #[test]
    fn udp_sockets_zero_means_one_per_core_but_one_within_bounds() {
        for (cores, sockets) in [(1, 1), (2, 1), (4, 3), (8, 7), (64, UDP_SOCKETS_AUTO_MAX)] {
            assert_eq!(auto_udp_sockets(cores), sockets, "{cores} cores");
        }
        let one = Settings {
            udp_sockets: 1,
            ..Settings::default()
        };
        assert_eq!(one.udp_socket_count(), 1);
    }
}
