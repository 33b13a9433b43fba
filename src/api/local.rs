//! What the Primary runs itself: the writes and lease operations on its own store. The api
//! services call these after validation once the router says "here"; the peer service calls
//! [`execute`] for a request a Replica forwarded (validated, ready-checked and counted once, on
//! the node that received it).

use std::time::Instant;

use etcd_client::proto::{
    PbCompactionRequest, PbCompactionResponse, PbLeaseGrantRequest, PbLeaseGrantResponse,
    PbLeaseKeepAliveRequest, PbLeaseKeepAliveResponse, PbLeaseLeasesRequest, PbLeaseLeasesResponse,
    PbLeaseRevokeRequest, PbLeaseRevokeResponse, PbLeaseStatus, PbLeaseTimeToLiveRequest,
    PbLeaseTimeToLiveResponse, PbTxnRequest, PbTxnResponse,
};
use prost::Message;
use tonic::Status;

use super::Context;
use super::status::RequestError;
use crate::proto::ForwardMethod;

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
