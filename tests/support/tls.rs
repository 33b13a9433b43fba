//! Shared harness of the `tls_*` integration tests: certificates on disk, a tonic server with a
//! tiny etcd Maintenance service over `TlsServer::incoming`, and test clients.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::proto::{
    PbAlarmRequest, PbAlarmResponse, PbDefragmentRequest, PbDefragmentResponse, PbDowngradeRequest,
    PbDowngradeResponse, PbHashKvRequest, PbHashKvResponse, PbHashRequest, PbHashResponse,
    PbMaintenanceServer, PbMaintenanceService, PbMoveLeaderRequest, PbMoveLeaderResponse,
    PbSnapshotRequest, PbSnapshotResponse, PbStatusRequest, PbStatusResponse,
};
use futures::Stream;
use http::uri::PathAndQuery;
use netsy::tls::{
    CertAuthority, IssuedCert, LeafSpec, ListenerPolicy, PeerConnector, TlsMetrics, TlsPaths,
    TlsReloader, TlsServer, Validity, peer_info,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

pub const CLUSTER: &str = "test-cluster";
pub const DEADLINE: Duration = Duration::from_secs(15);

pub fn lifetime() -> Validity {
    Validity::starting_now(Duration::from_secs(3600))
}

/// A new CA with a name of its own (so another CA's certificates have an unknown issuer).
pub fn new_ca() -> CertAuthority {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    CertAuthority::generate(
        &format!("test CA {n}"),
        Validity::starting_now(Duration::from_secs(86_400)),
    )
    .unwrap()
}

/// Writes atomically (temp file + rename), like cert-manager's CSI driver would per file.
pub fn write_atomic(path: &Path, contents: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A node's certificate directory (interfaces.md layout) in a temp dir.
pub struct NodeFiles {
    pub dir: tempfile::TempDir,
    pub paths: TlsPaths,
    pub server: IssuedCert,
    pub client: IssuedCert,
}

pub fn node_files(ca: &CertAuthority, cluster: &str, node: &str) -> NodeFiles {
    node_files_with(
        ca,
        server_spec(cluster, node),
        LeafSpec::node_peer_client(cluster, node, lifetime()),
    )
}

pub fn server_spec(cluster: &str, node: &str) -> LeafSpec {
    LeafSpec::node_server(
        cluster,
        node,
        vec!["localhost".into()],
        vec![IpAddr::from([127, 0, 0, 1])],
        lifetime(),
    )
}

pub fn node_files_with(ca: &CertAuthority, server: LeafSpec, client: LeafSpec) -> NodeFiles {
    let dir = tempfile::tempdir().unwrap();
    let paths = TlsPaths::in_dir(dir.path());
    let server = ca.issue(&server).unwrap();
    let client = ca.issue(&client).unwrap();
    write_atomic(&paths.ca_cert, ca.cert_pem());
    write_atomic(&paths.server_cert, &server.cert_pem);
    write_atomic(&paths.server_key, &server.key_pem);
    write_atomic(&paths.client_cert, &client.cert_pem);
    write_atomic(&paths.client_key, &client.key_pem);
    NodeFiles {
        dir,
        paths,
        server,
        client,
    }
}

/// Replaces the server certificate and key (key first, then certificate).
pub fn replace_server_cert(paths: &TlsPaths, cert: &IssuedCert) {
    write_atomic(&paths.server_key, &cert.key_pem);
    write_atomic(&paths.server_cert, &cert.cert_pem);
}

/// Polls `cond` until it holds or the deadline passes.
pub async fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    super::wait::wait_until(what, DEADLINE, Duration::from_millis(20), cond).await
}

/// The Maintenance stub: Status reports the caller's verified identity in `errors[0]`;
/// Snapshot sends one chunk, then a second one when `release` is notified.
#[derive(Clone, Default)]
pub struct Stub {
    pub release: Arc<Notify>,
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<PbSnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PbMaintenanceService for Stub {
    async fn alarm(&self, _: Request<PbAlarmRequest>) -> Result<Response<PbAlarmResponse>, Status> {
        Err(Status::unimplemented("alarm"))
    }

    async fn status(
        &self,
        request: Request<PbStatusRequest>,
    ) -> Result<Response<PbStatusResponse>, Status> {
        let peer = peer_info(&request).ok_or_else(|| Status::internal("no peer identity"))?;
        Ok(Response::new(PbStatusResponse {
            version: "3.5.0".into(),
            errors: vec![peer.identity.uri()],
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        _: Request<PbDefragmentRequest>,
    ) -> Result<Response<PbDefragmentResponse>, Status> {
        Err(Status::unimplemented("defragment"))
    }

    async fn hash(&self, _: Request<PbHashRequest>) -> Result<Response<PbHashResponse>, Status> {
        Err(Status::unimplemented("hash"))
    }

    async fn hash_kv(
        &self,
        _: Request<PbHashKvRequest>,
    ) -> Result<Response<PbHashKvResponse>, Status> {
        Err(Status::unimplemented("hash_kv"))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _: Request<PbSnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let release = self.release.clone();
        let stream = async_stream::stream! {
            yield Ok(PbSnapshotResponse { remaining_bytes: 1, blob: b"first".to_vec(), ..Default::default() });
            release.notified().await;
            yield Ok(PbSnapshotResponse { remaining_bytes: 0, blob: b"second".to_vec(), ..Default::default() });
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn move_leader(
        &self,
        _: Request<PbMoveLeaderRequest>,
    ) -> Result<Response<PbMoveLeaderResponse>, Status> {
        Err(Status::unimplemented("move_leader"))
    }

    async fn downgrade(
        &self,
        _: Request<PbDowngradeRequest>,
    ) -> Result<Response<PbDowngradeResponse>, Status> {
        Err(Status::unimplemented("downgrade"))
    }
}

pub struct RunningServer {
    pub addr: SocketAddr,
    pub stub: Stub,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

pub async fn start_server(tls: TlsServer) -> RunningServer {
    // Logs show with `--nocapture`.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info")
        .try_init();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stub = Stub::default();
    let (tx, rx) = oneshot::channel::<()>();
    let incoming = tls.incoming(listener);
    let svc = PbMaintenanceServer::new(stub.clone());
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    RunningServer {
        addr,
        stub,
        shutdown: Some(tx),
        task,
    }
}

pub fn load(paths: &TlsPaths) -> Arc<TlsReloader> {
    TlsReloader::load(paths.clone(), None, TlsMetrics::unregistered()).unwrap()
}

/// A plain rustls client (not the module's peer config): trusts `ca_pem`, presents the given
/// certificate if any.
pub fn plain_client(ca_pem: &str, cert: Option<&IssuedCert>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match cert {
        Some(c) => {
            let chain: Vec<CertificateDer<'static>> =
                rustls_pemfile::certs(&mut c.cert_pem.as_bytes())
                    .map(|r| r.unwrap())
                    .collect();
            let key = rustls_pemfile::private_key(&mut c.key_pem.as_bytes())
                .unwrap()
                .unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

pub async fn channel(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://127.0.0.1:{}", addr.port()))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(PeerConnector::new(config))
        .await
}

/// Maintenance/Status over `channel`; returns the identity the server saw.
pub async fn status(channel: Channel) -> Result<String, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<PbStatusRequest, PbStatusResponse>::default();
    let path = PathAndQuery::from_static("/etcdserverpb.Maintenance/Status");
    let mut request = Request::new(PbStatusRequest {});
    request.set_timeout(Duration::from_secs(5));
    let response = grpc.unary(request, path, codec).await?;
    Ok(response
        .into_inner()
        .errors
        .first()
        .cloned()
        .unwrap_or_default())
}

/// Connects and calls Status in one go.
pub async fn call_status(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<String, String> {
    let channel = channel(addr, config).await.map_err(|e| error_chain(&e))?;
    tokio::time::timeout(Duration::from_secs(10), status(channel))
        .await
        .map_err(|_| "status timed out".to_string())?
        .map_err(|e| e.to_string())
}

/// Opens a Snapshot stream on `channel`.
pub async fn snapshot(channel: Channel) -> tonic::Streaming<PbSnapshotResponse> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<PbSnapshotRequest, PbSnapshotResponse>::default();
    let path = PathAndQuery::from_static("/etcdserverpb.Maintenance/Snapshot");
    grpc.server_streaming(Request::new(PbSnapshotRequest {}), path, codec)
        .await
        .unwrap()
        .into_inner()
}

/// Raw TLS handshake; returns the serial (hex) of the server's certificate.
pub async fn server_serial(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<String> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(
        DEADLINE,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("handshake timed out"))??;
    let ee = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    Ok(netsy::tls::Identity::from_der(&ee).unwrap().serial)
}

pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// etcdctl 3.5.1.
pub fn etcdctl() -> PathBuf {
    super::server::etcdctl35_bin()
}

pub fn client_policy() -> ListenerPolicy {
    ListenerPolicy::client_port(CLUSTER)
}
