//! A raw gRPC client for every etcd v3 RPC the comparison suites use, so that every field of every
//! response — and every error's gRPC code and message — can be compared exactly; request
//! builders; and small helpers for rendering and seeding.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use http::uri::PathAndQuery;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};
use tonic_prost::ProstCodec;

pub use etcd_client::proto::*;

/// Upper bound for any single unary call.
pub const CALL_DEADLINE: Duration = Duration::from_secs(20);
/// Largest message the raw client accepts (etcd itself sends up to ~2 MiB watch responses).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Raw gRPC client
// ---------------------------------------------------------------------------------------------

/// A raw client for every etcd v3 RPC the suites use. Responses are the prost messages as sent;
/// errors are the raw `tonic::Status` (code + message), nothing is reinterpreted.
#[derive(Clone)]
pub struct Client {
    ch: Channel,
}

/// What a unary call gives back: the message or the server's status.
pub type Rpc<T> = std::result::Result<T, Status>;

impl Client {
    pub async fn connect(endpoint: &str) -> Result<Client> {
        let ch = Endpoint::from_shared(endpoint.to_string())?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connect {endpoint}"))?;
        Ok(Client { ch })
    }

    fn grpc(&self) -> tonic::client::Grpc<Channel> {
        tonic::client::Grpc::new(self.ch.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    pub async fn unary<Q, R>(&self, path: &'static str, req: Q) -> Rpc<R>
    where
        Q: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        let fut = async {
            let mut g = self.grpc();
            g.ready()
                .await
                .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
            let codec: ProstCodec<Q, R> = ProstCodec::default();
            g.unary(
                tonic::Request::new(req),
                PathAndQuery::from_static(path),
                codec,
            )
            .await
            .map(|r| r.into_inner())
        };
        match tokio::time::timeout(CALL_DEADLINE, fut).await {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded(format!(
                "test client: {path} took over {CALL_DEADLINE:?}"
            ))),
        }
    }

    pub async fn range(&self, r: PbRangeRequest) -> Rpc<PbRangeResponse> {
        self.unary("/etcdserverpb.KV/Range", r).await
    }
    pub async fn put(&self, r: PbPutRequest) -> Rpc<PbPutResponse> {
        self.unary("/etcdserverpb.KV/Put", r).await
    }
    pub async fn delete_range(&self, r: PbDeleteRequest) -> Rpc<PbDeleteResponse> {
        self.unary("/etcdserverpb.KV/DeleteRange", r).await
    }
    pub async fn txn(&self, r: PbTxnRequest) -> Rpc<PbTxnResponse> {
        self.unary("/etcdserverpb.KV/Txn", r).await
    }
    pub async fn compact(&self, r: PbCompactionRequest) -> Rpc<PbCompactionResponse> {
        self.unary("/etcdserverpb.KV/Compact", r).await
    }
    pub async fn lease_grant(&self, r: PbLeaseGrantRequest) -> Rpc<PbLeaseGrantResponse> {
        self.unary("/etcdserverpb.Lease/LeaseGrant", r).await
    }
    pub async fn lease_revoke(&self, r: PbLeaseRevokeRequest) -> Rpc<PbLeaseRevokeResponse> {
        self.unary("/etcdserverpb.Lease/LeaseRevoke", r).await
    }
    pub async fn lease_time_to_live(
        &self,
        r: PbLeaseTimeToLiveRequest,
    ) -> Rpc<PbLeaseTimeToLiveResponse> {
        self.unary("/etcdserverpb.Lease/LeaseTimeToLive", r).await
    }
    pub async fn lease_leases(&self) -> Rpc<PbLeaseLeasesResponse> {
        self.unary("/etcdserverpb.Lease/LeaseLeases", PbLeaseLeasesRequest {})
            .await
    }
    pub async fn member_list(&self) -> Rpc<PbMemberListResponse> {
        self.unary(
            "/etcdserverpb.Cluster/MemberList",
            PbMemberListRequest::default(),
        )
        .await
    }
    pub async fn status(&self) -> Rpc<PbStatusResponse> {
        self.unary("/etcdserverpb.Maintenance/Status", PbStatusRequest {})
            .await
    }
    pub async fn alarm(&self, r: PbAlarmRequest) -> Rpc<PbAlarmResponse> {
        self.unary("/etcdserverpb.Maintenance/Alarm", r).await
    }
    pub async fn defragment(&self) -> Rpc<PbDefragmentResponse> {
        self.unary(
            "/etcdserverpb.Maintenance/Defragment",
            PbDefragmentRequest {},
        )
        .await
    }

    /// KV.RangeStream (server stream): every chunk in order.
    pub async fn range_stream(&self, r: PbRangeRequest) -> Rpc<Vec<PbRangeStreamResponse>> {
        let fut = async {
            let mut g = self.grpc();
            g.ready()
                .await
                .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
            let codec: ProstCodec<PbRangeRequest, PbRangeStreamResponse> = ProstCodec::default();
            let mut s = g
                .server_streaming(
                    tonic::Request::new(r),
                    PathAndQuery::from_static("/etcdserverpb.KV/RangeStream"),
                    codec,
                )
                .await?
                .into_inner();
            let mut out = Vec::new();
            while let Some(m) = s.message().await? {
                out.push(m);
            }
            Ok(out)
        };
        match tokio::time::timeout(CALL_DEADLINE, fut).await {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded(
                "test client: RangeStream timed out",
            )),
        }
    }

    /// Opens a Watch bidi stream. gRPC servers send the response headers only with the first
    /// message, so the call is driven in a task and the stream is awaited on the first receive.
    pub async fn watch(&self) -> Rpc<WatchConn> {
        let (tx, rx) = mpsc::channel::<PbWatchRequest>(64);
        let mut g = self.grpc();
        let open = tokio::spawn(async move {
            g.ready()
                .await
                .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
            let codec: ProstCodec<PbWatchRequest, PbWatchResponse> = ProstCodec::default();
            g.streaming(
                tonic::Request::new(ReceiverStream::new(rx)),
                PathAndQuery::from_static("/etcdserverpb.Watch/Watch"),
                codec,
            )
            .await
            .map(|r| r.into_inner())
        });
        Ok(WatchConn {
            tx,
            rx: Incoming::Opening(open),
        })
    }

    /// Opens a LeaseKeepAlive bidi stream (opened lazily, like [`Client::watch`]).
    pub async fn keep_alive(&self) -> Rpc<KeepAliveConn> {
        let (tx, rx) = mpsc::channel::<PbLeaseKeepAliveRequest>(64);
        let mut g = self.grpc();
        let open = tokio::spawn(async move {
            g.ready()
                .await
                .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
            let codec: ProstCodec<PbLeaseKeepAliveRequest, PbLeaseKeepAliveResponse> =
                ProstCodec::default();
            g.streaming(
                tonic::Request::new(ReceiverStream::new(rx)),
                PathAndQuery::from_static("/etcdserverpb.Lease/LeaseKeepAlive"),
                codec,
            )
            .await
            .map(|r| r.into_inner())
        });
        Ok(KeepAliveConn {
            tx,
            rx: Incoming::Opening(open),
        })
    }
}

/// The receiving half of a bidi stream: still opening (the call runs in a task), or open.
enum Incoming<T> {
    Opening(tokio::task::JoinHandle<Rpc<Streaming<T>>>),
    Open(Streaming<T>),
    Failed,
}

impl<T> Incoming<T> {
    /// The next message before `deadline`: `Ok(None)` on deadline or end of stream.
    async fn next_until(&mut self, deadline: tokio::time::Instant) -> Rpc<Option<T>> {
        if let Incoming::Opening(h) = self {
            let opened = match tokio::time::timeout_at(deadline, h).await {
                Err(_) => return Ok(None),
                Ok(Err(e)) => Err(Status::internal(format!(
                    "test client: stream task failed: {e}"
                ))),
                Ok(Ok(r)) => r,
            };
            match opened {
                Ok(s) => *self = Incoming::Open(s),
                Err(e) => {
                    *self = Incoming::Failed;
                    return Err(e);
                }
            }
        }
        match self {
            Incoming::Open(s) => match tokio::time::timeout_at(deadline, s.message()).await {
                Ok(r) => r,
                Err(_) => Ok(None),
            },
            _ => Ok(None),
        }
    }
}

/// The fields of etcd's WatchCreateRequest (the prost type itself is not re-exported by
/// etcd-client, so requests are built through the request union's `Default`).
#[derive(Clone, Debug, Default)]
pub struct WatchCreate {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub start_revision: i64,
    pub progress_notify: bool,
    pub filters: Vec<i32>,
    pub prev_kv: bool,
    pub watch_id: i64,
    pub fragment: bool,
}

impl WatchCreate {
    pub fn key(key: impl AsRef<[u8]>) -> Self {
        WatchCreate {
            key: key.as_ref().to_vec(),
            ..Default::default()
        }
    }
    pub fn into_request(self) -> PbWatchRequest {
        let mut u = PbWatchRequestUnion::CreateRequest(Default::default());
        if let PbWatchRequestUnion::CreateRequest(c) = &mut u {
            c.key = self.key;
            c.range_end = self.range_end;
            c.start_revision = self.start_revision;
            c.progress_notify = self.progress_notify;
            c.filters = self.filters;
            c.prev_kv = self.prev_kv;
            c.watch_id = self.watch_id;
            c.fragment = self.fragment;
        }
        PbWatchRequest {
            request_union: Some(u),
        }
    }
}

pub fn watch_cancel_request(watch_id: i64) -> PbWatchRequest {
    let mut u = PbWatchRequestUnion::CancelRequest(Default::default());
    if let PbWatchRequestUnion::CancelRequest(c) = &mut u {
        c.watch_id = watch_id;
    }
    PbWatchRequest {
        request_union: Some(u),
    }
}

pub fn watch_progress_request() -> PbWatchRequest {
    PbWatchRequest {
        request_union: Some(PbWatchRequestUnion::ProgressRequest(Default::default())),
    }
}

/// One Watch stream: send requests, receive responses with a deadline.
pub struct WatchConn {
    tx: mpsc::Sender<PbWatchRequest>,
    rx: Incoming<PbWatchResponse>,
}

impl WatchConn {
    pub async fn send(&self, r: PbWatchRequest) -> Result<()> {
        self.tx
            .send(r)
            .await
            .map_err(|_| anyhow!("watch request stream closed"))
    }
    pub async fn create(&self, w: WatchCreate) -> Result<()> {
        self.send(w.into_request()).await
    }
    pub async fn cancel(&self, id: i64) -> Result<()> {
        self.send(watch_cancel_request(id)).await
    }
    pub async fn progress(&self) -> Result<()> {
        self.send(watch_progress_request()).await
    }
    /// Next response; `Ok(None)` on deadline or end of stream, `Err` on a stream error status.
    pub async fn recv_until(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Rpc<Option<PbWatchResponse>> {
        self.rx.next_until(deadline).await
    }
}

/// One LeaseKeepAlive stream.
pub struct KeepAliveConn {
    tx: mpsc::Sender<PbLeaseKeepAliveRequest>,
    rx: Incoming<PbLeaseKeepAliveResponse>,
}

impl KeepAliveConn {
    /// Sends one keep-alive for `id` and waits (bounded) for its answer.
    pub async fn keep_alive(&mut self, id: i64) -> Rpc<PbLeaseKeepAliveResponse> {
        self.tx
            .send(PbLeaseKeepAliveRequest { id })
            .await
            .map_err(|_| Status::unavailable("test client: keep-alive stream closed"))?;
        let deadline = tokio::time::Instant::now() + CALL_DEADLINE;
        match self.rx.next_until(deadline).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) if tokio::time::Instant::now() >= deadline => Err(Status::deadline_exceeded(
                "test client: keep-alive answer timed out",
            )),
            Ok(None) => Err(Status::unavailable("test client: keep-alive stream ended")),
            Err(e) => Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request builders (etcd's enums are plain i32 in prost)
// ---------------------------------------------------------------------------------------------

/// etcd's sort orders and targets as the wire's i32 (from etcd-client's enums).
pub mod sort {
    use etcd_client::{SortOrder, SortTarget};
    pub const NONE: i32 = SortOrder::None as i32;
    pub const ASCEND: i32 = SortOrder::Ascend as i32;
    pub const DESCEND: i32 = SortOrder::Descend as i32;
    pub const KEY: i32 = SortTarget::Key as i32;
    pub const VERSION: i32 = SortTarget::Version as i32;
    pub const CREATE: i32 = SortTarget::Create as i32;
    pub const MOD: i32 = SortTarget::Mod as i32;
    pub const VALUE: i32 = SortTarget::Value as i32;
}
pub mod cmp {
    pub const EQUAL: i32 = 0;
    pub const GREATER: i32 = 1;
    pub const LESS: i32 = 2;
    pub const NOT_EQUAL: i32 = 3;
}
pub mod filter {
    pub const NOPUT: i32 = 0;
    pub const NODELETE: i32 = 1;
}

pub fn range_req(key: impl AsRef<[u8]>) -> PbRangeRequest {
    PbRangeRequest {
        key: key.as_ref().to_vec(),
        ..Default::default()
    }
}
pub fn range_of(key: impl AsRef<[u8]>, end: impl AsRef<[u8]>) -> PbRangeRequest {
    PbRangeRequest {
        key: key.as_ref().to_vec(),
        range_end: end.as_ref().to_vec(),
        ..Default::default()
    }
}
pub fn put_req(key: impl AsRef<[u8]>, val: impl AsRef<[u8]>) -> PbPutRequest {
    PbPutRequest {
        key: key.as_ref().to_vec(),
        value: val.as_ref().to_vec(),
        ..Default::default()
    }
}
pub fn del_req(key: impl AsRef<[u8]>) -> PbDeleteRequest {
    PbDeleteRequest {
        key: key.as_ref().to_vec(),
        ..Default::default()
    }
}
pub fn del_range(key: impl AsRef<[u8]>, end: impl AsRef<[u8]>) -> PbDeleteRequest {
    PbDeleteRequest {
        key: key.as_ref().to_vec(),
        range_end: end.as_ref().to_vec(),
        ..Default::default()
    }
}
/// The range_end that makes `[prefix, end)` cover every key starting with `prefix`.
pub fn prefix_end(prefix: impl AsRef<[u8]>) -> Vec<u8> {
    let mut end = prefix.as_ref().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

pub fn op_range(r: PbRangeRequest) -> PbTxnRequestOp {
    PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestRange(r)),
    }
}
pub fn op_put(r: PbPutRequest) -> PbTxnRequestOp {
    PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestPut(r)),
    }
}
pub fn op_del(r: PbDeleteRequest) -> PbTxnRequestOp {
    PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestDeleteRange(r)),
    }
}
pub fn op_txn(r: PbTxnRequest) -> PbTxnRequestOp {
    PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestTxn(r)),
    }
}

/// A Compare: `target` is one of VERSION/CREATE/MOD/VALUE/LEASE via the [`PbTargetUnion`].
pub fn compare(key: impl AsRef<[u8]>, result: i32, t: PbTargetUnion) -> PbCompare {
    let target = match &t {
        PbTargetUnion::Version(_) => 0,
        PbTargetUnion::CreateRevision(_) => 1,
        PbTargetUnion::ModRevision(_) => 2,
        PbTargetUnion::Value(_) => 3,
        PbTargetUnion::Lease(_) => 4,
    };
    PbCompare {
        result,
        target,
        key: key.as_ref().to_vec(),
        range_end: vec![],
        target_union: Some(t),
    }
}

// ---------------------------------------------------------------------------------------------
// Misc
// ---------------------------------------------------------------------------------------------

/// The seed of a randomized test: `NETSY_TEST_SEED` if set, else derived from the clock. Printed.
pub fn test_seed(test: &str) -> u64 {
    let seed = match std::env::var("NETSY_TEST_SEED") {
        Ok(s) => s.parse().expect("NETSY_TEST_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    };
    eprintln!("{test}: NETSY_TEST_SEED={seed}");
    seed
}

/// Printable rendering of bytes: ASCII as is, other bytes as \xNN; long values by length + hash.
pub fn show_bytes(b: &[u8]) -> String {
    if b.len() > 80 {
        // FNV-1a: enough to tell large values apart in a diff.
        let mut h: u64 = 0xcbf29ce484222325;
        for &x in b {
            h ^= x as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        return format!("<{} bytes fnv={h:016x}>", b.len());
    }
    let mut s = String::from("\"");
    for &x in b {
        if (0x20..0x7f).contains(&x) && x != b'"' && x != b'\\' {
            s.push(x as char);
        } else {
            s.push_str(&format!("\\x{x:02x}"));
        }
    }
    s.push('"');
    s
}
