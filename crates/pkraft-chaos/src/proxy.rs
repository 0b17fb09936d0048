//! A fault-injecting proxy in front of every node's peer listener, in the spirit of toxiproxy.
//! Nodes advertise their proxy's address, so all Raft traffic and forwarded publishes pass
//! through the proxies. Peer requests name their sender and receiver (`Pkraft-Source-Node`, and
//! the proxy knows its node), so the rules can cut one direction of a link, which a TCP-level
//! proxy could not tell apart: an asymmetric partition is "A's requests to B fail, B's to A go
//! through". A cut request is answered 503 at once, as a refused connection would be. A lossy
//! network loses requests (never delivered) and answers (delivered, then failed).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::rng::SplitMix64;

/// Largest request the proxy relays (a snapshot install is sent in chunks far smaller).
const BODY_MAX: usize = 256 * 1024 * 1024;
const SOURCE_HEADER: &str = "pkraft-source-node";

/// The current faults of the peer network, shared by every proxy of a cluster.
pub struct Network {
    rules: Mutex<Rules>,
    pub cut_requests: AtomicU64,
    pub lost_requests: AtomicU64,
    pub lost_answers: AtomicU64,
    pub delayed_requests: AtomicU64,
}

struct Rules {
    /// (from, to): requests from `from` to `to` fail.
    cut: HashSet<(u64, u64)>,
    /// Added delay per request: base and jitter.
    delay: Option<(Duration, Duration)>,
    loss_percent: u64,
    rng: SplitMix64,
}

/// What to do with one request.
enum Verdict {
    Cut,
    /// Fail it without delivering it.
    LoseRequest,
    /// Deliver it, then fail it as if the answer were lost: the sender cannot tell whether it
    /// took effect.
    LoseAnswer,
    Pass(Duration),
}

impl Network {
    pub fn new(seed: u64) -> Arc<Network> {
        Arc::new(Network {
            rules: Mutex::new(Rules {
                cut: HashSet::new(),
                delay: None,
                loss_percent: 0,
                rng: SplitMix64::new(seed),
            }),
            cut_requests: AtomicU64::new(0),
            lost_requests: AtomicU64::new(0),
            lost_answers: AtomicU64::new(0),
            delayed_requests: AtomicU64::new(0),
        })
    }

    fn with_rules(&self, change: impl FnOnce(&mut Rules)) {
        // A poisoned lock means a proxy task panicked holding it; the rules are plain data, so
        // carrying on with them is still correct.
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut rules);
    }

    /// Requests from `from` to `to` fail (one direction).
    pub fn cut(&self, from: u64, to: u64) {
        self.with_rules(|r| {
            r.cut.insert((from, to));
        });
    }

    /// Both directions between every node of `a` and every node of `b`.
    pub fn partition(&self, a: &[u64], b: &[u64]) {
        for &x in a {
            for &y in b {
                self.cut(x, y);
                self.cut(y, x);
            }
        }
    }

    pub fn set_delay(&self, base: Duration, jitter: Duration) {
        self.with_rules(|r| r.delay = Some((base, jitter)));
    }

    pub fn set_loss(&self, percent: u64) {
        self.with_rules(|r| r.loss_percent = percent.min(100));
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.with_rules(|r| {
            r.cut.clear();
            r.delay = None;
            r.loss_percent = 0;
        });
    }

    fn verdict(&self, from: Option<u64>, to: u64) -> Verdict {
        let mut verdict = Verdict::Pass(Duration::ZERO);
        self.with_rules(|r| {
            let cut = match from {
                Some(from) => r.cut.contains(&(from, to)),
                // A request that does not name its sender is cut if anything towards `to` is.
                None => r.cut.iter().any(|&(_, t)| t == to),
            };
            verdict = if cut {
                Verdict::Cut
            } else if r.loss_percent > 0 && r.rng.below(100) < r.loss_percent {
                if r.rng.chance(0.5) {
                    Verdict::LoseRequest
                } else {
                    Verdict::LoseAnswer
                }
            } else if let Some((base, jitter)) = r.delay {
                let extra = r.rng.below(jitter.as_millis() as u64 + 1);
                Verdict::Pass(base + Duration::from_millis(extra))
            } else {
                Verdict::Pass(Duration::ZERO)
            };
        });
        verdict
    }
}

/// One node's proxy: listens on its own port, relays to the node's current peer address.
pub struct PeerProxy {
    pub addr: SocketAddr,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
}

#[derive(Clone)]
struct ProxyState {
    node: u64,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
    network: Arc<Network>,
    client: reqwest::Client,
}

impl PeerProxy {
    pub async fn start(node: u64, network: Arc<Network>) -> anyhow::Result<PeerProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let upstream = Arc::new(Mutex::new(None));
        let state = ProxyState {
            node,
            upstream: upstream.clone(),
            network,
            client: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(10))
                .build()?,
        };
        let app = axum::Router::new().fallback(relay).with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(PeerProxy { addr, upstream })
    }

    /// Points the proxy at the node's peer listener (again after a restart on a new port), or
    /// at nothing while the node is down.
    pub fn set_upstream(&self, addr: Option<SocketAddr>) {
        *self.upstream.lock().unwrap_or_else(|e| e.into_inner()) = addr;
    }
}

async fn relay(State(state): State<ProxyState>, request: Request) -> Response {
    let from = request
        .headers()
        .get(SOURCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut lose_answer = false;
    match state.network.verdict(from, state.node) {
        Verdict::Cut => {
            state.network.cut_requests.fetch_add(1, Ordering::Relaxed);
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "partitioned by the chaos harness",
            )
                .into_response();
        }
        Verdict::LoseRequest => {
            state.network.lost_requests.fetch_add(1, Ordering::Relaxed);
            return (StatusCode::SERVICE_UNAVAILABLE, "lost by the chaos harness").into_response();
        }
        Verdict::LoseAnswer => lose_answer = true,
        Verdict::Pass(delay) if !delay.is_zero() => {
            state
                .network
                .delayed_requests
                .fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(delay).await;
        }
        Verdict::Pass(_) => {}
    }
    let upstream = *state.upstream.lock().unwrap_or_else(|e| e.into_inner());
    let Some(upstream) = upstream else {
        return (StatusCode::SERVICE_UNAVAILABLE, "node is down").into_response();
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
    let answer = forward.send().await;
    if lose_answer {
        state.network.lost_answers.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::BAD_GATEWAY, "answer lost by the chaos harness").into_response();
    }
    match answer {
        Ok(answer) => {
            let status = answer.status();
            match answer.bytes().await {
                Ok(bytes) => (status, Body::from(bytes)).into_response(),
                Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
            }
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
