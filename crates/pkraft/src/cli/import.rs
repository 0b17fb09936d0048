//! `pkraft import`: the packets of an iroh-dns-server store, published into the cluster through
//! a node's admin API (`POST /import`, `pkraft_http::import`), where each is checked as a PUT is
//! and committed through Raft. Nothing is taken on trust from the file: the node verifies every
//! signature; rows that are not a packet for their key are reported here.
//!
//! iroh-dns-server (0.35 to 1.4 at least) keeps its packets in `<data_dir>/signed-packets-1.db`,
//! a redb file whose table `signed-packets-1` maps the 32 key bytes to `last_seen (8 bytes) ‖ key
//! (32) ‖ signature (64) ‖ timestamp (8) ‖ DNS packet`; rows written before 0.35 lack `last_seen`.
//! pkraft's redb reads the file format of iroh-dns-server 1.4's redb 4.1.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::Method;
use hyper::header::CONTENT_TYPE;
use pkraft_http::import::{IMPORT_BATCH_MAX, ImportReport, InvalidRecord, encode_record};
use pkraft_types::payload::{HEADER_LEN, PAYLOAD_LEN_MAX};
use pkraft_types::{KeyBytes, encode_z32_key};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};
use serde::Serialize;

use super::admin::AdminClient;
use super::data::Progress;

/// iroh-dns-server's table of packets.
const IROH_PACKETS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("signed-packets-1");
/// The store's file name in iroh-dns-server's data dir.
pub const IROH_STORE_FILE: &str = "signed-packets-1.db";
/// Bytes of the `last_seen` time iroh-dns-server 0.35 and later put before each packet.
const LAST_SEEN_LEN: usize = 8;
/// Batches sent at once: enough to keep the cluster's write path busy while one batch's answer
/// travels back, few enough that an import leaves most of the publish queue to PUTs.
const BATCHES_IN_FLIGHT: usize = 4;
/// Batches read ahead of the sends (memory: about 600 KB each).
const BATCHES_READ_AHEAD: usize = 8;
/// A batch the cluster takes none of for this long (no leader, the node unreachable) stops the
/// import with an error; what was imported stays, and running the import again finishes it.
const RETRY_FOR: Duration = Duration::from_secs(120);
/// Invalid rows named one by one in the summary; the rest are counted.
const INVALID_SHOWN: usize = 20;

/// What the import did, over all batches.
#[derive(Debug, Default, Serialize)]
pub struct ImportSummary {
    /// Rows in the store.
    pub rows: u64,
    pub imported: u64,
    pub unchanged: u64,
    pub newer_stored: u64,
    pub expired: u64,
    pub invalid: u64,
    /// The first [`INVALID_SHOWN`] invalid rows.
    pub invalid_rows: Vec<InvalidRecord>,
    pub seconds: f64,
}

impl ImportSummary {
    fn add(&mut self, report: ImportReport) {
        self.imported += report.imported;
        self.unchanged += report.unchanged;
        self.newer_stored += report.newer_stored;
        self.expired += report.expired;
        self.invalid += report.invalid.len() as u64;
        let room = INVALID_SHOWN.saturating_sub(self.invalid_rows.len());
        self.invalid_rows
            .extend(report.invalid.into_iter().take(room));
    }

    /// Rows accounted for so far.
    fn done(&self) -> u64 {
        self.imported + self.unchanged + self.newer_stored + self.expired + self.invalid
    }
}

/// `pkraft import`: reads the store at `store` (iroh-dns-server's data dir or the `.db` file)
/// and publishes every packet through the node at `admin`; prints the summary.
pub async fn import(
    admin: String,
    token_file: Option<PathBuf>,
    store: &Path,
    json: bool,
) -> anyhow::Result<()> {
    let client = std::sync::Arc::new(AdminClient {
        admin,
        token: super::read_token(token_file)?,
    });
    let path = store_file(store);
    let started = Instant::now();
    let (batches_tx, mut batches) = tokio::sync::mpsc::channel(BATCHES_READ_AHEAD);
    let reader = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || read_store(&path, &batches_tx))
    };

    let mut summary = ImportSummary::default();
    let mut progress = Progress::new();
    let mut in_flight = tokio::task::JoinSet::new();
    let mut reading = true;
    loop {
        while reading && in_flight.len() < BATCHES_IN_FLIGHT {
            match batches.recv().await {
                Some(Read::Rows(rows)) => summary.rows = rows,
                Some(Read::Batch(batch)) => {
                    let client = client.clone();
                    in_flight.spawn(async move { send_batch(&client, batch).await });
                }
                None => reading = false,
            }
        }
        let Some(sent) = in_flight.join_next().await else {
            break;
        };
        let report = sent.context("a batch's task failed")??;
        summary.add(report);
        let (done, rows) = (summary.done(), summary.rows);
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
        progress.show(|| format!("{done} of {rows} rows ({rate:.0}/s)"));
    }
    progress.done();
    reader
        .await
        .context("the store's reader failed")?
        .with_context(|| format!("reading {}", path.display()))?;
    summary.seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        summary.done() == summary.rows,
        "{} of the store's {} rows were accounted for",
        summary.done(),
        summary.rows
    );
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", format_summary(&path, &summary));
    }
    Ok(())
}

/// iroh-dns-server's data dir holds the store under a fixed name; a file is taken as it is.
fn store_file(store: &Path) -> PathBuf {
    if store.is_dir() {
        store.join(IROH_STORE_FILE)
    } else {
        store.to_path_buf()
    }
}

/// What the reader sends: first the number of rows, then the batches.
enum Read {
    Rows(u64),
    Batch(Batch),
}

/// Up to [`IMPORT_BATCH_MAX`] packets, and the rows among them that are no packet for their key.
struct Batch {
    records: Vec<(KeyBytes, Bytes)>,
    invalid: Vec<InvalidRecord>,
}

/// Reads every row of the store in key order into batches; returns when all are sent or the
/// receiver is gone.
fn read_store(path: &Path, batches: &tokio::sync::mpsc::Sender<Read>) -> anyhow::Result<()> {
    if !path.exists() {
        anyhow::bail!(
            "{} does not exist (give iroh-dns-server's data dir, which holds {IROH_STORE_FILE}, \
             or the file itself)",
            path.display()
        );
    }
    let store = open_store(path)?;
    let read = match &store {
        Opened::AsItIs(db) => db.begin_read(),
        Opened::RepairedCopy { db, .. } => db.begin_read(),
    }
    .context("a read transaction")?;
    let table = read.open_table(IROH_PACKETS).map_err(|e| match e {
        redb::TableError::TableDoesNotExist(_) => anyhow::anyhow!(
            "no table {:?}: not an iroh-dns-server store",
            IROH_PACKETS.name()
        ),
        other => anyhow::Error::new(other).context("opening the packets' table"),
    })?;
    let rows = table.len().context("counting the rows")?;
    if batches.blocking_send(Read::Rows(rows)).is_err() {
        return Ok(());
    }
    let mut batch = Batch::new();
    for row in table.iter().context("reading the rows")? {
        let (key, value) = row.context("reading a row")?;
        let key = *key.value();
        match payload_of_row(&key, value.value()) {
            Ok(payload) => batch.records.push((key, Bytes::copy_from_slice(payload))),
            Err(reason) => batch.invalid.push(InvalidRecord {
                key: encode_z32_key(&key),
                reason,
            }),
        }
        if batch.records.len() == IMPORT_BATCH_MAX {
            let full = std::mem::replace(&mut batch, Batch::new());
            if batches.blocking_send(Read::Batch(full)).is_err() {
                return Ok(());
            }
        }
    }
    if !batch.records.is_empty() || !batch.invalid.is_empty() {
        let _ = batches.blocking_send(Read::Batch(batch));
    }
    Ok(())
}

impl Batch {
    fn new() -> Batch {
        Batch {
            records: Vec::with_capacity(IMPORT_BATCH_MAX),
            invalid: Vec::new(),
        }
    }
}

/// The store, opened without writing to the operator's file.
enum Opened {
    /// Read-only: the file was closed cleanly.
    AsItIs(redb::ReadOnlyDatabase),
    /// A copy in a temporary directory (removed when this is dropped), repaired by redb.
    RepairedCopy {
        db: redb::Database,
        _copy_dir: tempfile::TempDir,
    },
}

/// Opens the store read-only. iroh-dns-server exits without closing its file when it is stopped
/// with SIGTERM (as systemd stops it; only Ctrl-C closes it), and redb reads such a file only
/// after a repair, which writes to it: that is done on a copy in `$TMPDIR`.
fn open_store(path: &Path) -> anyhow::Result<Opened> {
    match redb::ReadOnlyDatabase::open(path) {
        Ok(db) => Ok(Opened::AsItIs(db)),
        Err(redb::DatabaseError::RepairAborted) => {
            let dir = tempfile::Builder::new()
                .prefix("pkraft-import-")
                .tempdir()
                .context("a temporary directory for a repaired copy of the store")?;
            let copy = dir.path().join(IROH_STORE_FILE);
            eprintln!(
                "{} was not closed cleanly (iroh-dns-server stopped with SIGTERM, or copied while \
                 it ran): reading a repaired copy in {}",
                path.display(),
                dir.path().display()
            );
            std::fs::copy(path, &copy).with_context(|| {
                format!(
                    "copying the store to {} (set TMPDIR to a directory with room for it)",
                    copy.display()
                )
            })?;
            let db = redb::Database::open(&copy).map_err(open_error)?;
            Ok(Opened::RepairedCopy { db, _copy_dir: dir })
        }
        Err(e) => Err(open_error(e)),
    }
}

/// Says what to do about a store redb will not open.
fn open_error(error: redb::DatabaseError) -> anyhow::Error {
    match error {
        redb::DatabaseError::DatabaseAlreadyOpen => anyhow::anyhow!(
            "the store is open in another process (iroh-dns-server still running?): stop it, \
             or copy the file while it is stopped and import the copy"
        ),
        other => anyhow::Error::new(other).context("not a redb file pkraft can read"),
    }
}

/// The relay payload (signature ‖ timestamp ‖ DNS packet) in one of iroh-dns-server's rows, in
/// either of its formats; an error says why the row is no packet for `key`.
fn payload_of_row<'a>(key: &KeyBytes, value: &'a [u8]) -> Result<&'a [u8], String> {
    let after_key = |at: usize| {
        value
            .get(at..at + key.len())
            .filter(|stored| *stored == key)
            .and_then(|_| value.get(at + key.len()..))
            .filter(|payload| payload.len() >= HEADER_LEN)
    };
    after_key(LAST_SEEN_LEN)
        .or_else(|| after_key(0))
        .ok_or_else(|| {
            format!(
                "the row ({} bytes) holds no packet for its key in either of iroh-dns-server's \
                 formats",
                value.len()
            )
        })
}

/// Sends one batch, and again the records the cluster could not take yet, until every record has
/// an answer or [`RETRY_FOR`] passes without progress. Returns what became of the records.
async fn send_batch(client: &AdminClient, batch: Batch) -> anyhow::Result<ImportReport> {
    let mut total = ImportReport {
        invalid: batch.invalid,
        ..ImportReport::default()
    };
    // A payload longer than a relay payload can be is refused here: the batch's framing has no
    // room for it.
    let (mut pending, too_long): (Vec<_>, Vec<_>) = batch
        .records
        .into_iter()
        .partition(|(_, payload)| payload.len() <= PAYLOAD_LEN_MAX);
    total
        .invalid
        .extend(too_long.into_iter().map(|(key, payload)| InvalidRecord {
            key: encode_z32_key(&key),
            reason: format!(
                "the payload is {} bytes; a relay payload is at most {PAYLOAD_LEN_MAX}",
                payload.len()
            ),
        }));
    let mut last_progress = Instant::now();
    let mut pause = Duration::from_millis(100);
    while !pending.is_empty() {
        let mut body = Vec::with_capacity(pending.len() * 300);
        for (key, payload) in &pending {
            encode_record(&mut body, key, payload).map_err(|e| anyhow::anyhow!(e))?;
        }
        let why_not = match client.post_bytes("/import", Bytes::from(body)).await {
            Ok(bytes) => {
                let mut report = serde_json::from_slice::<ImportReport>(&bytes)
                    .context("the node's import answer is not a report")?;
                let retry = std::mem::take(&mut report.retry);
                let why_not = format!(
                    "{} of {} records to send again: {}",
                    retry.len(),
                    pending.len(),
                    report.retry_reason.take().unwrap_or_default()
                );
                if report.answered() > 0 {
                    last_progress = Instant::now();
                    pause = Duration::from_millis(100);
                }
                total.add(report);
                pending = retry
                    .iter()
                    .map(|&index| {
                        pending.get(index as usize).cloned().ok_or_else(|| {
                            anyhow::anyhow!(
                                "the node asked to send record {index} of {} again",
                                pending.len()
                            )
                        })
                    })
                    .collect::<anyhow::Result<_>>()?;
                why_not
            }
            Err(AdminCallError::Refused(e)) => return Err(e),
            Err(AdminCallError::Unavailable(e)) => format!("{e:#}"),
        };
        if !pending.is_empty() {
            anyhow::ensure!(
                last_progress.elapsed() < RETRY_FOR,
                "the cluster took no packets for {RETRY_FOR:?}: {why_not}"
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
    Ok(total)
}

/// Why an admin call failed: whether sending it again may help.
pub enum AdminCallError {
    /// No answer, or 502/503/504/429: the node or the cluster may take it later.
    Unavailable(anyhow::Error),
    /// Any other answer (bad token, a refused body): sending it again changes nothing.
    Refused(anyhow::Error),
}

impl AdminClient {
    /// POSTs `body` (`application/octet-stream`) and returns a 2xx answer's body.
    async fn post_bytes(&self, path: &str, body: Bytes) -> Result<Bytes, AdminCallError> {
        let request = self
            .request(Method::POST, path)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(body))
            .map_err(|e| AdminCallError::Refused(e.into()))?;
        let answer = super::http::exchange(request, super::admin::REQUEST_TIMEOUT, 4 << 20)
            .await
            .map_err(|e| {
                AdminCallError::Unavailable(e.context(format!("the admin API at {}", self.admin)))
            })?;
        if answer.status.is_success() {
            return Ok(answer.body);
        }
        let error = anyhow::anyhow!(
            "{} answered {}: {}",
            self.admin,
            answer.status,
            super::admin::error_message(&answer.body)
        );
        match answer.status.as_u16() {
            429 | 502 | 503 | 504 => Err(AdminCallError::Unavailable(error)),
            _ => Err(AdminCallError::Refused(error)),
        }
    }
}

fn format_summary(path: &Path, summary: &ImportSummary) -> String {
    let rate = summary.done() as f64 / summary.seconds.max(1e-3);
    let mut text = format!(
        "{}: {} rows in {:.1} s ({rate:.0}/s)\n  imported:                   {}\n  \
         unchanged (already stored): {}\n  newer packet stored:        {}\n  \
         older than record_max_age:  {}\n  invalid:                    {}\n",
        path.display(),
        summary.rows,
        summary.seconds,
        summary.imported,
        summary.unchanged,
        summary.newer_stored,
        summary.expired,
        summary.invalid,
    );
    for row in &summary.invalid_rows {
        text.push_str(&format!("  invalid {}: {}\n", row.key, row.reason));
    }
    if summary.invalid > summary.invalid_rows.len() as u64 {
        text.push_str(&format!(
            "  ... and {} more invalid\n",
            summary.invalid - summary.invalid_rows.len() as u64
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_row_formats_give_the_payload_and_other_rows_are_named() {
        let key = [9u8; 32];
        let payload = [5u8; HEADER_LEN + 10];
        let mut current = vec![1u8; LAST_SEEN_LEN];
        current.extend_from_slice(&key);
        current.extend_from_slice(&payload);
        assert_eq!(payload_of_row(&key, &current), Ok(&payload[..]));
        let mut before_0_35 = key.to_vec();
        before_0_35.extend_from_slice(&payload);
        assert_eq!(payload_of_row(&key, &before_0_35), Ok(&payload[..]));
        // Another key's packet, a row cut short, and junk are no packet for this key.
        assert!(payload_of_row(&[8; 32], &current).is_err());
        assert!(payload_of_row(&key, &current[..LAST_SEEN_LEN + 32 + HEADER_LEN - 1]).is_err());
        assert!(payload_of_row(&key, b"junk").is_err());
    }
}
