//! `pkraft cluster …`: the command-line client of a node's admin API.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request};
use pkraft_raft::ClusterStatus;

use crate::http_client::exchange;

/// A membership change can wait for a new node to catch up (up to 30 s) and for the leader.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A backup reads and sends the whole replica (about a minute per GiB on a small machine).
const BACKUP_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The admin endpoint of one node.
pub struct AdminClient {
    /// `host:port` of the admin listener.
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
        let bytes = self.send(method, path, body, REQUEST_TIMEOUT).await?;
        Ok(serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::json!({ "text": String::from_utf8_lossy(&bytes) })))
    }

    /// A backup file of the node's replica (`POST /backup`).
    pub async fn backup(&self) -> anyhow::Result<Bytes> {
        self.send(Method::POST, "/backup", None, BACKUP_TIMEOUT)
            .await
    }

    /// Sends a request and returns the body of a 2xx answer; anything else is an error carrying
    /// the node's message.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        timeout: Duration,
    ) -> anyhow::Result<Bytes> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.admin));
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(json) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(&json)?)
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(body))?;
        // No size bound: a backup is the whole replica.
        let answer = exchange(request, timeout, usize::MAX)
            .await
            .with_context(|| format!("the admin API at {}", self.admin))?;
        if !answer.status.is_success() {
            let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
            let message = json.get("error").and_then(|e| e.as_str()).map_or_else(
                || String::from_utf8_lossy(&answer.body).into_owned(),
                str::to_string,
            );
            anyhow::bail!("{} answered {}: {message}", self.admin, answer.status);
        }
        Ok(answer.body)
    }

    pub async fn status(&self) -> anyhow::Result<ClusterStatus> {
        let json = self.call(Method::GET, "/cluster/status", None).await?;
        serde_json::from_value(json).context("unexpected status answer")
    }
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
        "{:<6} {:<24} {:<13} {:<6} {:>10} {:>10} {:>8} {:>10}\n",
        "ID", "ADDR", "ROLE", "VOTER", "APPLIED", "LAST LOG", "LAG", "PACKETS"
    ));
    for member in &status.members {
        let (role, applied, last_log, packets) = match &member.status {
            Some(s) => (
                s.role.clone(),
                opt(s.applied_index),
                opt(s.last_log_index),
                opt(s.packets),
            ),
            None => (
                "unreachable".to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
            ),
        };
        out.push_str(&format!(
            "{:<6} {:<24} {:<13} {:<6} {:>10} {:>10} {:>8} {:>10}\n",
            member.id,
            member.addr,
            role,
            if member.voter { "yes" } else { "no" },
            applied,
            last_log,
            opt(member.lag_entries),
            packets,
        ));
        if let Some(error) = &member.error {
            out.push_str(&format!("       {error}\n"));
        }
    }
    out
}

fn opt(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}
