//! The DNS frontend: hickory-server over UDP and TCP, answering from the local replica
//! (DESIGN.md §2.3). Reads never go through Raft.
//!
//! # Layout
//! A query is answered one way on every transport ([`answering`]): the freshness bound, then the
//! local answers (the fast case), then hickory's handler chain for the rest.
//! - [`settings`]: the `[dns]` config section and its validation into [`settings::Zones`].
//! - [`zone`]: [`zone::PkarrZone`], one hickory `ZoneHandler` per origin: apex SOA/NS/A/AAAA, and
//!   `<name>.<z32>.<origin>` answered from the packet stored for `<z32>`.
//! - [`server`]: [`server::DnsServer`]: binds UDP and TCP on one port; hickory's `Catalog` of the
//!   zones is the chain.
//! - [`answering`]: the one way, shared by the UDP loops, TCP and DNS-over-HTTPS
//!   ([`answering::Answerer`], served by `pkraft-http`).
//! - [`freshness`]: the `dns.max_stale` bound, asked once per query: SERVFAIL while the node is
//!   catching up after a crash or staler than the bound.
//! - `local`: the fast case: the `Catalog`'s answer written in place from the local replica
//!   (for a stored key from the answers the store compiled, with no packet parse) by hickory's
//!   own message encoder; `plain_query` reads the common query shape without hickory's parse.
//! - `tcp`: DNS over TCP with connection caps, idle limits, pipelining and a query bound.
//! - `udp`, `udp_io` and `answer_cache`: the UDP loops: batched receive and send
//!   (`recvmmsg`/`sendmmsg`), ready answers byte-identical to hickory's served while the key they
//!   were read from is unchanged, then the one way.
//! - [`rrl`]: response rate limiting of UDP answers per client network, with slip to TC.
//! - [`MissingKeys`]: where the zones ask for keys the local replica does not hold (the daemon
//!   passes its DHT resolver).
//! - [`record_cache`]: [`record_cache::RecordCache`], the parsed records of recently asked keys,
//!   shared by the zones and never older than the local replica.
//!
//! hickory's `Catalog`, and the local answers in its place for what they cover, do the protocol
//! work around the zones: EDNS (OPT echo, BADVERS), the AA flag, REFUSED for names under no
//! origin, FORMERR for bad question counts, and the SOA in the authority section of negative
//! answers. UDP answers that exceed the client's EDNS size (512 bytes without EDNS) are
//! truncated with TC set.

mod answer_cache;
pub mod answering;
pub mod freshness;
mod local;
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

pub use answering::{AnswerError, Answerer};
pub use freshness::{FreshnessProbe, ReplicaFreshness};
pub use local::truncated_answer;
pub use metrics::UdpAnswerStats;
pub use missing_keys::MissingKeys;
pub use server::{AnswerSources, DnsError, DnsServer};
pub use settings::{Settings, SettingsError};
pub use tcp::TCP_LISTENER;
pub use udp::UDP_TASK;
pub use zone::ShortLivedNames;
