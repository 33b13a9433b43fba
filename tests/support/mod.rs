//! The one support module of the integration tests (each `tests/*.rs` file says `mod support;`):
//!
//! - `node`: one netsy node (the real binary) with its storage/cluster configuration — start,
//!   wait until healthy, kill -9, restart, logs and metrics;
//! - `server`: the comparison servers — etcd 3.5.1, etcd 3.4.23 or netsy with defaults;
//! - `grpc`: a raw etcd v3 gRPC client and request builders;
//! - `tls`: certificates on disk, a TLS stub server and TLS test clients;
//! - `weed`: seaweedfs (`weed mini`) as a real S3 server; `proxy`: a fault-injecting TCP proxy;
//!   `net`: network partitions by iptables;
//! - `workload` and `lincheck`: a write workload with its ledger, and the history checkers;
//! - `ports`, `http`, `wait`, `fs`: free ports, a tiny HTTP client for the health port, bounded
//!   polling, and file-system helpers.
//!
//! Every wait here is bounded by a deadline; nothing sleeps to synchronise. Each integration test
//! is its own crate and uses only part of this, hence `#[allow(dead_code)]` at its `mod support;`.

pub mod fs;
pub mod grpc;
pub mod http;
pub mod lincheck;
pub mod net;
pub mod node;
pub mod ports;
pub mod proxy;
pub mod server;
pub mod tls;
pub mod wait;
pub mod weed;
pub mod workload;
