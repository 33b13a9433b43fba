//! Snapshots: after enough records, bytes or time, the whole history up to the committed
//! revision is written to a temporary zstd `.netsy` file, uploaded to `snapshots/{rev}.netsy`,
//! then chunks it covers are deleted and snapshots beyond the retention count removed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use object_store::ObjectStoreExt;
use tokio::sync::{mpsc, watch};

use super::{Committed, to_proto};
use crate::datafile::{self, FileCompression, FileKind, HeaderParams, Writer};
use crate::objstore::{self, ObjectStorage};
use crate::store::{self, Store};

/// Why a snapshot was not taken (the next one is tried after more writes).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    #[error("reading the local copy: {0}")]
    Export(#[from] store::Error),
    #[error("encoding: {0}")]
    Encode(#[from] datafile::Error),
    #[error("temporary file: {0}")]
    Io(#[from] std::io::Error),
    #[error("object storage: {0}")]
    Storage(#[from] objstore::Error),
}

/// When to take a snapshot (the `snapshot.*` keys).
#[derive(Debug, Clone)]
pub(crate) struct SnapshotPolicy {
    pub threshold_records: i64,
    pub threshold_bytes: u64,
    /// Zero disables the age trigger.
    pub threshold_age: Duration,
    /// Snapshots kept; 0 keeps all.
    pub retention_count: usize,
}

/// What was written since the last snapshot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Since {
    pub revisions: i64,
    /// Keys and values of the records written (uncompressed).
    pub bytes: u64,
    pub age: Duration,
}

impl SnapshotPolicy {
    /// Whether a snapshot is due, `last_bytes` being the keys and values the last snapshot
    /// held (uncompressed, like `since.bytes`).
    ///
    /// A snapshot costs as much as the state it holds: after the records threshold it also
    /// waits until the data written since the last one is as large as that snapshot, so
    /// snapshots cost O(1) per written byte however large the state grows (each written byte
    /// is snapshotted about twice while the state grows, once while it does not), and a cold
    /// start replays at most about one snapshot's worth of chunks after it.
    pub(crate) fn due(&self, since: &Since, last_bytes: u64) -> bool {
        (since.revisions >= self.threshold_records && since.bytes >= last_bytes)
            || since.bytes >= self.threshold_bytes
            || (!self.threshold_age.is_zero() && since.age >= self.threshold_age)
    }
}

pub(crate) struct SnapshotWorker {
    pub store: Store,
    pub storage: ObjectStorage,
    pub node_id: String,
    pub temp_dir: PathBuf,
    pub policy: SnapshotPolicy,
}

type FileWriter = Writer<std::io::BufWriter<std::fs::File>>;

impl SnapshotWorker {
    /// Runs until `shutdown`, taking snapshots when the thresholds are crossed.
    pub(crate) async fn run(
        self,
        mut committed: mpsc::Receiver<Committed>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // The newest snapshot's compressed size stands in for its record bytes until this
        // worker takes one (it is smaller, so the first snapshot after a restart may come early).
        let (mut last_rev, mut last_bytes) = match self.storage.latest_snapshot().await {
            Ok(s) => s.map(|s| (s.revision, s.size)).unwrap_or((0, 0)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list snapshots; assuming none");
                (0, 0)
            }
        };
        let mut last_time = Instant::now();
        let mut bytes: u64 = 0;
        loop {
            let c = tokio::select! {
                c = committed.recv() => match c { Some(c) => c, None => return },
                _ = shutdown.changed() => return,
            };
            bytes += c.bytes;
            let since = Since {
                revisions: c.revision - last_rev,
                bytes,
                age: last_time.elapsed(),
            };
            if !self.policy.due(&since, last_bytes) || c.revision <= last_rev {
                continue;
            }
            let rev = self.store.current_revision();
            match self.take(rev).await {
                Ok(taken) => {
                    last_rev = rev;
                    last_bytes = taken;
                    last_time = Instant::now();
                    bytes = 0;
                }
                Err(e) => {
                    tracing::error!(revision = rev, error = %e, "snapshot failed; will retry after more writes")
                }
            }
        }
    }

    /// Writes, uploads and cleans up after a snapshot at `rev`; returns the keys and values
    /// it holds (uncompressed bytes).
    pub(crate) async fn take(&self, rev: i64) -> Result<u64, SnapshotError> {
        let started = Instant::now();
        let (file, path) = ObjectStorage::create_snapshot_temp(&self.temp_dir, rev)?;
        let node_id = self.node_id.clone();
        let state: (Option<std::fs::File>, Option<FileWriter>, String, u64) =
            (Some(file), None, node_id, 0);
        let result = self
            .store
            .export(
                1,
                rev,
                state,
                |s, n| {
                    let file = s.0.take().ok_or("snapshot file missing")?;
                    let params = HeaderParams {
                        kind: FileKind::KindSnapshot,
                        compression: FileCompression::CompressionZstd,
                        records_count: n,
                        leader_id: s.2.clone(),
                        epoch: 0,
                        created_at: datafile::now_timestamp(),
                    };
                    s.1 = Some(
                        Writer::with_zstd_level(
                            std::io::BufWriter::new(file),
                            params,
                            datafile::BULK_ZSTD_LEVEL,
                        )
                        .map_err(|e| e.to_string())?,
                    );
                    Ok(())
                },
                |s, r| {
                    s.3 += (r.key.len() + r.value.as_ref().map_or(0, |v| v.len())) as u64;
                    let w = s.1.as_mut().ok_or("snapshot writer missing")?;
                    w.write_record(&to_proto(&r)).map_err(|e| e.to_string())
                },
            )
            .await;
        let outcome = async {
            let (_, writer, _, bytes) = result?;
            // The export calls its init (which creates the writer) before anything else.
            let writer = writer.ok_or_else(|| store::Error::Export("no header written".into()))?;
            let (buf, summary) = writer.finish()?;
            let file = buf.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            self.storage.upload_snapshot_file(rev, &path).await?;
            Ok::<_, SnapshotError>((summary, bytes))
        }
        .await;
        let _ = std::fs::remove_file(&path);
        let (summary, bytes) = outcome?;
        tracing::info!(
            revision = rev,
            records = summary.records_count(),
            seconds = started.elapsed().as_secs_f64(),
            "snapshot_created"
        );
        match self.storage.delete_chunks_up_to(rev).await {
            Ok(n) => tracing::info!(
                revision = rev,
                deleted = n,
                "chunks covered by the snapshot deleted"
            ),
            Err(e) => {
                tracing::warn!(revision = rev, error = %e, "chunk cleanup failed; retried after the next snapshot")
            }
        }
        self.apply_retention().await;
        Ok(bytes)
    }

    /// Deletes the oldest snapshots beyond the retention count (the newest are always kept).
    async fn apply_retention(&self) {
        let keep = self.policy.retention_count;
        if keep == 0 {
            return;
        }
        match self.storage.list_snapshots().await {
            Ok(snaps) => {
                for old in snaps.iter().skip(keep) {
                    if let Err(e) = self.storage.store().delete(&old.key).await {
                        tracing::warn!(key = %old.key, error = %e, "old snapshot not deleted");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list snapshots for retention"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SnapshotPolicy {
        SnapshotPolicy {
            threshold_records: 10_000,
            threshold_bytes: 10_000 << 20,
            threshold_age: Duration::ZERO,
            retention_count: 5,
        }
    }

    fn since(revisions: i64, bytes: u64) -> Since {
        Since {
            revisions,
            bytes,
            age: Duration::ZERO,
        }
    }

    #[test]
    fn a_snapshot_waits_for_as_much_data_as_the_last_one_held() {
        let p = policy();
        // The first snapshot: the records threshold alone.
        assert!(!p.due(&since(9_999, 0), 0));
        assert!(p.due(&since(10_000, 0), 0));
        // A state of 100 MB: 10,000 revisions of 1 KB are not enough, 100 MB written is.
        let last = 100 << 20;
        assert!(!p.due(&since(10_000, 10 << 20), last));
        assert!(!p.due(&since(90_000, last - 1), last));
        assert!(p.due(&since(100_000, last), last));
        // Many bytes in few revisions still wait for the records threshold.
        assert!(!p.due(&since(9_999, 2 * last), last));
    }

    #[test]
    fn the_size_and_age_thresholds_apply_alone() {
        let mut p = policy();
        p.threshold_bytes = 64 << 20;
        assert!(p.due(&since(1, 64 << 20), u64::MAX));
        assert!(!p.due(&since(1, (64 << 20) - 1), u64::MAX));
        p.threshold_age = Duration::from_secs(60);
        let old = Since {
            revisions: 1,
            bytes: 1,
            age: Duration::from_secs(60),
        };
        assert!(p.due(&old, u64::MAX));
    }
}
