//! Netsy: an etcd-v3-compatible key-value server whose permanent store is object storage.
//!
//! # Layout
//! - [`proto`] — generated protobuf types for our own protos (`proto/netsy/*.proto`).

pub mod proto;
