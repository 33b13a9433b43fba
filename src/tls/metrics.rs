//! Prometheus metrics of the TLS layer. Registered into a registry the caller owns.

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Handles to every TLS metric; cheap to clone.
#[derive(Clone)]
pub struct TlsMetrics {
    pub(crate) reloads: IntCounter,
    pub(crate) reload_failures: IntCounterVec,
    pub(crate) expiry: IntGaugeVec,
    pub(crate) refusals: IntCounterVec,
}

/// `file` label values of `netsy_tls_reload_failures_total`.
pub(crate) const FILE_LABELS: [&str; 5] = [
    "ca",
    "server_cert",
    "server_key",
    "client_cert",
    "client_key",
];

impl TlsMetrics {
    /// Creates the metrics without registering them anywhere (tests, tools).
    pub fn unregistered() -> Self {
        let reloads = IntCounter::new(
            "netsy_tls_reloads_total",
            "Successful reloads of changed TLS certificate files.",
        );
        let reload_failures = IntCounterVec::new(
            Opts::new(
                "netsy_tls_reload_failures_total",
                "Changed TLS files that were rejected (the previous material stays in use), by file.",
            ),
            &["file"],
        );
        let expiry = IntGaugeVec::new(
            Opts::new(
                "netsy_tls_certificate_expiry_timestamp_seconds",
                "notAfter of the certificate in use (for ca: the earliest in the bundle), Unix seconds.",
            ),
            &["cert"],
        );
        let refusals = IntCounterVec::new(
            Opts::new(
                "netsy_tls_handshake_refusals_total",
                "Inbound TLS handshakes refused, by listener and reason.",
            ),
            &["listener", "reason"],
        );
        // The metric definitions above are static and valid, so construction cannot fail.
        let (Ok(reloads), Ok(reload_failures), Ok(expiry), Ok(refusals)) =
            (reloads, reload_failures, expiry, refusals)
        else {
            unreachable!("static TLS metric definitions are valid")
        };
        for file in FILE_LABELS {
            reload_failures.with_label_values(&[file]);
        }
        TlsMetrics {
            reloads,
            reload_failures,
            expiry,
            refusals,
        }
    }

    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self::unregistered();
        registry.register(Box::new(m.reloads.clone()))?;
        registry.register(Box::new(m.reload_failures.clone()))?;
        registry.register(Box::new(m.expiry.clone()))?;
        registry.register(Box::new(m.refusals.clone()))?;
        Ok(m)
    }

    /// Current value of `netsy_tls_handshake_refusals_total{listener,reason}`.
    pub fn refusals(&self, listener: &str, reason: &str) -> u64 {
        self.refusals.with_label_values(&[listener, reason]).get()
    }

    /// Current value of `netsy_tls_reloads_total`.
    pub fn reloads(&self) -> u64 {
        self.reloads.get()
    }

    /// Current value of `netsy_tls_reload_failures_total{file}`.
    pub fn reload_failures(&self, file: &str) -> u64 {
        self.reload_failures.with_label_values(&[file]).get()
    }
}
