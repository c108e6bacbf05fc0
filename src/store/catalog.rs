//! `catalog.sqlite`: connection set-up, schema and migrations.
//!
//! The catalog is marked as medgen's by SQLite's `application_id` header field and carries its schema
//! version in the `meta` table. Opening applies the migrations the file lacks, inside one
//! `BEGIN IMMEDIATE` transaction, so processes opening the same store at once migrate it exactly once.

use super::error::StoreError;
use rusqlite::{Connection, ErrorCode, OptionalExtension};
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

/// `application_id` of a medgen catalog: "MDGN".
pub(crate) const APPLICATION_ID: i32 = 0x4D44_474E;

/// How long a connection waits for another one's write lock before giving up.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// `MIGRATIONS[i]` takes the schema from version `i` to version `i + 1`. Append only: never edit a
/// migration that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE runs (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        started_at    TEXT NOT NULL,
        finished_at   TEXT,
        status        TEXT NOT NULL
                      CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted')),
        graph_path    TEXT NOT NULL,
        graph_name    TEXT NOT NULL,
        graph_hash    TEXT NOT NULL,
        process_index INTEGER NOT NULL,
        processes     INTEGER NOT NULL,
        argv          TEXT NOT NULL,          -- JSON array of strings
        summary_json  TEXT
    );

    CREATE TABLE epochs (
        node         TEXT NOT NULL,
        epoch        INTEGER NOT NULL CHECK (epoch >= 0),
        run_id       INTEGER REFERENCES runs(id) ON DELETE SET NULL,
        committed_at TEXT NOT NULL,
        summary      TEXT NOT NULL,
        PRIMARY KEY (node, epoch)
    ) WITHOUT ROWID;
    CREATE INDEX epochs_by_epoch ON epochs(epoch);

    CREATE TABLE failures (
        node        TEXT NOT NULL,
        item        TEXT NOT NULL,
        operator    TEXT NOT NULL,
        input       TEXT NOT NULL,
        class       TEXT NOT NULL,
        message     TEXT NOT NULL,
        attempts    INTEGER NOT NULL CHECK (attempts >= 0),
        quarantined INTEGER NOT NULL CHECK (quarantined IN (0, 1)),
        first_seen  TEXT NOT NULL,
        last_seen   TEXT NOT NULL,
        run_id      INTEGER REFERENCES runs(id) ON DELETE SET NULL,
        PRIMARY KEY (node, item)
    ) WITHOUT ROWID;
    CREATE INDEX failures_quarantined ON failures(node, item) WHERE quarantined = 1;

    CREATE TABLE memo (
        key        TEXT PRIMARY KEY NOT NULL,
        node       TEXT NOT NULL,
        value      BLOB NOT NULL,
        created_at TEXT NOT NULL,
        run_id     INTEGER REFERENCES runs(id) ON DELETE SET NULL
    );
    CREATE INDEX memo_by_node ON memo(node);

    CREATE TABLE outputs (
        node       TEXT NOT NULL,
        epoch      INTEGER NOT NULL CHECK (epoch >= 0),
        path       TEXT NOT NULL,             -- relative to outputs/
        blob       TEXT,
        created_at TEXT NOT NULL,
        run_id     INTEGER REFERENCES runs(id) ON DELETE SET NULL,
        PRIMARY KEY (node, epoch, path)
    ) WITHOUT ROWID;
    "#,
    // 2: `medgen review` ratings: blind pairwise outcomes (in model terms) and warping-error levels.
    r#"
    CREATE TABLE ratings (
        model_a    TEXT NOT NULL,
        model_b    TEXT NOT NULL,
        prompt_id  TEXT NOT NULL,
        rater      TEXT NOT NULL,
        criterion  TEXT NOT NULL,
        outcome    TEXT NOT NULL CHECK (outcome IN ('a_wins', 'both_lose', 'b_wins')),
        left_model TEXT NOT NULL,             -- which model the rater saw on the left
        created_at TEXT NOT NULL,
        PRIMARY KEY (model_a, model_b, prompt_id, rater, criterion)
    ) WITHOUT ROWID;

    CREATE TABLE warping_ratings (
        model      TEXT NOT NULL,
        prompt_id  TEXT NOT NULL,
        rater      TEXT NOT NULL,
        level      TEXT NOT NULL CHECK (level IN ('no', 'minor', 'moderate', 'severe')),
        created_at TEXT NOT NULL,
        PRIMARY KEY (model, prompt_id, rater)
    ) WITHOUT ROWID;
    "#,
    // 3: when a run last read each memo entry (NULL: not since it was written), so that
    // `medgen store gc --keep-days` spares what is still in use.
    r#"
    ALTER TABLE memo ADD COLUMN used_at TEXT;
    "#,
];

/// The schema version this build writes.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// SQL for "now" in the catalog's time format (UTC, ISO 8601, milliseconds).
macro_rules! now_sql {
    () => {
        "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
    };
}
pub(crate) use now_sql;

/// Refuse a file that is neither empty nor an SQLite database, without letting SQLite touch it.
fn check_header(path: &Path) -> Result<(), StoreError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io(path, e)),
    };
    if !meta.is_file() {
        return Err(StoreError::NotACatalog { path: path.to_path_buf(), reason: "not a regular file".into() });
    }
    if meta.len() == 0 {
        return Ok(());
    }
    let mut header = [0u8; 16];
    let mut file = std::fs::File::open(path).map_err(|e| StoreError::io(path, e))?;
    let n = read_up_to(&mut file, &mut header).map_err(|e| StoreError::io(path, e))?;
    if n < header.len() || &header != b"SQLite format 3\0" {
        return Err(StoreError::NotACatalog { path: path.to_path_buf(), reason: "not an SQLite database".into() });
    }
    Ok(())
}

fn read_up_to(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
}

/// Run `f`, retrying while SQLite reports the database busy (for the set-up steps where SQLite may
/// not call the busy handler, such as switching the journal mode), up to [`BUSY_TIMEOUT`].
fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(1);
    loop {
        match f() {
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Open (creating if needed) and migrate the catalog at `path`.
pub(crate) fn open(path: &Path) -> Result<Connection, StoreError> {
    check_header(path)?;
    let err = |what| move |e| StoreError::sqlite(path, what, e);
    let conn = Connection::open(path).map_err(err("open"))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err("set busy_timeout"))?;
    let mode: String = retry_busy(|| conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)))
        .map_err(err("enable WAL mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Setup {
            path: path.to_path_buf(),
            reason: format!("SQLite kept journal mode `{mode}` instead of WAL"),
        });
    }
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(err("set synchronous"))?;
    conn.pragma_update(None, "foreign_keys", true).map_err(err("enable foreign keys"))?;
    conn.set_prepared_statement_cache_capacity(32);
    migrate(&conn, path)?;
    Ok(conn)
}

/// Bring the schema to [`SCHEMA_VERSION`], or refuse a foreign or newer catalog, in one
/// `BEGIN IMMEDIATE` transaction.
fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    retry_busy(|| conn.execute_batch("BEGIN IMMEDIATE"))
        .map_err(|e| StoreError::sqlite(path, "lock the catalog to check its schema", e))?;
    match migrate_locked(conn, path) {
        Ok(()) => conn.execute_batch("COMMIT").map_err(|e| StoreError::sqlite(path, "commit the schema", e)),
        Err(e) => {
            // The transaction is being abandoned; a failed rollback leaves nothing to undo.
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn migrate_locked(tx: &Connection, path: &Path) -> Result<(), StoreError> {
    let err = |what| move |e| StoreError::sqlite(path, what, e);
    let app_id: i32 =
        tx.pragma_query_value(None, "application_id", |r| r.get(0)).map_err(err("read application_id"))?;
    let tables: i64 = tx
        .query_row("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'", [], |r| {
            r.get(0)
        })
        .map_err(err("list tables"))?;
    let version = match app_id {
        APPLICATION_ID => {
            let v: Option<String> = tx
                .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
                .optional()
                .map_err(|e| StoreError::NotACatalog {
                    path: path.to_path_buf(),
                    reason: format!("no meta table: {e}"),
                })?;
            match v.as_deref().map(str::parse::<i64>) {
                Some(Ok(v)) if v >= 1 => v,
                _ => {
                    return Err(StoreError::NotACatalog {
                        path: path.to_path_buf(),
                        reason: format!("bad schema_version {v:?}"),
                    });
                }
            }
        }
        0 if tables == 0 => {
            tx.pragma_update(None, "application_id", APPLICATION_ID).map_err(err("set application_id"))?;
            0
        }
        0 => {
            return Err(StoreError::NotACatalog {
                path: path.to_path_buf(),
                reason: format!("an SQLite database with {tables} other table(s)"),
            });
        }
        other => {
            return Err(StoreError::NotACatalog {
                path: path.to_path_buf(),
                reason: format!("an SQLite database with application id {other:#x}"),
            });
        }
    };
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew { path: path.to_path_buf(), found: version, supported: SCHEMA_VERSION });
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    // 0 <= version < SCHEMA_VERSION here.
    let applied = usize::try_from(version).unwrap_or(MIGRATIONS.len());
    for sql in &MIGRATIONS[applied..] {
        tx.execute_batch(sql).map_err(err("migrate the schema"))?;
    }
    tx.execute(
        concat!(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?1) ",
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        ),
        [SCHEMA_VERSION.to_string()],
    )
    .map_err(err("record the schema version"))?;
    tx.execute(concat!("INSERT OR IGNORE INTO meta (key, value) VALUES ('created_at', ", now_sql!(), ")"), [])
        .map_err(err("record the creation time"))?;
    tx.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('created_by', ?1)",
        [concat!("medgen ", env!("CARGO_PKG_VERSION"))],
    )
    .map_err(err("record the creator"))?;
    Ok(())
}
