//! A Replica's follower loop: applies the Primary's committed records to the local copy.
//!
//! Catch-up needs no restart: every (re)connection asks for everything after the local head,
//! and the Primary sends its history first (from its own local copy), then live commits. A
//! Replica behind the Primary's compaction revision gets the Primary's whole copy instead,
//! which replaces its own in one transaction (readers see the old copy until it commits). A stream from an older epoch than the one this node knows is
//! dropped.

use std::time::Duration;

use tokio::sync::watch;

use super::{Cluster, PrimaryInfo, Role};
use crate::durability::from_proto;
use crate::proto as pb;
use crate::store::Store;

/// Pause before reconnecting after a broken stream.
const RETRY: Duration = Duration::from_millis(200);

/// Follows whichever node is Primary until `stop`; on a Primary it waits.
pub async fn follow(cluster: Cluster, store: Store, mut stop: watch::Receiver<bool>) {
    let mut roles = cluster.subscribe_role();
    let mut last_error = String::new();
    loop {
        let role = roles.borrow_and_update().clone();
        match role {
            Role::Replica { primary } => {
                tokio::select! {
                    res = follow_once(&cluster, &store, &primary) => {
                        // A whole-copy transfer cut off midway leaves the old copy.
                        let _ = store.replace_abort().await;
                        if let Err(e) = res
                            && e != last_error {
                                tracing::warn!(primary = %primary.node_id, error = %e, "follow stream ended; reconnecting");
                                last_error = e;
                            }
                        tokio::select! {
                            _ = tokio::time::sleep(RETRY) => {}
                            _ = stop.changed() => return,
                        }
                    }
                    _ = roles.changed() => { let _ = store.replace_abort().await; }
                    _ = stop.changed() => { let _ = store.replace_abort().await; return }
                }
            }
            Role::Primary { .. } | Role::Transition => {
                tokio::select! {
                    r = roles.changed() => if r.is_err() { return },
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

async fn follow_once(
    cluster: &Cluster,
    store: &Store,
    primary: &PrimaryInfo,
) -> Result<(), String> {
    let mut client = cluster
        .peer(&primary.peer_addr)
        .map_err(|e| e.to_string())?;
    let from = store.current_revision() + 1;
    let mut stream = client
        .follow(pb::FollowRequest {
            node_id: cluster.node_id().to_string(),
            from_revision: from,
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    tracing::info!(primary = %primary.node_id, from, "following");
    let mut replacing = false;
    loop {
        let msg = match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Err(_) => return Err("no message for 10 s".into()),
            Ok(Err(e)) => return Err(e.message().to_string()),
            Ok(Ok(None)) => return Err("closed by the primary".into()),
            Ok(Ok(Some(msg))) => msg,
        };
        if msg.epoch < primary.epoch {
            return Err(format!(
                "stream of epoch {} is older than the known epoch {}",
                msg.epoch, primary.epoch
            ));
        }
        if msg.replace_through > 0 {
            // The whole copy of the Primary (this node was behind its compaction revision).
            if !replacing {
                tracing::info!(
                    through = msg.replace_through,
                    "replacing the local copy with the primary's"
                );
                store.replace_begin().await.map_err(|e| e.to_string())?;
                replacing = true;
            }
            if !msg.records.is_empty() {
                store
                    .import(msg.records.into_iter().map(from_proto).collect())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            if msg.committed_revision == msg.replace_through {
                store
                    .replace_commit(msg.compaction_revision)
                    .await
                    .map_err(|e| e.to_string())?;
                replacing = false;
            }
            continue;
        }
        if replacing {
            return Err("the primary's whole copy ended before it was complete".into());
        }
        if !msg.records.is_empty() {
            let head = store.current_revision();
            let records: Vec<_> = msg
                .records
                .into_iter()
                .filter(|r| r.revision > head)
                .map(from_proto)
                .collect();
            if let Some(first) = records.first() {
                if first.revision != head + 1 {
                    return Err(format!(
                        "gap: got revision {} after local head {head}",
                        first.revision
                    ));
                }
                store.import(records).await.map_err(|e| e.to_string())?;
            }
        }
        if msg.compaction_revision > store.compact_revision()
            && msg.compaction_revision <= store.current_revision()
        {
            match store.compact(msg.compaction_revision, false).await {
                Ok(_) | Err(crate::store::Error::Compacted) => {}
                Err(e) => return Err(format!("local compaction: {e}")),
            }
        }
    }
}
