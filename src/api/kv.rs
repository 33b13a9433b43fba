//! etcd KV service: Range, RangeStream, Put, DeleteRange, Txn, Compact.

use std::pin::Pin;

use etcd_client::proto::{
    PbCompactionRequest, PbCompactionResponse, PbDeleteRequest, PbDeleteResponse, PbKvService,
    PbPutRequest, PbPutResponse, PbRangeRequest, PbRangeResponse, PbRangeStreamResponse,
    PbTxnOpRequest, PbTxnOpResponse, PbTxnRequest, PbTxnRequestOp, PbTxnResponse,
};
use futures::Stream;
use prost::Message;
use tonic::{Request, Response, Status};

use super::status::RequestError;
use super::{Context, validate};
use crate::proto::ForwardMethod;
use crate::store::{self, KeyRange};

pub struct KvService {
    ctx: Context,
}

impl KvService {
    pub fn new(ctx: Context) -> Self {
        KvService { ctx }
    }
}

/// Target size of one RangeStream message.
const STREAM_CHUNK_BYTES: usize = 1536 * 1024;

fn is_read_only(t: &PbTxnRequest) -> bool {
    t.success
        .iter()
        .chain(t.failure.iter())
        .all(|op| match &op.request {
            Some(PbTxnOpRequest::RequestRange(_)) | None => true,
            Some(PbTxnOpRequest::RequestTxn(n)) => is_read_only(n),
            _ => false,
        })
}

impl KvService {
    fn check_size(&self, len: usize) -> Result<(), Status> {
        if len > self.ctx.options.max_request_bytes {
            return Err(RequestError::RequestTooLarge.into());
        }
        Ok(())
    }

    fn ready(&self) -> Result<(), Status> {
        if self.ctx.is_serving() {
            Ok(())
        } else {
            Err(super::status::not_ready())
        }
    }

    async fn write(&self, req: PbTxnRequest) -> Result<PbTxnResponse, Status> {
        let routed = super::router::route::<PbTxnResponse>(
            &self.ctx.router,
            ForwardMethod::ForwardTxn,
            &req,
        )
        .await?;
        let Some(mut resp) = routed else {
            return super::local::txn(&self.ctx, req).await;
        };
        let rev = resp.header.as_ref().map_or(0, |h| h.revision);
        // Read-your-writes on this node.
        self.ctx.router.wait_applied(rev).await?;
        resp.header = Some(self.ctx.header(rev));
        Ok(resp)
    }
}

#[tonic::async_trait]
impl PbKvService for KvService {
    async fn range(
        &self,
        request: Request<PbRangeRequest>,
    ) -> Result<Response<PbRangeResponse>, Status> {
        let _t = self.ctx.metrics.rpc("Range");
        self.ready()?;
        let req = request.into_inner();
        validate::range(&req)?;
        if !req.serializable {
            self.ctx.router.read_barrier().await?;
        }
        let mut resp = self.ctx.store.range(req).await?;
        let rev = resp.header.as_ref().map(|h| h.revision).unwrap_or_default();
        resp.header = Some(self.ctx.header(rev));
        Ok(Response::new(resp))
    }

    type RangeStreamStream =
        Pin<Box<dyn Stream<Item = Result<PbRangeStreamResponse, Status>> + Send + 'static>>;

    async fn range_stream(
        &self,
        request: Request<PbRangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        let _t = self.ctx.metrics.rpc("RangeStream");
        self.ready()?;
        let req = request.into_inner();
        validate::range(&req)?;
        if !req.serializable {
            self.ctx.router.read_barrier().await?;
        }
        let ctx = self.ctx.clone();
        let plain = req.sort_order == 0 || (req.sort_order == 1 && req.sort_target == 0);
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        if !plain || filtered || req.count_only {
            // Sorted, filtered or count-only: one Range, cut into messages.
            let resp = ctx.store.range(req).await?;
            return Ok(Response::new(Box::pin(chunked(ctx, resp))));
        }
        // Keyset pagination at one revision: memory stays bounded by one chunk.
        let current = ctx.store.current_revision();
        if req.revision > current {
            return Err(store::Error::FutureRevision.into());
        }
        let rev = if req.revision <= 0 {
            current
        } else {
            req.revision
        };
        if rev < ctx.store.compact_revision() {
            return Err(store::Error::Compacted.into());
        }
        let range = KeyRange::new(&req.key, &req.range_end);
        let out = async_stream::try_stream! {
            let limit = usize::try_from(req.limit).unwrap_or(0);
            let mut sent = 0usize;
            let mut after: Option<Vec<u8>> = None;
            let mut page = 64usize;
            let mut more = false;
            loop {
                let want = if limit > 0 { page.min(limit - sent) } else { page };
                let mut kvs = ctx.store.range_page(range.clone(), rev, after.clone(), want + 1, req.keys_only).await?;
                let has_more_rows = kvs.len() > want;
                kvs.truncate(want);
                sent += kvs.len();
                after = kvs.last().map(|kv| kv.key.clone());
                let bytes: usize = kvs.iter().map(|kv| kv.encoded_len()).sum();
                let done = !has_more_rows || (limit > 0 && sent >= limit);
                if done {
                    more = has_more_rows;
                }
                if !kvs.is_empty() && !done {
                    yield PbRangeStreamResponse { range_response: Some(PbRangeResponse { kvs, ..Default::default() }) };
                } else if done {
                    let count = if more || limit > 0 {
                        ctx.store.range(PbRangeRequest { count_only: true, revision: rev, ..req.clone() }).await?.count
                    } else {
                        sent as i64
                    };
                    yield PbRangeStreamResponse { range_response: Some(PbRangeResponse {
                        header: Some(ctx.header(current)), kvs, more, count,
                    }) };
                    break;
                }
                // Adapt the page so a message stays near the target size.
                if bytes < STREAM_CHUNK_BYTES / 2 { page = (page * 2).min(10_000); }
                else if bytes > STREAM_CHUNK_BYTES * 2 { page = (page / 2).max(1); }
            }
        };
        let out: Self::RangeStreamStream = Box::pin(futures::StreamExt::map(
            out,
            |r: Result<_, store::Error>| r.map_err(Status::from),
        ));
        Ok(Response::new(out))
    }

    async fn put(&self, request: Request<PbPutRequest>) -> Result<Response<PbPutResponse>, Status> {
        let _t = self.ctx.metrics.rpc("Put");
        self.ready()?;
        let req = request.into_inner();
        self.check_size(req.encoded_len())?;
        validate::put(&req)?;
        let txn = PbTxnRequest {
            success: vec![PbTxnRequestOp {
                request: Some(PbTxnOpRequest::RequestPut(req)),
            }],
            ..Default::default()
        };
        let resp = self.write(txn).await?;
        let header = resp.header;
        match resp.responses.into_iter().next().and_then(|r| r.response) {
            Some(PbTxnOpResponse::ResponsePut(mut p)) => {
                p.header = header;
                Ok(Response::new(p))
            }
            _ => Err(Status::internal("netsy: put produced no response")),
        }
    }

    async fn delete_range(
        &self,
        request: Request<PbDeleteRequest>,
    ) -> Result<Response<PbDeleteResponse>, Status> {
        let _t = self.ctx.metrics.rpc("DeleteRange");
        self.ready()?;
        let req = request.into_inner();
        self.check_size(req.encoded_len())?;
        validate::delete(&req)?;
        let txn = PbTxnRequest {
            success: vec![PbTxnRequestOp {
                request: Some(PbTxnOpRequest::RequestDeleteRange(req)),
            }],
            ..Default::default()
        };
        let resp = self.write(txn).await?;
        let header = resp.header;
        match resp.responses.into_iter().next().and_then(|r| r.response) {
            Some(PbTxnOpResponse::ResponseDeleteRange(mut d)) => {
                d.header = header;
                Ok(Response::new(d))
            }
            _ => Err(Status::internal("netsy: delete produced no response")),
        }
    }

    async fn txn(&self, request: Request<PbTxnRequest>) -> Result<Response<PbTxnResponse>, Status> {
        let _t = self.ctx.metrics.rpc("Txn");
        self.ready()?;
        let req = request.into_inner();
        validate::txn(&req)?;
        if is_read_only(&req) {
            self.ctx.router.read_barrier().await?;
            let mut resp = self.ctx.store.read_txn(req).await?;
            let rev = resp.header.as_ref().map(|h| h.revision).unwrap_or_default();
            resp.header = Some(self.ctx.header(rev));
            return Ok(Response::new(resp));
        }
        self.check_size(req.encoded_len())?;
        Ok(Response::new(self.write(req).await?))
    }

    async fn compact(
        &self,
        request: Request<PbCompactionRequest>,
    ) -> Result<Response<PbCompactionResponse>, Status> {
        let _t = self.ctx.metrics.rpc("Compact");
        self.ready()?;
        let req = request.into_inner();
        let routed = super::router::route::<PbCompactionResponse>(
            &self.ctx.router,
            ForwardMethod::ForwardCompact,
            &req,
        )
        .await?;
        let Some(mut resp) = routed else {
            return Ok(Response::new(super::local::compact(&self.ctx, req).await?));
        };
        let rev = resp.header.as_ref().map_or(0, |h| h.revision);
        resp.header = Some(self.ctx.header(rev));
        Ok(Response::new(resp))
    }
}

/// Splits a complete RangeResponse into RangeStream messages; the last carries header, count
/// and more.
fn chunked(
    ctx: Context,
    resp: PbRangeResponse,
) -> impl Stream<Item = Result<PbRangeStreamResponse, Status>> {
    let rev = resp.header.as_ref().map(|h| h.revision).unwrap_or_default();
    let mut messages = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0;
    for kv in resp.kvs {
        bytes += kv.encoded_len();
        cur.push(kv);
        if bytes >= STREAM_CHUNK_BYTES {
            messages.push(PbRangeStreamResponse {
                range_response: Some(PbRangeResponse {
                    kvs: std::mem::take(&mut cur),
                    ..Default::default()
                }),
            });
            bytes = 0;
        }
    }
    messages.push(PbRangeStreamResponse {
        range_response: Some(PbRangeResponse {
            header: Some(ctx.header(rev)),
            kvs: cur,
            more: resp.more,
            count: resp.count,
        }),
    });
    futures::stream::iter(messages.into_iter().map(Ok))
}
