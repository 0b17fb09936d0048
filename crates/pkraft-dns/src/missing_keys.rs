//! [`MissingKeys`]: where the zones look up a key the local replica does not hold.
//!
//! The DNS frontend answers from the local replica. With `[dht]` resolving, a key it does not
//! hold is asked of the Mainline DHT; that resolver lives with the DHT bridge, which depends on
//! the consensus layer. The trait keeps that dependency out of this crate: the daemon hands the
//! zones its DHT resolver behind it, and pkraft-dns depends on the store, the types and the
//! limits only (ARCHITECTURE.md, "Crates").

use async_trait::async_trait;
use pkraft_types::{KeyBytes, Payload};

/// Looks up keys the local replica does not hold. Every call must end within a bounded time
/// (the DHT resolver's `dht.resolve_timeout`): a DNS query waits for it.
#[async_trait]
pub trait MissingKeys: Send + Sync {
    /// The newest valid packet found for `key`, or `None` (not found, not in time, or shed).
    async fn resolve(&self, key: &KeyBytes) -> Option<Payload>;
}

#[cfg(test)]
mod tests {
    /// ARCHITECTURE.md: the DNS frontend reads the local store and links neither the consensus
    /// layer nor the DHT bridge. A new pkraft dependency here must be a decision, not a slip.
    #[test]
    fn the_dns_crate_depends_on_store_types_limits_and_tasks_only() {
        let ours = pkraft_testkit::manifest::pkraft_dependencies(include_str!("../Cargo.toml"));
        assert_eq!(
            ours,
            [
                "pkraft-limits",
                "pkraft-state",
                "pkraft-tasks",
                "pkraft-types"
            ]
        );
    }
}
