//! The tables of the state file and the keys of `meta` (the crate docs have the layout).

use pkraft_types::KeyBytes;
use redb::TableDefinition;

pub(crate) const PACKETS: TableDefinition<&KeyBytes, &[u8]> = TableDefinition::new("packets");
pub(crate) const ANSWERS: TableDefinition<&KeyBytes, &[u8]> = TableDefinition::new("answers");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const EXPIRY: TableDefinition<&ExpiryKey, ()> = TableDefinition::new("expiry");
pub(crate) const REMOVED_NODES: TableDefinition<u64, ()> = TableDefinition::new("removed_nodes");

/// `signed timestamp (8, big-endian) ‖ public key (32)`: sorts by timestamp.
pub(crate) type ExpiryKey = [u8; 40];

pub(crate) fn expiry_key(timestamp_micros: u64, key: &KeyBytes) -> ExpiryKey {
    let mut row = [0u8; 40];
    row[..8].copy_from_slice(&timestamp_micros.to_be_bytes());
    row[8..].copy_from_slice(key);
    row
}

pub(crate) const META_SCHEMA_VERSION: &str = "schema_version";
pub(crate) const META_APPLIED_STATE: &str = "applied_state";
/// The largest leader stamp (`Command::Publish::leader_time_micros`) applied, u64 big-endian:
/// the log's time, one of the fences of cluster time (pkraft-raft's `cluster_clock`). Absent
/// before the first publish with a stamp (a stamp of 0 says the leader knew no agreed time, and
/// is not recorded); a snapshot install leaves it as it was (the install does not replace
/// `meta`'s other keys); builds that do not know it ignore it.
pub(crate) const META_LOG_TIME: &str = "log_time_micros";

/// The signed timestamp an `expiry` row sorts by.
pub(crate) fn timestamp_of(row: &ExpiryKey) -> u64 {
    let mut be = [0u8; 8];
    be.copy_from_slice(&row[..8]);
    u64::from_be_bytes(be)
}

/// The keys after `after` in key order (every key when `None`): one page of a sweep.
pub(crate) fn keys_after(
    after: Option<&KeyBytes>,
) -> (std::ops::Bound<&KeyBytes>, std::ops::Bound<&KeyBytes>) {
    match after {
        Some(after) => (std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded),
        None => (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded),
    }
}
