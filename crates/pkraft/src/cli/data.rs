//! `pkraft backup`, `restore`, `verify` and `downgrade`: the files and what the commands print.
//! The work is in `pkraft_raft::backup`; nothing here holds a backup in memory.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::admin::AdminClient;

/// `pkraft backup`: streams the node's backup into `OUT.tmp`, checks the whole file (checksum,
/// every record), fsyncs it and renames it to `OUT`. Memory stays flat whatever the size.
pub async fn backup(admin: String, token_file: Option<PathBuf>, out: &Path) -> anyhow::Result<()> {
    let token = super::read_token(token_file)?;
    let client = AdminClient { admin, token };
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut writer = std::io::BufWriter::with_capacity(256 * 1024, file);
    let mut progress = Progress::new();
    let received = client
        .backup_into(&mut writer, |bytes| {
            progress.show(|| format!("received {:.1} MiB", bytes as f64 / (1024.0 * 1024.0)))
        })
        .await;
    progress.done();
    let written = received.and_then(|bytes| {
        writer.flush()?;
        writer.get_ref().sync_all()?;
        Ok(bytes)
    });
    let checked = written.and_then(|bytes| {
        let (header, _) = pkraft_raft::backup::check_backup_file(&tmp)
            .context("the node's answer does not check out")?;
        Ok((bytes, header))
    });
    let (bytes, header) = match checked {
        Ok(checked) => checked,
        Err(e) => {
            // Never leave a torn file under a name that looks like a backup.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
    if let Some(dir) = out.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("cannot sync {}", dir.display()))?;
    }
    println!(
        "wrote {} ({bytes} bytes): {} records from node {} at index {}",
        out.display(),
        header.records,
        header.source_node,
        header
            .applied_index
            .map_or_else(|| "none".to_string(), |index| index.to_string())
    );
    Ok(())
}

/// A progress line on stderr, rewritten in place at most a few times a second; silent when
/// stderr is not a terminal (scripts, logs). `pkraft backup` and `pkraft import` show one.
pub(super) struct Progress {
    terminal: bool,
    last: Option<std::time::Instant>,
    shown: bool,
}

impl Progress {
    pub(super) fn new() -> Progress {
        use std::io::IsTerminal;
        Progress {
            terminal: std::io::stderr().is_terminal(),
            last: None,
            shown: false,
        }
    }

    /// Shows the line `text` makes, unless one was shown less than 250 ms ago.
    pub(super) fn show(&mut self, text: impl FnOnce() -> String) {
        if !self.terminal
            || self
                .last
                .is_some_and(|last| last.elapsed().as_millis() < 250)
        {
            return;
        }
        self.last = Some(std::time::Instant::now());
        self.shown = true;
        eprint!("\r{}", text());
    }

    /// Ends the line, if one was shown.
    pub(super) fn done(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

/// `pkraft restore`: seeds `data_dir` from the backup file `input` and says what it restored.
pub async fn restore(
    data_dir: &Path,
    node_id: u64,
    advertise: &str,
    input: &Path,
) -> anyhow::Result<()> {
    eprintln!(
        "checking and restoring {} (every record is read and verified)",
        input.display()
    );
    let restored = pkraft_raft::backup::restore(data_dir, node_id, advertise, input)
        .await
        .with_context(|| format!("restore into {}", data_dir.display()))?;
    println!(
        "restored {} records (backup of node {} at index {}) into {} as node {node_id}",
        restored.records,
        restored.header.source_node,
        restored
            .header
            .applied_index
            .map_or_else(|| "none".to_string(), |index| index.to_string()),
        data_dir.display()
    );
    Ok(())
}

/// `pkraft verify`: the report as text or JSON; an error (exit status 1) when it found problems.
pub fn verify(data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let report = pkraft_raft::backup::verify(data_dir)
        .with_context(|| format!("verify {}", data_dir.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", format_verification(&report));
    }
    if report.problems.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} problem(s) found in {}",
            report.problems.len(),
            data_dir.display()
        )
    }
}

/// `pkraft downgrade`: the data dir rewritten in the formats the previous minor release reads
/// (`pkraft_raft::backup::downgrade`); says what it did.
pub fn downgrade(data_dir: &Path) -> anyhow::Result<()> {
    let done = pkraft_raft::backup::downgrade(data_dir).with_context(|| {
        format!(
            "downgrade {} (stop the node first: a running node holds its state open)",
            data_dir.display()
        )
    })?;
    match done {
        pkraft_state::Downgraded::Rewritten { packets } => println!(
            "{}: state.redb rewritten in state schema {} from {} ({packets} packets indexed); \
             the previous release can start on this data dir",
            data_dir.display(),
            pkraft_state::PREVIOUS_SCHEMA_VERSION,
            pkraft_state::SCHEMA_VERSION,
        ),
        pkraft_state::Downgraded::AlreadyPrevious => println!(
            "{}: state.redb already in state schema {}; nothing to do",
            data_dir.display(),
            pkraft_state::PREVIOUS_SCHEMA_VERSION,
        ),
    }
    Ok(())
}

fn format_verification(report: &pkraft_raft::backup::Verification) -> String {
    let show = |index: Option<u64>| index.map_or_else(|| "none".to_string(), |i| i.to_string());
    let mut text = format!(
        "node id: {}\nlog: last index {}, purged up to {}\nstate: applied up to {}, \
         {} packets, {} expiry rows, {} compiled answer rows\nsnapshot: up to {}\n",
        show(report.node_id),
        show(report.last_log_index),
        show(report.purged_index),
        show(report.applied_index),
        report.packets,
        report.expiry_rows,
        report.answer_rows,
        show(report.snapshot_index),
    );
    if report.problems.is_empty() {
        text.push_str("ok\n");
    }
    for problem in &report.problems {
        text.push_str(&format!("problem: {problem}\n"));
    }
    text
}
