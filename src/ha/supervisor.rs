//! The one owner of a node's role. It watches the writer lock, follows its holder as a Replica,
//! takes the lock over when the holder is gone, promotes this node (loads the bucket's tail,
//! records the new epoch, switches the writer to the bucket hook, starts the Primary's
//! background work) and, at shutdown, hands the lock over. `server.rs` only wires it.
//!
//! A quorum write path belongs here too: it changes which commit hook promotion installs and
//! what a takeover must collect first, not the api or the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};

use super::collect;
use super::lock::{BucketLock, LockTiming, Watcher};
use super::quorum::{ChunkBuffer, QuorumHook, QuorumSettings, Uploads};
use super::wal;
use super::{Cluster, PrimaryInfo, Role};
use crate::config::NodeConfig;
use crate::durability::backfill::BackfillError;
use crate::durability::{self, BucketHook, EpochLog, SnapshotPolicy, SnapshotWorker};
use crate::fatal::{Fatal, FatalChannel};
use crate::objstore::ObjectStorage;
use crate::store::{Action, Store, StoreOptions};
use crate::systemd;
use crate::watch::WatchHub;

/// Opens the local store and brings it up to date with the bucket; a local copy that does not
/// fit the bucket's history is thrown away and rebuilt once.
pub(crate) async fn load(
    cfg: &NodeConfig,
    hub: &WatchHub,
    storage: &ObjectStorage,
    epochs: &EpochLog,
    fatal: &FatalChannel,
) -> anyhow::Result<Store> {
    for attempt in 0..2 {
        systemd::status("loading: opening the local database");
        tracing::info!(data_dir = %cfg.data_dir.display(), attempt, "loading_stage_started");
        let store = {
            let opts = StoreOptions {
                data_dir: cfg.data_dir.clone(),
                node_id: cfg.node_id.clone(),
                readers: 8,
                fatal: fatal.clone(),
            };
            let hub = hub.clone();
            tokio::task::spawn_blocking(move || {
                Store::open(opts, hub, Box::new(durability::ReplicaHook))
            })
            .await
            .context("store task")?
            .with_context(|| {
                format!(
                    "NETSY_DATA_DIR: cannot open the local database in {}",
                    cfg.data_dir.display()
                )
            })?
        };
        let progress = |line: &str| {
            tracing::info!("{line}");
            systemd::status(line);
        };
        let err =
            match durability::backfill(&store, storage, &cfg.node_id, epochs, false, &progress)
                .await
            {
                Ok(stats) => {
                    tracing::info!(
                        snapshot = ?stats.snapshot_revision,
                        chunks = stats.chunks,
                        records = stats.records,
                        bytes = stats.bytes,
                        seconds = stats.seconds,
                        records_per_second = stats.records as f64 / stats.seconds.max(0.001),
                        revision = stats.latest_revision,
                        leases = stats.leases,
                        compaction = stats.compaction_revision,
                        orphans = stats.orphans,
                        "loading_stage_completed"
                    );
                    store.leases().refresh_all();
                    return Ok(store);
                }
                Err(e) => e,
            };
        let rebuild = match &err {
            BackfillError::Gap { .. } => true,
            BackfillError::Store(e) => e.action() == Action::Rebuild,
            _ => false,
        };
        if !rebuild || attempt > 0 {
            return Err(err).context("loading from object storage failed");
        }
        tracing::warn!(error = %err, "local_db_rebuild_started: the local copy does not fit the bucket");
        store.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let p = cfg.data_dir.join(format!("db.sqlite3{suffix}"));
            if let Err(e) = std::fs::remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(e).with_context(|| format!("cannot remove {}", p.display()));
            }
        }
    }
    anyhow::bail!("loading from object storage failed twice")
}

/// Owns the role of one node (see the module comment).
pub(crate) struct Supervisor {
    cfg: Arc<NodeConfig>,
    storage: ObjectStorage,
    store: Store,
    cluster: Cluster,
    timing: LockTiming,
    watcher: Watcher,
    fatal: FatalChannel,
    /// Handed to the bucket hook on promotion; its receiver feeds the snapshot worker.
    committed: Option<(
        mpsc::Sender<durability::Committed>,
        mpsc::Receiver<durability::Committed>,
    )>,
    /// Makes a stalled upload give up (at shutdown).
    stopping: Arc<AtomicBool>,
    lock_stop: watch::Sender<bool>,
    lock_task: Option<tokio::task::JoinHandle<()>>,
    /// Stops the Primary's background work.
    stop: watch::Receiver<bool>,
    quorum_metrics: super::QuorumMetrics,
}

impl Supervisor {
    pub(crate) fn new(
        cfg: Arc<NodeConfig>,
        storage: ObjectStorage,
        store: Store,
        cluster: Cluster,
        fatal: FatalChannel,
        stop: watch::Receiver<bool>,
        quorum_metrics: super::QuorumMetrics,
    ) -> Supervisor {
        let timing = LockTiming::from_heartbeat(
            cfg.cluster.heartbeat_interval,
            cfg.cluster.elector.degradation_count,
        );
        Supervisor {
            watcher: Watcher::new(storage.clone()),
            cfg,
            storage,
            store,
            cluster,
            timing,
            fatal,
            committed: Some(mpsc::channel(1024)),
            stopping: Arc::new(AtomicBool::new(false)),
            lock_stop: watch::channel(false).0,
            lock_task: None,
            stop,
            quorum_metrics,
        }
    }

    /// Decides the role (Primary, or Replica of a known Primary) before anything is served.
    /// False if `cancel` fired first.
    pub(crate) async fn decide(&mut self, cancel: &mut watch::Receiver<bool>) -> bool {
        loop {
            self.step().await;
            if self.cluster.role() != Role::Transition {
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.timing.look_every) => {}
                _ = cancel.changed() => return false,
            }
        }
    }

    /// Watches the lock until `cancel` fires (follows a new holder; takes over when it is gone);
    /// `on_role` sees every role after a look.
    pub(crate) async fn run(
        &mut self,
        cancel: &mut watch::Receiver<bool>,
        on_role: impl Fn(&Role),
    ) {
        let mut tick = tokio::time::interval(self.timing.look_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.changed() => return,
                _ = tick.tick(), if self.lock_task.is_none() => {
                    self.step().await;
                    on_role(&self.cluster.role());
                }
            }
        }
    }

    /// One look at the writer lock: follow its holder, or take it over when it may be taken.
    async fn step(&mut self) {
        let seen = match self.watcher.observe().await {
            Ok(seen) => seen,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the writer lock; retrying");
                return;
            }
        };
        let cfg = self.cfg.clone();
        if seen.takeable(&self.timing, &cfg.node_id) {
            match BucketLock::take(
                &self.storage,
                &seen,
                &cfg.node_id,
                &cfg.advertise_peer,
                &cfg.advertise_client,
                self.timing,
            )
            .await
            {
                Ok(Some(lock)) => {
                    tracing::info!(epoch = lock.epoch(), previous = ?seen.record.as_ref().map(|r| r.leader_id.clone()), "took the writer lock");
                    self.promote(lock).await;
                }
                Ok(None) => tracing::info!("another node took the writer lock first"),
                Err(e) => tracing::warn!(error = %e, "taking the writer lock failed; retrying"),
            }
            return;
        }
        if let Some(r) = &seen.record {
            self.cluster.set_role(Role::Replica {
                primary: PrimaryInfo {
                    node_id: r.leader_id.clone(),
                    peer_addr: r.leader_addr.clone(),
                    epoch: r.epoch,
                },
            });
        }
    }

    /// Takes over as the Primary with `lock`: loads what the bucket has beyond the local copy,
    /// records the new epoch, and switches the writer to the bucket hook. A failure here is
    /// fatal: the lock is held, and only a restart resolves a half promotion.
    async fn promote(&mut self, lock: BucketLock) {
        let started = std::time::Instant::now();
        self.cluster.set_role(Role::Transition);
        let epoch = lock.epoch();
        let fence = lock.fence();
        self.cluster.set_fence(fence.clone());
        self.lock_task = Some(tokio::spawn(
            lock.keep(self.lock_stop.subscribe(), self.fatal.clone()),
        ));
        match self.start_writing(epoch, fence).await {
            Ok(start) => {
                self.cluster.set_role(Role::Primary { epoch });
                tracing::info!(
                    epoch,
                    start_revision = start,
                    took_ms = started.elapsed().as_millis() as u64,
                    "writer_epoch_started: this node is the primary"
                );
            }
            Err(e) => self.fatal.record(Fatal::Promotion(format!("{e:#}"))),
        }
    }

    async fn start_writing(&mut self, epoch: u64, fence: durability::Fence) -> anyhow::Result<i64> {
        let cfg = self.cfg.clone();
        let epochs = EpochLog::load(&self.storage)
            .await
            .context("reading the writer epochs")?;
        let progress = |line: &str| tracing::info!("{line}");
        let stats = durability::backfill(
            &self.store,
            &self.storage,
            &cfg.node_id,
            &epochs,
            true,
            &progress,
        )
        .await
        .context("loading the bucket's tail")?;
        // Quorum mode: what Replicas acknowledged and the bucket may not have yet is
        // collected before anything is served (docs/design/0010, "Failover").
        let quorum = if cfg.quorum_writes {
            cfg.cluster.replication.quorum
        } else {
            0
        };
        let nodes = self.cluster.members().len().max(1);
        let required = collect::required_receipts(quorum, nodes);
        // A local bucket directory may hold a write-ahead log of an earlier writer (0011).
        let storage_cfg = &cfg.cluster.storage;
        let wal_logs = match (&storage_cfg.provider, &storage_cfg.local_dir) {
            (crate::objstore::Provider::Local, Some(dir)) => {
                Some(wal::logs_dir(dir, &storage_cfg.key_prefix))
            }
            _ => None,
        };
        let logged_above = |head: i64| -> anyhow::Result<Vec<crate::proto::Record>> {
            let Some(logs) = &wal_logs else {
                return Ok(Vec::new());
            };
            wal::adoptable(logs, epoch, head)
                .context("reading the earlier writer's write-ahead log")
        };
        // The acknowledgement configurations of earlier epochs: one in the bucket means its
        // writer may have acknowledged records by receipts that are not in the bucket yet.
        let configs = collect::load_configs(&self.storage, epoch)
            .await
            .context("reading the acknowledgement configurations")?;
        if !configs.is_empty() && self.cluster.pending().is_none() {
            anyhow::bail!(
                "writer epoch {} acknowledged writes by replicas' receipts that may not be in the bucket yet; \
                 only a node with quorum writes on (NETSY_QUORUM_WRITES not false, replication.quorum != 0) can collect them",
                configs[configs.len() - 1].epoch
            );
        }
        let mut log = epochs;
        let (start, adopted) = match (!configs.is_empty()).then_some(&configs) {
            Some(configs) => {
                let head = durability::backfill::bucket_head(&self.storage, &log)
                    .await
                    .context("reading the bucket's last revision")?;
                // The epoch owns everything above the bucket's head, recorded before the
                // collection: an older writer's chunk landing from now on (a late upload) is an
                // orphan for every node that loads the bucket, not only for this one; what the
                // older writer acknowledged is collected and uploaded as this epoch's first
                // chunk (docs/design/0010, "Failover").
                log.record(&self.storage, epoch, head + 1, &cfg.node_id)
                    .await
                    .context("recording the writer epoch")?;
                let mut adopted =
                    collect::collect(&self.cluster, &self.store, epoch, head, configs, &fence)
                        .await
                        .context("collecting the replicas' records")?;
                let logged = logged_above(head)?;
                if logged.len() > adopted.len() {
                    adopted = logged;
                }
                if let Some(first) = adopted.first()
                    && first.revision != head + 1
                {
                    anyhow::bail!(
                        "the collected records start at revision {}, not right above the bucket's head {head}",
                        first.revision
                    );
                }
                (head + 1, adopted)
            }
            None => {
                // Records an earlier writer logged but did not upload (0011): adopted like
                // collected ones, right above the bucket's head.
                let mut logged = Vec::new();
                let mut start = self.store.current_revision() + 1;
                if wal_logs.is_some() {
                    let head = durability::backfill::bucket_head(&self.storage, &log)
                        .await
                        .context("reading the bucket's last revision")?;
                    logged = logged_above(head)?;
                    if !logged.is_empty() {
                        start = head + 1;
                    }
                }
                log.record(&self.storage, epoch, start, &cfg.node_id)
                    .await
                    .context("recording the writer epoch")?;
                (start, logged)
            }
        };
        let (tx, rx) = self.committed.take().context("promoted twice")?;
        let mut bucket = BucketHook::new(
            self.storage.clone(),
            cfg.node_id.clone(),
            Handle::current(),
            tx,
            epoch,
            Arc::new(std::sync::RwLock::new(log)),
            self.stopping.clone(),
        )
        .with_fence(fence.clone());
        if !adopted.is_empty() {
            // Into the bucket (as this epoch's first chunk) before the local copy: the local
            // copy only ever holds committed records.
            let records: Vec<_> = adopted.into_iter().map(durability::from_proto).collect();
            let (back, records, res) = tokio::task::spawn_blocking(move || {
                let mut bucket = bucket;
                let res = crate::store::CommitHook::persist(&mut bucket, &records);
                (bucket, records, res)
            })
            .await
            .context("adoption task")?;
            bucket = back;
            res.map_err(|e| anyhow::anyhow!("uploading the adopted records: {e:?}"))?;
            tracing::info!(
                records = records.len(),
                through = records.last().map(|r| r.revision),
                "adopted records collected from the replicas or an earlier writer's log"
            );
            self.store
                .import(records)
                .await
                .context("applying the adopted records")?;
        }
        if let Some(logs) = &wal_logs {
            // Everything of the older logs is in the bucket now.
            wal::remove_older(logs, epoch).context("removing earlier writers' logs")?;
        }
        let hook: Box<dyn crate::store::CommitHook> = if quorum != 0 {
            let chunk_buffer = &cfg.cluster.replication.chunk_buffer;
            let members = self.cluster.clone();
            let settings = QuorumSettings {
                quorum,
                node_id: cfg.node_id.clone(),
                members: Box::new(move || members.members()),
                storage: self.storage.clone(),
                healthy_within: cfg.cluster.heartbeat_interval
                    * cfg.cluster.replication.degradation_count.max(1),
                receipt_timeout: RECEIPT_TIMEOUT,
                threshold_bytes: chunk_buffer.threshold_size_mb.saturating_mul(1 << 20),
                threshold_age: Duration::from_secs(
                    chunk_buffer.threshold_age_minutes.saturating_mul(60),
                ),
                metrics: self.quorum_metrics.clone(),
            };
            tracing::info!(
                quorum,
                required,
                nodes,
                "quorum write path: writes are acknowledged by replicas' receipts"
            );
            tokio::spawn(tick(self.store.clone(), self.stop.clone()));
            Box::new(QuorumHook::new(
                bucket,
                self.cluster.receipts().clone(),
                self.cluster.feed().clone(),
                Handle::current(),
                Some(fence),
                epoch,
                settings,
                self.store.current_revision(),
            ))
        } else if let Some(logs) = wal_logs.as_ref().filter(|_| nodes == 1) {
            let chunk_buffer = &cfg.cluster.replication.chunk_buffer;
            let members = self.cluster.clone();
            let committed = self.store.current_revision();
            let uploads = Uploads::new(
                bucket,
                Handle::current(),
                ChunkBuffer::new(
                    chunk_buffer.threshold_size_mb.saturating_mul(1 << 20),
                    wal::BATCH_AGE,
                ),
                committed,
                self.quorum_metrics.clone(),
            );
            let hook = wal::LocalLogHook::open(
                logs,
                uploads,
                Box::new(self.cluster.clone()),
                cfg.node_id.clone(),
                epoch,
                fence,
                Box::new(move || members.members().len().max(1)),
                committed,
            )
            .with_context(|| format!("opening the write-ahead log in {}", logs.display()))?;
            tracing::info!(
                log = %logs.display(),
                "single node on a local bucket: writes are acknowledged from the write-ahead log in the bucket directory"
            );
            tokio::spawn(tick(self.store.clone(), self.stop.clone()));
            Box::new(hook)
        } else {
            Box::new(bucket.with_fanout(self.cluster.clone()))
        };
        self.store
            .set_hook(hook)
            .await
            .context("switching the writer")?;
        if !configs.is_empty() {
            // What those epochs acknowledged is in the bucket now (collected and uploaded above).
            match collect::remove_configs_below(&self.storage, epoch).await {
                Ok(n) => tracing::debug!(
                    removed = n,
                    "earlier acknowledgement configurations removed"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "removing earlier acknowledgement configurations failed; the next collection waits for their nodes too")
                }
            }
        }
        // A new Primary gives every lease its full TTL: it cannot know how long the old one had
        // already waited.
        self.store.leases().refresh_all();
        let snapshots = SnapshotWorker {
            store: self.store.clone(),
            storage: self.storage.clone(),
            node_id: cfg.node_id.clone(),
            temp_dir: cfg.data_dir.clone(),
            policy: snapshot_policy(&cfg),
        };
        tokio::spawn(snapshots.run(rx, self.stop.clone()));
        tokio::spawn(crate::store::retention::expiry_loop(
            self.store.clone(),
            self.stop.clone(),
        ));
        if let Some(interval) = cfg.cluster.compaction_interval.filter(|d| !d.is_zero()) {
            tokio::spawn(crate::store::retention::run(
                self.store.clone(),
                interval,
                self.stop.clone(),
            ));
        }
        tracing::info!(
            chunks = stats.chunks,
            records = stats.records,
            orphans = stats.orphans,
            "loaded the bucket's tail"
        );
        Ok(start)
    }

    /// At shutdown: a Primary stops taking writes, lets the one in flight finish (or give up
    /// after a stall), and releases the lock so another node takes over at once.
    pub(crate) async fn hand_over(&mut self) {
        if !matches!(self.cluster.role(), Role::Primary { .. }) {
            return;
        }
        // New writes get "leader changed" at once (not executed: clients retry elsewhere).
        self.cluster.set_role(Role::Transition);
        // No write is in flight once the writer has switched hooks (it runs commands in
        // order), so releasing the lock cannot let a successor overlap a write.
        let drained = tokio::time::timeout(
            Duration::from_secs(5),
            self.store.set_hook(Box::new(durability::ReplicaHook)),
        )
        .await;
        if drained.is_err() {
            // An upload is stalled: make it give up (the process then exits unanswered).
            self.stopping.store(true, Ordering::Release);
            let _ = tokio::time::timeout(
                Duration::from_secs(15),
                self.store.set_hook(Box::new(durability::ReplicaHook)),
            )
            .await;
        }
        self.release(Duration::from_secs(5)).await;
        tracing::info!("released the writer lock");
    }

    /// Stops keeping the lock (the lock task releases it), waiting at most `wait`.
    pub(crate) async fn release(&mut self, wait: Duration) {
        let _ = self.lock_stop.send(true);
        if let Some(t) = self.lock_task.take() {
            let _ = tokio::time::timeout(wait, t).await;
        }
    }
}

/// How long a group waits for its receipts before it goes to the bucket (the original's 1 s).
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the writer's time-driven work runs (the chunk buffer's age trigger).
const TICK: Duration = Duration::from_millis(100);

/// Runs the commit hook's time-driven work until `stop` (a Replica's hook has none).
async fn tick(store: Store, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {
                if let Err(e) = store.tick().await
                    && e.action() == Action::Stop
                {
                    return;
                }
            }
            _ = stop.changed() => return,
        }
    }
}

fn snapshot_policy(cfg: &NodeConfig) -> SnapshotPolicy {
    SnapshotPolicy {
        threshold_records: cfg.cluster.snapshot.threshold_records,
        threshold_bytes: u64::try_from(cfg.cluster.snapshot.threshold_size_mb)
            .unwrap_or(u64::MAX / 2)
            << 20,
        threshold_age: Duration::from_secs(
            u64::try_from(cfg.cluster.snapshot.threshold_age_minutes).unwrap_or(0) * 60,
        ),
        retention_count: cfg.cluster.snapshot.retention_count,
    }
}
