//! Netsy: an etcd-v3-compatible key-value server whose permanent store is object storage.
//!
//! # Layout
//! - [`proto`] — generated protobuf types for our own protos (`proto/netsy/*.proto`).
//! - [`datafile`] — the `.netsy` file codec: delimited protobuf, CRC-64/XZ, optional zstd.
//! - [`objstore`] — object storage: construction, the object-key layout, compare-and-swap,
//!   retry/metrics/fault wrappers, and snapshot/chunk upload, listing and streaming.

pub mod datafile;
pub mod objstore;
pub mod proto;
