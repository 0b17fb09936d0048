//! [`RequestError`]: why a request the leader handles (a membership change, a read index, a
//! short-lived record, a forwarded publish's batch, an election asked by a handover) failed,
//! with its cause kept on the node where it happened. The peer wire carries the text only
//! ([`PeerError`]): the leader converts at its route ([`RequestError::to_wire`], in `routes`),
//! the follower as it decodes the answer ([`ask`]).

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::NodeId;
use crate::peer::{CallError, PeerClient, PeerError};
use crate::reason::Reason;

/// [`PeerError`] with its causes: the same variants, displayed with the same text.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    /// The request needs the leader and this node is not it; `leader` is the one it knows of.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// Cannot be done now (no quorum, still catching up); retrying later may succeed.
    #[error(transparent)]
    Unavailable(Reason),
    /// Will never succeed as asked (a removed node id, an id taken by another address).
    #[error(transparent)]
    Refused(Reason),
    /// The node has a fatal error.
    #[error(transparent)]
    Fatal(Reason),
}

impl RequestError {
    /// As the leader answers: the reason's text, its cause included.
    pub(crate) fn to_wire(&self) -> PeerError {
        match self {
            RequestError::NotLeader { leader } => PeerError::NotLeader { leader: *leader },
            RequestError::Unavailable(reason) => PeerError::Unavailable(reason.to_string()),
            RequestError::Refused(reason) => PeerError::Refused(reason.to_string()),
            RequestError::Fatal(reason) => PeerError::Fatal(reason.to_string()),
        }
    }

    /// A peer's answer, on the node that asked.
    pub(crate) fn from_wire(error: PeerError) -> RequestError {
        match error {
            PeerError::NotLeader { leader } => RequestError::NotLeader { leader },
            PeerError::Unavailable(text) => RequestError::Unavailable(text.into()),
            PeerError::Refused(text) => RequestError::Refused(text.into()),
            PeerError::Fatal(text) => RequestError::Fatal(text.into()),
        }
    }
}

/// The leader's answer to a route that answers `Result<R, PeerError>`, on the wire.
pub(crate) fn to_wire<R>(answer: Result<R, RequestError>) -> Result<R, PeerError> {
    answer.map_err(|e| e.to_wire())
}

/// Asks the peer at `addr` (node `target`) on `path`, a route that answers
/// `Result<R, PeerError>`: the call's own failure (no answer), or the peer's answer with its
/// error made this node's.
pub(crate) async fn ask<Q: Serialize, R: DeserializeOwned>(
    peers: &PeerClient,
    addr: &str,
    target: Option<NodeId>,
    path: &str,
    request: &Q,
    timeout: Duration,
) -> Result<Result<R, RequestError>, CallError> {
    let answer: Result<R, PeerError> = peers.call(addr, target, path, request, timeout).await?;
    Ok(answer.map_err(RequestError::from_wire))
}
