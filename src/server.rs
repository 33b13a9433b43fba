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
use crate::health::{self, HealthState};
use crate::metrics::Metrics;
use crate::store::{NoopCommitHook, Store, StoreOptions};
use crate::systemd;
use crate::watch::{RingLimits, WatchHub};

/// gRPC framing overhead allowed above the largest request, as etcd does.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Runs a node until `shutdown` completes.
pub async fn run(
    cfg: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Metrics::new(&cfg.node_id, &cfg.cluster_id);
    let serving = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let client_listener = TcpListener::bind(cfg.bind_client)
        .await
        .with_context(|| format!("NETSY_BIND_CLIENT: cannot listen on {}", cfg.bind_client))?;
    let health_listener = TcpListener::bind(cfg.bind_health)
        .await
        .with_context(|| format!("NETSY_BIND_HEALTH: cannot listen on {}", cfg.bind_health))?;

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

    systemd::status("loading: opening the local database");
    tracing::info!(data_dir = %cfg.data_dir.display(), "loading_stage_started");
    let hub = WatchHub::new(RingLimits::default());
    let store = {
        let opts = StoreOptions {
            data_dir: cfg.data_dir.clone(),
            node_id: cfg.node_id.clone(),
            readers: 4,
        };
        let hub = hub.clone();
        tokio::task::spawn_blocking(move || Store::open(opts, hub, Box::new(NoopCommitHook)))
            .await
            .context("store task")?
            .with_context(|| {
                format!(
                    "NETSY_DATA_DIR: cannot open the local database in {}",
                    cfg.data_dir.display()
                )
            })?
    };
    let _ = health_state.revisions.set(store.revisions().clone());
    let member = Member {
        cluster_id: api::fnv1a64(&cfg.cluster_id),
        member_id: api::fnv1a64(&cfg.node_id),
        name: cfg.node_id.clone(),
        client_urls: vec![format!("http://{}", cfg.advertise_client)],
        peer_urls: vec![format!("http://{}", cfg.advertise_peer)],
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
    let grpc_task = tokio::spawn(grpc.serve_with_incoming_shutdown(
        TcpListenerStream::new(client_listener),
        async move {
            let _ = grpc_stop.changed().await;
        },
    ));

    serving.store(true, Ordering::Release);
    health_state.set_phase("healthy");
    tracing::info!(
        client = %cfg.bind_client,
        health = %cfg.bind_health,
        revision = store.current_revision(),
        "serving"
    );
    systemd::ready();

    tokio::select! {
        _ = shutdown => {}
        r = grpc_task => {
            let _ = stop_tx.send(true);
            r.context("client server task")?.context("client server failed")?;
            return Ok(());
        }
    }
    tracing::info!("shutting down");
    systemd::stopping();
    serving.store(false, Ordering::Release);
    health_state.set_phase("stopping");
    let _ = stop_tx.send(true);
    Ok(())
}
