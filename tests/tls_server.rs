//! Inbound mutual TLS over loopback: who is admitted, who is refused and why, concurrency of
//! handshakes, and interop with the real etcdctl 3.5.

#[allow(dead_code)]
mod support;

use std::time::Duration;

use netsy::tls::{LeafSpec, ListenerPolicy, Role, TlsServer, Validity};
use support::tls::*;
use tokio::io::AsyncWriteExt;

struct Fixture {
    ca: netsy::tls::CertAuthority,
    _node: NodeFiles,
    reloader: std::sync::Arc<netsy::tls::TlsReloader>,
    server: RunningServer,
}

async fn fixture(policy: ListenerPolicy) -> Fixture {
    let ca = new_ca();
    let node = node_files(&ca, CLUSTER, "node-1");
    let reloader = load(&node.paths);
    let server = start_server(TlsServer::new(reloader.clone(), policy).unwrap()).await;
    Fixture {
        ca,
        _node: node,
        reloader,
        server,
    }
}

impl Fixture {
    fn client_cert(&self, spec: LeafSpec) -> std::sync::Arc<rustls::ClientConfig> {
        let cert = self.ca.issue(&spec).unwrap();
        plain_client(self.ca.cert_pem(), Some(&cert))
    }

    fn refusals(&self, reason: &str) -> u64 {
        self.reloader.metrics().refusals("client", reason)
    }

    /// The connection fails and `reason` is counted exactly once.
    async fn assert_refused(&self, config: std::sync::Arc<rustls::ClientConfig>, reason: &str) {
        let result = call_status(self.server.addr, config).await;
        assert!(
            result.is_err(),
            "{reason}: expected refusal, got {result:?}"
        );
        wait_until(&format!("refusal counter {reason}"), || {
            self.refusals(reason) == 1
        })
        .await;
    }
}

#[tokio::test]
async fn good_client_is_admitted_and_its_identity_reaches_the_service() {
    let f = fixture(client_policy()).await;
    let config = f.client_cert(LeafSpec::client(CLUSTER, "kube-apiserver", lifetime()));
    let seen = call_status(f.server.addr, config).await.unwrap();
    assert_eq!(seen, "netsy://test-cluster/client/kube-apiserver");
}

#[tokio::test]
async fn client_port_refuses_each_bad_certificate_with_its_reason() {
    let f = fixture(client_policy()).await;

    let other_ca = new_ca();
    let wrong_ca = other_ca
        .issue(&LeafSpec::client(CLUSTER, "x", lifetime()))
        .unwrap();
    f.assert_refused(plain_client(f.ca.cert_pem(), Some(&wrong_ca)), "unknown_ca")
        .await;

    f.assert_refused(
        f.client_cert(LeafSpec::client("other-cluster", "x", lifetime())),
        "wrong_cluster",
    )
    .await;
    f.assert_refused(
        f.client_cert(LeafSpec::node_peer_client(CLUSTER, "node-2", lifetime())),
        "wrong_role",
    )
    .await;
    f.assert_refused(
        f.client_cert(LeafSpec::client(CLUSTER, "x", Validity::expired())),
        "expired",
    )
    .await;
    f.assert_refused(
        f.client_cert(LeafSpec::client(CLUSTER, "x", Validity::not_yet_valid())),
        "not_yet_valid",
    )
    .await;
    f.assert_refused(plain_client(f.ca.cert_pem(), None), "missing_client_cert")
        .await;

    let mut admin = LeafSpec::client(CLUSTER, "x", lifetime());
    admin.uris = vec!["netsy://test-cluster/admin/root".into()];
    f.assert_refused(f.client_cert(admin), "bad_identity").await;

    // A retrying client is counted every time but does not break anything else.
    let config = f.client_cert(LeafSpec::client("other-cluster", "x", lifetime()));
    assert!(call_status(f.server.addr, config).await.is_err());
    wait_until("second wrong_cluster refusal", || {
        f.refusals("wrong_cluster") == 2
    })
    .await;

    let good = f.client_cert(LeafSpec::client(CLUSTER, "etcdctl", lifetime()));
    assert_eq!(
        call_status(f.server.addr, good).await.unwrap(),
        "netsy://test-cluster/client/etcdctl"
    );
}

#[tokio::test]
async fn peer_port_admits_peers_only_and_roles_are_a_parameter() {
    let peer = fixture(ListenerPolicy::peer_port(CLUSTER)).await;
    let node2 = peer.client_cert(LeafSpec::node_peer_client(CLUSTER, "node-2", lifetime()));
    assert_eq!(
        call_status(peer.server.addr, node2.clone()).await.unwrap(),
        "netsy://test-cluster/peer/node-2"
    );
    let client = peer.client_cert(LeafSpec::client(CLUSTER, "etcdctl", lifetime()));
    assert!(call_status(peer.server.addr, client).await.is_err());
    wait_until("wrong_role on the peer listener", || {
        peer.reloader.metrics().refusals("peer", "wrong_role") == 1
    })
    .await;

    let both = fixture(client_policy().with_roles(&[Role::Client, Role::Peer])).await;
    let node2 = both.client_cert(LeafSpec::node_peer_client(CLUSTER, "node-2", lifetime()));
    assert_eq!(
        call_status(both.server.addr, node2).await.unwrap(),
        "netsy://test-cluster/peer/node-2"
    );
}

#[tokio::test]
async fn a_stalled_handshake_neither_blocks_others_nor_lives_forever() {
    let ca = new_ca();
    let node = node_files(&ca, CLUSTER, "node-1");
    let reloader = load(&node.paths);
    let tls = TlsServer::new(reloader.clone(), client_policy())
        .unwrap()
        .with_handshake_timeout(Duration::from_millis(500));
    let server = start_server(tls).await;

    // Connects, sends half a ClientHello header, then nothing.
    let mut stalled = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();

    let good = plain_client(
        ca.cert_pem(),
        Some(
            &ca.issue(&LeafSpec::client(CLUSTER, "a", lifetime()))
                .unwrap(),
        ),
    );
    assert_eq!(
        call_status(server.addr, good).await.unwrap(),
        "netsy://test-cluster/client/a"
    );
    wait_until("handshake timeout", || {
        reloader.metrics().refusals("client", "handshake_timeout") == 1
    })
    .await;
    drop(stalled);
}

/// etcdctl 3.5.1 caps at TLS 1.2 when given a client certificate: refused by the default
/// TLS 1.3-only listener, served by one that allows TLS 1.2.
#[tokio::test]
async fn etcdctl_endpoint_status_over_mutual_tls() {
    let ca = new_ca();
    let node = node_files(&ca, CLUSTER, "node-1");
    let client = ca
        .issue(&LeafSpec::client(CLUSTER, "etcdctl", lifetime()))
        .unwrap();
    let dir = node.dir.path();
    write_atomic(&dir.join("etcdctl.crt"), &client.cert_pem);
    write_atomic(&dir.join("etcdctl.key"), &client.key_pem);
    let run = |port: u16, cert: &str, key: &str| {
        let mut cmd = tokio::process::Command::new(etcdctl());
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=https://127.0.0.1:{port}"))
            .arg(format!("--cacert={}", node.paths.ca_cert.display()))
            .arg(format!("--cert={}", dir.join(cert).display()))
            .arg(format!("--key={}", dir.join(key).display()))
            .args([
                "--dial-timeout=3s",
                "--command-timeout=5s",
                "-w",
                "json",
                "endpoint",
                "status",
            ])
            .kill_on_drop(true);
        async move {
            tokio::time::timeout(Duration::from_secs(30), cmd.output())
                .await
                .unwrap()
                .unwrap()
        }
    };

    let strict_reloader = load(&node.paths);
    let strict =
        start_server(TlsServer::new(strict_reloader.clone(), client_policy()).unwrap()).await;
    let out = run(strict.addr.port(), "etcdctl.crt", "etcdctl.key").await;
    assert!(
        !out.status.success(),
        "TLS 1.2-only etcdctl must be refused by a TLS 1.3-only listener"
    );
    wait_until("tls_error refusal", || {
        strict_reloader.metrics().refusals("client", "tls_error") >= 1
    })
    .await;

    let reloader = load(&node.paths);
    let server =
        start_server(TlsServer::new(reloader.clone(), client_policy().with_tls12(true)).unwrap())
            .await;
    let out = run(server.addr.port(), "etcdctl.crt", "etcdctl.key").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "etcdctl failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3.5.0"), "{stdout}");
    assert!(
        stdout.contains("netsy://test-cluster/client/etcdctl"),
        "{stdout}"
    );

    // The node's peer certificate is role peer: refused on the client port.
    let out = run(server.addr.port(), "client/peer.crt", "client/peer.key").await;
    assert!(
        !out.status.success(),
        "etcdctl with a peer certificate must be refused"
    );
    wait_until("etcdctl wrong_role", || {
        reloader.metrics().refusals("client", "wrong_role") >= 1
    })
    .await;
}
