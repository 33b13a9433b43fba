//! Object storage as the system of record, end to end with the real `netsy` binary:
//!
//! * crash recovery on both backends (seaweedfs S3 and a local directory): a concurrent
//!   Kubernetes-shaped load with leases and a compaction, kill -9 mid-load, data dir deleted,
//!   restart: every acknowledged write is back at its revision, leases and their keys, the
//!   compaction revision, continuing revisions, a watch replaying the history in order; then
//!   snapshots (covered chunks deleted, rebuild from snapshot + chunks) and a kept (stale) data
//!   dir that fetches only the newer chunks;
//! * the bucket layout (docs/design/0004-storage.md#bucket-layout) and `netsy datafile inspect` on the chunks;
//! * upload faults through a TCP proxy (refused connections, latency, lost responses) with the
//!   server's deliberate exit 75 on an unresolvable upload treated as a crash: nothing
//!   acknowledged is lost, nothing that failed cleanly appears, the history has no gap and no
//!   duplicate. Seeded by `NETSY_TEST_SEED` (printed).
//!
//! * chunk PUTs that land late: a held upload is retried with the same bytes, never rolled
//!   back; the chunk of a killed writer that lands after the next writer epoch started is an
//!   orphan that a rebuild skips and the next write replaces.
//!
//! Needs `weed` on PATH and python3 (tests/install.sh).

#[allow(dead_code)]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, LeaseTimeToLiveOptions};
use netsy::objstore::ObjectStorage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::node::{Bucket, Node, NodeSpec};
use support::proxy::{FaultProxy, Mode};
use support::weed::{Weed, start_weed};
use support::workload::{self as wl, Ledger, WorkerCfg, Write};

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const READY: Duration = Duration::from_secs(90);

/// A view of the bucket for listing from the test.
struct BucketView {
    storage: ObjectStorage,
}

impl BucketView {
    fn local(dir: &Path) -> BucketView {
        std::fs::create_dir_all(dir).expect("bucket dir");
        let cfg = netsy::objstore::StorageConfig {
            provider: netsy::objstore::Provider::Local,
            local_dir: Some(dir.to_path_buf()),
            ..Default::default()
        };
        BucketView {
            storage: ObjectStorage::from_config(&cfg, &Default::default(), None)
                .expect("local storage"),
        }
    }

    async fn snapshots(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self
            .storage
            .list_snapshots()
            .await
            .expect("snapshots")
            .iter()
            .map(|s| s.revision)
            .collect();
        v.sort();
        v
    }

    async fn chunks(&self) -> Vec<i64> {
        self.storage
            .list_chunks_after(0)
            .await
            .expect("chunks")
            .iter()
            .map(|c| c.revision)
            .collect()
    }
}

async fn current_revision(c: &mut Client) -> i64 {
    c.get("/", Some(GetOptions::new().with_count_only()))
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision()
}

fn spawn_workers(
    node: &Node,
    n: usize,
    seed: u64,
    prefix: &str,
    ledger: &Arc<Ledger>,
    stop: &Arc<AtomicBool>,
    faults: bool,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|id| {
            let (ledger, stop) = (ledger.clone(), stop.clone());
            let endpoint = node.endpoint();
            let cfg = WorkerCfg {
                id,
                seed,
                prefix: prefix.to_string(),
                value_size: 100,
                op_timeout: Duration::from_secs(60),
            };
            tokio::spawn(async move {
                let opts =
                    etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(3));
                let client = Client::connect([endpoint], Some(opts))
                    .await
                    .expect("worker connect");
                wl::run_worker(client, cfg, ledger, stop, faults).await
            })
        })
        .collect()
}

async fn join_all(workers: Vec<tokio::task::JoinHandle<()>>) {
    let joined = tokio::time::timeout(Duration::from_secs(90), futures::future::join_all(workers))
        .await
        .expect("workers did not stop within 90 s");
    for j in joined {
        j.expect("worker panicked");
    }
}

async fn wait_acked(ledger: &Ledger, at_least: usize, limit: Duration) {
    support::wait::poll("acknowledged writes", limit, || async {
        (ledger.acked.lock().unwrap().len() >= at_least).then_some(())
    })
    .await
}

// ------------------------------------------------------------------------------------------
// 1. Crash recovery, both backends
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_recovery_on_seaweedfs_s3() {
    let mut weed = start_weed("durability");
    weed.wait_ready(&weed.storage()).await;
    let bucket = Bucket::S3 {
        bucket: "durability".into(),
        endpoint: weed.endpoint(),
    };
    let view = BucketView {
        storage: weed.storage(),
    };
    crash_recovery(bucket, view, Some(&weed)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_recovery_on_local_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bucket");
    let view = BucketView::local(&path);
    crash_recovery(Bucket::Local(path), view, None).await;
    drop(dir);
}

async fn crash_recovery(bucket: Bucket, view: BucketView, _weed: Option<&Weed>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut spec = NodeSpec::new(tmp.path().join("data"), bucket);
    spec.snapshot_threshold_records = 200;
    let mut node = Node::start(spec, &tmp.path().join("work"));
    node.wait_ready(READY).await;
    let mut c = node.client().await;
    let ledger = Arc::new(Ledger::default());

    // Leases: two kept with keys attached, one revoked (its key deleted in that revision).
    let l1 = c.lease_grant(3600, None).await.expect("grant").id();
    let l2 = c.lease_grant(3600, None).await.expect("grant").id();
    let l3 = c.lease_grant(3600, None).await.expect("grant").id();
    let mut lease_keys: BTreeMap<i64, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for (key, lease) in [
        ("/leases/a", l1),
        ("/leases/b", l1),
        ("/leases/c", l2),
        ("/leases/d", l3),
    ] {
        let value = format!("lease-{key}");
        let rev = wl::put_ok(&mut c, key, &value, Some(lease)).await;
        ledger.ack(Write {
            rev,
            key: key.into(),
            value: Some(value.into_bytes()),
        });
        lease_keys
            .entry(lease)
            .or_default()
            .insert(key.as_bytes().to_vec());
    }
    let revoked = c
        .lease_revoke(l3)
        .await
        .expect("revoke")
        .header()
        .expect("header")
        .revision();
    ledger.ack(Write {
        rev: revoked,
        key: b"/leases/d".to_vec(),
        value: None,
    });
    lease_keys.remove(&l3);

    // Concurrent load; one compaction in the middle; kill -9 while it runs.
    let stop = Arc::new(AtomicBool::new(false));
    let workers = spawn_workers(&node, 8, 7, "crash", &ledger, &stop, false);
    wait_acked(&ledger, 300, Duration::from_secs(120)).await;
    let compact_at = current_revision(&mut c).await;
    c.compact(compact_at, None).await.expect("compact");
    let acked_at_compaction = ledger.acked.lock().unwrap().len();
    wait_acked(&ledger, acked_at_compaction + 400, Duration::from_secs(120)).await;
    stop.store(true, Ordering::Release);
    node.kill9();
    join_all(workers).await;
    assert_eq!(
        ledger.unexpected.load(Ordering::Relaxed),
        0,
        "errors before the kill"
    );
    assert!(
        ledger.violations.lock().unwrap().is_empty(),
        "{:?}",
        ledger.violations.lock().unwrap()
    );
    let acked = ledger.acked();
    let max_acked = ledger.max_acked_rev();
    eprintln!(
        "load: {}; compaction at {compact_at}; max acknowledged revision {max_acked}",
        ledger.summary()
    );
    assert!(
        !view.snapshots().await.is_empty(),
        "a snapshot was written (threshold 200)"
    );

    // Rebuild from the bucket alone.
    node.wipe_data_dir();
    node.restart();
    node.wait_ready(READY).await;
    let stats = node.loading_stats();
    eprintln!("rebuild: {stats:?}");
    assert!(
        stats.snapshot.is_some(),
        "rebuild starts from a snapshot: {stats:?}"
    );
    assert!(
        stats.chunks > 0 || stats.snapshot == Some(stats.revision),
        "{stats:?}"
    );
    assert_eq!(stats.compaction, compact_at, "compaction revision restored");
    assert_eq!(stats.leases, 2, "two leases restored");
    let mut c = node.client().await;
    // The chunks alone may end below `max_acked`: the node acknowledged the last writes from
    // its write-ahead log in the bucket directory (0011) and adopts them before it serves.
    let served = current_revision(&mut c).await;
    assert!(
        served >= max_acked,
        "revision {served} ({stats:?}) vs acknowledged {max_acked}"
    );

    // The compaction revision is kept.
    let err = c
        .get(
            "/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_revision(compact_at - 1),
            ),
        )
        .await
        .expect_err("read below the compaction revision");
    match &err {
        etcd_client::Error::GRpcStatus(s) => {
            assert_eq!(s.code(), tonic::Code::OutOfRange, "{s:?}");
            assert_eq!(s.message(), COMPACTED);
        }
        other => panic!("unexpected error {other}"),
    }

    // State at the compaction revision = every acknowledged write up to it.
    let mut want = BTreeMap::new();
    let upto: Vec<Write> = acked
        .iter()
        .filter(|w| w.rev <= compact_at)
        .cloned()
        .collect();
    wl::replay(&mut want, &upto);
    let at_compaction = wl::state_at(&mut c, compact_at).await;
    wl::assert_same_state("state at the compaction revision", &at_compaction, &want);

    // A watch from the compaction revision replays every later event, in order, no gaps.
    let head = current_revision(&mut c).await;
    assert_eq!(head, served, "{stats:?}");
    let events = wl::history(&mut c, compact_at, head, Duration::from_secs(60)).await;
    wl::check_history_shape(&events, compact_at, head);
    let checked = wl::check_acked_in_history(&events, &acked, compact_at);
    wl::check_no_phantoms(&events, &[]);
    let mut replayed = at_compaction.clone();
    let later: Vec<Write> = events
        .iter()
        .filter(|e| e.rev > compact_at)
        .cloned()
        .collect();
    wl::replay(&mut replayed, &later);
    wl::assert_same_state(
        "state now vs the replayed history",
        &wl::state_at(&mut c, 0).await,
        &replayed,
    );
    eprintln!(
        "verified {} acknowledged writes ({checked} via the watch), head {head}",
        acked.len()
    );

    // Leases and their keys.
    let leases: BTreeSet<i64> = c
        .leases()
        .await
        .expect("leases")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert_eq!(leases, BTreeSet::from([l1, l2]));
    for (id, keys) in &lease_keys {
        let ttl = c
            .lease_time_to_live(*id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .expect("ttl");
        assert!(ttl.ttl() > 0, "lease {id} alive: {ttl:?}");
        let got: BTreeSet<Vec<u8>> = ttl.keys().iter().cloned().collect();
        assert_eq!(&got, keys, "keys of lease {id}");
    }
    let gone = c.lease_time_to_live(l3, None).await.expect("ttl");
    assert_eq!(gone.ttl(), -1, "revoked lease stays revoked");

    // Revisions continue.
    let next = wl::put_ok(&mut c, "/after/restart", "x", None).await;
    assert_eq!(next, head + 1);
    assert!(next > max_acked);

    // Snapshots: write until a new snapshot shows up close behind the head (so that the 30
    // writes below cannot start another), then wait until the chunks it covers are deleted.
    // A snapshot also waits until as many bytes were written as the last one held: 4 KiB
    // values reach the state above (a few thousand values of ~100 bytes) well within the cap.
    let first_snap = view.snapshots().await.last().copied().unwrap_or(0);
    let padding = "x".repeat(4096);
    let mut n = 0;
    let snap = loop {
        for _ in 0..50 {
            wl::put_ok(
                &mut c,
                &format!("/snap/k{}", n % 50),
                &format!("v{n}-{padding}"),
                None,
            )
            .await;
            n += 1;
        }
        assert!(n <= 2000, "no snapshot after {n} writes (threshold 200)");
        // Snapshots follow the chunks, which trail a single node's write-ahead log by up to a
        // second (0011): wait until they reach the head.
        let at = current_revision(&mut c).await;
        support::wait::poll(
            "the chunks reach the head",
            Duration::from_secs(30),
            || async {
                let chunk = view.chunks().await.last().copied().unwrap_or(0);
                let snap = view.snapshots().await.last().copied().unwrap_or(0);
                (chunk.max(snap) >= at).then_some(())
            },
        )
        .await;
        let newest = view.snapshots().await.last().copied().unwrap_or(0);
        if newest <= first_snap || current_revision(&mut c).await - newest >= 100 {
            continue;
        }
        support::wait::poll(
            "chunks covered by the snapshot deleted",
            Duration::from_secs(30),
            || async {
                view.chunks()
                    .await
                    .iter()
                    .all(|c| *c > newest)
                    .then_some(())
            },
        )
        .await;
        break newest;
    };
    eprintln!(
        "snapshot at {snap} after {n} more writes; chunks left {}",
        view.chunks().await.len()
    );

    // A kept data dir that is current fetches nothing; a stale one fetches only newer chunks.
    let stale_at = current_revision(&mut c).await;
    drop(c);
    node.kill9();
    let stale_copy = tmp.path().join("stale-data");
    support::fs::copy_dir(&node.spec.data_dir, &stale_copy);
    node.restart();
    node.wait_ready(READY).await;
    let stats = node.loading_stats();
    assert_eq!(
        (stats.snapshot, stats.chunks, stats.records, stats.revision),
        (None, 0, 0, stale_at),
        "kept, current data dir: {stats:?}"
    );
    let mut c = node.client().await;
    let mut newer = Vec::new();
    for i in 0..30 {
        let value = format!("newer-{i}");
        let rev = wl::put_ok(&mut c, &format!("/newer/k{i}"), &value, None).await;
        newer.push(Write {
            rev,
            key: format!("/newer/k{i}").into_bytes(),
            value: Some(value.into_bytes()),
        });
    }
    let newest = newer.last().unwrap().rev;
    drop(c);
    // Stopped, so the newer writes are all in chunks (killed, the last ones would be only in
    // the bucket's write-ahead log, 0011, and adopted at promotion rather than loaded).
    node.stop(Duration::from_secs(30)).await;
    let newer_chunks = view
        .chunks()
        .await
        .iter()
        .filter(|r| **r > stale_at)
        .count() as u64;
    std::fs::remove_dir_all(&node.spec.data_dir).expect("rm data");
    std::fs::rename(&stale_copy, &node.spec.data_dir).expect("restore stale copy");
    node.restart();
    node.wait_ready(READY).await;
    let stats = node.loading_stats();
    eprintln!("stale data dir: {stats:?}");
    assert_eq!(
        stats.snapshot, None,
        "no snapshot import for a stale kept dir: {stats:?}"
    );
    assert_eq!(
        stats.records,
        (newest - stale_at) as u64,
        "only newer records: {stats:?}"
    );
    assert_eq!(stats.chunks, newer_chunks, "only newer chunks: {stats:?}");
    assert_eq!(stats.revision, newest);
    let mut c = node.client().await;
    let now = wl::state_at(&mut c, 0).await;
    for w in &newer {
        assert_eq!(
            now.get(&w.key),
            Some(&(w.rev, w.value.clone().unwrap())),
            "{w}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// 2. Bucket layout (docs/design/0004-storage.md#bucket-layout) and `netsy datafile inspect`
// ------------------------------------------------------------------------------------------

/// Every file under `dir` (relative, `/`-separated), skipping hidden entries.
fn walk(dir: &Path) -> Vec<String> {
    fn go(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let e = e.expect("entry");
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if e.file_type().expect("type").is_dir() {
                go(base, &e.path(), out);
            } else {
                out.push(
                    e.path()
                        .strip_prefix(base)
                        .unwrap()
                        .to_string_lossy()
                        .replace('\\', "/"),
                );
            }
        }
    }
    let mut out = Vec::new();
    go(dir, dir, &mut out);
    out.sort();
    out
}

#[derive(Debug, PartialEq)]
enum Shape {
    Chunk(i64),
    Snapshot(i64),
    Lease(u64),
    Compaction,
    WriterLock,
    Epoch(u64),
    Node,
    Members,
}

/// The bucket-layout shape of a key relative to the prefix, or `None`.
fn shape(rel: &str) -> Option<Shape> {
    let digits19 = |s: &str| -> Option<i64> {
        let d = s.strip_suffix(".netsy")?;
        (d.len() == 19 && d.bytes().all(|b| b.is_ascii_digit())).then(|| d.parse().ok())?
    };
    let parts: Vec<&str> = rel.split('/').collect();
    match parts.as_slice() {
        ["chunks", part, name] => {
            let rev = digits19(name)?;
            (part.len() == 4 && *part == format!("{:04}", rev % 10_000))
                .then_some(Shape::Chunk(rev))
        }
        ["snapshots", name] => digits19(name).map(Shape::Snapshot),
        ["leases", name] => {
            let hex = name.strip_suffix(".json")?;
            (hex.len() == 16
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
            .then(|| u64::from_str_radix(hex, 16).ok())?
            .map(Shape::Lease)
        }
        ["state", "compaction.json"] => Some(Shape::Compaction),
        ["leader", "elector.json"] => Some(Shape::WriterLock),
        ["leader", "epochs", name] => {
            let d = name.strip_suffix(".json")?;
            (d.len() == 19 && d.bytes().all(|b| b.is_ascii_digit()))
                .then(|| d.parse().ok())?
                .map(Shape::Epoch)
        }
        ["nodes", name] => name.strip_suffix(".json").map(|_| Shape::Node),
        ["members.json"] => Some(Shape::Members),
        _ => None,
    }
}

/// Runs `netsy datafile inspect FILE`: (revision, key) of each record, and the whole report.
fn inspect(file: &Path) -> (Vec<(i64, String)>, String) {
    let out = std::process::Command::new(support::node::netsy_bin())
        .args(["datafile", "inspect"])
        .arg(file)
        .output()
        .expect("run netsy datafile inspect");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "inspect {} failed: {text}\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.ends_with("valid: yes\n"), "{text}");
    let records = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("record ")?;
            let rev = rest
                .split("revision=")
                .nth(1)?
                .split([' ', '.'])
                .next()?
                .parse()
                .ok()?;
            let key = rest.split("key=\"").nth(1)?.split('"').next()?.to_string();
            Some((rev, key))
        })
        .collect();
    (records, text)
}

/// Some writes of every kind: puts, a txn, a delete, leases (one revoked), a compaction.
async fn layout_writes(c: &mut Client, puts: usize) -> (i64, i64) {
    let lease = c.lease_grant(3600, None).await.expect("grant").id();
    let gone = c.lease_grant(3600, None).await.expect("grant").id();
    wl::put_ok(
        c,
        "/registry/pods/default/leased",
        "with-lease",
        Some(lease),
    )
    .await;
    for i in 0..puts {
        wl::put_ok(
            c,
            &format!("/registry/configmaps/default/cm{}", i % 7),
            &format!("v{i}"),
            None,
        )
        .await;
    }
    let txn = etcd_client::Txn::new()
        .when([etcd_client::Compare::mod_revision(
            "/registry/pods/default/new",
            etcd_client::CompareOp::Equal,
            0,
        )])
        .and_then([etcd_client::TxnOp::put(
            "/registry/pods/default/new",
            "created",
            None,
        )]);
    assert!(c.txn(txn).await.expect("txn").succeeded());
    c.delete("/registry/configmaps/default/cm0", None)
        .await
        .expect("delete");
    c.lease_revoke(gone).await.expect("revoke");
    let rev = current_revision(c).await;
    c.compact(rev - 2, None).await.expect("compact");
    (lease, rev)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_layout_matches_the_spec_and_chunks_inspect() {
    let tmp = tempfile::tempdir().expect("tempdir");

    // No config: the bucket is `<data-dir>-bucket`, keys at its root.
    let data = tmp.path().join("node");
    let mut node = Node::start(
        NodeSpec::new(data.clone(), Bucket::Default),
        &tmp.path().join("w1"),
    );
    node.wait_ready(READY).await;
    let mut c = node.client().await;
    let (lease, head) = layout_writes(&mut c, 12).await;
    drop(c);
    // Stopped, not killed: a single node on a local bucket acknowledges from its write-ahead
    // log in the bucket directory and uploads chunks behind it (0011); the handover uploads
    // the rest, so every revision is in a chunk (restart.rs kills it mid-load instead).
    node.stop(Duration::from_secs(30)).await;
    let bucket = tmp.path().join("node-bucket");
    assert!(bucket.is_dir(), "default bucket beside the data dir");
    check_layout(&bucket, "", head, &[lease], false);

    // A config with a key prefix and a small snapshot threshold: snapshots appear too.
    let bucket = tmp.path().join("prefixed");
    let mut spec = NodeSpec::new(tmp.path().join("node2"), Bucket::Local(bucket.clone()));
    spec.key_prefix = "team/cluster-a".into();
    spec.snapshot_threshold_records = 20;
    let mut node = Node::start(spec, &tmp.path().join("w2"));
    node.wait_ready(READY).await;
    let mut c = node.client().await;
    let (lease, head) = layout_writes(&mut c, 60).await;
    // The snapshot worker runs after commits; wait until its cleanup settled.
    support::wait::poll("snapshot and cleanup", Duration::from_secs(30), || async {
        let keys = walk(&bucket.join("team/cluster-a"));
        let snaps: Vec<i64> = keys
            .iter()
            .filter_map(|k| match shape(k) {
                Some(Shape::Snapshot(r)) => Some(r),
                _ => None,
            })
            .collect();
        let chunks: Vec<i64> = keys
            .iter()
            .filter_map(|k| match shape(k) {
                Some(Shape::Chunk(r)) => Some(r),
                _ => None,
            })
            .collect();
        let newest = snaps.iter().max()?;
        chunks.iter().all(|c| c > newest).then_some(())
    })
    .await;
    drop(c);
    node.stop(Duration::from_secs(30)).await;
    let top: Vec<String> = std::fs::read_dir(&bucket)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(top, vec!["team".to_string()], "everything under the prefix");
    check_layout(
        &bucket.join("team/cluster-a"),
        "team/cluster-a/",
        head,
        &[lease],
        true,
    );
}

/// Every file has a bucket-layout shape; chunks and the newest snapshot together hold each revision
/// 1..=head exactly once; `netsy datafile inspect` reads them all.
fn check_layout(root: &Path, prefix: &str, head: i64, leases: &[i64], want_snapshot: bool) {
    let files = walk(root);
    eprintln!("bucket {prefix:?}: {files:#?}");
    let mut chunks = Vec::new();
    let mut snapshots = Vec::new();
    let mut lease_ids = Vec::new();
    let mut compaction = 0;
    let mut locks = 0;
    let mut epochs = Vec::new();
    let mut registrations = 0;
    let mut members = 0;
    for f in &files {
        match shape(f) {
            Some(Shape::Chunk(r)) => chunks.push(r),
            Some(Shape::Snapshot(r)) => snapshots.push(r),
            Some(Shape::Lease(id)) => lease_ids.push(id as i64),
            Some(Shape::Compaction) => compaction += 1,
            Some(Shape::WriterLock) => locks += 1,
            Some(Shape::Epoch(e)) => epochs.push(e),
            Some(Shape::Node) => registrations += 1,
            Some(Shape::Members) => members += 1,
            None => panic!("object {prefix}{f} has no bucket-layout shape"),
        }
    }
    assert_eq!(compaction, 1, "state/compaction.json");
    assert_eq!(locks, 1, "leader/elector.json (the writer lock)");
    assert!(!epochs.is_empty(), "leader/epochs/{{epoch}}.json");
    assert_eq!(registrations, 1, "nodes/default.json");
    assert_eq!(members, 1, "members.json");
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("leader/elector.json")).unwrap()).unwrap();
    assert_eq!(lock["leaderID"].as_str(), Some("default"), "{lock}");
    assert!(lock["lastUpdated"].as_str().is_some(), "{lock}");
    let compaction: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("state/compaction.json")).unwrap())
            .unwrap();
    assert_eq!(
        compaction["revision"].as_i64(),
        Some(head - 2),
        "{compaction}"
    );
    assert_eq!(
        lease_ids, leases,
        "one lease object per live lease (the revoked one is gone)"
    );
    let lease: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join(format!("leases/{:016x}.json", leases[0] as u64))).unwrap(),
    )
    .unwrap();
    assert_eq!(lease["ttl"].as_i64(), Some(3600), "{lease}");
    assert_eq!(
        !snapshots.is_empty(),
        want_snapshot,
        "snapshots: {snapshots:?}"
    );

    // Revisions: newest snapshot (if any) then chunks; contiguous, no overlap.
    let mut covered: Vec<i64> = Vec::new();
    if let Some(snap) = snapshots.iter().max() {
        let (records, text) = inspect(&root.join(format!("snapshots/{snap:019}.netsy")));
        assert!(text.contains("kind=KIND_SNAPSHOT"), "{text}");
        assert!(text.contains("compression=COMPRESSION_ZSTD"), "{text}");
        covered.extend(records.iter().map(|(r, _)| *r));
        assert_eq!(covered.last().copied(), Some(*snap));
    }
    chunks.sort();
    for rev in &chunks {
        let (records, text) =
            inspect(&root.join(format!("chunks/{:04}/{rev:019}.netsy", rev % 10_000)));
        assert!(text.contains("kind=KIND_CHUNK"), "{text}");
        assert!(!records.is_empty(), "{text}");
        assert_eq!(
            records.last().unwrap().0,
            *rev,
            "a chunk is named by its last revision:\n{text}"
        );
        covered.extend(records.iter().map(|(r, _)| *r));
    }
    covered.dedup(); // a multi-record revision (lease revoke) prints several records
    assert_eq!(
        covered,
        (1..=head).collect::<Vec<_>>(),
        "every revision exactly once"
    );
    // Record content: the genesis record and a user key with its value.
    if snapshots.is_empty() {
        let (_, text) = inspect(&root.join(format!("chunks/0001/{:019}.netsy", 1)));
        assert!(text.contains("revision=1 key=\"_netsy\""), "{text}");
    }
    let mut all: String = chunks
        .iter()
        .map(|rev| inspect(&root.join(format!("chunks/{:04}/{rev:019}.netsy", rev % 10_000))).1)
        .collect();
    if let Some(snap) = snapshots.iter().max() {
        all.push_str(&inspect(&root.join(format!("snapshots/{snap:019}.netsy"))).1);
    }
    assert!(
        all.contains("key=\"/registry/pods/default/new\" created=true deleted=false"),
        "{all}"
    );
    assert!(
        all.contains("key=\"/registry/configmaps/default/cm0\" created=false deleted=true"),
        "{all}"
    );
}

// ------------------------------------------------------------------------------------------
// 3. Upload faults through a proxy
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_faults_lose_nothing_acknowledged_and_apply_nothing_failed() {
    let seed = support::grpc::test_seed("upload_faults");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut weed = start_weed("faults");
    weed.wait_ready(&weed.storage()).await;
    let proxy = FaultProxy::start(weed.s3_port, seed).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut spec = NodeSpec::new(
        tmp.path().join("data"),
        Bucket::S3 {
            bucket: "faults".into(),
            endpoint: proxy.endpoint(),
        },
    );
    spec.snapshot_threshold_records = 200;
    let mut node = Node::start(spec, &tmp.path().join("work"));
    node.wait_ready(READY).await;

    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let workers = spawn_workers(&node, 6, seed, "faults", &ledger, &stop, true);
    wait_acked(&ledger, 50, Duration::from_secs(60)).await;

    // Faults on and off at random for ~40 s. An exit (75 = upload outcome unknown) is a crash:
    // restart on the kept data dir with faults off, then carry on.
    let started = Instant::now();
    let mut exits = 0;
    let mut schedule = Vec::new();
    while started.elapsed() < Duration::from_secs(40) {
        let mode = match rng.random_range(0..7) {
            0 | 1 => Mode::Pass,
            2 => Mode::Refuse(rng.random_range(0.2..1.0)),
            3 => Mode::Latency(Duration::from_millis(rng.random_range(20..800))),
            4 => Mode::SlowResponses(Duration::from_millis(rng.random_range(20..800))),
            5 => Mode::DropResponse(rng.random_range(0.2..0.7)),
            _ => Mode::DropResponse(1.0),
        };
        let dwell = Duration::from_millis(rng.random_range(500..3000));
        schedule.push(format!("{mode:?} for {dwell:?}"));
        proxy.set(mode);
        let until = Instant::now() + dwell;
        while Instant::now() < until {
            if let Some(code) = node.exited() {
                assert_eq!(
                    code,
                    Some(75),
                    "netsy exited with {code:?} (only 75 is deliberate); log:\n{}",
                    support::node::tail(&node.log_text(), 40)
                );
                let log = node.log_text();
                let reason = log
                    .lines()
                    .find(|l| {
                        l.contains("outcome unknown") || l.contains("stopping to stay fenced")
                    })
                    .unwrap_or_else(|| {
                        panic!(
                            "exit 75 names no reason:\n{}",
                            support::node::tail(&log, 20)
                        )
                    });
                eprintln!("exit 75: {}", &reason[..reason.len().min(300)]);
                exits += 1;
                proxy.set(Mode::Pass);
                node.restart();
                node.wait_ready(READY).await;
                proxy.set(mode);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    proxy.set(Mode::Pass);
    if node.exited().is_some() {
        exits += 1;
        node.restart();
        node.wait_ready(READY).await;
    }
    // Faults off: the server carries on by itself — after one more deliberate exit at most
    // (a lock renewal begun under the last fault can still run out once it is off; found in
    // CI: the node fenced itself just after the loop above and nobody restarted it).
    let before = ledger.acked.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut late_exits = 0;
    while ledger.acked.lock().unwrap().len() < before + 100 {
        if let Some(code) = node.exited() {
            assert_eq!(
                code,
                Some(75),
                "netsy exited with {code:?} after the faults"
            );
            late_exits += 1;
            assert!(late_exits <= 1, "netsy exited again without faults");
            exits += 1;
            node.restart();
            node.wait_ready(READY).await;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after 60s waiting for 100 acknowledged writes after the faults"
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // polling, bounded above
    }
    stop.store(true, Ordering::Release);
    join_all(workers).await;
    let s = proxy.stats();
    eprintln!(
        "faults: {}; {exits} exits (75); proxy: {} connections, {} refused, {} delayed, {} responses dropped\nschedule: {}",
        ledger.summary(),
        s.connections.load(Ordering::Relaxed),
        s.refused.load(Ordering::Relaxed),
        s.delayed.load(Ordering::Relaxed),
        s.dropped_responses.load(Ordering::Relaxed),
        schedule.join(", ")
    );
    assert!(
        ledger.violations.lock().unwrap().is_empty(),
        "{:#?}",
        ledger.violations.lock().unwrap()
    );

    // Rebuild from the bucket alone and read the whole history.
    let mut c = rebuild_from_bucket(&mut node).await;
    let head = current_revision(&mut c).await;
    assert!(head >= ledger.max_acked_rev());
    let events = wl::history(&mut c, 2, head, Duration::from_secs(60)).await;
    wl::check_history_shape(&events, 2, head);
    let acked = ledger.acked();
    wl::check_acked_in_history(&events, &acked, 2);
    wl::check_no_phantoms(&events, &ledger.clean_failed.lock().unwrap());
    let mut replayed = BTreeMap::new();
    wl::replay(&mut replayed, &events);
    wl::assert_same_state(
        "state vs the replayed history",
        &wl::state_at(&mut c, 0).await,
        &replayed,
    );
    let unknown_applied = {
        let values: BTreeSet<&Vec<u8>> = events.iter().filter_map(|e| e.value.as_ref()).collect();
        ledger
            .unknown
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.value.as_ref().is_some_and(|v| values.contains(v)))
            .count()
    };
    eprintln!(
        "history 2..={head}: {} events; {} acknowledged all present; {unknown_applied} writes of unknown outcome were applied",
        events.len(),
        acked.len()
    );
}

// ------------------------------------------------------------------------------------------
// 4. Chunk PUTs that land late: retried, never rolled back; orphans of dead writers fenced
// ------------------------------------------------------------------------------------------

/// One node on seaweedfs through a [`FaultProxy`] (seeded with `seed`), ready, with the bucket
/// also reachable directly. Fields drop in order: the node first, seaweedfs last.
struct BehindProxy {
    node: Node,
    _tmp: tempfile::TempDir,
    proxy: FaultProxy,
    direct: ObjectStorage,
    _weed: Weed,
}

async fn start_behind_proxy(bucket: &str, seed: u64) -> BehindProxy {
    let mut weed = start_weed(bucket);
    let direct = weed.storage();
    weed.wait_ready(&direct).await;
    let proxy = FaultProxy::start(weed.s3_port, seed).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let spec = NodeSpec::new(
        tmp.path().join("data"),
        Bucket::S3 {
            bucket: bucket.into(),
            endpoint: proxy.endpoint(),
        },
    );
    let mut node = Node::start(spec, &tmp.path().join("work"));
    node.wait_ready(READY).await;
    BehindProxy {
        node,
        _tmp: tmp,
        proxy,
        direct,
        _weed: weed,
    }
}

/// kill -9, then a restart with an empty data dir: the node rebuilds from the bucket alone.
async fn rebuild_from_bucket(node: &mut Node) -> Client {
    node.kill9();
    node.wipe_data_dir();
    node.restart();
    node.wait_ready(READY).await;
    node.client().await
}

/// Waits until `key` exists in the bucket.
async fn wait_for_object(direct: &ObjectStorage, key: &object_store::path::Path, limit: Duration) {
    support::wait::poll("a held chunk PUT to land", limit, || async {
        netsy::objstore::cas::get(direct.store().as_ref(), key)
            .await
            .ok()
            .flatten()
            .map(|_| ())
    })
    .await;
}

/// A put whose answer the client stops waiting for after `limit` (outcome unknown).
async fn put_unknown(c: &mut Client, key: &str, value: &str, limit: Duration) {
    match tokio::time::timeout(limit, c.put(key, value, None)).await {
        Err(_) => {}
        Ok(r) => panic!("expected the put of {key} to stall, got {r:?}"),
    }
}

/// Every attempt of a chunk PUT is held longer than the upload attempt deadline (10 s). The
/// writer must not roll the group back (the held PUT may land) — it retries the same chunk,
/// so the write keeps its revision whether the first or the second attempt lands, writes
/// queued behind it follow in order, and nothing is ever reused. Before the fix the group was
/// rolled back, the client told "nothing applied", and the late PUT resurrected the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_chunk_put_is_retried_and_never_rolled_back() {
    let BehindProxy {
        mut node,
        proxy,
        direct,
        _tmp,
        _weed,
    } = start_behind_proxy("late", 1).await;
    let mut c = node.client().await;
    let head = wl::put_ok(&mut c, "/before", "ok", None).await;

    proxy.set(Mode::HoldChunkPuts(Duration::from_secs(12)));
    put_unknown(&mut c, "/slow", "held", Duration::from_secs(2)).await;
    let mut c2 = c.clone();
    let queued = tokio::spawn(async move { c2.put("/queued", "behind", None).await });
    proxy.set(Mode::Pass);

    // The retry (or the held PUT itself) makes /slow durable; then /queued follows.
    let queued = tokio::time::timeout(Duration::from_secs(60), queued)
        .await
        .expect("the queued write is answered once the chunk is confirmed")
        .unwrap()
        .expect("queued put");
    let slow = c.get("/slow", None).await.expect("get");
    assert_eq!(slow.kvs().len(), 1, "/slow is applied (its chunk landed)");
    assert_eq!(
        slow.kvs()[0].mod_revision(),
        head + 1,
        "/slow kept its revision"
    );
    assert_eq!(queued.header().unwrap().revision(), head + 2);
    let next = wl::put_ok(&mut c, "/next", "x", None).await;
    assert_eq!(next, head + 3, "no revision reused or skipped");
    let before = wl::state_at(&mut c, 0).await;
    assert!(node.log_text().contains("retrying the same chunk"));

    // Let the held attempt land too (it finds the key taken: 412), then rebuild from scratch.
    wait_for_object(
        &direct,
        &direct.layout().chunk((head + 1) as u64),
        Duration::from_secs(30),
    )
    .await;
    drop(c);
    let mut c = rebuild_from_bucket(&mut node).await;
    let after = wl::state_at(&mut c, 0).await;
    wl::assert_same_state("after a rebuild from the bucket", &after, &before);
}

/// A writer is killed while the PUT of a two-revision chunk N..N+1 (key N+1) is held. The
/// restarted node takes the writer lock with a new epoch that starts at N, writes N itself, and
/// then the dead writer's chunk lands: an orphan. A rebuild from the bucket must skip it
/// (before the fix every start failed: the stale chunk contradicted the acknowledged write at
/// N), and the next write at N+1 replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_chunk_of_a_dead_writer_is_an_orphan() {
    let BehindProxy {
        mut node,
        proxy,
        direct,
        _tmp,
        _weed,
    } = start_behind_proxy("late2", 2).await;
    let mut c = node.client().await;
    wl::put_ok(&mut c, "/before", "ok", None).await;

    // P0's upload is slow (2 s); P1 and P2 queue behind it and form the next group N..N+1,
    // whose PUT is then held for 15 s.
    proxy.set(Mode::Latency(Duration::from_secs(2)));
    let delayed = proxy.stats().delayed.load(Ordering::Relaxed);
    let mut c0 = c.clone();
    let p0 = tokio::spawn(async move { c0.put("/p0", "acked", None).await });
    support::wait::poll("P0's upload in flight", Duration::from_secs(10), || async {
        (proxy.stats().delayed.load(Ordering::Relaxed) > delayed).then_some(())
    })
    .await;
    let (mut c1, mut c2) = (c.clone(), c.clone());
    let _p1 = tokio::spawn(async move { c1.put("/p1", "never-acknowledged", None).await });
    let _p2 = tokio::spawn(async move { c2.put("/p2", "never-acknowledged", None).await });
    let held = proxy.stats().held_puts.load(Ordering::Relaxed);
    proxy.set(Mode::HoldChunkPuts(Duration::from_secs(15)));
    let n = p0.await.unwrap().expect("P0").header().unwrap().revision() + 1;
    support::wait::poll(
        "the N..N+1 chunk PUT held",
        Duration::from_secs(10),
        || async { (proxy.stats().held_puts.load(Ordering::Relaxed) > held).then_some(()) },
    )
    .await;
    drop(c);
    node.kill9();
    proxy.set(Mode::Pass);

    // The restarted node (same data dir) is the writer of a new epoch starting at N.
    node.restart();
    node.wait_ready(READY).await;
    let mut c = node.client().await;
    let w1 = wl::put_ok(&mut c, "/w1", "acknowledged", None).await;
    assert_eq!(w1, n, "the new epoch starts at N");
    let orphan_key = direct.layout().chunk((n + 1) as u64);
    wait_for_object(&direct, &orphan_key, Duration::from_secs(40)).await;

    // A rebuild from the bucket skips the orphan.
    drop(c);
    let mut c = rebuild_from_bucket(&mut node).await;
    assert!(
        node.log_text().contains("skipping an orphan chunk"),
        "{}",
        support::node::tail(&node.log_text(), 30)
    );
    let now = wl::state_at(&mut c, 0).await;
    assert_eq!(now.get(b"/w1".as_slice()).map(|v| v.0), Some(n));
    assert!(!now.contains_key(b"/p1".as_slice()) && !now.contains_key(b"/p2".as_slice()));

    // The next write needs key N+1: it replaces the orphan and is acknowledged.
    let w2 = wl::put_ok(&mut c, "/w2", "acknowledged", None).await;
    assert_eq!(w2, n + 1);
    assert!(node.log_text().contains("replacing an orphan chunk"));
    let before = wl::state_at(&mut c, 0).await;
    drop(c);
    let mut c = rebuild_from_bucket(&mut node).await;
    let after = wl::state_at(&mut c, 0).await;
    wl::assert_same_state("after a second rebuild", &after, &before);
}

/// Uploads overlap (docs/design/0010, "The synchronous path waits for two uploads"): the chunk
/// of group N never lands while that of N+1 does, and the writer is killed with both in flight.
/// Neither was acknowledged (N+1 waits for N). The restarted node (same data dir) must throw
/// away what it committed locally above its last landed revision, load the bucket only up to
/// the hole, start its epoch right above it, and replace N+1's stranded chunk when its own
/// revision N+1 needs the key; a rebuild from the bucket alone then agrees with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_between_two_landings_leaves_a_hole_that_is_never_served() {
    let BehindProxy {
        mut node,
        proxy,
        direct,
        _tmp,
        _weed,
    } = start_behind_proxy("hole", 4).await;
    let mut c = node.client().await;
    let head = wl::put_ok(&mut c, "/before", "ok", None).await;

    // N's chunk is held for good; N+1's is uploaded meanwhile and lands.
    proxy.set(Mode::SwallowChunk);
    let mut c1 = c.clone();
    let p1 = tokio::spawn(async move { c1.put("/n", "never-acknowledged", None).await });
    support::wait::poll("N's chunk PUT held", Duration::from_secs(10), || async {
        (proxy.stats().held_puts.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;
    let mut c2 = c.clone();
    let p2 = tokio::spawn(async move { c2.put("/n1", "never-acknowledged", None).await });
    wait_for_object(
        &direct,
        &direct.layout().chunk((head + 2) as u64),
        Duration::from_secs(20),
    )
    .await;
    let n_chunk = direct.layout().chunk((head + 1) as u64);
    assert!(
        netsy::objstore::cas::get(direct.store().as_ref(), &n_chunk)
            .await
            .expect("read the bucket")
            .is_none(),
        "N's chunk never reached the bucket"
    );
    // N+1 landed but is not answered: N, before it, has not.
    assert!(!p1.is_finished() && !p2.is_finished());
    drop(c);
    node.kill9();
    for p in [p1, p2] {
        let r = tokio::time::timeout(Duration::from_secs(10), p)
            .await
            .expect("a killed server's client gets an answer")
            .unwrap();
        assert!(
            r.is_err(),
            "a write that never landed was acknowledged: {r:?}"
        );
    }
    proxy.set(Mode::Pass);

    // Same data dir: N and N+1 are committed in the local file above the unlanded mark.
    node.restart();
    node.wait_ready(READY).await;
    let log = node.log_text();
    assert!(
        log.contains("discarded revisions committed locally"),
        "{}",
        support::node::tail(&log, 30)
    );
    let mut c = node.client().await;
    let now = wl::state_at(&mut c, 0).await;
    assert!(now.contains_key(b"/before".as_slice()));
    assert!(
        !now.contains_key(b"/n".as_slice()) && !now.contains_key(b"/n1".as_slice()),
        "nothing above the hole is served: {now:?}"
    );
    assert_eq!(current_revision(&mut c).await, head);

    // The new epoch starts at N; its N+1 replaces the stranded chunk.
    let w1 = wl::put_ok(&mut c, "/w1", "acknowledged", None).await;
    assert_eq!(
        w1,
        head + 1,
        "the new epoch starts right above the hole's edge"
    );
    let w2 = wl::put_ok(&mut c, "/w2", "acknowledged", None).await;
    assert_eq!(w2, head + 2);
    assert!(node.log_text().contains("replacing an orphan chunk"));
    let before = wl::state_at(&mut c, 0).await;
    drop(c);
    let mut c = rebuild_from_bucket(&mut node).await;
    let after = wl::state_at(&mut c, 0).await;
    wl::assert_same_state("after a rebuild from the bucket", &after, &before);
    assert!(!after.contains_key(b"/n1".as_slice()));
}

// ------------------------------------------------------------------------------------------
// 5. A local copy that does not fit the bucket is thrown away and rebuilt
// ------------------------------------------------------------------------------------------

/// The rebuild deletes `db.sqlite3` (and -wal, -shm) right after dropping the failed store,
/// but the store's writer thread closes its SQLite connection asynchronously; when that close
/// lands after the new database was created, it checkpoints and unlinks the NEW database's
/// -wal/-shm files and the reopen fails (`disk I/O error 522 … file truncated?`, exit 1).
/// Seen within a few rounds before the fix (the store is now closed before the files go); a regression test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_copy_with_a_hole_is_rebuilt_from_the_bucket() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bucket = tmp.path().join("bucket");
    let mut node = Node::start(
        NodeSpec::new(tmp.path().join("data"), Bucket::Local(bucket)),
        &tmp.path().join("work"),
    );
    node.wait_ready(READY).await;
    for round in 0..20 {
        let mut c = node.client().await;
        let mut want = BTreeMap::new();
        for i in 0..30 {
            let (key, value) = (format!("/hole/k{i}"), format!("r{round}-v{i}"));
            let rev = wl::put_ok(&mut c, &key, &value, None).await;
            want.insert(key.into_bytes(), (rev, value.into_bytes()));
        }
        let head = current_revision(&mut c).await;
        drop(c);
        node.kill9();
        // Punch a hole into the local copy (the bucket is intact). The tool exits without
        // closing the database, as a crash would: the change stays in the WAL.
        let script = format!(
            "import sqlite3, os\nc = sqlite3.connect({:?})\nn = c.execute('DELETE FROM records WHERE revision = ?', ({},)).rowcount\nc.commit()\nos._exit(0 if n == 1 else 3)",
            node.spec.data_dir.join("db.sqlite3").display().to_string(),
            head - 7
        );
        let st = std::process::Command::new("python3")
            .args(["-c", &script])
            .status()
            .expect("python3");
        assert!(st.success(), "tamper: {st}");
        node.restart();
        node.wait_ready(READY).await;
        assert!(
            node.log_text().contains("local_db_rebuild_started"),
            "round {round}: rebuild expected"
        );
        let stats = node.loading_stats();
        let mut c = node.client().await;
        // The bucket's chunks may end below `head`: a single node on a local bucket uploads
        // behind its write-ahead log, whose records it adopts once it writes again (0011).
        assert_eq!(
            current_revision(&mut c).await,
            head,
            "round {round}: {stats:?}"
        );
        let now = wl::state_at(&mut c, 0).await;
        for (k, v) in &want {
            assert_eq!(now.get(k), Some(v), "round {round}");
        }
    }
}

// ------------------------------------------------------------------------------------------
// 6. A slow writer-lock renewal
// ------------------------------------------------------------------------------------------

/// A renewal of `leader/elector.json` whose answer is slow must neither be misread as a
/// takeover (an earlier version stopped a lone node with "taken over by another node") nor
/// stop the node while its lease still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_lock_renewal_does_not_stop_a_single_node() {
    let BehindProxy {
        mut node,
        proxy,
        _tmp,
        _weed,
        ..
    } = start_behind_proxy("lockslow", 3).await;
    // The node is idle: the only requests are lock renewals (and registration heartbeats). The
    // next one is applied at once but answered after 1.5 s: later than the next renewal is due
    // (1 s), within the holder's lease (2.875 s of the 3 s TTL with the default heartbeat).
    proxy.set(Mode::SlowResponses(Duration::from_millis(1500)));
    let delayed = proxy.stats().delayed.load(Ordering::Relaxed);
    support::wait::poll(
        "a renewal to be delayed",
        Duration::from_secs(10),
        || async { (proxy.stats().delayed.load(Ordering::Relaxed) > delayed).then_some(()) },
    )
    .await;
    proxy.set(Mode::Pass);
    // Nothing is wrong with the bucket: the node must keep serving.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Some(code) = node.exited() {
            panic!(
                "the only node stopped (code {code:?}):\n{}",
                support::node::tail(&node.log_text(), 5)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------------------------------------
// Periodic compaction (`compaction_interval`)
// ------------------------------------------------------------------------------------------

/// With `compaction_interval` set, the Primary compacts on its own, keeping one interval of
/// history: after two intervals with no writes, everything before the last write's revision is
/// unreadable with etcd's error, that revision and the latest values stay readable, and the
/// compaction revision survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_interval_compacts_on_the_primary() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut spec = NodeSpec::new(
        tmp.path().join("data"),
        Bucket::Local(tmp.path().join("bucket")),
    );
    spec.compaction_interval = Some("1s".into());
    let mut node = Node::start(spec, &tmp.path().join("work"));
    node.wait_ready(READY).await;
    let mut c = node.client().await;
    let first = wl::put_ok(&mut c, "/periodic/a", "v1", None).await;
    let second = wl::put_ok(&mut c, "/periodic/a", "v2", None).await;
    // Polled, bounded: the tick after the one that sees `second` compacts at it (~2 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c
            .get("/periodic/a", Some(GetOptions::new().with_revision(first)))
            .await
        {
            Err(e) if e.to_string().contains(COMPACTED) => break,
            Ok(_) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "no periodic compaction within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at_second = c
        .get("/periodic/a", Some(GetOptions::new().with_revision(second)))
        .await
        .expect("the compaction revision stays readable");
    assert_eq!(at_second.kvs()[0].value(), b"v2");
    assert!(node.log_text().contains("periodic compaction"));
    drop(c);
    node.restart();
    node.wait_ready(READY).await;
    let mut c = node.client().await;
    let err = c
        .get("/periodic/a", Some(GetOptions::new().with_revision(first)))
        .await
        .expect_err("still compacted after a restart");
    assert!(err.to_string().contains(COMPACTED), "{err}");
    let latest = c.get("/periodic/a", None).await.expect("get");
    assert_eq!(latest.kvs()[0].value(), b"v2");
}
