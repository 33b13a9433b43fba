//! The writer lock in the bucket (`leader/elector.json`, the original's lock file and JSON
//! shape): a node writes to a bucket only while it holds the lock, renewed by conditional writes.
//! Other nodes wait as standbys and take over once the holder stops renewing — so several
//! nodes on one bucket never write concurrently, and a standby replaces a dead writer. Losing
//! the lock stops the process (fencing); a paused writer that resumes is additionally fenced by
//! the create-only chunk keys.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::objstore::{Error, ObjectStorage, cas};

/// A holder that has not renewed for this long is considered gone.
pub const LOCK_TTL: Duration = Duration::from_secs(15);
/// How often the holder renews.
pub const RENEW_EVERY: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LockRecord {
    #[serde(rename = "leaderID")]
    leader_id: String,
    #[serde(rename = "leaderAddr")]
    leader_addr: String,
    #[serde(rename = "lastUpdated")]
    last_updated: String,
}

pub struct BucketLock {
    storage: ObjectStorage,
    node_id: String,
    addr: String,
    etag: String,
}

fn record(node_id: &str, addr: &str) -> Bytes {
    let r = LockRecord {
        leader_id: node_id.to_string(),
        leader_addr: addr.to_string(),
        last_updated: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
    };
    Bytes::from(serde_json::to_vec(&r).unwrap_or_default())
}

impl BucketLock {
    /// Tries once to take the lock. Ok(None) = held by another live node (its id).
    pub async fn try_acquire(
        storage: &ObjectStorage,
        node_id: &str,
        addr: &str,
    ) -> Result<Result<BucketLock, String>, Error> {
        let key = storage.layout().elector();
        let store = storage.store().as_ref();
        let current = cas::get(store, &key).await?;
        let etag = match current {
            None => match cas::create(store, &key, record(node_id, addr)).await {
                Ok(etag) => etag,
                Err(Error::AlreadyExists { .. }) => {
                    return Ok(Err("another node (just now)".into()));
                }
                Err(e) => return Err(e),
            },
            Some(v) => {
                let held: Option<LockRecord> = serde_json::from_slice(&v.bytes).ok();
                if let Some(h) = &held {
                    let fresh = humantime::parse_rfc3339_weak(&h.last_updated)
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age < LOCK_TTL);
                    if h.leader_id != node_id && fresh {
                        return Ok(Err(h.leader_id.clone()));
                    }
                }
                match cas::update(store, &key, record(node_id, addr), &v.etag).await {
                    Ok(etag) => etag,
                    Err(Error::Precondition { .. }) => {
                        return Ok(Err("another node (just now)".into()));
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        Ok(Ok(BucketLock {
            storage: storage.clone(),
            node_id: node_id.to_string(),
            addr: addr.to_string(),
            etag: etag.unwrap_or_default(),
        }))
    }

    /// Renews the lock; `Error::Precondition` means another node holds it now.
    pub async fn renew(&mut self) -> Result<(), Error> {
        let key = self.storage.layout().elector();
        let store = self.storage.store().as_ref();
        let bytes = record(&self.node_id, &self.addr);
        match cas::update(store, &key, bytes, &self.etag).await {
            Ok(etag) => {
                self.etag = etag.unwrap_or_default();
                Ok(())
            }
            Err(Error::Precondition { .. }) => {
                // An earlier renewal whose answer we never got may have landed: only a record
                // naming another node means the lock was taken over.
                let current = cas::get(store, &key).await?;
                let ours = current.as_ref().is_some_and(|v| {
                    serde_json::from_slice::<LockRecord>(&v.bytes)
                        .is_ok_and(|r| r.leader_id == self.node_id)
                });
                match current {
                    Some(v) if ours => {
                        let bytes = record(&self.node_id, &self.addr);
                        self.etag = cas::update(store, &key, bytes, &v.etag)
                            .await?
                            .unwrap_or_default();
                        Ok(())
                    }
                    _ => Err(Error::Precondition {
                        key: key.to_string(),
                    }),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Renews until `shutdown`; stops the process if the lock is taken over or cannot be
    /// renewed within its TTL. On shutdown, releases the lock so a standby takes over at once.
    pub async fn keep(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut last_ok = std::time::Instant::now();
        let mut tick = tokio::time::interval(RENEW_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => {
                    self.release().await;
                    return;
                }
            }
            match tokio::time::timeout(RENEW_EVERY, self.renew()).await {
                Ok(Ok(())) => last_ok = std::time::Instant::now(),
                Ok(Err(Error::Precondition { .. })) => {
                    stop("the writer lock was taken over by another node");
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "renewing the writer lock failed; retrying")
                }
                Err(_) => tracing::warn!("renewing the writer lock timed out; retrying"),
            }
            // Give up before a standby may consider the lock stale.
            if last_ok.elapsed() > LOCK_TTL - RENEW_EVERY {
                stop("the writer lock could not be renewed in time");
            }
        }
    }

    /// Marks the lock stale so a standby can take over without waiting for the TTL.
    async fn release(&self) {
        let key = self.storage.layout().elector();
        let stale = LockRecord {
            leader_id: self.node_id.clone(),
            leader_addr: self.addr.clone(),
            last_updated: humantime::format_rfc3339(SystemTime::UNIX_EPOCH).to_string(),
        };
        let bytes = Bytes::from(serde_json::to_vec(&stale).unwrap_or_default());
        if let Err(e) = cas::update(self.storage.store().as_ref(), &key, bytes, &self.etag).await {
            tracing::warn!(error = %e, "releasing the writer lock failed; a standby takes over after its TTL");
        }
    }
}

fn stop(reason: &str) -> ! {
    tracing::error!("{reason}; stopping to stay fenced");
    eprintln!("netsy: {reason}; stopping to stay fenced");
    std::process::exit(75)
}
