//! Kubernetes-shaped workloads (`netsy-bench k8s`). Every request has the shape the
//! Kubernetes API server sends (k8s.io/apiserver `pkg/storage/etcd3`), so servers that accept
//! only those shapes (kine) can run them too:
//!
//! * `crud` — three timed phases on the same keys, one JSON line each:
//!   `create` (Txn mod_revision(key) == 0 → Put, no else), `update` (Txn mod_revision(key) ==
//!   rev → Put, else Get), `delete` (Txn mod_revision(key) == rev → Delete, else Get). Each
//!   client updates and deletes the keys it created, tracking their revisions. The delete
//!   phase ends early (for every client) when the first client runs out of keys.
//! * `list` — paginated lists of a prefix holding `--list-keys` keys: pages of `--page-size`
//!   (range_end = end of the prefix, limit; later pages start at last key + "\0" at the first
//!   page's revision). One op = one page.
//! * `watch` — `--watchers` watch streams on one prefix (spread over `--watch-conns`
//!   connections); one writer creates keys at `--write-rate`/s; the latency of an event is the
//!   time from the writer sending the Txn to a watcher receiving the event. One op = one event
//!   delivered to one watcher.
//! * `mixed` — 60 % single-key Gets of any seeded key, 40 % updates (as in `update`) of the
//!   client's own keys.
//! * `get` — linearizable single-key Gets of one key (Kubernetes' Get of one object), again and
//!   again; the key must exist. One op = one Get.
//!
//! `list` and `get` run against existing keys with `--existing` (a prefix holding `--list-keys`
//! keys, or one key) instead of seeding their own: the history phase of `bench/run-all.sh`
//! measures the same keys before and after rewriting them many times.
//!
//! Values are `--value-size` bytes. Latencies are recorded in microseconds per operation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, WatchOptions};

use crate::probe::Targets;
use crate::{connect, result_line, value};

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq)]
pub enum K8sWorkload {
    Crud,
    List,
    Watch,
    Mixed,
    Get,
}

#[derive(Clone, Debug)]
pub struct Params {
    pub endpoint: String,
    pub system: String,
    pub clients: usize,
    pub duration: Duration,
    pub value_size: usize,
    pub prefix: String,
    pub list_keys: u64,
    pub page_size: i64,
    pub watchers: usize,
    pub watch_conns: usize,
    pub write_rate: u32,
    /// list: an existing prefix to list; get: an existing key to get (no seeding).
    pub existing: Option<String>,
    /// Workload name in the JSON line, instead of the workload's own.
    pub label: Option<String>,
    pub targets: Targets,
}

type Res<T> = Result<T, String>;

fn err(e: etcd_client::Error) -> String {
    e.to_string()
}

/// The smallest key greater than every key with this prefix.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn run_id() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

/// Kubernetes' create: Txn(mod_revision == 0) → Put. Ok(Some(revision)) when created.
pub async fn create(c: &mut Client, key: Vec<u8>, value: Vec<u8>) -> Res<Option<i64>> {
    let txn = Txn::new()
        .when([Compare::mod_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, value, None)]);
    let r = c.txn(txn).await.map_err(err)?;
    Ok(r.succeeded()
        .then(|| r.header().map(|h| h.revision()).unwrap_or(0)))
}

/// The revision a failed conditional Txn's else-Get saw (0 if the key is gone).
fn else_revision(r: &etcd_client::TxnResponse) -> i64 {
    r.op_responses()
        .into_iter()
        .find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => {
                Some(g.kvs().first().map(|kv| kv.mod_revision()).unwrap_or(0))
            }
            _ => None,
        })
        .unwrap_or(0)
}

/// Kubernetes' update: Txn(mod_revision == rev) → Put, else Get. Ok(Ok(new rev)) when
/// written, Ok(Err(current rev)) on a conflict.
async fn update(c: &mut Client, key: Vec<u8>, rev: i64, value: Vec<u8>) -> Res<Result<i64, i64>> {
    let txn = Txn::new()
        .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
        .and_then([TxnOp::put(key.clone(), value, None)])
        .or_else([TxnOp::get(key, None)]);
    let r = c.txn(txn).await.map_err(err)?;
    Ok(if r.succeeded() {
        Ok(r.header().map(|h| h.revision()).unwrap_or(0))
    } else {
        Err(else_revision(&r))
    })
}

/// Kubernetes' delete: Txn(mod_revision == rev) → Delete, else Get. Ok(true) when deleted.
async fn delete(c: &mut Client, key: Vec<u8>, rev: i64) -> Res<bool> {
    let txn = Txn::new()
        .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
        .and_then([TxnOp::delete(key.clone(), None)])
        .or_else([TxnOp::get(key, None)]);
    Ok(c.txn(txn).await.map_err(err)?.succeeded())
}

/// One client's state across the crud phases.
struct Worker {
    client: Client,
    keys: Vec<(Vec<u8>, i64)>,
    rng: u64,
    lat: Vec<u32>,
    errors: u64,
}

fn line(
    p: &Params,
    workload: &str,
    clients: usize,
    lat: &mut [u32],
    errors: u64,
    seconds: f64,
) -> serde_json::Map<String, serde_json::Value> {
    result_line(&p.system, workload, clients, lat, errors, seconds)
}

fn print(m: serde_json::Map<String, serde_json::Value>) {
    println!("{}", serde_json::Value::Object(m));
}

#[derive(Clone, Copy)]
enum Phase {
    Create,
    Update,
    Delete,
}

/// Runs one timed crud phase over every worker; returns the workers and the JSON line.
async fn crud_phase(
    p: &Params,
    phase: Phase,
    workers: Vec<Worker>,
    prefix: &str,
) -> Res<Vec<Worker>> {
    let stop = Arc::new(AtomicBool::new(false));
    let ran_out = Arc::new(tokio::sync::Notify::new());
    let probe = p.targets.start().await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut w) in workers.into_iter().enumerate() {
        let (stop, ran_out) = (stop.clone(), ran_out.clone());
        let value_size = p.value_size;
        let prefix = format!("{prefix}/c{i}/");
        w.lat.clear();
        w.errors = 0;
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            let mut next = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = match phase {
                    Phase::Create => {
                        let key = format!("{prefix}{next:08}").into_bytes();
                        next += 1;
                        match create(&mut w.client, key.clone(), value(&mut w.rng, value_size))
                            .await
                        {
                            Ok(Some(rev)) => {
                                w.keys.push((key, rev));
                                true
                            }
                            _ => false,
                        }
                    }
                    Phase::Update => {
                        if w.keys.is_empty() {
                            return w;
                        }
                        let idx = n % w.keys.len();
                        let (key, rev) = w.keys[idx].clone();
                        match update(&mut w.client, key, rev, value(&mut w.rng, value_size)).await {
                            Ok(Ok(new)) => {
                                w.keys[idx].1 = new;
                                true
                            }
                            Ok(Err(cur)) => {
                                w.keys[idx].1 = cur;
                                false
                            }
                            Err(_) => false,
                        }
                    }
                    Phase::Delete => {
                        let Some((key, rev)) = w.keys.get(n).cloned() else {
                            ran_out.notify_one();
                            break;
                        };
                        matches!(delete(&mut w.client, key, rev).await, Ok(true))
                    }
                };
                if ok {
                    w.lat.push(micros(t.elapsed()));
                } else {
                    w.errors += 1;
                }
                n += 1;
            }
            if let Phase::Delete = phase {
                w.keys.drain(..n.min(w.keys.len()));
            }
            w
        }));
    }
    // The phase ends after the duration, or earlier when a delete worker runs out of keys.
    tokio::select! {
        _ = tokio::time::sleep(p.duration) => {},
        _ = ran_out.notified() => {},
    }
    stop.store(true, Ordering::Relaxed);
    let mut workers = Vec::new();
    for t in tasks {
        let w = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .map_err(|_| "a client did not finish within 120 s".to_string())?
            .map_err(|e| e.to_string())?;
        workers.push(w);
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut lat: Vec<u32> = workers.iter().flat_map(|w| w.lat.iter().copied()).collect();
    let errors = workers.iter().map(|w| w.errors).sum();
    let name = match phase {
        Phase::Create => "create",
        Phase::Update => "update",
        Phase::Delete => "delete",
    };
    // `--label L` names the phases "L create", "L update", "L delete".
    let name = match &p.label {
        Some(l) => format!("{l} {name}"),
        None => name.to_string(),
    };
    let mut m = line(p, &name, workers.len(), &mut lat, errors, seconds);
    m.extend(p.targets.finish(&probe, lat.len() as u64).await);
    print(m);
    Ok(workers)
}

async fn crud(p: &Params) -> Res<()> {
    let prefix = format!("{}/crud/{}", p.prefix, run_id());
    let mut workers = Vec::new();
    for i in 0..p.clients {
        workers.push(Worker {
            client: connect(&p.endpoint).await?,
            keys: Vec::new(),
            rng: 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1),
            lat: Vec::new(),
            errors: 0,
        });
    }
    let workers = crud_phase(p, Phase::Create, workers, &prefix).await?;
    let workers = crud_phase(p, Phase::Update, workers, &prefix).await?;
    crud_phase(p, Phase::Delete, workers, &prefix).await?;
    Ok(())
}

/// Creates `keys` keys `<prefix>NNNNNNNN` with `clients` clients (untimed set-up).
pub async fn seed(
    endpoint: &str,
    prefix: &str,
    keys: u64,
    clients: usize,
    value_size: usize,
) -> Res<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let mut c = connect(endpoint).await?;
        let next = next.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut rng = 0x5851_F42D_4C95_7F2Du64 ^ (i as u64 + 1);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= keys {
                    return Ok::<(), String>(());
                }
                let key = format!("{prefix}{n:08}").into_bytes();
                let mut tries = 0;
                loop {
                    match create(&mut c, key.clone(), value(&mut rng, value_size)).await {
                        Ok(_) => break,
                        Err(e) if tries >= 5 => return Err(format!("seeding {n}: {e}")),
                        Err(_) => tries += 1,
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

async fn list(p: &Params) -> Res<()> {
    let prefix = match &p.existing {
        Some(prefix) => prefix.clone(),
        None => {
            let prefix = format!("{}/list/{}/", p.prefix, run_id());
            seed(&p.endpoint, &prefix, p.list_keys, 32, p.value_size).await?;
            prefix
        }
    };
    // With --existing and --list-keys 0, any number of keys is a complete list.
    let check = p.existing.is_none() || p.list_keys > 0;
    let end = prefix_end(prefix.as_bytes());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..p.clients {
        clients.push(connect(&p.endpoint).await?);
    }
    let probe = p.targets.start().await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut c in clients {
        let (stop, prefix, end) = (stop.clone(), prefix.clone(), end.clone());
        let (limit, expect) = (p.page_size, p.list_keys);
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors, mut lists) = (Vec::new(), 0u64, 0u64);
            'lists: while !stop.load(Ordering::Relaxed) {
                let mut start = prefix.clone().into_bytes();
                let mut rev = 0;
                let mut seen = 0u64;
                loop {
                    // A list cut short by the end of the cell counts neither as a list nor as
                    // an error (pages can take seconds on a server that reads the history).
                    if rev != 0 && stop.load(Ordering::Relaxed) {
                        continue 'lists;
                    }
                    let mut opts = GetOptions::new().with_range(end.clone()).with_limit(limit);
                    if rev != 0 {
                        opts = opts.with_revision(rev);
                    }
                    let t = Instant::now();
                    let r = match c.get(start.clone(), Some(opts)).await {
                        Ok(r) => r,
                        Err(_) => {
                            errors += 1;
                            continue 'lists;
                        }
                    };
                    lat.push(micros(t.elapsed()));
                    if rev == 0 {
                        rev = r.header().map(|h| h.revision()).unwrap_or(0);
                    }
                    seen += r.kvs().len() as u64;
                    match r.kvs().last() {
                        Some(kv) if r.more() => {
                            start = kv.key().to_vec();
                            start.push(0);
                        }
                        _ => break,
                    }
                }
                if seen == expect || !check {
                    lists += 1;
                } else {
                    errors += 1;
                }
            }
            (lat, errors, lists)
        }));
    }
    tokio::time::sleep(p.duration).await;
    stop.store(true, Ordering::Relaxed);
    let (mut lat, mut errors, mut lists) = (Vec::new(), 0, 0);
    for t in tasks {
        let (l, e, n) = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .map_err(|_| "a list client did not finish within 120 s".to_string())?
            .map_err(|e| e.to_string())?;
        lat.extend(l);
        errors += e;
        lists += n;
    }
    let seconds = started.elapsed().as_secs_f64();
    let name = p.label.as_deref().unwrap_or("list");
    let mut m = line(p, name, p.clients, &mut lat, errors, seconds);
    m.insert("list_keys".into(), p.list_keys.into());
    m.insert("page_size".into(), p.page_size.into());
    m.insert("full_lists_per_sec".into(), (lists as f64 / seconds).into());
    m.insert(
        "keys_per_sec".into(),
        (lists as f64 * p.list_keys as f64 / seconds).into(),
    );
    m.extend(p.targets.finish(&probe, lat.len() as u64).await);
    print(m);
    Ok(())
}

async fn watch(p: &Params) -> Res<()> {
    let prefix = format!("{}/watch/{}/", p.prefix, run_id());
    let end = prefix_end(prefix.as_bytes());
    let base = Instant::now();
    let conns = p.watch_conns.clamp(1, p.watchers.max(1));
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(connect(&p.endpoint).await?);
    }
    // total = number of events each watcher must receive (known once the writer is done).
    let (total_tx, total_rx) = tokio::sync::watch::channel(u64::MAX);
    let mut tasks = Vec::new();
    let setup_deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..p.watchers {
        let mut c = clients[i % conns].clone();
        let opts = WatchOptions::new().with_range(end.clone());
        let mut stream =
            tokio::time::timeout_at(setup_deadline.into(), c.watch(prefix.clone(), Some(opts)))
                .await
                .map_err(|_| format!("watch {i} not created within 60 s"))?
                .map_err(err)?;
        // Wait for the `created` response so no event is missed.
        match tokio::time::timeout_at(setup_deadline.into(), stream.message()).await {
            Ok(Ok(Some(r))) if r.created() => {}
            other => return Err(format!("watch {i}: no created response: {other:?}")),
        }
        let mut total_rx = total_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                if lat.len() as u64 >= *total_rx.borrow() {
                    break;
                }
                tokio::select! {
                    m = stream.message() => match m {
                        Ok(Some(r)) => {
                            let now = base.elapsed();
                            for ev in r.events() {
                                let Some(kv) = ev.kv() else { continue };
                                let sent = std::str::from_utf8(kv.value().get(..20).unwrap_or(b""))
                                    .ok()
                                    .and_then(|s| s.trim().parse::<u64>().ok());
                                if let Some(sent) = sent {
                                    lat.push(micros(now.saturating_sub(Duration::from_micros(sent))));
                                }
                            }
                        }
                        _ => break,
                    },
                    changed = total_rx.changed() => if changed.is_err() { break },
                }
            }
            lat
        }));
    }
    let mut writer = connect(&p.endpoint).await?;
    let probe = p.targets.start().await;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / p.write_rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut written, mut write_errors, mut rng) = (0u64, 0u64, 0x2545_F491_4F6C_DD1Du64);
    let mut write_lat = Vec::new();
    while started.elapsed() < p.duration {
        tick.tick().await;
        let mut v = value(&mut rng, p.value_size.max(20));
        let t = Instant::now();
        v[..20].copy_from_slice(format!("{:>20}", micros(base.elapsed())).as_bytes());
        match create(&mut writer, format!("{prefix}{written:08}").into_bytes(), v).await {
            Ok(Some(_)) => {
                written += 1;
                write_lat.push(micros(t.elapsed()));
            }
            _ => write_errors += 1,
        }
    }
    let _ = total_tx.send(written);
    // Every watcher gets up to 30 s after the last write to receive the rest.
    let drain_deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut lat = Vec::new();
    let mut incomplete = 0u64;
    for t in tasks {
        match tokio::time::timeout_at(drain_deadline, t).await {
            Ok(Ok(l)) => {
                if (l.len() as u64) < written {
                    incomplete += 1;
                }
                lat.extend(l)
            }
            _ => incomplete += 1,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let expected = written * p.watchers as u64;
    let missing = expected.saturating_sub(lat.len() as u64);
    let mut m = line(
        p,
        "watch",
        p.watchers,
        &mut lat,
        missing + write_errors,
        seconds,
    );
    m.insert("watchers".into(), p.watchers.into());
    m.insert("writes".into(), written.into());
    m.insert("write_rate".into(), p.write_rate.into());
    m.insert("events_expected".into(), expected.into());
    m.insert("events_missing".into(), missing.into());
    m.insert("watchers_incomplete".into(), incomplete.into());
    write_lat.sort_unstable();
    m.insert(
        "write_p50_ms".into(),
        crate::percentile(&write_lat, 0.5).into(),
    );
    m.extend(p.targets.finish(&probe, lat.len() as u64).await);
    print(m);
    Ok(())
}

async fn mixed(p: &Params) -> Res<()> {
    const KEYS_PER_CLIENT: u64 = 16;
    let prefix = format!("{}/mixed/{}", p.prefix, run_id());
    let mut workers = Vec::new();
    for i in 0..p.clients {
        let mut client = connect(&p.endpoint).await?;
        let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
        let mut keys = Vec::new();
        for k in 0..KEYS_PER_CLIENT {
            let key = format!("{prefix}/c{i}/{k:04}").into_bytes();
            let rev = create(&mut client, key.clone(), value(&mut rng, p.value_size))
                .await?
                .ok_or("mixed: seed key already exists")?;
            keys.push((key, rev));
        }
        workers.push(Worker {
            client,
            keys,
            rng,
            lat: Vec::new(),
            errors: 0,
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let probe = p.targets.start().await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    let nclients = p.clients as u64;
    for mut w in workers {
        let (stop, prefix, value_size) = (stop.clone(), prefix.clone(), p.value_size);
        tasks.push(tokio::spawn(async move {
            let (mut reads, mut writes) = (Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let r = crate::next_rand(&mut w.rng);
                let t = Instant::now();
                if r % 10 < 6 {
                    let c = (r >> 8) % nclients;
                    let k = (r >> 32) % KEYS_PER_CLIENT;
                    match w.client.get(format!("{prefix}/c{c}/{k:04}"), None).await {
                        Ok(g) if g.kvs().len() == 1 => reads.push(micros(t.elapsed())),
                        _ => w.errors += 1,
                    }
                } else {
                    let idx = ((r >> 8) % KEYS_PER_CLIENT) as usize;
                    let (key, rev) = w.keys[idx].clone();
                    match update(&mut w.client, key, rev, value(&mut w.rng, value_size)).await {
                        Ok(Ok(new)) => {
                            w.keys[idx].1 = new;
                            writes.push(micros(t.elapsed()));
                        }
                        Ok(Err(cur)) => {
                            w.keys[idx].1 = cur;
                            w.errors += 1;
                        }
                        Err(_) => w.errors += 1,
                    }
                }
            }
            (reads, writes, w.errors)
        }));
    }
    tokio::time::sleep(p.duration).await;
    stop.store(true, Ordering::Relaxed);
    let (mut reads, mut writes, mut errors) = (Vec::new(), Vec::new(), 0);
    for t in tasks {
        let (r, w, e) = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .map_err(|_| "a mixed client did not finish within 120 s".to_string())?
            .map_err(|e| e.to_string())?;
        reads.extend(r);
        writes.extend(w);
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    reads.sort_unstable();
    writes.sort_unstable();
    let mut all: Vec<u32> = reads.iter().chain(writes.iter()).copied().collect();
    let mut m = line(p, "mixed", p.clients, &mut all, errors, seconds);
    m.insert("reads".into(), reads.len().into());
    m.insert("writes".into(), writes.len().into());
    m.insert("read_p99_ms".into(), crate::percentile(&reads, 0.99).into());
    m.insert(
        "write_p99_ms".into(),
        crate::percentile(&writes, 0.99).into(),
    );
    m.extend(p.targets.finish(&probe, all.len() as u64).await);
    print(m);
    Ok(())
}

async fn get(p: &Params) -> Res<()> {
    let key = match &p.existing {
        Some(key) => key.clone(),
        None => {
            let prefix = format!("{}/get/{}/", p.prefix, run_id());
            seed(&p.endpoint, &prefix, 1, 1, p.value_size).await?;
            format!("{prefix}00000000")
        }
    };
    let mut clients = Vec::new();
    for _ in 0..p.clients {
        clients.push(connect(&p.endpoint).await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let probe = p.targets.start().await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut c in clients {
        let (stop, key) = (stop.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match c.get(key.as_bytes(), None).await {
                    Ok(g) if g.kvs().len() == 1 => lat.push(micros(t.elapsed())),
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    tokio::time::sleep(p.duration).await;
    stop.store(true, Ordering::Relaxed);
    let (mut lat, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .map_err(|_| "a get client did not finish within 120 s".to_string())?
            .map_err(|e| e.to_string())?;
        lat.extend(l);
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    let name = p.label.as_deref().unwrap_or("get");
    let mut m = line(p, name, p.clients, &mut lat, errors, seconds);
    m.extend(p.targets.finish(&probe, lat.len() as u64).await);
    print(m);
    Ok(())
}

pub async fn run(workload: K8sWorkload, p: Params) -> Res<()> {
    match workload {
        K8sWorkload::Crud => crud(&p).await,
        K8sWorkload::List => list(&p).await,
        K8sWorkload::Watch => watch(&p).await,
        K8sWorkload::Mixed => mixed(&p).await,
        K8sWorkload::Get => get(&p).await,
    }
}
