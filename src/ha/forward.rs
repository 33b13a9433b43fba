//! A Replica's forwarded requests on one stream to the Primary (`Peer.ForwardStream`).
//!
//! A unary `Forward` call per request costs an HTTP/2 stream, its headers and a server task on
//! each side; measured at one client, about 0.25 ms of a forwarded write's 1.1 ms went to the
//! call and its task hops. The stream carries numbered requests and answers instead. Whether a
//! request may be sent again is decided exactly as for a unary call: only when it certainly did
//! not run (the Primary refused it as not the Primary, or the stream never connected). A request
//! in flight when the stream breaks may have run, so its caller gets a failure, never a resend.
//! A Primary that does not know the stream (an older version during an upgrade) answers
//! Unimplemented, and the link reports that so the caller makes unary calls from then on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::{Forwarded, classify, peer_failure};
use crate::api::status::{leader_changed, timed_out};
use crate::proto as pb;
use crate::proto::peer_client::PeerClient;

/// Callers waiting for their answers, by request id; `None` once the stream has ended (nothing
/// more is sent on it).
type Waiting = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Result<Vec<u8>, Forwarded>>>>>>;

/// One stream to one Primary. Opened in the background by [`ForwardLink::open`]; requests sent
/// before the Primary answered the stream's opening wait in its channel.
pub(super) struct ForwardLink {
    addr: String,
    requests: mpsc::UnboundedSender<pb::ForwardRequest>,
    waiting: Waiting,
    next_id: AtomicU64,
    /// Set when the Primary answered the stream with Unimplemented.
    unimplemented: Arc<AtomicBool>,
    /// Set once the Primary accepted the stream.
    answering: Arc<AtomicBool>,
}

impl ForwardLink {
    /// Opens a stream to the Primary at `addr` through `client`.
    pub(super) fn open(addr: &str, mut client: PeerClient<Channel>) -> ForwardLink {
        let (requests, rx) = mpsc::unbounded_channel();
        let waiting: Waiting = Arc::new(Mutex::new(Some(HashMap::new())));
        let unimplemented = Arc::new(AtomicBool::new(false));
        let answering = Arc::new(AtomicBool::new(false));
        let (w, unimpl, accepted) = (waiting.clone(), unimplemented.clone(), answering.clone());
        tokio::spawn(async move {
            let ended = match client
                .forward_stream(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
                .await
            {
                // Nothing ran: the Primary does not know the method.
                Err(e) if e.code() == Code::Unimplemented => {
                    unimpl.store(true, Ordering::Release);
                    tracing::info!("the primary takes forwarded requests one call at a time");
                    Ended::NotExecuted
                }
                Err(e) => match classify(e) {
                    Forwarded::NotExecuted(_) => Ended::NotExecuted,
                    Forwarded::Failed(s) => Ended::Failed(s),
                },
                Ok(answers) => {
                    accepted.store(true, Ordering::Release);
                    let mut answers = answers.into_inner();
                    loop {
                        match answers.message().await {
                            Ok(Some(a)) => deliver(&w, a),
                            Ok(None) => break Ended::Failed(leader_changed()),
                            Err(e) => break Ended::Failed(peer_failure(e)),
                        }
                    }
                }
            };
            // Nothing more goes on this stream; whoever still waits learns how it ended.
            let left = w.lock().unwrap_or_else(|p| p.into_inner()).take();
            for (_, waiter) in left.into_iter().flatten() {
                let _ = waiter.send(Err(ended.forwarded()));
            }
        });
        ForwardLink {
            addr: addr.to_string(),
            requests,
            waiting,
            next_id: AtomicU64::new(1),
            unimplemented,
            answering,
        }
    }

    /// The Primary's address this link goes to.
    pub(super) fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether requests can still be sent on it.
    pub(super) fn is_open(&self) -> bool {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Whether the Primary has accepted the stream (it knows the method).
    pub(super) fn is_answering(&self) -> bool {
        self.answering.load(Ordering::Acquire)
    }

    /// Whether the Primary answered the stream with Unimplemented.
    pub(super) fn unimplemented(&self) -> bool {
        self.unimplemented.load(Ordering::Acquire)
    }

    /// Sends one request and waits for its answer, at most `deadline`.
    pub(super) async fn call(
        &self,
        method: pb::ForwardMethod,
        request: Vec<u8>,
        node_id: &str,
        deadline: Duration,
    ) -> Result<Vec<u8>, Forwarded> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            // Registered and sent under the lock: the stream's end either sees this caller or
            // finds the link closed first, so no request is sent that nobody answers.
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            let Some(map) = waiting.as_mut() else {
                return Err(Forwarded::NotExecuted(leader_changed()));
            };
            let req = pb::ForwardRequest {
                method: method as i32,
                request,
                node_id: node_id.to_string(),
                id,
            };
            if self.requests.send(req).is_err() {
                return Err(Forwarded::NotExecuted(leader_changed()));
            }
            map.insert(id, tx);
        }
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Forwarded::Failed(leader_changed())),
            Err(_) => {
                if let Some(map) = self
                    .waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_mut()
                {
                    map.remove(&id);
                }
                Err(Forwarded::Failed(timed_out()))
            }
        }
    }
}

/// How a stream ended, for the callers still waiting on it.
enum Ended {
    /// Before anything was executed (it never connected, or the Primary refused it at once).
    NotExecuted,
    /// After requests may have run.
    Failed(Status),
}

impl Ended {
    fn forwarded(&self) -> Forwarded {
        match self {
            Ended::NotExecuted => Forwarded::NotExecuted(leader_changed()),
            Ended::Failed(s) => Forwarded::Failed(Status::new(s.code(), s.message())),
        }
    }
}

/// Hands an answer to its caller (gone if it timed out).
fn deliver(waiting: &Waiting, a: pb::ForwardAnswer) {
    let Some(waiter) = waiting
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_mut()
        .and_then(|m| m.remove(&a.id))
    else {
        return;
    };
    let outcome = if a.code == Code::Ok as i32 {
        Ok(a.response)
    } else if a.not_executed {
        Err(Forwarded::NotExecuted(leader_changed()))
    } else {
        Err(Forwarded::Failed(peer_failure(Status::new(
            Code::from_i32(a.code),
            a.message,
        ))))
    };
    let _ = waiter.send(outcome);
}

/// The Primary's answer to request `id` that failed with `s`.
pub(super) fn failed_answer(id: u64, s: &Status) -> pb::ForwardAnswer {
    pb::ForwardAnswer {
        id,
        response: Vec::new(),
        code: s.code() as i32,
        message: s.message().to_string(),
        not_executed: s.metadata().contains_key(super::NOT_EXECUTED),
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use futures::Stream;
    use tonic::{Request, Response};

    use super::*;
    use crate::proto::peer_server::{Peer, PeerServer};

    /// A Primary that only knows ForwardStream, and answers as each test needs.
    #[derive(Clone, Copy)]
    enum Fake {
        /// Answers every two requests in reverse order, each with its request bytes reversed;
        /// `b"refuse"` gets the not-the-Primary refusal, `b"fail"` an etcd error; `b"break"`
        /// ends the stream with an error instead of an answer.
        Primary,
        /// An older Primary: no ForwardStream.
        Older,
    }

    type Answers = Pin<Box<dyn Stream<Item = Result<pb::ForwardAnswer, Status>> + Send>>;

    #[tonic::async_trait]
    impl Peer for Fake {
        type FollowStream = Pin<Box<dyn Stream<Item = Result<pb::FollowMessage, Status>> + Send>>;
        type ForwardStreamStream = Answers;

        async fn follow(
            &self,
            _: Request<pb::FollowRequest>,
        ) -> Result<Response<Self::FollowStream>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn forward(
            &self,
            _: Request<pb::ForwardRequest>,
        ) -> Result<Response<pb::ForwardResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn forward_stream(
            &self,
            request: Request<tonic::Streaming<pb::ForwardRequest>>,
        ) -> Result<Response<Answers>, Status> {
            if let Fake::Older = self {
                return Err(Status::unimplemented("no such method"));
            }
            let mut requests = request.into_inner();
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut held: Vec<pb::ForwardRequest> = Vec::new();
                while let Ok(Some(req)) = requests.message().await {
                    match req.request.as_slice() {
                        b"break" => {
                            let _ = tx.send(Err(Status::internal("broken")));
                            return;
                        }
                        b"refuse" => {
                            let _ =
                                tx.send(Ok(failed_answer(req.id, &super::super::not_primary())));
                        }
                        b"fail" => {
                            let s = Status::failed_precondition("etcdserver: lease already exists");
                            let _ = tx.send(Ok(failed_answer(req.id, &s)));
                        }
                        _ => held.push(req),
                    }
                    if held.len() == 2 {
                        for req in held.drain(..).rev() {
                            let mut response = req.request.clone();
                            response.reverse();
                            let _ = tx.send(Ok(pb::ForwardAnswer {
                                id: req.id,
                                response,
                                ..Default::default()
                            }));
                        }
                    }
                }
            });
            Ok(Response::new(Box::pin(
                tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
            )))
        }
        async fn read_index(
            &self,
            _: Request<pb::ReadIndexRequest>,
        ) -> Result<Response<pb::ReadIndexResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn receipt(
            &self,
            _: Request<pb::ReceiptRequest>,
        ) -> Result<Response<pb::ReceiptResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn receipts(
            &self,
            _: Request<tonic::Streaming<pb::ReceiptRequest>>,
        ) -> Result<Response<pb::ReceiptResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn collect(
            &self,
            _: Request<pb::CollectRequest>,
        ) -> Result<Response<pb::CollectResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
    }

    /// Serves `fake` on a free loopback port; returns a link to it.
    async fn link_to(fake: Fake) -> ForwardLink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PeerServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        ForwardLink::open(&addr, client(&addr))
    }

    fn client(addr: &str) -> PeerClient<Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        PeerClient::new(channel)
    }

    async fn call(link: &ForwardLink, body: &[u8]) -> Result<Vec<u8>, Forwarded> {
        link.call(
            pb::ForwardMethod::ForwardTxn,
            body.to_vec(),
            "n1",
            Duration::from_secs(10),
        )
        .await
    }

    fn failure(r: Result<Vec<u8>, Forwarded>) -> (bool, String) {
        match r {
            Ok(b) => panic!("answered {b:?}"),
            Err(Forwarded::NotExecuted(s)) => (true, s.message().to_string()),
            Err(Forwarded::Failed(s)) => (false, s.message().to_string()),
        }
    }

    /// Answers that come back in another order reach their own callers; the Primary's errors
    /// pass through as final, its refusal as "may be sent again".
    #[tokio::test]
    async fn answers_reach_their_callers_and_refusals_may_be_resent() {
        let link = link_to(Fake::Primary).await;
        let (a, b) = tokio::join!(call(&link, b"abc"), call(&link, b"xyz"));
        assert_eq!((a.unwrap(), b.unwrap()), (b"cba".to_vec(), b"zyx".to_vec()));
        assert!(link.is_answering() && !link.unimplemented());
        assert_eq!(
            failure(call(&link, b"refuse").await),
            (true, "etcdserver: leader changed".to_string())
        );
        assert_eq!(
            failure(call(&link, b"fail").await),
            (false, "etcdserver: lease already exists".to_string())
        );
        assert!(link.is_open());
    }

    /// A stream that breaks with a request in flight: that request may have run, so it fails
    /// (never resent); the link is closed and refuses what comes after as never sent.
    #[tokio::test]
    async fn a_broken_stream_fails_what_was_in_flight() {
        let link = link_to(Fake::Primary).await;
        let (held, broke) = tokio::join!(call(&link, b"abc"), async {
            tokio::task::yield_now().await;
            call(&link, b"break").await
        });
        assert!(!failure(held).0, "in flight when the stream broke: final");
        assert!(!failure(broke).0);
        assert!(!link.is_open());
        assert!(failure(call(&link, b"abc").await).0, "never sent");
    }

    /// An older Primary answers Unimplemented: nothing ran, and the link says so.
    #[tokio::test]
    async fn an_older_primary_is_reported_and_nothing_ran() {
        let link = link_to(Fake::Older).await;
        assert!(failure(call(&link, b"abc").await).0);
        assert!(link.unimplemented() && !link.is_open());
    }

    /// Nobody listens: never connected, so the request may be sent again.
    #[tokio::test]
    async fn a_refused_connection_may_be_resent() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let addr = format!("127.0.0.1:{port}");
        let link = ForwardLink::open(&addr, client(&addr));
        assert!(failure(call(&link, b"abc").await).0);
        assert!(!link.unimplemented());
    }
}
