//! The command-line clients: everything `pkraft` does besides running a node.
//!
//! - [`pkarr_client`]: `pkraft keygen`, `publish` and `resolve`, a small pkarr client.
//! - [`admin`]: `pkraft cluster …` and `pkraft backup` through a node's admin API.
//! - [`data`]: `pkraft backup`, `restore` and `verify`: files, progress and reports.
//! - [`import`]: `pkraft import`, from an iroh-dns-server store into the cluster.
//! - [`http`]: the one HTTP exchange the clients make.

pub mod admin;
pub mod data;
pub mod http;
pub mod import;
pub mod pkarr_client;

use std::path::PathBuf;

use anyhow::Context;

/// The admin token: `--token-file`, else `PKRAFT_ADMIN_TOKEN`.
pub fn read_token(token_file: Option<PathBuf>) -> anyhow::Result<Option<String>> {
    Ok(match token_file {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .with_context(|| format!("--token-file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var(crate::config::ADMIN_TOKEN_ENV).ok(),
    })
}
