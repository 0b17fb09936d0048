//! ACME DNS-01 challenges through the cluster (`[https.acme]` with `challenge = "dns-01"`): the
//! node that orders a certificate commits each challenge value through the leader
//! ([`Command::AcmeChallenge`]), so that every replica's DNS answers it, whichever node the CA
//! asks, and waits until every member has applied it before it tells the CA to look.

use std::sync::Arc;

use pkraft_types::Command;
use pkraft_types::acme_challenge::{AcmeChallenge, ChallengeBoard};
use serde::{Deserialize, Serialize};

use crate::NodeId;
use crate::membership::STATUS_PROBE_TIMEOUT;
use crate::membership::change_error;
use crate::node::Node;
use crate::peer::client::CallError;
use crate::peer::{PeerError, path};
use hyper::StatusCode;

/// A challenge to commit, from the node that orders the certificate (forwarded to the leader).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChallengeRequest {
    pub challenge: AcmeChallenge,
    /// Already forwarded once: a node that is not the leader refuses it (no second hop).
    pub forwarded: bool,
}

/// How much longer than the leader's commit bound a forwarded challenge is waited for.
const FORWARD_ANSWER_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);

/// What one member says of the ACME challenges ([`Node::acme_challenge_holders`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChallengeHolder {
    /// The values its DNS answers now.
    Answers(Vec<String>),
    /// It runs a build that cannot read challenge entries (it has no route to ask, 404):
    /// committing one would stall its replication (OPERATIONS.md, "Upgrading").
    OlderBuild,
    /// It did not answer (why).
    Unreachable(String),
}

impl Node {
    /// The ACME challenges this replica's DNS answers.
    pub fn acme_challenges(&self) -> Arc<ChallengeBoard> {
        self.acme_challenges.clone()
    }

    /// Commits `challenge` through the leader (here if this node leads, else forwarded to it),
    /// within `raft.publish_timeout`; the log index it was committed at.
    pub async fn commit_acme_challenge(&self, challenge: AcmeChallenge) -> Result<u64, PeerError> {
        self.handle_acme_challenge(ChallengeRequest {
            challenge,
            forwarded: false,
        })
        .await
    }

    /// A challenge from this node's ACME client or, forwarded, from another node's.
    pub(crate) async fn handle_acme_challenge(
        &self,
        request: ChallengeRequest,
    ) -> Result<u64, PeerError> {
        if self.is_leader() {
            return self
                .commit_acme_challenge_as_leader(request.challenge)
                .await;
        }
        match self.known_leader() {
            Some((leader, addr)) if !request.forwarded => {
                let forwarded = ChallengeRequest {
                    challenge: request.challenge,
                    forwarded: true,
                };
                self.peers
                    .call(
                        &addr,
                        Some(leader),
                        path::ACME_CHALLENGE,
                        &forwarded,
                        // The leader's own bound, and time for its answer to come back.
                        self.publish_timeout + FORWARD_ANSWER_MARGIN,
                    )
                    .await
                    .map_err(|e| PeerError::Unavailable(e.to_string()))?
            }
            leader => Err(PeerError::NotLeader {
                leader: leader.map(|(id, _)| id),
            }),
        }
    }

    async fn commit_acme_challenge_as_leader(
        &self,
        challenge: AcmeChallenge,
    ) -> Result<u64, PeerError> {
        let Some(_proposal) = self.begin_proposal() else {
            return Err(PeerError::Unavailable(
                "the leader is handing over its leadership".to_string(),
            ));
        };
        let command = Command::AcmeChallenge(challenge);
        match tokio::time::timeout(self.publish_timeout, self.raft.client_write(command)).await {
            Err(_) => Err(PeerError::Unavailable(format!(
                "the challenge was not committed within raft.publish_timeout ({:?})",
                self.publish_timeout
            ))),
            Ok(Err(e)) => Err(change_error(e)),
            Ok(Ok(written)) => Ok(written.log_id.index),
        }
    }

    /// The challenge values this replica's DNS answers now.
    pub fn acme_challenge_values(&self) -> Vec<String> {
        self.acme_challenges
            .live_values(pkraft_types::unix_micros_now())
    }

    /// What each member of the cluster (this node too) says of the ACME challenges, each asked
    /// over the peer network within `STATUS_PROBE_TIMEOUT`, in parallel.
    pub async fn acme_challenge_holders(&self) -> Vec<(NodeId, ChallengeHolder)> {
        let members: Vec<(NodeId, String)> = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            metrics
                .membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != self.id)
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect()
        };
        let asked: Vec<NodeId> = members.iter().map(|(id, _)| *id).collect();
        let mut asks = tokio::task::JoinSet::new();
        for (id, addr) in members {
            let peers = self.peers.clone();
            asks.spawn(async move {
                let answer = peers
                    .call::<(), Vec<String>>(
                        &addr,
                        Some(id),
                        path::ACME_CHALLENGE_VALUES,
                        &(),
                        STATUS_PROBE_TIMEOUT,
                    )
                    .await;
                let holder = match answer {
                    Ok(values) => ChallengeHolder::Answers(values),
                    Err(CallError::Status { status, .. }) if status == StatusCode::NOT_FOUND => {
                        ChallengeHolder::OlderBuild
                    }
                    Err(e) => ChallengeHolder::Unreachable(e.to_string()),
                };
                (id, holder)
            });
        }
        let mut holders = vec![(
            self.id,
            ChallengeHolder::Answers(self.acme_challenge_values()),
        )];
        while let Some(joined) = asks.join_next().await {
            if let Ok(answer) = joined {
                holders.push(answer);
            }
        }
        // A probe whose task failed says nothing of its member: unreachable, not left out.
        for id in asked {
            if !holders.iter().any(|(answered, _)| *answered == id) {
                holders.push((
                    id,
                    ChallengeHolder::Unreachable("the probe failed".to_string()),
                ));
            }
        }
        holders.sort_by_key(|(id, _)| *id);
        holders
    }
}
