//! Quorum mode's shared pieces (docs/design/0010-quorum-replication.md): the receipts a Primary
//! has from its Replicas, and a node's answer to a collection.
//!
//! The Primary side that waits for receipts (the quorum commit hook and its chunk buffer) and
//! the collection a new Primary runs are built on these; until they land the Primary never
//! marks records pending, so Replicas never receipt and no collection runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, watch};
use tonic::Status;

use super::pending::{PendingError, PendingLog};
use crate::durability::to_proto;
use crate::proto as pb;
use crate::store::Store;

/// The newest receipt of one Replica.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Receipt {
    epoch: u64,
    revision: i64,
    at: Instant,
}

/// Receipts by Replica, on the Primary. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Receipts {
    state: Arc<watch::Sender<HashMap<String, Receipt>>>,
}

impl Receipts {
    pub(crate) fn new() -> Self {
        Receipts {
            state: Arc::new(watch::channel(HashMap::new()).0),
        }
    }

    /// Records that `node` holds the records of `epoch` up to `revision`. A receipt of an older
    /// epoch than the node's last one, or of a lower revision in the same epoch, changes nothing.
    pub(crate) fn record(&self, node: &str, epoch: u64, revision: i64) {
        let now = Instant::now();
        self.state.send_if_modified(|map| match map.get_mut(node) {
            Some(r) if (r.epoch, r.revision) >= (epoch, revision) => {
                if r.epoch == epoch {
                    r.at = now;
                }
                false
            }
            _ => {
                map.insert(
                    node.to_string(),
                    Receipt {
                        epoch,
                        revision,
                        at: now,
                    },
                );
                true
            }
        });
    }

    /// Distinct Replicas that hold `epoch`'s records up to `revision`.
    pub(crate) fn count(&self, epoch: u64, revision: i64) -> usize {
        Self::count_in(&self.state.borrow(), epoch, revision)
    }

    fn count_in(map: &HashMap<String, Receipt>, epoch: u64, revision: i64) -> usize {
        map.values()
            .filter(|r| r.epoch == epoch && r.revision >= revision)
            .count()
    }

    /// Replicas that receipted something of `epoch` within `within` (healthy for quorum).
    pub(crate) fn healthy(&self, epoch: u64, within: Duration) -> usize {
        let now = Instant::now();
        self.state
            .borrow()
            .values()
            .filter(|r| r.epoch == epoch && now.duration_since(r.at) <= within)
            .count()
    }

    /// Waits until `needed` Replicas hold `epoch`'s records up to `revision`, at most `timeout`.
    pub(crate) async fn wait(
        &self,
        epoch: u64,
        revision: i64,
        needed: usize,
        timeout: Duration,
    ) -> bool {
        let mut rx = self.state.subscribe();
        tokio::time::timeout(
            timeout,
            rx.wait_for(|map| Self::count_in(map, epoch, revision) >= needed),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }
}

/// This node's answer to a collection by the writer of `epoch` (see [`pb::CollectRequest`]):
/// promises `epoch`, then returns the committed records above `from` from the local copy and
/// the pending ones above those. `followed` is the newest writer epoch this node has followed.
/// The pending log stays locked throughout, so the follower cannot move records from it to the
/// local copy in between.
pub(crate) async fn answer(
    store: &Store,
    pending: &Arc<Mutex<PendingLog>>,
    followed: u64,
    epoch: u64,
    from: i64,
) -> Result<pb::CollectResponse, Status> {
    let guard = pending.clone().lock_owned().await;
    let guard = tokio::task::spawn_blocking(move || {
        let mut guard = guard;
        guard.promise(epoch).map(|()| guard)
    })
    .await
    .map_err(|e| Status::internal(format!("netsy: promise task: {e}")))?
    .map_err(|e| match e {
        PendingError::StaleEpoch { .. } => Status::failed_precondition(format!("netsy: {e}")),
        e => Status::unavailable(format!("netsy: {e}")),
    })?;
    let head = store.current_revision();
    let mut records = if head > from {
        store
            .export(
                from + 1,
                head,
                Vec::new(),
                |v: &mut Vec<pb::Record>, n| {
                    v.reserve(usize::try_from(n).unwrap_or(0));
                    Ok(())
                },
                |v, r| {
                    v.push(to_proto(&r));
                    Ok(())
                },
            )
            .await
            .map_err(Status::from)?
    } else {
        Vec::new()
    };
    records.extend_from_slice(guard.above(head.max(from)));
    Ok(pb::CollectResponse {
        epoch: guard.epoch().max(followed),
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn receipts_count_distinct_replicas_of_one_epoch() {
        let r = Receipts::new();
        r.record("b", 3, 10);
        r.record("c", 3, 12);
        r.record("b", 3, 9); // older: ignored
        assert_eq!(r.count(3, 10), 2);
        assert_eq!(r.count(3, 11), 1);
        assert_eq!(r.count(4, 1), 0);
        r.record("c", 4, 1); // a newer epoch replaces the node's receipt
        assert_eq!(r.count(3, 10), 1);
        assert_eq!(r.count(4, 1), 1);
        r.record("c", 3, 50); // and an older epoch cannot come back
        assert_eq!(r.count(3, 50), 0);
        assert_eq!(r.healthy(4, Duration::from_secs(60)), 1);
        assert_eq!(r.healthy(3, Duration::from_secs(60)), 1);
        assert_eq!(r.healthy(3, Duration::ZERO), 0);
    }

    #[tokio::test]
    async fn waiting_for_receipts_ends_when_enough_arrive_or_at_the_timeout() {
        let r = Receipts::new();
        assert!(!r.wait(1, 5, 1, Duration::from_millis(20)).await);
        let waiter = tokio::spawn({
            let r = r.clone();
            async move { r.wait(1, 5, 2, Duration::from_secs(10)).await }
        });
        r.record("b", 1, 5);
        r.record("b", 1, 6);
        assert!(!waiter.is_finished());
        r.record("c", 1, 7);
        assert!(
            tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("the wait ends once two replicas receipted")
                .unwrap()
        );
        // Already met: no wait at all.
        assert!(r.wait(1, 5, 2, Duration::ZERO).await);
    }

    fn rec(revision: i64) -> pb::Record {
        pb::Record {
            revision,
            key: format!("k{revision}").into_bytes(),
            created: true,
            create_revision: revision,
            version: 1,
            value: b"v".to_vec(),
            ..Default::default()
        }
    }

    fn revisions(records: &[pb::Record]) -> Vec<i64> {
        records.iter().map(|r| r.revision).collect()
    }

    #[tokio::test]
    async fn an_answer_promises_and_holds_committed_then_pending_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            crate::store::StoreOptions {
                data_dir: dir.path().join("db"),
                node_id: "b".into(),
                readers: 1,
                fatal: Default::default(),
            },
            crate::watch::WatchHub::new(Default::default()),
            Box::new(crate::store::NoopCommitHook),
        )
        .unwrap();
        let h = store.current_revision();
        store
            .import(vec![
                crate::durability::from_proto(rec(h + 1)),
                crate::durability::from_proto(rec(h + 2)),
            ])
            .await
            .unwrap();
        let log = PendingLog::open(&dir.path().join("pending")).unwrap();
        let pending = Arc::new(Mutex::new(log));
        pending
            .lock()
            .await
            .append(7, "a", h + 2, &[rec(h + 3), rec(h + 4)])
            .unwrap();

        let got = answer(&store, &pending, 6, 8, h).await.unwrap();
        assert_eq!(got.epoch, 7);
        assert_eq!(revisions(&got.records), [h + 1, h + 2, h + 3, h + 4]);
        let got = answer(&store, &pending, 6, 8, h + 3).await.unwrap();
        assert_eq!(revisions(&got.records), [h + 4]);
        // The promise holds: an older collector is refused, and so are the old writer's records.
        let err = answer(&store, &pending, 6, 7, h).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
        let stale = pending.lock().await.append(7, "a", h + 4, &[rec(h + 5)]);
        assert!(matches!(stale, Err(PendingError::StaleEpoch { .. })));
        // Nothing pending, a newer epoch followed: the answer says so.
        let empty = answer(&store, &pending, 9, 9, h + 4).await.unwrap();
        assert_eq!((empty.epoch, empty.records.len()), (9, 0));
    }
}
