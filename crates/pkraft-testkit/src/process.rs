//! A running `pkraft` node process on loopback port 0: started, its stderr drained by a thread
//! into memory and/or a log file, ready once it logs the addresses it bound. Used by the
//! integration tests (`TestServer`) and the chaos harness; the scripts' nodes, which need fixed
//! ports, are started by `pkraft-bench cluster`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::node::{LISTENING, LOOPBACK_PORT_0_ARGS, Listening};
use crate::waits::POLL;

/// Where a node's stderr goes.
pub enum LogTo {
    /// Kept in memory, for [`NodeProcess::log`] (tests: short-lived, read on failure).
    Memory,
    /// Appended to this file only (long chaos runs: the memory would grow for the whole run).
    File(File),
}

/// A started node.
pub struct NodeProcess {
    child: Child,
    listening: Listening,
    log: NodeLog,
}

/// What a node logged (with [`LogTo::Memory`]); still readable after the process is gone.
#[derive(Clone, Default)]
pub struct NodeLog(Arc<Mutex<Vec<String>>>);

impl NodeLog {
    /// Every line so far, newline-separated.
    pub fn text(&self) -> String {
        joined(&self.0)
    }
}

impl NodeProcess {
    /// Starts `command` (`pkraft serve|dev …`, without listen addresses or data dir) on
    /// `data_dir` with every listener on loopback port 0, and waits up to `timeout` until it
    /// logs the addresses it bound. On failure the error holds what the process logged (when
    /// kept in memory).
    pub fn start(
        mut command: Command,
        data_dir: &Path,
        log_to: LogTo,
        timeout: Duration,
    ) -> Result<NodeProcess, String> {
        command
            .arg("--data-dir")
            .arg(data_dir)
            .args(LOOPBACK_PORT_0_ARGS);
        NodeProcess::start_configured(command, log_to, timeout)
    }

    /// Starts `command` as it is (its config names the data dir and listen addresses, as for a
    /// node in a network namespace of its own) and waits up to `timeout` until it logs the
    /// addresses it bound.
    pub fn start_configured(
        mut command: Command,
        log_to: LogTo,
        timeout: Duration,
    ) -> Result<NodeProcess, String> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {:?}: {e}", command.get_program()))?;
        let Some(stderr) = child.stderr.take() else {
            return Err("stderr is not piped".to_string());
        };
        let log = NodeLog::default();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread_log = log.0.clone();
        // Drains stderr for the life of the process so the pipe never fills and blocks it.
        std::thread::spawn(move || {
            let mut file = match log_to {
                LogTo::Memory => None,
                LogTo::File(file) => Some(file),
            };
            for line in lines_of(stderr) {
                let ready = line.contains(LISTENING).then(|| line.clone());
                // Kept before readiness is reported, so the log has the line once `start`
                // returns.
                match file.as_mut() {
                    Some(file) => {
                        let _ = writeln!(file, "{line}");
                    }
                    None => {
                        if let Ok(mut lines) = thread_log.lock() {
                            lines.push(line);
                        }
                    }
                }
                if let Some(ready) = ready {
                    let _ = ready_tx.send(ready);
                }
            }
        });
        let line = match ready_rx.recv_timeout(timeout) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stderr closed: the process is gone, or going (bounded: killed if it lingers).
                let status = wait_or_kill(&mut child, Duration::from_secs(5));
                return Err(format!(
                    "exited ({status}) before listening:\n{}",
                    log.text()
                ));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "did not listen within {timeout:?}:\n{}",
                    log.text()
                ));
            }
        };
        let Some(listening) = Listening::parse(&line) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no listen addresses in {line:?}"));
        };
        Ok(NodeProcess {
            child,
            listening,
            log,
        })
    }

    /// The addresses it listens on.
    pub fn listening(&self) -> Listening {
        self.listening
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged (with [`LogTo::Memory`]; empty otherwise), also once it is gone.
    pub fn log(&self) -> NodeLog {
        self.log.clone()
    }

    /// SIGKILL and reap: no chance to flush or say goodbye.
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill()?;
        self.child.wait().map(|_| ())
    }

    /// Sends `signal` (`-TERM`, `-INT`, `-STOP`, `-CONT`, …) with kill(1).
    pub fn signal(&self, signal: &str) -> std::io::Result<()> {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("kill {signal} failed")))
        }
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits up to `timeout` for it to exit; `None` if it still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_child(&mut self.child, timeout)
    }
}

/// Polls `child` until it exits, at most `timeout`; `None` if it still runs.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Every line `stderr` gives until it closes. A line that is not UTF-8 is kept, lossily, and a
/// read error ends the lines with one saying so: `BufRead::lines` would end them silently at
/// either, and a test waiting for a later line would blame the node.
fn lines_of(stderr: impl Read) -> impl Iterator<Item = String> {
    let mut reader = BufReader::new(stderr);
    // After a read error: the line saying so, still to give (then nothing more).
    let mut failure: Option<Option<String>> = None;
    std::iter::from_fn(move || {
        if let Some(said) = &mut failure {
            return said.take();
        }
        let mut bytes = Vec::new();
        let read = reader.read_until(b'\n', &mut bytes);
        if let Err(e) = read {
            let said = format!("[harness] reading the process's stderr failed: {e}");
            if bytes.is_empty() {
                failure = Some(None);
                return Some(said);
            }
            // The start of a line read before the error comes first.
            failure = Some(Some(said));
        } else if bytes.is_empty() {
            return None;
        }
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        Some(String::from_utf8_lossy(&bytes).into_owned())
    })
}

fn joined(log: &Mutex<Vec<String>>) -> String {
    log.lock().map(|lines| lines.join("\n")).unwrap_or_default()
}

/// The exit status of `child` within `timeout`, else of its SIGKILL.
fn wait_or_kill(child: &mut Child, timeout: Duration) -> String {
    if let Some(status) = wait_child(child, timeout) {
        return status.to_string();
    }
    let _ = child.kill();
    child.wait().map(|s| s.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that gives `data`, then fails.
    struct FailsAfter(std::io::Cursor<Vec<u8>>);

    impl Read for FailsAfter {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(std::io::Error::other("gone")),
                n => Ok(n),
            }
        }
    }

    #[test]
    fn lines_after_one_that_is_not_utf8_are_kept_and_a_read_error_is_said() {
        let data = b"first\n\xff\xfe broken\nthird\nlast without newline".to_vec();
        let lines: Vec<String> = lines_of(std::io::Cursor::new(data.clone())).collect();
        assert_eq!(
            lines,
            [
                "first",
                "\u{fffd}\u{fffd} broken",
                "third",
                "last without newline"
            ]
        );
        let lines: Vec<String> = lines_of(FailsAfter(std::io::Cursor::new(data))).collect();
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert!(lines[4].contains("reading the process's stderr failed: gone"));
    }
}
