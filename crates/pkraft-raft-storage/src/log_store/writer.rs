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
//! the flush callback to be called before `append` returns). On a slow simulated disk
//! ([`pkraft_types::world::simulated_disk_latency`]) a task on the node's runtime takes the
//! thread's place: it runs the jobs in order, each after the disk's latency in simulated time,
//! while openraft goes on as it does beside a real disk's slow flush. The order of the changes
//! is the callers' either way. Beside a slow disk, real or simulated, entries appended are
//! readable only once written, later than `append` returns; openraft 0.9's replication
//! tolerates it (it sends what it can read, or waits and asks again), and a slow disk only
//! makes the wait longer.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{JoinHandle, ThreadId};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

type Job = Box<dyn FnOnce() + Send>;

/// See the module docs. Dropping it (with the last [`super::LogStore`] handle) lets the thread
/// finish what is queued and end.
pub(super) struct LogWriter {
    kind: Kind,
}

enum Kind {
    Thread(WriterThread),
    /// A simulation's (module docs).
    Simulated(SimulatedDisk),
}

struct WriterThread {
    jobs: Option<Sender<Job>>,
    handle: Option<JoinHandle<()>>,
    id: ThreadId,
}

/// The log's jobs in a simulation: run at once while the disk is healthy and none waits, else
/// queued to a task that waits out the disk's latency before each.
struct SimulatedDisk {
    /// The log's directory, whose disk's latency the simulation says.
    dir: PathBuf,
    /// Jobs queued and not yet run: while any is, a new one queues behind them.
    waiting: Arc<AtomicUsize>,
    jobs: UnboundedSender<Job>,
    /// Taken by the task that runs the queue, spawned on the first slow job. The task, not the
    /// writer, owns the queue: a crash drops the task with its runtime, and the jobs with it
    /// (each holds a log handle, which holds this writer: kept here, they would keep each
    /// other and the log's files open past a restart).
    queue: Mutex<Option<UnboundedReceiver<Job>>>,
}

impl LogWriter {
    /// The writer of the log in `dir`.
    pub(super) fn start(dir: &Path) -> io::Result<LogWriter> {
        if pkraft_types::world::runs_blocking_work_inline() {
            let (jobs, queue) = unbounded_channel();
            return Ok(LogWriter {
                kind: Kind::Simulated(SimulatedDisk {
                    dir: dir.to_path_buf(),
                    waiting: Arc::default(),
                    jobs,
                    queue: Mutex::new(Some(queue)),
                }),
            });
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
            kind: Kind::Thread(WriterThread {
                jobs: Some(jobs),
                id: handle.thread().id(),
                handle: Some(handle),
            }),
        })
    }

    /// Queues `job` (in a simulation, runs it at once unless the disk is slow); an error means
    /// the thread is gone (the log is closing).
    pub(super) fn submit(&self, job: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let thread = match &self.kind {
            Kind::Thread(thread) => thread,
            Kind::Simulated(disk) => return disk.submit(Box::new(job)),
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

impl SimulatedDisk {
    fn submit(&self, job: Job) -> io::Result<()> {
        let latency = pkraft_types::world::simulated_disk_latency(&self.dir).unwrap_or_default();
        if latency.is_zero() && self.waiting.load(Ordering::Acquire) == 0 {
            job();
            return Ok(());
        }
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(queue) = queue {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                // No runtime to wait on (a tool's open, not a node's): the disk is as fast as
                // the thread, and nothing waits yet.
                *self.queue.lock().unwrap_or_else(PoisonError::into_inner) = Some(queue);
                job();
                return Ok(());
            };
            runtime.spawn(run_slowly(self.dir.clone(), self.waiting.clone(), queue));
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        self.jobs.send(job).map_err(|_| {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            io::Error::other("the log writer has stopped (its simulated disk's task is gone)")
        })
    }
}

/// Runs the queued jobs in order, each after the latency the disk under `dir` has when it
/// comes to it (none once the disk is well again).
async fn run_slowly(dir: PathBuf, waiting: Arc<AtomicUsize>, mut queue: UnboundedReceiver<Job>) {
    while let Some(job) = queue.recv().await {
        let latency = pkraft_types::world::simulated_disk_latency(&dir).unwrap_or_default();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        job();
        waiting.fetch_sub(1, Ordering::AcqRel);
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
