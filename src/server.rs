//! Wiring of one node: listeners, store, services, background tasks, shutdown.
//! The shutdown signal is a parameter so tests can pass their own.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use etcd_client::proto::{
    PbClusterServer, PbKvServer, PbLeaseServer, PbMaintenanceServer, PbWatchServer,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::api::{self, ApiOptions, Context, Member};
use crate::cluster::members::Membership;
use crate::cluster::peer::PeerService;
use crate::cluster::{Cluster, PrimaryInfo, Role};
use crate::config::NodeConfig;
use crate::durability::lock::{BucketLock, LockTiming, Watcher};
use crate::durability::{
    self, BucketHook, EpochLog, SnapshotPolicy, SnapshotWorker, backfill::BackfillError,
};
use crate::health::{self, HealthState};
use crate::metrics::Metrics;
use crate::objstore::ObjectStorage;
use crate::proto::peer_server::PeerServer;
use crate::store::{Store, StoreOptions};
use crate::systemd;
use crate::watch::{RingLimits, WatchHub};
use tokio::runtime::Handle;

/// gRPC framing overhead allowed above the largest request, as etcd does.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Opens the local store and brings it up to date with the bucket; a local copy that does not
/// fit the bucket's history is thrown away and rebuilt once.
async fn load(
    cfg: &NodeConfig,
    hub: &WatchHub,
    storage: &ObjectStorage,
    epochs: &EpochLog,
) -> anyhow::Result<Store> {
    for attempt in 0..2 {
        systemd::status("loading: opening the local database");
        tracing::info!(data_dir = %cfg.data_dir.display(), attempt, "loading_stage_started");
        let hook = durability::ReplicaHook;
        let store = {
            let opts = StoreOptions {
                data_dir: cfg.data_dir.clone(),
                node_id: cfg.node_id.clone(),
                readers: 8,
            };
            let hub = hub.clone();
            tokio::task::spawn_blocking(move || Store::open(opts, hub, Box::new(hook)))
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
        match durability::backfill(&store, storage, &cfg.node_id, epochs, false, &progress).await {
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
            Err(
                e @ (BackfillError::Gap { .. }
                | BackfillError::Store(crate::store::Error::Corrupt(_))),
            ) if attempt == 0 => {
                tracing::warn!(error = %e, "local_db_rebuild_started: the local copy does not fit the bucket");
                store.close().await;
                for suffix in ["", "-wal", "-shm"] {
                    let p = cfg.data_dir.join(format!("db.sqlite3{suffix}"));
                    if let Err(err) = std::fs::remove_file(&p) {
                        if err.kind() != std::io::ErrorKind::NotFound {
                            return Err(err)
                                .with_context(|| format!("cannot remove {}", p.display()));
                        }
                    }
                }
            }
            Err(e) => return Err(e).context("loading from object storage failed"),
        }
    }
    anyhow::bail!("loading from object storage failed twice")
}

/// What a node needs to become the Primary when it wins the writer lock.
struct Promotion {
    storage: ObjectStorage,
    store: Store,
    cluster: Cluster,
    timing: LockTiming,
    committed: Option<(
        tokio::sync::mpsc::Sender<durability::Committed>,
        tokio::sync::mpsc::Receiver<durability::Committed>,
    )>,
    stopping: Arc<AtomicBool>,
    lock_stop: tokio::sync::watch::Receiver<bool>,
    stop: tokio::sync::watch::Receiver<bool>,
    lock_task: Option<tokio::task::JoinHandle<()>>,
}

impl Promotion {
    /// Takes over as the Primary with `lock`: loads what the bucket has beyond the local copy,
    /// records the new epoch, and switches the writer to the bucket hook. A failure here stops
    /// the process (exit 75): the lock is held, and only a restart resolves a half promotion.
    async fn promote(&mut self, cfg: &NodeConfig, lock: BucketLock) {
        let started = std::time::Instant::now();
        self.cluster.set_role(Role::Transition);
        let epoch = lock.epoch();
        let fence = lock.fence();
        self.cluster.set_fence(fence.clone());
        self.lock_task = Some(tokio::spawn(lock.keep(self.lock_stop.clone())));
        let result: anyhow::Result<i64> = async {
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
            let start = self.store.current_revision() + 1;
            let mut log = epochs;
            log.record(&self.storage, epoch, start, &cfg.node_id)
                .await
                .context("recording the writer epoch")?;
            let (tx, rx) = self.committed.take().context("promoted twice")?;
            let hook = BucketHook::new(
                self.storage.clone(),
                cfg.node_id.clone(),
                Handle::current(),
                tx,
                epoch,
                Arc::new(std::sync::RwLock::new(log)),
                self.stopping.clone(),
            )
            .with_fence(fence)
            .with_cluster(self.cluster.clone());
            self.store
                .set_hook(Box::new(hook))
                .await
                .context("switching the writer")?;
            // A new Primary gives every lease its full TTL: it cannot know how long the old one
            // had already waited.
            self.store.leases().refresh_all();
            let snapshots = SnapshotWorker {
                store: self.store.clone(),
                storage: self.storage.clone(),
                node_id: cfg.node_id.clone(),
                temp_dir: cfg.data_dir.clone(),
                policy: snapshot_policy(cfg),
            };
            tokio::spawn(snapshots.run(rx, self.stop.clone()));
            tokio::spawn(api::lease::expiry_loop(
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
        .await;
        match result {
            Ok(start) => {
                self.cluster.set_role(Role::Primary { epoch });
                tracing::info!(
                    epoch,
                    start_revision = start,
                    took_ms = started.elapsed().as_millis() as u64,
                    "writer_epoch_started: this node is the primary"
                );
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "promotion failed; stopping");
                eprintln!("netsy: promotion to primary failed: {e:#}");
                std::process::exit(75);
            }
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

/// Runs a node until `shutdown` completes.
pub async fn run(
    cfg: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Metrics::new(&cfg.node_id, &cfg.cluster_id);
    let serving = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (term_tx, mut term_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = term_tx.send(true);
    });

    let client_listener = TcpListener::bind(cfg.bind_client)
        .await
        .with_context(|| format!("NETSY_BIND_CLIENT: cannot listen on {}", cfg.bind_client))?;
    let peer_listener = TcpListener::bind(cfg.bind_peer)
        .await
        .with_context(|| format!("NETSY_BIND_PEER: cannot listen on {}", cfg.bind_peer))?;
    let health_listener = TcpListener::bind(cfg.bind_health)
        .await
        .with_context(|| format!("NETSY_BIND_HEALTH: cannot listen on {}", cfg.bind_health))?;

    let tls = match &cfg.tls {
        Some(paths) => {
            let tls_metrics =
                crate::tls::TlsMetrics::register(&metrics.registry).context("TLS metrics")?;
            let policy = crate::tls::NodeCertPolicy {
                cluster_id: cfg.cluster_id.clone(),
                node_id: cfg.node_id.clone(),
                advertise: vec![cfg.advertise_client.clone(), cfg.advertise_peer.clone()],
            };
            let reloader = crate::tls::TlsReloader::load(paths.clone(), Some(policy), tls_metrics)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            reloader.spawn_polling(crate::tls::DEFAULT_POLL_INTERVAL);
            Some(reloader)
        }
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };

    let health_state = HealthState {
        serving: serving.clone(),
        phase: Arc::new(std::sync::RwLock::new("loading")),
        metrics: metrics.clone(),
        revisions: Default::default(),
    };
    tokio::spawn(health::serve(
        health_listener,
        health_state.clone(),
        stop_rx.clone(),
    ));

    let hub = WatchHub::new(RingLimits::default());
    let storage = crate::durability::open_storage(&cfg.cluster.storage, &metrics.registry)
        .context("storage: cannot configure object storage")?;
    let timing = LockTiming::from_heartbeat(
        cfg.cluster.heartbeat_interval,
        cfg.cluster.elector.degradation_count,
    );
    if cfg.cluster.replication.quorum != 0 {
        tracing::info!(
            quorum = cfg.cluster.replication.quorum,
            "replication.quorum: every write is made durable in object storage before it is acknowledged (at least as strong as any quorum)"
        );
    }
    systemd::status("loading: registering");
    let membership = Membership::register(
        &storage,
        &cfg.cluster_id,
        &cfg.node_id,
        &cfg.advertise_client,
        &cfg.advertise_peer,
        scheme,
    )
    .await
    .context("storage: cannot register this node")?;
    let epochs = EpochLog::load(&storage)
        .await
        .context("storage: cannot read the writer epochs")?;
    let store = load(&cfg, &hub, &storage, &epochs).await?;
    let _ = health_state.revisions.set(store.revisions().clone());

    let peer_tls = match &tls {
        Some(reloader) => Some(
            crate::tls::peer_client_config(reloader.clone(), &cfg.cluster_id, None)
                .map_err(|e| anyhow::anyhow!("peer client TLS: {e}"))?,
        ),
        None => None,
    };
    let cluster = Cluster::new(cfg.node_id.clone(), store.clone(), hub.clone(), peer_tls);
    let member = Member {
        cluster_id: api::fnv1a64(&cfg.cluster_id),
        member_id: membership.member_id(),
        name: cfg.node_id.clone(),
        client_urls: vec![format!("{scheme}://{}", cfg.advertise_client)],
        peer_urls: vec![format!("{scheme}://{}", cfg.advertise_peer)],
    };
    let ctx = Context {
        store: store.clone(),
        hub,
        member: Arc::new(member),
        options: Arc::new(ApiOptions {
            max_request_bytes: cfg.max_request_bytes,
            progress_notify_interval: cfg.watch_progress_notify_interval,
        }),
        metrics: metrics.clone(),
        serving: serving.clone(),
        cluster: cluster.clone(),
        membership: Some(membership.clone()),
    };

    let (lock_stop_tx, lock_stop_rx) = tokio::sync::watch::channel(false);
    let mut promotion = Promotion {
        storage: storage.clone(),
        store: store.clone(),
        cluster: cluster.clone(),
        timing,
        committed: Some(tokio::sync::mpsc::channel(1024)),
        stopping: Arc::new(AtomicBool::new(false)),
        lock_stop: lock_stop_rx,
        stop: stop_rx.clone(),
        lock_task: None,
    };
    // The role is decided (Primary, or Replica of a known Primary) before anything is served.
    let mut watcher = Watcher::new(storage.clone());
    loop {
        elect_step(&cfg, &mut watcher, &mut promotion).await;
        if cluster.role() != Role::Transition {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(timing.renew_every / 2) => {}
            _ = term_rx.changed() => {
                let _ = stop_tx.send(true);
                let _ = lock_stop_tx.send(true);
                return Ok(());
            }
        }
    }

    // Serving from the first request on: connections may already wait in the listen backlog.
    serving.store(true, Ordering::Release);
    let max_msg = cfg.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let grpc = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(2 * 3600)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(
            PbKvServer::new(api::kv::KvService::new(ctx.clone()))
                .max_decoding_message_size(max_msg),
        )
        .add_service(
            PbWatchServer::new(api::watch::WatchService::new(ctx.clone()))
                .max_decoding_message_size(max_msg),
        )
        .add_service(
            PbLeaseServer::new(api::lease::LeaseService::new(ctx.clone()))
                .max_decoding_message_size(max_msg),
        )
        .add_service(PbClusterServer::new(api::cluster::ClusterService::new(
            ctx.clone(),
        )))
        .add_service(PbMaintenanceServer::new(
            api::maintenance::MaintenanceService::new(ctx.clone()),
        ));
    let peer_grpc = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(
            PeerServer::new(PeerService::new(ctx.clone()))
                .max_decoding_message_size(max_msg)
                .max_encoding_message_size(usize::MAX),
        );

    tokio::spawn(systemd::watchdog(store.clone(), stop_rx.clone()));
    tokio::spawn(crate::cluster::follow(
        cluster.clone(),
        store.clone(),
        stop_rx.clone(),
    ));
    {
        let cluster = cluster.clone();
        tokio::spawn(membership.clone().run(
            cfg.cluster.heartbeat_interval,
            cfg.cluster.elector.deregistration_timeout,
            move || matches!(cluster.role(), Role::Primary { .. }),
            stop_rx.clone(),
        ));
    }

    // The gRPC servers stop first (draining in-flight requests, which may still need the
    // follower), everything else after them.
    let (serve_stop_tx, serve_stop_rx) = tokio::sync::watch::channel(false);
    let stop_signal = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.changed().await;
    };
    let (grpc_task, peer_task) = match &tls {
        Some(reloader) => {
            // TLS 1.2 stays allowed on the client port: etcdctl 3.5 offers only TLS 1.2 when it
            // presents a client certificate. The peer port is TLS 1.3 only.
            let policy = crate::tls::ListenerPolicy::client_port(&cfg.cluster_id).with_tls12(true);
            let server =
                crate::tls::TlsServer::new(reloader.clone(), policy).context("client port TLS")?;
            let peer_policy = crate::tls::ListenerPolicy::peer_port(&cfg.cluster_id);
            let peer_server = crate::tls::TlsServer::new(reloader.clone(), peer_policy)
                .context("peer port TLS")?;
            (
                tokio::spawn(grpc.serve_with_incoming_shutdown(
                    server.incoming(client_listener),
                    stop_signal(serve_stop_rx.clone()),
                )),
                tokio::spawn(peer_grpc.serve_with_incoming_shutdown(
                    peer_server.incoming(peer_listener),
                    stop_signal(serve_stop_rx.clone()),
                )),
            )
        }
        None => (
            tokio::spawn(grpc.serve_with_incoming_shutdown(
                nodelay(client_listener),
                stop_signal(serve_stop_rx.clone()),
            )),
            tokio::spawn(peer_grpc.serve_with_incoming_shutdown(
                nodelay(peer_listener),
                stop_signal(serve_stop_rx.clone()),
            )),
        ),
    };

    health_state.set_phase(cluster.role().name());
    tracing::info!(
        client = %cfg.bind_client,
        peer = %cfg.bind_peer,
        health = %cfg.bind_health,
        role = cluster.role().name(),
        revision = store.current_revision(),
        "serving"
    );
    systemd::ready();

    // Watch the writer lock; take over when the Primary is gone.
    let mut grpc_task = grpc_task;
    let mut tick = tokio::time::interval(timing.renew_every / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = term_rx.changed() => break,
            r = &mut grpc_task => {
                let _ = serve_stop_tx.send(true);
                let _ = stop_tx.send(true);
                let _ = lock_stop_tx.send(true);
                if let Some(t) = promotion.lock_task.take() {
                    let _ = t.await;
                }
                r.context("client server task")?.context("client server failed")?;
                return Ok(());
            }
            _ = tick.tick(), if promotion.lock_task.is_none() => {
                elect_step(&cfg, &mut watcher, &mut promotion).await;
                health_state.set_phase(cluster.role().name());
            }
        }
    }
    tracing::info!("shutting down");
    systemd::stopping();
    let was_primary = matches!(cluster.role(), Role::Primary { .. });
    cluster.set_stopping();
    health_state.set_phase("stopping");
    if was_primary {
        // New writes get "leader changed" at once (not executed: clients retry elsewhere).
        cluster.set_role(Role::Transition);
        // Hand over: no write is in flight once the writer has switched hooks (it runs
        // commands in order), so releasing the lock cannot let a successor overlap a write.
        let drained = tokio::time::timeout(
            Duration::from_secs(5),
            store.set_hook(Box::new(durability::ReplicaHook)),
        )
        .await;
        if drained.is_err() {
            // An upload is stalled: make it give up (the process then exits unanswered).
            promotion.stopping.store(true, Ordering::Release);
            let _ = tokio::time::timeout(
                Duration::from_secs(15),
                store.set_hook(Box::new(durability::ReplicaHook)),
            )
            .await;
        }
        let _ = lock_stop_tx.send(true);
        if let Some(t) = promotion.lock_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        tracing::info!("released the writer lock");
    }
    // Requests still arriving while the servers drain are served (a Replica forwards them);
    // only then does the node stop answering.
    let _ = serve_stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), grpc_task).await;
    serving.store(false, Ordering::Release);
    let _ = tokio::time::timeout(Duration::from_secs(2), peer_task).await;
    let _ = stop_tx.send(true);
    let _ = lock_stop_tx.send(true);
    Ok(())
}

/// Accepted plaintext connections with Nagle's algorithm off (tonic's own `tcp_nodelay`
/// setting does not apply to a caller-supplied incoming stream): a response spanning several
/// segments must not wait for the client's delayed ACK.
fn nodelay(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::StreamExt::map(TcpListenerStream::new(listener), |conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}

/// One look at the writer lock: follow its holder, or take it over when it may be taken.
async fn elect_step(cfg: &NodeConfig, watcher: &mut Watcher, promotion: &mut Promotion) {
    let seen = match watcher.observe().await {
        Ok(seen) => seen,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the writer lock; retrying");
            return;
        }
    };
    if seen.takeable(&promotion.timing, &cfg.node_id) {
        match BucketLock::take(
            &promotion.storage,
            &seen,
            &cfg.node_id,
            &cfg.advertise_peer,
            &cfg.advertise_client,
            promotion.timing,
        )
        .await
        {
            Ok(Some(lock)) => {
                tracing::info!(epoch = lock.epoch(), previous = ?seen.record.as_ref().map(|r| r.leader_id.clone()), "took the writer lock");
                promotion.promote(cfg, lock).await;
            }
            Ok(None) => tracing::info!("another node took the writer lock first"),
            Err(e) => tracing::warn!(error = %e, "taking the writer lock failed; retrying"),
        }
        return;
    }
    if let Some(r) = &seen.record {
        promotion.cluster.set_role(Role::Replica {
            primary: PrimaryInfo {
                node_id: r.leader_id.clone(),
                peer_addr: r.leader_addr.clone(),
                epoch: r.epoch,
            },
        });
    }
}
