//! A fault-injecting proxy in front of every node's peer listener, in the spirit of toxiproxy,
//! used by the integration tests and the chaos harness. Nodes advertise their proxy's address,
//! so all Raft traffic and forwarded publishes pass through the proxies. Peer requests name their
//! sender (`Pkraft-Source-Node`) and the proxy knows its node, so the rules can cut one direction
//! of a link, which a TCP-level proxy could not tell apart: an asymmetric partition is "A's
//! requests to B fail, B's to A go through". A cut is refused or silent: a refused cut answers
//! 503 at once, as a refused connection would; a silent one (a black hole, like a real network
//! dropping packets) holds the request unanswered until the cut heals, then delivers it, as TCP
//! retransmission would, unless the caller gave up first. A lossy network loses requests (never
//! delivered) and answers (delivered, then failed).

use std::collections::HashMap;
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
/// The peer route of publishes a follower forwards to its leader.
const PUBLISH_PATH: &str = "/peer/v1/publish";

/// The current faults of the peer network, shared by every proxy of a cluster.
pub struct Network {
    rules: Mutex<Rules>,
    pub cut_requests: AtomicU64,
    /// Requests a silent cut held (then delivered after the heal, if the caller still waited).
    pub held_requests: AtomicU64,
    pub lost_requests: AtomicU64,
    pub lost_answers: AtomicU64,
    pub delayed_requests: AtomicU64,
}

struct Rules {
    /// (from, to): requests from `from` to `to` fail.
    cut: HashMap<(u64, u64), CutKind>,
    /// Nodes cut off from every other, both ways.
    isolated: HashMap<u64, CutKind>,
    /// Added delay per request: base and jitter.
    delay: Option<(Duration, Duration)>,
    loss_percent: u64,
    rng: SplitMix64,
    lost_publish_answer: Option<LostAnswer>,
}

/// An armed "lose the answer" fault: the next publish `from` forwards is delivered, then the
/// proxy reports it on `delivered`, waits for `release`, and answers 502 instead of the leader's
/// answer (as a connection cut after the request was sent would).
struct LostAnswer {
    from: u64,
    delivered: tokio::sync::oneshot::Sender<()>,
    release: tokio::sync::oneshot::Receiver<()>,
}

/// The test's side of [`Network::lose_next_publish_answer`].
pub struct LostAnswerControl {
    pub delivered: tokio::sync::oneshot::Receiver<()>,
    pub release: tokio::sync::oneshot::Sender<()>,
}

/// How a cut link fails a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutKind {
    /// Answered 503 at once, as a refused connection (a crashed process) would be.
    Refused,
    /// Held unanswered until the cut heals (packets dropped): the caller only learns from its
    /// own timeout.
    Silent,
}

/// What to do with one request.
enum Verdict {
    Cut(CutKind),
    /// Fail it without delivering it.
    LoseRequest,
    /// Deliver it, then fail it as if the answer were lost: the sender cannot tell whether it
    /// took effect.
    LoseAnswer,
    Pass(Duration),
}

impl Network {
    /// A network without faults; `seed` drives which requests a lossy network loses and the
    /// delay jitter, so a seeded run replays them.
    pub fn new(seed: u64) -> Arc<Network> {
        Arc::new(Network {
            rules: Mutex::new(Rules {
                cut: HashMap::new(),
                isolated: HashMap::new(),
                delay: None,
                loss_percent: 0,
                rng: SplitMix64::new(seed),
                lost_publish_answer: None,
            }),
            cut_requests: AtomicU64::new(0),
            held_requests: AtomicU64::new(0),
            lost_requests: AtomicU64::new(0),
            lost_answers: AtomicU64::new(0),
            delayed_requests: AtomicU64::new(0),
        })
    }

    fn with_rules<T>(&self, change: impl FnOnce(&mut Rules) -> T) -> T {
        // A poisoned lock means a proxy task panicked holding it; the rules are plain data, so
        // carrying on with them is still correct.
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut rules)
    }

    /// Requests from `from` to `to` are refused (one direction).
    pub fn cut(&self, from: u64, to: u64) {
        self.cut_as(from, to, CutKind::Refused);
    }

    /// Requests from `from` to `to` fail as `kind` says (one direction).
    pub fn cut_as(&self, from: u64, to: u64, kind: CutKind) {
        self.with_rules(|r| {
            r.cut.insert((from, to), kind);
        });
    }

    /// Both directions between every node of `a` and every node of `b`, refused.
    pub fn partition(&self, a: &[u64], b: &[u64]) {
        self.partition_as(a, b, CutKind::Refused);
    }

    /// Both directions between every node of `a` and every node of `b`, failing as `kind`.
    pub fn partition_as(&self, a: &[u64], b: &[u64], kind: CutKind) {
        for &x in a {
            for &y in b {
                self.cut_as(x, y, kind);
                self.cut_as(y, x, kind);
            }
        }
    }

    /// Cuts `node` off from every other node, both ways, including nodes added later.
    pub fn isolate(&self, node: u64) {
        self.isolate_as(node, CutKind::Refused);
    }

    /// [`Network::isolate`], failing requests as `kind`.
    pub fn isolate_as(&self, node: u64, kind: CutKind) {
        self.with_rules(|r| {
            r.isolated.insert(node, kind);
        });
    }

    pub fn set_delay(&self, base: Duration, jitter: Duration) {
        self.with_rules(|r| r.delay = Some((base, jitter)));
    }

    pub fn set_loss(&self, percent: u64) {
        self.with_rules(|r| r.loss_percent = percent.min(100));
    }

    /// Arms the lost-answer fault for the next publish forwarded by node `from`.
    pub fn lose_next_publish_answer(&self, from: u64) -> LostAnswerControl {
        let (delivered_tx, delivered) = tokio::sync::oneshot::channel();
        let (release, release_rx) = tokio::sync::oneshot::channel();
        self.with_rules(|r| {
            r.lost_publish_answer = Some(LostAnswer {
                from,
                delivered: delivered_tx,
                release: release_rx,
            });
        });
        LostAnswerControl { delivered, release }
    }

    /// Removes every fault (an armed lost answer stays armed).
    pub fn heal(&self) {
        self.with_rules(|r| {
            r.cut.clear();
            r.isolated.clear();
            r.delay = None;
            r.loss_percent = 0;
        });
    }

    fn take_lost_answer(&self, from: Option<u64>, path: &str) -> Option<LostAnswer> {
        self.with_rules(|r| {
            let armed = path == PUBLISH_PATH
                && r.lost_publish_answer
                    .as_ref()
                    .is_some_and(|lost| Some(lost.from) == from);
            if armed {
                r.lost_publish_answer.take()
            } else {
                None
            }
        })
    }

    /// How requests from `from` to `to` are cut now, if they are.
    fn cut_kind(&self, from: Option<u64>, to: u64) -> Option<CutKind> {
        self.with_rules(|r| r.cut_kind(from, to))
    }

    fn verdict(&self, from: Option<u64>, to: u64) -> Verdict {
        self.with_rules(|r| {
            if let Some(kind) = r.cut_kind(from, to) {
                Verdict::Cut(kind)
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
            }
        })
    }
}

impl Rules {
    /// How requests from `from` to `to` are cut, if they are; a refusal wins over silence.
    fn cut_kind(&self, from: Option<u64>, to: u64) -> Option<CutKind> {
        let mut kinds = Vec::new();
        kinds.extend(self.isolated.get(&to));
        match from {
            Some(from) => {
                kinds.extend(self.isolated.get(&from));
                kinds.extend(self.cut.get(&(from, to)));
            }
            // A request that does not name its sender is cut if anything towards `to` is.
            None => kinds.extend(
                self.cut
                    .iter()
                    .filter(|((_, t), _)| *t == to)
                    .map(|(_, kind)| kind),
            ),
        }
        kinds
            .iter()
            .copied()
            .copied()
            .min_by_key(|kind| *kind != CutKind::Refused)
    }
}

/// How often a request held by a silent cut looks whether the cut has healed.
const HELD_RECHECK: Duration = Duration::from_millis(20);

/// One node's proxy: listens on its own loopback port, relays to the node's current peer
/// address. It runs on a runtime of its own, not the caller's: a test on a current-thread
/// runtime that blocks (starting a node process waits for its first lines) would otherwise
/// hold every peer request of its cluster as long, and a stall of an election timeout or more
/// moves the leadership under the test (CI's damaged_disks failure at 0d04882, reproduced by
/// holding the test thread 3 s after the damage). Dropping the proxy ends everything it runs.
pub struct PeerProxy {
    pub addr: SocketAddr,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
    /// Always `Some` until dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

#[derive(Clone)]
struct ProxyState {
    node: u64,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
    network: Arc<Network>,
    client: reqwest::Client,
}

impl PeerProxy {
    /// A proxy for node `node` under `network`'s faults, relaying with `client` (plain HTTP; the
    /// caller builds it, having chosen the process's TLS crypto provider if it must).
    pub async fn start(
        node: u64,
        network: Arc<Network>,
        client: reqwest::Client,
    ) -> std::io::Result<PeerProxy> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("peer-proxy-{node}"))
            .enable_all()
            .build()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        // Registered with the proxy's runtime, whose driver then serves it.
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let upstream = Arc::new(Mutex::new(None));
        let state = ProxyState {
            node,
            upstream: upstream.clone(),
            network,
            client,
        };
        let app = axum::Router::new().fallback(relay).with_state(state);
        // Every task the relay starts (hyper's connection tasks, the pool's idle reaper for a
        // `client` shared by several proxies) lives on this runtime, and ends with the proxy:
        // each proxy relays to its own node only, so no other proxy uses those connections.
        runtime.spawn(async move { axum::serve(listener, app).await });
        Ok(PeerProxy {
            addr,
            upstream,
            runtime: Some(runtime),
        })
    }

    /// Points the proxy at the node's peer listener (again after a restart on a new port), or
    /// at nothing while the node is down.
    pub fn set_upstream(&self, addr: Option<SocketAddr>) {
        *self.upstream.lock().unwrap_or_else(|e| e.into_inner()) = addr;
    }
}

impl Drop for PeerProxy {
    /// Ends the listener, every connection and every held request at once (without waiting:
    /// the caller may be on a runtime itself).
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
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
        Verdict::Cut(CutKind::Refused) => {
            state.network.cut_requests.fetch_add(1, Ordering::Relaxed);
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "partitioned by the harness",
            )
                .into_response();
        }
        Verdict::Cut(CutKind::Silent) => {
            state.network.held_requests.fetch_add(1, Ordering::Relaxed);
            // Until the cut heals or turns into a refusal. hyper does not notice a caller that
            // gave up and closed its connection meanwhile, so the held request is still
            // delivered after the heal, late, as a retransmitted one may be on a real network.
            while state.network.cut_kind(from, state.node) == Some(CutKind::Silent) {
                tokio::time::sleep(HELD_RECHECK).await;
            }
            if state.network.cut_kind(from, state.node).is_some() {
                state.network.cut_requests.fetch_add(1, Ordering::Relaxed);
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "partitioned by the harness",
                )
                    .into_response();
            }
        }
        Verdict::LoseRequest => {
            state.network.lost_requests.fetch_add(1, Ordering::Relaxed);
            return (StatusCode::SERVICE_UNAVAILABLE, "lost by the harness").into_response();
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
    let lost = state.network.take_lost_answer(from, parts.uri.path());
    let answer = forward.send().await;
    if let Some(lost) = lost {
        // Delivered (the leader has answered); the caller never learns how.
        let _ = lost.delivered.send(());
        let _ = lost.release.await;
        return (StatusCode::BAD_GATEWAY, "answer lost by the test").into_response();
    }
    if lose_answer {
        state.network.lost_answers.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::BAD_GATEWAY, "answer lost by the harness").into_response();
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
