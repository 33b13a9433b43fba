//! Reads: byte-exact key ranges over the MVCC history (no LIKE), etcd's Range semantics,
//! event history for watches.

use etcd_client::proto::{PbEvent, PbKeyValue, PbRangeRequest, PbRangeResponse, PbResponseHeader};
use etcd_client::{SortOrder, SortTarget};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params_from_iter};

use super::{DbSize, Error, Result, Revisions};
use crate::watch::EventBatch;

/// etcd event types.
pub(super) const EVENT_PUT: i32 = 0;
pub(super) const EVENT_DELETE: i32 = 1;

/// A key interval as etcd defines it from (key, range_end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: RangeEnd,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeEnd {
    /// Exactly `start`.
    Single,
    /// Every key `>= start` (range_end = "\0").
    Unbounded,
    /// Keys in `[start, end)`.
    Before(Vec<u8>),
}

impl KeyRange {
    pub fn new(key: &[u8], range_end: &[u8]) -> KeyRange {
        let end = match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            other => RangeEnd::Before(other.to_vec()),
        };
        KeyRange {
            start: key.to_vec(),
            end,
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            RangeEnd::Single => key == self.start.as_slice(),
            RangeEnd::Unbounded => key >= self.start.as_slice(),
            RangeEnd::Before(end) => key >= self.start.as_slice() && key < end.as_slice(),
        }
    }

    /// SQL predicate on column `col` and its parameters.
    fn predicate(&self, col: &str, params: &mut Vec<Value>) -> String {
        params.push(Value::Blob(self.start.clone()));
        let a = params.len();
        match &self.end {
            RangeEnd::Single => format!("{col} = ?{a}"),
            RangeEnd::Unbounded => format!("{col} >= ?{a}"),
            RangeEnd::Before(end) => {
                params.push(Value::Blob(end.clone()));
                format!("{col} >= ?{a} AND {col} < ?{}", a + 1)
            }
        }
    }
}

/// Result of a range read before it becomes a response.
#[derive(Debug, Default)]
pub struct RangeResult {
    pub kvs: Vec<PbKeyValue>,
    pub count: i64,
}

/// The newest revision in the database as this connection sees it: inside a read transaction,
/// the revision `kv_current` reflects (its "head"). Compaction never frees the rows of its own
/// revision, so this is the latest revision even after a compaction at the head.
pub(super) fn latest_revision(conn: &Connection) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT COALESCE(MAX(revision), 0) FROM records")?
        .query_row([], |r| r.get(0))?)
}

/// A read transaction (one consistent snapshot) begun and ended through cached statements:
/// rusqlite's `Transaction` parses `BEGIN` and `ROLLBACK` on every call, which costs as much
/// as the point read inside it.
pub(super) struct ReadTx<'c> {
    conn: &'c Connection,
}

impl<'c> ReadTx<'c> {
    pub(super) fn begin(conn: &'c Connection) -> Result<ReadTx<'c>> {
        if !conn.is_autocommit() {
            // A snapshot left open by a failed end: end it rather than read inside it.
            conn.prepare_cached("ROLLBACK")?.execute([])?;
        }
        conn.prepare_cached("BEGIN")?.execute([])?;
        Ok(ReadTx { conn })
    }
}

impl std::ops::Deref for ReadTx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for ReadTx<'_> {
    fn drop(&mut self) {
        if let Ok(mut stmt) = self.conn.prepare_cached("ROLLBACK") {
            let _ = stmt.execute([]);
        }
    }
}

pub(super) fn compaction_revision(conn: &Connection) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT COALESCE(MAX(compaction_revision), 0) FROM compactions")?
        .query_row([], |r| r.get(0))?)
}

pub(super) fn db_size(conn: &Connection) -> Result<DbSize> {
    let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
    let pages: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
    let free: i64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
    Ok(DbSize {
        total: pages * page_size,
        in_use: (pages - free) * page_size,
    })
}

pub(super) fn check_not_compacted(revs: &Revisions, rev: i64) -> Result<()> {
    if rev < revs.compacted() {
        Err(Error::Compacted)
    } else {
        Ok(())
    }
}

/// Resolves a request revision: 0 or negative = current; errors for future or compacted.
pub(super) fn resolve_revision(revs: &Revisions, requested: i64) -> Result<i64> {
    let current = revs.current();
    if requested > current {
        return Err(Error::FutureRevision);
    }
    let rev = if requested <= 0 { current } else { requested };
    check_not_compacted(revs, rev)?;
    Ok(rev)
}

fn kv_from_row(row: &Row<'_>) -> rusqlite::Result<PbKeyValue> {
    Ok(PbKeyValue {
        key: row.get(0)?,
        mod_revision: row.get(1)?,
        create_revision: row.get(2)?,
        version: row.get(3)?,
        lease: row.get(4)?,
        value: row.get::<_, Option<Vec<u8>>>(5)?.unwrap_or_default(),
    })
}

/// The newest record of each key in `range` at `rev`, tombstones dropped, in key order.
/// `head` is the revision `kv_current` reflects on this connection: at the head the answer
/// comes from `kv_current` (O(log n + L)), below it from the history, which compaction keeps
/// down to the live rows plus what was written after the compaction revision.
/// `order` is "ASC" or "DESC"; `limit` 0 means no limit.
#[allow(clippy::too_many_arguments)]
fn live_query(
    conn: &Connection,
    range: &KeyRange,
    rev: i64,
    head: i64,
    after: Option<&[u8]>,
    order: &str,
    limit: usize,
    keys_only: bool,
) -> Result<Vec<PbKeyValue>> {
    let mut params = Vec::new();
    let limit_sql = if limit > 0 {
        format!(" LIMIT {limit}")
    } else {
        String::new()
    };
    let sql = if rev >= head {
        let pred = range.predicate("c.key", &mut params);
        let mut extra = String::new();
        if let Some(after) = after {
            params.push(Value::Blob(after.to_vec()));
            extra = format!(" AND c.key > ?{}", params.len());
        }
        let value_col = if keys_only { "NULL" } else { "r.value" };
        format!(
            "SELECT r.key, r.revision, r.create_revision, r.version, r.lease, {value_col}
             FROM kv_current c CROSS JOIN records r ON r.revision = c.revision AND r.sub = c.sub
             WHERE {pred}{extra} ORDER BY c.key {order}{limit_sql}"
        )
    } else {
        let value_col = if keys_only { "NULL" } else { "value" };
        let pred = range.predicate("key", &mut params);
        params.push(Value::Integer(rev));
        let rev_param = params.len();
        let mut extra = String::new();
        if let Some(after) = after {
            params.push(Value::Blob(after.to_vec()));
            extra = format!(" AND key > ?{}", params.len());
        }
        format!(
            "SELECT key, rev, create_revision, version, lease, {value_col} FROM (
                SELECT key, MAX(revision) AS rev, create_revision, version, lease, value, deleted
                FROM records WHERE {pred}{extra} AND revision <= ?{rev_param} AND revision > 1
                GROUP BY key)
             WHERE deleted = 0 ORDER BY key {order}{limit_sql}"
        )
    };
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(params.iter()), kv_from_row)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row?);
    }
    count_steps(&mut stmt);
    Ok(out)
}

/// Number of live keys in `range` at `rev` (`head` as in [`live_query`]).
pub(super) fn count_live(conn: &Connection, range: &KeyRange, rev: i64, head: i64) -> Result<i64> {
    let mut params = Vec::new();
    let pred = range.predicate("key", &mut params);
    let sql = if rev >= head {
        format!("SELECT COUNT(*) FROM kv_current WHERE {pred}")
    } else {
        params.push(Value::Integer(rev));
        format!(
            "SELECT COUNT(*) FROM (
                SELECT MAX(revision) AS rev, deleted FROM records
                WHERE {pred} AND revision <= ?{} AND revision > 1 GROUP BY key)
             WHERE deleted = 0",
            params.len()
        )
    };
    let mut stmt = conn.prepare_cached(&sql)?;
    let n = stmt.query_row(params_from_iter(params.iter()), |r| r.get(0))?;
    count_steps(&mut stmt);
    Ok(n)
}

/// One page of live keys in ascending key order (RangeStream pagination).
pub(super) fn live_page(
    conn: &Connection,
    range: &KeyRange,
    rev: i64,
    head: i64,
    after: Option<&[u8]>,
    limit: usize,
    keys_only: bool,
) -> Result<Vec<PbKeyValue>> {
    live_query(conn, range, rev, head, after, "ASC", limit, keys_only)
}

/// The newest live record of one key at `rev` (`head` as in [`live_query`]): O(log n) whatever
/// the key's history.
pub(super) fn get_live(
    conn: &Connection,
    key: &[u8],
    rev: i64,
    head: i64,
) -> Result<Option<PbKeyValue>> {
    if rev >= head {
        let mut stmt = conn.prepare_cached(
            "SELECT r.key, r.revision, r.create_revision, r.version, r.lease, r.value
             FROM kv_current c CROSS JOIN records r ON r.revision = c.revision AND r.sub = c.sub
             WHERE c.key = ?1",
        )?;
        let kv = stmt.query_row([key], kv_from_row).optional()?;
        count_steps(&mut stmt);
        return Ok(kv);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT key, revision, create_revision, version, lease, value, deleted FROM records
         WHERE key = ?1 AND revision <= ?2 AND revision > 1 ORDER BY revision DESC LIMIT 1",
    )?;
    let row = stmt
        .query_row(rusqlite::params![key, rev], |r| {
            Ok((kv_from_row(r)?, r.get::<_, bool>(6)?))
        })
        .optional()?;
    count_steps(&mut stmt);
    Ok(row.and_then(|(kv, deleted)| if deleted { None } else { Some(kv) }))
}

/// Live key-values in `range` at `rev` (no limit), for txn compares and deletes.
pub(super) fn live_in_range(
    conn: &Connection,
    range: &KeyRange,
    rev: i64,
    head: i64,
) -> Result<Vec<PbKeyValue>> {
    if range.end == RangeEnd::Single {
        return Ok(get_live(conn, &range.start, rev, head)?
            .into_iter()
            .collect());
    }
    live_query(conn, range, rev, head, None, "ASC", 0, false)
}

thread_local! {
    static STEPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Adds a statement's SQLite VM steps to this thread's counter and resets the statement's.
fn count_steps(stmt: &mut rusqlite::CachedStatement<'_>) {
    let n = stmt.reset_status(rusqlite::StatementStatus::VmStep);
    STEPS.with(|s| s.set(s.get() + n as u64));
}

/// SQLite VM steps the reads of this thread have taken so far: the work a read did, for the
/// regression tests that check reads do not grow with history.
pub(super) fn vm_steps() -> u64 {
    STEPS.with(|s| s.get())
}

/// etcd's Range, including every option, answered at a resolved revision.
pub(super) fn range_at(
    conn: &Connection,
    req: &PbRangeRequest,
    rev: i64,
    head: i64,
) -> Result<RangeResult> {
    let range = KeyRange::new(&req.key, &req.range_end);
    let count = count_live(conn, &range, rev, head)?;
    if req.count_only {
        return Ok(RangeResult {
            kvs: Vec::new(),
            count,
        });
    }
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let limit = usize::try_from(req.limit).unwrap_or(0);
    // Both validated by the api; anything else reads as etcd's defaults.
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let requested = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    let by_key = target == SortTarget::Key;
    let fetch = if limit > 0 { limit + 1 } else { 0 };
    let mut kvs = if !filtered && by_key && requested == SortOrder::Descend {
        live_query(conn, &range, rev, head, None, "DESC", fetch, req.keys_only)?
    } else if !filtered && by_key {
        live_query(conn, &range, rev, head, None, "ASC", fetch, req.keys_only)?
    } else {
        // etcd reads everything only when it must sort or filter; with sort order NONE on
        // another target it sorts the first limit+1 keys (in key order) it read.
        let fetch_all = filtered || requested != SortOrder::None;
        // Sorting by value needs the values even for keys_only (cleared afterwards).
        let values_needed = target == SortTarget::Value;
        let mut all = live_query(
            conn,
            &range,
            rev,
            head,
            None,
            "ASC",
            if fetch_all { 0 } else { fetch },
            req.keys_only && !values_needed,
        )?;
        all.retain(|kv| {
            !(req.max_mod_revision != 0 && kv.mod_revision > req.max_mod_revision
                || req.min_mod_revision != 0 && kv.mod_revision < req.min_mod_revision
                || req.max_create_revision != 0 && kv.create_revision > req.max_create_revision
                || req.min_create_revision != 0 && kv.create_revision < req.min_create_revision)
        });
        let order = match requested {
            SortOrder::None if !by_key => SortOrder::Ascend,
            other => other,
        };
        if order != SortOrder::None {
            let cmp = |a: &PbKeyValue, b: &PbKeyValue| match target {
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
                SortTarget::Key => a.key.cmp(&b.key),
            };
            if order == SortOrder::Descend {
                all.sort_by(|a, b| cmp(b, a));
            } else {
                all.sort_by(cmp);
            }
        }
        all
    };
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResult { kvs, count })
}

/// The unary Range RPC: resolves the revision, reads, truncates to the limit.
/// Runs in one read transaction, so `kv_current` and the history agree. A request for the
/// current revision is answered at the published revision, read before the transaction
/// began: its snapshot (`head`) may hold one newer commit whose callers are not answered yet,
/// and answering from it could let a later read elsewhere (a Replica's read index is the
/// published revision) see an older state. In that moment the answer comes from the history.
pub(super) fn range(
    conn: &Connection,
    revs: &Revisions,
    req: &PbRangeRequest,
) -> Result<PbRangeResponse> {
    let current = revs.current();
    let tx = ReadTx::begin(conn)?;
    let head = latest_revision(&tx)?;
    let rev = if req.revision <= 0 {
        check_not_compacted(revs, current)?;
        current
    } else {
        resolve_revision(revs, req.revision)?
    };
    if rev > head {
        // Published after this snapshot began: read again in a newer one.
        drop(tx);
        return range(conn, revs, req);
    }
    let mut res = range_at(&tx, req, rev, head)?;
    drop(tx);
    check_not_compacted(revs, rev)?;
    let mut more = false;
    if req.limit > 0 && res.kvs.len() > req.limit as usize {
        res.kvs.truncate(req.limit as usize);
        more = true;
    }
    Ok(PbRangeResponse {
        header: Some(PbResponseHeader {
            revision: current,
            ..Default::default()
        }),
        kvs: res.kvs,
        more,
        count: res.count,
    })
}

/// Events with revisions in `from..=to` for keys in `range`, grouped by revision, oldest first,
/// and the revision the answer is complete up to. At most about `max` events: a batch is never
/// split inside one revision.
pub(super) fn events(
    conn: &Connection,
    range: &KeyRange,
    from: i64,
    to: i64,
    max: usize,
) -> Result<(Vec<EventBatch>, i64)> {
    let mut params = Vec::new();
    let pred = range.predicate("key", &mut params);
    params.push(Value::Integer(from.max(2)));
    params.push(Value::Integer(to));
    let n = params.len();
    let sql = format!(
        "SELECT key, revision, create_revision, version, lease, value, deleted, prev_revision
         FROM records WHERE {pred} AND revision >= ?{} AND revision <= ?{n}
         ORDER BY revision, sub LIMIT {}",
        n - 1,
        max.max(1) + 1
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows: Vec<(PbKeyValue, bool, i64)> = stmt
        .query_map(params_from_iter(params.iter()), |r| {
            Ok((kv_from_row(r)?, r.get::<_, bool>(6)?, r.get::<_, i64>(7)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut covered = to;
    if rows.len() > max.max(1) {
        // Cut at a revision boundary; if one revision alone exceeds `max`, read it whole.
        let last = rows[rows.len() - 1].0.mod_revision;
        rows.retain(|(kv, _, _)| kv.mod_revision != last);
        if rows.is_empty() {
            return events(conn, range, last, last, usize::MAX / 2);
        }
        covered = last - 1;
    }
    let mut prev_stmt = conn.prepare_cached(
        "SELECT key, revision, create_revision, version, lease, value FROM records
         WHERE key = ?1 AND revision = ?2",
    )?;
    let mut batches: Vec<EventBatch> = Vec::new();
    for (kv, deleted, prev_rev) in rows {
        let prev = if prev_rev > 1 {
            prev_stmt
                .query_row(rusqlite::params![kv.key, prev_rev], kv_from_row)
                .optional()?
        } else {
            None
        };
        let rev = kv.mod_revision;
        let ev = if deleted {
            PbEvent {
                r#type: EVENT_DELETE,
                kv: Some(PbKeyValue {
                    key: kv.key,
                    mod_revision: rev,
                    ..Default::default()
                }),
                prev_kv: prev,
            }
        } else {
            PbEvent {
                r#type: EVENT_PUT,
                kv: Some(kv),
                prev_kv: prev,
            }
        };
        match batches.last_mut() {
            Some(b) if b.revision == rev => b.events.push(ev),
            _ => batches.push(EventBatch {
                revision: rev,
                events: vec![ev],
            }),
        }
    }
    Ok((batches, covered))
}

/// CRC-32C over (revision, sub, key, value) of every record up to `rev`, in revision order.
pub(super) fn hash_records(conn: &Connection, rev: i64) -> Result<u32> {
    let mut digest = crc32c_digest();
    let mut stmt = conn.prepare_cached(
        "SELECT revision, sub, key, value FROM records WHERE revision <= ?1 ORDER BY revision, sub",
    )?;
    let mut rows = stmt.query([rev])?;
    while let Some(row) = rows.next()? {
        digest.update(&row.get::<_, i64>(0)?.to_be_bytes());
        digest.update(&row.get::<_, i64>(1)?.to_be_bytes());
        digest.update(bytes(row.get_ref(2)?));
        digest.update(bytes(row.get_ref(3)?));
    }
    Ok(digest.finalize() as u32)
}

/// A key or value column without a copy (NULL: a compacted value, hashed as empty).
fn bytes(v: rusqlite::types::ValueRef<'_>) -> &[u8] {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Blob(b) | ValueRef::Text(b) => b,
        _ => &[],
    }
}

/// A running CRC-32C (Castagnoli, the iSCSI polynomial), as HashKV reports it.
fn crc32c_digest() -> crc_fast::Digest {
    crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi)
}

/// Every record with revision in `from..=to`, in (revision, sub) order, passed to `f`; stops at
/// the first error `f` returns. Used to build snapshots and chunks.
pub(super) fn for_each_record(
    conn: &Connection,
    from: i64,
    to: i64,
    f: &mut dyn FnMut(super::Record) -> std::result::Result<(), String>,
) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "SELECT revision, sub, key, created, deleted, create_revision, prev_revision, version, lease, dek,
                value, created_at, compacted_at, leader_id
         FROM records WHERE revision >= ?1 AND revision <= ?2 ORDER BY revision, sub",
    )?;
    let mut rows = stmt.query([from, to])?;
    while let Some(r) = rows.next()? {
        let rec = super::Record {
            revision: r.get(0)?,
            sub: r.get(1)?,
            key: r.get(2)?,
            created: r.get(3)?,
            deleted: r.get(4)?,
            create_revision: r.get(5)?,
            prev_revision: r.get(6)?,
            version: r.get(7)?,
            lease: r.get(8)?,
            dek: r.get(9)?,
            value: r.get(10)?,
            created_at: r.get(11)?,
            compacted_at: r.get(12)?,
            leader_id: r.get(13)?,
        };
        f(rec).map_err(Error::Export)?;
    }
    Ok(())
}

/// (revisions present from `floor` on, revisions expected there): every revision from the
/// compaction revision `floor` (1 without compaction) to the latest must be present.
pub(super) fn integrity(conn: &Connection, floor: i64) -> Result<(i64, i64)> {
    let floor = floor.max(1);
    let (present, latest): (i64, i64) = conn.query_row(
        "SELECT COUNT(DISTINCT revision), COALESCE(MAX(revision), 0) FROM records
         WHERE revision >= ?1",
        [floor],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let expected = if latest >= floor {
        latest - floor + 1
    } else {
        0
    };
    Ok((present, expected))
}

#[cfg(test)]
mod crc_tests {
    #[test]
    fn crc32c_check_value() {
        let mut d = super::crc32c_digest();
        d.update(b"1234");
        d.update(b"56789");
        assert_eq!(d.finalize(), 0xE306_9283);
    }
}
