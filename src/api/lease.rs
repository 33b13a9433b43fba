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
use crate::proto::ForwardMethod;
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

    /// On a Replica, the Primary's answer (with this node's header); None on the Primary.
    async fn forwarded<Resp: prost::Message + Default + WithHeader>(
        &self,
        method: ForwardMethod,
        req: &impl prost::Message,
    ) -> Result<Option<Resp>, Status> {
        match self.ctx.cluster.route::<Resp>(method, req).await? {
            None => Ok(None),
            Some(mut resp) => {
                let rev = resp.revision();
                if rev > 0 {
                    self.ctx.cluster.wait_applied(rev).await?;
                }
                resp.set_header(self.ctx.header(rev));
                Ok(Some(resp))
            }
        }
    }
}

/// One keep-alive on the Primary: the lease's new TTL (0 = unknown lease).
pub fn keep_alive_once(ctx: &Context, id: i64) -> PbLeaseKeepAliveResponse {
    let ttl = ctx.store.leases().renew(id).unwrap_or(0);
    let rev = ctx.store.current_revision();
    PbLeaseKeepAliveResponse {
        header: Some(ctx.header(rev)),
        id,
        ttl,
    }
}

/// Responses whose header is replaced with this node's.
trait WithHeader {
    fn revision(&self) -> i64;
    fn set_header(&mut self, h: etcd_client::proto::PbResponseHeader);
}

macro_rules! with_header {
    ($($t:ty),*) => {$(
        impl WithHeader for $t {
            fn revision(&self) -> i64 {
                self.header.as_ref().map_or(0, |h| h.revision)
            }
            fn set_header(&mut self, h: etcd_client::proto::PbResponseHeader) {
                self.header = Some(h);
            }
        }
    )*};
}

with_header!(
    PbLeaseGrantResponse,
    PbLeaseRevokeResponse,
    PbLeaseTimeToLiveResponse,
    PbLeaseLeasesResponse
);

#[tonic::async_trait]
impl PbLeaseService for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<PbLeaseGrantRequest>,
    ) -> Result<Response<PbLeaseGrantResponse>, Status> {
        let _t = self.ctx.metrics.rpc("LeaseGrant");
        let req = request.into_inner();
        if let Some(resp) = self
            .forwarded::<PbLeaseGrantResponse>(ForwardMethod::ForwardLeaseGrant, &req)
            .await?
        {
            return Ok(Response::new(resp));
        }
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
        let req = request.into_inner();
        if let Some(resp) = self
            .forwarded::<PbLeaseRevokeResponse>(ForwardMethod::ForwardLeaseRevoke, &req)
            .await?
        {
            return Ok(Response::new(resp));
        }
        let rev = self.ctx.store.lease_revoke(req.id).await?;
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
                        match ctx.cluster.route::<PbLeaseKeepAliveResponse>(ForwardMethod::ForwardLeaseKeepAlive, &req).await {
                            Ok(Some(mut resp)) => {
                                let rev = resp.header.as_ref().map(|h| h.revision).unwrap_or_default();
                                resp.header = Some(ctx.header(rev));
                                yield Ok(resp);
                            }
                            Ok(None) => yield Ok(keep_alive_once(&ctx, req.id)),
                            Err(status) => {
                                yield Err(status);
                                break;
                            }
                        }
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
        if let Some(resp) = self
            .forwarded::<PbLeaseTimeToLiveResponse>(ForwardMethod::ForwardLeaseTimeToLive, &req)
            .await?
        {
            return Ok(Response::new(resp));
        }
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
        request: Request<PbLeaseLeasesRequest>,
    ) -> Result<Response<PbLeaseLeasesResponse>, Status> {
        let _t = self.ctx.metrics.rpc("LeaseLeases");
        let req = request.into_inner();
        if let Some(resp) = self
            .forwarded::<PbLeaseLeasesResponse>(ForwardMethod::ForwardLeaseLeases, &req)
            .await?
        {
            return Ok(Response::new(resp));
        }
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
