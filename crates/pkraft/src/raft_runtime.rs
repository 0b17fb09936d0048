//! The node's own tokio runtime (`raft.runtime_threads`): openraft's core, heartbeats and
//! replication, the node's background tasks and the peer listener run here, and client work
//! (HTTP, DoH, DNS over TCP and the DNS answers the UDP loops hand to hickory's chain) on the
//! runtime `main` starts. A client's storage read does its `pread` inline on the thread that
//! serves it; with `state.redb` larger than the page cache that is a disk read of up to
//! milliseconds, and a burst of them holds every client thread. On a runtime of its own, Raft
//! goes on sending and answering heartbeats meanwhile (docs/ARCHITECTURE.md, "Runtimes").

use anyhow::Context;
use tokio::runtime::{Builder, Handle, Runtime};

/// The node's runtime; it stops when dropped, without waiting (its tasks are stopped by then:
/// [`crate::Server::shutdown`] stops the node and the peer listener first).
pub(crate) struct RaftRuntime {
    /// `None` only while dropped.
    runtime: Option<Runtime>,
    handle: Handle,
}

impl RaftRuntime {
    /// A multi-threaded runtime of `threads` workers, named `pkraft-raft`.
    pub(crate) fn new(threads: usize) -> anyhow::Result<RaftRuntime> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("pkraft-raft")
            .enable_all()
            .build()
            .with_context(|| format!("the Raft runtime (raft.runtime_threads = {threads})"))?;
        let handle = runtime.handle().clone();
        Ok(RaftRuntime {
            runtime: Some(runtime),
            handle,
        })
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its tasks stop, which panics inside another runtime
        // (the server is dropped on `main`'s); nothing of the node is left to wait for.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
