//! Arbitrary bytes as requests to the etcd KV, Watch and Lease services: the real tonic servers
//! (the same services and decoding limit the node serves) over a real store in a temporary
//! directory, called in process as tower services. Every request must end with a response or a
//! gRPC status within a bound, never a panic or a hang.
//!
//! Input: byte 0 picks the method (low nibble) and whether the rest is sent as the raw HTTP/2
//! body (bit 7: arbitrary gRPC framing) or as gRPC messages. A unary method gets the rest as one
//! message; a streaming method (Watch, LeaseKeepAlive) gets a sequence of `[len: u8][bytes]`.
#![no_main]

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::proto::{PbKvServer, PbLeaseServer, PbWatchServer};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use netsy::api::{self, ApiOptions, Context, Member};
use netsy::metrics::Metrics;
use netsy::store::{NoopCommitHook, Store, StoreOptions};
use netsy::watch::{RingLimits, WatchHub};
use tower::ServiceExt;

/// Every request must be answered within this; longer is a hang (a finding).
const DEADLINE: Duration = Duration::from_secs(10);

/// (path, streaming request)
const METHODS: [(&str, bool); 12] = [
    ("/etcdserverpb.KV/Range", false),
    ("/etcdserverpb.KV/Put", false),
    ("/etcdserverpb.KV/DeleteRange", false),
    ("/etcdserverpb.KV/Txn", false),
    ("/etcdserverpb.KV/Compact", false),
    ("/etcdserverpb.KV/RangeStream", false),
    ("/etcdserverpb.Watch/Watch", true),
    ("/etcdserverpb.Lease/LeaseGrant", false),
    ("/etcdserverpb.Lease/LeaseRevoke", false),
    ("/etcdserverpb.Lease/LeaseKeepAlive", true),
    ("/etcdserverpb.Lease/LeaseTimeToLive", false),
    ("/etcdserverpb.Lease/LeaseLeases", false),
];

struct Harness {
    rt: tokio::runtime::Runtime,
    kv: PbKvServer<api::KvService>,
    watch: PbWatchServer<api::WatchService>,
    lease: PbLeaseServer<api::LeaseService>,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        // tmpfs when there is one: SQLite's fsync would dominate otherwise.
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            std::path::PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("netsy-fuzz-api-")
            .tempdir_in(base)
            .expect("temp dir");
        let hub = WatchHub::new(RingLimits::default());
        let store = rt.block_on(async {
            Store::open(
                StoreOptions {
                    data_dir: dir.path().to_path_buf(),
                    node_id: "fuzz".into(),
                    readers: 2,
                    fatal: Default::default(),
                },
                hub.clone(),
                Box::new(NoopCommitHook),
            )
            .expect("open store")
        });
        let options = ApiOptions::default();
        let max_msg = options.max_request_bytes + 512 * 1024;
        let ctx = Context {
            // A lone store: every request is executed locally.
            router: Arc::new(api::Standalone),
            store,
            hub,
            member: Arc::new(Member {
                cluster_id: api::fnv1a64("fuzz"),
                member_id: api::fnv1a64("fuzz"),
                name: "fuzz".into(),
                client_urls: vec!["http://127.0.0.1:2379".into()],
                peer_urls: vec!["http://127.0.0.1:2380".into()],
            }),
            options: Arc::new(options),
            metrics: Metrics::new("fuzz", "fuzz"),
            serving: Arc::new(AtomicBool::new(true)),
        };
        Harness {
            kv: PbKvServer::new(api::KvService::new(ctx.clone()))
                .max_decoding_message_size(max_msg),
            watch: PbWatchServer::new(api::WatchService::new(ctx.clone()))
                .max_decoding_message_size(max_msg),
            lease: PbLeaseServer::new(api::LeaseService::new(ctx))
                .max_decoding_message_size(max_msg),
            rt,
            _dir: dir,
        }
    })
}

/// gRPC's length-prefixed message: flag 0 (uncompressed), big-endian u32 length, bytes.
fn frame(out: &mut Vec<u8>, msg: &[u8]) {
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
}

fn body_of(rest: &[u8], raw: bool, streaming: bool) -> Vec<u8> {
    if raw {
        return rest.to_vec();
    }
    let mut out = Vec::with_capacity(rest.len() + 16);
    if !streaming {
        frame(&mut out, rest);
        return out;
    }
    let mut pos = 0;
    while pos < rest.len() {
        let len = usize::from(rest[pos]);
        pos += 1;
        let end = (pos + len).min(rest.len());
        frame(&mut out, &rest[pos..end]);
        pos = end;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (path, streaming) = METHODS[usize::from(sel & 0x0f) % METHODS.len()];
    let raw = sel & 0x80 != 0;
    let body = Bytes::from(body_of(rest, raw, streaming));
    let h = harness();
    let req = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(body))
        .expect("request");
    h.rt.block_on(async {
        let call = async {
            let resp = if path.starts_with("/etcdserverpb.KV/") {
                h.kv.clone().oneshot(req).await
            } else if path.starts_with("/etcdserverpb.Watch/") {
                h.watch.clone().oneshot(req).await
            } else {
                h.lease.clone().oneshot(req).await
            };
            let Ok(resp) = resp;
            // Drain the response (streams end when the request body has ended).
            let _ = resp.into_body().collect().await;
        };
        if tokio::time::timeout(DEADLINE, call).await.is_err() {
            panic!("{path}: no complete answer within {DEADLINE:?}");
        }
    });
});
