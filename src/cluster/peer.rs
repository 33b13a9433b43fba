//! The peer service (peer port): the Primary's replication feed (Follow), forwarded etcd
//! requests, and the read index.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::proto::{
    PbCompactionRequest, PbKvService, PbLeaseGrantRequest, PbLeaseKeepAliveRequest,
    PbLeaseLeasesRequest, PbLeaseRevokeRequest, PbLeaseService, PbLeaseTimeToLiveRequest,
    PbTxnRequest,
};
use futures::Stream;
use prost::Message;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use super::{Cluster, Role};
use crate::api::{self, Context};
use crate::durability::to_proto;
use crate::proto as pb;
use crate::store::Store;

/// Records per history message of a Follow stream.
const HISTORY_BATCH: i64 = 2000;
/// An idle Follow stream still carries a message this often (the committed revision).
const IDLE_TICK: Duration = Duration::from_secs(1);

pub struct PeerService {
    ctx: Context,
    kv: api::kv::KvService,
    lease: api::lease::LeaseService,
}

impl PeerService {
    pub fn new(ctx: Context) -> Self {
        PeerService {
            kv: api::kv::KvService::new(ctx.clone()),
            lease: api::lease::LeaseService::new(ctx.clone()),
            ctx,
        }
    }

    fn epoch(&self) -> Result<u64, Status> {
        match self.ctx.cluster.role() {
            Role::Primary { epoch } => Ok(epoch),
            _ => Err(Status::failed_precondition(
                "netsy: this node is not the primary",
            )),
        }
    }
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, Status> {
    M::decode(bytes)
        .map_err(|e| Status::invalid_argument(format!("netsy: bad forwarded request: {e}")))
}

/// Records with revisions in `from..=to` from the local copy, in order.
async fn history(store: &Store, from: i64, to: i64) -> Result<Vec<pb::Record>, Status> {
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

    async fn follow(
        &self,
        request: Request<pb::FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let epoch = self.epoch()?;
        let req = request.into_inner();
        tracing::info!(replica = %req.node_id, from = req.from_revision, "follow_stream_opened");
        // Subscribe before reading history, so nothing committed in between is missed.
        let mut live = self.ctx.cluster.feed().subscribe();
        let mut roles = self.ctx.cluster.subscribe_role();
        let store = self.ctx.store.clone();
        let mut next = req.from_revision.max(1);
        let out = async_stream::try_stream! {
            let mut tick = tokio::time::interval(IDLE_TICK);
            loop {
                // Whatever the local copy has beyond what was sent: history, or the whole copy
                // when compaction has freed part of the history the Replica needs.
                let head = store.current_revision();
                while next <= head {
                    if next < store.compact_revision() {
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
                    };
                    next = to + 1;
                }
                tokio::select! {
                    msg = live.recv() => match msg {
                        Ok(msg) => {
                            let first = msg.records.first().map_or(i64::MAX, |r| r.revision);
                            if msg.records.is_empty() {
                                yield pb::FollowMessage {
                                    epoch,
                                    records: Vec::new(),
                                    committed_revision: next - 1,
                                    compaction_revision: msg.compaction_revision,
                                    replace_through: 0,
                                };
                            } else if first == next {
                                next = msg.committed_revision + 1;
                                yield pb::FollowMessage { epoch, ..(*msg).clone() };
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
        use pb::ForwardMethod as M;
        let method = M::try_from(req.method).unwrap_or(M::ForwardUnknown);
        let bytes = req.request.as_slice();
        let response = match method {
            M::ForwardTxn => self
                .kv
                .txn(Request::new(decode::<PbTxnRequest>(bytes)?))
                .await?
                .into_inner()
                .encode_to_vec(),
            M::ForwardCompact => self
                .kv
                .compact(Request::new(decode::<PbCompactionRequest>(bytes)?))
                .await?
                .into_inner()
                .encode_to_vec(),
            M::ForwardLeaseGrant => self
                .lease
                .lease_grant(Request::new(decode::<PbLeaseGrantRequest>(bytes)?))
                .await?
                .into_inner()
                .encode_to_vec(),
            M::ForwardLeaseRevoke => self
                .lease
                .lease_revoke(Request::new(decode::<PbLeaseRevokeRequest>(bytes)?))
                .await?
                .into_inner()
                .encode_to_vec(),
            M::ForwardLeaseTimeToLive => self
                .lease
                .lease_time_to_live(Request::new(decode::<PbLeaseTimeToLiveRequest>(bytes)?))
                .await?
                .into_inner()
                .encode_to_vec(),
            M::ForwardLeaseLeases => self
                .lease
                .lease_leases(Request::new(decode::<PbLeaseLeasesRequest>(bytes)?))
                .await?
                .into_inner()
                .encode_to_vec(),
            M::ForwardLeaseKeepAlive => {
                let ka = decode::<PbLeaseKeepAliveRequest>(bytes)?;
                api::lease::keep_alive_once(&self.ctx, ka.id).encode_to_vec()
            }
            M::ForwardPut | M::ForwardDeleteRange | M::ForwardUnknown => {
                return Err(Status::invalid_argument(format!(
                    "netsy: cannot forward method {}",
                    req.method
                )));
            }
        };
        Ok(Response::new(pb::ForwardResponse { response }))
    }

    async fn read_index(
        &self,
        _request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let epoch = self.epoch()?;
        if !self.ctx.cluster.primary_lease_holds() {
            return Err(crate::cluster::leader_changed());
        }
        Ok(Response::new(pb::ReadIndexResponse {
            epoch,
            revision: self.ctx.store.current_revision(),
        }))
    }
}

/// The commit-hook side of the feed: what a Primary publishes after each local commit.
pub fn publish_records(cluster: &Cluster, records: &[crate::store::Record], revision: i64) {
    if cluster.feed().receiver_count() == 0 {
        return;
    }
    let msg = pb::FollowMessage {
        epoch: 0,
        records: records.iter().map(to_proto).collect(),
        committed_revision: revision,
        compaction_revision: 0,
        replace_through: 0,
    };
    let _ = cluster.feed().send(Arc::new(msg));
}

/// Publishes a compaction to the followers.
pub fn publish_compaction(cluster: &Cluster, revision: i64) {
    let msg = pb::FollowMessage {
        epoch: 0,
        records: Vec::new(),
        committed_revision: 0,
        compaction_revision: revision,
        replace_through: 0,
    };
    let _ = cluster.feed().send(Arc::new(msg));
}
