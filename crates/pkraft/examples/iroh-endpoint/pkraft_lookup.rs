//! Pointing an iroh endpoint at a pkraft cluster: it publishes its addresses through one node's
//! relay, and finds other endpoints through the cluster's DNS and relay.
//!
//! docs/DEPLOY.md shows this file; `tests/it/iroh_client.rs` compiles and uses it, so it stays correct.

use std::net::SocketAddr;

use iroh::Endpoint;
use iroh::address_lookup::{AddrFilter, DnsAddressLookup, PkarrPublisher, PkarrResolver};
use iroh::dns::{DnsResolver, NameserverConfig};
use iroh::endpoint::{Builder, presets};

/// Where a pkraft cluster serves iroh endpoints.
#[derive(Debug, Clone)]
pub struct PkraftCluster {
    /// A node's relay URL (`http://<http.listen>/pkarr`); iroh PUTs and GETs `{relay}/{z32}`.
    pub relay: url::Url,
    /// A DNS server that answers for the cluster's origin: a node's `dns.listen`, or a resolver
    /// that reaches the zone delegated to the cluster.
    pub dns: SocketAddr,
    /// The origin the cluster serves (`dns.origins`), e.g. `pkarr.example.org`.
    pub origin: String,
}

impl PkraftCluster {
    /// A resolver that asks only the cluster's DNS server. iroh's default resolvers read
    /// /etc/resolv.conf and fall back to public servers; this one never leaves `dns`.
    pub fn resolver(&self) -> DnsResolver {
        DnsResolver::builder()
            .add_nameserver_config(NameserverConfig::udp(self.dns.ip()).with_port(self.dns.port()))
            .disable_fallback()
            .build()
    }

    /// Publishes the endpoint's addresses: `publish` chooses which (iroh's default,
    /// `AddrFilter::relay_only()`, publishes only the home relay; without relays use
    /// `AddrFilter::unfiltered()`, which publishes the direct addresses).
    pub fn publisher(&self, publish: AddrFilter) -> iroh::address_lookup::PkarrPublisherBuilder {
        PkarrPublisher::builder(self.relay.clone())
            .addr_filter(publish)
            .dns_resolver(self.resolver())
    }

    /// Finds other endpoints with a DNS query for `_iroh.<z32>.<origin>` TXT.
    pub fn dns_lookup(&self) -> iroh::address_lookup::DnsAddressLookupBuilder {
        DnsAddressLookup::builder(self.origin.clone()).dns_resolver(self.resolver())
    }

    /// Finds other endpoints with an HTTP GET of `{relay}/{z32}`.
    pub fn relay_lookup(&self) -> iroh::address_lookup::PkarrResolverBuilder {
        PkarrResolver::builder(self.relay.clone()).dns_resolver(self.resolver())
    }

    /// An endpoint builder that publishes through the cluster and looks endpoints up through it
    /// (DNS first, the relay over HTTP too). Add relay, bind and ALPN settings as usual.
    pub fn endpoint_builder(&self, publish: AddrFilter) -> Builder {
        Endpoint::builder(presets::Minimal)
            .dns_resolver(self.resolver())
            .address_lookup(self.publisher(publish))
            .address_lookup(self.dns_lookup())
            .address_lookup(self.relay_lookup())
    }
}
