//! `pkraft cluster …` and the transfer of `pkraft backup`: the command-line client of a node's
//! admin API.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request};
use pkraft_raft::ClusterStatus;

use super::http::{exchange, exchange_streaming};

/// A membership change can wait for a new node to catch up (up to 30 s) and for the leader.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The node answers a backup request once the first chunk is read from its replica.
const BACKUP_HEAD_TIMEOUT: Duration = Duration::from_secs(60);
/// A backup that sends nothing for this long is given up: no bound on the whole transfer,
/// which grows with the replica.
const BACKUP_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Status and membership answers are small JSON; error bodies too.
const ANSWER_MAX: usize = 4 * 1024 * 1024;
const ERROR_BODY_MAX: usize = 64 * 1024;

/// `path` on the admin API at `admin`: `host:port` (plain HTTP, as the admin listener speaks),
/// or a base URL with its scheme, for an admin API behind a TLS proxy (`https://host:port`).
fn admin_url(admin: &str, path: &str) -> String {
    if admin.contains("://") {
        format!("{}{path}", admin.trim_end_matches('/'))
    } else {
        format!("http://{admin}{path}")
    }
}

/// The admin endpoint of one node.
pub struct AdminClient {
    /// `host:port` of the admin listener, or a base URL (`https://host:port`).
    pub admin: String,
    pub token: Option<String>,
}

impl AdminClient {
    /// Sends a request and returns the JSON body; a non-2xx answer is an error carrying the
    /// node's message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let bytes = self.send(method, path, body).await?;
        Ok(serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::json!({ "text": String::from_utf8_lossy(&bytes) })))
    }

    /// Streams a backup file of the node's replica (`POST /backup`) into `out`, calling
    /// `progress` with the bytes received so far after each chunk. Returns the bytes written.
    pub async fn backup_into(
        &self,
        out: &mut (impl std::io::Write + Send),
        mut progress: impl FnMut(u64),
    ) -> anyhow::Result<u64> {
        let request = self
            .request(Method::POST, "/backup")
            .body(Full::new(Bytes::new()))?;
        let response = exchange_streaming(request, BACKUP_HEAD_TIMEOUT)
            .await
            .with_context(|| format!("the admin API at {}", self.admin))?;
        let (parts, mut body) = response.into_parts();
        if !parts.status.is_success() {
            let answer = tokio::time::timeout(
                REQUEST_TIMEOUT,
                http_body_util::Limited::new(body, ERROR_BODY_MAX).collect(),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
            anyhow::bail!(
                "{} answered {}: {}",
                self.admin,
                parts.status,
                error_message(&answer)
            );
        }
        let mut received = 0u64;
        loop {
            let frame = tokio::time::timeout(BACKUP_STALL_TIMEOUT, body.frame())
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "{}: no backup data for {BACKUP_STALL_TIMEOUT:?} after {received} bytes",
                        self.admin
                    )
                })?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| {
                anyhow::anyhow!(
                    "{}: the backup broke off after {received} bytes: {e}",
                    self.admin
                )
            })?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data)?;
                received += data.len() as u64;
                progress(received);
            }
        }
        Ok(received)
    }

    pub(super) fn request(&self, method: Method, path: &str) -> hyper::http::request::Builder {
        let mut request = Request::builder()
            .method(method)
            .uri(admin_url(&self.admin, path));
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        request
    }

    /// Sends a request and returns the body of a 2xx answer; anything else is an error carrying
    /// the node's message.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<Bytes> {
        let mut request = self.request(method, path);
        let body = match body {
            Some(json) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(&json)?)
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(body))?;
        let answer = exchange(request, REQUEST_TIMEOUT, ANSWER_MAX)
            .await
            .with_context(|| format!("the admin API at {}", self.admin))?;
        if !answer.status.is_success() {
            anyhow::bail!(
                "{} answered {}: {}",
                self.admin,
                answer.status,
                error_message(&answer.body)
            );
        }
        Ok(answer.body)
    }

    pub async fn status(&self) -> anyhow::Result<ClusterStatus> {
        let json = self.call(Method::GET, "/cluster/status", None).await?;
        serde_json::from_value(json).context("unexpected status answer")
    }
}

/// The `error` of a JSON error body, or the body as text.
pub(super) fn error_message(body: &[u8]) -> String {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    json.get("error").and_then(|e| e.as_str()).map_or_else(
        || String::from_utf8_lossy(body).into_owned(),
        str::to_string,
    )
}

/// The status as a table for people.
pub fn format_status(status: &ClusterStatus) -> String {
    let node = &status.node;
    let leader = node
        .leader
        .map_or_else(|| "none".to_string(), |id| id.to_string());
    let membership = &status.membership;
    let change = if membership.joint {
        "  voter change in progress"
    } else {
        ""
    };
    let mut out = format!(
        "leader: {leader}  term: {}  (as seen by node {}, {})\nmembership: log index {}{change}\n",
        node.term,
        node.id,
        node.role,
        opt(membership.log_index),
    );
    out.push_str(&format!(
        "{:<6} {:<24} {:<13} {:<6} {:>10} {:>10} {:>8} {:>10} {:<4} {:<10} {}\n",
        "ID",
        "ADDR",
        "ROLE",
        "VOTER",
        "APPLIED",
        "LAST LOG",
        "LAG",
        "PACKETS",
        "DISK",
        "CLOCK",
        "BUILD"
    ));
    for member in &status.members {
        let build = member
            .status
            .as_ref()
            .map_or_else(|| "-".to_string(), |s| build_cell(s.build.as_ref()));
        let (role, applied, last_log, packets, disk, clock) = match &member.status {
            Some(s) => (
                s.role.clone(),
                opt(s.applied_index),
                opt(s.last_log_index),
                opt(s.packets),
                // Below raft.min_free_disk_mib: it takes no writes.
                if s.low_on_disk { "low" } else { "ok" },
                clock_cell(s.clock.as_ref()),
            ),
            None => (
                "unreachable".to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-",
                "-".into(),
            ),
        };
        out.push_str(&format!(
            "{:<6} {:<24} {:<13} {:<6} {:>10} {:>10} {:>8} {:>10} {:<4} {:<10} {}\n",
            member.id,
            member.addr,
            role,
            if member.voter { "yes" } else { "no" },
            applied,
            last_log,
            opt(member.lag_entries),
            packets,
            disk,
            clock,
            build,
        ));
        if let Some(error) = &member.error {
            out.push_str(&format!("       {error}\n"));
        }
    }
    out
}

/// A member's clock for people: `ok`, `off +8d 0h` (its offset from the voters' median when
/// beyond `raft.max_clock_offset`), `held` (the log holds cluster time back), `unknown` (no
/// majority of voters' clocks), `-` (an older build).
fn clock_cell(clock: Option<&pkraft_raft::ClockReport>) -> String {
    use pkraft_raft::ClockState;
    let Some(clock) = clock else {
        return "-".to_string();
    };
    match clock.state {
        ClockState::Synchronized => "ok".to_string(),
        ClockState::HeldByLog => "held".to_string(),
        ClockState::Unknown => "unknown".to_string(),
        ClockState::Offset => {
            let ms = clock.offset_ms.unwrap_or_default();
            let sign = if ms < 0 { '-' } else { '+' };
            let secs = ms.unsigned_abs() / 1000;
            if secs >= 86_400 {
                format!("off {sign}{}d{}h", secs / 86_400, secs % 86_400 / 3600)
            } else {
                format!("off {sign}{secs}s")
            }
        }
    }
}

/// A member's build for people: `0.2.0 (0123456789ab)`, or `before 0.2.0` (a development
/// build that does not report it).
fn build_cell(build: Option<&pkraft_types::BuildInfo>) -> String {
    build.map_or_else(|| "before 0.2.0".to_string(), ToString::to_string)
}

fn opt(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// A change `pkraft cluster` asks a node's admin API for.
#[derive(Debug)]
pub enum ClusterChange {
    Init,
    AddLearner { node_id: u64, addr: String },
    Promote { node_id: u64 },
    Remove { node_id: u64 },
}

/// `pkraft cluster status`: a table, or JSON.
pub async fn print_status(client: &AdminClient, json: bool) -> anyhow::Result<()> {
    let status = client.status().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", format_status(&status));
    }
    Ok(())
}

/// `pkraft cluster init|add-learner|promote|remove`: prints `ok` once the node did it.
pub async fn change(client: &AdminClient, change: ClusterChange) -> anyhow::Result<()> {
    use serde_json::json;
    let (path, body) = match change {
        ClusterChange::Init => ("/cluster/init", json!({})),
        ClusterChange::AddLearner { node_id, addr } => (
            "/cluster/add-learner",
            json!({ "node_id": node_id, "addr": addr }),
        ),
        ClusterChange::Promote { node_id } => ("/cluster/promote", json!({ "node_id": node_id })),
        ClusterChange::Remove { node_id } => ("/cluster/remove", json!({ "node_id": node_id })),
    };
    client.call(Method::POST, path, Some(body)).await?;
    println!("ok");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::admin_url;

    /// `--admin` is `host:port` (plain HTTP) or a base URL with its scheme.
    #[test]
    fn admin_addresses_and_urls() {
        assert_eq!(
            admin_url("127.0.0.1:7401", "/cluster/status"),
            "http://127.0.0.1:7401/cluster/status"
        );
        assert_eq!(
            admin_url("https://admin.example:8443/", "/backup"),
            "https://admin.example:8443/backup"
        );
    }
}
