//! The rules about time that every part applies the same way: the wall clock in µs since the
//! Unix epoch (what a leader stamps on a batch, what expiry compares against), and how far in the
//! future a packet may be signed.

use std::time::Duration;

/// Wall clock in µs since the Unix epoch (`world`: the system's, or a simulation's). A clock
/// before 1970 reads as 0.
pub use crate::world::unix_micros_now;

/// How far `timestamp_micros` is ahead of `now_micros`, if that is more than `max_skew`: a
/// packet signed that far in the future is refused (`http.max_future_skew`), whether a client
/// PUTs it or the DHT publisher finds it on the DHT, so a client with a broken clock cannot make
/// every later update of its key lose to it. `now_micros` is cluster time (pkraft-raft's
/// `ClusterClock::skew_reference_micros`), so a node whose own clock is a day behind does not refuse
/// packets signed now.
pub fn too_far_ahead(
    now_micros: u64,
    timestamp_micros: u64,
    max_skew: Duration,
) -> Option<Duration> {
    let limit = now_micros.saturating_add(u64::try_from(max_skew.as_micros()).unwrap_or(u64::MAX));
    (timestamp_micros > limit).then(|| Duration::from_micros(timestamp_micros - now_micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_is_too_far_ahead_only_past_the_skew() {
        let now = unix_micros_now();
        let skew = Duration::from_secs(60);
        assert_eq!(too_far_ahead(now, now, skew), None);
        assert_eq!(too_far_ahead(now, now + 30_000_000, skew), None);
        let ahead = too_far_ahead(now, now + 3_600_000_000, skew).expect("an hour ahead");
        assert_eq!(ahead, Duration::from_secs(3_600));
        assert_eq!(
            too_far_ahead(now, u64::MAX, Duration::MAX).map(|_| ()),
            None
        );
    }
}
