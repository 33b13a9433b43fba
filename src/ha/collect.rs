//! The arithmetic of the quorum write path and of the collection a new Primary runs before it
//! serves (docs/design/0010-quorum-replication.md, "Terms" and "Failover").
//!
//! With `r` required receipts an acknowledged group is on `a = r + 1` nodes: the Primary and
//! `r` Replicas. A node that wins the writer lock collects answers from `c = n − r` nodes,
//! itself included and the old Primary not counted; the `c` answers and the `r` Replicas that
//! hold any acknowledged group are all among the `n − 1` nodes other than the old Primary, and
//! `c + r = n > n − 1`, so at least one answer holds that group.
//!
//! `n` is not the nodes registered when the collection runs: registrations change, and the
//! Primary's view of them lags by a heartbeat. A Primary records its *acknowledgement
//! configuration* `S` (the nodes whose receipts it counts, itself included) and `r` in the bucket
//! before it acknowledges anything by receipts under it, counts receipts only from `S`, and
//! uploads its buffer before it records another one; a collection meets every configuration it
//! finds with `|S| − r` answers from `S` other than that epoch's Primary ([`AckConfig`]).

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use super::Cluster;
use crate::datafile::Record;
use crate::durability::Fence;
use crate::objstore::{Error, ObjectStorage, cas};
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

/// One node of an [`AckConfig`]: its id and peer address (`host:port`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct ConfigNode {
    pub id: String,
    pub addr: String,
}

/// A writer epoch's acknowledgement configuration (`leader/quorum/{epoch}.json`): the nodes
/// whose receipts its Primary counts, the Primary included, and the receipts a group needs.
/// Recorded before the first group acknowledged under it; replaced only once every group
/// acknowledged under the one before is in the bucket; removed once everything is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AckConfig {
    pub epoch: u64,
    pub primary: String,
    /// Sorted by id, the Primary among them.
    pub nodes: Vec<ConfigNode>,
    pub required: usize,
}

impl AckConfig {
    /// The configuration of `primary` for writer `epoch` with the registered `members`
    /// (`(id, addr)`; the Primary is added if missing) and `replication.quorum`.
    pub(crate) fn new(
        epoch: u64,
        primary: &str,
        members: impl IntoIterator<Item = (String, String)>,
        quorum: i64,
    ) -> Self {
        let mut nodes: Vec<ConfigNode> = members
            .into_iter()
            .map(|(id, addr)| ConfigNode { id, addr })
            .collect();
        if !nodes.iter().any(|n| n.id == primary) {
            nodes.push(ConfigNode {
                id: primary.to_string(),
                addr: String::new(),
            });
        }
        nodes.sort();
        nodes.dedup_by(|a, b| a.id == b.id);
        let required = required_receipts(quorum, nodes.len());
        AckConfig {
            epoch,
            primary: primary.to_string(),
            nodes,
            required,
        }
    }

    /// Whether groups can be acknowledged by receipts at all under it.
    pub(crate) fn usable(&self) -> bool {
        collection_size(self.nodes.len(), self.required).is_some()
    }

    /// The nodes whose receipts count: every node but the Primary.
    pub(crate) fn replicas(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.id != self.primary)
            .map(|n| n.id.clone())
            .collect()
    }

    /// Answers a collection needs from [`Self::replicas`]: an acknowledged group is on `r` of
    /// those `|S| − 1` nodes, so `|S| − r` of them include one that holds it.
    pub(crate) fn needs(&self) -> usize {
        self.nodes.len().saturating_sub(self.required)
    }

    /// How many of `answered` (node ids) count for this configuration.
    pub(crate) fn counted<'a>(&self, answered: impl IntoIterator<Item = &'a str>) -> usize {
        let ids: BTreeSet<&str> = answered
            .into_iter()
            .filter(|id| *id != self.primary && self.nodes.iter().any(|n| n.id == *id))
            .collect();
        ids.len()
    }

    /// Whether `answered` meets this configuration.
    pub(crate) fn met<'a>(&self, answered: impl IntoIterator<Item = &'a str>) -> bool {
        self.counted(answered) >= self.needs()
    }
}

/// Records `config` as its epoch's acknowledgement configuration (compare-and-swap against what
/// is there, so an attempt that lands late cannot replace a newer one).
pub(crate) async fn record_config(
    storage: &ObjectStorage,
    config: &AckConfig,
) -> Result<(), Error> {
    let key = storage.layout().quorum_config(config.epoch);
    let body = Bytes::from(serde_json::to_vec(config).unwrap_or_default());
    cas::read_modify_write(storage.store().as_ref(), &key, 5, |current| {
        Ok::<_, Error>((current != Some(&body[..])).then(|| body.clone()))
    })
    .await
    .map_err(|e| match e {
        cas::RmwError::Store(e) | cas::RmwError::Rejected(e) => e,
        cas::RmwError::Contended { .. } => Error::Conflict {
            key: key.to_string(),
        },
    })?;
    Ok(())
}

/// Removes `epoch`'s acknowledgement configuration: everything it acknowledged is in the bucket.
pub(crate) async fn remove_config(storage: &ObjectStorage, epoch: u64) -> Result<(), Error> {
    match storage
        .store()
        .delete(&storage.layout().quorum_config(epoch))
        .await
    {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(Error::Store(e)),
    }
}

/// The acknowledgement configurations recorded for epochs below `below`. Unreadable ones are an
/// error: skipping one could serve without records it acknowledged.
pub(crate) async fn load_configs(
    storage: &ObjectStorage,
    below: u64,
) -> Result<Vec<AckConfig>, Error> {
    let store = storage.store();
    let metas: Vec<_> = store
        .list(Some(&storage.layout().quorum_configs_dir()))
        .try_collect()
        .await
        .map_err(Error::Store)?;
    let mut configs = Vec::new();
    for meta in metas {
        let Some(epoch) = storage.layout().parse_quorum_config(&meta.location) else {
            continue;
        };
        if epoch >= below {
            continue;
        }
        let Some(v) = cas::get(store.as_ref(), &meta.location).await? else {
            continue;
        };
        let config: AckConfig = serde_json::from_slice(&v.bytes).map_err(|e| {
            Error::Config(format!(
                "unreadable acknowledgement configuration {}: {e}",
                meta.location
            ))
        })?;
        configs.push(config);
    }
    configs.sort_by_key(|c| c.epoch);
    Ok(configs)
}

/// Removes the acknowledgement configurations of epochs below `below` (a new Primary, once the
/// records they may have acknowledged are in the bucket).
pub(crate) async fn remove_configs_below(
    storage: &ObjectStorage,
    below: u64,
) -> Result<usize, Error> {
    let configs = load_configs(storage, below).await?;
    for c in &configs {
        remove_config(storage, c.epoch).await?;
    }
    Ok(configs.len())
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
/// node, the registered peers and the nodes of `configs` until every configuration is met
/// ([`AckConfig::met`]), then returns what to adopt: records that may have been acknowledged
/// without reaching the bucket, this node's own local copy above `head` among them. Waits,
/// serving nothing, while fewer answer; gives up once `fence` no longer holds (another node may
/// take the lock).
pub(crate) async fn collect(
    cluster: &Cluster,
    store: &Store,
    epoch: u64,
    head: i64,
    configs: &[AckConfig],
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
        // The registered nodes, then those of a configuration that are not (a registration
        // removed since, by hand or as stale) at the address recorded with it.
        let mut peers: Vec<(String, String)> = cluster
            .members()
            .into_iter()
            .filter(|(id, _)| id != cluster.node_id())
            .collect();
        for node in configs.iter().flat_map(|c| &c.nodes) {
            if node.id != cluster.node_id()
                && !node.addr.is_empty()
                && !peers.iter().any(|(id, _)| *id == node.id)
            {
                peers.push((node.id.clone(), node.addr.clone()));
            }
        }
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
        let answered = || answers.iter().map(|a| a.node_id.as_str());
        let unmet: Vec<String> = configs
            .iter()
            .filter(|c| !c.met(answered()))
            .map(|c| {
                format!(
                    "epoch {}: {} of {}, {} answered",
                    c.epoch,
                    c.needs(),
                    c.replicas().join(" "),
                    c.counted(answered())
                )
            })
            .collect();
        if unmet.is_empty() {
            let adopted = adopt(head, &answers);
            tracing::info!(
                epoch,
                answers = ?answered().collect::<Vec<_>>(),
                configurations = configs.len(),
                from = head,
                adopted = adopted.len(),
                "collection finished"
            );
            return Ok(adopted);
        }
        if round.is_multiple_of(10) {
            tracing::warn!(
                epoch,
                answers = ?answered().collect::<Vec<_>>(),
                unmet = ?unmet,
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

    /// Node ids `n0..n{count}`; `n0` is the old Primary.
    fn node_ids(count: usize) -> Vec<(String, String)> {
        (0..count)
            .map(|i| (format!("n{i}"), format!("n{i}:2380")))
            .collect()
    }

    /// The members of `mask` among `ids`.
    fn pick(ids: &[String], mask: u32) -> Vec<&str> {
        ids.iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, id)| id.as_str())
            .collect()
    }

    /// Whether every set of `answers` answers that `counts` accepts shares a node with every
    /// set of `r` holders among `holders` (the old Primary's Replicas that receipted a group).
    fn always_meets(
        holders: &[String],
        r: usize,
        others: &[String],
        counts: impl Fn(&[&str]) -> bool,
    ) -> bool {
        let all: Vec<String> = holders.iter().chain(others).cloned().collect();
        for answered in 0..1u32 << all.len() {
            let answered = pick(&all, answered);
            if !counts(&answered) {
                continue;
            }
            for held in 0..1u32 << holders.len() {
                if held.count_ones() as usize != r {
                    continue;
                }
                let held = pick(holders, held);
                if !held.iter().any(|h| answered.contains(h)) {
                    return false;
                }
            }
        }
        true
    }

    /// Every (old, new) membership up to 9 nodes: groups acknowledged under the configuration of
    /// `old` nodes, a collection among the `new` nodes registered when it runs (newcomers, or
    /// some of the old Replicas gone). Meeting the recorded configuration always finds every
    /// group; counting the nodes registered now (the rule before configurations were recorded)
    /// misses one, e.g. after 3 → 4.
    #[test]
    fn a_configuration_met_finds_every_group_whatever_registered_since() {
        let mut legacy_misses = Vec::new();
        for old in 2..=9usize {
            for quorum in [-1i64, 1, 2, 3] {
                let config = AckConfig::new(7, "n0", node_ids(old), quorum);
                if !config.usable() {
                    continue;
                }
                let replicas = config.replicas();
                assert_eq!(replicas.len(), old - 1);
                assert_eq!(config.counted(["n0"]), 0, "the old Primary never counts");
                for new in 1..=9usize {
                    // Registered now: the old nodes and newcomers, or the old Primary and the
                    // first `new - 1` of its Replicas.
                    let newcomers: Vec<String> =
                        (old..new.max(old)).map(|i| format!("n{i}")).collect();
                    let registered: Vec<String> = if new >= old {
                        replicas.iter().chain(&newcomers).cloned().collect()
                    } else {
                        replicas[..new - 1].to_vec()
                    };
                    let ok = always_meets(&replicas, config.required, &newcomers, |a| {
                        config.met(a.iter().copied())
                    });
                    assert!(ok, "old={old} new={new} quorum={quorum}");
                    // The rule before: n − r answers of the nodes registered now, the
                    // collector's own among them.
                    let now = required_receipts(quorum, new);
                    let Some(legacy) = collection_size(new, now) else {
                        continue;
                    };
                    let ok = always_meets(&replicas, config.required, &newcomers, |a| {
                        a.len() >= legacy && a.iter().all(|id| registered.iter().any(|r| r == id))
                    });
                    if !ok {
                        legacy_misses.push((old, new, quorum));
                    }
                }
                // One answer fewer than it needs could miss a group.
                let fewer = AckConfig {
                    required: config.required + 1,
                    ..config.clone()
                };
                if fewer.needs() > 0 {
                    assert!(
                        !always_meets(&replicas, config.required, &[], |a| fewer
                            .met(a.iter().copied())),
                        "old={old} quorum={quorum}: {} answers are the least",
                        config.needs()
                    );
                }
            }
        }
        assert!(
            legacy_misses.contains(&(3, 4, -1)),
            "the race this closes: {legacy_misses:?}"
        );
    }

    #[test]
    fn a_configuration_counts_its_own_nodes_once_and_never_its_primary() {
        let c = AckConfig::new(
            4,
            "b",
            [
                ("c".to_string(), "c:1".to_string()),
                ("a".to_string(), "a:1".to_string()),
            ],
            -1,
        );
        let ids: Vec<&str> = c.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"], "sorted, the Primary added");
        assert_eq!(
            (c.required, c.needs(), c.replicas()),
            (1, 2, vec!["a".to_string(), "c".to_string()])
        );
        assert_eq!(c.counted(["a", "a", "b", "d"]), 1);
        assert!(!c.met(["a", "b", "d"]));
        assert!(c.met(["c", "a"]));
        assert!(
            !AckConfig::new(4, "b", [], -1).usable(),
            "alone: nothing by receipts"
        );
    }

    #[tokio::test]
    async fn configurations_are_recorded_replaced_listed_and_removed() {
        let storage = crate::objstore::ObjectStorage::from_parts(
            std::sync::Arc::new(object_store::memory::InMemory::new()),
            crate::objstore::Layout::new("p").unwrap(),
        );
        let three = AckConfig::new(5, "n0", node_ids(3), -1);
        let four = AckConfig::new(5, "n0", node_ids(4), -1);
        record_config(&storage, &three).await.unwrap();
        record_config(&storage, &three).await.unwrap();
        record_config(&storage, &four).await.unwrap();
        let older = AckConfig::new(2, "n1", node_ids(3), -1);
        record_config(&storage, &older).await.unwrap();
        assert_eq!(
            load_configs(&storage, 6).await.unwrap(),
            [older.clone(), four.clone()]
        );
        assert_eq!(load_configs(&storage, 5).await.unwrap(), [older]);
        assert_eq!(remove_configs_below(&storage, 5).await.unwrap(), 1);
        assert_eq!(load_configs(&storage, 6).await.unwrap(), [four]);
        remove_config(&storage, 5).await.unwrap();
        remove_config(&storage, 5).await.unwrap();
        assert!(load_configs(&storage, 6).await.unwrap().is_empty());
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
