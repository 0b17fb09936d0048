//! `POST /import` on the admin API: packets taken from another pkarr store (`pkraft import`
//! reads iroh-dns-server's), each checked as a relay PUT is and published through the cluster
//! (`Writes::publish`), so that every replica gets them and the ordering rule decides as for any
//! PUT. Running an import twice changes nothing the second time.
//!
//! The body is a batch of records, each `key (32 bytes) ‖ payload length (u16, big-endian) ‖
//! relay payload`, at most [`IMPORT_BATCH_MAX`] of them. The answer is an [`ImportReport`]: what
//! became of each record, and the records to send again because the cluster could not take them
//! in time (no leader, a full queue); sending those again is safe.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, body::Bytes};
use pkraft_raft::{ClusterTime, Node, PublishError, Published, SignatureTime};
use pkraft_types::payload::PAYLOAD_LEN_MAX;
use pkraft_types::{KeyBytes, PublishOutcome, VerifiedPacket, encode_z32_key};
use serde::{Deserialize, Serialize};

/// Most records in one `POST /import`: the most the write path batches into one log entry
/// (`raft.publish_batch_max`'s default).
pub const IMPORT_BATCH_MAX: usize = 512;
/// `POST /import` requests a node works on at once; more are answered 429 (the CLI sends them
/// again). With [`IMPORT_BATCH_MAX`], imports queue at most 2,048 packets: half of the default
/// publish queue (`raft.publish_queue_max`, 4,096), so the relay's PUTs keep the other half.
pub const IMPORTS_AT_ONCE: usize = 4;
/// Bytes before each record's payload: the key and the payload's length.
const RECORD_HEADER_LEN: usize = 32 + 2;
/// Largest body of `POST /import`: a full batch of the largest payloads.
pub const IMPORT_BODY_MAX: usize = IMPORT_BATCH_MAX * (RECORD_HEADER_LEN + PAYLOAD_LEN_MAX);

/// The checks an import applies besides the packet's own (those of a PUT).
#[derive(Debug, Clone, Copy)]
pub struct ImportRules {
    /// `raft.record_max_age`: an older packet would be deleted at the next expiry round, so it
    /// is not imported (zero keeps everything).
    pub record_max_age: Duration,
    /// `http.max_future_skew`: a packet signed further ahead is refused, as a PUT is.
    pub max_future_skew: Duration,
}

/// What became of one batch's records. The CLI adds them up over the whole import.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    /// Published: no packet was stored for the key, or an older one.
    pub imported: u64,
    /// The same packet was stored already (an import run before, or the endpoint published it).
    pub unchanged: u64,
    /// A newer packet was stored already (the endpoint republished since): kept.
    pub newer_stored: u64,
    /// Signed longer than `raft.record_max_age` ago: not imported.
    pub expired: u64,
    /// Records that failed a check, or that are new keys the cluster has no room for (at its
    /// cap on stored packets, or a disk below the new-key reserve), with the reason.
    pub invalid: Vec<InvalidRecord>,
    /// Indices (in the batch) of records the cluster could not take now; send them again.
    pub retry: Vec<u32>,
    /// Why the first of them was not taken (no leader, not committed in time, queue full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_reason: Option<String>,
}

impl ImportReport {
    /// Records this report gives an outcome for (all but those to send again).
    pub fn answered(&self) -> u64 {
        self.imported
            + self.unchanged
            + self.newer_stored
            + self.expired
            + self.invalid.len() as u64
    }

    /// Adds `other`'s outcomes to these (not its records to send again: those are the caller's).
    pub fn add(&mut self, other: ImportReport) {
        self.imported += other.imported;
        self.unchanged += other.unchanged;
        self.newer_stored += other.newer_stored;
        self.expired += other.expired;
        self.invalid.extend(other.invalid);
    }
}

/// A record that was not imported because it failed a check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidRecord {
    /// The key, z-base-32.
    pub key: String,
    pub reason: String,
}

/// Appends one record to a batch body. Fails if the payload is longer than a relay payload can
/// be (such a record would be refused anyway; the caller reports it as invalid).
pub fn encode_record(body: &mut Vec<u8>, key: &KeyBytes, payload: &[u8]) -> Result<(), String> {
    if payload.len() > PAYLOAD_LEN_MAX {
        return Err(format!(
            "the payload is {} bytes; a relay payload is at most {PAYLOAD_LEN_MAX}",
            payload.len()
        ));
    }
    let len = u16::try_from(payload.len()).map_err(|_| "payload length".to_string())?;
    body.extend_from_slice(key);
    body.extend_from_slice(&len.to_be_bytes());
    body.extend_from_slice(payload);
    Ok(())
}

/// Splits a batch body into its records (without checking them); an error names the first
/// place where the framing is wrong.
pub fn decode_batch(body: &Bytes) -> Result<Vec<(KeyBytes, Bytes)>, String> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < body.len() {
        if records.len() == IMPORT_BATCH_MAX {
            return Err(format!("more than {IMPORT_BATCH_MAX} records in one batch"));
        }
        let header = body
            .get(at..at + RECORD_HEADER_LEN)
            .ok_or_else(|| format!("record {} is cut short at byte {at}", records.len()))?;
        let (key, len) = header.split_at(32);
        let key = KeyBytes::try_from(key).map_err(|_| "key length".to_string())?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let start = at + RECORD_HEADER_LEN;
        if start + len > body.len() {
            return Err(format!(
                "record {} claims {len} payload bytes; {} are left",
                records.len(),
                body.len() - start
            ));
        }
        records.push((key, body.slice(start..start + len)));
        at = start + len;
    }
    Ok(records)
}

/// What `POST /import` works with.
#[derive(Clone)]
pub struct ImportState {
    pub node: Arc<Node>,
    pub rules: ImportRules,
    /// [`IMPORTS_AT_ONCE`] permits.
    pub running: Arc<tokio::sync::Semaphore>,
}

impl ImportState {
    pub fn new(node: Arc<Node>, rules: ImportRules) -> ImportState {
        ImportState {
            node,
            rules,
            running: Arc::new(tokio::sync::Semaphore::new(IMPORTS_AT_ONCE)),
        }
    }
}

/// The handler of `POST /import` (behind the admin token).
pub async fn import(
    State(state): State<ImportState>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    // Beyond `IMPORT_BODY_MAX` (413), or a body that could not be read: the admin API's JSON
    // error, not axum's plain text.
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            return (
                rejection.status(),
                Json(serde_json::json!({ "error": rejection.body_text() })),
            )
                .into_response();
        }
    };
    let Ok(_running) = state.running.clone().try_acquire_owned() else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(axum::http::header::RETRY_AFTER, "1")],
            Json(serde_json::json!({
                "error": format!("{IMPORTS_AT_ONCE} import batches are being worked on; send it again")
            })),
        )
            .into_response();
    };
    let ImportState { node, rules, .. } = state;
    let records = match decode_batch(&body) {
        Ok(records) => records,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({ "error": format!("not an import batch: {e}") })),
            )
                .into_response();
        }
    };
    // Cluster time judges `http.max_future_skew` as for a PUT, and its `expiry_micros` (what
    // expiry deletes by) the age; while that is not known no packet is taken as expired
    // (expiry itself waits then too).
    let time = node.clock().now();
    // Checking signatures costs about 50 µs a packet: on the blocking pool, not the workers.
    let checked = tokio::task::spawn_blocking(move || {
        records
            .into_iter()
            .map(|(key, payload)| check_record(&key, payload, rules, &time).map_err(|e| (key, e)))
            .collect::<Vec<_>>()
    })
    .await;
    let checked = match checked {
        Ok(checked) => checked,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(serde_json::json!({ "error": format!("checking the batch failed: {e}") })),
            )
                .into_response();
        }
    };

    Json(publish_checked(&node, checked).await).into_response()
}

/// Publishes the records that passed the checks (all at once: they share the write path's
/// batches) and reports what became of every record.
async fn publish_checked(
    node: &Arc<Node>,
    checked: Vec<Result<Checked, (KeyBytes, String)>>,
) -> ImportReport {
    let mut report = ImportReport::default();
    let mut publishing = tokio::task::JoinSet::new();
    // Which record each publish task is for, so that one that panics is sent again.
    let mut record_of_task = std::collections::HashMap::new();
    for (index, record) in (0u32..).zip(checked) {
        match record {
            Ok(Checked::Publish(packet)) => {
                let node = node.clone();
                let task = publishing.spawn(async move {
                    let key = packet.key_bytes();
                    (index, key, node.writes().publish(*packet).await)
                });
                record_of_task.insert(task.id(), index);
            }
            Ok(Checked::Expired) => report.expired += 1,
            Ok(Checked::NotJudged(reason)) => {
                report.retry.push(index);
                report.retry_reason.get_or_insert(reason);
            }
            Err((key, reason)) => report.invalid.push(InvalidRecord {
                key: encode_z32_key(&key),
                reason,
            }),
        }
    }
    while let Some(joined) = publishing.join_next().await {
        match joined {
            Ok((index, key, published)) => report.count(index, &key, published),
            Err(e) => {
                // A publish task cannot panic short of a bug; its record is sent again.
                if let Some(&index) = record_of_task.get(&e.id()) {
                    report.retry.push(index);
                    report
                        .retry_reason
                        .get_or_insert_with(|| format!("publishing failed: {e}"));
                }
            }
        }
    }
    report.retry.sort_unstable();
    report
}

impl ImportReport {
    /// Counts what became of record `index` (of `key`) once published.
    fn count(&mut self, index: u32, key: &KeyBytes, published: Result<Published, PublishError>) {
        match published {
            Ok(published) => match published.outcome {
                PublishOutcome::Stored => self.imported += 1,
                PublishOutcome::Identical => self.unchanged += 1,
                PublishOutcome::Stale => self.newer_stored += 1,
            },
            // A new key the cluster has no room for (its cap, a disk below the new-key
            // reserve): sending it again soon changes nothing, so it is reported, not retried.
            Err(PublishError::NoRoom(reason)) => self.invalid.push(InvalidRecord {
                key: encode_z32_key(key),
                reason: format!("no room for new keys: {reason}"),
            }),
            // Another try may find a leader, room in the queue, or (for a node whose storage
            // failed) the caller on another node.
            Err(
                e @ (PublishError::Unavailable(_)
                | PublishError::Fatal(_)
                | PublishError::Replica(_)),
            ) => {
                self.retry.push(index);
                self.retry_reason.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// What an import does with a record that passed the checks.
enum Checked {
    Publish(Box<VerifiedPacket>),
    Expired,
    /// Signed further ahead of this node's cluster time than `http.max_future_skew`, where the
    /// clocks it knows do not agree that the packet is wrong (a PUT's 503): sent again.
    NotJudged(String),
}

/// A PUT's checks (the packet's, then `http.max_future_skew`), then the age.
/// `time`: cluster time.
fn check_record(
    key: &KeyBytes,
    payload: Bytes,
    rules: ImportRules,
    time: &ClusterTime,
) -> Result<Checked, String> {
    let packet = VerifiedPacket::verify_stored(key, payload).map_err(|e| e.to_string())?;
    let timestamp = packet.payload().timestamp_micros();
    let max_skew = rules.max_future_skew;
    match time.judge_signature_time(timestamp, max_skew) {
        SignatureTime::Acceptable => {}
        SignatureTime::FromTheFuture { ahead } => {
            return Err(format!(
                "signed {}s in the future (http.max_future_skew is {}s)",
                ahead.as_secs(),
                max_skew.as_secs()
            ));
        }
        SignatureTime::Undecided { ahead } => {
            return Ok(Checked::NotJudged(format!(
                "a packet signed {}s ahead of this node's cluster time, and the clocks it \
                 knows do not agree on whose clock is wrong",
                ahead.as_secs()
            )));
        }
    }
    if let Some(expiry_micros) = time
        .expiry_micros()
        .filter(|_| !rules.record_max_age.is_zero())
    {
        let max_age_micros = u64::try_from(rules.record_max_age.as_micros()).unwrap_or(u64::MAX);
        let oldest_kept = expiry_micros.saturating_sub(max_age_micros);
        if timestamp < oldest_kept {
            return Ok(Checked::Expired);
        }
    }
    Ok(Checked::Publish(Box::new(packet)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_decodes_to_the_records_encoded() {
        let mut body = Vec::new();
        encode_record(&mut body, &[1; 32], b"first").expect("fits");
        encode_record(&mut body, &[2; 32], b"").expect("fits");
        encode_record(&mut body, &[3; 32], &[7; PAYLOAD_LEN_MAX]).expect("fits");
        let records = decode_batch(&Bytes::from(body)).expect("well formed");
        assert_eq!(records.len(), 3);
        assert_eq!(records[0], ([1; 32], Bytes::from_static(b"first")));
        assert_eq!(records[1], ([2; 32], Bytes::new()));
        assert_eq!(records[2].1.len(), PAYLOAD_LEN_MAX);
        assert!(encode_record(&mut Vec::new(), &[4; 32], &[0; PAYLOAD_LEN_MAX + 1]).is_err());
    }

    #[test]
    fn a_torn_or_oversized_batch_is_refused() {
        let mut body = Vec::new();
        encode_record(&mut body, &[1; 32], b"payload").expect("fits");
        for cut in [1, 33, body.len() - 1] {
            let error = decode_batch(&Bytes::copy_from_slice(&body[..cut])).expect_err("torn");
            assert!(error.contains("record 0"), "{error}");
        }
        let mut full = Vec::new();
        for _ in 0..=IMPORT_BATCH_MAX {
            encode_record(&mut full, &[1; 32], b"").expect("fits");
        }
        let error = decode_batch(&Bytes::from(full)).expect_err("too many");
        assert!(error.contains("more than"), "{error}");
    }

    #[test]
    fn old_and_future_packets_are_told_apart_from_good_ones() {
        let keypair = pkraft_testkit::keypair(5);
        let key = keypair.public_key().to_bytes();
        let rules = ImportRules {
            record_max_age: Duration::from_secs(3600),
            max_future_skew: Duration::from_secs(60),
        };
        let now = pkraft_types::unix_micros_now();
        // Cluster time with the voters' time agreed (`Some`) or not known (`None`).
        let cluster_time = |voters_micros: Option<u64>| ClusterTime {
            own_micros: now,
            voters_micros,
            latest_micros: now,
            log_micros: None,
            log_floor_micros: None,
            state: pkraft_raft::ClockState::Synchronized,
        };
        let time = &cluster_time(Some(now));
        let signed_at = |micros: u64| {
            Bytes::from(
                pkraft_testkit::iroh_packet(&keypair, micros, &["127.0.0.1:1"])
                    .to_relay_payload()
                    .to_vec(),
            )
        };
        assert!(matches!(
            check_record(&key, signed_at(now), rules, time),
            Ok(Checked::Publish(_))
        ));
        assert!(matches!(
            check_record(&key, signed_at(now - 7_200_000_000), rules, time),
            Ok(Checked::Expired)
        ));
        let keep_all = ImportRules {
            record_max_age: Duration::ZERO,
            ..rules
        };
        assert!(matches!(
            check_record(&key, signed_at(now - 7_200_000_000), keep_all, time),
            Ok(Checked::Publish(_))
        ));
        // Cluster time not known: no packet is taken as expired.
        let unknown = &cluster_time(None);
        assert!(matches!(
            check_record(&key, signed_at(now - 7_200_000_000), rules, unknown),
            Ok(Checked::Publish(_))
        ));
        let future = check_record(&key, signed_at(now + 3_600_000_000), rules, time);
        assert!(matches!(&future, Err(reason) if reason.contains("future")));
        // Without the voters' time, this node cannot tell whose clock is wrong: sent again.
        assert!(matches!(
            check_record(&key, signed_at(now + 3_600_000_000), rules, unknown),
            Ok(Checked::NotJudged(_))
        ));
        let mut damaged = signed_at(now).to_vec();
        damaged[0] ^= 1;
        assert!(check_record(&key, Bytes::from(damaged), rules, time).is_err());
    }
}
