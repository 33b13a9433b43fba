//! `netsy-bench`: the load client of `bench/run-all.sh` and `bench/durability.sh`.
//!
//! * `k8s` — Kubernetes-shaped workloads (crud, list, watch, mixed; see `k8s.rs`) with server
//!   CPU, memory and object-store request figures (`probe.rs`). One JSON line per phase.
//! * `etcd-tool` — runs etcd's own benchmark tool and reports it the same way (`etcd_tool.rs`).
//! * `wait-etcd` — waits (bounded) until an endpoint answers a Get.
//! * `run` — N concurrent clients (one gRPC connection each) write for a fixed time: `put` (a
//!   plain Put) or `create` (Kubernetes' create: Txn if mod_revision(key) == 0 then Put else
//!   Get), unique keys, values of `--value-size` bytes. Prints one JSON line: ops/s, p50, p99.
//! * `load` — writes exactly `--keys` keys as fast as `--clients` clients can.
//! * `wait-http` — waits (bounded) until a URL answers 200.
//! * `wait-s3` — waits (bounded) until an S3 bucket accepts a PUT and GET (AWS_* environment).
//! * `table` — the JSON lines of `run` as a markdown table.
//! * `loading` — the `loading_stage_completed` line of a netsy JSON log: records/s and MB/s.
//! * `churn` — rewrites a key set many times, then optionally compacts (`history.rs`).
//! * `sizes` — Maintenance.Status sizes and the live data size, optionally around a Defragment.
//!
//! Works against any etcd v3 server (netsy or etcd). Every wait is bounded.

use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod delay_proxy;
mod etcd_tool;
mod history;
mod k8s;
mod probe;

#[derive(Parser)]
#[command(
    name = "netsy-bench",
    about = "Write-load benchmark for etcd v3 servers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Workload {
    Put,
    Create,
}

#[derive(Subcommand)]
enum Cmd {
    /// Timed write load; prints one JSON line.
    Run {
        #[arg(long)]
        endpoint: String,
        #[arg(long, default_value_t = 1)]
        clients: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, value_enum, default_value = "put")]
        workload: Workload,
        #[arg(long, default_value_t = 1024)]
        value_size: usize,
        /// Label of the system under test (copied into the output).
        #[arg(long, default_value = "")]
        system: String,
        /// Key prefix (keys are `<prefix>/c<client>/<n>`).
        #[arg(long, default_value = "/bench")]
        prefix: String,
    },
    /// Writes exactly `keys` keys; prints one JSON line.
    Load {
        #[arg(long)]
        endpoint: String,
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 1024)]
        value_size: usize,
        #[arg(long, default_value = "/load")]
        prefix: String,
        /// Keys per Txn (1 = one Put per key; more = one revision with that many records).
        #[arg(long, default_value_t = 1)]
        batch: u64,
    },
    /// Kubernetes-shaped workload; prints one JSON line per measured phase.
    K8s {
        #[arg(long)]
        endpoint: String,
        #[arg(long, value_enum)]
        workload: k8s::K8sWorkload,
        #[arg(long, default_value_t = 1)]
        clients: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 1024)]
        value_size: usize,
        #[arg(long, default_value = "")]
        system: String,
        #[arg(long, default_value = "/k8s")]
        prefix: String,
        /// list: keys under the listed prefix.
        #[arg(long, default_value_t = 10_000)]
        list_keys: u64,
        /// list: keys per page (the `limit`).
        #[arg(long, default_value_t = 500)]
        page_size: i64,
        /// watch: watch streams on the prefix.
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// watch: gRPC connections the watch streams are spread over.
        #[arg(long, default_value_t = 10)]
        watch_conns: usize,
        /// watch: creates per second by the single writer.
        #[arg(long, default_value_t = 50)]
        write_rate: u32,
        /// list: list this existing prefix (no seeding; `--list-keys` = keys expected, 0 = any);
        /// get: get this existing key.
        #[arg(long)]
        existing: Option<String>,
        /// Workload name in the JSON line (default: the workload's own; crud: a prefix of "create", "update", "delete").
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        targets: TargetArgs,
    },
    /// Rewrites `keys` keys `<prefix>NNNNNNNN` `rewrites` times each, then optionally compacts;
    /// prints one JSON line.
    Churn {
        #[arg(long)]
        endpoint: String,
        #[arg(long, default_value = "/history/keys/")]
        prefix: String,
        #[arg(long, default_value_t = 2000)]
        keys: u64,
        #[arg(long, default_value_t = 100)]
        rewrites: u64,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 1024)]
        value_size: usize,
        /// Compact at the revision after the writes (physical = true).
        #[arg(long)]
        compact: bool,
        #[arg(long, default_value = "")]
        system: String,
        #[arg(long, default_value = "history churn")]
        label: String,
        #[command(flatten)]
        targets: TargetArgs,
    },
    /// Maintenance.Status sizes and the live data size, optionally around a Defragment; prints
    /// one JSON line.
    Sizes {
        #[arg(long)]
        endpoint: String,
        /// Defragment between the two Status calls.
        #[arg(long)]
        defrag: bool,
        #[arg(long, default_value = "")]
        system: String,
        #[arg(long, default_value = "history sizes")]
        label: String,
        #[command(flatten)]
        targets: TargetArgs,
    },
    /// Runs etcd's benchmark tool (the command after `--`); prints one JSON line.
    EtcdTool {
        #[arg(long, default_value = "")]
        system: String,
        #[arg(long)]
        workload: String,
        #[arg(long, default_value_t = 1)]
        clients: usize,
        #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        targets: TargetArgs,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Waits until an etcd v3 endpoint answers a Get.
    WaitEtcd {
        endpoint: String,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// A TCP proxy adding `delay` to every response of `upstream` (the S3 server), until
    /// killed: a bucket as far away as S3 Express (~5 ms) or S3 Standard (~100 ms).
    DelayProxy {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        upstream: String,
        #[arg(long, value_parser = humantime::parse_duration)]
        delay: Duration,
    },
    /// Waits until GET `url` answers 200.
    WaitHttp {
        url: String,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Waits until `bucket` accepts a PUT and a GET (credentials and endpoint from AWS_*).
    WaitS3 {
        bucket: String,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// One client's create-only PUTs of `value_size` bytes straight to `bucket` (credentials
    /// and endpoint from AWS_*), through the object_store client netsy uses: the floor under a
    /// 1-client write on an S3 bucket. Prints one JSON line (`--pid`: the S3 server).
    S3Put {
        #[arg(long)]
        bucket: String,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 1024)]
        value_size: usize,
        #[arg(long, default_value = "")]
        system: String,
        #[arg(long, default_value = "bucket PUT alone")]
        label: String,
        #[command(flatten)]
        targets: TargetArgs,
    },
    /// Prints the JSON lines of `run` (a file) as a markdown table.
    Table { file: std::path::PathBuf },
    /// Prints the backfill figures of the last `loading_stage_completed` line of a netsy log.
    Loading {
        log: std::path::PathBuf,
        /// Value size of the loaded keys, for the logical MB/s.
        #[arg(long, default_value_t = 1024)]
        value_size: usize,
        /// One JSON line instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// Creates `keys` keys `<prefix>NNNNNNNN` (Kubernetes' create Txn, so kine accepts it).
    Seed {
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        prefix: String,
        #[arg(long, default_value_t = 1)]
        keys: u64,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        #[arg(long, default_value_t = 1024)]
        value_size: usize,
    },
}

/// The server processes and metrics endpoints sampled around each measured phase.
#[derive(clap::Args, Clone, Debug)]
struct TargetArgs {
    /// Server process id (repeatable; CPU and memory are summed).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Helper process id, e.g. the S3 server behind netsy (repeatable; CPU reported apart).
    #[arg(long = "aux-pid")]
    aux_pids: Vec<u32>,
    /// Prometheus URL whose netsy_object_storage_{writes,reads}_total are summed (repeatable).
    #[arg(long = "metrics-url")]
    metrics_urls: Vec<String>,
}

impl From<TargetArgs> for probe::Targets {
    fn from(a: TargetArgs) -> Self {
        probe::Targets {
            pids: a.pids,
            aux_pids: a.aux_pids,
            metrics_urls: a.metrics_urls,
        }
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run {
            endpoint,
            clients,
            duration,
            workload,
            value_size,
            system,
            prefix,
        } => {
            run(
                &endpoint, clients, duration, workload, value_size, &system, &prefix,
            )
            .await
        }
        Cmd::Load {
            endpoint,
            keys,
            clients,
            value_size,
            prefix,
            batch,
        } => {
            load(
                &endpoint,
                keys,
                clients,
                value_size,
                &prefix,
                batch.clamp(1, 128),
            )
            .await
        }
        Cmd::K8s {
            endpoint,
            workload,
            clients,
            duration,
            value_size,
            system,
            prefix,
            list_keys,
            page_size,
            watchers,
            watch_conns,
            write_rate,
            existing,
            label,
            targets,
        } => {
            let params = k8s::Params {
                endpoint,
                system,
                clients,
                duration,
                value_size,
                prefix,
                list_keys,
                page_size,
                watchers,
                watch_conns,
                write_rate,
                existing,
                label,
                targets: targets.into(),
            };
            k8s::run(workload, params).await
        }
        Cmd::Churn {
            endpoint,
            prefix,
            keys,
            rewrites,
            clients,
            value_size,
            compact,
            system,
            label,
            targets,
        } => {
            history::churn(history::ChurnParams {
                endpoint,
                system,
                label,
                prefix,
                keys,
                rewrites,
                clients,
                value_size,
                compact,
                targets: targets.into(),
            })
            .await
        }
        Cmd::Sizes {
            endpoint,
            defrag,
            system,
            label,
            targets,
        } => history::sizes(&endpoint, &system, &label, defrag, &targets.into()).await,
        Cmd::EtcdTool {
            system,
            workload,
            clients,
            timeout,
            targets,
            cmd,
        } => etcd_tool::run(&system, &workload, clients, timeout, &targets.into(), &cmd).await,
        Cmd::WaitEtcd { endpoint, timeout } => wait_etcd(&endpoint, timeout).await,
        Cmd::DelayProxy {
            listen,
            upstream,
            delay,
        } => delay_proxy::run(&listen, &upstream, delay)
            .await
            .map_err(|e| e.to_string()),
        Cmd::WaitHttp { url, timeout } => wait_http(&url, timeout).await,
        Cmd::WaitS3 { bucket, timeout } => wait_s3(&bucket, timeout).await,
        Cmd::S3Put {
            bucket,
            duration,
            value_size,
            system,
            label,
            targets,
        } => {
            s3_put(
                &bucket,
                duration,
                value_size,
                &system,
                &label,
                &targets.into(),
            )
            .await
        }
        Cmd::Table { file } => table(&file),
        Cmd::Loading {
            log,
            value_size,
            json,
        } => loading(&log, value_size, json),
        Cmd::Seed {
            endpoint,
            prefix,
            keys,
            clients,
            value_size,
        } => k8s::seed(&endpoint, &prefix, keys, clients, value_size).await,
    };
    if let Err(e) = result {
        eprintln!("netsy-bench: {e}");
        std::process::exit(1);
    }
}

/// Connects to `endpoint` (several comma-separated URLs: the client spreads requests over them).
async fn connect(endpoint: &str) -> Result<Client, String> {
    connect_with_timeout(endpoint, Duration::from_secs(60)).await
}

/// `connect` with another per-request timeout (long maintenance calls).
async fn connect_with_timeout(endpoint: &str, timeout: Duration) -> Result<Client, String> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(timeout);
    Client::connect(endpoint.split(',').collect::<Vec<_>>(), Some(opts))
        .await
        .map_err(|e| format!("connect {endpoint}: {e}"))
}

async fn write_one(
    c: &mut Client,
    workload: Workload,
    key: String,
    value: Vec<u8>,
) -> Result<(), String> {
    match workload {
        Workload::Put => c.put(key, value, None).await.map(|_| ()),
        Workload::Create => {
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), value, None)])
                .or_else([TxnOp::get(key, None)]);
            c.txn(txn).await.and_then(|r| {
                if r.succeeded() {
                    Ok(())
                } else {
                    Err(etcd_client::Error::InvalidArgs(
                        "create found the key".into(),
                    ))
                }
            })
        }
    }
    .map_err(|e| e.to_string())
}

/// xorshift64: the next pseudo-random number of `state`.
fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// A value of `size` bytes from a 64-character alphabet (about as compressible as base64 —
/// unlike a run of one byte, which zstd would shrink to nothing).
fn value(state: &mut u64, size: usize) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..size)
        .map(|_| ALPHABET[(next_rand(state) >> 58) as usize])
        .collect()
}

/// Quantiles (in %) at which `latency_fields` reports the distribution, for plots.
const CDF_POINTS: &[f64] = &[
    0.0, 1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 75.0, 80.0, 85.0, 90.0, 92.5, 95.0,
    97.0, 98.0, 99.0, 99.5, 99.7, 99.9, 99.95, 99.99, 100.0,
];

/// Sorts `lat` (µs) and returns p50/p99/p999/max/mean in ms plus the distribution at
/// `CDF_POINTS` (`cdf_ms`, aligned with `cdf_pct`).
fn latency_fields(lat: &mut [u32]) -> serde_json::Map<String, serde_json::Value> {
    lat.sort_unstable();
    let mut m = serde_json::Map::new();
    m.insert("p50_ms".into(), percentile(lat, 0.50).into());
    m.insert("p99_ms".into(), percentile(lat, 0.99).into());
    m.insert("p999_ms".into(), percentile(lat, 0.999).into());
    m.insert("max_ms".into(), percentile(lat, 1.0).into());
    let mean = lat.iter().map(|v| *v as f64).sum::<f64>() / lat.len().max(1) as f64 / 1000.0;
    m.insert("mean_ms".into(), mean.into());
    m.insert("cdf_pct".into(), CDF_POINTS.to_vec().into());
    m.insert(
        "cdf_ms".into(),
        CDF_POINTS
            .iter()
            .map(|q| percentile(lat, q / 100.0))
            .collect::<Vec<_>>()
            .into(),
    );
    m
}

/// The common fields of one measured phase's JSON line: who, what, how many, how fast, and the
/// latency distribution of `lat` (µs; sorted in place).
fn result_line(
    system: &str,
    workload: &str,
    clients: usize,
    lat: &mut [u32],
    errors: u64,
    seconds: f64,
) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("system".into(), system.into());
    m.insert("workload".into(), workload.into());
    m.insert("clients".into(), clients.into());
    m.insert("ops".into(), lat.len().into());
    m.insert("errors".into(), errors.into());
    m.insert("seconds".into(), seconds.into());
    m.insert(
        "ops_per_sec".into(),
        (lat.len() as f64 / seconds.max(1e-9)).into(),
    );
    m.extend(latency_fields(lat));
    m
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

#[allow(clippy::too_many_arguments)]
async fn run(
    endpoint: &str,
    clients: usize,
    duration: Duration,
    workload: Workload,
    value_size: usize,
    system: &str,
    prefix: &str,
) -> Result<(), String> {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(connect(endpoint).await?);
    }
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let (stop, errors) = (stop.clone(), errors.clone());
        let prefix = format!("{prefix}/{run_id}/{workload:?}/c{i}");
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let v = value(&mut rng, value_size);
                let t = Instant::now();
                match write_one(&mut c, workload, format!("{prefix}/{n}"), v).await {
                    Ok(()) => lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
            lat
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        let lat = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .map_err(|_| "a client did not finish within 120 s".to_string())?
            .map_err(|e| e.to_string())?;
        all.extend(lat);
    }
    let seconds = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let line = serde_json::json!({
        "system": system,
        "workload": format!("{workload:?}").to_lowercase(),
        "clients": clients,
        "ops": all.len(),
        "errors": errors.load(Ordering::Relaxed),
        "seconds": seconds,
        "ops_per_sec": all.len() as f64 / seconds,
        "p50_ms": percentile(&all, 0.50),
        "p99_ms": percentile(&all, 0.99),
    });
    println!("{line}");
    Ok(())
}

async fn load(
    endpoint: &str,
    keys: u64,
    clients: usize,
    value_size: usize,
    prefix: &str,
    batch: u64,
) -> Result<(), String> {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let mut c = connect(endpoint).await?;
        let (next, errors) = (next.clone(), errors.clone());
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= keys {
                    return;
                }
                let last = (first + batch).min(keys);
                let mut tries = 0;
                loop {
                    let res = if batch == 1 {
                        let v = value(&mut rng, value_size);
                        write_one(&mut c, Workload::Put, format!("{prefix}/{first:08}"), v)
                            .await
                            .map(|_| ())
                    } else {
                        let ops: Vec<TxnOp> = (first..last)
                            .map(|n| {
                                TxnOp::put(
                                    format!("{prefix}/{n:08}"),
                                    value(&mut rng, value_size),
                                    None,
                                )
                            })
                            .collect();
                        c.txn(Txn::new().and_then(ops))
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    };
                    match res {
                        Ok(()) => break,
                        Err(e) => {
                            tries += 1;
                            errors.fetch_add(1, Ordering::Relaxed);
                            if tries == 5 {
                                eprintln!(
                                    "netsy-bench load: giving up on keys {first}..{last}: {e}"
                                );
                                break;
                            }
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"keys": keys, "batch": batch, "errors": errors.load(Ordering::Relaxed), "seconds": seconds, "keys_per_sec": keys as f64 / seconds})
    );
    Ok(())
}

async fn http_status(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, format!("/{p}")),
        None => (rest, "/".to_string()),
    };
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(host).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        String::from_utf8_lossy(&buf)
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()
        .flatten()
}

async fn wait_http(url: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if http_status(url).await == Some(200) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("{url} did not answer 200 within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_etcd(endpoint: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = async {
            let opts = ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_timeout(Duration::from_secs(2));
            let mut c =
                Client::connect(endpoint.split(',').collect::<Vec<_>>(), Some(opts)).await?;
            c.get("/netsy-bench/probe", None).await
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(_)) => return Ok(()),
            other if Instant::now() >= deadline => {
                return Err(format!(
                    "{endpoint} did not answer a Get within {timeout:?}: {other:?}"
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// `bucket` on S3, with credentials and endpoint from AWS_* (as netsy reads them).
fn s3_storage(bucket: &str) -> Result<netsy::objstore::ObjectStorage, String> {
    let cfg = netsy::objstore::StorageConfig {
        provider: netsy::objstore::Provider::S3,
        bucket_name: bucket.to_string(),
        ..Default::default()
    };
    netsy::objstore::ObjectStorage::from_config(&cfg, &netsy::objstore::config::process_env(), None)
        .map_err(|e| e.to_string())
}

async fn wait_s3(bucket: &str, timeout: Duration) -> Result<(), String> {
    use object_store::ObjectStoreExt;
    let storage = s3_storage(bucket)?;
    let probe = object_store::path::Path::from("bench-probe");
    let deadline = Instant::now() + timeout;
    loop {
        let probed = async {
            storage.store().put(&probe, "x".into()).await?;
            storage.store().get(&probe).await?.bytes().await?;
            storage.store().delete(&probe).await
        }
        .await;
        match probed {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "bucket {bucket} not usable within {timeout:?}: {e}"
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn s3_put(
    bucket: &str,
    duration: Duration,
    value_size: usize,
    system: &str,
    label: &str,
    targets: &probe::Targets,
) -> Result<(), String> {
    let storage = s3_storage(bucket)?;
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ run as u64;
    let (mut lat, mut errors, mut first_error) = (Vec::new(), 0u64, None);
    let probe = targets.start().await;
    let started = Instant::now();
    let mut i = 0u64;
    while started.elapsed() < duration {
        let key = object_store::path::Path::from(format!("bench-s3-put/{run}/{i:010}"));
        i += 1;
        let body = value(&mut rng, value_size);
        let t = Instant::now();
        match storage
            .store()
            .put_opts(&key, body.into(), object_store::PutMode::Create.into())
            .await
        {
            Ok(_) => lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX)),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let ops = lat.len() as u64;
    let mut m = result_line(system, label, 1, &mut lat, errors, seconds);
    if let Some(e) = first_error {
        m.insert("first_error".into(), e.into());
    }
    m.extend(targets.finish(&probe, ops).await);
    println!("{}", serde_json::Value::Object(m));
    Ok(())
}

fn table(file: &std::path::Path) -> Result<(), String> {
    let f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    println!("| system | workload | clients | ops/s | p50 ms | p99 ms | errors |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(|e| e.to_string())?;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} |",
            v["system"].as_str().unwrap_or(""),
            v["workload"].as_str().unwrap_or(""),
            v["clients"],
            v["ops_per_sec"].as_f64().unwrap_or(0.0),
            v["p50_ms"].as_f64().unwrap_or(0.0),
            v["p99_ms"].as_f64().unwrap_or(0.0),
            v["errors"],
        );
    }
    Ok(())
}

fn loading(log: &std::path::Path, value_size: usize, json: bool) -> Result<(), String> {
    let text = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let fields = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("fields").cloned())
        .rfind(|f| f["message"] == "loading_stage_completed")
        .ok_or_else(|| format!("no loading_stage_completed line in {}", log.display()))?;
    let records = fields["records"].as_f64().unwrap_or(0.0);
    let bytes = fields["bytes"].as_f64().unwrap_or(0.0);
    let seconds = fields["seconds"].as_f64().unwrap_or(0.0).max(1e-6);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "records": records,
                "bytes": bytes,
                "backfill_seconds": seconds,
                "snapshot": fields["snapshot"],
                "chunks": fields["chunks"],
                "records_per_sec": records / seconds,
                "mb_per_sec": bytes / 1e6 / seconds,
            })
        );
        return Ok(());
    }
    println!(
        "backfill: {} records ({:.1} MB in the bucket) in {:.2} s from snapshot {} + {} chunks: \
         {:.0} records/s, {:.1} MB/s of bucket bytes, {:.1} MB/s of {value_size}-byte values",
        records,
        bytes / 1e6,
        seconds,
        fields["snapshot"].as_str().unwrap_or("?"),
        fields["chunks"],
        records / seconds,
        bytes / 1e6 / seconds,
        records * value_size as f64 / 1e6 / seconds
    );
    Ok(())
}
