//! `MetricsStore`: counts and times every call that reaches the store below it (below the
//! retry layer, so each attempt is counted).
//!
//! Metrics (the original's names; docs/design/0004-storage.md#object-storage-metrics):
//! * `netsy_object_storage_writes_total{kind,mode,result}` — kind from [`super::layout`]
//!   (`chunk`, `snapshot`, `members`, `node`, `elector`, `bootstrap`, `other`); mode `create`,
//!   `update`, `overwrite`, `multipart`, `delete`, `copy`; result `success`, `already_exists`,
//!   `precondition`, `not_found`, `timeout`, `error`.
//! * `netsy_object_storage_write_duration_seconds`, `netsy_object_storage_write_bytes{kind,mode}`
//!   (buckets 1 KiB … 100 MiB).
//! * `netsy_object_storage_reads_total{result}`, `netsy_object_storage_read_duration_seconds`
//!   (GETs including HEADs, and delimiter listings; the time to the response head).
//!
//! Must never: label by full key (unbounded cardinality) or change results.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
    UploadPart,
};
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use super::DynStore;
use super::layout::Layout;

/// The object-storage metric families.
#[derive(Debug, Clone)]
pub struct ObjectStoreMetrics {
    /// `netsy_object_storage_writes_total{kind,mode,result}`.
    pub writes: IntCounterVec,
    /// `netsy_object_storage_write_duration_seconds`.
    pub write_duration: Histogram,
    /// `netsy_object_storage_write_bytes{kind,mode}`.
    pub write_bytes: HistogramVec,
    /// `netsy_object_storage_reads_total{result}`.
    pub reads: IntCounterVec,
    /// `netsy_object_storage_read_duration_seconds`.
    pub read_duration: Histogram,
}

const BYTE_BUCKETS: &[f64] = &[
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    104857600.0,
];

impl ObjectStoreMetrics {
    /// Creates the metric families (unregistered).
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(ObjectStoreMetrics {
            writes: IntCounterVec::new(
                Opts::new(
                    "netsy_object_storage_writes_total",
                    "Object storage write attempts",
                ),
                &["kind", "mode", "result"],
            )?,
            write_duration: Histogram::with_opts(HistogramOpts::new(
                "netsy_object_storage_write_duration_seconds",
                "Duration of object storage write attempts",
            ))?,
            write_bytes: HistogramVec::new(
                HistogramOpts::new(
                    "netsy_object_storage_write_bytes",
                    "Bytes per object storage write",
                )
                .buckets(BYTE_BUCKETS.to_vec()),
                &["kind", "mode"],
            )?,
            reads: IntCounterVec::new(
                Opts::new(
                    "netsy_object_storage_reads_total",
                    "Object storage read attempts",
                ),
                &["result"],
            )?,
            read_duration: Histogram::with_opts(HistogramOpts::new(
                "netsy_object_storage_read_duration_seconds",
                "Duration of object storage reads until the response head",
            ))?,
        })
    }

    /// Registers every family with `registry`.
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.writes.clone()))?;
        registry.register(Box::new(self.write_duration.clone()))?;
        registry.register(Box::new(self.write_bytes.clone()))?;
        registry.register(Box::new(self.reads.clone()))?;
        registry.register(Box::new(self.read_duration.clone()))?;
        Ok(())
    }

    fn write(&self, kind: &str, mode: &str, started: Instant, result: &str) {
        self.writes.with_label_values(&[kind, mode, result]).inc();
        self.write_duration.observe(started.elapsed().as_secs_f64());
    }
}

/// Result label for an outcome.
pub fn result_label<T>(r: &Result<T>) -> &'static str {
    match r {
        Ok(_) => "success",
        Err(object_store::Error::AlreadyExists { .. }) => "already_exists",
        Err(object_store::Error::Precondition { .. }) => "precondition",
        Err(object_store::Error::NotFound { .. }) => "not_found",
        Err(object_store::Error::NotModified { .. }) => "not_modified",
        Err(e) if super::retry::is_timeout(e) => "timeout",
        Err(_) => "error",
    }
}

fn mode_label(mode: &PutMode) -> &'static str {
    match mode {
        PutMode::Create => "create",
        PutMode::Update(_) => "update",
        PutMode::Overwrite => "overwrite",
    }
}

/// Metrics wrapper.
#[derive(Debug)]
pub struct MetricsStore {
    inner: DynStore,
    metrics: Arc<ObjectStoreMetrics>,
    layout: Layout,
}

impl MetricsStore {
    /// Wraps `inner`; `layout` classifies keys into the `kind` label.
    pub fn new(inner: DynStore, metrics: Arc<ObjectStoreMetrics>, layout: Layout) -> Self {
        MetricsStore {
            inner,
            metrics,
            layout,
        }
    }

    fn kind(&self, location: &Path) -> &'static str {
        self.layout.classify(location).as_str()
    }
}

impl fmt::Display for MetricsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MetricsStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for MetricsStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let (kind, mode) = (self.kind(location), mode_label(&opts.mode));
        let len = payload.content_length();
        let started = Instant::now();
        let r = self.inner.put_opts(location, payload, opts).await;
        self.metrics.write(kind, mode, started, result_label(&r));
        if r.is_ok() {
            self.metrics
                .write_bytes
                .with_label_values(&[kind, mode])
                .observe(len as f64);
        }
        r
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(CountingUpload {
            inner,
            metrics: Arc::clone(&self.metrics),
            kind: self.kind(location),
            bytes: 0,
            started: Instant::now(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let started = Instant::now();
        let r = self.inner.get_opts(location, options).await;
        self.metrics
            .reads
            .with_label_values(&[result_label(&r)])
            .inc();
        self.metrics
            .read_duration
            .observe(started.elapsed().as_secs_f64());
        r
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let metrics = Arc::clone(&self.metrics);
        let layout = self.layout.clone();
        let started = Instant::now();
        self.inner
            .delete_stream(locations)
            .inspect(move |r| {
                let kind = match r {
                    Ok(p) => layout.classify(p).as_str(),
                    Err(_) => "other",
                };
                metrics.write(kind, "delete", started, result_label(r));
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let started = Instant::now();
        let r = self.inner.list_with_delimiter(prefix).await;
        self.metrics
            .reads
            .with_label_values(&[result_label(&r)])
            .inc();
        self.metrics
            .read_duration
            .observe(started.elapsed().as_secs_f64());
        r
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let started = Instant::now();
        let r = self.inner.copy_opts(from, to, options).await;
        self.metrics
            .write(self.kind(to), "copy", started, result_label(&r));
        r
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        let started = Instant::now();
        let r = self.inner.rename_opts(from, to, options).await;
        self.metrics
            .write(self.kind(to), "copy", started, result_label(&r));
        r
    }
}

#[derive(Debug)]
struct CountingUpload {
    inner: Box<dyn MultipartUpload>,
    metrics: Arc<ObjectStoreMetrics>,
    kind: &'static str,
    bytes: usize,
    started: Instant,
}

#[async_trait]
impl MultipartUpload for CountingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.bytes += data.content_length();
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let r = self.inner.complete().await;
        self.metrics
            .write(self.kind, "multipart", self.started, result_label(&r));
        if r.is_ok() {
            self.metrics
                .write_bytes
                .with_label_values(&[self.kind, "multipart"])
                .observe(self.bytes as f64);
        }
        r
    }

    async fn abort(&mut self) -> Result<()> {
        let r = self.inner.abort().await;
        self.metrics
            .write(self.kind, "multipart", self.started, "aborted");
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn counts_writes_and_reads_by_label() {
        let registry = Registry::new();
        let metrics = Arc::new(ObjectStoreMetrics::new().unwrap());
        metrics.register(&registry).unwrap();
        let layout = Layout::new("p").unwrap();
        let store = MetricsStore::new(Arc::new(InMemory::new()), metrics.clone(), layout.clone());
        let chunk = layout.chunk(5);
        store
            .put_opts(&chunk, "x".into(), PutMode::Create.into())
            .await
            .unwrap();
        assert!(
            store
                .put_opts(&chunk, "x".into(), PutMode::Create.into())
                .await
                .is_err()
        );
        store.get(&chunk).await.unwrap();
        assert!(store.get(&layout.members()).await.is_err());
        let w = |k: &str, m: &str, r: &str| metrics.writes.with_label_values(&[k, m, r]).get();
        assert_eq!(w("chunk", "create", "success"), 1);
        assert_eq!(w("chunk", "create", "already_exists"), 1);
        assert_eq!(metrics.reads.with_label_values(&["success"]).get(), 1);
        assert_eq!(metrics.reads.with_label_values(&["not_found"]).get(), 1);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(text.contains("netsy_object_storage_writes_total{kind=\"chunk\",mode=\"create\",result=\"success\"} 1"), "{text}");
        assert!(
            text.contains("netsy_object_storage_write_bytes_bucket"),
            "{text}"
        );
    }
}
