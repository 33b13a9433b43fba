//! Certificate rotation without restart: new handshakes see new files, established streams keep
//! working, broken replacements are rejected and counted, CSI-style symlink swaps are seen.

#[allow(dead_code)]
mod support;

use std::time::Duration;

use netsy::tls::{LeafSpec, ReloadOutcome, TlsServer};
use support::tls::*;

#[tokio::test]
async fn rotation_keeps_open_streams_and_new_connections_see_the_new_certificate() {
    let ca = new_ca();
    let node = node_files(&ca, CLUSTER, "node-1");
    let reloader = load(&node.paths);
    let server = start_server(TlsServer::new(reloader.clone(), client_policy()).unwrap()).await;
    let client_cert = ca
        .issue(&LeafSpec::client(CLUSTER, "watcher", lifetime()))
        .unwrap();
    let config = plain_client(ca.cert_pem(), Some(&client_cert));

    assert_eq!(
        server_serial(server.addr, config.clone()).await.unwrap(),
        node.server.serial
    );
    let old_channel = channel(server.addr, config.clone()).await.unwrap();
    let mut stream = snapshot(old_channel.clone()).await;
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.blob, b"first");

    // Swap in a new server certificate.
    let renewed = ca.issue(&server_spec(CLUSTER, "node-1")).unwrap();
    replace_server_cert(&node.paths, &renewed);
    assert!(matches!(reloader.reload_now(), ReloadOutcome::Reloaded));
    assert_eq!(reloader.metrics().reloads(), 1);
    assert_eq!(reloader.current().server_serial(), renewed.serial);
    assert!(matches!(reloader.reload_now(), ReloadOutcome::Unchanged));

    // A new connection is served the new certificate.
    assert_eq!(
        server_serial(server.addr, config.clone()).await.unwrap(),
        renewed.serial
    );
    assert_ne!(renewed.serial, node.server.serial);

    // The stream opened before the swap keeps working, and so does its connection.
    server.stub.release.notify_one();
    let second = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.blob, b"second");
    assert_eq!(
        status(old_channel).await.unwrap(),
        "netsy://test-cluster/client/watcher"
    );
}

#[tokio::test]
async fn broken_replacements_keep_the_old_certificate_and_are_counted_once() {
    let ca = new_ca();
    let node = node_files(&ca, CLUSTER, "node-1");
    let reloader = load(&node.paths);
    let metrics = reloader.metrics().clone();
    let server = start_server(TlsServer::new(reloader.clone(), client_policy()).unwrap()).await;
    let config = plain_client(
        ca.cert_pem(),
        Some(
            &ca.issue(&LeafSpec::client(CLUSTER, "c", lifetime()))
                .unwrap(),
        ),
    );
    let original = node.server.serial.clone();

    // 1. Unparseable certificate.
    write_atomic(
        &node.paths.server_cert,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    let ReloadOutcome::Rejected(e) = reloader.reload_now() else {
        panic!("garbage must be rejected")
    };
    assert!(e.to_string().contains("server.crt"), "{e}");
    assert_eq!(metrics.reload_failures("server_cert"), 1);
    // Still broken: not reported again.
    assert!(matches!(reloader.reload_now(), ReloadOutcome::Unchanged));
    assert_eq!(metrics.reload_failures("server_cert"), 1);
    assert_eq!(
        server_serial(server.addr, config.clone()).await.unwrap(),
        original
    );

    // 2. Valid certificate whose key is not the one on disk.
    let other = ca.issue(&server_spec(CLUSTER, "node-1")).unwrap();
    write_atomic(&node.paths.server_cert, &other.cert_pem);
    let ReloadOutcome::Rejected(e) = reloader.reload_now() else {
        panic!("key mismatch must be rejected")
    };
    assert!(e.to_string().contains("does not match"), "{e}");
    assert_eq!(metrics.reload_failures("server_key"), 1);

    // 3. Certificate and key from another CA.
    let foreign = new_ca().issue(&server_spec(CLUSTER, "node-1")).unwrap();
    replace_server_cert(&node.paths, &foreign);
    let ReloadOutcome::Rejected(e) = reloader.reload_now() else {
        panic!("foreign CA must be rejected")
    };
    assert!(e.to_string().contains("not signed by the CA"), "{e}");
    assert_eq!(metrics.reload_failures("server_cert"), 2);

    // 4. Expired certificate.
    let mut spec = server_spec(CLUSTER, "node-1");
    spec.validity = netsy::tls::Validity::expired();
    replace_server_cert(&node.paths, &ca.issue(&spec).unwrap());
    let ReloadOutcome::Rejected(e) = reloader.reload_now() else {
        panic!("expired must be rejected")
    };
    assert!(e.to_string().contains("expired at"), "{e}");
    assert_eq!(metrics.reload_failures("server_cert"), 3);

    assert_eq!(metrics.reloads(), 0);
    assert_eq!(reloader.current().server_serial(), original);
    assert_eq!(
        server_serial(server.addr, config.clone()).await.unwrap(),
        original
    );

    // A good file again is picked up.
    let good = ca.issue(&server_spec(CLUSTER, "node-1")).unwrap();
    replace_server_cert(&node.paths, &good);
    assert!(matches!(reloader.reload_now(), ReloadOutcome::Reloaded));
    assert_eq!(
        server_serial(server.addr, config).await.unwrap(),
        good.serial
    );
}

#[tokio::test]
async fn polling_sees_a_csi_style_symlink_swap() {
    use std::os::unix::fs::symlink;
    let ca = new_ca();
    let node = node_files(&ca, CLUSTER, "node-1");
    // Turn the directory into the CSI driver's layout: files are symlinks into ..data, which is
    // a symlink to a timestamped directory; a renewal writes a new directory and swaps ..data.
    let dir = tempfile::tempdir().unwrap();
    let gen1 = dir.path().join("..2024_01_01");
    for (name, src) in [
        ("ca.crt", &node.paths.ca_cert),
        ("tls.crt", &node.paths.server_cert),
        ("tls.key", &node.paths.server_key),
    ] {
        write_atomic(&gen1.join(name), &std::fs::read_to_string(src).unwrap());
    }
    symlink("..2024_01_01", dir.path().join("..data")).unwrap();
    for name in ["ca.crt", "tls.crt", "tls.key"] {
        symlink(format!("..data/{name}"), dir.path().join(name)).unwrap();
    }
    let paths = netsy::tls::TlsPaths {
        ca_cert: dir.path().join("ca.crt"),
        server_cert: dir.path().join("tls.crt"),
        server_key: dir.path().join("tls.key"),
        client_cert: node.paths.client_cert.clone(),
        client_key: node.paths.client_key.clone(),
    };
    let reloader = load(&paths);
    let poller = reloader.spawn_polling(Duration::from_millis(50));

    let renewed = ca.issue(&server_spec(CLUSTER, "node-1")).unwrap();
    let gen2 = dir.path().join("..2024_02_01");
    write_atomic(&gen2.join("ca.crt"), ca.cert_pem());
    write_atomic(&gen2.join("tls.crt"), &renewed.cert_pem);
    write_atomic(&gen2.join("tls.key"), &renewed.key_pem);
    symlink("..2024_02_01", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();

    let metrics = reloader.metrics().clone();
    wait_until("poller reload", || metrics.reloads() == 1).await;
    assert_eq!(reloader.current().server_serial(), renewed.serial);
    assert_eq!(metrics.reload_failures("server_cert"), 0);
    poller.abort();
}

#[tokio::test]
async fn expiry_gauge_and_metric_registration() {
    let registry = prometheus::Registry::new();
    let metrics = netsy::tls::TlsMetrics::register(&registry).unwrap();
    let ca = new_ca();
    let node = node_files(&ca, CLUSTER, "node-1");
    let _reloader = netsy::tls::TlsReloader::load(node.paths.clone(), None, metrics).unwrap();
    let names: Vec<String> = registry
        .gather()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    for name in [
        "netsy_tls_reloads_total",
        "netsy_tls_reload_failures_total",
        "netsy_tls_certificate_expiry_timestamp_seconds",
    ] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
    }
    let expiry = registry
        .gather()
        .into_iter()
        .find(|f| f.name() == "netsy_tls_certificate_expiry_timestamp_seconds")
        .unwrap();
    let certs: Vec<String> = expiry
        .get_metric()
        .iter()
        .map(|m| m.get_label()[0].value().to_string())
        .collect();
    assert_eq!(certs.len(), 3, "{certs:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    for m in expiry.get_metric() {
        assert!(m.get_gauge().get_value() > now, "expiry in the past");
    }
}
