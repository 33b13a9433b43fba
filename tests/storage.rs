//! The local store's cost follows the live data, not the history: the work of a Get and of a
//! 500-key page (SQLite VM steps, not time) does not grow after thousands of compacted
//! revisions of the same keys; compaction frees rows while every read and watch at or above
//! the compaction revision keeps its answer; Defragment shrinks the file; an old copy is
//! migrated; a copy replaced from a transfer stays consistent.

use std::collections::BTreeMap;

use etcd_client::proto::{
    PbDeleteRequest, PbPutRequest, PbRangeRequest, PbTxnOpRequest, PbTxnRequest, PbTxnRequestOp,
};
use netsy::store::{NoopCommitHook, Record, Store, StoreOptions};
use netsy::watch::{RingLimits, WatchHub};

fn open(dir: &std::path::Path) -> Store {
    Store::open(
        StoreOptions {
            data_dir: dir.to_path_buf(),
            node_id: "test".into(),
            readers: 2,
            fatal: Default::default(),
        },
        WatchHub::new(RingLimits::default()),
        Box::new(NoopCommitHook),
    )
    .expect("open store")
}

fn put_op(key: &[u8], value: &[u8]) -> PbTxnRequestOp {
    PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        })),
    }
}

async fn put(store: &Store, key: &[u8], value: &[u8]) -> i64 {
    let resp = store
        .txn(PbTxnRequest {
            success: vec![put_op(key, value)],
            ..Default::default()
        })
        .await
        .expect("put");
    resp.header.expect("header").revision
}

async fn delete(store: &Store, key: &[u8]) -> i64 {
    let resp = store
        .txn(PbTxnRequest {
            success: vec![PbTxnRequestOp {
                request: Some(PbTxnOpRequest::RequestDeleteRange(PbDeleteRequest {
                    key: key.to_vec(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        })
        .await
        .expect("delete");
    resp.header.expect("header").revision
}

fn key(i: usize) -> Vec<u8> {
    format!("/registry/pods/default/pod-{i:05}").into_bytes()
}

fn prefix_range(limit: i64, revision: i64) -> PbRangeRequest {
    PbRangeRequest {
        key: b"/registry/pods/".to_vec(),
        range_end: b"/registry/pods0".to_vec(),
        limit,
        revision,
        ..Default::default()
    }
}

/// Work of a page of 500 keys with its count at an older revision (Kubernetes reads the pages
/// after the first at the first page's revision): one write moves the head past it.
async fn historical_page_work(store: &Store) -> u64 {
    let at = store.current_revision();
    put(store, b"/other/key", b"x").await;
    let (page, steps) = store
        .range_counted(prefix_range(500, at))
        .await
        .expect("page");
    assert_eq!(page.kvs.len(), 500);
    assert_eq!(page.count, 1000);
    steps
}

/// (work of a Get of the hot key, work of a page of 500 keys with its count)
async fn read_work(store: &Store) -> (u64, u64) {
    let (get, get_steps) = store
        .range_counted(PbRangeRequest {
            key: key(0),
            ..Default::default()
        })
        .await
        .expect("get");
    assert_eq!(get.kvs.len(), 1);
    let (page, page_steps) = store
        .range_counted(prefix_range(500, 0))
        .await
        .expect("page");
    assert_eq!(page.kvs.len(), 500);
    assert_eq!(page.count, 1000);
    assert!(page.more);
    (get_steps, page_steps)
}

#[tokio::test]
async fn read_work_does_not_grow_with_compacted_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..1000 {
        put(&store, &key(i), &[b'v'; 100]).await;
    }
    let (get0, page0) = read_work(&store).await;
    let hist0 = historical_page_work(&store).await;

    // 10,000 revisions of the same keys: the hot key 5,000 times, the first 500 keys 10 times.
    for n in 0..5000 {
        put(&store, &key(0), format!("hot-{n}").as_bytes()).await;
    }
    for round in 0..10 {
        for i in 0..500 {
            put(&store, &key(i), format!("r{round}").as_bytes()).await;
        }
    }
    // Before compaction the history is still there, and reads at the head do not see it.
    let (get1, page1) = read_work(&store).await;
    let rev = store.current_revision();
    store.compact(rev, true).await.expect("compact");
    let (get2, page2) = read_work(&store).await;
    let hist2 = historical_page_work(&store).await;
    eprintln!(
        "VM steps: get {get0} -> {get1} (history) -> {get2} (compacted); page {page0} -> {page1} -> {page2}; page at an older revision {hist0} -> {hist2}"
    );
    for (what, fresh, after) in [
        ("get", get0, get1),
        ("get", get0, get2),
        ("page", page0, page1),
        ("page", page0, page2),
        ("page at an older revision", hist0, hist2),
    ] {
        assert!(
            after as f64 <= fresh as f64 * 1.1 + 10.0,
            "{what} work grew with history: {fresh} -> {after} VM steps"
        );
    }
    let (present, expected) = store.integrity(rev).await.unwrap();
    assert_eq!(present, expected);
    store.close().await;
}

/// (frames in the WAL, frames copied back into the database file), from the WAL index
/// (`db.sqlite3-shm`: `mxFrame` of the first index header, `nBackfill` of the checkpoint
/// information after the two headers; native byte order).
fn wal_frames(dir: &std::path::Path) -> (u32, u32) {
    let shm = std::fs::read(dir.join("db.sqlite3-shm")).expect("WAL index");
    let word = |at: usize| u32::from_ne_bytes(shm[at..at + 4].try_into().unwrap());
    (word(16), word(96))
}

/// A checkpoint pass copies the WAL only as far as it was when the pass began, and no further
/// than the oldest open read transaction: a burst of writes (a compaction frees hundreds of
/// thousands of rows at once) can end with most of its frames still outside the database file.
/// Once the writer is quiet they must be copied back, so that reads skip the WAL: with 60,000
/// freed rows' frames left in it, every page a read touched was first looked up in the WAL's
/// index, and a 500-key page cost twice the CPU. Here a reader pins the WAL while 3,000 writes
/// ask for checkpoints that cannot complete; then it ends and nothing more is written.
#[tokio::test]
async fn a_quiet_writer_leaves_no_wal_frame_outside_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..100 {
        put(&store, &key(i), b"first").await;
    }
    let reader = rusqlite::Connection::open_with_flags(
        dir.path().join("db.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader
        .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
        .unwrap();
    for i in 0..3000 {
        put(&store, &key(i), b"second").await;
    }
    let (frames, copied) = wal_frames(dir.path());
    assert!(
        copied < frames,
        "the open read transaction kept frames out of the database file ({copied} of {frames})"
    );
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (frames, copied) = wal_frames(dir.path());
        if copied >= frames {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "10 s after the last write, {copied} of the WAL's {frames} frames are in the database file"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    store.close().await;
}

/// A model of etcd's MVCC: the state after each revision.
#[derive(Default)]
struct Model {
    states: BTreeMap<i64, BTreeMap<Vec<u8>, (Vec<u8>, i64, i64, i64)>>,
}

#[tokio::test]
async fn compaction_frees_rows_and_keeps_every_answer_at_or_above_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut model = Model::default();
    let mut state: BTreeMap<Vec<u8>, (Vec<u8>, i64, i64, i64)> = BTreeMap::new();
    model.states.insert(1, state.clone());
    // A deterministic mix of creates, updates and deletes over 40 keys.
    let mut x: u64 = 7;
    for step in 0..3000u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let k = key((x >> 33) as usize % 40);
        let rev;
        if (x >> 20).is_multiple_of(5) {
            if !state.contains_key(&k) {
                continue;
            }
            rev = delete(&store, &k).await;
            state.remove(&k);
        } else {
            let v = format!("v{step}").into_bytes();
            rev = put(&store, &k, &v).await;
            let entry = match state.get(&k) {
                Some((_, create, _, version)) => (v, *create, rev, version + 1),
                None => (v, rev, rev, 1),
            };
            state.insert(k, entry);
        }
        model.states.insert(rev, state.clone());
    }
    let head = store.current_revision();
    let size_before = store.db_size().await.unwrap().in_use;
    let compact_at = head - 300;
    store.compact(compact_at, true).await.expect("compact");
    // Reads at every revision from the compaction revision on answer as the model says.
    for rev in compact_at..=head {
        let expect = model
            .states
            .range(..=rev)
            .next_back()
            .map(|(_, s)| s.clone())
            .unwrap();
        let resp = store.range(prefix_range(0, rev)).await.expect("range");
        let got: Vec<_> = resp
            .kvs
            .iter()
            .map(|kv| {
                (
                    kv.key.clone(),
                    (
                        kv.value.clone(),
                        kv.create_revision,
                        kv.mod_revision,
                        kv.version,
                    ),
                )
            })
            .collect();
        let want: Vec<_> = expect.into_iter().collect();
        assert_eq!(got, want, "state at revision {rev}");
        assert_eq!(resp.count as usize, got.len());
    }
    // Below it: etcd's compacted error.
    assert!(matches!(
        store.range(prefix_range(0, compact_at - 1)).await,
        Err(netsy::store::Error::Compacted)
    ));
    // Events from the compaction revision on are all there, with prev_kv where etcd has it.
    let (batches, covered) = store
        .events(
            netsy::store::KeyRange::new(b"/registry/pods/", b"/registry/pods0"),
            compact_at,
            head,
            100_000,
        )
        .await
        .expect("events");
    assert_eq!(covered, head);
    assert_eq!(batches.first().map(|b| b.revision), Some(compact_at));
    assert_eq!(batches.len() as i64, head - compact_at + 1);
    for b in &batches[1..] {
        for ev in &b.events {
            let kv = ev.kv.as_ref().unwrap();
            let before = model.states.range(..b.revision).next_back().unwrap().1;
            let prev = before.get(&kv.key);
            assert_eq!(
                ev.prev_kv.as_ref().map(|p| p.value.clone()),
                prev.map(|p| p.0.clone()),
                "prev_kv of {:?} at {}",
                String::from_utf8_lossy(&kv.key),
                b.revision
            );
        }
    }
    // The file shrinks: freed rows, then Defragment.
    store.defragment().await.expect("defragment");
    let size_after = store.db_size().await.unwrap();
    eprintln!(
        "in use before {size_before} B, after compaction + defragment {} B",
        size_after.total
    );
    assert!(
        size_after.total < size_before / 2,
        "{size_before} -> {size_after:?}"
    );
    // A restart keeps all of it.
    store.close().await;
    let store = open(dir.path());
    assert_eq!(store.current_revision(), head);
    assert_eq!(store.compact_revision(), compact_at);
    let resp = store.range(prefix_range(0, 0)).await.unwrap();
    assert_eq!(resp.kvs.len(), model.states[&head].len());
    store.close().await;
}

#[tokio::test]
async fn a_replacement_is_invisible_until_it_commits_and_an_aborted_one_changes_nothing() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = open(src_dir.path());
    for i in 0..50 {
        put(&src, &key(i), b"a").await;
    }
    for i in 0..25 {
        delete(&src, &key(i)).await;
    }
    let compact_at = src.current_revision();
    put(&src, &key(99), b"after").await;
    src.compact(compact_at, true).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let exporter = {
        let src = src.clone();
        tokio::spawn(async move { src.stream_all(7, tx).await })
    };
    let mut all: Vec<Record> = Vec::new();
    while let Some((_, _, batch)) = rx.recv().await {
        all.extend(batch);
    }
    let (through, compaction) = exporter.await.unwrap().unwrap();
    assert_eq!(through, src.current_revision());
    assert_eq!(compaction, compact_at);

    // The destination has keys the source deleted (and whose tombstones it freed).
    let dst_dir = tempfile::tempdir().unwrap();
    let dst = open(dst_dir.path());
    for i in 0..10 {
        put(&dst, &key(i), b"stale").await;
    }
    dst.replace_begin().await.unwrap();
    dst.import(all.clone()).await.unwrap();
    let during = dst.range(prefix_range(0, 0)).await.unwrap();
    assert_eq!(
        during.kvs.len(),
        10,
        "readers see the old copy during a replacement"
    );
    dst.replace_abort().await.unwrap();
    assert_eq!(dst.range(prefix_range(0, 0)).await.unwrap().kvs.len(), 10);

    dst.replace_begin().await.unwrap();
    dst.import(all).await.unwrap();
    assert_eq!(dst.replace_commit(compaction).await.unwrap(), through);
    let want = src.range(prefix_range(0, 0)).await.unwrap();
    let got = dst.range(prefix_range(0, 0)).await.unwrap();
    assert_eq!(got.kvs, want.kvs);
    assert_eq!(got.kvs.len(), 26);
    assert_eq!(dst.current_revision(), through);
    assert_eq!(dst.compact_revision(), compact_at);
    assert_eq!(
        dst.hash_kv(0).await.unwrap().0,
        src.hash_kv(0).await.unwrap().0
    );
    src.close().await;
    dst.close().await;
}

/// A commit hook whose upload outcome is unknown after `ok` successful groups.
struct UnknownAfter {
    ok: usize,
}

impl netsy::store::CommitHook for UnknownAfter {
    fn persist(&mut self, _records: &[Record]) -> Result<(), netsy::store::HookError> {
        if self.ok == 0 {
            return Err(netsy::store::HookError::Indeterminate(
                "upload timed out and the read-back failed".into(),
            ));
        }
        self.ok -= 1;
        Ok(())
    }
}

#[tokio::test]
async fn a_write_of_unknown_outcome_stops_the_writer_and_records_a_fatal_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fatal = netsy::fatal::FatalChannel::new();
    let store = Store::open(
        StoreOptions {
            data_dir: dir.path().to_path_buf(),
            node_id: "test".into(),
            readers: 2,
            fatal: fatal.clone(),
        },
        WatchHub::new(RingLimits::default()),
        Box::new(UnknownAfter { ok: 1 }),
    )
    .expect("open store");
    let first = put(&store, b"/a", b"1").await;
    assert_eq!(fatal.get(), None, "a durable write is not fatal");
    // The next write's outcome is unknown: its caller is told so, not "failed".
    let err = store
        .txn(PbTxnRequest {
            success: vec![put_op(b"/b", b"2")],
            ..Default::default()
        })
        .await
        .expect_err("outcome unknown");
    assert!(
        matches!(err, netsy::store::Error::Indeterminate(_)),
        "{err:?}"
    );
    assert_eq!(err.action(), netsy::store::Action::Stop);
    let recorded = tokio::time::timeout(std::time::Duration::from_secs(5), fatal.wait())
        .await
        .expect("fatal error recorded");
    assert!(
        matches!(recorded, netsy::fatal::Fatal::Indeterminate { .. }),
        "{recorded:?}"
    );
    // The writer answers nothing more, and nothing after the durable write became visible.
    let later = store
        .txn(PbTxnRequest {
            success: vec![put_op(b"/c", b"3")],
            ..Default::default()
        })
        .await
        .expect_err("writer stopped");
    assert!(matches!(later, netsy::store::Error::Shutdown), "{later:?}");
    assert_eq!(store.current_revision(), first);
}
