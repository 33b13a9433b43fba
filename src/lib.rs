//! Netsy: an etcd-v3-compatible key-value server for Kubernetes whose permanent store is object
//! storage, with a full local SQLite copy on every node.
//!
//! # Layout (top-level modules, from the wire down)
//! - [`server`]: wiring of one node (listeners, store, roles, background tasks, shutdown);
//!   [`grpc`] builds its two gRPC servers. [`cli`]: the tool commands (`netsy certs`,
//!   `netsy datafile inspect`). [`config`]: node settings from flags, `NETSY_*` variables and the
//!   embedded default; the JSONC cluster config file.
//! - [`api`]: the etcd v3 gRPC services. `api::status` is the only map from errors to etcd's
//!   gRPC codes and messages; `api::Router` is its one interface to replication; `api::local`
//!   is what the Primary runs itself (the same functions serve forwarded requests).
//! - [`ha`]: several nodes on one bucket: `ha::Supervisor` owns the role (writer lock, election,
//!   promotion, handover); `ha::Cluster` implements `api::Router` (forwarding, read barriers);
//!   the peer service, the replication feed and follower, membership.
//! - [`durability`]: object storage as the system of record: the commit hook that uploads each
//!   group before it commits, snapshots, startup backfill, the writer epochs, the fence.
//! - [`store`]: the SQLite MVCC store: schema, ranges, txns, compaction, leases, the single
//!   writer thread with group commit and its commit hook.
//! - [`watch`]: the watch hub: recent-event ring and revision notifications.
//! - [`objstore`]: object storage: construction, the object-key layout, compare-and-swap,
//!   retry/metrics/fault wrappers, and snapshot/chunk upload, listing and streaming.
//! - [`datafile`]: the `.netsy` file codec: delimited protobuf, CRC-64/XZ, optional zstd.
//! - [`proto`]: generated types of our own protos (`proto/netsy/*.proto`).
//! - [`fatal`]: the fatal-error channel to `main`, which alone picks the exit code.
//! - [`health`] (the plain-HTTP health port), [`metrics`] (the Prometheus registry),
//!   [`systemd`] (sd-notify), [`telemetry`] (logging), [`tls`] (mTLS with URI-SAN identities,
//!   certificate checks, live reload).
//!
//! Visibility: crate-private by default (`unreachable_pub` is denied in CI); `pub` is what the
//! binary, the integration tests, the fuzz targets and the bench driver use.
//!
//! Data flows one way: request → api → (router: here, or forwarded to the Primary) → store →
//! commit hook → objstore. No module cycles: `tests/layering.rs` checks it.

#![warn(unreachable_pub)]

pub mod api;
pub mod cli;
pub mod config;
pub mod datafile;
pub(crate) mod durability;
pub mod fatal;
pub(crate) mod grpc;
pub(crate) mod ha;
pub(crate) mod health;
pub mod metrics;
pub mod objstore;
pub(crate) mod proto;
pub mod server;
pub mod store;
pub(crate) mod systemd;
pub mod telemetry;
#[cfg(test)]
pub(crate) mod testutil;
pub mod tls;
pub mod watch;
