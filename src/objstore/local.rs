//! `LocalDirStore`: a local-directory backend with a correct compare-and-swap, for single-host
//! deployments, development and tests.
//!
//! object_store's `LocalFileSystem` writes atomically (temporary file, then rename or hard
//! link) and, with `with_fsync(true)`, fsyncs the file and its directory — but it does not
//! implement `PutMode::Update`. This wrapper adds it, atomically across threads AND processes:
//!
//! * Every mutation of a key (put in any mode, multipart completion, delete, copy/rename onto
//!   it) runs while holding an exclusive `flock` on one of 256 lock files
//!   (`{root}/.netsy-locks/{stripe:02x}.lock`, stripe = CRC-64 of the key mod 256). Lock files
//!   are created once and never deleted, so their number is bounded.
//! * `Update(etag)` then compares the object's current ETag (object_store's local ETag: inode,
//!   mtime in µs and size — a fresh inode for every version, because each version is a new file
//!   renamed into place while the old one still exists) and, if equal, overwrites with
//!   temp file + fsync + rename + fsync dir. A missing object fails the precondition, as on S3.
//! * `Create` is `link(2)` of a fully written and fsynced temporary file, which fails if the
//!   name exists. It takes no lock: it can only succeed while the name is absent, and every
//!   change that removes a name (delete, rename away) holds the lock, while `Update` replaces
//!   an existing name atomically — so a `Create` is ordered before or after any locked
//!   mutation. (Chunks are written this way, once per write group: a lock would add a file
//!   open, an `flock` and a thread hop to every write.)
//!
//! Readers take no lock: rename is atomic, so a reader sees the old or the new version.
//! Listing hides `.netsy-locks/`; writing under it is refused.
//! Must never: hold a lock across anything but the few file-system operations of one write.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    Result, UploadPart,
};

use crate::datafile::wire::crc64;

const STORE: &str = "LocalDirStore";
const LOCK_DIR: &str = ".netsy-locks";
/// A single node's write-ahead log (`ha::wal`): files of ours, never objects.
const WAL_DIR: &str = ".netsy-wal";
const STRIPES: u64 = 256;

/// Local-directory object store with atomic create-only and If-Match writes.
#[derive(Debug, Clone)]
pub(crate) struct LocalDirStore {
    inner: Arc<LocalFileSystem>,
    root: PathBuf,
    locks: Arc<PathBuf>,
}

impl LocalDirStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub(crate) fn new(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root: PathBuf = root.into();
        let locks = root.join(LOCK_DIR);
        std::fs::create_dir_all(&locks)?;
        let inner = LocalFileSystem::new_with_prefix(&root)
            .map_err(std::io::Error::other)?
            .with_fsync(true)
            // Empty directories stay: a chunk goes to `chunks/{rev % 10000}/`, and once a
            // snapshot's cleanup had removed those directories, nearly every write would create
            // one again (mkdir and two more fsyncs per write). At most 10,000 of them (~40 MB).
            .with_automatic_cleanup(false);
        Ok(LocalDirStore {
            inner: Arc::new(inner),
            root,
            locks: Arc::new(locks),
        })
    }

    fn stripe(location: &Path) -> u64 {
        crc64(location.as_ref().as_bytes()) % STRIPES
    }

    /// Takes the exclusive lock(s) for `locations` (deduplicated, in stripe order so two
    /// writers can never deadlock).
    async fn lock(&self, locations: &[&Path]) -> Result<Vec<File>> {
        let mut stripes: Vec<u64> = locations.iter().map(|l| Self::stripe(l)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let dir = Arc::clone(&self.locks);
        tokio::task::spawn_blocking(move || {
            let mut held = Vec::with_capacity(stripes.len());
            for s in stripes {
                let path = dir.join(format!("{s:02x}.lock"));
                let file = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .map_err(|e| generic(format!("open lock {}: {e}", path.display())))?;
                file.lock()
                    .map_err(|e| generic(format!("lock {}: {e}", path.display())))?;
                held.push(file);
            }
            Ok(held)
        })
        .await
        .map_err(|e| object_store::Error::JoinError { source: e })?
    }

    fn check_writable(location: &Path) -> Result<()> {
        if is_lock_path(location) {
            return Err(generic(format!(
                "{location}: keys under {LOCK_DIR}/ and {WAL_DIR}/ are reserved"
            )));
        }
        Ok(())
    }
}

fn generic(msg: String) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: msg.into(),
    }
}

/// Under one of the directories of ours at the top of the bucket directory (`.netsy-locks`,
/// `.netsy-wal`): never listed, never written as an object.
fn is_lock_path(location: &Path) -> bool {
    location
        .parts()
        .next()
        .is_some_and(|p| p.as_ref() == LOCK_DIR || p.as_ref() == WAL_DIR)
}

impl fmt::Display for LocalDirStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalDirStore({})", self.root.display())
    }
}

#[async_trait]
impl ObjectStore for LocalDirStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        Self::check_writable(location)?;
        if matches!(opts.mode, PutMode::Create) {
            return self.inner.put_opts(location, payload, opts).await;
        }
        let _guard = self.lock(&[location]).await?;
        match &opts.mode {
            PutMode::Update(version) => {
                let expected = version
                    .e_tag
                    .as_deref()
                    .ok_or_else(|| generic("ETag required for conditional put".to_string()))?;
                let current = match self.inner.head(location).await {
                    Ok(meta) => meta.e_tag,
                    Err(object_store::Error::NotFound { .. }) => None,
                    Err(e) => return Err(e),
                };
                if current.as_deref() != Some(expected) {
                    return Err(object_store::Error::Precondition {
                        path: location.to_string(),
                        source: format!("ETag {expected} does not match {current:?}").into(),
                    });
                }
                let overwrite = PutOptions {
                    mode: PutMode::Overwrite,
                    ..opts
                };
                self.inner.put_opts(location, payload, overwrite).await
            }
            PutMode::Create | PutMode::Overwrite => {
                self.inner.put_opts(location, payload, opts).await
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        Self::check_writable(location)?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(LockedUpload {
            inner,
            store: self.clone(),
            location: location.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let this = self.clone();
        locations
            .then(move |location| {
                let this = this.clone();
                async move {
                    let location = location?;
                    Self::check_writable(&location)?;
                    let _guard = this.lock(&[&location]).await?;
                    this.inner.delete(&location).await?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        hide_locks(self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        hide_locks(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let mut result = self.inner.list_with_delimiter(prefix).await?;
        result.common_prefixes.retain(|p| !is_lock_path(p));
        result.objects.retain(|o| !is_lock_path(&o.location));
        Ok(result)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        Self::check_writable(to)?;
        let _guard = self.lock(&[to]).await?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        Self::check_writable(from)?;
        Self::check_writable(to)?;
        let _guard = self.lock(&[from, to]).await?;
        self.inner.rename_opts(from, to, options).await
    }
}

fn hide_locks(s: BoxStream<'static, Result<ObjectMeta>>) -> BoxStream<'static, Result<ObjectMeta>> {
    s.filter(|item| {
        let keep = !matches!(item, Ok(meta) if is_lock_path(&meta.location));
        futures::future::ready(keep)
    })
    .boxed()
}

/// Multipart upload whose completion (the rename into place) holds the key's lock.
#[derive(Debug)]
struct LockedUpload {
    inner: Box<dyn MultipartUpload>,
    store: LocalDirStore,
    location: Path,
}

#[async_trait]
impl MultipartUpload for LockedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let _guard = self.store.lock(&[&self.location]).await?;
        self.inner.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::UpdateVersion;

    fn update(etag: &str) -> PutOptions {
        PutMode::Update(UpdateVersion {
            e_tag: Some(etag.to_string()),
            version: None,
        })
        .into()
    }

    #[tokio::test]
    async fn create_update_semantics() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path()).unwrap();
        let key = Path::from("members.json");
        let r1 = store
            .put_opts(&key, "v1".into(), PutMode::Create.into())
            .await
            .unwrap();
        let err = store
            .put_opts(&key, "v1b".into(), PutMode::Create.into())
            .await
            .unwrap_err();
        assert!(
            matches!(err, object_store::Error::AlreadyExists { .. }),
            "{err}"
        );
        let e1 = r1.e_tag.clone().unwrap();
        assert_eq!(
            store.head(&key).await.unwrap().e_tag.as_deref(),
            Some(e1.as_str())
        );
        let r2 = store
            .put_opts(&key, "v2".into(), update(&e1))
            .await
            .unwrap();
        let e2 = r2.e_tag.unwrap();
        assert_ne!(e1, e2);
        let err = store
            .put_opts(&key, "v3".into(), update(&e1))
            .await
            .unwrap_err();
        assert!(
            matches!(err, object_store::Error::Precondition { .. }),
            "{err}"
        );
        let got = store.get(&key).await.unwrap();
        assert_eq!(got.meta.e_tag.as_deref(), Some(e2.as_str()));
        assert_eq!(got.bytes().await.unwrap().as_ref(), b"v2");
        let err = store
            .put_opts(&Path::from("missing"), "x".into(), update(&e2))
            .await
            .unwrap_err();
        assert!(
            matches!(err, object_store::Error::Precondition { .. }),
            "{err}"
        );
        // Lock files are invisible and untouchable.
        let listed: Vec<_> = store
            .list(None)
            .map(|m| m.unwrap().location.to_string())
            .collect()
            .await;
        assert_eq!(listed, vec!["members.json".to_string()]);
        let top = store.list_with_delimiter(None).await.unwrap();
        assert!(top.common_prefixes.is_empty(), "{top:?}");
        assert!(
            store
                .put(&Path::from(".netsy-locks/00.lock"), "x".into())
                .await
                .is_err()
        );
        store.delete(&key).await.unwrap();
        assert!(matches!(
            store.head(&key).await,
            Err(object_store::Error::NotFound { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_racers_in_threads_have_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path()).unwrap();
        for round in 0..20 {
            // Create race.
            let key = Path::from(format!("race/{round}"));
            let mut tasks = Vec::new();
            for racer in 0..8 {
                let (store, key) = (store.clone(), key.clone());
                tasks.push(tokio::spawn(async move {
                    store
                        .put_opts(&key, format!("{racer}").into(), PutMode::Create.into())
                        .await
                        .is_ok()
                }));
            }
            let mut winners = 0;
            for t in tasks {
                winners += usize::from(t.await.unwrap());
            }
            assert_eq!(winners, 1, "create round {round}");
            // Update race from the same ETag.
            let etag = store.head(&key).await.unwrap().e_tag.unwrap();
            let mut tasks = Vec::new();
            for racer in 0..8 {
                let (store, key, etag) = (store.clone(), key.clone(), etag.clone());
                tasks.push(tokio::spawn(async move {
                    store
                        .put_opts(&key, format!("u{racer}").into(), update(&etag))
                        .await
                        .is_ok()
                }));
            }
            let mut winners = 0;
            for t in tasks {
                winners += usize::from(t.await.unwrap());
            }
            assert_eq!(winners, 1, "update round {round}");
        }
    }

    const CHILD_ENV: &str = "NETSY_TEST_LOCAL_CAS_CHILD_DIR";
    const ROUNDS: usize = 40;

    /// Body of a child process in `concurrent_racers_in_two_processes` (a no-op otherwise).
    #[tokio::test]
    async fn local_cas_child_process() {
        let Ok(dir) = std::env::var(CHILD_ENV) else {
            return;
        };
        let store = LocalDirStore::new(&dir).unwrap();
        let me = std::process::id();
        let counter = Path::from("counter");
        // Start barrier: announce readiness, then wait (bounded) until both racers are ready.
        std::fs::write(std::path::Path::new(&dir).join(format!("ready-{me}")), b"").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let ready = std::fs::read_dir(&dir)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with("ready-")
                })
                .count();
            if ready >= 2 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the other racer never started"
            );
            tokio::task::yield_now().await;
        }
        let mut create_wins = 0;
        for round in 0..ROUNDS {
            let key = Path::from(format!("race/{round}"));
            if store
                .put_opts(&key, format!("{me}").into(), PutMode::Create.into())
                .await
                .is_ok()
            {
                create_wins += 1;
            }
            // Read-modify-write increment of a shared counter; retried on precondition failure.
            loop {
                let got = store.get(&counter).await.unwrap();
                let etag = got.meta.e_tag.clone().unwrap();
                let n: u64 = String::from_utf8(got.bytes().await.unwrap().to_vec())
                    .unwrap()
                    .parse()
                    .unwrap();
                match store
                    .put_opts(&counter, format!("{}", n + 1).into(), update(&etag))
                    .await
                {
                    Ok(_) => break,
                    Err(object_store::Error::Precondition { .. }) => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        println!("CREATE_WINS {create_wins}");
    }

    #[tokio::test]
    async fn concurrent_racers_in_two_processes() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path()).unwrap();
        store.put(&Path::from("counter"), "0".into()).await.unwrap();
        let exe = std::env::current_exe().unwrap();
        let children: Vec<_> = (0..2)
            .map(|_| {
                std::process::Command::new(&exe)
                    .args([
                        "--exact",
                        "objstore::local::tests::local_cas_child_process",
                        "--nocapture",
                        "--test-threads=1",
                    ])
                    .env(CHILD_ENV, dir.path())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut total_wins = 0;
        for child in children {
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "child failed: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let wins: usize = stdout
                .lines()
                .find_map(|l| l.split_once("CREATE_WINS ").map(|(_, n)| n))
                .unwrap_or_else(|| panic!("no result line in {stdout}"))
                .trim()
                .parse()
                .unwrap();
            eprintln!("child create wins: {wins}");
            total_wins += wins;
        }
        assert_eq!(total_wins, ROUNDS, "exactly one create winner per round");
        let final_count = store
            .get(&Path::from("counter"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(
            final_count.as_ref(),
            format!("{}", 2 * ROUNDS).as_bytes(),
            "no lost update"
        );
    }
}
