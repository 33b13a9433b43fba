//! Reliability under faults: three real `netsy` processes sharing one real S3 bucket (seaweedfs),
//! a Kubernetes-shaped client load, and a nemesis. Every client operation is recorded
//! (call/return times, outcome: ok, failed, or unknown) and the history is checked afterwards
//! with two linearizability checkers (tests/support/lincheck.rs); one watch per node is checked
//! against the store's history (order, no gap, no duplicate, prev_kv, progress notifications
//! never ahead of the data).
//!
//! Nemeses (one per scenario, injected again and again for the scenario's duration):
//! * `kill-primary`, `kill-replica`: kill -9, restart after a pause;
//! * `kill-in-election`: kill -9 of the Primary and, once a Replica has taken the writer lock,
//!   of that node too (the node that won the election — our "elector" — dies at once);
//! * `pause-primary`, `pause-replica`: SIGSTOP past the writer lock's TTL, then SIGCONT (a
//!   Primary that wakes up after it was replaced);
//! * `bucket-partition-primary`: the Primary's packets to its bucket endpoint dropped (iptables);
//! * `peer-partition-primary`: the Primary cut from both Replicas on the peer port, bucket kept;
//! * `isolate-replica`: a Replica cut from the bucket and from both peers;
//! * `bucket-faults`: on the Primary's S3 path, errors, latency and responses dropped after the
//!   request was applied (a fault-injecting proxy);
//! * `wipe-replica`, `wipe-primary`: kill -9, delete the data directory, restart (rebuilt from
//!   the bucket and the Primary's history);
//! * `clock-skew`: nodes 2 and 3 run with wall clocks 10 min ahead and 10 min behind
//!   (libfaketime; monotonic clocks untouched; S3 itself refuses requests skewed by more than
//!   15 min) while the Primary is killed repeatedly; membership must not flap (the default
//!   deregistration timeout is 3 min);
//! * `kill-primary-full-buffer`: kill -9 of the Primary once its chunk buffer holds at least
//!   `FULL_BUFFER` acknowledged records that only the Replicas have (quorum mode; in sync mode
//!   the buffer is always empty and this is `kill-primary`);
//! * `kill-replica-mid-receipt`: one Replica paused, then the other killed while every write
//!   waits for its receipt (the Primary must fall back to the bucket, losing nothing);
//! * `kill-two`: the Primary and a Replica killed together; the survivor alone holds less
//!   than a quorum's knowledge and must not serve a history without the acknowledged writes.
//!
//! In quorum mode `bucket-partition-primary` is the Primary cut from the bucket while its
//! Replicas still receipt.
//!
//! Each run is seeded: `NETSY_TEST_SEED=<n>` replays one (the seed picks the node each fault
//! hits, its timing, and every client's operations). CI runs `fault_suite_fixed_seeds` (every
//! nemesis once with a fixed seed, on the synchronous write path) and `fault_suite_quorum_writes`
//! (the same on the quorum write path, `replication.quorum -1`, its own seeds).
//! `soak` (ignored; `tests/faults/soak.sh HOURS`) cycles nemeses and
//! seeds until `NETSY_SOAK_SECS` have passed. `NETSY_FAULT_QUORUM=-1` runs
//! `fault_suite_fixed_seeds` and `soak` on the quorum path.
//!
//! Needs root, `iptables`, `libfaketime` and `weed` (tests/install.sh).

#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::lincheck::{self, Event, Input, Kv, Op, Output, Report, Seen, Wgl};
use support::net::Partitions;
use support::node::{Node, NodeSpec};
use support::proxy::{FaultProxy, Mode};
use support::weed::start_weed;

const READY: Duration = Duration::from_secs(90);
const HEARTBEAT: &str = "300ms";
/// Writer lock TTL at this heartbeat (3 × 300 ms) plus margin: a pause longer than this makes
/// the Replicas take over.
const PAST_TTL: Duration = Duration::from_millis(1800);
const PREFIX: &str = "/registry/faults/";
const KEYS: usize = 10;
const WORKERS: usize = 6;
const OP_TIMEOUT: Duration = Duration::from_secs(4);
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

static NEXT_GID: AtomicU32 = AtomicU32::new(0);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Nemesis {
    KillPrimary,
    KillReplica,
    KillInElection,
    PausePrimary,
    PauseReplica,
    BucketPartitionPrimary,
    PeerPartitionPrimary,
    IsolateReplica,
    BucketFaults,
    WipeReplica,
    WipePrimary,
    ClockSkew,
    KillPrimaryFullBuffer,
    KillReplicaMidReceipt,
    KillTwo,
}

const ALL: [Nemesis; 15] = [
    Nemesis::KillPrimary,
    Nemesis::KillReplica,
    Nemesis::KillInElection,
    Nemesis::PausePrimary,
    Nemesis::PauseReplica,
    Nemesis::BucketPartitionPrimary,
    Nemesis::PeerPartitionPrimary,
    Nemesis::IsolateReplica,
    Nemesis::BucketFaults,
    Nemesis::WipeReplica,
    Nemesis::WipePrimary,
    Nemesis::ClockSkew,
    Nemesis::KillPrimaryFullBuffer,
    Nemesis::KillReplicaMidReceipt,
    Nemesis::KillTwo,
];

/// Acknowledged records that must be waiting in the Primary's chunk buffer before
/// `kill-primary-full-buffer` strikes.
const FULL_BUFFER: i64 = 40;

impl Nemesis {
    fn name(self) -> &'static str {
        match self {
            Nemesis::KillPrimary => "kill-primary",
            Nemesis::KillReplica => "kill-replica",
            Nemesis::KillInElection => "kill-in-election",
            Nemesis::PausePrimary => "pause-primary",
            Nemesis::PauseReplica => "pause-replica",
            Nemesis::BucketPartitionPrimary => "bucket-partition-primary",
            Nemesis::PeerPartitionPrimary => "peer-partition-primary",
            Nemesis::IsolateReplica => "isolate-replica",
            Nemesis::BucketFaults => "bucket-faults",
            Nemesis::WipeReplica => "wipe-replica",
            Nemesis::WipePrimary => "wipe-primary",
            Nemesis::ClockSkew => "clock-skew",
            Nemesis::KillPrimaryFullBuffer => "kill-primary-full-buffer",
            Nemesis::KillReplicaMidReceipt => "kill-replica-mid-receipt",
            Nemesis::KillTwo => "kill-two",
        }
    }
}

/// Three nodes, each with its own group id (for partitions) and its own fault proxy in front of
/// the bucket.
struct Harness {
    nodes: Vec<Node>,
    proxies: Vec<FaultProxy>,
    gids: Vec<u32>,
    net: Partitions,
    /// Nodes stopped with SIGSTOP.
    paused: Vec<bool>,
    /// `replication.quorum` of every node (0: the synchronous write path).
    quorum: i64,
    _tmp: tempfile::TempDir,
    _weed: support::weed::Weed,
}

impl Harness {
    async fn start(bucket: &str, seed: u64, skew: bool, quorum: i64) -> Harness {
        let mut weed = start_weed(bucket);
        let direct = weed.storage();
        weed.wait_ready(&direct).await;
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = 41_000
            + 10 * (NEXT_GID.fetch_add(1, Ordering::Relaxed) + std::process::id() % 100 * 20);
        let mut nodes = Vec::new();
        let mut proxies = Vec::new();
        let mut gids = Vec::new();
        for i in 1..=3u32 {
            let proxy = FaultProxy::start(weed.s3_port, seed ^ u64::from(i)).await;
            let mut spec =
                NodeSpec::cluster_member(tmp.path(), i, bucket, proxy.endpoint(), HEARTBEAT);
            spec.gid = Some(base + i);
            spec.quorum = quorum;
            if skew && i > 1 {
                // Within S3's allowed request-time skew (15 min).
                let offset = if i == 2 { "+10m" } else { "-10m" };
                spec.env = vec![
                    ("LD_PRELOAD".into(), FAKETIME.into()),
                    ("FAKETIME".into(), offset.into()),
                    ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
                ];
            }
            gids.push(base + i);
            let mut node = Node::start(spec, &tmp.path().join(format!("work-{i}")));
            node.wait_ready(READY).await;
            nodes.push(node);
            proxies.push(proxy);
        }
        Harness {
            nodes,
            proxies,
            gids,
            net: Partitions::new(),
            paused: vec![false; 3],
            quorum,
            _tmp: tmp,
            _weed: weed,
        }
    }

    fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.endpoint()).collect()
    }

    /// The node that reports itself as the leader, if one does within `limit`.
    async fn primary(&self, limit: Duration) -> Option<usize> {
        let deadline = Instant::now() + limit;
        loop {
            for (i, n) in self.nodes.iter().enumerate() {
                if self.paused[i] {
                    continue;
                }
                let opts = ConnectOptions::new()
                    .with_connect_timeout(Duration::from_millis(500))
                    .with_timeout(Duration::from_millis(800));
                let Ok(mut cl) = Client::connect([n.endpoint()], Some(opts)).await else {
                    continue;
                };
                if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), cl.status()).await
                    && s.leader() != 0
                    && s.leader() == s.header().map_or(0, |h| h.member_id())
                {
                    return Some(i);
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (at most `limit`) until node `i`'s chunk buffer holds at least `records`; returns
    /// how many it holds then (always 0 on the synchronous path: no wait).
    async fn buffered_at_least(&self, i: usize, records: i64, limit: Duration) -> i64 {
        if self.quorum == 0 {
            return 0;
        }
        let deadline = Instant::now() + limit;
        loop {
            let text = self.nodes[i].metrics().await;
            let n = text
                .lines()
                .find_map(|l| l.strip_prefix("netsy_primary_chunk_buffer_records "))
                .and_then(|v| v.trim().parse::<i64>().ok())
                .unwrap_or(0);
            if n >= records || Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn others(i: usize) -> Vec<usize> {
        (0..3).filter(|&j| j != i).collect()
    }

    fn cut_peers(&mut self, a: usize, b: usize) {
        let (pa, pb) = (self.nodes[a].peer_port, self.nodes[b].peer_port);
        self.net.cut((self.gids[a], &[pa]), (self.gids[b], &[pb]));
    }

    fn cut_bucket(&mut self, a: usize) {
        let port = self.proxies[a].port;
        self.net.drop_traffic(self.gids[a], port);
    }

    /// Undoes every fault: partitions, proxy modes, pauses, stopped processes.
    async fn heal(&mut self) {
        self.net.heal();
        for p in &self.proxies {
            p.set(Mode::Pass);
        }
        for i in 0..3 {
            if self.paused[i] {
                self.nodes[i].signal("CONT");
                self.paused[i] = false;
            }
        }
        let mut log = Vec::new();
        for i in 0..3 {
            self.supervise(i, &mut log).await;
        }
    }

    /// Plays the supervisor (systemd's `Restart=`, the StatefulSet's restart policy): a node
    /// that stopped itself with exit code 75 — a Primary that found its writer lock expired
    /// while it was paused or cut off, and stops to stay fenced — is started again, as is a
    /// node that is not running. Returns once the node is healthy (bounded).
    async fn supervise(&mut self, i: usize, log: &mut Vec<String>) {
        let deadline = Instant::now() + READY;
        loop {
            let node = &mut self.nodes[i];
            if let Some(code) = node.exited() {
                assert_eq!(
                    code,
                    Some(75),
                    "node-{} exited with {code:?}; log:\n{}",
                    i + 1,
                    support::node::tail(&node.log_text(), 40)
                );
                log.push(format!(
                    "node-{} stopped itself (fenced, exit 75); restarted",
                    i + 1
                ));
            }
            if !node.is_running() {
                node.restart();
            }
            if support::http::http_status(node.health_port, "/health").await == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node-{} not healthy within {READY:?}",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn kv_of(kv: &etcd_client::KeyValue) -> Kv {
    Kv {
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        mod_rev: kv.mod_revision(),
        create_rev: kv.create_revision(),
        version: kv.version(),
    }
}

fn is_clean_failure(e: &etcd_client::Error) -> bool {
    support::workload::is_clean_failure(e)
}

async fn execute(c: &mut Client, input: &Input) -> Result<Output, etcd_client::Error> {
    let txn = |cmp: Compare, then: TxnOp, key: &str| {
        Txn::new()
            .when([cmp])
            .and_then([then])
            .or_else([TxnOp::get(key, None)])
    };
    let txn = match input {
        Input::Create { key, value } => txn(
            Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            TxnOp::put(key.as_str(), value.as_str(), None),
            key,
        ),
        Input::Update {
            key,
            expect_rev,
            value,
            ..
        } => txn(
            Compare::mod_revision(key.as_str(), CompareOp::Equal, *expect_rev),
            TxnOp::put(key.as_str(), value.as_str(), None),
            key,
        ),
        Input::Delete {
            key, expect_rev, ..
        } => txn(
            Compare::mod_revision(key.as_str(), CompareOp::Equal, *expect_rev),
            TxnOp::delete(key.as_str(), None),
            key,
        ),
        Input::Get { key } => {
            let r = c.get(key.as_str(), None).await?;
            return Ok(Output::Get {
                rev: r.header().map_or(0, |h| h.revision()),
                kv: r.kvs().first().map(kv_of),
            });
        }
        Input::List { prefix } => {
            let r = c
                .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
                .await?;
            let mut kvs: Vec<(String, Kv)> = r
                .kvs()
                .iter()
                .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv_of(kv)))
                .collect();
            kvs.sort();
            return Ok(Output::List {
                rev: r.header().map_or(0, |h| h.revision()),
                kvs,
            });
        }
    };
    let r = c.txn(txn).await?;
    let current = r.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => Some(g.kvs().first().map(kv_of)),
        _ => None,
    });
    Ok(Output::Write {
        succeeded: r.succeeded(),
        rev: r.header().map_or(0, |h| h.revision()),
        current: current.flatten(),
    })
}

/// The recorded history.
struct Recorder {
    t0: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    fn now(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }
}

async fn connect_all(endpoints: &[String]) -> Vec<Client> {
    let mut out = Vec::new();
    for e in endpoints {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(OP_TIMEOUT);
        out.push(
            Client::connect([e.clone()], Some(opts))
                .await
                .expect("connect"),
        );
    }
    out
}

/// One client of the load: picks a node, a key and an operation from its own RNG.
async fn worker(
    id: usize,
    seed: u64,
    endpoints: Vec<String>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut clients = connect_all(&endpoints).await;
    // key → (mod_revision, value) last seen.
    let mut known: BTreeMap<String, (i64, String)> = BTreeMap::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let node = rng.random_range(0..clients.len());
        let key = format!("{PREFIX}k{:02}", rng.random_range(0..KEYS));
        seq += 1;
        let value = format!("c{id}-{seq}");
        let roll = rng.random_range(0..100);
        let input = match (roll, known.get(&key)) {
            (0..20, _) => Input::Create { key, value },
            (20..50, Some((rev, v))) => Input::Update {
                expect_rev: *rev,
                expect_value: v.clone(),
                key,
                value,
            },
            (50..60, Some((rev, v))) => Input::Delete {
                expect_rev: *rev,
                expect_value: v.clone(),
                key,
            },
            (90.., _) => Input::List {
                prefix: PREFIX.into(),
            },
            _ => Input::Get { key },
        };
        let call = rec.now();
        // Bounded here too: a balanced channel whose only endpoint is down waits for it
        // without the per-request timeout.
        let res = tokio::time::timeout(OP_TIMEOUT, execute(&mut clients[node], &input))
            .await
            .unwrap_or_else(|_| Err(etcd_client::Error::InvalidArgs("timed out".into())));
        let ret = rec.now();
        let key = input.key().to_string();
        let (output, ret) = match res {
            Ok(o) => (o, ret),
            // A failed read has no effect: not recorded.
            Err(_) if !input.is_write() => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(e) if is_clean_failure(&e) => (Output::Fail, ret),
            Err(_) => (Output::Unknown, u64::MAX),
        };
        match &output {
            Output::Write {
                succeeded: true,
                rev,
                ..
            } => match &input {
                Input::Create { value, .. } | Input::Update { value, .. } => {
                    known.insert(key, (*rev, value.clone()));
                }
                _ => {
                    known.remove(&key);
                }
            },
            Output::Write { current, .. } | Output::Get { kv: current, .. } => match current {
                Some(kv) => {
                    known.insert(key, (kv.mod_rev, kv.value.clone()));
                }
                None => {
                    known.remove(&key);
                }
            },
            Output::Unknown => {
                known.remove(&key);
            }
            Output::List { .. } | Output::Fail => {}
        }
        let failed = matches!(output, Output::Unknown | Output::Fail);
        rec.ops.lock().unwrap().push(Op {
            client: id,
            node,
            input,
            call,
            ret,
            output,
        });
        if failed {
            // A fresh channel: the old one may sit on a connection the fault broke.
            clients = connect_all(&endpoints).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A watch on one node from `start`, resumed after every break from the revision after the last
/// one delivered; asks for a progress notification every 300 ms.
async fn watcher(
    endpoint: String,
    start: i64,
    seen: Arc<Mutex<Vec<Seen>>>,
    last: Arc<std::sync::atomic::AtomicI64>,
    stop: Arc<AtomicBool>,
) {
    let mut from = start;
    while !stop.load(Ordering::Relaxed) {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
        let Ok(mut client) = Client::connect([endpoint.clone()], Some(opts)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let wopts = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(from);
        let Ok(stream) = client.watch(PREFIX, Some(wopts)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (mut tx, mut rx) = stream.split();
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let msg = match tokio::time::timeout(Duration::from_millis(300), rx.message()).await {
                Err(_) => {
                    if tx.request_progress().await.is_err() {
                        break;
                    }
                    continue;
                }
                Ok(Ok(Some(m))) => m,
                Ok(_) => break,
            };
            if msg.canceled() {
                seen.lock().unwrap().push(Seen::Progress(i64::MIN));
                break;
            }
            if msg.created() {
                continue;
            }
            if msg.events().is_empty() {
                let rev = msg.header().map_or(0, |h| h.revision());
                seen.lock().unwrap().push(Seen::Progress(rev));
                continue;
            }
            let mut s = seen.lock().unwrap();
            for e in msg.events() {
                let Some(kv) = e.kv() else { continue };
                let ev = Event {
                    rev: kv.mod_revision(),
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    kv: (e.event_type() == EventType::Put).then(|| kv_of(kv)),
                    prev: e.prev_kv().map(kv_of),
                };
                from = ev.rev + 1;
                last.store(ev.rev, Ordering::Relaxed);
                s.push(Seen::Event(ev));
            }
        }
    }
}

/// The store's history from `from` to `to` as one node's watch delivers it.
async fn history(endpoint: &str, from: i64, to: i64) -> Vec<Event> {
    let mut client = Client::connect([endpoint.to_string()], None)
        .await
        .expect("connect");
    let mut stream = client
        .watch(
            PREFIX,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_prev_key()
                    .with_start_revision(from),
            ),
        )
        .await
        .expect("watch");
    let mut out: Vec<Event> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.last().map_or(from - 1, |e| e.rev) < to {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, stream.message())
            .await
            .unwrap_or_else(|_| panic!("history to {to} from {endpoint} within 60 s"))
            .expect("watch")
            .expect("open");
        assert!(!msg.canceled(), "history watch canceled on {endpoint}");
        for e in msg.events() {
            let kv = e.kv().expect("kv");
            out.push(Event {
                rev: kv.mod_revision(),
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                kv: (e.event_type() == EventType::Put).then(|| kv_of(kv)),
                prev: e.prev_kv().map(kv_of),
            });
        }
    }
    out
}

/// Opens a watch from `from`; returns (events delivered, compact revision of the refusal, 0 if
/// none) once it is refused or has delivered something.
async fn watch_once(endpoint: &str, from: i64) -> Option<(usize, i64)> {
    let mut client = Client::connect([endpoint.to_string()], None).await.ok()?;
    let mut stream = client
        .watch(
            PREFIX,
            Some(WatchOptions::new().with_prefix().with_start_revision(from)),
        )
        .await
        .ok()?;
    let mut events = 0;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .ok()?
            .ok()??;
        events += msg.events().len();
        if msg.canceled() {
            return Some((events, msg.compact_revision()));
        }
        if events > 0 {
            return Some((events, 0));
        }
    }
}

async fn head(endpoint: &str) -> Option<i64> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(2));
    let mut c = Client::connect([endpoint.to_string()], Some(opts))
        .await
        .ok()?;
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        c.get(
            PREFIX,
            Some(GetOptions::new().with_count_only().with_serializable()),
        ),
    )
    .await
    .ok()?
    .ok()?;
    r.header().map(|h| h.revision())
}

/// Injects `nemesis` again and again until `until`.
async fn run_nemesis(
    h: &mut Harness,
    nemesis: Nemesis,
    rng: &mut StdRng,
    until: Instant,
    log: &mut Vec<String>,
) {
    let sleep = |ms: u64| tokio::time::sleep(Duration::from_millis(ms));
    while Instant::now() + Duration::from_secs(2) < until {
        sleep(rng.random_range(800..1500)).await;
        let Some(p) = h.primary(Duration::from_secs(15)).await else {
            panic!("no primary within 15 s before injecting {}", nemesis.name());
        };
        let replica = Harness::others(p)[rng.random_range(0..2)];
        let hold = rng.random_range(1200..3000);
        match nemesis {
            Nemesis::KillPrimary | Nemesis::ClockSkew => {
                log.push(format!("kill -9 node-{}", p + 1));
                h.nodes[p].kill9();
                sleep(hold).await;
                h.nodes[p].restart();
            }
            Nemesis::KillReplica => {
                log.push(format!("kill -9 node-{}", replica + 1));
                h.nodes[replica].kill9();
                sleep(hold).await;
                h.nodes[replica].restart();
            }
            Nemesis::KillInElection => {
                log.push(format!("kill -9 node-{}", p + 1));
                h.nodes[p].kill9();
                // The first Replica that takes over dies too, right after winning.
                if let Some(q) = h.primary(Duration::from_secs(10)).await {
                    log.push(format!("kill -9 node-{} (new primary)", q + 1));
                    h.nodes[q].kill9();
                    sleep(hold / 2).await;
                    h.nodes[q].restart();
                }
                sleep(hold / 2).await;
                h.nodes[p].restart();
            }
            Nemesis::PausePrimary | Nemesis::PauseReplica => {
                let n = if nemesis == Nemesis::PausePrimary {
                    p
                } else {
                    replica
                };
                log.push(format!("SIGSTOP node-{}", n + 1));
                h.nodes[n].signal("STOP");
                h.paused[n] = true;
                sleep(PAST_TTL.as_millis() as u64 + hold).await;
                h.nodes[n].signal("CONT");
                h.paused[n] = false;
            }
            Nemesis::BucketPartitionPrimary => {
                log.push(format!("node-{} cut from the bucket", p + 1));
                h.cut_bucket(p);
                sleep(PAST_TTL.as_millis() as u64 + hold).await;
                h.net.heal();
            }
            Nemesis::PeerPartitionPrimary => {
                log.push(format!("node-{} cut from its peers", p + 1));
                for q in Harness::others(p) {
                    h.cut_peers(p, q);
                }
                // Longer than a client's timeout: forwarded writes do not just wait it out.
                sleep(hold + 3000).await;
                h.net.heal();
            }
            Nemesis::IsolateReplica => {
                log.push(format!("node-{} isolated", replica + 1));
                h.cut_bucket(replica);
                for q in Harness::others(replica) {
                    h.cut_peers(replica, q);
                }
                sleep(PAST_TTL.as_millis() as u64 + hold).await;
                h.net.heal();
            }
            Nemesis::BucketFaults => {
                let mode = match rng.random_range(0..3) {
                    0 => Mode::Refuse(0.3),
                    1 => Mode::Latency(Duration::from_millis(rng.random_range(50..400))),
                    _ => Mode::DropResponse(0.3),
                };
                log.push(format!("node-{} bucket {mode:?}", p + 1));
                h.proxies[p].set(mode);
                sleep(hold).await;
                h.proxies[p].set(Mode::Pass);
            }
            Nemesis::KillPrimaryFullBuffer => {
                let buffered = h
                    .buffered_at_least(p, FULL_BUFFER, Duration::from_secs(5))
                    .await;
                log.push(format!(
                    "kill -9 node-{} ({buffered} records in its chunk buffer)",
                    p + 1
                ));
                h.nodes[p].kill9();
                sleep(hold).await;
                h.nodes[p].restart();
            }
            Nemesis::KillReplicaMidReceipt => {
                let other = Harness::others(p)
                    .into_iter()
                    .find(|&q| q != replica)
                    .expect("two replicas");
                log.push(format!(
                    "SIGSTOP node-{}, then kill -9 node-{} while writes wait for its receipts",
                    other + 1,
                    replica + 1
                ));
                h.nodes[other].signal("STOP");
                h.paused[other] = true;
                sleep(300).await;
                h.nodes[replica].kill9();
                sleep(hold).await;
                h.nodes[replica].restart();
                h.nodes[other].signal("CONT");
                h.paused[other] = false;
            }
            Nemesis::KillTwo => {
                log.push(format!(
                    "kill -9 node-{} and node-{} together",
                    p + 1,
                    replica + 1
                ));
                h.nodes[p].kill9();
                h.nodes[replica].kill9();
                sleep(hold).await;
                h.nodes[replica].restart();
                sleep(hold / 2).await;
                h.nodes[p].restart();
            }
            Nemesis::WipeReplica | Nemesis::WipePrimary => {
                let n = if nemesis == Nemesis::WipePrimary {
                    p
                } else {
                    replica
                };
                log.push(format!("kill -9 node-{}, wipe its data dir", n + 1));
                h.nodes[n].kill9();
                h.nodes[n].wipe_data_dir();
                sleep(hold).await;
                h.nodes[n].restart();
            }
        }
        // Let the cluster recover before the next fault.
        for i in 0..3 {
            if !h.paused[i] {
                h.supervise(i, log).await;
            }
        }
    }
}

struct Outcome {
    ops: usize,
    acked: usize,
    failed: usize,
    unknown: usize,
    events: usize,
    watch_events: usize,
    wgl_ops: usize,
    faults: usize,
}

/// One seeded run of one nemesis; panics with the violations found.
async fn run(nemesis: Nemesis, seed: u64, duration: Duration, quorum: i64) -> Outcome {
    let bucket = format!("faults-{}-{seed}", nemesis.name());
    let mut h = Harness::start(&bucket, seed, nemesis == Nemesis::ClockSkew, quorum).await;
    let mut rng = StdRng::seed_from_u64(seed);
    let endpoints = h.endpoints();
    let start = head(&endpoints[0]).await.expect("head") + 1;

    let rec = Arc::new(Recorder {
        t0: Instant::now(),
        ops: Mutex::new(Vec::new()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let stop_watch = Arc::new(AtomicBool::new(false));
    let mut watches = Vec::new();
    for e in &endpoints {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let last = Arc::new(std::sync::atomic::AtomicI64::new(start - 1));
        let t = tokio::spawn(watcher(
            e.clone(),
            start,
            seen.clone(),
            last.clone(),
            stop_watch.clone(),
        ));
        watches.push((seen, last, t));
    }
    let workers: Vec<_> = (0..WORKERS)
        .map(|i| {
            tokio::spawn(worker(
                i,
                seed,
                endpoints.clone(),
                rec.clone(),
                stop.clone(),
            ))
        })
        .collect();

    let mut log = Vec::new();
    let until = Instant::now() + duration;
    run_nemesis(&mut h, nemesis, &mut rng, until, &mut log).await;
    h.heal().await;
    // After the last fault the cluster must serve writes again (bounded), under the same load.
    let quiet_from = rec.now();
    support::wait::poll(
        "an answered write after healing",
        Duration::from_secs(30),
        || async {
            rec.ops
                .lock()
                .unwrap()
                .iter()
                .any(|o| o.call >= quiet_from && matches!(o.output, Output::Write { .. }))
                .then_some(())
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        tokio::time::timeout(OP_TIMEOUT * 3, w)
            .await
            .expect("workers stop")
            .expect("worker");
    }
    let ops = rec.ops.lock().unwrap().clone();

    // Every node converges on the same head.
    let target = support::wait::poll("the Primary's head", Duration::from_secs(30), || async {
        let p = h.primary(Duration::from_secs(5)).await?;
        head(&endpoints[p]).await
    })
    .await;
    // A node may still stop itself after the heal: a Primary whose lock renewals failed under
    // the faults finds out a moment later and exits 75 to stay fenced. The supervisor starts it
    // again meanwhile, as systemd or the StatefulSet would (found by the soak: `bucket-faults`
    // left a fenced node down, and the wait below timed out).
    let converged = Instant::now() + Duration::from_secs(60);
    for (i, e) in endpoints.iter().enumerate() {
        loop {
            h.supervise(i, &mut log).await;
            if head(e).await.is_some_and(|r| r >= target) {
                break;
            }
            assert!(
                Instant::now() < converged,
                "{} seed {seed}: node-{} not at the head {target} within 60 s",
                nemesis.name(),
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The watches catch up, then stop.
    for (_, last, _) in &watches {
        support::wait::poll(
            "every watch at the head",
            Duration::from_secs(30),
            || async { (last.load(Ordering::Relaxed) >= target || target < start).then_some(()) },
        )
        .await;
    }
    stop_watch.store(true, Ordering::Relaxed);
    for (_, _, t) in watches.iter_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }

    // The history, identical on every node.
    let events = if target >= start {
        history(&endpoints[0], start, target).await
    } else {
        Vec::new()
    };
    for e in &endpoints[1..] {
        let other = if target >= start {
            history(e, start, target).await
        } else {
            Vec::new()
        };
        if other != events {
            let i = other.iter().zip(&events).position(|(a, b)| a != b);
            let logs = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("faults-{}-{seed}.logs", nemesis.name()));
            let _ = std::fs::create_dir_all(&logs);
            for (n, node) in h.nodes.iter().enumerate() {
                node.keep_logs(&logs, &format!("node-{}", n + 1));
            }
            panic!(
                "{} seed {seed}: the nodes' histories differ ({e}: {} events, node 1: {}; first difference at {:?}: {:?} vs {:?}); node logs in {}",
                nemesis.name(),
                other.len(),
                events.len(),
                i,
                i.map(|i| &other[i]),
                i.map(|i| &events[i]),
                logs.display()
            );
        }
    }

    let mut report = lincheck::check_revisions(&ops, &BTreeMap::new(), start, &events);
    let (wgl_ops, wgl_bad) = lincheck::check_wgl(&ops, 20_000_000);
    for (key, verdict) in &wgl_bad {
        if *verdict == Wgl::NotLinearizable {
            report
                .violations
                .push(format!("wgl: {key} not linearizable"));
        } else {
            eprintln!("wgl: {key} undecided within the search budget");
        }
    }
    let mut watch_events = 0;
    for (i, (seen, _, _)) in watches.iter().enumerate() {
        let seen = seen.lock().unwrap();
        if seen.iter().any(|s| matches!(s, Seen::Progress(i64::MIN))) {
            report
                .violations
                .push(format!("watch on node-{}: canceled", i + 1));
        }
        let seen: Vec<Seen> = seen
            .iter()
            .filter(|s| !matches!(s, Seen::Progress(i64::MIN)))
            .cloned()
            .collect();
        watch_events += lincheck::check_watch(
            &format!("watch on node-{}", i + 1),
            start,
            &seen,
            &events,
            &mut report,
        );
    }

    // Membership survived (clock skew included): every node lists all three.
    for e in &endpoints {
        let mut c = Client::connect([e.clone()], None).await.expect("connect");
        let members = c.member_list().await.expect("member list");
        assert_eq!(
            members.members().len(),
            3,
            "{}: members on {e}",
            nemesis.name()
        );
    }

    // Compaction, cluster-wide: a watch from below the compacted revision is refused (canceled
    // with the compact revision, no event), one from the compacted revision replays the rest.
    if let Some(mid) = events.get(events.len() / 2).map(|e| e.rev) {
        let p = h.primary(Duration::from_secs(10)).await.expect("a primary");
        let mut c = Client::connect([endpoints[p].clone()], None)
            .await
            .expect("connect");
        c.compact(mid, None).await.expect("compact");
        for e in &endpoints {
            let (n, compacted) = support::wait::poll(
                "compaction on every node",
                Duration::from_secs(15),
                || async {
                    let r = watch_once(e, start).await?;
                    (r.1 == mid).then_some(r)
                },
            )
            .await;
            if n != 0 {
                report
                    .violations
                    .push(format!("{e}: {n} events before the compaction refusal"));
            }
            assert_eq!(compacted, mid);
            let replay = history(e, mid, target).await;
            // As etcd: the event at the compacted revision itself has lost its prev_kv (the
            // version before it is gone); later events keep theirs (the newest version at or
            // below the compacted revision is kept).
            let want: Vec<Event> = events
                .iter()
                .filter(|x| x.rev >= mid)
                .cloned()
                .map(|mut x| {
                    if x.rev == mid {
                        x.prev = None;
                    }
                    x
                })
                .collect();
            if replay != want {
                let i = replay.iter().zip(&want).position(|(a, b)| a != b);
                report.violations.push(format!(
                    "{e}: replay from the compacted revision {mid} differs ({} vs {} events; first difference: {:?} vs {:?})",
                    replay.len(),
                    want.len(),
                    i.map(|i| &replay[i]),
                    i.map(|i| &want[i])
                ));
            }
        }
    }

    let count = |f: fn(&Output) -> bool| ops.iter().filter(|o| f(&o.output)).count();
    let out = Outcome {
        ops: report.ops_checked,
        acked: count(|o| {
            matches!(
                o,
                Output::Write {
                    succeeded: true,
                    ..
                }
            )
        }),
        failed: count(|o| matches!(o, Output::Fail)),
        unknown: count(|o| matches!(o, Output::Unknown)),
        events: events.len(),
        watch_events,
        wgl_ops,
        faults: log.len(),
    };
    println!(
        "faults: {} seed {seed}: {} faults, {} ops checked ({} writes applied, {} failed cleanly, {} unknown), {} revisions, {} watch events, wgl {} ops",
        nemesis.name(),
        out.faults,
        out.ops,
        out.acked,
        out.failed,
        out.unknown,
        out.events,
        out.watch_events,
        out.wgl_ops
    );
    println!("  injected: {}", log.join("; "));
    // A violation may not come back on replay (timing): keep the whole recorded history and
    // the store's events, with the fault log, for reading afterwards.
    let kept = if report.violations.is_empty() {
        String::new()
    } else {
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("faults-{}-{seed}.txt", nemesis.name()));
        let mut text = format!(
            "violations:\n{}\n\nfaults: {log:?}\n\nops (call and ret in ns since the start):\n",
            report.violations.join("\n")
        );
        for o in &ops {
            text.push_str(&format!("{o:?}\n"));
        }
        text.push_str("\nevents:\n");
        for e in &events {
            text.push_str(&format!("{e:?}\n"));
        }
        let logs = path.with_extension("logs");
        let _ = std::fs::create_dir_all(&logs);
        for (i, n) in h.nodes.iter().enumerate() {
            n.keep_logs(&logs, &format!("node-{}", i + 1));
        }
        match std::fs::write(&path, text) {
            Ok(()) => format!(
                "\nhistory kept in {}, node logs in {}",
                path.display(),
                logs.display()
            ),
            Err(e) => format!("\nhistory not kept ({}: {e})", path.display()),
        }
    };
    assert!(
        report.violations.is_empty(),
        "{} seed {seed} (replay: NETSY_TEST_SEED={seed}): {} violations:\n{}\nfaults: {:?}{kept}",
        nemesis.name(),
        report.violations.len(),
        report.violations.join("\n"),
        log
    );
    assert!(out.faults > 0, "no fault was injected");
    assert!(out.acked > 0, "no write succeeded");
    out
}

fn seed_from_env(default: u64) -> u64 {
    std::env::var("NETSY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// `NETSY_FAULT_QUORUM=-1` runs the cluster with the quorum write path
/// (replication.quorum -1); default: 0, the synchronous path.
fn quorum_mode() -> i64 {
    std::env::var("NETSY_FAULT_QUORUM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One fault suite at a time: two clusters of three nodes on two cores would turn the lock's
/// timing into the thing under test.
static SUITE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every nemesis once, nemesis `i` with seed `first_seed + i` (or NETSY_TEST_SEED), 14 s of
/// faults each. `NETSY_NEMESIS=a,b` runs only those.
async fn fault_suite(first_seed: u64, quorum: i64) {
    let _one = SUITE.lock().await;
    let only = std::env::var("NETSY_NEMESIS").ok();
    let mut totals = (0, 0, 0, 0);
    for (i, nemesis) in ALL.iter().enumerate() {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|n| n == nemesis.name()))
        {
            continue;
        }
        let seed = seed_from_env(first_seed + i as u64);
        let o = run(*nemesis, seed, Duration::from_secs(14), quorum).await;
        totals.0 += 1;
        totals.1 += o.ops;
        totals.2 += o.faults;
        totals.3 += o.watch_events;
    }
    println!(
        "faults total (quorum {quorum}): {} runs, {} faults injected, {} operations checked, {} watch events checked",
        totals.0, totals.2, totals.1, totals.3
    );
}

/// CI: the synchronous write path (or the quorum one with NETSY_FAULT_QUORUM=-1).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_suite_fixed_seeds() {
    fault_suite(1000, quorum_mode()).await;
}

/// The quorum write path (`replication.quorum -1`), every
/// nemesis with its own seeds. In CI again since its one failure (`pause-primary` seed 2003: a
/// Primary paused past its lease woke up and uploaded a chunk its successor had orphaned, and a
/// node loading the bucket in that moment kept it) was fixed (docs/design/0010).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_suite_quorum_writes() {
    fault_suite(2000, -1).await;
}

/// Hours of faults: cycles every nemesis with fresh seeds until NETSY_SOAK_SECS (default 3600)
/// have passed. `tests/faults/soak.sh HOURS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "soak: run by tests/faults/soak.sh"]
async fn soak() {
    let secs: u64 = std::env::var("NETSY_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3600);
    let mut seed = seed_from_env(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs()),
    );
    let end = Instant::now() + Duration::from_secs(secs);
    let mut runs = 0;
    while Instant::now() < end {
        for nemesis in ALL {
            run(nemesis, seed, Duration::from_secs(60), quorum_mode()).await;
            runs += 1;
            seed += 1;
            if Instant::now() >= end {
                break;
            }
        }
    }
    println!("soak: {runs} runs, all linearizable");
}

/// The checkers find what they must: a lost acknowledgement, a stale read, a reordered
/// real-time pair, a phantom event, a watch gap and a progress notification ahead of the data.
#[test]
fn the_checkers_reject_broken_histories() {
    let k = |v: &str, rev: i64, create: i64, version: i64| Kv {
        value: v.into(),
        mod_rev: rev,
        create_rev: create,
        version,
    };
    let key = "/registry/faults/k00".to_string();
    let create = |v: &str, call: u64, ret: u64, rev: i64| Op {
        client: 0,
        node: 0,
        input: Input::Create {
            key: key.clone(),
            value: v.into(),
        },
        call,
        ret,
        output: Output::Write {
            succeeded: true,
            rev,
            current: None,
        },
    };
    let update = |ev: &str, er: i64, v: &str, call: u64, ret: u64, rev: i64| Op {
        client: 1,
        node: 1,
        input: Input::Update {
            key: key.clone(),
            expect_rev: er,
            expect_value: ev.into(),
            value: v.into(),
        },
        call,
        ret,
        output: Output::Write {
            succeeded: true,
            rev,
            current: None,
        },
    };
    let get = |kv: Option<Kv>, call: u64, ret: u64, rev: i64| Op {
        client: 2,
        node: 2,
        input: Input::Get { key: key.clone() },
        call,
        ret,
        output: Output::Get { rev, kv },
    };
    let events = vec![
        Event {
            rev: 2,
            key: key.clone(),
            kv: Some(k("a", 2, 2, 1)),
            prev: None,
        },
        Event {
            rev: 3,
            key: key.clone(),
            kv: Some(k("b", 3, 2, 2)),
            prev: Some(k("a", 2, 2, 1)),
        },
    ];
    let good = vec![
        create("a", 0, 10, 2),
        update("a", 2, "b", 20, 30, 3),
        get(Some(k("b", 3, 2, 2)), 40, 50, 3),
    ];
    let r = lincheck::check_revisions(&good, &BTreeMap::new(), 2, &events);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!(lincheck::check_wgl(&good, 1000).1, vec![]);

    // A stale read after the update completed.
    let mut stale = good.clone();
    stale[2] = get(Some(k("a", 2, 2, 1)), 40, 50, 2);
    let r = lincheck::check_revisions(&stale, &BTreeMap::new(), 2, &events);
    assert!(!r.violations.is_empty());
    assert_eq!(lincheck::check_wgl(&stale, 1000).1.len(), 1);

    // An acknowledged write missing from the history.
    let mut lost = good.clone();
    lost.push(create("z", 60, 70, 4));
    let r = lincheck::check_revisions(&lost, &BTreeMap::new(), 2, &events);
    assert!(
        r.violations.iter().any(|v| v.starts_with("LOST")),
        "{:?}",
        r.violations
    );

    // A write that was acknowledged before the create began but ordered after it.
    let reordered = vec![create("a", 40, 50, 2), update("a", 2, "b", 0, 10, 3)];
    let r = lincheck::check_revisions(&reordered, &BTreeMap::new(), 2, &events);
    assert!(!r.violations.is_empty());
    assert_eq!(lincheck::check_wgl(&reordered, 1000).1.len(), 1);

    // Two deletes of the same version with unknown outcomes, the later-called one recorded
    // first (its error came back sooner): the event belongs to the earlier one, which a read
    // that completed before the later one began already reflects. Not a violation.
    let delete_unknown = |client: usize, call: u64| Op {
        client,
        node: 0,
        input: Input::Delete {
            key: key.clone(),
            expect_rev: 3,
            expect_value: "b".into(),
        },
        call,
        ret: u64::MAX,
        output: Output::Unknown,
    };
    let mut deleted = events.clone();
    deleted.push(Event {
        rev: 4,
        key: key.clone(),
        kv: None,
        prev: Some(k("b", 3, 2, 2)),
    });
    let mut two_deletes = good.clone();
    two_deletes.push(get(None, 70, 80, 4));
    two_deletes.push(delete_unknown(3, 90));
    two_deletes.push(delete_unknown(4, 60));
    let r = lincheck::check_revisions(&two_deletes, &BTreeMap::new(), 2, &deleted);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!(lincheck::check_wgl(&two_deletes, 1000).1, vec![]);
    // With only the later one, the read saw its effect before it began.
    let mut late_delete = good.clone();
    late_delete.push(get(None, 70, 80, 4));
    late_delete.push(delete_unknown(3, 90));
    let r = lincheck::check_revisions(&late_delete, &BTreeMap::new(), 2, &deleted);
    assert!(
        r.violations.iter().any(|v| v.starts_with("real time")),
        "{:?}",
        r.violations
    );

    // An event nobody wrote.
    let r = lincheck::check_revisions(&good[..1], &BTreeMap::new(), 2, &events);
    assert!(
        r.violations
            .iter()
            .any(|v| v.contains("comes from no operation"))
    );

    // Watches: a gap, and a progress notification ahead of an undelivered event.
    let mut report = Report::default();
    lincheck::check_watch(
        "w",
        2,
        &[Seen::Event(events[1].clone())],
        &events,
        &mut report,
    );
    assert_eq!(report.violations.len(), 1);
    let mut report = Report::default();
    lincheck::check_watch(
        "w",
        2,
        &[Seen::Event(events[0].clone()), Seen::Progress(3)],
        &events,
        &mut report,
    );
    assert_eq!(report.violations.len(), 1);
    let mut report = Report::default();
    lincheck::check_watch(
        "w",
        2,
        &[
            Seen::Event(events[0].clone()),
            Seen::Progress(2),
            Seen::Event(events[1].clone()),
        ],
        &events,
        &mut report,
    );
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

/// Regression (found by `pause-primary`, seed 1003): a Primary stopped past its lease and woken
/// up again answered a linearizable read from its local copy before it noticed that another node
/// had taken over — a stale read. Now a Primary serves linearizable reads (and read indexes for
/// Replicas) only while its lease certainly holds. The read is sent while the old Primary is
/// still stopped, so that it is the first thing the woken process handles; it must answer with
/// the newer value or fail, never with the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_woken_after_its_lease_serves_no_stale_read() {
    let mut h = Harness::start("faults-stale-read", seed_from_env(7), false, 0).await;
    let opts = || {
        ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(10))
    };
    for round in 0..3 {
        let p = h.primary(Duration::from_secs(20)).await.expect("a primary");
        let key = format!("{PREFIX}stale-{round}");
        let mut cp = Client::connect([h.nodes[p].endpoint()], Some(opts()))
            .await
            .expect("connect");
        cp.put(key.as_str(), "old", None).await.expect("put old");
        // A connection to the Primary, open before it stops.
        let mut reader = Client::connect([h.nodes[p].endpoint()], Some(opts()))
            .await
            .expect("connect");
        reader.get(key.as_str(), None).await.expect("warm up");

        h.nodes[p].signal("STOP");
        h.paused[p] = true;
        let q = h
            .primary(Duration::from_secs(20))
            .await
            .expect("a new primary");
        assert_ne!(q, p);
        let mut cq = Client::connect([h.nodes[q].endpoint()], Some(opts()))
            .await
            .expect("connect");
        let new_rev = support::wait::poll(
            "a write on the new primary",
            Duration::from_secs(20),
            || {
                let mut cq = cq.clone();
                let key = key.clone();
                async move { Some(cq.put(key, "new", None).await.ok()?.header()?.revision()) }
            },
        )
        .await;
        cq.get(key.as_str(), None)
            .await
            .expect("read on the new primary");

        let k = key.clone();
        let read = tokio::spawn(async move { reader.get(k, None).await });
        // Give the client a moment to put the request on the wire (the process is stopped;
        // the kernel buffers it). Not a synchronisation: the assertion holds either way.
        tokio::time::sleep(Duration::from_millis(200)).await;
        h.nodes[p].signal("CONT");
        h.paused[p] = false;
        let answer = tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .expect("the read ends")
            .expect("task");
        match answer {
            Ok(r) => {
                let kv = r.kvs().first().expect("the key exists");
                assert_eq!(
                    (kv.value_str().unwrap(), kv.mod_revision()),
                    ("new", new_rev),
                    "round {round}: the woken old Primary answered a stale read"
                );
            }
            Err(e) => println!("round {round}: the woken old Primary refused the read: {e}"),
        }
        // Woken past its lease, it finds the writer lock taken and stops itself (exit 75).
        // Wait for that before restarting it: in its last moments it still calls itself the
        // Primary, and the next round would send its first write there (connection reset).
        let deadline = Instant::now() + Duration::from_secs(30);
        while h.nodes[p].is_running() {
            assert!(
                Instant::now() < deadline,
                "round {round}: the woken old Primary did not stop within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut log = Vec::new();
        h.supervise(p, &mut log).await;
    }
}
