//! `RetryStore`: bounds every call with a timeout and retries transient failures a bounded
//! number of times with jittered exponential backoff.
//!
//! * `put_opts`, `get_opts` (until the response head), `list_with_delimiter`, `copy_opts`,
//!   `rename_opts`, multipart initiation: each attempt has `call_timeout`; transient errors
//!   and timeouts are retried up to `max_attempts` in all.
//! * Response bodies, `list` and `delete_stream` streams: every item must arrive within
//!   `stream_idle_timeout`. `list` is restarted (bounded) if it fails before yielding anything;
//!   a failure in the middle of a stream is returned (callers restart; readers of data files
//!   resume with ranged GETs, see [`super::files`]).
//! * Multipart parts, completion and abort: one attempt each, with `call_timeout` (object_store
//!   retries parts internally).
//!
//! Retrying a conditional put after a timeout is safe but can turn our own success into
//! `AlreadyExists` / `Precondition`; [`super::cas`] resolves that by reading back.
//! Must never: retry without bound, or sleep without a bound.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
    UploadPart,
};
use rand::Rng;

use super::DynStore;

const STORE: &str = "RetryStore";

/// Retry and timeout policy.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Attempts in all (≥ 1).
    pub max_attempts: u32,
    /// Timeout of each attempt.
    pub call_timeout: Duration,
    /// Longest wait for the next item of a streamed response or listing.
    pub stream_idle_timeout: Duration,
    /// Backoff before the second attempt; doubles each time.
    pub initial_backoff: Duration,
    /// Backoff cap.
    pub max_backoff: Duration,
    /// Counter incremented on every retry (e.g. `netsy_retries_total{operation=…}`).
    pub retries: Option<prometheus::IntCounter>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            call_timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            retries: None,
        }
    }
}

/// The timeout error carried inside `object_store::Error::Generic`.
#[derive(Debug, thiserror::Error)]
#[error("{op} timed out after {after:?}")]
pub struct Timeout {
    /// Operation.
    pub op: &'static str,
    /// Limit that was hit.
    pub after: Duration,
}

fn timeout_error(op: &'static str, after: Duration) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: Box::new(Timeout { op, after }),
    }
}

/// Whether retrying `e` may help.
pub fn is_transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    !matches!(
        e,
        E::NotFound { .. }
            | E::AlreadyExists { .. }
            | E::Precondition { .. }
            | E::NotModified { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::InvalidPath { .. }
            | E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::UnknownConfigurationKey { .. }
    )
}

/// Whether `e` is (or wraps) a timeout produced by this layer.
pub fn is_timeout(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::Generic { source, .. } if source.downcast_ref::<Timeout>().is_some())
}

/// Timeout + bounded-retry wrapper.
#[derive(Debug)]
pub struct RetryStore {
    inner: DynStore,
    cfg: Arc<RetryConfig>,
}

impl RetryStore {
    /// Wraps `inner`.
    pub fn new(inner: DynStore, cfg: RetryConfig) -> Self {
        RetryStore {
            inner,
            cfg: Arc::new(cfg),
        }
    }

    async fn run<T, F, Fut>(&self, op: &'static str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        run_with_retry(&self.cfg, op, &mut f).await
    }
}

async fn run_with_retry<T, F, Fut>(cfg: &RetryConfig, op: &'static str, f: &mut F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let attempts = cfg.max_attempts.max(1);
    let mut backoff = cfg.initial_backoff;
    let mut attempt = 1;
    loop {
        let result = match tokio::time::timeout(cfg.call_timeout, f()).await {
            Ok(r) => r,
            Err(_) => Err(timeout_error(op, cfg.call_timeout)),
        };
        match result {
            Err(e) if attempt < attempts && is_transient(&e) => {
                tracing::debug!(op, attempt, error = %e, "object storage call failed, retrying");
                if let Some(c) = &cfg.retries {
                    c.inc();
                }
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(cfg.max_backoff);
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Full jitter between half and all of `d`.
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let extra = rand::rng().random_range(0..=half.as_micros().min(u128::from(u64::MAX)) as u64);
    half + Duration::from_micros(extra)
}

/// Fails a stream item that does not arrive within `idle`.
fn idle_timeout<T: Send + 'static>(
    s: BoxStream<'static, Result<T>>,
    op: &'static str,
    idle: Duration,
) -> BoxStream<'static, Result<T>> {
    futures::stream::unfold((s, false), move |(mut s, done)| async move {
        if done {
            return None;
        }
        match tokio::time::timeout(idle, s.next()).await {
            Ok(Some(item)) => Some((item, (s, false))),
            Ok(None) => None,
            Err(_) => Some((Err(timeout_error(op, idle)), (s, true))),
        }
    })
    .boxed()
}

impl fmt::Display for RetryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RetryStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for RetryStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.run("put", || {
            self.inner.put_opts(location, payload.clone(), opts.clone())
        })
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let upload = self
            .run("put_multipart", || {
                self.inner.put_multipart_opts(location, opts.clone())
            })
            .await?;
        Ok(Box::new(TimeoutUpload {
            inner: upload,
            timeout: self.cfg.call_timeout,
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let mut result = self
            .run("get", || self.inner.get_opts(location, options.clone()))
            .await?;
        if let GetResultPayload::Stream(s) = result.payload {
            result.payload =
                GetResultPayload::Stream(idle_timeout(s, "get body", self.cfg.stream_idle_timeout));
        }
        Ok(result)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        idle_timeout(
            self.inner.delete_stream(locations),
            "delete",
            self.cfg.stream_idle_timeout,
        )
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = Arc::clone(&self.inner);
        let cfg = Arc::clone(&self.cfg);
        let prefix = prefix.cloned();
        async_stream::stream! {
            let attempts = cfg.max_attempts.max(1);
            let mut backoff = cfg.initial_backoff;
            let mut attempt = 1;
            'attempts: loop {
                let mut s = idle_timeout(inner.list(prefix.as_ref()), "list", cfg.stream_idle_timeout);
                let mut yielded = false;
                while let Some(item) = s.next().await {
                    match item {
                        Err(e) if !yielded && attempt < attempts && is_transient(&e) => {
                            tracing::debug!(attempt, error = %e, "object storage list failed, retrying");
                            if let Some(c) = &cfg.retries {
                                c.inc();
                            }
                            tokio::time::sleep(jitter(backoff)).await;
                            backoff = (backoff * 2).min(cfg.max_backoff);
                            attempt += 1;
                            continue 'attempts;
                        }
                        Err(e) => {
                            yield Err(e);
                            break 'attempts;
                        }
                        Ok(meta) => {
                            yielded = true;
                            yield Ok(meta);
                        }
                    }
                }
                break;
            }
        }
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.run("list", || self.inner.list_with_delimiter(prefix))
            .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.run("copy", || self.inner.copy_opts(from, to, options.clone()))
            .await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.run("rename", || {
            self.inner.rename_opts(from, to, options.clone())
        })
        .await
    }
}

/// Multipart upload whose every step is bounded by a timeout.
#[derive(Debug)]
struct TimeoutUpload {
    inner: Box<dyn MultipartUpload>,
    timeout: Duration,
}

#[async_trait]
impl MultipartUpload for TimeoutUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let fut = self.inner.put_part(data);
        let timeout = self.timeout;
        Box::pin(async move {
            tokio::time::timeout(timeout, fut)
                .await
                .map_err(|_| timeout_error("put_part", timeout))?
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.inner.complete())
            .await
            .map_err(|_| timeout_error("complete_multipart", timeout))?
    }

    async fn abort(&mut self) -> Result<()> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.inner.abort())
            .await
            .map_err(|_| timeout_error("abort_multipart", timeout))?
    }
}

/// Collects a listing into a vector (helper for small listings).
pub async fn collect_list(
    store: &dyn ObjectStore,
    prefix: Option<&Path>,
) -> Result<Vec<ObjectMeta>> {
    store.list(prefix).try_collect().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objstore::fault::{FaultConfig, FaultStore};
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    fn cfg(attempts: u32) -> RetryConfig {
        RetryConfig {
            max_attempts: attempts,
            call_timeout: Duration::from_millis(200),
            stream_idle_timeout: Duration::from_millis(200),
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            retries: Some(prometheus::IntCounter::new("r", "r").unwrap()),
        }
    }

    #[tokio::test]
    async fn retries_transient_errors_then_gives_up() {
        let base: DynStore = Arc::new(InMemory::new());
        let fault = Arc::new(FaultStore::new(base, FaultConfig::default(), 1));
        fault.fail_next(2);
        let c = cfg(3);
        let counter = c.retries.clone().unwrap();
        let store = RetryStore::new(fault.clone(), c);
        store.put(&Path::from("a"), "x".into()).await.unwrap();
        assert_eq!(counter.get(), 2);
        fault.fail_next(5);
        let err = store.put(&Path::from("b"), "x".into()).await.unwrap_err();
        assert!(is_transient(&err), "{err}");
        assert_eq!(counter.get(), 4);
        fault.fail_next(0);
        // Non-transient errors are not retried.
        let before = counter.get();
        assert!(matches!(
            store.get(&Path::from("missing")).await,
            Err(object_store::Error::NotFound { .. })
        ));
        assert_eq!(counter.get(), before);
    }

    #[tokio::test]
    async fn every_call_has_a_timeout() {
        let base: DynStore = Arc::new(InMemory::new());
        let fault = Arc::new(FaultStore::new(base, FaultConfig::default(), 1));
        fault.hang_next(10);
        let store = RetryStore::new(fault.clone(), cfg(2));
        let err = store.put(&Path::from("a"), "x".into()).await.unwrap_err();
        assert!(is_timeout(&err), "{err}");
    }

    #[tokio::test]
    async fn list_restarts_when_failing_before_first_item() {
        let base: DynStore = Arc::new(InMemory::new());
        base.put(&Path::from("d/1"), "x".into()).await.unwrap();
        base.put(&Path::from("d/2"), "x".into()).await.unwrap();
        let fault = Arc::new(FaultStore::new(base, FaultConfig::default(), 1));
        fault.fail_next(1);
        let store = RetryStore::new(fault.clone(), cfg(3));
        let listed = collect_list(&store, Some(&Path::from("d"))).await.unwrap();
        assert_eq!(listed.len(), 2);
    }
}
