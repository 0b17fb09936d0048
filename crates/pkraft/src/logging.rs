//! Logging for every subcommand: text or JSON lines on stderr, filtered by `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

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
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => subscriber.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => subscriber.json().init(),
    }
}
