//! [`Credentials`]: the current TLS material, swapped atomically when its
//! files change.

use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use mesh_core::{ConfigError, EventBus, MeshEvent};
use tokio_rustls::rustls::crypto::CryptoProvider;

use crate::error::TlsError;
use crate::material::{Material, PemSource};
use crate::metrics::TlsMetrics;

/// The TLS material a client or server hands out in handshakes, shared by
/// every connector and acceptor built from it.
///
/// Handshakes read the current [`Material`] lock-free. With
/// [`Credentials::watch`], the files are checked every interval; a change
/// (an edit in place, or a rename or symlink swap as Kubernetes secret
/// volumes do) is loaded and checked, then used by new handshakes while
/// established connections carry on. Material that fails the checks is
/// refused with [`MeshEvent::CertificateRotationRejected`] and the old
/// material stays in use. Files that do not fit together yet (the
/// certificate written, the key not yet) are checked again at the next
/// interval and refused only if they stay that way for a second: see
/// [`Credentials::reload`].
///
/// ```no_run
/// use std::time::{Duration, Instant};
/// use mesh_tls::{Credentials, PemSource};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), mesh_tls::TlsError> {
/// let credentials = Credentials::load(PemSource::files(
///     "/etc/tls/tls.crt",
///     "/etc/tls/tls.key",
///     "/etc/tls/ca.crt",
/// ))?;
/// credentials.watch(Duration::from_millis(250))?;
/// # Ok(()) }
/// ```
///
/// `Debug` shows the source's paths (or sizes, for PEM in memory) and the
/// identity in use, never the key.
#[derive(Clone)]
pub struct Credentials {
    inner: Arc<Inner>,
}

struct Inner {
    source: PemSource,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<Material>,
    events: Mutex<Option<EventBus>>,
    metrics: TlsMetrics,
    /// File stamps of the material in use (or last refused), so a refused
    /// change is not retried until the files change again. Held across a
    /// whole reload, so two reloads cannot store out of order.
    stamps: Mutex<Vec<Option<Stamp>>>,
    /// Stamps of files refused only because their certificate is not valid
    /// yet: retried at every check, reported once.
    waiting: Mutex<Option<Vec<Option<Stamp>>>>,
    /// Stamps of files refused in a way a rotation caught mid-write
    /// explains (a key that is not the certificate's), and when they were
    /// first seen: retried until they settle, reported only then.
    unsettled: Mutex<Option<(Vec<Option<Stamp>>, Instant)>>,
    watcher: Mutex<Option<tokio::task::AbortHandle>>,
}

/// How long files refused in a way a rotation caught mid-write explains
/// (the certificate written, the key not yet) must stay unchanged before
/// the refusal is reported: a writer that is not atomic finishes within
/// it, and the next check then finds a matching pair.
pub(crate) const ROTATION_SETTLE: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let watching = self
            .inner
            .watcher
            .lock()
            .map(|w| w.is_some())
            .unwrap_or(false);
        f.debug_struct("Credentials")
            .field("source", &self.inner.source)
            .field("current", &self.current())
            .field("watching", &watching)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(Some(task)) = self.watcher.get_mut().map(Option::take) {
            task.abort();
        }
    }
}

impl Credentials {
    /// Loads and checks material from `source`, with rustls's `ring`
    /// crypto provider.
    pub fn load(source: PemSource) -> Result<Self, TlsError> {
        Self::load_with_provider(
            source,
            Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()),
        )
    }

    /// Loads with a given crypto provider.
    pub fn load_with_provider(
        source: PemSource,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let stamps = stamps(&source.paths());
        let material = Material::load(&source, &provider)?;
        let metrics = TlsMetrics::default();
        metrics.set_not_after(material.not_after_unix());
        Ok(Credentials {
            inner: Arc::new(Inner {
                source,
                provider,
                current: ArcSwap::from_pointee(material),
                events: Mutex::new(None),
                metrics,
                stamps: Mutex::new(stamps),
                waiting: Mutex::new(None),
                unsettled: Mutex::new(None),
                watcher: Mutex::new(None),
            }),
        })
    }

    /// Publishes rotations and handshake rejections to `bus`.
    pub fn with_events(self, bus: EventBus) -> Self {
        if let Ok(mut events) = self.inner.events.lock() {
            *events = Some(bus);
        }
        self
    }

    /// The material in use now.
    pub fn current(&self) -> Arc<Material> {
        self.inner.current.load_full()
    }

    /// Handshake and rotation counters, shared by everything built from
    /// these credentials.
    pub fn metrics(&self) -> &TlsMetrics {
        &self.inner.metrics
    }

    pub(crate) fn provider(&self) -> &Arc<CryptoProvider> {
        &self.inner.provider
    }

    pub(crate) fn publish(&self, event: MeshEvent) {
        if let Ok(events) = self.inner.events.lock() {
            if let Some(bus) = events.as_ref() {
                bus.publish(event);
            }
        }
    }

    /// Reads the source again now. `Ok(true)` when new material is in
    /// use, `Ok(false)` when the files have not changed since the material
    /// in use (or the last refused) was read; an error when they changed
    /// and the new material was refused (the old stays in use). A
    /// certificate refused only because it is not valid yet is retried on
    /// every call until it is, and reported once.
    ///
    /// Files that do not fit together in a way a rotation caught halfway
    /// explains (a key that is not the certificate's because only the
    /// certificate has been written yet; an empty, truncated or missing
    /// file) are returned as an error but not reported: they are read
    /// again at the next call, and reported (event, metric) only once they
    /// have stayed unchanged and unfit for a settle delay (one second), so
    /// a writer that is not atomic causes no spurious refusal.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let paths = self.inner.source.paths();
        if paths.is_empty() {
            // PEM held in memory never changes.
            return Ok(false);
        }
        let Ok(mut seen) = self.inner.stamps.lock() else {
            return Ok(false);
        };
        let now = stamps(&paths);
        if *seen == now {
            return Ok(false);
        }
        // The files changed: a rotation (or a half-written one), in a root
        // span of its own (`mesh.tls.rotate`), not the handshake's child.
        // Its outcome is recorded where the reload decides it, so a
        // half-written rotation that is checked again is not a refusal.
        let span = tracing::info_span!(
            parent: None,
            "mesh.tls.rotate",
            mesh.tls.identity = tracing::field::Empty,
            mesh.tls.not_after = tracing::field::Empty,
            mesh.outcome = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let _entered = span.enter();
        let loaded = Material::load(&self.inner.source, &self.inner.provider);
        let outcome = |outcome: &'static str, error: Option<&TlsError>| {
            if !span.is_disabled() {
                span.record("mesh.outcome", outcome);
                if let Some(error) = error {
                    span.record("error.type", error_type(error));
                }
            }
        };
        match loaded {
            Ok(material) => {
                if !span.is_disabled() {
                    if let Some(identity) = material.identity() {
                        span.record("mesh.tls.identity", identity);
                    }
                    span.record("mesh.tls.not_after", material.not_after_unix());
                }
                outcome("rotated", None);
                *seen = now;
                self.set_waiting(None);
                self.set_unsettled(None);
                tracing::info!(
                    identity = material.identity().unwrap_or("-"),
                    not_after = material.not_after_unix(),
                    "TLS material rotated"
                );
                self.inner.metrics.rotated(material.not_after_unix());
                self.publish(MeshEvent::CertificateRotated {
                    identity: material.identity().map(str::to_owned),
                    not_after_unix: material.not_after_unix(),
                });
                self.inner.current.store(Arc::new(material));
                Ok(true)
            }
            Err(error @ TlsError::NotYetValid { .. }) => {
                outcome("waiting", Some(&error));
                // Leave `seen` alone so the next check tries again.
                if self.set_waiting(Some(now)) {
                    self.refused(&error);
                }
                Err(error)
            }
            Err(error) if error.may_be_mid_write() && !self.settled(&now) => {
                outcome("unsettled", Some(&error));
                // Leave `seen` alone so the next check tries again: the
                // writer may not be done.
                tracing::debug!(%error, "TLS files changed but do not fit together yet; checking again");
                Err(error)
            }
            Err(error) => {
                outcome("refused", Some(&error));
                *seen = now;
                self.set_waiting(None);
                self.set_unsettled(None);
                self.refused(&error);
                Err(error)
            }
        }
    }

    /// Whether files with these stamps have been refused, unchanged, for
    /// [`ROTATION_SETTLE`]; if they are new, starts their wait.
    fn settled(&self, stamps: &[Option<Stamp>]) -> bool {
        let Ok(mut unsettled) = self.inner.unsettled.lock() else {
            return true;
        };
        match unsettled.as_ref() {
            Some((seen, since)) if seen == stamps => since.elapsed() >= ROTATION_SETTLE,
            _ => {
                *unsettled = Some((stamps.to_vec(), Instant::now()));
                false
            }
        }
    }

    fn set_unsettled(&self, value: Option<(Vec<Option<Stamp>>, Instant)>) {
        if let Ok(mut unsettled) = self.inner.unsettled.lock() {
            *unsettled = value;
        }
    }

    /// Records the stamps waiting for validity; whether they are new.
    fn set_waiting(&self, stamps: Option<Vec<Option<Stamp>>>) -> bool {
        match self.inner.waiting.lock() {
            Ok(mut waiting) if *waiting != stamps => {
                *waiting = stamps;
                true
            }
            _ => false,
        }
    }

    fn refused(&self, error: &TlsError) {
        tracing::warn!(%error, "refused new TLS material; the previous stays in use");
        self.inner.metrics.rotation_rejected();
        self.publish(MeshEvent::CertificateRotationRejected {
            reason: error.to_string(),
        });
    }

    /// Checks the files every `interval` (at least 10 ms) and rotates when
    /// they change (see the type's documentation). A second call replaces
    /// the first watch. The watch stops when the last clone of these
    /// credentials is dropped. Fails outside a tokio runtime, as a
    /// [`TlsError::Config`] naming `tls.watch_interval` with tokio's error
    /// as its source.
    pub fn watch(&self, interval: Duration) -> Result<(), TlsError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            ConfigError::new(
                "tls.watch_interval",
                "watching the files needs a tokio runtime",
            )
            .caused_by(e)
        })?;
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let interval = interval.max(Duration::from_millis(10));
        let task = runtime.spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                // File reads and key parsing block: off the async workers.
                // Errors are reported by reload itself.
                let _ = tokio::task::spawn_blocking(move || Credentials { inner }.reload()).await;
            }
        });
        if let Ok(mut watcher) = self.inner.watcher.lock() {
            if let Some(old) = watcher.replace(task.abort_handle()) {
                old.abort();
            }
        }
        Ok(())
    }
}

impl Credentials {
    /// Stops the watch started by [`Credentials::watch`] (the material in
    /// use stays).
    pub fn stop_watching(&self) {
        if let Ok(mut watcher) = self.inner.watcher.lock() {
            if let Some(task) = watcher.take() {
                task.abort();
            }
        }
    }
}

/// What identifies one version of a file: following symlinks, so a
/// Kubernetes `..data` symlink swap is a change.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: u64,
    #[cfg(unix)]
    ctime: (i64, i64),
}

fn stamps(paths: &[&Path]) -> Vec<Option<Stamp>> {
    paths
        .iter()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            #[cfg(unix)]
            use std::os::unix::fs::MetadataExt;
            Some(Stamp {
                modified: meta.modified().ok(),
                len: meta.len(),
                #[cfg(unix)]
                inode: meta.ino(),
                #[cfg(unix)]
                ctime: (meta.ctime(), meta.ctime_nsec()),
            })
        })
        .collect()
}

/// A rotation's `error.type`: what was wrong with the new material, in a
/// word (the span's field stays low-cardinality; the event says the rest).
fn error_type(error: &TlsError) -> &'static str {
    match error {
        TlsError::Unreadable { .. } => "unreadable",
        TlsError::MalformedPem { .. } => "malformed_pem",
        TlsError::NoCertificate { .. } => "no_certificate",
        TlsError::NoPrivateKey { .. } => "no_private_key",
        TlsError::UnusableKey { .. } => "unusable_key",
        TlsError::KeyMismatch { .. } => "key_mismatch",
        TlsError::BadCertificate { .. } => "bad_certificate",
        TlsError::NotYetValid { .. } => "not_yet_valid",
        TlsError::InvalidCa { .. } => "invalid_ca",
        TlsError::Config(_) => "config",
    }
}
