//! What the Primary removes over time: expired leases ([`expiry_loop`]) and, with
//! `compaction_interval`, old history ([`run`]). Periodic compaction: every interval, the
//! history is compacted at the revision that was current one interval earlier, so at least one
//! interval of history is always kept — etcd's `--auto-compaction-mode=periodic`. Clients
//! watching from before that revision get etcd's compacted error, as with etcd; kube-apiserver's
//! own compaction (every 5 minutes) is unaffected: whichever is newer wins.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Error, Store};

/// Compacts `store` every `interval` until `stop` turns true.
pub(crate) async fn run(store: Store, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The revision one interval ago.
    let mut previous = store.current_revision();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let target = previous;
        previous = store.current_revision();
        if target <= store.compact_revision() {
            continue;
        }
        match store.compact(target, false).await {
            Ok(_) => tracing::info!(revision = target, ?interval, "periodic compaction"),
            // Compacted further meanwhile (a client's Compact): nothing to do.
            Err(Error::Compacted) => {}
            Err(e) => {
                tracing::warn!(revision = target, error = %e, "periodic compaction failed; retried at the next interval")
            }
        }
    }
}

/// Revokes expired leases every 500 ms (etcd's check interval) until `shutdown` fires.
pub(crate) async fn expiry_loop(store: Store, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        for id in store.leases().expired(Instant::now()) {
            match store.lease_revoke(id).await {
                Ok(rev) => tracing::info!(lease = id, revision = rev, "lease_expired"),
                Err(Error::LeaseNotFound) => {}
                Err(e) => {
                    tracing::warn!(lease = id, error = %e, "revoking an expired lease failed; will retry")
                }
            }
        }
    }
}
