//! The client side of the peer network: [`PeerClient`] for pkraft's own peer calls, and
//! [`PeerNetwork`], openraft's network factory over it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::runtime::Handle;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use pkraft_raft_storage::codec::{decode, encode};
use pkraft_raft_storage::{NodeId, TypeConfig};

use crate::quorum::QuorumContact;
use crate::reachability::{Heard, Miss, Reachability};
use crate::silenced::Silenced;
use crate::tls::PeerTls;
use crate::transport::{Connector, PeerTransport};
use crate::{ClusterSecret, SOURCE_NODE_HEADER, TARGET_NODE_HEADER, path};

/// Time for one snapshot chunk but the last (openraft's 200 ms default restarts the transfer of
/// a large snapshot over and over). `PeerConnection::install_snapshot` holds every chunk but the
/// last to it; the node's settings check it against the install's own timeout.
pub const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(60);

/// How long opening a TCP connection to a peer may take. A peer that does not accept within it
/// is treated as down (openraft then backs off instead of piling up requests).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// TCP keepalive on peer connections: probes after this long without traffic, then every
/// `KEEPALIVE_INTERVAL`, the connection dropped after `KEEPALIVE_RETRIES` unanswered. A request
/// that waits long for its answer (the last snapshot chunk waits for the install, up to
/// `SNAPSHOT_INSTALL_TIMEOUT`) fails within about 25 s of its peer losing power or being cut
/// off, instead of at its timeout: a peer that is only busy answers the probes from its kernel.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;
/// Idle keep-alive connections kept per peer. openraft sends one replication stream per peer;
/// forwarded publishes and status probes use a few more.
const IDLE_CONNECTIONS_PER_PEER: usize = 4;
/// How long an idle connection stays open. Heartbeats (every `raft.heartbeat_interval`) keep the
/// replication connection busy well within it. Well under the peer listener's own idle limits
/// (90 s between requests, `pkraft_http::serve::ConnectionLimits::internal`), so the client never
/// sends on a connection the listener is closing.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body accepted from a peer. Responses are small (votes, acknowledgements,
/// outcomes, status); only requests carry entries and snapshot chunks.
const RESPONSE_LEN_MAX: usize = 16 * 1024 * 1024;
/// Bytes of an unexpected response body quoted in an error.
const ERROR_BODY_QUOTE_MAX: usize = 200;

type HttpClient = Client<HttpsConnector<Connector>, Full<Bytes>>;
/// The client per node id called (see [`PeerClients`]), in the ids' order: a map dropped with
/// the node closes its clients' connections in that order.
type ClientsById = Arc<Mutex<BTreeMap<Option<NodeId>, HttpClient>>>;

/// The HTTP clients a [`PeerClient`] calls through.
#[derive(Clone)]
enum PeerClients {
    /// Plain HTTP over TCP: one client for every peer (boxed: a client is some 340 bytes).
    Shared(Box<HttpClient>),
    /// One client per node id called (`None` for a peer not known yet), made on first use and
    /// configured by `config`.
    PerPeer {
        config: PerPeerConfig,
        clients: ClientsById,
    },
}

#[derive(Clone)]
enum PerPeerConfig {
    /// With TLS: each client's verifier checks that the listener's certificate names the id
    /// called.
    Tls(Arc<PeerTls>),
    /// Plain HTTP on a simulation's network. hyper-util's pool keeps its hosts in a std
    /// `HashMap`, whose order no seed decides: a node's clean stop closed its connections to
    /// the other peers in another order in each process, and turmoil drew their delays in that
    /// order, so that a seed's run was not the same twice. A pool per peer, closed in the ids'
    /// order, is. (Over TCP the order does not matter, and one pool is kept.)
    Plain(Arc<rustls::ClientConfig>),
}

/// Keep-alive HTTP/1.1 client for peer requests, with `TCP_NODELAY` (small RPCs must not wait
/// for Nagle's algorithm), over TLS when the cluster has it. Cheap to clone; clones share the
/// connection pools, in which each peer address has its own long-lived connections.
///
/// Every call runs on the node's runtime, whoever makes it. A connection belongs to the runtime
/// that opened it (its socket is registered with that runtime's I/O driver, and its task runs
/// there), and pooled connections are shared by every caller: a connection opened by an admin
/// call on the clients' runtime, whose threads may all be waiting on the disk, would otherwise
/// stall the clock probes or a forwarded publish that reuses it (docs/ARCHITECTURE.md,
/// "Runtimes").
#[derive(Clone)]
pub struct PeerClient {
    /// The node's runtime, where every call and so every connection runs.
    runtime: Handle,
    clients: PeerClients,
    /// `https` with `[cluster.tls]`, else `http`.
    scheme: &'static str,
    /// This node's id, sent with every request (logs, and fault-injecting test proxies).
    source: NodeId,
    secret: Option<ClusterSecret>,
    /// How a connection reaches a peer: TCP, or a simulation's network.
    transport: PeerTransport,
}

impl PeerClient {
    /// Whether peer calls go over TLS (and listeners check the caller's certificate).
    pub fn uses_tls(&self) -> bool {
        matches!(
            self.clients,
            PeerClients::PerPeer {
                config: PerPeerConfig::Tls(_),
                ..
            }
        )
    }
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient").finish_non_exhaustive()
    }
}

/// What [`CallError::Silent`] says in its text, by which the node's logging knows openraft's
/// lines about such a call (`pkraft::logging`).
pub const TIMED_OUT_SAYS: &str = "did not answer an RPC in time";

/// openraft gives each RPC a timeout of its own, `hard_ttl` (for an `append-entries`,
/// `raft.heartbeat_interval`, 100 ms by default), and on expiry drops the call and logs an
/// ERROR line: each retry while a peer is silent. The call's own deadline ends this much
/// before, so that a silent peer is seen by [`Reachability`] (and logged once) rather than by
/// openraft alone.
fn ahead_of_openraft(hard_ttl: Duration) -> Duration {
    hard_ttl.saturating_sub((hard_ttl / 20).max(Duration::from_millis(1)))
}

/// What an RPC given [`Deadline::AheadOfOpenraft`] comes to: past `timeout`, `outcome` is
/// [`CallError::Silent`], and so is the call's own timeout (openraft's `hard_ttl`, later than
/// `timeout`). The exchange runs in a task of its own, so on a runtime held up past both
/// deadlines that task can end first, and the outer deadline then sees the call's timeout as
/// its answer: taken as it is, it would be a miss that neither [`Reachability`] nor the node's
/// log filter knows (`pkraft::logging`), and openraft's lines about it would pass.
fn missed_ahead_of_openraft<R>(
    outcome: Result<Result<R, CallError>, tokio::time::error::Elapsed>,
    addr: &str,
    timeout: Duration,
) -> Result<R, CallError> {
    match outcome {
        Ok(Err(CallError::Timeout { .. })) | Err(_) => Err(CallError::Silent {
            addr: addr.to_string(),
            timeout,
        }),
        Ok(answered_or_failed) => answered_or_failed,
    }
}

/// How long an openraft RPC waits for its answer.
#[derive(Debug, Clone, Copy)]
enum Deadline {
    /// Just ahead of openraft's `hard_ttl` ([`ahead_of_openraft`]): a call that reaches it is
    /// [`CallError::Silent`], a miss that [`Reachability`] logs (append-entries, votes).
    AheadOfOpenraft(Duration),
    /// The call's own, which openraft's may end first: a call that reaches it is neither
    /// answered nor missed, and openraft's lines about it are kept (snapshot chunks: the last
    /// one waits for the follower's install, up to openraft's own bound).
    Own(Duration),
}

/// Why a peer call has no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no cluster secret is configured, so this node cannot call its peers")]
    NoSecret,
    #[error("cannot connect to peer {addr}: {}", error_chain(source))]
    Connect {
        addr: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("peer {addr}: {}", error_chain(source))]
    Http {
        addr: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("peer {addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    /// An openraft RPC that reached its [`Deadline::AheadOfOpenraft`]. (The text holds
    /// [`TIMED_OUT_SAYS`].)
    #[error(
        "peer {addr} did not answer an RPC in time ({timeout:?}, just ahead of openraft's timeout)"
    )]
    Silent { addr: String, timeout: Duration },
    /// The peer answered with an error status; `body` quotes the start of its answer (text
    /// from the wire: there is no error value beneath it).
    #[error("peer {addr} answered {status}: {body}")]
    Status {
        addr: String,
        status: StatusCode,
        body: String,
    },
    /// The call could not be made or its answer not read (`what` failed, for `source`): a
    /// request or answer that does not encode or decode, the TLS setup, the call's task.
    #[error("peer {addr}: {what}: {}", error_chain(source.as_ref()))]
    Protocol {
        addr: String,
        what: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// `error` and its causes, `: `-separated: hyper's own message ("client error (Connect)") hides
/// the reason (refused, TLS certificate not trusted, ...).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}

impl CallError {
    /// Whether the peer cannot take RPCs for now: not reached at all (down, not listening), or it
    /// answered with an error status instead of an RPC answer (a wrong secret, the wrong node at
    /// that address, a proxy in front of a dead node). openraft backs off from an unreachable
    /// peer; any other error it retries at once, which against a peer that keeps refusing is a
    /// busy loop of requests and log lines.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            CallError::Connect { .. } | CallError::NoSecret | CallError::Status { .. }
        )
    }

    /// What this failed call says of its peer, for the log ([`Reachability`]): it answered,
    /// refusing for now (503: low on disk, or stopping) or failing (500); it was missed (not
    /// connected, a gateway in front of it that says so, refused for good: a wrong secret, the
    /// wrong node, or no answer to an RPC in time); or neither (cut off mid-call, its own
    /// timeout, a body that does not decode).
    fn heard(&self) -> Heard {
        match self {
            // 503: refusing for now; 500: its handler failed (a panic, answered by the
            // listener's guard). Neither says anything of the network or the configuration.
            CallError::Status { status, .. }
                if *status == StatusCode::SERVICE_UNAVAILABLE
                    || *status == StatusCode::INTERNAL_SERVER_ERROR =>
            {
                Heard::Answered
            }
            CallError::Status { status, .. }
                if *status == StatusCode::BAD_GATEWAY || *status == StatusCode::GATEWAY_TIMEOUT =>
            {
                Heard::Missed(Miss::Unreachable)
            }
            CallError::Status { .. } | CallError::NoSecret => Heard::Missed(Miss::Refused),
            CallError::Connect { .. } => Heard::Missed(Miss::Unreachable),
            CallError::Silent { .. } => Heard::Missed(Miss::Silent),
            _ => Heard::Unknown,
        }
    }

    fn into_rpc<E: std::error::Error>(self) -> RPCError<NodeId, BasicNode, E> {
        if self.is_unreachable() {
            RPCError::Unreachable(Unreachable::new(&self))
        } else {
            RPCError::Network(NetworkError::new(&self))
        }
    }
}

impl PeerClient {
    /// A client sending `secret` as node `source`, its calls made on `runtime` (the node's);
    /// over TLS with `tls` (`[cluster.tls]`), else plain HTTP; its connections opened by
    /// `transport`.
    pub fn new(
        source: NodeId,
        secret: Option<ClusterSecret>,
        tls: Option<Arc<PeerTls>>,
        transport: PeerTransport,
        runtime: Handle,
    ) -> Result<PeerClient, rustls::Error> {
        let (clients, scheme) = match tls {
            Some(tls) => (
                PeerClients::PerPeer {
                    config: PerPeerConfig::Tls(tls),
                    clients: Arc::default(),
                },
                "https",
            ),
            None => {
                // The URLs say `http`, which the connector passes through untouched; the
                // configuration it is built with (trusting nothing) serves no connection.
                let none = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
                let clients = match transport {
                    PeerTransport::Tcp => {
                        PeerClients::Shared(Box::new(http_client(none, &transport)))
                    }
                    PeerTransport::Custom(_) => PeerClients::PerPeer {
                        config: PerPeerConfig::Plain(Arc::new(none)),
                        clients: Arc::default(),
                    },
                };
                (clients, "http")
            }
        };
        Ok(PeerClient {
            runtime,
            clients,
            scheme,
            source,
            secret,
            transport,
        })
    }

    /// The client for calling node `target` (see [`PeerClients`]).
    fn client_for(&self, target: Option<NodeId>) -> Result<HttpClient, rustls::Error> {
        let (config, clients) = match &self.clients {
            PeerClients::Shared(client) => return Ok((**client).clone()),
            PeerClients::PerPeer { config, clients } => (config, clients),
        };
        let mut clients = clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = clients.get(&target) {
            return Ok(client.clone());
        }
        let tls = match config {
            PerPeerConfig::Tls(tls) => (*tls.client_config(target)?).clone(),
            PerPeerConfig::Plain(none) => (**none).clone(),
        };
        let client = http_client(tls, &self.transport);
        clients.insert(target, client.clone());
        Ok(client)
    }

    /// POSTs `request` to `path` on the peer at `addr` (`host:port`) and decodes its answer,
    /// within `timeout` in all. `target` is the node id the caller expects there, if it knows it.
    pub async fn call<Q: Serialize, R: DeserializeOwned>(
        &self,
        addr: &str,
        target: Option<NodeId>,
        path: &str,
        request: &Q,
        timeout: Duration,
    ) -> Result<R, CallError> {
        let secret = self.secret.as_ref().ok_or(CallError::NoSecret)?;
        let protocol = |what: &'static str, source: Box<dyn std::error::Error + Send + Sync>| {
            CallError::Protocol {
                addr: addr.to_string(),
                what,
                source,
            }
        };
        let body = encode(request).map_err(|e| protocol("encoding the request", e.into()))?;
        let mut builder = Request::post(format!("{}://{addr}{path}", self.scheme))
            .header(AUTHORIZATION, secret.bearer())
            .header(CONTENT_TYPE, "application/x-postcard")
            .header(SOURCE_NODE_HEADER, self.source.to_string());
        if let Some(target) = target {
            builder = builder.header(TARGET_NODE_HEADER, target.to_string());
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| protocol("building the request", e.into()))?;
        let http = self
            .client_for(target)
            .map_err(|e| protocol("TLS configuration", e.into()))?;
        // The exchange runs on the node's runtime (see [`PeerClient`]), and ends when its
        // caller stops waiting for it.
        let task = self
            .runtime
            .spawn(exchange(http, request, addr.to_string(), timeout));
        let body = AbortOnDropHandle::new(task)
            .await
            .map_err(|e| protocol("the call's task ended", e.into()))??;
        decode(&body).map_err(|e| protocol("decoding the response", e.into()))
    }
}

/// Sends `request` to the peer at `addr` with `http` and reads its answer's body, within
/// `timeout`: the body of a 200, or the status and the start of any other body as the error.
async fn exchange(
    http: HttpClient,
    request: Request<Full<Bytes>>,
    addr: String,
    timeout: Duration,
) -> Result<Bytes, CallError> {
    let exchange = async {
        let response = http.request(request).await.map_err(|source| {
            let addr = addr.clone();
            if source.is_connect() {
                CallError::Connect { addr, source }
            } else {
                CallError::Http { addr, source }
            }
        })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), RESPONSE_LEN_MAX)
            .collect()
            .await
            .map_err(|source| CallError::Protocol {
                addr: addr.clone(),
                what: "reading the response",
                source,
            })?
            .to_bytes();
        if status != StatusCode::OK {
            let quoted = &body[..body.len().min(ERROR_BODY_QUOTE_MAX)];
            return Err(CallError::Status {
                addr: addr.clone(),
                status,
                body: String::from_utf8_lossy(quoted).into_owned(),
            });
        }
        Ok(body)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| CallError::Timeout {
            addr: addr.clone(),
            timeout,
        })?
}

/// A keep-alive client whose connections `transport` opens, using `tls` for `https` URLs (see
/// [`PeerClient`]).
fn http_client(tls: rustls::ClientConfig, transport: &PeerTransport) -> HttpClient {
    let connector = match transport {
        PeerTransport::Tcp => Connector::Tcp(tcp_connector()),
        PeerTransport::Custom(connect) => Connector::Custom(connect.clone()),
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new())
        // The pool's clock is tokio's (a simulation's paused one; without a timer hyper-util
        // reads std's to age idle connections), and with it the pool drops expired ones on a
        // timer instead of only when it next looks for one.
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_max_idle_per_host(IDLE_CONNECTIONS_PER_PEER)
        .build(connector)
}

/// TCP with the peer network's connect timeout, `TCP_NODELAY` and keepalive.
fn tcp_connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_keepalive(Some(KEEPALIVE_IDLE));
    connector.set_keepalive_interval(Some(KEEPALIVE_INTERVAL));
    connector.set_keepalive_retries(Some(KEEPALIVE_RETRIES));
    // The TLS connector wrapping it hands `https` URLs down too.
    connector.enforce_http(false);
    connector
}

/// openraft's network factory: a connection object per target over the shared [`PeerClient`].
#[derive(Debug, Clone)]
pub struct PeerNetwork {
    client: PeerClient,
    /// Where accepted `append-entries` are recorded, for the leader's quorum check.
    contact: QuorumContact,
    /// Peers a handing-over leader sends no `append-entries` to (see `handover`).
    silenced: Silenced,
    /// Which peers do not answer, for the log.
    reachability: Reachability,
}

impl PeerNetwork {
    pub fn new(client: PeerClient, contact: QuorumContact, silenced: Silenced) -> PeerNetwork {
        PeerNetwork {
            client,
            contact,
            silenced,
            reachability: Reachability::default(),
        }
    }
}

/// The RPC channel to one peer.
#[derive(Debug)]
pub struct PeerConnection {
    client: PeerClient,
    target: NodeId,
    addr: String,
    contact: QuorumContact,
    silenced: Silenced,
    reachability: Reachability,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            client: self.client.clone(),
            target,
            addr: node.addr.clone(),
            contact: self.contact.clone(),
            silenced: self.silenced.clone(),
            reachability: self.reachability.clone(),
        }
    }
}

impl PeerConnection {
    /// One openraft RPC: the remote answers `Result<R, RaftError<E>>`, and its error reaches
    /// openraft as the remote's own. Whether the peer answered is logged when that changes
    /// ([`Reachability`]; openraft's own lines about an unreachable peer are dropped).
    async fn rpc<Q, R, E>(
        &self,
        path: &str,
        request: &Q,
        deadline: Deadline,
    ) -> Result<R, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Q: Serialize,
        R: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let outcome: Result<Result<R, RaftError<NodeId, E>>, CallError> = match deadline {
            Deadline::AheadOfOpenraft(hard_ttl) => {
                // Timed from here, as openraft's own timeout is: before the request is encoded
                // and the exchange's task started, which take a few milliseconds for a large
                // append-entries. (The call's own timeout, openraft's, is never reached.)
                let timeout = ahead_of_openraft(hard_ttl);
                let call = self
                    .client
                    .call(&self.addr, Some(self.target), path, request, hard_ttl);
                let outcome = tokio::time::timeout(timeout, call).await;
                missed_ahead_of_openraft(outcome, &self.addr, timeout)
            }
            Deadline::Own(timeout) => {
                self.client
                    .call(&self.addr, Some(self.target), path, request, timeout)
                    .await
            }
        };
        let now = Instant::now();
        let heard = match &outcome {
            Ok(_) => Heard::Answered,
            Err(error) => error.heard(),
        };
        match (heard, &outcome) {
            (Heard::Answered, _) => {
                self.reachability.reached(self.target, &self.addr, now);
            }
            (Heard::Missed(miss), Err(error)) => {
                self.reachability
                    .failed(self.target, &self.addr, now, miss, error);
            }
            // (`Missed` comes only with an error.)
            (Heard::Missed(_), Ok(_)) | (Heard::Unknown, _) => {}
        }
        let answer = outcome.map_err(CallError::into_rpc)?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// Refuses to reach a peer the handover silenced, as if it were down (openraft backs off):
    /// its leader lease must lapse so that it votes for the handover's target.
    fn refuse_if_silenced<E: std::error::Error>(
        &self,
    ) -> Result<(), RPCError<NodeId, BasicNode, E>> {
        if !self.silenced.contains(self.target) {
            return Ok(());
        }
        let reason = std::io::Error::other(format!(
            "node {} is silenced while this leader hands over",
            self.target
        ));
        Err(RPCError::Unreachable(Unreachable::new(&reason)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.refuse_if_silenced()?;
        let deadline = Deadline::AheadOfOpenraft(option.hard_ttl());
        let answer = self.rpc(path::APPEND_ENTRIES, &rpc, deadline).await;
        // Any answer but "your vote is stale" means the peer accepts this node as its leader.
        if matches!(&answer, Ok(response) if !matches!(response, AppendEntriesResponse::HigherVote(_)))
        {
            self.contact.record(self.target);
        }
        answer
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.refuse_if_silenced()?;
        // openraft gives every chunk the last one's bound (`Settings::snapshot_install_timeout`
        // in pkraft-raft: 30 minutes unless a simulation lowers it), which covers the
        // follower's install; the others get `SNAPSHOT_CHUNK_TIMEOUT`, so that a transfer that
        // stalls is retried soon.
        let timeout = if rpc.done {
            option.hard_ttl()
        } else {
            option.hard_ttl().min(SNAPSHOT_CHUNK_TIMEOUT)
        };
        self.rpc(path::INSTALL_SNAPSHOT, &rpc, Deadline::Own(timeout))
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc(
            path::VOTE,
            &rpc,
            Deadline::AheadOfOpenraft(option.hard_ttl()),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::routing::post;
    use tokio::runtime::Builder;

    use super::*;

    #[test]
    fn a_timed_out_call_says_what_the_logging_looks_for_and_ends_before_openraft() {
        let silent = CallError::Silent {
            addr: "127.0.0.1:7411".to_string(),
            timeout: Duration::from_millis(95),
        };
        assert!(silent.to_string().contains(TIMED_OUT_SAYS), "{silent}");
        assert_eq!(silent.heard(), Heard::Missed(Miss::Silent));
        // A call's own timeout (a snapshot chunk's) is neither, and openraft's lines about it
        // are kept.
        let own = CallError::Timeout {
            addr: "127.0.0.1:7411".to_string(),
            timeout: Duration::from_secs(60),
        };
        assert!(!own.to_string().contains(TIMED_OUT_SAYS), "{own}");
        assert_eq!(own.heard(), Heard::Unknown);
        // openraft's own timeout for an append-entries at the default heartbeat, and a long one.
        for (hard, ours) in [(100, 95), (10, 9), (1_000, 950)] {
            assert_eq!(
                ahead_of_openraft(Duration::from_millis(hard)),
                Duration::from_millis(ours)
            );
        }
    }

    /// A call that ran into its own timeout (openraft's, a runtime held up past both) is as
    /// silent as one the deadline ahead of openraft ended; any other outcome is kept.
    #[test]
    fn an_rpc_timed_out_either_way_is_a_silent_miss() {
        let addr = "127.0.0.1:7411";
        let ahead = Duration::from_millis(95);
        let its_own = CallError::Timeout {
            addr: addr.to_string(),
            timeout: Duration::from_millis(100),
        };
        let missed = missed_ahead_of_openraft::<()>(Ok(Err(its_own)), addr, ahead);
        assert!(matches!(missed, Err(CallError::Silent { timeout, .. }) if timeout == ahead));
        let refused = CallError::NoSecret;
        let kept = missed_ahead_of_openraft::<()>(Ok(Err(refused)), addr, ahead);
        assert!(matches!(kept, Err(CallError::NoSecret)), "{kept:?}");
        assert!(matches!(
            missed_ahead_of_openraft(Ok(Ok(7)), addr, ahead),
            Ok(7)
        ));
        let runtime = Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        let elapsed = runtime.block_on(async {
            let never = std::future::pending::<Result<(), CallError>>();
            tokio::time::timeout(Duration::ZERO, never).await
        });
        let missed = missed_ahead_of_openraft(elapsed, addr, ahead);
        assert!(
            matches!(missed, Err(CallError::Silent { .. })),
            "{missed:?}"
        );
    }

    /// The time a peer at `addr` answers on `path::CLOCK`.
    fn ask(client: &PeerClient, addr: &str) -> impl Future<Output = Result<u64, CallError>> {
        client.call(addr, Some(2), path::CLOCK, &(), Duration::from_secs(2))
    }

    /// A connection opened for a call from the clients' runtime must not serve the node's
    /// calls through that runtime: with its threads held (by disk reads), a clock probe or a
    /// forwarded publish reusing the pooled connection would wait for them.
    #[test]
    fn a_call_from_another_runtime_leaves_no_connection_on_it() {
        let node = Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("the node's runtime");
        // A current-thread runtime runs only inside `block_on`: between its calls it is as
        // stuck as a runtime whose every thread waits on the disk.
        let clients = Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the clients' runtime");
        let addr = node.block_on(async {
            let peer = Router::new().route(
                path::CLOCK,
                post(|| async { encode(&7_u64).expect("encode") }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("address");
            tokio::spawn(async move { axum::serve(listener, peer).await });
            addr.to_string()
        });
        let secret = ClusterSecret::new("peer-client-test-secret-0123456789").expect("secret");
        let client = PeerClient::new(
            1,
            Some(secret),
            None,
            PeerTransport::Tcp,
            node.handle().clone(),
        )
        .expect("client");

        let first = clients.block_on(ask(&client, &addr));
        assert_eq!(first.expect("the call from the clients' runtime"), 7);
        // The clients' runtime is stuck now; the node's call reuses the pooled connection.
        let second = node.block_on(ask(&client, &addr));
        assert_eq!(
            second.expect("the node's call while the clients' runtime is stuck"),
            7
        );
    }
}
