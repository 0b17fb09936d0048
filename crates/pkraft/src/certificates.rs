//! Certificates reloaded from their files without a restart, for an operator whose certificates
//! are renewed by certbot or another ACME client.
//!
//! A listener's TLS configuration asks a [`ReloadingCertificate`] for the certificate at each
//! handshake; a reload swaps in the new certificate and key whole (one atomic pointer store), so
//! the handshakes after it present the new certificate, connections already open keep theirs,
//! and no handshake sees half of a pair. The [`CertificateReloader`] loads the files again when
//! they change (checked every `reload_interval`) and on SIGHUP, the signal certbot's deploy hooks
//! usually send. New files that cannot be used (unreadable, not PEM, a key of another
//! certificate) are refused with a warning and `pkraft_tls_certificate_reloads_total{result=
//! "error"}`, and the certificate loaded before keeps serving.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::https::HttpsSettings;

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

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// What the metadata of the certificate and key files said when they were last looked at: a
/// renewal changes the modification time, the size or (a file replaced by a rename, or a
/// symlink moved to a new file as certbot does) the inode. `None` for a file that could not be
/// read, so that its coming back counts as a change too.
type FileStamps = [Option<FileStamp>; 2];

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
    /// Which listener, for logs and metrics: `https`.
    listener: &'static str,
    settings: HttpsSettings,
    certificate: Arc<ReloadingCertificate>,
    metrics: CertificateMetrics,
    watch: Mutex<Watch>,
}

impl CertificateReloader {
    /// Loads the files for the first time; errors name the field.
    pub fn new(
        listener: &'static str,
        settings: &HttpsSettings,
        metrics: CertificateMetrics,
    ) -> anyhow::Result<CertificateReloader> {
        let stamps = Self::stamps(settings);
        let key = settings.certified_key()?;
        // Both series exist from the start, so that `increase()` sees the first error.
        for result in ["ok", "error"] {
            metrics.reloads.with_label_values(&[listener, result]);
        }
        metrics.loaded(listener, &key);
        Ok(CertificateReloader {
            listener,
            settings: settings.clone(),
            certificate: Arc::new(ReloadingCertificate {
                current: ArcSwap::from_pointee(key),
            }),
            metrics,
            watch: Mutex::new(Watch {
                tried: Some(stamps),
                changed: None,
            }),
        })
    }

    /// What the listener's TLS configuration asks for the certificate.
    pub fn certificate(&self) -> Arc<ReloadingCertificate> {
        self.certificate.clone()
    }

    pub fn reload_interval(&self) -> Duration {
        self.settings.reload_interval
    }

    fn stamps(settings: &HttpsSettings) -> FileStamps {
        [file_stamp(&settings.cert), file_stamp(&settings.key)]
    }

    /// One periodic check: loads the files if they changed since they were last tried and have
    /// stayed the same since the check before. Blocking file I/O.
    pub fn check(&self) {
        let stamps = Self::stamps(&self.settings);
        {
            let mut watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
            if watch.tried == Some(stamps) {
                watch.changed = None;
                return;
            }
            if watch.changed != Some(stamps) {
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
        let stamps = Self::stamps(&self.settings);
        *self.watch.lock().unwrap_or_else(|e| e.into_inner()) = Watch {
            tried: Some(stamps),
            changed: None,
        };
        self.load(reason);
    }

    fn load(&self, reason: &str) {
        match self.settings.certified_key() {
            Ok(key) => {
                self.metrics.loaded(self.listener, &key);
                self.certificate.current.store(Arc::new(key));
                self.metrics.count(self.listener, "ok");
                tracing::info!(
                    listener = self.listener,
                    cert = %self.settings.cert.display(),
                    reason,
                    "certificate reloaded"
                );
            }
            Err(error) => {
                self.metrics.count(self.listener, "error");
                tracing::warn!(
                    listener = self.listener,
                    cert = %self.settings.cert.display(),
                    reason,
                    error = format!("{error:#}"),
                    "new certificate refused; the one loaded before keeps serving"
                );
            }
        }
    }
}

/// Checks the files every `reload_interval` until the returned task is aborted.
pub fn spawn_checks(reloader: Arc<CertificateReloader>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
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
    })
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
        match key.end_entity_cert().ok().and_then(|der| not_after(der)) {
            Some(expiry) => self.expiry.with_label_values(&[listener]).set(expiry),
            None => {
                // Not the expiry of the certificate served before.
                let _ = self.expiry.remove_label_values(&[listener]);
                tracing::warn!(
                    listener,
                    "the certificate's expiry could not be read; \
                     pkraft_tls_certificate_expiry_timestamp_seconds is not exported"
                );
            }
        }
    }
}

/// The leaf certificate's notAfter in Unix seconds.
fn not_after(der: &[u8]) -> Option<i64> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(certificate.validity().not_after.timestamp())
}
