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
use crate::config::NodeConfig;
use crate::durability::lock::BucketLock;
use crate::durability::{
    self, BucketHook, SnapshotPolicy, SnapshotWorker, backfill::BackfillError,
};
use crate::health::{self, HealthState};
use crate::metrics::Metrics;
use crate::objstore::ObjectStorage;
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
    committed: tokio::sync::mpsc::Sender<crate::durability::Committed>,
) -> anyhow::Result<Store> {
    for attempt in 0..2 {
        systemd::status("loading: opening the local database");
        tracing::info!(data_dir = %cfg.data_dir.display(), attempt, "loading_stage_started");
        let hook = BucketHook::new(
            storage.clone(),
            cfg.node_id.clone(),
            Handle::current(),
            committed.clone(),
        );
        let store = {
            let opts = StoreOptions {
                data_dir: cfg.data_dir.clone(),
                node_id: cfg.node_id.clone(),
                readers: 4,
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
        match durability::backfill(&store, storage, &cfg.node_id, &progress).await {
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
    let Some(lock) = acquire_lock(&cfg, &storage, &health_state, &mut term_rx).await else {
        let _ = stop_tx.send(true);
        return Ok(());
    };
    let (lock_stop_tx, lock_stop_rx) = tokio::sync::watch::channel(false);
    let lock_task = tokio::spawn(lock.keep(lock_stop_rx));
    let (committed_tx, committed_rx) = tokio::sync::mpsc::channel(1024);
    let store = load(&cfg, &hub, &storage, committed_tx).await?;
    let _ = health_state.revisions.set(store.revisions().clone());
    let snapshots = SnapshotWorker {
        store: store.clone(),
        storage: storage.clone(),
        node_id: cfg.node_id.clone(),
        temp_dir: cfg.data_dir.clone(),
        policy: SnapshotPolicy {
            threshold_records: cfg.cluster.snapshot.threshold_records,
            threshold_bytes: u64::try_from(cfg.cluster.snapshot.threshold_size_mb)
                .unwrap_or(u64::MAX / 2)
                << 20,
            threshold_age: Duration::from_secs(
                u64::try_from(cfg.cluster.snapshot.threshold_age_minutes).unwrap_or(0) * 60,
            ),
            retention_count: cfg.cluster.snapshot.retention_count,
        },
    };
    tokio::spawn(snapshots.run(committed_rx, stop_rx.clone()));
    let member = Member {
        cluster_id: api::fnv1a64(&cfg.cluster_id),
        member_id: api::fnv1a64(&cfg.node_id),
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
    };

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

    tokio::spawn(api::lease::expiry_loop(store.clone(), stop_rx.clone()));
    tokio::spawn(systemd::watchdog(store.clone(), stop_rx.clone()));

    let mut grpc_stop = stop_rx.clone();
    let stop = async move {
        let _ = grpc_stop.changed().await;
    };
    let grpc_task = match &tls {
        Some(reloader) => {
            // TLS 1.2 stays allowed on the client port: etcdctl 3.5 offers only TLS 1.2 when it
            // presents a client certificate. The peer port is TLS 1.3 only.
            let policy = crate::tls::ListenerPolicy::client_port(&cfg.cluster_id).with_tls12(true);
            let server =
                crate::tls::TlsServer::new(reloader.clone(), policy).context("client port TLS")?;
            tokio::spawn(grpc.serve_with_incoming_shutdown(server.incoming(client_listener), stop))
        }
        None => tokio::spawn(
            grpc.serve_with_incoming_shutdown(TcpListenerStream::new(client_listener), stop),
        ),
    };

    serving.store(true, Ordering::Release);
    health_state.set_phase("healthy");
    tracing::info!(
        client = %cfg.bind_client,
        health = %cfg.bind_health,
        revision = store.current_revision(),
        "serving"
    );
    systemd::ready();

    let mut grpc_task = grpc_task;
    tokio::select! {
        _ = term_rx.changed() => {}
        r = &mut grpc_task => {
            let _ = stop_tx.send(true);
            let _ = lock_stop_tx.send(true);
            let _ = lock_task.await;
            r.context("client server task")?.context("client server failed")?;
            return Ok(());
        }
    }
    tracing::info!("shutting down");
    systemd::stopping();
    serving.store(false, Ordering::Release);
    health_state.set_phase("stopping");
    let _ = stop_tx.send(true);
    // Stop serving first, then hand the bucket over: a standby takes over at once.
    let _ = tokio::time::timeout(Duration::from_secs(10), grpc_task).await;
    let _ = lock_stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), lock_task).await;
    Ok(())
}

/// Waits until this node holds the bucket's writer lock (a standby until then). None when
/// asked to shut down first.
async fn acquire_lock(
    cfg: &NodeConfig,
    storage: &ObjectStorage,
    health: &HealthState,
    term: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<BucketLock> {
    let mut reported = String::new();
    loop {
        match BucketLock::try_acquire(storage, &cfg.node_id, &cfg.advertise_peer).await {
            Ok(Ok(lock)) => return Some(lock),
            Ok(Err(holder)) => {
                if holder != reported {
                    tracing::info!(holder = %holder, "standby: another node writes to this bucket; waiting to take over");
                    systemd::status(&format!("standby: {holder} holds the bucket"));
                    health.set_phase("standby");
                    reported = holder;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the writer lock; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(crate::durability::lock::RENEW_EVERY) => {}
            _ = term.changed() => return None,
        }
    }
}
