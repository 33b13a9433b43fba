//! etcd Maintenance service: Status, Alarm, Defragment and HashKV; the others answer
//! Unimplemented.

use std::pin::Pin;

use etcd_client::proto::{
    PbAlarmRequest, PbAlarmResponse, PbDefragmentRequest, PbDefragmentResponse, PbDowngradeRequest,
    PbDowngradeResponse, PbHashKvRequest, PbHashKvResponse, PbHashRequest, PbHashResponse,
    PbMaintenanceService, PbMoveLeaderRequest, PbMoveLeaderResponse, PbSnapshotRequest,
    PbSnapshotResponse, PbStatusRequest, PbStatusResponse,
};
use futures::Stream;
use tonic::{Request, Response, Status};

use super::status::unimplemented;
use super::{Context, ETCD_VERSION};

pub(crate) struct MaintenanceService {
    ctx: Context,
}

impl MaintenanceService {
    pub(crate) fn new(ctx: Context) -> Self {
        MaintenanceService { ctx }
    }
}

#[tonic::async_trait]
impl PbMaintenanceService for MaintenanceService {
    async fn alarm(
        &self,
        _request: Request<PbAlarmRequest>,
    ) -> Result<Response<PbAlarmResponse>, Status> {
        let _t = self.ctx.metrics.rpc("Alarm");
        let rev = self.ctx.store.current_revision();
        Ok(Response::new(PbAlarmResponse {
            header: Some(self.ctx.header(rev)),
            alarms: Vec::new(),
        }))
    }

    async fn status(
        &self,
        _request: Request<PbStatusRequest>,
    ) -> Result<Response<PbStatusResponse>, Status> {
        let _t = self.ctx.metrics.rpc("Status");
        let rev = self.ctx.store.current_revision();
        let size = self.ctx.store.db_size().await?;
        let mut errors = Vec::new();
        if !self.ctx.is_serving() {
            errors.push("netsy: node is not serving".to_string());
        }
        Ok(Response::new(PbStatusResponse {
            header: Some(self.ctx.header(rev)),
            version: ETCD_VERSION.to_string(),
            db_size: size.total,
            leader: self.ctx.leader_id(),
            raft_index: u64::try_from(rev).unwrap_or(0),
            raft_term: self.ctx.router.term().max(1),
            raft_applied_index: u64::try_from(rev).unwrap_or(0),
            errors,
            db_size_in_use: size.in_use,
            is_learner: false,
            storage_version: String::new(),
            db_size_quota: 0,
            downgrade_info: None,
        }))
    }

    async fn defragment(
        &self,
        _request: Request<PbDefragmentRequest>,
    ) -> Result<Response<PbDefragmentResponse>, Status> {
        let _t = self.ctx.metrics.rpc("Defragment");
        self.ctx.store.defragment().await?;
        // etcd answers Defragment without a header.
        Ok(Response::new(PbDefragmentResponse { header: None }))
    }

    async fn hash(
        &self,
        _request: Request<PbHashRequest>,
    ) -> Result<Response<PbHashResponse>, Status> {
        Err(unimplemented("Hash"))
    }

    async fn hash_kv(
        &self,
        request: Request<PbHashKvRequest>,
    ) -> Result<Response<PbHashKvResponse>, Status> {
        let _t = self.ctx.metrics.rpc("HashKV");
        let req = request.into_inner();
        let (hash, rev, compact) = self.ctx.store.hash_kv(req.revision).await?;
        let current = self.ctx.store.current_revision();
        let _ = rev;
        Ok(Response::new(PbHashKvResponse {
            header: Some(self.ctx.header(current)),
            hash,
            compact_revision: compact,
            hash_revision: rev,
        }))
    }

    type SnapshotStream =
        Pin<Box<dyn Stream<Item = Result<PbSnapshotResponse, Status>> + Send + 'static>>;

    async fn snapshot(
        &self,
        _request: Request<PbSnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(unimplemented("Snapshot"))
    }

    async fn move_leader(
        &self,
        _request: Request<PbMoveLeaderRequest>,
    ) -> Result<Response<PbMoveLeaderResponse>, Status> {
        Err(unimplemented("MoveLeader"))
    }

    async fn downgrade(
        &self,
        _request: Request<PbDowngradeRequest>,
    ) -> Result<Response<PbDowngradeResponse>, Status> {
        Err(unimplemented("Downgrade"))
    }
}
