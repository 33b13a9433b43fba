//! The writer lock in the bucket (`leader/elector.json`, the original's lock file and JSON
//! shape): the node holding it is the Primary, the only node that writes to the bucket. It is
//! renewed by conditional writes; every other node watches it and takes over once it stops
//! changing. Each acquisition gets the next epoch (see `durability::epochs`), which fences the chunks of a
//! deposed holder.
//!
//! Timing never compares clocks of different nodes. The holder counts its lease from the moment
//! it SENT its last successful renewal and stops writing (the node stops) before
//! [`LockTiming::ttl`] has passed since then. A watcher counts from the moment it first SAW the
//! current version of the record and takes over only after a full `ttl` without a change; the
//! record it saw was written after the holder sent it, so the holder has stopped by then.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub(crate) use crate::durability::Fence;
use crate::fatal::{Fatal, FatalChannel};
use crate::objstore::{Error, ObjectStorage, cas};

/// How often the holder renews, how often watchers look, and how long a silent holder is
/// trusted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LockTiming {
    pub renew_every: Duration,
    pub look_every: Duration,
    pub ttl: Duration,
    /// How far below the TTL the holder's own trust ends (see [`LockTiming::holder_validity`]).
    margin: Duration,
}

impl LockTiming {
    /// From the cluster config: the holder renews once per `heartbeat_interval` (one PUT a
    /// second at the default: the lock is most of the bucket's steady write cost, see
    /// docs/design/0010) and retries a failed renewal four times as often; a holder is gone
    /// after `degradation_count + 1` heartbeat intervals without a renewal; watchers look four
    /// times per interval (reads only), so a takeover follows within a quarter interval.
    pub(crate) fn from_heartbeat(heartbeat: Duration, degradation_count: u32) -> LockTiming {
        LockTiming {
            renew_every: heartbeat,
            look_every: heartbeat / 4,
            ttl: heartbeat * (degradation_count.max(1) + 1),
            margin: heartbeat / 8,
        }
    }

    /// How long the holder trusts a renewal it sent: an eighth of an interval below the TTL. A
    /// watcher counts the TTL from when it first saw the record, which is after the holder sent
    /// it, so the margin only has to cover the two clocks' rates and the holder's reaction
    /// time. What it leaves decides how slow one renewal may be: sent an interval after the
    /// last one, it must be answered within TTL − interval − margin (1.875 s at the defaults).
    fn holder_validity(&self) -> Duration {
        self.ttl.saturating_sub(self.margin)
    }

    /// How soon a failed renewal is tried again.
    fn retry_after(&self) -> Duration {
        self.renew_every / 4
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct LockRecord {
    #[serde(rename = "leaderID")]
    pub leader_id: String,
    #[serde(rename = "leaderAddr")]
    pub leader_addr: String,
    #[serde(rename = "lastUpdated")]
    pub last_updated: String,
    /// Netsy-in-Rust extension: the writer epoch, advanced by every takeover.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
    /// Netsy-in-Rust extension: the holder's client address (for MemberList and redirects).
    #[serde(
        default,
        rename = "clientAddr",
        skip_serializing_if = "String::is_empty"
    )]
    pub client_addr: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl LockRecord {
    /// Released by its holder (a graceful stop): takeable at once.
    pub(crate) fn is_released(&self) -> bool {
        humantime::parse_rfc3339_weak(&self.last_updated)
            .is_ok_and(|t| t <= SystemTime::UNIX_EPOCH + Duration::from_secs(1))
    }
}

/// What a watcher knows about the lock: the version it saw and since when.
#[derive(Debug, Clone)]
pub(crate) struct Observation {
    pub record: Option<LockRecord>,
    etag: Option<String>,
    since: Instant,
}

impl Observation {
    /// Whether the holder may be replaced now.
    pub(crate) fn takeable(&self, timing: &LockTiming, node_id: &str) -> bool {
        match &self.record {
            None => true,
            Some(r) => {
                r.is_released() || r.leader_id == node_id || self.since.elapsed() >= timing.ttl
            }
        }
    }
}

/// Watches the lock record: [`Watcher::observe`] reads it and remembers when it last changed.
pub(crate) struct Watcher {
    storage: ObjectStorage,
    last: Option<Observation>,
}

impl Watcher {
    pub(crate) fn new(storage: ObjectStorage) -> Watcher {
        Watcher {
            storage,
            last: None,
        }
    }

    pub(crate) async fn observe(&mut self) -> Result<Observation, Error> {
        let key = self.storage.layout().elector();
        let current = cas::get(self.storage.store().as_ref(), &key).await?;
        let etag = current.as_ref().map(|v| v.etag.clone());
        let record = current
            .as_ref()
            .and_then(|v| serde_json::from_slice::<LockRecord>(&v.bytes).ok());
        let unchanged = self.last.as_ref().is_some_and(|l| l.etag == etag);
        if !unchanged {
            self.last = Some(Observation {
                record,
                etag,
                since: Instant::now(),
            });
        }
        Ok(self.last.clone().expect("set above"))
    }
}

/// A held lock.
pub(crate) struct BucketLock {
    storage: ObjectStorage,
    record: LockRecord,
    etag: String,
    timing: LockTiming,
    fence: Fence,
}

fn encode(r: &LockRecord) -> Bytes {
    Bytes::from(serde_json::to_vec(r).unwrap_or_default())
}

impl BucketLock {
    /// Takes the lock if `seen` says it may be taken, by a conditional write against exactly the
    /// version seen. `Ok(None)`: someone else changed it first.
    pub(crate) async fn take(
        storage: &ObjectStorage,
        seen: &Observation,
        node_id: &str,
        peer_addr: &str,
        client_addr: &str,
        timing: LockTiming,
    ) -> Result<Option<BucketLock>, Error> {
        let key = storage.layout().elector();
        let store = storage.store().as_ref();
        let epoch = seen.record.as_ref().map_or(0, |r| r.epoch) + 1;
        let record = LockRecord {
            leader_id: node_id.to_string(),
            leader_addr: peer_addr.to_string(),
            last_updated: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
            epoch,
            client_addr: client_addr.to_string(),
        };
        let sent = Instant::now();
        let res = match &seen.etag {
            None => cas::create(store, &key, encode(&record)).await,
            Some(etag) => cas::update(store, &key, encode(&record), etag).await,
        };
        let etag = match res {
            Ok(etag) => etag.unwrap_or_default(),
            Err(Error::AlreadyExists { .. } | Error::Precondition { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let lock = BucketLock {
            storage: storage.clone(),
            record,
            etag,
            timing,
            fence: Fence::new(),
        };
        lock.extend_from(sent);
        Ok(Some(lock))
    }

    fn extend_from(&self, sent: Instant) {
        self.fence.extend(sent, self.timing.holder_validity());
    }

    /// This holder's epoch (unique to this acquisition).
    pub(crate) fn epoch(&self) -> u64 {
        self.record.epoch
    }

    /// A cheap check the write path makes before acknowledging: whether this holder's lease is
    /// still certainly its own.
    pub(crate) fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Renews the lock; `Error::Precondition` means another node holds it now.
    pub(crate) async fn renew(&mut self) -> Result<(), Error> {
        let key = self.storage.layout().elector();
        let store = self.storage.store().as_ref();
        self.record.last_updated = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
        let sent = Instant::now();
        match cas::update(store, &key, encode(&self.record), &self.etag).await {
            Ok(etag) => {
                self.etag = etag.unwrap_or_default();
                self.extend_from(sent);
                Ok(())
            }
            Err(Error::Precondition { .. }) => {
                // An earlier renewal whose answer we never got may have landed: only a record of
                // another holder (or another epoch) means the lock was taken over.
                let current = cas::get(store, &key).await?;
                let ours = current.as_ref().is_some_and(|v| {
                    serde_json::from_slice::<LockRecord>(&v.bytes).is_ok_and(|r| {
                        r.leader_id == self.record.leader_id && r.epoch == self.record.epoch
                    })
                });
                match current {
                    Some(v) if ours => {
                        let sent = Instant::now();
                        self.etag = cas::update(store, &key, encode(&self.record), &v.etag)
                            .await?
                            .unwrap_or_default();
                        self.extend_from(sent);
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

    /// Renews until `shutdown`; records a fatal error (the node stops) if the lock is taken
    /// over or its lease runs out. On shutdown, releases the lock so another node takes over at
    /// once.
    pub(crate) async fn keep(
        mut self,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
        fatal: FatalChannel,
    ) {
        let fence = self.fence();
        let mut next = tokio::time::Instant::now() + self.timing.renew_every;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = shutdown.changed() => {
                    self.release().await;
                    return;
                }
            }
            let started = tokio::time::Instant::now();
            // A failure below tries again soon; a success waits a whole interval.
            next = started + self.timing.retry_after();
            let left = fence.remaining();
            match tokio::time::timeout(left.max(Duration::from_millis(1)), self.renew()).await {
                Ok(Ok(())) => next = started + self.timing.renew_every,
                Ok(Err(Error::Precondition { .. })) => {
                    fatal.record(Fatal::LostLock(
                        "the writer lock was taken over by another node".into(),
                    ));
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "renewing the writer lock failed; retrying")
                }
                Err(_) => tracing::warn!("renewing the writer lock timed out; retrying"),
            }
            if !fence.holds() {
                fatal.record(Fatal::LostLock(
                    "the writer lock could not be renewed in time".into(),
                ));
                return;
            }
        }
    }

    /// Marks the lock released so another node can take over without waiting for the TTL.
    async fn release(&self) {
        let key = self.storage.layout().elector();
        let released = LockRecord {
            last_updated: humantime::format_rfc3339(SystemTime::UNIX_EPOCH).to_string(),
            ..self.record.clone()
        };
        if let Err(e) = cas::update(
            self.storage.store().as_ref(),
            &key,
            encode(&released),
            &self.etag,
        )
        .await
        {
            tracing::warn!(error = %e, "releasing the writer lock failed; another node takes over after its TTL");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_follows_the_heartbeat() {
        let t = LockTiming::from_heartbeat(Duration::from_millis(1000), 2);
        assert_eq!(t.renew_every, Duration::from_millis(1000));
        assert_eq!(t.look_every, Duration::from_millis(250));
        assert_eq!(t.ttl, Duration::from_millis(3000));
        // Trusted until an eighth of an interval before a watcher may take over: a renewal sent
        // an interval after the last one may take 1.875 s to be answered.
        assert_eq!(t.holder_validity(), Duration::from_millis(2875));
        assert_eq!(t.retry_after(), Duration::from_millis(250));
    }

    #[test]
    fn a_released_record_is_recognised() {
        let mut r = LockRecord {
            leader_id: "a".into(),
            leader_addr: "x:1".into(),
            last_updated: humantime::format_rfc3339(SystemTime::UNIX_EPOCH).to_string(),
            epoch: 3,
            client_addr: String::new(),
        };
        assert!(r.is_released());
        r.last_updated = humantime::format_rfc3339(SystemTime::now()).to_string();
        assert!(!r.is_released());
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.contains("\"leaderID\":\"a\"") && json.contains("\"epoch\":3"),
            "{json}"
        );
    }
}
