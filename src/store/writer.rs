//! The single writer. Requests arrive on a bounded channel; everything waiting is applied
//! in ONE SQLite transaction (group commit), each request under its own savepoint, then the
//! commit hook makes the new records durable where the design promises (object storage, from
//! the object-storage issue on), then SQLite commits, and only then are revisions published,
//! watchers woken and callers answered. A failed hook or commit rolls everything back.
//! A write that is the only one in flight is applied by the thread that received it instead,
//! under the same lock ([`try_inline`]).
//!
//! When the hook's durability waits on the network ([`CommitHook::pipelined`]: object storage),
//! a group is committed to SQLite once its upload has *started*, and the writer goes on with
//! the next group while it runs: up to [`MAX_UPLOADS_IN_FLIGHT`] uploads overlap. Groups are
//! still published and answered strictly in revision order, each once its own upload and every
//! earlier one has landed; until then readers see the published revision (the rows above it
//! are committed but not visible: reads at the current revision are answered at the published
//! one). The rows of groups not yet landed are marked in `meta` (`unlanded_above`), and a
//! restart discards them ([`discard_unlanded`]): the bucket, not the local file, says whether
//! they were written.

use std::collections::VecDeque;
use std::sync::Arc;

use etcd_client::proto::{PbTxnRequest, PbTxnResponse};
use rusqlite::{Connection, params};
use tokio::sync::{Notify, mpsc, oneshot};

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
    /// Durability waits on the network and may overlap with the next groups: the writer calls
    /// [`CommitHook::start`] instead of `persist` for groups of plain requests (see the module
    /// documentation).
    fn pipelined(&self) -> bool {
        false
    }
    /// Starts making the records of one group durable and returns at once: the outcome is sent
    /// on the returned [`Landing`], after which `landed` is notified. An error here means
    /// nothing was started (the group is rolled back); an error on the landing stops the
    /// writer, since later groups were applied on top of this one.
    fn start(
        &mut self,
        records: &[Record],
        _landed: Arc<Notify>,
    ) -> std::result::Result<Landing, HookError> {
        self.persist(records)?;
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Ok(()));
        Ok(rx)
    }
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

/// The outcome of an upload begun by [`CommitHook::start`].
pub type Landing = oneshot::Receiver<std::result::Result<(), HookError>>;

/// Uploads a pipelined hook may have in flight at once. With one, a request that arrives while
/// a group uploads waits for that upload and then its own (two round trips). Clients answered
/// together come back together but are taken as several groups (the writer starts a group as
/// soon as a request is there), so a few slots are needed to take a whole burst in one round
/// trip: with 100 ms added to every bucket response, 16 clients' writes had p50 211 ms with
/// one (sequential uploads), 107 ms with two, 106 with four and eight, and 100 clients' 215,
/// 207, 112-124 and 111 ms; eight reached 149 and 800 writes/s (of the 152 and 950 one round
/// trip allows). The cost is more, smaller uploads under load: on a local S3 server, 0.2-0.4
/// object writes per write at 16 clients instead of 0.2, 0.07-0.08 at 100 instead of 0.035.
pub const MAX_UPLOADS_IN_FLIGHT: usize = 8;

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
    /// Groups committed locally whose upload (or an earlier group's) has not landed yet, in
    /// revision order (see the module documentation).
    inflight: VecDeque<InFlight>,
    /// Notified by a pipelined hook when an upload lands.
    landed: Arc<Notify>,
    /// `meta.unlanded_above` is set in the database.
    marked: bool,
}

/// A group committed locally, waiting for its upload and every earlier one.
struct InFlight {
    /// `None`: the group wrote nothing (its requests failed or compared false), but its
    /// answers may reflect earlier groups, so they wait their turn.
    landing: Option<Landing>,
    rev: i64,
    batches: Vec<EventBatch>,
    records: Vec<Record>,
    lease_changes: Vec<LeaseChange>,
    replies: Vec<Pending>,
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
    if writer.stopped
        || writer.last_group > 1
        || !writer.inflight.is_empty()
        || !writer.hook.inline()
    {
        return Err(cmd);
    }
    writer.process(VecDeque::from([cmd]));
    writer.maybe_checkpoint();
    Ok(())
}

/// What the writer thread does next, decided under the lock and done without it.
enum Wait {
    /// Nothing in flight: wait for a request.
    Request,
    /// Uploads in flight: wait for a request or a landing.
    RequestOrLanding(Arc<Notify>),
    /// As many uploads in flight as allowed: wait for a landing (requests queue meanwhile and
    /// form the next group).
    Landing(Arc<Notify>),
    /// A compaction is freeing history: take a request if one is there, else do a step.
    Poll,
}

/// What the wait brought.
enum Next {
    Cmd(Command),
    /// No request queued (compaction in progress): a compaction step.
    Step,
    /// An upload landed (or a stale notification).
    Landed,
    /// Every sender is gone.
    Closed,
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
        let wait = match lock() {
            Some(g) => match g.as_ref() {
                Some(w) if !w.stopped => {
                    if w.inflight.len() >= MAX_UPLOADS_IN_FLIGHT {
                        Wait::Landing(w.landed.clone())
                    } else if w.compaction.is_some() {
                        Wait::Poll
                    } else if w.inflight.is_empty() {
                        Wait::Request
                    } else {
                        Wait::RequestOrLanding(w.landed.clone())
                    }
                }
                _ => return,
            },
            None => return,
        };
        let next = match wait {
            Wait::Request => rx.blocking_recv().map_or(Next::Closed, Next::Cmd),
            Wait::Poll => match rx.try_recv() {
                Ok(cmd) => Next::Cmd(cmd),
                Err(mpsc::error::TryRecvError::Empty) => Next::Step,
                Err(mpsc::error::TryRecvError::Disconnected) => Next::Closed,
            },
            Wait::Landing(landed) => {
                futures::executor::block_on(landed.notified());
                Next::Landed
            }
            Wait::RequestOrLanding(landed) => {
                let recv = std::pin::pin!(rx.recv());
                let notified = std::pin::pin!(landed.notified());
                match futures::executor::block_on(futures::future::select(recv, notified)) {
                    futures::future::Either::Left((cmd, _)) => cmd.map_or(Next::Closed, Next::Cmd),
                    futures::future::Either::Right(_) => Next::Landed,
                }
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
        let first = match next {
            Next::Cmd(cmd) => cmd,
            Next::Closed => {
                // Every sender is gone: answer the callers of uploads in flight, then end.
                writer.drain();
                return;
            }
            Next::Step => {
                writer.compaction_step();
                writer.publish_landed();
                writer.maybe_checkpoint();
                continue;
            }
            Next::Landed => {
                writer.publish_landed();
                writer.maybe_checkpoint();
                continue;
            }
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
            inflight: VecDeque::new(),
            landed: Arc::new(Notify::new()),
            marked: false,
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
        // The groups in flight were applied on top of (or next to) this one: none of them is
        // published now.
        let inflight: Vec<Pending> = self.inflight.drain(..).flat_map(|f| f.replies).collect();
        for p in replies.into_iter().chain(inflight) {
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
            if matches!(cmd, Command::Tick { .. }) {
                // Time-driven work of the hook: it needs the requests before it applied, not
                // their uploads landed (what it flushes was published, so it landed).
                self.commit_group(std::mem::take(&mut group));
            } else if !matches!(cmd, Command::Txn { .. }) {
                // Everything but plain requests sees (and is seen after) every earlier group
                // published: the pipeline is drained first.
                self.settle(&mut group);
                if self.stopped {
                    reply_err(cmd, Error::Shutdown);
                    return;
                }
            }
            match cmd {
                Command::Txn { .. } => group.push(cmd),
                // Lease grants and revokes change what later requests may reference: each
                // commits alone, after the requests before it.
                Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } => {
                    self.commit_group(vec![cmd]);
                }
                Command::Compact {
                    rev,
                    physical,
                    reply,
                } => {
                    self.compact(rev, physical, reply);
                }
                Command::Import { records, reply } => {
                    let _ = reply.send(self.import(records));
                }
                Command::Restore {
                    compaction,
                    leases,
                    reply,
                } => {
                    let _ = reply.send(self.restore(compaction, leases));
                }
                Command::ReplaceBegin { reply } => {
                    let _ = reply.send(self.replace_begin());
                }
                Command::ReplaceEnd {
                    commit,
                    compaction,
                    reply,
                } => {
                    let _ = reply.send(self.replace_end(commit, compaction));
                }
                Command::Tick { flush, reply } => {
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
                    self.hook = hook;
                    let _ = reply.send(Ok(()));
                }
                Command::Defragment { reply } => {
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

    /// Commits the plain requests gathered so far, then drains the pipeline.
    fn settle(&mut self, group: &mut Vec<Command>) {
        self.commit_group(std::mem::take(group));
        self.drain();
    }

    /// Applies a group of mutating commands in one SQLite transaction.
    fn commit_group(&mut self, group: Vec<Command>) {
        if group.is_empty() {
            return;
        }
        self.last_group = group.len();
        let start_rev = self.applied();
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

        if self.hook.pipelined()
            && granted.is_empty()
            && revoked.is_empty()
            && !(records.is_empty() && self.inflight.is_empty())
        {
            let landing = if records.is_empty() {
                None
            } else {
                match self.hook.start(&records, self.landed.clone()) {
                    Ok(landing) => Some(landing),
                    Err(e) => {
                        drop(tx);
                        self.hook_failed(e, rev - start_rev, replies);
                        return;
                    }
                }
            };
            let committed = mark_unlanded(&tx, self.revs.current())
                .and_then(|()| tx.commit().map_err(Error::from));
            if let Err(e) = committed {
                if landing.is_some() {
                    // The upload may land: only a restart can tell.
                    self.stop_indeterminate(
                        "local commit of a group being uploaded",
                        &e.to_string(),
                        replies,
                    );
                } else {
                    for p in replies {
                        send_pending(fail_if_ok(p, Error::Commit(e.to_string())));
                    }
                }
                return;
            }
            self.marked = true;
            self.inflight.push_back(InFlight {
                landing,
                rev,
                batches,
                records,
                lease_changes,
                replies,
            });
            self.publish_landed();
            return;
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
        if let Err(e) = hook_result {
            drop(tx);
            self.hook_failed(e, rev - start_rev, replies);
            return;
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
        apply_lease_changes(&self.leases, lease_changes);
        for id in revoked {
            self.leases.remove(id);
            self.hook.lease_revoked(id);
        }
        self.publish(rev, batches, records, Vec::new(), replies);
    }

    /// The hook refused a group (already rolled back) or cannot tell whether it stored it.
    fn hook_failed(&mut self, e: HookError, revisions: i64, replies: Vec<Pending>) {
        match e {
            HookError::Rejected(e) => {
                tracing::error!(error = %e, revisions, "write_failed: not made durable; rolled back");
                for p in replies {
                    send_pending(fail_if_ok(p, Error::Commit(e.clone())));
                }
            }
            HookError::Indeterminate(e) => self.stop_indeterminate("write", &e, replies),
        }
    }

    /// The revision the next group builds on: the last one applied, published or not.
    fn applied(&self) -> i64 {
        self.inflight
            .back()
            .map_or_else(|| self.revs.current(), |f| f.rev)
    }

    /// Makes a group committed and durable visible: watchers, readers, the replication feed,
    /// then its callers.
    fn publish(
        &mut self,
        rev: i64,
        batches: Vec<EventBatch>,
        records: Vec<Record>,
        lease_changes: Vec<LeaseChange>,
        replies: Vec<Pending>,
    ) {
        apply_lease_changes(&self.leases, lease_changes);
        self.hub.append(batches);
        if rev > self.revs.current() {
            self.revs.set_current(rev);
        }
        self.hub.notify(self.revs.current());
        if !records.is_empty() {
            self.hook.published(&records, rev);
        }
        for p in replies {
            send_pending(p);
        }
    }

    /// Publishes the groups at the front of the pipeline whose uploads have landed, in order.
    /// A failed upload stops the writer: the groups after it were applied on top of it.
    fn publish_landed(&mut self) {
        while let Some(head) = self.inflight.front_mut() {
            let outcome = match head.landing.as_mut() {
                None => Ok(()),
                Some(rx) => match rx.try_recv() {
                    Ok(outcome) => outcome,
                    Err(oneshot::error::TryRecvError::Empty) => break,
                    Err(oneshot::error::TryRecvError::Closed) => Err(HookError::Indeterminate(
                        "the upload ended without an outcome".into(),
                    )),
                },
            };
            if let Err(HookError::Rejected(e) | HookError::Indeterminate(e)) = outcome {
                self.stop_indeterminate("write (pipelined upload)", &e, Vec::new());
                return;
            }
            let Some(f) = self.inflight.pop_front() else {
                break;
            };
            self.publish(f.rev, f.batches, f.records, f.lease_changes, f.replies);
        }
        if self.inflight.is_empty() && self.marked {
            // Everything committed here is in the bucket: a restart keeps it all.
            match exec_cached(&self.conn, "DELETE FROM meta WHERE name = 'unlanded_above'") {
                Ok(()) => self.marked = false,
                Err(e) => tracing::warn!(error = %e, "cannot clear the mark of unlanded rows"),
            }
        }
    }

    /// Waits until every group in the pipeline is published (or the writer stopped): before
    /// anything that is not a plain request (leases, compaction, imports, a new hook).
    fn drain(&mut self) {
        loop {
            self.publish_landed();
            if self.stopped || self.inflight.is_empty() {
                return;
            }
            let landed = self.landed.clone();
            hook_block(|| futures::executor::block_on(landed.notified()));
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

fn apply_lease_changes(leases: &LeaseTable, changes: Vec<LeaseChange>) {
    for change in changes {
        match change {
            LeaseChange::Attach(id, key) => leases.attach(id, &key),
            LeaseChange::Detach(id, key) => leases.detach(id, &key),
        }
    }
}

/// Marks the rows of a group being uploaded as not yet in the bucket, in the group's own
/// transaction: everything above `published` (see [`discard_unlanded`]).
fn mark_unlanded(conn: &Connection, published: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (name, value) VALUES ('unlanded_above', ?1)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )?
    .execute([published])?;
    Ok(())
}

/// At startup: removes the rows that a pipelined writer committed locally while their upload
/// was in flight, if the process ended before it knew they landed (`meta.unlanded_above`).
/// Whichever of them did land are loaded again from the bucket by backfill; the others were
/// never acknowledged and must not be served. Returns the revisions discarded (from, to).
pub(super) fn discard_unlanded(conn: &mut Connection) -> Result<Option<(i64, i64)>> {
    use rusqlite::OptionalExtension;
    let tx = conn.transaction()?;
    let mark: Option<i64> = tx
        .query_row(
            "SELECT value FROM meta WHERE name = 'unlanded_above'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let Some(mark) = mark else {
        return Ok(None);
    };
    let latest = super::read::latest_revision(&tx)?;
    tx.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS unlanded_keys (key BLOB PRIMARY KEY) WITHOUT ROWID;
         DELETE FROM temp.unlanded_keys;",
    )?;
    tx.execute(
        "INSERT OR IGNORE INTO temp.unlanded_keys SELECT key FROM records WHERE revision > ?1",
        [mark],
    )?;
    tx.execute("DELETE FROM records WHERE revision > ?1", [mark])?;
    // Each touched key points at its newest remaining row again (none, or a tombstone: gone).
    tx.execute_batch(
        "DELETE FROM kv_current WHERE key IN (SELECT key FROM temp.unlanded_keys);
         INSERT INTO kv_current (key, revision, sub)
            SELECT r.key, r.revision, r.sub FROM temp.unlanded_keys u
            JOIN records r ON r.key = u.key
             AND r.revision = (SELECT MAX(revision) FROM records WHERE key = u.key)
            WHERE r.deleted = 0 AND r.revision > 1;
         DROP TABLE temp.unlanded_keys;
         DELETE FROM meta WHERE name = 'unlanded_above';",
    )?;
    tx.commit()?;
    Ok((latest > mark).then_some((mark + 1, latest)))
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
