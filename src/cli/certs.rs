//! `netsy certs`: generates a test CA, node certificates and client certificates with the right
//! URI SANs, in the directory layout of docs/design/0001-interfaces.md. For development and tests
//! only; production certificates come from cert-manager (or any CA) with the same SANs.
//!
//! Layout written under `--dir`:
//! ```text
//! ca.crt ca.key                      the CA (reused when already present)
//! server.crt server.key              node server certificate   } with exactly one --node;
//! client/peer.crt client/peer.key    node outbound certificate } with several, each node gets
//!                                                                <node-id>/ with these + ca.crt
//! clients/<name>.crt clients/<name>.key   one per --client (role client)
//! ```

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::tls::{CertAuthority, IssuedCert, LeafSpec, Validity, validate_identifier};

/// Arguments of `netsy certs`.
#[derive(clap::Args, Clone, Debug)]
pub struct CertsArgs {
    /// Output directory.
    #[arg(long, default_value = "./netsy-certs")]
    pub dir: PathBuf,
    /// Cluster id written into every URI SAN (netsy://{cluster}/...).
    #[arg(long, default_value = "netsy")]
    pub cluster_id: String,
    /// Node id to issue a server and a peer-client certificate for; repeatable.
    #[arg(long = "node", value_name = "NODE_ID")]
    pub nodes: Vec<String>,
    /// DNS SAN of node server certificates; `{node}` is replaced by the node id; repeatable.
    /// Default (when neither --dns nor --ip is given): localhost, {node}, 127.0.0.1, ::1.
    #[arg(long = "dns", value_name = "NAME")]
    pub dns_names: Vec<String>,
    /// IP SAN of node server certificates; repeatable.
    #[arg(long = "ip", value_name = "ADDR")]
    pub ips: Vec<IpAddr>,
    /// Client name to issue a role-`client` certificate for (clients/<name>.crt); repeatable.
    #[arg(long = "client", value_name = "NAME")]
    pub clients: Vec<String>,
    /// Lifetime of node and client certificates.
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    pub validity: Duration,
    /// Lifetime of a newly created CA.
    #[arg(long, default_value = "10years", value_parser = humantime::parse_duration)]
    pub ca_validity: Duration,
    /// Issue node and client certificates that expired a day ago (for tests).
    #[arg(long, conflicts_with = "not_yet_valid")]
    pub expired: bool,
    /// Issue node and client certificates that become valid in a day (for tests).
    #[arg(long)]
    pub not_yet_valid: bool,
    /// Overwrite existing node and client files (an existing CA is always reused).
    #[arg(long)]
    pub force: bool,
}

/// Runs `netsy certs`.
pub fn run_certs(args: CertsArgs) -> anyhow::Result<()> {
    validate_identifier(&args.cluster_id)
        .map_err(|e| anyhow::anyhow!("--cluster-id {:?}: {e}", args.cluster_id))?;
    for node in &args.nodes {
        validate_identifier(node).map_err(|e| anyhow::anyhow!("--node {node:?}: {e}"))?;
    }
    for name in &args.clients {
        if name.is_empty()
            || name.starts_with('.')
            || name.contains(['/', '\\'])
            || !name.is_ascii()
        {
            bail!(
                "--client {name:?}: use a non-empty ASCII name without '/' that does not start with '.'"
            );
        }
    }
    if args.nodes.is_empty() && args.clients.is_empty() {
        bail!("nothing to issue: give --node NODE_ID and/or --client NAME");
    }
    let leaf_validity = if args.expired {
        Validity::expired()
    } else if args.not_yet_valid {
        Validity::not_yet_valid()
    } else {
        Validity::starting_now(args.validity)
    };

    let dir = &args.dir;
    let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let ca = if ca_crt.exists() && ca_key.exists() {
        let cert =
            fs::read_to_string(&ca_crt).with_context(|| format!("reading {}", ca_crt.display()))?;
        let key =
            fs::read_to_string(&ca_key).with_context(|| format!("reading {}", ca_key.display()))?;
        CertAuthority::from_pem(&cert, &key)
            .with_context(|| format!("loading the CA from {}", dir.display()))?
    } else {
        let ca = CertAuthority::generate(
            &format!("netsy {} CA", args.cluster_id),
            Validity::starting_now(args.ca_validity),
        )?;
        write_file(&ca_crt, ca.cert_pem(), false, true)?;
        write_file(&ca_key, ca.key_pem(), true, true)?;
        ca
    };

    let (dns, ips) = if args.dns_names.is_empty() && args.ips.is_empty() {
        (
            vec!["localhost".to_string(), "{node}".to_string()],
            vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
            ],
        )
    } else {
        (args.dns_names.clone(), args.ips.clone())
    };
    for node in &args.nodes {
        let node_dir = if args.nodes.len() == 1 {
            dir.clone()
        } else {
            dir.join(node)
        };
        if node_dir != *dir {
            write_file(&node_dir.join("ca.crt"), ca.cert_pem(), false, true)?;
        }
        let dns: Vec<String> = dns.iter().map(|d| d.replace("{node}", node)).collect();
        let server = ca.issue(&LeafSpec::node_server(
            &args.cluster_id,
            node,
            dns,
            ips.clone(),
            leaf_validity,
        ))?;
        let peer = ca.issue(&LeafSpec::node_peer_client(
            &args.cluster_id,
            node,
            leaf_validity,
        ))?;
        write_pair(&node_dir, "server", &server, args.force)?;
        write_pair(&node_dir.join("client"), "peer", &peer, args.force)?;
        println!("node {node}: {}", node_dir.display());
    }
    for name in &args.clients {
        let client = ca.issue(&LeafSpec::client(&args.cluster_id, name, leaf_validity))?;
        write_pair(&dir.join("clients"), name, &client, args.force)?;
        println!(
            "client {name}: {}",
            dir.join("clients").join(format!("{name}.crt")).display()
        );
    }
    Ok(())
}

fn write_pair(dir: &Path, stem: &str, cert: &IssuedCert, force: bool) -> anyhow::Result<()> {
    write_file(
        &dir.join(format!("{stem}.crt")),
        &cert.cert_pem,
        false,
        force,
    )?;
    write_file(&dir.join(format!("{stem}.key")), &cert.key_pem, true, force)
}

/// Writes `contents` atomically (temporary file + rename), mode 0600 for keys.
fn write_file(path: &Path, contents: &str, secret: bool, overwrite: bool) -> anyhow::Result<()> {
    if !overwrite && path.exists() {
        bail!("{} exists (use --force to overwrite)", path.display());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{file_name}.tmp"));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut f = options
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(contents.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}
