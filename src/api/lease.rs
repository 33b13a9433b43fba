//! etcd Lease service, and the expiry loop that revokes leases whose TTL ran out (deleting their
//! keys in one revision, as etcd does; Kubernetes Events rely on it).

use std::pin::Pin;
use std::time::{Duration, Instant};

use etcd_client::proto::{
    PbLeaseGrantRequest, PbLeaseGrantResponse, PbLeaseKeepAliveRequest, PbLeaseKeepAliveResponse,
    PbLeaseLeasesRequest, PbLeaseLeasesResponse, PbLeaseRevokeRequest, PbLeaseRevokeResponse,
    PbLeaseService, PbLeaseStatus, PbLeaseTimeToLiveRequest, PbLeaseTimeToLiveResponse,
};
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::Context;
use super::status::RequestError;
use crate::store;

/// etcd's minimum TTL with default election settings: ceil(1.5 × 10 × 100 ms) = 2 s.
pub const MIN_TTL: i64 = 2;
/// etcd's MaxLeaseTTL.
pub const MAX_TTL: i64 = 9_000_000_000;

pub struct LeaseService {
    ctx: Context,
}

impl LeaseService {
    pub fn new(ctx: Context) -> Self {
        LeaseService { ctx }
    }
}

#[tonic::async_trait]
impl PbLeaseService for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<PbLeaseGrantRequest>,
    ) -> Result<Response<PbLeaseGrantResponse>, Status> {
        let _t = self.ctx.metrics.rpc("LeaseGrant");
        let req = request.into_inner();
        if req.ttl > MAX_TTL {
            return Err(RequestError::LeaseTtlTooLarge.into());
        }
        let ttl = req.ttl.max(MIN_TTL);
        let mut id = req.id;
        if id == 0 {
            // A random positive id not in use.
            loop {
                id = (rand::random::<u64>() >> 1) as i64;
                if id != 0 && !self.ctx.store.leases().exists(id) {
                    break;
                }
            }
        }
        let rev = self.ctx.store.lease_grant(id, ttl).await?;
        Ok(Response::new(PbLeaseGrantResponse {
            header: Some(self.ctx.header(rev)),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<PbLeaseRevokeRequest>,
    ) -> Result<Response<PbLeaseRevokeResponse>, Status> {
        let _t = self.ctx.metrics.rpc("LeaseRevoke");
        let rev = self.ctx.store.lease_revoke(request.into_inner().id).await?;
        Ok(Response::new(PbLeaseRevokeResponse {
            header: Some(self.ctx.header(rev)),
        }))
    }

    type LeaseKeepAliveStream =
        Pin<Box<dyn Stream<Item = Result<PbLeaseKeepAliveResponse, Status>> + Send + 'static>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<PbLeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = request.into_inner();
        let ctx = self.ctx.clone();
        let out = async_stream::stream! {
            loop {
                match inbound.message().await {
                    Ok(Some(req)) => {
                        let ttl = ctx.store.leases().renew(req.id).unwrap_or(0);
                        let rev = ctx.store.current_revision();
                        yield Ok(PbLeaseKeepAliveResponse { header: Some(ctx.header(rev)), id: req.id, ttl });
                    }
                    Ok(None) => break,
                    Err(status) => {
                        yield Err(status);
                        break;
                    }
                }
            }
        };
        Ok(Response::new(Box::pin(out)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<PbLeaseTimeToLiveRequest>,
    ) -> Result<Response<PbLeaseTimeToLiveResponse>, Status> {
        let _t = self.ctx.metrics.rpc("LeaseTimeToLive");
        let req = request.into_inner();
        let rev = self.ctx.store.current_revision();
        let Some(info) = self.ctx.store.leases().get(req.id) else {
            return Ok(Response::new(PbLeaseTimeToLiveResponse {
                header: Some(self.ctx.header(rev)),
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            }));
        };
        Ok(Response::new(PbLeaseTimeToLiveResponse {
            header: Some(self.ctx.header(rev)),
            id: req.id,
            ttl: info.remaining_secs(Instant::now()),
            granted_ttl: info.ttl,
            keys: if req.keys {
                info.keys.into_iter().collect()
            } else {
                Vec::new()
            },
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<PbLeaseLeasesRequest>,
    ) -> Result<Response<PbLeaseLeasesResponse>, Status> {
        let _t = self.ctx.metrics.rpc("LeaseLeases");
        let rev = self.ctx.store.current_revision();
        let leases = self
            .ctx
            .store
            .leases()
            .ids()
            .into_iter()
            .map(|id| PbLeaseStatus { id })
            .collect();
        Ok(Response::new(PbLeaseLeasesResponse {
            header: Some(self.ctx.header(rev)),
            leases,
        }))
    }
}

/// Revokes expired leases every 500 ms (etcd's check interval) until `shutdown` fires.
pub async fn expiry_loop(store: store::Store, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        for id in store.leases().expired(Instant::now()) {
            match store.lease_revoke(id).await {
                Ok(rev) => tracing::info!(lease = id, revision = rev, "lease_expired"),
                Err(store::Error::LeaseNotFound) => {}
                Err(e) => {
                    tracing::warn!(lease = id, error = %e, "revoking an expired lease failed; will retry")
                }
            }
        }
    }
}
