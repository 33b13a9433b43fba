//! Bounded waits: every wait polls a condition against a deadline; nothing sleeps to synchronise.

use std::time::{Duration, Instant};

use super::http::http_get;

/// Polls `cond` every `every` until it returns `Some`; after `limit`, an error naming `what`.
pub async fn try_poll_every<T, F, Fut>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut cond: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = cond().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        tokio::time::sleep(every).await; // poll interval, bounded by the deadline
    }
}

/// Polls `cond` every `every` until it returns `Some`, or panics after `limit` naming `what`.
pub async fn poll_every<T, F, Fut>(what: &str, limit: Duration, every: Duration, cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    try_poll_every(what, limit, every, cond)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `cond` every 50 ms until it returns `Some`, or panics after `limit` naming `what`.
pub async fn poll<T, F, Fut>(what: &str, limit: Duration, cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll_every(what, limit, Duration::from_millis(50), cond).await
}

/// Polls a synchronous `cond` every `every` until it holds, or panics after `limit`.
pub async fn wait_until(
    what: &str,
    limit: Duration,
    every: Duration,
    mut cond: impl FnMut() -> bool,
) {
    poll_every(what, limit, every, || {
        let ok = cond();
        async move { ok.then_some(()) }
    })
    .await
}

/// Why a server did not become healthy.
#[derive(Debug)]
pub enum NotReady {
    /// The process exited first (`exited` said how).
    Exited(String),
    /// `GET /health` did not answer 200 within the limit.
    Timeout,
}

/// Polls `GET /health` on `health_port` every `every` until it answers 200. `exited` is asked
/// first on each round and ends the wait if the process is gone.
pub async fn healthy(
    health_port: u16,
    limit: Duration,
    every: Duration,
    mut exited: impl FnMut() -> Option<String>,
) -> Result<(), NotReady> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(how) = exited() {
            return Err(NotReady::Exited(how));
        }
        if let Some((200, _)) = http_get(health_port, "/health").await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(NotReady::Timeout);
        }
        tokio::time::sleep(every).await; // poll interval, bounded by the deadline
    }
}
