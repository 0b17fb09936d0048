//! The tables of the state file and the keys of `meta` (the crate docs have the layout; the
//! expiry index's are in `expiry_index.rs`).

use pkraft_types::KeyBytes;
use redb::TableDefinition;

pub(crate) const PACKETS: TableDefinition<&KeyBytes, &[u8]> = TableDefinition::new("packets");
pub(crate) const ANSWERS: TableDefinition<&KeyBytes, &[u8]> = TableDefinition::new("answers");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const REMOVED_NODES: TableDefinition<u64, ()> = TableDefinition::new("removed_nodes");

pub(crate) const META_SCHEMA_VERSION: &str = "schema_version";
pub(crate) const META_APPLIED_STATE: &str = "applied_state";
/// The largest leader stamp (`Command::Publish::leader_time_micros`) applied, u64 big-endian:
/// the log's time, one of the fences of cluster time (pkraft-raft's `cluster_clock`). Absent
/// before the first publish with a stamp (a stamp of 0 says the leader knew no agreed time, and
/// is not recorded); a snapshot install leaves it as it was (the install does not replace
/// `meta`'s other keys); builds that do not know it ignore it.
pub(crate) const META_LOG_TIME: &str = "log_time_micros";

/// The keys after `after` in key order (every key when `None`): one page of a sweep.
pub(crate) fn keys_after(
    after: Option<&KeyBytes>,
) -> (std::ops::Bound<&KeyBytes>, std::ops::Bound<&KeyBytes>) {
    match after {
        Some(after) => (std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded),
        None => (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded),
    }
}
