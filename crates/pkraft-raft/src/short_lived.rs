//! [`ShortLived`]: short-lived records through the cluster ([`pkraft_types::short_lived`]): a
//! node commits each through the leader ([`Command::ShortLivedRecord`]), so that every replica's
//! DNS answers it, whichever node is asked, and can ask every member which records it answers
//! (so that their proposer knows when every replica answers them).

use std::sync::Arc;

use pkraft_types::Command;
use pkraft_types::short_lived::{ShortLivedRecord, ShortLivedRecords};
use serde::{Deserialize, Serialize};

use std::time::Duration;

use hyper::StatusCode;

use crate::NodeId;
use crate::leadership::Leadership;
use crate::membership::STATUS_PROBE_TIMEOUT;
use crate::membership::change_error;
use crate::node_core::Core;
use crate::peer::client::CallError;
use crate::peer::path;
use crate::reason::Reason;
use crate::request_error::{RequestError, ask};

/// A record to commit, from the node that proposes it (forwarded to the leader).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RecordRequest {
    pub record: ShortLivedRecord,
    /// Already forwarded once: a node that is not the leader refuses it (no second hop).
    pub forwarded: bool,
}

/// How much longer than the leader's commit bound a forwarded record is waited for.
const FORWARD_ANSWER_MARGIN: Duration = Duration::from_secs(1);

/// What one member says of the short-lived records ([`ShortLived::holders`]).
#[derive(Debug)]
pub enum RecordHolder {
    /// The records its DNS answers now.
    Answers(Vec<ShortLivedRecord>),
    /// It has no route to ask (404): a build that cannot read these entries, whose replication
    /// one would stall, or one from before issue 51, which asks under another name
    /// (OPERATIONS.md, "Upgrading").
    OlderBuild,
    /// It did not answer: the call's error, or none when the probe's own task failed.
    Unreachable(Option<CallError>),
}

/// The node's short-lived records: this replica's, and the commit of new ones through the leader.
pub struct ShortLived {
    /// The node's handles and fixed settings (`node_core`).
    pub(crate) core: Arc<Core>,
    /// What this replica's DNS answers; the state machine applies the records into it.
    records: Arc<ShortLivedRecords>,
    leadership: Arc<Leadership>,
}

impl ShortLived {
    /// `records`: this replica's, which the state machine applies into.
    pub(crate) fn new(
        core: &Arc<Core>,
        records: Arc<ShortLivedRecords>,
        leadership: Arc<Leadership>,
    ) -> ShortLived {
        ShortLived {
            core: core.clone(),
            records,
            leadership,
        }
    }

    /// The short-lived records this replica's DNS answers.
    pub fn records(&self) -> Arc<ShortLivedRecords> {
        self.records.clone()
    }

    /// Commits `record` through the leader (here if this node leads, else forwarded to it),
    /// within `raft.publish_timeout`; the log index it was committed at.
    pub async fn commit(&self, record: ShortLivedRecord) -> Result<u64, RequestError> {
        self.handle(RecordRequest {
            record,
            forwarded: false,
        })
        .await
    }

    /// A record from this node or, forwarded, from another.
    pub(crate) async fn handle(&self, request: RecordRequest) -> Result<u64, RequestError> {
        if self.leadership.is_leader() {
            return self.commit_as_leader(request.record).await;
        }
        match self.leadership.known_leader() {
            Some((leader, addr)) if !request.forwarded => {
                let forwarded = RecordRequest {
                    record: request.record,
                    forwarded: true,
                };
                ask(
                    &self.core.peers,
                    &addr,
                    Some(leader),
                    path::SHORT_LIVED_RECORD,
                    &forwarded,
                    // The leader's own bound, and time for its answer to come back.
                    self.core.publish_timeout + FORWARD_ANSWER_MARGIN,
                )
                .await
                .map_err(|e| RequestError::Unavailable(Reason::of(e)))?
            }
            leader => Err(RequestError::NotLeader {
                leader: leader.map(|(id, _)| id),
            }),
        }
    }

    async fn commit_as_leader(&self, record: ShortLivedRecord) -> Result<u64, RequestError> {
        let Some(_proposal) = self.leadership.begin_proposal() else {
            return Err(RequestError::Unavailable(
                "the leader is handing over its leadership".into(),
            ));
        };
        let command = Command::ShortLivedRecord(record);
        match tokio::time::timeout(
            self.core.publish_timeout,
            self.core.raft.client_write(command),
        )
        .await
        {
            Err(_) => Err(RequestError::Unavailable(
                format!(
                    "the record was not committed within raft.publish_timeout ({:?})",
                    self.core.publish_timeout
                )
                .into(),
            )),
            Ok(Err(e)) => Err(change_error(e)),
            Ok(Ok(written)) => Ok(written.log_id.index),
        }
    }

    /// The records this replica's DNS answers now.
    pub fn live(&self) -> Vec<ShortLivedRecord> {
        self.records.live(pkraft_types::unix_micros_now())
    }

    /// What each member of the cluster (this node too) says of the short-lived records, each
    /// asked over the peer network within `STATUS_PROBE_TIMEOUT`, in parallel.
    pub async fn holders(&self) -> Vec<(NodeId, RecordHolder)> {
        let members: Vec<(NodeId, String)> = {
            let metrics = self.core.raft.metrics();
            let metrics = metrics.borrow();
            metrics
                .membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != self.core.id)
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect()
        };
        let asked: Vec<NodeId> = members.iter().map(|(id, _)| *id).collect();
        let mut asks = tokio::task::JoinSet::new();
        for (id, addr) in members {
            let peers = self.core.peers.clone();
            asks.spawn(async move {
                let answer = peers
                    .call::<(), Vec<ShortLivedRecord>>(
                        &addr,
                        Some(id),
                        path::SHORT_LIVED_RECORDS,
                        &(),
                        STATUS_PROBE_TIMEOUT,
                    )
                    .await;
                let holder = match answer {
                    Ok(values) => RecordHolder::Answers(values),
                    Err(CallError::Status { status, .. }) if status == StatusCode::NOT_FOUND => {
                        RecordHolder::OlderBuild
                    }
                    Err(e) => RecordHolder::Unreachable(Some(e)),
                };
                (id, holder)
            });
        }
        let mut holders = vec![(self.core.id, RecordHolder::Answers(self.live()))];
        while let Some(joined) = asks.join_next().await {
            if let Ok(answer) = joined {
                holders.push(answer);
            }
        }
        // A probe whose task failed says nothing of its member: unreachable, not left out.
        for id in asked {
            if !holders.iter().any(|(answered, _)| *answered == id) {
                holders.push((id, RecordHolder::Unreachable(None)));
            }
        }
        holders.sort_by_key(|(id, _)| *id);
        holders
    }
}
