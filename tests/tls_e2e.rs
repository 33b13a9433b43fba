//! End-to-end mutual TLS against the real `netsy` binary: etcdctl 3.5 and the Rust etcd client
//! on the client port, every handshake refusal with its metric and log line, startup refusals of
//! bad node certificates, live rotation of the server certificate under an open Watch, and the
//! plaintext-on-non-loopback guard.
//!
//! Every wait polls with a deadline; nothing sleeps to synchronise.

#[allow(dead_code)]
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, Identity as ClientIdentity, TlsOptions,
    WatchOptions, WatchStream,
};
use netsy::tls::{CertAuthority, IssuedCert, LeafSpec, Validity};
use support::http::{http_get, metric};
use support::node::{Bucket, Node, NodeSpec, netsy_command};
use support::tls::{call_status, etcdctl, new_ca, plain_client, server_serial, write_atomic};
use support::wait::{NotReady, poll_every};
use tokio::process::Command;

/// The embedded default configuration's cluster id (no `--config` is given).
const CLUSTER: &str = "netsy";
const NODE: &str = "n1";
/// Upper bound of any single wait in this file.
const DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(25);

// ---------------------------------------------------------------------------------------------
// Harness: processes, HTTP, metrics, certificates.

/// A `netsy` command with no inherited NETSY_* settings and JSON logs.
fn netsy() -> Command {
    let mut cmd = Command::from(netsy_command());
    cmd.kill_on_drop(true);
    cmd
}

/// Runs `cmd` to completion within `limit` (killed otherwise).
async fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} did not finish within {limit:?}"))
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls `check` until it returns Some, or panics naming `what` after the deadline.
async fn poll<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll_every(what, DEADLINE, POLL, check).await
}

fn pem_der(pem: &str) -> Vec<u8> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .expect("a certificate")
        .unwrap()
        .to_vec()
}

fn serial_of(cert_pem: &str) -> String {
    netsy::tls::Identity::from_der(&pem_der(cert_pem))
        .unwrap()
        .serial
}

fn not_after_of(cert_pem: &str) -> i64 {
    let der = pem_der(cert_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.validity().not_after.timestamp()
}

/// Certificates from `netsy certs` (node `n1`, client `etcdctl`) plus their CA for issuing more.
struct Pki {
    tmp: tempfile::TempDir,
    /// Directory holding ca.crt, server.crt/.key, client/peer.crt/.key, clients/etcdctl.*.
    dir: PathBuf,
    ca: CertAuthority,
}

impl Pki {
    async fn new() -> Pki {
        Self::new_in("certs").await
    }

    async fn new_in(sub: &str) -> Pki {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(sub);
        let out = run_bounded(
            netsy().arg("certs").arg("--dir").arg(&dir).args([
                "--cluster-id",
                CLUSTER,
                "--node",
                NODE,
                "--client",
                "etcdctl",
            ]),
            DEADLINE,
        )
        .await;
        assert!(out.status.success(), "netsy certs: {}", text(&out.stderr));
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        let ca = CertAuthority::from_pem(&read("ca.crt"), &read("ca.key")).unwrap();
        Pki { tmp, dir, ca }
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.dir.join(rel)).unwrap()
    }

    fn ca_pem(&self) -> String {
        self.read("ca.crt")
    }

    /// A certificate and key written by `netsy certs` (`stem` without extension).
    fn issued(&self, stem: &str) -> IssuedCert {
        let cert_pem = self.read(&format!("{stem}.crt"));
        IssuedCert {
            serial: serial_of(&cert_pem),
            key_pem: self.read(&format!("{stem}.key")),
            cert_pem,
        }
    }

    /// A fresh server certificate for this node covering `localhost` and 127.0.0.1.
    fn new_server_cert(&self, lifetime: Duration) -> IssuedCert {
        self.ca
            .issue(&LeafSpec::node_server(
                CLUSTER,
                NODE,
                vec!["localhost".into()],
                vec![[127, 0, 0, 1].into()],
                Validity::starting_now(lifetime),
            ))
            .unwrap()
    }

    fn client_config(&self, spec: Option<&LeafSpec>) -> std::sync::Arc<rustls::ClientConfig> {
        let cert = spec.map(|s| self.ca.issue(s).unwrap());
        plain_client(&self.ca_pem(), cert.as_ref())
    }
}

/// The five NETSY_TLS_* variables for the interfaces.md layout under `dir`.
fn tls_env(dir: &Path) -> [(&'static str, PathBuf); 5] {
    [
        ("NETSY_TLS_CA_CERT", dir.join("ca.crt")),
        ("NETSY_TLS_SERVER_CERT", dir.join("server.crt")),
        ("NETSY_TLS_SERVER_KEY", dir.join("server.key")),
        ("NETSY_TLS_CLIENT_CERT", dir.join("client/peer.crt")),
        ("NETSY_TLS_CLIENT_KEY", dir.join("client/peer.key")),
    ]
}

/// A netsy node with its own data directory and free ports, not started yet.
struct NodeCmd {
    node: Node,
    dir: tempfile::TempDir,
}

fn node_cmd(tls_dir: Option<&Path>, bind_ip: &str, advertise_host: &str) -> NodeCmd {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = NodeSpec::new(dir.path().join("data"), Bucket::Default);
    spec.node_id = Some(NODE.into());
    spec.bind_ip = bind_ip.into();
    spec.advertise_client_host = advertise_host.into();
    spec.advertise_peer = Some("localhost:2381".into());
    if let Some(tls_dir) = tls_dir {
        spec.env
            .extend(tls_env(tls_dir).map(|(k, v)| (k.to_string(), v.display().to_string())));
    }
    NodeCmd {
        node: Node::prepare(spec, dir.path()),
        dir,
    }
}

impl NodeCmd {
    fn env(&mut self, key: &str, value: &str) {
        self.node.spec.env.push((key.into(), value.into()));
    }
}

/// A running node; killed on drop.
struct Server {
    node: Node,
    port: u16,
    health: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(tls_dir: &Path) -> Server {
        Self::start_with(|| node_cmd(Some(tls_dir), "127.0.0.1", "localhost")).await
    }

    /// Starts the node `make` builds; retries with new ports if a port was taken meanwhile.
    async fn start_with(make: impl Fn() -> NodeCmd) -> Server {
        for _ in 0..3 {
            let NodeCmd { mut node, dir } = make();
            node.spawn();
            match node.try_wait_ready(DEADLINE).await {
                Ok(()) => {
                    return Server {
                        port: node.client_port,
                        health: node.health_port,
                        node,
                        _dir: dir,
                    };
                }
                Err(NotReady::Exited(_)) if node.log_text().contains("Address already in use") => {
                    continue;
                }
                Err(NotReady::Exited(status)) => panic!(
                    "netsy exited before serving:\nexit {status}\n{}",
                    node.log_text()
                ),
                Err(NotReady::Timeout) => panic!(
                    "netsy not healthy within {DEADLINE:?}:\n{}",
                    node.log_text()
                ),
            }
        }
        panic!("no free ports after three attempts");
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn log(&self) -> String {
        self.node.log_text()
    }

    async fn metrics(&self) -> String {
        match http_get(self.health, "/metrics").await {
            Some((200, body)) => body,
            other => panic!("GET /metrics: {other:?}"),
        }
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.metrics().await, name, labels).unwrap_or(0.0)
    }

    async fn refusals(&self, reason: &str) -> f64 {
        self.metric(
            "netsy_tls_handshake_refusals_total",
            &[("listener", "client"), ("reason", reason)],
        )
        .await
    }

    /// Log lines recording a refused handshake with `reason`.
    fn refusal_log_lines(&self, reason: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| {
                l.contains("\"event\":\"tls_handshake_refused\"")
                    && l.contains(&format!("\"reason\":\"{reason}\""))
            })
            .map(str::to_string)
            .collect()
    }

    /// Waits for the refusal counter of `reason` to pass `before` and for exactly one log line.
    async fn assert_refusal_recorded(&self, reason: &str, before: f64) {
        poll(
            &format!("refusal counter {reason} > {before}"),
            || async move { (self.refusals(reason).await > before).then_some(()) },
        )
        .await;
        poll(
            &format!("one refusal log line for {reason}"),
            || async move { (self.refusal_log_lines(reason).len() == 1).then_some(()) },
        )
        .await;
    }
}

/// etcdctl 3.5 against `server` with the given certificate files.
struct Etcdctl {
    bin: PathBuf,
    flags: Vec<String>,
}

impl Etcdctl {
    fn new(port: u16, ca: &Path, cert: &Path, key: &Path) -> Etcdctl {
        Etcdctl {
            bin: etcdctl(),
            flags: vec![
                format!("--endpoints=https://localhost:{port}"),
                format!("--cacert={}", ca.display()),
                format!("--cert={}", cert.display()),
                format!("--key={}", key.display()),
                "--dial-timeout=2s".into(),
                "--command-timeout=10s".into(),
            ],
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        for (key, _) in std::env::vars() {
            if key.starts_with("ETCDCTL_") {
                cmd.env_remove(key);
            }
        }
        cmd.args(&self.flags).args(args).kill_on_drop(true);
        cmd
    }

    async fn run(&self, args: &[&str]) -> Output {
        run_bounded(&mut self.command(args), DEADLINE).await
    }

    /// Runs and asserts success; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    async fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-w", "json"]);
        serde_json::from_str(&self.ok(&all).await).unwrap()
    }
}

fn etcdctl_for(server: &Server, pki: &Pki, stem: &str) -> Etcdctl {
    Etcdctl::new(
        server.port,
        &pki.dir.join("ca.crt"),
        &pki.dir.join(format!("{stem}.crt")),
        &pki.dir.join(format!("{stem}.key")),
    )
}

/// The Rust etcd client over TLS as `clients/etcdctl`.
async fn rust_client(port: u16, pki: &Pki) -> Client {
    let cert = pki.issued("clients/etcdctl");
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(pki.ca_pem()))
        .identity(ClientIdentity::from_pem(cert.cert_pem, cert.key_pem))
        .domain_name("localhost");
    let options = ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(5));
    tokio::time::timeout(
        DEADLINE,
        Client::connect([format!("https://localhost:{port}")], Some(options)),
    )
    .await
    .expect("etcd client connect timed out")
    .expect("etcd client connect")
}

async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {DEADLINE:?}"))
}

/// The next PUT event on `stream` as (key, value), skipping responses without events.
async fn next_put(stream: &mut WatchStream) -> (String, String) {
    loop {
        let resp = bounded("watch event", stream.message())
            .await
            .expect("watch stream error")
            .expect("watch stream ended");
        assert!(!resp.canceled(), "watch canceled: {}", resp.cancel_reason());
        if let Some(ev) = resp.events().first() {
            assert_eq!(ev.event_type(), EventType::Put);
            let kv = ev.kv().unwrap();
            return (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
            );
        }
    }
}

/// A watch on `prefix` whose creation has been confirmed.
async fn open_watch(client: &mut Client, prefix: &str) -> WatchStream {
    let mut stream = bounded(
        "watch",
        client.watch(prefix, Some(WatchOptions::new().with_prefix())),
    )
    .await
    .expect("watch");
    let created = bounded("watch created", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert!(created.created(), "first watch response is not `created`");
    stream
}

// ---------------------------------------------------------------------------------------------
// 1-3: clients and refusals on one server.

#[tokio::test]
async fn etcdctl_rust_client_and_every_refusal_against_the_real_server() {
    let pki = Pki::new().await;
    let server = Server::start(&pki.dir).await;
    let ctl = etcdctl_for(&server, &pki, "clients/etcdctl");

    // --- 1. etcdctl 3.5 (TLS 1.2 with a client certificate).
    assert_eq!(ctl.ok(&["put", "e2e/a", "1"]).await.trim(), "OK");
    assert_eq!(ctl.ok(&["get", "e2e/a"]).await, "e2e/a\n1\n");
    let put = ctl.json(&["put", "e2e/w/0", "start"]).await;
    let rev = put["header"]["revision"].as_i64().unwrap().to_string();
    // From the revision of the first put, so the watch sees it whenever it gets established.
    let watch_out = tempfile::NamedTempFile::new().unwrap();
    let mut watch = ctl
        .command(&["watch", "e2e/w/", "--prefix", "--rev", &rev])
        .stdout(watch_out.reopen().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ctl.ok(&["put", "e2e/w/1", "one"]).await;
    let want = "PUT\ne2e/w/0\nstart\nPUT\ne2e/w/1\none\n";
    let start = Instant::now();
    loop {
        let got = std::fs::read_to_string(watch_out.path()).unwrap();
        if got == want {
            break;
        }
        if let Some(status) = watch.try_wait().unwrap() {
            panic!("etcdctl watch exited with {status}: {got}");
        }
        assert!(start.elapsed() < DEADLINE, "etcdctl watch printed {got:?}");
        tokio::time::sleep(POLL).await;
    }
    watch.kill().await.unwrap();

    let status = ctl.json(&["endpoint", "status"]).await;
    assert_eq!(
        status[0]["Endpoint"],
        format!("https://localhost:{}", server.port)
    );
    assert!(
        status[0]["Status"]["version"]
            .as_str()
            .unwrap()
            .starts_with("3.")
    );
    let members = ctl.json(&["member", "list"]).await;
    let urls = members["members"][0]["clientURLs"].as_array().unwrap();
    assert_eq!(urls.len(), 1);
    let url = urls[0].as_str().unwrap();
    assert!(url.starts_with("https://"), "client URL {url}");
    assert_eq!(url, format!("https://localhost:{}", server.port));

    // --- 2. the Rust etcd client (tonic + rustls, TLS 1.3).
    let mut client = rust_client(server.port, &pki).await;
    bounded("put", client.put("e2e/rust/a", "1", None))
        .await
        .unwrap();
    let got = bounded("get", client.get("e2e/a", None)).await.unwrap();
    assert_eq!(got.kvs()[0].value_str().unwrap(), "1");
    let mut stream = open_watch(&mut client, "e2e/rust/").await;
    bounded("put", client.put("e2e/rust/b", "2", None))
        .await
        .unwrap();
    assert_eq!(
        next_put(&mut stream).await,
        ("e2e/rust/b".into(), "2".into())
    );
    // A write from etcdctl (another connection, TLS 1.2) reaches the Rust client's watch.
    ctl.ok(&["put", "e2e/rust/c", "3"]).await;
    assert_eq!(
        next_put(&mut stream).await,
        ("e2e/rust/c".into(), "3".into())
    );

    // No refusals so far.
    assert!(
        !server
            .metrics()
            .await
            .lines()
            .any(|l| l.starts_with("netsy_tls_handshake_refusals_total{")),
        "unexpected refusals"
    );

    // --- 3. refusals: each fails, is counted under its reason and logged once.
    let addr = server.addr();
    let lifetime = Validity::starting_now(Duration::from_secs(3600));

    // Wrong CA: the client trusts the server but presents a certificate of another CA.
    let other_ca = new_ca();
    let foreign = other_ca
        .issue(&LeafSpec::client(CLUSTER, "intruder", lifetime))
        .unwrap();
    let before = server.refusals("unknown_ca").await;
    let r = call_status(addr, plain_client(&pki.ca_pem(), Some(&foreign))).await;
    assert!(r.is_err(), "wrong CA admitted: {r:?}");
    server.assert_refusal_recorded("unknown_ca", before).await;

    // Wrong cluster.
    let before = server.refusals("wrong_cluster").await;
    let r = call_status(
        addr,
        pki.client_config(Some(&LeafSpec::client("other-cluster", "x", lifetime))),
    )
    .await;
    assert!(r.is_err(), "other cluster admitted: {r:?}");
    server
        .assert_refusal_recorded("wrong_cluster", before)
        .await;

    // Wrong role: etcdctl with the node's own peer certificate (netsy://netsy/peer/n1).
    let before = server.refusals("wrong_role").await;
    let out = etcdctl_for(&server, &pki, "client/peer")
        .run(&["get", "e2e/a"])
        .await;
    assert!(
        !out.status.success(),
        "peer certificate admitted on the client port"
    );
    server.assert_refusal_recorded("wrong_role", before).await;
    // ...and a role-peer certificate over TLS 1.3 too (same log window, new subject).
    let before = server.refusals("wrong_role").await;
    let r = call_status(
        addr,
        pki.client_config(Some(&LeafSpec::node_peer_client(CLUSTER, "n2", lifetime))),
    )
    .await;
    assert!(r.is_err(), "peer role admitted: {r:?}");
    let srv = &server;
    poll("second wrong_role refusal", || async move {
        (srv.refusals("wrong_role").await > before).then_some(())
    })
    .await;

    // Expired.
    let before = server.refusals("expired").await;
    let r = call_status(
        addr,
        pki.client_config(Some(&LeafSpec::client(CLUSTER, "old", Validity::expired()))),
    )
    .await;
    assert!(r.is_err(), "expired certificate admitted: {r:?}");
    server.assert_refusal_recorded("expired", before).await;

    // Not yet valid.
    let before = server.refusals("not_yet_valid").await;
    let r = call_status(
        addr,
        pki.client_config(Some(&LeafSpec::client(
            CLUSTER,
            "early",
            Validity::not_yet_valid(),
        ))),
    )
    .await;
    assert!(r.is_err(), "not-yet-valid certificate admitted: {r:?}");
    server
        .assert_refusal_recorded("not_yet_valid", before)
        .await;

    // No client certificate.
    let before = server.refusals("missing_client_cert").await;
    let r = call_status(addr, pki.client_config(None)).await;
    assert!(r.is_err(), "client without certificate admitted: {r:?}");
    server
        .assert_refusal_recorded("missing_client_cert", before)
        .await;
    // etcdctl without --cert/--key fails as well.
    let out = run_bounded(
        Command::new(etcdctl()).args([
            format!("--endpoints=https://localhost:{}", server.port),
            format!("--cacert={}", pki.dir.join("ca.crt").display()),
            "--dial-timeout=2s".into(),
            "get".into(),
            "e2e/a".into(),
        ]),
        DEADLINE,
    )
    .await;
    assert!(
        !out.status.success(),
        "etcdctl without a client certificate admitted"
    );

    // Plaintext gRPC client to the TLS port.
    let before = server.refusals("tls_error").await;
    let plaintext = async {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", server.port))
                .unwrap()
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
                .map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(10), support::tls::status(channel))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())
    };
    let r = plaintext.await;
    assert!(r.is_err(), "plaintext client admitted: {r:?}");
    server.assert_refusal_recorded("tls_error", before).await;

    // Exactly the expected reasons were counted, and the good client still works.
    let exposition = server.metrics().await;
    let expected = [
        "unknown_ca",
        "wrong_cluster",
        "wrong_role",
        "expired",
        "not_yet_valid",
        "missing_client_cert",
        "tls_error",
    ];
    for line in exposition
        .lines()
        .filter(|l| l.starts_with("netsy_tls_handshake_refusals_total{"))
    {
        assert!(
            expected
                .iter()
                .any(|r| line.contains(&format!("reason=\"{r}\""))),
            "unexpected refusal series {line}"
        );
    }
    assert_eq!(ctl.ok(&["get", "e2e/a", "--print-value-only"]).await, "1\n");
    drop(client);
}

// ---------------------------------------------------------------------------------------------
// 4: startup refusals.

struct Failed {
    code: Option<i32>,
    elapsed: Duration,
    stderr: String,
}

async fn run_to_failure(node: NodeCmd) -> Failed {
    let start = Instant::now();
    let mut cmd = Command::from(node.node.command());
    let out = run_bounded(&mut cmd, Duration::from_secs(15)).await;
    let elapsed = start.elapsed();
    assert!(
        !out.status.success(),
        "netsy started although it should refuse:\n{}",
        text(&out.stderr)
    );
    Failed {
        code: out.status.code(),
        elapsed,
        stderr: text(&out.stderr),
    }
}

/// Exits non-zero within a few seconds with exactly one plain-text line naming the problem
/// (every `want` substring). The same error may also appear once as a structured log record.
fn assert_one_line(case: &str, f: &Failed, want: &[&str]) {
    eprintln!(
        "startup refusal [{case}]: exit {:?} after {:?}",
        f.code, f.elapsed
    );
    assert!(
        f.elapsed < Duration::from_secs(10),
        "{case}: took {:?}",
        f.elapsed
    );
    let plain: Vec<&str> = f
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('{'))
        .collect();
    assert_eq!(plain.len(), 1, "{case}: want one line, got:\n{}", f.stderr);
    for w in want {
        assert!(
            plain[0].contains(w),
            "{case}: {:?} does not name {w:?}",
            plain[0]
        );
    }
    let structured: Vec<&str> = f.stderr.lines().filter(|l| l.starts_with('{')).collect();
    assert!(
        structured.len() <= 1
            && structured.iter().all(|l| want.iter().all(|w| {
                // JSON-escaped quotes in the structured copy.
                l.contains(&w.replace('"', "\\\""))
            })),
        "{case}: unrelated log lines:\n{}",
        f.stderr
    );
}

/// A certificate directory like `pki.dir` whose server certificate/key are replaced.
fn dir_with_server(pki: &Pki, name: &str, cert_pem: &str, key_pem: &str) -> PathBuf {
    let dir = pki.tmp.path().join(name);
    for rel in ["ca.crt", "client/peer.crt", "client/peer.key"] {
        write_atomic(&dir.join(rel), &pki.read(rel));
    }
    write_atomic(&dir.join("server.crt"), cert_pem);
    write_atomic(&dir.join("server.key"), key_pem);
    dir
}

#[tokio::test]
async fn startup_refuses_certificates_not_made_for_this_node() {
    let pki = Pki::new().await;
    let lifetime = Validity::starting_now(Duration::from_secs(3600));
    let local = || (vec!["localhost".to_string()], vec![[127u8, 0, 0, 1].into()]);

    // Another node's server certificate (same CA and cluster).
    let (dns, ips) = local();
    let n2 = pki
        .ca
        .issue(&LeafSpec::node_server(CLUSTER, "n2", dns, ips, lifetime))
        .unwrap();
    let dir = dir_with_server(&pki, "other-node", &n2.cert_pem, &n2.key_pem);
    let f = run_to_failure(node_cmd(Some(&dir), "127.0.0.1", "localhost")).await;
    assert_one_line(
        "another node",
        &f,
        &[
            "server.crt",
            "netsy://netsy/peer/n2",
            "netsy://netsy/peer/n1",
        ],
    );

    // Another cluster's server certificate.
    let (dns, ips) = local();
    let other = pki
        .ca
        .issue(&LeafSpec::node_server("other", NODE, dns, ips, lifetime))
        .unwrap();
    let dir = dir_with_server(&pki, "other-cluster", &other.cert_pem, &other.key_pem);
    let f = run_to_failure(node_cmd(Some(&dir), "127.0.0.1", "localhost")).await;
    assert_one_line(
        "another cluster",
        &f,
        &[
            "server.crt",
            "netsy://other/peer/n1",
            "netsy://netsy/peer/n1",
        ],
    );

    // A key that does not match the certificate (the peer client key).
    let dir = dir_with_server(
        &pki,
        "key-mismatch",
        &pki.read("server.crt"),
        &pki.read("client/peer.key"),
    );
    let f = run_to_failure(node_cmd(Some(&dir), "127.0.0.1", "localhost")).await;
    assert_one_line(
        "key mismatch",
        &f,
        &["server.key", "does not match", "server.crt"],
    );

    // An advertise host the SANs do not cover.
    let f = run_to_failure(node_cmd(Some(&pki.dir), "127.0.0.1", "netsy.example.com")).await;
    assert_one_line("advertise host", &f, &["server.crt", "netsy.example.com"]);
}

// ---------------------------------------------------------------------------------------------
// 6: plaintext on a non-loopback address.

#[tokio::test]
async fn plaintext_on_non_loopback_needs_the_insecure_flag_and_warns() {
    // Refused without NETSY_INSECURE_PLAINTEXT...
    let f = run_to_failure(node_cmd(None, "0.0.0.0", "localhost")).await;
    assert_one_line("plaintext 0.0.0.0", &f, &["NETSY_BIND_CLIENT", "0.0.0.0"]);

    // ...and started with it, serving plaintext, with a warning in the log.
    let server = Server::start_with(|| {
        let mut node = node_cmd(None, "0.0.0.0", "localhost");
        node.env("NETSY_INSECURE_PLAINTEXT", "true");
        node
    })
    .await;
    let mut client = tokio::time::timeout(
        DEADLINE,
        Client::connect([format!("http://127.0.0.1:{}", server.port)], None),
    )
    .await
    .unwrap()
    .unwrap();
    bounded("plaintext put", client.put("e2e/plain", "1", None))
        .await
        .unwrap();
    let log = server.log();
    let warned = log.lines().any(|l| {
        (l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
            && (l.contains("plaintext") || l.contains("NETSY_INSECURE_PLAINTEXT"))
    });
    assert!(
        warned,
        "NETSY_INSECURE_PLAINTEXT=true on 0.0.0.0 started without a warning; log:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5: rotation.

/// Polls fresh handshakes until the server presents `serial`; returns how long that took.
async fn wait_for_serial(
    addr: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
    serial: &str,
    since: Instant,
) -> Duration {
    poll(&format!("server certificate {serial}"), || {
        let config = config.clone();
        async move {
            let seen = server_serial(addr, config).await.ok()?;
            (seen == serial).then(|| since.elapsed())
        }
    })
    .await
}

/// Serial (lowercase hex) of the certificate `openssl s_client -tls1_2` is shown by the
/// server, presenting `clients/etcdctl`; None when openssl is not installed.
async fn openssl_tls12_serial(server: &Server, pki: &Pki) -> Option<String> {
    let mut s_client = Command::new("openssl");
    s_client
        .args(["s_client", "-tls1_2", "-connect"])
        .arg(format!("127.0.0.1:{}", server.port))
        .args(["-servername", "localhost", "-CAfile"])
        .arg(pki.dir.join("ca.crt"))
        .arg("-cert")
        .arg(pki.dir.join("clients/etcdctl.crt"))
        .arg("-key")
        .arg(pki.dir.join("clients/etcdctl.key"));
    let Ok(out) = tokio::time::timeout(DEADLINE, async {
        s_client
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?
            .wait_with_output()
            .await
    })
    .await
    .expect("openssl s_client timed out") else {
        eprintln!("openssl not available: skipping the TLS 1.2 serial check");
        return None;
    };
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("TLSv1.2"),
        "openssl did not negotiate TLS 1.2:\n{stdout}{}",
        text(&out.stderr)
    );
    let begin = stdout
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("openssl s_client shows no certificate:\n{stdout}"));
    let end = stdout[begin..].find("-----END CERTIFICATE-----").unwrap()
        + begin
        + "-----END CERTIFICATE-----".len();
    Some(serial_of(&stdout[begin..end]))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn server_certificate_rotates_live_under_an_open_watch() {
    // The node reads its files through a `live` symlink, as Kubernetes' atomic writer lays out
    // a projected/CSI volume: `live -> v1`.
    let pki = Pki::new_in("v1").await;
    let root = pki.tmp.path();
    let live = root.join("live");
    std::os::unix::fs::symlink("v1", &live).unwrap();
    let server = Server::start(&live).await;
    let addr = server.addr();
    let probe = plain_client(&pki.ca_pem(), Some(&pki.issued("clients/etcdctl")));

    let v1 = pki.issued("server");
    assert_eq!(server_serial(addr, probe.clone()).await.unwrap(), v1.serial);
    let expiry = |m: &str| {
        metric(
            m,
            "netsy_tls_certificate_expiry_timestamp_seconds",
            &[("cert", "server")],
        )
    };
    let m = server.metrics().await;
    assert_eq!(expiry(&m), Some(not_after_of(&v1.cert_pem) as f64));
    for cert in ["ca", "client"] {
        let v = metric(
            &m,
            "netsy_tls_certificate_expiry_timestamp_seconds",
            &[("cert", cert)],
        )
        .unwrap_or_else(|| panic!("no expiry gauge for {cert}"));
        assert!(v as i64 > unix_now(), "{cert} expiry {v}");
    }

    // A client with an open Watch stream on a connection made before any swap.
    let mut client = rust_client(server.port, &pki).await;
    let mut stream = open_watch(&mut client, "e2e/rot/").await;
    bounded("put", client.put("e2e/rot/0", "before", None))
        .await
        .unwrap();
    assert_eq!(
        next_put(&mut stream).await,
        ("e2e/rot/0".into(), "before".into())
    );

    // Rotation 1: the files are rewritten one by one (key, then certificate), in place.
    let v2 = pki.new_server_cert(Duration::from_secs(30 * 86_400));
    assert_ne!(v2.serial, v1.serial);
    write_atomic(&live.join("server.key"), &v2.key_pem);
    write_atomic(&live.join("server.crt"), &v2.cert_pem);
    let swapped = Instant::now();
    let took_files = wait_for_serial(addr, probe.clone(), &v2.serial, swapped).await;
    // A TLS 1.2 client (OpenSSL, like etcdctl's Go stack) sees the new certificate as well.
    if let Some(serial) = openssl_tls12_serial(&server, &pki).await {
        assert_eq!(
            serial, v2.serial,
            "openssl s_client -tls1_2 saw another certificate"
        );
    }

    // The old stream still delivers, for writes on its own connection and on new ones.
    bounded("put", client.put("e2e/rot/1", "after-files", None))
        .await
        .unwrap();
    assert_eq!(
        next_put(&mut stream).await,
        ("e2e/rot/1".into(), "after-files".into())
    );
    let ctl = etcdctl_for(&server, &pki, "clients/etcdctl");
    ctl.ok(&["put", "e2e/rot/2", "etcdctl-new-conn"]).await;
    assert_eq!(
        next_put(&mut stream).await,
        ("e2e/rot/2".into(), "etcdctl-new-conn".into())
    );
    let mut fresh = rust_client(server.port, &pki).await;
    bounded("put", fresh.put("e2e/rot/3", "rust-new-conn", None))
        .await
        .unwrap();
    assert_eq!(
        next_put(&mut stream).await,
        ("e2e/rot/3".into(), "rust-new-conn".into())
    );
    let m = server.metrics().await;
    assert!(metric(&m, "netsy_tls_reloads_total", &[]).unwrap() >= 1.0);
    assert_eq!(expiry(&m), Some(not_after_of(&v2.cert_pem) as f64));
    assert!(
        server
            .log()
            .contains(&format!("\"server_serial\":\"{}\"", v2.serial))
            || server.log().contains(&v2.serial),
        "reload not logged"
    );

    // Rotation 2: a whole new directory swapped in atomically (`live -> v2`).
    let v3 = pki.new_server_cert(Duration::from_secs(60 * 86_400));
    let v2dir = root.join("v2");
    for rel in ["ca.crt", "client/peer.crt", "client/peer.key"] {
        write_atomic(&v2dir.join(rel), &pki.read(rel));
    }
    write_atomic(&v2dir.join("server.crt"), &v3.cert_pem);
    write_atomic(&v2dir.join("server.key"), &v3.key_pem);
    let tmp_link = root.join("live.tmp");
    std::os::unix::fs::symlink("v2", &tmp_link).unwrap();
    std::fs::rename(&tmp_link, &live).unwrap();
    let swapped = Instant::now();
    let took_dir = wait_for_serial(addr, probe.clone(), &v3.serial, swapped).await;
    let failures_clean = server
        .metric(
            "netsy_tls_reload_failures_total",
            &[("file", "server_cert")],
        )
        .await;
    bounded("put", client.put("e2e/rot/4", "after-dir", None))
        .await
        .unwrap();
    assert_eq!(
        next_put(&mut stream).await,
        ("e2e/rot/4".into(), "after-dir".into())
    );

    // A broken replacement (garbage PEM) is rejected: the old certificate stays in use.
    write_atomic(
        &live.join("server.crt"),
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    );
    let broken = Instant::now();
    let srv = &server;
    poll(
        "netsy_tls_reload_failures_total{file=server_cert} to rise",
        || async move {
            (srv.metric(
                "netsy_tls_reload_failures_total",
                &[("file", "server_cert")],
            )
            .await
                > failures_clean)
                .then_some(())
        },
    )
    .await;
    let took_reject = broken.elapsed();
    assert!(
        server
            .log()
            .lines()
            .any(|l| l.contains("\"event\":\"tls_reload_failed\"") && l.contains("server.crt")),
        "rejected reload not logged"
    );
    assert_eq!(server_serial(addr, probe.clone()).await.unwrap(), v3.serial);
    assert_eq!(
        expiry(&server.metrics().await),
        Some(not_after_of(&v3.cert_pem) as f64)
    );
    ctl.ok(&["put", "e2e/rot/5", "while-broken"]).await;
    assert_eq!(
        next_put(&mut stream).await,
        ("e2e/rot/5".into(), "while-broken".into())
    );

    // Repairing the file brings the next certificate in.
    let v4 = pki.new_server_cert(Duration::from_secs(3600));
    write_atomic(&live.join("server.key"), &v4.key_pem);
    write_atomic(&live.join("server.crt"), &v4.cert_pem);
    let repaired = Instant::now();
    let took_repair = wait_for_serial(addr, probe.clone(), &v4.serial, repaired).await;
    bounded("put", client.put("e2e/rot/6", "after-repair", None))
        .await
        .unwrap();
    assert_eq!(
        next_put(&mut stream).await,
        ("e2e/rot/6".into(), "after-repair".into())
    );

    eprintln!(
        "rotation: new certificate served {took_files:?} after in-place file replacement, \
         {took_dir:?} after the directory symlink swap, {took_repair:?} after repairing a broken \
         file; garbage PEM rejected after {took_reject:?} (poll interval 2 s)"
    );
    for (what, took) in [
        ("file replacement", took_files),
        ("symlink swap", took_dir),
        ("repair", took_repair),
    ] {
        assert!(
            took < Duration::from_secs(5),
            "{what}: new certificate only after {took:?} (poll interval 2 s)"
        );
    }
}
