//! Prometheus metrics of the consensus layer and the local replica (names and meanings in
//! docs/METRICS.md).
//!
//! Two kinds: [`NodeMetrics`], events counted where they happen (batches, forwards, leader
//! changes, snapshots, expiry), and [`StateCollector`], gauges read from openraft's metrics, the
//! log store and the replica when Prometheus scrapes, so that they are never out of date and
//! cost nothing between scrapes.

use std::path::PathBuf;

use openraft::ServerState;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, exponential_buckets,
};

use crate::TypeConfig;
pub(crate) use pkraft_raft_storage::Damaged;
use pkraft_raft_storage::log_store::LogStore;

/// Why a leader holds expiry back (`pkraft_expiry_held{reason}`).
pub(crate) const HELD_REASONS: [&str; 3] = ["clock", "time_unknown", "rate"];

/// A counter vector of one label.
fn counter_vec(name: &str, help: &str, label: &str) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), &[label])
}

/// A gauge vector of one label.
fn gauge_vec(name: &str, help: &str, label: &str) -> prometheus::Result<IntGaugeVec> {
    IntGaugeVec::new(Opts::new(name, help), &[label])
}

/// Events counted as they happen.
pub(crate) struct NodeMetrics {
    /// `pkraft_raft_batch_packets`: packets per publish batch this node proposed or forwarded.
    pub(crate) batch_packets: Histogram,
    /// `pkraft_raft_publish_batch_wait_seconds`: how long the first publish of each batch waited
    /// for a place in flight and the append slot (`batcher`).
    pub(crate) publish_batch_wait: Histogram,
    /// `pkraft_raft_publish_batch_seconds`: each batch from its forming to its publishers'
    /// answers: proposed and applied here, or forwarded to the leader.
    pub(crate) publish_batch: Histogram,
    /// `pkraft_raft_log_append_seconds`: each log append, until its entries are on disk.
    pub(crate) log_append: Histogram,
    /// `pkraft_raft_apply_seconds`: each apply of committed entries to the replica.
    pub(crate) apply: Histogram,
    /// `pkraft_raft_forwarded_packets_total`: packets this follower forwarded to the leader.
    pub(crate) forwarded_packets: IntCounter,
    /// `pkraft_raft_leader_changes_total`: times the leader this node knows of changed
    /// (including to "none"), as seen by this node.
    pub(crate) leader_changes: IntCounter,
    /// `pkraft_raft_handovers_total{result}`: leadership handovers this node started when told
    /// to stop or while low on disk (`handover`), by result (`done`, `failed`).
    pub(crate) handovers: IntCounterVec,
    /// `pkraft_raft_publish_refused_total{reason}`: publishes answered "unavailable" (503) by
    /// this node's batcher, by why: `no_leader`, `no_quorum` (this leader is cut off),
    /// `timeout` (not committed in time), `forward_failed`, `handover`, `disk_full`; and new
    /// keys refused for want of room (507, `store_cap`): `store_full`, `new_keys_disk_low`.
    /// Those two exist from the start (at 0), so that an alert's `rate()` sees the first.
    pub(crate) publish_refused_total: IntCounterVec,
    /// `pkraft_raft_snapshot_build_seconds`: snapshot builds and their duration.
    pub(crate) snapshot_build: Histogram,
    /// `pkraft_raft_snapshot_install_seconds`: snapshots installed from a leader, and their
    /// duration.
    pub(crate) snapshot_install: Histogram,
    /// `pkraft_store_expired_records_total`: packets removed by expiry on this replica.
    pub(crate) expired_records: IntCounter,
    /// `pkraft_clock_offset_seconds`: this node's wall clock minus the voters' median
    /// (`cluster_clock`); 0 while the median is not known.
    pub(crate) clock_offset_seconds: Gauge,
    /// `pkraft_clock_state{state}`: 1 for this node's clock state (`synchronized`, `offset`,
    /// `held_by_log`, `unknown`), 0 for the others.
    pub(crate) clock_state: IntGaugeVec,
    /// `pkraft_expiry_held{reason}`: 1 while this leader holds expiry back for `reason`:
    /// `clock` (its clock is off the voters'), `time_unknown` (no majority of voters' clocks),
    /// `rate` (the hour's share of the store is deleted: `raft.expiry_max_percent_per_hour`).
    pub(crate) expiry_held: IntGaugeVec,
    /// `pkraft_raft_read_index_batch`: linearizable reads per read-index round (`read_index`):
    /// each round is one leadership check (leader) or one request to the leader (follower).
    pub(crate) read_index_batch: Histogram,
    /// `pkraft_raft_read_index_refused_total`: linearizable reads refused at once because
    /// `read_index::QUEUE_MAX` were already waiting.
    pub(crate) read_index_refused: IntCounter,
    /// `pkraft_disk_available_bytes`: bytes available on the data dir's file system, measured
    /// once a second (`disk_space`).
    pub(crate) disk_available_bytes: IntGauge,
    /// `pkraft_disk_min_free_bytes`: `raft.min_free_disk_mib` in bytes, so that an alert can
    /// compare the free space with the reserve each node was given.
    pub(crate) disk_min_free_bytes: IntGauge,
    /// `pkraft_disk_new_keys_min_free_bytes`: `raft.new_keys_min_free_disk_mib` in bytes: below
    /// this much available space the node stores no new keys.
    pub(crate) disk_new_keys_min_free_bytes: IntGauge,
    /// `pkraft_store_max_packets`: the cap on stored packets (`store_cap`; 0: none), so that an
    /// alert can compare `pkraft_store_records` with it.
    pub(crate) store_max_packets: IntGauge,
    /// `pkraft_state_cache_bytes`: redb's page cache of `state.redb` (`raft.state_cache_mib`, or
    /// derived from the memory the node may use), the largest part of its memory.
    pub(crate) state_cache_bytes: IntGauge,
    /// `pkraft_raft_leader_contact_gap_seconds`: on a follower, the time between two
    /// consecutive requests it accepted from its leader (heartbeats, entries, snapshot chunks).
    /// About `raft.heartbeat_interval` or less while all is well; longer ones are heartbeats
    /// delayed (a slow or flooded network, a busy node).
    pub(crate) leader_contact_gap: Histogram,
    /// `pkraft_raft_pre_vote_rounds_total{outcome}`: pre-vote rounds this voter started after
    /// hearing nothing from a leader (`pre_vote`), by outcome: `won` (it then stood for
    /// election) or `lost` (a quorum would not vote for it; it did not stand).
    pub(crate) pre_vote_rounds: IntCounterVec,
    /// `pkraft_storage_damage_total{what}`: damaged data this node found and did not use, by
    /// what: `log` (Raft log records, at the open or by the scrub), `snapshot` (its own current
    /// snapshot, before sending it; it builds a new one), `snapshot_transfer` (a snapshot
    /// received from the leader that failed its checksum; refused), `state` (`state.redb` at the
    /// start, set aside and rebuilt, or a stored packet the scrub found damaged).
    pub(crate) storage_damage: IntCounterVec,
    /// `pkraft_scrub_passes_total{what}`: passes of the background scrub completed over the
    /// log (`log`) and over every stored packet (`state`).
    pub(crate) scrub_passes: IntCounterVec,
}

impl NodeMetrics {
    pub(crate) fn new() -> prometheus::Result<NodeMetrics> {
        let seconds = |name: &str, help: &str| {
            // 10 ms .. ≈ 80 s: a snapshot of a few records to one of millions.
            Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(exponential_buckets(0.01, 2.0, 14)?),
            )
        };
        let write_path_seconds = |name: &str, help: &str| {
            // 100 µs .. ≈ 6.6 s: an append or apply on a fast disk, to a batch that waits out
            // `raft.publish_timeout` (5 s by default).
            Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(exponential_buckets(0.0001, 2.0, 17)?),
            )
        };
        let metrics = NodeMetrics {
            publish_batch_wait: write_path_seconds(
                "pkraft_raft_publish_batch_wait_seconds",
                "How long each publish batch waited for a place in flight and the append slot, from the batcher taking its first publish.",
            )?,
            publish_batch: write_path_seconds(
                "pkraft_raft_publish_batch_seconds",
                "Publish batches from forming to answered (refused ones too): committed and applied here, or forwarded to the leader.",
            )?,
            log_append: write_path_seconds(
                "pkraft_raft_log_append_seconds",
                "Log appends, from the call until the entries are on disk (write and fdatasync).",
            )?,
            apply: write_path_seconds(
                "pkraft_raft_apply_seconds",
                "Applies of committed entries to this replica (one state transaction each).",
            )?,
            batch_packets: Histogram::with_opts(
                HistogramOpts::new(
                    "pkraft_raft_batch_packets",
                    "Packets per publish batch proposed or forwarded by this node.",
                )
                .buckets(exponential_buckets(1.0, 2.0, 11)?),
            )?,
            forwarded_packets: IntCounter::new("pkraft_raft_forwarded_packets_total", "Published packets this node forwarded to the leader.")?,
            leader_changes: IntCounter::new("pkraft_raft_leader_changes_total", "Changes of the leader this node knows of (including to none).")?,
            handovers: counter_vec("pkraft_raft_handovers_total", "Leadership handovers this node started when told to stop or while low on disk, by result.", "result")?,
            publish_refused_total: counter_vec("pkraft_raft_publish_refused_total", "Publishes refused by this node, by reason: unavailable (503) from its batcher, or new keys without room (507: store_full, new_keys_disk_low).", "reason")?,
            snapshot_build: seconds(
                "pkraft_raft_snapshot_build_seconds",
                "Snapshot builds and their duration.",
            )?,
            snapshot_install: seconds(
                "pkraft_raft_snapshot_install_seconds",
                "Snapshots installed from the leader, and their duration.",
            )?,
            expired_records: IntCounter::new("pkraft_store_expired_records_total", "Packets removed from this replica by expiry.")?,
            read_index_batch: Histogram::with_opts(
                HistogramOpts::new(
                    "pkraft_raft_read_index_batch",
                    "Linearizable reads per read-index round (one leadership check, or one request to the leader, each).",
                )
                .buckets(exponential_buckets(1.0, 2.0, 13)?),
            )?,
            read_index_refused: IntCounter::new("pkraft_raft_read_index_refused_total", "Linearizable reads refused at once because the read-index queue was full.")?,
            clock_offset_seconds: Gauge::new(
                "pkraft_clock_offset_seconds",
                "This node's wall clock minus the median of the voters' clocks (0 while unknown).",
            )?,
            clock_state: gauge_vec("pkraft_clock_state", "1 for this node's clock state against the cluster's time (synchronized, offset, held_by_log, unknown), 0 for the others.", "state")?,
            expiry_held: gauge_vec("pkraft_expiry_held", "1 while this leader holds expiry back, by reason (clock, time_unknown, rate).", "reason")?,
            disk_available_bytes: IntGauge::new(
                "pkraft_disk_available_bytes",
                "Bytes available on the file system of the data dir (below raft.min_free_disk_mib the node takes no writes).",
            )?,
            disk_min_free_bytes: IntGauge::new(
                "pkraft_disk_min_free_bytes",
                "raft.min_free_disk_mib in bytes: below this much available space the node takes no writes.",
            )?,
            disk_new_keys_min_free_bytes: IntGauge::new(
                "pkraft_disk_new_keys_min_free_bytes",
                "raft.new_keys_min_free_disk_mib in bytes: below this much available space the node stores no new keys (republishes go on).",
            )?,
            store_max_packets: IntGauge::new("pkraft_store_max_packets", "The cap on stored packets (raft.max_stored_packets or derived from the disk; 0: no cap): at the cap no new keys are stored.")?,
            state_cache_bytes: IntGauge::new("pkraft_state_cache_bytes", "redb's page cache of state.redb in bytes (raft.state_cache_mib, or derived from the memory the node may use): the largest part of the node's memory.")?,
            leader_contact_gap: Histogram::with_opts(
                HistogramOpts::new(
                    "pkraft_raft_leader_contact_gap_seconds",
                    "On a follower, the time between consecutive requests accepted from the leader (heartbeats, entries).",
                )
                // Fine around the default heartbeat (100 ms) and its +50 ms bound, then coarse
                // up to an election's worth.
                .buckets(vec![
                    0.025, 0.05, 0.1, 0.125, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0,
                ]),
            )?,
            pre_vote_rounds: counter_vec("pkraft_raft_pre_vote_rounds_total", "Pre-vote rounds this voter started after hearing nothing from a leader, by outcome (won: it stood for election; lost: it did not).", "outcome")?,
            storage_damage: counter_vec("pkraft_storage_damage_total", "Damaged data this node found and did not use, by what (log, snapshot, snapshot_transfer, state, answers).", "what")?,
            scrub_passes: counter_vec("pkraft_scrub_passes_total", "Passes of the background scrub completed, over the Raft log (log) and over every stored packet (state).", "what")?,
        };
        metrics.label_every_series();
        Ok(metrics)
    }

    /// Every label value from the start, at 0: an alert on `increase()` sees the first damage
    /// (a series that appears at 1 has not increased), and the series exist for dashboards
    /// before anything happened.
    fn label_every_series(&self) {
        for what in [
            Damaged::Log,
            Damaged::Snapshot,
            Damaged::SnapshotTransfer,
            Damaged::State,
            Damaged::Answers,
        ] {
            self.storage_damage.with_label_values(&[what.label()]);
        }
        for what in ["log", "state"] {
            self.scrub_passes.with_label_values(&[what]);
        }
        for state in crate::clock_state::ClockState::ALL {
            self.clock_state.with_label_values(&[state.label()]);
        }
        for reason in HELD_REASONS {
            self.expiry_held.with_label_values(&[reason]);
        }
    }

    /// Counts damage found in `what` (see `storage_damage`).
    pub(crate) fn damage_found(&self, what: Damaged) {
        self.storage_damage.with_label_values(&[what.label()]).inc();
    }

    /// Counts `packets` publishes refused for `reason` (see `publish_refused_total`).
    pub(crate) fn publish_refused(&self, reason: &str, packets: usize) {
        self.publish_refused_total
            .with_label_values(&[reason])
            .inc_by(u64::try_from(packets).unwrap_or(u64::MAX));
    }

    pub(crate) fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        for reason in ["store_full", "new_keys_disk_low"] {
            self.publish_refused_total.with_label_values(&[reason]);
        }
        registry.register(Box::new(self.batch_packets.clone()))?;
        registry.register(Box::new(self.publish_batch_wait.clone()))?;
        registry.register(Box::new(self.publish_batch.clone()))?;
        registry.register(Box::new(self.log_append.clone()))?;
        registry.register(Box::new(self.apply.clone()))?;
        registry.register(Box::new(self.forwarded_packets.clone()))?;
        registry.register(Box::new(self.leader_changes.clone()))?;
        registry.register(Box::new(self.handovers.clone()))?;
        registry.register(Box::new(self.disk_available_bytes.clone()))?;
        registry.register(Box::new(self.disk_min_free_bytes.clone()))?;
        registry.register(Box::new(self.disk_new_keys_min_free_bytes.clone()))?;
        registry.register(Box::new(self.store_max_packets.clone()))?;
        registry.register(Box::new(self.state_cache_bytes.clone()))?;
        registry.register(Box::new(self.leader_contact_gap.clone()))?;
        registry.register(Box::new(self.pre_vote_rounds.clone()))?;
        registry.register(Box::new(self.storage_damage.clone()))?;
        registry.register(Box::new(self.scrub_passes.clone()))?;
        registry.register(Box::new(self.publish_refused_total.clone()))?;
        registry.register(Box::new(self.snapshot_build.clone()))?;
        registry.register(Box::new(self.snapshot_install.clone()))?;
        registry.register(Box::new(self.read_index_batch.clone()))?;
        registry.register(Box::new(self.read_index_refused.clone()))?;
        registry.register(Box::new(self.clock_offset_seconds.clone()))?;
        registry.register(Box::new(self.clock_state.clone()))?;
        registry.register(Box::new(self.expiry_held.clone()))?;
        registry.register(Box::new(self.expired_records.clone()))
    }
}

/// How long ago the node last knew its replica to be current ([`crate::Reads::staleness`]).
pub(crate) type Staleness = Box<dyn Fn() -> Option<std::time::Duration> + Send + Sync>;

/// Gauges read when scraped.
pub(crate) struct StateCollector {
    raft: openraft::Raft<TypeConfig>,
    staleness: Staleness,
    log_store: LogStore,
    store: pkraft_state::Store,
    state_file: PathBuf,
    term: IntGauge,
    leader_id: IntGauge,
    is_leader: IntGauge,
    last_log_index: IntGauge,
    committed_index: IntGauge,
    applied_index: IntGauge,
    snapshot_index: IntGauge,
    replication_lag: IntGaugeVec,
    leader_contact_age: Gauge,
    records: IntGauge,
    /// Rows applied and not yet committed (the store's read buffer).
    uncommitted_rows: IntGauge,
    state_file_bytes: IntGauge,
    /// 1 while the log lacks entries it lost to damage (`LogRepair`).
    log_repair_pending: IntGauge,
    /// `pkraft_store_packet_reads_total`, made anew at each scrape from the store's count.
    packet_reads: IntCounter,
    descs: Vec<Desc>,
}

const PACKET_READS: (&str, &str) = (
    "pkraft_store_packet_reads_total",
    "Stored packets read by key (the write path's admission, GETs, DNS answers from parsed packets).",
);

impl StateCollector {
    pub(crate) fn new(
        raft: openraft::Raft<TypeConfig>,
        staleness: Staleness,
        log_store: LogStore,
        store: pkraft_state::Store,
        state_file: PathBuf,
    ) -> prometheus::Result<StateCollector> {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help);
        let mut collector = StateCollector {
            raft,
            staleness,
            log_store,
            store,
            state_file,
            term: gauge("pkraft_raft_term", "The current Raft term.")?,
            leader_id: gauge(
                "pkraft_raft_leader_id",
                "The id of the leader this node knows of; -1 for none.",
            )?,
            is_leader: gauge("pkraft_raft_is_leader", "1 if this node is the leader.")?,
            last_log_index: gauge(
                "pkraft_raft_last_log_index",
                "Index of the last entry in this node's log; -1 for none.",
            )?,
            committed_index: gauge(
                "pkraft_raft_committed_index",
                "The commit index this node last learned of; -1 for none.",
            )?,
            applied_index: gauge(
                "pkraft_raft_applied_index",
                "Index of the last entry applied to this node's replica; -1 for none.",
            )?,
            snapshot_index: gauge(
                "pkraft_raft_snapshot_index",
                "Last log index covered by this node's snapshot; -1 for none.",
            )?,
            replication_lag: IntGaugeVec::new(
                Opts::new(
                    "pkraft_raft_replication_lag_entries",
                    "On the leader: entries of its log a follower does not have yet.",
                ),
                &["follower"],
            )?,
            leader_contact_age: Gauge::new(
                "pkraft_raft_leader_contact_age_seconds",
                "Since this node last knew its replica current (a follower: its last append-entries \
                 from the leader; the leader: its last quorum acknowledgement); -1 if never.",
            )?,
            records: gauge(
                "pkraft_store_records",
                "Packets stored in this node's replica.",
            )?,
            uncommitted_rows: gauge(
                "pkraft_store_uncommitted_rows",
                "Rows of this node's replica applied in its open state transaction and not committed yet (answered from the read buffer).",
            )?,
            state_file_bytes: gauge(
                "pkraft_store_file_bytes",
                "Size of this node's state.redb file.",
            )?,
            log_repair_pending: gauge(
                "pkraft_raft_log_repair_pending",
                "1 while this node's Raft log lacks entries it lost to damage and has not received again from a leader.",
            )?,
            packet_reads: IntCounter::new(PACKET_READS.0, PACKET_READS.1)?,
            descs: Vec::new(),
        };
        collector.descs = collector
            .gauges()
            .into_iter()
            .flat_map(|gauge| gauge.desc().into_iter().cloned())
            .chain(collector.replication_lag.desc().into_iter().cloned())
            .chain(collector.leader_contact_age.desc().into_iter().cloned())
            .chain(collector.packet_reads.desc().into_iter().cloned())
            .collect();
        Ok(collector)
    }

    fn gauges(&self) -> [&IntGauge; 11] {
        [
            &self.term,
            &self.leader_id,
            &self.is_leader,
            &self.last_log_index,
            &self.committed_index,
            &self.applied_index,
            &self.snapshot_index,
            &self.records,
            &self.uncommitted_rows,
            &self.state_file_bytes,
            &self.log_repair_pending,
        ]
    }

    /// Sets every gauge from the current state.
    fn refresh(&self) {
        let index = |index: Option<u64>| index.map_or(-1, saturating_i64);
        let metrics = self.raft.metrics().borrow().clone();
        self.term.set(saturating_i64(metrics.current_term));
        self.leader_id.set(index(metrics.current_leader));
        self.is_leader
            .set(i64::from(metrics.state == ServerState::Leader));
        self.last_log_index.set(index(metrics.last_log_index));
        self.committed_index
            .set(index(self.log_store.committed_index()));
        self.applied_index
            .set(index(metrics.last_applied.map(|log_id| log_id.index)));
        self.snapshot_index
            .set(index(metrics.snapshot.map(|log_id| log_id.index)));

        self.log_repair_pending
            .set(i64::from(self.log_store.repair().is_some()));
        self.leader_contact_age
            .set((self.staleness)().map_or(-1.0, |age| age.as_secs_f64()));
        self.uncommitted_rows
            .set(saturating_i64(self.store.uncommitted_rows() as u64));
        match self.store.packet_count() {
            Ok(records) => self.records.set(saturating_i64(records)),
            Err(error) => tracing::debug!(%error, "could not count the stored records"),
        }
        match std::fs::metadata(&self.state_file) {
            Ok(meta) => self.state_file_bytes.set(saturating_i64(meta.len())),
            Err(error) => tracing::debug!(%error, "could not stat the state file"),
        }
    }
}

impl Collector for StateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.refresh();
        self.gauges()
            .into_iter()
            .flat_map(|gauge| gauge.collect())
            .chain(self.replication_lag())
            .chain(self.leader_contact_age.collect())
            .chain(self.packet_reads())
            .collect()
    }
}

impl StateCollector {
    /// The store's count of packet reads, in a counter made for this scrape (two scrapes at
    /// once must not add it twice).
    fn packet_reads(&self) -> Vec<MetricFamily> {
        let Ok(reads) = IntCounter::new(PACKET_READS.0, PACKET_READS.1) else {
            return Vec::new();
        };
        reads.inc_by(self.store.packet_reads());
        reads.collect()
    }

    /// On the leader, each follower's lag, in a vector made for this scrape: followers that left
    /// the membership do not linger as series, and two scrapes at once do not clear each
    /// other's.
    fn replication_lag(&self) -> Vec<MetricFamily> {
        let metrics = self.raft.metrics().borrow().clone();
        let Some(desc) = self.replication_lag.desc().into_iter().next().cloned() else {
            return Vec::new();
        };
        let Ok(lags) = IntGaugeVec::new(Opts::new(desc.fq_name, desc.help), &["follower"]) else {
            return Vec::new();
        };
        if let (Some(replication), Some(last)) = (&metrics.replication, metrics.last_log_index) {
            for (follower, matched) in replication.iter() {
                if *follower == metrics.id {
                    continue;
                }
                let matched = matched.map_or(0, |log_id| log_id.index + 1);
                let lag = (last + 1).saturating_sub(matched);
                lags.with_label_values(&[&follower.to_string()])
                    .set(saturating_i64(lag));
            }
        }
        lags.collect()
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
