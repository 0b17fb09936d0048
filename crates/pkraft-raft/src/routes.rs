//! The peer listener's router: every peer route, wired to the node's part that answers it (the
//! write path, reads, membership, the handover, PreVote, the scrub, the short-lived records,
//! cluster time, and openraft's own RPCs). Every route needs the cluster secret (checked before
//! the body is read) and the right target node id. The peer network's client, TLS and message
//! types are `peer`'s.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use openraft::error::RaftError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest,
};
use pkraft_types::KeyBytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower_http::timeout::TimeoutLayer;

use crate::membership::MembershipRequest;
use crate::metrics::Damaged;
use crate::node::Node;
use crate::peer::tls::{PeerCertificates, check_names_node};
use crate::peer::{
    ForwardedPublish, LegacyForwardedPublish, SOURCE_NODE_HEADER, TARGET_NODE_HEADER, path,
};
use crate::pre_vote::PreVoteRequest;
use crate::request_error::to_wire;
use crate::settings::SNAPSHOT_INSTALL_TIMEOUT;
use crate::short_lived::RecordRequest;
use crate::{NodeId, TypeConfig};
use pkraft_raft_storage::codec::{decode, encode};
use pkraft_raft_storage::incoming_snapshot_path;
use pkraft_raft_storage::state_machine::snapshot_bytes_in_id;

const POSTCARD: HeaderValue = HeaderValue::from_static("application/x-postcard");
/// Longest a peer request may take, but a snapshot chunk: the longest of the routes' own bounds
/// (openraft's RPC timeouts, `publish_timeout`, the membership timeouts) and some margin; this
/// one makes sure no handler holds a connection forever. The caller sees 503.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(75);
/// Longest a snapshot chunk may take: the last one includes installing the whole snapshot
/// (`SNAPSHOT_INSTALL_TIMEOUT`, the leader's bound), and some margin.
const SNAPSHOT_REQUEST_TIMEOUT: Duration =
    SNAPSHOT_INSTALL_TIMEOUT.saturating_add(Duration::from_secs(15));

/// Marks the answer to a request that passed [`authenticate`], so that the connection loop
/// (`pkraft_http::serve`) can take the connection off probation; an answer without it closes
/// the connection (a stranger's connection holds no slot longer than one answer).
#[derive(Debug, Clone, Copy)]
pub struct Authenticated;

/// The router of the peer listener. Serve it on its own socket: it must never share the public
/// listener.
pub fn router(node: Arc<Node>) -> Router {
    let body_max = node.core.peer_body_max;
    let snapshots = Router::new()
        .route(path::INSTALL_SNAPSHOT, post(install_snapshot))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            SNAPSHOT_REQUEST_TIMEOUT,
        ));
    Router::new()
        .route(path::APPEND_ENTRIES, post(append_entries))
        .route(path::VOTE, post(vote))
        .route(path::PUBLISH, post(publish))
        .route(path::READ_INDEX, post(read_index))
        .route(path::MEMBERSHIP, post(membership))
        .route(path::STATUS, post(status))
        .route(path::ELECT, post(elect))
        .route(path::PRE_VOTE, post(pre_vote))
        .route(path::PACKET_CHECK, post(packet_check))
        .route(path::SHORT_LIVED_RECORD, post(short_lived_record))
        .route(path::SHORT_LIVED_RECORDS, post(short_lived_records))
        .route(path::CLOCK, post(clock))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        .merge(snapshots)
        .layer(DefaultBodyLimit::max(body_max))
        .route_layer(middleware::from_fn_with_state(node.clone(), authenticate))
        .with_state(node)
}

/// With `[cluster.tls]`: whether the client certificate of the request's connection names the
/// node the request says it comes from (`SOURCE_NODE_HEADER`), so that no node's certificate can
/// speak for another node.
fn certificate_names_source(request: &Request) -> Result<(), String> {
    let source = request
        .headers()
        .get(SOURCE_NODE_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<NodeId>().ok())
        .ok_or("the request names no source node")?;
    let certificates = request
        .extensions()
        .get::<PeerCertificates>()
        .ok_or("no client certificate")?;
    check_names_node(&certificates.0, source)
}

/// 401 without the right secret, 403 when the client certificate is not the calling node's
/// (with `[cluster.tls]`), 421 when the caller meant another node, 403 when the caller is a
/// node that was removed from the cluster (a removed node that still runs must not disturb it,
/// for example with elections). Runs before the body is read.
async fn authenticate(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let Some(secret) = node.secret() else {
        return (
            StatusCode::UNAUTHORIZED,
            "this node has no cluster secret configured and accepts no peer requests",
        )
            .into_response();
    };
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
    if !presented.is_some_and(|presented| secret.matches(presented)) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong cluster secret").into_response();
    }
    if node.core.peers.uses_tls()
        && let Err(reason) = certificate_names_source(&request)
    {
        return (
            StatusCode::FORBIDDEN,
            format!("client certificate refused: {reason}"),
        )
            .into_response();
    }
    if let Some(target) = request.headers().get(TARGET_NODE_HEADER) {
        let target = target.to_str().ok().and_then(|t| t.parse::<NodeId>().ok());
        if target != Some(node.id()) {
            return (
                StatusCode::MISDIRECTED_REQUEST,
                format!("this is node {}, not node {target:?}", node.id()),
            )
                .into_response();
        }
    }
    let source = request
        .headers()
        .get(SOURCE_NODE_HEADER)
        .and_then(|source| source.to_str().ok())
        .and_then(|source| source.parse::<NodeId>().ok());
    if let Some(source) = source {
        match node.members().was_removed(source) {
            Ok(false) => {}
            Ok(true) => {
                return (
                    StatusCode::FORBIDDEN,
                    format!(
                        "node {source} was removed from this cluster; node ids are never reused \
                         (start the node with a new node_id and an empty data dir)"
                    ),
                )
                    .into_response();
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot check a peer against the removed nodes");
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
        }
    }
    let mut response = next.run(request).await;
    response.extensions_mut().insert(Authenticated);
    response
}

/// Decodes the request, runs `handle`, encodes its answer. A body that does not decode is 400.
async fn exchange<Q, R, F, Fut>(body: Bytes, handle: F) -> Response
where
    Q: DeserializeOwned,
    R: Serialize,
    F: FnOnce(Q) -> Fut,
    Fut: Future<Output = R>,
{
    exchange_unless_refused(body, |request| async { Ok(handle(request).await) }).await
}

/// A request this node will not handle now (503 with the reason): the caller retries later.
struct Refusal(String);

/// [`exchange`] for a handler that may refuse the request (503) instead of answering it.
async fn exchange_unless_refused<Q, R, F, Fut>(body: Bytes, handle: F) -> Response
where
    Q: DeserializeOwned,
    R: Serialize,
    F: FnOnce(Q) -> Fut,
    Fut: Future<Output = Result<R, Refusal>>,
{
    let request: Q = match decode(&body) {
        Ok(request) => request,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("undecodable request: {e}")).into_response();
        }
    };
    let answer = match handle(request).await {
        Ok(answer) => answer,
        Err(Refusal(reason)) => return (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    };
    respond(&answer)
}

/// A 503 in place of openraft's fatal error (its Raft has stopped: this node is shutting down,
/// or stopped on a storage error), which the caller would otherwise get in a 200 as the
/// remote's own error: openraft then logs it at ERROR and retries at once. A 503 is a peer that
/// cannot take RPCs for now, which openraft backs off from (`pkraft_peer::client::CallError`).
fn refuse_if_stopped<R, E>(answer: &Result<R, RaftError<NodeId, E>>) -> Result<(), Refusal> {
    match answer {
        Err(RaftError::Fatal(fatal)) => {
            Err(Refusal(format!("this node's Raft has stopped: {fatal}")))
        }
        _ => Ok(()),
    }
}

/// The 200 carrying `answer`, encoded.
fn respond<R: Serialize>(answer: &R) -> Response {
    match encode(answer) {
        Ok(bytes) => (StatusCode::OK, [(CONTENT_TYPE, POSTCARD)], bytes).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a peer response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn append_entries(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    exchange_unless_refused(body, |mut rpc: AppendEntriesRequest<TypeConfig>| async move {
        let _in_flight = node.leadership().leader_request();
        // Low on disk (`disk_space`), entries wait: they are answered 503, which the leader
        // retries after a back-off. The rest of the request is still taken, as a heartbeat:
        // a leader backing off sends nothing else, and without it this follower would stand
        // for election and, with its higher term, depose the leader.
        let refusal = if rpc.entries.is_empty() {
            None
        } else {
            node.core.disk_space.refusal()
        };
        if refusal.is_some() {
            rpc.entries.clear();
        }
        let answer = node.core.raft.append_entries(rpc).await;
        refuse_if_stopped(&answer)?;
        // Any answer but "your vote is stale" means a current leader reached this node.
        let from_leader = matches!(&answer, Ok(response) if !matches!(response, AppendEntriesResponse::HigherVote(_)));
        match refusal {
            // A stale leader hears so, as always; only a current one is refused. Not counted as
            // leader contact: the replica falls behind, so it turns stale (`/readyz`,
            // `dns.max_stale`) as a cut-off follower's does. The leader is alive, though.
            Some(reason) if from_leader => {
                node.leadership().reached_by_leader();
                Err(Refusal(reason))
            }
            _ => {
                if from_leader {
                    node.leadership().heard_from_leader();
                }
                Ok(answer)
            }
        }
    })
    .await
}

async fn vote(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    exchange_unless_refused(body, |rpc: VoteRequest<NodeId>| async move {
        // A log that lost entries to damage still votes as the log it was (`LogRepair`).
        if let Some(reason) = node.core.log_store.vote_refusal(rpc.last_log_id) {
            tracing::warn!(candidate = rpc.vote.leader_id().voted_for(), %reason, "refused a vote");
            return Err(Refusal(reason));
        }
        let answer = node.core.raft.vote(rpc).await;
        refuse_if_stopped(&answer)?;
        Ok(answer)
    })
    .await
}

async fn install_snapshot(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    exchange_unless_refused(body, |rpc: InstallSnapshotRequest<TypeConfig>| async move {
        let _in_flight = node.leadership().leader_request();
        let refusal = node
            .core.disk_space
            .refusal()
            .or_else(|| install_room_refusal(&node, &rpc));
        if let Some(reason) = refusal {
            // As for entries (see `append_entries`): the snapshot waits, the vote is taken as
            // a heartbeat. Its previous entry is the snapshot's last, which a follower that
            // needs the snapshot lacks, so openraft changes nothing but the leader's lease.
            let heartbeat = AppendEntriesRequest {
                vote: rpc.vote,
                prev_log_id: rpc.meta.last_log_id,
                entries: Vec::new(),
                leader_commit: None,
            };
            return match node.core.raft.append_entries(heartbeat).await {
                Ok(AppendEntriesResponse::HigherVote(vote)) => {
                    Ok(Ok(InstallSnapshotResponse { vote }))
                }
                // Not leader contact either, but a live leader (see `append_entries`).
                Ok(_) => {
                    node.leadership().reached_by_leader();
                    Err(Refusal(reason))
                }
                Err(fatal) => Err(Refusal(fatal.to_string())),
            };
        }
        let checked = node.replica_checks.snapshot_receipt.chunk(
            &rpc.meta.snapshot_id,
            rpc.offset,
            &rpc.data,
            rpc.done,
        );
        if let Err(reason) = checked {
            // Never handed to openraft: its install would fail as a storage error, and stop
            // this node (`snapshot_receipt`).
            tracing::error!(leader = ?rpc.vote.leader_id().voted_for(), %reason, "refused a snapshot from the leader");
            node.core.metrics.damage_found(Damaged::SnapshotTransfer);
            return Err(Refusal(reason));
        }
        let answer = node.core.raft.install_snapshot(rpc).await;
        refuse_if_stopped(&answer)?;
        if answer.is_ok() {
            node.leadership().heard_from_leader();
        }
        Ok(answer)
    })
    .await
}

/// Why this node has no room for the install of the snapshot `rpc` is a chunk of, if it has not:
/// the part of its file not yet received, and the import beside the tables it replaces
/// ([`crate::disk_space::DiskSpace::install_refusal`]). Checked on the first chunk when the
/// leader names the snapshot's size in its id, and on the last (which always knows the size);
/// the chunks between pass unchecked.
fn install_room_refusal(node: &Node, rpc: &InstallSnapshotRequest<TypeConfig>) -> Option<String> {
    if rpc.offset != 0 && !rpc.done {
        return None;
    }
    let size = snapshot_bytes_in_id(&rpc.meta.snapshot_id).or_else(|| {
        rpc.done
            .then(|| rpc.offset.saturating_add(rpc.data.len() as u64))
    })?;
    // Written already: the chunks before the last; at the first, a file left by an earlier
    // try, which this one overwrites (or replaces).
    let received = if rpc.done {
        rpc.offset
    } else {
        std::fs::metadata(incoming_snapshot_path(&node.core.data_dir)).map_or(0, |file| file.len())
    };
    node.core
        .disk_space
        .install_refusal(&rpc.meta.snapshot_id, size, received)
}

async fn publish(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    // A follower of an older build sends no `answers_no_room` (and could not decode `NoRoom`).
    let request = match decode::<ForwardedPublish>(&body) {
        Ok(request) => request,
        Err(_) => match decode::<LegacyForwardedPublish>(&body) {
            Ok(legacy) => ForwardedPublish {
                packets: legacy.packets,
                answers_no_room: false,
            },
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("undecodable request: {e}"))
                    .into_response();
            }
        },
    };
    let answers_no_room = request.answers_no_room;
    // The wire's errors are text (`PeerError`, `WirePublishError`); the causes stay here.
    let answer = node
        .writes()
        .publish_forwarded(request.packets)
        .await
        .map(|answers| {
            answers
                .into_iter()
                .map(|answer| answer.map_err(|e| e.to_wire(answers_no_room)))
                .collect::<Vec<_>>()
        });
    respond(&to_wire(answer))
}

async fn read_index(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    exchange(body, |(): ()| async move {
        to_wire(node.reads().shared_read_index_as_leader().await)
    })
    .await
}

async fn membership(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    exchange(body, |request: MembershipRequest| async move {
        to_wire(node.members().handle_membership(request).await)
    })
    .await
}

async fn status(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    exchange(body, |(): ()| async move { node.members().local_status() }).await
}

/// A voter about to stand asks whether this node would vote for it (see `pre_vote`).
async fn pre_vote(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    exchange(body, |request: PreVoteRequest| async move {
        node.elections.pre_vote.answer_pre_vote(request).await
    })
    .await
}

/// Another node's scrub found a packet damaged and asks for this node's copy (see `scrub`).
async fn packet_check(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    exchange(body, |key: KeyBytes| async move {
        node.replica_checks.scrub.packet_copy(key).await
    })
    .await
}

/// Another node asks the leader to commit a short-lived record (`short_lived`).
async fn short_lived_record(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    exchange(body, |request: RecordRequest| async move {
        to_wire(node.short_lived().handle(request).await)
    })
    .await
}

/// Another node asks which short-lived records this node's DNS answers (`short_lived`); a
/// build without the route answers 404.
async fn short_lived_records(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    exchange(body, |(): ()| async move { node.short_lived().live() }).await
}

/// Another node asks for this node's wall clock (`cluster_clock`).
async fn clock(body: Bytes) -> Response {
    exchange(body, |(): ()| async move {
        crate::cluster_clock::wall_clock_micros()
    })
    .await
}

/// The leader handing over before it stops asks this node to stand (see `handover`).
async fn elect(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    exchange(body, |(): ()| async move {
        to_wire(node.handover().stand_for_election().await)
    })
    .await
}
