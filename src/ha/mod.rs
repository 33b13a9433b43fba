//! Several nodes on one bucket: roles, replication and write forwarding.
//!
//! Owns: who is the Primary (the holder of the writer lock, see `durability::lock`), the
//! replication feed a Primary serves on the peer port, the follower loop of a Replica,
//! forwarding of writes and read indexes from a Replica to the Primary, and membership
//! (`members`). Never builds object keys (`objstore::layout`) and never runs SQL (`store`).
//!
//! Durability does not depend on Replicas: every write is in the bucket before it is
//! acknowledged (the quorum-0 rule), so a new Primary loads the bucket's tail and has every
//! acknowledged write. Replicas serve reads and watches from their local copy and forward
//! writes; a read that must be linearizable first asks the Primary for its committed revision
//! and waits until the local copy has applied it.

mod collect;
mod follower;
mod forward;
pub(crate) mod lock;
pub(crate) mod members;
pub(crate) mod metrics;
pub(crate) mod peer;
pub(crate) mod pending;
mod quorum;
pub(crate) mod supervisor;
pub(crate) mod wal;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::proto::PbMember;
use tokio::sync::{broadcast, watch};
use tonic::Status;
use tonic::transport::Channel;

pub(crate) use follower::follow;
pub(crate) use metrics::QuorumMetrics;
pub(crate) use supervisor::Supervisor;

use crate::api::status::{leader_changed, timed_out};
use crate::api::{Leader, Router};
use crate::durability::Fence;
use crate::proto as pb;
use crate::proto::peer_client::PeerClient;
use crate::store::Store;
use crate::watch::WatchHub;

/// How long a Replica waits for its local copy to reach a revision it must serve.
pub(crate) const APPLY_WAIT: Duration = Duration::from_secs(5);
/// Deadline of one forwarded request.
const FORWARD_DEADLINE: Duration = Duration::from_secs(30);
/// How long a write waits for a Primary (a takeover in progress) before failing.
pub(crate) const ROUTE_WAIT: Duration = Duration::from_secs(5);

/// The node that currently writes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PrimaryInfo {
    pub node_id: String,
    pub peer_addr: String,
    pub epoch: u64,
}

/// What this node is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Role {
    /// Loading, or taking over as Primary: neither writes nor forwards.
    Transition,
    Primary {
        epoch: u64,
    },
    Replica {
        primary: PrimaryInfo,
    },
}

impl Role {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Role::Transition => "transition",
            Role::Primary { .. } => "primary",
            Role::Replica { .. } => "replica",
        }
    }

    /// The epoch etcd clients see as the raft term.
    pub(crate) fn term(&self) -> u64 {
        match self {
            Role::Transition => 0,
            Role::Primary { epoch } => *epoch,
            Role::Replica { primary } => primary.epoch,
        }
    }
}

/// Shared cluster state of one node.
#[derive(Clone)]
pub(crate) struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: String,
    stopping: std::sync::atomic::AtomicBool,
    role: watch::Sender<Role>,
    feed: broadcast::Sender<Arc<pb::FollowMessage>>,
    channels: Mutex<HashMap<String, Channel>>,
    tls: Option<Arc<rustls::ClientConfig>>,
    store: Store,
    hub: WatchHub,
    /// The writer lock's lease while this node is the Primary: linearizable reads are served
    /// locally only while it certainly holds (a Primary that was paused or cut off past its
    /// lease may already have been replaced).
    fence: Mutex<Option<Fence>>,
    /// Registered nodes (member ids, MemberList).
    membership: Option<members::Membership>,
    /// Quorum mode: receipts from Replicas (on the Primary).
    receipts: quorum::Receipts,
    /// Quorum mode: this node's pending log (opened by [`Cluster::open_pending`]).
    pending: std::sync::OnceLock<Arc<tokio::sync::Mutex<pending::PendingLog>>>,
    /// The newest writer epoch whose stream this node has followed.
    followed: std::sync::atomic::AtomicU64,
    /// On a Replica: the stream that carries forwarded requests to the Primary.
    forward: Mutex<Option<Arc<forward::ForwardLink>>>,
    /// The Primary at this address answered the stream with Unimplemented: unary calls to it.
    forward_unary: Mutex<Option<String>>,
}

impl Cluster {
    pub(crate) fn new(
        node_id: String,
        store: Store,
        hub: WatchHub,
        tls: Option<Arc<rustls::ClientConfig>>,
        membership: Option<members::Membership>,
    ) -> Cluster {
        let (role, _) = watch::channel(Role::Transition);
        let (feed, _) = broadcast::channel(1024);
        Cluster {
            inner: Arc::new(Inner {
                node_id,
                stopping: std::sync::atomic::AtomicBool::new(false),
                role,
                feed,
                channels: Mutex::new(HashMap::new()),
                tls,
                store,
                hub,
                fence: Mutex::new(None),
                membership,
                receipts: quorum::Receipts::new(),
                pending: std::sync::OnceLock::new(),
                followed: std::sync::atomic::AtomicU64::new(0),
                forward: Mutex::new(None),
                forward_unary: Mutex::new(None),
            }),
        }
    }

    /// Sets the lease that this node's Primary role rests on.
    pub(crate) fn set_fence(&self, fence: Fence) {
        *self.inner.fence.lock().unwrap_or_else(|p| p.into_inner()) = Some(fence);
    }

    /// Whether this node is the Primary and its lease certainly still holds.
    pub(crate) fn primary_lease_holds(&self) -> bool {
        matches!(self.role(), Role::Primary { .. })
            && self
                .inner
                .fence
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_none_or(|f| f.holds())
    }

    pub(crate) fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    pub(crate) fn role(&self) -> Role {
        self.inner.role.borrow().clone()
    }

    pub(crate) fn subscribe_role(&self) -> watch::Receiver<Role> {
        self.inner.role.subscribe()
    }

    pub(crate) fn set_role(&self, role: Role) {
        self.inner.role.send_if_modified(|r| {
            if *r == role {
                false
            } else {
                tracing::info!(
                    from = r.name(),
                    to = role.name(),
                    term = role.term(),
                    "role_changed"
                );
                *r = role;
                true
            }
        });
    }

    /// This node is shutting down: writes that would wait for a Primary fail at once instead
    /// (the client retries on another node).
    pub(crate) fn set_stopping(&self) {
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::Release);
    }

    fn is_stopping(&self) -> bool {
        self.inner
            .stopping
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Registered nodes as (node id, peer address), from the last membership read.
    pub(crate) fn members(&self) -> Vec<(String, String)> {
        let Some(m) = &self.inner.membership else {
            return Vec::new();
        };
        m.list()
            .into_iter()
            .filter_map(|info| {
                let url = info.peer_urls.first()?;
                let addr = url.split_once("://").map_or(url.as_str(), |(_, a)| a);
                Some((info.name, addr.to_string()))
            })
            .collect()
    }

    /// Opens this node's pending log (`dir`), for the quorum write path.
    pub(crate) fn open_pending(&self, dir: &std::path::Path) -> Result<(), pending::PendingError> {
        let log = pending::PendingLog::open(dir)?;
        let _ = self
            .inner
            .pending
            .set(Arc::new(tokio::sync::Mutex::new(log)));
        Ok(())
    }

    /// This node's pending log, once opened.
    pub(crate) fn pending(&self) -> Option<&Arc<tokio::sync::Mutex<pending::PendingLog>>> {
        self.inner.pending.get()
    }

    pub(crate) fn receipts(&self) -> &quorum::Receipts {
        &self.inner.receipts
    }

    /// Notes that this node has followed a stream of writer `epoch`.
    pub(crate) fn followed(&self, epoch: u64) {
        self.inner
            .followed
            .fetch_max(epoch, std::sync::atomic::Ordering::AcqRel);
    }

    /// The newest writer epoch this node has followed, or held itself.
    pub(crate) fn followed_epoch(&self) -> u64 {
        let own = match self.role() {
            Role::Primary { epoch } => epoch,
            _ => 0,
        };
        own.max(
            self.inner
                .followed
                .load(std::sync::atomic::Ordering::Acquire),
        )
    }

    /// Where a Primary publishes committed records for its followers.
    pub(crate) fn feed(&self) -> &broadcast::Sender<Arc<pb::FollowMessage>> {
        &self.inner.feed
    }

    /// A client for the peer port at `addr` (connections are kept and reused).
    pub(crate) fn peer(&self, addr: &str) -> Result<PeerClient<Channel>, Status> {
        let mut channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = channels.get(addr) {
            return Ok(PeerClient::new(ch.clone()).max_decoding_message_size(usize::MAX));
        }
        let connect = Duration::from_secs(2);
        let ch = match &self.inner.tls {
            Some(cfg) => crate::tls::connect_lazy(addr, cfg.clone(), connect)
                .map_err(|e| Status::unavailable(format!("netsy: peer {addr}: {e}")))?,
            None => tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| Status::unavailable(format!("netsy: peer {addr}: {e}")))?
                .connect_timeout(connect)
                .tcp_nodelay(true)
                .connect_lazy(),
        };
        channels.insert(addr.to_string(), ch.clone());
        Ok(PeerClient::new(ch).max_decoding_message_size(usize::MAX))
    }

    /// The Primary's peer client, or Unavailable while there is none.
    fn primary(&self) -> Result<PeerClient<Channel>, Status> {
        match self.role() {
            Role::Replica { primary } => self.peer(&primary.peer_addr),
            _ => Err(leader_changed()),
        }
    }

    /// Where a write goes: `Ok(None)` = this node is the Primary, execute locally;
    /// `Ok(Some(resp))` = the Primary's answer. While there is no Primary (a takeover in
    /// progress), or when the Primary refused before executing, it waits for the next one and
    /// retries, up to [`ROUTE_WAIT`]; a request that may have been executed is never resent.
    pub(crate) async fn route(
        &self,
        method: pb::ForwardMethod,
        encode: &(dyn Fn() -> Vec<u8> + Send + Sync),
    ) -> Result<Option<Vec<u8>>, Status> {
        let deadline = tokio::time::Instant::now() + ROUTE_WAIT;
        let mut roles = self.subscribe_role();
        loop {
            let role = roles.borrow_and_update().clone();
            let retry = match role {
                Role::Primary { .. } => return Ok(None),
                Role::Transition => leader_changed(),
                Role::Replica { primary } => {
                    match self.forward_once(&primary, method, encode()).await {
                        Ok(resp) => return Ok(Some(resp)),
                        Err(Forwarded::NotExecuted(s)) => s,
                        Err(Forwarded::Failed(s)) => return Err(s),
                    }
                }
            };
            if self.is_stopping() {
                return Err(retry);
            }
            // Wait for a role change (a new Primary), or a short pause, then retry.
            let pause = tokio::time::sleep(Duration::from_millis(100));
            tokio::select! {
                _ = roles.changed() => {}
                _ = pause => {}
                _ = tokio::time::sleep_until(deadline) => return Err(retry),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(retry);
            }
        }
    }

    async fn forward_once(
        &self,
        primary: &PrimaryInfo,
        method: pb::ForwardMethod,
        req: Vec<u8>,
    ) -> Result<Vec<u8>, Forwarded> {
        if !self.forwards_unary(&primary.peer_addr) {
            let link = self.forward_link(&primary.peer_addr)?;
            // The request is kept for a unary call in case the Primary turns out not to know
            // the stream (only its first requests after an upgrade pay the copy).
            let unary_copy = (!link.is_answering()).then(|| req.clone());
            match link
                .call(method, req, &self.inner.node_id, FORWARD_DEADLINE)
                .await
            {
                Err(Forwarded::NotExecuted(s)) if link.unimplemented() => {
                    *self
                        .inner
                        .forward_unary
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(primary.peer_addr.clone());
                    let Some(req) = unary_copy else {
                        return Err(Forwarded::NotExecuted(s));
                    };
                    return self.forward_unary_call(primary, method, req).await;
                }
                other => return other,
            }
        }
        self.forward_unary_call(primary, method, req).await
    }

    /// Whether forwarded requests to the Primary at `addr` go as unary calls.
    fn forwards_unary(&self, addr: &str) -> bool {
        self.inner
            .forward_unary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
            == Some(addr)
    }

    /// The open forwarding stream to the Primary at `addr`, opened when there is none.
    fn forward_link(&self, addr: &str) -> Result<Arc<forward::ForwardLink>, Forwarded> {
        let mut link = self.inner.forward.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = link.as_ref()
            && l.addr() == addr
            && l.is_open()
        {
            return Ok(l.clone());
        }
        let client = self.peer(addr).map_err(Forwarded::NotExecuted)?;
        let l = Arc::new(forward::ForwardLink::open(addr, client));
        *link = Some(l.clone());
        Ok(l)
    }

    async fn forward_unary_call(
        &self,
        primary: &PrimaryInfo,
        method: pb::ForwardMethod,
        req: Vec<u8>,
    ) -> Result<Vec<u8>, Forwarded> {
        let mut client = self
            .peer(&primary.peer_addr)
            .map_err(Forwarded::NotExecuted)?;
        let mut request = tonic::Request::new(pb::ForwardRequest {
            method: method as i32,
            request: req,
            node_id: self.inner.node_id.clone(),
            id: 0,
        });
        request.set_timeout(FORWARD_DEADLINE);
        let resp = client
            .forward(request)
            .await
            .map_err(classify)?
            .into_inner();
        Ok(resp.response)
    }

    /// Waits until the local copy has applied `revision` (read-your-writes on a Replica).
    pub(crate) async fn wait_applied(&self, revision: i64) -> Result<(), Status> {
        let mut rx = self.inner.hub.subscribe();
        let wait = async {
            loop {
                if self.inner.store.current_revision() >= revision {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(APPLY_WAIT, wait)
            .await
            .map_err(|_| timed_out())?;
        if self.inner.store.current_revision() >= revision {
            Ok(())
        } else {
            Err(timed_out())
        }
    }

    /// For a linearizable read on a Replica: the Primary's committed revision, applied locally.
    /// A no-op on the Primary.
    pub(crate) async fn read_barrier(&self) -> Result<(), Status> {
        match self.role() {
            Role::Primary { .. } if self.primary_lease_holds() => Ok(()),
            Role::Primary { .. } | Role::Transition => Err(leader_changed()),
            Role::Replica { .. } => {
                let mut client = self.primary()?;
                let mut request = tonic::Request::new(pb::ReadIndexRequest {});
                request.set_timeout(APPLY_WAIT);
                let idx = client
                    .read_index(request)
                    .await
                    .map_err(peer_failure)?
                    .into_inner();
                self.wait_applied(idx.revision).await
            }
        }
    }
}

/// How long MemberList waits for a fresh read of the registrations.
const MEMBER_LIST_REFRESH: Duration = Duration::from_secs(2);

#[tonic::async_trait]
impl Router for Cluster {
    async fn route(
        &self,
        method: pb::ForwardMethod,
        encode: &(dyn Fn() -> Vec<u8> + Send + Sync),
    ) -> Result<Option<Vec<u8>>, Status> {
        Cluster::route(self, method, encode).await
    }

    async fn wait_applied(&self, revision: i64) -> Result<(), Status> {
        Cluster::wait_applied(self, revision).await
    }

    async fn read_barrier(&self) -> Result<(), Status> {
        Cluster::read_barrier(self).await
    }

    fn lease_holds(&self) -> bool {
        self.primary_lease_holds()
    }

    fn term(&self) -> u64 {
        self.role().term()
    }

    fn leader(&self) -> Leader {
        match self.role() {
            Role::Primary { .. } => Leader::ThisNode,
            Role::Replica { primary } => self
                .inner
                .membership
                .as_ref()
                .and_then(|m| m.member_id_of(&primary.node_id))
                .map_or(Leader::Unknown, Leader::Member),
            Role::Transition => Leader::Unknown,
        }
    }

    /// Read from the bucket for each call (registrations change rarely, the call is rare);
    /// when the bucket is slow or unreachable the last list read is served.
    async fn members(&self) -> Vec<PbMember> {
        let Some(ms) = &self.inner.membership else {
            return Vec::new();
        };
        match tokio::time::timeout(MEMBER_LIST_REFRESH, ms.refresh()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "member list served from the last read"),
            Err(_) => tracing::warn!("member list served from the last read: bucket slow"),
        }
        ms.list()
            .into_iter()
            .map(|info| PbMember {
                id: info.id,
                name: info.name,
                peer_ur_ls: info.peer_urls,
                client_ur_ls: info.client_urls,
                is_learner: false,
            })
            .collect()
    }
}

/// How a forwarded call failed.
#[derive(Debug)]
enum Forwarded {
    /// Certainly not executed: safe to send again (to the next Primary).
    NotExecuted(Status),
    /// Executed or maybe executed, or refused for a reason of its own.
    Failed(Status),
}

/// Metadata on a peer's refusal made before executing anything (it is not, or no longer, the
/// Primary): the request may be sent again, to the next Primary.
pub(crate) const NOT_EXECUTED: &str = "netsy-not-executed";

/// The peer's refusal while this node is not the Primary: nothing ran, so the sender may send
/// it again, to the next Primary.
pub(crate) fn not_primary() -> Status {
    let mut refused = Status::failed_precondition("netsy: this node is not the primary");
    refused.metadata_mut().insert(
        NOT_EXECUTED,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    refused
}

/// Sorts a failed forward. Sent again (after the next election, within the route's wait) only
/// when it certainly did not run: the peer refused with [`NOT_EXECUTED`], or no connection was
/// ever made. Everything else is final: a request that may have run is never resent.
fn classify(s: Status) -> Forwarded {
    if s.metadata().contains_key(NOT_EXECUTED) || never_connected(&s) {
        Forwarded::NotExecuted(leader_changed())
    } else {
        Forwarded::Failed(peer_failure(s))
    }
}

/// Whether a call failed before any connection existed: tonic wraps every failure to connect
/// (TCP, the TLS handshake) in `ConnectError`; the connect timeout is an `io::Error` of kind
/// `TimedOut` found before any `hyper::Error` (which is what an established connection fails with).
fn never_connected(s: &Status) -> bool {
    let mut next = std::error::Error::source(s);
    while let Some(err) = next {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        if err.is::<hyper::Error>() {
            return false;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::TimedOut;
        }
        next = err.source();
    }
    false
}

/// A failed call to the Primary. What the Primary answered passes through; a failure of the
/// transport on this side (tonic attaches the cause as the status's source only to statuses it
/// makes itself) becomes etcd's "leader changed": the client retries, possibly elsewhere.
fn peer_failure(s: Status) -> Status {
    if s.code() == tonic::Code::DeadlineExceeded {
        return timed_out();
    }
    if std::error::Error::source(&s).is_some() {
        tracing::debug!(error = %s, "call to the primary failed");
        return leader_changed();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent_again(s: Status) -> bool {
        matches!(classify(s), Forwarded::NotExecuted(_))
    }

    /// A call to a port nobody listens on: tonic's real failure, certainly never sent.
    #[tokio::test]
    async fn a_refused_connection_is_sent_again() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        let err = PeerClient::new(channel)
            .forward(pb::ForwardRequest::default())
            .await
            .expect_err("nothing listens");
        assert!(sent_again(err));
    }

    #[test]
    fn only_a_marked_refusal_or_no_connection_is_sent_again() {
        assert!(sent_again(not_primary()));
        let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
        assert!(sent_again(Status::from_error(Box::new(timeout))));

        // The Primary's own answers are final, whatever their code.
        let exists = Status::failed_precondition("etcdserver: lease already exists");
        match classify(exists) {
            Forwarded::Failed(s) => assert_eq!(s.message(), "etcdserver: lease already exists"),
            Forwarded::NotExecuted(_) => panic!("a lease-exists answer was to be sent again"),
        }
        assert!(!sent_again(leader_changed()));
        // A broken established connection: maybe executed, answered as "leader changed".
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        match classify(Status::from_error(Box::new(reset))) {
            Forwarded::Failed(s) => assert_eq!(s.message(), "etcdserver: leader changed"),
            Forwarded::NotExecuted(_) => panic!("a broken connection was to be sent again"),
        }
        match classify(Status::deadline_exceeded("deadline")) {
            Forwarded::Failed(s) => assert_eq!(s.message(), "etcdserver: request timed out"),
            Forwarded::NotExecuted(_) => panic!("an expired forward was to be sent again"),
        }
    }
}
