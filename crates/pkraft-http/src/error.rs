//! Relay errors and their HTTP status codes. Bodies are plain text meant for the publisher;
//! internal errors are logged and answered without detail. The reasons of `Unavailable` and
//! `NoRoom` are text because they are what the publisher is told: a [`PublishError`]'s reason
//! with its cause, as a leader's reasons cross the peer wire, or a [`ReadError`]'s. A storage
//! failure keeps its cause as the source, for the log.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pkraft_raft::{PublishError, ReadError, UnknownConsistency};
use pkraft_state::StoreError;
use pkraft_types::{KeyError, PacketError};

use crate::INVALID_SEQ_HEADER;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// 400: the URL does not name a public key.
    #[error("invalid public key in URL: {0}")]
    Key(#[from] KeyError),
    /// 400 (or 413 for length): the body is not a valid signed packet for the key.
    #[error("invalid signed packet: {0}")]
    Packet(#[from] PacketError),
    /// 400: the packet's timestamp is too far ahead of this node's clock.
    #[error(
        "packet timestamp is {} s in the future; at most {} s of clock skew is accepted \
         (check the publisher's clock)",
        ahead.as_secs(),
        max_skew.as_secs()
    )]
    FutureTimestamp { ahead: Duration, max_skew: Duration },
    /// 400: an unknown `consistency` query value.
    #[error(transparent)]
    Consistency(#[from] UnknownConsistency),
    /// 404: nothing is stored for the key.
    #[error("no packet is stored for this key")]
    NotFound,
    /// 404 with [`INVALID_SEQ_HEADER`]: nothing is stored, and the DHT holds only items the key
    /// signed that are no valid packet, the newest with this `seq` (pkarr's relay spec).
    #[error(
        "no valid packet for this key: the DHT's newest item (seq {seq}) is not a valid signed packet"
    )]
    InvalidOnDht { seq: i64 },
    /// 409: the stored packet is more recent.
    #[error("a more recent packet is already stored for this key")]
    Conflict,
    /// 503: no leader or quorum right now; retry later.
    #[error("cluster unavailable, retry later: {reason}")]
    Unavailable {
        reason: String,
        retry_after: Duration,
    },
    /// 507: the cluster stores no new keys now (its cap on stored packets, or a disk below the
    /// new-key reserve); republishes of stored keys are not refused so. docs/API.md.
    #[error("no room for new keys: {0}")]
    NoRoom(String),
    /// 503: this node's storage or consensus failed (an I/O error, a full disk); the node stops
    /// or refuses until it recovers, and another node can answer. Not acknowledged: a PUT may
    /// still have committed, and retrying it is safe. The reason is logged, not sent.
    #[error("this node's storage failed; retry on another node")]
    StorageFailed(#[source] BoxError),
    /// 500: a bug on this node. The reason is logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
    /// 500: a packet this node stored does not parse (`VerifiedPacket` admitted it, so the
    /// replica is damaged). Logged, not sent.
    #[error("internal error: a stored packet does not parse: {0}")]
    StoredPacket(#[source] PacketError),
}

/// A cause of any type, kept for the log ([`RelayError::StorageFailed`]).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Retry-After of [`RelayError::StorageFailed`]: another node answers at once; this one may
/// come back after a restart.
const STORAGE_FAILED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Retry-After of [`RelayError::NoRoom`]: room comes back as expiry runs (once a minute by
/// default, `raft.expiry_interval`) or an operator frees space, not within seconds.
pub const NO_ROOM_RETRY_AFTER: Duration = Duration::from_secs(60);

impl From<StoreError> for RelayError {
    fn from(e: StoreError) -> Self {
        RelayError::StorageFailed(Box::new(e))
    }
}

impl RelayError {
    pub fn from_publish(e: PublishError, retry_after: Duration) -> Self {
        match e {
            PublishError::Unavailable(reason) => RelayError::Unavailable {
                reason: reason.to_string(),
                retry_after,
            },
            // The reason with its cause: logged, not sent (`StorageFailed`).
            PublishError::Fatal(reason) => RelayError::StorageFailed(Box::new(reason)),
            e @ PublishError::Replica(_) => RelayError::StorageFailed(Box::new(e)),
            PublishError::NoRoom(reason) => RelayError::NoRoom(reason),
        }
    }

    pub fn from_read(e: ReadError, retry_after: Duration) -> Self {
        match e {
            e @ (ReadError::CatchingUp | ReadError::Unavailable(_)) => RelayError::Unavailable {
                reason: e.to_string(),
                retry_after,
            },
            ReadError::Replica(e) => RelayError::from(e),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            RelayError::Key(_) => StatusCode::BAD_REQUEST,
            RelayError::Packet(PacketError::Length(e))
                if e.0 > pkraft_types::payload::PAYLOAD_LEN_MAX =>
            {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            RelayError::Packet(_) => StatusCode::BAD_REQUEST,
            RelayError::Consistency(_) | RelayError::FutureTimestamp { .. } => {
                StatusCode::BAD_REQUEST
            }
            RelayError::NotFound | RelayError::InvalidOnDht { .. } => StatusCode::NOT_FOUND,
            RelayError::Conflict => StatusCode::CONFLICT,
            RelayError::Unavailable { .. } | RelayError::StorageFailed(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RelayError::NoRoom(_) => StatusCode::INSUFFICIENT_STORAGE,
            RelayError::Internal(_) | RelayError::StoredPacket(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl IntoResponse for RelayError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            RelayError::Internal(_) | RelayError::StoredPacket(_) => {
                tracing::error!(reason = %self, "relay request failed");
                "internal error".to_string()
            }
            RelayError::StorageFailed(reason) => {
                tracing::error!(%reason, "relay request failed: storage");
                self.to_string()
            }
            other => other.to_string(),
        };
        let mut response = (status, body).into_response();
        let retry_after = match self {
            RelayError::Unavailable { retry_after, .. } => Some(retry_after),
            RelayError::StorageFailed(_) => Some(STORAGE_FAILED_RETRY_AFTER),
            RelayError::NoRoom(_) => Some(NO_ROOM_RETRY_AFTER),
            _ => None,
        };
        if let RelayError::InvalidOnDht { seq } = self {
            response
                .headers_mut()
                .insert(INVALID_SEQ_HEADER, HeaderValue::from(seq));
        }
        if let Some(retry_after) = retry_after {
            // Whole seconds, at least 1 (RFC 9110 delay-seconds).
            let secs = retry_after.as_secs().max(1);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A single node always has a leader, so 503 cannot be provoked end to end yet; this checks the
    // mapping that the cluster tests will exercise.
    #[test]
    fn unavailable_is_503_with_retry_after_in_whole_seconds() {
        for (retry_after, header) in [
            (Duration::from_secs(3), "3"),
            (Duration::from_millis(200), "1"),
        ] {
            let error = RelayError::from_publish(
                PublishError::Unavailable("no leader".into()),
                retry_after,
            );
            let response = error.into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            let value = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok());
            assert_eq!(value, Some(header));
        }
    }

    #[tokio::test]
    async fn internal_errors_do_not_leak_details() {
        let response = RelayError::Internal("invariant broken at /src/x.rs".into()).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("body");
        assert_eq!(&body[..], b"internal error");
    }

    /// A storage failure (the chaos harness's power cuts: the disk fails before the process
    /// dies) is 503 + Retry-After, as for any node that cannot commit: the client retries on
    /// another node. The detail is logged, not sent.
    #[tokio::test]
    async fn storage_failures_are_503_without_details() {
        let error = RelayError::from_publish(
            PublishError::Fatal("disk /dev/sda1 failed".into()),
            Duration::ZERO,
        );
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("body");
        assert!(!String::from_utf8_lossy(&body).contains("sda1"));
    }

    #[test]
    fn only_oversized_payloads_are_413() {
        use pkraft_types::payload::PayloadLengthError;
        let long = RelayError::Packet(PacketError::Length(PayloadLengthError(2000)));
        assert_eq!(long.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let short = RelayError::Packet(PacketError::Length(PayloadLengthError(10)));
        assert_eq!(short.status(), StatusCode::BAD_REQUEST);
    }
}
