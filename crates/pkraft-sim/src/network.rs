//! The network over turmoil: the hosts' names, the transport a node's peer client connects
//! with, and the loop that serves a node's routes on a turmoil listener with hyper's HTTP/1.1:
//! its peer routes here (`pkraft_raft::routes::router`, the listener's real router), its public
//! router from `crate::public`. The daemon's own
//! listeners add connection limits and admission in front of the same routers
//! (`pkraft_http::serve`); those are not simulated. A partition in turmoil refuses a connection
//! at once (its SYN is dropped with an answer), so to a caller it looks like a refusal, not
//! silence.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::ConnectInfo;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use pkraft_raft::Node;
use pkraft_raft::peer::PeerTransport;
use pkraft_raft::peer::transport::PeerStream;
use pkraft_testkit::rng::SplitMix64;
use tower::ServiceExt;

/// The port every simulated node's peer listener binds.
pub const PEER_PORT: u16 = 7000;

/// The turmoil host name of node `id`.
pub(crate) fn host_name(id: u64) -> String {
    format!("n{id}")
}

/// A peer transport whose connections are turmoil's: `host:port` resolved by turmoil's DNS.
pub fn transport() -> PeerTransport {
    PeerTransport::Custom(Arc::new(|addr: String| {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Box::new(stream) as Box<dyn PeerStream>)
        })
    }))
}

/// The nodes whose peer answers are being lost now (`FaultKind::AnswersLost`), each with the
/// draws that decide which.
static LOSING_ANSWERS: Mutex<BTreeMap<u64, SplitMix64>> = Mutex::new(BTreeMap::new());

/// Makes node `node` lose the answers to some of the peer requests it serves, which drawn from
/// `draws`, or (`None`) none again.
pub(crate) fn lose_answers(node: u64, draws: Option<SplitMix64>) {
    let mut losing = LOSING_ANSWERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    match draws {
        Some(draws) => losing.insert(node, draws),
        None => losing.remove(&node),
    };
}

/// Answers lost so far in the run.
static ANSWERS_LOST: AtomicU64 = AtomicU64::new(0);

/// No node loses answers: a run's faults are its own.
pub(crate) fn start_run() {
    LOSING_ANSWERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    ANSWERS_LOST.store(0, Ordering::Relaxed);
}

/// How many answers were lost so far in the run.
pub(crate) fn answers_lost() -> u64 {
    ANSWERS_LOST.load(Ordering::Relaxed)
}

/// Whether the answer to the next peer request node `node` serves is lost: one in four while
/// it loses answers.
fn answer_lost(node: u64) -> bool {
    let mut losing = LOSING_ANSWERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    losing
        .get_mut(&node)
        .is_some_and(|draws| draws.below(4) == 0)
}

/// The error that closes a connection in place of a lost answer.
#[derive(Debug, thiserror::Error)]
#[error("the answer was lost by the simulated network")]
struct AnswerLost;

/// Handles `request` with `router`; if `losing` names a node whose answers are being lost
/// and this one is drawn, the connection closes in place of the answer (the caller cannot
/// tell whether the request was handled).
async fn handle(
    router: axum::Router,
    losing: Option<u64>,
    request: Request<Incoming>,
) -> Result<axum::response::Response, Box<dyn std::error::Error + Send + Sync>> {
    let lost = losing.is_some_and(answer_lost);
    let answer = router.oneshot(request).await?;
    if lost {
        ANSWERS_LOST.fetch_add(1, Ordering::Relaxed);
        return Err(Box::new(AnswerLost));
    }
    Ok(answer)
}

/// Serves `node`'s peer routes on [`PEER_PORT`] of the current host until the host stops.
pub async fn serve_peers(node: Arc<Node>) -> io::Result<()> {
    let id = node.id();
    serve(PEER_PORT, pkraft_raft::routes::router(node), Some(id)).await
}

/// Serves `router` on `port` of the current host with hyper's HTTP/1.1, each request with the
/// peer's address as axum's `ConnectInfo` (as `pkraft_http::serve` attaches it), losing the
/// answers of node `losing` while it loses answers.
pub(crate) async fn serve(port: u16, router: axum::Router, losing: Option<u64>) -> io::Result<()> {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
    // The connections are this future's: dropped with it (a node's clean stop), each is closed,
    // as the process's exit closes them, instead of serving on until the host is dropped.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            accepted = listener.accept() => accepted?,
            Some(joined) = connections.join_next() => {
                // A connection's panic (an invariant asserted in a route) is the host's, as it
                // was when each connection was a task of its own.
                if let Err(ended) = joined
                    && ended.is_panic()
                {
                    std::panic::resume_unwind(ended.into_panic());
                }
                continue;
            }
        };
        let router = router.clone();
        let service =
            TowerToHyperService::new(tower::service_fn(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                handle(router.clone(), losing, request)
            }));
        connections.spawn(async move {
            // A connection's end (the peer gone, a partition) is the network's business: the
            // caller sees its call fail.
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "a simulated connection ended");
            }
        });
    }
}
