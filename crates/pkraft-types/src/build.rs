//! Which build of pkraft a node runs: its release version and the commit it was built from.
//! `pkraft --version` prints it, each member reports it in `/cluster/status`, and the data dir
//! records the builds that wrote it (docs/OPERATIONS.md, "Upgrading").

use serde::{Deserialize, Serialize};

/// A build: its version (semantic, from the workspace's `Cargo.toml`) and its commit (the
/// first 12 hex digits, or `unknown` for a build made outside a git clone without
/// `PKRAFT_BUILD_COMMIT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildInfo {
    pub version: String,
    pub commit: String,
}

impl BuildInfo {
    /// The commit of a build that does not know its own.
    pub const UNKNOWN_COMMIT: &'static str = "unknown";
}

impl std::fmt::Display for BuildInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.version, self.commit)
    }
}
