//! History workloads (issue #17: storage whose cost follows the live data, not the history).
//!
//! * `churn` — rewrites `--keys` keys `<prefix>NNNNNNNN` `--rewrites` times each (plain Puts,
//!   round after round, so every key ends with the same number of revisions) with `--clients`
//!   clients; with `--compact`, then compacts at the current revision (physical = true, so the
//!   call returns once the server has dropped the old values). One JSON line: the writes
//!   (ops/s, latency, server CPU per write, RSS), the revisions written, and the database size
//!   (Maintenance.Status dbSize / dbSizeInUse) before, after the writes and after the compaction.
//! * `sizes` — Maintenance.Status and the live data (key + value bytes of every live key, read
//!   with a paginated range over the whole keyspace), optionally around a Defragment. One JSON
//!   line with `"kind": "sizes"`.
//!
//! The list pages and hot-key gets measured before and after the churn are `k8s --workload list`
//! / `--workload get` with `--existing` (no seeding).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, CompactionOptions, GetOptions};
use serde_json::{Map, Value};

use crate::probe::Targets;
use crate::{connect, connect_with_timeout, result_line, value};

type Res<T> = Result<T, String>;

/// Request timeout of the maintenance connection (Compact with physical = true over a long
/// history, Defragment of a large file).
const MAINTENANCE_TIMEOUT: Duration = Duration::from_secs(1800);

pub struct ChurnParams {
    pub endpoint: String,
    pub system: String,
    pub label: String,
    pub prefix: String,
    pub keys: u64,
    pub rewrites: u64,
    pub clients: usize,
    pub value_size: usize,
    pub compact: bool,
    pub targets: Targets,
}

/// (dbSize, dbSizeInUse, header revision) from Maintenance.Status.
async fn status(c: &mut Client) -> Res<(i64, i64, i64)> {
    let s = c.status().await.map_err(|e| format!("status: {e}"))?;
    let rev = s.header().map(|h| h.revision()).unwrap_or(0);
    Ok((s.db_size(), s.raft_used_db_size(), rev))
}

/// (live keys, sum of key + value bytes) over the whole keyspace, in pages of 1,000 at one
/// revision.
async fn live_data(c: &mut Client) -> Res<(u64, u64)> {
    let (mut keys, mut bytes, mut rev) = (0u64, 0u64, 0i64);
    let mut start = vec![0u8];
    loop {
        let mut opts = GetOptions::new().with_range(vec![0u8]).with_limit(1000);
        if rev != 0 {
            opts = opts.with_revision(rev);
        }
        let r = c
            .get(start.clone(), Some(opts))
            .await
            .map_err(|e| format!("range: {e}"))?;
        if rev == 0 {
            rev = r.header().map(|h| h.revision()).unwrap_or(0);
        }
        for kv in r.kvs() {
            keys += 1;
            bytes += (kv.key().len() + kv.value().len()) as u64;
        }
        match r.kvs().last() {
            Some(kv) if r.more() => {
                start = kv.key().to_vec();
                start.push(0);
            }
            _ => return Ok((keys, bytes)),
        }
    }
}

pub async fn churn(p: ChurnParams) -> Res<()> {
    if p.keys == 0 || p.clients == 0 {
        return Err("churn: --keys and --clients must be at least 1".into());
    }
    let mut admin = connect_with_timeout(&p.endpoint, MAINTENANCE_TIMEOUT).await?;
    let (size0, in_use0, rev0) = status(&mut admin).await?;
    let total = p.keys * p.rewrites;
    let next = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::new();
    for _ in 0..p.clients {
        conns.push(connect(&p.endpoint).await?);
    }
    let probe = p.targets.start().await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let (next, prefix, keys, value_size) =
            (next.clone(), p.prefix.clone(), p.keys, p.value_size);
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            let mut rng = 0xD6E8_FEB8_6659_FD93u64 ^ (i as u64 + 1);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return (lat, errors);
                }
                let key = format!("{prefix}{:08}", n % keys);
                let v = value(&mut rng, value_size);
                let t = Instant::now();
                match c.put(key, v, None).await {
                    Ok(_) => lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32),
                    Err(_) => errors += 1,
                }
            }
        }));
    }
    let (mut lat, mut errors) = (Vec::new(), 0u64);
    for t in tasks {
        let (l, e) = t.await.map_err(|e| e.to_string())?;
        lat.extend(l);
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    let ops = lat.len();
    let mut m = result_line(&p.system, &p.label, p.clients, &mut lat, errors, seconds);
    m.extend(p.targets.finish(&probe, ops as u64).await);
    let (size1, in_use1, rev1) = status(&mut admin).await?;
    m.insert("keys".into(), p.keys.into());
    m.insert("rewrites".into(), p.rewrites.into());
    m.insert("value_size".into(), p.value_size.into());
    m.insert("revisions_written".into(), (rev1 - rev0).into());
    m.insert("revision".into(), rev1.into());
    m.insert("db_size_before".into(), size0.into());
    m.insert("db_size_in_use_before".into(), in_use0.into());
    m.insert("db_size_after_churn".into(), size1.into());
    m.insert("db_size_in_use_after_churn".into(), in_use1.into());
    if p.compact {
        let probe = p.targets.start().await;
        let t = Instant::now();
        admin
            .compact(rev1, Some(CompactionOptions::new().with_physical()))
            .await
            .map_err(|e| format!("compact at {rev1}: {e}"))?;
        m.insert("compact_revision".into(), rev1.into());
        m.insert("compact_seconds".into(), t.elapsed().as_secs_f64().into());
        let fig = p.targets.finish(&probe, 0).await;
        if let Some(cpu) = fig.get("server_cpu_s") {
            m.insert("compact_cpu_s".into(), cpu.clone());
        }
        if let Some(hwm) = fig.get("hwm_mib") {
            m.insert("hwm_mib".into(), hwm.clone());
        }
        let (size2, in_use2, _) = status(&mut admin).await?;
        m.insert("db_size_after_compact".into(), size2.into());
        m.insert("db_size_in_use_after_compact".into(), in_use2.into());
    }
    println!("{}", Value::Object(m));
    Ok(())
}

pub async fn sizes(
    endpoint: &str,
    system: &str,
    label: &str,
    defrag: bool,
    targets: &Targets,
) -> Res<()> {
    let mut admin = connect_with_timeout(endpoint, MAINTENANCE_TIMEOUT).await?;
    let (size0, in_use0, rev) = status(&mut admin).await?;
    let (live_keys, live_bytes) = live_data(&mut admin).await?;
    let mut m = Map::new();
    m.insert("system".into(), system.into());
    m.insert("workload".into(), label.into());
    m.insert("clients".into(), 1.into());
    m.insert("kind".into(), "sizes".into());
    m.insert("revision".into(), rev.into());
    m.insert("live_keys".into(), live_keys.into());
    m.insert("live_bytes".into(), live_bytes.into());
    m.insert("db_size_before_defrag".into(), size0.into());
    m.insert("db_size_in_use_before_defrag".into(), in_use0.into());
    let probe = targets.start().await;
    if defrag {
        let t = Instant::now();
        admin
            .defragment()
            .await
            .map_err(|e| format!("defragment: {e}"))?;
        m.insert("defrag_seconds".into(), t.elapsed().as_secs_f64().into());
    }
    let fig = targets.finish(&probe, 0).await;
    for (from, to) in [
        ("server_cpu_s", "defrag_cpu_s"),
        ("rss_mib", "rss_mib"),
        ("hwm_mib", "hwm_mib"),
    ] {
        if let Some(v) = fig.get(from) {
            m.insert(to.into(), v.clone());
        }
    }
    let (size1, in_use1, _) = status(&mut admin).await?;
    m.insert("db_size_after_defrag".into(), size1.into());
    m.insert("db_size_in_use_after_defrag".into(), in_use1.into());
    println!("{}", Value::Object(m));
    Ok(())
}
