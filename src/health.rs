//! The plain-HTTP health port: `/livez`, `/health`, `/readyz`, `/version`, `/metrics`.
//! It serves no data. Every connection has a header-read timeout and an overall deadline, so a
//! slow or idle client cannot hold resources.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::api::{ETCD_CLUSTER_VERSION, ETCD_VERSION};
use crate::metrics::Metrics;

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);

/// What the health endpoints report.
#[derive(Clone)]
pub(crate) struct HealthState {
    pub serving: Arc<AtomicBool>,
    pub phase: Arc<std::sync::RwLock<&'static str>>,
    pub metrics: Metrics,
    pub revisions: Arc<std::sync::OnceLock<Arc<crate::store::Revisions>>>,
}

impl HealthState {
    pub(crate) fn set_phase(&self, phase: &'static str) {
        if let Ok(mut p) = self.phase.write() {
            *p = phase;
        }
    }

    fn phase(&self) -> &'static str {
        self.phase.read().map(|p| *p).unwrap_or("unknown")
    }
}

fn router(state: HealthState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/health", get(health))
        .route("/readyz", get(health))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn health(State(s): State<HealthState>) -> impl IntoResponse {
    let json = |ok: bool, reason: &str, status: &str| {
        serde_json::json!({ "health": if ok { "true" } else { "false" }, "reason": reason, "status": status }).to_string()
    };
    if s.serving.load(Ordering::Acquire) {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            json(true, "", "healthy"),
        )
    } else {
        let phase = s.phase();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/json")],
            json(false, phase, phase),
        )
    }
}

async fn version() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "etcdserver": ETCD_VERSION, "etcdcluster": ETCD_CLUSTER_VERSION })
            .to_string(),
    )
}

async fn metrics(State(s): State<HealthState>) -> impl IntoResponse {
    if let Some(revs) = s.revisions.get() {
        s.metrics.current_revision.set(revs.current());
        s.metrics.compact_revision.set(revs.compacted());
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

/// Serves the health port until `shutdown` fires.
pub(crate) async fn serve(
    listener: TcpListener,
    state: HealthState,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let app = router(state);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "health port accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let svc = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, conn).await;
        });
    }
}
