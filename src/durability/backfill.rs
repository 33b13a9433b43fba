//! Startup backfill: the local SQLite copy is rebuilt (or brought up to date) from the newest
//! snapshot plus newer chunks, checked for completeness, and the bucket's lease and compaction
//! state restored. An empty bucket gets the genesis record as its first chunk.

use std::time::Instant;

use futures::TryStreamExt;

use super::{CompactionObject, EpochLog, LeaseObject, from_proto, to_proto};
use crate::datafile::FileKind;
use crate::objstore::{FileRef, ObjectStorage};
use crate::store::{Record, Store};

/// Records handed to the store per import step.
const IMPORT_BATCH: usize = 5000;

#[derive(Debug, Default, Clone)]
pub(crate) struct BackfillStats {
    pub snapshot_revision: Option<i64>,
    pub chunks: usize,
    pub records: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub latest_revision: i64,
    pub leases: usize,
    pub compaction_revision: i64,
    /// Chunks skipped as orphans of deposed writers (see `epochs`).
    pub orphans: usize,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum BackfillError {
    #[error("object storage: {0}")]
    Storage(#[from] crate::objstore::Error),
    #[error("data file {key}: {source}")]
    File {
        key: String,
        source: crate::datafile::Error,
    },
    #[error("local database: {0}")]
    Store(#[from] crate::store::Error),
    #[error(
        "history incomplete after backfill: {present} of the {expected} revisions from the compaction revision {floor} on are present"
    )]
    Gap {
        present: i64,
        expected: i64,
        floor: i64,
    },
}

/// Brings `store` up to date with the bucket. Only the `writer` (the Primary) writes the genesis
/// chunk of an empty bucket. `progress` receives human-readable status lines.
pub(crate) async fn backfill(
    store: &Store,
    storage: &ObjectStorage,
    node_id: &str,
    epochs: &EpochLog,
    writer: bool,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<BackfillStats, BackfillError> {
    let started = Instant::now();
    let mut stats = BackfillStats::default();
    let (compaction, leases) = bucket_state(storage).await?;
    let mut local = store.current_revision();
    let snapshot = storage.latest_snapshot().await?;
    // The snapshot holds the state at its compaction revision, not the deletions before it:
    // merged into an older copy, keys deleted since would stay. Such a copy is replaced whole,
    // in one transaction (a promoted Replica keeps serving its old copy until it commits).
    let replace = matches!(&snapshot, Some(snap) if snap.revision > local && local < compaction);
    if replace {
        progress(&format!(
            "loading: the local copy (revision {local}) is older than the compaction revision {compaction}; replacing it"
        ));
        store.replace_begin().await?;
        local = 0;
    }
    let loaded = load_files(
        store,
        storage,
        snapshot.as_ref(),
        local,
        epochs,
        &mut stats,
        started,
        progress,
    )
    .await;
    if let Err(e) = loaded {
        if replace {
            let _ = store.replace_abort().await;
        }
        return Err(e);
    }
    if replace {
        store.replace_commit(compaction).await?;
    }
    let total = stats.chunks + stats.orphans;
    if writer && snapshot.is_none() && total == 0 && local <= 1 {
        // An empty bucket: make the genesis record the first chunk, like the original's
        // preflight, so a rebuilt node finds a complete history.
        let genesis = genesis_record(store).await?;
        storage.upload_chunk(&[to_proto(&genesis)], node_id).await?;
        tracing::info!("empty bucket: wrote the genesis chunk");
    }
    let floor = compaction.max(store.compact_revision());
    let (present, expected) = store.integrity(floor).await?;
    let latest = store.current_revision();
    if present != expected || latest < floor {
        return Err(BackfillError::Gap {
            present,
            expected,
            floor,
        });
    }
    stats.leases = leases.len();
    stats.compaction_revision = compaction;
    store.restore(compaction, leases).await?;
    stats.latest_revision = latest;
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(stats)
}

/// Loads the snapshot (when newer than `local`) and the chunks after it; returns the head.
#[allow(clippy::too_many_arguments)]
async fn load_files(
    store: &Store,
    storage: &ObjectStorage,
    snapshot: Option<&FileRef>,
    local: i64,
    epochs: &EpochLog,
    stats: &mut BackfillStats,
    started: Instant,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<i64, BackfillError> {
    let mut after = local;
    if let Some(snap) = snapshot
        && snap.revision > local
    {
        progress(&format!(
            "loading: importing snapshot at revision {}",
            snap.revision
        ));
        import_file(
            store,
            storage,
            snap,
            FileKind::KindSnapshot,
            stats,
            started,
            progress,
        )
        .await?;
        stats.snapshot_revision = Some(snap.revision);
        after = snap.revision;
    }
    let chunks = storage.list_chunks_after(after).await?;
    let total = chunks.len();
    let mut head = after;
    for (i, chunk) in chunks.iter().enumerate() {
        let (records, summary) = storage
            .read_file(&chunk.key, Some(FileKind::KindChunk))
            .await?;
        let epoch = summary.header.epoch;
        if epochs.is_orphan(epoch, chunk.revision) || summary.first_revision() <= head {
            tracing::warn!(key = %chunk.key, epoch, first = summary.first_revision(), head, "skipping an orphan chunk of a deposed writer");
            stats.orphans += 1;
            continue;
        }
        stats.records += records.len() as u64;
        stats.bytes += chunk.size;
        store
            .import(records.into_iter().map(from_proto).collect())
            .await?;
        head = chunk.revision;
        stats.chunks += 1;
        if i % 100 == 99 {
            progress(&format!(
                "loading: {} of {total} chunks, {} records",
                i + 1,
                stats.records
            ));
        }
    }
    Ok(head)
}

async fn genesis_record(store: &Store) -> Result<Record, BackfillError> {
    let found = store
        .export(
            1,
            1,
            None,
            |_, _| Ok(()),
            |s: &mut Option<Record>, r| {
                *s = Some(r);
                Ok(())
            },
        )
        .await?;
    found.ok_or(BackfillError::Gap {
        present: 0,
        expected: 1,
        floor: 1,
    })
}

#[allow(clippy::too_many_arguments)]
async fn import_file(
    store: &Store,
    storage: &ObjectStorage,
    file: &FileRef,
    kind: FileKind,
    stats: &mut BackfillStats,
    started: Instant,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), BackfillError> {
    let mut stream = storage.stream_records(&file.key, Some(kind));
    let mut batch = Vec::with_capacity(IMPORT_BATCH);
    let file_err = |source| BackfillError::File {
        key: file.key.to_string(),
        source,
    };
    while let Some(rec) = stream.next_record().await.map_err(file_err)? {
        batch.push(from_proto(rec));
        if batch.len() == IMPORT_BATCH {
            stats.records += batch.len() as u64;
            store.import(std::mem::take(&mut batch)).await?;
            if kind == FileKind::KindSnapshot && stats.records.is_multiple_of(50_000) {
                let secs = started.elapsed().as_secs_f64().max(0.001);
                progress(&format!(
                    "loading: {} snapshot records ({:.0} records/s)",
                    stats.records,
                    stats.records as f64 / secs
                ));
            }
        }
    }
    stats.records += batch.len() as u64;
    if !batch.is_empty() {
        store.import(batch).await?;
    }
    stats.bytes += file.size;
    Ok(())
}

/// The compaction revision and the granted leases recorded in the bucket.
async fn bucket_state(storage: &ObjectStorage) -> Result<(i64, Vec<(i64, i64)>), BackfillError> {
    let store = storage.store();
    let compaction =
        match crate::objstore::cas::get(store.as_ref(), &storage.layout().compaction()).await? {
            Some(v) => match serde_json::from_slice::<CompactionObject>(&v.bytes) {
                Ok(c) => c.revision,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable compaction record ignored");
                    0
                }
            },
            None => 0,
        };
    let metas: Vec<_> = store
        .list(Some(&storage.layout().leases_dir()))
        .try_collect()
        .await
        .map_err(crate::objstore::Error::Store)?;
    let mut leases = Vec::new();
    for meta in metas {
        if let Some(v) = crate::objstore::cas::get(store.as_ref(), &meta.location).await? {
            match serde_json::from_slice::<LeaseObject>(&v.bytes) {
                Ok(l) => leases.push((l.id, l.ttl)),
                Err(e) => {
                    tracing::warn!(key = %meta.location, error = %e, "unreadable lease record ignored")
                }
            }
        }
    }
    Ok((compaction, leases))
}
