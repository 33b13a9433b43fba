//! Crash consistency: a concurrent write load (puts and Kubernetes-shaped txns from 8 tasks) is
//! running when the server is killed with SIGKILL; after a restart on the same data directory
//! every acknowledged write must be there with the same revision and value, revisions must
//! continue above every acknowledged one, and a lease granted before the kill must still exist.
//!
//! Seeded from `NETSY_TEST_SEED` (printed). `NETSY_TEST_TARGET=etcd34` runs it against etcd 3.4.
//! Run: `cargo test --release --test restart`
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::grpc::*;
use support::server::*;
use support::{fs, ports::free_port, wait::try_poll_every};
use tokio::sync::Mutex;

const TASKS: usize = 8;
/// Kill once at least this many writes were acknowledged (the load keeps going meanwhile).
const KILL_AFTER_ACKS: usize = 300;

fn target() -> Kind {
    match std::env::var("NETSY_TEST_TARGET").as_deref() {
        Ok("etcd35") => Kind::Etcd35,
        Ok("etcd34") => Kind::Etcd34,
        _ => Kind::Netsy,
    }
}

/// An acknowledged write: key, value and the revision the server reported for it.
#[derive(Clone, Debug)]
struct Ack {
    key: Vec<u8>,
    value: Vec<u8>,
    rev: i64,
}

/// A write that was sent but whose answer never came (may or may not have been applied).
#[derive(Clone, Debug)]
struct InFlight {
    key: Vec<u8>,
    value: Vec<u8>,
}

#[derive(Default)]
struct Log {
    acks: Vec<Ack>,
    in_flight: Vec<InFlight>,
}

async fn load_task(
    t: usize,
    seed: u64,
    client: Client,
    log: Arc<Mutex<Log>>,
    acked: Arc<AtomicUsize>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (t as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    // per object key: the mod revision we last saw (for K8s-style updates)
    let mut objects: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    let mut n = 0u64;
    loop {
        n += 1;
        let value: Vec<u8> = {
            let len = rng.random_range(1..200usize);
            (0..len).map(|_| rng.random::<u8>()).collect()
        };
        let choice = rng.random_range(0..10u32);
        let (key, fut): (Vec<u8>, _) = if choice < 4 {
            // plain put on a fresh or existing key
            let key = format!("load/{t}/k{}", rng.random_range(0..50u32)).into_bytes();
            let c = client.clone();
            let (k, v) = (key.clone(), value.clone());
            (
                key,
                Box::pin(async move { c.put(put_req(&k, &v)).await.map(|r| (true, r.header)) })
                    as _,
            )
        } else if choice < 7 || objects.is_empty() {
            // Kubernetes create: mod_revision == 0, failure Range
            let key = format!("load/{t}/obj{n}").into_bytes();
            let c = client.clone();
            let req = PbTxnRequest {
                compare: vec![compare(&key, cmp::EQUAL, PbTargetUnion::ModRevision(0))],
                success: vec![op_put(put_req(&key, &value))],
                failure: vec![op_range(range_req(&key))],
            };
            (
                key,
                Box::pin(async move { c.txn(req).await.map(|r| (r.succeeded, r.header)) }) as _,
            )
        } else {
            // Kubernetes update: mod_revision == last seen, failure Range
            let idx = rng.random_range(0..objects.len());
            let (key, rev) = objects
                .iter()
                .nth(idx)
                .map(|(k, r)| (k.clone(), *r))
                .unwrap_or_default();
            let c = client.clone();
            let req = PbTxnRequest {
                compare: vec![compare(&key, cmp::EQUAL, PbTargetUnion::ModRevision(rev))],
                success: vec![op_put(put_req(&key, &value))],
                failure: vec![op_range(range_req(&key))],
            };
            (
                key,
                Box::pin(async move { c.txn(req).await.map(|r| (r.succeeded, r.header)) }) as _,
            )
        };
        let fut: std::pin::Pin<
            Box<dyn std::future::Future<Output = Rpc<(bool, Option<PbResponseHeader>)>> + Send>,
        > = fut;
        log.lock().await.in_flight.push(InFlight {
            key: key.clone(),
            value: value.clone(),
        });
        match fut.await {
            Ok((true, Some(h))) => {
                let mut l = log.lock().await;
                l.in_flight.retain(|f| !(f.key == key && f.value == value));
                l.acks.push(Ack {
                    key: key.clone(),
                    value,
                    rev: h.revision,
                });
                if key.windows(3).any(|w| w == b"obj") {
                    objects.insert(key, h.revision);
                }
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok((false, _)) => {
                // a compare failed: nothing was written (only possible for a lost race we caused)
                log.lock()
                    .await
                    .in_flight
                    .retain(|f| !(f.key == key && f.value == value));
            }
            Ok((true, None)) => panic!("a successful write without a response header"),
            Err(_) => return, // the server is gone: this write stays "in flight"
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_keeps_acknowledged_writes() {
    crash_and_restart("restart", None).await;
}

/// A power cut: the local SQLite file does not fsync its commits (the bucket holds every
/// acknowledged write first), so a power cut may lose the WAL's tail. Simulated by cutting the
/// WAL after the kill -9 (and dropping the shared-memory index, which does not survive a
/// reboot): at its start, at a third and at two thirds of its length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_losing_the_local_wal_tail_restarts_into_the_bucket_state() {
    if target() != Kind::Netsy {
        return;
    }
    for keep in [0.0, 0.33, 0.66] {
        crash_and_restart("power-cut", Some(keep)).await;
    }
}

async fn crash_and_restart(name: &str, wal_keep: Option<f64>) {
    let seed = test_seed(name);
    let kind = target();
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let ports = (free_port(), free_port());
    let mut server = Server::start_in(kind, &data, Some(ports))
        .await
        .expect("start");
    let client = server.client().await.expect("connect");

    // a lease and a key attached to it, before the load
    let lease = client
        .lease_grant(PbLeaseGrantRequest { ttl: 3600, id: 0 })
        .await
        .expect("grant")
        .id;
    client
        .put(PbPutRequest {
            lease,
            ..put_req("leased/key", "v")
        })
        .await
        .expect("put with lease");

    let log = Arc::new(Mutex::new(Log::default()));
    let acked = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        // one connection per task, so the load is really concurrent
        let c = server.client().await.expect("connect");
        tasks.push(tokio::spawn(load_task(
            t,
            seed,
            c,
            log.clone(),
            acked.clone(),
        )));
    }
    try_poll_every(
        "acknowledged writes",
        Duration::from_secs(60),
        Duration::from_millis(5),
        || {
            let n = acked.load(Ordering::Relaxed);
            async move { (n >= KILL_AFTER_ACKS).then_some(()) }
        },
    )
    .await
    .expect("the load acknowledges writes");
    server.kill().expect("kill -9"); // Child::kill = SIGKILL, mid-load
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("load tasks stop once the server is gone")
            .expect("task");
    }
    let log = Arc::try_unwrap(log).ok().expect("tasks done").into_inner();
    let max_acked = log.acks.iter().map(|a| a.rev).max().unwrap_or(0);
    eprintln!(
        "restart: {} acknowledged writes (max revision {max_acked}), {} in flight at the kill",
        log.acks.len(),
        log.in_flight.len()
    );

    drop(server);
    if let Some(keep) = wal_keep {
        let wal = data.join("db.sqlite3-wal");
        let len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        let cut = (len as f64 * keep) as u64;
        if len > 0 {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&wal)
                .and_then(|f| f.set_len(cut))
                .expect("cut the WAL");
        }
        let _ = std::fs::remove_file(data.join("db.sqlite3-shm"));
        eprintln!("power cut: WAL of {len} bytes cut to {cut}");
    }
    let server = Server::start_in(kind, &data, Some(ports))
        .await
        .expect("restart on the same data dir");
    let client = server.client().await.expect("connect after restart");

    // 0. after a power cut: exactly the bucket's state, nothing phantom — the same as a node
    //    that loads the bucket into an empty data dir
    if wal_keep.is_some() {
        let fresh = tmp.path().join("fresh");
        fs::copy_dir(
            &netsy::config::default_bucket_dir(&data),
            &netsy::config::default_bucket_dir(&fresh),
        );
        let rebuilt = Server::start_in(kind, &fresh, None)
            .await
            .expect("a node rebuilt from the bucket");
        let rc = rebuilt.client().await.expect("connect");
        let all = PbRangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        };
        let mine = client.range(all.clone()).await.expect("range");
        let theirs = rc.range(all).await.expect("range");
        assert_eq!(
            mine.header.as_ref().map(|h| h.revision),
            theirs.header.as_ref().map(|h| h.revision),
            "seed {seed}: revision after the power cut differs from the bucket's"
        );
        assert_eq!(
            mine.kvs, theirs.kvs,
            "seed {seed}: state after the power cut differs from the bucket's"
        );
        drop(rebuilt);
    }

    // 1. every acknowledged write is there, at its revision, with its value
    let mut missing = Vec::new();
    for a in &log.acks {
        let r = client
            .range(PbRangeRequest {
                revision: a.rev,
                ..range_req(&a.key)
            })
            .await
            .expect("historical range");
        match r.kvs.first() {
            Some(kv) if kv.mod_revision == a.rev && kv.value == a.value => {}
            other => missing.push(format!(
                "{} @ {}: got {:?}",
                String::from_utf8_lossy(&a.key),
                a.rev,
                other.map(|kv| (kv.mod_revision, kv.value.len()))
            )),
        }
    }
    assert!(
        missing.is_empty(),
        "seed {seed}: {} acknowledged writes lost or changed:\n{}",
        missing.len(),
        missing.join("\n")
    );

    // 2. each key's current value is its last acknowledged write or a write that was in flight
    let mut last: BTreeMap<Vec<u8>, &Ack> = BTreeMap::new();
    for a in &log.acks {
        if last.get(&a.key).is_none_or(|b| b.rev < a.rev) {
            last.insert(a.key.clone(), a);
        }
    }
    for (key, a) in &last {
        let r = client.range(range_req(key)).await.expect("range");
        let kv = r
            .kvs
            .first()
            .unwrap_or_else(|| panic!("seed {seed}: {} vanished", String::from_utf8_lossy(key)));
        let ok = (kv.mod_revision == a.rev && kv.value == a.value)
            || (kv.mod_revision > a.rev
                && log
                    .in_flight
                    .iter()
                    .any(|f| &f.key == key && f.value == kv.value));
        assert!(
            ok,
            "seed {seed}: {} is at revision {} (last ack {})",
            String::from_utf8_lossy(key),
            kv.mod_revision,
            a.rev
        );
    }

    // 3. revisions continue above every acknowledged one
    let p = client
        .put(put_req("after/restart", "1"))
        .await
        .expect("write after restart");
    let rev = p.header.map(|h| h.revision).unwrap_or(0);
    assert!(
        rev > max_acked,
        "seed {seed}: next revision {rev} <= max acknowledged {max_acked}"
    );
    let p2 = client
        .put(put_req("after/restart", "2"))
        .await
        .expect("write after restart");
    assert_eq!(
        p2.header.map(|h| h.revision),
        Some(rev + 1),
        "seed {seed}: revisions increase by one"
    );

    // 4. the lease granted before the kill still exists, with its key
    let ttl = client
        .lease_time_to_live(PbLeaseTimeToLiveRequest {
            id: lease,
            keys: true,
        })
        .await
        .expect("timetolive");
    assert!(ttl.ttl > 0, "seed {seed}: lease {lease} lost: {ttl:?}");
    assert_eq!(ttl.granted_ttl, 3600, "{ttl:?}");
    assert_eq!(ttl.keys, vec![b"leased/key".to_vec()], "{ttl:?}");
    let leases = client.lease_leases().await.expect("leases");
    assert!(
        leases.leases.iter().any(|l| l.id == lease),
        "seed {seed}: {leases:?}"
    );
    let r = client.range(range_req("leased/key")).await.expect("range");
    assert_eq!(r.kvs.first().map(|kv| kv.lease), Some(lease), "{r:?}");
    let ka = client
        .keep_alive()
        .await
        .expect("keep-alive stream")
        .keep_alive(lease)
        .await
        .expect("keep-alive");
    assert_eq!(ka.ttl, 3600, "{ka:?}");
}
