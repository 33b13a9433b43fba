//! systemd integration: `READY=1` once the node serves, `STATUS=` while loading, `STOPPING=1`
//! on shutdown, and `WATCHDOG=1` from a loop that proves the store still answers. Every call is
//! a no-op without `NOTIFY_SOCKET`.

use std::time::Duration;

use sd_notify::NotifyState;

use crate::store::Store;

pub(crate) fn ready() {
    let _ = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status("serving")]);
}

pub(crate) fn status(text: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Status(text)]);
}

pub(crate) fn stopping() {
    let _ = sd_notify::notify(
        false,
        &[NotifyState::Stopping, NotifyState::Status("stopping")],
    );
}

/// Sends `WATCHDOG=1` at half the configured interval, but only while a read through the store
/// completes in time: a wedged process stops petting the watchdog and systemd restarts it.
pub(crate) async fn watchdog(store: Store, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = Duration::from_micros(usec / 2);
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        match tokio::time::timeout(period, store.db_size()).await {
            Ok(Ok(_)) => {
                let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "watchdog probe failed; not notifying systemd")
            }
            Err(_) => tracing::error!("watchdog probe timed out; not notifying systemd"),
        }
    }
}
