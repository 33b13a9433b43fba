//! `netsy certs` output layout, and the startup checks of a node's own certificates (each
//! failure one clear line).

#[allow(dead_code)]
mod support;

use std::path::Path;

use clap::Parser;
use netsy::cli::{CertsArgs, run_certs};
use netsy::tls::{LeafSpec, NodeCertPolicy, TlsMetrics, TlsPaths, TlsReloader, check_node_files};
use support::tls::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    certs: CertsArgs,
}

fn certs(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let mut argv = vec![
        "netsy-certs".to_string(),
        format!("--dir={}", dir.display()),
    ];
    argv.extend(args.iter().map(|s| s.to_string()));
    run_certs(Cli::try_parse_from(argv)?.certs)
}

fn policy(node: &str, advertise: &[&str]) -> NodeCertPolicy {
    NodeCertPolicy {
        cluster_id: CLUSTER.into(),
        node_id: node.into(),
        advertise: advertise.iter().map(|s| s.to_string()).collect(),
    }
}

fn check_err(paths: &TlsPaths, policy: &NodeCertPolicy) -> String {
    let msg = check_node_files(paths, policy).unwrap_err().to_string();
    assert!(!msg.contains('\n'), "one line: {msg}");
    msg
}

#[test]
fn certs_writes_the_interfaces_layout_and_it_passes_the_startup_checks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certs(
        d,
        &[
            "--cluster-id",
            CLUSTER,
            "--node",
            "node-1",
            "--client",
            "etcdctl",
            "--client",
            "kube-apiserver",
        ],
    )
    .unwrap();
    for f in [
        "ca.crt",
        "ca.key",
        "server.crt",
        "server.key",
        "client/peer.crt",
        "client/peer.key",
        "clients/etcdctl.crt",
        "clients/etcdctl.key",
        "clients/kube-apiserver.crt",
        "clients/kube-apiserver.key",
    ] {
        assert!(d.join(f).is_file(), "{f} missing");
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(d.join("server.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    let paths = TlsPaths::in_dir(d);
    let p = policy(
        "node-1",
        &[
            "localhost:2378",
            "127.0.0.1:2381",
            "[::1]:2381",
            "node-1:2381",
        ],
    );
    TlsReloader::load(paths.clone(), Some(p), TlsMetrics::unregistered()).unwrap();

    let cert = std::fs::read(d.join("clients/etcdctl.crt")).unwrap();
    let der = rustls_pemfile::certs(&mut &cert[..])
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        netsy::tls::Identity::from_der(&der).unwrap().uri(),
        "netsy://test-cluster/client/etcdctl"
    );

    // Existing files are not overwritten without --force; the CA is reused.
    let ca_before = std::fs::read(d.join("ca.crt")).unwrap();
    assert!(certs(d, &["--cluster-id", CLUSTER, "--node", "node-1"]).is_err());
    certs(
        d,
        &[
            "--cluster-id",
            CLUSTER,
            "--node",
            "node-2",
            "--node",
            "node-3",
            "--dns",
            "{node}.netsy.svc",
        ],
    )
    .unwrap();
    assert_eq!(std::fs::read(d.join("ca.crt")).unwrap(), ca_before);
    let node3 = TlsPaths::in_dir(d.join("node-3"));
    check_node_files(&node3, &policy("node-3", &["node-3.netsy.svc:2378"])).unwrap();
    // The new certificates chain to the reused CA.
    assert!(check_node_files(&node3, &policy("node-3", &["node-2.netsy.svc:2378"])).is_err());

    assert!(certs(d, &["--cluster-id", "Bad_Cluster", "--node", "n"]).is_err());
    assert!(certs(d, &["--node", "Node_1"]).is_err());
}

#[test]
fn certs_can_issue_expired_and_not_yet_valid_certificates() {
    let dir = tempfile::tempdir().unwrap();
    certs(
        dir.path(),
        &["--cluster-id", CLUSTER, "--node", "node-1", "--expired"],
    )
    .unwrap();
    let msg = check_err(&TlsPaths::in_dir(dir.path()), &policy("node-1", &[]));
    assert!(msg.contains("server.crt: expired at"), "{msg}");

    let dir = tempfile::tempdir().unwrap();
    certs(
        dir.path(),
        &[
            "--cluster-id",
            CLUSTER,
            "--node",
            "node-1",
            "--not-yet-valid",
        ],
    )
    .unwrap();
    let msg = check_err(&TlsPaths::in_dir(dir.path()), &policy("node-1", &[]));
    assert!(msg.contains("server.crt: not valid before"), "{msg}");
}

#[test]
fn startup_checks_name_the_problem_in_one_line() {
    let ca = new_ca();
    let node = node_files(&ca, CLUSTER, "node-1");

    // URI SAN must name this node and this cluster.
    let msg = check_err(&node.paths, &policy("node-2", &[]));
    assert!(
        msg.contains(
            "URI SAN is netsy://test-cluster/peer/node-1, expected netsy://test-cluster/peer/node-2"
        ),
        "{msg}"
    );
    let mut other = policy("node-1", &[]);
    other.cluster_id = "prod".into();
    assert!(check_err(&node.paths, &other).contains("expected netsy://prod/peer/node-1"));

    // Advertise hosts must be covered by DNS/IP SANs.
    let msg = check_err(
        &node.paths,
        &policy("node-1", &["localhost:2378", "node-1.netsy.svc:2381"]),
    );
    assert!(
        msg.contains("not valid for advertise address \"node-1.netsy.svc:2381\""),
        "{msg}"
    );
    let msg = check_err(&node.paths, &policy("node-1", &["10.1.2.3:2381"]));
    assert!(msg.contains("10.1.2.3"), "{msg}");

    // The outbound (client) certificate is checked too.
    let files = node_files_with(
        &ca,
        server_spec(CLUSTER, "node-1"),
        LeafSpec::client(CLUSTER, "node-1", lifetime()),
    );
    let msg = check_err(&files.paths, &policy("node-1", &[]));
    assert!(
        msg.contains("peer.crt") && msg.contains("netsy://test-cluster/client/node-1"),
        "{msg}"
    );

    // Key must match the certificate.
    write_atomic(&node.paths.server_key, &node.client.key_pem);
    let msg = check_err(&node.paths, &policy("node-1", &[]));
    assert!(
        msg.contains("server.key") && msg.contains("does not match"),
        "{msg}"
    );

    // Chain must verify against the CA.
    let node = node_files(&ca, CLUSTER, "node-1");
    write_atomic(&node.paths.ca_cert, new_ca().cert_pem());
    let msg = check_err(&node.paths, &policy("node-1", &[]));
    assert!(msg.contains("not signed by the CA"), "{msg}");

    // Missing file.
    let node = node_files(&ca, CLUSTER, "node-1");
    std::fs::remove_file(&node.paths.client_key).unwrap();
    let msg = check_err(&node.paths, &policy("node-1", &[]));
    assert!(
        msg.contains("TLS client key") && msg.contains("cannot read"),
        "{msg}"
    );

    // Certificate without any identity.
    let mut spec = server_spec(CLUSTER, "node-1");
    spec.uris.clear();
    let files = node_files_with(
        &ca,
        spec,
        LeafSpec::node_peer_client(CLUSTER, "node-1", lifetime()),
    );
    let msg = check_err(&files.paths, &policy("node-1", &[]));
    assert!(msg.contains("no URI SAN"), "{msg}");
}
