//! Room for new keys: the cap on stored packets (`raft.max_stored_packets`) and the new-key
//! reserve of the disk (`raft.new_keys_min_free_disk_mib`, kept by `disk_space`). Short of
//! either, the cluster stores no new keys (PUT 507) while republishes of the keys it holds go
//! on, so that a flood of new keys can neither fill the disk nor take the room of the endpoints
//! already stored. Expiry makes room again; nothing stored is evicted for a newcomer.
//!
//! Where it is enforced:
//! - on the node a PUT reaches, before its body is read (pkraft-http asks
//!   [`Node::refuse_new_key`]), and in `Node::publish` for a key its replica does not hold, from
//!   a count at most `COUNT_FRESH_FOR` old: a refusal that costs the flood no verification, no
//!   queue slot and no round of consensus;
//! - on the leader, for every batch it proposes ([`StoreCap::admit`]), from the store's count
//!   plus the new keys of the batches it proposed that have not returned: the check that holds,
//!   so that concurrent batches and publishes forwarded from every node cannot pass the cap
//!   together.
//!
//! Why the leader and not the state machine: the cap is derived from each node's disk by
//! default, so replicas may disagree on it, and the log must apply the same way everywhere. The
//! one way past the cap: a new leader counts from its own replica, which may not yet have
//! applied the last entries its predecessor committed, so at a leader change the store can pass
//! the cap by the new keys of those entries (at most a few batches), once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pkraft_store::Store;
use pkraft_types::KeyBytes;

/// What one stored packet may take on a node's disk, for the default cap: `state.redb` written
/// by PUTs measured up to 2,247 bytes per record (docs/OPERATIONS.md, "Sizing the data disk"),
/// the snapshot 277 and a second one while it is rebuilt, and a follower's install imports 4 ×
/// the snapshot beside the old tables: 3.9 KB, rounded up.
pub(crate) const BYTES_PER_STORED_PACKET: u64 = 4096;
/// The default cap when the file system does not tell its size (some FUSE and network file
/// systems): the largest store `make bench-scale` measured.
pub(crate) const UNKNOWN_DISK_MAX_PACKETS: u64 = 10_000_000;
/// The least a cap derived from a small disk is: below it the new-key reserve of the disk
/// refuses new keys first anyway.
const DERIVED_MAX_PACKETS_MIN: u64 = 10_000;
/// How old the count behind the quick check may be: a read transaction per new-key PUT would
/// cost the flood's refusals more than the check itself.
const COUNT_FRESH_FOR: Duration = Duration::from_millis(100);

/// The default cap for a data dir on a file system of `file_system_bytes`: what is left beside
/// the new-key reserve (`keep_free_bytes`), at `BYTES_PER_STORED_PACKET` per packet.
pub(crate) fn derived_max_packets(file_system_bytes: u64, keep_free_bytes: u64) -> u64 {
    (file_system_bytes.saturating_sub(keep_free_bytes) / BYTES_PER_STORED_PACKET)
        .max(DERIVED_MAX_PACKETS_MIN)
}

/// Why a new key is refused, and the label of `pkraft_raft_publish_refused_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewKeyRefusal {
    pub(crate) label: &'static str,
    pub(crate) reason: String,
}

impl NewKeyRefusal {
    pub(crate) fn disk(reason: String) -> NewKeyRefusal {
        NewKeyRefusal {
            label: "new_keys_disk_low",
            reason,
        }
    }

    fn cap(max_packets: u64) -> NewKeyRefusal {
        NewKeyRefusal {
            label: "store_full",
            reason: format!(
                "this cluster stores its cap of {max_packets} packets (raft.max_stored_packets): \
                 no new keys until expiry makes room; republishes of stored keys go on"
            ),
        }
    }
}

/// The cap and what counts against it; see the module docs.
pub(crate) struct StoreCap {
    /// `None`: no cap.
    max_packets: Option<u64>,
    started: Instant,
    /// Milliseconds since `started` of the last count, plus one (0: never counted).
    counted_at: AtomicU64,
    /// Packets stored at the last count.
    count: AtomicU64,
    /// New keys (at most: a packet whose key was not looked up counts as new) in the batches
    /// this node proposed as leader that have not returned. A returned batch is applied on the
    /// leader, so the store's count holds its packets from then on.
    in_flight: Mutex<u64>,
}

/// New keys of a batch under way, counted against the cap until dropped (once the proposal has
/// returned, applied or failed).
pub(crate) struct Reservation<'a> {
    cap: &'a StoreCap,
    new_keys: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.new_keys > 0
            && let Ok(mut in_flight) = self.cap.in_flight.lock()
        {
            *in_flight = in_flight.saturating_sub(self.new_keys);
        }
    }
}

/// The leader's answer for one batch.
pub(crate) struct Admission<'a> {
    /// Why each packet is refused (`None`: admitted), in the batch's order; empty when every
    /// packet is admitted.
    pub(crate) refused: Vec<Option<NewKeyRefusal>>,
    pub(crate) reservation: Reservation<'a>,
}

impl StoreCap {
    pub(crate) fn new(max_packets: Option<u64>) -> StoreCap {
        StoreCap {
            max_packets,
            started: Instant::now(),
            counted_at: AtomicU64::new(0),
            count: AtomicU64::new(0),
            in_flight: Mutex::new(0),
        }
    }

    /// The quick check of the node a PUT reaches: whether the store is at the cap, by a count
    /// at most `COUNT_FRESH_FOR` old. A count that fails admits (the leader counts again).
    pub(crate) fn refusal(&self, store: &Store) -> Option<NewKeyRefusal> {
        let max_packets = self.max_packets?;
        (self.recent_count(store) >= max_packets).then(|| NewKeyRefusal::cap(max_packets))
    }

    /// The leader's check of a batch of `keys` about to be proposed: a key the store holds is
    /// admitted; a new one only with room under the cap (counting the batches under way) and
    /// no `disk` refusal. The admitted new keys count against the cap until the reservation is
    /// dropped. Looks keys up only when the batch might not fit, so a batch far from the cap
    /// costs one count.
    pub(crate) fn admit<'k>(
        &self,
        store: &Store,
        disk: Option<NewKeyRefusal>,
        keys: impl ExactSizeIterator<Item = &'k KeyBytes>,
    ) -> Admission<'_> {
        let batch = u64::try_from(keys.len()).unwrap_or(u64::MAX);
        if self.max_packets.is_none() && disk.is_none() {
            return self.admit_all(0);
        }
        // Poisoned: a panic elsewhere while it was held; the count is still a number.
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let room = match self.max_packets {
            None => u64::MAX,
            Some(max_packets) => match store.packet_count() {
                Ok(count) => {
                    self.remember_count(count);
                    max_packets.saturating_sub(count.saturating_add(*in_flight))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot count the stored packets for the cap; admitting the batch");
                    u64::MAX
                }
            },
        };
        if disk.is_none() && batch <= room {
            *in_flight = in_flight.saturating_add(batch);
            return self.admit_all(batch);
        }
        let mut room = room;
        let mut new_keys = 0u64;
        let refused = keys
            .map(|key| {
                // A key this node cannot read (found damaged) counts as held: its owner's
                // republish is what repairs it.
                if store.holds(key).unwrap_or(true) {
                    return None;
                }
                if let Some(disk) = &disk {
                    return Some(disk.clone());
                }
                if room == 0 {
                    return self.max_packets.map(NewKeyRefusal::cap);
                }
                room -= 1;
                new_keys += 1;
                None
            })
            .collect();
        *in_flight = in_flight.saturating_add(new_keys);
        Admission {
            refused,
            reservation: Reservation {
                cap: self,
                new_keys,
            },
        }
    }

    /// Every packet admitted; `new_keys` already counted in `in_flight`.
    fn admit_all(&self, new_keys: u64) -> Admission<'_> {
        Admission {
            refused: Vec::new(),
            reservation: Reservation {
                cap: self,
                new_keys,
            },
        }
    }

    fn recent_count(&self, store: &Store) -> u64 {
        let now = self.millis_now();
        let last = self.counted_at.load(Ordering::Acquire);
        let stale = last == 0 || now.saturating_sub(last - 1) >= COUNT_FRESH_FOR.as_millis() as u64;
        // One caller counts; the others use the last count meanwhile.
        if stale
            && self
                .counted_at
                .compare_exchange(last, now + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            match store.packet_count() {
                Ok(count) => self.count.store(count, Ordering::Release),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot count the stored packets for the cap");
                    return 0;
                }
            }
        }
        self.count.load(Ordering::Acquire)
    }

    fn remember_count(&self, count: u64) {
        self.count.store(count, Ordering::Release);
        self.counted_at
            .store(self.millis_now() + 1, Ordering::Release);
    }

    fn millis_now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_derived_cap_leaves_the_new_key_reserve_and_has_a_floor() {
        let gib = 1u64 << 30;
        // A 10 GiB volume with the default reserves (1 GiB, new keys 3 GiB): 7 GiB at 4 KiB.
        assert_eq!(derived_max_packets(10 * gib, 3 * gib), 7 * gib / 4096);
        assert_eq!(derived_max_packets(gib, 3 * gib), DERIVED_MAX_PACKETS_MIN);
        assert_eq!(derived_max_packets(u64::MAX, 0), u64::MAX / 4096);
    }
}
