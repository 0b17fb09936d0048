//! [`Resolver`]: asks the DHT for keys the local replica lacks, with every wait bounded.
//!
//! - **Deadline**: a caller waits at most `dht.resolve_timeout` from when it asked, then gets
//!   `None` (the answer a plain miss gets).
//! - **One lookup per key**: concurrent callers for a key share its lookup.
//! - **Bounded lookups**: at most `dht.resolve_in_flight_max` at once, and at most
//!   [`WAITERS_PER_SLOT`] callers per lookup slot waiting; a miss beyond either is answered
//!   `None` at once (`shed`), so a flood of unknown keys costs neither memory nor waits.
//! - **First valid answer**: a lookup answers its callers with the first packet that verifies,
//!   and goes on in the background until the DHT query ends, keeping the most recent packet it
//!   sees (by the ordering rule) in the cache.
//! - **Caches**: found packets for their smallest record TTL (clamped), and keys not found (or
//!   not answered in time) for `dht.negative_cache_ttl`, both in memory only: anonymous DNS
//!   traffic never writes to the Raft log.
//! - **Invalid items**: items the key signed that are no valid packet are skipped; a lookup that
//!   finds only such items says so with the newest one's `seq` ([`DhtAnswer::OnlyInvalid`]),
//!   which a relay reports to pkarr clients (`Pkarr-Invalid-Signed-Packet-Seq`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_lite::StreamExt;
use mainline::async_dht::AsyncDht;
use pkraft_types::{KeyBytes, Payload, PublishOutcome, decide};
use tokio::sync::{Semaphore, watch};

use crate::item::from_item;
use crate::metrics::{DhtMetrics, ResolveResult};
use crate::settings::DhtSettings;

/// A packet the DHT answered with, and when this node received it: what a relay reports as
/// `Memento-Datetime`.
#[derive(Clone, Debug)]
pub struct FromDht {
    pub payload: Payload,
    pub seen: SystemTime,
}

/// What the DHT has for a key, as far as a lookup (or the caches) can tell.
#[derive(Clone, Debug)]
pub enum DhtAnswer {
    /// The most recent valid packet the lookup had seen when it answered.
    Found(FromDht),
    /// Items signed by the key were found, but none is a valid packet (a DNS packet that does
    /// not parse, say): the newest one's `seq`.
    OnlyInvalid { seq: i64 },
    /// Nothing, nothing in time, or too many lookups under way.
    Missing,
}

impl DhtAnswer {
    /// The packet, if one was found.
    pub fn found(self) -> Option<FromDht> {
        match self {
            DhtAnswer::Found(found) => Some(found),
            DhtAnswer::OnlyInvalid { .. } | DhtAnswer::Missing => None,
        }
    }
}

/// What a lookup reports to the callers waiting on it.
#[derive(Clone, Debug)]
enum LookupState {
    Running,
    Done(DhtAnswer, ResolveResult),
}

/// Per-entry lifetime: a found packet lives for its TTL, a miss for the negative TTL.
struct Lifetime;

impl moka::Expiry<KeyBytes, (DhtAnswer, Duration)> for Lifetime {
    fn expire_after_create(
        &self,
        _key: &KeyBytes,
        value: &(DhtAnswer, Duration),
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.1)
    }

    fn expire_after_update(
        &self,
        _key: &KeyBytes,
        value: &(DhtAnswer, Duration),
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.1)
    }
}

/// See the module docs.
pub struct Resolver {
    dht: AsyncDht,
    settings: DhtSettings,
    cache: moka::sync::Cache<KeyBytes, (DhtAnswer, Duration)>,
    lookups: Mutex<HashMap<KeyBytes, watch::Receiver<LookupState>>>,
    slots: Arc<Semaphore>,
    /// Callers waiting for a lookup, at most [`WAITERS_PER_SLOT`] per lookup slot: each holds a
    /// query (and a UDP miss slot) for up to the deadline, so a flood of queries for a few
    /// unknown keys must not hold them all.
    waiters: Arc<Semaphore>,
    metrics: Arc<DhtMetrics>,
}

/// Callers that may wait at once, per lookup slot.
const WAITERS_PER_SLOT: usize = 4;

/// How long before its first caller's deadline a lookup ends (at most a tenth of
/// `dht.resolve_timeout`).
const LOOKUP_MARGIN: Duration = Duration::from_millis(100);

/// Whether [`Resolver::resolve_from`] may answer from the caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A packet or a miss cached from an earlier lookup is the answer (DNS, and a relay's
    /// `CacheFirst`).
    CachedOrNew,
    /// Ask the DHT now (a relay's `NetworkOnly`).
    New,
}

impl Resolver {
    pub(crate) fn new(dht: AsyncDht, settings: &DhtSettings, metrics: Arc<DhtMetrics>) -> Self {
        Resolver {
            dht,
            settings: settings.clone(),
            cache: moka::sync::Cache::builder()
                .max_capacity(settings.resolve_cache_entries)
                .expire_after(Lifetime)
                .build(),
            lookups: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(settings.resolve_in_flight_max)),
            waiters: Arc::new(Semaphore::new(
                settings
                    .resolve_in_flight_max
                    .saturating_mul(WAITERS_PER_SLOT),
            )),
            metrics,
        }
    }

    /// The most recent valid packet the DHT has for `key`, or `None` when it has none, does not
    /// answer within `dht.resolve_timeout`, or too many lookups (or callers waiting for them)
    /// are under way.
    pub async fn resolve(self: &Arc<Self>, key: &KeyBytes) -> Option<Payload> {
        self.resolve_from(key, Lookup::CachedOrNew)
            .await
            .found()
            .map(|found| found.payload)
    }

    /// [`Resolver::resolve`], with when the packet was received; with [`Lookup::New`] the
    /// caches are not asked (a lookup already running for the key is joined, and the bounds on
    /// lookups and waiters hold as for any other).
    pub async fn resolve_from(self: &Arc<Self>, key: &KeyBytes, lookup: Lookup) -> DhtAnswer {
        if lookup == Lookup::CachedOrNew
            && let Some((cached, _)) = self.cache.get(key)
        {
            let result = match cached {
                DhtAnswer::Found(_) => ResolveResult::CacheHit,
                DhtAnswer::OnlyInvalid { .. } | DhtAnswer::Missing => ResolveResult::CacheMiss,
            };
            self.metrics.resolved(result, None);
            return cached;
        }
        let asked = Instant::now();
        let deadline = tokio::time::Instant::now() + self.settings.resolve_timeout;
        let Ok(_waiting) = self.waiters.try_acquire() else {
            self.metrics.resolved(ResolveResult::Shed, None);
            return DhtAnswer::Missing;
        };
        let Some(mut state) = self.join_or_start(key, deadline) else {
            self.metrics.resolved(ResolveResult::Shed, None);
            return DhtAnswer::Missing;
        };
        let done = tokio::time::timeout_at(
            deadline,
            state.wait_for(|state| matches!(state, LookupState::Done(..))),
        )
        .await;
        let (found, result) = match done {
            Ok(Ok(state)) => match &*state {
                LookupState::Done(answer, result) => (answer.clone(), *result),
                LookupState::Running => (DhtAnswer::Missing, ResolveResult::Timeout),
            },
            // The lookup task ended without an answer (it panicked): a miss is the safe answer.
            Ok(Err(_)) => (DhtAnswer::Missing, ResolveResult::NotFound),
            Err(_) => (DhtAnswer::Missing, ResolveResult::Timeout),
        };
        self.metrics.resolved(result, Some(asked.elapsed()));
        found
    }

    /// The running lookup for `key`, or a new one if a slot is free (`None`: none is), which
    /// answers before `caller_deadline`.
    fn join_or_start(
        self: &Arc<Self>,
        key: &KeyBytes,
        caller_deadline: tokio::time::Instant,
    ) -> Option<watch::Receiver<LookupState>> {
        let mut lookups = self.lookups.lock().ok()?;
        if let Some(running) = lookups.get(key) {
            return Some(running.clone());
        }
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        let (report, state) = watch::channel(LookupState::Running);
        lookups.insert(*key, state.clone());
        drop(lookups);
        let resolver = self.clone();
        let key = *key;
        self.metrics.lookups_in_flight.inc();
        tokio::spawn(async move {
            // In a task of its own: mainline panics if its actor thread died, and the map entry
            // and the gauge must be cleaned up either way (the waiters see the sender dropped).
            let inner = resolver.clone();
            let _ = tokio::spawn(async move { inner.look_up(key, report, caller_deadline).await })
                .await;
            if let Ok(mut lookups) = resolver.lookups.lock() {
                lookups.remove(&key);
            }
            resolver.metrics.lookups_in_flight.dec();
            drop(slot);
        });
        Some(state)
    }

    /// Runs the DHT query for `key`: reports the first valid packet (or the end, or the
    /// deadline), then keeps reading until the query ends or the deadline passes, caching the
    /// most recent packet seen. The deadline is [`LOOKUP_MARGIN`] before the caller's that
    /// started it, so that what the query found by then (a miss, or only invalid items and
    /// their seq) reaches that caller rather than only the cache.
    async fn look_up(
        &self,
        key: KeyBytes,
        report: watch::Sender<LookupState>,
        caller_deadline: tokio::time::Instant,
    ) {
        let margin = LOOKUP_MARGIN.min(self.settings.resolve_timeout / 10);
        let deadline = caller_deadline - margin;
        let mut items = self.dht.get_mutable(&key, None, None);
        let mut best: Option<Payload> = None;
        // The newest item that is no valid packet (mainline has checked its signature).
        let mut newest_invalid: Option<i64> = None;
        let mut result = ResolveResult::NotFound;
        loop {
            let next = tokio::time::timeout_at(deadline, items.next()).await;
            let item = match next {
                Ok(Some(item)) => item,
                // The query ended.
                Ok(None) => break,
                Err(_) => {
                    result = ResolveResult::Timeout;
                    break;
                }
            };
            let Some(packet) = from_item(&item) else {
                newest_invalid = newest_invalid.max(Some(item.seq()));
                continue;
            };
            let newer = decide(best.as_ref(), packet.payload()) == PublishOutcome::Stored;
            if !newer {
                continue;
            }
            let found = FromDht {
                payload: packet.payload().clone(),
                seen: SystemTime::now(),
            };
            let ttl = self.ttl_of(&found.payload);
            self.cache
                .insert(key, (DhtAnswer::Found(found.clone()), ttl));
            if best.is_none() {
                report.send_replace(LookupState::Done(
                    DhtAnswer::Found(found.clone()),
                    ResolveResult::Found,
                ));
            }
            best = Some(found.payload);
        }
        if best.is_none() {
            let answer = match newest_invalid {
                Some(seq) => DhtAnswer::OnlyInvalid { seq },
                None => DhtAnswer::Missing,
            };
            self.cache
                .insert(key, (answer.clone(), self.negative_ttl()));
            report.send_replace(LookupState::Done(answer, result));
        }
    }

    /// The most recent valid packet the DHT holds for `key` that is newer than `than`, looked
    /// up to the end of the query (bounded by `dht.resolve_timeout`). For the publisher, which
    /// was told a newer packet exists.
    pub(crate) async fn newest_after(&self, key: &KeyBytes, than: &Payload) -> Option<Payload> {
        let seq = i64::try_from(than.timestamp_micros()).ok();
        let mut items = self.dht.get_mutable(key, None, seq);
        let mut best: Option<Payload> = None;
        let deadline = tokio::time::Instant::now() + self.settings.resolve_timeout;
        while let Ok(Some(item)) = tokio::time::timeout_at(deadline, items.next()).await {
            let Some(packet) = from_item(&item) else {
                continue;
            };
            if decide(Some(than), packet.payload()) == PublishOutcome::Stored
                && decide(best.as_ref(), packet.payload()) == PublishOutcome::Stored
            {
                best = Some(packet.payload().clone());
            }
        }
        best
    }

    fn negative_ttl(&self) -> Duration {
        self.settings.negative_cache_ttl
    }

    /// The packet's smallest record TTL, clamped to the configured range.
    fn ttl_of(&self, payload: &Payload) -> Duration {
        let smallest = pkraft_types::packet::dns_records(payload)
            .ok()
            .and_then(|records| records.iter().map(|r| r.ttl).min())
            .map_or(self.settings.resolve_cache_ttl_min, |secs| {
                Duration::from_secs(u64::from(secs))
            });
        smallest.clamp(
            self.settings.resolve_cache_ttl_min,
            self.settings.resolve_cache_ttl_max,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use mainline::{Dht, Testnet};
    use pkraft_testkit::{iroh_packet, keypair};
    use pkraft_types::VerifiedPacket;

    use super::*;
    use crate::item::to_item;

    fn resolver(testnet: &Testnet, in_flight: usize) -> (Arc<Resolver>, Arc<DhtMetrics>) {
        let dht = Dht::builder()
            .bootstrap(&testnet.bootstrap)
            .bind_address(Ipv4Addr::LOCALHOST)
            .request_timeout(Duration::from_millis(300))
            .build()
            .expect("DHT client")
            .as_async();
        let settings = DhtSettings {
            resolve_in_flight_max: in_flight,
            resolve_timeout: Duration::from_secs(2),
            ..DhtSettings::default()
        };
        let metrics = Arc::new(DhtMetrics::new().expect("metrics"));
        (
            Arc::new(Resolver::new(dht, &settings, metrics.clone())),
            metrics,
        )
    }

    /// Puts `item` to the testnet from a node of its own.
    async fn put_to(testnet: &Testnet, item: mainline::MutableItem) {
        let putter = Dht::builder()
            .bootstrap(&testnet.bootstrap)
            .bind_address(Ipv4Addr::LOCALHOST)
            .build()
            .expect("putter")
            .as_async();
        assert!(putter.bootstrapped().await);
        putter
            .put_mutable(item, None)
            .await
            .expect("put to the testnet");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_with_only_invalid_items_is_reported_with_their_seq() {
        let testnet = Testnet::builder(5).build().expect("testnet");
        let keys = keypair(33);
        let key = keys.public_key().to_bytes();
        let seq: i64 = 1_700_000_000_000_000;
        // Signed by the key, as BEP 44 asks, but no DNS packet: no valid pkarr packet.
        let value = b"not a DNS packet";
        let payload = pkraft_testkit::sign_raw(&keys, seq as u64, value);
        let signature: [u8; 64] = payload[..64].try_into().expect("a signature");
        let item = mainline::MutableItem::new_signed_unchecked(key, signature, value, seq, None);
        assert!(from_item(&item).is_none(), "the item is not a valid packet");
        put_to(&testnet, item).await;

        let (resolver, metrics) = resolver(&testnet, 4);
        let answer = resolver.resolve_from(&key, Lookup::New).await;
        assert!(
            matches!(answer, DhtAnswer::OnlyInvalid { seq: found } if found == seq),
            "{answer:?}"
        );
        // Cached as a miss that knows the seq; DNS sees a miss.
        let cached = resolver.resolve_from(&key, Lookup::CachedOrNew).await;
        assert!(
            matches!(cached, DhtAnswer::OnlyInvalid { .. }),
            "{cached:?}"
        );
        assert_eq!(resolver.resolve(&key).await, None);
        assert_eq!(metrics.resolves(ResolveResult::CacheMiss), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_packet_on_the_dht_is_found_verified_and_cached() {
        let testnet = Testnet::builder(5).build().expect("testnet");
        let keys = keypair(31);
        let signed = iroh_packet(&keys, 1_700_000_000_000_000, &["192.0.2.1:1"]);
        let packet = VerifiedPacket::verify(&keys.public_key(), signed.to_relay_payload())
            .expect("verifies");
        let key = packet.key_bytes();
        put_to(&testnet, to_item(&key, packet.payload()).expect("item")).await;

        let (resolver, metrics) = resolver(&testnet, 4);
        assert_eq!(
            resolver.resolve(&key).await.as_ref(),
            Some(packet.payload())
        );
        assert_eq!(metrics.resolves(ResolveResult::Found), 1);
        // The second ask is answered from the cache, without a lookup.
        assert_eq!(
            resolver.resolve(&key).await.as_ref(),
            Some(packet.payload())
        );
        assert_eq!(metrics.resolves(ResolveResult::CacheHit), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_askers_share_one_lookup_and_a_miss_is_cached() {
        let testnet = Testnet::builder(5).build().expect("testnet");
        // One lookup slot (and so 4 waiters): askers that did not share the lookup would be
        // shed.
        let (resolver, metrics) = resolver(&testnet, 1);
        let key = keypair(32).public_key().to_bytes();
        let askers: Vec<_> = (0..4)
            .map(|_| {
                let resolver = resolver.clone();
                tokio::spawn(async move { resolver.resolve(&key).await })
            })
            .collect();
        for asker in askers {
            assert_eq!(asker.await.expect("asker"), None);
        }
        assert_eq!(metrics.resolves(ResolveResult::Shed), 0);
        let asked =
            metrics.resolves(ResolveResult::NotFound) + metrics.resolves(ResolveResult::Timeout);
        assert_eq!(asked, 4);
        // The miss is remembered: no lookup this time (none counted, none started).
        assert_eq!(resolver.resolve(&key).await, None);
        assert_eq!(metrics.resolves(ResolveResult::CacheMiss), 1);
        assert_eq!(
            metrics.resolves(ResolveResult::NotFound) + metrics.resolves(ResolveResult::Timeout),
            4
        );
        // While the only slot is held (taken here, rather than by a lookup whose timing the
        // DHT's thread decides), another key is shed; once it is free, looked up.
        let other = keypair(33).public_key().to_bytes();
        // The last lookup's task gives its slot back a moment after its askers have their
        // answer: wait for it (bounded).
        let slot = tokio::time::timeout(
            Duration::from_secs(10),
            resolver.slots.clone().acquire_owned(),
        )
        .await
        .expect("the slot is given back")
        .expect("the semaphore is open");
        assert_eq!(resolver.resolve(&other).await, None);
        assert_eq!(metrics.resolves(ResolveResult::Shed), 1);
        drop(slot);
        assert_eq!(resolver.resolve(&other).await, None);
        assert_eq!(
            metrics.resolves(ResolveResult::NotFound) + metrics.resolves(ResolveResult::Timeout),
            5
        );
    }
}
