//! What the Primary runs itself: the writes and lease operations on its own store. The api
//! services call these after validation once the router says "here"; the peer service calls
//! [`execute`] for a request a Replica forwarded (validated, ready-checked and counted once, on
//! the node that received it).

use std::time::Instant;

use etcd_client::proto::{
    PbCompactionRequest, PbCompactionResponse, PbLeaseGrantRequest, PbLeaseGrantResponse,
    PbLeaseKeepAliveRequest, PbLeaseKeepAliveResponse, PbLeaseLeasesRequest, PbLeaseLeasesResponse,
    PbLeaseRevokeRequest, PbLeaseRevokeResponse, PbLeaseStatus, PbLeaseTimeToLiveRequest,
    PbLeaseTimeToLiveResponse, PbTxnOpResponse, PbTxnRequest, PbTxnResponse,
};
use prost::Message;
use tonic::Status;

use super::Context;
use super::status::RequestError;
use crate::proto::ForwardMethod;

/// Whether a transaction's answer shows a write: a put, a delete of at least one key, or a
/// nested transaction that wrote.
fn wrote(resp: &PbTxnResponse) -> bool {
    resp.responses.iter().any(|r| match &r.response {
        Some(PbTxnOpResponse::ResponsePut(_)) => true,
        Some(PbTxnOpResponse::ResponseDeleteRange(d)) => d.deleted > 0,
        Some(PbTxnOpResponse::ResponseTxn(t)) => wrote(t),
        Some(PbTxnOpResponse::ResponseRange(_)) | None => false,
    })
}

/// etcd's minimum TTL with default election settings: ceil(1.5 × 10 × 100 ms) = 2 s.
pub(crate) const MIN_TTL: i64 = 2;
/// etcd's MaxLeaseTTL.
pub(crate) const MAX_TTL: i64 = 9_000_000_000;

/// Runs a forwarded request (encoded as `method`) and encodes the answer.
pub(crate) async fn execute(
    ctx: &Context,
    method: ForwardMethod,
    req: &[u8],
) -> Result<Vec<u8>, Status> {
    use ForwardMethod as M;
    Ok(match method {
        M::ForwardTxn => txn(ctx, decode(req)?).await?.encode_to_vec(),
        M::ForwardCompact => compact(ctx, decode(req)?).await?.encode_to_vec(),
        M::ForwardLeaseGrant => lease_grant(ctx, decode(req)?).await?.encode_to_vec(),
        M::ForwardLeaseRevoke => lease_revoke(ctx, decode(req)?).await?.encode_to_vec(),
        M::ForwardLeaseTimeToLive => lease_time_to_live(ctx, decode(req)?).encode_to_vec(),
        M::ForwardLeaseLeases => {
            lease_leases(ctx, decode::<PbLeaseLeasesRequest>(req)?).encode_to_vec()
        }
        M::ForwardLeaseKeepAlive => {
            keep_alive(ctx, decode::<PbLeaseKeepAliveRequest>(req)?.id).encode_to_vec()
        }
        M::ForwardPut | M::ForwardDeleteRange | M::ForwardUnknown => {
            return Err(Status::invalid_argument(format!(
                "netsy: cannot forward method {}",
                method as i32
            )));
        }
    })
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, Status> {
    M::decode(bytes)
        .map_err(|e| Status::invalid_argument(format!("netsy: bad forwarded request: {e}")))
}

/// A write (Put and DeleteRange are one-op Txns).
pub(crate) async fn txn(ctx: &Context, req: PbTxnRequest) -> Result<PbTxnResponse, Status> {
    let mut resp = ctx.store.txn(req).await?;
    // A transaction that wrote nothing (a failed compare, a delete of no key) never reached the
    // bucket, whose upload is what proves a write's lease: its answer is a read of this copy,
    // given only while the lease still holds, as for a linearizable read. A writer paused past
    // its lease and resumed would otherwise answer from a copy its successor has moved past.
    if !wrote(&resp) && !ctx.router.lease_holds() {
        return Err(super::status::leader_changed());
    }
    let rev = resp.header.as_ref().map_or(0, |h| h.revision);
    resp.header = Some(ctx.header(rev));
    Ok(resp)
}

pub(crate) async fn compact(
    ctx: &Context,
    req: PbCompactionRequest,
) -> Result<PbCompactionResponse, Status> {
    let rev = ctx.store.compact(req.revision, req.physical).await?;
    Ok(PbCompactionResponse {
        header: Some(ctx.header(rev)),
    })
}

pub(crate) async fn lease_grant(
    ctx: &Context,
    req: PbLeaseGrantRequest,
) -> Result<PbLeaseGrantResponse, Status> {
    if req.ttl > MAX_TTL {
        return Err(RequestError::LeaseTtlTooLarge.into());
    }
    let ttl = req.ttl.max(MIN_TTL);
    let mut id = req.id;
    if id == 0 {
        // A random positive id not in use.
        loop {
            id = (rand::random::<u64>() >> 1) as i64;
            if id != 0 && !ctx.store.leases().exists(id) {
                break;
            }
        }
    }
    let rev = ctx.store.lease_grant(id, ttl).await?;
    Ok(PbLeaseGrantResponse {
        header: Some(ctx.header(rev)),
        id,
        ttl,
        error: String::new(),
    })
}

pub(crate) async fn lease_revoke(
    ctx: &Context,
    req: PbLeaseRevokeRequest,
) -> Result<PbLeaseRevokeResponse, Status> {
    let rev = ctx.store.lease_revoke(req.id).await?;
    Ok(PbLeaseRevokeResponse {
        header: Some(ctx.header(rev)),
    })
}

pub(crate) fn lease_time_to_live(
    ctx: &Context,
    req: PbLeaseTimeToLiveRequest,
) -> PbLeaseTimeToLiveResponse {
    let rev = ctx.store.current_revision();
    let Some(info) = ctx.store.leases().get(req.id) else {
        return PbLeaseTimeToLiveResponse {
            header: Some(ctx.header(rev)),
            id: req.id,
            ttl: -1,
            granted_ttl: 0,
            keys: Vec::new(),
        };
    };
    PbLeaseTimeToLiveResponse {
        header: Some(ctx.header(rev)),
        id: req.id,
        ttl: info.remaining_secs(Instant::now()),
        granted_ttl: info.ttl,
        keys: if req.keys {
            info.keys.into_iter().collect()
        } else {
            Vec::new()
        },
    }
}

pub(crate) fn lease_leases(ctx: &Context, _req: PbLeaseLeasesRequest) -> PbLeaseLeasesResponse {
    let rev = ctx.store.current_revision();
    let leases = ctx
        .store
        .leases()
        .ids()
        .into_iter()
        .map(|id| PbLeaseStatus { id })
        .collect();
    PbLeaseLeasesResponse {
        header: Some(ctx.header(rev)),
        leases,
    }
}

/// One keep-alive: the lease's new TTL (0 = unknown lease).
pub(crate) fn keep_alive(ctx: &Context, id: i64) -> PbLeaseKeepAliveResponse {
    let ttl = ctx.store.leases().renew(id).unwrap_or(0);
    let rev = ctx.store.current_revision();
    PbLeaseKeepAliveResponse {
        header: Some(ctx.header(rev)),
        id,
        ttl,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use etcd_client::proto::{
        PbCompare, PbDeleteRequest, PbMember, PbPutRequest, PbRangeRequest, PbTargetUnion,
        PbTxnOpRequest, PbTxnRequest, PbTxnRequestOp,
    };

    use super::*;
    use crate::api::{ApiOptions, Leader, Member, Router};

    /// A writer whose lease has run out (paused past it, say) and that has not noticed yet.
    struct Deposed;

    #[tonic::async_trait]
    impl Router for Deposed {
        async fn route(
            &self,
            _: ForwardMethod,
            _: &(dyn Fn() -> Vec<u8> + Send + Sync),
        ) -> Result<Option<Vec<u8>>, Status> {
            Ok(None)
        }
        async fn wait_applied(&self, _: i64) -> Result<(), Status> {
            Ok(())
        }
        async fn read_barrier(&self) -> Result<(), Status> {
            Err(crate::api::status::leader_changed())
        }
        fn lease_holds(&self) -> bool {
            false
        }
        fn term(&self) -> u64 {
            1
        }
        fn leader(&self) -> Leader {
            Leader::ThisNode
        }
        async fn members(&self) -> Vec<PbMember> {
            Vec::new()
        }
    }

    fn op(request: PbTxnOpRequest) -> PbTxnRequestOp {
        PbTxnRequestOp {
            request: Some(request),
        }
    }

    /// A transaction that wrote nothing is a read of the local copy: a writer whose lease ran
    /// out must not answer it (the pause-primary nemesis found a failed compare answered at a
    /// revision the successor had moved past). One that wrote was fenced by its upload.
    #[tokio::test]
    async fn a_deposed_writer_answers_no_transaction_that_wrote_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::testutil::local_store(dir.path());
        let ctx = Context {
            store: store.clone(),
            hub: crate::watch::WatchHub::new(Default::default()),
            member: Arc::new(Member {
                cluster_id: 1,
                member_id: 1,
                name: "a".into(),
                client_urls: Vec::new(),
                peer_urls: Vec::new(),
            }),
            options: Arc::new(ApiOptions {
                max_request_bytes: 1 << 20,
                progress_notify_interval: std::time::Duration::from_secs(600),
            }),
            metrics: crate::metrics::Metrics::new("a", "c"),
            serving: Arc::new(AtomicBool::new(true)),
            router: Arc::new(Deposed),
        };
        let put = |key: &str| {
            op(PbTxnOpRequest::RequestPut(PbPutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                ..Default::default()
            }))
        };
        // Written (a store without a bucket here; in a node the upload checks the lease).
        let wrote = txn(
            &ctx,
            PbTxnRequest {
                success: vec![put("k")],
                ..Default::default()
            },
        )
        .await
        .expect("a write is answered");
        assert!(wrote.succeeded);
        // A failed compare: the else branch reads.
        let failed_compare = PbTxnRequest {
            compare: vec![PbCompare {
                key: b"k".to_vec(),
                target: 2, // MOD
                result: 0, // EQUAL
                target_union: Some(PbTargetUnion::ModRevision(999)),
                ..Default::default()
            }],
            success: vec![put("k")],
            failure: vec![op(PbTxnOpRequest::RequestRange(PbRangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            }))],
        };
        let err = txn(&ctx, failed_compare).await.unwrap_err();
        assert_eq!(err.message(), "etcdserver: leader changed");
        // A delete of no key.
        let none = PbTxnRequest {
            success: vec![op(PbTxnOpRequest::RequestDeleteRange(PbDeleteRequest {
                key: b"absent".to_vec(),
                ..Default::default()
            }))],
            ..Default::default()
        };
        let err = txn(&ctx, none).await.unwrap_err();
        assert_eq!(err.message(), "etcdserver: leader changed");
    }
}
