//! `SIM_LOG=<filter>` (an `EnvFilter`, `debug`, `openraft=info,pkraft_raft=debug`): the log lines
//! of every node of a run, each stamped with the simulated time instead of the machine's clock,
//! so that two runs of one seed can be compared line by line (`diff`).

use std::fmt;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// Installs the log for the process when `SIM_LOG` is set; a second call, or a subscriber set
/// before, leaves it as it is.
pub fn install_from_env() {
    let Ok(filter) = std::env::var("SIM_LOG") else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_timer(SimulatedTime)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
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
