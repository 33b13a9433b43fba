//! A Replica's pending log: records the Primary sent in quorum mode, on this node's disk before
//! the Replica receipts them, and the highest writer epoch the node has promised to a
//! collecting successor (docs/design/0010-quorum-replication.md, "Replicas" and "Failover").
//!
//! Layout under `{data_dir}/pending/`:
//! - `promise`: the promised epoch, as decimal text; replaced atomically (temporary file,
//!   fsync, rename, directory fsync).
//! - `log`: the pending groups of one writer epoch. Each group is a little-endian `u32` length
//!   followed by an uncompressed `.netsy` chunk (header with the epoch and the writer's id,
//!   records, footer), so every record carries its CRC and a group is byte-for-byte a chunk
//!   the bucket could hold. Appends are fsync'd before [`PendingLog::append`] returns.
//!
//! A crash can leave a torn last group; opening keeps the groups that read back whole and cuts
//! the rest (a torn group was never receipted). Groups of a newer epoch replace the log: the
//! records of an older epoch that are not yet applied can only be ones its writer never
//! acknowledged, or ones a collecting successor has already taken (it collects before it
//! writes).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::datafile::{self, FileCompression, FileKind, HeaderParams, Record};

/// Why the pending log refused or failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PendingError {
    /// Records or a promise of an epoch older than one this node has promised.
    #[error("epoch {got} is older than the promised epoch {promised}")]
    StaleEpoch { got: u64, promised: u64 },
    /// Records that do not follow the log's last revision (or are not in order).
    #[error("records start at revision {got}; the pending log expects {expected}")]
    Gap { got: i64, expected: i64 },
    #[error("pending log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pending log: encoding a group: {0}")]
    Encode(#[from] datafile::Error),
}

/// The pending log of one node. Not shared: the follower loop owns it.
pub(crate) struct PendingLog {
    dir: PathBuf,
    promised: u64,
    /// Epoch of the groups in `log` (0 = empty).
    epoch: u64,
    /// Records in `log`, in revision order.
    records: Vec<Record>,
    file: File,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PendingError + '_ {
    move |source| PendingError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), PendingError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Reads whole groups from `bytes`; returns them with the length of the readable prefix.
fn read_groups(bytes: &[u8]) -> (Vec<(u64, Vec<Record>)>, usize) {
    let mut groups = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 4 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let Some(body) = bytes.get(at + 4..at + 4 + len) else {
            break;
        };
        let Ok(mut reader) = datafile::Reader::new(body, Some(FileKind::KindChunk)) else {
            break;
        };
        let epoch = reader.header().epoch;
        let mut records = Vec::new();
        let whole = loop {
            match reader.next_record() {
                Ok(Some(r)) => records.push(r),
                Ok(None) => break true,
                Err(_) => break false,
            }
        };
        if !whole || reader.finish().is_err() || records.is_empty() {
            break;
        }
        groups.push((epoch, records));
        at += 4 + len;
    }
    (groups, at)
}

impl PendingLog {
    /// Opens (creating) the pending log in `dir`, keeping every whole group of the newest epoch
    /// and cutting a torn tail.
    pub(crate) fn open(dir: &Path) -> Result<Self, PendingError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let promise_path = dir.join("promise");
        let promised = match fs::read_to_string(&promise_path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|e| PendingError::Io {
                path: promise_path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&promise_path)(e)),
        };
        let log_path = dir.join("log");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&log_path)
            .map_err(io_err(&log_path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err(&log_path))?;
        let (groups, whole) = read_groups(&bytes);
        if whole < bytes.len() {
            tracing::warn!(path = %log_path.display(), kept = whole, cut = bytes.len() - whole, "pending log: cutting a torn tail");
            file.set_len(whole as u64).map_err(io_err(&log_path))?;
            file.sync_all().map_err(io_err(&log_path))?;
        }
        file.seek(SeekFrom::End(0)).map_err(io_err(&log_path))?;
        let epoch = groups.iter().map(|(e, _)| *e).max().unwrap_or(0);
        let mut records: Vec<Record> = Vec::new();
        for (e, group) in groups {
            if e == epoch {
                records.extend(group);
            }
        }
        Ok(PendingLog {
            dir: dir.to_path_buf(),
            promised,
            epoch,
            records,
            file,
        })
    }

    /// The highest epoch this node has promised (0: none).
    #[cfg_attr(not(test), allow(dead_code))] // For the quorum hook's status (0010).
    pub(crate) fn promised(&self) -> u64 {
        self.promised
    }

    /// The epoch of the pending records (0: none).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The last pending revision, or `None` when the log is empty.
    pub(crate) fn last_revision(&self) -> Option<i64> {
        self.records.last().map(|r| r.revision)
    }

    /// Whether [`Self::applied`]`(revision)` would forget anything.
    pub(crate) fn holds_through(&self, revision: i64) -> bool {
        self.records.first().is_some_and(|r| r.revision <= revision)
    }

    /// Promises `epoch`: from now on records of older epochs are refused. Durable on return.
    /// Promising the same epoch again is a no-op; an older one is refused.
    pub(crate) fn promise(&mut self, epoch: u64) -> Result<(), PendingError> {
        if epoch < self.promised {
            return Err(PendingError::StaleEpoch {
                got: epoch,
                promised: self.promised,
            });
        }
        if epoch == self.promised {
            return Ok(());
        }
        let tmp = self.dir.join("promise.tmp");
        let path = self.dir.join("promise");
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(format!("{epoch}\n").as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        self.promised = epoch;
        Ok(())
    }

    /// Appends one group of `epoch`, written by `leader_id`. When nothing of this epoch is
    /// pending the group must follow `after` (the Replica's applied head), otherwise the last
    /// pending record. Durable on return. A group of a newer epoch replaces the log.
    pub(crate) fn append(
        &mut self,
        epoch: u64,
        leader_id: &str,
        after: i64,
        records: &[Record],
    ) -> Result<(), PendingError> {
        if epoch < self.promised || epoch < self.epoch {
            return Err(PendingError::StaleEpoch {
                got: epoch,
                promised: self.promised.max(self.epoch),
            });
        }
        let Some(first) = records.first() else {
            return Ok(());
        };
        if epoch > self.epoch {
            self.reset(epoch)?;
        }
        // Records the local copy already has (`after`: a Replica that missed pending messages
        // catches up from the Primary's history) are not held again, so the log may skip them.
        let expected = self.last_revision().map_or(after, |l| l.max(after)) + 1;
        if first.revision != expected {
            return Err(PendingError::Gap {
                got: first.revision,
                expected,
            });
        }
        let params = HeaderParams {
            kind: FileKind::KindChunk,
            compression: FileCompression::CompressionNone,
            records_count: records.len() as i64,
            leader_id: leader_id.to_string(),
            created_at: datafile::now_timestamp(),
            epoch,
        };
        // The writer checks the order of the records and recomputes their CRCs.
        let body = datafile::encode_file(params, records)?;
        let len = u32::try_from(body.len()).map_err(|_| PendingError::Io {
            path: self.log_path(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "group over 4 GiB"),
        })?;
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&body);
        let path = self.log_path();
        self.file
            .write_all(&frame)
            .and_then(|()| self.file.sync_data())
            .map_err(io_err(&path))?;
        self.records.extend_from_slice(records);
        Ok(())
    }

    /// Pending records above `revision`, in order.
    pub(crate) fn above(&self, revision: i64) -> &[Record] {
        let at = self.records.partition_point(|r| r.revision <= revision);
        &self.records[at..]
    }

    /// Forgets the records through `revision` (applied to the local copy, or in the bucket).
    /// The file is emptied once nothing pending is left; until then it keeps them (a restart
    /// re-reads a few applied records, which the caller skips with [`Self::above`]).
    pub(crate) fn applied(&mut self, revision: i64) -> Result<(), PendingError> {
        let at = self.records.partition_point(|r| r.revision <= revision);
        if at == 0 {
            return Ok(());
        }
        self.records.drain(..at);
        if self.records.is_empty() {
            self.truncate()?;
        }
        Ok(())
    }

    /// Drops every pending record and starts the log over for `epoch`.
    fn reset(&mut self, epoch: u64) -> Result<(), PendingError> {
        self.truncate()?;
        self.records.clear();
        self.epoch = epoch;
        Ok(())
    }

    fn truncate(&mut self) -> Result<(), PendingError> {
        let path = self.log_path();
        self.file
            .set_len(0)
            .and_then(|()| self.file.seek(SeekFrom::Start(0)).map(drop))
            .and_then(|()| self.file.sync_data())
            .map_err(io_err(&path))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("log")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(revision: i64, key: &str) -> Record {
        Record {
            revision,
            key: key.as_bytes().to_vec(),
            created: true,
            create_revision: revision,
            version: 1,
            value: format!("v{revision}").into_bytes(),
            ..Default::default()
        }
    }

    fn revisions(records: &[Record]) -> Vec<i64> {
        records.iter().map(|r| r.revision).collect()
    }

    #[test]
    fn appended_groups_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PendingLog::open(dir.path()).unwrap();
        assert_eq!(log.epoch(), 0);
        assert_eq!(log.last_revision(), None);
        log.append(3, "n1", 10, &[rec(11, "a"), rec(12, "b")])
            .unwrap();
        log.append(3, "n1", 12, &[rec(13, "c")]).unwrap();
        drop(log);
        let log = PendingLog::open(dir.path()).unwrap();
        assert_eq!(log.epoch(), 3);
        assert_eq!(revisions(log.above(0)), [11, 12, 13]);
        assert_eq!(revisions(log.above(12)), [13]);
        assert_eq!(log.above(11)[0].key, b"b");
        assert_eq!(log.above(11)[0].value, b"v12");
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_whole_groups_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PendingLog::open(dir.path()).unwrap();
        log.append(2, "n1", 0, &[rec(1, "a")]).unwrap();
        log.append(2, "n1", 1, &[rec(2, "b"), rec(3, "c")]).unwrap();
        drop(log);
        let path = dir.path().join("log");
        for cut in [1, 5, 20] {
            let len = fs::metadata(&path).unwrap().len();
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(len - cut).unwrap();
            drop(f);
            let mut log = PendingLog::open(dir.path()).unwrap();
            assert_eq!(revisions(log.above(0)), [1], "cut {cut} bytes");
            assert!(fs::metadata(&path).unwrap().len() < len - cut);
            // The log goes on after the cut.
            log.append(2, "n1", 1, &[rec(2, "b"), rec(3, "c")]).unwrap();
            drop(log);
            let log = PendingLog::open(dir.path()).unwrap();
            assert_eq!(revisions(log.above(0)), [1, 2, 3]);
        }
        // A flipped byte inside the last group fails its CRC: the group is cut, not adopted.
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 10;
        bytes[last] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let log = PendingLog::open(dir.path()).unwrap();
        assert_eq!(revisions(log.above(0)), [1]);
    }

    #[test]
    fn promises_are_durable_and_refuse_older_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PendingLog::open(dir.path()).unwrap();
        log.append(4, "n1", 0, &[rec(1, "a")]).unwrap();
        log.promise(5).unwrap();
        log.promise(5).unwrap();
        assert!(matches!(
            log.promise(4),
            Err(PendingError::StaleEpoch {
                got: 4,
                promised: 5
            })
        ));
        let err = log.append(4, "n1", 1, &[rec(2, "b")]).unwrap_err();
        assert!(
            matches!(err, PendingError::StaleEpoch { got: 4, .. }),
            "{err}"
        );
        drop(log);
        let mut log = PendingLog::open(dir.path()).unwrap();
        assert_eq!(log.promised(), 5);
        // The old epoch's records stay collectable until a newer epoch's records arrive.
        assert_eq!(revisions(log.above(0)), [1]);
        assert!(log.append(4, "n1", 1, &[rec(2, "b")]).is_err());
        log.append(5, "n2", 0, &[rec(1, "x"), rec(2, "y")]).unwrap();
        assert_eq!(log.epoch(), 5);
        assert_eq!(log.above(0)[0].key, b"x");
        drop(log);
        let log = PendingLog::open(dir.path()).unwrap();
        assert_eq!(log.epoch(), 5);
        assert_eq!(revisions(log.above(0)), [1, 2]);
    }

    #[test]
    fn gaps_are_refused_and_applied_records_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PendingLog::open(dir.path()).unwrap();
        log.append(1, "n1", 5, &[rec(6, "a")]).unwrap();
        let err = log.append(1, "n1", 6, &[rec(8, "c")]).unwrap_err();
        assert!(
            matches!(
                err,
                PendingError::Gap {
                    got: 8,
                    expected: 7
                }
            ),
            "{err}"
        );
        log.append(1, "n1", 6, &[rec(7, "b"), rec(8, "c")]).unwrap();
        log.applied(7).unwrap();
        assert_eq!(revisions(log.above(0)), [8]);
        log.applied(8).unwrap();
        assert_eq!(log.last_revision(), None);
        assert_eq!(fs::metadata(dir.path().join("log")).unwrap().len(), 0);
        // Empty again: the next group must follow what was applied.
        assert!(log.append(1, "n1", 8, &[rec(10, "d")]).is_err());
        log.append(1, "n1", 8, &[rec(9, "d")]).unwrap();
        drop(log);
        let mut log = PendingLog::open(dir.path()).unwrap();
        assert_eq!(revisions(log.above(0)), [9]);
        // A Replica that missed pending messages and caught up from the Primary's history
        // holds those records in its local copy (`after` = 12): the next group follows them,
        // not the log's last record (found by the bench: the Replica refused every group until
        // the bucket covered the log, and stopped counting for the quorum).
        log.append(1, "n1", 12, &[rec(13, "e")]).unwrap();
        assert_eq!(revisions(log.above(0)), [9, 13]);
        assert!(log.append(1, "n1", 12, &[rec(15, "f")]).is_err());
    }
}
