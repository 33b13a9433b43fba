//! Quorum mode's shared pieces (docs/design/0010-quorum-replication.md): the receipts a Primary
//! has from its Replicas, and a node's answer to a collection.
//!
//! Also the Primary's side: the quorum commit hook and its chunk buffer (a new Primary's
//! collection is in `collect`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, watch};
use tonic::Status;

use tokio::runtime::Handle;

use super::collect::AckConfig;
use super::metrics::{QUORUM, QuorumMetrics, SYNC};
use super::pending::{PendingError, PendingLog};
use crate::durability::{BucketHook, Fence, to_proto};
use crate::proto as pb;
use crate::store::{CommitHook, HookError, Record, Store};

/// The newest receipt of one Replica.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Receipt {
    epoch: u64,
    revision: i64,
    at: Instant,
}

/// Receipts by Replica, on the Primary. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Receipts {
    state: Arc<watch::Sender<HashMap<String, Receipt>>>,
}

impl Receipts {
    pub(crate) fn new() -> Self {
        Receipts {
            state: Arc::new(watch::channel(HashMap::new()).0),
        }
    }

    /// Records that `node` holds the records of `epoch` up to `revision`. A receipt of an older
    /// epoch than the node's last one, or of a lower revision in the same epoch, changes nothing.
    pub(crate) fn record(&self, node: &str, epoch: u64, revision: i64) {
        let now = Instant::now();
        self.state.send_if_modified(|map| match map.get_mut(node) {
            Some(r) if (r.epoch, r.revision) >= (epoch, revision) => {
                if r.epoch == epoch {
                    r.at = now;
                }
                false
            }
            _ => {
                map.insert(
                    node.to_string(),
                    Receipt {
                        epoch,
                        revision,
                        at: now,
                    },
                );
                true
            }
        });
    }

    /// Distinct Replicas among `among` that hold `epoch`'s records up to `revision`.
    pub(crate) fn count(&self, epoch: u64, revision: i64, among: &[String]) -> usize {
        Self::count_in(&self.state.borrow(), epoch, revision, among)
    }

    /// Only the nodes of the acknowledgement configuration count: a node the Primary has not
    /// recorded in it (one that registered since, or an unregistered one following anyway) is
    /// not asked for by a collection that relies on the recorded configuration.
    fn count_in(
        map: &HashMap<String, Receipt>,
        epoch: u64,
        revision: i64,
        among: &[String],
    ) -> usize {
        among
            .iter()
            .filter(|id| {
                map.get(*id)
                    .is_some_and(|r| r.epoch == epoch && r.revision >= revision)
            })
            .count()
    }

    /// Replicas among `among` that receipted something of `epoch` within `within` (healthy for
    /// quorum).
    pub(crate) fn healthy(&self, epoch: u64, within: Duration, among: &[String]) -> usize {
        let now = Instant::now();
        let map = self.state.borrow();
        among
            .iter()
            .filter(|id| {
                map.get(*id)
                    .is_some_and(|r| r.epoch == epoch && now.duration_since(r.at) <= within)
            })
            .count()
    }

    /// Waits until `needed` Replicas among `among` hold `epoch`'s records up to `revision`, at
    /// most `timeout`.
    pub(crate) async fn wait(
        &self,
        epoch: u64,
        revision: i64,
        needed: usize,
        timeout: Duration,
        among: &[String],
    ) -> bool {
        let mut rx = self.state.subscribe();
        tokio::time::timeout(
            timeout,
            rx.wait_for(|map| Self::count_in(map, epoch, revision, among) >= needed),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }
}

/// This node's answer to a collection by the writer of `epoch` (see [`pb::CollectRequest`]):
/// promises `epoch`, then returns the committed records above `from` from the local copy and
/// the pending ones above those. `followed` is the newest writer epoch this node has followed.
/// The pending log stays locked throughout, so the follower cannot move records from it to the
/// local copy in between.
pub(crate) async fn answer(
    store: &Store,
    pending: &Arc<Mutex<PendingLog>>,
    followed: u64,
    epoch: u64,
    from: i64,
) -> Result<pb::CollectResponse, Status> {
    let guard = pending.clone().lock_owned().await;
    let guard = tokio::task::spawn_blocking(move || {
        let mut guard = guard;
        guard.promise(epoch).map(|()| guard)
    })
    .await
    .map_err(|e| Status::internal(format!("netsy: promise task: {e}")))?
    .map_err(|e| match e {
        PendingError::StaleEpoch { .. } => Status::failed_precondition(format!("netsy: {e}")),
        e => Status::unavailable(format!("netsy: {e}")),
    })?;
    let head = store.current_revision();
    let mut records = if head > from {
        super::peer::history(store, from + 1, head).await?
    } else {
        Vec::new()
    };
    records.extend_from_slice(guard.above(head.max(from)));
    Ok(pb::CollectResponse {
        epoch: guard.epoch().max(followed),
        records,
    })
}

/// Acknowledged records not yet in the bucket, in revision order (the original's chunk buffer).
pub(crate) struct ChunkBuffer {
    records: Vec<Record>,
    bytes: u64,
    oldest: Option<Instant>,
    threshold_bytes: u64,
    threshold_age: Duration,
}

impl ChunkBuffer {
    /// A buffer flushed at `threshold_bytes` (0: no size trigger) or when its oldest record is
    /// `threshold_age` old.
    pub(crate) fn new(threshold_bytes: u64, threshold_age: Duration) -> Self {
        ChunkBuffer {
            records: Vec::new(),
            bytes: 0,
            oldest: None,
            threshold_bytes,
            threshold_age,
        }
    }

    pub(crate) fn push(&mut self, records: &[Record], now: Instant) {
        self.bytes += records.iter().map(record_bytes).sum::<u64>();
        self.oldest.get_or_insert(now);
        self.records.extend_from_slice(records);
    }

    /// Whether a flush is due (size or age).
    pub(crate) fn due(&self, now: Instant) -> bool {
        (self.threshold_bytes > 0 && self.bytes >= self.threshold_bytes)
            || self
                .oldest
                .is_some_and(|t| now.duration_since(t) >= self.threshold_age)
    }

    /// Over twice the size threshold (a flush keeps failing): new groups take the sync path.
    pub(crate) fn over_limit(&self) -> bool {
        self.threshold_bytes > 0 && self.bytes >= 2 * self.threshold_bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// How long the oldest record has waited (zero when empty).
    pub(crate) fn age(&self, now: Instant) -> Duration {
        self.oldest
            .map_or(Duration::ZERO, |t| now.duration_since(t))
    }

    /// Empties the buffer, returning its records.
    pub(crate) fn take(&mut self) -> Vec<Record> {
        self.bytes = 0;
        self.oldest = None;
        std::mem::take(&mut self.records)
    }
}

/// A record's share of a chunk (its key and value, and a fixed allowance for the rest).
fn record_bytes(r: &Record) -> u64 {
    (r.key.len() + r.value.as_ref().map_or(0, |v| v.len()) + 64) as u64
}

/// How the quorum hook is set up (from `replication.*` and the heartbeat).
pub(crate) struct QuorumSettings {
    /// `replication.quorum` (see [`super::collect::required_receipts`]).
    pub quorum: i64,
    /// This node's id.
    pub node_id: String,
    /// The registered nodes now, `(id, peer address)` (the Primary among them).
    pub members: Box<dyn Fn() -> Vec<(String, String)> + Send>,
    /// Where the acknowledgement configuration is recorded (the bucket).
    pub storage: crate::objstore::ObjectStorage,
    /// A Replica whose last receipt is older than this is not counted as healthy.
    pub healthy_within: Duration,
    /// How long a group waits for its receipts before it falls back to the bucket.
    pub receipt_timeout: Duration,
    pub threshold_bytes: u64,
    pub threshold_age: Duration,
    pub metrics: QuorumMetrics,
}

/// A flush of the chunk buffer running on the blocking pool while the writer goes on (one at a
/// time). Its records left the buffer; they count as buffered until the chunk is confirmed.
struct Flight {
    trigger: &'static str,
    last: i64,
    records: usize,
    bytes: u64,
    /// When its oldest record entered the buffer.
    oldest: Instant,
    started: Instant,
    done: std::sync::mpsc::Receiver<Result<(), HookError>>,
}

/// The chunk buffer and its uploads, for a hook that acknowledges groups before they are in the
/// bucket (the quorum hook; a single node's write-ahead log, `wal`).
///
/// Flushes the buffer's thresholds trigger run in the background, so the writer does not stall
/// for an upload whose time grows with the bucket's latency and the batch's size. Every flush
/// that something waits for (the sync path, a compaction, a membership change, a requested
/// flush, the handover) first waits for the one in flight: chunks land in revision order.
pub(crate) struct Uploads {
    bucket: BucketHook,
    rt: Handle,
    pub(crate) buffer: ChunkBuffer,
    flight: Option<Flight>,
    /// The last revision in the bucket.
    pub(crate) durable: i64,
    metrics: QuorumMetrics,
}

impl Uploads {
    /// `bucket` uploads the chunks (it must have no fan-out of its own); `durable` is the
    /// bucket's last revision.
    pub(crate) fn new(
        bucket: BucketHook,
        rt: Handle,
        buffer: ChunkBuffer,
        durable: i64,
        metrics: QuorumMetrics,
    ) -> Self {
        Uploads {
            bucket,
            rt,
            buffer,
            flight: None,
            durable,
            metrics,
        }
    }

    /// The bucket hook (leases and compaction go straight to the bucket).
    pub(crate) fn bucket(&mut self) -> &mut BucketHook {
        &mut self.bucket
    }

    pub(crate) fn metrics(&self) -> &QuorumMetrics {
        &self.metrics
    }

    /// Records buffered or in flight.
    pub(crate) fn unconfirmed(&self) -> usize {
        self.buffer.len() + self.flight.as_ref().map_or(0, |f| f.records)
    }

    /// The chunk buffer gauges (the flush in flight included), after a change or as time passes.
    pub(crate) fn gauge(&self, now: Instant) {
        let m = &self.metrics;
        let flying = self.flight.as_ref();
        let records = self.buffer.len() + flying.map_or(0, |f| f.records);
        let bytes = self.buffer.bytes() + flying.map_or(0, |f| f.bytes);
        let age = flying.map_or(self.buffer.age(now), |f| now.duration_since(f.oldest));
        m.buffer_records
            .set(i64::try_from(records).unwrap_or(i64::MAX));
        m.buffer_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        m.buffer_age_seconds
            .set(i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
    }

    /// Counts a finished flush of `records` records; an error becomes indeterminate (they are
    /// acknowledged: the node must stop, and a successor collects them).
    fn flushed(
        &mut self,
        trigger: &str,
        started: Instant,
        records: usize,
        last: i64,
        res: Result<(), HookError>,
    ) -> Result<(), HookError> {
        let m = &self.metrics;
        m.flush_duration.observe(started.elapsed().as_secs_f64());
        m.flushes
            .with_label_values(&[trigger, if res.is_ok() { "success" } else { "error" }])
            .inc();
        res.map_err(|e| match e {
            HookError::Rejected(e) | HookError::Indeterminate(e) => {
                HookError::Indeterminate(format!("flushing {records} acknowledged records: {e}"))
            }
        })?;
        self.durable = self.durable.max(last);
        Ok(())
    }

    /// Settles the flush in flight: waits for it when `wait`, else only if it has finished.
    pub(crate) fn land(&mut self, wait: bool) -> Result<(), HookError> {
        let Some(flight) = &self.flight else {
            return Ok(());
        };
        let res = if wait {
            crate::store::hook_block(|| flight.done.recv().ok())
        } else {
            match flight.done.try_recv() {
                Ok(res) => Some(res),
                Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(()),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => None,
            }
        };
        let flight = self.flight.take().expect("checked above");
        let res = res.unwrap_or_else(|| {
            Err(HookError::Indeterminate(
                "the background flush ended without an answer".into(),
            ))
        });
        let out = self.flushed(
            flight.trigger,
            flight.started,
            flight.records,
            flight.last,
            res,
        );
        self.gauge(Instant::now());
        out
    }

    /// Uploads the whole buffer as one chunk, after the flush in flight, and returns once it is
    /// confirmed.
    pub(crate) fn flush(&mut self, trigger: &'static str) -> Result<(), HookError> {
        self.land(true)?;
        if self.buffer.len() == 0 {
            return Ok(());
        }
        let records = self.buffer.take();
        tracing::debug!(trigger, records = records.len(), "chunk buffer flush");
        let started = Instant::now();
        let res = self.bucket.persist(&records);
        let last = records.last().map_or(0, |r| r.revision);
        let out = self.flushed(trigger, started, records.len(), last, res);
        self.gauge(Instant::now());
        out
    }

    /// Starts uploading the whole buffer in the background, unless a flush is in flight (the
    /// buffer then waits for the next trigger after it lands).
    pub(crate) fn flush_behind(
        &mut self,
        trigger: &'static str,
        now: Instant,
    ) -> Result<(), HookError> {
        self.land(false)?;
        if self.flight.is_some() || self.buffer.len() == 0 {
            return Ok(());
        }
        let (bytes, oldest) = (self.buffer.bytes(), now - self.buffer.age(now));
        let records = self.buffer.take();
        let last = records.last().map_or(0, |r| r.revision);
        tracing::debug!(
            trigger,
            records = records.len(),
            "chunk buffer flush started"
        );
        let (tx, done) = std::sync::mpsc::sync_channel(1);
        let mut uploader = self.bucket.uploader();
        let count = records.len();
        self.rt.spawn_blocking(move || {
            let _ = tx.send(uploader.persist(&records));
        });
        self.flight = Some(Flight {
            trigger,
            last,
            records: count,
            bytes,
            oldest,
            started: now,
            done,
        });
        self.gauge(now);
        Ok(())
    }

    /// The synchronous path: `records` go to the bucket behind the flush in flight and the
    /// buffer, in one chunk (revision order). Also returns how many buffered records went with
    /// them: once those were acknowledged, a failure is not ours to report as "not applied".
    pub(crate) fn sync(&mut self, records: &[Record]) -> (usize, Result<(), HookError>) {
        if let Err(e) = self.land(true) {
            return (0, Err(e));
        }
        let mut all = self.buffer.take();
        let buffered = all.len();
        all.extend_from_slice(records);
        let res = self.bucket.persist(&all);
        if res.is_ok() {
            self.durable = all.last().map_or(self.durable, |r| r.revision);
        }
        self.gauge(Instant::now());
        (buffered, res)
    }
}

/// The Primary's commit hook in quorum mode (docs/design/0010, "The write path"): a group is
/// acknowledged once enough Replicas hold it, and reaches the bucket later in a batch
/// ([`Uploads`]); without enough healthy Replicas, or without their receipts in time, it goes
/// to the bucket at once, after the buffer, in one chunk.
pub(crate) struct QuorumHook {
    uploads: Uploads,
    receipts: Receipts,
    feed: tokio::sync::broadcast::Sender<Arc<pb::FollowMessage>>,
    rt: Handle,
    fence: Option<Fence>,
    epoch: u64,
    settings: QuorumSettings,
    /// The last revision committed (acknowledged or in the bucket): the commit index.
    committed: i64,
    /// The last group was acknowledged by receipts (its records have been sent already).
    last_by_quorum: bool,
    /// The acknowledgement configuration recorded in the bucket, if it is known to be there
    /// (`None` after a failed attempt: the object may hold either), and the nodes it counts.
    recorded: Option<(AckConfig, Arc<[String]>)>,
    /// A configuration may be in the bucket (one was recorded, or an attempt's outcome is
    /// unknown) and has not been removed since.
    maybe_recorded: bool,
}

impl QuorumHook {
    /// `bucket` makes groups durable when receipts do not (it must have no fan-out of its
    /// own: this hook feeds the Replicas); `committed` is the local head at promotion.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        bucket: BucketHook,
        receipts: Receipts,
        feed: tokio::sync::broadcast::Sender<Arc<pb::FollowMessage>>,
        rt: Handle,
        fence: Option<Fence>,
        epoch: u64,
        settings: QuorumSettings,
        committed: i64,
    ) -> Self {
        let buffer = ChunkBuffer::new(settings.threshold_bytes, settings.threshold_age);
        let uploads = Uploads::new(
            bucket,
            rt.clone(),
            buffer,
            committed,
            settings.metrics.clone(),
        );
        QuorumHook {
            uploads,
            receipts,
            feed,
            rt,
            fence,
            epoch,
            settings,
            committed,
            last_by_quorum: false,
            recorded: None,
            maybe_recorded: false,
        }
    }

    /// Records in the buffer and their size.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> (usize, u64) {
        (self.uploads.buffer.len(), self.uploads.buffer.bytes())
    }

    fn fenced(&self) -> bool {
        self.fence.as_ref().is_some_and(|f| !f.holds())
    }

    /// Makes sure the acknowledgement configuration of the registered nodes is the one recorded
    /// in the bucket (0010, "Membership"), and returns the Replicas whose receipts count, or
    /// `None` when no group can be acknowledged by receipts now. Another configuration than the
    /// recorded one (a node registered or left) first sends the buffer to the bucket: a
    /// collection meets only the configurations it finds, so nothing acknowledged under the old
    /// one may stay outside the bucket once the new one replaces it.
    fn configure(&mut self) -> Result<Option<Arc<[String]>>, HookError> {
        let config = AckConfig::new(
            self.epoch,
            &self.settings.node_id,
            (self.settings.members)(),
            self.settings.quorum,
        );
        if let Some((recorded, counted)) = &self.recorded
            && *recorded == config
        {
            return Ok(Some(counted.clone()));
        }
        if self.uploads.unconfirmed() > 0 {
            self.uploads.flush("membership")?;
        }
        if !config.usable() {
            // Too few nodes for receipts: the one in the bucket, if any, has nothing outside
            // it any more, and a collection must not wait for its nodes.
            self.forget();
            return Ok(None);
        }
        if self.fenced() {
            return Ok(None);
        }
        self.recorded = None;
        self.maybe_recorded = true;
        let storage = self.settings.storage.clone();
        let res = crate::store::hook_wait(&self.rt, async {
            super::collect::record_config(&storage, &config).await
        });
        match res {
            Ok(()) => {
                tracing::info!(
                    epoch = self.epoch,
                    nodes = ?config.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
                    required = config.required,
                    "acknowledgement configuration recorded"
                );
                let counted: Arc<[String]> = config.replicas().into();
                self.recorded = Some((config, counted.clone()));
                Ok(Some(counted))
            }
            Err(e) => {
                tracing::warn!(error = %e, "recording the acknowledgement configuration failed; this group goes to the bucket");
                Ok(None)
            }
        }
    }

    /// After a flush of everything acknowledged: removes the recorded configuration, so that a
    /// collection does not wait for its nodes (the next group records one again).
    fn forget(&mut self) {
        self.recorded = None;
        if !self.maybe_recorded || self.uploads.unconfirmed() > 0 {
            return;
        }
        let (storage, epoch) = (self.settings.storage.clone(), self.epoch);
        match crate::store::hook_wait(&self.rt, async {
            super::collect::remove_config(&storage, epoch).await
        }) {
            Ok(()) => self.maybe_recorded = false,
            Err(e) => {
                tracing::warn!(error = %e, "removing the acknowledgement configuration failed; a collection waits for its nodes");
            }
        }
    }
}

impl CommitHook for QuorumHook {
    fn persist(&mut self, records: &[Record]) -> Result<(), HookError> {
        let Some(last) = records.last().map(|r| r.revision) else {
            return Ok(());
        };
        self.last_by_quorum = false;
        let now = Instant::now();
        self.uploads.land(false)?;
        if self.uploads.buffer.due(now) {
            self.uploads.flush_behind("threshold", now)?;
        }
        let counted = self.configure()?;
        let required = self.recorded.as_ref().map_or(0, |(c, _)| c.required);
        let healthy = counted.as_ref().map_or(0, |among| {
            self.receipts
                .healthy(self.epoch, self.settings.healthy_within, among)
        });
        let metrics = self.settings.metrics.clone();
        metrics
            .required_receipts
            .set(i64::try_from(required).unwrap_or(i64::MAX));
        metrics
            .healthy_replicas
            .set(i64::try_from(healthy).unwrap_or(i64::MAX));
        let mut sent = false;
        if let Some(among) = counted
            && healthy >= required
            && !self.uploads.buffer.over_limit()
        {
            let msg = pb::FollowMessage {
                epoch: self.epoch,
                records: records.iter().map(to_proto).collect(),
                committed_revision: last,
                compaction_revision: 0,
                replace_through: 0,
                commit_index: self.committed,
                durable_revision: self.uploads.durable,
            };
            sent = self.feed.send(Arc::new(msg)).is_ok();
            let (receipts, epoch, needed, timeout) = (
                self.receipts.clone(),
                self.epoch,
                required,
                self.settings.receipt_timeout,
            );
            let met = sent
                && crate::store::hook_wait(&self.rt, async {
                    receipts.wait(epoch, last, needed, timeout, &among).await
                });
            let fenced = self.fenced();
            if met && !fenced {
                self.uploads.buffer.push(records, now);
                self.last_by_quorum = true;
                let done = Instant::now();
                metrics.group(QUORUM, true, done.duration_since(now).as_secs_f64());
                self.uploads.gauge(done);
                return Ok(());
            }
            metrics
                .rollbacks
                .with_label_values(&[if fenced { "fenced" } else { "timeout" }])
                .inc();
            tracing::warn!(
                revision = last,
                receipts = self.receipts.count(self.epoch, last, &among),
                required,
                "quorum not met in time; writing the group to the bucket"
            );
        }
        // The synchronous path, behind the flush in flight and the buffer: one chunk, in
        // revision order.
        let (buffered, res) = self.uploads.sync(records);
        metrics.group(SYNC, res.is_ok(), now.elapsed().as_secs_f64());
        match res {
            Ok(()) => Ok(()),
            Err(HookError::Rejected(e)) if buffered > 0 || sent => {
                // Acknowledged records, or records Replicas hold: the outcome is not ours to
                // decide any more.
                Err(HookError::Indeterminate(e))
            }
            Err(e) => Err(e),
        }
    }

    fn lease_granted(&mut self, id: i64, ttl: i64) -> Result<(), HookError> {
        self.uploads.bucket().lease_granted(id, ttl)
    }

    fn lease_revoked(&mut self, id: i64) {
        self.uploads.bucket().lease_revoked(id);
    }

    fn compacted(&mut self, rev: i64) -> Result<(), HookError> {
        // The compaction object must not point above records only peers hold.
        self.uploads.flush("compaction")?;
        self.uploads.bucket().compacted(rev)
    }

    fn published(&mut self, records: &[Record], revision: i64) {
        self.committed = revision;
        let records = if self.last_by_quorum {
            Vec::new()
        } else {
            records.iter().map(to_proto).collect()
        };
        let _ = self.feed.send(Arc::new(pb::FollowMessage {
            epoch: self.epoch,
            records,
            committed_revision: revision,
            compaction_revision: 0,
            replace_through: 0,
            commit_index: revision,
            durable_revision: self.uploads.durable,
        }));
    }

    fn compaction_published(&mut self, rev: i64) {
        let _ = self.feed.send(Arc::new(pb::FollowMessage {
            epoch: self.epoch,
            records: Vec::new(),
            committed_revision: 0,
            compaction_revision: rev,
            replace_through: 0,
            commit_index: 0,
            durable_revision: 0,
        }));
    }

    fn tick(&mut self, flush: bool) -> Result<(), HookError> {
        let now = Instant::now();
        if flush {
            self.uploads.flush("requested")?;
            // Before a registration is removed: the next group records the configuration
            // without it.
            self.forget();
        } else {
            self.uploads.land(false)?;
            if self.uploads.buffer.due(now) {
                self.uploads.flush_behind("age", now)?;
            }
        }
        self.uploads.gauge(now);
        Ok(())
    }
}

impl Drop for QuorumHook {
    /// Replaced at a role change or at shutdown (on the writer thread): the buffer goes to the
    /// bucket first. If that fails, the records stay on the Replicas that receipted them and
    /// the next Primary collects them (0010, "Failover").
    fn drop(&mut self) {
        let records = self.uploads.unconfirmed();
        match self.uploads.flush("handover") {
            Ok(()) => self.forget(),
            Err(HookError::Rejected(e) | HookError::Indeterminate(e)) => {
                tracing::warn!(records, error = %e, "chunk buffer not flushed at handover; a successor collects it from the replicas");
            }
        }
        self.settings.metrics.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod hook {
        use super::super::*;
        use crate::durability::{EpochLog, from_proto};
        use crate::objstore::{Layout, ObjectStorage};
        use std::sync::atomic::AtomicBool;
        use std::sync::{Mutex as StdMutex, RwLock};

        const EPOCH: u64 = 3;

        struct Rig {
            rt: tokio::runtime::Runtime,
            storage: ObjectStorage,
            receipts: Receipts,
            feed: tokio::sync::broadcast::Sender<Arc<pb::FollowMessage>>,
            /// Messages the fake Replica saw.
            seen: Arc<StdMutex<Vec<pb::FollowMessage>>>,
            /// Whether the fake Replica receipts pending records.
            receipting: Arc<AtomicBool>,
            /// The registered nodes the hook sees (`a` is the Primary, `b` the fake Replica).
            members: Arc<StdMutex<Vec<&'static str>>>,
        }

        fn rig() -> Rig {
            rig_on(Arc::new(object_store::memory::InMemory::new()))
        }

        fn rig_on(store: crate::objstore::DynStore) -> Rig {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let storage = ObjectStorage::from_parts(store, Layout::new("").unwrap());
            let receipts = Receipts::new();
            let (feed, mut rx) = tokio::sync::broadcast::channel::<Arc<pb::FollowMessage>>(64);
            let seen = Arc::new(StdMutex::new(Vec::new()));
            let receipting = Arc::new(AtomicBool::new(true));
            // The fake Replica: receipts what arrives pending, as a follower would.
            rt.spawn({
                let (receipts, seen, receipting) =
                    (receipts.clone(), seen.clone(), receipting.clone());
                async move {
                    while let Ok(msg) = rx.recv().await {
                        // Seen before receipted: a test that reads `seen` once the hook has
                        // its receipt finds the message there.
                        seen.lock().unwrap().push((*msg).clone());
                        let pending = msg.records.last().map(|r| r.revision);
                        if let Some(last) = pending.filter(|&l| l > msg.commit_index)
                            && receipting.load(std::sync::atomic::Ordering::Acquire)
                        {
                            receipts.record("b", msg.epoch, last);
                        }
                    }
                }
            });
            receipts.record("b", EPOCH, 0);
            Rig {
                rt,
                storage,
                receipts,
                feed,
                seen,
                receipting,
                members: Arc::new(StdMutex::new(vec!["a", "b", "c"])),
            }
        }

        /// The acknowledgement configuration recorded in the bucket for `EPOCH`.
        fn recorded(rig: &Rig) -> Option<(Vec<String>, usize)> {
            let key = rig.storage.layout().quorum_config(EPOCH);
            let found = rig
                .rt
                .block_on(crate::objstore::cas::get(
                    rig.storage.store().as_ref(),
                    &key,
                ))
                .unwrap()?;
            let c: AckConfig = serde_json::from_slice(&found.bytes).unwrap();
            assert_eq!((c.epoch, c.primary.as_str()), (EPOCH, "a"));
            Some((c.nodes.into_iter().map(|n| n.id).collect(), c.required))
        }

        fn ids(ids: &[&str]) -> Vec<String> {
            ids.iter().map(|s| s.to_string()).collect()
        }

        /// The messages the fake Replica has seen, once there are at least `n` (at most 10 s).
        fn seen_at_least(rig: &Rig, n: usize) -> Vec<pb::FollowMessage> {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let seen = rig.seen.lock().unwrap().clone();
                if seen.len() >= n || Instant::now() >= deadline {
                    return seen;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }

        fn hook(rig: &Rig, age: Duration) -> QuorumHook {
            hook_with_fence(rig, age, None)
        }

        fn hook_with_fence(rig: &Rig, age: Duration, fence: Option<Fence>) -> QuorumHook {
            let (tx, _rx) = tokio::sync::mpsc::channel(64);
            let mut bucket = BucketHook::new(
                rig.storage.clone(),
                "a".into(),
                rig.rt.handle().clone(),
                tx,
                EPOCH,
                Arc::new(RwLock::new(EpochLog::default())),
                Arc::new(AtomicBool::new(false)),
            );
            if let Some(f) = &fence {
                bucket = bucket.with_fence(f.clone());
            }
            QuorumHook::new(
                bucket,
                rig.receipts.clone(),
                rig.feed.clone(),
                rig.rt.handle().clone(),
                fence,
                EPOCH,
                QuorumSettings {
                    quorum: -1,
                    node_id: "a".into(),
                    members: Box::new({
                        let members = rig.members.clone();
                        move || {
                            let ids = members.lock().unwrap().clone();
                            ids.iter()
                                .map(|id| (id.to_string(), format!("{id}:2380")))
                                .collect()
                        }
                    }),
                    storage: rig.storage.clone(),
                    healthy_within: Duration::from_secs(60),
                    receipt_timeout: Duration::from_millis(200),
                    threshold_bytes: 1 << 20,
                    threshold_age: age,
                    metrics: QuorumMetrics::new(),
                },
                0,
            )
        }

        fn group(revision: i64) -> Vec<Record> {
            vec![from_proto(crate::testutil::created(revision, "v"))]
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

        fn commit(hook: &mut QuorumHook, revision: i64) -> Result<(), HookError> {
            let g = group(revision);
            hook.persist(&g)?;
            hook.published(&g, revision);
            Ok(())
        }

        #[test]
        fn receipted_groups_wait_in_the_buffer_and_a_missing_receipt_flushes_it() {
            let rig = rig();
            let mut hook = hook(&rig, Duration::from_secs(3600));
            commit(&mut hook, 1).unwrap();
            commit(&mut hook, 2).unwrap();
            assert_eq!(hook.buffered().0, 2);
            assert!(
                chunks(&rig).is_empty(),
                "acknowledged by receipts, not uploaded"
            );
            let m = hook.settings.metrics.clone();
            let path = |p: &str| m.write_path.with_label_values(&[p]).get();
            let groups = |p: &str| m.write_groups.with_label_values(&[p, "success"]).get();
            assert_eq!((path(QUORUM), path(SYNC), groups(QUORUM)), (1, 0, 2));
            assert_eq!(
                (m.required_receipts.get(), m.healthy_replicas.get()),
                (1, 1)
            );
            assert_eq!(m.buffer_records.get(), 2);
            assert!(m.buffer_bytes.get() > 0);
            // Without a receipt the group goes to the bucket with the buffer, in one chunk.
            rig.receipting
                .store(false, std::sync::atomic::Ordering::Release);
            commit(&mut hook, 3).unwrap();
            assert_eq!(chunks(&rig), [(3, 3)]);
            assert_eq!(hook.buffered().0, 0);
            assert_eq!((path(QUORUM), path(SYNC), groups(SYNC)), (0, 1, 1));
            assert_eq!(m.rollbacks.with_label_values(&["timeout"]).get(), 1);
            assert_eq!(m.buffer_records.get(), 0);
            drop(hook);
            assert_eq!(path(SYNC), 0, "not Primary any more");
            // The Replica saw each group pending, then its commit index.
            let seen = seen_at_least(&rig, 6);
            let summary: Vec<(Vec<i64>, i64)> = seen
                .iter()
                .map(|m| {
                    (
                        m.records.iter().map(|r| r.revision).collect(),
                        m.commit_index,
                    )
                })
                .collect();
            assert_eq!(
                summary,
                [
                    (vec![1], 0),
                    (vec![], 1),
                    (vec![2], 1),
                    (vec![], 2),
                    (vec![3], 2),
                    (vec![3], 3), // went to the bucket: sent again, committed
                ]
            );
        }

        /// Regression (fault suite, `pause-primary` seed 2003, quorum mode): a Primary paused
        /// past its lease woke up in the middle of a group and uploaded it (and its buffer) as
        /// a chunk that its successor had already orphaned. Once the lease has run out nothing
        /// is uploaded any more; the writer stops with the outcome unknown (Replicas hold the
        /// group).
        #[test]
        fn a_primary_whose_lease_ran_out_uploads_nothing() {
            let rig = rig();
            let fence = Fence::new();
            fence.extend(std::time::Instant::now(), Duration::from_secs(3600));
            let mut hook = hook_with_fence(&rig, Duration::from_secs(3600), Some(fence.clone()));
            commit(&mut hook, 1).unwrap();
            assert_eq!(hook.buffered().0, 1);
            // The lease runs out (the process was stopped, say) while the next group waits.
            fence.extend(
                std::time::Instant::now() - Duration::from_secs(10),
                Duration::ZERO,
            );
            let err = hook.persist(&group(2)).unwrap_err();
            assert!(
                matches!(&err, HookError::Indeterminate(m) if m.contains("lease ran out before")),
                "{err:?}"
            );
            assert!(chunks(&rig).is_empty(), "nothing uploaded after the lease");
            assert_eq!(
                hook.settings
                    .metrics
                    .rollbacks
                    .with_label_values(&["fenced"])
                    .get(),
                1
            );
        }

        #[test]
        fn without_healthy_replicas_every_group_goes_to_the_bucket() {
            let rig = rig();
            let mut hook = hook(&rig, Duration::from_secs(3600));
            hook.settings.quorum = 2; // one Replica receipts: never enough
            commit(&mut hook, 1).unwrap();
            commit(&mut hook, 2).unwrap();
            assert_eq!(chunks(&rig), [(1, 1), (2, 1)]);
        }

        #[test]
        fn age_compaction_and_handover_flush_the_buffer() {
            let rig = rig();
            let mut hook = hook(&rig, Duration::ZERO);
            commit(&mut hook, 1).unwrap();
            assert!(chunks(&rig).is_empty());
            hook.tick(false).unwrap();
            hook.uploads.land(true).unwrap();
            assert_eq!(chunks(&rig), [(1, 1)]);
            hook.settings.threshold_age = Duration::from_secs(3600);
            hook.uploads.buffer = ChunkBuffer::new(1 << 20, Duration::from_secs(3600));
            commit(&mut hook, 2).unwrap();
            hook.tick(false).unwrap();
            assert_eq!(chunks(&rig).len(), 1, "not due yet");
            hook.compacted(2).unwrap();
            assert_eq!(chunks(&rig), [(1, 1), (2, 1)]);
            commit(&mut hook, 3).unwrap();
            drop(hook);
            assert_eq!(chunks(&rig), [(1, 1), (2, 1), (3, 1)]);
        }

        /// A due buffer is uploaded in the background: the writer acknowledges the next groups
        /// while the upload runs (its time grows with the bucket's latency), and a flush that
        /// must complete waits for it, so chunks still land in revision order.
        #[test]
        fn a_due_flush_runs_behind_the_writer() {
            let fault = Arc::new(crate::objstore::fault::FaultStore::new(
                Arc::new(object_store::memory::InMemory::new()),
                Default::default(),
                0,
            ));
            let rig = rig_on(fault.clone());
            let mut hook = hook(&rig, Duration::ZERO);
            commit(&mut hook, 1).unwrap();
            // Every bucket call now takes 3 s.
            let slow = Duration::from_secs(3);
            fault.set_config(crate::objstore::fault::FaultConfig {
                latency: Some((slow, slow)),
                ..Default::default()
            });
            hook.tick(false).unwrap();
            assert!(
                hook.uploads.flight.is_some(),
                "the age trigger started a flush"
            );
            commit(&mut hook, 2).unwrap();
            commit(&mut hook, 3).unwrap();
            assert!(
                hook.uploads.flight.is_some(),
                "two groups acknowledged while the upload of the first runs"
            );
            let m = hook.settings.metrics.clone();
            assert_eq!(
                m.buffer_records.get(),
                3,
                "the flush in flight still counts"
            );
            assert_eq!(hook.buffered().0, 2, "one flush at a time: 2 and 3 wait");
            fault.set_config(Default::default());
            hook.tick(true).unwrap();
            assert_eq!(chunks(&rig), [(1, 1), (3, 2)]);
            assert_eq!(
                (
                    m.flushes.with_label_values(&["age", "success"]).get(),
                    m.flushes.with_label_values(&["requested", "success"]).get(),
                    m.buffer_records.get(),
                ),
                (1, 1, 0)
            );
            // The Replicas learn what is durable from the next message.
            commit(&mut hook, 4).unwrap();
            let seen = rig.seen.lock().unwrap().clone();
            assert_eq!(seen.last().map(|m| m.durable_revision), Some(3));
        }

        /// A background flush that fails (here: the lease ran out before its upload) stops the
        /// writer at the next hand-off: its records were acknowledged.
        #[test]
        fn a_failed_background_flush_is_indeterminate() {
            let rig = rig();
            let fence = Fence::new();
            fence.extend(std::time::Instant::now(), Duration::from_secs(3600));
            let mut hook = hook_with_fence(&rig, Duration::ZERO, Some(fence.clone()));
            commit(&mut hook, 1).unwrap();
            fence.extend(
                std::time::Instant::now() - Duration::from_secs(10),
                Duration::ZERO,
            );
            hook.tick(false).unwrap();
            let err = hook.tick(true).unwrap_err();
            assert!(
                matches!(&err, HookError::Indeterminate(m) if m.contains("flushing 1 acknowledged records") && m.contains("lease ran out")),
                "{err:?}"
            );
            assert!(chunks(&rig).is_empty());
            let m = hook.settings.metrics.clone();
            assert_eq!(m.flushes.with_label_values(&["age", "error"]).get(), 1);
        }

        #[test]
        fn a_requested_flush_and_a_membership_change_empty_the_buffer() {
            let rig = rig();
            let mut hook = hook(&rig, Duration::from_secs(3600));
            assert_eq!(recorded(&rig), None);
            commit(&mut hook, 1).unwrap();
            assert_eq!(
                recorded(&rig),
                Some((ids(&["a", "b", "c"]), 1)),
                "recorded before the first group acknowledged by receipts"
            );
            hook.tick(true).unwrap();
            assert_eq!(
                chunks(&rig),
                [(1, 1)],
                "a requested flush (before a deregistration)"
            );
            assert_eq!(recorded(&rig), None, "nothing outside the bucket: removed");
            let m = hook.settings.metrics.clone();
            assert_eq!(
                m.flushes.with_label_values(&["requested", "success"]).get(),
                1
            );
            hook.tick(true).unwrap();
            assert_eq!(chunks(&rig).len(), 1, "nothing buffered: nothing uploaded");

            // A fourth and fifth node register: groups now need 2 receipts. What was
            // acknowledged with 1 goes to the bucket before the next configuration is recorded.
            commit(&mut hook, 2).unwrap();
            assert!(chunks(&rig).len() == 1 && hook.buffered().0 == 1);
            assert_eq!(recorded(&rig), Some((ids(&["a", "b", "c"]), 1)));
            *rig.members.lock().unwrap() = vec!["a", "b", "c", "d", "e"];
            commit(&mut hook, 3).unwrap();
            assert_eq!(chunks(&rig)[..2], [(1, 1), (2, 1)]);
            assert_eq!(
                m.flushes
                    .with_label_values(&["membership", "success"])
                    .get(),
                1
            );
            assert_eq!(m.required_receipts.get(), 2);
            assert_eq!(recorded(&rig), Some((ids(&["a", "b", "c", "d", "e"]), 2)));

            // Back to three nodes, then one is replaced by another (the receipts needed stay
            // 1): the buffer may hold groups receipted by the node that left alone, which a
            // collection meeting the new configuration does not ask.
            *rig.members.lock().unwrap() = vec!["a", "b", "c"];
            commit(&mut hook, 4).unwrap();
            assert_eq!(hook.buffered().0, 1);
            *rig.members.lock().unwrap() = vec!["a", "b", "d"];
            commit(&mut hook, 5).unwrap();
            assert_eq!(chunks(&rig), [(1, 1), (2, 1), (3, 1), (4, 1)]);
            assert_eq!(
                m.flushes
                    .with_label_values(&["membership", "success"])
                    .get(),
                2
            );
            assert_eq!((hook.buffered().0, m.required_receipts.get()), (1, 1));
            assert_eq!(recorded(&rig), Some((ids(&["a", "b", "d"]), 1)));
            // Alone: nothing by receipts, and nothing for a collection to wait for.
            *rig.members.lock().unwrap() = vec!["a"];
            commit(&mut hook, 6).unwrap();
            assert_eq!(chunks(&rig).len(), 6);
            assert_eq!(recorded(&rig), None);
            *rig.members.lock().unwrap() = vec!["a", "b", "d"];
            commit(&mut hook, 7).unwrap();
            assert_eq!((chunks(&rig).len(), hook.buffered().0), (6, 1));
            // A clean handover leaves nothing for a collection to wait for.
            drop(hook);
            assert_eq!(chunks(&rig).len(), 7);
            assert_eq!(recorded(&rig), None);
        }

        /// Receipts count only from the nodes of the recorded configuration: a node that
        /// follows the epoch but is not in it (registered after the Primary last read the
        /// registrations, or never registered) is not one a collection relies on.
        #[test]
        fn a_receipt_from_outside_the_configuration_does_not_count() {
            let rig = rig();
            // `b` receipts, but the Primary's view holds `a`, `x` and `y`.
            *rig.members.lock().unwrap() = vec!["a", "x", "y"];
            let mut hook = hook(&rig, Duration::from_secs(3600));
            commit(&mut hook, 1).unwrap();
            assert_eq!(chunks(&rig), [(1, 1)], "no counted receipt: the bucket");
            let m = hook.settings.metrics.clone();
            assert_eq!(m.healthy_replicas.get(), 0);
            assert_eq!(recorded(&rig), Some((ids(&["a", "x", "y"]), 1)));
            // Once `b` is in the Primary's view, its receipts count (the configuration is
            // recorded again first).
            *rig.members.lock().unwrap() = vec!["a", "b", "y"];
            commit(&mut hook, 2).unwrap();
            assert_eq!(chunks(&rig), [(1, 1)]);
            assert_eq!(hook.buffered().0, 1);
            assert_eq!(recorded(&rig), Some((ids(&["a", "b", "y"]), 1)));
        }

        /// No group is acknowledged by receipts unless its configuration is in the bucket.
        #[test]
        fn a_configuration_that_cannot_be_recorded_sends_groups_to_the_bucket() {
            let fault = Arc::new(crate::objstore::fault::FaultStore::new(
                Arc::new(object_store::memory::InMemory::new()),
                Default::default(),
                0,
            ));
            let rig = rig_on(fault.clone());
            let mut hook = hook(&rig, Duration::from_secs(3600));
            // The first bucket call of the first group is the configuration's read.
            fault.fail_next(1);
            commit(&mut hook, 1).unwrap();
            assert_eq!(chunks(&rig), [(1, 1)]);
            assert_eq!(recorded(&rig), None);
            commit(&mut hook, 2).unwrap();
            assert_eq!((chunks(&rig).len(), hook.buffered().0), (1, 1));
            assert_eq!(recorded(&rig), Some((ids(&["a", "b", "c"]), 1)));
        }

        #[test]
        fn the_buffer_counts_size_and_age() {
            let t0 = Instant::now();
            let mut b = ChunkBuffer::new(200, Duration::from_secs(60));
            assert!(!b.due(t0));
            b.push(&group(1), t0);
            assert!(!b.due(t0));
            assert!(b.due(t0 + Duration::from_secs(60)));
            b.push(&group(2), t0);
            b.push(&group(3), t0);
            assert!(b.due(t0), "size: {} bytes", b.bytes());
            assert!(!b.over_limit());
            let taken = b.take();
            assert_eq!((taken.len(), b.len(), b.bytes()), (3, 0, 0));
            let order: Vec<i64> = taken.iter().map(|r| r.revision).collect();
            assert_eq!(order, [1, 2, 3]);
            assert!(!b.due(t0 + Duration::from_secs(3600)), "empty: never due");
        }
    }

    #[tokio::test]
    async fn receipts_count_distinct_replicas_of_one_epoch() {
        let r = Receipts::new();
        r.record("b", 3, 10);
        r.record("c", 3, 12);
        r.record("b", 3, 9); // older: ignored
        let bc = ["b".to_string(), "c".to_string()];
        assert_eq!(r.count(3, 10, &bc), 2);
        assert_eq!(
            r.count(3, 10, &bc[..1]),
            1,
            "only the nodes asked about count"
        );
        assert_eq!(r.count(3, 11, &bc), 1);
        assert_eq!(r.count(4, 1, &bc), 0);
        r.record("c", 4, 1); // a newer epoch replaces the node's receipt
        assert_eq!(r.count(3, 10, &bc), 1);
        assert_eq!(r.count(4, 1, &bc), 1);
        r.record("c", 3, 50); // and an older epoch cannot come back
        assert_eq!(r.count(3, 50, &bc), 0);
        assert_eq!(r.healthy(4, Duration::from_secs(60), &bc), 1);
        assert_eq!(r.healthy(3, Duration::from_secs(60), &bc), 1);
        assert_eq!(r.healthy(3, Duration::from_secs(60), &bc[1..]), 0);
        assert_eq!(r.healthy(3, Duration::ZERO, &bc), 0);
    }

    #[tokio::test]
    async fn waiting_for_receipts_ends_when_enough_arrive_or_at_the_timeout() {
        let r = Receipts::new();
        let among = ["b".to_string(), "c".to_string()];
        assert!(!r.wait(1, 5, 1, Duration::from_millis(20), &among).await);
        let waiter = tokio::spawn({
            let (r, among) = (r.clone(), among.clone());
            async move { r.wait(1, 5, 2, Duration::from_secs(10), &among).await }
        });
        r.record("b", 1, 5);
        r.record("b", 1, 6);
        r.record("d", 1, 6); // not among those counted
        assert!(!waiter.is_finished());
        r.record("c", 1, 7);
        assert!(
            tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("the wait ends once two replicas receipted")
                .unwrap()
        );
        // Already met: no wait at all.
        assert!(r.wait(1, 5, 2, Duration::ZERO, &among).await);
    }

    fn rec(revision: i64) -> pb::Record {
        crate::testutil::created(revision, "v")
    }

    fn revisions(records: &[pb::Record]) -> Vec<i64> {
        records.iter().map(|r| r.revision).collect()
    }

    #[tokio::test]
    async fn an_answer_promises_and_holds_committed_then_pending_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::testutil::local_store(dir.path());
        let h = store.current_revision();
        store
            .import(vec![
                crate::durability::from_proto(rec(h + 1)),
                crate::durability::from_proto(rec(h + 2)),
            ])
            .await
            .unwrap();
        let log = PendingLog::open(&dir.path().join("pending")).unwrap();
        let pending = Arc::new(Mutex::new(log));
        pending
            .lock()
            .await
            .append(7, "a", h + 2, &[rec(h + 3), rec(h + 4)])
            .unwrap();

        let got = answer(&store, &pending, 6, 8, h).await.unwrap();
        assert_eq!(got.epoch, 7);
        assert_eq!(revisions(&got.records), [h + 1, h + 2, h + 3, h + 4]);
        let got = answer(&store, &pending, 6, 8, h + 3).await.unwrap();
        assert_eq!(revisions(&got.records), [h + 4]);
        // The promise holds: an older collector is refused, and so are the old writer's records.
        let err = answer(&store, &pending, 6, 7, h).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
        let stale = pending.lock().await.append(7, "a", h + 4, &[rec(h + 5)]);
        assert!(matches!(stale, Err(PendingError::StaleEpoch { .. })));
        // Nothing pending, a newer epoch followed: the answer says so.
        let empty = answer(&store, &pending, 9, 9, h + 4).await.unwrap();
        assert_eq!((empty.epoch, empty.records.len()), (9, 0));
    }
}
