//! The local MVCC store on SQLite: one row per (revision, sub-revision), like Netsy's `records`
//! table, plus compaction and lease state.
//!
//! Owns: the schema, every SQL statement, the single writer thread (all mutations, one SQLite
//! transaction per group of requests), the reader pool, etcd's MVCC semantics (ranges, txns,
//! compaction, lease attachment). Never touches the network and never runs SQLite on an async
//! worker thread: reads go through `spawn_blocking`, writes through the writer thread.

mod leases;
mod pool;
mod read;
pub(crate) mod retention;
mod schema;
mod txn;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use etcd_client::proto::{
    PbKeyValue, PbRangeRequest, PbRangeResponse, PbTxnRequest, PbTxnResponse,
};
use tokio::sync::{mpsc, oneshot};

pub use leases::{LeaseInfo, LeaseTable};
pub use read::{KeyRange, RangeEnd, RangeResult};
pub use txn::Record;
pub use writer::{
    CommitHook, HookError, Landing, MAX_UPLOADS_IN_FLIGHT, NoopCommitHook, hook_block, hook_wait,
};

use crate::watch::{EventBatch, WatchHub};

/// The key of the genesis record written at revision 1 of an empty store (Netsy's `_netsy`).
/// It is invisible to the etcd API, so the first client write gets revision 2 as in etcd.
pub const GENESIS_KEY: &[u8] = b"_netsy";

/// Errors of the store. Each etcd-visible one is mapped to etcd's exact gRPC status in
/// `api::status` and nowhere else.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("required revision is a future revision")]
    FutureRevision,
    #[error("required revision has been compacted")]
    Compacted,
    #[error("key not found")]
    KeyNotFound,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("commit hook failed: {0}")]
    Commit(String),
    #[error("the store is shutting down")]
    Shutdown,
    /// The local database holds something it cannot hold (a history that disagrees with the
    /// bucket's, an unknown schema): the local copy must be rebuilt from the bucket.
    #[error("corrupt local database: {0}")]
    Corrupt(String),
    /// The local database cannot be opened or worked on (disk, permissions, threads): not a
    /// reason to rebuild; fix the environment and retry.
    #[error("local database unavailable: {0}")]
    Unavailable(String),
    /// The consumer of an export gave up (its own reason).
    #[error("export stopped: {0}")]
    Export(String),
    /// A write may or may not be durable; the writer has stopped (see `fatal`).
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// A broken invariant inside the store: a bug.
    #[error("internal store error: {0}")]
    Internal(String),
}

/// What a caller should do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The request is wrong, or refers to what is gone or not there: answer it, change nothing.
    Refuse,
    /// Transient (shutting down, busy, the bucket unreachable): try again later.
    Retry,
    /// The local copy cannot serve the bucket's history: rebuild it from the bucket.
    Rebuild,
    /// The node cannot go on safely: it stops, and a restart resolves it.
    Stop,
}

impl Error {
    /// What the caller should do; only [`Error::Corrupt`] asks for a rebuild.
    pub fn action(&self) -> Action {
        match self {
            Error::FutureRevision
            | Error::Compacted
            | Error::KeyNotFound
            | Error::LeaseNotFound
            | Error::LeaseExists => Action::Refuse,
            Error::Commit(_) | Error::Shutdown | Error::Unavailable(_) | Error::Export(_) => {
                Action::Retry
            }
            Error::Sqlite(_) | Error::Internal(_) => Action::Retry,
            Error::Corrupt(_) => Action::Rebuild,
            Error::Indeterminate(_) => Action::Stop,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Identity of the node written into records (`leader_id`).
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub data_dir: PathBuf,
    pub node_id: String,
    pub readers: usize,
    /// Where the writer reports a write whose outcome is unknown.
    pub fatal: crate::fatal::FatalChannel,
}

/// Shared revision counters, readable without locks.
#[derive(Debug, Default)]
pub struct Revisions {
    current: AtomicI64,
    compacted: AtomicI64,
}

impl Revisions {
    pub fn current(&self) -> i64 {
        self.current.load(Ordering::Acquire)
    }
    pub fn compacted(&self) -> i64 {
        self.compacted.load(Ordering::Acquire)
    }
    fn set_current(&self, rev: i64) {
        self.current.store(rev, Ordering::Release);
    }
    fn set_compacted(&self, rev: i64) {
        self.compacted.store(rev, Ordering::Release);
    }
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    revs: Arc<Revisions>,
    pool: pool::ReaderPool,
    writer: mpsc::Sender<writer::Command>,
    core: writer::Shared,
    /// Calls to the writer in progress (see `writer::try_inline`).
    in_flight: std::sync::atomic::AtomicUsize,
    leases: Arc<LeaseTable>,
    db_path: PathBuf,
    writer_thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Database size figures for Maintenance.Status.
#[derive(Debug, Clone, Copy)]
pub struct DbSize {
    pub total: i64,
    pub in_use: i64,
}

impl Store {
    /// Opens (creating if needed) the database in `opts.data_dir` and starts the writer thread.
    pub fn open(opts: StoreOptions, hub: WatchHub, hook: Box<dyn CommitHook>) -> Result<Store> {
        std::fs::create_dir_all(&opts.data_dir).map_err(|e| {
            Error::Unavailable(format!(
                "cannot create data dir {}: {e}",
                opts.data_dir.display()
            ))
        })?;
        let db_path = opts.data_dir.join("db.sqlite3");
        let mut conn = schema::open_write(&db_path)?;
        schema::migrate(&mut conn, &opts.node_id)?;
        if let Some((from, to)) = writer::discard_unlanded(&mut conn)? {
            tracing::warn!(
                from,
                to,
                "discarded revisions committed locally whose upload was not known to have landed (the bucket has them if they did)"
            );
        }
        let current = read::latest_revision(&conn)?;
        let compacted = read::compaction_revision(&conn)?;
        let revs = Arc::new(Revisions::default());
        revs.set_current(current);
        revs.set_compacted(compacted);
        hub.reset(current);
        let leases = Arc::new(LeaseTable::load(&conn)?);
        let pool = pool::ReaderPool::open(&db_path, opts.readers.max(1))?;
        let (tx, rx) = mpsc::channel(1024);
        let checkpointer = writer::spawn_checkpointer(&db_path)?;
        let (core, writer_thread) = writer::spawn(
            writer::Writer::new(
                conn,
                revs.clone(),
                hub,
                leases.clone(),
                opts.node_id.clone(),
                hook,
            )
            .with_checkpointer(checkpointer)?
            .with_fatal(opts.fatal.clone()),
            rx,
        )?;
        Ok(Store {
            inner: Arc::new(Inner {
                revs,
                pool,
                writer_thread: std::sync::Mutex::new(Some(writer_thread)),
                writer: tx,
                core,
                in_flight: Default::default(),
                leases,
                db_path,
            }),
        })
    }

    /// Closes the store: stops the writer thread and closes every connection, so the database
    /// files can be removed safely. Waits for the writer when this is the last handle.
    pub async fn close(self) {
        let Ok(inner) = Arc::try_unwrap(self.inner) else {
            tracing::warn!("store still in use; not waiting for the writer thread");
            return;
        };
        let Inner {
            writer,
            pool,
            writer_thread,
            ..
        } = inner;
        drop(writer);
        drop(pool);
        let handle = writer_thread.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }

    pub fn revisions(&self) -> &Arc<Revisions> {
        &self.inner.revs
    }

    pub fn current_revision(&self) -> i64 {
        self.inner.revs.current()
    }

    pub fn compact_revision(&self) -> i64 {
        self.inner.revs.compacted()
    }

    pub fn leases(&self) -> &Arc<LeaseTable> {
        &self.inner.leases
    }

    pub fn db_path(&self) -> &Path {
        &self.inner.db_path
    }

    /// etcd Range at the request's revision (0 = current), on a reader connection.
    pub async fn range(&self, req: PbRangeRequest) -> Result<PbRangeResponse> {
        let revs = self.inner.revs.clone();
        let one_key = req.range_end.is_empty();
        let f = move |conn: &rusqlite::Connection| read::range(conn, &revs, &req);
        if one_key {
            // An index lookup: answered on this thread.
            self.inner.pool.run_short(f).await?
        } else {
            self.inner.pool.run(f).await?
        }
    }

    /// [`Store::range`] plus the SQLite VM steps it took: the work of a read, which must not
    /// grow with the history of the keys it returns (regression tests and benchmarks).
    pub async fn range_counted(&self, req: PbRangeRequest) -> Result<(PbRangeResponse, u64)> {
        let revs = self.inner.revs.clone();
        self.inner
            .pool
            .run(move |conn| {
                let before = read::vm_steps();
                let resp = read::range(conn, &revs, &req)?;
                Ok((resp, read::vm_steps() - before))
            })
            .await?
    }

    /// Reads live key-values in `range` at `rev`, at most `limit` (0 = all), keys strictly after
    /// `after` when given. Used by RangeStream's keyset pagination.
    pub async fn range_page(
        &self,
        range: KeyRange,
        rev: i64,
        after: Option<Vec<u8>>,
        limit: usize,
        keys_only: bool,
    ) -> Result<Vec<PbKeyValue>> {
        let revs = self.inner.revs.clone();
        self.inner
            .pool
            .run(move |conn| {
                loop {
                    if rev > revs.current() {
                        return Err(Error::FutureRevision);
                    }
                    let tx = read::ReadTx::begin(conn)?;
                    let head = read::latest_revision(&tx)?;
                    if rev > head {
                        // `rev` was published after this snapshot began: take a newer one.
                        continue;
                    }
                    let kvs = read::live_page(
                        &tx,
                        &range,
                        rev,
                        head,
                        after.as_deref(),
                        limit,
                        keys_only,
                    )?;
                    drop(tx);
                    read::check_not_compacted(&revs, rev)?;
                    return Ok(kvs);
                }
            })
            .await?
    }

    /// Events of revisions `from..=to` for keys in `range`, oldest first, with previous values,
    /// and the revision the answer is complete up to (it may stop early after `max` events).
    pub async fn events(
        &self,
        range: KeyRange,
        from: i64,
        to: i64,
        max: usize,
    ) -> Result<(Vec<EventBatch>, i64)> {
        let revs = self.inner.revs.clone();
        self.inner
            .pool
            .run(move |conn| {
                let evs = read::events(conn, &range, from, to, max)?;
                read::check_not_compacted(&revs, from)?;
                Ok(evs)
            })
            .await?
    }

    /// A CRC-32C over every record up to `revision` (0 = current), for comparing members:
    /// (hash, hash revision, compaction revision).
    pub async fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64)> {
        let revs = self.inner.revs.clone();
        self.inner
            .pool
            .run_bulk(move |conn| {
                let rev = read::resolve_revision(&revs, revision)?;
                let hash = read::hash_records(conn, rev)?;
                Ok((hash, rev, revs.compacted()))
            })
            .await
    }

    /// Size of the database file and the part in use.
    pub async fn db_size(&self) -> Result<DbSize> {
        self.inner.pool.run(read::db_size).await?
    }

    /// Answers a txn whose branches only read, on a reader connection at the current revision.
    pub async fn read_txn(&self, req: PbTxnRequest) -> Result<PbTxnResponse> {
        let revs = self.inner.revs.clone();
        let leases = self.inner.leases.clone();
        self.inner
            .pool
            .run(move |conn| {
                let rev = revs.current();
                let tx = read::ReadTx::begin(conn)?;
                let head = read::latest_revision(&tx)?;
                let mut ctx = txn::TxnCtx::new(&tx, &leases, rev, "", "").with_head(head);
                let resp = ctx.apply(&req, revs.compacted())?;
                Ok(resp)
            })
            .await?
    }

    /// Applies a validated etcd Txn (Put and DeleteRange are one-op txns) through the writer.
    pub async fn txn(&self, req: PbTxnRequest) -> Result<PbTxnResponse> {
        self.call(|reply| writer::Command::Txn { req, reply }).await
    }

    /// Compacts history up to `rev`; with `physical` the call returns after values are cleared.
    pub async fn compact(&self, rev: i64, physical: bool) -> Result<i64> {
        self.call(|reply| writer::Command::Compact {
            rev,
            physical,
            reply,
        })
        .await
    }

    /// Grants a lease; returns the current revision.
    pub async fn lease_grant(&self, id: i64, ttl: i64) -> Result<i64> {
        self.call(|reply| writer::Command::LeaseGrant { id, ttl, reply })
            .await
    }

    /// Revokes a lease, deleting its keys in one revision; returns the revision after.
    pub async fn lease_revoke(&self, id: i64) -> Result<i64> {
        self.call(|reply| writer::Command::LeaseRevoke { id, reply })
            .await
    }

    /// Imports records from data files (startup backfill); returns the latest revision.
    pub async fn import(&self, records: Vec<Record>) -> Result<i64> {
        self.call(|reply| writer::Command::Import { records, reply })
            .await
    }

    /// Runs the commit hook's time-driven work between commit groups.
    pub async fn tick(&self) -> Result<()> {
        self.call(|reply| writer::Command::Tick {
            flush: false,
            reply,
        })
        .await
    }

    /// Makes everything acknowledged durable in the bucket now (quorum mode: the chunk
    /// buffer); a no-op for hooks without a buffer.
    pub async fn flush(&self) -> Result<()> {
        self.call(|reply| writer::Command::Tick { flush: true, reply })
            .await
    }

    /// Replaces the writer's commit hook (role changes).
    pub async fn set_hook(&self, hook: Box<dyn CommitHook>) -> Result<()> {
        self.call(|reply| writer::Command::SetHook { hook, reply })
            .await
    }

    /// Restores the compaction revision and the granted leases recorded in the bucket.
    pub async fn restore(&self, compaction: i64, leases: Vec<(i64, i64)>) -> Result<()> {
        self.call(|reply| writer::Command::Restore {
            compaction,
            leases,
            reply,
        })
        .await
    }

    /// Passes every record with revision in `from..=to`, in order, to `f` with `state` on a
    /// blocking thread, and gives `state` back (it usually owns a data-file writer). Also
    /// returns how many records there are, counted first in the same read transaction.
    pub async fn export<S: Send + 'static>(
        &self,
        from: i64,
        to: i64,
        state: S,
        init: fn(&mut S, i64) -> std::result::Result<(), String>,
        f: fn(&mut S, Record) -> std::result::Result<(), String>,
    ) -> Result<S> {
        self.inner
            .pool
            .run_bulk(move |conn| {
                let mut state = state;
                let tx = read::ReadTx::begin(conn)?;
                let n: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM records WHERE revision >= ?1 AND revision <= ?2",
                    [from, to],
                    |r| r.get(0),
                )?;
                init(&mut state, n).map_err(Error::Export)?;
                read::for_each_record(&tx, from, to, &mut |r| f(&mut state, r))?;
                drop(tx);
                Ok(state)
            })
            .await
    }

    /// (revisions present from `floor` on, revisions expected from `floor` to the latest):
    /// the history is complete when they are equal. Below the compaction revision (`floor`)
    /// only the rows compaction keeps are present, so gaps there are expected.
    pub async fn integrity(&self, floor: i64) -> Result<(i64, i64)> {
        self.inner
            .pool
            .run_bulk(move |conn| read::integrity(conn, floor))
            .await
    }

    /// Starts replacing the local copy with a complete transfer from the Primary: everything
    /// is deleted and the following [`Store::import`]s go into one SQLite transaction, which
    /// [`Store::replace_commit`] commits; until then readers keep seeing the old copy.
    pub async fn replace_begin(&self) -> Result<()> {
        self.call(|reply| writer::Command::ReplaceBegin { reply })
            .await
    }

    /// Commits a replacement started by [`Store::replace_begin`]; returns the latest revision.
    pub async fn replace_commit(&self, compaction: i64) -> Result<i64> {
        self.call(|reply| writer::Command::ReplaceEnd {
            commit: true,
            compaction,
            reply,
        })
        .await
    }

    /// Abandons a replacement, if one is open: the old copy stays as it was.
    pub async fn replace_abort(&self) -> Result<i64> {
        self.call(|reply| writer::Command::ReplaceEnd {
            commit: false,
            compaction: 0,
            reply,
        })
        .await
    }

    /// Every row of the local copy in (revision, sub) order, read in ONE read transaction (a
    /// consistent state even while compaction frees rows), sent to `tx` in batches of `batch`,
    /// each with the (latest revision, compaction revision) of that state, which it returns.
    pub async fn stream_all(
        &self,
        batch: usize,
        tx: mpsc::Sender<(i64, i64, Vec<Record>)>,
    ) -> Result<(i64, i64)> {
        let revs = self.inner.revs.clone();
        self.inner
            .pool
            .run_bulk(move |conn| {
                // Only what is published: the rows above it may still be on their way to the
                // bucket (a pipelined upload) and must not reach a Replica before they land.
                let published = revs.current();
                let rtx = read::ReadTx::begin(conn)?;
                let head = read::latest_revision(&rtx)?.min(published);
                let compaction = read::compaction_revision(&rtx)?;
                let mut buf = Vec::with_capacity(batch);
                read::for_each_record(&rtx, 1, head, &mut |r| {
                    buf.push(r);
                    if buf.len() >= batch {
                        tx.blocking_send((head, compaction, std::mem::take(&mut buf)))
                            .map_err(|_| "receiver gone".to_string())?;
                    }
                    Ok(())
                })?;
                if !buf.is_empty() {
                    tx.blocking_send((head, compaction, buf))
                        .map_err(|_| Error::Shutdown)?;
                }
                Ok((head, compaction))
            })
            .await
    }

    /// Rebuilds the database file to reclaim free pages.
    pub async fn defragment(&self) -> Result<()> {
        self.call(|reply| writer::Command::Defragment { reply })
            .await
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> writer::Command,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let in_flight = InFlight::enter(&self.inner.in_flight);
        if let Err(cmd) = writer::try_inline(&self.inner.core, in_flight.alone, make(tx)) {
            self.inner
                .writer
                .send(cmd)
                .await
                .map_err(|_| Error::Shutdown)?;
        }
        rx.await.map_err(|_| Error::Shutdown)?
    }
}

/// One call to the writer in progress, counted while it lives.
struct InFlight<'a> {
    count: &'a std::sync::atomic::AtomicUsize,
    /// No other call was in progress when this one began.
    alone: bool,
}

impl<'a> InFlight<'a> {
    fn enter(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        let before = count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        InFlight {
            count,
            alone: before == 0,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

#[cfg(test)]
mod inline_tests {
    //! A lone write is applied on the runtime worker that received it; writes that arrive while
    //! it runs still form one group on the writer thread; a hook's blocking wait on the runtime
    //! works from either thread.

    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex, mpsc};
    use std::time::{Duration, Instant};

    use etcd_client::proto::{PbPutRequest, PbTxnOpRequest, PbTxnRequest, PbTxnRequestOp};

    use super::*;
    use crate::watch::{RingLimits, WatchHub};

    /// The thread and the record count of each `persist`.
    type Seen = Arc<Mutex<Vec<(String, usize)>>>;

    struct Hook {
        seen: Seen,
        rt: tokio::runtime::Handle,
        /// The `persist` of the key `first` reports that it began, then waits for the gate.
        gate: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
    }

    impl CommitHook for Hook {
        fn inline(&self) -> bool {
            true
        }

        fn persist(&mut self, records: &[Record]) -> std::result::Result<(), HookError> {
            let name = std::thread::current().name().unwrap_or("").to_string();
            self.seen.lock().unwrap().push((name, records.len()));
            // A wait on the runtime, as the bucket paths do: must not panic on a worker.
            let answer = hook_wait(&self.rt, async { 7 });
            assert_eq!(answer, 7);
            if records.iter().any(|r| r.key == b"first")
                && let Some((began, gate)) = self.gate.take()
            {
                began.send(()).unwrap();
                gate.recv_timeout(Duration::from_secs(10))
                    .expect("the test opens the gate");
            }
            Ok(())
        }
    }

    fn put(key: &str) -> PbTxnRequest {
        PbTxnRequest {
            success: vec![PbTxnRequestOp {
                request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
                    key: key.as_bytes().to_vec(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        }
    }

    fn open(dir: &std::path::Path, hook: Hook) -> Store {
        let opts = StoreOptions {
            data_dir: dir.to_path_buf(),
            node_id: "test".into(),
            readers: 2,
            fatal: Default::default(),
        };
        Store::open(opts, WatchHub::new(RingLimits::default()), Box::new(hook)).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_write_runs_where_it_arrived_and_concurrent_ones_still_group() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Seen::default();
        let (began_tx, began) = mpsc::channel();
        let (open_gate, gate) = mpsc::channel();
        let hook = Hook {
            seen: seen.clone(),
            rt: tokio::runtime::Handle::current(),
            gate: Some((began_tx, gate)),
        };
        let store = open(dir.path(), hook);
        // A write that finds the writer thread holding the lock (starting, answering the write
        // before, or descheduled in its loop on a loaded machine) takes the channel, which is
        // allowed; so some of these, not all, must have run inline.
        const LONE: usize = 20;
        for i in 0..LONE {
            store.txn(put(&format!("lone{i}"))).await.unwrap();
        }
        {
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), LONE);
            assert!(seen.iter().all(|(_, n)| *n == 1));
            assert!(
                seen.iter().any(|(thread, _)| thread != "netsy-writer"),
                "every lone write went through the writer thread: {seen:?}"
            );
        }

        // Writes that arrive while one is applied join the writer thread's queue.
        let before = store.current_revision();
        let first = tokio::spawn({
            let s = store.clone();
            async move { s.txn(put("first")).await }
        });
        tokio::task::spawn_blocking(move || began.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap()
            .expect("the first write reaches the hook");
        let others: Vec<_> = (0..4)
            .map(|i| {
                let s = store.clone();
                tokio::spawn(async move { s.txn(put(&format!("other{i}"))).await })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.inner.in_flight.load(Ordering::Acquire) < 5 {
            assert!(Instant::now() < deadline, "the other writes never started");
            tokio::task::yield_now().await;
        }
        open_gate.send(()).unwrap();
        first.await.unwrap().unwrap();
        for o in others {
            o.await.unwrap().unwrap();
        }
        let seen = seen.lock().unwrap();
        let later = &seen[LONE..];
        // `first` (inline, or on the writer thread if it found the lock held) alone, then the
        // four that queued while it was held, on the writer thread.
        assert_eq!(later[0].1, 1, "{later:?}");
        let by_writer: usize = later[1..]
            .iter()
            .map(|(thread, n)| {
                assert_eq!(
                    thread, "netsy-writer",
                    "a queued write ran inline: {later:?}"
                );
                *n
            })
            .sum();
        assert_eq!(by_writer, 4);
        assert!(
            later.len() < 5,
            "the four queued writes were not grouped at all: {later:?}"
        );
        assert_eq!(store.current_revision(), before + 5);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_single_threaded_runtime_hands_every_write_to_the_writer_thread() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Seen::default();
        let hook = Hook {
            seen: seen.clone(),
            rt: tokio::runtime::Handle::current(),
            gate: None,
        };
        let store = open(dir.path(), hook);
        store.txn(put("k")).await.unwrap();
        assert_eq!(seen.lock().unwrap()[0].0, "netsy-writer");
    }
}

#[cfg(test)]
mod pipeline_tests {
    //! A pipelined hook: groups are applied while earlier uploads are in flight, published and
    //! answered in revision order once theirs and every earlier one landed; a failed upload
    //! stops the writer; a restart discards what was committed but never known to have landed.

    use std::sync::mpsc;
    use std::time::Duration;

    use etcd_client::proto::{
        PbCompare, PbPutRequest, PbRangeRequest, PbTargetUnion, PbTxnOpRequest, PbTxnRequest,
        PbTxnRequestOp,
    };
    use tokio::sync::Notify;

    use super::*;
    use crate::watch::{RingLimits, WatchHub};

    /// One started upload: its revisions and the means to land it.
    struct Started {
        revisions: Vec<i64>,
        land: oneshot::Sender<std::result::Result<(), HookError>>,
        landed: Arc<Notify>,
    }

    impl Started {
        fn land(self, outcome: std::result::Result<(), HookError>) {
            self.land.send(outcome).unwrap();
            self.landed.notify_one();
        }
    }

    struct Hook {
        started: mpsc::Sender<Started>,
    }

    impl CommitHook for Hook {
        fn persist(&mut self, _records: &[Record]) -> std::result::Result<(), HookError> {
            unreachable!("a pipelined hook's plain groups go through start")
        }

        fn pipelined(&self) -> bool {
            true
        }

        fn start(
            &mut self,
            records: &[Record],
            landed: Arc<Notify>,
        ) -> std::result::Result<Landing, HookError> {
            let (land, rx) = oneshot::channel();
            self.started
                .send(Started {
                    revisions: records.iter().map(|r| r.revision).collect(),
                    land,
                    landed,
                })
                .unwrap();
            Ok(rx)
        }
    }

    fn open(
        dir: &std::path::Path,
        fatal: crate::fatal::FatalChannel,
    ) -> (Store, mpsc::Receiver<Started>) {
        let (tx, rx) = mpsc::channel();
        let opts = StoreOptions {
            data_dir: dir.to_path_buf(),
            node_id: "test".into(),
            readers: 2,
            fatal,
        };
        let store = Store::open(
            opts,
            WatchHub::new(RingLimits::default()),
            Box::new(Hook { started: tx }),
        )
        .unwrap();
        (store, rx)
    }

    fn put(key: &str, value: &str) -> PbTxnRequest {
        PbTxnRequest {
            success: vec![PbTxnRequestOp {
                request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        }
    }

    /// Puts `key` only if it does not exist (Kubernetes' create).
    fn create(key: &str) -> PbTxnRequest {
        PbTxnRequest {
            compare: vec![PbCompare {
                result: 0, // EQUAL
                target: 2, // MOD
                key: key.as_bytes().to_vec(),
                target_union: Some(PbTargetUnion::ModRevision(0)),
                ..Default::default()
            }],
            ..put(key, "created")
        }
    }

    async fn value(store: &Store, key: &str) -> Option<Vec<u8>> {
        let resp = store
            .range(PbRangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
        resp.kvs.first().map(|kv| kv.value.clone())
    }

    fn next(started: &mpsc::Receiver<Started>) -> Started {
        started
            .recv_timeout(Duration::from_secs(10))
            .expect("an upload starts")
    }

    async fn answer<T>(h: tokio::task::JoinHandle<T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .expect("answered")
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn groups_overlap_and_are_answered_in_revision_order() {
        let dir = tempfile::tempdir().unwrap();
        let (store, started) = open(dir.path(), Default::default());
        let base = store.current_revision();
        // Each group is applied on top of the one before while that one is still uploading.
        let mut calls = Vec::new();
        let mut uploads = Vec::new();
        for i in 0..MAX_UPLOADS_IN_FLIGHT {
            let s = store.clone();
            let key = format!("k{i}");
            calls.push(tokio::spawn(async move { s.txn(put(&key, "v")).await }));
            let up = next(&started);
            assert_eq!(up.revisions, [base + 1 + i as i64]);
            uploads.push(up);
        }
        // The last lands first: nothing is published, nobody is answered, and reads stay at
        // the published revision (the rows above it are committed locally, not visible).
        uploads.pop().unwrap().land(Ok(()));
        let s = store.clone();
        let extra = tokio::spawn(async move { s.txn(put("extra", "v")).await });
        // Every slot is taken (the landed upload's group is not published yet): the next
        // group waits, so its upload has not started.
        assert!(
            started.recv_timeout(Duration::from_millis(100)).is_err(),
            "an upload started with every slot taken"
        );
        assert_eq!(store.current_revision(), base);
        assert_eq!(value(&store, "k0").await, None);
        assert!(calls.iter().all(|c| !c.is_finished()));

        for up in uploads {
            up.land(Ok(()));
        }
        for (i, call) in calls.into_iter().enumerate() {
            let resp = answer(call).await.unwrap();
            assert_eq!(resp.header.unwrap().revision, base + 1 + i as i64);
        }
        let last = next(&started);
        let n = MAX_UPLOADS_IN_FLIGHT as i64;
        assert_eq!(last.revisions, [base + n + 1]);
        assert_eq!(store.current_revision(), base + n);
        assert_eq!(value(&store, "k0").await.as_deref(), Some(&b"v"[..]));
        last.land(Ok(()));
        assert_eq!(
            answer(extra).await.unwrap().header.unwrap().revision,
            base + n + 1
        );
        assert_eq!(store.current_revision(), base + n + 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_that_reflects_an_unlanded_write_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, started) = open(dir.path(), Default::default());
        let base = store.current_revision();
        let s = store.clone();
        let a = tokio::spawn(async move { s.txn(create("a")).await });
        let first = next(&started);
        // Compares against the write in flight: it fails, writes nothing, and says so only once
        // that write is in the bucket.
        let s = store.clone();
        let again = tokio::spawn(async move { s.txn(create("a")).await });
        let s = store.clone();
        let b = tokio::spawn(async move { s.txn(put("b", "2")).await });
        let second = next(&started);
        assert!(
            !again.is_finished(),
            "answered before the write it saw landed"
        );
        first.land(Ok(()));
        second.land(Ok(()));
        assert!(answer(a).await.unwrap().succeeded);
        let r = answer(again).await.unwrap();
        assert!(!r.succeeded);
        assert!(r.header.unwrap().revision > base);
        answer(b).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_upload_stops_the_writer_and_a_restart_discards_what_did_not_land() {
        let dir = tempfile::tempdir().unwrap();
        let fatal = crate::fatal::FatalChannel::new();
        let (store, started) = open(dir.path(), fatal.clone());
        let landed = {
            let s = store.clone();
            let h = tokio::spawn(async move {
                s.txn(put("kept", "old")).await.unwrap();
                s.txn(put("gone", "x")).await.unwrap();
            });
            next(&started).land(Ok(()));
            next(&started).land(Ok(()));
            answer(h).await;
            store.current_revision()
        };
        // Everything landed: a later restart keeps it (checked below).
        let s = store.clone();
        let a = tokio::spawn(async move { s.txn(put("kept", "new")).await });
        let first = next(&started);
        let s = store.clone();
        let b = tokio::spawn(async move {
            s.txn(PbTxnRequest {
                success: vec![PbTxnRequestOp {
                    request: Some(PbTxnOpRequest::RequestDeleteRange(
                        etcd_client::proto::PbDeleteRequest {
                            key: b"gone".to_vec(),
                            ..Default::default()
                        },
                    )),
                }],
                ..Default::default()
            })
            .await
        });
        let second = next(&started);
        second.land(Ok(()));
        first.land(Err(HookError::Indeterminate("the bucket is gone".into())));
        assert!(matches!(answer(a).await, Err(Error::Indeterminate(_))));
        assert!(matches!(answer(b).await, Err(Error::Indeterminate(_))));
        assert!(fatal.get().is_some(), "the failure is recorded as fatal");
        assert_eq!(store.current_revision(), landed);
        assert!(
            store.txn(put("after", "1")).await.is_err(),
            "the writer stopped"
        );
        store.close().await;

        let (store, _started) = open(dir.path(), Default::default());
        assert_eq!(
            store.current_revision(),
            landed,
            "the unlanded revisions are gone"
        );
        assert_eq!(value(&store, "kept").await.as_deref(), Some(&b"old"[..]));
        assert_eq!(value(&store, "gone").await.as_deref(), Some(&b"x"[..]));
        let count = store
            .range(PbRangeRequest {
                key: b"a".to_vec(),
                range_end: b"z".to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .count;
        assert_eq!(count, 2);
        store.close().await;
    }
}
