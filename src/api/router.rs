//! The one interface between the gRPC services and whatever decides where a request runs:
//! replication (`ha::Cluster`) in a node, [`Standalone`] for a single store in unit tests. The
//! api never sees roles, locks or peers; a quorum write path changes the implementation, not
//! this trait.

use std::sync::Arc;

use etcd_client::proto::PbMember;
use prost::Message;
use tonic::Status;

use crate::proto::ForwardMethod;

#[tonic::async_trait]
pub trait Router: Send + Sync + 'static {
    /// Where a write goes. `Ok(None)`: run it here, with [`super::local`] (this node is the
    /// Primary). `Ok(Some(bytes))`: the Primary ran it; its encoded answer. `encode` gives the
    /// request's bytes and is called only when it is forwarded (never on the Primary's path). A
    /// request that may have run is never sent twice.
    async fn route(
        &self,
        method: ForwardMethod,
        encode: &(dyn Fn() -> Vec<u8> + Send + Sync),
    ) -> Result<Option<Vec<u8>>, Status>;
    /// Waits until the local copy has applied `revision` (read-your-writes after a forward).
    async fn wait_applied(&self, revision: i64) -> Result<(), Status>;
    /// Returns once a linearizable read may be served from the local copy.
    async fn read_barrier(&self) -> Result<(), Status>;
    /// Whether this node is the writer and certainly still was when this is called: checked
    /// *after* a write request that wrote nothing was evaluated (its answer is a read of the
    /// local copy, which a deposed writer may no longer be entitled to give).
    fn lease_holds(&self) -> bool;
    /// The term clients see as `raft_term` (the writer epoch; 0 while unknown).
    fn term(&self) -> u64;
    /// Which node is the Primary.
    fn leader(&self) -> Leader;
    /// The registered members, as MemberList shows them (may be empty: the caller adds itself).
    async fn members(&self) -> Vec<PbMember>;
}

/// Which node is the Primary, as the api reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leader {
    ThisNode,
    /// Another member, by member id.
    Member(u64),
    /// None at the moment (an election or a takeover in progress).
    Unknown,
}

/// Routes `req` and decodes the Primary's answer, if it ran there.
pub(crate) async fn route<Resp: Message + Default>(
    router: &Arc<dyn Router>,
    method: ForwardMethod,
    req: &impl Message,
) -> Result<Option<Resp>, Status> {
    match router.route(method, &|| req.encode_to_vec()).await? {
        None => Ok(None),
        Some(bytes) => Resp::decode(bytes.as_slice())
            .map(Some)
            .map_err(|e| Status::internal(format!("netsy: bad forwarded response: {e}"))),
    }
}

/// A lone store that is always the writer: no peers, no lock.
pub struct Standalone;

#[tonic::async_trait]
impl Router for Standalone {
    async fn route(
        &self,
        _: ForwardMethod,
        _: &(dyn Fn() -> Vec<u8> + Send + Sync),
    ) -> Result<Option<Vec<u8>>, Status> {
        Ok(None)
    }
    async fn wait_applied(&self, _revision: i64) -> Result<(), Status> {
        Ok(())
    }
    async fn read_barrier(&self) -> Result<(), Status> {
        Ok(())
    }
    fn lease_holds(&self) -> bool {
        true
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
