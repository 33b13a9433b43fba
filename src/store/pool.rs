//! A fixed pool of read-only connections used from `spawn_blocking`. A read waits for a free
//! connection (a semaphore) instead of opening a new one: opening a connection costs more than
//! most reads, and more concurrent SQLite readers than cores only adds contention.

use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::Semaphore;

use super::{Error, Result, schema};

#[derive(Clone)]
pub(super) struct ReaderPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl ReaderPool {
    pub(super) fn open(path: &std::path::Path, size: usize) -> Result<ReaderPool> {
        let mut idle = Vec::with_capacity(size);
        for _ in 0..size {
            idle.push(schema::open_read(path)?);
        }
        Ok(ReaderPool {
            inner: Arc::new(PoolInner {
                idle: Mutex::new(idle),
                permits: Semaphore::new(size),
            }),
        })
    }

    /// Runs a short `f` (a point read: an index lookup or two) on the calling thread when a
    /// connection is free at once, otherwise like [`ReaderPool::run`]. Moving a point read to
    /// the blocking pool and back costs more than the read itself.
    pub(super) async fn run_short<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> T + Send + 'static,
    ) -> Result<T> {
        let Ok(permit) = self.inner.permits.try_acquire() else {
            return self.run(f).await;
        };
        let conn = self.lock_idle().pop().ok_or(Error::Shutdown)?;
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&conn)));
        self.lock_idle().push(conn);
        drop(permit);
        out.map_err(|_| Error::Shutdown)
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.inner.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with a reader connection on the blocking thread pool, waiting for one to be
    /// free.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> T + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        let permit = inner.permits.acquire().await.map_err(|_| Error::Shutdown)?;
        let task_inner = self.inner.clone();
        let out = tokio::task::spawn_blocking(move || {
            // A permit guarantees an idle connection.
            let conn = task_inner
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop()
                .ok_or(Error::Shutdown)?;
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&conn)));
            task_inner
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
            out.map_err(|_| Error::Shutdown)
        })
        .await
        .map_err(|_| Error::Shutdown)?;
        drop(permit);
        out
    }

    /// [`ReaderPool::run`] for a read of the whole history (a snapshot, a transfer to a
    /// Replica, a hash of every record): the connection reads it with `pread`, not through its
    /// map of the file (`schema::open_read`), so that the pages it passes over once do not stay
    /// in the process's resident memory.
    pub(super) async fn run_bulk<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.run(move |conn| {
            conn.pragma_update(None, "mmap_size", 0)?;
            let out = f(conn);
            // Failing to map the file again leaves this connection on `pread`: slower, not wrong.
            let _ = conn.pragma_update(None, "mmap_size", schema::READ_MMAP_BYTES);
            out
        })
        .await?
    }
}
