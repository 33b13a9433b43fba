//! Inbound TLS: the rustls `ServerConfig` of a listener and the stream of verified connections
//! handed to tonic.
//!
//! Every handshake is TLS 1.3 with a mandatory client certificate that must chain to the CA in
//! use at that moment and carry an admitted role of this cluster. The server certificate is the
//! one in use at that moment. Session resumption is off, so every connection is fully verified
//! against the current files. Handshakes run concurrently (bounded) with a timeout; a refused
//! handshake is counted in `netsy_tls_handshake_refusals_total{listener,reason}` and logged at
//! most once per reason and subject per [`REFUSAL_LOG_WINDOW`].

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::identity::{Identity, Role, serial_hex};
use super::reload::TlsReloader;
use super::{TlsError, provider};

/// Default limit for a TLS handshake, from TCP accept to verified connection.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on handshakes in flight (plus verified connections not yet taken by tonic).
pub(super) const DEFAULT_MAX_HANDSHAKES: usize = 256;
/// A refusal with the same reason and subject is logged at most once per window.
pub(super) const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(600);
const MAX_REMEMBERED_REFUSALS: usize = 4096;
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

tokio::task_local! {
    /// Remote address of the handshake being verified (for refusal logs).
    static REMOTE: SocketAddr;
}

/// Who a listener admits, and over which protocol versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerPolicy {
    /// Listener name, the `listener` label of the refusal counter (`client`, `peer`).
    pub listener: &'static str,
    /// Only certificates of this cluster are admitted.
    pub cluster_id: String,
    /// Roles admitted on this listener.
    pub roles: Vec<Role>,
    /// Also accept TLS 1.2 (default: TLS 1.3 only: docs/design/0005-tls.md#decisions). For etcd clients whose
    /// Go transport caps at TLS 1.2 when given a client certificate (etcdctl 3.5.1 does);
    /// verification is the same.
    pub allow_tls12: bool,
}

impl ListenerPolicy {
    /// The client port (2378): role `client` of this cluster.
    pub fn client_port(cluster_id: &str) -> Self {
        ListenerPolicy {
            listener: "client",
            cluster_id: cluster_id.to_string(),
            roles: vec![Role::Client],
            allow_tls12: false,
        }
    }

    /// The peer port (2381): role `peer` of this cluster (name passing the identifier rule).
    pub fn peer_port(cluster_id: &str) -> Self {
        ListenerPolicy {
            listener: "peer",
            cluster_id: cluster_id.to_string(),
            roles: vec![Role::Peer],
            allow_tls12: false,
        }
    }

    /// Replaces the admitted roles (e.g. `[Client, Peer]` on the client port when nodes forward
    /// client requests there).
    pub fn with_roles(mut self, roles: &[Role]) -> Self {
        self.roles = roles.to_vec();
        self
    }

    /// Sets [`ListenerPolicy::allow_tls12`].
    pub fn with_tls12(mut self, allow: bool) -> Self {
        self.allow_tls12 = allow;
        self
    }
}

/// Why an inbound handshake was refused: the `reason` label values (a closed set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// The client sent no certificate.
    MissingClientCert,
    /// The chain does not lead to the CA in use (wrong CA, bad signature).
    UnknownCa,
    /// The certificate's notAfter has passed.
    Expired,
    /// The certificate's notBefore is in the future.
    NotYetValid,
    /// Chain fine but no valid `netsy://` URI SAN.
    BadIdentity,
    /// Identity of another cluster.
    WrongCluster,
    /// Role not admitted on this listener.
    WrongRole,
    /// Any other certificate problem (usage, encoding, unsupported algorithm).
    InvalidCertificate,
    /// The handshake did not finish within the timeout.
    HandshakeTimeout,
    /// Any other TLS failure (protocol version, alert from the client, ...).
    TlsError,
}

impl RefusalReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::MissingClientCert => "missing_client_cert",
            RefusalReason::UnknownCa => "unknown_ca",
            RefusalReason::Expired => "expired",
            RefusalReason::NotYetValid => "not_yet_valid",
            RefusalReason::BadIdentity => "bad_identity",
            RefusalReason::WrongCluster => "wrong_cluster",
            RefusalReason::WrongRole => "wrong_role",
            RefusalReason::InvalidCertificate => "invalid_certificate",
            RefusalReason::HandshakeTimeout => "handshake_timeout",
            RefusalReason::TlsError => "tls_error",
        }
    }

    fn from_chain_error(e: &rustls::Error) -> Self {
        use CertificateError as C;
        match e {
            rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
                Self::Expired
            }
            rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
                Self::NotYetValid
            }
            rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
                Self::UnknownCa
            }
            _ => Self::InvalidCertificate,
        }
    }
}

/// The verified peer of an inbound connection; tonic puts it in every request's extensions.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Identity from the client certificate's URI SAN (already admitted by the listener).
    pub identity: Identity,
    /// TCP peer address.
    pub remote_addr: SocketAddr,
    /// The listener that accepted the connection.
    pub listener: &'static str,
}

/// The verified peer of a request served over a [`TlsIncoming`] stream.
pub fn peer_info<T>(request: &tonic::Request<T>) -> Option<&PeerInfo> {
    request.extensions().get::<PeerInfo>()
}

/// Logs and counts refusals of one listener.
struct Refusals {
    listener: &'static str,
    counter: prometheus::IntCounterVec,
    last_logged: Mutex<HashMap<(RefusalReason, String), Instant>>,
}

impl Refusals {
    fn refuse(&self, reason: RefusalReason, subject: &str, detail: &dyn fmt::Display) {
        self.counter
            .with_label_values(&[self.listener, reason.label()])
            .inc();
        let remote = REMOTE.try_with(|a| *a).ok();
        if self.first_in_window(reason, subject) {
            warn!(
                event = "tls_handshake_refused",
                listener = self.listener,
                reason = reason.label(),
                subject,
                remote = ?remote,
                "refused TLS handshake: {detail}"
            );
        } else {
            debug!(
                listener = self.listener,
                reason = reason.label(),
                subject,
                "refused TLS handshake: {detail}"
            );
        }
    }

    fn first_in_window(&self, reason: RefusalReason, subject: &str) -> bool {
        let now = Instant::now();
        let mut seen = self.last_logged.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = seen.get(&(reason, subject.to_string()))
            && now.duration_since(*t) < REFUSAL_LOG_WINDOW
        {
            return false;
        }
        if seen.len() >= MAX_REMEMBERED_REFUSALS {
            seen.retain(|_, t| now.duration_since(*t) < REFUSAL_LOG_WINDOW);
            if seen.len() >= MAX_REMEMBERED_REFUSALS {
                // Flooded with distinct subjects: stop logging new ones until the window passes.
                return false;
            }
        }
        seen.insert((reason, subject.to_string()), now);
        true
    }
}

/// A short description of a certificate for logs: its identity, or subject and serial.
fn describe(der: &[u8]) -> String {
    if let Ok(id) = Identity::from_der(der) {
        return id.to_string();
    }
    match X509Certificate::from_der(der) {
        Ok((_, c)) => format!(
            "subject {:?} (serial {})",
            c.subject().to_string(),
            serial_hex(c.raw_serial())
        ),
        Err(_) => "unparseable certificate".to_string(),
    }
}

/// Client-certificate verifier: chain against the current CA, then the listener's identity rules.
struct InboundVerifier {
    reloader: Arc<TlsReloader>,
    policy: ListenerPolicy,
    refusals: Arc<Refusals>,
    schemes: Vec<SignatureScheme>,
}

impl fmt::Debug for InboundVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundVerifier")
            .field("policy", &self.policy)
            .finish()
    }
}

impl InboundVerifier {
    fn refuse(
        &self,
        reason: RefusalReason,
        subject: &str,
        detail: &dyn fmt::Display,
    ) -> rustls::Error {
        self.refusals.refuse(reason, subject, detail);
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    }
}

impl ClientCertVerifier for InboundVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No CA names are sent (the CA can change under a `&self` borrow); clients present their
    /// only certificate anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let material = self.reloader.current();
        if let Err(e) = material
            .inbound
            .verify_client_cert(end_entity, intermediates, now)
        {
            self.refusals.refuse(
                RefusalReason::from_chain_error(&e),
                &describe(end_entity),
                &e,
            );
            return Err(e);
        }
        let id = match Identity::from_der(end_entity) {
            Ok(id) => id,
            Err(e) => {
                return Err(self.refuse(RefusalReason::BadIdentity, &describe(end_entity), &e));
            }
        };
        if id.cluster_id != self.policy.cluster_id {
            let detail = format!(
                "certificate is for cluster {:?}, this is {:?}",
                id.cluster_id, self.policy.cluster_id
            );
            return Err(self.refuse(RefusalReason::WrongCluster, &id.to_string(), &detail));
        }
        if !self.policy.roles.contains(&id.role) {
            let detail = format!(
                "role {} is not admitted on the {} listener",
                id.role, self.policy.listener
            );
            return Err(self.refuse(RefusalReason::WrongRole, &id.to_string(), &detail));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.reloader
            .current()
            .inbound
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.reloader
            .current()
            .inbound
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// Serves whatever server certificate is current.
struct CurrentServerCert(Arc<TlsReloader>);

impl fmt::Debug for CurrentServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CurrentServerCert")
    }
}

impl ResolvesServerCert for CurrentServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().server.key.clone())
    }
}

/// TLS for one listener (client port or peer port).
pub struct TlsServer {
    config: Arc<ServerConfig>,
    refusals: Arc<Refusals>,
    handshake_timeout: Duration,
    max_handshakes: usize,
}

impl TlsServer {
    /// Builds the listener's TLS 1.3 config (ALPN `h2`, no session resumption) on top of the
    /// reloader.
    pub fn new(reloader: Arc<TlsReloader>, policy: ListenerPolicy) -> Result<Self, TlsError> {
        let provider = provider();
        let refusals = Arc::new(Refusals {
            listener: policy.listener,
            counter: reloader.metrics().refusals.clone(),
            last_logged: Mutex::new(HashMap::new()),
        });
        let versions: &[&rustls::SupportedProtocolVersion] = if policy.allow_tls12 {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let verifier = InboundVerifier {
            reloader: reloader.clone(),
            policy,
            refusals: refusals.clone(),
            schemes: provider
                .signature_verification_algorithms
                .supported_schemes(),
        };
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(CurrentServerCert(reloader)));
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(TlsServer {
            config: Arc::new(config),
            refusals,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
        })
    }

    /// Sets the handshake timeout (default [`DEFAULT_HANDSHAKE_TIMEOUT`]).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets the bound on concurrent handshakes (default [`DEFAULT_MAX_HANDSHAKES`]).
    pub fn with_max_handshakes(mut self, max: usize) -> Self {
        self.max_handshakes = max.max(1);
        self
    }

    /// The rustls config, for callers that run their own accept loop.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// Accepts on `listener` and yields verified TLS connections, for
    /// `tonic::transport::Server::builder()...serve_with_incoming_shutdown(incoming, signal)`.
    /// Dropping the stream stops accepting and aborts handshakes in flight. Must be called
    /// within a Tokio runtime.
    pub fn incoming(&self, listener: TcpListener) -> TlsIncoming {
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(self.config.clone()),
            tx,
            self.refusals.clone(),
            self.handshake_timeout,
            self.max_handshakes,
        ));
        TlsIncoming { rx, task }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<TlsConnection>,
    refusals: Arc<Refusals>,
    timeout: Duration,
    max_handshakes: usize,
) {
    let permits = Arc::new(Semaphore::new(max_handshakes));
    let mut handshakes = JoinSet::new();
    loop {
        while handshakes.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = tx.closed() => return,
        };
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(listener = refusals.listener, "accepting a TCP connection failed: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            _ = tx.closed() => return,
        };
        let (acceptor, tx, refusals) = (acceptor.clone(), tx.clone(), refusals.clone());
        handshakes.spawn(async move {
            // Held until the connection is handed over, which bounds queued connections too.
            let _permit = permit;
            if let Some(conn) = handshake(tcp, remote, acceptor, &refusals, timeout).await {
                // The receiver is gone only when the server stopped; the connection is dropped.
                let _ = tx.send(conn).await;
            }
        });
    }
}

async fn handshake(
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    refusals: &Refusals,
    timeout: Duration,
) -> Option<TlsConnection> {
    let _ = tcp.set_nodelay(true);
    let subject = format!("address {}", remote.ip());
    let accepted = tokio::time::timeout(timeout, REMOTE.scope(remote, acceptor.accept(tcp))).await;
    let tls = match accepted {
        Err(_) => {
            REMOTE.sync_scope(remote, || {
                refusals.refuse(
                    RefusalReason::HandshakeTimeout,
                    &subject,
                    &format!("no handshake within {timeout:?}"),
                )
            });
            return None;
        }
        Ok(Err(e)) => {
            let rustls_error = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>());
            let reason = match rustls_error {
                Some(rustls::Error::NoCertificatesPresented) => RefusalReason::MissingClientCert,
                // Already counted and logged by the verifier, which saw the certificate.
                Some(rustls::Error::InvalidCertificate(_)) => return None,
                Some(_) => RefusalReason::TlsError,
                // Plain I/O (closed or reset before finishing): TCP probes and port scans.
                None => {
                    debug!(listener = refusals.listener, %remote, "TLS handshake aborted: {e}");
                    return None;
                }
            };
            REMOTE.sync_scope(remote, || refusals.refuse(reason, &subject, &e));
            return None;
        }
        Ok(Ok(tls)) => tls,
    };
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|ee| Identity::from_der(ee).ok());
    // The verifier admitted the certificate, so this only fails if rustls skipped it.
    let identity = identity?;
    Some(TlsConnection {
        io: tls,
        info: PeerInfo {
            identity,
            remote_addr: remote,
            listener: refusals.listener,
        },
    })
}

/// Stream of verified inbound connections of one listener.
pub struct TlsIncoming {
    rx: mpsc::Receiver<TlsConnection>,
    task: JoinHandle<()>,
}

impl futures::Stream for TlsIncoming {
    type Item = Result<TlsConnection, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One verified inbound TLS connection.
pub struct TlsConnection {
    io: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
}

impl TlsConnection {
    /// The verified peer.
    pub fn peer(&self) -> &PeerInfo {
        &self.info
    }
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
