//! Helpers shared by the integration tests that run real processes: seaweedfs (`weed mini`),
//! netsy itself, a fault-injecting TCP proxy, and a write workload with its ledger and checks.
//! Every wait here is bounded by a deadline.
#![allow(dead_code)]

pub mod fs;
pub mod lincheck;
pub mod net;
pub mod node;
pub mod proxy;
pub mod weed;
pub mod workload;

use std::time::{Duration, Instant};

/// Polls `cond` every 50 ms until it returns `Some`, or panics after `limit` naming `what`.
pub async fn poll<T, F, Fut>(what: &str, limit: Duration, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
