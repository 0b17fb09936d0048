//! Appends `--appends` entries of `--bytes` bytes one at a time, each made durable before the
//! next (openraft 0.9 awaits every append's flush), with:
//! - `plain`: a file opened for append: `write_all` of an 8-byte frame header and the payload,
//!   then `sync_data` (what pkraft's segment files do per append);
//! - `raft-log`: `RaftLog::append` of one entry, then `flush(sync = true)` with a callback,
//!   waiting for it;
//!   raft-log's flush worker waits up to `flush_batch_wait` (default 1 ms) for more writes to
//!   sync together; `raft-log` runs with that default, `raft-log 0w` with no wait (its best
//!   setting for one append at a time);
//! - `raft-log x8`: 8 appends per flush (no wait), as a log store that overlaps appends
//!   (openraft 0.10) would issue them; reported per append.
//!
//! Rounds alternate the order. Prints appends/s and the p50/p99 of one append's latency.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::{Duration, Instant};

use raft_log::api::raft_log_writer::RaftLogWriter;
use raft_log::api::types::Types;
use raft_log::{Config, RaftLog};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct BenchTypes;

impl Types for BenchTypes {
    type LogId = (u64, u64);
    type LogPayload = String;
    type Vote = (u64, u64);
    type UserData = String;
    type Callback = SyncSender<io::Result<()>>;

    fn log_index(log_id: &Self::LogId) -> u64 {
        log_id.1
    }

    fn payload_size(payload: &Self::LogPayload) -> u64 {
        payload.len() as u64
    }
}

struct Args {
    dir: PathBuf,
    appends: u64,
    bytes: usize,
    rounds: usize,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        dir: PathBuf::from("target/raft-log-bench"),
        appends: 5_000,
        bytes: 8_192,
        rounds: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{flag} {value}: {e}"));
        match flag.as_str() {
            "--dir" => args.dir = PathBuf::from(&value),
            "--appends" => args.appends = number()?,
            "--bytes" => args.bytes = usize::try_from(number()?).map_err(|e| e.to_string())?,
            "--rounds" => args.rounds = usize::try_from(number()?).map_err(|e| e.to_string())?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// Latencies of the appends, and the wall time of the run.
struct Run {
    latencies: Vec<Duration>,
    took: Duration,
}

fn plain(dir: &Path, appends: u64, payload: &[u8]) -> io::Result<Run> {
    let path = dir.join("plain.seg");
    let mut file: File = OpenOptions::new().create(true).append(true).open(&path)?;
    let mut record = Vec::with_capacity(8 + payload.len());
    let mut latencies = Vec::with_capacity(appends as usize);
    let start = Instant::now();
    for _ in 0..appends {
        let at = Instant::now();
        record.clear();
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&0u32.to_le_bytes());
        record.extend_from_slice(payload);
        file.write_all(&record)?;
        file.sync_data()?;
        latencies.push(at.elapsed());
    }
    Ok(Run {
        latencies,
        took: start.elapsed(),
    })
}

fn raft_log(
    dir: &Path,
    appends: u64,
    payload: &str,
    per_flush: u64,
    group_wait: Option<Duration>,
) -> io::Result<Run> {
    let log_dir = dir.join("raft-log");
    std::fs::create_dir_all(&log_dir)?;
    let mut config = Config::new(log_dir.to_string_lossy());
    config.wal.flush_batch_wait = group_wait;
    let config = Arc::new(config);
    let mut log = RaftLog::<BenchTypes>::open(config)?;
    let mut latencies = Vec::with_capacity(appends as usize);
    let start = Instant::now();
    let mut index = 0;
    while index < appends {
        let at = Instant::now();
        let batch: Vec<_> = (index..(index + per_flush).min(appends))
            .map(|i| ((1, i), payload.to_string()))
            .collect();
        let count = batch.len() as u64;
        log.append(batch)?;
        let (tx, rx) = sync_channel(1);
        log.flush(true, Some(tx))?;
        rx.recv().map_err(io::Error::other)??;
        let each = at.elapsed() / u32::try_from(count).unwrap_or(1);
        latencies.extend(std::iter::repeat_n(each, count as usize));
        index += count;
    }
    Ok(Run {
        latencies,
        took: start.elapsed(),
    })
}

fn report(name: &str, run: &mut Run) {
    run.latencies.sort();
    let at = |q: f64| run.latencies[((run.latencies.len() - 1) as f64 * q) as usize];
    println!(
        "{name:12} {:>9.0} appends/s  p50 {:>7.1} µs  p99 {:>7.1} µs",
        run.latencies.len() as f64 / run.took.as_secs_f64(),
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let payload = "x".repeat(args.bytes);
    println!(
        "{} appends of {} bytes each, {} rounds, in {}",
        args.appends,
        args.bytes,
        args.rounds,
        args.dir.display()
    );
    for round in 0..args.rounds {
        let mut order = vec!["plain", "raft-log", "raft-log 0w", "raft-log x8"];
        if round % 2 == 1 {
            order.reverse();
        }
        for name in order {
            let dir = args.dir.join(format!("round-{round}-{}", name.replace(' ', "")));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            let mut run = match name {
                "plain" => plain(&dir, args.appends, payload.as_bytes())?,
                "raft-log" => raft_log(&dir, args.appends, &payload, 1, None)?,
                "raft-log 0w" => raft_log(&dir, args.appends, &payload, 1, Some(Duration::ZERO))?,
                _ => raft_log(&dir, args.appends, &payload, 8, Some(Duration::ZERO))?,
            };
            report(name, &mut run);
            std::fs::remove_dir_all(&dir)?;
        }
    }
    Ok(())
}
