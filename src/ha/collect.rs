//! The arithmetic of the quorum write path and of the collection a new Primary runs before it
//! serves (docs/design/0010-quorum-replication.md, "Terms" and "Failover").
//!
//! With `r` required receipts an acknowledged group is on `a = r + 1` nodes: the Primary and
//! `r` Replicas. A node that wins the writer lock collects answers from `c = n − r` nodes,
//! itself included and the old Primary not counted; the `c` answers and the `r` Replicas that
//! hold any acknowledged group are all among the `n − 1` nodes other than the old Primary, and
//! `c + r = n > n − 1`, so at least one answer holds that group.

use std::time::Duration;

use super::Cluster;
use crate::datafile::Record;
use crate::durability::Fence;
use crate::proto as pb;
use crate::store::Store;

/// How long one node's answer may take.
const ANSWER_DEADLINE: Duration = Duration::from_secs(2);
/// Pause between rounds while too few nodes answer.
const ROUND_PAUSE: Duration = Duration::from_millis(500);

/// Receipts a group needs besides the Primary's own copy: quorum `0` → 0, `N > 0` → `N`,
/// `-1` (majority) → `⌊n/2⌋`; a cluster of one node needs none (the original's rule).
pub(crate) fn required_receipts(quorum: i64, nodes: usize) -> usize {
    if nodes <= 1 {
        return 0;
    }
    match quorum {
        -1 => nodes / 2,
        q if q > 0 => usize::try_from(q).unwrap_or(usize::MAX),
        _ => 0,
    }
}

/// Answers a new Primary must hold (its own included) before it serves, or `None` when no
/// collection is needed: every acknowledged write is already in the bucket (`required` 0).
/// A `required` that no cluster of `nodes` can meet (more receipts than Replicas) never takes
/// the quorum path, so it needs no collection either.
pub(crate) fn collection_size(nodes: usize, required: usize) -> Option<usize> {
    if required == 0 || required >= nodes {
        return None;
    }
    Some(nodes - required)
}

/// One node's answer to a collection: the records it holds above the collector's head, and the
/// newest writer epoch they came from.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub node_id: String,
    pub epoch: u64,
    pub records: Vec<Record>,
}

/// The records a new Primary adopts above `head`: the longest run, up to its first gap, among
/// the answers of the newest epoch any answer knows (an answer of that epoch holding nothing
/// above `head` still counts: records of older epochs are never adopted once a newer writer
/// existed). They were never acknowledged: the newer writer collected before it wrote, so
/// whatever of an older epoch had been acknowledged is already at or below `head`.
pub(crate) fn adopt(head: i64, answers: &[Answer]) -> Vec<Record> {
    let run = |records: &[Record]| -> usize {
        let start = records.partition_point(|r| r.revision <= head);
        let mut expected = head + 1;
        let mut len = 0;
        for r in &records[start..] {
            if r.revision == expected {
                len += 1;
            } else if r.revision == expected + 1 && len > 0 {
                expected += 1;
                len += 1;
            } else {
                break;
            }
        }
        len
    };
    let Some(newest) = answers.iter().map(|a| a.epoch).max() else {
        return Vec::new();
    };
    let best = answers
        .iter()
        .filter(|a| a.epoch == newest)
        .map(|a| (run(&a.records), a))
        .max_by_key(|(len, _)| *len);
    match best {
        Some((len, answer)) if len > 0 => {
            let start = answer.records.partition_point(|r| r.revision <= head);
            answer.records[start..start + len].to_vec()
        }
        _ => Vec::new(),
    }
}

/// Collects answers for writer `epoch` above `head` (the bucket's last revision) from this
/// node and the registered peers until `needed` have answered (this node included), then
/// returns what to adopt: records that may have been acknowledged without reaching the bucket,
/// this node's own local copy above `head` among them. Waits, serving nothing, while fewer
/// answer; gives up once `fence` no longer holds (another node may take the lock).
pub(crate) async fn collect(
    cluster: &Cluster,
    store: &Store,
    epoch: u64,
    head: i64,
    needed: usize,
    fence: &Fence,
) -> anyhow::Result<Vec<Record>> {
    let pending = cluster
        .pending()
        .ok_or_else(|| anyhow::anyhow!("the pending log is not open"))?;
    let mut round = 0u32;
    loop {
        anyhow::ensure!(
            fence.holds(),
            "the writer lock's lease ran out while collecting"
        );
        let own = super::quorum::answer(store, pending, cluster.followed_epoch(), epoch, head)
            .await
            .map_err(|s| anyhow::anyhow!("own answer: {}", s.message()))?;
        let mut answers = vec![Answer {
            node_id: cluster.node_id().to_string(),
            epoch: own.epoch,
            records: own.records,
        }];
        let peers: Vec<(String, String)> = cluster
            .members()
            .into_iter()
            .filter(|(id, _)| id != cluster.node_id())
            .collect();
        let calls = peers.iter().map(|(id, addr)| async move {
            let mut client = cluster.peer(addr).ok()?;
            let req = pb::CollectRequest {
                node_id: cluster.node_id().to_string(),
                epoch,
                from_revision: head,
            };
            match tokio::time::timeout(ANSWER_DEADLINE, client.collect(req)).await {
                Ok(Ok(resp)) => {
                    let resp = resp.into_inner();
                    Some(Answer {
                        node_id: id.clone(),
                        epoch: resp.epoch,
                        records: resp.records,
                    })
                }
                Ok(Err(e)) => {
                    tracing::debug!(peer = %id, error = %e, "no collection answer");
                    None
                }
                Err(_) => None,
            }
        });
        answers.extend(futures::future::join_all(calls).await.into_iter().flatten());
        if answers.len() >= needed {
            let adopted = adopt(head, &answers);
            tracing::info!(
                epoch,
                answers = ?answers.iter().map(|a| a.node_id.as_str()).collect::<Vec<_>>(),
                needed,
                from = head,
                adopted = adopted.len(),
                "collection finished"
            );
            return Ok(adopted);
        }
        if round.is_multiple_of(10) {
            tracing::warn!(
                epoch,
                answers = answers.len(),
                needed,
                registered = peers.len() + 1,
                "collection: too few nodes answer; waiting before serving"
            );
        }
        round += 1;
        tokio::time::sleep(ROUND_PAUSE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_receipts_follow_the_original() {
        // quorum -1: 1 node → 0; 2 → 1; 3 → 1; 4 → 2; 5 → 2; 7 → 3.
        let majority: Vec<usize> = [1, 2, 3, 4, 5, 7]
            .iter()
            .map(|&n| required_receipts(-1, n))
            .collect();
        assert_eq!(majority, [0, 1, 1, 2, 2, 3]);
        assert_eq!(required_receipts(0, 5), 0);
        assert_eq!(required_receipts(2, 5), 2);
        assert_eq!(required_receipts(2, 1), 0);
    }

    #[test]
    fn every_collection_meets_every_acknowledgement() {
        for nodes in 1..=9usize {
            for required in 0..=nodes {
                let Some(c) = collection_size(nodes, required) else {
                    assert!(required == 0 || required >= nodes);
                    continue;
                };
                // Answers come from the n − 1 nodes other than the old Primary.
                assert!(c < nodes, "n={nodes} r={required} c={c}");
                // Any r Replicas and any c answers among n − 1 nodes share one node.
                assert!(c + required > nodes - 1, "n={nodes} r={required} c={c}");
                // One answer fewer could miss a group: c is the least that meets every one.
                assert_eq!((c - 1) + required, nodes - 1, "n={nodes} r={required}");
            }
        }
        assert_eq!(collection_size(3, 1), Some(2));
        assert_eq!(collection_size(5, 2), Some(3));
        assert_eq!(collection_size(5, 4), Some(1));
        assert_eq!(collection_size(5, 1), Some(4));
    }

    fn rec(revision: i64, sub: i64, value: &str) -> Record {
        Record {
            revision,
            key: format!("k{revision}.{sub}").into_bytes(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    fn answer(node: &str, epoch: u64, records: Vec<Record>) -> Answer {
        Answer {
            node_id: node.into(),
            epoch,
            records,
        }
    }

    fn revisions(records: &[Record]) -> Vec<i64> {
        records.iter().map(|r| r.revision).collect()
    }

    #[test]
    fn the_newest_epoch_wins_then_the_longest_run() {
        let answers = [
            answer(
                "a",
                4,
                vec![rec(11, 0, "old"), rec(12, 0, "old"), rec(13, 0, "old")],
            ),
            answer("b", 5, vec![rec(11, 0, "new")]),
            answer("c", 5, vec![rec(11, 0, "new"), rec(12, 0, "new")]),
        ];
        let got = adopt(10, &answers);
        assert_eq!(revisions(&got), [11, 12]);
        assert!(got.iter().all(|r| r.value == b"new"));
        // Records at or below the head are skipped.
        assert_eq!(revisions(&adopt(11, &answers)), [12]);
        assert!(adopt(12, &answers).is_empty());
        assert!(adopt(10, &[]).is_empty());
    }

    #[test]
    fn a_run_stops_at_a_gap_and_keeps_transactions_whole() {
        let gap = [answer(
            "a",
            3,
            vec![rec(11, 0, "x"), rec(12, 0, "x"), rec(14, 0, "x")],
        )];
        assert_eq!(revisions(&adopt(10, &gap)), [11, 12]);
        // Starting above head + 1 is a gap too: nothing is adopted.
        assert!(adopt(9, &gap).is_empty());
        // A transaction's records share a revision; a run keeps it whole.
        let txn = [answer(
            "a",
            3,
            vec![
                rec(11, 0, "x"),
                rec(11, 1, "x"),
                rec(12, 0, "x"),
                rec(12, 1, "x"),
            ],
        )];
        assert_eq!(revisions(&adopt(10, &txn)), [11, 11, 12, 12]);
    }
}
