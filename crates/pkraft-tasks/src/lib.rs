//! Supervised long-lived tasks, threads and loops: no loop of the node dies silently.
//!
//! A tokio task or a thread that panics otherwise just ends: no log line through the node's
//! logger, no metric, and the work it did stops (a UDP loop's socket keeps its share of the
//! kernel's `SO_REUSEPORT` traffic and answers none of it). Every long-lived loop of the node is
//! started through [`spawn`] (tasks) or [`run_thread`] (threads), or guarded round by round
//! ([`Rounds`]: the accept loops) instead: a panic is logged (`ERROR`, "a task panicked", with
//! the task's name and the panic's message), counted in `pkraft_task_panics_total{task}`, and
//! the loop is started again (or goes on with its next round) after a backoff (100 ms, doubling
//! to 30 s, back to 100 ms once a run lasted a minute). What a restarted loop lost is
//! its in-memory state; every supervised loop is written to start from what it reads (the
//! store, openraft's metrics, the socket).
//!
//! Task names are `&'static str` given by the code: the metric's label set is bounded.
//!
//! The connections an accept loop starts are guarded one by one ([`guard_connection`]): a panic
//! while serving one is logged and counted in `pkraft_connection_panics_total{listener}` and
//! ends that connection alone. A request whose handler panicked is counted there too
//! ([`request_panicked`]) and ends alone: the HTTP listeners answer it 500, and its connection
//! goes on.
//!
//! Work that blocks its thread goes through [`blocking`]: tokio's blocking pool, or at once on
//! the asking thread in a simulation, whose one thread must run every step of the node.
//!
//! Fault injection for tests: `PKRAFT_TEST_PANIC=<task>[,<task>…]` makes each named loop panic
//! once, the first time it calls [`injected_panic`] (docs/TESTING.md); `<task>/<place>` names a
//! place within a task ([`injected_panic_at`]).

mod blocking;

pub use blocking::{BlockingFailed, blocking};

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

use futures_lite::FutureExt as _;
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// First wait before a panicked loop is started again.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between restarts of a loop that keeps panicking.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run this long counts as healthy: the next panic waits `BACKOFF_FIRST` again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// `pkraft_task_panics_total{task}`: panics of supervised tasks and threads, process-wide.
static PANICS: LazyLock<Option<IntCounterVec>> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "pkraft_task_panics_total",
            "Panics of the node's long-lived tasks, threads and accept loops, each logged and the loop restarted or continued, by task.",
        ),
        &["task"],
    )
    .ok()
});

/// `pkraft_connection_panics_total{listener}`: panics while serving one connection of a
/// listener, process-wide.
static CONNECTION_PANICS: LazyLock<Option<IntCounterVec>> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "pkraft_connection_panics_total",
            "Panics while serving one connection of a listener or one of its requests (a request's panic ends that request alone, answered 500 over HTTP; any other ends that connection alone), each logged, by listener.",
        ),
        &["listener"],
    )
    .ok()
});

/// Registers `pkraft_task_panics_total` and `pkraft_connection_panics_total` with `registry`,
/// with a series at 0 for each of `tasks` and of `listeners` (so an alert on `increase()` sees
/// the first panic).
pub fn register(
    registry: &Registry,
    tasks: &[&'static str],
    listeners: &[&'static str],
) -> prometheus::Result<()> {
    for (counter, labels) in [(&PANICS, tasks), (&CONNECTION_PANICS, listeners)] {
        let Some(counter) = counter.as_ref() else {
            continue;
        };
        for label in labels {
            counter.with_label_values(&[label]);
        }
        registry.register(Box::new(counter.clone()))?;
    }
    Ok(())
}

/// The panics counted for `task` so far.
pub fn panics(task: &str) -> u64 {
    PANICS
        .as_ref()
        .map_or(0, |panics| panics.with_label_values(&[task]).get())
}

/// The panics counted for connections of `listener` so far.
pub fn connection_panics(listener: &str) -> u64 {
    CONNECTION_PANICS
        .as_ref()
        .map_or(0, |panics| panics.with_label_values(&[listener]).get())
}

/// Serves one connection of `listener`, guarded: a panic while serving it is logged and counted
/// (`pkraft_connection_panics_total`), and ends this connection alone. Without the guard the
/// task would just end, its panic message on stderr, beside the node's log and uncounted.
pub async fn guard_connection(listener: &'static str, connection: impl Future<Output = ()>) {
    let run = async {
        injected_panic_at(listener, "connection");
        connection.await;
    };
    if let Err(payload) = AssertUnwindSafe(run).catch_unwind().await {
        count_connection_panic(listener);
        tracing::error!(
            listener,
            panic = panic_message(payload.as_ref()),
            "a connection's task panicked; that connection is closed"
        );
    }
}

/// Runs one request's task of `listener` (an HTTP/2 stream, which hyper runs as a task of its
/// own), guarded: a panic is logged and counted as [`request_panicked`] says, and ends this
/// request alone.
pub async fn guard_request(listener: &'static str, request: impl Future<Output = ()>) {
    if let Err(payload) = AssertUnwindSafe(request).catch_unwind().await {
        request_panicked(listener, payload.as_ref());
    }
}

/// A request's handler on `listener` panicked, and its connection goes on (the HTTP listeners
/// answer that request 500 or reset its HTTP/2 stream; a DNS-over-TCP query answered through
/// hickory's chain goes unanswered): logged and counted.
pub fn request_panicked(listener: &'static str, payload: &(dyn std::any::Any + Send)) {
    count_connection_panic(listener);
    tracing::error!(
        listener,
        panic = panic_message(payload),
        "a request's handler panicked; its connection goes on"
    );
}

fn count_connection_panic(listener: &'static str) {
    if let Some(panics) = CONNECTION_PANICS.as_ref() {
        panics.with_label_values(&[listener]).inc();
    }
}

fn record_panic(task: &'static str, message: &str, backoff: Duration) {
    if let Some(panics) = PANICS.as_ref() {
        panics.with_label_values(&[task]).inc();
    }
    tracing::error!(
        task,
        panic = message,
        restart_in = ?backoff,
        "a task panicked; it is started again"
    );
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(a panic without a message)".to_string()
    }
}

/// The restart backoff of one supervised loop.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            next: BACKOFF_FIRST,
        }
    }

    /// The wait before the next start, after a run that lasted `ran`.
    fn after(&mut self, ran: Duration) -> Duration {
        if ran >= HEALTHY_RUN {
            self.next = BACKOFF_FIRST;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        wait
    }
}

/// Spawns the task `make()` builds, supervised: when it panics, it is logged and counted, and
/// `make` is called again for a new run after the backoff. The task ends when a run returns.
/// Aborting the returned handle stops it (the run is polled inside this task, not spawned).
pub fn spawn<F, Fut>(task: &'static str, mut make: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut backoff = Backoff::new();
        loop {
            let started = Instant::now();
            let run = async {
                injected_panic(task);
                make().await;
            };
            match AssertUnwindSafe(run).catch_unwind().await {
                Ok(()) => return,
                Err(payload) => {
                    let wait = backoff.after(started.elapsed());
                    record_panic(task, &panic_message(payload.as_ref()), wait);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    })
}

/// A loop supervised round by round, for loops whose state must outlive a panic: an accept
/// loop keeps its listener and the connections it has started, which [`spawn`]'s restart of
/// the whole loop would drop. A round that panics is logged and counted as [`spawn`]'s are,
/// and [`Rounds::run`] returns after the backoff; the loop then goes on with its next round.
/// The backoff starts again at its first wait once a minute has passed without a panic.
/// The tasks such a loop spawns (its connections) are guarded one by one instead
/// ([`guard_connection`]).
pub struct Rounds {
    task: &'static str,
    backoff: Backoff,
    /// Since when no round has panicked (the loop's start, or the last panic).
    calm_since: Instant,
}

impl Rounds {
    pub fn new(task: &'static str) -> Rounds {
        Rounds {
            task,
            backoff: Backoff::new(),
            calm_since: Instant::now(),
        }
    }

    /// Runs one round: its value, or `None` when it panicked (logged, counted, and the backoff
    /// waited out; a caller that drops this future meanwhile skips the rest of the wait).
    pub async fn run<T>(&mut self, round: impl Future<Output = T>) -> Option<T> {
        let task = self.task;
        let guarded = async {
            injected_panic(task);
            round.await
        };
        match AssertUnwindSafe(guarded).catch_unwind().await {
            Ok(value) => Some(value),
            Err(payload) => {
                let wait = self.backoff.after(self.calm_since.elapsed());
                self.calm_since = Instant::now();
                record_panic(task, &panic_message(payload.as_ref()), wait);
                tokio::time::sleep(wait).await;
                None
            }
        }
    }
}

/// Runs `body` on the calling thread, supervised: when it panics, it is logged and counted,
/// and `body` runs again after the backoff (the thread sleeps meanwhile). Returns when a run
/// returns.
pub fn run_thread(task: &'static str, mut body: impl FnMut()) {
    let mut backoff = Backoff::new();
    loop {
        let started = Instant::now();
        match std::panic::catch_unwind(AssertUnwindSafe(&mut body)) {
            Ok(()) => return,
            Err(payload) => {
                let wait = backoff.after(started.elapsed());
                record_panic(task, &panic_message(payload.as_ref()), wait);
                std::thread::sleep(wait);
            }
        }
    }
}

/// The loops `PKRAFT_TEST_PANIC` names, each with whether it has panicked yet.
static INJECTED: LazyLock<Mutex<Vec<(String, bool)>>> = LazyLock::new(|| {
    let names = std::env::var("PKRAFT_TEST_PANIC").unwrap_or_default();
    Mutex::new(
        names
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(|name| (name.to_string(), false))
            .collect(),
    )
});
/// Whether `PKRAFT_TEST_PANIC` names anything: the common case reads one atomic.
static ANY_INJECTED: LazyLock<AtomicBool> = LazyLock::new(|| {
    AtomicBool::new(
        !INJECTED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty(),
    )
});

/// Panics, once per process, if `PKRAFT_TEST_PANIC` names `task` (fault injection for tests).
pub fn injected_panic(task: &str) {
    if !ANY_INJECTED.load(Ordering::Relaxed) {
        return;
    }
    fire_injected(task);
}

/// Panics, once per process, if `PKRAFT_TEST_PANIC` names `<task>/<at>`: a place within a task,
/// such as `http/connection` (a connection of the `http` listener).
pub fn injected_panic_at(task: &str, at: &str) {
    if !ANY_INJECTED.load(Ordering::Relaxed) {
        return;
    }
    fire_injected(&format!("{task}/{at}"));
}

fn fire_injected(task: &str) {
    let fire = {
        let mut injected = INJECTED.lock().unwrap_or_else(PoisonError::into_inner);
        injected
            .iter_mut()
            .find(|(name, fired)| name == task && !*fired)
            .map(|(_, fired)| *fired = true)
            .is_some()
    };
    if fire {
        panic!("PKRAFT_TEST_PANIC: injected panic in {task}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;

    #[tokio::test]
    async fn a_panicking_connection_or_request_is_counted_for_its_listener() {
        let listener = "test-listener";
        let before = connection_panics(listener);
        guard_connection(listener, async { panic!("a connection") }).await;
        guard_request(listener, async { panic!("a request") }).await;
        guard_connection(listener, async {}).await;
        guard_request(listener, async {}).await;
        assert_eq!(connection_panics(listener), before + 2);
    }

    #[tokio::test]
    async fn a_panicking_task_is_counted_and_runs_again() {
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let task = spawn("test-task", move || {
            let runs = counted.clone();
            async move {
                if runs.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("run {}", runs.load(Ordering::SeqCst));
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("ends after its third run")
            .expect("the supervisor itself does not panic");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(panics("test-task"), 2);
    }

    #[tokio::test]
    async fn a_panicking_round_is_counted_and_the_loop_goes_on_with_its_state() {
        let mut rounds = Rounds::new("test-rounds");
        // The loop's state, which a restart of the whole loop would lose.
        let mut done = Vec::new();
        for round in 0..4_u32 {
            let done = &mut done;
            let outcome = rounds
                .run(async move {
                    assert!(round % 2 == 0, "round {round} panics");
                    done.push(round);
                    round
                })
                .await;
            assert_eq!(outcome, (round % 2 == 0).then_some(round));
        }
        assert_eq!(done, [0, 2]);
        assert_eq!(panics("test-rounds"), 2);
        // Two panics in quick succession: the second waited twice the first backoff.
        assert_eq!(rounds.backoff.next, BACKOFF_FIRST * 4);
    }

    #[test]
    fn a_panicking_thread_body_runs_again() {
        let mut runs = 0;
        run_thread("test-thread", || {
            runs += 1;
            assert!(runs > 1, "first run panics");
        });
        assert_eq!(runs, 2);
        assert_eq!(panics("test-thread"), 1);
    }

    #[test]
    fn the_backoff_doubles_and_resets_after_a_healthy_run() {
        let mut backoff = Backoff::new();
        let short = Duration::from_millis(1);
        assert_eq!(backoff.after(short), BACKOFF_FIRST);
        assert_eq!(backoff.after(short), BACKOFF_FIRST * 2);
        for _ in 0..20 {
            backoff.after(short);
        }
        assert_eq!(backoff.after(short), BACKOFF_MAX);
        assert_eq!(backoff.after(HEALTHY_RUN), BACKOFF_FIRST);
    }
}
