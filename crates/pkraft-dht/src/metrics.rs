//! `pkraft_dht_*` metrics (docs/METRICS.md).

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    exponential_buckets,
};

/// What a put ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutResult {
    /// At least one DHT node stored the item.
    Stored,
    /// No node stored it (no nodes found, timeout, error answers).
    Failed,
    /// DHT nodes hold a newer packet for the key than the cluster (its owner published there
    /// directly); the item was not stored over it.
    NewerOnDht,
}

impl PutResult {
    fn label(self) -> &'static str {
        match self {
            PutResult::Stored => "stored",
            PutResult::Failed => "failed",
            PutResult::NewerOnDht => "newer_on_dht",
        }
    }
}

/// Why a put was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutKind {
    /// A packet the cluster stored (new or changed).
    Publish,
    /// The periodic sweep over every stored packet.
    Republish,
}

impl PutKind {
    fn label(self) -> &'static str {
        match self {
            PutKind::Publish => "publish",
            PutKind::Republish => "republish",
        }
    }
}

/// How a resolve ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveResult {
    /// From the cache of packets found earlier.
    CacheHit,
    /// From the cache of keys the DHT did not have.
    CacheMiss,
    /// A lookup found a valid packet.
    Found,
    /// A lookup ended without a valid packet.
    NotFound,
    /// The deadline passed first.
    Timeout,
    /// Too many lookups in flight: answered as a miss at once.
    Shed,
}

impl ResolveResult {
    fn label(self) -> &'static str {
        match self {
            ResolveResult::CacheHit => "cache_hit",
            ResolveResult::CacheMiss => "cache_miss",
            ResolveResult::Found => "found",
            ResolveResult::NotFound => "not_found",
            ResolveResult::Timeout => "timeout",
            ResolveResult::Shed => "shed",
        }
    }
}

pub struct DhtMetrics {
    puts: IntCounterVec,
    put_stored_nodes: Histogram,
    pub(crate) imported: IntCounter,
    pub(crate) publish_backlog: IntGauge,
    pub(crate) publish_overflowed: IntGauge,
    pub(crate) republish_rounds: IntCounter,
    pub(crate) republish_round_keys: IntGauge,
    pub(crate) republish_round_done: IntGauge,
    pub(crate) republish_lag_seconds: prometheus::Gauge,
    pub(crate) progress_commits: IntCounter,
    resolves: IntCounterVec,
    resolve_seconds: Histogram,
    pub(crate) lookups_in_flight: IntGauge,
    pub(crate) dht_size_estimate: IntGauge,
}

impl DhtMetrics {
    pub fn new() -> prometheus::Result<Self> {
        Ok(DhtMetrics {
            puts: IntCounterVec::new(
                Opts::new(
                    "pkraft_dht_puts_total",
                    "Puts of stored packets to the Mainline DHT, by kind (publish, republish) \
                     and result (stored, failed, newer_on_dht).",
                ),
                &["kind", "result"],
            )?,
            put_stored_nodes: Histogram::with_opts(
                HistogramOpts::new(
                    "pkraft_dht_put_stored_nodes",
                    "DHT nodes that stored each successful put.",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 20.0, 30.0]),
            )?,
            imported: IntCounter::new(
                "pkraft_dht_imported_total",
                "Newer packets found on the DHT during a put and published to the cluster.",
            )?,
            publish_backlog: IntGauge::new(
                "pkraft_dht_publish_backlog",
                "Keys stored by the cluster and not yet put to the DHT (this replica's outbox).",
            )?,
            publish_overflowed: IntGauge::new(
                "pkraft_dht_publish_overflowed",
                "Keys left to the republish sweep because the outbox was full (since start).",
            )?,
            republish_rounds: IntCounter::new(
                "pkraft_dht_republish_rounds_total",
                "Republish sweeps over every stored key completed by this node as leader.",
            )?,
            republish_round_keys: IntGauge::new(
                "pkraft_dht_republish_round_keys",
                "Stored keys the current republish sweep covers.",
            )?,
            republish_round_done: IntGauge::new(
                "pkraft_dht_republish_round_done",
                "Keys the current republish sweep has put so far.",
            )?,
            republish_lag_seconds: prometheus::Gauge::new(
                "pkraft_dht_republish_lag_seconds",
                "How far the republish sweep runs behind its schedule (0: on time); it grows \
                 when dht.put_rate cannot cover the stored keys within dht.republish_interval.",
            )?,
            progress_commits: IntCounter::new(
                "pkraft_dht_progress_commits_total",
                "Progress entries this node committed as the DHT publisher.",
            )?,
            resolves: IntCounterVec::new(
                Opts::new(
                    "pkraft_dht_resolves_total",
                    "Misses of the local replica asked of the DHT, by result.",
                ),
                &["result"],
            )?,
            resolve_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "pkraft_dht_resolve_duration_seconds",
                    "Time a query waited for the DHT (cache answers excluded).",
                )
                .buckets(exponential_buckets(0.001, 2.0, 13)?),
            )?,
            lookups_in_flight: IntGauge::new(
                "pkraft_dht_lookups_in_flight",
                "DHT lookups under way (bounded by dht.resolve_in_flight_max).",
            )?,
            dht_size_estimate: IntGauge::new(
                "pkraft_dht_size_estimate",
                "The DHT node's estimate of the DHT's size (0: no routing table: not bootstrapped).",
            )?,
        }
        .with_all_series())
    }

    /// Every labelled series exists from the start (at 0), so rates and alerts need no
    /// `absent()` guards.
    fn with_all_series(self) -> Self {
        for kind in [PutKind::Publish, PutKind::Republish] {
            for result in [PutResult::Stored, PutResult::Failed, PutResult::NewerOnDht] {
                self.puts.with_label_values(&[kind.label(), result.label()]);
            }
        }
        for result in [
            ResolveResult::CacheHit,
            ResolveResult::CacheMiss,
            ResolveResult::Found,
            ResolveResult::NotFound,
            ResolveResult::Timeout,
            ResolveResult::Shed,
        ] {
            self.resolves.with_label_values(&[result.label()]);
        }
        self
    }

    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.puts.clone()))?;
        registry.register(Box::new(self.put_stored_nodes.clone()))?;
        registry.register(Box::new(self.imported.clone()))?;
        registry.register(Box::new(self.publish_backlog.clone()))?;
        registry.register(Box::new(self.publish_overflowed.clone()))?;
        registry.register(Box::new(self.republish_rounds.clone()))?;
        registry.register(Box::new(self.republish_round_keys.clone()))?;
        registry.register(Box::new(self.republish_round_done.clone()))?;
        registry.register(Box::new(self.republish_lag_seconds.clone()))?;
        registry.register(Box::new(self.progress_commits.clone()))?;
        registry.register(Box::new(self.resolves.clone()))?;
        registry.register(Box::new(self.resolve_seconds.clone()))?;
        registry.register(Box::new(self.lookups_in_flight.clone()))?;
        registry.register(Box::new(self.dht_size_estimate.clone()))?;
        Ok(())
    }

    pub(crate) fn put(&self, kind: PutKind, result: PutResult, stored_at: u32) {
        self.puts
            .with_label_values(&[kind.label(), result.label()])
            .inc();
        if result == PutResult::Stored {
            self.put_stored_nodes.observe(f64::from(stored_at));
        }
    }

    pub(crate) fn resolved(&self, result: ResolveResult, waited: Option<std::time::Duration>) {
        self.resolves.with_label_values(&[result.label()]).inc();
        if let Some(waited) = waited {
            self.resolve_seconds.observe(waited.as_secs_f64());
        }
    }

    /// Resolves so far that ended with `result` (tests).
    pub fn resolves(&self, result: ResolveResult) -> u64 {
        self.resolves.with_label_values(&[result.label()]).get()
    }
}
