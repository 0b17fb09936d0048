//! Prometheus metrics of the DNS frontend (names and meanings in docs/METRICS.md).
//!
//! Queries are counted where they are answered: the TCP connections of `crate::tcp`, the UDP
//! loops of `crate::udp` (hits and misses), and the DoH [`crate::Answerer`].
//! The label handles are resolved once, so counting a query is a few atomic adds.

use std::sync::Arc;
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};

use crate::record_cache::RecordCache;

/// How UDP queries were answered since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpAnswerStats {
    /// From the answer cache.
    pub hits: u64,
    /// Not from the answer cache: a local answer, handed to hickory's handler chain, or
    /// dropped as not answerable.
    pub misses: u64,
    /// Of the misses, those handed to hickory's handler chain (module docs of `local`).
    pub chain: u64,
    /// Of the misses, those answered from the answers the store compiled when it applied the
    /// packet: no packet parsed, no record encoded.
    pub compiled: u64,
    /// Over the rate limit, answered with an empty truncated answer (RRL slip).
    pub rrl_slipped: u64,
    /// Over the rate limit, not answered.
    pub rrl_dropped: u64,
    /// Of the RRL refusals (slipped or dropped), those the global budget refused
    /// (`[dns.rrl]` `global_*`): answers from networks within their own limit.
    pub rrl_global_limited: u64,
    /// Queries for the chain dropped because `dns.udp_pending_max` were already being answered.
    pub overload_dropped: u64,
    /// Bytes of UDP answers sent (slips included).
    pub answer_bytes: u64,
}

/// What pkraft's UDP loops report when scraped.
pub(crate) trait UdpReport: Send + Sync {
    /// The answer cache's entries and estimated bytes (`None`: no answer cache).
    fn answer_cache_size(&self) -> Option<(u64, u64)>;
    /// Client networks with RRL state.
    fn rrl_tracked_clients(&self) -> u64;
    fn stats(&self) -> UdpAnswerStats;
}

/// How a query arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp = 0,
    Tcp = 1,
    Doh = 2,
}

const TRANSPORTS: [&str; 3] = ["udp", "tcp", "doh"];
/// The `rcode` label values: the codes an authoritative server sends, then everything else.
const RCODES: [&str; 8] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "OTHER",
];

/// The index into [`RCODES`] of a response code (4 bits in the header, 12 with EDNS).
fn rcode_index(code: u16) -> usize {
    match code {
        0..=5 => usize::from(code),
        16 => 6,
        _ => 7,
    }
}

/// The response code in the header of a wire answer (the EDNS extension bits are not read, so
/// BADVERS counts as NOERROR here).
pub(crate) fn wire_rcode(answer: &[u8]) -> u16 {
    answer
        .get(3)
        .map_or(u16::MAX, |flags| u16::from(flags & 0x0f))
}

/// Counters and histograms of the DNS frontend.
pub(crate) struct DnsMetrics {
    queries: IntCounterVec,
    /// `queries` resolved per transport and rcode.
    query_counters: Vec<Vec<IntCounter>>,
    durations: HistogramVec,
    duration_histograms: Vec<Histogram>,
    /// `pkraft_dns_stale_refusals_total`.
    pub(crate) stale_refusals: IntCounter,
}

impl DnsMetrics {
    pub(crate) fn new() -> prometheus::Result<DnsMetrics> {
        let queries = IntCounterVec::new(
            Opts::new(
                "pkraft_dns_queries_total",
                "DNS queries answered, by transport (udp, tcp, doh) and response code.",
            ),
            &["transport", "rcode"],
        )?;
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "pkraft_dns_answer_duration_seconds",
                "Time from a query's arrival to its answer being handed to the transport.",
            )
            .buckets(vec![
                0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
                0.01, 0.025, 0.1,
            ]),
            &["transport"],
        )?;
        let query_counters = TRANSPORTS
            .iter()
            .map(|transport| {
                RCODES
                    .iter()
                    .map(|rcode| queries.with_label_values(&[*transport, *rcode]))
                    .collect()
            })
            .collect();
        let duration_histograms = TRANSPORTS
            .iter()
            .map(|transport| durations.with_label_values(&[*transport]))
            .collect();
        Ok(DnsMetrics {
            queries,
            query_counters,
            durations,
            duration_histograms,
            stale_refusals: IntCounter::new(
                "pkraft_dns_stale_refusals_total",
                "Queries answered SERVFAIL because this node was staler than dns.max_stale.",
            )?,
        })
    }

    /// Counts one answered query.
    pub(crate) fn answered(&self, transport: Transport, rcode: u16, took: Duration) {
        let transport = transport as usize;
        if let Some(counter) = self
            .query_counters
            .get(transport)
            .and_then(|counters| counters.get(rcode_index(rcode)))
        {
            counter.inc();
        }
        if let Some(histogram) = self.duration_histograms.get(transport) {
            histogram.observe(took.as_secs_f64());
        }
    }
}

/// Everything the DNS frontend reports, for one registry: the counters above, and the caches'
/// sizes and the UDP cache's hits and misses read when scraped.
pub(crate) struct DnsCollector {
    metrics: Arc<DnsMetrics>,
    records: Arc<RecordCache>,
    /// The UDP loops' cache and counters.
    udp: Arc<dyn UdpReport>,
    cache_entries: prometheus::IntGaugeVec,
    cache_bytes: prometheus::IntGaugeVec,
    answer_cache_hits: IntCounter,
    answer_cache_misses: IntCounter,
    udp_chain: IntCounter,
    udp_compiled: IntCounter,
    rrl_slipped: IntCounter,
    rrl_dropped: IntCounter,
    rrl_global_limited: IntCounter,
    overload_dropped: IntCounter,
    answer_bytes: IntCounter,
    rrl_tracked_clients: prometheus::IntGauge,
    descs: Vec<Desc>,
}

impl DnsCollector {
    pub(crate) fn new(
        metrics: Arc<DnsMetrics>,
        records: Arc<RecordCache>,
        udp: Arc<dyn UdpReport>,
    ) -> prometheus::Result<DnsCollector> {
        let mut collector = DnsCollector {
            metrics,
            records,
            udp,
            cache_entries: prometheus::IntGaugeVec::new(
                Opts::new(
                    "pkraft_dns_cache_entries",
                    "Entries in a DNS cache (cache: records, answers).",
                ),
                &["cache"],
            )?,
            cache_bytes: prometheus::IntGaugeVec::new(
                Opts::new(
                    "pkraft_dns_cache_bytes",
                    "Estimated bytes held by a DNS cache, against its configured bound.",
                ),
                &["cache"],
            )?,
            answer_cache_hits: IntCounter::new(
                "pkraft_dns_answer_cache_hits_total",
                "UDP queries answered from the answer cache.",
            )?,
            answer_cache_misses: IntCounter::new(
                "pkraft_dns_answer_cache_misses_total",
                "UDP queries not answered from the answer cache (not in it, or no longer current).",
            )?,
            udp_chain: IntCounter::new(
                "pkraft_dns_udp_chain_total",
                "UDP queries answered by hickory's handler chain in a task of their own (the rest are answered inline).",
            )?,
            udp_compiled: IntCounter::new(
                "pkraft_dns_udp_compiled_answers_total",
                "UDP queries not in the answer cache answered from the DNS answers compiled when their packet was applied (no packet parsed).",
            )?,
            rrl_slipped: IntCounter::new(
                "pkraft_dns_rrl_slipped_total",
                "UDP queries over the response rate limit answered empty and truncated (TC=1).",
            )?,
            rrl_dropped: IntCounter::new(
                "pkraft_dns_rrl_dropped_total",
                "UDP queries over the response rate limit left unanswered.",
            )?,
            rrl_global_limited: IntCounter::new(
                "pkraft_dns_rrl_global_limited_total",
                "UDP answers refused (slipped or dropped) by the global budget of [dns.rrl] (global_responses_per_second, global_bytes_per_second).",
            )?,
            overload_dropped: IntCounter::new(
                "pkraft_dns_udp_overload_dropped_total",
                "UDP queries dropped because dns.udp_pending_max cache misses were already being answered on their socket.",
            )?,
            answer_bytes: IntCounter::new(
                "pkraft_dns_udp_answer_bytes_total",
                "Bytes of UDP answers sent, slips included.",
            )?,
            rrl_tracked_clients: prometheus::IntGauge::new(
                "pkraft_dns_rrl_tracked_clients",
                "Client networks with response rate limiting state.",
            )?,
            descs: Vec::new(),
        };
        collector.descs = collector
            .parts()
            .into_iter()
            .flat_map(|part| part.desc().into_iter().cloned())
            .collect();
        Ok(collector)
    }

    /// Every part with a descriptor; the last nine (the UDP loops' counters) only lend theirs
    /// (see [`DnsCollector::cache_counters`]).
    fn parts(&self) -> [&dyn Collector; 15] {
        [
            &self.metrics.queries,
            &self.metrics.durations,
            &self.metrics.stale_refusals,
            &self.cache_entries,
            &self.cache_bytes,
            &self.rrl_tracked_clients,
            &self.answer_cache_hits,
            &self.answer_cache_misses,
            &self.udp_chain,
            &self.udp_compiled,
            &self.rrl_slipped,
            &self.rrl_dropped,
            &self.rrl_global_limited,
            &self.overload_dropped,
            &self.answer_bytes,
        ]
    }

    fn refresh(&self) {
        let (entries, bytes) = self.records.size();
        self.set_cache("records", entries, bytes);
        if let Some((entries, bytes)) = self.udp.answer_cache_size() {
            self.set_cache("answers", entries, bytes);
        }
        self.rrl_tracked_clients
            .set(i64::try_from(self.udp.rrl_tracked_clients()).unwrap_or(i64::MAX));
    }

    /// The answer cache's hits and misses. The loops count in counters of their own (no shared
    /// cache line on the hot path); each scrape exports their sums in counters made for it, so
    /// two scrapes at once never see each other's half-updated values.
    fn cache_counters(&self) -> Vec<MetricFamily> {
        let stats = self.udp.stats();
        [
            (&self.answer_cache_hits, stats.hits),
            (&self.answer_cache_misses, stats.misses),
            (&self.udp_chain, stats.chain),
            (&self.udp_compiled, stats.compiled),
            (&self.rrl_slipped, stats.rrl_slipped),
            (&self.rrl_dropped, stats.rrl_dropped),
            (&self.rrl_global_limited, stats.rrl_global_limited),
            (&self.overload_dropped, stats.overload_dropped),
            (&self.answer_bytes, stats.answer_bytes),
        ]
        .into_iter()
        .filter_map(|(template, total)| {
            let desc = template.desc().into_iter().next()?;
            let counter = IntCounter::new(desc.fq_name.clone(), desc.help.clone()).ok()?;
            counter.inc_by(total);
            Some(counter.collect())
        })
        .flatten()
        .collect()
    }

    fn set_cache(&self, cache: &str, entries: u64, bytes: u64) {
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.cache_entries
            .with_label_values(&[cache])
            .set(gauge(entries));
        self.cache_bytes
            .with_label_values(&[cache])
            .set(gauge(bytes));
    }
}

impl Collector for DnsCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.refresh();
        let [queries, durations, stale, entries, bytes, rrl_tracked, ..] = self.parts();
        [queries, durations, stale, entries, bytes, rrl_tracked]
            .into_iter()
            .flat_map(|part| part.collect())
            .chain(self.cache_counters())
            .collect()
    }
}
