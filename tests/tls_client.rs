//! Outbound peer connections: the node's client certificate is presented, and the server's
//! chain, hostname AND URI-SAN identity (role peer, cluster, node id) are verified.

#[allow(dead_code)]
mod support;

use std::time::Duration;

use netsy::tls::{LeafSpec, ListenerPolicy, TlsServer, connect, connect_lazy, peer_client_config};
use support::tls::*;

/// A peer-port server for `node-2` whose server certificate is built from `server`.
async fn peer_server(
    ca: &netsy::tls::CertAuthority,
    server: LeafSpec,
) -> (NodeFiles, RunningServer) {
    let files = node_files_with(
        ca,
        server,
        LeafSpec::node_peer_client(CLUSTER, "node-2", lifetime()),
    );
    let reloader = load(&files.paths);
    let running =
        start_server(TlsServer::new(reloader, ListenerPolicy::peer_port(CLUSTER)).unwrap()).await;
    (files, running)
}

#[tokio::test]
async fn outbound_peer_channel_presents_the_node_certificate() {
    let ca = new_ca();
    let (_files, server) = peer_server(&ca, server_spec(CLUSTER, "node-2")).await;
    let me = node_files(&ca, CLUSTER, "node-1");
    let reloader = load(&me.paths);

    let config = peer_client_config(reloader.clone(), CLUSTER, Some("node-2")).unwrap();
    let address = format!("localhost:{}", server.addr.port());
    let ch = connect(&address, config.clone(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        status(ch).await.unwrap(),
        "netsy://test-cluster/peer/node-1"
    );

    // Any node of the cluster, by IP address, lazily.
    let any = peer_client_config(reloader, CLUSTER, None).unwrap();
    let ch = connect_lazy(
        &format!("127.0.0.1:{}", server.addr.port()),
        any,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(
        status(ch).await.unwrap(),
        "netsy://test-cluster/peer/node-1"
    );
}

#[tokio::test]
async fn outbound_refuses_a_server_that_is_not_the_expected_peer() {
    let ca = new_ca();
    let me = node_files(&ca, CLUSTER, "node-1");
    let reloader = load(&me.paths);
    let localhost = |port: u16| format!("localhost:{port}");

    // Wrong node: the server is node-2, we dial expecting node-3.
    let (_f, server) = peer_server(&ca, server_spec(CLUSTER, "node-2")).await;
    let config = peer_client_config(reloader.clone(), CLUSTER, Some("node-3")).unwrap();
    let err = connect(
        &localhost(server.addr.port()),
        config,
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    let msg = error_chain(&err);
    assert!(
        msg.contains("expected netsy://test-cluster/peer/node-3"),
        "{msg}"
    );

    // Wrong cluster.
    let (_f, server) = peer_server(&ca, server_spec("other-cluster", "node-2")).await;
    let config = peer_client_config(reloader.clone(), CLUSTER, None).unwrap();
    let err = connect(
        &localhost(server.addr.port()),
        config,
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    let msg = error_chain(&err);
    assert!(msg.contains("netsy://other-cluster/peer/node-2"), "{msg}");

    // Wrong role: a client-role certificate serving on a peer port.
    let mut spec = server_spec(CLUSTER, "node-2");
    spec.uris = vec!["netsy://test-cluster/client/node-2".into()];
    let (_f, server) = peer_server(&ca, spec).await;
    let config = peer_client_config(reloader.clone(), CLUSTER, Some("node-2")).unwrap();
    let err = connect(
        &localhost(server.addr.port()),
        config,
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    let msg = error_chain(&err);
    assert!(msg.contains("netsy://test-cluster/client/node-2"), "{msg}");

    // Right identity but a dial name the certificate does not cover (no IP SAN) is refused.
    let mut spec = server_spec(CLUSTER, "node-2");
    spec.ips.clear();
    let (_f, server) = peer_server(&ca, spec).await;
    let config = peer_client_config(reloader.clone(), CLUSTER, Some("node-2")).unwrap();
    let err = connect(
        &format!("127.0.0.1:{}", server.addr.port()),
        config,
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    let msg = error_chain(&err);
    assert!(msg.contains("not valid for name"), "{msg}");

    // Right identity, server certificate from another CA.
    let (_f, server) = peer_server(&new_ca(), server_spec(CLUSTER, "node-2")).await;
    let config = peer_client_config(reloader, CLUSTER, Some("node-2")).unwrap();
    let err = connect(
        &localhost(server.addr.port()),
        config,
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    let msg = error_chain(&err);
    assert!(msg.contains("UnknownIssuer"), "{msg}");
}
