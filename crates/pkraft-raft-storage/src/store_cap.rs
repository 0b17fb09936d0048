//! Room for new keys: the cap on stored packets (`raft.max_stored_packets`) and the new-key
//! reserve of the disk (`raft.new_keys_min_free_disk_mib`, kept by `disk_space`). Short of
//! either, the cluster stores no new keys (PUT 507) while republishes of the keys it holds go
//! on, so that a flood of new keys can neither fill the disk nor take the room of the endpoints
//! already stored. Expiry makes room again; nothing stored is evicted for a newcomer.
//!
//! Where it is enforced:
//! - on the node a PUT reaches, before its body is read (pkraft-http asks
//!   `pkraft_raft::Writes::refuse_new_key`), and in `Writes::publish` for a key its replica does not hold, from
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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pkraft_state::Store;
use pkraft_types::KeyBytes;
use tokio::time::Instant;

/// What one stored packet may take on a node's disk, for the default cap: `state.redb` written
/// by PUTs measured up to 2,247 bytes per record (docs/OPERATIONS.md, "Sizing the data disk"),
/// the snapshot 277 and a second one while it is rebuilt, and a follower's install imports 4 ×
/// the snapshot beside the old tables: 3.9 KB, rounded up.
pub const BYTES_PER_STORED_PACKET: u64 = 4096;
/// The default cap when the file system does not tell its size (some FUSE and network file
/// systems): the largest store `make bench-scale` measured.
pub const UNKNOWN_DISK_MAX_PACKETS: u64 = 10_000_000;
/// The least a cap derived from a small disk is: below it the new-key reserve of the disk
/// refuses new keys first anyway.
const DERIVED_MAX_PACKETS_MIN: u64 = 10_000;
/// How old the count behind the quick check may be: a read transaction per new-key PUT would
/// cost the flood's refusals more than the check itself.
const COUNT_FRESH_FOR: Duration = Duration::from_millis(100);

/// The default cap for a data dir on a file system of `file_system_bytes`: what is left beside
/// the new-key reserve (`keep_free_bytes`), at `BYTES_PER_STORED_PACKET` per packet.
pub fn derived_max_packets(file_system_bytes: u64, keep_free_bytes: u64) -> u64 {
    (file_system_bytes.saturating_sub(keep_free_bytes) / BYTES_PER_STORED_PACKET)
        .max(DERIVED_MAX_PACKETS_MIN)
}

/// Why a new key is refused, and the label of `pkraft_raft_publish_refused_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKeyRefusal {
    pub label: &'static str,
    pub reason: String,
    /// There may be room once the batches under way have been applied (or the store can be
    /// counted again): a 503 to retry soon, not the 507 of a store without room.
    pub transient: bool,
}

impl NewKeyRefusal {
    pub fn disk(reason: String) -> NewKeyRefusal {
        NewKeyRefusal {
            label: "new_keys_disk_low",
            reason,
            transient: false,
        }
    }

    fn cap(max_packets: u64) -> NewKeyRefusal {
        NewKeyRefusal {
            label: "store_full",
            reason: format!(
                "this cluster stores its cap of {max_packets} packets (raft.max_stored_packets): \
                 no new keys until expiry makes room; republishes of stored keys go on"
            ),
            transient: false,
        }
    }

    fn pending(max_packets: u64) -> NewKeyRefusal {
        NewKeyRefusal {
            label: "store_cap_pending",
            reason: format!(
                "the publishes under way may fill this cluster's cap of {max_packets} packets \
                 (raft.max_stored_packets); retry"
            ),
            transient: true,
        }
    }

    fn uncounted(error: &pkraft_state::StoreError) -> NewKeyRefusal {
        NewKeyRefusal {
            label: "store_cap_pending",
            reason: format!("cannot read the store to hold its cap: {error}"),
            transient: true,
        }
    }
}

/// The cap and what counts against it; see the module docs.
pub struct StoreCap {
    /// `None`: no cap.
    max_packets: Option<u64>,
    started: Instant,
    /// Milliseconds since `started` of the last count, plus one (0: never counted).
    counted_at: AtomicU64,
    /// Packets stored at the last count.
    count: AtomicU64,
    /// New keys (at most: a packet whose key was not looked up counts as new) in the batches
    /// this node proposed as leader whose proposal has not returned. A returned proposal was
    /// applied on the leader, so the store's count holds its packets from then on; one that
    /// timed out keeps its reservation until it returns (`batcher::propose`).
    in_flight: Arc<Mutex<u64>>,
}

/// New keys of a batch under way, counted against the cap until dropped (once the proposal has
/// returned, applied or failed).
pub struct Reservation {
    in_flight: Arc<Mutex<u64>>,
    new_keys: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.new_keys > 0 {
            // Poisoned: a panic elsewhere while it was held; the count is still a number, and
            // a reservation never given back would refuse new keys until a restart.
            let mut in_flight = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *in_flight = in_flight.saturating_sub(self.new_keys);
        }
    }
}

/// The leader's answer for one batch.
pub struct Admission {
    /// Why each packet is refused (`None`: admitted), in the batch's order; empty when every
    /// packet is admitted.
    pub refused: Vec<Option<NewKeyRefusal>>,
    pub reservation: Reservation,
}

/// Room under the cap for one batch: `left` new keys now, `short` why not more.
struct Room {
    left: u64,
    short: Option<NewKeyRefusal>,
}

impl StoreCap {
    pub fn new(max_packets: Option<u64>) -> StoreCap {
        StoreCap {
            max_packets,
            started: Instant::now(),
            counted_at: AtomicU64::new(0),
            count: AtomicU64::new(0),
            in_flight: Arc::new(Mutex::new(0)),
        }
    }

    /// The quick check of the node a PUT reaches: whether the store is at the cap, by a count
    /// at most `COUNT_FRESH_FOR` old. A count that fails admits (the leader counts again).
    pub fn refusal(&self, store: &Store) -> Option<NewKeyRefusal> {
        let max_packets = self.max_packets?;
        (self.recent_count(store) >= max_packets).then(|| NewKeyRefusal::cap(max_packets))
    }

    /// The leader's check of a batch of `keys` about to be proposed: a key the store holds is
    /// admitted; a new one only with room under the cap (counting the batches under way) and
    /// no `disk` refusal. A new key short of room is refused for good (507) only while the
    /// store itself is at the cap; short only because of the batches under way, it is told to
    /// retry (503). The admitted new keys count against the cap until the reservation is
    /// dropped. Looks keys up only when the batch might not fit, so a batch far from the cap
    /// costs one count.
    pub fn admit<'k>(
        &self,
        store: &Store,
        disk: Option<NewKeyRefusal>,
        keys: impl ExactSizeIterator<Item = &'k KeyBytes>,
    ) -> Admission {
        let batch = u64::try_from(keys.len()).unwrap_or(u64::MAX);
        if self.max_packets.is_none() && disk.is_none() {
            return self.admitting(0, Vec::new());
        }
        // Poisoned: see `Reservation::drop`.
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut room = self.room(store, *in_flight);
        if disk.is_none() && batch <= room.left {
            *in_flight = in_flight.saturating_add(batch);
            return self.admitting(batch, Vec::new());
        }
        let mut new_keys = 0u64;
        let refused = keys
            .map(|key| {
                // A key this node found damaged counts as held: its owner's republish is what
                // repairs it. A lookup that fails otherwise admits nothing new.
                match store.holds(key) {
                    Ok(true) | Err(pkraft_state::StoreError::Quarantined(_)) => return None,
                    Ok(false) => {}
                    Err(e) => return Some(NewKeyRefusal::uncounted(&e)),
                }
                if let Some(disk) = &disk {
                    return Some(disk.clone());
                }
                if room.left == 0 {
                    return room.short.clone();
                }
                room.left -= 1;
                new_keys += 1;
                None
            })
            .collect();
        *in_flight = in_flight.saturating_add(new_keys);
        self.admitting(new_keys, refused)
    }

    /// The room under the cap with `in_flight` new keys under way.
    fn room(&self, store: &Store, in_flight: u64) -> Room {
        let Some(max_packets) = self.max_packets else {
            return Room {
                left: u64::MAX,
                short: None,
            };
        };
        match store.packet_count() {
            Ok(count) => {
                self.remember_count(count);
                let free = max_packets.saturating_sub(count);
                Room {
                    left: free.saturating_sub(in_flight),
                    short: Some(if free == 0 {
                        NewKeyRefusal::cap(max_packets)
                    } else {
                        NewKeyRefusal::pending(max_packets)
                    }),
                }
            }
            // New keys wait (a 503) until the store can be counted: the cap holds.
            Err(e) => {
                tracing::debug!(error = %e, "cannot count the stored packets for the cap");
                Room {
                    left: 0,
                    short: Some(NewKeyRefusal::uncounted(&e)),
                }
            }
        }
    }

    /// `new_keys` (already counted in `in_flight`) reserved, the rest of the batch as `refused`.
    fn admitting(&self, new_keys: u64, refused: Vec<Option<NewKeyRefusal>>) -> Admission {
        Admission {
            refused,
            reservation: Reservation {
                in_flight: self.in_flight.clone(),
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
    use pkraft_testkit::{iroh_packet, keypair};
    use pkraft_types::{Command, Payload, PublishItem};

    fn item(seed: u64) -> PublishItem {
        let key = keypair(seed);
        let payload = iroh_packet(&key, 1_000, &["192.0.2.1:1"]).to_relay_payload();
        PublishItem {
            key: key.public_key().to_bytes(),
            payload: Payload::new(payload).expect("valid length"),
        }
    }

    /// A store holding the packets of `seeds`.
    fn store_holding(dir: &std::path::Path, seeds: std::ops::Range<u64>) -> Store {
        let store = Store::open(&dir.join("state.redb")).expect("open");
        let mut txn = store.begin_apply(true).expect("begin");
        txn.apply(&Command::Publish {
            leader_time_micros: 0,
            packets: seeds.map(item).collect(),
        })
        .expect("apply");
        txn.commit(b"state").expect("commit");
        store
    }

    fn keys(seeds: std::ops::Range<u64>) -> Vec<KeyBytes> {
        seeds.map(|seed| item(seed).key).collect()
    }

    fn labels(admission: &Admission) -> Vec<Option<&'static str>> {
        admission
            .refused
            .iter()
            .map(|refusal| refusal.as_ref().map(|r| r.label))
            .collect()
    }

    /// Goal: the cap holds across batches under way: a new key is admitted only with room
    /// beside the store's count and the new keys reserved, refused for good (507) only when the
    /// store itself is full and told to retry (503) when only the batches under way fill it;
    /// republishes are never refused; a reservation gives its room back when dropped.
    #[test]
    fn admission_counts_the_batches_under_way_and_gives_room_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_holding(dir.path(), 0..8);
        let cap = StoreCap::new(Some(10));

        // Far from the cap: admitted whole, every packet reserved (none looked up).
        let first = cap.admit(&store, None, keys(100..102).iter());
        assert!(first.refused.is_empty());
        assert_eq!(*cap.in_flight.lock().expect("lock"), 2);

        // 8 stored + 2 under way: a stored key passes, new ones wait for the batch under way.
        let second = cap.admit(&store, None, [keys(6..7), keys(200..202)].concat().iter());
        assert_eq!(
            labels(&second),
            vec![None, Some("store_cap_pending"), Some("store_cap_pending")]
        );
        assert!(second.refused[1].as_ref().is_some_and(|r| r.transient));
        drop(second);
        drop(first);
        assert_eq!(*cap.in_flight.lock().expect("lock"), 0, "room given back");

        // Room for 2: the third new key of the batch waits.
        let third = cap.admit(&store, None, keys(300..303).iter());
        assert_eq!(labels(&third), vec![None, None, Some("store_cap_pending")]);
        assert_eq!(third.reservation.new_keys, 2);
        drop(third);

        // A store at the cap: new keys refused for good, republishes taken.
        let full_dir = tempfile::tempdir().expect("tempdir");
        let full = store_holding(full_dir.path(), 0..10);
        let at_cap = cap.admit(&full, None, [keys(9..10), keys(400..401)].concat().iter());
        assert_eq!(labels(&at_cap), vec![None, Some("store_full")]);
        assert!(at_cap.refused[1].as_ref().is_some_and(|r| !r.transient));
        assert!(
            cap.refusal(&full).is_some(),
            "the quick check sees the cap too"
        );

        // Below the new-key reserve of the disk every new key is refused, stored ones are not.
        let disk = NewKeyRefusal::disk("low".to_string());
        let low = StoreCap::new(None).admit(
            &store,
            Some(disk),
            [keys(0..1), keys(500..501)].concat().iter(),
        );
        assert_eq!(labels(&low), vec![None, Some("new_keys_disk_low")]);
    }

    #[test]
    fn the_derived_cap_leaves_the_new_key_reserve_and_has_a_floor() {
        let gib = 1u64 << 30;
        // A 10 GiB volume with the default reserves (1 GiB, new keys 3 GiB): 7 GiB at 4 KiB.
        assert_eq!(derived_max_packets(10 * gib, 3 * gib), 7 * gib / 4096);
        assert_eq!(derived_max_packets(gib, 3 * gib), DERIVED_MAX_PACKETS_MIN);
        assert_eq!(derived_max_packets(u64::MAX, 0), u64::MAX / 4096);
    }
}
