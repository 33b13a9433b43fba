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
use crate::store::{self, Action, Store};

/// Why a follow stream ended.
#[derive(Debug, thiserror::Error)]
enum Ended {
    /// The Primary refused or the stream broke (the Primary's status or tonic's).
    #[error("{}", .0.message())]
    Peer(#[from] tonic::Status),
    #[error("no message for {} s", IDLE.as_secs())]
    Idle,
    #[error("closed by the primary")]
    Closed,
    #[error("stream of epoch {got} is older than the known epoch {known}")]
    StaleEpoch { got: u64, known: u64 },
    #[error("the primary's whole copy ended before it was complete")]
    IncompleteCopy,
    #[error("gap: got revision {got} after local head {head}")]
    Gap { got: i64, head: i64 },
    /// Applying to the local copy failed; its [`store::Error::action`] says what to do.
    #[error("local copy: {0}")]
    Store(#[from] store::Error),
}

/// Pause before reconnecting after a broken stream.
const RETRY: Duration = Duration::from_millis(200);
/// The Primary sends at least one message a second; a stream silent this long is dead.
const IDLE: Duration = Duration::from_secs(10);

/// Follows whichever node is Primary until `stop`; on a Primary it waits.
pub(crate) async fn follow(cluster: Cluster, store: Store, mut stop: watch::Receiver<bool>) {
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
                        if let Err(e) = res {
                            if let Ended::Store(err) = &e
                                && err.action() == Action::Stop
                            {
                                // The local writer is gone (the node is stopping): nothing to apply to.
                                tracing::warn!(error = %err, "follower stopped: the local store is not writable");
                                return;
                            }
                            let text = e.to_string();
                            if text != last_error {
                                tracing::warn!(primary = %primary.node_id, error = %text, "follow stream ended; reconnecting");
                                last_error = text;
                            }
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

async fn follow_once(cluster: &Cluster, store: &Store, primary: &PrimaryInfo) -> Result<(), Ended> {
    let mut client = cluster.peer(&primary.peer_addr)?;
    let from = store.current_revision() + 1;
    let mut stream = client
        .follow(pb::FollowRequest {
            node_id: cluster.node_id().to_string(),
            from_revision: from,
        })
        .await?
        .into_inner();
    tracing::info!(primary = %primary.node_id, from, "following");
    let mut replacing = false;
    loop {
        let msg = match tokio::time::timeout(IDLE, stream.message()).await {
            Err(_) => return Err(Ended::Idle),
            Ok(Err(e)) => return Err(Ended::Peer(e)),
            Ok(Ok(None)) => return Err(Ended::Closed),
            Ok(Ok(Some(msg))) => msg,
        };
        if msg.epoch < primary.epoch {
            return Err(Ended::StaleEpoch {
                got: msg.epoch,
                known: primary.epoch,
            });
        }
        if msg.replace_through > 0 {
            // The whole copy of the Primary (this node was behind its compaction revision).
            if !replacing {
                tracing::info!(
                    through = msg.replace_through,
                    "replacing the local copy with the primary's"
                );
                store.replace_begin().await?;
                replacing = true;
            }
            if !msg.records.is_empty() {
                store
                    .import(msg.records.into_iter().map(from_proto).collect())
                    .await?;
            }
            if msg.committed_revision == msg.replace_through {
                store.replace_commit(msg.compaction_revision).await?;
                replacing = false;
            }
            continue;
        }
        if replacing {
            return Err(Ended::IncompleteCopy);
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
                    return Err(Ended::Gap {
                        got: first.revision,
                        head,
                    });
                }
                store.import(records).await?;
            }
        }
        if msg.compaction_revision > store.compact_revision()
            && msg.compaction_revision <= store.current_revision()
        {
            match store.compact(msg.compaction_revision, false).await {
                Ok(_) | Err(store::Error::Compacted) => {}
                Err(e) => return Err(Ended::Store(e)),
            }
        }
    }
}
