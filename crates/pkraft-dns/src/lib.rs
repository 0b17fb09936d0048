//! The DNS frontend: hickory-server over UDP and TCP, answering from the local replica
//! (DESIGN.md §2.3). Reads never go through Raft.
//!
//! # Layout
//! - [`settings`]: the `[dns]` config section and its validation into [`settings::Zones`].
//! - [`zone`]: [`zone::PkarrZone`], one hickory `ZoneHandler` per origin: apex SOA/NS/A/AAAA, and
//!   `<name>.<z32>.<origin>` answered from the packet stored for `<z32>`.
//! - [`server`]: [`server::DnsServer`]: binds UDP and TCP on one port; a `Catalog` of the zones
//!   behind the direct answers.
//! - `tcp`: DNS over TCP with connection caps, idle limits, pipelining and a query bound.
//! - [`freshness`]: [`freshness::FreshnessGuard`] in front of the `Catalog`: SERVFAIL while the
//!   node is staler than `dns.max_stale`.
//! - [`answerer`]: [`answerer::Answerer`], the same handler chain for DNS messages that arrive over
//!   HTTP (DNS-over-HTTPS, served by `pkraft-http`).
//! - [`MissingKeys`]: where the zones ask for keys the local replica does not hold (the daemon
//!   passes its DHT resolver).
//! - [`record_cache`]: [`record_cache::RecordCache`], the parsed records of recently asked keys,
//!   shared by the zones and never older than the local replica.
//! - `direct`: the `Catalog`'s answers built in place from the zones' local lookups, for the UDP
//!   loops (inline, no task), TCP and DNS-over-HTTPS; hickory's chain answers the rest.
//!   `plain_query` reads the common query shape without hickory's parse, for the compiled
//!   answers of stored keys.
//! - `udp`, `udp_io` and `answer_cache`: the UDP loops: batched receive and send
//!   (`recvmmsg`/`sendmmsg`), ready answers byte-identical to hickory's served while the key they
//!   were read from is unchanged, then the direct answers.
//! - [`rrl`]: response rate limiting of UDP answers per client network, with slip to TC.
//!
//! hickory's `Catalog`, and `direct` in its place for what it covers, does the protocol work around
//! the zones: EDNS (OPT echo, BADVERS), the AA flag, REFUSED for names under no origin, FORMERR
//! for bad question counts, and the SOA in the authority section of negative answers. UDP answers
//! that exceed the client's EDNS size (512 bytes without EDNS) are truncated with TC set.

mod answer_cache;
pub mod answerer;
mod direct;
pub mod freshness;
mod metrics;
mod missing_keys;
mod plain_query;
pub mod record_cache;
pub mod rrl;
pub mod server;
pub mod settings;
mod tcp;
mod udp;
mod udp_io;
pub mod zone;

pub use answerer::{AnswerError, Answerer};
pub use freshness::{Freshness, FreshnessProbe};
pub use metrics::UdpAnswerStats;
pub use missing_keys::MissingKeys;
pub use server::{AnswerSources, DnsError, DnsServer};
pub use settings::{Settings, SettingsError};
pub use udp::UDP_TASK;
pub use zone::ShortLivedNames;
