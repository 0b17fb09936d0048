//! The DHT publisher's way into the node (`pkraft-dht`): this replica's [`DhtOutbox`], and the
//! commit of the publisher's progress through Raft.

use pkraft_types::Command;

use crate::dht_outbox::{DhtOutbox, Progress, ProgressError};
use crate::node::Node;

impl Node {
    /// The DHT outbox of this replica (see [`DhtOutbox`]).
    pub fn dht_outbox(&self) -> &DhtOutbox {
        &self.dht_outbox
    }

    /// Commits the DHT publisher's progress (leader only), bounded by `raft.publish_timeout`.
    pub async fn commit_dht_progress(&self, progress: Progress) -> Result<(), ProgressError> {
        let Some(_proposal) = self.leadership().begin_proposal() else {
            return Err(ProgressError::NotLeader);
        };
        let command = Command::DhtProgress {
            published_through: progress.published_through,
            republished_through: progress.republished_through,
        };
        match tokio::time::timeout(self.publish_timeout, self.raft.client_write(command)).await {
            Err(_) => Err(ProgressError::Timeout),
            Ok(Err(e)) => Err(ProgressError::Raft(e.to_string())),
            Ok(Ok(_)) => Ok(()),
        }
    }
}
