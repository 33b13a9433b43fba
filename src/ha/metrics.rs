//! The Primary's quorum-mode metrics, under the original's names (`netsy_primary_*`;
//! docs/design/0010-quorum-replication.md, "Metrics"). Every family exists from the start, so
//! a dashboard sees zeros rather than gaps on a node that has not been Primary yet.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Label values of `path`.
pub(crate) const SYNC: &str = "sync";
pub(crate) const QUORUM: &str = "quorum";
/// A single node's write-ahead log in its local bucket directory (`wal`).
pub(crate) const LOG: &str = "log";

#[derive(Clone)]
pub(crate) struct QuorumMetrics {
    /// `netsy_primary_write_path{path}`: 1 on the path the last write group took.
    pub write_path: IntGaugeVec,
    /// `netsy_primary_write_transactions_total{path,result}`: write groups by path.
    pub write_groups: IntCounterVec,
    /// `netsy_primary_write_duration_seconds`: from a group's hand-off to its durability.
    pub write_duration: Histogram,
    /// `netsy_primary_quorum_rollbacks_total{reason}`: groups sent to the Replicas that went
    /// to the bucket instead (`timeout`: receipts late; `fenced`: the lock was in doubt).
    pub rollbacks: IntCounterVec,
    /// `netsy_primary_required_receipts`: receipts a group needs now (0: sync only).
    pub required_receipts: IntGauge,
    /// `netsy_primary_healthy_replicas`: Replicas with a recent receipt of this epoch.
    pub healthy_replicas: IntGauge,
    /// `netsy_primary_chunk_buffer_records|bytes|age_seconds`.
    pub buffer_records: IntGauge,
    pub buffer_bytes: IntGauge,
    pub buffer_age_seconds: IntGauge,
    /// `netsy_primary_chunk_buffer_flushes_total{trigger,result}`.
    pub flushes: IntCounterVec,
    /// `netsy_primary_chunk_buffer_flush_duration_seconds`.
    pub flush_duration: Histogram,
}

impl QuorumMetrics {
    /// The families, unregistered (tests) — see [`QuorumMetrics::register`].
    pub(crate) fn new() -> QuorumMetrics {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("static metric");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("static metric")
        };
        let histogram = |name: &str, help: &str| {
            Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16).expect("buckets")),
            )
            .expect("static metric")
        };
        let m = QuorumMetrics {
            write_path: IntGaugeVec::new(
                Opts::new(
                    "netsy_primary_write_path",
                    "The path the last write group took (one-hot)",
                ),
                &["path"],
            )
            .expect("static metric"),
            write_groups: counter(
                "netsy_primary_write_transactions_total",
                "Write groups by path and result",
                &["path", "result"],
            ),
            write_duration: histogram(
                "netsy_primary_write_duration_seconds",
                "Time for a write group to become durable (receipts or the bucket)",
            ),
            rollbacks: counter(
                "netsy_primary_quorum_rollbacks_total",
                "Write groups sent to replicas that went to the bucket instead",
                &["reason"],
            ),
            required_receipts: gauge(
                "netsy_primary_required_receipts",
                "Replica receipts a write group needs (0: every group goes to the bucket)",
            ),
            healthy_replicas: gauge(
                "netsy_primary_healthy_replicas",
                "Replicas with a recent receipt of this epoch",
            ),
            buffer_records: gauge(
                "netsy_primary_chunk_buffer_records",
                "Acknowledged records not yet in the bucket",
            ),
            buffer_bytes: gauge(
                "netsy_primary_chunk_buffer_bytes",
                "Approximate size of the chunk buffer",
            ),
            buffer_age_seconds: gauge(
                "netsy_primary_chunk_buffer_age_seconds",
                "Age of the oldest record in the chunk buffer",
            ),
            flushes: counter(
                "netsy_primary_chunk_buffer_flushes_total",
                "Chunk buffer uploads by trigger and result",
                &["trigger", "result"],
            ),
            flush_duration: histogram(
                "netsy_primary_chunk_buffer_flush_duration_seconds",
                "Duration of chunk buffer uploads",
            ),
        };
        for path in [SYNC, QUORUM] {
            m.write_path.with_label_values(&[path]).set(0);
        }
        m
    }

    /// Creates the families and registers them with `registry`.
    pub(crate) fn register(registry: &Registry) -> Result<QuorumMetrics, prometheus::Error> {
        let m = QuorumMetrics::new();
        registry.register(Box::new(m.write_path.clone()))?;
        registry.register(Box::new(m.write_groups.clone()))?;
        registry.register(Box::new(m.write_duration.clone()))?;
        registry.register(Box::new(m.rollbacks.clone()))?;
        registry.register(Box::new(m.required_receipts.clone()))?;
        registry.register(Box::new(m.healthy_replicas.clone()))?;
        registry.register(Box::new(m.buffer_records.clone()))?;
        registry.register(Box::new(m.buffer_bytes.clone()))?;
        registry.register(Box::new(m.buffer_age_seconds.clone()))?;
        registry.register(Box::new(m.flushes.clone()))?;
        registry.register(Box::new(m.flush_duration.clone()))?;
        Ok(m)
    }

    /// The path a group took and whether it succeeded.
    pub(crate) fn group(&self, path: &str, ok: bool, seconds: f64) {
        for p in [SYNC, QUORUM, LOG] {
            self.write_path
                .with_label_values(&[p])
                .set(i64::from(p == path));
        }
        let result = if ok { "success" } else { "error" };
        self.write_groups.with_label_values(&[path, result]).inc();
        if ok {
            self.write_duration.observe(seconds);
        }
    }

    /// Clears the Primary-only gauges (the node is no longer Primary).
    pub(crate) fn reset(&self) {
        for p in [SYNC, QUORUM, LOG] {
            self.write_path.with_label_values(&[p]).set(0);
        }
        self.required_receipts.set(0);
        self.healthy_replicas.set(0);
        self.buffer_records.set(0);
        self.buffer_bytes.set(0);
        self.buffer_age_seconds.set(0);
    }
}
