//! The fatal-error channel: how a part of the node that can no longer go on safely (a write
//! whose outcome is unknown, a lost writer lock, a failed promotion) stops the node.
//!
//! The part records a [`Fatal`] and stops doing its own work at once (the writer answers no
//! further request; see `store::writer`). `server::run` waits on the channel next to the
//! shutdown signal and returns the error without a graceful handover; `main` alone turns it
//! into the exit code. Nothing below `main` calls `process::exit`, so each case can be tested
//! in-process.

use std::sync::Arc;

use tokio::sync::watch;

/// Exit code of a node stopped by a fatal error: `EX_TEMPFAIL`, "try again" — a restart
/// resolves every case (startup backfill reads the bucket; the lock is re-elected).
pub const EXIT_CODE: u8 = 75;

/// Why the node must stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fatal {
    /// A write may or may not be durable and it cannot be told which: going on could hand its
    /// revisions to other writes. Startup backfill resolves it.
    #[error("{what}: outcome unknown ({reason}); stopping so that startup backfill resolves it")]
    Indeterminate { what: String, reason: String },
    /// The writer lock could not be kept: another node may already be the Primary.
    #[error("{0}; stopping to stay fenced")]
    LostLock(String),
    /// A node that holds the writer lock could not become the Primary.
    #[error("promotion to primary failed: {0}")]
    Promotion(String),
}

/// Where fatal errors are recorded; cheap to clone. The first one recorded wins.
#[derive(Clone, Debug)]
pub struct FatalChannel {
    tx: Arc<watch::Sender<Option<Fatal>>>,
}

impl Default for FatalChannel {
    fn default() -> Self {
        FatalChannel::new()
    }
}

impl FatalChannel {
    pub fn new() -> FatalChannel {
        FatalChannel {
            tx: Arc::new(watch::channel(None).0),
        }
    }

    /// Records `fatal` (logged once) unless another was recorded first.
    pub fn record(&self, fatal: Fatal) {
        self.tx.send_if_modified(|slot| {
            if slot.is_some() {
                return false;
            }
            tracing::error!(error = %fatal, "fatal_error");
            *slot = Some(fatal);
            true
        });
    }

    /// The error recorded so far, if any.
    pub fn get(&self) -> Option<Fatal> {
        self.tx.borrow().clone()
    }

    /// Completes once a fatal error is recorded.
    pub async fn wait(&self) -> Fatal {
        let mut rx = self.tx.subscribe();
        loop {
            if let Some(f) = rx.borrow_and_update().clone() {
                return f;
            }
            // The sender lives in `self`: `changed` cannot fail while we hold it.
            let _ = rx.changed().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_fatal_error_wins_and_wakes_waiters() {
        let ch = FatalChannel::new();
        assert_eq!(ch.get(), None);
        let waiter = tokio::spawn({
            let ch = ch.clone();
            async move { ch.wait().await }
        });
        ch.record(Fatal::LostLock("lease ran out".into()));
        ch.record(Fatal::Promotion("later".into()));
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("waiter woke")
            .expect("waiter ran");
        assert_eq!(got, Fatal::LostLock("lease ran out".into()));
        assert_eq!(ch.get(), Some(Fatal::LostLock("lease ran out".into())));
    }
}
