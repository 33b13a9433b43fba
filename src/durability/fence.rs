//! The writer's fence: until when this node certainly holds the writer lock. The lock
//! (`ha::lock`) extends it after each renewal; the commit hook acknowledges nothing once it has
//! run out, and the Primary serves linearizable reads locally only while it holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Shared, cheap to clone and to check.
#[derive(Clone, Debug)]
pub(crate) struct Fence {
    /// Milliseconds since `origin` until which the holder may still write.
    valid_until: Arc<AtomicU64>,
    origin: Instant,
}

impl Default for Fence {
    fn default() -> Self {
        Fence::new()
    }
}

impl Fence {
    /// A fence that holds nothing yet.
    pub(crate) fn new() -> Fence {
        Fence {
            valid_until: Arc::new(AtomicU64::new(0)),
            origin: Instant::now(),
        }
    }

    /// Holds until `validity` after `from` (the moment the renewal that proved it was sent).
    pub(crate) fn extend(&self, from: Instant, validity: Duration) {
        let until = from.saturating_duration_since(self.origin) + validity;
        self.valid_until
            .store(until.as_millis() as u64, Ordering::Release);
    }

    /// Whether the lease certainly still holds.
    pub(crate) fn holds(&self) -> bool {
        !self.remaining().is_zero()
    }

    /// How long it still holds.
    pub(crate) fn remaining(&self) -> Duration {
        let until = Duration::from_millis(self.valid_until.load(Ordering::Acquire));
        until.saturating_sub(self.origin.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_only_within_its_validity() {
        let f = Fence::new();
        assert!(!f.holds(), "a new fence holds nothing");
        f.extend(Instant::now(), Duration::from_secs(60));
        assert!(f.holds());
        assert!(f.clone().remaining() > Duration::from_secs(59));
        f.extend(Instant::now(), Duration::ZERO);
        assert!(!f.holds());
    }
}
