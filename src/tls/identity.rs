//! The URI-SAN identity `netsy://{cluster_id}/{role}/{name}` carried by every Netsy certificate.
//!
//! Rules (docs/design/0005-tls.md#identity-in-certificates): the FIRST URI SAN whose scheme is `netsy` counts (other URI SANs before it are
//! ignored); the host is the cluster id and must be non-empty; the path has exactly two segments;
//! the role is `peer` or `client`; the name is non-empty, and for `peer` it is a node id that
//! passes [`validate_identifier`]. Common Name and Organization are never looked at.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Longest identifier (node id) accepted.
pub(super) const MAX_IDENTIFIER_LEN: usize = 32;

/// What a certificate holder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A Netsy node (name = node id).
    Peer,
    /// kube-apiserver, etcdctl and every other etcd client.
    Client,
}

impl Role {
    /// The role as written in the URI path.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Peer => "peer",
            Role::Client => "client",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verified peer identity, as read from its certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// URI host: the cluster id.
    pub cluster_id: String,
    /// URI first path segment.
    pub role: Role,
    /// URI second path segment: node id for peers, free-form for clients.
    pub name: String,
    /// Certificate serial number, lowercase hex without separators.
    pub serial: String,
}

impl Identity {
    /// Reads the identity from a DER-encoded X.509 certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        Self::from_x509(&cert)
    }

    pub(crate) fn from_x509(cert: &X509Certificate<'_>) -> Result<Self, IdentityError> {
        let uri = netsy_uri(cert)?;
        let (cluster_id, role, name) = parse_uri(uri)?;
        Ok(Identity {
            cluster_id,
            role,
            name,
            serial: serial_hex(cert.raw_serial()),
        })
    }

    /// The identity as its URI, `netsy://{cluster_id}/{role}/{name}`.
    pub fn uri(&self) -> String {
        format!("netsy://{}/{}/{}", self.cluster_id, self.role, self.name)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (serial {})", self.uri(), self.serial)
    }
}

/// Why a certificate carries no usable identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("certificate cannot be parsed: {0}")]
    BadCertificate(String),
    #[error("certificate has no URI SAN (expected netsy://{{cluster}}/{{role}}/{{name}})")]
    NoUriSan,
    #[error("certificate has no URI SAN with scheme netsy (first URI SAN is {first:?})")]
    NotNetsyScheme { first: String },
    #[error("URI SAN {uri:?}: cluster id (host) is empty")]
    EmptyCluster { uri: String },
    #[error("URI SAN {uri:?}: {what} is not allowed")]
    Malformed { uri: String, what: &'static str },
    #[error(
        "URI SAN {uri:?}: path must be exactly /{{role}}/{{name}}, found {segments} segment(s)"
    )]
    SegmentCount { uri: String, segments: usize },
    #[error("URI SAN {uri:?}: role {role:?} is neither peer nor client")]
    InvalidRole { uri: String, role: String },
    #[error("URI SAN {uri:?}: name is empty")]
    EmptyName { uri: String },
    #[error("URI SAN {uri:?}: peer name is not a valid node id: {reason}")]
    InvalidName {
        uri: String,
        reason: IdentifierError,
    },
}

/// Why a string is not a valid identifier (node id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    #[error("empty")]
    Empty,
    #[error("{0} characters, at most 32 allowed")]
    TooLong(usize),
    #[error("character {0:?} not allowed (only a-z, 0-9 and -)")]
    InvalidChar(char),
    #[error("starts or ends with a hyphen")]
    EdgeHyphen,
    #[error("contains a double hyphen")]
    DoubleHyphen,
}

/// The identifier rule for node ids: lowercase `[a-z0-9-]`, no leading, trailing or double
/// hyphen, at most 32 characters.
pub fn validate_identifier(s: &str) -> Result<(), IdentifierError> {
    if s.is_empty() {
        return Err(IdentifierError::Empty);
    }
    let len = s.chars().count();
    if len > MAX_IDENTIFIER_LEN {
        return Err(IdentifierError::TooLong(len));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(IdentifierError::InvalidChar(c));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(IdentifierError::EdgeHyphen);
    }
    if s.contains("--") {
        return Err(IdentifierError::DoubleHyphen);
    }
    Ok(())
}

/// The first URI SAN whose scheme is `netsy`.
fn netsy_uri<'a>(cert: &'a X509Certificate<'_>) -> Result<&'a str, IdentityError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::BadCertificate(format!("subjectAltName: {e}")))?;
    let mut first = None;
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        if let GeneralName::URI(uri) = name {
            if has_netsy_scheme(uri) {
                return Ok(uri);
            }
            first.get_or_insert(*uri);
        }
    }
    match first {
        None => Err(IdentityError::NoUriSan),
        Some(first) => Err(IdentityError::NotNetsyScheme {
            first: first.to_string(),
        }),
    }
}

fn has_netsy_scheme(uri: &str) -> bool {
    uri.split_once(':')
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("netsy"))
}

/// Splits `netsy://{cluster}/{role}/{name}` into its parts, validating each.
pub(crate) fn parse_uri(uri: &str) -> Result<(String, Role, String), IdentityError> {
    let owned = || uri.to_string();
    let rest = match uri.split_once(':') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("netsy") => rest,
        _ => return Err(IdentityError::NotNetsyScheme { first: owned() }),
    };
    let Some(rest) = rest.strip_prefix("//") else {
        return Err(IdentityError::Malformed {
            uri: owned(),
            what: "a URI without //authority",
        });
    };
    if rest.contains('?') {
        return Err(IdentityError::Malformed {
            uri: owned(),
            what: "a query",
        });
    }
    if rest.contains('#') {
        return Err(IdentityError::Malformed {
            uri: owned(),
            what: "a fragment",
        });
    }
    let (cluster, path) = rest.split_once('/').unwrap_or((rest, ""));
    if cluster.contains('@') {
        return Err(IdentityError::Malformed {
            uri: owned(),
            what: "userinfo",
        });
    }
    if cluster.contains(':') {
        return Err(IdentityError::Malformed {
            uri: owned(),
            what: "a port",
        });
    }
    if cluster.is_empty() {
        return Err(IdentityError::EmptyCluster { uri: owned() });
    }
    // `path` is what follows the first '/' after the authority.
    let segments: Vec<&str> = if path.is_empty() && !rest.contains('/') {
        Vec::new()
    } else {
        path.split('/').collect()
    };
    let [role, name] = segments[..] else {
        return Err(IdentityError::SegmentCount {
            uri: owned(),
            segments: segments.len(),
        });
    };
    let role = match role {
        "peer" => Role::Peer,
        "client" => Role::Client,
        other => {
            return Err(IdentityError::InvalidRole {
                uri: owned(),
                role: other.to_string(),
            });
        }
    };
    if name.is_empty() {
        return Err(IdentityError::EmptyName { uri: owned() });
    }
    if role == Role::Peer {
        validate_identifier(name).map_err(|reason| IdentityError::InvalidName {
            uri: owned(),
            reason,
        })?;
    }
    Ok((cluster.to_string(), role, name.to_string()))
}

pub(crate) fn serial_hex(raw: &[u8]) -> String {
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn cert_with_sans(sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x0a, 0xbc]));
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    fn parse(sans: Vec<SanType>) -> Result<Identity, IdentityError> {
        Identity::from_der(&cert_with_sans(sans))
    }

    #[test]
    fn peer_identity() {
        let id = parse(vec![uri("netsy://prod/peer/node-1")]).unwrap();
        assert_eq!(id.cluster_id, "prod");
        assert_eq!(id.role, Role::Peer);
        assert_eq!(id.name, "node-1");
        assert_eq!(id.serial, "0abc");
        assert_eq!(id.uri(), "netsy://prod/peer/node-1");
    }

    #[test]
    fn client_identity_allows_any_non_empty_name() {
        let id = parse(vec![uri("netsy://prod/client/kube-apiserver@Main_1")]).unwrap();
        assert_eq!(id.role, Role::Client);
        assert_eq!(id.name, "kube-apiserver@Main_1");
    }

    #[test]
    fn netsy_san_after_other_uri_sans_counts() {
        let id = parse(vec![
            SanType::DnsName("node-1.example".try_into().unwrap()),
            uri("spiffe://example.org/ns/default"),
            uri("netsy://prod/client/etcdctl"),
            uri("netsy://other/peer/ignored"),
        ])
        .unwrap();
        assert_eq!(id.uri(), "netsy://prod/client/etcdctl");
    }

    #[test]
    fn missing_uri_san() {
        assert_eq!(parse(vec![]), Err(IdentityError::NoUriSan));
        let dns_only = vec![SanType::DnsName("localhost".try_into().unwrap())];
        assert_eq!(parse(dns_only), Err(IdentityError::NoUriSan));
    }

    #[test]
    fn non_netsy_scheme() {
        assert_eq!(
            parse(vec![uri("spiffe://prod/peer/node-1")]),
            Err(IdentityError::NotNetsyScheme {
                first: "spiffe://prod/peer/node-1".into()
            })
        );
    }

    #[test]
    fn empty_cluster() {
        assert!(matches!(
            parse(vec![uri("netsy:///peer/node-1")]),
            Err(IdentityError::EmptyCluster { .. })
        ));
    }

    #[test]
    fn wrong_segment_count() {
        for (u, n) in [
            ("netsy://prod", 0),
            ("netsy://prod/peer", 1),
            ("netsy://prod/peer/node-1/extra", 3),
            ("netsy://prod/peer/node-1/", 3),
        ] {
            assert_eq!(
                parse(vec![uri(u)]),
                Err(IdentityError::SegmentCount {
                    uri: u.into(),
                    segments: n
                }),
                "{u}"
            );
        }
    }

    #[test]
    fn invalid_role() {
        assert_eq!(
            parse(vec![uri("netsy://prod/admin/root")]),
            Err(IdentityError::InvalidRole {
                uri: "netsy://prod/admin/root".into(),
                role: "admin".into()
            })
        );
        assert!(matches!(
            parse(vec![uri("netsy://prod/Peer/node-1")]),
            Err(IdentityError::InvalidRole { .. })
        ));
    }

    #[test]
    fn empty_or_invalid_name() {
        assert!(matches!(
            parse(vec![uri("netsy://prod/client/")]),
            Err(IdentityError::EmptyName { .. })
        ));
        assert!(matches!(
            parse(vec![uri("netsy://prod/peer/")]),
            Err(IdentityError::EmptyName { .. })
        ));
        assert_eq!(
            parse(vec![uri("netsy://prod/peer/Node_1")]),
            Err(IdentityError::InvalidName {
                uri: "netsy://prod/peer/Node_1".into(),
                reason: IdentifierError::InvalidChar('N')
            })
        );
    }

    #[test]
    fn malformed_authority() {
        for u in [
            "netsy://prod:443/peer/n",
            "netsy://u@prod/peer/n",
            "netsy://prod/peer/n?x",
            "netsy:prod/peer/n",
        ] {
            assert!(
                matches!(parse(vec![uri(u)]), Err(IdentityError::Malformed { .. })),
                "{u}"
            );
        }
    }

    #[test]
    fn identifier_rule() {
        assert_eq!(validate_identifier("node-1"), Ok(()));
        assert_eq!(validate_identifier(&"a".repeat(32)), Ok(()));
        assert_eq!(
            validate_identifier(&"a".repeat(33)),
            Err(IdentifierError::TooLong(33))
        );
        assert_eq!(validate_identifier(""), Err(IdentifierError::Empty));
        assert_eq!(validate_identifier("-a"), Err(IdentifierError::EdgeHyphen));
        assert_eq!(validate_identifier("a-"), Err(IdentifierError::EdgeHyphen));
        assert_eq!(
            validate_identifier("a--b"),
            Err(IdentifierError::DoubleHyphen)
        );
        assert_eq!(
            validate_identifier("a.b"),
            Err(IdentifierError::InvalidChar('.'))
        );
    }

    #[test]
    fn garbage_der() {
        assert!(matches!(
            Identity::from_der(b"not a certificate"),
            Err(IdentityError::BadCertificate(_))
        ));
    }
}
