//! The watch hub: a bounded in-memory log of recent committed events and a notification of the
//! latest published revision.
//!
//! Owns: the recent-event ring, eviction by bytes and count, the revision signal. Never blocks a
//! writer: appending is a short critical section, waking watchers is a `watch` channel. A slow
//! watcher never stalls anything else and never loses events: whatever it needs that has left
//! the ring it reads back from the store's history.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

use etcd_client::proto::PbEvent;
use prost::Message;
use tokio::sync::watch;

/// All events of one revision, in sub-revision order.
#[derive(Debug, Clone, PartialEq)]
pub struct EventBatch {
    pub revision: i64,
    pub events: Vec<PbEvent>,
}

/// Limits of the recent-event ring.
#[derive(Debug, Clone, Copy)]
pub struct RingLimits {
    pub max_bytes: usize,
    pub max_revisions: usize,
}

impl Default for RingLimits {
    fn default() -> Self {
        RingLimits {
            max_bytes: 64 << 20,
            max_revisions: 100_000,
        }
    }
}

#[derive(Clone)]
pub struct WatchHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    ring: RwLock<Ring>,
    rev_tx: watch::Sender<i64>,
}

struct Ring {
    batches: VecDeque<(Arc<EventBatch>, usize)>,
    bytes: usize,
    /// Every revision >= `covers_from` that has events is in `batches`.
    covers_from: i64,
    limits: RingLimits,
}

impl WatchHub {
    pub fn new(limits: RingLimits) -> WatchHub {
        let (rev_tx, _) = watch::channel(0);
        WatchHub {
            inner: Arc::new(HubInner {
                ring: RwLock::new(Ring {
                    batches: VecDeque::new(),
                    bytes: 0,
                    covers_from: 1,
                    limits,
                }),
                rev_tx,
            }),
        }
    }

    fn ring_mut(&self) -> std::sync::RwLockWriteGuard<'_, Ring> {
        self.inner.ring.write().unwrap_or_else(|p| p.into_inner())
    }

    fn ring(&self) -> std::sync::RwLockReadGuard<'_, Ring> {
        self.inner.ring.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Empties the ring; the store's history up to `current` is only on disk.
    pub fn reset(&self, current: i64) {
        let mut ring = self.ring_mut();
        ring.batches.clear();
        ring.bytes = 0;
        ring.covers_from = current + 1;
        drop(ring);
        self.inner.rev_tx.send_replace(current);
    }

    /// Appends committed batches (called by the writer before it publishes the revision).
    pub fn append(&self, batches: Vec<EventBatch>) {
        if batches.is_empty() {
            return;
        }
        let mut ring = self.ring_mut();
        for b in batches {
            let size = b.events.iter().map(|e| e.encoded_len()).sum::<usize>() + 16;
            ring.bytes += size;
            ring.batches.push_back((Arc::new(b), size));
        }
        while ring.batches.len() > ring.limits.max_revisions || ring.bytes > ring.limits.max_bytes {
            match ring.batches.pop_front() {
                Some((b, size)) => {
                    ring.bytes -= size;
                    ring.covers_from = b.revision + 1;
                }
                None => break,
            }
        }
    }

    /// Publishes the latest revision, waking every watcher.
    pub fn notify(&self, rev: i64) {
        self.inner.rev_tx.send_replace(rev);
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.inner.rev_tx.subscribe()
    }

    /// Batches with revisions in `from..=to`, or None when the ring no longer holds `from`.
    pub fn recent(&self, from: i64, to: i64) -> Option<Vec<Arc<EventBatch>>> {
        let ring = self.ring();
        if from < ring.covers_from {
            return None;
        }
        let start = ring.batches.partition_point(|(b, _)| b.revision < from);
        Some(
            ring.batches
                .iter()
                .skip(start)
                .take_while(|(b, _)| b.revision <= to)
                .map(|(b, _)| b.clone())
                .collect(),
        )
    }

    /// (revisions, bytes) held in the ring.
    pub fn ring_size(&self) -> (usize, usize) {
        let ring = self.ring();
        (ring.batches.len(), ring.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_client::proto::PbKeyValue;

    fn batch(rev: i64, value_len: usize) -> EventBatch {
        EventBatch {
            revision: rev,
            events: vec![PbEvent {
                r#type: 0,
                kv: Some(PbKeyValue {
                    key: b"k".to_vec(),
                    mod_revision: rev,
                    value: vec![0; value_len],
                    ..Default::default()
                }),
                prev_kv: None,
            }],
        }
    }

    #[test]
    fn ring_serves_recent_and_refuses_evicted() {
        let hub = WatchHub::new(RingLimits {
            max_bytes: 1 << 20,
            max_revisions: 3,
        });
        hub.reset(1);
        hub.append((2..=6).map(|r| batch(r, 10)).collect());
        assert!(hub.recent(3, 6).is_none(), "revision 3 was evicted");
        let got: Vec<i64> = hub
            .recent(4, 5)
            .unwrap()
            .iter()
            .map(|b| b.revision)
            .collect();
        assert_eq!(got, vec![4, 5]);
        assert_eq!(hub.recent(7, 9).unwrap().len(), 0);
    }

    #[test]
    fn ring_evicts_by_bytes() {
        let hub = WatchHub::new(RingLimits {
            max_bytes: 300,
            max_revisions: 100,
        });
        hub.reset(1);
        hub.append((2..=5).map(|r| batch(r, 100)).collect());
        let (n, bytes) = hub.ring_size();
        assert!(bytes <= 300 && n < 4, "n={n} bytes={bytes}");
        assert!(hub.recent(2, 5).is_none());
    }
}
