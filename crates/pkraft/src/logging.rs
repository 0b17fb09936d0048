//! Logging for every subcommand: text or JSON lines on stderr, filtered by `RUST_LOG`.

use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

/// Log filter when `RUST_LOG` is unset.
const DEFAULT_LOG_FILTER: &str = "info,openraft=warn";
/// hickory-server logs two lines per DNS query at INFO, which costs throughput and floods the log.
/// Each directive applies unless `RUST_LOG` names its target itself.
const HICKORY_LOG_FILTER: [(&str, &str); 2] = [
    ("hickory_server", "hickory_server=warn"),
    ("hickory_proto", "hickory_proto=warn"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber; once, before anything logs.
pub fn init(format: LogFormat) {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let mut filter = match &from_env {
        Some(value) => EnvFilter::new(value),
        None => EnvFilter::new(DEFAULT_LOG_FILTER),
    };
    for (target, directive) in HICKORY_LOG_FILTER {
        let named = from_env
            .as_deref()
            .is_some_and(|value| value.contains(target));
        if let (false, Ok(directive)) = (named, directive.parse()) {
            filter = filter.add_directive(directive);
        }
    }
    // An operator whose RUST_LOG names openraft is debugging it and gets every line of it.
    let quiet = QuietUnreachablePeers {
        on: !from_env
            .as_deref()
            .is_some_and(|value| value.contains("openraft")),
    };
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .log_internal_errors(true);
    let lines = match format {
        LogFormat::Text => lines
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(quiet)
            .boxed(),
        LogFormat::Json => lines.json().with_filter(quiet).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .init();
}

/// How openraft 0.9 says that a peer missed a call: `RPCError::Unreachable`'s `Display`, in
/// every line about such an RPC, the line of each backoff that follows one (openraft backs off
/// only from an unreachable peer), and the peer network's deadline for append-entries and votes
/// (`pkraft_peer::client::TIMED_OUT_SAYS`, in the `RPCError` it hands openraft). openraft's
/// own timeouts (`timeout after ...`) and a snapshot chunk's are not among them: the peer
/// network's deadline ends first, so one of openraft's is rare and passes, and a snapshot's
/// trouble is openraft's to say.
const OPENRAFT_PEER_MISSED: [&str; 3] = [
    "Unreachable node: ",
    "backoff mode: drain events",
    pkraft_raft::peer::client::TIMED_OUT_SAYS,
];

/// Drops openraft's `WARN` and `ERROR` lines about a peer it could not reach or that did not
/// answer in time (`RPCError`, `error replication to target`, `heartbeat error`, `while
/// requesting vote`, `backoff mode`, ...: several lines every half second per peer down, and
/// two for every append-entries that timed out, ten a second at the default heartbeat). The
/// peer network says it once instead, and again every minute while it lasts
/// (`pkraft_peer::reachability`). Every other line passes, and every line when `RUST_LOG`
/// names openraft (`on` false).
#[derive(Clone, Copy)]
struct QuietUnreachablePeers {
    on: bool,
}

impl<S> Filter<S> for QuietUnreachablePeers {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        let metadata = event.metadata();
        let warns = *metadata.level() == Level::WARN || *metadata.level() == Level::ERROR;
        if !self.on || !warns || !metadata.target().starts_with("openraft") {
            return true;
        }
        let mut mention = MentionsUnreachable(false);
        event.record(&mut mention);
        !mention.0
    }
}

/// Whether any field of an event says one of [`OPENRAFT_PEER_MISSED`].
struct MentionsUnreachable(bool);

impl Visit for MentionsUnreachable {
    fn record_debug(&mut self, _: &Field, value: &dyn std::fmt::Debug) {
        if !self.0 {
            let text = format!("{value:?}");
            self.0 = OPENRAFT_PEER_MISSED.iter().any(|says| text.contains(says));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::Duration;

    use pkraft_raft::peer::client::{CallError, TIMED_OUT_SAYS};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// What openraft 0.9 logs for an RPC to a peer that is down (two lines), one for an RPC
    /// that openraft's own timeout ended, two for one the peer network's deadline ended, one
    /// for a snapshot chunk's own timeout, and the peer network's own line, through the filter
    /// `on` or off.
    fn logged(on: bool) -> String {
        let captured = Captured::default();
        let lines = tracing_subscriber::fmt::layer()
            .with_writer(captured.clone())
            .with_ansi(false)
            .with_filter(QuietUnreachablePeers { on });
        tracing::subscriber::with_default(tracing_subscriber::registry().with(lines), || {
            let down = "Unreachable node: cannot connect to peer 127.0.0.1:7411";
            tracing::warn!(target: "openraft::replication", error = %down, "error replication to target=2");
            tracing::error!(target: "openraft::replication", err = %down, "RPCError");
            tracing::error!(target: "openraft::replication", err = %"timeout after 1s", "RPCError");
            let silent = CallError::Silent {
                addr: "127.0.0.1:7411".to_string(),
                timeout: Duration::from_millis(95),
            };
            let silent = format!("Network error: {silent}");
            tracing::error!(target: "openraft::replication", err = %silent, "RPCError");
            tracing::warn!(target: "openraft::replication", error = %silent, "error replication to target=3");
            let chunk = CallError::Timeout {
                addr: "127.0.0.1:7411".to_string(),
                timeout: Duration::from_secs(60),
            };
            tracing::error!(target: "openraft::replication", err = %format!("Network error: {chunk}"), "snapshot RPCError");
            tracing::warn!(target: "openraft::replication", interval = ?Duration::from_millis(500), "{} backoff mode: drain events without processing them", "backoff_drain_events");
            tracing::info!(target: "openraft::replication", err = %down, "an INFO line passes");
            tracing::warn!(target: "pkraft_peer::reachability", error = %down, "a peer does not answer");
        });
        let bytes = captured
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        String::from_utf8(bytes).expect("UTF-8 log lines")
    }

    #[test]
    fn openraft_lines_about_an_unreachable_peer_are_dropped_and_nothing_else() {
        let quiet = logged(true);
        assert!(!quiet.contains("error replication"), "{quiet}");
        assert!(!quiet.contains("backoff mode"), "{quiet}");
        assert!(quiet.contains("an INFO line passes"), "{quiet}");
        assert_eq!(quiet.matches("RPCError").count(), 2, "{quiet}");
        assert!(quiet.contains("timeout after 1s"), "{quiet}");
        assert!(!quiet.contains(TIMED_OUT_SAYS), "{quiet}");
        assert!(quiet.contains("snapshot RPCError"), "{quiet}");
        assert!(quiet.contains("a peer does not answer"), "{quiet}");
        let all = logged(false);
        assert_eq!(all.matches("RPCError").count(), 4, "{all}");
        assert!(all.contains(TIMED_OUT_SAYS), "{all}");
        assert!(all.contains("error replication"), "{all}");
        assert!(all.contains("backoff mode"), "{all}");
    }
}
