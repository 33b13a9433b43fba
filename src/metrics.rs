//! Prometheus metrics: one registry per process, request counts and latencies per RPC, watch
//! gauges, revisions. Exposed on the health port's `/metrics`.

use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    durations: HistogramVec,
    pub watch_streams: IntGauge,
    pub watches: IntGauge,
    pub current_revision: IntGauge,
    pub compact_revision: IntGauge,
    pub leases: IntGauge,
}

impl Metrics {
    pub fn new(node_id: &str, cluster_id: &str) -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "netsy_grpc_requests_total",
                "etcd API requests by method and result",
            ),
            &["method", "result"],
        )
        .expect("static metric definition");
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "netsy_grpc_request_duration_seconds",
                "etcd API request latency by method",
            )
            .buckets(prometheus::exponential_buckets(0.0001, 2.0, 18).expect("static buckets")),
            &["method"],
        )
        .expect("static metric definition");
        let gauge =
            |name: &str, help: &str| IntGauge::new(name, help).expect("static metric definition");
        let m = Metrics {
            requests,
            durations,
            watch_streams: gauge("netsy_watchers", "open watch streams"),
            watches: gauge("netsy_watches", "active watches"),
            current_revision: gauge("netsy_latest_revision", "latest revision"),
            compact_revision: gauge("netsy_compaction_revision", "compaction revision"),
            leases: gauge("netsy_leases", "granted leases"),
            registry,
        };
        let info = IntCounterVec::new(
            Opts::new("netsy_info", "build and identity"),
            &["version", "cluster_id", "node_id"],
        )
        .expect("static metric definition");
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), cluster_id, node_id])
            .inc();
        for c in [
            Box::new(m.requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.durations.clone()),
            Box::new(m.watch_streams.clone()),
            Box::new(m.watches.clone()),
            Box::new(m.current_revision.clone()),
            Box::new(m.compact_revision.clone()),
            Box::new(m.leases.clone()),
            Box::new(info),
        ] {
            // Registration only fails for duplicate names, which are static here.
            let _ = m.registry.register(c);
        }
        m
    }

    /// Starts timing one RPC; the guard records the duration when dropped.
    pub fn rpc(&self, method: &'static str) -> RpcTimer {
        RpcTimer {
            metrics: self.clone(),
            method,
            start: Instant::now(),
        }
    }

    pub fn record_result(&self, method: &str, ok: bool) {
        self.requests
            .with_label_values(&[method, if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

pub struct RpcTimer {
    metrics: Metrics,
    method: &'static str,
    start: Instant,
}

impl Drop for RpcTimer {
    fn drop(&mut self) {
        self.metrics
            .durations
            .with_label_values(&[self.method])
            .observe(self.start.elapsed().as_secs_f64());
        self.metrics
            .requests
            .with_label_values(&[self.method, "done"])
            .inc();
    }
}
