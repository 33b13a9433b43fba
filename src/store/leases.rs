//! Lease state: TTLs and deadlines in memory, grants persisted in the `leases` table, and the
//! keys attached to each lease (rebuilt from the records at startup).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::Result;

#[derive(Debug, Clone)]
pub struct LeaseInfo {
    pub id: i64,
    /// The TTL the lease was granted with, in seconds.
    pub ttl: i64,
    pub deadline: Instant,
    pub keys: BTreeSet<Vec<u8>>,
}

impl LeaseInfo {
    /// Remaining seconds, rounded up like etcd.
    pub fn remaining_secs(&self, now: Instant) -> i64 {
        let left = self.deadline.saturating_duration_since(now);
        let secs = left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0);
        secs.min(self.ttl)
    }
}

#[derive(Debug, Default)]
pub struct LeaseTable {
    inner: Mutex<HashMap<i64, LeaseInfo>>,
}

impl LeaseTable {
    /// Loads granted leases (every lease restarts with its full TTL, as etcd does after a
    /// restart) and the keys attached to them (the live keys of `kv_current`).
    pub fn load(conn: &Connection) -> Result<LeaseTable> {
        let now = Instant::now();
        let mut map = HashMap::new();
        let mut stmt = conn.prepare("SELECT id, ttl FROM leases")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))? {
            let (id, ttl) = row?;
            map.insert(
                id,
                LeaseInfo {
                    id,
                    ttl,
                    deadline: now + secs(ttl),
                    keys: BTreeSet::new(),
                },
            );
        }
        let mut stmt = conn.prepare(
            "SELECT r.key, r.lease FROM kv_current c
             CROSS JOIN records r ON r.revision = c.revision AND r.sub = c.sub
             WHERE r.lease != 0",
        )?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))? {
            let (key, lease) = row?;
            if let Some(l) = map.get_mut(&lease) {
                l.keys.insert(key);
            }
        }
        Ok(LeaseTable {
            inner: Mutex::new(map),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<i64, LeaseInfo>) -> T) -> T {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    pub(super) fn replace_with(&self, other: LeaseTable) {
        let map = other.inner.into_inner().unwrap_or_else(|p| p.into_inner());
        self.with(|m| *m = map);
    }

    pub fn exists(&self, id: i64) -> bool {
        self.with(|m| m.contains_key(&id))
    }

    pub fn get(&self, id: i64) -> Option<LeaseInfo> {
        self.with(|m| m.get(&id).cloned())
    }

    pub fn ids(&self) -> Vec<i64> {
        self.with(|m| {
            let mut ids: Vec<i64> = m.keys().copied().collect();
            ids.sort_unstable();
            ids
        })
    }

    pub fn len(&self) -> usize {
        self.with(|m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn insert(&self, id: i64, ttl: i64) {
        self.with(|m| {
            m.insert(
                id,
                LeaseInfo {
                    id,
                    ttl,
                    deadline: Instant::now() + secs(ttl),
                    keys: BTreeSet::new(),
                },
            );
        });
    }

    pub(super) fn remove(&self, id: i64) -> Option<LeaseInfo> {
        self.with(|m| m.remove(&id))
    }

    pub(super) fn attach(&self, id: i64, key: &[u8]) {
        self.with(|m| {
            if let Some(l) = m.get_mut(&id) {
                l.keys.insert(key.to_vec());
            }
        });
    }

    pub(super) fn detach(&self, id: i64, key: &[u8]) {
        self.with(|m| {
            if let Some(l) = m.get_mut(&id) {
                l.keys.remove(key);
            }
        });
    }

    /// Extends a lease to its full TTL; returns the TTL, or None if it does not exist.
    pub fn renew(&self, id: i64) -> Option<i64> {
        self.with(|m| {
            m.get_mut(&id).map(|l| {
                l.deadline = Instant::now() + secs(l.ttl);
                l.ttl
            })
        })
    }

    /// Leases whose deadline has passed.
    pub fn expired(&self, now: Instant) -> Vec<i64> {
        self.with(|m| {
            m.values()
                .filter(|l| l.deadline <= now)
                .map(|l| l.id)
                .collect()
        })
    }

    /// Gives every lease a fresh full TTL (after a restart or a leadership change).
    pub fn refresh_all(&self) {
        let now = Instant::now();
        self.with(|m| {
            for l in m.values_mut() {
                l.deadline = now + secs(l.ttl);
            }
        });
    }
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}
