//! Netsy: an etcd-v3-compatible key-value server for Kubernetes whose permanent store is object
//! storage, with a full local SQLite copy on every node.
//!
//! # Layout
//! - [`config`]: node settings from flags, `NETSY_*` variables and the embedded default; the
//!   JSONC cluster config file.
//! - [`server`]: wiring of one node: listeners, store, services, background tasks, shutdown.
//! - [`api`]: the etcd v3 gRPC services (kv, watch, lease, cluster, maintenance); `api::status`
//!   is the only map from errors to etcd's gRPC codes and messages.
//! - [`store`]: the SQLite MVCC store: schema, byte-exact ranges, txns, compaction, leases, the
//!   single writer thread with group commit and its durability hook.
//! - [`watch`]: the watch hub: recent-event ring and revision notifications.
//! - [`cluster`]: several nodes on one bucket: Primary/Replica roles, the replication feed and
//!   follower on the peer port, write forwarding, read barriers, membership.
//! - [`durability`]: object storage as the system of record: the chunk commit hook, snapshots,
//!   startup backfill, lease and compaction state in the bucket.
//! - [`objstore`]: object storage: construction, the object-key layout, compare-and-swap,
//!   retry/metrics/fault wrappers, and snapshot/chunk upload, listing and streaming.
//! - [`datafile`]: the `.netsy` file codec: delimited protobuf, CRC-64/XZ, optional zstd.
//! - [`proto`]: generated types of our own protos (`proto/netsy/*.proto`).
//! - [`health`]: the plain-HTTP health port (`/livez`, `/health`, `/readyz`, `/version`, `/metrics`).
//! - [`metrics`]: the Prometheus registry.
//! - [`systemd`]: sd-notify READY/STATUS/STOPPING/WATCHDOG (no-ops outside systemd).
//! - [`telemetry`]: logging to journald, JSON or a terminal.
//! - [`tls`]: mTLS with URI-SAN identities, certificate checks, live reload, `netsy certs`.
//!
//! Data flows one way: request → api → store → (commit hook) → objstore.

pub mod api;
pub mod cluster;
pub mod config;
pub mod datafile;
pub mod durability;
pub mod health;
pub mod metrics;
pub mod objstore;
pub mod proto;
pub mod server;
pub mod store;
pub mod systemd;
pub mod telemetry;
pub mod tls;
pub mod watch;
