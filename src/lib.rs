//! Netsy: an etcd-v3-compatible key-value server for Kubernetes whose permanent store is object
//! storage, with a full local SQLite copy on every node.
//!
//! # Layout
//! - [`config`]: node settings from flags, `NETSY_*` variables and the embedded default.
//! - [`server`]: wiring of one node: listeners, store, services, background tasks, shutdown.
//! - [`api`]: the etcd v3 gRPC services (kv, watch, lease, cluster, maintenance); `api::status`
//!   is the only map from errors to etcd's gRPC codes and messages.
//! - [`store`]: the SQLite MVCC store: schema, byte-exact ranges, txns, compaction, leases, the
//!   single writer thread with group commit and its durability hook.
//! - [`watch`]: the watch hub: recent-event ring and revision notifications.
//! - [`health`]: the plain-HTTP health port (`/livez`, `/health`, `/readyz`, `/version`, `/metrics`).
//! - [`metrics`]: the Prometheus registry.
//! - [`systemd`]: sd-notify READY/STATUS/STOPPING/WATCHDOG (no-ops outside systemd).
//! - [`telemetry`]: logging to journald, JSON or a terminal.
//!
//! Data flows one way: request → api → store (→ object storage through the commit hook).

pub mod api;
pub mod config;
pub mod health;
pub mod metrics;
pub mod server;
pub mod store;
pub mod systemd;
pub mod telemetry;
pub mod watch;
