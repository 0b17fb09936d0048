//! [`DhtPublishing`]: the DHT publisher's way into the node (`pkraft-dht`): this replica's
//! [`DhtOutbox`], and the commit of the publisher's progress through Raft.

use std::sync::Arc;

use pkraft_types::Command;

use crate::dht_outbox::{DhtOutbox, Progress};
use crate::leadership::Leadership;
use crate::node_core::Core;

/// The node's side of the Mainline DHT bridge.
pub struct DhtPublishing {
    /// Filled by the state machine as it applies (also on followers).
    outbox: Arc<DhtOutbox>,
    /// The node's handles and fixed settings (`node_core`).
    pub(crate) core: Arc<Core>,
    leadership: Arc<Leadership>,
}

impl DhtPublishing {
    /// `outbox`: this replica's, which the state machine fills.
    pub(crate) fn new(
        core: &Arc<Core>,
        outbox: Arc<DhtOutbox>,
        leadership: Arc<Leadership>,
    ) -> DhtPublishing {
        DhtPublishing {
            outbox,
            core: core.clone(),
            leadership,
        }
    }

    /// The DHT outbox of this replica (see [`DhtOutbox`]).
    pub fn outbox(&self) -> &DhtOutbox {
        &self.outbox
    }

    /// Commits the DHT publisher's progress (leader only), bounded by `raft.publish_timeout`.
    pub async fn commit_progress(&self, progress: Progress) -> Result<(), ProgressError> {
        let Some(_proposal) = self.leadership.begin_proposal() else {
            return Err(ProgressError::NotLeader);
        };
        let command = Command::DhtProgress {
            published_through: progress.published_through,
            republished_through: progress.republished_through,
        };
        match tokio::time::timeout(
            self.core.publish_timeout,
            self.core.raft.client_write(command),
        )
        .await
        {
            Err(_) => Err(ProgressError::Timeout),
            Ok(Err(e)) => Err(ProgressError::Raft(Box::new(e))),
            Ok(Ok(_)) => Ok(()),
        }
    }
}

/// Why a progress entry was not committed.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    #[error("not the leader, or handing over")]
    NotLeader,
    #[error("not committed within raft.publish_timeout")]
    Timeout,
    /// openraft refused or failed the write (its error, boxed: openraft's types stop at this
    /// crate).
    #[error("raft: {0}")]
    Raft(#[source] Box<dyn std::error::Error + Send + Sync>),
}
