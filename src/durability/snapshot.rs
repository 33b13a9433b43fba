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
        let (mut last_rev, mut last_size) = match self.storage.latest_snapshot().await {
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
            let p = &self.policy;
            // A snapshot costs as much as the state it holds: after the records threshold, also
            // wait until the data written since the last one is half its size, so snapshots
            // cost O(1) per write however large the state grows (and a cold start replays at
            // most about half a snapshot of chunks).
            let due = (c.revision - last_rev >= p.threshold_records
                && bytes.saturating_mul(2) >= last_size)
                || bytes >= p.threshold_bytes
                || (!p.threshold_age.is_zero() && last_time.elapsed() >= p.threshold_age);
            if !due || c.revision <= last_rev {
                continue;
            }
            let rev = self.store.current_revision();
            match self.take(rev).await {
                Ok(size) => {
                    last_rev = rev;
                    last_size = size;
                    last_time = Instant::now();
                    bytes = 0;
                }
                Err(e) => {
                    tracing::error!(revision = rev, error = %e, "snapshot failed; will retry after more writes")
                }
            }
        }
    }

    /// Writes, uploads and cleans up after a snapshot at `rev`; returns the snapshot's size.
    pub(crate) async fn take(&self, rev: i64) -> Result<u64, SnapshotError> {
        let started = Instant::now();
        let (file, path) = ObjectStorage::create_snapshot_temp(&self.temp_dir, rev)?;
        let node_id = self.node_id.clone();
        let state: (Option<std::fs::File>, Option<FileWriter>, String) =
            (Some(file), None, node_id);
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
                        Writer::new(std::io::BufWriter::new(file), params)
                            .map_err(|e| e.to_string())?,
                    );
                    Ok(())
                },
                |s, r| {
                    let w = s.1.as_mut().ok_or("snapshot writer missing")?;
                    w.write_record(&to_proto(&r)).map_err(|e| e.to_string())
                },
            )
            .await;
        let outcome = async {
            let (_, writer, _) = result?;
            // The export calls its init (which creates the writer) before anything else.
            let writer = writer.ok_or_else(|| store::Error::Export("no header written".into()))?;
            let (buf, summary) = writer.finish()?;
            let file = buf.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            let size = file.metadata()?.len();
            self.storage.upload_snapshot_file(rev, &path).await?;
            Ok::<_, SnapshotError>((summary, size))
        }
        .await;
        let _ = std::fs::remove_file(&path);
        let (summary, size) = outcome?;
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
        Ok(size)
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
