//! A Kubernetes-shaped write workload with a ledger of outcomes, and the checks run on the
//! history a restarted server replays.
//!
//! Each worker owns its keys (`/registry/<prefix>/w<id>/k<n>`) and writes them one operation at a
//! time: plain puts, create txns (`mod_revision == 0` → put, else get), updates and deletes
//! guarded by the last mod_revision it saw acknowledged. Every value is unique, so an event in
//! the history names the operation that wrote it. Outcomes:
//! * acknowledged — the revision the server answered is recorded;
//! * failed cleanly — the server answered "write not durable, nothing was applied": must never
//!   appear in the history;
//! * unknown — transport error, timeout, server gone: may or may not appear (at most once).
//!
//! A guarded txn whose compare fails although the worker's last outcome on that key was known
//! (acknowledged or failed cleanly) means the server lost or invented a write: a violation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One write as the ledger or the history sees it. `value == None` is a delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub rev: i64,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

impl std::fmt::Display for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = match &self.value {
            Some(v) => String::from_utf8_lossy(&v[..v.len().min(24)]).to_string(),
            None => "<delete>".into(),
        };
        write!(
            f,
            "rev {} {} = {v}",
            self.rev,
            String::from_utf8_lossy(&self.key)
        )
    }
}

/// A write whose outcome was not an acknowledgement (revision unknown).
#[derive(Clone, Debug)]
pub struct Attempt {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    pub error: String,
}

#[derive(Default)]
pub struct Ledger {
    pub acked: Mutex<Vec<Write>>,
    pub clean_failed: Mutex<Vec<Attempt>>,
    pub unknown: Mutex<Vec<Attempt>>,
    pub violations: Mutex<Vec<String>>,
    /// Errors seen while the server was supposed to be up and fault-free.
    pub unexpected: AtomicU64,
}

impl Ledger {
    pub fn ack(&self, w: Write) {
        self.acked.lock().unwrap().push(w);
    }
    pub fn acked(&self) -> Vec<Write> {
        let mut v = self.acked.lock().unwrap().clone();
        v.sort_by_key(|w| w.rev);
        v
    }
    pub fn max_acked_rev(&self) -> i64 {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .map(|w| w.rev)
            .max()
            .unwrap_or(0)
    }
    pub fn summary(&self) -> String {
        format!(
            "{} acknowledged, {} failed cleanly, {} unknown, {} violations",
            self.acked.lock().unwrap().len(),
            self.clean_failed.lock().unwrap().len(),
            self.unknown.lock().unwrap().len(),
            self.violations.lock().unwrap().len()
        )
    }
}

/// "Write not durable, nothing was applied" (store::Error::Commit as a gRPC status).
pub fn is_clean_failure(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.code() == tonic::Code::Unavailable
            && s.message().starts_with("netsy: write not durable"))
}

pub struct WorkerCfg {
    pub id: usize,
    pub seed: u64,
    pub prefix: String,
    pub value_size: usize,
    /// Longest one operation may take before its outcome counts as unknown.
    pub op_timeout: Duration,
}

enum Op {
    Put,
    Create,
    Update(i64),
    Delete(i64),
}

/// Runs until `stop`; every outcome goes to `ledger`. `faults_expected` says whether errors
/// are part of the test (otherwise an error before `stop` counts as unexpected).
pub async fn run_worker(
    mut client: Client,
    cfg: WorkerCfg,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    faults_expected: bool,
) {
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ (cfg.id as u64).wrapping_mul(0x9E37_79B9));
    // key → last acknowledged mod_revision (only keys whose state is known).
    let mut live: Vec<(Vec<u8>, i64)> = Vec::new();
    let mut next_key = 0u64;
    let mut seq = 0u64;
    while !stop.load(Ordering::Acquire) {
        seq += 1;
        let r: f64 = rng.random();
        let pick = (!live.is_empty()).then(|| rng.random_range(0..live.len()));
        let (op, key, idx) = match pick {
            Some(i) if (0.45..0.85).contains(&r) => {
                (Op::Update(live[i].1), live[i].0.clone(), Some(i))
            }
            Some(i) if r >= 0.85 => (Op::Delete(live[i].1), live[i].0.clone(), Some(i)),
            Some(i) if r >= 0.35 => (Op::Put, live[i].0.clone(), Some(i)),
            _ => {
                next_key += 1;
                let key = format!("/registry/{}/w{}/k{next_key}", cfg.prefix, cfg.id).into_bytes();
                let op = if r < 0.2 { Op::Put } else { Op::Create };
                (op, key, None)
            }
        };
        let value = match op {
            Op::Delete(_) => None,
            _ => {
                let mut v = format!("w{}-s{seq}-", cfg.id).into_bytes();
                v.resize(cfg.value_size.max(v.len()), b'x');
                Some(v)
            }
        };
        let call = async {
            match &op {
                Op::Put => client
                    .put(key.clone(), value.clone().unwrap(), None)
                    .await
                    .map(|r| (true, r.header().map_or(0, |h| h.revision()))),
                Op::Create | Op::Update(_) | Op::Delete(_) => {
                    let expect = match op {
                        Op::Update(r) | Op::Delete(r) => r,
                        _ => 0,
                    };
                    let then = match &value {
                        Some(v) => TxnOp::put(key.clone(), v.clone(), None),
                        None => TxnOp::delete(key.clone(), None),
                    };
                    let txn = Txn::new()
                        .when([Compare::mod_revision(key.clone(), CompareOp::Equal, expect)])
                        .and_then([then])
                        .or_else([TxnOp::get(key.clone(), None)]);
                    client
                        .txn(txn)
                        .await
                        .map(|r| (r.succeeded(), r.header().map_or(0, |h| h.revision())))
                }
            }
        };
        let result = tokio::time::timeout(cfg.op_timeout, call).await;
        match result {
            Ok(Ok((true, rev))) => {
                ledger.ack(Write {
                    rev,
                    key: key.clone(),
                    value: value.clone(),
                });
                match (idx, &value) {
                    (Some(i), Some(_)) => live[i].1 = rev,
                    (Some(i), None) => {
                        live.swap_remove(i);
                    }
                    (None, _) => live.push((key, rev)),
                }
            }
            Ok(Ok((false, rev))) => {
                ledger.violations.lock().unwrap().push(format!(
                    "compare failed at rev {rev} on {} (expected mod_revision {}); its last known outcome was not this state",
                    String::from_utf8_lossy(&key),
                    match op { Op::Update(r) | Op::Delete(r) => r, _ => 0 },
                ));
                if let Some(i) = idx {
                    live.swap_remove(i);
                }
            }
            Ok(Err(e)) if is_clean_failure(&e) => {
                if !faults_expected {
                    ledger.unexpected.fetch_add(1, Ordering::Relaxed);
                }
                ledger.clean_failed.lock().unwrap().push(Attempt {
                    key,
                    value,
                    error: e.to_string(),
                });
            }
            other => {
                let error = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "client timeout".to_string(),
                };
                if !faults_expected && !stop.load(Ordering::Acquire) {
                    ledger.unexpected.fetch_add(1, Ordering::Relaxed);
                    eprintln!("worker {}: unexpected error: {error}", cfg.id);
                }
                ledger.unknown.lock().unwrap().push(Attempt {
                    key: key.clone(),
                    value,
                    error,
                });
                // The key's state is no longer known: never touch it again.
                if let Some(i) = idx {
                    live.swap_remove(i);
                }
                if faults_expected {
                    // The server may be restarting; do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Every event from `from` through `to` (inclusive) on keys under "/", in delivery order.
pub async fn history(client: &mut Client, from: i64, to: i64, limit: Duration) -> Vec<Write> {
    let mut stream = client
        .watch(
            "/",
            Some(WatchOptions::new().with_prefix().with_start_revision(from)),
        )
        .await
        .expect("watch");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = 0;
    while last < to {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| {
                panic!("watch from {from} stalled at revision {last} (want {to}) after {limit:?}")
            })
            .expect("watch stream")
            .expect("watch stream ended");
        assert!(
            !msg.canceled(),
            "watch canceled: {} (compact_revision {})",
            msg.cancel_reason(),
            msg.compact_revision()
        );
        for ev in msg.events() {
            let kv = ev.kv().expect("event kv");
            last = last.max(kv.mod_revision());
            out.push(Write {
                rev: kv.mod_revision(),
                key: kv.key().to_vec(),
                value: match ev.event_type() {
                    EventType::Put => Some(kv.value().to_vec()),
                    EventType::Delete => None,
                },
            });
        }
    }
    out
}

/// Events must come in revision order, cover every revision in `from..=to` (no gap), and
/// name each (revision, key) once (no duplicate).
pub fn check_history_shape(events: &[Write], from: i64, to: i64) {
    let mut prev = 0;
    let mut seen = HashSet::new();
    let mut revs = std::collections::BTreeSet::new();
    for e in events {
        assert!(e.rev >= prev, "events out of order: {} after {prev}", e.rev);
        prev = e.rev;
        assert!(seen.insert((e.rev, e.key.clone())), "duplicate event: {e}");
        revs.insert(e.rev);
    }
    let want: Vec<i64> = (from..=to).collect();
    let got: Vec<i64> = revs.iter().copied().filter(|r| *r <= to).collect();
    if got != want {
        let missing: Vec<_> = want.iter().filter(|r| !revs.contains(r)).take(20).collect();
        panic!("history {from}..={to} has gaps; missing revisions (first 20): {missing:?}");
    }
}

/// Every acknowledged write at or after `from` appears in `events` at its revision with its value.
pub fn check_acked_in_history(events: &[Write], acked: &[Write], from: i64) -> usize {
    let index: HashMap<(i64, &[u8]), &Option<Vec<u8>>> = events
        .iter()
        .map(|e| ((e.rev, e.key.as_slice()), &e.value))
        .collect();
    let mut checked = 0;
    let mut lost = Vec::new();
    for w in acked.iter().filter(|w| w.rev >= from) {
        match index.get(&(w.rev, w.key.as_slice())) {
            Some(v) if **v == w.value => checked += 1,
            Some(v) => lost.push(format!(
                "{w}: history holds {:?}",
                v.as_ref()
                    .map(|v| String::from_utf8_lossy(&v[..v.len().min(24)]).to_string())
            )),
            None => lost.push(format!("{w}: absent")),
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost or changed, e.g.:\n{}",
        lost.len(),
        lost.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    checked
}

/// No value is written twice, and no cleanly failed write appears.
pub fn check_no_phantoms(events: &[Write], clean_failed: &[Attempt]) {
    let mut values = HashMap::new();
    for e in events {
        if let Some(v) = &e.value
            && let Some(prev) = values.insert(v.clone(), e.rev)
        {
            panic!("value written twice (rev {prev} and {e})");
        }
    }
    for a in clean_failed.iter().filter(|a| a.value.is_some()) {
        if let Some(rev) = values.get(a.value.as_ref().unwrap()) {
            panic!(
                "a write that failed cleanly ({}) was applied at revision {rev}: {}",
                String::from_utf8_lossy(&a.key),
                a.error
            );
        }
    }
}

/// key → (mod_revision, value) after applying `writes` (in order) to `state`.
pub fn replay(state: &mut BTreeMap<Vec<u8>, (i64, Vec<u8>)>, writes: &[Write]) {
    for w in writes {
        match &w.value {
            Some(v) => {
                state.insert(w.key.clone(), (w.rev, v.clone()));
            }
            None => {
                state.remove(&w.key);
            }
        }
    }
}

/// All keys under "/" at `rev` (0 = now) as key → (mod_revision, value).
pub async fn state_at(client: &mut Client, rev: i64) -> BTreeMap<Vec<u8>, (i64, Vec<u8>)> {
    let resp = client
        .get(
            "/",
            Some(GetOptions::new().with_prefix().with_revision(rev)),
        )
        .await
        .unwrap_or_else(|e| panic!("range at revision {rev}: {e}"));
    resp.kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), (kv.mod_revision(), kv.value().to_vec())))
        .collect()
}

/// Compares two states, naming the first differences.
pub fn assert_same_state(
    what: &str,
    got: &BTreeMap<Vec<u8>, (i64, Vec<u8>)>,
    want: &BTreeMap<Vec<u8>, (i64, Vec<u8>)>,
) {
    if got == want {
        return;
    }
    let mut diffs = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            Some(g) if g == v => {}
            Some(g) => diffs.push(format!(
                "{}: rev {} instead of {}",
                String::from_utf8_lossy(k),
                g.0,
                v.0
            )),
            None => diffs.push(format!(
                "{}: missing (want rev {})",
                String::from_utf8_lossy(k),
                v.0
            )),
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        diffs.push(format!(
            "{}: unexpected (rev {})",
            String::from_utf8_lossy(k),
            got[k].0
        ));
    }
    panic!(
        "{what}: {} differences, e.g.:\n{}",
        diffs.len(),
        diffs
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A put that must succeed; returns its revision.
pub async fn put_ok(client: &mut Client, key: &str, value: &str, lease: Option<i64>) -> i64 {
    let opts = lease.map(|l| PutOptions::new().with_lease(l));
    client
        .put(key, value, opts)
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"))
        .header()
        .expect("header")
        .revision()
}
