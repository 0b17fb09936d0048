//! `pkraft-chaos run`: one seeded chaos run against a real cluster; `pkraft-chaos check`: the
//! checkers over a saved history.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pkraft_chaos::check;
use pkraft_chaos::history;
use pkraft_chaos::run::{RunConfig, run};

#[derive(Parser)]
#[command(about = "Chaos tests for pkraft: seeded faults, a recorded history, checkers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a cluster, inject the seed's faults under traffic, check the history.
    Run {
        #[command(flatten)]
        config: RunConfig,
        /// Keep the node data dirs and logs of a passing run too.
        #[arg(long)]
        keep: bool,
    },
    /// Run the checkers over a saved history.jsonl (without the final node states: durability
    /// and convergence need a live run).
    Check { history: PathBuf },
}

#[tokio::main]
async fn main() -> ExitCode {
    // Built beside pkraft (`make chaos`), reqwest has rustls without a provider (pkraft's ACME
    // client asks for that) and would panic at its first client: ring, as pkraft's own. Err
    // means one is installed already, which serves as well.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Run { config, keep } => {
            let seed = config.seed;
            // Returning (rather than being killed) drops the cluster, which kills its nodes.
            let result = tokio::select! {
                result = run(&config) => result,
                signal = stop_signal() => Err(anyhow::anyhow!("stopped by {signal}")),
            };
            match result {
                Ok(outcome) if outcome.violations.is_empty() => {
                    print!("{}", outcome.summary);
                    println!("chaos: seed {seed} passed");
                    if !keep {
                        remove_bulk(&config.out);
                    }
                    ExitCode::SUCCESS
                }
                Ok(outcome) => {
                    print!("{}", outcome.summary);
                    for violation in outcome.violations.iter().take(20) {
                        println!("VIOLATION {violation}");
                    }
                    println!(
                        "chaos: seed {seed} FAILED with {} violations; history, schedule and node \
                         logs are in {}",
                        outcome.violations.len(),
                        config.out.display()
                    );
                    ExitCode::FAILURE
                }
                Err(e) => {
                    println!(
                        "chaos: seed {seed}: the run could not complete: {e:#}\nnode logs are in {}",
                        config.out.display()
                    );
                    ExitCode::from(2)
                }
            }
        }
        Command::Check { history } => match history::load(&history) {
            Ok(ops) => {
                let (checked, violations) = check::check_all(&ops, 0, &[]);
                println!("{checked:?}");
                for violation in &violations {
                    println!("VIOLATION {violation}");
                }
                if violations.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("{e:#}");
                ExitCode::from(2)
            }
        },
    }
}

/// SIGINT or SIGTERM (a CI timeout), whichever comes first.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// A passing run keeps its summary, schedule and events; the data dirs, logs and history go.
fn remove_bulk(out: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(out) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let keep = matches!(name.as_str(), "summary.txt" | "schedule.txt" | "events.txt");
        if keep {
            continue;
        }
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
}
