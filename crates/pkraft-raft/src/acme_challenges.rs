//! ACME DNS-01 challenges through the cluster (`[https.acme]` with `challenge = "dns-01"`): the
//! node that orders a certificate commits each challenge value through the leader
//! ([`Command::AcmeChallenge`]), so that every replica's DNS answers it, whichever node the CA
//! asks, and waits until every member has applied it before it tells the CA to look.

use std::sync::Arc;
use std::time::Duration;

use pkraft_types::Command;
use pkraft_types::acme_challenge::{AcmeChallenge, ChallengeBoard};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::NodeId;
use crate::membership::change_error;
use crate::node::Node;
use crate::peer::{PeerError, path};

/// A challenge to commit, from the node that orders the certificate (forwarded to the leader).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChallengeRequest {
    pub challenge: AcmeChallenge,
    /// Already forwarded once: a node that is not the leader either refuses it (no second hop).
    pub forwarded: bool,
}

/// How often [`Node::wait_applied_by_all`] asks the members where they are.
const APPLIED_POLL: Duration = Duration::from_millis(100);

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
                        self.publish_timeout,
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

    /// Waits until every member of the cluster has applied the log through `index` (so their
    /// DNS answers what it committed), for at most `wait`. `Err`: the members that had not (or
    /// did not answer) by then.
    pub async fn wait_applied_by_all(
        self: &Arc<Self>,
        index: u64,
        wait: Duration,
    ) -> Result<(), Vec<NodeId>> {
        let deadline = Instant::now() + wait;
        loop {
            let status = self.cluster_status().await;
            let behind: Vec<NodeId> = status
                .members
                .iter()
                .filter(|member| {
                    member
                        .status
                        .as_ref()
                        .and_then(|status| status.applied_index)
                        .is_none_or(|applied| applied < index)
                })
                .map(|member| member.id)
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() + APPLIED_POLL > deadline {
                return Err(behind);
            }
            tokio::time::sleep(APPLIED_POLL).await;
        }
    }
}
