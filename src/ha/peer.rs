//! The peer service (peer port): the Primary's replication feed (Follow), forwarded etcd
//! requests, and the read index.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use super::{Cluster, Role};
use crate::api::{self, Context};
use crate::durability::{Fanout, to_proto};
use crate::proto as pb;
use crate::store::Store;

/// Records per history message of a Follow stream.
const HISTORY_BATCH: i64 = 2000;
/// An idle Follow stream still carries a message this often (the committed revision).
const IDLE_TICK: Duration = Duration::from_secs(1);

pub(crate) struct PeerService {
    ctx: Context,
    cluster: Cluster,
}

impl PeerService {
    pub(crate) fn new(ctx: Context, cluster: Cluster) -> Self {
        PeerService { ctx, cluster }
    }

    fn epoch(&self) -> Result<u64, Status> {
        match self.cluster.role() {
            Role::Primary { epoch } => Ok(epoch),
            _ => Err(super::not_primary()),
        }
    }
}

/// A digest of the local copy's records at `revision` (every record of it: a transaction is one
/// revision), over what every node holds alike (`compacted_at` is a node's own); `None` when
/// the copy has no record there. Never 0, which on the wire means "not sent".
pub(super) async fn head_digest(store: &Store, revision: i64) -> Result<Option<u64>, Status> {
    if revision < 1 {
        return Ok(None);
    }
    let records = history(store, revision, revision).await?;
    if records.is_empty() {
        return Ok(None);
    }
    let mut digest = crate::datafile::wire::crc64_digest();
    for mut r in records {
        r.compacted_at = None;
        r.replicated_at = None;
        r.crc = 0;
        digest.update(&prost::Message::encode_to_vec(&r));
    }
    Ok(Some(digest.finalize() | 1))
}

/// Records with revisions in `from..=to` from the local copy, in order.
pub(super) async fn history(store: &Store, from: i64, to: i64) -> Result<Vec<pb::Record>, Status> {
    store
        .export(
            from,
            to,
            Vec::new(),
            |v: &mut Vec<pb::Record>, n| {
                v.reserve(usize::try_from(n).unwrap_or(0));
                Ok(())
            },
            |v, r| {
                v.push(to_proto(&r));
                Ok(())
            },
        )
        .await
        .map_err(Status::from)
}

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    type FollowStream =
        Pin<Box<dyn Stream<Item = Result<pb::FollowMessage, Status>> + Send + 'static>>;
    type ForwardStreamStream =
        Pin<Box<dyn Stream<Item = Result<pb::ForwardAnswer, Status>> + Send + 'static>>;

    async fn follow(
        &self,
        request: Request<pb::FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let epoch = self.epoch()?;
        let req = request.into_inner();
        tracing::info!(replica = %req.node_id, from = req.from_revision, "follow_stream_opened");
        // Subscribe before reading history, so nothing committed in between is missed.
        let mut live = self.cluster.feed().subscribe();
        let mut roles = self.cluster.subscribe_role();
        let store = self.ctx.store.clone();
        let mut next = req.from_revision.max(1);
        // A Replica whose head is not this copy's record at that revision (a deposed writer's
        // chunk it loaded, say) gets the whole copy: history from there would build on records
        // that are not in the history. (Revision 1 is each node's own genesis record.)
        let mut diverged = false;
        if req.head_digest != 0 && next > 2 && next - 1 > store.compact_revision() {
            let ours = head_digest(&store, next - 1).await?;
            if ours != Some(req.head_digest) {
                tracing::warn!(replica = %req.node_id, head = next - 1, primary_head = store.current_revision(), "replica_diverged: its last record is not this copy's; sending the whole copy");
                diverged = true;
            }
        }
        let out = async_stream::try_stream! {
                    let mut tick = tokio::time::interval(IDLE_TICK);
                    loop {
                        // Whatever the local copy has beyond what was sent: history, or the whole copy
                        // when compaction has freed part of the history the Replica needs (or its
                        // copy diverged).
                        let head = store.current_revision();
                        while next <= head || diverged {
                            if next < store.compact_revision() || diverged {
                                diverged = false;
                                let (tx, mut rx) = tokio::sync::mpsc::channel(2);
                                let export = tokio::spawn({
                                    let store = store.clone();
                                    async move { store.stream_all(HISTORY_BATCH as usize, tx).await }
                                });
                                tracing::info!(replica = %req.node_id, from = next, compaction = store.compact_revision(), "replica_behind_compaction: sending the whole copy");
                                while let Some((through, compaction, batch)) = rx.recv().await {
                                    yield pb::FollowMessage {
                                        epoch,
                                        records: batch.iter().map(to_proto).collect(),
                                        committed_revision: 0,
                                        compaction_revision: compaction,
                                        replace_through: through,
                                        commit_index: 0,
        durable_revision: 0,
                                    };
                                }
                                let (through, compaction) = export
                                    .await
                                    .map_err(|e| Status::internal(format!("export task: {e}")))?
                                    .map_err(Status::from)?;
                                yield pb::FollowMessage {
                                    epoch,
                                    records: Vec::new(),
                                    committed_revision: through,
                                    compaction_revision: compaction,
                                    replace_through: through,
                                    commit_index: 0,
        durable_revision: 0,
                                };
                                next = through + 1;
                                continue;
                            }
                            let to = (next + HISTORY_BATCH - 1).min(head);
                            let records = history(&store, next, to).await?;
                            if next < store.compact_revision() {
                                // Compaction moved past this batch while it was read: rows of it may
                                // be missing. Send the whole copy instead.
                                continue;
                            }
                            yield pb::FollowMessage {
                                epoch,
                                records,
                                committed_revision: to,
                                compaction_revision: store.compact_revision(),
                                replace_through: 0,
                                commit_index: 0,
        durable_revision: 0,
                            };
                            next = to + 1;
                        }
                        tokio::select! {
                            msg = live.recv() => match msg {
                                Ok(msg) => {
                                    let first = msg.records.first().map_or(i64::MAX, |r| r.revision);
                                    if !msg.records.is_empty() && first == next {
                                        next = msg.committed_revision + 1;
                                        yield pb::FollowMessage { epoch, ..(*msg).clone() };
                                    } else if msg.records.is_empty() || (first < next && msg.commit_index > 0) {
                                        // Nothing new to send but the compaction revision and, in quorum
                                        // mode, the commit index (records sent as pending that then went
                                        // to the bucket come back here committed).
                                        yield pb::FollowMessage {
                                            epoch,
                                            records: Vec::new(),
                                            committed_revision: next - 1,
                                            compaction_revision: msg.compaction_revision,
                                            replace_through: 0,
                                            commit_index: msg.commit_index,
        durable_revision: msg.durable_revision,
                                        };
                                    }
                                    // Older: already sent as history. Newer: a gap, read as history.
                                }
                                Err(RecvError::Lagged(_)) => {}
                                Err(RecvError::Closed) => break,
                            },
                            _ = tick.tick() => {
                                if next > store.current_revision() {
                                    yield pb::FollowMessage {
                                        epoch,
                                        records: Vec::new(),
                                        committed_revision: next - 1,
                                        compaction_revision: store.compact_revision(),
                                        replace_through: 0,
                                        commit_index: 0,
        durable_revision: 0,
                                    };
                                }
                            }
                            _ = roles.changed() => {
                                if !matches!(*roles.borrow(), Role::Primary { .. }) {
                                    break;
                                }
                            }
                        }
                    }
                };
        Ok(Response::new(Box::pin(out)))
    }

    async fn forward(
        &self,
        request: Request<pb::ForwardRequest>,
    ) -> Result<Response<pb::ForwardResponse>, Status> {
        self.epoch()?;
        let req = request.into_inner();
        let method =
            pb::ForwardMethod::try_from(req.method).unwrap_or(pb::ForwardMethod::ForwardUnknown);
        let response = api::local::execute(&self.ctx, method, &req.request).await?;
        Ok(Response::new(pb::ForwardResponse { response }))
    }

    async fn forward_stream(
        &self,
        request: Request<tonic::Streaming<pb::ForwardRequest>>,
    ) -> Result<Response<Self::ForwardStreamStream>, Status> {
        self.epoch()?;
        let mut requests = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (ctx, cluster) = (self.ctx.clone(), self.cluster.clone());
        tokio::spawn(async move {
            // Each request runs on its own task, as a unary call would: one that waits for the
            // writer does not hold up the others. The answers stream ends once the Replica
            // closed its side and every answer is sent.
            while let Ok(Some(req)) = requests.message().await {
                let (ctx, cluster, tx) = (ctx.clone(), cluster.clone(), tx.clone());
                tokio::spawn(async move {
                    let answer = match cluster.role() {
                        Role::Primary { .. } => {
                            let method = pb::ForwardMethod::try_from(req.method)
                                .unwrap_or(pb::ForwardMethod::ForwardUnknown);
                            match api::local::execute(&ctx, method, &req.request).await {
                                Ok(response) => pb::ForwardAnswer {
                                    id: req.id,
                                    response,
                                    ..Default::default()
                                },
                                Err(s) => super::forward::failed_answer(req.id, &s),
                            }
                        }
                        _ => super::forward::failed_answer(req.id, &super::not_primary()),
                    };
                    let _ = tx.send(Ok(answer));
                });
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }

    async fn receipt(
        &self,
        request: Request<pb::ReceiptRequest>,
    ) -> Result<Response<pb::ReceiptResponse>, Status> {
        self.epoch()?;
        let req = request.into_inner();
        self.cluster
            .receipts()
            .record(&req.node_id, req.epoch, req.revision);
        Ok(Response::new(pb::ReceiptResponse {}))
    }

    async fn receipts(
        &self,
        request: Request<tonic::Streaming<pb::ReceiptRequest>>,
    ) -> Result<Response<pb::ReceiptResponse>, Status> {
        self.epoch()?;
        let mut stream = request.into_inner();
        while let Some(req) = stream.message().await? {
            // Recorded against whichever term is current: a receipt names its epoch, and a
            // term counts only its own.
            self.cluster
                .receipts()
                .record(&req.node_id, req.epoch, req.revision);
        }
        Ok(Response::new(pb::ReceiptResponse {}))
    }

    async fn collect(
        &self,
        request: Request<pb::CollectRequest>,
    ) -> Result<Response<pb::CollectResponse>, Status> {
        let req = request.into_inner();
        let Some(pending) = self.cluster.pending() else {
            return Err(Status::unavailable(
                "netsy: this node has no pending log yet",
            ));
        };
        tracing::info!(collector = %req.node_id, epoch = req.epoch, from = req.from_revision, "collect: promising the epoch");
        let answer = super::quorum::answer(
            &self.ctx.store,
            pending,
            self.cluster.followed_epoch(),
            req.epoch,
            req.from_revision,
        )
        .await?;
        Ok(Response::new(answer))
    }

    async fn read_index(
        &self,
        _request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let epoch = self.epoch()?;
        if !self.cluster.primary_lease_holds() {
            return Err(api::status::leader_changed());
        }
        Ok(Response::new(pb::ReadIndexResponse {
            epoch,
            revision: self.ctx.store.current_revision(),
        }))
    }
}

/// The commit-hook side of the feed: what a Primary publishes after each local commit.
impl Fanout for Cluster {
    fn records(&self, records: &[crate::store::Record], revision: i64) {
        if self.feed().receiver_count() == 0 {
            return;
        }
        let msg = pb::FollowMessage {
            epoch: 0,
            records: records.iter().map(to_proto).collect(),
            committed_revision: revision,
            compaction_revision: 0,
            replace_through: 0,
            commit_index: 0,
            durable_revision: 0,
        };
        let _ = self.feed().send(Arc::new(msg));
    }

    fn compaction(&self, revision: i64) {
        let msg = pb::FollowMessage {
            epoch: 0,
            records: Vec::new(),
            committed_revision: 0,
            compaction_revision: revision,
            replace_through: 0,
            commit_index: 0,
            durable_revision: 0,
        };
        let _ = self.feed().send(Arc::new(msg));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durability::from_proto;
    use crate::testutil::{created, local_store};

    /// Two copies agree on a revision's digest exactly when they hold the same records there.
    #[tokio::test]
    async fn the_head_digest_tells_copies_apart_at_one_revision() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (local_store(da.path()), local_store(db.path()));
        let head = a.current_revision();
        assert_eq!(head, b.current_revision());
        let same = created(head + 1, "v");
        a.import(vec![from_proto(same.clone())]).await.unwrap();
        b.import(vec![from_proto(same)]).await.unwrap();
        let (ha, hb) = (
            head_digest(&a, head + 1).await.unwrap(),
            head_digest(&b, head + 1).await.unwrap(),
        );
        assert!(ha.is_some_and(|d| d != 0));
        assert_eq!(ha, hb);
        // The same key and value from another writer is another record.
        a.import(vec![from_proto(created(head + 2, "w"))])
            .await
            .unwrap();
        let mut other = created(head + 2, "w");
        other.leader_id = "another-writer".into();
        b.import(vec![from_proto(other)]).await.unwrap();
        assert_ne!(
            head_digest(&a, head + 2).await.unwrap(),
            head_digest(&b, head + 2).await.unwrap()
        );
        // A revision the copy does not have has no digest.
        assert_eq!(head_digest(&a, head + 3).await.unwrap(), None);
        assert_eq!(head_digest(&a, 0).await.unwrap(), None);
    }
}
