//! `FaultStore`: seeded, replayable fault injection for tests.
//!
//! Faults: an error instead of the call (`error_rate`, or scripted with [`FaultStore::fail_next`]),
//! added latency (`latency`), a call that hangs (scripted with [`FaultStore::hang_next`]; pair
//! with a timeout), and "the PUT succeeded but its response was lost" (`drop_response_rate`, or
//! [`FaultStore::drop_next_put_responses`]) — the write is applied, then an error is returned,
//! which is exactly the ambiguous case [`super::cas`] must resolve.
//!
//! Random decisions come from one `StdRng` seeded by the caller; tests print the seed and
//! accept it back (e.g. from `NETSY_TEST_SEED`) so a failure can be replayed.
//! Compiled only for unit tests and with the `fault-injection` feature (integration tests):
//! never in the product.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::DynStore;

const STORE: &str = "FaultStore";

/// Random fault rates (all 0 = no random faults).
#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    /// Probability that a call fails without reaching the store.
    pub error_rate: f64,
    /// Probability that a successful put's response is replaced by an error.
    pub drop_response_rate: f64,
    /// Extra latency drawn uniformly from this range for every call.
    pub latency: Option<(Duration, Duration)>,
}

/// The injected error's source.
#[derive(Debug, thiserror::Error)]
#[error("injected fault: {0}")]
pub struct InjectedFault(pub &'static str);

/// A fault-injecting wrapper.
#[derive(Debug)]
pub struct FaultStore {
    inner: DynStore,
    cfg: Mutex<FaultConfig>,
    rng: Mutex<StdRng>,
    seed: u64,
    fail_next: AtomicU32,
    hang_next: AtomicU32,
    drop_next: AtomicU32,
}

enum Before {
    Proceed(Duration),
    Fail,
    Hang,
}

fn injected(what: &'static str) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: Box::new(InjectedFault(what)),
    }
}

/// A seed for randomized tests: `NETSY_TEST_SEED` if set, else random. Printed so that a
/// failing run can be replayed.
pub fn test_seed() -> u64 {
    let seed = std::env::var("NETSY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("NETSY_TEST_SEED={seed}");
    seed
}

impl FaultStore {
    /// Wraps `inner` with random faults per `cfg`, decided by an RNG seeded with `seed`.
    pub fn new(inner: DynStore, cfg: FaultConfig, seed: u64) -> Self {
        FaultStore {
            inner,
            cfg: Mutex::new(cfg),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            seed,
            fail_next: AtomicU32::new(0),
            hang_next: AtomicU32::new(0),
            drop_next: AtomicU32::new(0),
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Replaces the random fault rates.
    pub fn set_config(&self, cfg: FaultConfig) {
        if let Ok(mut c) = self.cfg.lock() {
            *c = cfg;
        }
    }

    /// The next `n` calls fail.
    pub fn fail_next(&self, n: u32) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// The next `n` calls hang (until the caller's timeout).
    pub fn hang_next(&self, n: u32) {
        self.hang_next.store(n, Ordering::SeqCst);
    }

    /// The next `n` successful puts return an error after being applied.
    pub fn drop_next_put_responses(&self, n: u32) {
        self.drop_next.store(n, Ordering::SeqCst);
    }

    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn roll(&self, p: f64) -> bool {
        p > 0.0
            && self
                .rng
                .lock()
                .map(|mut r| r.random::<f64>() < p)
                .unwrap_or(false)
    }

    fn before(&self) -> Before {
        if Self::take(&self.hang_next) {
            return Before::Hang;
        }
        if Self::take(&self.fail_next) {
            return Before::Fail;
        }
        let cfg = self.cfg.lock().map(|c| c.clone()).unwrap_or_default();
        if self.roll(cfg.error_rate) {
            return Before::Fail;
        }
        let delay = match cfg.latency {
            Some((lo, hi)) if hi > lo => {
                let span = (hi - lo).as_micros().min(u128::from(u64::MAX)) as u64;
                let extra = self
                    .rng
                    .lock()
                    .map(|mut r| r.random_range(0..=span))
                    .unwrap_or(0);
                lo + Duration::from_micros(extra)
            }
            Some((lo, _)) => lo,
            None => Duration::ZERO,
        };
        Before::Proceed(delay)
    }

    async fn gate(&self, what: &'static str) -> Result<()> {
        match self.before() {
            Before::Fail => Err(injected(what)),
            Before::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Err(injected(what))
            }
            Before::Proceed(d) => {
                if !d.is_zero() {
                    tokio::time::sleep(d).await;
                }
                Ok(())
            }
        }
    }

    fn drop_response(&self) -> bool {
        if Self::take(&self.drop_next) {
            return true;
        }
        let p = self.cfg.lock().map(|c| c.drop_response_rate).unwrap_or(0.0);
        self.roll(p)
    }
}

impl fmt::Display for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultStore(seed={}, {})", self.seed, self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.gate("put").await?;
        let result = self.inner.put_opts(location, payload, opts).await?;
        if self.drop_response() {
            return Err(injected("put response lost after the write was applied"));
        }
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.gate("put_multipart").await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.gate("get").await?;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        match self.before() {
            Before::Proceed(_) => self.inner.delete_stream(locations),
            _ => futures::stream::once(async { Err(injected("delete")) }).boxed(),
        }
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        match self.before() {
            Before::Proceed(_) => self.inner.list(prefix),
            Before::Fail => futures::stream::once(async { Err(injected("list")) }).boxed(),
            Before::Hang => futures::stream::pending().boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.gate("list").await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.gate("copy").await?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.gate("rename").await?;
        self.inner.rename_opts(from, to, options).await
    }
}
