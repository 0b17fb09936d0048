//! Time to the first accepted write: PUT one packet that is not stored yet until a node answers
//! 204, for measuring failover (the harness SIGKILLs the leader, then runs this against a
//! survivor). Every attempt sends the same packet, so the first 204 means it was committed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use serde::Serialize;

use crate::dataset::DataSet;
use crate::http_load::{Job, client, send};

/// Pause after a refused attempt (503 while no leader is elected, or a refused connection), so
/// the probe measures the election rather than loading the node.
const RETRY_PAUSE: Duration = Duration::from_millis(10);

#[derive(Debug, Serialize)]
pub struct AcceptReport {
    pub op: &'static str,
    /// From `since` (or else the start of the first attempt) to the end of the accepted one.
    pub accepted_ms: f64,
    pub attempts: u64,
    /// Status codes of the attempts before the accepted one ("error": no HTTP answer).
    pub refused: BTreeMap<String, u64>,
}

pub struct AcceptSpec<'a> {
    pub data: &'a DataSet,
    pub version: usize,
    pub key: usize,
    pub url: &'a str,
    pub timeout: Duration,
    /// When the event being timed happened (the harness's kill), in ms since the Unix epoch; so
    /// that this process's own start and data loading count too.
    pub since_unix_ms: Option<u64>,
}

pub async fn run(spec: AcceptSpec<'_>) -> anyhow::Result<AcceptReport> {
    spec.data.check_version(spec.version)?;
    let key = spec.data.keys.get(spec.key).ok_or_else(|| {
        anyhow::anyhow!(
            "--key {} is past the {} keys of the data set",
            spec.key,
            spec.data.keys.len()
        )
    })?;
    let job = Job {
        method: Method::PUT,
        path: format!("/{}", key.z32),
        body: Bytes::from(key.versions[spec.version].payload.clone()),
        forwarded_for: None,
    };
    let base = spec.url.trim_end_matches('/');
    let client = client(None);
    let started = Instant::now();
    let before_start = match spec.since_unix_ms {
        Some(since) => Duration::from_millis(unix_ms_now()?.saturating_sub(since)),
        None => Duration::ZERO,
    };
    let mut refused = BTreeMap::new();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let outcome = send(&client, base, &job).await;
        match outcome.status {
            Some(204) => {
                return Ok(AcceptReport {
                    op: "accept",
                    accepted_ms: (before_start + started.elapsed()).as_secs_f64() * 1000.0,
                    attempts,
                    refused,
                });
            }
            Some(status) => *refused.entry(status.to_string()).or_insert(0) += 1,
            None => *refused.entry("error".to_string()).or_insert(0) += 1,
        }
        anyhow::ensure!(
            started.elapsed() < spec.timeout,
            "no PUT accepted by {} within {:?} ({attempts} attempts: {refused:?})",
            spec.url,
            spec.timeout
        );
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

pub(crate) fn unix_ms_now() -> anyhow::Result<u64> {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    Ok(u64::try_from(since_epoch.as_millis())?)
}
