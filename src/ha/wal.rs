//! A single node's write-ahead log in its local bucket directory
//! (docs/design/0011-local-write-log.md).
//!
//! With `storage.provider` `local` the bucket is a directory on this machine, and a chunk per
//! write group costs a new file, its fsync, a link and the directory's fsync. While this node is
//! the only registered one, its Primary instead appends each group to a log of segments written
//! full of zeros ahead of time (`pending::PendingLog`: one fdatasync that writes the data alone)
//! *inside the bucket directory*, under `.netsy-wal/{key prefix}/{epoch}/`, acknowledges it, and
//! uploads the acknowledged groups as one chunk per batch (`quorum::Uploads`): when the batch is
//! [`BATCH_AGE`] old or reaches `replication.chunk_buffer.threshold_size_mb`, and before a
//! compaction, a requested flush, the handover, and the first group after another node
//! registered (from then on every group is a chunk again, as before).
//!
//! So every acknowledged write is in the bucket directory before it is acknowledged, in a
//! chunk or in the log: deleting the data dir loses nothing, and a copy of the bucket
//! directory is a copy of every acknowledged write. The next writer of the bucket (this node
//! restarted, or any other) adopts the log's records above the bucket's head before it serves
//! ([`adoptable`]) and then removes the logs of older epochs ([`remove_older`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::metrics::{LOG, SYNC};
use super::pending::{self, PendingLog};
use super::quorum::Uploads;
use crate::datafile::Record as Logged;
use crate::durability::{Fanout, Fence, to_proto};
use crate::store::{CommitHook, HookError, Record};

/// The log's directory name at the top of the bucket directory (hidden from listings and
/// refused as an object key by `objstore::local`).
pub(crate) const WAL_DIR: &str = ".netsy-wal";

/// How old the oldest logged group may get before its batch goes to the bucket: the bucket
/// directory's chunks trail the log by about this much (readers of the chunks alone, such as
/// `netsy datafile`, see a write this much later), and a busy node writes one chunk per this
/// interval instead of one per group. Each chunk's fsyncs also delay the log's own fdatasync
/// that runs at the same time (docs/design/0011-local-write-log.md, "Why 1 s").
pub(crate) const BATCH_AGE: Duration = Duration::from_secs(1);

/// The logs of all epochs of the bucket under `key_prefix`, in the local bucket directory
/// `root`.
pub(crate) fn logs_dir(root: &Path, key_prefix: &str) -> PathBuf {
    let mut dir = root.join(WAL_DIR);
    for part in key_prefix.split('/').filter(|p| !p.is_empty()) {
        dir.push(part);
    }
    dir
}

fn epoch_dir(logs: &Path, epoch: u64) -> PathBuf {
    logs.join(format!("{epoch:020}"))
}

/// The epochs that have a log under `logs`, oldest first.
fn epochs(logs: &Path) -> std::io::Result<Vec<u64>> {
    let entries = match std::fs::read_dir(logs) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        if let Some(epoch) = name.to_str().and_then(|n| n.parse::<u64>().ok()) {
            out.push(epoch);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The records a new writer of epoch `ours` must put in the bucket before it serves: those of
/// the newest older epoch's log above `head` (the bucket's last revision), up to the first gap.
/// They may have been acknowledged. Every writer removes the older logs before it writes
/// (after adopting from them), so the newest log below `ours` belongs to the last writer that
/// wrote anything, and nothing of an older writer can sit above that writer's records.
pub(crate) fn adoptable(logs: &Path, ours: u64, head: i64) -> anyhow::Result<Vec<Logged>> {
    let Some(newest) = epochs(logs)?.into_iter().filter(|e| *e < ours).max() else {
        return Ok(Vec::new());
    };
    let dir = epoch_dir(logs, newest);
    let (_, records) = pending::read(&dir)?;
    let mut out = Vec::new();
    let mut expected = head + 1;
    for r in records.into_iter().filter(|r| r.revision > head) {
        // Records of one revision share it (a transaction's several changes).
        if r.revision == expected {
            out.push(r);
        } else if r.revision == expected + 1 && !out.is_empty() {
            expected += 1;
            out.push(r);
        } else {
            break;
        }
    }
    Ok(out)
}

/// Removes the logs of epochs older than `ours` (their records are in the bucket: adopted, or
/// uploaded by their writer). A deposed writer still appending to its log then writes to a
/// removed file: nothing it appends later is read by anyone, and it acknowledges nothing
/// (its lease ran out before ours started).
pub(crate) fn remove_older(logs: &Path, ours: u64) -> std::io::Result<()> {
    for epoch in epochs(logs)?.into_iter().filter(|e| *e < ours) {
        let dir = epoch_dir(logs, epoch);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if let Ok(d) = std::fs::File::open(logs) {
        d.sync_all()?;
    }
    Ok(())
}

/// The Primary's commit hook on a single node with a local bucket directory (module notes).
pub(crate) struct LocalLogHook {
    uploads: Uploads,
    /// `None` once an append failed: from then on every group is a chunk.
    log: Option<PendingLog>,
    fanout: Box<dyn Fanout>,
    node_id: String,
    epoch: u64,
    fence: Fence,
    nodes: Box<dyn Fn() -> usize + Send>,
    /// The last revision committed locally.
    committed: i64,
}

/// Where a group went.
enum Logging {
    /// Into the log: acknowledge it.
    Yes,
    /// Not into the log: it goes to the bucket. `torn`: an append failed part-way, so the log
    /// may still hold the group whole (a failed fdatasync, say) and the next writer adopt it.
    No { torn: bool },
}

impl LocalLogHook {
    /// Opens this epoch's log under `logs`. `uploads` writes the chunks (its buffer flushed at
    /// [`BATCH_AGE`] and the size threshold); `fanout` feeds the
    /// Replicas that register later; `committed` is the local head at promotion.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn open(
        logs: &Path,
        uploads: Uploads,
        fanout: Box<dyn Fanout>,
        node_id: String,
        epoch: u64,
        fence: Fence,
        nodes: Box<dyn Fn() -> usize + Send>,
        committed: i64,
    ) -> anyhow::Result<Self> {
        let dir = epoch_dir(logs, epoch);
        let log = PendingLog::open(&dir)?;
        if let Some(parent) = dir.parent()
            && let Ok(d) = std::fs::File::open(parent)
        {
            d.sync_all()?;
        }
        Ok(LocalLogHook {
            uploads,
            log: Some(log),
            fanout,
            node_id,
            epoch,
            fence,
            nodes,
            committed,
        })
    }

    /// Forgets what the bucket holds now.
    fn trim(&mut self) {
        let durable = self.uploads.durable;
        if let Some(log) = &mut self.log
            && let Err(e) = log.forget(durable)
        {
            tracing::warn!(error = %e, "write-ahead log: removing written segments failed");
        }
    }

    /// Appends the group to the log, or says why it goes to the bucket instead.
    fn logged(&mut self, records: &[Record], now: Instant) -> Result<Logging, HookError> {
        if (self.nodes)() > 1 || self.uploads.buffer.over_limit() {
            return Ok(Logging::No { torn: false });
        }
        let Some(log) = &mut self.log else {
            return Ok(Logging::No { torn: false });
        };
        if !self.fence.holds() {
            return Err(HookError::Rejected(
                "the writer lock's lease ran out before the group was logged".into(),
            ));
        }
        let logged: Vec<Logged> = records.iter().map(to_proto).collect();
        if let Err(e) = log.append(self.epoch, &self.node_id, self.committed, &logged) {
            // The log is not used again in this epoch.
            tracing::warn!(error = %e, "write-ahead log: append failed; writing chunks from now on");
            self.log = None;
            return Ok(Logging::No { torn: true });
        }
        if !self.fence.holds() {
            // A successor may already have read the log: whether it adopted the group is not
            // ours to know.
            return Err(HookError::Indeterminate(
                "the writer lock's lease ran out while the group was logged".into(),
            ));
        }
        self.uploads.buffer.push(records, now);
        Ok(Logging::Yes)
    }
}

impl CommitHook for LocalLogHook {
    /// While groups go to the log (a local fdatasync); the rare paths that wait on the bucket
    /// (an append failed, the buffer over its limit) wait through `store::hook_wait`.
    fn inline(&self) -> bool {
        self.log.is_some() && (self.nodes)() == 1 && !self.uploads.buffer.over_limit()
    }

    fn persist(&mut self, records: &[Record]) -> Result<(), HookError> {
        if records.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        self.uploads.land(false)?;
        let metrics = self.uploads.metrics().clone();
        let torn = match self.logged(records, now)? {
            Logging::Yes => None,
            Logging::No { torn } => Some(torn),
        };
        let Some(torn) = torn else {
            if self.uploads.buffer.due(now) {
                self.uploads.flush_behind("age", now)?;
            }
            self.trim();
            metrics.group(LOG, true, now.elapsed().as_secs_f64());
            self.uploads.gauge(Instant::now());
            return Ok(());
        };
        let (buffered, res) = self.uploads.sync(records);
        metrics.group(SYNC, res.is_ok(), now.elapsed().as_secs_f64());
        self.trim();
        match res {
            // Acknowledged records went with it, or the log may hold this group: the outcome
            // is not ours to report as "not applied".
            Err(HookError::Rejected(e)) if buffered > 0 || torn => Err(HookError::Indeterminate(e)),
            other => other,
        }
    }

    fn lease_granted(&mut self, id: i64, ttl: i64) -> Result<(), HookError> {
        self.uploads.bucket().lease_granted(id, ttl)
    }

    fn lease_revoked(&mut self, id: i64) {
        self.uploads.bucket().lease_revoked(id);
    }

    fn compacted(&mut self, rev: i64) -> Result<(), HookError> {
        // The compaction object must not point above records only the log holds.
        self.uploads.flush("compaction")?;
        self.trim();
        self.uploads.bucket().compacted(rev)
    }

    fn published(&mut self, records: &[Record], revision: i64) {
        self.committed = revision;
        self.fanout.records(records, revision);
    }

    fn compaction_published(&mut self, rev: i64) {
        self.fanout.compaction(rev);
    }

    fn tick(&mut self, flush: bool) -> Result<(), HookError> {
        let now = Instant::now();
        if flush {
            self.uploads.flush("requested")?;
        } else {
            self.uploads.land(false)?;
            if self.uploads.buffer.due(now) {
                self.uploads.flush_behind("age", now)?;
            }
        }
        self.trim();
        self.uploads.gauge(now);
        Ok(())
    }
}

impl Drop for LocalLogHook {
    /// Replaced at a role change or at shutdown (on the writer thread): the batch goes to the
    /// bucket first. If that fails the log keeps it, and the next writer adopts it.
    fn drop(&mut self) {
        let records = self.uploads.unconfirmed();
        match self.uploads.flush("handover") {
            Ok(()) => self.trim(),
            Err(HookError::Rejected(e) | HookError::Indeterminate(e)) => {
                tracing::warn!(records, error = %e, "write-ahead log not flushed at handover; the next writer adopts it")
            }
        }
        self.uploads.metrics().reset();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, RwLock};

    use super::*;
    use crate::durability::{BucketHook, EpochLog, from_proto};
    use crate::ha::metrics::QuorumMetrics;
    use crate::ha::quorum::ChunkBuffer;
    use crate::objstore::ObjectStorage;
    use crate::objstore::layout::Layout;
    use crate::testutil::created;

    const EPOCH: u64 = 7;

    struct NoFanout;
    impl Fanout for NoFanout {
        fn records(&self, _records: &[Record], _revision: i64) {}
        fn compaction(&self, _revision: i64) {}
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    fn revisions(records: &[Logged]) -> Vec<i64> {
        records.iter().map(|r| r.revision).collect()
    }

    fn log_groups(logs: &Path, epoch: u64, groups: &[&[i64]]) {
        let mut log = PendingLog::open(&epoch_dir(logs, epoch)).unwrap();
        let mut after = groups[0][0] - 1;
        for g in groups {
            let records: Vec<Logged> = g.iter().map(|&r| created(r, "v")).collect();
            log.append(epoch, "a", after, &records).unwrap();
            after = *g.last().unwrap();
        }
    }

    #[test]
    fn the_newest_older_log_is_adopted_above_the_head_up_to_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let logs = logs_dir(dir.path(), "team/a");
        assert!(logs.ends_with(".netsy-wal/team/a"));
        assert!(adoptable(&logs, 5, 0).unwrap().is_empty(), "no log yet");
        log_groups(&logs, 2, &[&[1, 2, 3, 4, 5, 6, 7, 8, 9]]);
        log_groups(&logs, 3, &[&[1, 2], &[3, 4, 5]]);
        log_groups(&logs, 9, &[&[1]]);
        // Epoch 9's log is ours (or newer): never read. Epoch 3 is the newest older one.
        assert_eq!(revisions(&adoptable(&logs, 9, 2).unwrap()), [3, 4, 5]);
        assert_eq!(revisions(&adoptable(&logs, 9, 0).unwrap()), [1, 2, 3, 4, 5]);
        assert!(
            adoptable(&logs, 9, 5).unwrap().is_empty(),
            "all in the bucket"
        );
        // A log that does not reach right above the head adopts nothing.
        log_groups(&logs, 4, &[&[20, 21]]);
        assert!(adoptable(&logs, 9, 5).unwrap().is_empty());
        remove_older(&logs, 9).unwrap();
        assert_eq!(epochs(&logs).unwrap(), [9], "only ours is left");
        assert!(adoptable(&logs, 10, 0).unwrap().len() == 1);
    }

    struct Rig {
        rt: tokio::runtime::Runtime,
        storage: ObjectStorage,
        logs: tempfile::TempDir,
        nodes: Arc<std::sync::atomic::AtomicUsize>,
    }

    fn rig() -> Rig {
        Rig {
            rt: rt(),
            storage: ObjectStorage::from_parts(
                Arc::new(object_store::memory::InMemory::new()),
                Layout::new("").unwrap(),
            ),
            logs: tempfile::tempdir().unwrap(),
            nodes: Arc::new(std::sync::atomic::AtomicUsize::new(1)),
        }
    }

    fn hook(rig: &Rig, fence: &Fence) -> (LocalLogHook, QuorumMetrics) {
        let (tx, _rx) = tokio::sync::mpsc::channel(64);
        let bucket = BucketHook::new(
            rig.storage.clone(),
            "a".into(),
            rig.rt.handle().clone(),
            tx,
            EPOCH,
            Arc::new(RwLock::new(EpochLog::default())),
            Arc::new(AtomicBool::new(false)),
        )
        .with_fence(fence.clone());
        let metrics = QuorumMetrics::new();
        let uploads = Uploads::new(
            bucket,
            rig.rt.handle().clone(),
            ChunkBuffer::new(1 << 20, Duration::from_secs(3600)),
            0,
            metrics.clone(),
        );
        let nodes = rig.nodes.clone();
        let hook = LocalLogHook::open(
            rig.logs.path(),
            uploads,
            Box::new(NoFanout),
            "a".into(),
            EPOCH,
            fence.clone(),
            Box::new(move || nodes.load(std::sync::atomic::Ordering::Acquire)),
            0,
        )
        .unwrap();
        (hook, metrics)
    }

    fn fence() -> Fence {
        let fence = Fence::new();
        fence.extend(Instant::now(), Duration::from_secs(3600));
        fence
    }

    fn commit(hook: &mut LocalLogHook, revision: i64) -> Result<(), HookError> {
        let g = vec![from_proto(created(revision, "v"))];
        hook.persist(&g)?;
        hook.published(&g, revision);
        Ok(())
    }

    /// The chunks in the bucket: (last revision, number of records).
    fn chunks(rig: &Rig) -> Vec<(i64, usize)> {
        rig.rt.block_on(async {
            let mut out = Vec::new();
            for f in rig.storage.list_chunks_after(0).await.unwrap() {
                use futures::TryStreamExt;
                let records: Vec<_> = rig
                    .storage
                    .records(&f.key, Some(crate::datafile::FileKind::KindChunk))
                    .try_collect()
                    .await
                    .unwrap();
                out.push((f.revision, records.len()));
            }
            out
        })
    }

    #[test]
    fn groups_are_logged_then_uploaded_in_one_chunk_and_a_second_node_gets_chunks_again() {
        let rig = rig();
        let fence = fence();
        let (mut hook, m) = hook(&rig, &fence);
        for rev in 1..=3 {
            commit(&mut hook, rev).unwrap();
        }
        assert!(chunks(&rig).is_empty(), "acknowledged from the log");
        assert_eq!(
            revisions(&adoptable(rig.logs.path(), EPOCH + 1, 0).unwrap()),
            [1, 2, 3],
            "the next writer would adopt them"
        );
        let path = |p: &str| m.write_path.with_label_values(&[p]).get();
        assert_eq!((path(LOG), path(SYNC)), (1, 0));
        assert_eq!(m.buffer_records.get(), 3);
        // A requested flush: one chunk of the three.
        hook.tick(true).unwrap();
        assert_eq!(chunks(&rig), [(3, 3)]);
        assert!(adoptable(rig.logs.path(), EPOCH + 1, 3).unwrap().is_empty());
        commit(&mut hook, 4).unwrap();
        // Another node registers: the buffer goes with the next group, in one chunk.
        rig.nodes.store(2, std::sync::atomic::Ordering::Release);
        commit(&mut hook, 5).unwrap();
        assert_eq!(chunks(&rig), [(3, 3), (5, 2)]);
        assert_eq!((path(LOG), path(SYNC)), (0, 1));
        commit(&mut hook, 6).unwrap();
        assert_eq!(chunks(&rig), [(3, 3), (5, 2), (6, 1)]);
        // Alone again: logged again, and the handover uploads it.
        rig.nodes.store(1, std::sync::atomic::Ordering::Release);
        commit(&mut hook, 7).unwrap();
        assert_eq!(chunks(&rig).len(), 3);
        drop(hook);
        assert_eq!(chunks(&rig), [(3, 3), (5, 2), (6, 1), (7, 1)]);
        assert_eq!(path(LOG), 0, "not Primary any more");
    }

    #[test]
    fn a_batch_goes_to_the_bucket_once_it_is_old_enough() {
        let rig = rig();
        let fence = fence();
        let (mut hook, m) = hook(&rig, &fence);
        hook.uploads.buffer = ChunkBuffer::new(1 << 20, Duration::ZERO);
        commit(&mut hook, 1).unwrap();
        hook.uploads.land(true).unwrap();
        assert_eq!(chunks(&rig), [(1, 1)], "uploaded behind the writer");
        assert_eq!(m.flushes.with_label_values(&["age", "success"]).get(), 1);
    }

    #[test]
    fn a_failed_append_sends_this_group_and_the_rest_of_the_epoch_to_the_bucket() {
        let rig = rig();
        let fence = fence();
        let (mut hook, m) = hook(&rig, &fence);
        commit(&mut hook, 1).unwrap();
        // A group that does not follow the log's last revision: the append refuses it.
        hook.committed = 5;
        let g = vec![from_proto(created(3, "v"))];
        hook.persist(&g).unwrap();
        assert_eq!(chunks(&rig), [(3, 2)], "with the buffer, in one chunk");
        assert!(hook.log.is_none(), "not used again in this epoch");
        hook.published(&g, 3);
        commit(&mut hook, 4).unwrap();
        assert_eq!(chunks(&rig), [(3, 2), (4, 1)]);
        let path = |p: &str| m.write_path.with_label_values(&[p]).get();
        assert_eq!((path(LOG), path(SYNC)), (0, 1));
    }

    #[test]
    fn nothing_is_logged_or_acknowledged_once_the_lease_ran_out() {
        let rig = rig();
        let fence = fence();
        let (mut hook, _) = hook(&rig, &fence);
        commit(&mut hook, 1).unwrap();
        fence.extend(Instant::now() - Duration::from_secs(10), Duration::ZERO);
        let err = commit(&mut hook, 2).unwrap_err();
        assert!(matches!(err, HookError::Rejected(_)), "{err:?}");
        assert_eq!(
            revisions(&adoptable(rig.logs.path(), EPOCH + 1, 0).unwrap()),
            [1],
            "the refused group is not in the log"
        );
    }

    /// Records imported onto a lease (adopted from a log, or followed by a Replica that is
    /// then promoted) are the lease's keys: revoking it deletes them. Found by the power-cut
    /// restart test once a single node adopted its write-ahead log.
    #[test]
    fn revoking_a_lease_deletes_the_keys_adopted_onto_it() {
        let rt = rt();
        let dir = tempfile::tempdir().unwrap();
        let store = crate::testutil::local_store(dir.path());
        rt.block_on(async {
            store.lease_grant(7, 3600).await.unwrap();
            let mut r = created(store.current_revision() + 1, "v");
            r.lease = 7;
            let key = r.key.clone();
            store.import(vec![from_proto(r)]).await.unwrap();
            let keys = store.leases().get(7).map(|l| l.keys).unwrap_or_default();
            assert!(keys.contains(&key), "attached: {keys:?}");
            store.lease_revoke(7).await.unwrap();
            let got = store
                .range(etcd_client::proto::PbRangeRequest {
                    key,
                    ..Default::default()
                })
                .await
                .unwrap();
            assert!(got.kvs.is_empty(), "deleted with its lease: {:?}", got.kvs);
        });
    }
}
