//! etcd Watch service. One task per stream serves every watch on it, in order: control
//! responses, then events from the hub's recent ring or, for a watch that fell behind, from the
//! store's history. Sending waits for the client (backpressure on this stream only); nothing is
//! dropped, and a progress notification is only sent once every watch on the stream has been
//! given every event up to the revision it reports.

use std::collections::BTreeMap;
use std::sync::Arc;

use etcd_client::proto::{
    PbEvent, PbWatchRequest, PbWatchRequestUnion, PbWatchResponse, PbWatchService,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::{Instant, interval_at};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Context;
use crate::store::{self, KeyRange};
use crate::watch::EventBatch;

const FILTER_NOPUT: i32 = 0;
const FILTER_NODELETE: i32 = 1;
/// Most events read from history for one watch in one step.
const HISTORY_STEP: usize = 1000;
/// Most events in one response (before fragmentation).
const MAX_EVENTS_PER_RESPONSE: usize = 1000;

pub struct WatchService {
    ctx: Context,
}

impl WatchService {
    pub fn new(ctx: Context) -> Self {
        WatchService { ctx }
    }
}

#[tonic::async_trait]
impl PbWatchService for WatchService {
    type WatchStream = ReceiverStream<Result<PbWatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<PbWatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        if !self.ctx.is_serving() {
            return Err(super::status::not_ready());
        }
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let task = StreamTask {
            rev_rx: self.ctx.hub.subscribe(),
            ctx: self.ctx.clone(),
            inbound,
            out: tx,
            watches: BTreeMap::new(),
            next_id: 0,
            progress_pending: false,
        };
        self.ctx.metrics.watch_streams.inc();
        tokio::spawn(async move {
            let metrics = task.ctx.metrics.clone();
            task.run().await;
            metrics.watch_streams.dec();
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct Watch {
    id: i64,
    range: KeyRange,
    /// The next revision whose events this watch has not been sent yet.
    next_rev: i64,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
    no_put: bool,
    no_delete: bool,
    /// Events were sent since the last periodic progress tick.
    active: bool,
}

impl Watch {
    fn wants(&self, ev: &PbEvent) -> bool {
        let key = ev
            .kv
            .as_ref()
            .map(|kv| kv.key.as_slice())
            .unwrap_or_default();
        if !self.range.contains(key) {
            return false;
        }
        !(ev.r#type == 0 && self.no_put || ev.r#type == 1 && self.no_delete)
    }
}

struct StreamTask {
    ctx: Context,
    inbound: Streaming<PbWatchRequest>,
    out: mpsc::Sender<Result<PbWatchResponse, Status>>,
    rev_rx: tokio::sync::watch::Receiver<i64>,
    watches: BTreeMap<i64, Watch>,
    next_id: i64,
    progress_pending: bool,
}

/// The client went away; the task ends.
struct Gone;

impl StreamTask {
    async fn run(mut self) {
        // 0 means etcd's default (10 minutes), as etcd treats it.
        let period = match self.ctx.options.progress_notify_interval {
            d if d.is_zero() => std::time::Duration::from_secs(600),
            d => d,
        };
        let mut ticker = interval_at(Instant::now() + period, period);
        loop {
            let current = self.ctx.store.current_revision();
            let behind = match self.deliver(current).await {
                Ok(b) => b,
                Err(Gone) => return,
            };
            if self.progress_pending && !behind {
                self.progress_pending = false;
                let resp = PbWatchResponse {
                    header: Some(self.ctx.header(current)),
                    watch_id: -1,
                    ..Default::default()
                };
                if self.send(resp).await.is_err() {
                    return;
                }
            }
            let step = if behind {
                tokio::select! {
                    biased;
                    msg = self.inbound.message() => self.handle(msg).await,
                    _ = std::future::ready(()) => Ok(()),
                }
            } else {
                tokio::select! {
                    msg = self.inbound.message() => self.handle(msg).await,
                    changed = self.rev_rx.changed() => if changed.is_err() { Err(Gone) } else { Ok(()) },
                    _ = ticker.tick() => self.periodic_progress(current).await,
                }
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn send(&self, resp: PbWatchResponse) -> Result<(), Gone> {
        self.out.send(Ok(resp)).await.map_err(|_| Gone)
    }

    async fn handle(&mut self, msg: Result<Option<PbWatchRequest>, Status>) -> Result<(), Gone> {
        let Ok(Some(req)) = msg else { return Err(Gone) };
        match req.request_union {
            Some(PbWatchRequestUnion::CreateRequest(c)) => {
                let current = self.ctx.store.current_revision();
                let key = if c.key.is_empty() { vec![0] } else { c.key };
                let range = KeyRange::new(&key, &c.range_end);
                let mut error = None;
                if let store::RangeEnd::Before(end) = &range.end
                    && key.as_slice() >= end.as_slice()
                {
                    error = Some("mvcc: watcher range is empty");
                }
                let id = if c.watch_id != 0 {
                    if self.watches.contains_key(&c.watch_id) {
                        error =
                            error.or(Some("mvcc: duplicate watch ID provided on the WatchStream"));
                    }
                    c.watch_id
                } else {
                    while self.watches.contains_key(&self.next_id) {
                        self.next_id += 1;
                    }
                    self.next_id += 1;
                    self.next_id - 1
                };
                if let Some(reason) = error {
                    return self
                        .send(PbWatchResponse {
                            header: Some(self.ctx.header(current)),
                            watch_id: -1,
                            created: true,
                            canceled: true,
                            cancel_reason: reason.to_string(),
                            ..Default::default()
                        })
                        .await;
                }
                let start = if c.start_revision == 0 {
                    current + 1
                } else {
                    c.start_revision
                };
                self.watches.insert(
                    id,
                    Watch {
                        id,
                        range,
                        next_rev: start,
                        prev_kv: c.prev_kv,
                        progress_notify: c.progress_notify,
                        fragment: c.fragment,
                        no_put: c.filters.contains(&FILTER_NOPUT),
                        no_delete: c.filters.contains(&FILTER_NODELETE),
                        active: false,
                    },
                );
                self.ctx.metrics.watches.inc();
                self.send(PbWatchResponse {
                    header: Some(self.ctx.header(current)),
                    watch_id: id,
                    created: true,
                    ..Default::default()
                })
                .await
            }
            Some(PbWatchRequestUnion::CancelRequest(c)) => {
                if self.watches.remove(&c.watch_id).is_some() {
                    self.ctx.metrics.watches.dec();
                    let current = self.ctx.store.current_revision();
                    return self
                        .send(PbWatchResponse {
                            header: Some(self.ctx.header(current)),
                            watch_id: c.watch_id,
                            canceled: true,
                            ..Default::default()
                        })
                        .await;
                }
                Ok(())
            }
            Some(PbWatchRequestUnion::ProgressRequest(_)) => {
                self.progress_pending = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// One delivery step for every watch that is behind `current`. Returns whether some watch
    /// is still behind afterwards.
    async fn deliver(&mut self, current: i64) -> Result<bool, Gone> {
        let ids: Vec<i64> = self
            .watches
            .iter()
            .filter(|(_, w)| w.next_rev <= current)
            .map(|(id, _)| *id)
            .collect();
        let mut behind = false;
        for id in ids {
            let Some(w) = self.watches.get(&id) else {
                continue;
            };
            let from = w.next_rev;
            // etcd cancels a watch that needs events below the compaction revision, even
            // when they are still at hand.
            if from < self.ctx.store.compact_revision() {
                self.cancel_compacted(id).await?;
                continue;
            }
            let (batches, covered): (Vec<Arc<EventBatch>>, i64) = match self
                .ctx
                .hub
                .recent(from, current)
            {
                Some(b) => (b, current),
                None => {
                    let compacted = self.ctx.store.compact_revision();
                    let res = if from < compacted {
                        Err(store::Error::Compacted)
                    } else {
                        self.ctx
                            .store
                            .events(w.range.clone(), from, current, HISTORY_STEP)
                            .await
                    };
                    match res {
                        Ok((b, covered)) => (b.into_iter().map(Arc::new).collect(), covered),
                        Err(store::Error::Compacted) => {
                            self.cancel_compacted(id).await?;
                            continue;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, watch_id = id, "watch history read failed");
                            let _ = self.out.send(Err(Status::from(e))).await;
                            return Err(Gone);
                        }
                    }
                }
            };
            self.send_events(id, &batches, covered).await?;
            if covered < current {
                behind = true;
            }
        }
        Ok(behind)
    }

    async fn cancel_compacted(&mut self, id: i64) -> Result<(), Gone> {
        if self.watches.remove(&id).is_some() {
            self.ctx.metrics.watches.dec();
        }
        let compacted = self.ctx.store.compact_revision();
        self.send(PbWatchResponse {
            header: Some(self.ctx.header(0)),
            watch_id: id,
            canceled: true,
            compact_revision: compacted,
            ..Default::default()
        })
        .await
    }

    async fn send_events(
        &mut self,
        id: i64,
        batches: &[Arc<EventBatch>],
        covered: i64,
    ) -> Result<(), Gone> {
        let compacted = self.ctx.store.compact_revision();
        let Some(w) = self.watches.get_mut(&id) else {
            return Ok(());
        };
        let mut events = Vec::new();
        let mut responses = Vec::new();
        for b in batches {
            for ev in &b.events {
                if w.wants(ev) {
                    let mut ev = ev.clone();
                    // etcd reads prev_kv at mod_revision - 1; below the compaction revision
                    // that read fails and the event goes without it (Kubernetes relies on this
                    // to expire a watch started from a compacted resourceVersion).
                    let rev = ev.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                    if !w.prev_kv || rev - 1 < compacted {
                        ev.prev_kv = None;
                    }
                    events.push(ev);
                }
            }
            if events.len() >= MAX_EVENTS_PER_RESPONSE {
                responses.push((b.revision, std::mem::take(&mut events)));
            }
        }
        if !events.is_empty() {
            responses.push((covered, events));
        }
        w.next_rev = covered + 1;
        if responses.is_empty() {
            return Ok(());
        }
        w.active = true;
        let fragment = w.fragment;
        let limit = self.ctx.options.max_request_bytes;
        for (rev, events) in responses {
            let resp = PbWatchResponse {
                header: Some(self.ctx.header(rev)),
                watch_id: id,
                events,
                ..Default::default()
            };
            if fragment && resp.encoded_len() > limit && resp.events.len() > 1 {
                for part in fragments(resp, limit) {
                    self.send(part).await?;
                }
            } else {
                self.send(resp).await?;
            }
        }
        Ok(())
    }

    /// etcd's periodic progress: each synced watch with progress_notify that was idle during the
    /// last interval gets a notification with the current revision.
    async fn periodic_progress(&mut self, current: i64) -> Result<(), Gone> {
        let mut due = Vec::new();
        for w in self.watches.values_mut() {
            if w.progress_notify && !w.active && w.next_rev > current {
                due.push(w.id);
            }
            w.active = false;
        }
        for id in due {
            self.send(PbWatchResponse {
                header: Some(self.ctx.header(current)),
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }
}

/// Splits a response whose events exceed `limit` bytes into fragments; all but the last carry
/// `fragment: true`.
fn fragments(resp: PbWatchResponse, limit: usize) -> Vec<PbWatchResponse> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0;
    for ev in resp.events {
        let len = ev.encoded_len();
        if !cur.is_empty() && bytes + len > limit {
            out.push(PbWatchResponse {
                header: resp.header,
                watch_id: resp.watch_id,
                fragment: true,
                events: std::mem::take(&mut cur),
                ..Default::default()
            });
            bytes = 0;
        }
        bytes += len;
        cur.push(ev);
    }
    out.push(PbWatchResponse {
        header: resp.header,
        watch_id: resp.watch_id,
        events: cur,
        ..Default::default()
    });
    out
}
