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
//!
//! In a simulation ([`pkraft_types::world::runs_blocking_work_inline`]) there is no thread: each
//! job runs at once on the thread that submits it, which is the simulation's (openraft allows
//! the flush callback to be called before `append` returns). The order of the changes is the
//! callers' either way.

use std::io;
use std::sync::mpsc::{self, Sender};
use std::thread::{JoinHandle, ThreadId};

type Job = Box<dyn FnOnce() + Send>;

/// See the module docs. Dropping it (with the last [`super::LogStore`] handle) lets the thread
/// finish what is queued and end.
pub(super) struct LogWriter {
    /// `None` in a simulation: jobs run inline (module docs).
    thread: Option<WriterThread>,
}

struct WriterThread {
    jobs: Option<Sender<Job>>,
    handle: Option<JoinHandle<()>>,
    id: ThreadId,
}

impl LogWriter {
    pub(super) fn start() -> io::Result<LogWriter> {
        if pkraft_types::world::runs_blocking_work_inline() {
            return Ok(LogWriter { thread: None });
        }
        let (jobs, queue) = mpsc::channel::<Job>();
        let handle = std::thread::Builder::new()
            .name("pkraft-log-writer".to_string())
            .spawn(move || {
                for job in queue {
                    job();
                }
            })?;
        Ok(LogWriter {
            thread: Some(WriterThread {
                jobs: Some(jobs),
                id: handle.thread().id(),
                handle: Some(handle),
            }),
        })
    }

    /// Queues `job` (runs it at once, in a simulation); an error means the thread is gone (the
    /// log is closing).
    pub(super) fn submit(&self, job: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let Some(thread) = &self.thread else {
            job();
            return Ok(());
        };
        thread
            .jobs
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

impl Drop for WriterThread {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(handle) = self.handle.take()
            && std::thread::current().id() != self.id
            && handle.join().is_err()
        {
            tracing::error!("the log writer thread panicked");
        }
    }
}
