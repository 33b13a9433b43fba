//! Bad input at the API (issue #9): invalid, oversize and malformed requests, and floods of
//! watches and leases, against the real binary. Where etcd defines an answer, the same request
//! goes to etcd 3.5.1 as well and both answers are asserted to be etcd's exact gRPC code and
//! message; the floods assert that netsy keeps answering and that its resident memory stays
//! within a bound.
//!
//! Nothing sleeps to synchronise; every wait has a deadline.

#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use bytes::Bytes;
use http_body_util::BodyExt;
use support::grpc::*;
use support::server::*;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// What a request must get: etcd's answer.
#[derive(Clone, Debug, PartialEq)]
enum Expect {
    /// Success (the response itself is checked by the case, if at all).
    Ok,
    /// This exact code and message.
    Err(Code, String),
    /// A known deviation, asserted on both sides so that a change to either is noticed.
    Differs {
        etcd: Box<Expect>,
        netsy: Box<Expect>,
    },
    /// Netsy must answer this; the request is not sent to etcd 3.5.1 (it would crash it).
    NetsyOnly(Box<Expect>),
}

fn differs(etcd: Expect, netsy: Expect) -> Expect {
    Expect::Differs {
        etcd: Box::new(etcd),
        netsy: Box::new(netsy),
    }
}

fn err(code: Code, msg: &str) -> Expect {
    Expect::Err(code, msg.to_string())
}

fn outcome<T>(r: &Rpc<T>) -> Expect {
    match r {
        Ok(_) => Expect::Ok,
        Err(s) => Expect::Err(s.code(), s.message().to_string()),
    }
}

fn matches(expect: &Expect, got: &Expect) -> bool {
    expect == got
}

/// Both servers, started together.
async fn both() -> Result<(Server, Server)> {
    let (etcd, netsy) = tokio::join!(Server::start(Kind::Etcd35), Server::start(Kind::Netsy));
    Ok((etcd?, netsy?))
}

/// A server answers a small Range within `within` (it is still serving).
async fn assert_serving(s: &Server, within: Duration) {
    let c = s.client().await.expect("connect");
    let t = Instant::now();
    let r = tokio::time::timeout(within, c.range(range_req("probe"))).await;
    match r {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("{}: Range failed: {e:?}", s.kind.name()),
        Err(_) => panic!(
            "{}: Range not answered within {within:?} ({:?})",
            s.kind.name(),
            t.elapsed()
        ),
    }
}

fn txn_of(ops: Vec<PbTxnRequestOp>) -> PbTxnRequest {
    PbTxnRequest {
        success: ops,
        ..Default::default()
    }
}

fn puts(n: usize, prefix: &str) -> Vec<PbTxnRequestOp> {
    (0..n)
        .map(|i| op_put(put_req(format!("{prefix}{i}"), "v")))
        .collect()
}

/// One request of the table, sent the same way to either server.
#[derive(Clone)]
enum Req {
    Range(PbRangeRequest),
    Put(PbPutRequest),
    Delete(PbDeleteRequest),
    Txn(PbTxnRequest),
    Compact(PbCompactionRequest),
    Grant(PbLeaseGrantRequest),
    Revoke(PbLeaseRevokeRequest),
}

async fn send(c: &Client, r: Req) -> Expect {
    match r {
        Req::Range(r) => outcome(&c.range(r).await),
        Req::Put(r) => outcome(&c.put(r).await),
        Req::Delete(r) => outcome(&c.delete_range(r).await),
        Req::Txn(r) => outcome(&c.txn(r).await),
        Req::Compact(r) => outcome(&c.compact(r).await),
        Req::Grant(r) => outcome(&c.lease_grant(r).await),
        Req::Revoke(r) => outcome(&c.lease_revoke(r).await),
    }
}

/// Sends each case to etcd and netsy (in order, on one fresh pair of servers) and checks both
/// against the expected answer. Returns the failures, one line each.
async fn run_table(cases: Vec<(&'static str, Req, Expect)>) -> Result<()> {
    let (etcd, netsy) = both().await?;
    let (ce, cn) = (etcd.client().await?, netsy.client().await?);
    let mut failures = Vec::new();
    for (name, req, expect) in cases {
        let (for_etcd, for_netsy) = match expect {
            Expect::Differs { etcd, netsy } => (Some(*etcd), *netsy),
            Expect::NetsyOnly(netsy) => (None, *netsy),
            both => (Some(both.clone()), both),
        };
        let e = match &for_etcd {
            Some(_) => Some(send(&ce, req.clone()).await),
            None => None,
        };
        let n = send(&cn, req).await;
        eprintln!("{name}: etcd {e:?} | netsy {n:?}");
        if let (Some(want), Some(got)) = (&for_etcd, &e)
            && !matches(want, got)
        {
            failures.push(format!(
                "{name}: etcd answered {got:?}, the test expects {want:?}"
            ));
        }
        if !matches(&for_netsy, &n) {
            failures.push(format!(
                "{name}: netsy answered {n:?}, the test expects {for_netsy:?} (etcd: {e:?})"
            ));
        }
    }
    assert_serving(&netsy, Duration::from_secs(5)).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

const NO_KEY: &str = "etcdserver: key is not provided";
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
const DUP_KEY: &str = "etcdserver: duplicate key given in txn request";
const TOO_LARGE: &str = "etcdserver: request is too large";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_key_ranges_get_etcds_codes_and_messages() -> Result<()> {
    let ia = Code::InvalidArgument;
    run_table(vec![
        (
            "range: empty key",
            Req::Range(range_req("")),
            err(ia, NO_KEY),
        ),
        (
            "range: empty key with range_end",
            Req::Range(range_of("", "b")),
            err(ia, NO_KEY),
        ),
        (
            "range: range_end before key",
            Req::Range(range_of("b", "a")),
            Expect::Ok,
        ),
        (
            "range: range_end equal to key",
            Req::Range(range_of("b", "b")),
            Expect::Ok,
        ),
        // etcd 3.5.1 does not check sort options: it ignores an unknown order and crashes
        // (the whole server) on an unknown target. Later etcd releases answer
        // ErrGRPCInvalidSortOption, as netsy does.
        (
            "range: sort order 7",
            Req::Range(PbRangeRequest {
                sort_order: 7,
                ..range_req("a")
            }),
            differs(Expect::Ok, err(ia, "etcdserver: invalid sort option")),
        ),
        (
            "range: sort target -1",
            Req::Range(PbRangeRequest {
                sort_target: -1,
                ..range_req("a")
            }),
            Expect::NetsyOnly(Box::new(err(ia, "etcdserver: invalid sort option"))),
        ),
        (
            "range: negative limit",
            Req::Range(PbRangeRequest {
                limit: -5,
                ..range_of("a", "z")
            }),
            Expect::Ok,
        ),
        (
            "range: future revision",
            Req::Range(PbRangeRequest {
                revision: 1_000_000,
                ..range_req("a")
            }),
            err(
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
        ),
        (
            "put: empty key",
            Req::Put(put_req("", "v")),
            err(ia, NO_KEY),
        ),
        (
            "put: ignore_value with a value",
            Req::Put(PbPutRequest {
                ignore_value: true,
                ..put_req("a", "v")
            }),
            err(ia, "etcdserver: value is provided"),
        ),
        (
            "put: ignore_lease with a lease",
            Req::Put(PbPutRequest {
                ignore_lease: true,
                lease: 5,
                ..put_req("a", "v")
            }),
            err(ia, "etcdserver: lease is provided"),
        ),
        (
            "put: ignore_value on a missing key",
            Req::Put(PbPutRequest {
                ignore_value: true,
                ..put_req("missing", "")
            }),
            err(ia, "etcdserver: key not found"),
        ),
        (
            "put: unknown lease",
            Req::Put(PbPutRequest {
                lease: 12345,
                ..put_req("a", "v")
            }),
            err(Code::NotFound, "etcdserver: requested lease not found"),
        ),
        (
            "delete: empty key",
            Req::Delete(del_req("")),
            err(ia, NO_KEY),
        ),
        (
            "delete: range_end before key",
            Req::Delete(del_range("b", "a")),
            Expect::Ok,
        ),
        (
            "compact: future revision",
            Req::Compact(PbCompactionRequest {
                revision: 1_000_000,
                physical: false,
            }),
            err(
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
        ),
        (
            "lease: TTL above etcd's maximum",
            Req::Grant(PbLeaseGrantRequest {
                ttl: 9_000_000_001,
                id: 0,
            }),
            err(Code::OutOfRange, "etcdserver: too large lease TTL"),
        ),
        (
            "lease: revoke an unknown lease",
            Req::Revoke(PbLeaseRevokeRequest { id: 424242 }),
            err(Code::NotFound, "etcdserver: requested lease not found"),
        ),
        (
            "lease: grant id 77",
            Req::Grant(PbLeaseGrantRequest { ttl: 60, id: 77 }),
            Expect::Ok,
        ),
        (
            "lease: grant id 77 again",
            Req::Grant(PbLeaseGrantRequest { ttl: 60, id: 77 }),
            err(Code::FailedPrecondition, "etcdserver: lease already exists"),
        ),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_txns_get_etcds_codes_and_messages() -> Result<()> {
    let ia = Code::InvalidArgument;
    let nested = |ops| op_txn(txn_of(ops));
    run_table(vec![
        (
            "txn: 128 puts",
            Req::Txn(txn_of(puts(128, "ok/"))),
            Expect::Ok,
        ),
        (
            "txn: 129 puts",
            Req::Txn(txn_of(puts(129, "many/"))),
            err(ia, TOO_MANY_OPS),
        ),
        (
            "txn: 129 compares",
            Req::Txn(PbTxnRequest {
                compare: (0..129)
                    .map(|i| compare(format!("c{i}"), cmp::EQUAL, PbTargetUnion::Version(0)))
                    .collect(),
                ..Default::default()
            }),
            err(ia, TOO_MANY_OPS),
        ),
        (
            "txn: 129 failure ops",
            Req::Txn(PbTxnRequest {
                failure: (0..129)
                    .map(|i| op_range(range_req(format!("r{i}"))))
                    .collect(),
                ..Default::default()
            }),
            err(ia, TOO_MANY_OPS),
        ),
        (
            "txn: 100 ops plus a nested txn of 29",
            Req::Txn(txn_of({
                let mut ops = puts(100, "outer/");
                ops.push(nested(puts(29, "inner/")));
                ops
            })),
            err(ia, TOO_MANY_OPS),
        ),
        (
            "txn: the same key put twice",
            Req::Txn(txn_of(vec![
                op_put(put_req("dup", "1")),
                op_put(put_req("dup", "2")),
            ])),
            err(ia, DUP_KEY),
        ),
        (
            "txn: a put inside a deleted range",
            Req::Txn(txn_of(vec![
                op_del(del_range("a", "c")),
                op_put(put_req("b", "1")),
            ])),
            err(ia, DUP_KEY),
        ),
        (
            "txn: a nested put of a key the outer txn puts",
            Req::Txn(txn_of(vec![
                op_put(put_req("k", "1")),
                nested(vec![op_put(put_req("k", "2"))]),
            ])),
            err(ia, DUP_KEY),
        ),
        (
            "txn: the same key in then and else",
            Req::Txn(PbTxnRequest {
                success: vec![op_put(put_req("k", "1"))],
                failure: vec![op_put(put_req("k", "2"))],
                ..Default::default()
            }),
            Expect::Ok,
        ),
        (
            "txn: a compare with an empty key",
            Req::Txn(PbTxnRequest {
                compare: vec![compare("", cmp::EQUAL, PbTargetUnion::Version(0))],
                ..Default::default()
            }),
            err(ia, NO_KEY),
        ),
        (
            "txn: an op with no request",
            Req::Txn(txn_of(vec![PbTxnRequestOp { request: None }])),
            err(ia, "etcdserver: key not found"),
        ),
        (
            "txn: a put with an empty key",
            Req::Txn(txn_of(vec![op_put(put_req("", "v"))])),
            err(ia, NO_KEY),
        ),
        (
            "txn: a range with a bad sort option",
            Req::Txn(txn_of(vec![op_range(PbRangeRequest {
                sort_order: 9,
                ..range_req("a")
            })])),
            // As for Range (see invalid_key_ranges_get_etcds_codes_and_messages).
            differs(Expect::Ok, err(ia, "etcdserver: invalid sort option")),
        ),
    ])
    .await
}

/// etcd's `--max-request-bytes` is 1.5 MiB and its gRPC receive limit that plus 512 KiB: a
/// write between the two is refused by etcd's own check, a message above the second by gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_requests_get_etcds_codes() -> Result<()> {
    let ia = Code::InvalidArgument;
    let kib = |n: usize| vec![b'x'; n * 1024];
    run_table(vec![
        ("put: 1 MiB value", Req::Put(put_req("big", kib(1024))), Expect::Ok),
        (
            "put: 1.6 MiB value",
            Req::Put(put_req("big", kib(1640))),
            err(ia, TOO_LARGE),
        ),
        (
            "put: 1.6 MiB key",
            Req::Put(put_req(kib(1640), "v")),
            err(ia, TOO_LARGE),
        ),
        (
            "txn: 20 puts of 100 KiB",
            Req::Txn(txn_of(
                (0..20)
                    .map(|i| op_put(put_req(format!("t{i}"), kib(100))))
                    .collect(),
            )),
            err(ia, TOO_LARGE),
        ),
        (
            "delete: 1.6 MiB range_end",
            Req::Delete(del_range("a", kib(1640))),
            err(ia, TOO_LARGE),
        ),
        (
            "range: 1.6 MiB key (reads are not size-checked)",
            Req::Range(range_req(kib(1640))),
            Expect::Ok,
        ),
        (
            "put: 2.5 MiB value (over the gRPC limit)",
            Req::Put(put_req("big", kib(2560))),
            // Known deviation: tonic's decoder refuses the message before netsy's handler
            // runs, with OutOfRange. Matching etcd needs a layer where the services are built
            // (src/server.rs) that maps it to ResourceExhausted.
            differs(
                err(
                    Code::ResourceExhausted,
                    "grpc: received message larger than max (2621450 vs. 2097152)",
                ),
                err(
                    Code::OutOfRange,
                    "Error, decoded message length too large: found 2621450 bytes, the limit is: 2097152 bytes",
                ),
            ),
        ),
    ])
    .await
}

// ---------------------------------------------------------------------------------------------
// Malformed gRPC messages
// ---------------------------------------------------------------------------------------------

/// POSTs `body` as the HTTP/2 body of a gRPC call to `path` and returns the gRPC status.
async fn raw_call(ch: &Channel, path: &str, body: Vec<u8>) -> Result<tonic::Status> {
    use tower::Service;
    let req = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            Bytes::from(body),
        )))?;
    let mut ch = ch.clone();
    let fut = async move {
        futures::future::poll_fn(|cx| ch.poll_ready(cx)).await?;
        let resp = ch.call(req).await?;
        let (parts, body) = resp.into_parts();
        let collected = body
            .collect()
            .await
            .map_err(|e| anyhow!("response body: {e}"))?;
        let status = collected
            .trailers()
            .and_then(tonic::Status::from_header_map)
            .or_else(|| tonic::Status::from_header_map(&parts.headers))
            .ok_or_else(|| anyhow!("no grpc-status in the answer"))?;
        Ok::<_, anyhow::Error>(status)
    };
    tokio::time::timeout(CALL_DEADLINE, fut)
        .await
        .map_err(|_| anyhow!("{path}: no answer within {CALL_DEADLINE:?}"))?
}

fn framed(flag: u8, msg: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

async fn channel(s: &Server) -> Result<Channel> {
    Endpoint::from_shared(s.endpoint())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .context("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_grpc_messages_are_refused_and_the_server_keeps_serving() -> Result<()> {
    let (etcd, netsy) = both().await?;
    let (che, chn) = (channel(&etcd).await?, channel(&netsy).await?);
    // Field 1 (key) claims 100 bytes and the message ends; then an invalid wire type 7.
    let truncated_field = vec![0x0a, 100, b'a'];
    let bad_wire_type = vec![0x0f, 0x01];
    let internal = (Code::Internal, Code::Internal);
    let mut cases: Vec<(&str, &str, Vec<u8>, (Code, Code))> = vec![
        (
            "Range: truncated field",
            "/etcdserverpb.KV/Range",
            framed(0, &truncated_field),
            internal,
        ),
        (
            "Range: wire type 7",
            "/etcdserverpb.KV/Range",
            framed(0, &bad_wire_type),
            internal,
        ),
        (
            "Put: 0xff × 64",
            "/etcdserverpb.KV/Put",
            framed(0, &[0xff; 64]),
            internal,
        ),
        (
            "Txn: 0xff × 64",
            "/etcdserverpb.KV/Txn",
            framed(0, &[0xff; 64]),
            internal,
        ),
        (
            "LeaseGrant: 11-byte varint",
            "/etcdserverpb.Lease/LeaseGrant",
            framed(
                0,
                &[
                    0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ],
            ),
            internal,
        ),
        (
            "Range: compressed flag without an encoding",
            "/etcdserverpb.KV/Range",
            framed(1, &[0x0a, 0x01, b'a']),
            internal,
        ),
        (
            "Range: frame cut short",
            "/etcdserverpb.KV/Range",
            {
                let mut f = framed(0, &[0x0a, 0x01, b'a']);
                f.truncate(6);
                f
            },
            // Known deviation: grpc-go answers Unknown ("unexpected EOF"), tonic's decoder
            // Internal, before netsy's handler runs (a fix would be a layer in src/server.rs).
            (Code::Unknown, Code::Internal),
        ),
    ];
    // A deeply nested Txn: 200 levels of success[0].request_txn. Known deviation: etcd decodes
    // it and refuses it as too many operations (each level counts against the 128); prost
    // stops at 100 message levels (50 txn levels) with Internal and a long message.
    let mut nested: Vec<u8> = Vec::new();
    for _ in 0..200 {
        let mut op = vec![0x22]; // RequestOp.request_txn
        op.extend(varint(nested.len()));
        op.extend(&nested);
        let mut txn = vec![0x12]; // TxnRequest.success
        txn.extend(varint(op.len()));
        txn.extend(op);
        nested = txn;
    }
    cases.push((
        "Txn: nested 200 deep",
        "/etcdserverpb.KV/Txn",
        framed(0, &nested),
        (Code::InvalidArgument, Code::Internal),
    ));

    let mut failures = Vec::new();
    for (name, path, body, (etcd_code, netsy_code)) in cases {
        let e = raw_call(&che, path, body.clone()).await;
        let n = raw_call(&chn, path, body).await;
        let show = |r: &Result<tonic::Status>| match r {
            Ok(s) => format!("{:?} {:?}", s.code(), s.message()),
            Err(e) => format!("no status: {e:#}"),
        };
        eprintln!("{name}: etcd {} | netsy {}", show(&e), show(&n));
        if !matches!(&e, Ok(s) if s.code() == etcd_code) {
            failures.push(format!(
                "{name}: etcd answered {}, expected {etcd_code:?}",
                show(&e)
            ));
        }
        if !matches!(&n, Ok(s) if s.code() == netsy_code) {
            failures.push(format!(
                "{name}: netsy answered {}, expected {netsy_code:?}",
                show(&n)
            ));
        }
        // The same connection still serves.
        let ok = raw_call(
            &chn,
            "/etcdserverpb.KV/Range",
            framed(0, &[0x0a, 0x01, b'a']),
        )
        .await?;
        assert_eq!(
            ok.code(),
            Code::Ok,
            "{name}: netsy no longer serves: {ok:?}"
        );
    }
    assert_serving(&netsy, Duration::from_secs(5)).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

// ---------------------------------------------------------------------------------------------
// Floods
// ---------------------------------------------------------------------------------------------

/// Resident memory of a process in KiB (`VmRSS` in /proc/PID/status).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Receives watch responses until `n` creations were confirmed; returns their ids.
async fn await_created(w: &mut WatchConn, n: usize, within: Duration) -> Vec<i64> {
    let deadline = tokio::time::Instant::now() + within;
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        match w.recv_until(deadline).await {
            Ok(Some(r)) if r.created => {
                assert!(!r.canceled, "watch refused: {}", r.cancel_reason);
                ids.push(r.watch_id);
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!(
                "only {} of {n} watches created within {within:?}",
                ids.len()
            ),
            Err(e) => panic!("watch stream failed after {} creations: {e:?}", ids.len()),
        }
    }
    ids
}

/// Receives until `n` events arrived on the stream.
async fn await_events(w: &mut WatchConn, n: usize, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    let mut got = 0;
    while got < n {
        match w.recv_until(deadline).await {
            Ok(Some(r)) => got += r.events.len(),
            Ok(None) => panic!("only {got} of {n} events within {within:?}"),
            Err(e) => panic!("watch stream failed after {got} events: {e:?}"),
        }
    }
}

/// Growth of netsy's resident memory allowed for 10,000 watches. Measured here: +2.5 MiB on
/// one stream, +9.4 MiB on 400 streams (from ~14 MiB).
const WATCH_FLOOD_RSS_BOUND_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_watches_on_one_stream() -> Result<()> {
    let netsy = Server::start(Kind::Netsy).await?;
    let pid = netsy.pid().expect("pid");
    let c = netsy.client().await?;
    c.put(put_req("flood/k", "0")).await?;
    let before = rss_kib(pid);
    let mut w = c.watch().await?;
    // Creates go in batches, each awaited: a client that sends without reading is (correctly)
    // pushed back by flow control once the server's answers fill the window.
    let (n, batch) = (10_000, 100);
    let t = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n / batch {
        for _ in 0..batch {
            w.create(WatchCreate::key("flood/k")).await?;
        }
        ids.extend(await_created(&mut w, batch, Duration::from_secs(60)).await);
    }
    let created_in = t.elapsed();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), n, "watch ids must be distinct");
    // While 10,000 watches exist the server answers other clients promptly.
    assert_serving(&netsy, Duration::from_secs(2)).await;
    // One put reaches every watch.
    let t = Instant::now();
    c.put(put_req("flood/k", "1")).await?;
    await_events(&mut w, n, Duration::from_secs(120)).await;
    let fanout_in = t.elapsed();
    let after = rss_kib(pid);
    eprintln!(
        "10,000 watches on one stream: created in {created_in:?}, one put fanned out in {fanout_in:?}; VmRSS {before} KiB -> {after} KiB (+{} KiB)",
        after.saturating_sub(before)
    );
    assert!(
        after.saturating_sub(before) < WATCH_FLOOD_RSS_BOUND_KIB,
        "VmRSS grew by {} KiB",
        after - before
    );
    drop(w);
    assert_serving(&netsy, Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_watches_on_four_hundred_streams() -> Result<()> {
    let netsy = Server::start(Kind::Netsy).await?;
    let pid = netsy.pid().expect("pid");
    let before = rss_kib(pid);
    // 4 connections × 100 streams × 25 watches.
    let (conns, streams, per) = (4, 100, 25);
    let mut tasks = Vec::new();
    let t = Instant::now();
    for ci in 0..conns {
        let c = netsy.client().await?;
        for si in 0..streams {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let mut w = c.watch().await?;
                for wi in 0..per {
                    w.create(WatchCreate::key(format!("many/{ci}/{si}/{wi}")))
                        .await?;
                }
                await_created(&mut w, per, Duration::from_secs(120)).await;
                Ok::<_, anyhow::Error>(w)
            }));
        }
    }
    let mut open = Vec::new();
    for t in tasks {
        open.push(t.await??);
    }
    let created_in = t.elapsed();
    assert_serving(&netsy, Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    eprintln!(
        "{} watches on {} streams: created in {created_in:?}; VmRSS {before} KiB -> {after} KiB (+{} KiB)",
        conns * streams * per,
        conns * streams,
        after.saturating_sub(before)
    );
    assert!(
        after.saturating_sub(before) < WATCH_FLOOD_RSS_BOUND_KIB,
        "VmRSS grew by {} KiB",
        after - before
    );
    drop(open);
    assert_serving(&netsy, Duration::from_secs(5)).await;
    Ok(())
}

/// Growth of netsy's resident memory allowed for 10,000 leases. Measured here: +2.7 MiB.
const LEASE_FLOOD_RSS_BOUND_KIB: u64 = 32 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_lease_grants() -> Result<()> {
    let netsy = Server::start(Kind::Netsy).await?;
    let pid = netsy.pid().expect("pid");
    let c = netsy.client().await?;
    let before = rss_kib(pid);
    let n = 10_000usize;
    let workers = 32;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for wk in 0..workers {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in (wk..n).step_by(workers) {
                let r = c
                    .lease_grant(PbLeaseGrantRequest { ttl: 3600, id: 0 })
                    .await
                    .map_err(|e| anyhow!("grant: {e:?}"))?;
                assert_eq!(r.ttl, 3600);
                ids.push(r.id);
            }
            Ok::<_, anyhow::Error>(ids)
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await??);
    }
    let granted_in = t.elapsed();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "lease ids must be distinct");
    assert_serving(&netsy, Duration::from_secs(2)).await;
    let leases = c.lease_leases().await?;
    assert_eq!(leases.leases.len(), n);
    let after = rss_kib(pid);
    eprintln!(
        "{n} lease grants with {workers} clients in {granted_in:?}; VmRSS {before} KiB -> {after} KiB (+{} KiB)",
        after.saturating_sub(before)
    );
    assert!(
        after.saturating_sub(before) < LEASE_FLOOD_RSS_BOUND_KIB,
        "VmRSS grew by {} KiB",
        after - before
    );
    // A keep-alive and a time-to-live of one of them still answer.
    let mut ka = c.keep_alive().await?;
    let r = ka.keep_alive(ids[n / 2]).await?;
    assert_eq!(r.ttl, 3600);
    Ok(())
}
