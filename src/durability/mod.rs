//! Object storage as the system of record (single node: every write synchronous to the bucket).
//!
//! Owns: the commit hook that uploads each commit group as one create-only chunk before SQLite
//! commits (group commit: concurrent writes share one upload), lease and compaction state in
//! the bucket, snapshots with chunk cleanup and retention, and the startup backfill that
//! rebuilds the local SQLite copy. Never builds an object key (that is `objstore::layout`) and
//! never runs SQL (that is `store`).

pub mod backfill;
pub mod lock;
mod snapshot;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

pub use backfill::{BackfillStats, backfill};
pub use snapshot::{SnapshotPolicy, SnapshotWorker};

use crate::objstore::{self, ErrorKind, ObjectStorage, UploadOutcome};
use crate::proto as pb;
use crate::store::{CommitHook, HookError, Record};

/// Longest a chunk upload may take, retries included, before its outcome is resolved by
/// reading the object back.
const UPLOAD_DEADLINE: Duration = Duration::from_secs(30);
/// Longest the read-back that resolves an uncertain upload may take.
const RESOLVE_DEADLINE: Duration = Duration::from_secs(15);

/// Notice to the snapshot worker after each durable group.
#[derive(Debug, Clone, Copy)]
pub struct Committed {
    pub revision: i64,
    pub bytes: u64,
}

/// Lease record in the bucket.
#[derive(Debug, Serialize, Deserialize)]
pub struct LeaseObject {
    pub id: i64,
    pub ttl: i64,
}

/// Compaction state in the bucket.
#[derive(Debug, Serialize, Deserialize)]
pub struct CompactionObject {
    pub revision: i64,
}

/// The single-node commit hook: chunks, leases and compaction go to the bucket first.
pub struct BucketHook {
    storage: ObjectStorage,
    node_id: String,
    rt: Handle,
    committed: mpsc::Sender<Committed>,
}

impl BucketHook {
    pub fn new(
        storage: ObjectStorage,
        node_id: String,
        rt: Handle,
        committed: mpsc::Sender<Committed>,
    ) -> Self {
        BucketHook {
            storage,
            node_id,
            rt,
            committed,
        }
    }

    fn put_json(&self, key: Path, body: Vec<u8>) -> Result<(), HookError> {
        let store = self.storage.store().clone();
        let res = self.rt.block_on(async move {
            tokio::time::timeout(UPLOAD_DEADLINE, store.put(&key, Bytes::from(body).into())).await
        });
        match res {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(HookError::Rejected(format!("object storage: {e}"))),
            Err(_) => Err(HookError::Rejected("object storage: timed out".into())),
        }
    }
}

impl CommitHook for BucketHook {
    fn persist(&mut self, records: &[Record]) -> Result<(), HookError> {
        let recs: Vec<pb::Record> = records.iter().map(to_proto).collect();
        let chunk = self
            .storage
            .encode_chunk(&recs, &self.node_id, crate::datafile::now_timestamp())
            .map_err(|e| HookError::Rejected(format!("encoding chunk: {e}")))?;
        let storage = self.storage.clone();
        let attempt = chunk.clone();
        let res = self.rt.block_on(async move {
            tokio::time::timeout(UPLOAD_DEADLINE, storage.put_chunk(&attempt)).await
        });
        let outcome = match res {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) if e.kind() == ErrorKind::Conflict => {
                return Err(HookError::Indeterminate(format!(
                    "{} already holds different records: another writer owns this revision ({e})",
                    chunk.key
                )));
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_string()),
        };
        match outcome {
            Ok(UploadOutcome::Created) | Ok(UploadOutcome::AlreadyPresent) => {}
            Err(reason) => {
                // The PUT may have landed. Read the key back to know.
                let storage = self.storage.clone();
                let key = chunk.key.clone();
                let found = self.rt.block_on(async move {
                    tokio::time::timeout(
                        RESOLVE_DEADLINE,
                        crate::objstore::cas::get(storage.store().as_ref(), &key),
                    )
                    .await
                });
                match found {
                    Ok(Ok(None)) => {
                        return Err(HookError::Rejected(format!(
                            "uploading {}: {reason}",
                            chunk.key
                        )));
                    }
                    Ok(Ok(Some(v))) => {
                        if !crate::objstore::files::same_records(
                            &v.bytes,
                            &chunk.bytes,
                            crate::datafile::FileKind::KindChunk,
                        ) {
                            return Err(HookError::Indeterminate(format!(
                                "{} holds different records after a failed upload ({reason})",
                                chunk.key
                            )));
                        }
                    }
                    _ => {
                        return Err(HookError::Indeterminate(format!(
                            "uploading {} failed ({reason}) and reading it back failed too",
                            chunk.key
                        )));
                    }
                }
            }
        }
        let bytes = records
            .iter()
            .map(|r| (r.key.len() + r.value.as_ref().map_or(0, |v| v.len())) as u64)
            .sum();
        let _ = self.committed.try_send(Committed {
            revision: chunk.last_revision,
            bytes,
        });
        Ok(())
    }

    fn lease_granted(&mut self, id: i64, ttl: i64) -> Result<(), HookError> {
        let body = serde_json::to_vec(&LeaseObject { id, ttl })
            .map_err(|e| HookError::Rejected(e.to_string()))?;
        self.put_json(self.storage.layout().lease(id), body)
    }

    fn lease_revoked(&mut self, id: i64) {
        let store = self.storage.store().clone();
        let key = self.storage.layout().lease(id);
        let res = self.rt.block_on(async move {
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
}

/// Builds the object storage of a cluster config.
pub fn open_storage(
    cfg: &crate::config::cluster::StorageConfig,
    registry: &prometheus::Registry,
) -> Result<ObjectStorage, objstore::Error> {
    let provider: objstore::Provider = cfg.provider.parse()?;
    let encryption: objstore::Encryption = cfg.encryption.parse()?;
    let sc = objstore::StorageConfig {
        provider,
        bucket_name: cfg.bucket_name.clone(),
        key_prefix: cfg.key_prefix.clone(),
        class: cfg.class.clone(),
        encryption,
        kms_key_id: if cfg.kms_key_id.is_empty() {
            None
        } else {
            Some(cfg.kms_key_id.clone())
        },
        local_dir: cfg.path.clone(),
        retry: Default::default(),
    };
    sc.validate()?;
    let metrics = objstore::metrics::ObjectStoreMetrics::new()
        .ok()
        .map(Arc::new);
    if let Some(m) = &metrics {
        let _ = m.register(registry);
    }
    ObjectStorage::from_config(&sc, &objstore::config::process_env(), metrics)
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
pub fn to_proto(r: &Record) -> pb::Record {
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
pub fn from_proto(r: pb::Record) -> Record {
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
