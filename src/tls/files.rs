//! Reading and validating the five PEM files: CA bundle, server certificate and key, outbound
//! (client) certificate and key. Produces an immutable [`Material`]; swapping it is `reload`'s job.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, RootCertStore};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::identity::serial_hex;
use super::provider;

/// Paths of the TLS files (docs/design/0001-interfaces.md#paths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    /// `NETSY_TLS_CA_CERT`: the cluster CA bundle (trust anchors for both directions).
    pub ca_cert: PathBuf,
    /// `NETSY_TLS_SERVER_CERT`: served on the client and peer listeners.
    pub server_cert: PathBuf,
    /// `NETSY_TLS_SERVER_KEY`.
    pub server_key: PathBuf,
    /// `NETSY_TLS_CLIENT_CERT`: presented on outbound peer connections.
    pub client_cert: PathBuf,
    /// `NETSY_TLS_CLIENT_KEY`.
    pub client_key: PathBuf,
}

impl TlsPaths {
    /// The standard layout under `dir`: `ca.crt`, `server.crt`, `server.key`,
    /// `client/peer.crt`, `client/peer.key` (the defaults use `/etc/netsy/certs`).
    pub fn in_dir(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        TlsPaths {
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client").join("peer.crt"),
            client_key: dir.join("client").join("peer.key"),
        }
    }

    pub(crate) fn path(&self, file: FileKind) -> &Path {
        match file {
            FileKind::Ca => &self.ca_cert,
            FileKind::ServerCert => &self.server_cert,
            FileKind::ServerKey => &self.server_key,
            FileKind::ClientCert => &self.client_cert,
            FileKind::ClientKey => &self.client_key,
        }
    }
}

/// One of the five files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    Ca,
    ServerCert,
    ServerKey,
    ClientCert,
    ClientKey,
}

impl FileKind {
    pub(crate) const ALL: [FileKind; 5] = [
        FileKind::Ca,
        FileKind::ServerCert,
        FileKind::ServerKey,
        FileKind::ClientCert,
        FileKind::ClientKey,
    ];

    /// The `file` label of `netsy_tls_reload_failures_total`.
    pub fn label(self) -> &'static str {
        match self {
            FileKind::Ca => "ca",
            FileKind::ServerCert => "server_cert",
            FileKind::ServerKey => "server_key",
            FileKind::ClientCert => "client_cert",
            FileKind::ClientKey => "client_key",
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Ca => "TLS CA bundle",
            FileKind::ServerCert => "TLS server certificate",
            FileKind::ServerKey => "TLS server key",
            FileKind::ClientCert => "TLS client certificate",
            FileKind::ClientKey => "TLS client key",
        })
    }
}

/// A problem with one TLS file; its `Display` is one line naming the file and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{file} {}: {reason}", path.display())]
pub struct FileError {
    pub file: FileKind,
    pub path: PathBuf,
    pub reason: FileProblem,
}

/// What is wrong with a TLS file.
#[derive(Debug, thiserror::Error)]
pub enum FileProblem {
    #[error("cannot read: {0}")]
    Read(std::io::Error),
    #[error("no PEM {0} block found")]
    NoPem(&'static str),
    #[error("invalid PEM: {0}")]
    BadPem(std::io::Error),
    #[error("not a valid X.509 certificate: {0}")]
    BadCertificate(String),
    #[error("unsupported or invalid private key: {0}")]
    BadKey(rustls::Error),
    #[error("private key does not match the certificate {}", .0.display())]
    KeyMismatch(PathBuf),
    #[error("expired at {}", rfc3339(*.0))]
    Expired(SystemTime),
    #[error("not valid before {}", rfc3339(*.0))]
    NotYetValid(SystemTime),
    #[error("not signed by the CA in {}: {detail}", ca.display())]
    NotSignedByCa { ca: PathBuf, detail: String },
    #[error("not valid for {0}: {1}")]
    WrongUsage(&'static str, rustls::Error),
    #[error("{0}")]
    Invalid(String),
}

pub(crate) fn rfc3339(t: SystemTime) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(t)
}

/// The raw bytes of all five files, in [`FileKind::ALL`] order; compared to detect changes.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RawFiles(pub(crate) [Vec<u8>; 5]);

impl RawFiles {
    pub(crate) fn read(paths: &TlsPaths) -> Result<Self, FileError> {
        let mut out: [Vec<u8>; 5] = Default::default();
        for (slot, file) in out.iter_mut().zip(FileKind::ALL) {
            let path = paths.path(file);
            *slot = std::fs::read(path).map_err(|e| FileError {
                file,
                path: path.to_path_buf(),
                reason: FileProblem::Read(e),
            })?;
        }
        Ok(RawFiles(out))
    }

    fn get(&self, file: FileKind) -> &[u8] {
        let i = FileKind::ALL.iter().position(|f| *f == file).unwrap_or(0);
        &self.0[i]
    }
}

/// One certificate with the facts the rest of the module needs.
#[derive(Clone, Debug)]
pub(crate) struct CertFacts {
    pub(crate) serial: String,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

impl CertFacts {
    pub(crate) fn from_der(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        Ok(Self::from_x509(&cert))
    }

    pub(crate) fn from_x509(cert: &X509Certificate<'_>) -> Self {
        let v = cert.validity();
        CertFacts {
            serial: serial_hex(cert.raw_serial()),
            not_before: unix_to_system(v.not_before.timestamp()),
            not_after: unix_to_system(v.not_after.timestamp()),
        }
    }
}

fn unix_to_system(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

pub(crate) fn system_to_unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// A certificate chain plus key that belong together and chain to the CA.
pub(crate) struct Leaf {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) facts: CertFacts,
}

/// Everything loaded from one consistent set of files. Immutable; replaced as a whole.
pub struct Material {
    pub(crate) raw: RawFiles,
    pub(crate) ca_certs: Vec<CertificateDer<'static>>,
    pub(crate) ca_not_after: SystemTime,
    pub(crate) server: Leaf,
    pub(crate) client: Leaf,
    /// Chain verification for inbound client certificates against this CA.
    pub(crate) inbound: Arc<dyn ClientCertVerifier>,
    /// Chain and hostname verification for outbound server certificates against this CA.
    pub(crate) outbound: Arc<WebPkiServerVerifier>,
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Material")
            .field("ca_certs", &self.ca_certs.len())
            .field("server_serial", &self.server.facts.serial)
            .field("client_serial", &self.client.facts.serial)
            .finish()
    }
}

impl Material {
    /// The CA bundle in use.
    pub fn ca_certs(&self) -> &[CertificateDer<'static>] {
        &self.ca_certs
    }

    /// The server certificate chain in use (leaf first).
    pub fn server_chain(&self) -> &[CertificateDer<'static>] {
        &self.server.key.cert
    }

    /// The outbound (client) certificate chain in use (leaf first).
    pub fn client_chain(&self) -> &[CertificateDer<'static>] {
        &self.client.key.cert
    }

    /// Serial (lowercase hex) of the server certificate in use.
    pub fn server_serial(&self) -> &str {
        &self.server.facts.serial
    }

    /// Serial (lowercase hex) of the outbound client certificate in use.
    pub fn client_serial(&self) -> &str {
        &self.client.facts.serial
    }

    /// Parses and cross-checks a snapshot of the files: every file parses, each key matches its
    /// certificate, both leaves are currently valid and chain to the CA with the right usage.
    pub(crate) fn build(
        paths: &TlsPaths,
        raw: RawFiles,
        now: SystemTime,
    ) -> Result<Self, FileError> {
        let err = |file: FileKind, reason: FileProblem| FileError {
            file,
            path: paths.path(file).to_path_buf(),
            reason,
        };
        let ca_certs = parse_certs(raw.get(FileKind::Ca)).map_err(|r| err(FileKind::Ca, r))?;
        let mut roots = RootCertStore::empty();
        let mut ca_not_after = None::<SystemTime>;
        for der in &ca_certs {
            let facts = CertFacts::from_der(der)
                .map_err(|e| err(FileKind::Ca, FileProblem::BadCertificate(e)))?;
            ca_not_after = Some(ca_not_after.map_or(facts.not_after, |t| t.min(facts.not_after)));
            roots.add(der.clone()).map_err(|e| {
                err(
                    FileKind::Ca,
                    FileProblem::Invalid(format!("not a usable CA certificate: {e}")),
                )
            })?;
        }
        let ca_not_after =
            ca_not_after.ok_or_else(|| err(FileKind::Ca, FileProblem::NoPem("CERTIFICATE")))?;
        let roots = Arc::new(roots);
        let provider = provider();
        let inbound = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| err(FileKind::Ca, FileProblem::Invalid(e.to_string())))?;
        let outbound = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| err(FileKind::Ca, FileProblem::Invalid(e.to_string())))?;

        let unix_now =
            UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
        let server = load_leaf(
            paths,
            &raw,
            FileKind::ServerCert,
            FileKind::ServerKey,
            now,
            |ee, rest| {
                let parsed = ParsedCertificate::try_from(ee)?;
                rustls::client::verify_server_cert_signed_by_trust_anchor(
                    &parsed,
                    &roots,
                    rest,
                    unix_now,
                    provider.signature_verification_algorithms.all,
                )
            },
        )?;
        let client = load_leaf(
            paths,
            &raw,
            FileKind::ClientCert,
            FileKind::ClientKey,
            now,
            |ee, rest| inbound.verify_client_cert(ee, rest, unix_now).map(|_| ()),
        )?;
        Ok(Material {
            raw,
            ca_certs,
            ca_not_after,
            server,
            client,
            inbound,
            outbound,
        })
    }

    /// Whether the server certificate is valid for `name` (DNS name or IP address).
    pub(crate) fn server_covers(&self, name: &ServerName<'_>) -> Result<(), rustls::Error> {
        let ee = self.server.key.end_entity_cert()?;
        let parsed = ParsedCertificate::try_from(ee)?;
        rustls::client::verify_server_name(&parsed, name)
    }
}

fn load_leaf(
    paths: &TlsPaths,
    raw: &RawFiles,
    cert_file: FileKind,
    key_file: FileKind,
    now: SystemTime,
    verify_chain: impl FnOnce(&CertificateDer<'_>, &[CertificateDer<'_>]) -> Result<(), rustls::Error>,
) -> Result<Leaf, FileError> {
    let err = |file: FileKind, reason: FileProblem| FileError {
        file,
        path: paths.path(file).to_path_buf(),
        reason,
    };
    let chain = parse_certs(raw.get(cert_file)).map_err(|r| err(cert_file, r))?;
    let Some(ee) = chain.first() else {
        return Err(err(cert_file, FileProblem::NoPem("CERTIFICATE")));
    };
    let facts =
        CertFacts::from_der(ee).map_err(|e| err(cert_file, FileProblem::BadCertificate(e)))?;
    if now < facts.not_before {
        return Err(err(cert_file, FileProblem::NotYetValid(facts.not_before)));
    }
    if now > facts.not_after {
        return Err(err(cert_file, FileProblem::Expired(facts.not_after)));
    }
    let key = parse_key(raw.get(key_file)).map_err(|r| err(key_file, r))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| err(key_file, FileProblem::BadKey(e)))?;
    let certified = CertifiedKey::new(chain.clone(), signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(err(
                key_file,
                FileProblem::KeyMismatch(paths.path(cert_file).to_path_buf()),
            ));
        }
    }
    verify_chain(ee, &chain[1..])
        .map_err(|e| err(cert_file, chain_problem(paths, cert_file, e)))?;
    Ok(Leaf {
        key: Arc::new(certified),
        facts,
    })
}

fn chain_problem(paths: &TlsPaths, cert_file: FileKind, e: rustls::Error) -> FileProblem {
    use CertificateError as C;
    let usage = if cert_file == FileKind::ServerCert {
        "TLS server authentication"
    } else {
        "TLS client authentication"
    };
    match &e {
        rustls::Error::InvalidCertificate(C::InvalidPurpose | C::InvalidPurposeContext { .. }) => {
            FileProblem::WrongUsage(usage, e)
        }
        _ => FileProblem::NotSignedByCa {
            ca: paths.ca_cert.clone(),
            detail: chain_detail(&e),
        },
    }
}

fn chain_detail(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "issuer not found in the bundle".into()
        }
        rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
            "signature does not verify".into()
        }
        other => other.to_string(),
    }
}

pub(crate) fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, FileProblem> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(FileProblem::BadPem)?;
    if certs.is_empty() {
        return Err(FileProblem::NoPem("CERTIFICATE"));
    }
    Ok(certs)
}

pub(crate) fn parse_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, FileProblem> {
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(FileProblem::BadPem)?
        .ok_or(FileProblem::NoPem("PRIVATE KEY"))
}
