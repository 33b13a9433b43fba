//! Writer epochs: the fence against chunks of deposed writers.
//!
//! Every time a node takes the writer lock it gets the next epoch (a counter in
//! `leader/elector.json`, advanced by compare-and-swap, so no two writers share one). Once it has
//! loaded the bucket, and before it writes anything, it records the first revision it will write
//! in `leader/epochs/{epoch}.json` (create-only), and stamps every chunk it writes with its epoch.
//!
//! A chunk upload can land long after its writer gave up on it (a held request, a paused or
//! killed process). Such a chunk may claim revisions that the next writer has since written
//! differently. The rule that makes it harmless: a chunk of epoch `e` is an *orphan* when a later
//! epoch starts at or before the chunk's last revision. The later writer loaded every chunk that
//! its predecessors had confirmed before it started, so an orphan was never acknowledged; readers
//! skip orphans, and a writer that finds one on a key it needs replaces it (compare-and-swap).

use std::collections::BTreeMap;
use std::time::SystemTime;

use bytes::Bytes;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::objstore::{Error, ObjectStorage, cas};

/// Content of `leader/epochs/{epoch}.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct EpochRecord {
    pub epoch: u64,
    /// The first revision this epoch's writer writes.
    pub start_revision: i64,
    pub node_id: String,
    pub created_at: String,
}

/// The epoch records of a bucket: epoch → first revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct EpochLog {
    starts: BTreeMap<u64, i64>,
}

impl EpochLog {
    /// Reads every epoch record of the bucket. Unreadable records are an error: guessing could
    /// let an orphan in.
    pub(crate) async fn load(storage: &ObjectStorage) -> Result<EpochLog, Error> {
        let store = storage.store();
        let dir = storage.layout().epochs_dir();
        let metas: Vec<_> = store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(Error::Store)?;
        let mut log = EpochLog::default();
        for meta in metas {
            let Some(epoch) = storage.layout().parse_epoch(&meta.location) else {
                continue;
            };
            let Some(v) = cas::get(store.as_ref(), &meta.location).await? else {
                continue;
            };
            let rec: EpochRecord = serde_json::from_slice(&v.bytes).map_err(|e| {
                Error::Config(format!("unreadable epoch record {}: {e}", meta.location))
            })?;
            log.starts.insert(epoch, rec.start_revision);
        }
        Ok(log)
    }

    /// Records that `epoch` starts at `start_revision` (create-only; an identical record left by
    /// an earlier attempt is accepted).
    pub(crate) async fn record(
        &mut self,
        storage: &ObjectStorage,
        epoch: u64,
        start_revision: i64,
        node_id: &str,
    ) -> Result<(), Error> {
        let key = storage.layout().epoch(epoch);
        let rec = EpochRecord {
            epoch,
            start_revision,
            node_id: node_id.to_string(),
            created_at: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
        };
        let body = Bytes::from(serde_json::to_vec(&rec).unwrap_or_default());
        match cas::create(storage.store().as_ref(), &key, body).await {
            Ok(_) => {}
            Err(Error::AlreadyExists { .. }) => {
                let found = cas::get(storage.store().as_ref(), &key).await?;
                let same = found
                    .and_then(|v| serde_json::from_slice::<EpochRecord>(&v.bytes).ok())
                    .is_some_and(|r| r.node_id == node_id && r.start_revision == start_revision);
                if !same {
                    return Err(Error::Conflict {
                        key: key.to_string(),
                    });
                }
            }
            Err(e) => return Err(e),
        }
        self.starts.insert(epoch, start_revision);
        Ok(())
    }

    /// Adds an epoch (tests).
    #[cfg(test)]
    pub(crate) fn insert(&mut self, epoch: u64, start_revision: i64) {
        self.starts.insert(epoch, start_revision);
    }

    /// Whether a chunk of `epoch` ending at `last_revision` is an orphan of a deposed writer.
    pub(crate) fn is_orphan(&self, epoch: u64, last_revision: i64) -> bool {
        self.starts
            .range(epoch.saturating_add(1)..)
            .any(|(_, start)| last_revision >= *start)
    }

    #[cfg(test)]
    /// The newest epoch recorded.
    pub(crate) fn latest(&self) -> u64 {
        self.starts.keys().next_back().copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_an_orphan_once_a_later_epoch_starts_at_or_before_its_end() {
        let mut log = EpochLog::default();
        assert!(!log.is_orphan(0, 100), "no epochs: nothing is fenced");
        log.insert(1, 10);
        log.insert(2, 20);
        // Files of the original implementation (epoch 0) before epoch 1 started.
        assert!(!log.is_orphan(0, 9));
        assert!(log.is_orphan(0, 10));
        // Epoch 1 owns 10..=19.
        assert!(!log.is_orphan(1, 19));
        assert!(
            log.is_orphan(1, 20),
            "a late chunk of epoch 1 reaching into epoch 2"
        );
        assert!(log.is_orphan(1, 25));
        // The newest epoch is never fenced.
        assert!(!log.is_orphan(2, 1_000));
        assert_eq!(log.latest(), 2);
    }

    #[test]
    fn an_epoch_that_wrote_nothing_still_fences_its_predecessors() {
        let mut log = EpochLog::default();
        log.insert(3, 50);
        log.insert(4, 50); // epoch 3 took over and died before writing
        assert!(log.is_orphan(2, 50));
        assert!(log.is_orphan(3, 50));
        assert!(!log.is_orphan(4, 50));
    }
}
