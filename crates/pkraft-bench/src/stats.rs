//! Latency and status summaries, printed as one JSON object per run.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// One measured run.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub op: String,
    pub concurrency: usize,
    pub requests: usize,
    pub seconds: f64,
    /// Completed requests (any status) per second.
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Response status → count.
    pub status: BTreeMap<u16, u64>,
    /// Requests that got no response (connection error or timeout).
    pub errors: u64,
    /// Following `Retry-After` (`put --follow-retry-after`): the 429s waited out, and the
    /// longest wait one named, in seconds. `status` counts each job's last answer, and the
    /// latencies are those of the last attempts (the waits are not in them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusals_followed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub longest_retry_after_seconds: Option<u64>,
}

impl Summary {
    pub fn new(
        op: &str,
        concurrency: usize,
        elapsed: Duration,
        mut latencies: Vec<Duration>,
        status: BTreeMap<u16, u64>,
        errors: u64,
    ) -> Summary {
        latencies.sort_unstable();
        let requests = latencies.len();
        let seconds = elapsed.as_secs_f64();
        Summary {
            op: op.to_string(),
            concurrency,
            requests,
            seconds,
            rps: if seconds > 0.0 {
                requests as f64 / seconds
            } else {
                0.0
            },
            p50_ms: millis(percentile(&latencies, 50.0)),
            p90_ms: millis(percentile(&latencies, 90.0)),
            p99_ms: millis(percentile(&latencies, 99.0)),
            max_ms: millis(latencies.last().copied().unwrap_or_default()),
            status,
            errors,
            refusals_followed: None,
            longest_retry_after_seconds: None,
        }
    }
}

/// Nearest-rank percentile of sorted samples (zero for no samples).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&samples, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&samples, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
        assert_eq!(percentile(&samples[..1], 99.0), Duration::from_millis(1));
    }
}
