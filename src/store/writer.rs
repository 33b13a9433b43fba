//! The single writer. Requests arrive on a bounded channel; everything waiting is applied
//! in ONE SQLite transaction (group commit), each request under its own savepoint, then the
//! commit hook makes the new records durable where the design promises (object storage, from
//! the object-storage issue on), then SQLite commits, and only then are revisions published,
//! watchers woken and callers answered. A failed hook or commit rolls everything back.
//! A write that is the only one in flight is applied by the thread that received it instead,
//! under the same lock ([`try_inline`]).

use std::collections::VecDeque;
use std::sync::Arc;

use etcd_client::proto::{PbTxnRequest, PbTxnResponse};
use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};

use super::txn::{LeaseChange, Record, TxnCtx};
use super::{Error, LeaseTable, Result, Revisions, schema};
use crate::fatal::{Fatal, FatalChannel};
use crate::watch::{EventBatch, WatchHub};

/// Why the commit hook could not make a change durable.
#[derive(Debug, Clone)]
pub enum HookError {
    /// Definitely not stored: the change is rolled back and callers get an error.
    Rejected(String),
    /// Maybe stored, and it cannot be told which. Continuing could reuse a revision that
    /// already exists elsewhere, so the writer stops and records a fatal error (the node
    /// exits; startup backfill resolves it).
    Indeterminate(String),
}

/// Makes changes durable where the design promises before SQLite commits. Runs on the writer
/// thread (it may block), or on a runtime worker while [`CommitHook::inline`] says so.
pub trait CommitHook: Send + 'static {
    /// The next group's `persist` is expected to take no longer than a local fdatasync (it
    /// waits on no network), so a lone request may run it on the runtime worker that received
    /// it ([`try_inline`]). Whatever it does wait on, it must then wait through
    /// [`hook_wait`] or [`hook_block`] (the worker hands its other tasks to the runtime first).
    fn inline(&self) -> bool {
        false
    }
    /// New records of one commit group, in (revision, sub) order.
    fn persist(&mut self, records: &[Record]) -> std::result::Result<(), HookError>;
    /// A lease is about to be granted.
    fn lease_granted(&mut self, _id: i64, _ttl: i64) -> std::result::Result<(), HookError> {
        Ok(())
    }
    /// A lease was revoked (its keys' deletions are already durable). Failures are only logged:
    /// a leftover lease record expires again after a rebuild.
    fn lease_revoked(&mut self, _id: i64) {}
    /// The compaction revision is about to move to `rev`.
    fn compacted(&mut self, _rev: i64) -> std::result::Result<(), HookError> {
        Ok(())
    }
    /// The records of a group have committed locally (replication feed). Runs before callers
    /// are answered.
    fn published(&mut self, _records: &[Record], _revision: i64) {}
    /// The compaction revision moved to `rev` locally.
    fn compaction_published(&mut self, _rev: i64) {}
    /// Called now and then (`Store::tick`) between groups: time-driven work such as flushing
    /// records acknowledged but not yet in the bucket; with `flush`, everything acknowledged
    /// goes to the bucket now (`Store::flush`). An indeterminate error stops the writer.
    fn tick(&mut self, _flush: bool) -> std::result::Result<(), HookError> {
        Ok(())
    }
}

/// Runs `fut` on `rt` from the synchronous code of a commit hook and waits for it. On the
/// writer thread that is `block_on`; on a runtime worker applying a lone request itself
/// (`CommitHook::inline`), the worker first hands its other tasks to the runtime.
pub fn hook_wait<F: std::future::Future>(rt: &tokio::runtime::Handle, fut: F) -> F::Output {
    hook_block(|| rt.block_on(fut))
}

/// Runs `f`, which blocks, from a commit hook (see [`hook_wait`]).
pub fn hook_block<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The local-only hook, for tests of the store alone: nothing is made durable elsewhere, and
/// SQLite does not fsync commits (`synchronous = NORMAL`), so a power cut may lose the last ones.
pub struct NoopCommitHook;

impl CommitHook for NoopCommitHook {
    fn persist(&mut self, _records: &[Record]) -> std::result::Result<(), HookError> {
        Ok(())
    }
}

/// Runs a parameterless statement through the statement cache (savepoints run once per
/// request: parsing them each time costs more than the request's own statements).
fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

pub(super) enum Command {
    Txn {
        req: PbTxnRequest,
        reply: oneshot::Sender<Result<PbTxnResponse>>,
    },
    Compact {
        rev: i64,
        physical: bool,
        reply: oneshot::Sender<Result<i64>>,
    },
    LeaseGrant {
        id: i64,
        ttl: i64,
        reply: oneshot::Sender<Result<i64>>,
    },
    LeaseRevoke {
        id: i64,
        reply: oneshot::Sender<Result<i64>>,
    },
    Defragment {
        reply: oneshot::Sender<Result<()>>,
    },
    /// Records from data files (backfill): inserted verbatim, idempotently.
    Import {
        records: Vec<Record>,
        reply: oneshot::Sender<Result<i64>>,
    },
    /// Runs the hook's time-driven work (`CommitHook::tick`).
    Tick {
        flush: bool,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Replaces the commit hook (a Replica promoted to Primary, or back).
    SetHook {
        hook: Box<dyn CommitHook>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Opens a replacement transaction (see `Store::replace_begin`).
    ReplaceBegin {
        reply: oneshot::Sender<Result<()>>,
    },
    /// Commits or rolls back the replacement transaction.
    ReplaceEnd {
        commit: bool,
        compaction: i64,
        reply: oneshot::Sender<Result<i64>>,
    },
    /// State restored from the bucket: the compaction revision and granted leases.
    Restore {
        compaction: i64,
        leases: Vec<(i64, i64)>,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// Rows changed (`sqlite3_total_changes`: about two per written record) between two requests
/// to the checkpointer — roughly SQLite's own automatic interval of a thousand pages.
const CHECKPOINT_EVERY: u64 = 2000;

/// A checkpoint pass that left frames behind is tried again once no request came for this
/// long: the writer went quiet (see [`Checkpointer`]).
const CHECKPOINT_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Copies the WAL back into the database file on its own thread and connection, so that the
/// writer does not copy pages inside a commit. Asked by the writer after every
/// [`CHECKPOINT_EVERY`] changed rows and when a compaction has freed its last rows; a request
/// that finds one running is merged into it. Under a steady load, frames keep arriving while
/// it runs, so it never completes on its own: after each pass it raises `backfilled`, and the
/// writer finishes with a checkpoint of the few frames written since, between two groups —
/// which lets the next commit start the WAL over instead of growing it. When the writer goes
/// quiet right after a pass, nothing would finish it, and every read would look its pages up
/// in the WAL's index (a compaction's WAL holds hundreds of thousands of frames: a 500-key
/// page cost twice the CPU): a pass that left frames behind runs again after
/// [`CHECKPOINT_IDLE`] without a request, until the WAL is all in the database file and
/// readers skip it. Ends when the writer does.
pub(super) struct Checkpointer {
    ask: Option<std::sync::mpsc::SyncSender<()>>,
    backfilled: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Checkpointer {
    /// Stops the thread and waits for it: its connection must be closed before the writer's
    /// (a rebuild deletes the files right after).
    fn drop(&mut self) {
        self.ask.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A PASSIVE checkpoint (copies what no reader still needs, never waits for the writer):
/// whether every frame of the WAL is now in the database file; `None`, logged, if it failed.
fn checkpoint(conn: &Connection) -> Option<bool> {
    // (busy, frames in the WAL, frames copied back): -1s when the database is not in WAL mode.
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    }) {
        Ok((frames, copied)) => Some(copied >= frames),
        Err(e) => {
            tracing::warn!(error = %e, "WAL checkpoint failed; retried later");
            None
        }
    }
}

pub(super) fn spawn_checkpointer(path: &std::path::Path) -> Result<Checkpointer> {
    use std::sync::atomic::Ordering;
    let conn = schema::open_write(path)?;
    let (ask, asked) = std::sync::mpsc::sync_channel::<()>(1);
    let backfilled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = backfilled.clone();
    let thread = std::thread::Builder::new()
        .name("netsy-checkpoint".into())
        .spawn(move || {
            use std::sync::mpsc::RecvTimeoutError;
            let mut behind = false;
            loop {
                let next = if behind {
                    asked.recv_timeout(CHECKPOINT_IDLE)
                } else {
                    asked.recv().map_err(|_| RecvTimeoutError::Disconnected)
                };
                if let Err(RecvTimeoutError::Disconnected) = next {
                    return;
                }
                let complete = checkpoint(&conn);
                // A failed pass (logged) is retried on the next request, not every second.
                behind = complete == Some(false);
                if complete.is_some() {
                    done.store(true, Ordering::Release);
                }
            }
        })
        .map_err(|e| Error::Unavailable(format!("cannot start checkpoint thread: {e}")))?;
    Ok(Checkpointer {
        ask: Some(ask),
        backfilled,
        thread: Some(thread),
    })
}

/// Largest number of requests applied in one SQLite transaction.
const MAX_GROUP: usize = 512;
/// Revisions one compaction step frees per SQLite transaction.
const COMPACTION_WINDOW: i64 = 2000;
/// Under a steady load, a compaction step runs at most this often between write groups.
const COMPACTION_PACE: std::time::Duration = std::time::Duration::from_millis(20);

pub(super) struct Writer {
    conn: Connection,
    revs: Arc<Revisions>,
    hub: WatchHub,
    leases: Arc<LeaseTable>,
    node_id: String,
    hook: Box<dyn CommitHook>,
    compaction: Option<CompactionJob>,
    last_step: std::time::Instant,
    /// A replacement transaction is open: imports go into it, nothing is published.
    replacing: bool,
    /// The checkpointer, when the WAL is checkpointed off this thread.
    checkpointer: Option<Checkpointer>,
    /// `total_changes` when the checkpointer was last asked.
    changes_at_checkpoint: u64,
    /// Where an indeterminate write is reported (see [`HookError::Indeterminate`]).
    fatal: FatalChannel,
    /// An indeterminate write happened: this writer answers nothing more.
    stopped: bool,
    /// Requests in the last write group (see [`try_inline`]).
    last_group: usize,
}

struct CompactionJob {
    target: i64,
    next: i64,
    waiters: Vec<oneshot::Sender<Result<i64>>>,
}

/// How far compaction has freed the history (`meta.freed_through`).
fn freed_through(conn: &Connection) -> Result<i64> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row(
            "SELECT value FROM meta WHERE name = 'freed_through'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

/// A reply to send once the group commits.
enum Pending {
    Txn(
        oneshot::Sender<Result<PbTxnResponse>>,
        Result<PbTxnResponse>,
    ),
    Rev(oneshot::Sender<Result<i64>>, Result<i64>),
}

/// The writer, shared by its thread and the callers that apply their request themselves
/// ([`try_inline`]); `None` once the thread has ended (the connection is closed).
pub(super) type Shared = Arc<std::sync::Mutex<Option<Writer>>>;

/// Starts the writer thread, which applies what arrives on `rx`.
pub(super) fn spawn(
    writer: Writer,
    rx: mpsc::Receiver<Command>,
) -> Result<(Shared, std::thread::JoinHandle<()>)> {
    let shared: Shared = Arc::new(std::sync::Mutex::new(Some(writer)));
    let ours = shared.clone();
    let thread = std::thread::Builder::new()
        .name("netsy-writer".into())
        .spawn(move || {
            run(&ours, rx);
            // Closes the connection (also after a caller panicked holding the lock); a caller
            // holding it now finishes first.
            *ours.lock().unwrap_or_else(|e| e.into_inner()) = None;
        })
        .map_err(|e| Error::Unavailable(format!("cannot start writer thread: {e}")))?;
    Ok((shared, thread))
}

/// Applies `cmd` on the calling thread when it is the only write in flight (`alone`) and the
/// last group was a single request: a lone client's request and its answer then cost no
/// hand-off between threads (two wake-ups, 40-50 µs on this kind of VM, a sixth of such a
/// write). Gives `cmd` back when other writes are in flight or just were (they form groups on
/// the writer thread: applying them where they arrive made smaller groups and cost 10-25 % at
/// 16 and 100 clients), when the writer is busy, when the hook may wait on the network
/// (`CommitHook::inline`), and when the caller's runtime has no other thread to go on serving
/// while this one waits for the disk.
pub(super) fn try_inline(
    shared: &Shared,
    alone: bool,
    cmd: Command,
) -> std::result::Result<(), Command> {
    if !alone || !matches!(cmd, Command::Txn { .. }) {
        return Err(cmd);
    }
    match tokio::runtime::Handle::try_current() {
        Ok(h)
            if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
                && h.metrics().num_workers() >= 2 => {}
        _ => return Err(cmd),
    }
    let Ok(mut guard) = shared.try_lock() else {
        return Err(cmd);
    };
    let Some(writer) = guard.as_mut() else {
        return Err(cmd);
    };
    // After a group of several, the others' next requests are on their way: this one
    // would take the lock for its own fdatasync just before they arrive, and they would pay
    // a second one behind it (two groups where there was one).
    if writer.stopped || writer.last_group > 1 || !writer.hook.inline() {
        return Err(cmd);
    }
    writer.process(VecDeque::from([cmd]));
    writer.maybe_checkpoint();
    Ok(())
}

/// The writer thread: waits for requests, takes everything queued as one group.
fn run(shared: &Shared, mut rx: mpsc::Receiver<Command>) {
    let lock = || shared.lock().ok();
    match lock() {
        Some(mut g) => match g.as_mut() {
            Some(w) => w.resume_compaction(),
            None => return,
        },
        None => return,
    }
    loop {
        let busy = match lock() {
            Some(g) => match g.as_ref() {
                Some(w) if !w.stopped => w.compaction.is_some(),
                _ => return,
            },
            None => return,
        };
        let first = if busy {
            match rx.try_recv() {
                Ok(cmd) => Some(cmd),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        } else {
            match rx.blocking_recv() {
                Some(cmd) => Some(cmd),
                None => return,
            }
        };
        // A poisoned lock: a caller panicked while applying its request; nothing more is
        // applied (callers get `Error::Shutdown`).
        let Some(mut guard) = lock() else { return };
        let Some(writer) = guard.as_mut() else { return };
        if writer.stopped {
            // Requests still queued are dropped: their callers get `Error::Shutdown`.
            return;
        }
        let Some(first) = first else {
            writer.compaction_step();
            writer.maybe_checkpoint();
            continue;
        };
        let mut queue = VecDeque::from([first]);
        while queue.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(cmd) => queue.push_back(cmd),
                Err(_) => break,
            }
        }
        writer.process(queue);
        if writer.stopped {
            return;
        }
        writer.maybe_checkpoint();
        // Under a steady load the queue is never empty: free history between groups, at
        // a pace that keeps the added write latency to one small step now and then.
        if writer.compaction.is_some() && writer.last_step.elapsed() >= COMPACTION_PACE {
            writer.compaction_step();
        }
    }
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        revs: Arc<Revisions>,
        hub: WatchHub,
        leases: Arc<LeaseTable>,
        node_id: String,
        hook: Box<dyn CommitHook>,
    ) -> Writer {
        Writer {
            conn,
            revs,
            hub,
            leases,
            node_id,
            hook,
            compaction: None,
            last_step: std::time::Instant::now(),
            replacing: false,
            checkpointer: None,
            changes_at_checkpoint: 0,
            fatal: FatalChannel::new(),
            stopped: false,
            last_group: 0,
        }
    }

    /// Reports indeterminate writes to `fatal` (the node's channel to `main`).
    pub(super) fn with_fatal(mut self, fatal: FatalChannel) -> Writer {
        self.fatal = fatal;
        self
    }

    /// After a write whose outcome is unknown: records the fatal error, answers the group's
    /// callers that the outcome is unknown, and stops the writer (every later request fails;
    /// startup backfill resolves the write).
    fn stop_indeterminate(&mut self, what: &str, reason: &str, replies: Vec<Pending>) {
        self.fatal.record(Fatal::Indeterminate {
            what: what.to_string(),
            reason: reason.to_string(),
        });
        self.stopped = true;
        for p in replies {
            send_pending(fail_if_ok(p, Error::Indeterminate(reason.to_string())));
        }
    }

    /// Hands WAL checkpoints to `checkpointer` (see [`spawn_checkpointer`]) and turns off
    /// SQLite's automatic ones on the write connection.
    pub(super) fn with_checkpointer(mut self, checkpointer: Checkpointer) -> Result<Writer> {
        self.conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        self.checkpointer = Some(checkpointer);
        Ok(self)
    }

    /// Asks for a checkpoint once [`CHECKPOINT_EVERY`] rows changed since the last request
    /// (writes, imports, compaction: everything this connection commits).
    fn maybe_checkpoint(&mut self) {
        let Some(ckpt) = &self.checkpointer else {
            return;
        };
        if ckpt
            .backfilled
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            // The rest since the background pass: a few pages.
            checkpoint(&self.conn);
        }
        let total = self.conn.total_changes();
        if total.saturating_sub(self.changes_at_checkpoint) >= CHECKPOINT_EVERY {
            self.ask_checkpoint();
        }
    }

    /// Asks the checkpointer for a pass now (merged into a running one).
    fn ask_checkpoint(&mut self) {
        let Some(ckpt) = &self.checkpointer else {
            return;
        };
        self.changes_at_checkpoint = self.conn.total_changes();
        if let Some(ask) = &ckpt.ask {
            // Full: one is running and will copy these pages too.
            let _ = ask.try_send(());
        }
    }

    /// Resumes freeing history after a restart or a restored compaction revision.
    fn resume_compaction(&mut self) {
        let target = self.revs.compacted();
        let freed = match freed_through(&self.conn) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "cannot read how far compaction freed the history");
                return;
            }
        };
        if target > freed {
            let job = self.compaction.get_or_insert(CompactionJob {
                target,
                next: freed.max(2),
                waiters: Vec::new(),
            });
            if target > job.target {
                job.next = job.next.min(job.target);
                job.target = target;
            }
        }
    }

    fn process(&mut self, mut queue: VecDeque<Command>) {
        let mut group = Vec::new();
        while let Some(cmd) = queue.pop_front() {
            if self.stopped {
                return;
            }
            match cmd {
                Command::Txn { .. } => group.push(cmd),
                // Lease grants and revokes change what later requests may reference: each
                // commits alone, after the requests before it.
                Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } => {
                    self.commit_group(std::mem::take(&mut group));
                    self.commit_group(vec![cmd]);
                }
                Command::Compact {
                    rev,
                    physical,
                    reply,
                } => {
                    self.commit_group(std::mem::take(&mut group));
                    self.compact(rev, physical, reply);
                }
                Command::Import { records, reply } => {
                    self.commit_group(std::mem::take(&mut group));
                    let _ = reply.send(self.import(records));
                }
                Command::Restore {
                    compaction,
                    leases,
                    reply,
                } => {
                    self.commit_group(std::mem::take(&mut group));
                    let _ = reply.send(self.restore(compaction, leases));
                }
                Command::ReplaceBegin { reply } => {
                    self.commit_group(std::mem::take(&mut group));
                    let _ = reply.send(self.replace_begin());
                }
                Command::ReplaceEnd {
                    commit,
                    compaction,
                    reply,
                } => {
                    self.commit_group(std::mem::take(&mut group));
                    let _ = reply.send(self.replace_end(commit, compaction));
                }
                Command::Tick { flush, reply } => {
                    self.commit_group(std::mem::take(&mut group));
                    let res = match self.hook.tick(flush) {
                        Ok(()) => Ok(()),
                        Err(HookError::Rejected(e)) => Err(Error::Commit(e)),
                        Err(HookError::Indeterminate(e)) => {
                            self.stop_indeterminate("a timed flush", &e, Vec::new());
                            Err(Error::Indeterminate(e))
                        }
                    };
                    let _ = reply.send(res);
                }
                Command::SetHook { hook, reply } => {
                    self.commit_group(std::mem::take(&mut group));
                    self.hook = hook;
                    let _ = reply.send(Ok(()));
                }
                Command::Defragment { reply } => {
                    self.commit_group(std::mem::take(&mut group));
                    let res = self
                        .conn
                        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")
                        .map_err(Error::from);
                    let _ = reply.send(res);
                }
            }
        }
        self.commit_group(group);
    }

    /// Applies a group of mutating commands in one SQLite transaction.
    fn commit_group(&mut self, group: Vec<Command>) {
        if group.is_empty() {
            return;
        }
        self.last_group = group.len();
        let start_rev = self.revs.current();
        let mut rev = start_rev;
        let mut replies = Vec::with_capacity(group.len());
        let mut records: Vec<Record> = Vec::new();
        let mut batches: Vec<EventBatch> = Vec::new();
        let mut lease_changes: Vec<LeaseChange> = Vec::new();
        let mut granted: Vec<(i64, i64)> = Vec::new();
        let mut revoked: Vec<i64> = Vec::new();
        let now = schema::now_rfc3339();
        let compacted = self.revs.compacted();

        let tx = match self.conn.unchecked_transaction() {
            Ok(tx) => tx,
            Err(e) => {
                fail_all(group, &format!("begin: {e}"));
                return;
            }
        };
        for cmd in group {
            if let Err(e) = exec_cached(&tx, "SAVEPOINT op") {
                reply_err(cmd, Error::from(e));
                continue;
            }
            let mut ctx = TxnCtx::new(&tx, &self.leases, rev, &now, &self.node_id);
            let outcome: (Result<()>, Pending) = match cmd {
                Command::Txn { req, reply } => match ctx.apply(&req, compacted) {
                    Ok(resp) => (Ok(()), Pending::Txn(reply, Ok(resp))),
                    Err(e) => (Err(e), Pending::Txn(reply, Err(Error::Shutdown))),
                },
                Command::LeaseGrant { id, ttl, reply } => {
                    let res = if self.leases.exists(id) || granted.iter().any(|(g, _)| *g == id) {
                        Err(Error::LeaseExists)
                    } else {
                        tx.execute(
                            "INSERT INTO leases (id, ttl, granted_at) VALUES (?1, ?2, ?3)",
                            params![id, ttl, now],
                        )
                        .map(|_| ())
                        .map_err(Error::from)
                    };
                    match res {
                        Ok(()) => {
                            granted.push((id, ttl));
                            (Ok(()), Pending::Rev(reply, Ok(rev)))
                        }
                        Err(e) => (Err(e), Pending::Rev(reply, Err(Error::Shutdown))),
                    }
                }
                Command::LeaseRevoke { id, reply } => {
                    let res = match self.leases.get(id) {
                        None => Err(Error::LeaseNotFound),
                        Some(_) if revoked.contains(&id) => Err(Error::LeaseNotFound),
                        Some(info) => (|| {
                            for key in &info.keys {
                                ctx.delete_range(key, &[], false)?;
                            }
                            tx.execute("DELETE FROM leases WHERE id = ?1", [id])?;
                            Ok(())
                        })(),
                    };
                    match res {
                        Ok(()) => {
                            revoked.push(id);
                            (Ok(()), Pending::Rev(reply, Ok(ctx.final_rev())))
                        }
                        Err(e) => (Err(e), Pending::Rev(reply, Err(Error::Shutdown))),
                    }
                }
                other => {
                    let _ = exec_cached(&tx, "RELEASE op");
                    reply_err(
                        other,
                        Error::Internal("command routed to a write group".into()),
                    );
                    continue;
                }
            };
            match outcome {
                (Ok(()), pending) => {
                    if let Err(e) = exec_cached(&tx, "RELEASE op") {
                        replies.push(fail_pending(pending, Error::from(e)));
                        continue;
                    }
                    if ctx.changed() {
                        rev += 1;
                        batches.push(EventBatch {
                            revision: rev,
                            events: std::mem::take(&mut ctx.events),
                        });
                    }
                    records.append(&mut ctx.records);
                    lease_changes.append(&mut ctx.lease_changes);
                    replies.push(pending);
                }
                (Err(e), pending) => {
                    let _ = exec_cached(&tx, "ROLLBACK TO op")
                        .and_then(|()| exec_cached(&tx, "RELEASE op"));
                    replies.push(fail_pending(pending, e));
                }
            }
        }

        let mut hook_result = Ok(());
        for (id, ttl) in &granted {
            if hook_result.is_ok() {
                hook_result = self.hook.lease_granted(*id, *ttl);
            }
        }
        if hook_result.is_ok() && !records.is_empty() {
            hook_result = self.hook.persist(&records);
        }
        match hook_result {
            Ok(()) => {}
            Err(HookError::Rejected(e)) => {
                drop(tx);
                tracing::error!(error = %e, revisions = rev - start_rev, "write_failed: not made durable; rolled back");
                for p in replies {
                    send_pending(fail_if_ok(p, Error::Commit(e.clone())));
                }
                return;
            }
            Err(HookError::Indeterminate(e)) => {
                drop(tx);
                self.stop_indeterminate("write", &e, replies);
                return;
            }
        }
        if let Err(e) = tx.commit() {
            if records.is_empty() && granted.is_empty() {
                tracing::error!(error = %e, "write_failed: sqlite commit failed");
                for p in replies {
                    send_pending(fail_if_ok(p, Error::Commit(e.to_string())));
                }
                return;
            }
            // The records are durable elsewhere but not here: only a restart (backfill) can
            // make the local copy whole again.
            self.stop_indeterminate(
                "local commit after a durable write",
                &e.to_string(),
                replies,
            );
            return;
        }
        for (id, ttl) in granted {
            self.leases.insert(id, ttl);
        }
        for change in lease_changes {
            match change {
                LeaseChange::Attach(id, key) => self.leases.attach(id, &key),
                LeaseChange::Detach(id, key) => self.leases.detach(id, &key),
            }
        }
        for id in revoked {
            self.leases.remove(id);
            self.hook.lease_revoked(id);
        }
        self.hub.append(batches);
        self.revs.set_current(rev);
        self.hub.notify(rev);
        if !records.is_empty() {
            self.hook.published(&records, rev);
        }
        for p in replies {
            send_pending(p);
        }
    }

    fn import(&mut self, records: Vec<Record>) -> Result<i64> {
        let now = schema::now_rfc3339();
        if self.replacing {
            // Inside the replacement transaction: published when it commits.
            let mut max = 0;
            for r in &records {
                super::txn::import_record(&self.conn, r, &now)?;
                max = max.max(r.revision);
            }
            return Ok(max);
        }
        let tx = self.conn.unchecked_transaction()?;
        let mut max = self.revs.current();
        // Keys moving between leases, so that revoking a lease deletes the keys imported onto
        // it (records adopted by a new Primary, or followed by a Replica that is promoted).
        let mut moved: Vec<(Vec<u8>, i64, i64)> = Vec::new();
        let track = !self.leases.is_empty();
        for r in &records {
            let before = if track || r.lease != 0 {
                super::txn::current_lease(&tx, &r.key)?
            } else {
                0
            };
            if super::txn::import_record(&tx, r, &now)? && (track || r.lease != 0) {
                let after = super::txn::current_lease(&tx, &r.key)?;
                if after != before {
                    moved.push((r.key.clone(), before, after));
                }
            }
            max = max.max(r.revision);
        }
        tx.commit()?;
        for (key, before, after) in moved {
            if before != 0 {
                self.leases.detach(before, &key);
            }
            if after != 0 {
                self.leases.attach(after, &key);
            }
        }
        self.revs.set_current(max);
        self.hub.reset(max);
        Ok(max)
    }

    fn replace_begin(&mut self) -> Result<()> {
        if self.replacing {
            self.conn.execute_batch("ROLLBACK")?;
            self.replacing = false;
        }
        self.conn.execute_batch(
            "BEGIN IMMEDIATE;
             DELETE FROM records; DELETE FROM kv_current; DELETE FROM meta;",
        )?;
        self.replacing = true;
        Ok(())
    }

    fn replace_end(&mut self, commit: bool, compaction: i64) -> Result<i64> {
        if !self.replacing {
            return Err(Error::Commit("no replacement in progress".into()));
        }
        self.replacing = false;
        if !commit {
            self.conn.execute_batch("ROLLBACK")?;
            return Ok(self.revs.current());
        }
        if compaction > 0 {
            self.conn.execute(
                "INSERT OR IGNORE INTO compactions (compaction_revision, created_at) VALUES (?1, ?2)",
                params![compaction, schema::now_rfc3339()],
            )?;
        }
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
        let latest = super::read::latest_revision(&self.conn)?;
        let compacted = super::read::compaction_revision(&self.conn)?;
        self.compaction = None;
        self.revs.set_current(latest);
        self.revs.set_compacted(compacted);
        self.hub.reset(latest);
        let table = LeaseTable::load(&self.conn)?;
        self.leases.replace_with(table);
        self.resume_compaction();
        Ok(latest)
    }

    fn restore(&mut self, compaction: i64, leases: Vec<(i64, i64)>) -> Result<()> {
        let now = schema::now_rfc3339();
        let tx = self.conn.unchecked_transaction()?;
        if compaction > 0 {
            tx.execute(
                "INSERT OR IGNORE INTO compactions (compaction_revision, created_at) VALUES (?1, ?2)",
                params![compaction, now],
            )?;
        }
        for (id, ttl) in &leases {
            tx.execute(
                "INSERT OR REPLACE INTO leases (id, ttl, granted_at) VALUES (?1, ?2, ?3)",
                params![id, ttl, now],
            )?;
        }
        tx.commit()?;
        if compaction > self.revs.compacted() {
            self.revs.set_compacted(compaction);
        }
        let table = super::LeaseTable::load(&self.conn)?;
        self.leases.replace_with(table);
        self.resume_compaction();
        Ok(())
    }

    fn compact(&mut self, rev: i64, physical: bool, reply: oneshot::Sender<Result<i64>>) {
        let current = self.revs.current();
        if rev > current {
            let _ = reply.send(Err(Error::FutureRevision));
            return;
        }
        if rev <= self.revs.compacted() {
            let _ = reply.send(Err(Error::Compacted));
            return;
        }
        match self.hook.compacted(rev) {
            Ok(()) => {}
            Err(HookError::Rejected(e)) => {
                let _ = reply.send(Err(Error::Commit(e)));
                return;
            }
            Err(HookError::Indeterminate(e)) => {
                let _ = reply.send(Err(Error::Commit(e)));
                return;
            }
        }
        if let Err(e) = self.conn.execute(
            "INSERT OR IGNORE INTO compactions (compaction_revision, created_at) VALUES (?1, ?2)",
            params![rev, schema::now_rfc3339()],
        ) {
            let _ = reply.send(Err(e.into()));
            return;
        }
        self.revs.set_compacted(rev);
        self.hook.compaction_published(rev);
        self.resume_compaction();
        let Some(job) = self.compaction.as_mut() else {
            let _ = reply.send(Ok(current));
            return;
        };
        if physical {
            job.waiters.push(reply);
        } else {
            let _ = reply.send(Ok(current));
        }
    }

    /// Frees one window of history below the compaction target C: every row that a row at or
    /// below C supersedes (found through that row's `prev_revision`, so the work follows the
    /// history written since the last compaction, not all of it), and every tombstone below C.
    /// The rows of revision C itself stay, as etcd keeps them: a watch from C replays them.
    fn compaction_step(&mut self) {
        self.last_step = std::time::Instant::now();
        if self.replacing {
            return;
        }
        let Some(job) = self.compaction.as_mut() else {
            return;
        };
        let lo = job.next;
        let hi = (lo + COMPACTION_WINDOW - 1).min(job.target);
        let target = job.target;
        let done = hi >= target;
        let res = (|| -> Result<usize> {
            let tx = self.conn.unchecked_transaction()?;
            let superseded = tx.execute(
                "DELETE FROM records WHERE rowid IN (
                    SELECT p.rowid FROM records n
                    JOIN records p ON p.key = n.key AND p.revision = n.prev_revision
                    WHERE n.revision >= ?1 AND n.revision <= ?2
                      AND n.prev_revision > 1 AND n.prev_revision < ?3)",
                params![lo, hi, target],
            )?;
            let tombstones = tx.execute(
                "DELETE FROM records
                 WHERE revision >= ?1 AND revision <= ?2 AND revision < ?3 AND deleted = 1",
                params![lo, hi, target],
            )?;
            if done {
                tx.execute(
                    "INSERT INTO meta (name, value) VALUES ('freed_through', ?1)
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    [target],
                )?;
            }
            tx.commit()?;
            Ok(superseded + tombstones)
        })();
        let freed = match res {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "compaction step failed; will retry");
                return;
            }
        };
        let Some(job) = self.compaction.as_mut() else {
            return;
        };
        job.next = hi + 1;
        tracing::debug!(from = lo, to = hi, freed, "compaction_step");
        if done && let Some(job) = self.compaction.take() {
            // The freed rows are most of the WAL now: reads skip it once it is copied back.
            self.ask_checkpoint();
            let current = self.revs.current();
            tracing::info!(revision = job.target, "compaction_completed");
            for w in job.waiters {
                let _ = w.send(Ok(current));
            }
        }
    }
}

fn fail_pending(p: Pending, e: Error) -> Pending {
    match p {
        Pending::Txn(tx, _) => Pending::Txn(tx, Err(e)),
        Pending::Rev(tx, _) => Pending::Rev(tx, Err(e)),
    }
}

fn fail_if_ok(p: Pending, e: Error) -> Pending {
    match p {
        Pending::Txn(tx, Ok(_)) => Pending::Txn(tx, Err(e)),
        Pending::Rev(tx, Ok(_)) => Pending::Rev(tx, Err(e)),
        other => other,
    }
}

fn send_pending(p: Pending) {
    match p {
        Pending::Txn(tx, r) => {
            let _ = tx.send(r);
        }
        Pending::Rev(tx, r) => {
            let _ = tx.send(r);
        }
    }
}

fn reply_err(cmd: Command, e: Error) {
    match cmd {
        Command::Txn { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Command::Compact { reply, .. }
        | Command::LeaseGrant { reply, .. }
        | Command::LeaseRevoke { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Command::Defragment { reply }
        | Command::Restore { reply, .. }
        | Command::ReplaceBegin { reply }
        | Command::Tick { reply, .. }
        | Command::SetHook { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Command::Import { reply, .. } | Command::ReplaceEnd { reply, .. } => {
            let _ = reply.send(Err(e));
        }
    }
}

fn fail_all(group: Vec<Command>, msg: &str) {
    for cmd in group {
        reply_err(cmd, Error::Commit(msg.to_string()));
    }
}
