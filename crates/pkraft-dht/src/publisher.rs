//! The leader's publisher: puts what the cluster stores to the DHT, in the background.
//!
//! - **Publish**: keys the outbox ([`pkraft_raft::DhtOutbox`]) holds are put once they have
//!   waited `dht.publish_delay`, in their newest version (read from the store at put time). A
//!   put that fails is tried again later; the key stays in the outbox meanwhile.
//! - **Republish**: a sweep over every stored key in key order (keys are hashes, so the order is
//!   as good as random), paced to finish about once per `dht.republish_interval`, each key's
//!   spacing jittered by ±10 %. The sweep only uses the budget publishing leaves.
//! - **Budget**: both share `dht.put_rate` puts per second and `dht.puts_in_flight` puts at once.
//! - **Progress**: every `dht.progress_interval`, when puts finished since, the leader commits
//!   how far it got ([`pkraft_types::Command::DhtProgress`]); the sweep's place alone is
//!   committed at most once a minute, so an idle cluster writes no entry a second. A new leader
//!   starts from the last committed progress, so a leader change repeats at most one interval
//!   of puts (and a minute of the sweep).
//! - **Newer on the DHT**: BEP 44 nodes refuse an item older than the one they hold, so a put
//!   never overwrites the owner's newer packet. When a put is refused for that, the publisher
//!   fetches the newer packet, verifies it (and, as a PUT would, refuses a timestamp more than
//!   `http.max_future_skew` ahead) and publishes it to the cluster like any PUT (the ordering
//!   rule decides), so the cluster serves the owner's latest. A refusal with no newer packet
//!   found (mainline also refuses locally while another put of the key is under way) is a
//!   failed put, tried again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{Quota, RateLimiter};
use mainline::async_dht::AsyncDht;
use mainline::errors::{ConcurrencyError, PutMutableError};
use pkraft_raft::{Node, OutboxItem, Progress};
use pkraft_types::too_far_ahead;
use pkraft_types::{KeyBytes, Payload, PublishOutcome, VerifiedPacket};
use tokio::sync::Semaphore;

use crate::item::to_item;
use crate::metrics::{DhtMetrics, PutKind, PutResult};
use crate::resolver::Resolver;
use crate::settings::DhtSettings;

/// How often the loop looks for work when there is none.
const TICK: Duration = Duration::from_millis(100);
/// Keys read from the store per page of the republish sweep.
const SWEEP_PAGE: usize = 256;
/// A publish put that failed is tried again after at least this long.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// The sweep's place alone is committed at most this often.
const SWEEP_PROGRESS_INTERVAL: Duration = Duration::from_secs(60);

type Budget = governor::DefaultDirectRateLimiter;

pub(crate) struct Publisher {
    node: Arc<Node>,
    dht: AsyncDht,
    resolver: Arc<Resolver>,
    settings: DhtSettings,
    metrics: Arc<DhtMetrics>,
    budget: Budget,
    slots: Arc<Semaphore>,
    /// `http.max_future_skew`: a newer packet found on the DHT is held to it, as a PUT is.
    max_future_skew: Duration,
}

/// The republish sweep's place, kept by the leader.
struct Sweep {
    /// The last key put in this round (`None`: the round starts at the first key).
    after: Option<KeyBytes>,
    /// Keys read ahead of the sweep (their packets are read again when put).
    page: std::collections::VecDeque<KeyBytes>,
    /// When the next key is due.
    next_due: Instant,
    /// Keys this round has put, and how many it covers.
    done: u64,
    keys: u64,
    jitter: Jitter,
}

impl Publisher {
    pub(crate) fn new(
        node: Arc<Node>,
        dht: AsyncDht,
        resolver: Arc<Resolver>,
        settings: &DhtSettings,
        metrics: Arc<DhtMetrics>,
        max_future_skew: Duration,
    ) -> Self {
        Publisher {
            node,
            dht,
            resolver,
            settings: settings.clone(),
            metrics,
            budget: RateLimiter::direct(Quota::per_second(settings.put_rate)),
            slots: Arc::new(Semaphore::new(settings.puts_in_flight)),
            max_future_skew,
        }
    }

    /// Runs for as long as the node does: publishes while this node leads, idles otherwise.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut leading = false;
        let mut sweep = Sweep::new(None);
        let mut committed = Progress::default();
        let mut last_progress = Instant::now();
        let mut sweep_committed_at = Instant::now();
        let mut finished_at_commit = 0;
        loop {
            self.update_gauges();
            if !self.node.leadership().is_leader() {
                if leading {
                    leading = false;
                    self.metrics.republish_lag_seconds.set(0.0);
                }
                tokio::time::sleep(TICK).await;
                continue;
            }
            let outbox = self.node.dht().outbox();
            if !leading {
                // Carry on from the last progress the cluster committed.
                leading = true;
                committed = outbox.committed_progress();
                sweep = Sweep::new(committed.republished_through);
                finished_at_commit = outbox.finished();
                tracing::info!(
                    published_through = committed.published_through,
                    "leading: publishing to the DHT from the committed progress"
                );
            }
            let mut worked = false;
            if self.settings.publish {
                worked |= self.publish_ready().await;
            }
            if !worked && !self.settings.republish_interval.is_zero() {
                worked |= self.republish_next(&mut sweep).await;
            }
            if last_progress.elapsed() >= self.settings.progress_interval {
                last_progress = Instant::now();
                let finished = outbox.finished();
                let published_through = outbox.published_through();
                let published = finished != finished_at_commit
                    && published_through > committed.published_through;
                let swept = sweep.after != committed.republished_through
                    && sweep_committed_at.elapsed() >= SWEEP_PROGRESS_INTERVAL;
                if published || swept {
                    let progress = Progress {
                        published_through: published_through.max(committed.published_through),
                        republished_through: sweep.after,
                    };
                    match self.node.dht().commit_progress(progress).await {
                        Ok(()) => {
                            committed = progress;
                            finished_at_commit = finished;
                            sweep_committed_at = Instant::now();
                            self.metrics.progress_commits.inc();
                        }
                        Err(e) => tracing::debug!(error = %e, "DHT progress not committed"),
                    }
                }
            }
            if !worked {
                tokio::time::sleep(TICK).await;
            }
        }
    }

    fn update_gauges(&self) {
        let outbox = self.node.dht().outbox();
        self.metrics
            .publish_backlog
            .set(i64::try_from(outbox.backlog()).unwrap_or(i64::MAX));
        self.metrics
            .publish_overflowed
            .set(i64::try_from(outbox.overflowed()).unwrap_or(i64::MAX));
    }

    /// Starts puts for the keys ready in the outbox, within the budget. Whether any started.
    async fn publish_ready(self: &Arc<Self>) -> bool {
        let free = self.slots.available_permits();
        if free == 0 {
            return false;
        }
        let ready = self
            .node
            .dht()
            .outbox()
            .take_ready(self.settings.publish_delay, free);
        if ready.is_empty() {
            return false;
        }
        for item in ready {
            if !self.node.leadership().is_leader() {
                self.node.dht().outbox().release(item);
                continue;
            }
            self.budget.until_ready().await;
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                self.node.dht().outbox().release(item);
                continue;
            };
            let publisher = self.clone();
            tokio::spawn(async move {
                // In a task of its own: mainline panics if its actor thread died, and a key left
                // taken would hold the progress back for good.
                let inner = publisher.clone();
                if tokio::spawn(async move { inner.publish_one(item).await })
                    .await
                    .is_err()
                {
                    publisher.node.dht().outbox().retry(item, RETRY_AFTER);
                }
                drop(slot);
            });
        }
        true
    }

    async fn publish_one(&self, item: OutboxItem) {
        let outbox = self.node.dht().outbox();
        let stored = match self.node.store().get(&item.key) {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a packet to put to the DHT");
                outbox.retry(item, RETRY_AFTER);
                return;
            }
        };
        // Expired or removed since it was stored: nothing to put.
        let Some(stored) = stored else {
            outbox.finish(item);
            return;
        };
        match self.put(&item.key, &stored.payload, PutKind::Publish).await {
            PutResult::Failed => outbox.retry(item, RETRY_AFTER.max(self.settings.publish_delay)),
            PutResult::Stored | PutResult::NewerOnDht => outbox.finish(item),
        }
    }

    /// Puts the next key of the sweep if it is due and the budget allows. Whether it did.
    async fn republish_next(self: &Arc<Self>, sweep: &mut Sweep) -> bool {
        let now = Instant::now();
        let interval = self.settings.republish_interval;
        // Behind schedule (the budget went to publishing) the sweep catches up as fast as the
        // budget allows, but by at most one round: an idle spell is not made up for.
        if let Some(round_ago) = now.checked_sub(interval) {
            sweep.next_due = sweep.next_due.max(round_ago);
        }
        if now < sweep.next_due {
            self.metrics.republish_lag_seconds.set(0.0);
            return false;
        }
        self.metrics
            .republish_lag_seconds
            .set(now.duration_since(sweep.next_due).as_secs_f64());
        if self.slots.available_permits() == 0 || self.budget.check().is_err() {
            return false;
        }
        if sweep.page.is_empty() && !self.refill(sweep).await {
            // Nothing stored (or a read failed): nothing is due until there is.
            sweep.next_due = sweep.next_due.max(now);
            return false;
        }
        let Some(key) = sweep.page.pop_front() else {
            return false;
        };
        sweep.after = Some(key);
        sweep.done += 1;
        self.metrics
            .republish_round_done
            .set(i64::try_from(sweep.done).unwrap_or(i64::MAX));
        // Spread the round over the interval: each key gets interval / keys, jittered.
        let spacing = interval.div_f64(sweep.keys.max(1) as f64);
        let step = sweep.jitter.around(spacing);
        sweep.next_due = sweep.next_due.checked_add(step).unwrap_or(now);
        // A key waiting in the outbox is put by the publisher anyway.
        if self.node.dht().outbox().is_pending(&key) {
            return true;
        }
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            return false;
        };
        let publisher = self.clone();
        tokio::spawn(async move {
            // Read now, not when the page was: the key may have changed since.
            if let Ok(Some(stored)) = publisher.node.store().get(&key) {
                let inner = publisher.clone();
                let _ = tokio::spawn(async move {
                    inner.put(&key, &stored.payload, PutKind::Republish).await
                })
                .await;
            }
            drop(slot);
        });
        true
    }

    /// Reads the next page of the sweep; at the end of the keys a new round starts. Whether
    /// there is anything to put.
    async fn refill(&self, sweep: &mut Sweep) -> bool {
        let store = self.node.store().clone();
        let after = sweep.after;
        let page = tokio::task::spawn_blocking(move || {
            let page = store.packets_after(after.as_ref(), SWEEP_PAGE)?;
            let count = store.packet_count()?;
            Ok::<_, pkraft_state::StoreError>((page, count))
        })
        .await;
        let (page, count) = match page {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read stored packets to republish");
                return false;
            }
            Err(e) => {
                tracing::warn!(error = %e, "republish page read failed");
                return false;
            }
        };
        sweep.keys = count;
        self.metrics
            .republish_round_keys
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        if page.is_empty() {
            if sweep.after.is_some() {
                // The end of the keys: the next round starts at the first key.
                self.metrics.republish_rounds.inc();
                sweep.after = None;
                sweep.done = 0;
            }
            return false;
        }
        sweep.page.extend(page.into_iter().map(|(key, _)| key));
        true
    }

    /// Puts `payload` as `key`'s item; when the DHT holds a newer packet, publishes that one to
    /// the cluster instead.
    async fn put(&self, key: &KeyBytes, payload: &Payload, kind: PutKind) -> PutResult {
        let Some(item) = to_item(key, payload) else {
            self.metrics.put(kind, PutResult::Failed, 0);
            return PutResult::Failed;
        };
        // mainline answers every put, at the latest after its request timeout per round trip.
        let put = tokio::time::timeout(
            self.settings.request_timeout.saturating_mul(8),
            self.dht.put_mutable(item, None),
        )
        .await;
        let result = match put {
            Ok(Ok(outcome)) => {
                self.metrics.put(kind, PutResult::Stored, outcome.stored_at);
                return PutResult::Stored;
            }
            // DHT nodes hold a more recent item (or one the CAS did not expect): look for it.
            Ok(Err(PutMutableError::Concurrency(
                ConcurrencyError::NotMostRecent | ConcurrencyError::CasFailed,
            ))) => {
                if self.import_newer(key, payload).await {
                    PutResult::NewerOnDht
                } else {
                    PutResult::Failed
                }
            }
            // Refused by mainline itself: another put of this key is under way.
            Ok(Err(PutMutableError::Concurrency(ConcurrencyError::ConflictRisk))) => {
                PutResult::Failed
            }
            Ok(Err(PutMutableError::Query(e))) => {
                tracing::debug!(error = %e, "DHT put failed");
                PutResult::Failed
            }
            Err(_) => PutResult::Failed,
        };
        self.metrics.put(kind, result, 0);
        result
    }

    /// Publishes to the cluster the packet newer than `payload` that the DHT holds for `key`.
    /// Whether the DHT has one (the cluster may still refuse it: too far in the future).
    async fn import_newer(&self, key: &KeyBytes, payload: &Payload) -> bool {
        let Some(newer) = self.resolver.newest_after(key, payload).await else {
            return false;
        };
        let now_micros = self.node.clock().skew_reference_micros();
        if too_far_ahead(now_micros, newer.timestamp_micros(), self.max_future_skew).is_some() {
            tracing::debug!("newer DHT packet is too far in the future; not published");
            return true;
        }
        let packet = match VerifiedPacket::verify_stored(key, newer.into()) {
            Ok(packet) => packet,
            Err(e) => {
                tracing::debug!(error = %e, "newer DHT packet does not verify");
                return true;
            }
        };
        match self.node.writes().publish(packet).await {
            Ok(published) if published.outcome == PublishOutcome::Stored => {
                self.metrics.imported.inc();
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "newer DHT packet not published"),
        }
        true
    }
}

impl Sweep {
    fn new(after: Option<KeyBytes>) -> Self {
        Sweep {
            after,
            page: Default::default(),
            next_due: Instant::now(),
            done: 0,
            keys: 0,
            jitter: Jitter::seeded(),
        }
    }
}

/// ±10 % around a spacing: xorshift, seeded from the clock (no need for a strong generator).
struct Jitter(u64);

impl Jitter {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.subsec_nanos());
        Jitter(u64::from(nanos) | 1)
    }

    fn around(&mut self, spacing: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        // 0.9 .. 1.1
        let factor = 0.9 + (self.0 % 1000) as f64 / 5000.0;
        spacing.mul_f64(factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        let mut jitter = Jitter::seeded();
        let spacing = Duration::from_millis(1000);
        let mut total = Duration::ZERO;
        for _ in 0..1000 {
            let d = jitter.around(spacing);
            assert!(
                d >= Duration::from_millis(900) && d <= Duration::from_millis(1100),
                "{d:?}"
            );
            total += d;
        }
        // About the interval on average.
        assert!(total > Duration::from_secs(980) && total < Duration::from_secs(1020));
    }
}
