//! The run's log: `SIM_LOG=<filter>` (an `EnvFilter`, `debug`, `openraft=info,pkraft_raft=debug`)
//! prints the log lines of every node of a run, each stamped with the simulated time instead of
//! the machine's clock, so that two runs of one seed can be compared line by line (`diff`);
//! and, whether or not it is set, the snapshots the nodes install are counted from their log
//! line ([`snapshots_installed`]), as no node outlives its crashes to be asked.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// Where the state machine logs an install, and what it says.
const INSTALL_TARGET: &str = "pkraft_raft_storage::state_machine";
const INSTALL_MESSAGE: &str = "installed a snapshot from the leader";

/// Snapshots installed so far in the run.
static SNAPSHOTS_INSTALLED: AtomicU64 = AtomicU64::new(0);

/// Installs the process's log: the installs counted, and the lines printed when `SIM_LOG` is
/// set. A second call, or a subscriber set before, leaves it as it is.
pub fn install() {
    let printed = std::env::var("SIM_LOG").ok().map(|filter| {
        tracing_subscriber::fmt::layer()
            .with_timer(SimulatedTime)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_filter(EnvFilter::new(filter))
    });
    let counted = InstallCounter
        .with_filter(Targets::new().with_target(INSTALL_TARGET, tracing::Level::INFO));
    let _ = Registry::default().with(printed).with(counted).try_init();
}

/// No snapshot installed yet: a run's count is its own.
pub(crate) fn start_run() {
    SNAPSHOTS_INSTALLED.store(0, Ordering::Relaxed);
}

/// How many snapshots the nodes installed from a leader so far in the run.
pub(crate) fn snapshots_installed() -> u64 {
    SNAPSHOTS_INSTALLED.load(Ordering::Relaxed)
}

/// Counts the state machine's "installed a snapshot" lines.
struct InstallCounter;

impl<S: tracing::Subscriber> Layer<S> for InstallCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut message = Message(false);
        event.record(&mut message);
        if message.0 {
            SNAPSHOTS_INSTALLED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether an event's message is [`INSTALL_MESSAGE`].
struct Message(bool);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value == INSTALL_MESSAGE;
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}") == INSTALL_MESSAGE;
        }
    }
}

/// The simulated time since the run began, of the step that logs.
struct SimulatedTime;

impl FormatTime for SimulatedTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        match turmoil::sim_elapsed() {
            Some(elapsed) => write!(w, "{elapsed:>12?}"),
            None => write!(w, "{:>12}", "outside"),
        }
    }
}
