//! The recorded history: every operation a client ran, with when it was invoked and when its
//! answer arrived (microseconds since the run started, one monotonic clock for all clients), the
//! node it asked, and what it got back. Saved as JSON lines; `pkraft-chaos check` reads it back.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A packet's version: its signed timestamp in microseconds. The harness gives every PUT of a
/// key its own version, so a version names one packet.
pub type Version = u64;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Op {
    /// Which client task ran it.
    pub client: u32,
    /// Index of the key in the run's key set.
    pub key: usize,
    /// The node asked.
    pub node: u64,
    /// How many times that node had been started when the operation was invoked (1 = first
    /// process). Reads of one node are compared whatever the process; this says in the report
    /// whether a step backwards crossed a restart.
    pub incarnation: u32,
    pub invoke_us: u64,
    pub complete_us: u64,
    pub kind: OpKind,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum OpKind {
    /// `PUT /pkarr/{key}` of the packet with this version.
    Put {
        version: Version,
        outcome: PutOutcome,
    },
    /// `GET /pkarr/{key}?consistency=linearizable`.
    LinearizableGet(ReadOutcome),
    /// `GET /pkarr/{key}` (the node's own replica).
    StaleGet(ReadOutcome),
    /// A TXT query over UDP for the key's record (the node's own replica).
    Dns(ReadOutcome),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum PutOutcome {
    /// 204: committed.
    Stored,
    /// 409: a newer packet was committed first; this one was not stored.
    Conflict,
    /// 503, a timeout or a connection error: it may or may not have been committed.
    Unknown(String),
    /// Any other answer; the contract has no such case, so the checker reports it.
    Unexpected(String),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ReadOutcome {
    /// A packet with this version. `matches_proposed` is false when its bytes are not exactly
    /// the payload the harness PUT for that version (or no PUT of that version was started).
    Found {
        version: Version,
        matches_proposed: bool,
    },
    /// 404 / NXDOMAIN: nothing stored for the key.
    NotFound,
    /// 503, SERVFAIL, a timeout or a connection error: no information.
    Failed(String),
    /// An answer outside the contract (a bad status, a malformed packet or DNS answer).
    Unexpected(String),
}

impl ReadOutcome {
    /// The version read, with "nothing stored" as 0 (every real version is larger), or None
    /// when the read gave no information.
    pub fn observed(&self) -> Option<Version> {
        match self {
            ReadOutcome::Found { version, .. } => Some(*version),
            ReadOutcome::NotFound => Some(0),
            ReadOutcome::Failed(_) | ReadOutcome::Unexpected(_) => None,
        }
    }
}

impl Op {
    pub fn read_outcome(&self) -> Option<&ReadOutcome> {
        match &self.kind {
            OpKind::Put { .. } => None,
            OpKind::LinearizableGet(r) | OpKind::StaleGet(r) | OpKind::Dns(r) => Some(r),
        }
    }

    /// A short name of the operation kind, for counts.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            OpKind::Put { .. } => "put",
            OpKind::LinearizableGet(_) => "linearizable_get",
            OpKind::StaleGet(_) => "stale_get",
            OpKind::Dns(_) => "dns",
        }
    }
}

pub fn save(path: &Path, ops: &[Op]) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for op in ops {
        serde_json::to_writer(&mut out, op)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

pub fn load(path: &Path) -> anyhow::Result<Vec<Op>> {
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    let mut ops = Vec::new();
    for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), number + 1))?;
        ops.push(op);
    }
    Ok(ops)
}
