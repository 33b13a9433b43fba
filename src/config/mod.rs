//! Node configuration: command-line flags over `NETSY_*` environment variables over the
//! embedded default (a single node on loopback with a local data directory).
//!
//! Owns: every setting's name, default and validation; each bad value fails with one line that
//! names the flag and variable. Never opens files other than the ones it validates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

pub mod cluster;

pub use cluster::ClusterConfig;

/// Settings of one node.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// JSONC cluster config file.
    #[arg(long, env = "NETSY_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id (lowercase letters, digits and single hyphens, at most 32 characters).
    #[arg(long, env = "NETSY_NODE_ID", default_value = "default")]
    pub node_id: String,
    /// Data directory holding the local SQLite copy.
    #[arg(long, env = "NETSY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Listen address of the etcd client API.
    #[arg(long, env = "NETSY_BIND_CLIENT", default_value = "127.0.0.1:2378")]
    pub bind_client: String,
    /// Address clients reach this node at (host:port); defaults to the bind address.
    #[arg(long, env = "NETSY_ADVERTISE_CLIENT")]
    pub advertise_client: Option<String>,
    /// Listen address of the peer API.
    #[arg(long, env = "NETSY_BIND_PEER", default_value = "127.0.0.1:2381")]
    pub bind_peer: String,
    /// Address peers reach this node at (host:port).
    #[arg(long, env = "NETSY_ADVERTISE_PEER")]
    pub advertise_peer: Option<String>,
    /// Listen address of the plain-HTTP health and metrics port.
    #[arg(long, env = "NETSY_BIND_HEALTH", default_value = "127.0.0.1:8080")]
    pub bind_health: String,
    /// Cluster CA bundle (PEM); enables mutual TLS on the client port.
    #[arg(long, env = "NETSY_TLS_CA_CERT")]
    pub tls_ca_cert: Option<PathBuf>,
    /// This node's server certificate (PEM, URI SAN netsy://{cluster}/peer/{node}).
    #[arg(long, env = "NETSY_TLS_SERVER_CERT")]
    pub tls_server_cert: Option<PathBuf>,
    /// Key of the server certificate.
    #[arg(long, env = "NETSY_TLS_SERVER_KEY")]
    pub tls_server_key: Option<PathBuf>,
    /// Certificate presented on outbound peer connections.
    #[arg(long, env = "NETSY_TLS_CLIENT_CERT")]
    pub tls_client_cert: Option<PathBuf>,
    /// Key of the outbound peer certificate.
    #[arg(long, env = "NETSY_TLS_CLIENT_KEY")]
    pub tls_client_key: Option<PathBuf>,
    /// Allow plaintext listeners on non-loopback addresses (insecure; for trusted networks only).
    #[arg(long, env = "NETSY_INSECURE_PLAINTEXT", default_value_t = false)]
    pub insecure_plaintext: bool,
    /// Largest accepted write request in bytes (etcd's --max-request-bytes).
    #[arg(long, env = "NETSY_MAX_REQUEST_BYTES", default_value_t = 1536 * 1024)]
    pub max_request_bytes: usize,
    /// Interval of progress notifications to watches that asked for them ("10m", "5s").
    #[arg(long, env = "NETSY_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub watch_progress_notify_interval: Duration,
    /// The quorum write path (on by default): with `replication.quorum` not 0 and more than one
    /// node, a write is acknowledged once enough Replicas hold it and the bucket is written in
    /// batches (docs/design/0010). `false` makes this node's writes wait for their chunk in the
    /// bucket whatever `replication.quorum` says (as `replication.quorum` 0 does cluster-wide).
    #[arg(
        long,
        env = "NETSY_QUORUM_WRITES",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub quorum_writes: bool,
    /// Before the quorum write path was on by default it had to be turned on with this variable;
    /// `true` is now the default and needs nothing, `false` still turns it off.
    #[arg(
        long,
        env = "NETSY_EXPERIMENTAL_QUORUM_WRITES",
        hide = true,
        action = clap::ArgAction::Set
    )]
    pub experimental_quorum_writes: Option<bool>,
    /// Accepted for compatibility with the original's environment; the election needs no port.
    #[arg(long, env = "NETSY_BIND_ELECTION", hide = true)]
    pub bind_election: Option<String>,
    /// Accepted for compatibility with the original's environment; the election needs no port.
    #[arg(long, env = "NETSY_ADVERTISE_ELECTION", hide = true)]
    pub advertise_election: Option<String>,
}

/// The embedded default's bucket: a `bucket` directory beside the data directory, so that
/// deleting the data directory (the cache) keeps the system of record.
pub fn default_bucket_dir(data_dir: &std::path::Path) -> PathBuf {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "netsy-data".into());
    data_dir.with_file_name(format!("{name}-bucket"))
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Validated node settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: String,
    pub cluster_id: String,
    pub cluster: ClusterConfig,
    pub data_dir: PathBuf,
    pub bind_client: SocketAddr,
    pub advertise_client: String,
    pub bind_peer: SocketAddr,
    pub advertise_peer: String,
    pub bind_health: SocketAddr,
    pub max_request_bytes: usize,
    pub watch_progress_notify_interval: Duration,
    /// Mutual TLS material; None = plaintext (loopback, or explicitly insecure).
    pub tls: Option<crate::tls::TlsPaths>,
    /// The quorum write path is on (NETSY_QUORUM_WRITES, default true).
    pub quorum_writes: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: std::borrow::Cow<'static, str>,
    pub message: String,
}

/// A config error. Control characters in the message (a value quoted back from the file may hold
/// a newline) are escaped, so the error stays one line.
fn err(key: impl Into<std::borrow::Cow<'static, str>>, message: impl Into<String>) -> ConfigError {
    let mut message: String = message.into();
    if message.chars().any(char::is_control) {
        let mut one_line = String::with_capacity(message.len() + 8);
        for c in message.chars() {
            if c.is_control() {
                one_line.extend(c.escape_default());
            } else {
                one_line.push(c);
            }
        }
        message = one_line;
    }
    ConfigError {
        key: key.into(),
        message,
    }
}

/// Netsy's identifier rule for node and cluster ids.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-')
        && !id.contains("--")
}

fn addr(key: &'static str, s: &str) -> Result<SocketAddr, ConfigError> {
    let s = if let Some(port) = s.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else {
        s.to_string()
    };
    s.parse().map_err(|e| {
        err(
            key,
            format!("invalid listen address {s:?} (want host:port): {e}"),
        )
    })
}

impl NodeArgs {
    /// Whether the quorum write path is on: `NETSY_QUORUM_WRITES` (default true), unless the
    /// variable of the builds where it was opt-in says `false`.
    fn effective_quorum_writes(&self) -> bool {
        match self.experimental_quorum_writes {
            Some(true) => {
                tracing::info!(
                    "NETSY_EXPERIMENTAL_QUORUM_WRITES=true is no longer needed: the quorum write path is on by default"
                );
                self.quorum_writes
            }
            Some(false) => {
                tracing::warn!(
                    "NETSY_EXPERIMENTAL_QUORUM_WRITES=false: this node's writes wait for the bucket (NETSY_QUORUM_WRITES=false says the same)"
                );
                false
            }
            None => self.quorum_writes,
        }
    }

    pub fn validate(&self) -> Result<NodeConfig, ConfigError> {
        if !valid_id(&self.node_id) {
            return Err(err(
                "NETSY_NODE_ID (--node-id)",
                format!(
                    "{:?} is not a valid id: lowercase letters, digits and single inner hyphens, at most 32 characters",
                    self.node_id
                ),
            ));
        }
        let bind_client = addr("NETSY_BIND_CLIENT (--bind-client)", &self.bind_client)?;
        let bind_peer = addr("NETSY_BIND_PEER (--bind-peer)", &self.bind_peer)?;
        let bind_health = addr("NETSY_BIND_HEALTH (--bind-health)", &self.bind_health)?;
        let tls = self.tls_paths()?;
        if tls.is_none() && !bind_client.ip().is_loopback() && !self.insecure_plaintext {
            return Err(err(
                "NETSY_BIND_CLIENT (--bind-client)",
                format!(
                    "refusing to serve the client API in plaintext on non-loopback address {bind_client}; configure TLS or set NETSY_INSECURE_PLAINTEXT=true"
                ),
            ));
        }
        if tls.is_none() && !bind_client.ip().is_loopback() {
            tracing::warn!(
                address = %bind_client,
                "NETSY_INSECURE_PLAINTEXT: serving the client API in plaintext on a non-loopback address; anyone who can reach it can read and write everything"
            );
        }
        let quorum_writes = self.effective_quorum_writes();
        if self.bind_election.is_some() || self.advertise_election.is_some() {
            tracing::warn!(
                "NETSY_BIND_ELECTION / NETSY_ADVERTISE_ELECTION are ignored: the election needs no port"
            );
        }
        if self.max_request_bytes < 1024 {
            return Err(err(
                "NETSY_MAX_REQUEST_BYTES (--max-request-bytes)",
                "must be at least 1024",
            ));
        }
        let data_dir = match (&self.data_dir, &self.config) {
            (Some(d), _) => d.clone(),
            (None, Some(_)) => PathBuf::from("/var/lib/netsy"),
            (None, None) => PathBuf::from("netsy-data"),
        };
        let cluster = match &self.config {
            Some(path) => {
                let (cfg, warnings) = cluster::load(path)?;
                for w in warnings {
                    // The quorum path acts on the replication keys.
                    if quorum_writes && w.starts_with("replication.") {
                        continue;
                    }
                    tracing::warn!("{}: {w}", path.display());
                }
                cfg
            }
            None => cluster::embedded_default(&default_bucket_dir(&data_dir)),
        };
        let advertise_client = self
            .advertise_client
            .clone()
            .unwrap_or_else(|| bind_client.to_string());
        let advertise_peer = self
            .advertise_peer
            .clone()
            .unwrap_or_else(|| bind_peer.to_string());
        Ok(NodeConfig {
            node_id: self.node_id.clone(),
            cluster_id: cluster.cluster_id.clone(),
            cluster,
            data_dir,
            bind_client,
            advertise_client,
            bind_peer,
            advertise_peer,
            bind_health,
            max_request_bytes: self.max_request_bytes,
            watch_progress_notify_interval: self.watch_progress_notify_interval,
            tls,
            quorum_writes,
        })
    }

    /// TLS files: the variables when any is set (then all five are needed); the standard
    /// layout under /etc/netsy/certs when a cluster config is used and none is set; otherwise
    /// plaintext.
    fn tls_paths(&self) -> Result<Option<crate::tls::TlsPaths>, ConfigError> {
        let given = [
            ("NETSY_TLS_CA_CERT (--tls-ca-cert)", &self.tls_ca_cert),
            (
                "NETSY_TLS_SERVER_CERT (--tls-server-cert)",
                &self.tls_server_cert,
            ),
            (
                "NETSY_TLS_SERVER_KEY (--tls-server-key)",
                &self.tls_server_key,
            ),
            (
                "NETSY_TLS_CLIENT_CERT (--tls-client-cert)",
                &self.tls_client_cert,
            ),
            (
                "NETSY_TLS_CLIENT_KEY (--tls-client-key)",
                &self.tls_client_key,
            ),
        ];
        if given.iter().all(|(_, v)| v.is_none()) {
            if self.config.is_some() && !self.insecure_plaintext {
                return Ok(Some(crate::tls::TlsPaths::in_dir(std::path::Path::new(
                    DEFAULT_CERT_DIR,
                ))));
            }
            return Ok(None);
        }
        if let Some((key, _)) = given.iter().find(|(_, v)| v.is_none()) {
            return Err(err(*key, "required when any NETSY_TLS_* file is given"));
        }
        let p = |v: &Option<PathBuf>| v.clone().unwrap_or_default();
        Ok(Some(crate::tls::TlsPaths {
            ca_cert: p(&self.tls_ca_cert),
            server_cert: p(&self.tls_server_cert),
            server_key: p(&self.tls_server_key),
            client_cert: p(&self.tls_client_cert),
            client_key: p(&self.tls_client_key),
        }))
    }
}

/// Where certificates live by default (systemd and the image use this layout).
pub const DEFAULT_CERT_DIR: &str = "/etc/netsy/certs";

/// The built-in defaults that packaging relies on (ports, paths, variables), as JSON. The Helm
/// chart, systemd unit and image are tested against this.
pub fn defaults_json() -> String {
    serde_json::json!({
        "ports": { "client": 2378, "peer": 2381, "health": 8080 },
        "paths": {
            "binary": "/usr/bin/netsy",
            "config": "/etc/netsy/config.jsonc",
            "data_dir": "/var/lib/netsy",
            "ca_cert": "/etc/netsy/certs/ca.crt",
            "server_cert": "/etc/netsy/certs/server.crt",
            "server_key": "/etc/netsy/certs/server.key",
            "client_cert": "/etc/netsy/certs/client/peer.crt",
            "client_key": "/etc/netsy/certs/client/peer.key"
        },
        "env": [
            "NETSY_CONFIG", "NETSY_NODE_ID", "NETSY_DATA_DIR", "NETSY_BIND_CLIENT", "NETSY_ADVERTISE_CLIENT",
            "NETSY_BIND_PEER", "NETSY_ADVERTISE_PEER", "NETSY_BIND_HEALTH", "NETSY_TLS_CA_CERT",
            "NETSY_TLS_SERVER_CERT", "NETSY_TLS_SERVER_KEY", "NETSY_TLS_CLIENT_CERT", "NETSY_TLS_CLIENT_KEY",
            "NETSY_DEBUG", "NETSY_LOG_FORMAT", "NETSY_INSECURE_PLAINTEXT"
        ],
        "endpoints": ["/livez", "/health", "/readyz", "/version", "/metrics"]
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        node: NodeArgs,
    }

    fn quorum_writes(args: &[&str]) -> bool {
        use clap::Parser;
        let cli = Cli::try_parse_from(std::iter::once("netsy").chain(args.iter().copied()))
            .expect("arguments parse");
        cli.node.effective_quorum_writes()
    }

    #[test]
    fn the_quorum_write_path_is_on_unless_turned_off() {
        assert!(quorum_writes(&[]));
        assert!(quorum_writes(&["--quorum-writes", "true"]));
        assert!(!quorum_writes(&["--quorum-writes", "false"]));
        // The variable of the builds where it was opt-in: `true` changes nothing.
        assert!(quorum_writes(&["--experimental-quorum-writes", "true"]));
        assert!(!quorum_writes(&["--experimental-quorum-writes", "false"]));
        assert!(!quorum_writes(&[
            "--quorum-writes",
            "false",
            "--experimental-quorum-writes",
            "true"
        ]));
    }

    #[test]
    fn ids() {
        for ok in ["netsy", "node-1", "a", "netsy-0"] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a--b", "A", "a_b", &"x".repeat(33)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
