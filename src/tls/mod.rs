//! TLS for every gRPC connection: mutual TLS 1.3 against one cluster CA, with identities carried
//! in a URI SAN `netsy://{cluster_id}/{role}/{name}` (docs/design/0005-tls.md#identity-in-certificates).
//!
//! Owns: reading and reloading the PEM files ([`TlsReloader`]), the startup checks of the node's
//! own certificates ([`NodeCertPolicy`]), the inbound rustls configuration and the incoming
//! connection stream for tonic ([`TlsServer`]), the outbound configuration and connector for
//! peer channels ([`peer_client_config`], [`PeerConnector`]), the TLS metrics ([`TlsMetrics`])
//! and the test CA behind `netsy certs` ([`CertAuthority`]).
//!
//! Never: authorises individual RPCs (a verified identity is handed to the services in
//! [`PeerInfo`]), logs key material or reads certificates from anywhere but the configured
//! files, or accepts a connection whose handshake did not verify the peer.
//!
//! Wiring (sketch):
//! ```ignore
//! let metrics = TlsMetrics::register(&registry)?;
//! let policy = NodeCertPolicy { cluster_id, node_id, advertise: vec![adv_client, adv_peer] };
//! let tls = TlsReloader::load(paths, Some(policy), metrics)?;   // startup checks, one line each
//! let _poller = tls.spawn_polling(tls::DEFAULT_POLL_INTERVAL);
//! let client_port = TlsServer::new(tls.clone(), ListenerPolicy::client_port(&cluster_id))?;
//! Server::builder().add_service(kv)
//!     .serve_with_incoming_shutdown(client_port.incoming(tcp_listener), shutdown).await?;
//! // in a service: tls::peer_info(&request).map(|p| &p.identity)
//! let cfg = peer_client_config(tls.clone(), &cluster_id, Some("node-2"))?;
//! let channel = tls::connect_lazy("node-2.netsy:2381", cfg, Duration::from_secs(5))?;
//! ```

mod check;
mod client;
mod files;
mod r#gen;
mod identity;
mod metrics;
mod reload;
mod server;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub use check::{CheckError, NodeCertPolicy, check_node_files};
pub use client::{PeerConnector, PeerIdentityError, connect, connect_lazy, peer_client_config};
pub use files::{FileError, FileKind, FileProblem, Material, TlsPaths};
pub use r#gen::{CertAuthority, IssuedCert, LeafSpec, Validity};
pub use identity::{IdentifierError, Identity, IdentityError, Role, validate_identifier};
pub use metrics::TlsMetrics;
pub use reload::{DEFAULT_POLL_INTERVAL, ReloadOutcome, TlsReloader};
pub use server::{
    DEFAULT_HANDSHAKE_TIMEOUT, ListenerPolicy, PeerInfo, RefusalReason, TlsConnection, TlsIncoming,
    TlsServer, peer_info,
};

/// Errors of the TLS layer; `Display` is one line fit for a startup failure.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Check(#[from] CheckError),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("peer address {address:?}: {reason}")]
    Address { address: String, reason: String },
    #[error("peer channel: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl TlsError {
    /// The `file` label for `netsy_tls_reload_failures_total`.
    pub(crate) fn file_label(&self) -> &'static str {
        match self {
            TlsError::File(e) => e.file.label(),
            TlsError::Check(e) => e.file().label(),
            _ => FileKind::Ca.label(),
        }
    }
}

/// The one crypto provider (ring) used by every config this module builds.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}
