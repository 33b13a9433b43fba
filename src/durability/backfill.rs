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
    // A local copy of one revision loads no chunk even when the bucket has the genesis chunk
    // (a rebuilt copy starts with its own genesis record; with a single node's write-ahead log,
    // 0011, the next chunk may not be written yet): only a bucket with no chunk at all is empty.
    if writer
        && snapshot.is_none()
        && total == 0
        && local <= 1
        && storage.list_chunks_after(0).await?.is_empty()
    {
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
    // Where this listing starts: the local copy's head or the snapshot's revision.
    let base = after;
    let mut head = after;
    for (i, chunk) in chunks.iter().enumerate() {
        let (records, summary) = storage
            .read_file(&chunk.key, Some(FileKind::KindChunk))
            .await?;
        let epoch = summary.header.epoch;
        let first = summary.first_revision();
        // A chunk that starts at or below the head overlaps one loaded before it: a deposed
        // writer's. The exception is a chunk of a known epoch overlapping the local copy
        // itself: in quorum mode a node applies acknowledged records before the bucket has
        // them, and that chunk carries them (each is checked against the local row) and
        // what follows.
        let overlaps_local = head == base && epoch > 0;
        if epochs.is_orphan(epoch, chunk.revision) || (first <= head && !overlaps_local) {
            tracing::warn!(key = %chunk.key, epoch, first, head, "skipping an orphan chunk of a deposed writer");
            stats.orphans += 1;
            continue;
        }
        if head > 0 && first > head + 1 {
            // Importing past a hole would show watchers a revision skipped; stop here and let
            // the integrity check name the hole.
            tracing::warn!(key = %chunk.key, epoch, first, head, "a chunk after a hole in the bucket's history; loading stops");
            break;
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

/// Chunks at the end of the bucket whose first revision and epoch [`bucket_head`] checks: more
/// than a writer's uploads in flight at once ([`crate::store::MAX_UPLOADS_IN_FLIGHT`]), so a
/// hole left by a writer that died with uploads in flight is within them.
const HEAD_WINDOW: usize = 2 * crate::store::MAX_UPLOADS_IN_FLIGHT;

/// The last revision the bucket holds without a hole: its newest snapshot, then its chunks in
/// order, orphans of deposed writers skipped, up to the first hole. A writer that died with
/// several uploads in flight may have left later chunks without an earlier one; those were
/// never acknowledged and are not part of the history (the next epoch starts above the hole,
/// which makes them orphans). Only the last [`HEAD_WINDOW`] chunks are read.
pub(crate) async fn bucket_head(
    storage: &ObjectStorage,
    epochs: &EpochLog,
) -> Result<i64, BackfillError> {
    let snapshot = storage.latest_snapshot().await?.map_or(0, |s| s.revision);
    let chunks = storage.list_chunks_after(snapshot).await?;
    let split = chunks.len().saturating_sub(HEAD_WINDOW);
    let mut head = split
        .checked_sub(1)
        .map_or(snapshot, |i| chunks[i].revision.max(snapshot));
    for chunk in &chunks[split..] {
        let (_, summary) = storage
            .read_file(&chunk.key, Some(FileKind::KindChunk))
            .await?;
        let epoch = summary.header.epoch;
        let first = summary.first_revision();
        if epochs.is_orphan(epoch, chunk.revision) || chunk.revision <= head {
            continue;
        }
        if head > 0 && first > head + 1 {
            tracing::warn!(key = %chunk.key, epoch, first, head, "the bucket's history has a hole after its head; later chunks were never acknowledged");
            break;
        }
        head = chunk.revision;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objstore::Layout;
    use std::sync::Arc;

    use crate::testutil::created as rec;

    async fn put(storage: &ObjectStorage, epoch: u64, revisions: std::ops::RangeInclusive<i64>) {
        put_values(storage, epoch, revisions, "v").await;
    }

    async fn put_values(
        storage: &ObjectStorage,
        epoch: u64,
        revisions: std::ops::RangeInclusive<i64>,
        value: &str,
    ) {
        let records: Vec<_> = revisions.map(|r| rec(r, value)).collect();
        let chunk = storage
            .encode_chunk(&records, "a", crate::datafile::now_timestamp(), epoch)
            .unwrap();
        storage.put_chunk(&chunk).await.unwrap();
    }

    async fn load(store: &Store, storage: &ObjectStorage, stats: &mut BackfillStats) -> i64 {
        let local = store.current_revision();
        load_files(
            store,
            storage,
            None,
            local,
            &EpochLog::default(),
            stats,
            Instant::now(),
            &|_| {},
        )
        .await
        .unwrap()
    }

    /// Quorum mode: a node's local copy runs ahead of the bucket, and the chunk that later
    /// carries those records starts below the local head. It is loaded (what follows the head
    /// included), not skipped as an orphan; a chunk after a hole is never imported (watchers
    /// would see a revision skipped); a chunk disagreeing with the local copy is refused.
    #[tokio::test]
    async fn a_chunk_overlapping_the_local_copy_is_loaded_and_a_hole_stops_loading() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::testutil::local_store(dir.path());
        let storage = ObjectStorage::from_parts(
            Arc::new(object_store::memory::InMemory::new()),
            Layout::new("").unwrap(),
        );
        let h = store.current_revision();
        let mut stats = BackfillStats::default();
        // Applied locally before the bucket had them.
        store
            .import(
                ((h + 1)..=(h + 3))
                    .map(|r| from_proto(rec(r, "v")))
                    .collect(),
            )
            .await
            .unwrap();
        put(&storage, 2, (h + 1)..=(h + 5)).await;
        assert_eq!(load(&store, &storage, &mut stats).await, h + 5);
        assert_eq!(store.current_revision(), h + 5);
        assert_eq!((stats.chunks, stats.orphans), (1, 0));

        // Without an epoch (the original's files) an overlapping chunk stays an orphan.
        put(&storage, 0, (h + 4)..=(h + 6)).await;
        // After a hole (h + 6 and h + 7 missing): not imported.
        put(&storage, 2, (h + 8)..=(h + 9)).await;
        assert_eq!(load(&store, &storage, &mut stats).await, h + 5);
        assert_eq!(store.current_revision(), h + 5);
        assert_eq!((stats.chunks, stats.orphans), (1, 1));

        // A chunk that disagrees with the local copy on a revision they share is refused.
        put_values(&storage, 3, (h + 5)..=(h + 7), "other").await;
        let local = store.current_revision();
        let err = load_files(
            &store,
            &storage,
            None,
            local,
            &EpochLog::default(),
            &mut stats,
            Instant::now(),
            &|_| {},
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, BackfillError::Store(crate::store::Error::Corrupt(_))),
            "{err}"
        );
        assert_eq!(store.current_revision(), h + 5);
    }

    /// A writer that died with uploads in flight: a later chunk landed, an earlier one did not.
    /// The head stops before the hole; once the next epoch starts there, the stranded chunk is
    /// an orphan and the new epoch's chunks extend the head past it.
    #[tokio::test]
    async fn the_buckets_head_stops_at_a_hole_and_skips_orphans() {
        let storage = ObjectStorage::from_parts(
            Arc::new(object_store::memory::InMemory::new()),
            Layout::new("").unwrap(),
        );
        let mut epochs = EpochLog::default();
        assert_eq!(bucket_head(&storage, &epochs).await.unwrap(), 0);
        epochs.insert(1, 1);
        for r in 1..=30 {
            put(&storage, 1, r..=r).await;
        }
        assert_eq!(bucket_head(&storage, &epochs).await.unwrap(), 30);
        // 31..=33 never landed; 34..=35 did.
        put(&storage, 1, 34..=35).await;
        assert_eq!(bucket_head(&storage, &epochs).await.unwrap(), 30);
        // The next writer starts right above the head and writes over the hole.
        epochs.insert(2, 31);
        put(&storage, 2, 31..=32).await;
        assert_eq!(bucket_head(&storage, &epochs).await.unwrap(), 32);
        put(&storage, 2, 33..=36).await;
        assert_eq!(bucket_head(&storage, &epochs).await.unwrap(), 36);
    }
}
