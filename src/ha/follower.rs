//! A Replica's follower loop: applies the Primary's committed records to the local copy.
//!
//! Catch-up needs no restart: every (re)connection asks for everything after the local head,
//! and the Primary sends its history first (from its own local copy), then live commits. A
//! Replica behind the Primary's compaction revision gets the Primary's whole copy instead,
//! which replaces its own in one transaction (readers see the old copy until it commits). A stream from an older epoch than the one this node knows is
//! dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::pending::{PendingError, PendingLog};
use super::{Cluster, PrimaryInfo, Role};
use crate::durability::from_proto;
use crate::proto as pb;
use crate::store::{self, Action, Store};

/// Why a follow stream ended.
#[derive(Debug, thiserror::Error)]
enum Ended {
    /// The Primary refused or the stream broke (the Primary's status or tonic's).
    #[error("{}", .0.message())]
    Peer(#[from] tonic::Status),
    #[error("no message for {} s", IDLE.as_secs())]
    Idle,
    #[error("closed by the primary")]
    Closed,
    #[error("stream of epoch {got} is older than the known epoch {known}")]
    StaleEpoch { got: u64, known: u64 },
    #[error("the primary's whole copy ended before it was complete")]
    IncompleteCopy,
    #[error("gap: got revision {got} after local head {head}")]
    Gap { got: i64, head: i64 },
    /// The pending log refused the records (an epoch older than a promise) or failed.
    #[error("{0}")]
    Pending(#[from] PendingError),
    /// Applying to the local copy failed; its [`store::Error::action`] says what to do.
    #[error("local copy: {0}")]
    Store(#[from] store::Error),
}

/// A Replica with nothing new to receipt still receipts this often (the Primary counts a
/// Replica as healthy for a heartbeat × `replication.degradation_count` after its last one).
const RECEIPT_REFRESH: Duration = Duration::from_millis(100);
/// Pause before reconnecting after a broken stream.
const RETRY: Duration = Duration::from_millis(200);
/// The Primary sends at least one message a second; a stream silent this long is dead.
const IDLE: Duration = Duration::from_secs(10);

/// Follows whichever node is Primary until `stop`; on a Primary it waits.
pub(crate) async fn follow(cluster: Cluster, store: Store, mut stop: watch::Receiver<bool>) {
    let mut roles = cluster.subscribe_role();
    let mut last_error = String::new();
    loop {
        let role = roles.borrow_and_update().clone();
        match role {
            Role::Replica { primary } => {
                tokio::select! {
                    res = follow_once(&cluster, &store, &primary) => {
                        // A whole-copy transfer cut off midway leaves the old copy.
                        let _ = store.replace_abort().await;
                        if let Err(e) = res {
                            if let Ended::Store(err) = &e
                                && err.action() == Action::Stop
                            {
                                // The local writer is gone (the node is stopping): nothing to apply to.
                                tracing::warn!(error = %err, "follower stopped: the local store is not writable");
                                return;
                            }
                            let text = e.to_string();
                            if text != last_error {
                                tracing::warn!(primary = %primary.node_id, error = %text, "follow stream ended; reconnecting");
                                last_error = text;
                            }
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(RETRY) => {}
                            _ = stop.changed() => return,
                        }
                    }
                    _ = roles.changed() => { let _ = store.replace_abort().await; }
                    _ = stop.changed() => { let _ = store.replace_abort().await; return }
                }
            }
            Role::Primary { .. } | Role::Transition => {
                tokio::select! {
                    r = roles.changed() => if r.is_err() { return },
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

async fn follow_once(cluster: &Cluster, store: &Store, primary: &PrimaryInfo) -> Result<(), Ended> {
    let mut client = cluster.peer(&primary.peer_addr)?;
    let from = store.current_revision() + 1;
    let head_digest = super::peer::head_digest(store, from - 1)
        .await
        .map_err(Ended::Peer)?
        .unwrap_or(0);
    let mut stream = client
        .follow(pb::FollowRequest {
            node_id: cluster.node_id().to_string(),
            from_revision: from,
            head_digest,
        })
        .await?
        .into_inner();
    tracing::info!(primary = %primary.node_id, from, "following");
    let mut replacing = false;
    let mut last_receipt: Option<(u64, std::time::Instant)> = None;
    let mut receipts = Receipter::new(cluster, primary);
    loop {
        let msg = match tokio::time::timeout(IDLE, stream.message()).await {
            Err(_) => return Err(Ended::Idle),
            Ok(Err(e)) => return Err(Ended::Peer(e)),
            Ok(Ok(None)) => return Err(Ended::Closed),
            Ok(Ok(Some(msg))) => msg,
        };
        if msg.epoch < primary.epoch {
            return Err(Ended::StaleEpoch {
                got: msg.epoch,
                known: primary.epoch,
            });
        }
        cluster.followed(msg.epoch);
        if msg.replace_through > 0 {
            // The whole copy of the Primary (this node was behind its compaction revision).
            if !replacing {
                tracing::info!(
                    through = msg.replace_through,
                    "replacing the local copy with the primary's"
                );
                store.replace_begin().await?;
                replacing = true;
            }
            if !msg.records.is_empty() {
                store
                    .import(msg.records.into_iter().map(from_proto).collect())
                    .await?;
            }
            if msg.committed_revision == msg.replace_through {
                store.replace_commit(msg.compaction_revision).await?;
                replacing = false;
            }
            continue;
        }
        if replacing {
            return Err(Ended::IncompleteCopy);
        }
        if msg.commit_index > 0 {
            let Some(pending) = cluster.pending() else {
                return Err(Ended::Pending(PendingError::Io {
                    path: "pending".into(),
                    source: std::io::Error::other("the pending log is not open"),
                }));
            };
            let epoch = msg.epoch;
            // Pending records are receipted at once (the Primary waits); a message without
            // them only when the last receipt is getting old (it keeps this node healthy).
            let pending_records = msg.records.iter().any(|r| r.revision > msg.commit_index);
            let due = pending_records
                || last_receipt.is_none_or(|(e, at)| e != epoch || at.elapsed() >= RECEIPT_REFRESH);
            take_quorum(
                pending,
                store,
                epoch,
                &primary.node_id,
                msg.records,
                msg.commit_index,
                msg.durable_revision,
                |revision| {
                    if due {
                        receipts.send(epoch, revision);
                        last_receipt = Some((epoch, std::time::Instant::now()));
                    }
                },
            )
            .await?;
        } else {
            apply_committed(store, msg.records).await?;
        }
        if msg.compaction_revision > store.compact_revision()
            && msg.compaction_revision <= store.current_revision()
        {
            match store.compact(msg.compaction_revision, false).await {
                Ok(_) | Err(store::Error::Compacted) => {}
                Err(e) => return Err(Ended::Store(e)),
            }
        }
    }
}

/// Applies `records` (committed, in order) above the local head; older ones were applied.
async fn apply_committed(store: &Store, records: Vec<pb::Record>) -> Result<(), Ended> {
    let head = store.current_revision();
    let records: Vec<_> = records
        .into_iter()
        .filter(|r| r.revision > head)
        .map(from_proto)
        .collect();
    if let Some(first) = records.first() {
        if first.revision != head + 1 {
            return Err(Ended::Gap {
                got: first.revision,
                head,
            });
        }
        store.import(records).await?;
    }
    Ok(())
}

/// Runs `f` on the pending log (it fsyncs) where it may block: in place on a multi-threaded
/// runtime (the runtime moves this worker's other tasks away; no hand-off to another thread and
/// back, which costs a Primary waiting for the receipt more than the fsync), else on the
/// blocking pool.
async fn with_log<T: Send + 'static>(
    log: tokio::sync::OwnedMutexGuard<PendingLog>,
    f: impl FnOnce(&mut PendingLog) -> Result<T, PendingError> + Send + 'static,
) -> Result<(tokio::sync::OwnedMutexGuard<PendingLog>, T), Ended> {
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread
    {
        let mut log = log;
        return tokio::task::block_in_place(|| f(&mut log))
            .map(|t| (log, t))
            .map_err(Ended::Pending);
    }
    tokio::task::spawn_blocking(move || {
        let mut log = log;
        f(&mut log).map(|t| (log, t))
    })
    .await
    .map_err(|e| {
        Ended::Pending(PendingError::Io {
            path: "pending".into(),
            source: std::io::Error::other(e.to_string()),
        })
    })?
    .map_err(Ended::Pending)
}

/// A quorum-mode message of writer `epoch`: the records at or below `commit_index` are
/// applied, and so are the pending records of this epoch it now covers; the records above it
/// go to the pending log, which forgets records only once they are in the bucket (`durable`:
/// the local copy does not fsync every commit). `receipt` gets the revision to receipt: the
/// last pending record of this epoch, or the local head (a receipt also tells the Primary that
/// this Replica follows it, which makes it count as healthy).
///
/// A message of new pending records only (the usual one) is receipted as soon as they are in
/// the pending log, before what the commit index covers is applied: the Primary is waiting.
#[allow(clippy::too_many_arguments)]
async fn take_quorum(
    pending: &std::sync::Arc<tokio::sync::Mutex<PendingLog>>,
    store: &Store,
    epoch: u64,
    leader: &str,
    records: Vec<pb::Record>,
    commit_index: i64,
    durable: i64,
    receipt: impl FnOnce(i64),
) -> Result<(), Ended> {
    let (committed, held): (Vec<_>, Vec<_>) = records
        .into_iter()
        .partition(|r| r.revision <= commit_index);
    if committed.is_empty() && !held.is_empty() {
        let log = pending.clone().lock_owned().await;
        let head = store.current_revision();
        let (log, revision) = hold(log, epoch, leader, head, held).await?;
        receipt(revision);
        apply_covered(log, store, epoch, commit_index, durable).await?;
        return Ok(());
    }
    apply_committed(store, committed).await?;
    let log = pending.clone().lock_owned().await;
    let log = apply_covered(log, store, epoch, commit_index, durable).await?;
    let head = store.current_revision();
    let (_, revision) = hold(log, epoch, leader, head, held).await?;
    receipt(revision);
    Ok(())
}

/// Appends the `held` records the log does not have yet (above the local `head` and the log's
/// own last record of this epoch); returns the revision to receipt.
async fn hold(
    log: tokio::sync::OwnedMutexGuard<PendingLog>,
    epoch: u64,
    leader: &str,
    head: i64,
    held: Vec<pb::Record>,
) -> Result<(tokio::sync::OwnedMutexGuard<PendingLog>, i64), Ended> {
    if held.is_empty() {
        return Ok((log, head));
    }
    let last = if log.epoch() == epoch {
        log.last_revision().unwrap_or(head).max(head)
    } else {
        head
    };
    let held: Vec<_> = held.into_iter().filter(|r| r.revision > last).collect();
    let Some(revision) = held.last().map(|r| r.revision) else {
        return Ok((log, last));
    };
    let leader = leader.to_string();
    let (log, ()) = with_log(log, move |l| l.append(epoch, &leader, head, &held)).await?;
    Ok((log, revision))
}

/// Applies this epoch's pending records that `commit_index` covers, then lets the log forget
/// what is both applied and in the bucket (`durable`).
async fn apply_covered(
    log: tokio::sync::OwnedMutexGuard<PendingLog>,
    store: &Store,
    epoch: u64,
    commit_index: i64,
    durable: i64,
) -> Result<tokio::sync::OwnedMutexGuard<PendingLog>, Ended> {
    // Only this epoch's pending records are covered: an older writer's may differ.
    if log.epoch() == epoch {
        let covered: Vec<_> = log
            .above(store.current_revision())
            .iter()
            .take_while(|r| r.revision <= commit_index)
            .cloned()
            .collect();
        apply_committed(store, covered).await?;
    }
    let forget = durable.min(store.current_revision());
    if !log.holds_through(forget) {
        return Ok(log);
    }
    let (log, ()) = with_log(log, move |l| l.applied(forget)).await?;
    Ok(log)
}

/// Tells the Primary that this node holds a writer epoch's records up to a revision, in the
/// background (the stream goes on; a lost receipt only makes the Primary wait or fall back).
/// Receipts go on one client stream per Follow stream, opened with the first receipt; a
/// Primary that does not know the stream (an older version during an upgrade) gets one call
/// per receipt instead.
struct Receipter<'a> {
    cluster: &'a Cluster,
    primary: &'a PrimaryInfo,
    stream: Option<tokio::sync::mpsc::UnboundedSender<pb::ReceiptRequest>>,
    unary: Arc<std::sync::atomic::AtomicBool>,
}

impl<'a> Receipter<'a> {
    fn new(cluster: &'a Cluster, primary: &'a PrimaryInfo) -> Self {
        Receipter {
            cluster,
            primary,
            stream: None,
            unary: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    fn send(&mut self, epoch: u64, revision: i64) {
        let req = pb::ReceiptRequest {
            node_id: self.cluster.node_id().to_string(),
            epoch,
            revision,
        };
        let unary = self.unary.load(std::sync::atomic::Ordering::Relaxed);
        // The usual case: onto the open stream, nothing else to look up.
        if !unary
            && let Some(tx) = &self.stream
            && !tx.is_closed()
        {
            let _ = tx.send(req);
            return;
        }
        let Ok(mut client) = self.cluster.peer(&self.primary.peer_addr) else {
            return;
        };
        if unary {
            tokio::spawn(async move {
                if let Err(e) = client.receipt(req).await {
                    tracing::debug!(error = %e, revision, "receipt not delivered");
                }
            });
            return;
        }
        // No stream yet, or it ended (the Primary went away, or refused it): open one.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let _ = tx.send(req);
        self.stream = Some(tx);
        let unary = self.unary.clone();
        tokio::spawn(async move {
            let res = client
                .receipts(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
                .await;
            match res {
                Err(e) if e.code() == tonic::Code::Unimplemented => {
                    tracing::info!("the primary takes receipts one call at a time");
                    unary.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => tracing::debug!(error = %e, "receipt stream ended"),
                Ok(_) => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::testutil::created as rec;

    async fn value_at(store: &Store, revision: i64) -> Vec<u8> {
        let got = store
            .export(
                revision,
                revision,
                Vec::new(),
                |_: &mut Vec<Vec<u8>>, _| Ok(()),
                |v, r| {
                    v.push(r.value.unwrap_or_default().to_vec());
                    Ok(())
                },
            )
            .await
            .unwrap();
        got.into_iter().next().unwrap_or_default()
    }

    /// `take_quorum`, returning the revision it receipted.
    async fn receipted(
        log: &Arc<tokio::sync::Mutex<PendingLog>>,
        store: &Store,
        epoch: u64,
        records: Vec<pb::Record>,
        commit: i64,
        durable: i64,
    ) -> Result<Option<i64>, Ended> {
        let mut got = None;
        take_quorum(log, store, epoch, "a", records, commit, durable, |r| {
            got = Some(r)
        })
        .await?;
        Ok(got)
    }

    #[tokio::test]
    async fn pending_records_wait_for_the_commit_index_of_their_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::testutil::local_store(dir.path());
        let log = Arc::new(tokio::sync::Mutex::new(
            PendingLog::open(&dir.path().join("pending")).unwrap(),
        ));
        let h = store.current_revision();
        let take = |epoch, records, commit| {
            let (log, store) = (log.clone(), store.clone());
            async move { receipted(&log, &store, epoch, records, commit, commit).await }
        };

        // Pending: on disk and receipted, not applied.
        assert_eq!(
            take(3, vec![rec(h + 1, "x")], h).await.unwrap(),
            Some(h + 1)
        );
        assert_eq!(store.current_revision(), h);
        // The next message commits it and brings another pending record.
        assert_eq!(
            take(3, vec![rec(h + 2, "x")], h + 1).await.unwrap(),
            Some(h + 2)
        );
        assert_eq!(store.current_revision(), h + 1);
        // A record sent again is receipted, not appended twice.
        assert_eq!(
            take(3, vec![rec(h + 2, "x")], h + 1).await.unwrap(),
            Some(h + 2)
        );
        assert_eq!(log.lock().await.above(0).len(), 1);
        // A commit index alone applies what it covers and empties the log.
        assert_eq!(take(3, vec![], h + 2).await.unwrap(), Some(h + 2));
        assert_eq!(store.current_revision(), h + 2);
        assert_eq!(log.lock().await.last_revision(), None);

        // A pending record of epoch 3 that its writer never committed ...
        take(3, vec![rec(h + 3, "old")], h + 2).await.unwrap();
        // ... is not what epoch 4's commit index covers: epoch 4's own record is applied.
        assert_eq!(
            take(4, vec![rec(h + 3, "new")], h + 3).await.unwrap(),
            Some(h + 3)
        );
        assert_eq!(store.current_revision(), h + 3);
        assert_eq!(value_at(&store, h + 3).await, b"new");
        // And epoch 4's pending records replace epoch 3's in the log.
        take(3, vec![rec(h + 4, "old")], h + 3).await.unwrap();
        assert_eq!(
            take(4, vec![rec(h + 4, "new")], h + 3).await.unwrap(),
            Some(h + 4)
        );
        assert_eq!(take(4, vec![], h + 4).await.unwrap(), Some(h + 4));
        assert_eq!(value_at(&store, h + 4).await, b"new");

        // Applied but not yet in the bucket: the pending log keeps the record (the local copy
        // may lose its last commits in a power cut).
        take(4, vec![rec(h + 5, "x")], h + 4).await.unwrap();
        receipted(&log, &store, 4, vec![], h + 5, h + 4)
            .await
            .unwrap();
        assert_eq!(store.current_revision(), h + 5);
        assert_eq!(log.lock().await.last_revision(), Some(h + 5));
        take(4, vec![], h + 5).await.unwrap();
        assert_eq!(log.lock().await.last_revision(), None);

        // A promise refuses the older writer's records; a gap is refused too.
        log.lock().await.promise(5).unwrap();
        let err = take(4, vec![rec(h + 6, "x")], h + 5).await.unwrap_err();
        assert!(
            matches!(err, Ended::Pending(PendingError::StaleEpoch { .. })),
            "{err}"
        );
        let err = take(5, vec![rec(h + 8, "x")], h + 7).await.unwrap_err();
        assert!(
            matches!(err, Ended::Pending(PendingError::Gap { .. })),
            "{err}"
        );
    }
}
