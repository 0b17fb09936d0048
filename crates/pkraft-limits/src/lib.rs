//! Abuse limits shared by the HTTP and DNS frontends: token-bucket rate limits (governor's GCRA)
//! per client and overall, with per-client state that stays bounded however many addresses
//! appear, and the admission of TCP connections.
//!
//! # Layout
//! - [`Rate`]: one limit as configured (`per_second` sustained, `burst` at once; 0 = off).
//! - [`ClassLimits`] / [`ClassLimiter`]: a per-client and a global rate for one class of traffic
//!   (PUT of a stored key, PUT of a new key, GET, DoH, DNS answers).
//! - [`KeyRate`] / [`KeyLimiter`]: a rate per public key (how often one key may be published),
//!   counted in minutes, with state bounded like the clients'.
//! - [`fair::FairBudget`]: a global rate shared fairly between client networks: when it runs
//!   short the heaviest networks are refused first, and a network within its share is not
//!   (while the debt it may run up has room).
//!   Every class's global rate is one, and so is the byte budget of DNS answers.
//! - [`ClientPrefix`]: which addresses count as one client (an IPv6 host owns a whole /64) and
//!   which as one network (an IPv4 /24, an IPv6 /48).
//! - [`TrustedProxies`]: the networks whose `X-Forwarded-For` is believed.
//! - [`connections`]: [`connections::Admission`], the connection caps of every TCP listener
//!   (total and per client), accept errors backed off, and the pressure signal.
//!
//! # Bounded state
//! governor's own keyed stores (a `DashMap`) keep one entry per address until `retain_recent`
//! runs, so a flood of spoofed or rotating addresses grows them without limit. [`BoundedStore`]
//! keeps the states in a moka cache instead: at most `max_tracked_clients` entries, and an
//! entry idle for as long as its bucket takes to refill is dropped (it would be a full bucket
//! again, so dropping it loses nothing). moka's TinyLFU admission keeps the clients seen most
//! often when the cache is full, so a stream of one-off addresses cannot push a busy abuser's
//! state out; those one-off addresses are then not tracked per client at all, and only the
//! global limit (where one is configured) applies to them.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use ipnet::IpNet;
use serde::Deserialize;

pub mod connections;
pub mod fair;

pub use fair::{FairBudget, OverBudget};

/// One rate limit: `burst` requests at once, refilled at `per_second`. `per_second = 0` turns
/// the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    /// No limit.
    pub const OFF: Rate = Rate {
        per_second: 0,
        burst: 0,
    };

    pub const fn new(per_second: u32, burst: u32) -> Rate {
        Rate { per_second, burst }
    }

    /// governor's quota, `None` when the limit is off.
    fn quota(self) -> Result<Option<Quota>, String> {
        let Some(per_second) = NonZeroU32::new(self.per_second) else {
            return Ok(None);
        };
        let burst = NonZeroU32::new(self.burst)
            .ok_or_else(|| format!("burst must be at least 1 when per_second is {per_second}"))?;
        Ok(Some(Quota::per_second(per_second).allow_burst(burst)))
    }
}

/// A limit on one public key: `burst` publishes at once, refilled at `per_minute`.
/// `per_minute = 0` turns it off. In minutes, since an endpoint republishes every few minutes:
/// a key's honest rate is far below one a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRate {
    pub per_minute: u32,
    pub burst: u32,
}

impl KeyRate {
    /// No limit.
    pub const OFF: KeyRate = KeyRate {
        per_minute: 0,
        burst: 0,
    };

    pub const fn new(per_minute: u32, burst: u32) -> KeyRate {
        KeyRate { per_minute, burst }
    }

    /// governor's quota, `None` when the limit is off.
    fn quota(self) -> Result<Option<Quota>, String> {
        let Some(per_minute) = NonZeroU32::new(self.per_minute) else {
            return Ok(None);
        };
        let burst = NonZeroU32::new(self.burst)
            .ok_or_else(|| format!("burst must be at least 1 when per_minute is {per_minute}"))?;
        let period = Duration::from_secs(60) / per_minute.get();
        let quota = Quota::with_period(period)
            .ok_or_else(|| format!("per_minute {per_minute} is more than one a nanosecond"))?;
        Ok(Some(quota.allow_burst(burst)))
    }

    /// Checks the rate; `field` is its config path, for the error.
    pub fn validate(&self, field: &str) -> Result<(), LimitError> {
        self.quota().map(|_| ()).map_err(|reason| LimitError {
            field: field.to_string(),
            reason,
        })
    }
}

/// A configured limit that cannot be used; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct LimitError {
    pub field: String,
    pub reason: String,
}

/// The limits of one class of traffic: each client's and everyone's together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassLimits {
    pub per_client: Rate,
    pub global: Rate,
}

impl ClassLimits {
    /// Checks both rates; `field` is the config path of this class, for the error.
    pub fn validate(&self, field: &str) -> Result<(), LimitError> {
        for (name, rate) in [("per_client", self.per_client), ("global", self.global)] {
            rate.quota().map_err(|reason| LimitError {
                field: format!("{field}.{name}"),
                reason,
            })?;
        }
        Ok(())
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The client's own rate.
    Client,
    /// Everyone's rate together.
    Global,
    /// The rate of the public key the request publishes.
    Key,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Client => "client",
            Scope::Global => "global",
            Scope::Key => "key",
        }
    }
}

/// A limit as configured, for telling a refused client what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    PerSecond(Rate),
    PerMinute(KeyRate),
}

impl Limit {
    /// How many requests it lets through at once.
    pub fn burst(self) -> u32 {
        match self {
            Limit::PerSecond(rate) => rate.burst,
            Limit::PerMinute(rate) => rate.burst,
        }
    }

    /// Whole seconds in which an emptied burst comes back.
    pub fn window_secs(self) -> u64 {
        match self {
            Limit::PerSecond(rate) => {
                u64::from(rate.burst).div_ceil(u64::from(rate.per_second.max(1)))
            }
            Limit::PerMinute(rate) => {
                (u64::from(rate.burst) * 60).div_ceil(u64::from(rate.per_minute.max(1)))
            }
        }
    }
}

/// `50/s with bursts of 1000`.
impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::PerSecond(Rate { per_second, burst }) => {
                write!(f, "{per_second}/s with bursts of {burst}")
            }
            Limit::PerMinute(KeyRate { per_minute, burst }) => {
                write!(f, "{per_minute}/min with bursts of {burst}")
            }
        }
    }
}

/// A refused request: which limit, and when a retry can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    pub scope: Scope,
    pub limit: Limit,
    pub retry_after: Duration,
}

/// A per-client rate whose state lives in a [`BoundedStore`].
type KeyedLimiter<K> = RateLimiter<K, BoundedStore<K>, DefaultClock, NoOpMiddleware>;

/// Enforces one [`ClassLimits`].
pub struct ClassLimiter {
    /// The limiter, its rate, and a second handle on its store (governor lends it out only by
    /// value).
    per_client: Option<(KeyedLimiter<IpAddr>, Rate, BoundedStore<IpAddr>)>,
    /// Which addresses are one client.
    client: ClientPrefix,
    global: Option<FairBudget>,
    clock: DefaultClock,
}

impl std::fmt::Debug for ClassLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassLimiter")
            .field(
                "per_client",
                &self.per_client.as_ref().map(|(_, rate, _)| rate),
            )
            .field("global", &self.global.as_ref().map(FairBudget::rate))
            .finish()
    }
}

impl ClassLimiter {
    /// A limiter for `limits` whose clients are addresses of `prefix.client`'s lengths and whose
    /// global rate is shared between networks of `prefix.network`'s, tracking at most
    /// `max_tracked_clients` clients (and as many networks). `field` names the class in errors.
    pub fn new(
        limits: &ClassLimits,
        prefix: Prefixes,
        max_tracked_clients: u64,
        field: &str,
    ) -> Result<ClassLimiter, LimitError> {
        limits.validate(field)?;
        let clock = DefaultClock::default();
        let per_client = limits.per_client.quota().ok().flatten().map(|quota| {
            let store = BoundedStore::new(max_tracked_clients, quota);
            (
                RateLimiter::new(quota, store.clone(), clock.clone()),
                limits.per_client,
                store,
            )
        });
        let global = FairBudget::new(
            limits.global,
            prefix.network,
            max_tracked_clients,
            &format!("{field}.global"),
        )?;
        Ok(ClassLimiter {
            per_client,
            client: prefix.client,
            global,
            clock,
        })
    }

    /// Takes one token for the client `ip` belongs to and one of the global budget (shared
    /// fairly between networks: [`fair`]). The client's bucket is asked first, so a client over
    /// its own limit does not use up everyone's; the price is that a request the global limit
    /// refuses has still used a token of its client's (governor cannot give one back), so while
    /// the global limit refuses, retrying clients also draw down their own buckets.
    pub fn check(&self, ip: IpAddr) -> Result<(), Denied> {
        if let Some((limiter, rate, _)) = &self.per_client {
            limiter
                .check_key(&self.client.key(ip))
                .map_err(|not_until| Denied {
                    scope: Scope::Client,
                    limit: Limit::PerSecond(*rate),
                    retry_after: not_until.wait_time_from(self.clock.now()),
                })?;
        }
        if let Some(global) = &self.global {
            global.take(ip, 1).map_err(|over| Denied {
                scope: Scope::Global,
                limit: Limit::PerSecond(global.rate()),
                retry_after: over.retry_after,
            })?;
        }
        Ok(())
    }

    /// Whether any limit is on.
    pub fn is_active(&self) -> bool {
        self.per_client.is_some() || self.global.is_some()
    }

    /// How many clients have per-client state right now (at most the configured maximum, once
    /// the store's pending maintenance has run).
    pub fn tracked_clients(&self) -> u64 {
        self.per_client
            .as_ref()
            .map_or(0, |(_, _, store)| store.tracked())
    }

    /// Runs the store's pending evictions (tests and the metrics scrape; moka also runs them on
    /// its own as entries are used).
    pub fn run_pending_maintenance(&self) {
        if let Some((_, _, store)) = &self.per_client {
            store.states.run_pending_tasks();
        }
    }
}

/// The public key a publish is for, as the per-key limit counts it.
pub type PublicKeyBytes = [u8; 32];

/// Enforces one [`KeyRate`] for every public key, with state for at most `max_tracked_keys`
/// keys (the keys published most often are kept: see the module docs).
pub struct KeyLimiter {
    limiter: KeyedLimiter<PublicKeyBytes>,
    rate: KeyRate,
    store: BoundedStore<PublicKeyBytes>,
    clock: DefaultClock,
}

impl std::fmt::Debug for KeyLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyLimiter")
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl KeyLimiter {
    /// A limiter for `rate` tracking at most `max_tracked_keys` keys; `None` when the rate is
    /// off. `field` names the setting in errors.
    pub fn new(
        rate: KeyRate,
        max_tracked_keys: u64,
        field: &str,
    ) -> Result<Option<KeyLimiter>, LimitError> {
        let quota = rate.quota().map_err(|reason| LimitError {
            field: field.to_string(),
            reason,
        })?;
        Ok(quota.map(|quota| {
            let clock = DefaultClock::default();
            let store = BoundedStore::new(max_tracked_keys, quota);
            KeyLimiter {
                limiter: RateLimiter::new(quota, store.clone(), clock.clone()),
                rate,
                store,
                clock,
            }
        }))
    }

    /// Takes one token of `key`'s.
    pub fn check(&self, key: &PublicKeyBytes) -> Result<(), Denied> {
        self.limiter.check_key(key).map_err(|not_until| Denied {
            scope: Scope::Key,
            limit: Limit::PerMinute(self.rate),
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }

    /// How many keys have state right now (see [`ClassLimiter::tracked_clients`]).
    pub fn tracked_keys(&self) -> u64 {
        self.store.tracked()
    }
}

/// Per-client (or per-key) rate states in a bounded moka cache; see the module docs.
#[derive(Clone)]
pub struct BoundedStore<K = IpAddr> {
    states: moka::sync::Cache<K, Arc<InMemoryState>>,
}

impl<K: Hash + Eq + Send + Sync + 'static> BoundedStore<K> {
    /// At most `max_entries` states; one idle for as long as `quota`'s bucket takes to refill is
    /// dropped.
    pub fn new(max_entries: u64, quota: Quota) -> BoundedStore<K> {
        // A little slack so a state refilled to the brim is certainly full when dropped.
        let refill = quota.burst_size_replenished_in() + Duration::from_secs(1);
        BoundedStore {
            states: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .time_to_idle(refill)
                .build(),
        }
    }

    /// Entries held (moka applies insertions and evictions in batches, so this may briefly
    /// exceed the bound until they run).
    pub fn tracked(&self) -> u64 {
        self.states.entry_count()
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let state = self.states.get_with(key.clone(), Arc::default);
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

/// How many leading bits of an address name one client. ISPs hand an IPv6 customer a /64 or
/// more, so counting IPv6 addresses one by one would let a single host take 2^64 budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientPrefix {
    pub ipv4: u8,
    pub ipv6: u8,
}

impl ClientPrefix {
    /// Each IPv4 address and each IPv6 /64 is a client.
    pub const HOSTS: ClientPrefix = ClientPrefix { ipv4: 32, ipv6: 64 };

    /// The networks global budgets are shared between: an IPv4 /24 (the smallest block routed
    /// on the Internet) and an IPv6 /48 (a site: one customer's whole allocation).
    pub const NETWORKS: ClientPrefix = ClientPrefix { ipv4: 24, ipv6: 48 };

    /// Checks the lengths set as `{field}.ipv4_prefix_len` and `{field}.ipv6_prefix_len`.
    pub fn validate(&self, field: &str) -> Result<(), LimitError> {
        self.validate_fields(
            &format!("{field}.ipv4_prefix_len"),
            &format!("{field}.ipv6_prefix_len"),
        )
    }

    /// Checks the lengths; the fields are the settings' full names, for the error.
    pub fn validate_fields(&self, ipv4_field: &str, ipv6_field: &str) -> Result<(), LimitError> {
        let check = |field: &str, value: u8, max: u8| {
            if value == 0 || value > max {
                return Err(LimitError {
                    field: field.to_string(),
                    reason: format!("must be 1 to {max}, got {value}"),
                });
            }
            Ok(())
        };
        check(ipv4_field, self.ipv4, 32)?;
        check(ipv6_field, self.ipv6, 128)
    }

    /// The network `ip` belongs to, as the key of its client's state. IPv4-mapped IPv6
    /// addresses count as IPv4 (a dual-stack socket reports IPv4 clients that way).
    pub fn key(&self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpAddr::V4(mask_v4(v4.to_bits(), self.ipv4).into()),
            IpAddr::V6(v6) => IpAddr::V6(mask_v6(v6.to_bits(), self.ipv6).into()),
        }
    }
}

/// Which addresses are one client (its own rate) and which one network (one share of a global
/// budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefixes {
    pub client: ClientPrefix,
    pub network: ClientPrefix,
}

impl Prefixes {
    /// Hosts are clients ([`ClientPrefix::HOSTS`]); /24s and /48s networks.
    pub const DEFAULT: Prefixes = Prefixes {
        client: ClientPrefix::HOSTS,
        network: ClientPrefix::NETWORKS,
    };
}

/// `bits` with all but the first `prefix_len` bits kept (of 32).
fn mask_v4(bits: u32, prefix_len: u8) -> u32 {
    bits & u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0)
}

/// `bits` with all but the first `prefix_len` bits kept (of 128).
fn mask_v6(bits: u128, prefix_len: u8) -> u128 {
    bits & u128::MAX
        .checked_shl(128 - u32::from(prefix_len.min(128)))
        .unwrap_or(0)
}

/// Networks whose forwarding headers (`X-Forwarded-For`, `Forwarded`) name the real client.
/// Empty (the default): the socket's peer is the client and those headers are ignored, since
/// anyone can send them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// A list of networks (`10.0.0.0/8`) or single addresses (`192.0.2.1`, `::1`).
impl<'de> Deserialize<'de> for TrustedProxies {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = Vec::<String>::deserialize(deserializer)?;
        entries
            .iter()
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        serde::de::Error::custom(format!(
                            "{entry:?} is neither an IP address nor a network like 10.0.0.0/8"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }
}

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies(networks)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind `peer`: `peer` itself unless it is a trusted proxy, else the last
    /// address in `forwarded_chain` (oldest first, as the headers list them) that is not a
    /// trusted proxy. Walking from the right matters: a client can put anything at the left of
    /// the chain, but each trusted proxy appends the address it saw. A chain made only of
    /// trusted proxies yields its first address; no chain at all, the proxy itself.
    pub fn client(&self, peer: IpAddr, forwarded_chain: &[IpAddr]) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        forwarded_chain
            .iter()
            .rev()
            .find(|ip| !self.contains(**ip))
            .or(forwarded_chain.first())
            .copied()
            .unwrap_or(peer)
    }
}

#[cfg(test)]
mod tests;
