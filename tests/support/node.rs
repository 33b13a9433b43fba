//! One netsy server process (the real binary) on loopback: start, wait until healthy, kill -9,
//! restart, and read what it logged. Logs are JSON (one file per run) so that fields such as
//! `loading_stage_completed`'s can be read back.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::weed::free_ports;

/// Where the node keeps its bucket.
#[derive(Clone, Debug)]
pub enum Bucket {
    /// No config file: the embedded default (`<data-dir>-bucket`).
    Default,
    /// `{"storage":{"provider":"local","path":…}}`.
    Local(PathBuf),
    /// `{"storage":{"provider":"s3","bucket_name":…}}` at `endpoint` (seaweedfs or a proxy).
    S3 { bucket: String, endpoint: String },
}

#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub data_dir: PathBuf,
    pub bucket: Bucket,
    pub key_prefix: String,
    pub snapshot_threshold_records: i64,
    /// `--node-id` (default: netsy's own default).
    pub node_id: Option<String>,
    /// `heartbeat_interval` in the cluster config (e.g. "300ms").
    pub heartbeat: Option<String>,
    /// `compaction_interval` in the cluster config (e.g. "1s").
    pub compaction_interval: Option<String>,
    /// Group id the process runs with (the fault harness's network rules match on it).
    pub gid: Option<u32>,
    /// Extra environment (e.g. libfaketime's).
    pub env: Vec<(String, String)>,
    /// Overrides the advertised peer address (host:port).
    pub advertise_peer: Option<String>,
}

impl NodeSpec {
    pub fn new(data_dir: PathBuf, bucket: Bucket) -> NodeSpec {
        NodeSpec {
            data_dir,
            bucket,
            key_prefix: String::new(),
            snapshot_threshold_records: 10_000,
            node_id: None,
            heartbeat: None,
            compaction_interval: None,
            gid: None,
            env: Vec::new(),
            advertise_peer: None,
        }
    }
}

pub struct Node {
    pub spec: NodeSpec,
    pub client_port: u16,
    pub health_port: u16,
    pub peer_port: u16,
    child: Option<Child>,
    /// Directory for the config file and per-run logs.
    work: PathBuf,
    /// Number of the current run (1 = first start).
    pub run: u32,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- netsy log (run {}, last 60 lines) ----\n{}",
                self.run,
                tail(&self.log_text(), 60)
            );
        }
    }
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn netsy_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_netsy"))
}

impl Node {
    /// Starts a node (fresh ports); does not wait for readiness.
    pub fn start(spec: NodeSpec, work: &Path) -> Node {
        std::fs::create_dir_all(work).expect("work dir");
        let p = free_ports(3);
        let mut node = Node {
            spec,
            client_port: p[0],
            health_port: p[1],
            peer_port: p[2],
            child: None,
            work: work.to_path_buf(),
            run: 0,
        };
        node.spawn();
        node
    }

    fn config_json(&self) -> Option<String> {
        let storage = match &self.spec.bucket {
            Bucket::Default => return None,
            Bucket::Local(path) => serde_json::json!({
                "provider": "local",
                "path": path,
                "key_prefix": self.spec.key_prefix,
            }),
            Bucket::S3 { bucket, .. } => serde_json::json!({
                "provider": "s3",
                "bucket_name": bucket,
                "key_prefix": self.spec.key_prefix,
            }),
        };
        let mut cfg = serde_json::json!({
            "cluster_id": "durability",
            "storage": storage,
            "replication": {"quorum": 0},
            "snapshot": {"threshold_records": self.spec.snapshot_threshold_records},
        });
        if let Some(hb) = &self.spec.heartbeat {
            cfg["heartbeat_interval"] = serde_json::json!(hb);
        }
        if let Some(every) = &self.spec.compaction_interval {
            cfg["compaction_interval"] = serde_json::json!(every);
        }
        Some(cfg.to_string())
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.run += 1;
        let log = std::fs::File::create(self.log_path(self.run)).expect("log file");
        let mut cmd = Command::new(netsy_bin());
        cmd.arg("--data-dir")
            .arg(&self.spec.data_dir)
            .arg("--bind-client")
            .arg(format!("127.0.0.1:{}", self.client_port))
            .arg("--bind-health")
            .arg(format!("127.0.0.1:{}", self.health_port))
            .arg("--bind-peer")
            .arg(format!("127.0.0.1:{}", self.peer_port))
            .arg("--advertise-client")
            .arg(format!("127.0.0.1:{}", self.client_port))
            .arg("--advertise-peer")
            .arg(
                self.spec
                    .advertise_peer
                    .clone()
                    .unwrap_or_else(|| format!("127.0.0.1:{}", self.peer_port)),
            )
            .env("NETSY_LOG_FORMAT", "json")
            .env_remove("NETSY_CONFIG")
            .env_remove("NETSY_DEBUG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log));
        if let Some(id) = &self.spec.node_id {
            cmd.arg("--node-id").arg(id);
        }
        if let Some(json) = self.config_json() {
            let path = self.work.join("config.jsonc");
            std::fs::write(&path, json).expect("config");
            cmd.arg("--config")
                .arg(&path)
                .env("NETSY_INSECURE_PLAINTEXT", "true");
        }
        if let Bucket::S3 { endpoint, .. } = &self.spec.bucket {
            cmd.envs(super::weed::Weed::env_at(endpoint));
        }
        cmd.envs(self.spec.env.iter().cloned());
        if let Some(gid) = self.spec.gid {
            use std::os::unix::process::CommandExt;
            cmd.gid(gid);
        }
        self.child = Some(cmd.spawn().expect("spawn netsy"));
    }

    pub fn log_path(&self, run: u32) -> PathBuf {
        self.work.join(format!("netsy-{run}.log"))
    }

    /// The current run's log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path(self.run)).unwrap_or_default()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The exit code if the process has exited (and forgets the process).
    pub fn exited(&mut self) -> Option<Option<i32>> {
        let c = self.child.as_mut()?;
        match c.try_wait().expect("try_wait") {
            Some(status) => {
                self.child = None;
                Some(status.code())
            }
            None => None,
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    /// Waits (bounded) until GET /health answers 200; panics with the log if the process exits.
    pub async fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(code) = self.exited() {
                panic!(
                    "netsy exited during startup (code {code:?}); log:\n{}",
                    tail(&self.log_text(), 60)
                );
            }
            if http_status(self.health_port, "/health").await == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "netsy not healthy within {limit:?}; log:\n{}",
                tail(&self.log_text(), 60)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (`TERM`, `STOP`, `CONT`) to the running process.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().expect("running");
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }

    /// SIGTERM, then waits (bounded) for the process to exit; returns its exit code.
    pub async fn stop(&mut self, limit: Duration) -> Option<i32> {
        self.signal("TERM");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(code) = self.exited() {
                return code;
            }
            assert!(
                Instant::now() < deadline,
                "netsy did not stop within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the process again on the same ports and data dir (after it stopped).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Deletes the data directory (the node must be stopped).
    pub fn wipe_data_dir(&mut self) {
        assert!(self.child.is_none(), "wipe while running");
        match std::fs::remove_dir_all(&self.spec.data_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot wipe {}: {e}", self.spec.data_dir.display()),
        }
    }

    pub async fn client(&self) -> etcd_client::Client {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(40));
        etcd_client::Client::connect([self.endpoint()], Some(opts))
            .await
            .expect("connect to netsy")
    }

    /// Fields of the current run's `loading_stage_completed` log line.
    pub fn loading_stats(&self) -> LoadingStats {
        let text = self.log_text();
        let fields = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v.get("fields").cloned())
            .rfind(|f| f.get("message").and_then(|m| m.as_str()) == Some("loading_stage_completed"))
            .unwrap_or_else(|| panic!("no loading_stage_completed in log:\n{}", tail(&text, 40)));
        LoadingStats::from_fields(&fields)
    }

    /// The metrics page.
    pub async fn metrics(&self) -> String {
        http_get(self.health_port, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoadingStats {
    pub snapshot: Option<i64>,
    pub chunks: u64,
    pub records: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub revision: i64,
    pub leases: u64,
    pub compaction: i64,
}

impl LoadingStats {
    fn from_fields(f: &serde_json::Value) -> LoadingStats {
        let num = |k: &str| f.get(k).and_then(|v| v.as_f64()).unwrap_or(-1.0);
        // `snapshot` is logged with Debug formatting: "None" or "Some(123)".
        let snapshot = f
            .get("snapshot")
            .and_then(|v| v.as_str())
            .and_then(|s| s.strip_prefix("Some(")?.strip_suffix(')')?.parse().ok());
        LoadingStats {
            snapshot,
            chunks: num("chunks") as u64,
            records: num("records") as u64,
            bytes: num("bytes") as u64,
            seconds: num("seconds"),
            revision: num("revision") as i64,
            leases: num("leases") as u64,
            compaction: num("compaction") as i64,
        }
    }
}

/// Status code of GET `path` on the loopback port, or `None` if it cannot be fetched.
pub async fn http_status(port: u16, path: &str) -> Option<u16> {
    http_get(port, path).await.map(|(s, _)| s)
}

/// GET `path` over HTTP/1.0 on loopback (bounded by 5 s): status and body.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()
        .flatten()
}
