//! Schema, connection settings and migrations.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, params};

use super::{Error, GENESIS_KEY, Result};

/// `PRAGMA user_version` of our schema. The original's is 1 (one row per revision). Version 2
/// added the sub-revision column so a multi-key transaction keeps etcd's one-revision semantics;
/// version 3 adds `kv_current` (the live keys and their newest row, maintained with each write)
/// and `meta` (how far compaction has freed history).
pub(super) const SCHEMA_VERSION: i64 = 3;

/// The `kv_current` and `meta` tables (version 3).
const V3_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS kv_current (
        key BLOB PRIMARY KEY NOT NULL,
        revision INTEGER NOT NULL,
        sub INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS meta (
        name TEXT PRIMARY KEY NOT NULL,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;";

/// Prepared statements kept per connection: every statement a read or a write group runs,
/// including the range predicates built per range shape, stays parsed.
const STATEMENT_CACHE: usize = 128;

/// Readers map the database file (up to this many bytes; SQLite caps it at its compile-time
/// limit, 2 GiB) instead of copying every page they touch with `pread` into their own page
/// cache, which is 2 MiB and dropped whenever another connection wrote: after a churn and a
/// compaction, a 500-key page spent a quarter of its CPU in `pread`s and cost 1.6x a fresh
/// one. Only pages a read touches are resident (reads of the whole history use `pread`,
/// `ReaderPool::run_bulk`); the writer keeps `pread`s (it touches every page a compaction
/// frees). SQLite maps the file read-only; an I/O error on it ends the process (SIGBUS)
/// instead of failing one read, and the restart loads the local copy again.
pub(super) const READ_MMAP_BYTES: i64 = 1 << 31;

/// The write connection. `synchronous = NORMAL`: in WAL mode a commit is not fsynced, only
/// checkpoints are. The local file is a cache of the bucket, which holds every acknowledged
/// write before it is published (the commit hook), so a commit lost to a power cut is loaded
/// again from the bucket at startup; WAL mode keeps the file consistent whatever is lost. Rows
/// committed while their upload was in flight (a pipelined hook) are marked and discarded at
/// the next start unless known to have landed (`writer::discard_unlanded`).
fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

pub(super) fn open_write(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    configure(&conn)?;
    Ok(conn)
}

pub(super) fn open_read(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "mmap_size", READ_MMAP_BYTES)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

pub(super) fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

/// Creates the schema on an empty database (with the genesis record at revision 1) and checks
/// the version of an existing one.
pub(super) fn migrate(conn: &mut Connection, node_id: &str) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    match version {
        0 => {}
        2 => return migrate_v2_to_v3(conn),
        SCHEMA_VERSION => return Ok(()),
        other => {
            return Err(Error::Corrupt(format!(
                "schema version mismatch: database has {other}, this binary expects {SCHEMA_VERSION}"
            )));
        }
    }
    let tx = conn.transaction()?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS records (
            revision INTEGER NOT NULL,
            sub INTEGER NOT NULL DEFAULT 0,
            key BLOB NOT NULL,
            created INTEGER NOT NULL,
            deleted INTEGER NOT NULL,
            create_revision INTEGER NOT NULL,
            prev_revision INTEGER NOT NULL,
            version INTEGER NOT NULL,
            lease INTEGER NOT NULL,
            dek INTEGER NOT NULL DEFAULT 0,
            value BLOB,
            created_at TEXT NOT NULL,
            compacted_at TEXT,
            leader_id TEXT NOT NULL,
            replicated_at TEXT
        );
        CREATE UNIQUE INDEX IF NOT EXISTS records_revision_sub ON records (revision, sub);
        CREATE UNIQUE INDEX IF NOT EXISTS records_key_revision ON records (key, revision);
        CREATE TABLE IF NOT EXISTS compactions (
            compaction_revision INTEGER PRIMARY KEY NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS leases (
            id INTEGER PRIMARY KEY NOT NULL,
            ttl INTEGER NOT NULL,
            granted_at TEXT NOT NULL
        );",
    )?;
    tx.execute_batch(V3_TABLES)?;
    let empty: bool = tx.query_row("SELECT NOT EXISTS (SELECT 1 FROM records)", [], |r| {
        r.get(0)
    })?;
    if empty {
        tx.execute(
            "INSERT INTO records (revision, sub, key, created, deleted, create_revision, prev_revision,
                version, lease, dek, value, created_at, leader_id)
             VALUES (1, 0, ?1, 1, 0, 1, 0, 1, 0, 0, x'', ?2, ?3)",
            params![GENESIS_KEY, now_rfc3339(), node_id],
        )?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// Version 2 → 3: builds `kv_current` from the history once (the newest row of each key,
/// tombstones left out). Freed history starts at 0: the next compaction frees everything below
/// its revision, including what value-clearing compactions of version 2 kept.
fn migrate_v2_to_v3(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction()?;
    tx.execute_batch(V3_TABLES)?;
    tx.execute(
        "INSERT OR REPLACE INTO kv_current (key, revision, sub)
         SELECT r.key, r.revision, r.sub FROM records r
         WHERE r.revision > 1 AND r.deleted = 0
           AND r.revision = (SELECT MAX(n.revision) FROM records n WHERE n.key = r.key)",
        [],
    )?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    tracing::info!("local database migrated to schema version {SCHEMA_VERSION}");
    Ok(())
}
