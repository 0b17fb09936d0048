//! The file-descriptor budget (docs/OPERATIONS.md, "Limits and abuse").
//!
//! Every connection a client opens is a descriptor of this process, and so is every file the
//! node opens for itself: log segments, `state.redb`, snapshot files, a directory to fsync, the
//! peer client's connections, the DHT's socket. When clients held them all, the next snapshot
//! build failed with "Too many open files", openraft stopped on that storage error and the node
//! exited (issue 34). So the descriptors are split before anything opens:
//!
//! - at start the soft `RLIMIT_NOFILE` is raised to the hard limit (what systemd's
//!   `LimitNOFILE` sets), which is the budget;
//! - every listener's connection cap comes out of it: `http.max_connections` (twice with
//!   `[https]`: each public listener has its own), `dns.tcp_max_connections`,
//!   `cluster.peer_max_connections` and `admin.max_connections`;
//! - `limits.reserved_descriptors` are left for the node itself (the arithmetic is on
//!   [`LimitsSettings::reserved_descriptors`]);
//! - a config whose caps and reserve do not fit the budget is refused at start, naming the
//!   fields. Since a listener never holds more connections than its cap (new ones wait in the
//!   kernel's backlog, which costs no descriptor here), clients can never take the reserve.

use std::fmt::Write as _;

use serde::Deserialize;

use crate::Config;

/// `[limits]`: limits of the process as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSettings {
    /// File descriptors kept out of every listener's reach, for the node itself. What it needs
    /// at most, counted for a 5-node cluster: 3 for stdio; about 10 for the runtime (epoll,
    /// event and timer descriptors, the signal pipe); one listening socket per listener (HTTP,
    /// HTTPS, admin, peer, DNS TCP) and per DNS UDP socket (at most 16), 21 in all; storage:
    /// `meta.redb` and `state.redb`, the current log segment and the segments readers have open
    /// (one per follower being caught up), a snapshot being built, one being received and one
    /// being sent per follower, a backup, and a directory being fsynced, about 20; the peer
    /// client's connections, a few per peer (the replication stream, forwarded publishes,
    /// status probes), about 40 for 4 peers; the DHT's UDP socket. That is about 100; the
    /// default leaves as much again for learners and spare. Default 256.
    pub reserved_descriptors: u64,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        LimitsSettings {
            reserved_descriptors: 256,
        }
    }
}

/// Fewer reserved descriptors than this cannot even open the stores and listeners.
const RESERVED_DESCRIPTORS_MIN: u64 = 64;

/// One part of the budget: the config field that sets it and how many descriptors it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub field: &'static str,
    pub descriptors: u64,
}

/// How a config splits the descriptors; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// What the process may open (the soft `RLIMIT_NOFILE` after raising it).
    pub limit: u64,
    /// The listeners' caps, then the reserve.
    pub shares: Vec<Share>,
}

impl Budget {
    /// The descriptors `config` needs at most.
    pub fn needed(config: &Config) -> Vec<Share> {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let mut shares = vec![Share {
            field: "http.max_connections",
            descriptors: count(config.http.max_connections),
        }];
        if config.https.is_some() {
            shares.push(Share {
                field: "http.max_connections ([https])",
                descriptors: count(config.http.max_connections),
            });
        }
        shares.extend([
            Share {
                field: "dns.tcp_max_connections",
                descriptors: count(config.dns.tcp_max_connections),
            },
            Share {
                field: "cluster.peer_max_connections",
                descriptors: count(config.cluster.peer_max_connections),
            },
            Share {
                field: "admin.max_connections",
                descriptors: count(config.admin.max_connections),
            },
            Share {
                field: "limits.reserved_descriptors",
                descriptors: config.limits.reserved_descriptors,
            },
        ]);
        shares
    }

    /// The budget of `config` within `limit` descriptors, or why it does not fit.
    pub fn check(config: &Config, limit: u64) -> anyhow::Result<Budget> {
        let shares = Budget::needed(config);
        let total = shares
            .iter()
            .fold(0_u64, |sum, share| sum.saturating_add(share.descriptors));
        if total > limit {
            let mut parts = String::new();
            for share in &shares {
                let _ = write!(parts, "{} {} + ", share.field, share.descriptors);
            }
            anyhow::bail!(
                "the connection caps and the reserve need {total} file descriptors ({}), but \
                 this process may open {limit} (RLIMIT_NOFILE, its hard limit): raise the limit \
                 (systemd: LimitNOFILE) or lower those fields",
                parts.trim_end_matches(" + ")
            );
        }
        Ok(Budget { limit, shares })
    }

    /// The descriptors no share claims.
    pub fn spare(&self) -> u64 {
        let claimed = self
            .shares
            .iter()
            .fold(0_u64, |sum, share| sum.saturating_add(share.descriptors));
        self.limit.saturating_sub(claimed)
    }
}

impl LimitsSettings {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.reserved_descriptors < RESERVED_DESCRIPTORS_MIN {
            anyhow::bail!(
                "limits.reserved_descriptors: must be at least {RESERVED_DESCRIPTORS_MIN} (the \
                 stores, listeners and peer connections need them), got {}",
                self.reserved_descriptors
            );
        }
        Ok(())
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the new soft limit: the most
/// descriptors the process may have open.
pub fn raise_open_file_limit() -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| anyhow::anyhow!("cannot read RLIMIT_NOFILE: {e}"))?;
    if soft >= hard {
        return Ok(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => Ok(hard),
        Err(e) => {
            // An unlimited hard limit cannot be the soft one (Linux caps it at fs.nr_open): the
            // soft limit stays, and the budget is checked against it.
            tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit to the hard limit");
            Ok(soft)
        }
    }
}

/// The hard `RLIMIT_NOFILE`: what [`raise_open_file_limit`] would give a node started now
/// (`pkraft check-config`).
pub fn hard_open_file_limit() -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| anyhow::anyhow!("cannot read RLIMIT_NOFILE: {e}"))?;
    Ok(hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_need_their_caps_and_the_reserve() {
        let config = Config::default();
        let needed: u64 = Budget::needed(&config)
            .iter()
            .map(|share| share.descriptors)
            .sum();
        assert_eq!(needed, 4_096 + 1_024 + 512 + 64 + 256);
        let budget = Budget::check(&config, 20_000).expect("fits");
        assert_eq!(budget.spare(), 20_000 - needed);
    }

    #[test]
    fn caps_that_do_not_fit_are_refused_naming_every_field() {
        let config = Config {
            https: Some(crate::https::HttpsSettings {
                listen: "127.0.0.1:8443".parse().expect("addr"),
                cert: Some("cert.pem".into()),
                key: Some("key.pem".into()),
                acme: None,
                reload_interval: std::time::Duration::from_secs(10),
            }),
            ..Config::default()
        };
        let err = Budget::check(&config, 4_096).expect_err("does not fit");
        let text = format!("{err:#}");
        for field in [
            "http.max_connections 4096",
            "http.max_connections ([https]) 4096",
            "dns.tcp_max_connections 1024",
            "cluster.peer_max_connections 512",
            "admin.max_connections 64",
            "limits.reserved_descriptors 256",
            "need 10048",
            "may open 4096",
        ] {
            assert!(text.contains(field), "{field:?} not in {text}");
        }
    }

    #[test]
    fn the_reserve_has_a_floor() {
        let settings = LimitsSettings {
            reserved_descriptors: 10,
        };
        let err = settings.validate().expect_err("too few");
        assert!(format!("{err}").contains("limits.reserved_descriptors"));
    }
}
