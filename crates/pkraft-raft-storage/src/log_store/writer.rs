//! [`LogWriter`]: the thread (`pkraft-log-writer`) that owns the log's files and makes every
//! change to them, one after the other: appends, truncations, purges and the meta writes.
//!
//! openraft 0.9 hands the log store one append at a time and waits for its flush callback. On
//! tokio's blocking pool each append was a task handed to a pool thread and a wake back; here
//! the append is queued to a thread that is already waiting for it, and the thread itself
//! reports the flush to openraft (the callback is safe to call from any thread). The entries'
//! encoding moves off openraft's core task onto this thread too.
//!
//! The queue holds at most one append (openraft waits for each) and whatever the node's
//! callers of truncate, purge and the vote wait for, so it is unbounded in type only.

use std::io;
use std::sync::mpsc::{self, Sender};
use std::thread::{JoinHandle, ThreadId};

type Job = Box<dyn FnOnce() + Send>;

/// See the module docs. Dropping it (with the last [`super::LogStore`] handle) lets the thread
/// finish what is queued and end.
pub(super) struct LogWriter {
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    thread_id: ThreadId,
}

impl LogWriter {
    pub(super) fn start() -> io::Result<LogWriter> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("pkraft-log-writer".to_string())
            .spawn(move || {
                for job in queue {
                    job();
                }
            })?;
        Ok(LogWriter {
            jobs: Some(jobs),
            thread_id: thread.thread().id(),
            thread: Some(thread),
        })
    }

    /// Queues `job`; an error means the thread is gone (the log is closing).
    pub(super) fn submit(&self, job: impl FnOnce() + Send + 'static) -> io::Result<()> {
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(Box::new(job)).ok())
            .ok_or_else(|| io::Error::other("the log writer has stopped"))
    }

    /// Runs `work` on the thread and waits for its answer.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(move || {
            let _ = reply.send(work());
        })?;
        answer
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the log writer stopped before answering")))
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take()
            && std::thread::current().id() != self.thread_id
            && thread.join().is_err()
        {
            tracing::error!("the log writer thread panicked");
        }
    }
}
