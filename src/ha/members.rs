//! Membership: every node registers `nodes/{node_id}.json` and rewrites it periodically
//! ([`registration_every`]);
//! `members.json` maps node ids to etcd member ids, allocated once (max + 1, by compare-and-swap)
//! and never reused, so a restarted node keeps its id. The Primary removes registrations that
//! it has not seen refreshed for `elector.deregistration_timeout` (by its own monotonic clock:
//! no wall clocks are compared across nodes). `MemberList` shows every registered node.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::objstore::{Error, ObjectStorage, cas};

/// Runs before a Primary removes stale registrations; false keeps them (see
/// [`Membership::deregister_stale`]).
pub(crate) type BeforeRemoval = dyn Fn() -> futures::future::BoxFuture<'static, bool> + Send + Sync;

/// `members.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct MembersFile {
    pub cluster_id: String,
    pub members: BTreeMap<String, u64>,
}

/// `nodes/{node_id}.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct NodeRecord {
    pub node_id: String,
    pub member_id: u64,
    pub client_advertise_address: String,
    pub peer_advertise_address: String,
    /// RFC 3339.
    pub last_heartbeat: String,
}

/// One row of MemberList.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MemberInfo {
    pub name: String,
    pub id: u64,
    pub client_urls: Vec<String>,
    pub peer_urls: Vec<String>,
}

/// This node's registration and the cluster's member list as last read.
#[derive(Clone)]
pub(crate) struct Membership {
    storage: ObjectStorage,
    me: Arc<RwLock<NodeRecord>>,
    scheme: &'static str,
    list: Arc<RwLock<Vec<MemberInfo>>>,
}

impl Membership {
    /// Allocates (or finds) this node's member id and registers it.
    pub(crate) async fn register(
        storage: &ObjectStorage,
        cluster_id: &str,
        node_id: &str,
        client_addr: &str,
        peer_addr: &str,
        scheme: &'static str,
    ) -> Result<Membership, Error> {
        let member_id = allocate(storage, cluster_id, node_id).await?;
        let me = NodeRecord {
            node_id: node_id.to_string(),
            member_id,
            client_advertise_address: client_addr.to_string(),
            peer_advertise_address: peer_addr.to_string(),
            last_heartbeat: now(),
        };
        let m = Membership {
            storage: storage.clone(),
            me: Arc::new(RwLock::new(me)),
            scheme,
            list: Arc::new(RwLock::new(Vec::new())),
        };
        m.heartbeat().await?;
        m.refresh().await?;
        Ok(m)
    }

    pub(crate) fn member_id(&self) -> u64 {
        self.me.read().map(|m| m.member_id).unwrap_or(0)
    }

    /// Member id of a node, from the last list read.
    pub(crate) fn member_id_of(&self, node_id: &str) -> Option<u64> {
        self.list
            .read()
            .ok()?
            .iter()
            .find(|m| m.name == node_id)
            .map(|m| m.id)
    }

    /// The last list read (sorted by member id).
    pub(crate) fn list(&self) -> Vec<MemberInfo> {
        self.list.read().map(|l| l.clone()).unwrap_or_default()
    }

    /// Refreshes this node's registration.
    pub(crate) async fn heartbeat(&self) -> Result<(), Error> {
        let rec = {
            let mut me = self.me.write().unwrap_or_else(|p| p.into_inner());
            me.last_heartbeat = now();
            me.clone()
        };
        let key = self.storage.layout().node(&rec.node_id)?;
        let body = Bytes::from(serde_json::to_vec(&rec).unwrap_or_default());
        self.storage
            .store()
            .put(&key, body.into())
            .await
            .map_err(Error::Store)?;
        Ok(())
    }

    /// Re-reads every registration.
    pub(crate) async fn refresh(&self) -> Result<(), Error> {
        let records = read_nodes(&self.storage).await?;
        let mut list: Vec<MemberInfo> = records
            .into_iter()
            .map(|(_, r)| MemberInfo {
                name: r.node_id,
                id: r.member_id,
                client_urls: vec![format!("{}://{}", self.scheme, r.client_advertise_address)],
                peer_urls: vec![format!("{}://{}", self.scheme, r.peer_advertise_address)],
            })
            .collect();
        list.sort_by_key(|m| m.id);
        if let Ok(mut l) = self.list.write() {
            *l = list;
        }
        Ok(())
    }

    /// Primary only: removes registrations that this node has not seen change for `timeout`
    /// (0 = never). Staleness is observed on this node's monotonic clock — a registration's
    /// `last_heartbeat` is written by another node's wall clock, which may be skewed or jump —
    /// so a node only becomes a candidate after this node watched it stand still for `timeout`.
    ///
    /// `before_removal` runs once before the first removal and must return true for any to
    /// happen: in quorum mode it uploads the chunk buffer, whose records may have been
    /// receipted by the node about to leave the count (docs/design/0010, "Membership").
    pub(crate) async fn deregister_stale(
        &self,
        timeout: Duration,
        seen: &mut HashMap<object_store::path::Path, (String, Instant)>,
        before_removal: &BeforeRemoval,
    ) -> Result<usize, Error> {
        if timeout.is_zero() {
            return Ok(0);
        }
        let mine = self
            .me
            .read()
            .map(|m| m.node_id.clone())
            .unwrap_or_default();
        let now = Instant::now();
        let records = read_nodes(&self.storage).await?;
        seen.retain(|k, _| records.iter().any(|(key, _)| key == k));
        let mut removed = 0;
        let mut cleared = false;
        for (key, r) in records {
            let stamp = format!("{}/{}", r.last_heartbeat, r.member_id);
            let since = match seen.get(&key) {
                Some((last, at)) if *last == stamp => *at,
                _ => {
                    seen.insert(key.clone(), (stamp, now));
                    now
                }
            };
            if r.node_id != mine && now.duration_since(since) > timeout {
                if !cleared {
                    if !before_removal().await {
                        tracing::warn!(node = %r.node_id, "stale registration kept: the chunk buffer could not be uploaded first");
                        return Ok(removed);
                    }
                    cleared = true;
                }
                match self.storage.store().delete(&key).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                        tracing::info!(node = %r.node_id, member_id = r.member_id, "node_deregistered: no heartbeat");
                        seen.remove(&key);
                        removed += 1;
                    }
                    Err(e) => return Err(Error::Store(e)),
                }
            }
        }
        Ok(removed)
    }

    /// Re-reads the member list every `every` until `stop`, and rewrites this node's
    /// registration every [`registration_every`]; a Primary also deregisters stale nodes
    /// (`is_primary`).
    pub(crate) async fn run(
        self,
        every: Duration,
        deregistration_timeout: Duration,
        is_primary: impl Fn() -> bool + Send + 'static,
        before_removal: Box<BeforeRemoval>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut seen = HashMap::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let rewrite_every = registration_every(every, deregistration_timeout);
        // `register` has just written it.
        let mut written = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if written.elapsed() >= rewrite_every {
                match self.heartbeat().await {
                    Ok(()) => written = Instant::now(),
                    Err(e) => tracing::warn!(error = %e, "node registration heartbeat failed"),
                }
            }
            if !is_primary() {
                // A new term observes afresh.
                seen.clear();
            } else {
                if let Err(e) = self
                    .deregister_stale(deregistration_timeout, &mut seen, &before_removal)
                    .await
                {
                    tracing::warn!(error = %e, "removing stale registrations failed");
                }
            }
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "reading the member list failed");
            }
        }
    }
}

/// How often a node rewrites its registration: six times per deregistration timeout (every
/// 30 s at the default 3 min), never more often than once per heartbeat. Liveness within a
/// term comes from the peer connections (receipts and heartbeats); the registration only has to
/// outlive the timeout, and every rewrite is a billed PUT per node. With deregistration
/// disabled (0) it is rewritten once a minute, which restores it if it was removed by hand.
pub(crate) fn registration_every(
    heartbeat: Duration,
    deregistration_timeout: Duration,
) -> Duration {
    if deregistration_timeout.is_zero() {
        Duration::from_secs(60).max(heartbeat)
    } else {
        (deregistration_timeout / 6).max(heartbeat)
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

async fn read_nodes(
    storage: &ObjectStorage,
) -> Result<Vec<(object_store::path::Path, NodeRecord)>, Error> {
    let metas: Vec<_> = storage
        .store()
        .list(Some(&storage.layout().nodes_dir()))
        .try_collect()
        .await
        .map_err(Error::Store)?;
    let mut out = Vec::new();
    for meta in metas {
        let Some(v) = cas::get(storage.store().as_ref(), &meta.location).await? else {
            continue;
        };
        match serde_json::from_slice::<NodeRecord>(&v.bytes) {
            Ok(r) => out.push((meta.location, r)),
            Err(e) => {
                tracing::warn!(key = %meta.location, error = %e, "unreadable node registration ignored")
            }
        }
    }
    Ok(out)
}

/// This node's member id from `members.json`, allocating the next one if it has none.
async fn allocate(storage: &ObjectStorage, cluster_id: &str, node_id: &str) -> Result<u64, Error> {
    let key = storage.layout().members();
    let store = storage.store().as_ref();
    for _ in 0..20 {
        let current = cas::get(store, &key).await?;
        let mut file = match &current {
            Some(v) => serde_json::from_slice::<MembersFile>(&v.bytes)
                .map_err(|e| Error::Config(format!("unreadable members.json: {e}")))?,
            None => MembersFile {
                cluster_id: cluster_id.to_string(),
                members: BTreeMap::new(),
            },
        };
        if let Some(id) = file.members.get(node_id) {
            return Ok(*id);
        }
        let id = file.members.values().max().copied().unwrap_or(0) + 1;
        file.members.insert(node_id.to_string(), id);
        let body = Bytes::from(serde_json::to_vec(&file).unwrap_or_default());
        let res = match &current {
            None => cas::create(store, &key, body).await,
            Some(v) => cas::update(store, &key, body, &v.etag).await,
        };
        match res {
            Ok(_) => {
                tracing::info!(node = node_id, member_id = id, "member_id_allocated");
                return Ok(id);
            }
            Err(Error::AlreadyExists { .. } | Error::Precondition { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::Config(
        "members.json: too many concurrent updates".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objstore::layout::Layout;
    use crate::objstore::retry::RetryConfig;
    use object_store::memory::InMemory;

    fn storage() -> ObjectStorage {
        ObjectStorage::with_backend(
            Arc::new(InMemory::new()),
            Layout::new("").unwrap(),
            RetryConfig::default(),
            None,
        )
    }

    #[test]
    fn registrations_are_rewritten_six_times_per_deregistration_timeout() {
        let hb = Duration::from_secs(1);
        assert_eq!(
            registration_every(hb, Duration::from_secs(180)),
            Duration::from_secs(30)
        );
        // Never more often than the heartbeat, and rarely when nobody deregisters.
        assert_eq!(registration_every(hb, Duration::from_secs(3)), hb);
        assert_eq!(
            registration_every(hb, Duration::ZERO),
            Duration::from_secs(60)
        );
    }

    /// A node whose wall clock is far behind writes old-looking timestamps; it stays
    /// registered as long as its record keeps changing, and goes only after it stood still for
    /// the timeout as measured by the Primary.
    #[tokio::test]
    async fn deregistration_ignores_wall_clocks_and_watches_for_change() {
        let s = storage();
        let a = Membership::register(&s, "c", "node-a", "a:1", "a:2", "http")
            .await
            .unwrap();
        let b = Membership::register(&s, "c", "node-b", "b:1", "b:2", "http")
            .await
            .unwrap();
        assert_eq!((a.member_id(), b.member_id()), (1, 2));
        let behind = |m: &Membership| {
            let mut me = m.me.write().unwrap();
            me.last_heartbeat =
                humantime::format_rfc3339_millis(SystemTime::now() - Duration::from_secs(3600))
                    .to_string();
        };
        let write_behind = |m: Membership| async move {
            let rec = m.me.read().unwrap().clone();
            let key = m.storage.layout().node(&rec.node_id).unwrap();
            m.storage
                .store()
                .put(&key, Bytes::from(serde_json::to_vec(&rec).unwrap()).into())
                .await
                .unwrap();
        };
        behind(&b);
        write_behind(b.clone()).await;
        let timeout = Duration::from_millis(300);
        let mut seen = HashMap::new();
        // An hour-old timestamp is not stale on first sight.
        assert_eq!(
            a.deregister_stale(timeout, &mut seen, &|| Box::pin(async { true }))
                .await
                .unwrap(),
            0
        );
        // A changed record (even if still an hour behind) restarts the observation.
        tokio::time::sleep(Duration::from_millis(200)).await;
        b.me.write().unwrap().last_heartbeat.push('x');
        write_behind(b.clone()).await;
        assert_eq!(
            a.deregister_stale(timeout, &mut seen, &|| Box::pin(async { true }))
                .await
                .unwrap(),
            0
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            a.deregister_stale(timeout, &mut seen, &|| Box::pin(async { true }))
                .await
                .unwrap(),
            0
        );
        // Unchanged for longer than the timeout: removed, but only once `before_removal`
        // (the chunk buffer's upload) succeeded; this node never removes itself.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            a.deregister_stale(timeout, &mut seen, &|| Box::pin(async { false }))
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            a.deregister_stale(timeout, &mut seen, &|| Box::pin(async { true }))
                .await
                .unwrap(),
            1
        );
        a.refresh().await.unwrap();
        assert_eq!(
            a.list().iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["node-a"]
        );
    }
}
