//! Rate limits of the public listeners (`[rate_limit]`): per client and global, per class of
//! route, answered `429 Too Many Requests` with `Retry-After` and `RateLimit-*` headers.
//!
//! A PUT is one of two classes: `publish` when this node stores its key already (a republish,
//! what iroh endpoints send every few minutes) and `publish_new_keys` when not. Each has budgets
//! of its own, so a flood of new keys, however large, never takes the republishes' budget; new
//! keys get much less by default. The class is decided before the body is read, from the one
//! read of the replica a PUT makes (`pkraft_raft::Admission`, which the handler uses too). A PUT that
//! would change what is stored also counts against its key's own rate (`publish_per_key`), so
//! the keys a flood did get stored cannot be republished as the next flood: that one is taken
//! after the signature is checked ([`RateLimits::limit_key`]), so that only the key's owner
//! can spend it (anyone can send garbage or a replay of the stored packet under any key).
//!
//! The client is the socket's peer address, or, when that peer is a configured trusted proxy,
//! the address the proxies name in `X-Forwarded-For` (or `Forwarded`). The limiter state is
//! bounded ([`pkraft_limits`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pkraft_limits::{
    ClassLimiter, ClassLimits, ClientPrefix, Denied, KeyLimiter, KeyRate, LimitError, Prefixes,
    Rate, TrustedProxies,
};
use pkraft_raft::Admission;
use pkraft_types::{VerifiedPacket, decode_z32_key};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use serde::Deserialize;

use crate::SharedState;
use crate::error::RelayError;

/// `[rate_limit]`: limits of the public HTTP listeners.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    /// Clients whose limiter state is kept, per class; beyond it the least used are forgotten.
    /// The same bound holds the networks counted by each global budget while it is short.
    /// Default 65,536 (a few MiB per class, as much again for the networks).
    pub max_tracked_clients: u64,
    /// Addresses or networks (`10.0.0.0/8`, `::1`) of reverse proxies in front of this node.
    /// Only connections from them may name the client in `client_ip_header`; from anyone else
    /// the header is ignored. Default: none.
    pub trusted_proxies: TrustedProxies,
    /// The header the trusted proxies set: `x-forwarded-for` (default) or `forwarded`
    /// (RFC 7239). Only this one is read, so a client cannot slip the other one past a proxy
    /// that does not strip it.
    pub client_ip_header: ClientIpHeader,
    /// Addresses or networks of the operator's own publishers (a republishing service, a
    /// federation's own nodes): their PUTs meet no `publish` or `publish_new_keys` limit, per
    /// client or global, and spend none of the global budgets. The key's own rate
    /// (`publish_per_key`), the cap on stored packets and the connection caps still apply. The
    /// client is found as for every limit (behind `trusted_proxies`, the address they name).
    /// Default: none.
    pub exempt_publishers: TrustedProxies,
    /// IPv4 clients in one network of this length share one share of each global budget
    /// (`pkraft_limits::fair`): when a global budget runs short, the networks asking most are
    /// refused first and a network asking no more than `global.per_second / networks asking`
    /// is not (while the budget's debt has room). Default 24.
    pub network_ipv4_prefix_len: u8,
    /// The same for IPv6. Default 48 (a site), so that one holder of a /48 (65,536 /64s,
    /// each a client of its own) gets one network's share.
    pub network_ipv6_prefix_len: u8,
    /// `PUT` of a relay route for a key this node stores (a republish). Default per client 50/s
    /// with a burst of 1,000; global 5,000/s with a burst of 20,000.
    pub publish: ClassLimits,
    /// `PUT` of a relay route for a key this node does not store. Default per client 10/s with
    /// a burst of 1,000 (a thousand endpoints starting at once behind one address are taken
    /// at once); global 200/s with a burst of 2,000.
    pub publish_new_keys: ClassLimits,
    /// Every `PUT` of one public key that would change what the node stores, whichever client
    /// sends it. Default 6 a minute with a burst of 10: an endpoint republishes every few
    /// minutes and on every change of address.
    pub publish_per_key: KeyRate,
    /// Keys whose per-key state is kept; beyond it the least published are forgotten (and not
    /// limited until they are published often again). Default 65,536.
    pub max_tracked_keys: u64,
    /// `GET` of a relay route. Default per client 200/s, burst 2,000; global 20,000/s, burst
    /// 40,000.
    pub resolve: ClassLimits,
    /// `/dns-query` (DoH). Default per client 500/s, burst 5,000; global 20,000/s, burst
    /// 40,000.
    pub doh: ClassLimits,
    /// `/healthz` and `/readyz` of the public listeners: a request like any other, so a client
    /// cannot use them as free keep-alives (the admin listener's are not limited). Default per
    /// client 10/s, burst 100 (load balancers and kubelets probe once a second or less); no
    /// global limit, so that a flood from many addresses cannot fail the probes of the load
    /// balancer in front.
    pub health: ClassLimits,
}

/// Which forwarding header trusted proxies set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientIpHeader {
    #[default]
    XForwardedFor,
    Forwarded,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            max_tracked_clients: 65_536,
            trusted_proxies: TrustedProxies::default(),
            client_ip_header: ClientIpHeader::default(),
            exempt_publishers: TrustedProxies::default(),
            network_ipv4_prefix_len: ClientPrefix::NETWORKS.ipv4,
            network_ipv6_prefix_len: ClientPrefix::NETWORKS.ipv6,
            publish: ClassLimits {
                per_client: Rate::new(50, 1_000),
                global: Rate::new(5_000, 20_000),
            },
            publish_new_keys: ClassLimits {
                per_client: Rate::new(10, 1_000),
                global: Rate::new(200, 2_000),
            },
            publish_per_key: KeyRate::new(6, 10),
            max_tracked_keys: 65_536,
            // The global read limits keep a flood from rotating addresses (each a new client)
            // from taking every core: about 40 % of what one 2-core node serves
            // (docs/BENCHMARKS.md). Raise them on bigger machines.
            resolve: ClassLimits {
                per_client: Rate::new(200, 2_000),
                global: Rate::new(20_000, 40_000),
            },
            doh: ClassLimits {
                per_client: Rate::new(500, 5_000),
                global: Rate::new(20_000, 40_000),
            },
            health: ClassLimits {
                per_client: Rate::new(10, 100),
                global: Rate::OFF,
            },
        }
    }
}

impl RateLimitSettings {
    /// Which addresses are one client (a host: an IPv4 address, an IPv6 /64) and which one
    /// network.
    fn prefixes(&self) -> Prefixes {
        Prefixes {
            client: ClientPrefix::HOSTS,
            network: ClientPrefix {
                ipv4: self.network_ipv4_prefix_len,
                ipv6: self.network_ipv6_prefix_len,
            },
        }
    }

    pub fn validate(&self) -> Result<(), LimitError> {
        self.prefixes().network.validate_fields(
            "rate_limit.network_ipv4_prefix_len",
            "rate_limit.network_ipv6_prefix_len",
        )?;
        for (field, value) in [
            ("max_tracked_clients", self.max_tracked_clients),
            ("max_tracked_keys", self.max_tracked_keys),
        ] {
            if value == 0 {
                return Err(LimitError {
                    field: format!("rate_limit.{field}"),
                    reason: "must be at least 1".into(),
                });
            }
        }
        self.publish.validate("rate_limit.publish")?;
        self.publish_new_keys
            .validate("rate_limit.publish_new_keys")?;
        self.publish_per_key
            .validate("rate_limit.publish_per_key")?;
        self.resolve.validate("rate_limit.resolve")?;
        self.doh.validate("rate_limit.doh")?;
        self.health.validate("rate_limit.health")
    }
}

/// The class of a rate-limited route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// A PUT of a key this node stores.
    Publish,
    /// A PUT of a key it does not.
    PublishNewKeys,
    Resolve,
    Doh,
    Health,
}

impl RouteClass {
    const ALL: [RouteClass; 5] = [
        RouteClass::Publish,
        RouteClass::PublishNewKeys,
        RouteClass::Resolve,
        RouteClass::Doh,
        RouteClass::Health,
    ];

    fn as_str(self) -> &'static str {
        match self {
            RouteClass::Publish => "publish",
            RouteClass::PublishNewKeys => "publish_new_keys",
            RouteClass::Resolve => "resolve",
            RouteClass::Doh => "doh",
            RouteClass::Health => "health",
        }
    }
}

/// The limiters of the public listeners, shared by every request.
pub struct RateLimits {
    publish: ClassLimiter,
    publish_new_keys: ClassLimiter,
    /// `None` when `publish_per_key` is off.
    publish_per_key: Option<KeyLimiter>,
    resolve: ClassLimiter,
    doh: ClassLimiter,
    health: ClassLimiter,
    proxies: TrustedProxies,
    client_ip_header: ClientIpHeader,
    exempt_publishers: TrustedProxies,
    /// `pkraft_http_rate_limit_exempt_total`: PUTs of `exempt_publishers`, which met no limit.
    exempt: IntCounter,
    /// `pkraft_http_rate_limited_total{class, scope}`.
    refused: IntCounterVec,
    /// `pkraft_http_rate_limit_tracked_clients{class}`, set at scrape time.
    tracked: IntGaugeVec,
    /// `pkraft_http_rate_limit_tracked_keys`, set at scrape time.
    tracked_keys: IntGauge,
}

/// Why the HTTP rate limits could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitsError {
    /// A `[rate_limit]` value that cannot be used (the message names the field).
    #[error(transparent)]
    Setting(#[from] LimitError),
    /// Their metrics could not be made.
    #[error("rate limit metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl RateLimits {
    pub fn new(settings: &RateLimitSettings) -> Result<RateLimits, RateLimitsError> {
        settings.validate()?;
        let limiter = |limits: &ClassLimits, field: &str| {
            ClassLimiter::new(
                limits,
                settings.prefixes(),
                settings.max_tracked_clients,
                field,
            )
        };
        Ok(RateLimits {
            publish: limiter(&settings.publish, "rate_limit.publish")?,
            publish_new_keys: limiter(&settings.publish_new_keys, "rate_limit.publish_new_keys")?,
            publish_per_key: KeyLimiter::new(
                settings.publish_per_key,
                settings.max_tracked_keys,
                "rate_limit.publish_per_key",
            )?,
            resolve: limiter(&settings.resolve, "rate_limit.resolve")?,
            doh: limiter(&settings.doh, "rate_limit.doh")?,
            health: limiter(&settings.health, "rate_limit.health")?,
            proxies: settings.trusted_proxies.clone(),
            client_ip_header: settings.client_ip_header,
            exempt_publishers: settings.exempt_publishers.clone(),
            exempt: IntCounter::new(
                "pkraft_http_rate_limit_exempt_total",
                "PUTs from rate_limit.exempt_publishers, which met no publish limit.",
            )?,
            refused: IntCounterVec::new(
                Opts::new(
                    "pkraft_http_rate_limited_total",
                    "Requests refused with 429, by route class and the limit that refused them.",
                ),
                &["class", "scope"],
            )?,
            tracked: IntGaugeVec::new(
                Opts::new(
                    "pkraft_http_rate_limit_tracked_clients",
                    "Clients with per-client limiter state, by route class.",
                ),
                &["class"],
            )?,
            tracked_keys: IntGauge::new(
                "pkraft_http_rate_limit_tracked_keys",
                "Public keys with per-key publish limiter state.",
            )?,
        })
    }

    /// Registers `pkraft_http_rate_limited_total`, `pkraft_http_rate_limit_tracked_clients` and
    /// `pkraft_http_rate_limit_tracked_keys` (docs/METRICS.md); the gauges are read at scrape
    /// time.
    pub fn register(self: &Arc<Self>, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(RateLimitCollector(self.clone())))
    }

    /// Sets the tracked-clients gauges.
    fn update_gauges(&self) {
        for class in RouteClass::ALL {
            self.tracked
                .with_label_values(&[class.as_str()])
                .set(i64::try_from(self.limiter(class).tracked_clients()).unwrap_or(i64::MAX));
        }
        let keys = self
            .publish_per_key
            .as_ref()
            .map_or(0, KeyLimiter::tracked_keys);
        self.tracked_keys
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    /// Whether `class` has any limit.
    pub fn is_active(&self, class: RouteClass) -> bool {
        self.limiter(class).is_active()
    }

    fn limiter(&self, class: RouteClass) -> &ClassLimiter {
        match class {
            RouteClass::Publish => &self.publish,
            RouteClass::PublishNewKeys => &self.publish_new_keys,
            RouteClass::Resolve => &self.resolve,
            RouteClass::Doh => &self.doh,
            RouteClass::Health => &self.health,
        }
    }

    /// The client a request comes from; see the module docs.
    pub fn client_of(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.proxies.is_empty() || !self.proxies.contains(peer) {
            return peer;
        }
        let chain = match self.client_ip_header {
            ClientIpHeader::XForwardedFor => x_forwarded_for(headers),
            ClientIpHeader::Forwarded => forwarded_for(headers),
        };
        self.proxies.client(peer, &chain)
    }

    /// Takes a token of `class` for the client of `request`, or answers 429.
    async fn enforce(&self, class: RouteClass, request: Request, next: Next) -> Response {
        match self.take_token(class, request.extensions(), request.headers()) {
            None => next.run(request).await,
            Some(too_many) => too_many,
        }
    }

    /// Takes a token of `class` for the client of a request with these `extensions` and
    /// `headers`; over the limit: the 429 to answer.
    fn take_token(
        &self,
        class: RouteClass,
        extensions: &Extensions,
        headers: &HeaderMap,
    ) -> Option<Response> {
        let limiter = self.limiter(class);
        if !limiter.is_active() {
            return None;
        }
        // The listeners always attach the peer address; a router used without them (in-process
        // tests) counts every request as one client.
        let peer = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
        let client_ip = self.client_of(peer, headers);
        if matches!(class, RouteClass::Publish | RouteClass::PublishNewKeys)
            && !self.exempt_publishers.is_empty()
            && self.exempt_publishers.contains(client_ip)
        {
            self.exempt.inc();
            return None;
        }
        let denied = limiter.check(client_ip).err()?;
        Some(self.refuse(class, denied))
    }

    /// Takes a token of the key's own rate (`publish_per_key`) for `packet`, verified, when that
    /// limit is on and the packet would change what the replica holds for its key (newer by the
    /// ordering rule, or the first: [`Admission::changes_store`]): a replay of the stored
    /// packet or an older one costs the key nothing. A key whose stored packet cannot be read
    /// counts as changed. Over the rate: the 429 to answer.
    pub fn limit_key(&self, admission: &Admission, packet: &VerifiedPacket) -> Option<Response> {
        let limiter = self.publish_per_key.as_ref()?;
        if !admission.changes_store(packet) {
            return None;
        }
        let denied = limiter.check(&packet.key_bytes()).err()?;
        Some(self.refuse(RouteClass::Publish, denied))
    }

    /// Counts a refusal of `class` and answers it 429.
    fn refuse(&self, class: RouteClass, denied: Denied) -> Response {
        self.refused
            .with_label_values(&[class.as_str(), denied.scope.as_str()])
            .inc();
        too_many_requests(class, denied)
    }
}

/// The rate limits' metrics, with the gauges refreshed on each scrape.
struct RateLimitCollector(Arc<RateLimits>);

impl prometheus::core::Collector for RateLimitCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        let mut descs = self.0.refused.desc();
        descs.extend(self.0.exempt.desc());
        descs.extend(self.0.tracked.desc());
        descs.extend(self.0.tracked_keys.desc());
        descs
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.update_gauges();
        let mut families = self.0.refused.collect();
        families.extend(self.0.exempt.collect());
        families.extend(self.0.tracked.collect());
        families.extend(self.0.tracked_keys.collect());
        families
    }
}

/// `RateLimit-Limit` etc. (draft-ietf-httpapi-ratelimit-headers, the widely implemented form).
const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// 429 with when to retry, and which limit refused.
fn too_many_requests(class: RouteClass, denied: Denied) -> Response {
    // Whole seconds, rounded up, at least 1 (RFC 9110 delay-seconds).
    let retry_secs = whole_seconds_up(denied.retry_after);
    let (limit, burst) = (denied.limit, denied.limit.burst());
    let body = format!(
        "rate limited: the {scope} {class} limit is {limit}; retry after {retry_secs} s\n",
        scope = match denied.scope {
            pkraft_limits::Scope::Client => "per-client",
            pkraft_limits::Scope::Global => "global",
            pkraft_limits::Scope::Key => "per-key",
        },
        class = class.as_str(),
    );
    let mut response = (StatusCode::TOO_MANY_REQUESTS, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_secs));
    headers.insert(RATELIMIT_LIMIT, HeaderValue::from(burst));
    headers.insert(RATELIMIT_REMAINING, HeaderValue::from(0));
    headers.insert(RATELIMIT_RESET, HeaderValue::from(retry_secs));
    // The window in which the whole burst comes back.
    let window = limit.window_secs();
    if let Ok(policy) = HeaderValue::from_str(&format!("{burst};w={window}")) {
        headers.insert(RATELIMIT_POLICY, policy);
    }
    response
}

fn whole_seconds_up(duration: Duration) -> u64 {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    secs.max(1)
}

/// The relay routes' limits, taken as an extractor of the handler, before it reads the body: a
/// PUT is `publish` when this node stores its key and `publish_new_keys` when not (see the module
/// docs); anything else is `resolve`. The replica is read for the key once
/// ([`pkraft_raft::Writes::admit`]), and the handler gets that answer with the key. An extractor
/// rather than a middleware: a middleware costs each request a clone of the route's service and
/// two boxed futures, and hands the admission over through the request's extensions.
pub struct RelayLimits {
    /// The route's key, percent-decoded, as the URL has it (not checked yet).
    pub key: String,
    /// For a PUT whose key decodes: what the replica holds for it. `None` for a GET, and for a
    /// PUT whose key is the handler's 400.
    pub admission: Option<Admission>,
}

impl FromRequestParts<SharedState> for RelayLimits {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<RelayLimits, Response> {
        let Path(key) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let limits = &state.rate_limits;
        // The 429 to answer when the client is over `class`'s limits.
        let refused = |class| limits.take_token(class, &parts.extensions, &parts.headers);
        if parts.method != Method::PUT {
            if let Some(too_many) = refused(RouteClass::Resolve) {
                return Err(too_many);
            }
            return Ok(RelayLimits {
                key,
                admission: None,
            });
        }
        // A key that does not decode is the handler's 400; until then it counts as a new key.
        let Ok(key_bytes) = decode_z32_key(&key) else {
            if let Some(too_many) = refused(RouteClass::PublishNewKeys) {
                return Err(too_many);
            }
            return Ok(RelayLimits {
                key,
                admission: None,
            });
        };
        let admission = state.node.writes().admit(&key_bytes);
        // No room for new keys (the store's cap, a disk below the new-key reserve): refused before
        // the body is read or verified, and before it takes any rate budget.
        if let Some(reason) = state
            .node
            .writes()
            .refuse_new_key(|| admission.is_republish())
        {
            return Err(RelayError::NoRoom(reason).into_response());
        }
        let class = if admission.is_republish() {
            RouteClass::Publish
        } else {
            RouteClass::PublishNewKeys
        };
        if let Some(too_many) = refused(class) {
            return Err(too_many);
        }
        Ok(RelayLimits {
            key,
            admission: Some(admission),
        })
    }
}

/// Middleware of `/dns-query`.
pub async fn limit_doh(
    State(limits): State<Arc<RateLimits>>,
    request: Request,
    next: Next,
) -> Response {
    limits.enforce(RouteClass::Doh, request, next).await
}

/// Middleware of the public listeners' `/healthz` and `/readyz`.
pub async fn limit_health(
    State(limits): State<Arc<RateLimits>>,
    request: Request,
    next: Next,
) -> Response {
    limits.enforce(RouteClass::Health, request, next).await
}

/// The addresses in `X-Forwarded-For` (every such header, in order), oldest first. Parsing
/// goes right to left and stops at the first entry that is not an address: what lies left of it
/// was not written by a proxy that could be identified.
fn x_forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    // Split the raw bytes: a proxy appends its entry to whatever the client sent, so one
    // non-ASCII byte on the left must not cost the entries on the right.
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
        .map(|entry| std::str::from_utf8(entry).unwrap_or(""))
        .collect();
    parse_chain(entries.into_iter().rev())
}

/// The `for=` addresses of `Forwarded` (RFC 7239), oldest first, with the same rule.
fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    let entries: Vec<&str> = headers
        .get_all(header::FORWARDED)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|element| {
            element
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
                .map_or("", |(_, value)| value)
        })
        .collect();
    parse_chain(entries.into_iter().rev())
}

/// Parses entries given newest first, stopping at the first that is no address; returns them
/// oldest first.
fn parse_chain<'a>(newest_first: impl Iterator<Item = &'a str>) -> Vec<IpAddr> {
    let mut chain: Vec<IpAddr> = newest_first.map_while(parse_node).collect();
    chain.reverse();
    chain
}

/// One forwarded node: `192.0.2.1`, `192.0.2.1:443`, `2001:db8::1`, `[2001:db8::1]:443`, any
/// of them quoted.
fn parse_node(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim().trim_matches('"');
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    // `[2001:db8::1]` without a port.
    entry
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("header"));
        }
        map
    }

    fn limits(header: ClientIpHeader) -> RateLimits {
        RateLimits::new(&RateLimitSettings {
            trusted_proxies: TrustedProxies::new(vec!["10.0.0.0/8".parse().expect("net")]),
            client_ip_header: header,
            ..RateLimitSettings::default()
        })
        .expect("limits")
    }

    #[test]
    fn x_forwarded_for_is_read_only_from_trusted_proxies() {
        let limits = limits(ClientIpHeader::XForwardedFor);
        let forwarded = headers(&[
            ("x-forwarded-for", "203.0.113.1, 198.51.100.2"),
            ("x-forwarded-for", "10.0.0.9"),
        ]);
        assert_eq!(
            limits.client_of(ip("10.0.0.1"), &forwarded),
            ip("198.51.100.2")
        );
        assert_eq!(
            limits.client_of(ip("192.0.2.1"), &forwarded),
            ip("192.0.2.1")
        );
        // The client wrote garbage to the left: the proxy's entry still counts.
        let forged = headers(&[("x-forwarded-for", "nonsense, 198.51.100.2:5555")]);
        assert_eq!(
            limits.client_of(ip("10.0.0.1"), &forged),
            ip("198.51.100.2")
        );
        // The configured header only: `Forwarded` is ignored here.
        let other = headers(&[("forwarded", "for=198.51.100.2")]);
        assert_eq!(limits.client_of(ip("10.0.0.1"), &other), ip("10.0.0.1"));
    }

    #[test]
    fn forwarded_for_is_parsed_per_rfc_7239() {
        let limits = limits(ClientIpHeader::Forwarded);
        let forwarded = headers(&[(
            "forwarded",
            "for=203.0.113.1;proto=https, For=\"[2001:db8:cafe::17]:4711\";by=10.0.0.1",
        )]);
        assert_eq!(
            limits.client_of(ip("10.0.0.1"), &forwarded),
            ip("2001:db8:cafe::17")
        );
        let hidden = headers(&[("forwarded", "for=_hidden, for=198.51.100.3")]);
        assert_eq!(
            limits.client_of(ip("10.0.0.1"), &hidden),
            ip("198.51.100.3")
        );
        let unknown = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(limits.client_of(ip("10.0.0.1"), &unknown), ip("10.0.0.1"));
    }

    #[tokio::test]
    async fn refusals_are_429_with_retry_after_and_ratelimit_headers() {
        let response = too_many_requests(
            RouteClass::Publish,
            Denied {
                scope: pkraft_limits::Scope::Client,
                limit: pkraft_limits::Limit::PerSecond(Rate::new(50, 1_000)),
                retry_after: Duration::from_millis(20),
            },
        );
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        assert_eq!(header("retry-after").as_deref(), Some("1"));
        assert_eq!(header("ratelimit-limit").as_deref(), Some("1000"));
        assert_eq!(header("ratelimit-remaining").as_deref(), Some("0"));
        assert_eq!(header("ratelimit-reset").as_deref(), Some("1"));
        assert_eq!(header("ratelimit-policy").as_deref(), Some("1000;w=20"));
        assert_eq!(whole_seconds_up(Duration::from_millis(2_001)), 3);
    }
}
