//! Keeps the current [`Material`] and replaces it when the files change.
//!
//! Change detection compares file contents (not mtimes or inodes), so both cert-manager CSI's
//! atomic `..data` symlink swap and an in-place rewrite are seen. A changed set of files that
//! does not pass [`Material::build`] (and, when configured, the node checks of `check`) is
//! rejected as a whole: the previous material stays in use, one ERROR line names the file and
//! the reason, and `netsy_tls_reload_failures_total{file}` is incremented once per distinct
//! broken content (a file that stays broken is not re-reported on every poll).

use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use tracing::{error, info};

use super::TlsError;
use super::check::{NodeCertPolicy, check_material};
use super::files::{Material, RawFiles, TlsPaths, system_to_unix};
use super::metrics::TlsMetrics;

/// Default interval between two polls of the files.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Result of one reload attempt.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The files are byte-identical to the material in use (or to the last rejected set).
    Unchanged,
    /// New material is in use; new handshakes use it.
    Reloaded,
    /// The files changed but were rejected; the previous material stays in use.
    Rejected(TlsError),
}

/// Owner of the current TLS material. Share it as `Arc<TlsReloader>`.
pub struct TlsReloader {
    paths: TlsPaths,
    policy: Option<NodeCertPolicy>,
    metrics: TlsMetrics,
    current: RwLock<Arc<Material>>,
    /// Serialises reloads and remembers the last rejected content.
    last_rejected: Mutex<Option<RawFiles>>,
}

impl TlsReloader {
    /// Loads and checks the files once (the startup check). With a `policy`, the node checks of
    /// [`NodeCertPolicy`] also run, at startup and on every reload. Errors are one line each.
    /// Blocking file I/O: call before the runtime is busy, or from `spawn_blocking`.
    pub fn load(
        paths: TlsPaths,
        policy: Option<NodeCertPolicy>,
        metrics: TlsMetrics,
    ) -> Result<Arc<Self>, TlsError> {
        let material = build(&paths, policy.as_ref(), RawFiles::read(&paths)?)?;
        set_expiry(&metrics, &material);
        Ok(Arc::new(TlsReloader {
            paths,
            policy,
            metrics,
            current: RwLock::new(Arc::new(material)),
            last_rejected: Mutex::new(None),
        }))
    }

    /// The material in use right now.
    pub fn current(&self) -> Arc<Material> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The metrics this reloader (and the listeners built on it) report to.
    pub fn metrics(&self) -> &TlsMetrics {
        &self.metrics
    }

    /// The paths being watched.
    pub fn paths(&self) -> &TlsPaths {
        &self.paths
    }

    /// Re-reads the files now and swaps in new material if they changed and are valid.
    /// Blocking file I/O (a few small files).
    pub fn reload_now(&self) -> ReloadOutcome {
        let mut last_rejected = self.last_rejected.lock().unwrap_or_else(|p| p.into_inner());
        let raw = match RawFiles::read(&self.paths) {
            Ok(raw) => raw,
            // An unreadable file is reported once until it becomes readable again.
            Err(e) => return self.reject(&mut last_rejected, None, TlsError::File(e)),
        };
        if raw == self.current().raw {
            *last_rejected = None;
            return ReloadOutcome::Unchanged;
        }
        if last_rejected.as_ref() == Some(&raw) {
            return ReloadOutcome::Unchanged;
        }
        match build(&self.paths, self.policy.as_ref(), raw.clone()) {
            Ok(material) => {
                *last_rejected = None;
                info!(
                    event = "tls_reloaded",
                    server_serial = material.server_serial(),
                    client_serial = material.client_serial(),
                    "TLS certificates reloaded; new handshakes use them"
                );
                set_expiry(&self.metrics, &material);
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(material);
                self.metrics.reloads.inc();
                ReloadOutcome::Reloaded
            }
            Err(e) => {
                // Files caught mid-update (several files rewritten one by one) are not an error
                // yet: if they changed while we read them, the next poll looks again.
                if RawFiles::read(&self.paths).is_ok_and(|again| again != raw) {
                    return ReloadOutcome::Unchanged;
                }
                self.reject(&mut last_rejected, Some(raw), e)
            }
        }
    }

    fn reject(
        &self,
        last: &mut Option<RawFiles>,
        raw: Option<RawFiles>,
        e: TlsError,
    ) -> ReloadOutcome {
        // Unreadable files have no content to remember; use an empty marker so that a file
        // which stays missing is reported once.
        let marker = raw.unwrap_or(RawFiles(Default::default()));
        if last.as_ref() == Some(&marker) {
            return ReloadOutcome::Unchanged;
        }
        let file = e.file_label();
        error!(
            event = "tls_reload_failed",
            file, "keeping the previous TLS certificates: {e}"
        );
        self.metrics
            .reload_failures
            .with_label_values(&[file])
            .inc();
        *last = Some(marker);
        ReloadOutcome::Rejected(e)
    }

    /// Starts polling the files every `interval` on a background task. The task ends when the
    /// reloader is dropped; abort the handle to stop it earlier.
    pub fn spawn_polling(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                // The outcome is logged and counted inside reload_now.
                let _ = tokio::task::spawn_blocking(move || this.reload_now()).await;
            }
        })
    }
}

fn build(
    paths: &TlsPaths,
    policy: Option<&NodeCertPolicy>,
    raw: RawFiles,
) -> Result<Material, TlsError> {
    let material = Material::build(paths, raw, SystemTime::now())?;
    if let Some(policy) = policy {
        check_material(&material, paths, policy)?;
    }
    Ok(material)
}

fn set_expiry(metrics: &TlsMetrics, m: &Material) {
    for (cert, t) in [
        ("server", m.server.facts.not_after),
        ("client", m.client.facts.not_after),
        ("ca", m.ca_not_after),
    ] {
        metrics
            .expiry
            .with_label_values(&[cert])
            .set(system_to_unix(t));
    }
}
