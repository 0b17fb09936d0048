//! The `[raft]` config section.

use std::time::Duration;

use serde::Deserialize;

/// Consensus timing and log retention.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// How often the leader sends heartbeats. Default 200 ms: fsync p99 on these machines is
    /// 9–26 ms, and heartbeats must arrive well inside the election timeout.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Lower bound of the randomised election timeout. Default 1 s; openraft's 150 ms default
    /// causes spurious elections on real disks.
    #[serde(with = "humantime_serde")]
    pub election_timeout_min: Duration,
    /// Upper bound of the randomised election timeout. Default 2 s.
    #[serde(with = "humantime_serde")]
    pub election_timeout_max: Duration,
    /// Build a snapshot after this many log entries since the last one, so the log stays bounded.
    /// Default 10 000.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log after a snapshot, so a briefly lagging follower catches up from the
    /// log instead of a full snapshot. Default 1 000.
    pub entries_kept_after_snapshot: u64,
    /// How long a PUT waits for its packet to commit before answering 503. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Most packets in one log entry (group commit). Default 512: about 130 KiB of iroh-sized
    /// packets, one redb transaction that commits in a few milliseconds.
    pub publish_batch_max: usize,
    /// Most publishes waiting to be batched; more are answered 503 at once instead of queueing
    /// without bound. Default 4096: several batches' worth, a couple of seconds at full load.
    pub publish_queue_max: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat_interval: Duration::from_millis(200),
            election_timeout_min: Duration::from_secs(1),
            election_timeout_max: Duration::from_secs(2),
            snapshot_after_entries: 10_000,
            entries_kept_after_snapshot: 1_000,
            publish_timeout: Duration::from_secs(5),
            publish_batch_max: 512,
            publish_queue_max: 4096,
        }
    }
}

/// A `[raft]` value openraft refuses.
#[derive(Debug, thiserror::Error)]
#[error("raft settings: {0}")]
pub struct SettingsError(String);

impl Settings {
    /// The openraft config these settings stand for, validated by openraft (for example, the
    /// election timeout must exceed the heartbeat interval).
    pub fn openraft_config(&self) -> Result<openraft::Config, SettingsError> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        openraft::Config {
            cluster_name: "pkraft".to_string(),
            heartbeat_interval: millis(self.heartbeat_interval),
            election_timeout_min: millis(self.election_timeout_min),
            election_timeout_max: millis(self.election_timeout_max),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_after_entries),
            max_in_snapshot_log_to_keep: self.entries_kept_after_snapshot,
            ..Default::default()
        }
        .validate()
        .map_err(|e| SettingsError(e.to_string()))
        .and_then(|config| {
            if self.publish_batch_max == 0 || self.publish_queue_max == 0 {
                return Err(SettingsError(
                    "publish_batch_max and publish_queue_max must be at least 1".to_string(),
                ));
            }
            Ok(config)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = Settings::default().openraft_config().expect("valid");
        assert_eq!(config.heartbeat_interval, 200);
        assert_eq!(config.election_timeout_min, 1000);
    }

    #[test]
    fn election_timeout_below_heartbeat_is_refused() {
        let settings = Settings {
            election_timeout_min: Duration::from_millis(100),
            election_timeout_max: Duration::from_millis(150),
            ..Settings::default()
        };
        assert!(settings.openraft_config().is_err());
    }
}
