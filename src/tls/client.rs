//! Outbound TLS for peer connections: presents the node's client certificate (current one) and
//! verifies the server's chain against the current CA, the dial hostname against its DNS/IP
//! SANs, AND its URI SAN identity (role `peer`, this cluster, and the expected node id when
//! known). The original Netsy does not check the identity; we do.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use super::identity::{Identity, IdentityError, Role};
use super::reload::TlsReloader;
use super::{TlsError, provider};

/// The server's certificate is valid but names someone else.
#[derive(Debug, thiserror::Error)]
pub enum PeerIdentityError {
    #[error("peer server certificate: {0}")]
    Identity(#[from] IdentityError),
    #[error("peer server certificate is {found}, expected {expected}")]
    Mismatch { found: String, expected: String },
}

struct OutboundVerifier {
    reloader: Arc<TlsReloader>,
    cluster_id: String,
    node_id: Option<String>,
    schemes: Vec<SignatureScheme>,
}

impl fmt::Debug for OutboundVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundVerifier")
            .field("cluster_id", &self.cluster_id)
            .field("node_id", &self.node_id)
            .finish()
    }
}

fn identity_failure(e: PeerIdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

impl ServerCertVerifier for OutboundVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let material = self.reloader.current();
        material.outbound.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let id = Identity::from_der(end_entity).map_err(|e| identity_failure(e.into()))?;
        let name_ok = self.node_id.as_ref().is_none_or(|n| *n == id.name);
        if id.role != Role::Peer || id.cluster_id != self.cluster_id || !name_ok {
            let expected = format!(
                "netsy://{}/peer/{}",
                self.cluster_id,
                self.node_id.as_deref().unwrap_or("{any node}")
            );
            return Err(identity_failure(PeerIdentityError::Mismatch {
                found: id.uri(),
                expected,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.reloader
            .current()
            .outbound
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
            .outbound
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// Presents whatever client certificate is current.
struct CurrentClientCert(Arc<TlsReloader>);

impl fmt::Debug for CurrentClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CurrentClientCert")
    }
}

impl ResolvesClientCert for CurrentClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().client.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A TLS 1.3 client config (ALPN `h2`, no session resumption) for connections to the peer
/// `node_id` of `cluster_id` (`None`: any peer of the cluster).
pub fn peer_client_config(
    reloader: Arc<TlsReloader>,
    cluster_id: &str,
    node_id: Option<&str>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = OutboundVerifier {
        reloader: reloader.clone(),
        cluster_id: cluster_id.to_string(),
        node_id: node_id.map(str::to_string),
        schemes: provider
            .signature_verification_algorithms
            .supported_schemes(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(CurrentClientCert(reloader)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// A tonic connector: TCP to the URI's host and port, then TLS with the given config, the
/// URI host being the name checked against the server certificate's DNS/IP SANs.
#[derive(Clone)]
pub struct PeerConnector {
    tls: TlsConnector,
}

impl PeerConnector {
    pub fn new(config: Arc<ClientConfig>) -> Self {
        PeerConnector {
            tls: TlsConnector::from(config),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for PeerConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = uri.host().ok_or("peer URI has no host")?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().ok_or("peer URI has no port")?;
            let name = ServerName::try_from(host.clone())?;
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| handshake_error(&host, port, &e))?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// "TLS handshake with host:port failed: reason", with our identity errors shown by `Display`.
fn handshake_error(host: &str, port: u16, e: &std::io::Error) -> BoxError {
    let reason = match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) => {
            other.0.to_string()
        }
        _ => e.to_string(),
    };
    format!("TLS handshake with {host}:{port} failed: {reason}").into()
}

/// A tonic endpoint for `address` (`host:port`, `[v6]:port`, or a URI whose scheme is ignored).
fn endpoint(address: &str, connect_timeout: Duration) -> Result<Endpoint, TlsError> {
    let bad = |reason: String| TlsError::Address {
        address: address.to_string(),
        reason,
    };
    let authority = address.split_once("://").map_or(address, |(_, rest)| rest);
    let authority = authority.split('/').next().unwrap_or_default();
    // The connector does TLS itself; `http` keeps tonic from looking for its own TLS.
    let uri: Uri = format!("http://{authority}")
        .parse()
        .map_err(|e| bad(format!("{e}")))?;
    if uri.port_u16().is_none() {
        return Err(bad("no port".into()));
    }
    Ok(Endpoint::from(uri).connect_timeout(connect_timeout))
}

/// A channel to a peer that connects on first use and reconnects as needed; every connection
/// uses the certificates current at that moment. `connect_timeout` bounds TCP plus TLS.
pub fn connect_lazy(
    address: &str,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
) -> Result<Channel, TlsError> {
    Ok(endpoint(address, connect_timeout)?.connect_with_connector_lazy(PeerConnector::new(config)))
}

/// Like [`connect_lazy`] but connects now, failing if the first connection fails.
pub async fn connect(
    address: &str,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
) -> Result<Channel, TlsError> {
    Ok(endpoint(address, connect_timeout)?
        .connect_with_connector(PeerConnector::new(config))
        .await?)
}
