//! The one netsy launcher of the tests: a netsy server process (the real binary) on loopback —
//! start, wait until healthy, kill -9, restart, and read what it logged. Logs are JSON (one file
//! per run) so that fields such as `loading_stage_completed`'s can be read back. The process
//! inherits no NETSY_* or ETCDCTL_* variable from the test's environment.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::http::http_get;
use super::ports::free_ports;
use super::wait::{NotReady, healthy, poll_every};

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
    /// The address the client port binds (default 127.0.0.1).
    pub bind_ip: String,
    /// The host advertised with the client port (default 127.0.0.1).
    pub advertise_client_host: String,
    /// `replication.quorum` (0: the synchronous write path; otherwise the quorum path with a
    /// one-minute chunk buffer).
    pub quorum: i64,
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
            bind_ip: "127.0.0.1".into(),
            advertise_client_host: "127.0.0.1".into(),
            quorum: 0,
        }
    }

    /// Node `i` of a cluster sharing the S3 `bucket` at `endpoint`: data in `root/data-i`,
    /// node id `node-i`, the cluster's `heartbeat` interval.
    pub fn cluster_member(
        root: &Path,
        i: u32,
        bucket: &str,
        endpoint: String,
        heartbeat: &str,
    ) -> NodeSpec {
        let mut spec = NodeSpec::new(
            root.join(format!("data-{i}")),
            Bucket::S3 {
                bucket: bucket.into(),
                endpoint,
            },
        );
        spec.node_id = Some(format!("node-{i}"));
        spec.heartbeat = Some(heartbeat.into());
        spec
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

/// A `netsy` command with no inherited NETSY_* or ETCDCTL_* settings, JSON logs and no stdin.
pub fn netsy_command() -> Command {
    let mut cmd = Command::new(netsy_bin());
    for (key, _) in std::env::vars() {
        if key.starts_with("NETSY_") || key.starts_with("ETCDCTL_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("NETSY_LOG_FORMAT", "json").stdin(Stdio::null());
    cmd
}

impl Node {
    /// Starts a node (fresh ports); does not wait for readiness.
    pub fn start(spec: NodeSpec, work: &Path) -> Node {
        let mut node = Node::prepare(spec, work);
        node.spawn();
        node
    }

    /// Starts a node on the given (client, health, peer) ports; does not wait for readiness.
    pub fn start_on(spec: NodeSpec, work: &Path, ports: (u16, u16, u16)) -> Node {
        let mut node = Node::prepare(spec, work);
        (node.client_port, node.health_port, node.peer_port) = ports;
        node.spawn();
        node
    }

    /// A node with fresh ports that has not been started ([`Node::command`] runs it by hand).
    pub fn prepare(spec: NodeSpec, work: &Path) -> Node {
        std::fs::create_dir_all(work).expect("work dir");
        let p = free_ports(3);
        Node {
            spec,
            client_port: p[0],
            health_port: p[1],
            peer_port: p[2],
            child: None,
            work: work.to_path_buf(),
            run: 0,
        }
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
        if self.spec.quorum != 0 {
            cfg["replication"] = serde_json::json!({
                "quorum": self.spec.quorum,
                "chunk_buffer": {"threshold_age_minutes": 1},
            });
        }
        if let Some(hb) = &self.spec.heartbeat {
            cfg["heartbeat_interval"] = serde_json::json!(hb);
        }
        if let Some(every) = &self.spec.compaction_interval {
            cfg["compaction_interval"] = serde_json::json!(every);
        }
        Some(cfg.to_string())
    }

    /// The command that runs this node (arguments and environment; no stdio). Writes the
    /// config file if the spec needs one.
    pub fn command(&self) -> Command {
        let mut cmd = netsy_command();
        cmd.arg("--data-dir")
            .arg(&self.spec.data_dir)
            .arg("--bind-client")
            .arg(format!("{}:{}", self.spec.bind_ip, self.client_port))
            .arg("--bind-health")
            .arg(format!("127.0.0.1:{}", self.health_port))
            .arg("--bind-peer")
            .arg(format!("127.0.0.1:{}", self.peer_port))
            .arg("--advertise-client")
            .arg(format!(
                "{}:{}",
                self.spec.advertise_client_host, self.client_port
            ))
            .arg("--advertise-peer")
            .arg(
                self.spec
                    .advertise_peer
                    .clone()
                    .unwrap_or_else(|| format!("127.0.0.1:{}", self.peer_port)),
            );
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
        cmd
    }

    /// Starts the process (a prepared node, or again after it stopped).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.run += 1;
        let log = std::fs::File::create(self.log_path(self.run)).expect("log file");
        let mut cmd = self.command();
        cmd.stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log));
        self.child = Some(cmd.spawn().expect("spawn netsy"));
    }

    pub fn log_path(&self, run: u32) -> PathBuf {
        self.work.join(format!("netsy-{run}.log"))
    }

    /// Copies every run's log into `dir` as `{prefix}-{run}.log` (kept after a failure).
    pub fn keep_logs(&self, dir: &Path, prefix: &str) {
        for run in 1..=self.run {
            let _ = std::fs::copy(self.log_path(run), dir.join(format!("{prefix}-{run}.log")));
        }
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
        match self.try_wait_ready(limit).await {
            Ok(()) => {}
            Err(NotReady::Exited(how)) => panic!(
                "netsy exited during startup ({how}); log:\n{}",
                tail(&self.log_text(), 60)
            ),
            Err(NotReady::Timeout) => panic!(
                "netsy not healthy within {limit:?}; log:\n{}",
                tail(&self.log_text(), 60)
            ),
        }
    }

    /// Waits (bounded) until GET /health answers 200, or says why not.
    pub async fn try_wait_ready(&mut self, limit: Duration) -> Result<(), NotReady> {
        let port = self.health_port;
        healthy(port, limit, Duration::from_millis(25), || {
            self.exited().map(|code| format!("code {code:?}"))
        })
        .await
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
        poll_every("netsy to stop", limit, Duration::from_millis(20), || {
            let code = self.exited();
            async move { code }
        })
        .await
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
