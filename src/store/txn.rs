//! etcd's transaction semantics over the records table: compares decided on the state before
//! the transaction, request checks, then Range / Put / DeleteRange / nested Txn in order, all
//! writes sharing one revision (with increasing sub-revisions).

use etcd_client::proto::{
    PbCompare, PbDeleteResponse, PbEvent, PbKeyValue, PbPutResponse, PbRangeRequest,
    PbRangeResponse, PbResponseHeader, PbResponseOp, PbTargetUnion, PbTxnOpRequest,
    PbTxnOpResponse, PbTxnRequest, PbTxnResponse,
};
use rusqlite::{Connection, OptionalExtension, params};

use super::read::{self, EVENT_DELETE, EVENT_PUT, KeyRange};
use super::{Error, LeaseTable, Result};

/// compare targets and results (field values of `Compare`).
mod cmp {
    pub(super) const EQUAL: i32 = 0;
    pub(super) const GREATER: i32 = 1;
    pub(super) const LESS: i32 = 2;
    pub(super) const NOT_EQUAL: i32 = 3;
    pub(super) const VERSION: i32 = 0;
    pub(super) const CREATE: i32 = 1;
    pub(super) const MOD: i32 = 2;
    pub(super) const VALUE: i32 = 3;
    pub(super) const LEASE: i32 = 4;
}

/// One row written by a transaction, as it goes into the records table and into data files.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub revision: i64,
    pub sub: i64,
    pub key: Vec<u8>,
    pub created: bool,
    pub deleted: bool,
    pub create_revision: i64,
    pub prev_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub value: Option<Vec<u8>>,
    pub created_at: String,
    pub leader_id: String,
    /// Set when compaction cleared the value.
    pub compacted_at: Option<String>,
    /// Data-encryption-key id; 0 = not encrypted.
    pub dek: i64,
}

/// A change to the lease → keys index, applied once the transaction commits.
#[derive(Debug, Clone)]
pub(super) enum LeaseChange {
    Attach(i64, Vec<u8>),
    Detach(i64, Vec<u8>),
}

/// State of one transaction being applied.
pub(super) struct TxnCtx<'a> {
    conn: &'a Connection,
    leases: &'a LeaseTable,
    base_rev: i64,
    /// The revision `kv_current` reflects on `conn` when it is not the transaction's own (a
    /// read-only transaction on a reader whose snapshot is newer than the published revision).
    head: Option<i64>,
    changed: bool,
    sub: i64,
    now: &'a str,
    node_id: &'a str,
    pub records: Vec<Record>,
    pub events: Vec<PbEvent>,
    pub lease_changes: Vec<LeaseChange>,
}

impl<'a> TxnCtx<'a> {
    pub(super) fn new(
        conn: &'a Connection,
        leases: &'a LeaseTable,
        base_rev: i64,
        now: &'a str,
        node_id: &'a str,
    ) -> Self {
        TxnCtx {
            conn,
            leases,
            base_rev,
            head: None,
            changed: false,
            sub: 0,
            now,
            node_id,
            records: Vec::new(),
            events: Vec::new(),
            lease_changes: Vec::new(),
        }
    }

    /// A read-only transaction on a connection whose `kv_current` reflects `head`.
    pub(super) fn with_head(mut self, head: i64) -> Self {
        self.head = Some(head);
        self
    }

    /// The revision `kv_current` reflects.
    fn head(&self) -> i64 {
        self.head.unwrap_or_else(|| self.read_rev())
    }

    /// The revision reads see: the transaction's own revision once it has written.
    fn read_rev(&self) -> i64 {
        if self.changed {
            self.base_rev + 1
        } else {
            self.base_rev
        }
    }

    /// The revision after the transaction.
    pub(super) fn final_rev(&self) -> i64 {
        self.read_rev()
    }

    pub(super) fn changed(&self) -> bool {
        self.changed
    }

    /// Applies a whole (validated) transaction.
    pub(super) fn apply(&mut self, req: &PbTxnRequest, compacted: i64) -> Result<PbTxnResponse> {
        let mut path = Vec::new();
        self.compare_path(req, &mut path)?;
        self.check_requests(req, &path, &mut 0, compacted)?;
        let mut idx = 0;
        let mut resp = self.exec(req, &path, &mut idx)?;
        resp.header = Some(PbResponseHeader {
            revision: self.final_rev(),
            ..Default::default()
        });
        Ok(resp)
    }

    fn compare_path(&self, req: &PbTxnRequest, path: &mut Vec<bool>) -> Result<()> {
        let mut ok = true;
        for c in &req.compare {
            if !self.compare(c)? {
                ok = false;
                break;
            }
        }
        path.push(ok);
        let ops = if ok { &req.success } else { &req.failure };
        for op in ops {
            if let Some(PbTxnOpRequest::RequestTxn(t)) = &op.request {
                self.compare_path(t, path)?;
            }
        }
        Ok(())
    }

    fn compare(&self, c: &PbCompare) -> Result<bool> {
        let range = KeyRange::new(&c.key, &c.range_end);
        let kvs = read::live_in_range(self.conn, &range, self.read_rev(), self.head())?;
        if kvs.is_empty() {
            if c.target == cmp::VALUE {
                return Ok(false);
            }
            return Ok(compare_kv(c, &PbKeyValue::default()));
        }
        Ok(kvs.iter().all(|kv| compare_kv(c, kv)))
    }

    /// etcd's pre-apply checks on the chosen branches: ranges' revisions, and for puts the
    /// previous key (ignore_value / ignore_lease) and the lease.
    fn check_requests(
        &self,
        req: &PbTxnRequest,
        path: &[bool],
        idx: &mut usize,
        compacted: i64,
    ) -> Result<()> {
        let ok = path.get(*idx).copied().unwrap_or(false);
        *idx += 1;
        let ops = if ok { &req.success } else { &req.failure };
        for op in ops {
            match &op.request {
                Some(PbTxnOpRequest::RequestTxn(t)) => {
                    self.check_requests(t, path, idx, compacted)?
                }
                Some(PbTxnOpRequest::RequestRange(r)) if r.revision > 0 => {
                    if r.revision > self.read_rev() {
                        return Err(Error::FutureRevision);
                    }
                    if r.revision < compacted {
                        return Err(Error::Compacted);
                    }
                }
                Some(PbTxnOpRequest::RequestPut(p)) => {
                    if (p.ignore_value || p.ignore_lease)
                        && read::get_live(self.conn, &p.key, self.read_rev(), self.head())?
                            .is_none()
                    {
                        return Err(Error::KeyNotFound);
                    }
                    if p.lease != 0 && !self.leases.exists(p.lease) {
                        return Err(Error::LeaseNotFound);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn exec(
        &mut self,
        req: &PbTxnRequest,
        path: &[bool],
        idx: &mut usize,
    ) -> Result<PbTxnResponse> {
        let ok = path.get(*idx).copied().unwrap_or(false);
        *idx += 1;
        let ops = if ok { &req.success } else { &req.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(PbTxnOpRequest::RequestRange(r)) => {
                    PbTxnOpResponse::ResponseRange(self.range(r)?)
                }
                Some(PbTxnOpRequest::RequestPut(p)) => PbTxnOpResponse::ResponsePut(self.put(
                    &p.key,
                    &p.value,
                    p.lease,
                    p.prev_kv,
                    p.ignore_value,
                    p.ignore_lease,
                )?),
                Some(PbTxnOpRequest::RequestDeleteRange(d)) => {
                    PbTxnOpResponse::ResponseDeleteRange(self.delete_range(
                        &d.key,
                        &d.range_end,
                        d.prev_kv,
                    )?)
                }
                Some(PbTxnOpRequest::RequestTxn(t)) => {
                    let mut nested = self.exec(t, path, idx)?;
                    nested.header = Some(PbResponseHeader::default());
                    PbTxnOpResponse::ResponseTxn(nested)
                }
                None => continue,
            };
            responses.push(PbResponseOp {
                response: Some(response),
            });
        }
        Ok(PbTxnResponse {
            header: None,
            succeeded: ok,
            responses,
        })
    }

    fn range(&self, r: &PbRangeRequest) -> Result<PbRangeResponse> {
        let rev = if r.revision > 0 {
            r.revision
        } else {
            self.read_rev()
        };
        let mut res = read::range_at(self.conn, r, rev, self.head())?;
        let mut more = false;
        if r.limit > 0 && res.kvs.len() > r.limit as usize {
            res.kvs.truncate(r.limit as usize);
            more = true;
        }
        Ok(PbRangeResponse {
            header: Some(PbResponseHeader {
                revision: self.read_rev(),
                ..Default::default()
            }),
            kvs: res.kvs,
            more,
            count: res.count,
        })
    }

    fn next_sub(&mut self) -> (i64, i64) {
        self.changed = true;
        let sub = self.sub;
        self.sub += 1;
        (self.base_rev + 1, sub)
    }

    pub(super) fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        lease: i64,
        want_prev: bool,
        ignore_value: bool,
        ignore_lease: bool,
    ) -> Result<PbPutResponse> {
        let prev = read::get_live(self.conn, key, self.read_rev(), self.head())?;
        if (ignore_value || ignore_lease) && prev.is_none() {
            return Err(Error::KeyNotFound);
        }
        let value = match (&prev, ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => value.to_vec(),
        };
        let lease = match (&prev, ignore_lease) {
            (Some(p), true) => p.lease,
            _ => lease,
        };
        let (rev, sub) = self.next_sub();
        let (create_revision, version, prev_revision) = match &prev {
            Some(p) => (p.create_revision, p.version + 1, p.mod_revision),
            None => (rev, 1, 0),
        };
        let rec = Record {
            revision: rev,
            sub,
            key: key.to_vec(),
            created: prev.is_none(),
            deleted: false,
            create_revision,
            prev_revision,
            version,
            lease,
            value: Some(value.clone()),
            created_at: self.now.to_string(),
            leader_id: self.node_id.to_string(),
            compacted_at: None,
            dek: 0,
        };
        self.insert(&rec)?;
        if let Some(p) = &prev
            && p.lease != 0
            && p.lease != lease
        {
            self.lease_changes
                .push(LeaseChange::Detach(p.lease, key.to_vec()));
        }
        if lease != 0 {
            self.lease_changes
                .push(LeaseChange::Attach(lease, key.to_vec()));
        }
        let kv = PbKeyValue {
            key: key.to_vec(),
            create_revision,
            mod_revision: rev,
            version,
            value,
            lease,
        };
        self.events.push(PbEvent {
            r#type: EVENT_PUT,
            kv: Some(kv),
            prev_kv: prev.clone(),
        });
        self.records.push(rec);
        Ok(PbPutResponse {
            header: Some(PbResponseHeader {
                revision: rev,
                ..Default::default()
            }),
            prev_kv: if want_prev { prev } else { None },
        })
    }

    pub(super) fn delete_range(
        &mut self,
        key: &[u8],
        range_end: &[u8],
        want_prev: bool,
    ) -> Result<PbDeleteResponse> {
        let range = KeyRange::new(key, range_end);
        let victims = read::live_in_range(self.conn, &range, self.read_rev(), self.head())?;
        let deleted = victims.len() as i64;
        for kv in &victims {
            let (rev, sub) = self.next_sub();
            let rec = Record {
                revision: rev,
                sub,
                key: kv.key.clone(),
                created: false,
                deleted: true,
                create_revision: kv.create_revision,
                prev_revision: kv.mod_revision,
                version: 0,
                lease: 0,
                value: None,
                created_at: self.now.to_string(),
                leader_id: self.node_id.to_string(),
                compacted_at: None,
                dek: 0,
            };
            self.insert(&rec)?;
            if kv.lease != 0 {
                self.lease_changes
                    .push(LeaseChange::Detach(kv.lease, kv.key.clone()));
            }
            self.events.push(PbEvent {
                r#type: EVENT_DELETE,
                kv: Some(PbKeyValue {
                    key: kv.key.clone(),
                    mod_revision: rev,
                    ..Default::default()
                }),
                prev_kv: Some(kv.clone()),
            });
            self.records.push(rec);
        }
        Ok(PbDeleteResponse {
            header: Some(PbResponseHeader {
                revision: self.read_rev(),
                ..Default::default()
            }),
            deleted,
            prev_kvs: if want_prev { victims } else { Vec::new() },
        })
    }

    /// Inserts a new record, always the newest of its key, and moves `kv_current` with it.
    fn insert(&self, r: &Record) -> Result<()> {
        insert_record(self.conn, r, None)?;
        set_current(self.conn, r)
    }
}

fn compare_kv(c: &PbCompare, kv: &PbKeyValue) -> bool {
    let ord = match c.target {
        cmp::VALUE => {
            let want: &[u8] = match &c.target_union {
                Some(PbTargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        cmp::CREATE => kv.create_revision.cmp(&target_int(c)),
        cmp::MOD => kv.mod_revision.cmp(&target_int(c)),
        cmp::VERSION => kv.version.cmp(&target_int(c)),
        cmp::LEASE => kv.lease.cmp(&target_int(c)),
        _ => return true,
    };
    match c.result {
        cmp::EQUAL => ord.is_eq(),
        cmp::NOT_EQUAL => ord.is_ne(),
        cmp::GREATER => ord.is_gt(),
        cmp::LESS => ord.is_lt(),
        _ => true,
    }
}

fn target_int(c: &PbCompare) -> i64 {
    match (&c.target_union, c.target) {
        (Some(PbTargetUnion::Version(v)), cmp::VERSION) => *v,
        (Some(PbTargetUnion::CreateRevision(v)), cmp::CREATE) => *v,
        (Some(PbTargetUnion::ModRevision(v)), cmp::MOD) => *v,
        (Some(PbTargetUnion::Lease(v)), cmp::LEASE) => *v,
        _ => 0,
    }
}

/// Inserts one record; `replicated_at` is set for records that came from elsewhere.
pub(super) fn insert_record(
    conn: &Connection,
    r: &Record,
    replicated_at: Option<&str>,
) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO records (revision, sub, key, created, deleted, create_revision, prev_revision,
            version, lease, dek, value, created_at, compacted_at, leader_id, replicated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?;
    stmt.execute(params![
        r.revision,
        r.sub,
        r.key,
        r.created,
        r.deleted,
        r.create_revision,
        r.prev_revision,
        r.version,
        r.lease,
        r.dek,
        r.value,
        r.created_at,
        r.compacted_at,
        r.leader_id,
        replicated_at
    ])?;
    Ok(())
}

/// Points `kv_current` at `r`, the newest record of its key (a tombstone removes the key).
fn set_current(conn: &Connection, r: &Record) -> Result<()> {
    if r.revision <= 1 {
        return Ok(());
    }
    if r.deleted {
        conn.prepare_cached("DELETE FROM kv_current WHERE key = ?1")?
            .execute([&r.key])?;
    } else {
        conn.prepare_cached(
            "INSERT INTO kv_current (key, revision, sub) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO UPDATE SET revision = excluded.revision, sub = excluded.sub",
        )?
        .execute(params![r.key, r.revision, r.sub])?;
    }
    Ok(())
}

/// The lease of `key`'s live version (0: none, or no live version).
pub(super) fn current_lease(conn: &Connection, key: &[u8]) -> Result<i64> {
    Ok(conn
        .prepare_cached(
            "SELECT r.lease FROM kv_current c JOIN records r ON r.revision = c.revision AND r.sub = c.sub WHERE c.key = ?1",
        )?
        .query_row([key], |row| row.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Imports a record from a data file: a new row, or an identical existing one (idempotent
/// backfill); a different row at the same (revision, sub) is corruption.
pub(super) fn import_record(conn: &Connection, r: &Record, now: &str) -> Result<bool> {
    let existing: Option<(Vec<u8>, bool, Option<Vec<u8>>, i64, i64)> = conn
        .prepare_cached("SELECT key, deleted, value, version, create_revision FROM records WHERE revision = ?1 AND sub = ?2")?
        .query_row(params![r.revision, r.sub], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)))
        .optional()?;
    match existing {
        None => {
            insert_record(conn, r, Some(now))?;
            // Imports come in revision order, but a snapshot may bring back rows this copy's
            // compaction freed: only the newest row of a key decides whether it is live.
            let newest: i64 = conn
                .prepare_cached("SELECT MAX(revision) FROM records WHERE key = ?1")?
                .query_row([&r.key], |row| row.get(0))?;
            if newest == r.revision {
                set_current(conn, r)?;
            }
            Ok(true)
        }
        Some((key, deleted, value, version, create_revision)) => {
            let same = key == r.key
                && deleted == r.deleted
                && version == r.version
                && create_revision == r.create_revision
                && (value == r.value || value.is_none() || r.value.is_none());
            if same {
                Ok(false)
            } else {
                Err(Error::Corrupt(format!(
                    "replicate conflict at revision {} (sub {}): the bucket and the local database disagree",
                    r.revision, r.sub
                )))
            }
        }
    }
}
