//! Server-side figures of one measured phase: CPU time and memory of the server processes
//! (`/proc/PID/stat`, `/proc/PID/status`) and netsy's object-store request counters (its
//! Prometheus `/metrics`), sampled before and after the phase.

use std::time::{Duration, Instant};

/// What to sample: the server's processes, helper processes (the S3 server behind netsy),
/// and metrics endpoints whose object-store counters are summed.
#[derive(Clone, Debug, Default)]
pub struct Targets {
    pub pids: Vec<u32>,
    pub aux_pids: Vec<u32>,
    pub metrics_urls: Vec<String>,
}

/// A sample taken at the start of a phase.
pub struct Start {
    at: Instant,
    cpu_ticks: u64,
    aux_cpu_ticks: u64,
    objstore_requests: Option<ObjstoreCounts>,
}

/// The kernel's clock ticks per second for `/proc/PID/stat` (USER_HZ; 100 on Linux x86-64).
const TICKS_PER_SEC: f64 = 100.0;

/// utime + stime of one process in clock ticks (0 if it cannot be read).
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name (field 2) may hold spaces; the fields after its closing ')' are fixed.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let get = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}

/// A `/proc/PID/status` field in KiB (VmRSS, VmHWM).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Object-store request counters summed over every metrics URL.
#[derive(Clone, Copy, Debug, Default)]
struct ObjstoreCounts {
    /// `netsy_object_storage_writes_total` + `netsy_object_storage_reads_total`, every label set.
    requests: f64,
    /// `netsy_object_storage_writes_total`, every label set (PUTs, DELETEs, copies).
    writes: f64,
    /// Chunk objects created (`kind="chunk",mode="create"`, any result).
    chunk_puts: f64,
}

/// The counters at each URL, summed; None when no URL is given or none answers.
async fn objstore_requests(urls: &[String]) -> Option<ObjstoreCounts> {
    let mut total: Option<ObjstoreCounts> = None;
    for url in urls {
        let Some(body) = http_get(url).await else {
            continue;
        };
        let t = total.get_or_insert_with(ObjstoreCounts::default);
        for l in body.lines() {
            let write = l.starts_with("netsy_object_storage_writes_total");
            if !write && !l.starts_with("netsy_object_storage_reads_total") {
                continue;
            }
            let Some(v) = l
                .rsplit_once(' ')
                .and_then(|(_, v)| v.trim().parse::<f64>().ok())
            else {
                continue;
            };
            t.requests += v;
            if write {
                t.writes += v;
                if l.contains("kind=\"chunk\"") && l.contains("mode=\"create\"") {
                    t.chunk_puts += v;
                }
            }
        }
    }
    total
}

/// GET over HTTP/1.0 (plain loopback), bounded by 5 s; the body.
pub async fn http_get(url: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status_ok = text.split_whitespace().nth(1) == Some("200");
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        status_ok.then_some(body)
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()
        .flatten()
}

impl Targets {
    pub async fn start(&self) -> Start {
        Start {
            at: Instant::now(),
            cpu_ticks: self.pids.iter().map(|p| cpu_ticks(*p)).sum(),
            aux_cpu_ticks: self.aux_pids.iter().map(|p| cpu_ticks(*p)).sum(),
            objstore_requests: objstore_requests(&self.metrics_urls).await,
        }
    }

    /// The phase's server figures as JSON fields, for `ops` operations.
    pub async fn finish(
        &self,
        start: &Start,
        ops: u64,
    ) -> serde_json::Map<String, serde_json::Value> {
        let seconds = start.at.elapsed().as_secs_f64().max(1e-9);
        let cpu = self
            .pids
            .iter()
            .map(|p| cpu_ticks(*p))
            .sum::<u64>()
            .saturating_sub(start.cpu_ticks);
        let aux = self
            .aux_pids
            .iter()
            .map(|p| cpu_ticks(*p))
            .sum::<u64>()
            .saturating_sub(start.aux_cpu_ticks);
        let mut m = serde_json::Map::new();
        if !self.pids.is_empty() {
            let cpu_s = cpu as f64 / TICKS_PER_SEC;
            m.insert("server_cpu_s".into(), cpu_s.into());
            m.insert("server_cores".into(), (cpu_s / seconds).into());
            if ops > 0 {
                m.insert("cpu_us_per_op".into(), (cpu_s * 1e6 / ops as f64).into());
            }
            let rss: u64 = self.pids.iter().map(|p| status_kib(*p, "VmRSS:")).sum();
            let hwm: u64 = self.pids.iter().map(|p| status_kib(*p, "VmHWM:")).sum();
            m.insert("rss_mib".into(), (rss as f64 / 1024.0).into());
            m.insert("hwm_mib".into(), (hwm as f64 / 1024.0).into());
        }
        if !self.aux_pids.is_empty() {
            let aux_s = aux as f64 / TICKS_PER_SEC;
            m.insert("aux_cpu_s".into(), aux_s.into());
            if ops > 0 {
                m.insert(
                    "aux_cpu_us_per_op".into(),
                    (aux_s * 1e6 / ops as f64).into(),
                );
            }
        }
        if let (Some(a), Some(b)) = (
            start.objstore_requests,
            objstore_requests(&self.metrics_urls).await,
        ) {
            m.insert(
                "objstore_req_per_sec".into(),
                ((b.requests - a.requests) / seconds).into(),
            );
            if ops > 0 {
                let per_op = |x: f64, y: f64| serde_json::Value::from((x - y) / ops as f64);
                m.insert("objstore_req_per_op".into(), per_op(b.requests, a.requests));
                m.insert("objstore_writes_per_op".into(), per_op(b.writes, a.writes));
                m.insert(
                    "chunk_puts_per_op".into(),
                    per_op(b.chunk_puts, a.chunk_puts),
                );
            }
        }
        m
    }
}
