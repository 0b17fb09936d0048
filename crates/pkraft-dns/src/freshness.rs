//! The optional `dns.max_stale` bound (DESIGN.md §4): a node that has not known its replica to be
//! current for longer than that answers SERVFAIL instead of records that may be outdated, and
//! resolvers then ask another server (iroh's resolver and stub resolvers treat SERVFAIL as "try
//! the next one").

use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use prometheus::IntCounter;

/// How current this node's replica is, as the consensus layer (which this crate does not depend
/// on) knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// The node restarted after a crash and has not caught up with the cluster: its replica may
    /// be older than what it answered before. Always refused, so answers never go backwards.
    CatchingUp,
    /// How long ago the node last knew its replica to be current (on a follower, its last
    /// contact with the leader); `None` if never since it started. Refused beyond `max_stale`.
    LastConfirmed(Option<Duration>),
}

/// Asked on every query.
pub type FreshnessProbe = Arc<dyn Fn() -> Freshness + Send + Sync>;

/// Wraps the zone handlers: answers SERVFAIL while this node is catching up after a crash or is
/// staler than `max_stale`.
pub struct FreshnessGuard<H> {
    inner: H,
    freshness: FreshnessProbe,
    /// `None`: always answer from the replica, however stale.
    max_stale: Option<Duration>,
    /// Counts the queries refused for staleness.
    stale_refusals: IntCounter,
}

impl<H> FreshnessGuard<H> {
    pub fn new(
        inner: H,
        freshness: FreshnessProbe,
        max_stale: Option<Duration>,
        stale_refusals: IntCounter,
    ) -> FreshnessGuard<H> {
        FreshnessGuard {
            inner,
            freshness,
            max_stale,
            stale_refusals,
        }
    }

    /// Whether answers must be refused now. A node that never heard from a leader since it
    /// started cannot vouch for its replica either.
    pub(crate) fn too_stale(&self) -> bool {
        match (self.freshness)() {
            Freshness::CatchingUp => true,
            Freshness::LastConfirmed(age) => self
                .max_stale
                .is_some_and(|max| age.is_none_or(|stale| stale > max)),
        }
    }
}

#[async_trait::async_trait]
impl<H: RequestHandler> RequestHandler for FreshnessGuard<H> {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        if self.too_stale() {
            self.stale_refusals.inc();
            return serve_failure(request, response_handle).await;
        }
        self.inner
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

/// SERVFAIL with the question echoed, and an OPT record if the query had one (RFC 6891 §7).
async fn serve_failure<R: ResponseHandler>(
    request: &Request,
    mut response_handle: R,
) -> ResponseInfo {
    let edns = request.edns.as_ref().map(|query_edns| {
        let mut edns = Edns::new();
        edns.set_max_payload(query_edns.max_payload().max(512));
        edns
    });
    let response = MessageResponseBuilder::new(&request.queries, edns.as_ref())
        .error_msg(&request.metadata, ResponseCode::ServFail);
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            tracing::debug!(%error, "could not send a SERVFAIL response");
            servfail_info(request)
        }
    }
}

/// What a handler reports for `request` when its response could not be sent: SERVFAIL, as
/// hickory's own handlers report it.
pub(crate) fn servfail_info(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}
