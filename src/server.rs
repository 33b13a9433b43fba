//! Wiring of one node: listeners, store, services, background tasks, shutdown. Roles are
//! `ha::Supervisor`'s; the gRPC servers are built in `grpc`; fatal errors end `run` with a
//! [`crate::fatal::Fatal`] error, which `main` turns into
//! the exit code. The shutdown signal is a parameter so tests can pass their own.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, ApiOptions, Context, Member};
use crate::config::NodeConfig;
use crate::durability::EpochLog;
use crate::fatal::FatalChannel;
use crate::grpc;
use crate::ha::members::Membership;
use crate::ha::{Cluster, Supervisor};
use crate::health::{self, HealthState};
use crate::metrics::Metrics;
use crate::systemd;
use crate::watch::{RingLimits, WatchHub};

/// Runs a node until `shutdown` completes, or until a fatal error (returned as [`Fatal`]).
pub async fn run(
    cfg: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let fatal = FatalChannel::new();
    let metrics = Metrics::new(&cfg.node_id, &cfg.cluster_id);
    let serving = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (term_tx, mut term_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = term_tx.send(true);
    });

    let bind = |addr, key: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("{key}: cannot listen on {addr}"))
    };
    let client_listener = bind(cfg.bind_client, "NETSY_BIND_CLIENT").await?;
    let peer_listener = bind(cfg.bind_peer, "NETSY_BIND_PEER").await?;
    let health_listener = bind(cfg.bind_health, "NETSY_BIND_HEALTH").await?;
    let tls = grpc::node_tls(&cfg, &metrics)?;
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
    let store = crate::ha::supervisor::load(&cfg, &hub, &storage, &epochs, &fatal).await?;
    let _ = health_state.revisions.set(store.revisions().clone());

    let peer_tls = match &tls {
        Some(reloader) => Some(
            crate::tls::peer_client_config(reloader.clone(), &cfg.cluster_id, None)
                .map_err(|e| anyhow::anyhow!("peer client TLS: {e}"))?,
        ),
        None => None,
    };
    let cluster = Cluster::new(
        cfg.node_id.clone(),
        store.clone(),
        hub.clone(),
        peer_tls,
        Some(membership.clone()),
    );
    cluster
        .open_pending(&cfg.data_dir.join("pending"))
        .with_context(|| format!("NETSY_DATA_DIR: {}", cfg.data_dir.display()))?;
    let ctx = Context {
        store: store.clone(),
        hub,
        member: Arc::new(Member {
            cluster_id: api::fnv1a64(&cfg.cluster_id),
            member_id: membership.member_id(),
            name: cfg.node_id.clone(),
            client_urls: vec![format!("{scheme}://{}", cfg.advertise_client)],
            peer_urls: vec![format!("{scheme}://{}", cfg.advertise_peer)],
        }),
        options: Arc::new(ApiOptions {
            max_request_bytes: cfg.max_request_bytes,
            progress_notify_interval: cfg.watch_progress_notify_interval,
        }),
        metrics: metrics.clone(),
        serving: serving.clone(),
        router: Arc::new(cluster.clone()),
    };

    let quorum_metrics =
        crate::ha::QuorumMetrics::register(&metrics.registry).context("quorum metrics")?;
    let mut supervisor = Supervisor::new(
        cfg.clone(),
        storage,
        store.clone(),
        cluster.clone(),
        fatal.clone(),
        stop_rx.clone(),
        quorum_metrics,
    );
    // The role is decided before anything is served.
    let decided = tokio::select! {
        decided = supervisor.decide(&mut term_rx) => decided,
        f = fatal.wait() => return Err(anyhow::Error::new(f)),
    };
    if !decided {
        let _ = stop_tx.send(true);
        supervisor.release(Duration::ZERO).await;
        return Ok(());
    }

    // Serving from the first request on: connections may already wait in the listen backlog.
    serving.store(true, Ordering::Release);
    let (serve_stop_tx, serve_stop_rx) = watch::channel(false);
    let (grpc_task, peer_task) = grpc::serve(
        &cfg,
        tls.as_ref(),
        ctx.clone(),
        cluster.clone(),
        (client_listener, peer_listener),
        serve_stop_rx,
    )?;
    tokio::spawn(systemd::watchdog(store.clone(), stop_rx.clone()));
    tokio::spawn(crate::ha::follow(
        cluster.clone(),
        store.clone(),
        stop_rx.clone(),
    ));
    {
        let cluster = cluster.clone();
        tokio::spawn(membership.clone().run(
            cfg.cluster.heartbeat_interval,
            cfg.cluster.elector.deregistration_timeout,
            move || matches!(cluster.role(), crate::ha::Role::Primary { .. }),
            {
                let store = store.clone();
                Box::new(move || {
                    let store = store.clone();
                    Box::pin(async move { store.flush().await.is_ok() })
                })
            },
            stop_rx.clone(),
        ));
    }
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

    // Watch the writer lock (take over when the Primary is gone) until shutdown, a fatal error,
    // or the client server stopping on its own.
    let mut grpc_task = grpc_task;
    let ended = tokio::select! {
        _ = supervisor.run(&mut term_rx, |role| health_state.set_phase(role.name())) => None,
        f = fatal.wait() => Some(Err(f)),
        r = &mut grpc_task => Some(Ok(r)),
    };
    match ended {
        None => {}
        Some(Err(f)) => {
            // No handover: the lock stays until its TTL (or a successor) and nothing more is
            // acknowledged; a restart resolves it.
            let _ = stop_tx.send(true);
            return Err(anyhow::Error::new(f));
        }
        Some(Ok(r)) => {
            let _ = serve_stop_tx.send(true);
            let _ = stop_tx.send(true);
            supervisor.release(Duration::from_secs(5)).await;
            r.context("client server task")?
                .context("client server failed")?;
            return Ok(());
        }
    }
    tracing::info!("shutting down");
    systemd::stopping();
    cluster.set_stopping();
    health_state.set_phase("stopping");
    supervisor.hand_over().await;
    // Requests still arriving while the servers drain are served (a Replica forwards them);
    // only then does the node stop answering.
    let _ = serve_stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), grpc_task).await;
    serving.store(false, Ordering::Release);
    let _ = tokio::time::timeout(Duration::from_secs(2), peer_task).await;
    let _ = stop_tx.send(true);
    supervisor.release(Duration::ZERO).await;
    match fatal.get() {
        Some(f) => Err(anyhow::Error::new(f)),
        None => Ok(()),
    }
}
