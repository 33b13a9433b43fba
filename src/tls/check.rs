//! Checks that the node's own certificates fit this node: both the server and the outbound
//! client certificate carry `netsy://{cluster_id}/peer/{node_id}`, and the server certificate's
//! DNS/IP SANs cover the host of every advertise address. (Parsing, key match, validity period
//! and the chain to the CA are checked when the files are loaded.) Each failure is one line.

use std::net::IpAddr;
use std::path::PathBuf;

use rustls::pki_types::ServerName;

use super::TlsError;
use super::files::{FileKind, Material, RawFiles, TlsPaths};
use super::identity::{Identity, IdentityError, Role};

/// What this node's certificates must say about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCertPolicy {
    /// The cluster id (URI host).
    pub cluster_id: String,
    /// This node's id (URI name, role `peer`).
    pub node_id: String,
    /// Advertise addresses (`host:port`, `[v6]:port`, optionally with a scheme); empty ones are
    /// skipped. The server certificate must be valid for each host.
    pub advertise: Vec<String>,
}

/// Why the node's certificates do not fit the node.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{file} {}: {source}", path.display())]
    Identity {
        file: FileKind,
        path: PathBuf,
        source: IdentityError,
    },
    #[error("{file} {}: URI SAN is {found}, expected {want} (this node and cluster)", path.display())]
    WrongIdentity {
        file: FileKind,
        path: PathBuf,
        found: String,
        want: String,
    },
    #[error(
        "{file} {}: not valid for advertise address {address:?} (host {host}); add it as a DNS or IP SAN",
        path.display()
    )]
    AdvertiseNotCovered {
        file: FileKind,
        path: PathBuf,
        address: String,
        host: String,
    },
    #[error("advertise address {address:?}: {reason}")]
    BadAdvertise { address: String, reason: String },
}

impl CheckError {
    pub(crate) fn file(&self) -> FileKind {
        match self {
            CheckError::Identity { file, .. }
            | CheckError::WrongIdentity { file, .. }
            | CheckError::AdvertiseNotCovered { file, .. } => *file,
            CheckError::BadAdvertise { .. } => FileKind::ServerCert,
        }
    }
}

/// Loads the files once and runs every startup check, without starting anything.
pub fn check_node_files(paths: &TlsPaths, policy: &NodeCertPolicy) -> Result<(), TlsError> {
    let material = Material::build(paths, RawFiles::read(paths)?, std::time::SystemTime::now())?;
    check_material(&material, paths, policy)?;
    Ok(())
}

pub(crate) fn check_material(
    m: &Material,
    paths: &TlsPaths,
    policy: &NodeCertPolicy,
) -> Result<(), CheckError> {
    let want = format!("netsy://{}/peer/{}", policy.cluster_id, policy.node_id);
    for (file, chain) in [
        (FileKind::ServerCert, m.server_chain()),
        (FileKind::ClientCert, m.client_chain()),
    ] {
        let path = paths.path(file).to_path_buf();
        let ee = chain.first().map(|c| c.as_ref()).unwrap_or_default();
        let id = Identity::from_der(ee).map_err(|source| CheckError::Identity {
            file,
            path: path.clone(),
            source,
        })?;
        if id.role != Role::Peer || id.cluster_id != policy.cluster_id || id.name != policy.node_id
        {
            return Err(CheckError::WrongIdentity {
                file,
                path,
                found: id.uri(),
                want,
            });
        }
    }
    for address in &policy.advertise {
        let Some(host) = advertise_host(address).map_err(|reason| CheckError::BadAdvertise {
            address: address.clone(),
            reason,
        })?
        else {
            continue;
        };
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.clone()).map_err(|e| CheckError::BadAdvertise {
                address: address.clone(),
                reason: format!("host {host:?} is neither an IP address nor a DNS name: {e}"),
            })?,
        };
        if m.server_covers(&name).is_err() {
            return Err(CheckError::AdvertiseNotCovered {
                file: FileKind::ServerCert,
                path: paths.server_cert.clone(),
                address: address.clone(),
                host,
            });
        }
    }
    Ok(())
}

/// The host part of an advertise address; `None` for an empty address or an empty host.
pub(crate) fn advertise_host(address: &str) -> Result<Option<String>, String> {
    let mut s = address.trim();
    if s.is_empty() {
        return Ok(None);
    }
    if let Some((_, rest)) = s.split_once("://") {
        s = rest;
    }
    s = s.split('/').next().unwrap_or_default();
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unterminated [IPv6] host")?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return Err(format!("unexpected {after:?} after [{host}]"));
        }
        return Ok(Some(host.to_string()));
    }
    if s.parse::<IpAddr>().is_ok() {
        return Ok(Some(s.to_string()));
    }
    let host = match s.rsplit_once(':') {
        Some((host, port)) if is_port(port) => host,
        Some(_) => return Err("port is not a number".into()),
        None => s,
    };
    Ok((!host.is_empty()).then(|| host.to_string()))
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::advertise_host;

    #[test]
    fn advertise_hosts() {
        let ok = |a: &str| advertise_host(a).unwrap();
        assert_eq!(
            ok("netsy-0.netsy.default.svc.cluster.local:2378").as_deref(),
            Some("netsy-0.netsy.default.svc.cluster.local")
        );
        assert_eq!(ok("10.0.0.1:2381").as_deref(), Some("10.0.0.1"));
        assert_eq!(ok("[::1]:2378").as_deref(), Some("::1"));
        assert_eq!(ok("::1").as_deref(), Some("::1"));
        assert_eq!(ok("https://node-1:2378").as_deref(), Some("node-1"));
        assert_eq!(ok("node-1").as_deref(), Some("node-1"));
        assert_eq!(ok(""), None);
        assert_eq!(ok(":2378"), None);
        assert!(advertise_host("host:port").is_err());
        assert!(advertise_host("[::1").is_err());
    }
}
