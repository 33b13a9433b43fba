//! The etcd v3 gRPC services on the client port, one file per service.
//!
//! Owns: request validation, response headers, streaming (Watch, LeaseKeepAlive, RangeStream),
//! metrics per RPC. Never runs SQL: every read and write goes through `store`. Every error
//! becomes a gRPC status in `status.rs` and nowhere else.

pub(crate) mod cluster;
mod kv;
mod lease;
pub(crate) mod local;
pub(crate) mod maintenance;
pub(crate) mod router;
pub(crate) mod status;
pub(crate) mod validate;
mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::proto::PbResponseHeader;

pub use kv::KvService;
pub use lease::LeaseService;
pub use router::{Leader, Router, Standalone};
pub use watch::WatchService;

use crate::metrics::Metrics;
use crate::store::Store;
use crate::watch::WatchHub;

/// The etcd version this server reports (Maintenance.Status, /version). kube-apiserver enables
/// watch progress requests and consistent reads from cache for etcd >= 3.5.13.
pub const ETCD_VERSION: &str = "3.5.21";
/// The etcd cluster version reported by /version.
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";

/// Tunables of the API layer.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// etcd's `--max-request-bytes`.
    pub max_request_bytes: usize,
    /// etcd's `--experimental-watch-progress-notify-interval`.
    pub progress_notify_interval: Duration,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            max_request_bytes: 1536 * 1024,
            progress_notify_interval: Duration::from_secs(600),
        }
    }
}

/// Identity of this member as etcd clients see it.
#[derive(Debug, Clone)]
pub struct Member {
    pub cluster_id: u64,
    pub member_id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
    pub peer_urls: Vec<String>,
}

/// State shared by every service.
#[derive(Clone)]
pub struct Context {
    pub store: Store,
    pub hub: WatchHub,
    pub member: Arc<Member>,
    pub options: Arc<ApiOptions>,
    pub metrics: Metrics,
    pub serving: Arc<AtomicBool>,
    /// Where requests run (a Replica forwards writes to the Primary).
    pub router: Arc<dyn Router>,
}

impl Context {
    pub fn header(&self, revision: i64) -> PbResponseHeader {
        PbResponseHeader {
            cluster_id: self.member.cluster_id,
            member_id: self.member.member_id,
            revision,
            raft_term: self.router.term().max(1),
        }
    }

    /// The member id of the current Primary (0 while there is none).
    pub fn leader_id(&self) -> u64 {
        match self.router.leader() {
            Leader::ThisNode => self.member.member_id,
            Leader::Member(id) => id,
            Leader::Unknown => 0,
        }
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }
}

/// FNV-1a 64 of a string: the etcd cluster id derived from `cluster_id`, as the original does.
pub fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}
