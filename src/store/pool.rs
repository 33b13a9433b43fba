//! A small pool of read-only connections used from `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use super::{Error, Result, schema};

#[derive(Clone)]
pub struct ReaderPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
}

impl ReaderPool {
    pub fn open(path: &Path, size: usize) -> Result<ReaderPool> {
        let mut idle = Vec::with_capacity(size);
        for _ in 0..size {
            idle.push(schema::open_read(path)?);
        }
        Ok(ReaderPool {
            inner: Arc::new(PoolInner {
                path: path.to_path_buf(),
                idle: Mutex::new(idle),
                max_idle: size,
            }),
        })
    }

    /// Runs `f` with a reader connection on the blocking thread pool.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> T + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match inner.idle.lock().ok().and_then(|mut v| v.pop()) {
                Some(c) => c,
                None => schema::open_read(&inner.path)?,
            };
            let out = f(&conn);
            if let Ok(mut idle) = inner.idle.lock()
                && idle.len() < inner.max_idle
            {
                idle.push(conn);
            }
            Ok(out)
        })
        .await
        .map_err(|e| Error::Corrupt(format!("reader task failed: {e}")))?
    }
}
