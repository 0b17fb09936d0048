//! The pkarr relay routes (DESIGN.md §2.1).

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{AppendHeaders, IntoResponse, Response};
use pkarr::Timestamp;
use pkraft_dht::{DhtAnswer, Lookup};
use pkraft_raft::{ClusterTime, Consistency, Published, SignatureTime};
use pkraft_types::payload::TIMESTAMP_MICROS_MAX;
use pkraft_types::{PublishOutcome, VerifiedPacket, decide, decode_z32_key, parse_z32_key};

use crate::error::RelayError;
use crate::rate_limit::RelayLimits;
use crate::{STORED_NODES_HEADER, Settings, SharedState};

/// Query parameters of GET.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ReadParams {
    /// `local` (the default) or `linearizable` (see [`Consistency`]); 503 when a linearizable
    /// read cannot be served now.
    pub consistency: Option<String>,
    /// Where the packet may come from, as pkarr 8.1's relay client asks on every GET; any other
    /// value is refused with 400 (axum's query rejection), as pkarr-relay refuses it.
    pub policy: Option<ResolvePolicy>,
}

/// pkarr's `ResolvePolicy` as a relay GET carries it (`?policy=`, the variant names exactly).
/// With `[dht]` off there is no network beyond the cluster: every policy answers from the
/// replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub enum ResolvePolicy {
    /// The replica only: a key it does not hold is 404 without asking the DHT.
    CacheOnly,
    /// The replica, then (for a key it does not hold) the DHT through the resolver's caches.
    /// The default, and what a GET without `policy` gets.
    #[default]
    CacheFirst,
    /// The DHT now (its caches not asked), even for a key the replica holds; the newer of the
    /// two packets by the ordering rule is the answer, the replica's when the DHT has none.
    NetworkOnly,
}

/// RFC 7089's header, which pkarr relays use for when a packet was last seen on the DHT.
const MEMENTO_DATETIME: header::HeaderName = header::HeaderName::from_static("memento-datetime");

/// Media type of a relay payload (pkarr design/relays.md).
pub const PAYLOAD_CONTENT_TYPE: &str = "application/pkarr.org/relays#payload";

/// `PUT /pkarr/{z32}` and `PUT /{z32}`: verify, then publish (`Writes::publish`: answered from the
/// local replica when that decides it, else committed through Raft). 204 once stored (or when the
/// same packet is), 409 if a more recent packet is stored.
pub async fn put_packet(
    State(state): State<SharedState>,
    limits: RelayLimits,
    body: Bytes,
) -> Result<Response, RelayError> {
    let key = state.keys.parse(&limits.key)?;
    let packet = VerifiedPacket::verify(&key.key, body)?;
    state.keys.keep_verified(&key, &packet);
    check_not_from_the_future(
        &state.node.clock().now(),
        packet.payload().timestamp_micros(),
        &state.settings,
    )?;
    // The limits read the replica for this key (the one read of a PUT). Their admission is
    // `None` only for a key that does not decode, which `parse` has refused above; one for
    // another key cannot come from the same URL, but would be read again rather than used.
    let admission = match limits.admission {
        Some(admission) if admission.key() == &packet.key_bytes() => admission,
        _ => state.node.writes().admit(&packet.key_bytes()),
    };
    if let Some(too_many) = state.rate_limits.limit_key(&admission, &packet) {
        return Ok(too_many);
    }

    let Published {
        outcome, replicas, ..
    } = state
        .node
        .writes()
        .publish_admitted(packet, admission)
        .await
        .map_err(|e| RelayError::from_publish(e, state.settings.retry_after))?;
    // The same answers whether the node answered from its replica or after consensus.
    match outcome {
        PublishOutcome::Stored | PublishOutcome::Identical => Ok((
            StatusCode::NO_CONTENT,
            [(STORED_NODES_HEADER, HeaderValue::from(replicas))],
        )
            .into_response()),
        PublishOutcome::Stale => Err(RelayError::Conflict),
    }
}

/// Refuses a packet timestamped more than `max_future_skew` after cluster time `time`; see
/// [`Settings::max_future_skew`]. Only a packet the voters' time and this node's own clock both
/// take for one from the future is wrong: 400. Otherwise this node cannot tell whether the
/// packet is ahead or its clocks are behind (a node whose clock was stepped back and whose
/// peers' clocks it cannot reach, or whose log holds a membership of one stepped voter): 503,
/// to be asked again, or of another node, rather than telling a right publisher its clock is
/// wrong.
fn check_not_from_the_future(
    time: &ClusterTime,
    timestamp_micros: u64,
    settings: &Settings,
) -> Result<(), RelayError> {
    let max_skew = settings.max_future_skew;
    match time.judge_signature_time(timestamp_micros, max_skew) {
        SignatureTime::Acceptable => Ok(()),
        SignatureTime::FromTheFuture { ahead } => {
            Err(RelayError::FutureTimestamp { ahead, max_skew })
        }
        SignatureTime::Undecided { ahead } => Err(RelayError::Unavailable {
            reason: format!(
                "the packet's timestamp is {} s ahead of this node's cluster time, and the \
                 clocks it knows do not agree on whose clock is wrong; ask again later or \
                 another node",
                ahead.as_secs()
            ),
            retry_after: settings.retry_after,
        }),
    }
}

/// `GET /pkarr/{z32}` and `GET /{z32}`: the stored payload from the local replica, or 304 when
/// the client's `If-Modified-Since` is not older than the packet.
pub async fn get_packet(
    State(state): State<SharedState>,
    RelayLimits { key, .. }: RelayLimits,
    Query(read): Query<ReadParams>,
    headers: HeaderMap,
) -> Result<Response, RelayError> {
    // Only the bytes: decompressing the curve point would cost about as much as the rest of the
    // GET. A stored key is a valid point, so the check is needed only to explain a miss.
    let key_bytes = decode_z32_key(&key)?;
    let consistency = match read.consistency.as_deref() {
        None => Consistency::default(),
        Some(name) => name.parse()?,
    };
    let policy = read.policy.unwrap_or_default();
    let stored = state
        .node
        .reads()
        .read(&key_bytes, consistency)
        .await
        .map_err(|e| RelayError::from_read(e, state.settings.retry_after))?
        .map(|stored| stored.payload);
    // The packet, and when this node received it from the DHT if it came from there.
    let (payload, seen_on_dht) = match (policy, state.dht.as_ref(), stored) {
        (ResolvePolicy::NetworkOnly, Some(dht), stored) => {
            if stored.is_none() {
                // A key that is no curve point was never stored, nor signed anything: 400,
                // without asking the DHT.
                parse_z32_key(&key)?;
            }
            match (stored, dht.resolve_from(&key_bytes, Lookup::New).await) {
                (Some(stored), DhtAnswer::Found(found))
                    if decide(Some(&stored), &found.payload) != PublishOutcome::Stored =>
                {
                    (stored, None)
                }
                (_, DhtAnswer::Found(found)) => (found.payload, Some(found.seen)),
                // A newer invalid item does not hide the stored packet: it is still the key's
                // latest valid one (pkarr-relay would answer 404 with the seq here).
                (Some(stored), DhtAnswer::OnlyInvalid { .. } | DhtAnswer::Missing) => {
                    (stored, None)
                }
                (None, missing) => return Err(not_on_the_dht(missing)),
            }
        }
        (_, _, Some(stored)) => (stored, None),
        (ResolvePolicy::CacheOnly, _, None) | (_, None, None) => {
            parse_z32_key(&key)?;
            return Err(RelayError::NotFound);
        }
        (ResolvePolicy::CacheFirst, Some(dht), None) => {
            parse_z32_key(&key)?;
            // Not in the cluster: the DHT may have it, within its deadline.
            match dht.resolve_from(&key_bytes, Lookup::CachedOrNew).await {
                DhtAnswer::Found(found) => (found.payload, Some(found.seen)),
                missing => return Err(not_on_the_dht(missing)),
            }
        }
    };
    let timestamp_micros = payload.timestamp_micros();
    let max_age = cache_max_age_secs(&state.settings, &payload)?;
    let mut validators = vec![
        (header::CACHE_CONTROL, format!("public, max-age={max_age}")),
        (header::LAST_MODIFIED, http_date(timestamp_micros)?),
    ];
    // When the packet was last seen on the DHT (pkarr 8.1's relay client takes it as the
    // packet's `last_seen`, from which it counts the TTL). Left out for a packet from the
    // replica: when the DHT last had it is not known here, and a client takes a packet without
    // the header as seen now.
    if let Some(seen) = seen_on_dht {
        validators.push((MEMENTO_DATETIME, Timestamp::from(seen).format_http_date()));
    }

    // Compared in microseconds, as pkarr-relay does: HTTP dates have whole seconds, so a client
    // holding a packet signed at 10.2 s that asks "modified since 10 s?" still gets the packet
    // signed at 10.7 s. An unparseable date is ignored (RFC 9110 §13.1.3).
    let not_modified = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Timestamp::parse_http_date(v).ok())
        .is_some_and(|since| timestamp_micros <= since.as_u64());
    if not_modified {
        return Ok((StatusCode::NOT_MODIFIED, AppendHeaders(validators)).into_response());
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, PAYLOAD_CONTENT_TYPE.to_string())],
        AppendHeaders(validators),
        Bytes::from(payload),
    )
        .into_response())
}

/// The 404 for a key neither the replica nor the DHT has a valid packet for: with the seq of
/// the DHT's newest invalid item if it had only such (pkarr's relay spec).
fn not_on_the_dht(answer: DhtAnswer) -> RelayError {
    match answer {
        DhtAnswer::OnlyInvalid { seq } => RelayError::InvalidOnDht { seq },
        DhtAnswer::Found(_) | DhtAnswer::Missing => RelayError::NotFound,
    }
}

/// An HTTP date for a packet timestamp. `VerifiedPacket` admits no timestamp after the year 9999,
/// the last an HTTP date can express; checking again here keeps a damaged store from panicking the
/// formatter.
fn http_date(timestamp_micros: u64) -> Result<String, RelayError> {
    if timestamp_micros > TIMESTAMP_MICROS_MAX {
        return Err(RelayError::Internal(format!(
            "stored packet has timestamp {timestamp_micros} µs, beyond what HTTP dates express"
        )));
    }
    Ok(Timestamp::from(timestamp_micros).format_http_date())
}

/// The packet's smallest record TTL, clamped to the configured bounds.
fn cache_max_age_secs(
    settings: &Settings,
    payload: &pkraft_types::Payload,
) -> Result<u64, RelayError> {
    let records = pkraft_types::packet::dns_records(payload).map_err(RelayError::StoredPacket)?;
    let min = settings.cache_max_age_min.as_secs();
    let max = settings.cache_max_age_max.as_secs();
    let ttl = records
        .iter()
        .map(|r| u64::from(r.ttl))
        .min()
        .unwrap_or(min);
    // Not `clamp`: it panics when min > max, which Settings::validate rejects but a caller may skip.
    Ok(ttl.max(min).min(max))
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use pkraft_raft::ClockState;

    use super::*;

    const NOW: u64 = 1_767_225_600_000_000;
    const DAY: u64 = 86_400_000_000;

    /// Cluster time with the voters' median `voters` (if agreed) and this node's clock `own`.
    fn time(own: u64, voters: Option<u64>) -> ClusterTime {
        ClusterTime {
            own_micros: own,
            voters_micros: voters,
            latest_micros: voters.unwrap_or(own).max(own),
            log_micros: None,
            log_floor_micros: None,
            state: ClockState::Synchronized,
        }
    }

    /// A packet past the skew is the publisher's fault only when the voters' time and this
    /// node's own clock both say so (400). A node that knows only its own clock (simulator seed
    /// 57: a node two days behind, its peers' clocks unreachable, answered packets signed now
    /// 400 "check the publisher's clock"), or whose own clock takes the packet while the voters
    /// it knows do not (seed 8575: its repaired log's one voter stepped 464 s back), cannot
    /// tell, and answers 503 with a Retry-After.
    #[test]
    fn a_packet_from_the_future_is_refused_as_wrong_only_when_the_voters_and_this_clock_agree() {
        let settings = Settings::default();
        let skew = u64::try_from(settings.max_future_skew.as_micros()).expect("fits");
        for known in [time(NOW, Some(NOW)), time(NOW, None)] {
            assert!(check_not_from_the_future(&known, NOW + skew, &settings).is_ok());
        }

        let wrong = check_not_from_the_future(&time(NOW, Some(NOW)), NOW + DAY, &settings)
            .expect_err("a day ahead of the voters' time and of this clock");
        assert!(matches!(wrong, RelayError::FutureTimestamp { .. }));
        assert_eq!(wrong.into_response().status(), StatusCode::BAD_REQUEST);

        for unsure in [
            // No voters' time, this clock a day behind.
            time(NOW - DAY, None),
            // The voters' time (of one voter stepped back) against this node's right clock.
            time(NOW, Some(NOW - 464 * 1_000_000)),
        ] {
            let refused = check_not_from_the_future(&unsure, NOW, &settings)
                .expect_err("ahead of the skew reference");
            let response = refused.into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                response.headers().get(header::RETRY_AFTER),
                Some(&HeaderValue::from(settings.retry_after.as_secs().max(1)))
            );
        }
    }
}
