//! etcd Cluster service: MemberList; membership changes answer Unimplemented (members join and
//! leave by registering in the bucket, not through this API).

use etcd_client::proto::{
    PbClusterService, PbMember, PbMemberAddRequest, PbMemberAddResponse, PbMemberListRequest,
    PbMemberListResponse, PbMemberPromoteRequest, PbMemberPromoteResponse, PbMemberRemoveRequest,
    PbMemberRemoveResponse, PbMemberUpdateRequest, PbMemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::Context;
use super::status::unimplemented;

pub(crate) struct ClusterService {
    ctx: Context,
}

impl ClusterService {
    pub(crate) fn new(ctx: Context) -> Self {
        ClusterService { ctx }
    }
}

#[tonic::async_trait]
impl PbClusterService for ClusterService {
    async fn member_add(
        &self,
        _r: Request<PbMemberAddRequest>,
    ) -> Result<Response<PbMemberAddResponse>, Status> {
        Err(unimplemented("MemberAdd"))
    }

    async fn member_remove(
        &self,
        _r: Request<PbMemberRemoveRequest>,
    ) -> Result<Response<PbMemberRemoveResponse>, Status> {
        Err(unimplemented("MemberRemove"))
    }

    async fn member_update(
        &self,
        _r: Request<PbMemberUpdateRequest>,
    ) -> Result<Response<PbMemberUpdateResponse>, Status> {
        Err(unimplemented("MemberUpdate"))
    }

    async fn member_list(
        &self,
        _r: Request<PbMemberListRequest>,
    ) -> Result<Response<PbMemberListResponse>, Status> {
        let _t = self.ctx.metrics.rpc("MemberList");
        let m = &self.ctx.member;
        let mut members = self.ctx.router.members().await;
        if !members.iter().any(|x| x.id == m.member_id) {
            members.push(PbMember {
                id: m.member_id,
                name: m.name.clone(),
                peer_ur_ls: m.peer_urls.clone(),
                client_ur_ls: m.client_urls.clone(),
                is_learner: false,
            });
            members.sort_by_key(|x| x.id);
        }
        // etcd's MemberList header carries no revision.
        Ok(Response::new(PbMemberListResponse {
            header: Some(self.ctx.header(0)),
            members,
        }))
    }

    async fn member_promote(
        &self,
        _r: Request<PbMemberPromoteRequest>,
    ) -> Result<Response<PbMemberPromoteResponse>, Status> {
        Err(unimplemented("MemberPromote"))
    }
}
