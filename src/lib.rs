//! Netsy: an etcd-v3-compatible key-value server whose permanent store is object storage.

pub mod tls;
