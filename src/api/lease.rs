//! etcd Lease service. Expiry (revoking leases whose TTL ran out, deleting their keys in one
//! revision as etcd does) runs on the Primary: `store::retention::expiry_loop`.

use std::pin::Pin;

use etcd_client::proto::{
    PbLeaseGrantRequest, PbLeaseGrantResponse, PbLeaseKeepAliveRequest, PbLeaseKeepAliveResponse,
    PbLeaseLeasesRequest, PbLeaseLeasesResponse, PbLeaseRevokeRequest, PbLeaseRevokeResponse,
    PbLeaseService, PbLeaseTimeToLiveRequest, PbLeaseTimeToLiveResponse,
};
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::Context;
use crate::proto::ForwardMethod;

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
        match super::router::route::<Resp>(&self.ctx.router, method, req).await? {
            None => Ok(None),
            Some(mut resp) => {
                let rev = resp.revision();
                if rev > 0 {
                    self.ctx.router.wait_applied(rev).await?;
                }
                resp.set_header(self.ctx.header(rev));
                Ok(Some(resp))
            }
        }
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
        Ok(Response::new(
            super::local::lease_grant(&self.ctx, req).await?,
        ))
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
        Ok(Response::new(
            super::local::lease_revoke(&self.ctx, req).await?,
        ))
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
                        match super::router::route::<PbLeaseKeepAliveResponse>(&ctx.router, ForwardMethod::ForwardLeaseKeepAlive, &req).await {
                            Ok(Some(mut resp)) => {
                                let rev = resp.header.as_ref().map(|h| h.revision).unwrap_or_default();
                                resp.header = Some(ctx.header(rev));
                                yield Ok(resp);
                            }
                            Ok(None) => yield Ok(super::local::keep_alive(&ctx, req.id)),
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
        Ok(Response::new(super::local::lease_time_to_live(
            &self.ctx, req,
        )))
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
        Ok(Response::new(super::local::lease_leases(&self.ctx, req)))
    }
}
