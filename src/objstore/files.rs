//! Data-file operations the server calls: upload a chunk (write path), upload a snapshot,
//! list snapshots and chunks and stream their records (startup backfill), delete covered chunks.
//!
//! Owns: [`ObjectStorage`], the handle holding the wrapped store and the [`Layout`].
//! Must never: build keys itself (only through [`Layout`]), write chunks unconditionally, or
//! hold a whole snapshot in memory.
//!
//! # Write path
//! [`ObjectStorage::upload_chunk`] encodes the records once (compression per
//! docs/design/0004-storage.md#data-file-format, the header's `created_at` fixed at encoding time)
//! and create-only uploads them to
//! `chunks/…/{last revision}.netsy`. If the object already exists — typically our own earlier
//! attempt whose response was lost, or a retry of the same batch re-encoded with a new
//! timestamp — it is read back and the upload counts as done iff it holds the same records
//! ([`UploadOutcome::AlreadyPresent`]); different records are [`Error::Conflict`] (another
//! Primary wrote that revision: split brain, a human must look). To retry with the very same
//! bytes, use [`ObjectStorage::encode_chunk`] + [`ObjectStorage::put_chunk`].
//!
//! # Backfill
//! [`ObjectStorage::list_snapshots`] (newest first), [`ObjectStorage::list_chunks_after`]
//! (oldest first), then [`ObjectStorage::stream_records`] per file. Streaming GETs that break
//! in the middle are resumed with a ranged GET pinned to the object's ETag (at most
//! [`RESUME_ATTEMPTS`] times), so a long snapshot download survives a dropped connection.

use std::io;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{GetOptions, GetRange};
use tokio::io::AsyncWriteExt;

use super::cas::{self, PutIfAbsent};
use super::layout::Layout;
use super::metrics::{MetricsStore, ObjectStoreMetrics};
use super::retry::{RetryConfig, RetryStore};
use super::{DynStore, Error, from_store, store_error_in};
use crate::datafile::asyncio::RecordStream;
use crate::datafile::{
    self, FileKind, FileSummary, HeaderParams, Reader, Record, choose_chunk_compression,
};

/// Times a broken download is resumed with a ranged GET.
pub(crate) const RESUME_ATTEMPTS: u32 = 3;

/// Part size for snapshot uploads (multipart above this size).
const UPLOAD_PART: usize = 8 * 1024 * 1024;

/// A listed snapshot or chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// Full key.
    pub key: Path,
    /// Snapshot revision, or the chunk's last revision.
    pub revision: i64,
    /// Object size in bytes.
    pub size: u64,
}

/// How a create-if-absent upload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadOutcome {
    /// This call created the object.
    Created,
    /// The object already held the same records (an earlier attempt of ours).
    AlreadyPresent,
}

/// A chunk encoded once, ready to be (re)uploaded byte for byte.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedChunk {
    /// Key (`chunks/…/{last_revision}.netsy`).
    pub key: Path,
    /// Last revision in the chunk.
    pub last_revision: i64,
    /// Number of records.
    pub records: usize,
    /// File bytes.
    pub bytes: Bytes,
}

/// Result of [`ObjectStorage::upload_chunk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkUpload {
    /// Key written.
    pub key: Path,
    /// Last revision in the chunk.
    pub last_revision: i64,
    /// Encoded size.
    pub bytes: usize,
    /// Created now or already present.
    pub outcome: UploadOutcome,
}

/// The object-storage handle: the wrapped store plus the key layout.
#[derive(Debug, Clone)]
pub struct ObjectStorage {
    store: DynStore,
    layout: Layout,
}

impl ObjectStorage {
    /// Builds the full stack from configuration: backend, metrics (if given), retry.
    pub fn from_config(
        cfg: &super::StorageConfig,
        env: &super::config::Env,
        metrics: Option<Arc<ObjectStoreMetrics>>,
    ) -> Result<Self, Error> {
        let layout = Layout::new(&cfg.key_prefix)?;
        let backend = cfg.build_backend(env)?;
        Ok(Self::with_backend(
            backend,
            layout,
            cfg.retry.clone(),
            metrics,
        ))
    }

    /// Stacks retry (outermost) and metrics over `backend` (e.g. `InMemory` or a
    /// `FaultStore` in tests).
    pub fn with_backend(
        backend: DynStore,
        layout: Layout,
        retry: RetryConfig,
        metrics: Option<Arc<ObjectStoreMetrics>>,
    ) -> Self {
        let measured: DynStore = match metrics {
            Some(m) => Arc::new(MetricsStore::new(backend, m, layout.clone())),
            None => backend,
        };
        let store: DynStore = Arc::new(RetryStore::new(measured, retry));
        ObjectStorage { store, layout }
    }

    /// Uses `store` exactly as given (no extra layers).
    pub fn from_parts(store: DynStore, layout: Layout) -> Self {
        ObjectStorage { store, layout }
    }

    /// The wrapped store (for [`cas`] operations on coordination objects).
    pub fn store(&self) -> &DynStore {
        &self.store
    }

    /// The key layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    // ---------------------------------------------------------------- write path

    /// Encodes `records` as a chunk (the compression rule of
    /// docs/design/0004-storage.md#data-file-format; `created_at` = now). Records must be non-empty
    /// and in order (see [`crate::datafile`]).
    pub fn encode_chunk(
        &self,
        records: &[Record],
        leader_id: &str,
        created_at: prost_types::Timestamp,
        epoch: u64,
    ) -> Result<EncodedChunk, Error> {
        let last = records.last().ok_or(Error::InvalidRevision(0))?;
        let key = self.chunk_key(last.revision)?;
        let params = HeaderParams {
            kind: FileKind::KindChunk,
            compression: choose_chunk_compression(records),
            records_count: records.len() as i64,
            leader_id: leader_id.to_string(),
            epoch,
            created_at,
        };
        let bytes = datafile::encode_file_with_level(params, records, datafile::BULK_ZSTD_LEVEL)
            .map_err(|source| Error::Datafile {
                key: key.to_string(),
                source,
            })?;
        Ok(EncodedChunk {
            key,
            last_revision: last.revision,
            records: records.len(),
            bytes: Bytes::from(bytes),
        })
    }

    /// Create-if-absent upload of an encoded chunk; an existing object with the same records
    /// counts as success.
    pub async fn put_chunk(&self, chunk: &EncodedChunk) -> Result<UploadOutcome, Error> {
        let outcome = cas::put_if_absent_with(
            self.store.as_ref(),
            &chunk.key,
            chunk.bytes.clone(),
            |a, b| same_records(a, b, FileKind::KindChunk),
        )
        .await?;
        if outcome == PutIfAbsent::AlreadyPresent {
            tracing::info!(key = %chunk.key, "chunk already present with the same records");
        }
        Ok(match outcome {
            PutIfAbsent::Created => UploadOutcome::Created,
            PutIfAbsent::AlreadyPresent => UploadOutcome::AlreadyPresent,
        })
    }

    /// Encodes and uploads a chunk of `records` (create-only, ambiguity resolved; see the
    /// module docs).
    pub async fn upload_chunk(
        &self,
        records: &[Record],
        leader_id: &str,
    ) -> Result<ChunkUpload, Error> {
        let chunk = self.encode_chunk(records, leader_id, datafile::now_timestamp(), 0)?;
        let outcome = self.put_chunk(&chunk).await?;
        Ok(ChunkUpload {
            key: chunk.key,
            last_revision: chunk.last_revision,
            bytes: chunk.bytes.len(),
            outcome,
        })
    }

    fn chunk_key(&self, revision: i64) -> Result<Path, Error> {
        let rev = u64::try_from(revision)
            .ok()
            .filter(|r| *r > 0)
            .ok_or(Error::InvalidRevision(revision))?;
        Ok(self.layout.chunk(rev))
    }

    fn snapshot_key(&self, revision: i64) -> Result<Path, Error> {
        let rev = u64::try_from(revision)
            .ok()
            .filter(|r| *r > 0)
            .ok_or(Error::InvalidRevision(revision))?;
        Ok(self.layout.snapshot(rev))
    }

    // ---------------------------------------------------------------- snapshots

    /// Creates a temporary snapshot file `snapshot_{rev}_{random}.netsy` in `dir` for a
    /// [`datafile::Writer`] (run the writer in a blocking thread; snapshots are zstd).
    pub fn create_snapshot_temp(
        dir: &FsPath,
        revision: i64,
    ) -> io::Result<(std::fs::File, PathBuf)> {
        for _ in 0..16 {
            let path = dir.join(format!(
                "snapshot_{revision}_{:016x}.netsy",
                rand::random::<u64>()
            ));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(f) => return Ok((f, path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free temporary snapshot name",
        ))
    }

    /// Streams a finished snapshot file to `snapshots/{revision}.netsy` (single PUT when small,
    /// multipart otherwise; 8 MiB parts). Like the original this is an overwrite: a snapshot at
    /// a revision is fully determined by the history up to it.
    pub async fn upload_snapshot_file(&self, revision: i64, file: &FsPath) -> Result<Path, Error> {
        let key = self.snapshot_key(revision)?;
        let mut src = tokio::fs::File::open(file).await?;
        let mut writer =
            BufWriter::with_capacity(Arc::clone(&self.store), key.clone(), UPLOAD_PART);
        let copied = tokio::io::copy(&mut src, &mut writer).await;
        match copied {
            Ok(_) => {
                writer.shutdown().await.map_err(|e| io_to_store(e, &key))?;
                Ok(key)
            }
            Err(e) => {
                let _ = writer.abort().await;
                Err(io_to_store(e, &key))
            }
        }
    }

    // ---------------------------------------------------------------- backfill

    /// Every snapshot, newest first.
    pub async fn list_snapshots(&self) -> Result<Vec<FileRef>, Error> {
        let mut refs = self
            .list_parsed(&self.layout.snapshots_dir(), |l, k| l.parse_snapshot(k))
            .await?;
        refs.sort_by_key(|r| std::cmp::Reverse(r.revision));
        Ok(refs)
    }

    /// The newest snapshot, if any.
    pub async fn latest_snapshot(&self) -> Result<Option<FileRef>, Error> {
        Ok(self.list_snapshots().await?.into_iter().next())
    }

    /// Chunks whose (last) revision is greater than `after`, oldest first.
    pub async fn list_chunks_after(&self, after: i64) -> Result<Vec<FileRef>, Error> {
        let mut refs = self
            .list_parsed(&self.layout.chunks_dir(), |l, k| l.parse_chunk(k))
            .await?;
        refs.retain(|r| r.revision > after);
        refs.sort_by_key(|r| r.revision);
        Ok(refs)
    }

    async fn list_parsed(
        &self,
        prefix: &Path,
        parse: impl Fn(&Layout, &Path) -> Option<u64>,
    ) -> Result<Vec<FileRef>, Error> {
        let metas: Vec<_> = self
            .store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| from_store(e, prefix))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let rev = parse(&self.layout, &m.location)?;
                let revision = i64::try_from(rev).ok()?;
                Some(FileRef {
                    key: m.location,
                    revision,
                    size: m.size,
                })
            })
            .collect())
    }

    /// Streams the records of the data file at `key`, validating as it goes (see
    /// [`RecordStream`]). Store errors surface as [`Error::Datafile`] with an `Io` source; use
    /// [`Error::kind`] to tell transient from corrupt.
    pub fn stream_records(&self, key: &Path, expected_kind: Option<FileKind>) -> RecordStream {
        RecordStream::spawn(
            download(Arc::clone(&self.store), key.clone()),
            expected_kind,
        )
    }

    /// Like [`Self::stream_records`], mapping errors to [`Error`] (with the key).
    pub fn records(
        &self,
        key: &Path,
        expected_kind: Option<FileKind>,
    ) -> impl Stream<Item = Result<Record, Error>> + use<> {
        let k = key.to_string();
        self.stream_records(key, expected_kind).map(move |r| {
            r.map_err(|source| Error::Datafile {
                key: k.clone(),
                source,
            })
        })
    }

    /// Reads a whole (small) data file into memory: records and summary.
    pub async fn read_file(
        &self,
        key: &Path,
        expected_kind: Option<FileKind>,
    ) -> Result<(Vec<Record>, FileSummary), Error> {
        let mut stream = self.stream_records(key, expected_kind);
        let mut records = Vec::new();
        let err = |source| Error::Datafile {
            key: key.to_string(),
            source,
        };
        while let Some(r) = stream.next_record().await.map_err(err)? {
            records.push(r);
        }
        let summary = stream.summary().cloned().ok_or_else(|| {
            err(datafile::Error::UnexpectedEof {
                what: datafile::What::Footer,
            })
        })?;
        Ok((records, summary))
    }

    /// Deletes every chunk whose last revision is ≤ `revision` (after a covering snapshot),
    /// listing first (works on versioned buckets). Returns how many were deleted.
    pub async fn delete_chunks_up_to(&self, revision: i64) -> Result<usize, Error> {
        let doomed: Vec<Path> = self
            .list_parsed(&self.layout.chunks_dir(), |l, k| l.parse_chunk(k))
            .await?
            .into_iter()
            .filter(|r| r.revision <= revision)
            .map(|r| r.key)
            .collect();
        let stream = futures::stream::iter(doomed.into_iter().map(Ok)).boxed();
        let mut deleted = 0;
        let mut results = self.store.delete_stream(stream);
        while let Some(r) = results.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => return Err(Error::Store(e)),
            }
        }
        Ok(deleted)
    }
}

/// Whether two encoded data files hold the same kind and the same records (headers may differ
/// in `created_at`, `leader_id`, compression). Invalid files are never "the same".
pub(crate) fn same_records(a: &[u8], b: &[u8], kind: FileKind) -> bool {
    if a == b {
        return true;
    }
    let read = |bytes: &[u8]| -> Option<Vec<Record>> {
        Reader::new(bytes, Some(kind))
            .ok()?
            .collect::<Result<Vec<_>, _>>()
            .ok()
    };
    match (read(a), read(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

fn io_to_store(e: io::Error, key: &Path) -> Error {
    // object_store's BufWriter reports store failures as io::Error wrapping object_store::Error.
    if store_error_in(&e).is_some() {
        match e
            .into_inner()
            .map(|inner| inner.downcast::<object_store::Error>())
        {
            Some(Ok(se)) => return from_store(*se, key),
            Some(Err(other)) => return Error::Io(io::Error::other(other)),
            None => return Error::Io(io::Error::other("unknown upload error")),
        }
    }
    Error::Io(e)
}

/// A streaming GET that resumes with ranged GETs pinned to the first response's ETag.
fn download(store: DynStore, key: Path) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    async_stream::stream! {
        let mut offset = 0u64;
        let mut etag: Option<String> = None;
        let mut resumes = 0u32;
        loop {
            let mut opts = GetOptions::default();
            if offset > 0 {
                opts.range = Some(GetRange::Offset(offset));
                opts.if_match = etag.clone();
            }
            let result = match store.get_opts(&key, opts).await {
                Ok(r) => r,
                Err(e) => {
                    yield Err(io::Error::other(e));
                    return;
                }
            };
            if etag.is_none() {
                etag = result.meta.e_tag.clone();
            }
            let mut body = result.into_stream();
            let mut failure = None;
            while let Some(item) = body.next().await {
                match item {
                    Ok(b) => {
                        offset += b.len() as u64;
                        yield Ok(b);
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            match failure {
                None => return,
                Some(e) if resumes < RESUME_ATTEMPTS && etag.is_some() && super::retry::is_transient(&e) => {
                    resumes += 1;
                    tracing::warn!(key = %key, offset, error = %e, "download interrupted, resuming");
                }
                Some(e) => {
                    yield Err(io::Error::other(e));
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datafile::FileCompression;
    use crate::objstore::fault::{FaultConfig, FaultStore, test_seed};
    use crate::objstore::{ErrorKind, ObjectKind};
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;
    use std::time::Duration;

    fn rec(rev: i64, key: &str, value: &[u8]) -> Record {
        Record {
            revision: rev,
            key: key.as_bytes().to_vec(),
            created: true,
            create_revision: rev,
            version: 1,
            value: value.to_vec(),
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            leader_id: "n1".into(),
            ..Default::default()
        }
    }

    fn fast_retry() -> RetryConfig {
        RetryConfig {
            max_attempts: 3,
            call_timeout: Duration::from_secs(2),
            stream_idle_timeout: Duration::from_secs(2),
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            retries: None,
        }
    }

    #[tokio::test]
    async fn chunk_upload_is_create_only_and_resolves_lost_responses() {
        let seed = test_seed();
        let fault = Arc::new(FaultStore::new(
            Arc::new(InMemory::new()),
            FaultConfig::default(),
            seed,
        ));
        let storage = ObjectStorage::with_backend(
            fault.clone(),
            Layout::new("pfx").unwrap(),
            fast_retry(),
            None,
        );
        let records = vec![rec(1, "/a", b"1"), rec(2, "/b", b"2")];

        // The PUT lands but its response is lost: the retry sees AlreadyExists, reads back,
        // and finds its own bytes.
        fault.drop_next_put_responses(1);
        let up = storage.upload_chunk(&records, "n1").await.unwrap();
        assert_eq!(up.key.as_ref(), "pfx/chunks/0002/0000000000000000002.netsy");
        assert_eq!(up.outcome, UploadOutcome::AlreadyPresent);

        // Re-encoding the same batch later (new header timestamp) is still recognised.
        let again = storage.upload_chunk(&records, "n1").await.unwrap();
        assert_eq!(again.outcome, UploadOutcome::AlreadyPresent);

        // Different records at the same revision: conflict.
        let other = vec![rec(1, "/a", b"1"), rec(2, "/b", b"DIFFERENT")];
        let err = storage.upload_chunk(&other, "n2").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");

        let fresh = storage
            .upload_chunk(&[rec(3, "/c", b"3")], "n1")
            .await
            .unwrap();
        assert_eq!(fresh.outcome, UploadOutcome::Created);
        let (read, summary) = storage
            .read_file(&fresh.key, Some(FileKind::KindChunk))
            .await
            .unwrap();
        assert_eq!(summary.last_revision(), 3);
        assert_eq!(read[0].value, b"3");
    }

    #[tokio::test]
    async fn backfill_listing_and_streaming() {
        let storage = ObjectStorage::with_backend(
            Arc::new(InMemory::new()),
            Layout::new("").unwrap(),
            fast_retry(),
            None,
        );
        for (rev, big) in [(1, false), (2, true), (3, false), (10_002, false)] {
            let value = if big {
                vec![7u8; 10_000]
            } else {
                b"v".to_vec()
            };
            storage
                .upload_chunk(&[rec(rev, "/k", &value)], "n1")
                .await
                .unwrap();
        }
        // Noise that must be ignored.
        storage
            .store()
            .put(&Path::from("chunks/0001/junk.netsy"), "x".into())
            .await
            .unwrap();
        storage
            .store()
            .put(&Path::from("snapshots/README"), "x".into())
            .await
            .unwrap();

        let dir = tempfile::tempdir().unwrap();
        for rev in [2, 3] {
            let (file, path) = ObjectStorage::create_snapshot_temp(dir.path(), rev).unwrap();
            let params = HeaderParams {
                kind: FileKind::KindSnapshot,
                compression: FileCompression::CompressionZstd,
                records_count: rev,
                leader_id: "n1".into(),
                epoch: 0,
                created_at: datafile::now_timestamp(),
            };
            let mut w = datafile::Writer::new(file, params).unwrap();
            for r in 1..=rev {
                w.write_record(&rec(r, "/k", b"v")).unwrap();
            }
            w.finish().unwrap();
            let key = storage.upload_snapshot_file(rev, &path).await.unwrap();
            assert_eq!(storage.layout().classify(&key), ObjectKind::Snapshot);
        }
        let snaps = storage.list_snapshots().await.unwrap();
        assert_eq!(
            snaps.iter().map(|s| s.revision).collect::<Vec<_>>(),
            vec![3, 2]
        );
        let latest = storage.latest_snapshot().await.unwrap().unwrap();
        let chunks = storage.list_chunks_after(latest.revision).await.unwrap();
        assert_eq!(
            chunks.iter().map(|c| c.revision).collect::<Vec<_>>(),
            vec![10_002]
        );
        let all = storage.list_chunks_after(0).await.unwrap();
        assert_eq!(
            all.iter().map(|c| c.revision).collect::<Vec<_>>(),
            vec![1, 2, 3, 10_002]
        );

        let mut s = storage.stream_records(&latest.key, Some(FileKind::KindSnapshot));
        let mut revs = Vec::new();
        while let Some(r) = s.next_record().await.unwrap() {
            revs.push(r.revision);
        }
        assert_eq!(revs, vec![1, 2, 3]);
        assert_eq!(s.summary().unwrap().last_revision(), 3);

        // Wrong kind is an error, not a silent success.
        let err = storage
            .read_file(&latest.key, Some(FileKind::KindChunk))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
        // A missing object is a store error.
        let err = storage
            .read_file(&storage.layout().snapshot(99), None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transient, "{err}");

        assert_eq!(storage.delete_chunks_up_to(3).await.unwrap(), 3);
        let left = storage.list_chunks_after(0).await.unwrap();
        assert_eq!(
            left.iter().map(|c| c.revision).collect::<Vec<_>>(),
            vec![10_002]
        );
    }

    /// A body stream that breaks after some bytes is resumed with a ranged GET.
    #[tokio::test]
    async fn download_resumes_after_a_broken_body() {
        #[derive(Debug)]
        struct Flaky {
            inner: InMemory,
            broken: std::sync::atomic::AtomicBool,
        }
        impl std::fmt::Display for Flaky {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("Flaky")
            }
        }
        #[async_trait::async_trait]
        impl object_store::ObjectStore for Flaky {
            async fn put_opts(
                &self,
                l: &Path,
                p: object_store::PutPayload,
                o: object_store::PutOptions,
            ) -> object_store::Result<object_store::PutResult> {
                self.inner.put_opts(l, p, o).await
            }
            async fn put_multipart_opts(
                &self,
                l: &Path,
                o: object_store::PutMultipartOptions,
            ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
                self.inner.put_multipart_opts(l, o).await
            }
            async fn get_opts(
                &self,
                l: &Path,
                o: GetOptions,
            ) -> object_store::Result<object_store::GetResult> {
                let mut r = self.inner.get_opts(l, o).await?;
                if !self.broken.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    let bytes = r.bytes().await?;
                    let meta = self.inner.head(l).await?;
                    let half = bytes.slice(..bytes.len() / 2);
                    let s = futures::stream::iter(vec![
                        Ok(half),
                        Err(object_store::Error::Generic {
                            store: "Flaky",
                            source: "connection reset".into(),
                        }),
                    ])
                    .boxed();
                    r = object_store::GetResult {
                        payload: object_store::GetResultPayload::Stream(s),
                        meta,
                        range: 0..bytes.len() as u64,
                        attributes: Default::default(),
                        extensions: Default::default(),
                    };
                }
                Ok(r)
            }
            fn delete_stream(
                &self,
                l: futures::stream::BoxStream<'static, object_store::Result<Path>>,
            ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
                self.inner.delete_stream(l)
            }
            fn list(
                &self,
                p: Option<&Path>,
            ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
            {
                self.inner.list(p)
            }
            async fn list_with_delimiter(
                &self,
                p: Option<&Path>,
            ) -> object_store::Result<object_store::ListResult> {
                self.inner.list_with_delimiter(p).await
            }
            async fn copy_opts(
                &self,
                f: &Path,
                t: &Path,
                o: object_store::CopyOptions,
            ) -> object_store::Result<()> {
                self.inner.copy_opts(f, t, o).await
            }
        }
        let flaky = Arc::new(Flaky {
            inner: InMemory::new(),
            broken: false.into(),
        });
        let storage = ObjectStorage::from_parts(flaky.clone(), Layout::default());
        let records: Vec<_> = (1..=50)
            .map(|r| rec(r, &format!("/k{r}"), &[r as u8; 300]))
            .collect();
        flaky
            .broken
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let up = storage.upload_chunk(&records, "n1").await.unwrap();
        flaky
            .broken
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let (read, _) = storage
            .read_file(&up.key, Some(FileKind::KindChunk))
            .await
            .unwrap();
        assert_eq!(read.len(), 50);
    }
}
