//! Certificates reloaded from their files without a restart, for an operator whose certificates
//! are renewed by certbot or another ACME client: the `[https]` listener's, and the peer
//! network's (`[cluster.tls]`: certificate, key and CA, `pkraft_raft::peer::tls::PeerTls`).
//!
//! A listener's TLS configuration asks a [`ReloadingCertificate`] (or `PeerTls`) for the
//! certificate at each handshake; a reload swaps in the new certificate and key whole (one atomic
//! pointer store), so the handshakes after it present the new certificate, connections already
//! open keep theirs, and no handshake sees half of a pair. The [`CertificateReloader`] loads the files again when
//! they change (checked every `reload_interval`) and on SIGHUP, the signal certbot's deploy hooks
//! usually send. New files that cannot be used (unreadable, not PEM, a key of another
//! certificate) are refused with a warning and `pkraft_tls_certificate_reloads_total{result=
//! "error"}`, and the certificate loaded before keeps serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use pkraft_raft::peer::tls::{PeerTls, PeerTlsSettings};

/// The certificate a listener presents: whatever was loaded last.
pub struct ReloadingCertificate {
    current: ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for ReloadingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCertificate")
            .finish_non_exhaustive()
    }
}

impl ReloadingCertificate {
    pub(crate) fn new(first: CertifiedKey) -> ReloadingCertificate {
        ReloadingCertificate {
            current: ArcSwap::from_pointee(first),
        }
    }

    /// Presents `key` from the next handshake on.
    pub(crate) fn present(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }

    /// The certificate presented now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Certificate files a [`CertificateReloader`] watches, and what loading them does.
pub trait CertificateFiles: Send + Sync {
    /// The files; the first is the certificate (named in logs).
    fn paths(&self) -> Vec<PathBuf>;
    /// Loads the files and, if they are usable, presents them from the next handshake on;
    /// returns the certificate now presented. Unusable files change nothing. Blocking file I/O.
    fn load(&self) -> anyhow::Result<Arc<CertifiedKey>>;
}

/// The peer network's certificate, key and CA (`[cluster.tls]`).
pub struct PeerFiles {
    pub settings: PeerTlsSettings,
    pub tls: Arc<PeerTls>,
}

impl CertificateFiles for PeerFiles {
    fn paths(&self) -> Vec<PathBuf> {
        self.settings.files().map(Path::to_path_buf).to_vec()
    }

    fn load(&self) -> anyhow::Result<Arc<CertifiedKey>> {
        Ok(self.tls.reload(&self.settings)?)
    }
}

/// What the metadata of the watched files said when they were last looked at: a renewal
/// changes the modification time, the size or (a file replaced by a rename, or a symlink moved
/// to a new file as certbot does) the inode. `None` for a file that could not be read, so that
/// its coming back counts as a change too.
type FileStamps = Vec<Option<FileStamp>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    device: u64,
    inode: u64,
}

fn file_stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt as _;
    // Follows symlinks: certbot's `live/` names are links to the newest files in `archive/`.
    let metadata = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: metadata.modified().ok(),
        len: metadata.len(),
        device: metadata.dev(),
        inode: metadata.ino(),
    })
}

/// The files' state as the reloader last saw them.
#[derive(Debug, Default)]
struct Watch {
    /// The stamps of the files last loaded or refused: no reload until they change.
    tried: Option<FileStamps>,
    /// Stamps that differ from `tried`, seen at the last check: loaded if the next check sees
    /// them again (the files have stopped changing).
    changed: Option<FileStamps>,
}

/// Loads a listener's certificate files again when they change or when asked (SIGHUP).
pub struct CertificateReloader {
    /// Which listener, for logs and metrics: `https` or `peer`.
    listener: &'static str,
    files: Box<dyn CertificateFiles>,
    reload_interval: Duration,
    metrics: CertificateMetrics,
    watch: Mutex<Watch>,
}

impl CertificateReloader {
    /// Watches `files`, whose certificate `current` was just loaded, every `reload_interval`.
    pub fn new(
        listener: &'static str,
        files: Box<dyn CertificateFiles>,
        current: &CertifiedKey,
        reload_interval: Duration,
        metrics: CertificateMetrics,
    ) -> CertificateReloader {
        let stamps = stamps(&files.paths());
        // Both series exist from the start, so that `increase()` sees the first error.
        for result in ["ok", "error"] {
            metrics.reloads.with_label_values(&[listener, result]);
        }
        metrics.loaded(listener, current);
        CertificateReloader {
            listener,
            files,
            reload_interval,
            metrics,
            watch: Mutex::new(Watch {
                tried: Some(stamps),
                changed: None,
            }),
        }
    }

    pub fn reload_interval(&self) -> Duration {
        self.reload_interval
    }

    /// One periodic check: loads the files if they changed since they were last tried and have
    /// stayed the same since the check before. Blocking file I/O.
    pub fn check(&self) {
        let stamps = stamps(&self.files.paths());
        {
            let mut watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
            if watch.tried.as_ref() == Some(&stamps) {
                watch.changed = None;
                return;
            }
            if watch.changed.as_ref() != Some(&stamps) {
                watch.changed = Some(stamps);
                return;
            }
            *watch = Watch {
                tried: Some(stamps),
                changed: None,
            };
        }
        self.load("the files changed");
    }

    /// Loads the files now, changed or not (SIGHUP). Blocking file I/O.
    pub fn reload_now(&self, reason: &str) {
        let stamps = stamps(&self.files.paths());
        *self.watch.lock().unwrap_or_else(|e| e.into_inner()) = Watch {
            tried: Some(stamps),
            changed: None,
        };
        self.load(reason);
    }

    fn load(&self, reason: &str) {
        let paths = self.files.paths();
        let cert = paths.first().map(|path| path.display().to_string());
        match self.files.load() {
            Ok(key) => {
                self.metrics.loaded(self.listener, &key);
                self.metrics.count(self.listener, "ok");
                tracing::info!(
                    listener = self.listener,
                    cert,
                    reason,
                    "certificate reloaded"
                );
            }
            Err(error) => {
                self.metrics.count(self.listener, "error");
                tracing::warn!(
                    listener = self.listener,
                    cert,
                    reason,
                    error = format!("{error:#}"),
                    "new certificate refused; the one loaded before keeps serving"
                );
            }
        }
    }
}

fn stamps(paths: &[PathBuf]) -> FileStamps {
    paths.iter().map(|path| file_stamp(path)).collect()
}

/// The certificate checks' name in `pkraft_task_panics_total{task}`.
pub const RELOAD_TASK: &str = "certificate-reload";

/// Checks the files every `reload_interval` until the returned task is aborted (supervised:
/// a panic is logged and counted, and the checks start again).
pub fn spawn_checks(reloader: Arc<CertificateReloader>) -> tokio::task::JoinHandle<()> {
    pkraft_tasks::spawn(RELOAD_TASK, move || check_files(reloader.clone()))
}

async fn check_files(reloader: Arc<CertificateReloader>) {
    {
        let mut ticks = tokio::time::interval(reloader.reload_interval());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is now; the files were loaded a moment ago.
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let reloader = reloader.clone();
            // Off the runtime's workers: a certificate on a hung network mount must not stall
            // the listeners.
            if let Err(error) = tokio::task::spawn_blocking(move || reloader.check()).await {
                tracing::error!(%error, "certificate check failed");
            }
        }
    }
}

/// `pkraft_tls_certificate_*`: reloads and the expiry of what is served, per listener.
#[derive(Clone)]
pub struct CertificateMetrics {
    reloads: IntCounterVec,
    expiry: IntGaugeVec,
}

impl CertificateMetrics {
    pub fn new() -> prometheus::Result<CertificateMetrics> {
        Ok(CertificateMetrics {
            reloads: IntCounterVec::new(
                Opts::new(
                    "pkraft_tls_certificate_reloads_total",
                    "Certificate reloads after a file change or SIGHUP, by listener and result \
                     (ok, or error: the files were refused and the old certificate kept)",
                ),
                &["listener", "result"],
            )?,
            expiry: IntGaugeVec::new(
                Opts::new(
                    "pkraft_tls_certificate_expiry_timestamp_seconds",
                    "When the certificate a listener serves expires (its notAfter), in Unix \
                     seconds",
                ),
                &["listener"],
            )?,
        })
    }

    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.reloads.clone()))?;
        registry.register(Box::new(self.expiry.clone()))
    }

    fn count(&self, listener: &str, result: &str) {
        self.reloads.with_label_values(&[listener, result]).inc();
    }

    /// Exports the expiry of `key`, the certificate `listener` serves from now on.
    fn loaded(&self, listener: &str, key: &CertifiedKey) {
        match key.end_entity_cert() {
            Ok(leaf) => self.served(listener, leaf),
            Err(_) => self.unknown_expiry(listener),
        }
    }

    /// Exports the expiry of `leaf`, the certificate `listener` serves from now on.
    pub fn served(&self, listener: &str, leaf: &[u8]) {
        match not_after(leaf) {
            Some(expiry) => self.expiry.with_label_values(&[listener]).set(expiry),
            None => self.unknown_expiry(listener),
        }
    }

    fn unknown_expiry(&self, listener: &str) {
        // Not the expiry of the certificate served before.
        let _ = self.expiry.remove_label_values(&[listener]);
        tracing::warn!(
            listener,
            "the certificate's expiry could not be read; \
             pkraft_tls_certificate_expiry_timestamp_seconds is not exported"
        );
    }
}

/// The leaf certificate's notAfter in Unix seconds.
fn not_after(der: &[u8]) -> Option<i64> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(certificate.validity().not_after.timestamp())
}
