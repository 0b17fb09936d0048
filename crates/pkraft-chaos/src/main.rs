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
        /// The pkraft binary to test.
        #[arg(long)]
        bin: PathBuf,
        /// Where node configs, data, logs, the schedule and the history go.
        #[arg(long)]
        out: PathBuf,
        /// Fault schedule seed; a random one (printed) if not given.
        #[arg(long)]
        seed: Option<u64>,
        /// Cluster size (voters): 3 or 5.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=5))]
        nodes: u64,
        /// Rounds of the schedule; each round has every fault kind once.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Keys written.
        #[arg(long, default_value_t = 4)]
        keys: usize,
        #[arg(long, default_value_t = 6)]
        writers: usize,
        #[arg(long, default_value_t = 2)]
        linearizable_readers: usize,
        #[arg(long, default_value_t = 4)]
        replica_readers: usize,
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
    match Cli::parse().command {
        Command::Run {
            bin,
            out,
            seed,
            nodes,
            rounds,
            keys,
            writers,
            linearizable_readers,
            replica_readers,
            keep,
        } => {
            let seed = seed.unwrap_or_else(random_seed);
            let config = RunConfig {
                bin,
                out,
                seed,
                nodes,
                rounds,
                keys,
                writers,
                linearizable_readers,
                replica_readers,
            };
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

/// A seed from the clock: only the schedule depends on it, and it is printed.
fn random_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_007)
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
