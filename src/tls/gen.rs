//! Certificate generation: a test CA that issues node and client certificates with the right
//! URI SANs (used by `netsy certs`, in `cli::certs`, and by tests). For development and tests
//! only; production certificates come from cert-manager (or any CA) with the same SANs.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};

use super::files::system_to_unix;
use super::identity::serial_hex;

/// Validity period of a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

const SKEW: Duration = Duration::from_secs(300);
const DAY: Duration = Duration::from_secs(86_400);

impl Validity {
    /// Valid from five minutes ago (clock skew) for `lifetime`.
    pub fn starting_now(lifetime: Duration) -> Self {
        let now = SystemTime::now();
        Validity {
            not_before: now - SKEW,
            not_after: now + lifetime,
        }
    }

    /// Expired a day ago.
    pub fn expired() -> Self {
        let now = SystemTime::now();
        Validity {
            not_before: now - 2 * DAY,
            not_after: now - DAY,
        }
    }

    /// Valid from tomorrow.
    pub fn not_yet_valid() -> Self {
        let now = SystemTime::now();
        Validity {
            not_before: now + DAY,
            not_after: now + 2 * DAY,
        }
    }
}

/// What to put into a leaf certificate.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub common_name: String,
    /// URI SANs in order (the first `netsy://` one is the identity).
    pub uris: Vec<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub server_auth: bool,
    pub client_auth: bool,
    pub validity: Validity,
}

impl LeafSpec {
    /// A node's server certificate: `netsy://{cluster}/peer/{node}`, server and client auth.
    pub fn node_server(
        cluster_id: &str,
        node_id: &str,
        dns_names: Vec<String>,
        ips: Vec<IpAddr>,
        validity: Validity,
    ) -> Self {
        LeafSpec {
            common_name: node_id.to_string(),
            uris: vec![format!("netsy://{cluster_id}/peer/{node_id}")],
            dns_names,
            ips,
            server_auth: true,
            client_auth: true,
            validity,
        }
    }

    /// A node's outbound (peer client) certificate: `netsy://{cluster}/peer/{node}`, client auth.
    pub fn node_peer_client(cluster_id: &str, node_id: &str, validity: Validity) -> Self {
        LeafSpec {
            common_name: node_id.to_string(),
            uris: vec![format!("netsy://{cluster_id}/peer/{node_id}")],
            dns_names: Vec::new(),
            ips: Vec::new(),
            server_auth: false,
            client_auth: true,
            validity,
        }
    }

    /// A client certificate: `netsy://{cluster}/client/{name}`, client auth.
    pub fn client(cluster_id: &str, name: &str, validity: Validity) -> Self {
        LeafSpec {
            common_name: name.to_string(),
            uris: vec![format!("netsy://{cluster_id}/client/{name}")],
            dns_names: Vec::new(),
            ips: Vec::new(),
            server_auth: false,
            client_auth: true,
            validity,
        }
    }
}

/// A generated certificate and its private key, PEM encoded.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// Serial number, lowercase hex (as in [`super::Identity::serial`]).
    pub serial: String,
}

/// A CA able to issue certificates.
pub struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl CertAuthority {
    /// A new self-signed CA (ECDSA P-256).
    pub fn generate(common_name: &str, validity: Validity) -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, validity)?;
        params.serial_number = Some(random_serial().0);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(CertAuthority {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
            key_pem,
        })
    }

    /// An existing CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(CertAuthority {
            issuer,
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a leaf certificate with a fresh key and a random serial.
    pub fn issue(&self, spec: &LeafSpec) -> anyhow::Result<IssuedCert> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, spec.common_name.as_str());
        for uri in &spec.uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into()?));
        }
        for dns in &spec.dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(dns.as_str().try_into()?));
        }
        for ip in &spec.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if spec.server_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if spec.client_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, spec.validity)?;
        let (serial, serial_text) = random_serial();
        params.serial_number = Some(serial);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: serial_text,
        })
    }
}

fn set_validity(params: &mut CertificateParams, v: Validity) -> anyhow::Result<()> {
    params.not_before = time::OffsetDateTime::from_unix_timestamp(system_to_unix(v.not_before))?;
    params.not_after = time::OffsetDateTime::from_unix_timestamp(system_to_unix(v.not_after))?;
    Ok(())
}

/// 16 random bytes, positive, without a leading zero byte (so DER keeps all 16).
fn random_serial() -> (SerialNumber, String) {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f).max(1);
    (SerialNumber::from_slice(&bytes), serial_hex(&bytes))
}
