//! A fault-injecting HTTP proxy in front of each node's peer listener, in the spirit of
//! toxiproxy: nodes advertise the proxy's address, so all peer traffic passes through it, and the
//! test can cut a node off from the others. Peer requests name their sender and receiver in
//! headers (`Pkraft-Source-Node`, `Pkraft-Target-Node`), so the proxy can drop both directions of
//! an isolated node's traffic, including the requests it sends to the others.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Largest request the proxy relays (a full append-entries fits many times over).
const BODY_MAX: usize = 256 * 1024 * 1024;

/// Which nodes are cut off. Shared by every proxy of a cluster.
#[derive(Default)]
pub struct Faults {
    isolated: Mutex<HashSet<u64>>,
    lost_publish_answer: Mutex<Option<LostAnswer>>,
}

/// An armed "lose the answer" fault: the next publish `from` forwards is delivered, then the
/// proxy reports it on `delivered`, waits for `release`, and answers 502 instead of the leader's
/// answer (as a connection cut after the request was sent would).
struct LostAnswer {
    from: u64,
    delivered: tokio::sync::oneshot::Sender<()>,
    release: tokio::sync::oneshot::Receiver<()>,
}

/// The test's side of [`Faults::lose_next_publish_answer`].
pub struct LostAnswerControl {
    pub delivered: tokio::sync::oneshot::Receiver<()>,
    pub release: tokio::sync::oneshot::Sender<()>,
}

impl Faults {
    /// Arms the lost-answer fault for the next publish forwarded by node `from`.
    pub fn lose_next_publish_answer(&self, from: u64) -> LostAnswerControl {
        let (delivered_tx, delivered) = tokio::sync::oneshot::channel();
        let (release, release_rx) = tokio::sync::oneshot::channel();
        *self.lost_publish_answer.lock().expect("faults lock") = Some(LostAnswer {
            from,
            delivered: delivered_tx,
            release: release_rx,
        });
        LostAnswerControl { delivered, release }
    }

    fn take_lost_answer(&self, from: Option<u64>, path: &str) -> Option<LostAnswer> {
        let mut armed = self.lost_publish_answer.lock().expect("faults lock");
        let matches = path == "/peer/v1/publish"
            && armed.as_ref().is_some_and(|lost| Some(lost.from) == from);
        if matches { armed.take() } else { None }
    }

    pub fn isolate(&self, node: u64) {
        self.isolated.lock().expect("faults lock").insert(node);
    }

    pub fn heal(&self) {
        self.isolated.lock().expect("faults lock").clear();
    }

    fn cuts(&self, nodes: [Option<u64>; 2]) -> bool {
        let isolated = self.isolated.lock().expect("faults lock");
        nodes.iter().flatten().any(|node| isolated.contains(node))
    }
}

/// One proxy: listens on its own port and relays to the node's current peer address.
pub struct PeerProxy {
    pub addr: SocketAddr,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
}

#[derive(Clone)]
struct ProxyState {
    upstream: Arc<Mutex<Option<SocketAddr>>>,
    faults: Arc<Faults>,
    client: reqwest::Client,
}

impl PeerProxy {
    pub async fn start(faults: Arc<Faults>) -> PeerProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let upstream = Arc::new(Mutex::new(None));
        let state = ProxyState {
            upstream: upstream.clone(),
            faults,
            client: crate::harness::http_client(),
        };
        let app = axum::Router::new().fallback(relay).with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await });
        PeerProxy { addr, upstream }
    }

    /// Points the proxy at the node's peer listener (again after a restart on a new port).
    pub fn set_upstream(&self, addr: SocketAddr) {
        *self.upstream.lock().expect("upstream lock") = Some(addr);
    }
}

async fn relay(State(state): State<ProxyState>, request: Request) -> Response {
    let ends = ["pkraft-source-node", "pkraft-target-node"].map(|name| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    });
    if state.faults.cuts(ends) {
        return (StatusCode::SERVICE_UNAVAILABLE, "partitioned by the test").into_response();
    }
    let Some(upstream) = *state.upstream.lock().expect("upstream lock") else {
        return (StatusCode::SERVICE_UNAVAILABLE, "node not started").into_response();
    };
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, BODY_MAX).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut forward = state
        .client
        .request(parts.method, format!("http://{upstream}{path}"))
        .body(body);
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            forward = forward.header(name, value);
        }
    }
    let lost = state.faults.take_lost_answer(ends[0], path);
    let answer = forward.send().await;
    if let Some(lost) = lost {
        // Delivered (the leader has answered); the caller never learns how.
        let _ = lost.delivered.send(());
        let _ = lost.release.await;
        return (StatusCode::BAD_GATEWAY, "answer lost by the test").into_response();
    }
    match answer {
        Ok(answer) => {
            let status = answer.status();
            let bytes = answer.bytes().await.unwrap_or_default();
            (status, Body::from(bytes)).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
