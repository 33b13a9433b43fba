//! Object storage as the system of record (single node: every write synchronous to the bucket).
//!
//! Owns: the commit hook that uploads each commit group as one create-only chunk before SQLite
//! commits (group commit: concurrent writes share one upload), lease and compaction state in
//! the bucket, snapshots with chunk cleanup and retention, and the startup backfill that
//! rebuilds the local SQLite copy. Never builds an object key (that is `objstore::layout`) and
//! never runs SQL (that is `store`).

pub(crate) mod backfill;
pub(crate) mod epochs;
mod fence;
mod snapshot;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

pub(crate) use backfill::backfill;
pub(crate) use epochs::EpochLog;
pub(crate) use fence::Fence;
pub(crate) use snapshot::{SnapshotPolicy, SnapshotWorker};

use crate::objstore::{self, EncodedChunk, ErrorKind, ObjectStorage, UploadOutcome};
use crate::proto as pb;
use crate::store::{CommitHook, HookError, Record};

/// Longest one chunk upload attempt may take (plus [`UPLOAD_BYTES_PER_SEC`] for its size)
/// before it is abandoned and retried with the same bytes.
const ATTEMPT_DEADLINE: Duration = Duration::from_secs(10);
/// Upload rate assumed when sizing an attempt's deadline.
const UPLOAD_BYTES_PER_SEC: u64 = 8 << 20;
/// Longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Longest a lease or compaction object write may take.
const UPLOAD_DEADLINE: Duration = Duration::from_secs(30);

/// Notice to the snapshot worker after each durable group.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Committed {
    pub revision: i64,
    pub bytes: u64,
}

/// Lease record in the bucket.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LeaseObject {
    pub id: i64,
    pub ttl: i64,
}

/// Compaction state in the bucket.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CompactionObject {
    pub revision: i64,
}

/// The commit hook of the writer: chunks, leases and compaction go to the bucket first.
pub(crate) struct BucketHook {
    storage: ObjectStorage,
    node_id: String,
    rt: Handle,
    committed: mpsc::Sender<Committed>,
    epoch: u64,
    epochs: Arc<RwLock<EpochLog>>,
    stopping: Arc<AtomicBool>,
    fence: Option<Fence>,
    fanout: Option<Box<dyn Fanout>>,
}

/// Where a Primary's locally committed changes go next (the replication feed, `ha::feed`).
/// Called on the writer thread before callers are answered: it must not block.
pub(crate) trait Fanout: Send + Sync + 'static {
    /// The records of one commit group; `revision` is the group's last.
    fn records(&self, records: &[Record], revision: i64);
    /// The compaction revision moved to `revision`.
    fn compaction(&self, revision: i64);
}

/// How a chunk key that already held something was settled.
enum Settled {
    /// It holds our records (an earlier attempt landed).
    Ours,
    /// It held an orphan of a deposed writer, now replaced by our chunk.
    Replaced,
}

impl BucketHook {
    /// A hook writing as `epoch`, whose start is already in `epochs`. Setting `stopping` makes
    /// a stalled upload give up (the process then exits without answering its callers).
    pub(crate) fn new(
        storage: ObjectStorage,
        node_id: String,
        rt: Handle,
        committed: mpsc::Sender<Committed>,
        epoch: u64,
        epochs: Arc<RwLock<EpochLog>>,
        stopping: Arc<AtomicBool>,
    ) -> Self {
        BucketHook {
            storage,
            node_id,
            rt,
            committed,
            epoch,
            epochs,
            stopping,
            fence: None,
            fanout: None,
        }
    }

    /// Acknowledges nothing once the writer lock's lease may have run out.
    pub(crate) fn with_fence(mut self, fence: Fence) -> Self {
        self.fence = Some(fence);
        self
    }

    /// The same uploads for another thread (quorum mode's background flush): the same bucket,
    /// epoch, fence and stop flag, and no fan-out.
    pub(crate) fn uploader(&self) -> BucketHook {
        BucketHook {
            storage: self.storage.clone(),
            node_id: self.node_id.clone(),
            rt: self.rt.clone(),
            committed: self.committed.clone(),
            epoch: self.epoch,
            epochs: self.epochs.clone(),
            stopping: self.stopping.clone(),
            fence: self.fence.clone(),
            fanout: None,
        }
    }

    /// Hands every local commit to `fanout` (the Replicas' feed).
    pub(crate) fn with_fanout(mut self, fanout: impl Fanout) -> Self {
        self.fanout = Some(Box::new(fanout));
        self
    }

    fn put_json(&self, key: Path, body: Vec<u8>) -> Result<(), HookError> {
        let store = self.storage.store().clone();
        let res = crate::store::hook_wait(&self.rt, async move {
            tokio::time::timeout(UPLOAD_DEADLINE, store.put(&key, Bytes::from(body).into())).await
        });
        match res {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(HookError::Rejected(format!("object storage: {e}"))),
            Err(_) => Err(HookError::Rejected("object storage: timed out".into())),
        }
    }

    /// Our chunk's key already holds different records: either an orphan of a deposed writer
    /// (replaced by compare-and-swap) or a live chunk of another writer (we are deposed).
    async fn settle_conflict(&self, chunk: &EncodedChunk) -> Result<Settled, HookError> {
        let found = tokio::time::timeout(
            ATTEMPT_DEADLINE,
            crate::objstore::cas::get(self.storage.store().as_ref(), &chunk.key),
        )
        .await;
        let existing = match found {
            Ok(Ok(Some(v))) => v,
            // Gone or unreadable for now: the caller retries the upload.
            Ok(Ok(None)) => return Ok(Settled::Replaced),
            Ok(Err(e)) => return Err(HookError::Rejected(e.to_string())),
            Err(_) => return Err(HookError::Rejected("reading back timed out".into())),
        };
        if crate::objstore::files::same_records(
            &existing.bytes,
            &chunk.bytes,
            crate::datafile::FileKind::KindChunk,
        ) {
            return Ok(Settled::Ours);
        }
        let their_epoch = crate::datafile::Reader::new(&existing.bytes[..], None)
            .map(|r| r.header().epoch)
            .map_err(|e| {
                HookError::Indeterminate(format!("{} holds an unreadable file: {e}", chunk.key))
            })?;
        let orphan = self
            .epochs
            .read()
            .is_ok_and(|log| log.is_orphan(their_epoch, chunk.last_revision));
        if their_epoch >= self.epoch || !orphan {
            return Err(HookError::Indeterminate(format!(
                "{} already holds different records of epoch {their_epoch} (ours is {}): another writer owns this revision",
                chunk.key, self.epoch
            )));
        }
        tracing::warn!(key = %chunk.key, orphan_epoch = their_epoch, epoch = self.epoch, "replacing an orphan chunk of a deposed writer");
        let res = tokio::time::timeout(
            ATTEMPT_DEADLINE,
            crate::objstore::cas::update(
                self.storage.store().as_ref(),
                &chunk.key,
                chunk.bytes.clone(),
                &existing.etag,
            ),
        )
        .await;
        match res {
            Ok(Ok(_)) => Ok(Settled::Replaced),
            Ok(Err(e)) => Err(HookError::Rejected(e.to_string())),
            Err(_) => Err(HookError::Rejected("replacing timed out".into())),
        }
    }

    /// Encodes a group as one chunk; also returns the size of its keys and values.
    fn encode(&self, records: &[Record]) -> Result<(EncodedChunk, u64), HookError> {
        let recs: Vec<pb::Record> = records.iter().map(to_proto).collect();
        let chunk = self
            .storage
            .encode_chunk(
                &recs,
                &self.node_id,
                crate::datafile::now_timestamp(),
                self.epoch,
            )
            .map_err(|e| HookError::Rejected(format!("encoding chunk: {e}")))?;
        let bytes = records
            .iter()
            .map(|r| (r.key.len() + r.value.as_ref().map_or(0, |v| v.len())) as u64)
            .sum();
        Ok((chunk, bytes))
    }

    /// Uploads `chunk` until it is confirmed in the bucket. Once an upload has been attempted
    /// the group is never rolled back: the attempt may still land, and rolling back would hand
    /// its revisions to other writes. So the same bytes are retried until the chunk is
    /// confirmed; meanwhile callers wait (or time out not knowing).
    async fn confirm(&self, chunk: EncodedChunk, bytes: u64) -> Result<(), HookError> {
        let deadline =
            ATTEMPT_DEADLINE + Duration::from_secs(chunk.bytes.len() as u64 / UPLOAD_BYTES_PER_SEC);
        let mut failures: u32 = 0;
        loop {
            if self.stopping.load(Ordering::Acquire) {
                return Err(HookError::Indeterminate(format!(
                    "stopping while {} is not confirmed",
                    chunk.key
                )));
            }
            // No attempt starts once the lease may have run out: a successor may be reading the
            // bucket's head to start its epoch, and a chunk landing now would be read by nodes
            // loading in that moment and orphaned by the successor (found by the fault suite:
            // a Primary paused past its lease woke up in the middle of a commit and uploaded).
            if let Some(fence) = &self.fence
                && !fence.holds()
            {
                let msg = format!(
                    "the writer lock's lease ran out before {} was uploaded",
                    chunk.key
                );
                return Err(if failures == 0 {
                    HookError::Rejected(msg)
                } else {
                    // An earlier attempt may still land.
                    HookError::Indeterminate(msg)
                });
            }
            let res = tokio::time::timeout(deadline, self.storage.put_chunk(&chunk)).await;
            let reason = match res {
                Ok(Ok(UploadOutcome::Created | UploadOutcome::AlreadyPresent)) => break,
                Ok(Err(e)) if e.kind() == ErrorKind::Conflict => {
                    match self.settle_conflict(&chunk).await {
                        Ok(Settled::Ours) => break,
                        Ok(Settled::Replaced) => {
                            // Confirm by uploading again: AlreadyPresent if the replacement holds.
                            continue;
                        }
                        Err(HookError::Rejected(e)) => e,
                        Err(e) => return Err(e),
                    }
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("timed out after {deadline:?}"),
            };
            failures += 1;
            let pause = Duration::from_millis(100u64 << failures.min(6)).min(MAX_BACKOFF);
            tracing::warn!(key = %chunk.key, attempt = failures, error = %reason, retry_in = ?pause, "chunk upload failed; retrying the same chunk (writes wait)");
            tokio::time::sleep(pause).await;
        }
        if failures > 0 {
            tracing::info!(key = %chunk.key, attempts = failures + 1, "chunk upload confirmed after retries");
        }
        if let Some(fence) = &self.fence
            && !fence.holds()
        {
            // The chunk may be an orphan already: a successor could have started.
            return Err(HookError::Indeterminate(format!(
                "the writer lock's lease ran out while {} was uploaded",
                chunk.key
            )));
        }
        let _ = self.committed.try_send(Committed {
            revision: chunk.last_revision,
            bytes,
        });
        Ok(())
    }
}

impl CommitHook for BucketHook {
    /// Uploads the group as one create-only chunk and waits until it is confirmed.
    fn persist(&mut self, records: &[Record]) -> Result<(), HookError> {
        let (chunk, bytes) = self.encode(records)?;
        crate::store::hook_wait(&self.rt, self.confirm(chunk, bytes))
    }

    /// Uploads overlap: the writer goes on with the next group while this one's chunk is on
    /// its way (object storage answers in milliseconds to a few hundred).
    fn pipelined(&self) -> bool {
        true
    }

    fn start(
        &mut self,
        records: &[Record],
        landed: Arc<tokio::sync::Notify>,
    ) -> Result<crate::store::Landing, HookError> {
        let (chunk, bytes) = self.encode(records)?;
        if let Some(fence) = &self.fence
            && !fence.holds()
        {
            return Err(HookError::Rejected(format!(
                "the writer lock's lease ran out before {} was uploaded",
                chunk.key
            )));
        }
        let uploader = self.uploader();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.rt.spawn(async move {
            // Also when the task is dropped unfinished (the runtime shutting down): the writer
            // then finds the landing closed instead of waiting for it forever.
            let _wake = NotifyOnDrop(landed);
            let outcome = uploader.confirm(chunk, bytes).await;
            let _ = tx.send(outcome);
        });
        Ok(rx)
    }

    fn lease_granted(&mut self, id: i64, ttl: i64) -> Result<(), HookError> {
        let body = serde_json::to_vec(&LeaseObject { id, ttl })
            .map_err(|e| HookError::Rejected(e.to_string()))?;
        self.put_json(self.storage.layout().lease(id), body)
    }

    fn lease_revoked(&mut self, id: i64) {
        let store = self.storage.store().clone();
        let key = self.storage.layout().lease(id);
        let res = crate::store::hook_wait(&self.rt, async move {
            tokio::time::timeout(UPLOAD_DEADLINE, store.delete(&key)).await
        });
        match res {
            Ok(Ok(())) | Ok(Err(object_store::Error::NotFound { .. })) => {}
            Ok(Err(e)) => tracing::warn!(lease = id, error = %e, "lease record left in the bucket"),
            Err(_) => tracing::warn!(
                lease = id,
                "lease record left in the bucket: delete timed out"
            ),
        }
    }

    fn compacted(&mut self, rev: i64) -> Result<(), HookError> {
        let body = serde_json::to_vec(&CompactionObject { revision: rev })
            .map_err(|e| HookError::Rejected(e.to_string()))?;
        self.put_json(self.storage.layout().compaction(), body)
    }

    fn published(&mut self, records: &[Record], revision: i64) {
        if let Some(f) = &self.fanout {
            f.records(records, revision);
        }
    }

    fn compaction_published(&mut self, rev: i64) {
        if let Some(f) = &self.fanout {
            f.compaction(rev);
        }
    }
}

/// Notifies the writer that an upload ended, however it ended.
struct NotifyOnDrop(Arc<tokio::sync::Notify>);

impl Drop for NotifyOnDrop {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

/// The hook of a node that is not the Primary: it writes nothing (writes are forwarded; local
/// compaction follows the Primary's).
pub(crate) struct ReplicaHook;

impl CommitHook for ReplicaHook {
    fn persist(&mut self, _records: &[Record]) -> Result<(), HookError> {
        Err(HookError::Rejected("this node is not the primary".into()))
    }

    fn lease_granted(&mut self, _id: i64, _ttl: i64) -> Result<(), HookError> {
        Err(HookError::Rejected("this node is not the primary".into()))
    }
}

/// Builds the object storage of a cluster config.
pub(crate) fn open_storage(
    cfg: &objstore::StorageConfig,
    registry: &prometheus::Registry,
) -> Result<ObjectStorage, objstore::Error> {
    cfg.validate()?;
    let metrics = objstore::metrics::ObjectStoreMetrics::new()
        .ok()
        .map(Arc::new);
    if let Some(m) = &metrics {
        let _ = m.register(registry);
    }
    ObjectStorage::from_config(cfg, &objstore::config::process_env(), metrics)
}

fn ts(s: &str) -> Option<prost_types::Timestamp> {
    let t = humantime::parse_rfc3339(s).ok()?;
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    Some(prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

fn ts_string(t: &Option<prost_types::Timestamp>) -> Option<String> {
    let t = t.as_ref()?;
    let secs = u64::try_from(t.seconds).ok()?;
    let st = UNIX_EPOCH + Duration::new(secs, u32::try_from(t.nanos).unwrap_or(0));
    Some(humantime::format_rfc3339_nanos(st).to_string())
}

/// A store record as a data-file record.
pub(crate) fn to_proto(r: &Record) -> pb::Record {
    pb::Record {
        crc: 0,
        revision: r.revision,
        key: r.key.clone(),
        created: r.created,
        deleted: r.deleted,
        create_revision: r.create_revision,
        prev_revision: r.prev_revision,
        version: r.version,
        lease: r.lease,
        dek: r.dek,
        value: r.value.clone().unwrap_or_default(),
        created_at: ts(&r.created_at),
        compacted_at: r.compacted_at.as_deref().and_then(ts),
        leader_id: r.leader_id.clone(),
        replicated_at: None,
        sub_revision: r.sub,
    }
}

/// A data-file record as a store record. Values of tombstones and compacted rows are NULL.
pub(crate) fn from_proto(r: pb::Record) -> Record {
    let compacted_at = ts_string(&r.compacted_at);
    let value = if r.deleted || compacted_at.is_some() {
        None
    } else {
        Some(r.value)
    };
    Record {
        revision: r.revision,
        sub: r.sub_revision,
        key: r.key,
        created: r.created,
        deleted: r.deleted,
        create_revision: r.create_revision,
        prev_revision: r.prev_revision,
        version: r.version,
        lease: r.lease,
        value,
        created_at: ts_string(&r.created_at)
            .unwrap_or_else(|| humantime::format_rfc3339_nanos(SystemTime::UNIX_EPOCH).to_string()),
        leader_id: r.leader_id,
        compacted_at,
        dek: r.dek,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_the_file_format() {
        let r = Record {
            revision: 7,
            sub: 2,
            key: b"/registry/pods/a".to_vec(),
            created: true,
            deleted: false,
            create_revision: 7,
            prev_revision: 0,
            version: 1,
            lease: 42,
            value: Some(b"v".to_vec()),
            created_at: "2026-11-29T02:35:16.104308123Z".into(),
            leader_id: "node-1".into(),
            compacted_at: None,
            dek: 0,
        };
        assert_eq!(from_proto(to_proto(&r)), r);
        let t = Record {
            deleted: true,
            value: None,
            compacted_at: Some("2026-11-29T03:00:00Z".into()),
            ..r.clone()
        };
        let back = from_proto(to_proto(&t));
        assert_eq!(back.value, None);
        assert_eq!(
            back.compacted_at.as_deref(),
            Some("2026-11-29T03:00:00.000000000Z")
        );
    }
}
