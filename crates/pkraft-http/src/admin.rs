//! The admin listener: cluster status and membership changes for operators (and the `pkraft
//! cluster` commands). Keep it on loopback or a private network.
//!
//! - `GET  /cluster/status`: JSON [`ClusterStatus`]; no token needed (read-only).
//! - `GET  /metrics`: Prometheus text format (docs/METRICS.md); no token needed.
//! - `GET  /healthz`, `GET /readyz`: as on the public listener.
//! - `POST /cluster/init`: make this node the only voter of a new cluster.
//! - `POST /cluster/add-learner` `{"node_id": 4, "addr": "10.0.0.4:7400"}`
//! - `POST /cluster/promote` `{"node_id": 4}`
//! - `POST /cluster/remove` `{"node_id": 4}`
//! - `POST /backup`: a backup file of this node's replica (`application/octet-stream`; `pkraft
//!   backup` writes it to a file), streamed as it is read. Behind the token: it reads the whole
//!   replica. One at a time (429 while one runs).
//! - `POST /import`: a batch of packets from another store, each checked and published through
//!   the cluster (`pkraft import`; [`crate::import`]). Answers an `ImportReport`.
//!
//! Mutating calls need `Authorization: Bearer <admin token>`: 401 without it or with a wrong one,
//! 403 when the node has no token configured. Errors are JSON `{"error": "..."}`: 400/409 when
//! the request cannot be done as asked, 503 (with `Retry-After`) when no leader answers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pkraft_raft::{ClusterStatus, MembershipChange, MembershipError, Node, NodeId};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tower_http::timeout::TimeoutLayer;

/// `[admin]` config section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Admin listener. Default `127.0.0.1:7401`: loopback only.
    pub listen: SocketAddr,
    /// Token for mutating calls. Prefer `token_file` or the `PKRAFT_ADMIN_TOKEN` environment
    /// variable, which win over this. Without a token, mutating calls are refused (403).
    pub token: Option<String>,
    /// File holding the admin token (surrounding whitespace is ignored).
    pub token_file: Option<PathBuf>,
    /// Connections open at once (operators, Prometheus, `pkraft cluster`); beyond it new ones
    /// wait in the kernel's backlog. Each is a file descriptor. Default 64.
    pub max_connections: usize,
    /// Connections open at once from one address (an IPv6 /56); more are closed at once. On
    /// loopback every local client is the same address. Default 16.
    pub max_connections_per_client: usize,
}

impl AdminSettings {
    /// The caps of the admin listener's connections.
    pub fn connection_caps(&self) -> pkraft_limits::connections::ConnectionCaps {
        private_caps(self.max_connections, self.max_connections_per_client)
    }

    /// Checks the connection caps; the error names the field.
    pub fn validate(&self) -> Result<(), pkraft_limits::LimitError> {
        self.connection_caps()
            .validate(["max_connections", "max_connections"])
            .map_err(|(field, reason)| pkraft_limits::LimitError {
                field: format!("admin.{field}"),
                reason,
            })
    }
}

/// The caps of a private listener (admin, peer): `max` in all, `per_client` from one IPv4
/// address or IPv6 /56, nobody exempt.
pub fn private_caps(max: usize, per_client: usize) -> pkraft_limits::connections::ConnectionCaps {
    pkraft_limits::connections::ConnectionCaps {
        max_connections: max,
        max_per_client: per_client,
        client_prefix: pkraft_limits::ClientPrefix { ipv4: 32, ipv6: 56 },
        exempt: pkraft_limits::TrustedProxies::default(),
    }
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 7401)),
            token: None,
            token_file: None,
            max_connections: 64,
            max_connections_per_client: 16,
        }
    }
}

/// State of the admin handlers.
#[derive(Clone)]
pub struct AdminState {
    pub node: Arc<Node>,
    /// The admin token, already resolved from file/env/config; `None` refuses mutations.
    pub token: Option<Arc<str>>,
    /// Everything `/metrics` exports.
    pub registry: prometheus::Registry,
    /// `http.ready_max_stale`, for `/readyz`.
    pub ready_max_stale: std::time::Duration,
    /// What `/import` refuses besides what a PUT does.
    pub import_rules: crate::import::ImportRules,
}

/// Body of the calls that name a node.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRef {
    pub node_id: NodeId,
}

/// Body of `add-learner`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddLearner {
    pub node_id: NodeId,
    /// The new node's peer address, `host:port`.
    pub addr: String,
}

/// Longest an admin request may take: a backup reads the whole replica (seconds per million
/// packets); a membership change gives up after 40 s on the leader. Past it the caller gets 503
/// and the connection is freed.
const ADMIN_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

pub fn router(state: AdminState) -> Router {
    let mutations = Router::new()
        .route("/cluster/init", post(init))
        .route("/cluster/add-learner", post(add_learner))
        .route("/cluster/promote", post(promote))
        .route("/cluster/remove", post(remove))
        .route("/backup", {
            // One backup at a time: each holds a read transaction (pages freed after it cannot
            // be reused until it ends) and a blocking thread.
            let backups = Arc::new(tokio::sync::Semaphore::new(1));
            post(move |state: State<AdminState>| backup(state, backups.clone()))
        })
        .route(
            "/import",
            post(crate::import::import)
                .with_state(crate::import::ImportState::new(
                    state.node.clone(),
                    state.import_rules,
                ))
                .layer(DefaultBodyLimit::max(crate::import::IMPORT_BODY_MAX)),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/cluster/status", get(status))
        .route("/healthz", get(crate::healthz))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(crate::metrics::metrics).with_state(state.registry.clone()),
        )
        .merge(mutations)
        .with_state(state)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            ADMIN_REQUEST_TIMEOUT,
        ))
}

async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return error(
            StatusCode::FORBIDDEN,
            "no admin token is configured on this node (admin.token_file or PKRAFT_ADMIN_TOKEN)",
        );
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
    let valid = presented.is_some_and(|presented| bool::from(token.as_bytes().ct_eq(presented)));
    if !valid {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
    }
    next.run(request).await
}

/// Chunks of a backup between the thread that reads the replica and the connection: it stays
/// this far ahead of the client at most, so memory stays flat whatever the replica's size.
const BACKUP_CHUNK_BYTES: usize = 256 * 1024;
const BACKUP_CHUNKS_AHEAD: usize = 4;
/// A client that takes no backup data for this long is given up, so that it cannot hold the
/// read transaction and the thread for good (`pkraft backup` gives up after the same time).
const BACKUP_STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

type Chunk = std::io::Result<bytes::Bytes>;

/// Streams a backup file as the replica is read. A failure before the first chunk is a 500 with
/// the error; one after it (a panic included) ends the body with an error, so the client sees a
/// torn transfer (and the file's checksum would refuse it anyway). 429 while another backup
/// runs.
async fn backup(State(state): State<AdminState>, backups: Arc<tokio::sync::Semaphore>) -> Response {
    let Ok(running) = backups.try_acquire_owned() else {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "a backup of this node is already running",
        );
    };
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Chunk>(BACKUP_CHUNKS_AHEAD);
    let node = state.node.clone();
    let runtime = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || {
        let _running = running;
        let started = std::time::Instant::now();
        let mut out = ChannelWriter::new(sender.clone(), runtime.clone());
        match pkraft_raft::backup::write_store_backup(node.store(), node.id(), &mut out) {
            Ok((header, bytes)) => tracing::info!(
                records = header.records,
                applied_index = ?header.applied_index,
                bytes,
                took_ms = started.elapsed().as_millis(),
                "backup sent"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "backup failed");
                // Nobody listens any more if the client went away or stalled; nothing else to
                // do then.
                let failed = sender.send(Err(std::io::Error::other(e)));
                let _ = runtime.block_on(tokio::time::timeout(BACKUP_STALL_TIMEOUT, failed));
            }
        }
    });
    let first = match receiver.recv().await {
        Some(Ok(chunk)) => chunk,
        Some(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        None => return error(StatusCode::INTERNAL_SERVER_ERROR, "the backup task ended"),
    };
    // After the last chunk, the task's end: a panic must not look like a complete file.
    let rest =
        futures_lite::stream::unfold((receiver, Some(task)), |(mut receiver, task)| async move {
            if let Some(chunk) = receiver.recv().await {
                return Some((chunk, (receiver, task)));
            }
            match task?.await {
                Ok(()) => None,
                Err(e) => Some((
                    Err(std::io::Error::other(format!(
                        "the backup task failed: {e}"
                    ))),
                    (receiver, None),
                )),
            }
        });
    let body = futures_lite::StreamExt::chain(futures_lite::stream::once(Ok(first)), rest);
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// A blocking writer whose bytes go to a channel in chunks: the backup thread writes, the
/// response body reads. A client that went away makes the next write fail (broken pipe), and one
/// that takes nothing for [`BACKUP_STALL_TIMEOUT`] too (timed out); either stops the backup.
struct ChannelWriter {
    sender: tokio::sync::mpsc::Sender<Chunk>,
    runtime: tokio::runtime::Handle,
    chunk: Vec<u8>,
}

impl ChannelWriter {
    fn new(sender: tokio::sync::mpsc::Sender<Chunk>, runtime: tokio::runtime::Handle) -> Self {
        ChannelWriter {
            sender,
            runtime,
            chunk: Vec::with_capacity(BACKUP_CHUNK_BYTES),
        }
    }

    fn send_chunk(&mut self) -> std::io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(BACKUP_CHUNK_BYTES));
        let sent = self.runtime.block_on(tokio::time::timeout(
            BACKUP_STALL_TIMEOUT,
            self.sender.send(Ok(bytes::Bytes::from(chunk))),
        ));
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(std::io::ErrorKind::BrokenPipe.into()),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client took no backup data for {BACKUP_STALL_TIMEOUT:?}"),
            )),
        }
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = BACKUP_CHUNK_BYTES - self.chunk.len();
        let taken = buf.len().min(room);
        self.chunk.extend_from_slice(&buf[..taken]);
        if self.chunk.len() == BACKUP_CHUNK_BYTES {
            self.send_chunk()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_chunk()
    }
}

async fn readyz(State(state): State<AdminState>) -> Response {
    crate::metrics::readyz(&state.node, state.ready_max_stale)
}

async fn status(State(state): State<AdminState>) -> Json<ClusterStatus> {
    Json(state.node.members().cluster_status().await)
}

async fn init(State(state): State<AdminState>) -> Response {
    answer(state.node.members().initialize().await)
}

async fn add_learner(
    State(state): State<AdminState>,
    AdminJson(body): AdminJson<AddLearner>,
) -> Response {
    if body.addr.parse::<SocketAddr>().is_err() && !looks_like_host_port(&body.addr) {
        return error(StatusCode::BAD_REQUEST, "addr must be host:port");
    }
    let change = MembershipChange::Join {
        node_id: body.node_id,
        addr: body.addr,
        voter: false,
    };
    answer(state.node.members().change_membership(change).await)
}

async fn promote(State(state): State<AdminState>, AdminJson(body): AdminJson<NodeRef>) -> Response {
    let change = MembershipChange::Promote {
        node_id: body.node_id,
    };
    answer(state.node.members().change_membership(change).await)
}

async fn remove(State(state): State<AdminState>, AdminJson(body): AdminJson<NodeRef>) -> Response {
    let change = MembershipChange::Remove {
        node_id: body.node_id,
    };
    answer(state.node.members().change_membership(change).await)
}

fn looks_like_host_port(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

fn answer(result: Result<(), MembershipError>) -> Response {
    match result {
        Ok(()) => Json(serde_json::json!({ "ok": true })).into_response(),
        Err(e @ MembershipError::AlreadyInitialized(_)) => {
            error(StatusCode::CONFLICT, &e.to_string())
        }
        Err(e @ MembershipError::Refused(_)) => error(StatusCode::CONFLICT, &e.to_string()),
        Err(e @ MembershipError::Unavailable(_)) => {
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1));
            response
        }
    }
}

pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// A JSON request body, refused with the JSON error every admin answer carries (axum's own
/// refusal is plain text): 415 without `Content-Type: application/json`, 400 for malformed
/// JSON, 422 for a missing or unknown field.
struct AdminJson<T>(T);

impl<T, S> axum::extract::FromRequest<S> for AdminJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(body)) => Ok(AdminJson(body)),
            Err(rejection) => Err(error(rejection.status(), &rejection.body_text())),
        }
    }
}
