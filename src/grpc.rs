//! The node's two gRPC servers: the etcd services on the client port and the peer service on
//! the peer port, plaintext or with mTLS (certificates reloaded from disk).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use etcd_client::proto::{
    PbClusterServer, PbKvServer, PbLeaseServer, PbMaintenanceServer, PbWatchServer,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::api::{self, Context};
use crate::config::NodeConfig;
use crate::ha::Cluster;
use crate::ha::peer::PeerService;
use crate::metrics::Metrics;
use crate::proto::peer_server::PeerServer;
use crate::tls::TlsReloader;

/// gRPC framing overhead allowed above the largest request, as etcd does.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The node's certificates (checked against its identity, polled for renewals), if TLS is on.
pub(crate) fn node_tls(
    cfg: &NodeConfig,
    metrics: &Metrics,
) -> anyhow::Result<Option<Arc<TlsReloader>>> {
    let Some(paths) = &cfg.tls else {
        return Ok(None);
    };
    let tls_metrics = crate::tls::TlsMetrics::register(&metrics.registry).context("TLS metrics")?;
    let policy = crate::tls::NodeCertPolicy {
        cluster_id: cfg.cluster_id.clone(),
        node_id: cfg.node_id.clone(),
        advertise: vec![cfg.advertise_client.clone(), cfg.advertise_peer.clone()],
    };
    let reloader = TlsReloader::load(paths.clone(), Some(policy), tls_metrics)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    reloader.spawn_polling(crate::tls::DEFAULT_POLL_INTERVAL);
    Ok(Some(reloader))
}

pub(crate) type ServeTask = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;

/// Starts the client and peer gRPC servers; both stop when `stop` turns true.
pub(crate) fn serve(
    cfg: &NodeConfig,
    tls: Option<&Arc<TlsReloader>>,
    ctx: Context,
    cluster: Cluster,
    (client_listener, peer_listener): (TcpListener, TcpListener),
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(ServeTask, ServeTask)> {
    let max_msg = cfg.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let grpc = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(2 * 3600)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(
            PbKvServer::new(api::KvService::new(ctx.clone())).max_decoding_message_size(max_msg),
        )
        .add_service(
            PbWatchServer::new(api::WatchService::new(ctx.clone()))
                .max_decoding_message_size(max_msg),
        )
        .add_service(
            PbLeaseServer::new(api::LeaseService::new(ctx.clone()))
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
            PeerServer::new(PeerService::new(ctx, cluster))
                .max_decoding_message_size(max_msg)
                .max_encoding_message_size(usize::MAX),
        );
    let signal = || {
        let mut rx = stop.clone();
        async move {
            let _ = rx.changed().await;
        }
    };
    Ok(match tls {
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
                tokio::spawn(
                    grpc.serve_with_incoming_shutdown(server.incoming(client_listener), signal()),
                ),
                tokio::spawn(
                    peer_grpc.serve_with_incoming_shutdown(
                        peer_server.incoming(peer_listener),
                        signal(),
                    ),
                ),
            )
        }
        None => (
            tokio::spawn(grpc.serve_with_incoming_shutdown(nodelay(client_listener), signal())),
            tokio::spawn(peer_grpc.serve_with_incoming_shutdown(nodelay(peer_listener), signal())),
        ),
    })
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
