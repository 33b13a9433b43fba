//! The quorum write path, end to end (docs/design/0010; on by default with
//! `replication.quorum` ≠ 0): three real `netsy` processes on one real S3 bucket
//! (seaweedfs), `replication.quorum` -1, a one-minute chunk buffer.
//!
//! * Writes are acknowledged by a Replica's receipt, not by a chunk: after 30 sequential writes
//!   the bucket holds far fewer chunks than writes.
//! * kill -9 of the Primary with acknowledged writes only in its buffer and on the Replicas:
//!   the next Primary collects them before it serves; every acknowledged write is then read
//!   at its revision, and the bucket holds a chunk through the last one.
//! * The killed node restarts and follows: it serves the same data.
//! * A Replica whose last record is not the history's (rewritten while it was down) gets the
//!   Primary's whole copy when it reconnects.
//! * A fourth node registering while the Primary dies does not shrink the collection: the
//!   writes were acknowledged under three nodes by the one Replica that now cannot answer, and
//!   the next Primary waits for it instead of counting the newcomer's answer in its place.
//!
//! Needs `weed` on PATH (tests/install.sh).

#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use support::node::{Node, NodeSpec};
use support::weed::start_weed;

const READY: Duration = Duration::from_secs(60);

async fn connect(node: &Node) -> Client {
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10));
    Client::connect([node.endpoint()], Some(opts))
        .await
        .expect("connect")
}

/// Index of the running node that reports itself as leader.
async fn primary(nodes: &[Node], skip: Option<usize>) -> usize {
    support::wait::poll("a primary", Duration::from_secs(30), || async {
        for (i, n) in nodes.iter().enumerate() {
            if Some(i) == skip {
                continue;
            }
            let Ok(mut cl) = Client::connect([n.endpoint()], None).await else {
                continue;
            };
            if let Ok(s) = cl.status().await
                && s.leader() != 0
                && s.leader() == s.header().map_or(0, |h| h.member_id())
            {
                return Some(i);
            }
        }
        None
    })
    .await
}

async fn state(c: &mut Client, prefix: &str) -> BTreeMap<String, (i64, String)> {
    c.get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("get")
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                (kv.mod_revision(), kv.value_str().unwrap().to_string()),
            )
        })
        .collect()
}

/// Three nodes on one seaweedfs bucket, `replication.quorum` -1, heartbeat 300 ms, all ready.
async fn cluster(
    bucket: &str,
) -> (
    support::weed::Weed,
    netsy::objstore::ObjectStorage,
    tempfile::TempDir,
    Vec<Node>,
) {
    let mut weed = start_weed(bucket);
    let direct = weed.storage();
    weed.wait_ready(&direct).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let mut spec = NodeSpec::cluster_member(tmp.path(), i, bucket, weed.endpoint(), "300ms");
        spec.quorum = -1;
        let mut node = Node::start(spec, &tmp.path().join(format!("work-{i}")));
        node.wait_ready(READY).await;
        nodes.push(node);
    }
    (weed, direct, tmp, nodes)
}

/// 30 sequential puts `{prefix}00..29` = `v0..29`; each acknowledged key with its revision
/// and value.
async fn put_30(cl: &mut Client, prefix: &str) -> BTreeMap<String, (i64, String)> {
    let mut acked = BTreeMap::new();
    for n in 0..30 {
        let key = format!("{prefix}{n:02}");
        let value = format!("v{n}");
        let rev = cl
            .put(key.clone(), value.clone(), None)
            .await
            .expect("put")
            .header()
            .unwrap()
            .revision();
        acked.insert(key, (rev, value));
    }
    acked
}

/// The Primary counts receipts once it has read the other registrations and they have
/// receipted once: until then writes go to the bucket. Waits for a write that leaves the
/// bucket's chunks as they were (acknowledged by a receipt).
async fn quorum_path_in_use(cl: &Client, direct: &netsy::objstore::ObjectStorage) {
    support::wait::poll("the quorum path in use", Duration::from_secs(20), || {
        let (mut cl, direct) = (cl.clone(), direct.clone());
        async move {
            let before = direct.list_chunks_after(0).await.ok()?.len();
            cl.put("/probe", "x", None).await.ok()?;
            let after = direct.list_chunks_after(0).await.ok()?.len();
            (after == before).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_acknowledged_write_survives_the_primary_s_death() {
    let (_weed, direct, _tmp, mut nodes) = cluster("quorum").await;
    let p = primary(&nodes, None).await;
    let mut cl = connect(&nodes[p]).await;
    quorum_path_in_use(&cl, &direct).await;
    let chunks_before = direct.list_chunks_after(0).await.expect("list").len();
    let acked = put_30(&mut cl, "/q/").await;
    let last = acked.values().map(|(r, _)| *r).max().unwrap();
    let chunks = direct.list_chunks_after(0).await.expect("list");
    let new_chunks = chunks.len() - chunks_before;
    assert!(
        new_chunks <= 3,
        "30 writes made {new_chunks} chunks: the quorum path is not in use"
    );
    assert!(
        chunks.iter().all(|c| c.revision < last),
        "the last acknowledged write is only in the buffer and on the replicas"
    );
    eprintln!("30 acknowledged writes, {new_chunks} chunks; last revision {last}");

    nodes[p].kill9();
    let q = primary(&nodes, Some(p)).await;
    assert_ne!(q, p);
    let mut cl = connect(&nodes[q]).await;
    assert_eq!(
        state(&mut cl, "/q/").await,
        acked,
        "every acknowledged write, at its revision, on the new primary"
    );
    let chunks = direct.list_chunks_after(0).await.expect("list");
    assert!(
        chunks.iter().any(|c| c.revision >= last),
        "the new primary put the collected records in the bucket: {:?}",
        chunks.iter().map(|c| c.revision).collect::<Vec<_>>()
    );
    // A write after the failover, and the old Primary back as a Replica with the same data.
    cl.put("/q/after", "x", None)
        .await
        .expect("put after failover");
    nodes[p].restart();
    nodes[p].wait_ready(READY).await;
    let mut old = connect(&nodes[p]).await;
    let mut want = acked.clone();
    let got = state(&mut old, "/q/").await;
    want.insert(
        "/q/after".into(),
        got.get("/q/after").cloned().expect("the later write"),
    );
    assert_eq!(got, want, "the restarted node serves the same data");
}

/// A Replica whose copy left the history (here: its last record, acknowledged and not yet in
/// the bucket, rewritten while it was down; in life, a deposed writer's late chunk it loaded)
/// is found out when it reconnects: the Primary compares the Replica's last record with its own
/// and sends its whole copy, so the Replica serves the history's value again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_copy_diverged_gets_the_whole_copy() {
    let (_weed, direct, _tmp, mut nodes) = cluster("quorum-diverged").await;
    let p = primary(&nodes, None).await;
    let r = (p + 1) % 3;
    let mut cl = connect(&nodes[p]).await;
    quorum_path_in_use(&cl, &direct).await;
    for n in 0..10 {
        cl.put(format!("/d/{n}"), format!("v{n}"), None)
            .await
            .expect("put");
    }
    // The Replica has applied what the commit index covered; its last record is above every
    // chunk (acknowledged by receipts only).
    let rc = connect(&nodes[r]).await;
    support::wait::poll("the replica applies", Duration::from_secs(10), || {
        let mut rc = rc.clone();
        async move {
            let h = rc
                .get(
                    "/d/",
                    Some(GetOptions::new().with_prefix().with_serializable()),
                )
                .await
                .ok()?;
            (h.kvs().len() >= 9).then_some(())
        }
    })
    .await;
    nodes[r].kill9();
    let db = nodes[r].spec.data_dir.join("db.sqlite3");
    let forged_key = {
        let conn = rusqlite::Connection::open(&db).expect("open the replica's copy");
        // The head when it was killed: the commit index of the last put may have reached it
        // after the poll above saw nine.
        let head: i64 = conn
            .query_row("SELECT MAX(revision) FROM records", [], |row| row.get(0))
            .expect("the replica's head");
        let bucket_head = direct
            .list_chunks_after(0)
            .await
            .expect("list")
            .iter()
            .map(|c| c.revision)
            .max()
            .unwrap_or(0);
        assert!(
            bucket_head < head,
            "the replica's head {head} is not in the bucket yet ({bucket_head})"
        );
        let key: Vec<u8> = conn
            .query_row(
                "SELECT key FROM records WHERE revision = ?1",
                [head],
                |row| row.get(0),
            )
            .expect("the replica's last record");
        let n = conn
            .execute(
                "UPDATE records SET value = CAST('forged' AS BLOB) WHERE revision = ?1",
                [head],
            )
            .expect("rewrite it");
        assert_eq!(n, 1);
        String::from_utf8(key).expect("utf-8 key")
    };
    let want = cl
        .get(forged_key.as_str(), None)
        .await
        .expect("get on the primary")
        .kvs()[0]
        .value_str()
        .expect("utf-8")
        .to_string();
    assert_ne!(want, "forged");
    nodes[r].restart();
    nodes[r].wait_ready(READY).await;
    let rc = connect(&nodes[r]).await;
    let got = support::wait::poll(
        "the replica serves the history's value",
        Duration::from_secs(20),
        || {
            let (mut rc, key, want) = (rc.clone(), forged_key.clone(), want.clone());
            async move {
                let v = rc
                    .get(key, Some(GetOptions::new().with_serializable()))
                    .await
                    .ok()?
                    .kvs()
                    .first()?
                    .value_str()
                    .ok()?
                    .to_string();
                (v == want).then_some(v)
            }
        },
    )
    .await;
    assert_eq!(got, want);
    assert!(
        nodes[p].log_text().contains("replica_diverged"),
        "the primary's whole copy repaired it, not a bucket load"
    );
    // Writes go on reaching it.
    cl.put("/d/after", "x", None).await.expect("put");
    support::wait::poll("the replica follows again", Duration::from_secs(10), || {
        let mut rc = rc.clone();
        async move {
            let h = rc
                .get("/d/after", Some(GetOptions::new().with_serializable()))
                .await
                .ok()?;
            (!h.kvs().is_empty()).then_some(())
        }
    })
    .await;
}

/// A registration racing a failover (docs/design/0010, "Acknowledgement configurations"):
/// writes acknowledged under {a, b, c} with one receipt, all of them receipted by b alone (c is
/// down; its registration stays); then b is stopped, the Primary a killed, a fourth node d
/// registers and c restarts. Counting the four registrations (two answers needed) the next
/// Primary could collect from c and d, neither of which holds the writes, and serve without
/// them; it must wait for b.
///
/// c is killed rather than stopped: a stopped process still receives what the Primary streams
/// to it (the kernel buffers it) and would hold the writes once continued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_registering_while_the_primary_dies_does_not_shrink_the_collection() {
    const BUCKET: &str = "quorum-registration-race";
    const WAITING: &str = "collection: too few nodes answer; waiting before serving";
    const FINISHED: &str = "collection finished";
    let (weed, direct, tmp, mut nodes) = cluster(BUCKET).await;
    let a = primary(&nodes, None).await;
    let (b, c) = ((a + 1) % 3, (a + 2) % 3);
    let mut cl = connect(&nodes[a]).await;
    quorum_path_in_use(&cl, &direct).await;
    // From here on b alone receipts; c's registration stays (the deregistration timeout is
    // minutes), so the writes are acknowledged under {a, b, c}.
    nodes[c].kill9();
    let acked = put_30(&mut cl, "/r/").await;
    let last = acked.values().map(|(r, _)| *r).max().unwrap();
    let chunks = direct.list_chunks_after(0).await.expect("list");
    assert!(
        chunks.iter().all(|ch| ch.revision < last),
        "the last acknowledged write is only in the buffer and on b: {:?}",
        chunks.iter().map(|ch| ch.revision).collect::<Vec<_>>()
    );
    eprintln!("30 writes acknowledged by b's receipts; last revision {last}");

    // b holds them and cannot answer; the Primary dies with them in its buffer.
    nodes[b].signal("STOP");
    nodes[a].kill9();
    // A fourth node registers (it may become the Primary or a Replica), then c restarts: it
    // reads the member list, d's registration in it, before it can take the lock.
    let mut spec = NodeSpec::cluster_member(tmp.path(), 4, BUCKET, weed.endpoint(), "300ms");
    spec.quorum = -1;
    nodes.push(Node::start(spec, &tmp.path().join("work-4")));
    let d = nodes.len() - 1;
    let registration = direct.layout().node("node-4").expect("node id");
    support::wait::poll(
        "the fourth node's registration",
        Duration::from_secs(30),
        || {
            let (direct, key) = (direct.clone(), registration.clone());
            async move {
                netsy::objstore::cas::get(direct.store().as_ref(), &key)
                    .await
                    .ok()?
                    .map(|_| ())
            }
        },
    )
    .await;
    nodes[c].restart();

    // The new Primary (c or d) waits for b: a collection that finishes first served without
    // the acknowledged writes.
    let (collector, line) = support::wait::poll(
        "the new primary's collection",
        Duration::from_secs(30),
        || {
            let logs = [(c, nodes[c].log_text()), (d, nodes[d].log_text())];
            async move {
                logs.into_iter().find_map(|(i, text)| {
                    text.lines()
                        .find(|l| l.contains(WAITING) || l.contains(FINISHED))
                        .map(|l| (i, l.to_string()))
                })
            }
        },
    )
    .await;
    assert!(
        line.contains(WAITING),
        "node {} finished its collection without b, the only node that can answer for the \
         acknowledged writes: {line}",
        nodes[collector].spec.node_id.as_deref().unwrap_or("?")
    );
    eprintln!(
        "{} waits for b: {line}",
        nodes[collector].spec.node_id.as_deref().unwrap_or("?")
    );

    nodes[b].signal("CONT");
    let q = primary(&nodes, Some(a)).await;
    let mut cl = connect(&nodes[q]).await;
    assert_eq!(
        state(&mut cl, "/r/").await,
        acked,
        "every acknowledged write, at its revision, on the new primary"
    );
}
