//! The run store (ARCHITECTURE §3): one run directory holding
//!
//! - `catalog.sqlite`: runs, committed epochs, per-item failures, the memo cache and outputs
//!   (SQLite in WAL mode, `synchronous=NORMAL`, 30 s busy timeout, foreign keys on; versioned schema,
//!   migrated on open; see [`SCHEMA_VERSION`]),
//! - `blobs/`: content-addressed files (`blobs/ab/abcdef…`, blake3 hex), written atomically,
//! - `outputs/`: datasets, checkpoints, samples that nodes write,
//! - `tmp/`: temporary files on the store's file system, for atomic renames (entries older than an
//!   hour are removed on open),
//! - `report/`: the run report.
//!
//! A [`Store`] is opened once per process and shared as `Arc<Store>` by all worker and pool threads.
//! Several processes (a timely cluster on one machine) and several `Store`s may use the same run
//! directory at once: writes wait for each other (busy timeout, `BEGIN IMMEDIATE`) instead of failing.
//!
//! Durability: a write is durable against a crash of the process when it returns (SQLite's WAL is
//! written before the commit returns). With `synchronous=NORMAL`, an OS crash or power loss may roll
//! back the last few catalog transactions, never corrupt the catalog; since every blob is synced before
//! it becomes visible, a catalog row never refers to a lost blob.

mod blobs;
mod catalog;
mod error;
mod gc;
mod ratings;
mod types;

#[cfg(test)]
mod tests;

pub use blobs::BlobFile;
pub use blobs::is_valid_key as is_valid_blob_key;
pub use error::StoreError;
pub use gc::{GcDone, GcPlan, GcPolicy, Marking, NodeGc};
pub use ratings::{Outcome, RatingRow, WarpLevel, WarpingRow};
pub use types::{CommitRow, FailureFilter, FailureRow, OutputRow, RunInfo, RunRow, RunStatus};

use blobs::{Blobs, TempFile};
use catalog::now_sql;
use medgen_operators::api::{Failure, FailureState, MemoKey, ServiceError, Services};
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The schema version of catalogs this build writes.
pub const SCHEMA_VERSION: i64 = catalog::SCHEMA_VERSION;

/// File name of the catalog inside the run directory.
pub const CATALOG_FILE: &str = "catalog.sqlite";

/// An open run directory. `Send + Sync`: share it as `Arc<Store>`.
pub struct Store {
    root: PathBuf,
    catalog: PathBuf,
    conn: Mutex<Connection>,
    /// The run begun by [`Store::begin_run`], 0 before (run ids start at 1).
    run_id: AtomicI64,
    blobs: Blobs,
    /// Memo entries read since the last [`Store::flush_memo_use`]: their `used_at` is set when an
    /// epoch commits or the run finishes (one write for many reads), or when
    /// [`MEMO_USE_BATCH`] distinct entries wait (a Store used outside a run).
    memo_used: Mutex<HashSet<String>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("root", &self.root).field("run_id", &self.current_run()).finish_non_exhaustive()
    }
}

/// A run's hold on its store ([`Store::lock_run`]); released when dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: fs::File,
}

/// Where `medgen store verify --repair` puts blobs whose bytes no longer match their name.
pub const CORRUPT_DIR: &str = "corrupt";

impl Store {
    /// Open the run directory at `root`, creating it, its folders and its catalog as needed, and
    /// migrating an older catalog. Removes temporary files older than an hour from `tmp/`.
    ///
    /// Fails clearly when `root` is not a directory or not writable, and when `catalog.sqlite` is not
    /// a medgen catalog (another file, another application's database, a newer schema).
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let root = std::path::absolute(root).map_err(|e| StoreError::io(root, e))?;
        match fs::metadata(&root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(StoreError::NotADirectory { path: root }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(&root).map_err(|e| StoreError::io(&root, e))?;
            }
            Err(e) => return Err(StoreError::io(&root, e)),
        }
        for dir in ["blobs", "outputs", "tmp", "report"] {
            let dir = root.join(dir);
            fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        }
        let blobs = Blobs { dir: root.join("blobs"), tmp: root.join("tmp") };
        // An existing store on a read-only mount passes the folder creation above: probe it.
        drop(TempFile::create(&blobs.tmp).map_err(|e| match e {
            StoreError::NotWritable { source, .. } => StoreError::NotWritable { path: root.clone(), source },
            other => other,
        })?);
        blobs::clear_stale_tmp(&blobs.tmp);
        let catalog = root.join(CATALOG_FILE);
        let conn = catalog::open(&catalog)?;
        Ok(Store {
            root,
            catalog,
            conn: Mutex::new(conn),
            run_id: AtomicI64::new(0),
            blobs,
            memo_used: Mutex::new(HashSet::new()),
        })
    }

    /// Hold the store for one run (process `process` of it) until the returned guard drops: a
    /// second `medgen run` of the same store would redo the first one's work and interleave its
    /// epochs and outputs, so it is refused with [`StoreError::Busy`] naming the holder. The lock
    /// is the operating system's (released when the holder exits, however it exits); `what`
    /// (e.g. the graph file) is written into `run-<process>.lock` for the message.
    pub fn lock_run(&self, process: usize, what: &str) -> Result<RunLock, StoreError> {
        let path = self.root.join(format!("run-{process}.lock"));
        let mut file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&path).unwrap_or_default().trim().to_string();
                let holder = if holder.is_empty() { "its lock file is being written".to_string() } else { holder };
                return Err(StoreError::Busy { path: self.root.clone(), holder });
            }
            Err(fs::TryLockError::Error(e)) => return Err(StoreError::io(&path, e)),
        }
        use std::io::Write;
        let since = self
            .read("read the clock", |c| c.query_row(concat!("SELECT ", now_sql!()), [], |r| r.get::<_, String>(0)))
            .unwrap_or_default();
        let note = format!("pid {} since {since}, {what}", std::process::id());
        file.set_len(0).and_then(|_| file.write_all(note.as_bytes())).map_err(|e| StoreError::io(&path, e))?;
        Ok(RunLock { _file: file })
    }

    /// The run directory (absolute).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of `catalog.sqlite`.
    pub fn catalog_path(&self) -> &Path {
        &self.catalog
    }

    /// Folder for the run report.
    pub fn report_dir(&self) -> PathBuf {
        self.root.join("report")
    }

    /// The run begun by [`Store::begin_run`] on this `Store`, if any.
    pub fn current_run(&self) -> Option<i64> {
        Some(self.run_id.load(Ordering::Relaxed)).filter(|&id| id > 0)
    }

    /// Record the start of a run (status `running`); returns its id and tags memo, failure, epoch and
    /// output rows written through this `Store` with it from now on.
    pub fn begin_run(&self, info: &RunInfo) -> Result<i64, StoreError> {
        let argv = serde_json::to_string(&info.argv).map_err(|e| StoreError::Setup {
            path: self.catalog.clone(),
            reason: format!("cannot encode argv: {e}"),
        })?;
        let process_index = to_i64("process index", info.process_index as u64)?;
        let processes = to_i64("process count", info.processes as u64)?;
        let graph_path = info.graph_path.to_string_lossy();
        let id = self.write("begin a run", |c| {
            c.query_row(
                concat!(
                    "INSERT INTO runs (started_at, status, graph_path, graph_name, graph_hash, process_index, ",
                    "processes, argv) VALUES (",
                    now_sql!(),
                    ", 'running', ?1, ?2, ?3, ?4, ?5, ?6) RETURNING id"
                ),
                params![graph_path, info.graph_name, info.graph_hash, process_index, processes, argv],
                |r| r.get::<_, i64>(0),
            )
        })?;
        self.run_id.store(id, Ordering::Relaxed);
        Ok(id)
    }

    /// Record the end of run `run_id` with its final status and a JSON summary.
    pub fn finish_run(&self, run_id: i64, status: RunStatus, summary_json: &str) -> Result<(), StoreError> {
        self.flush_memo_use()?;
        let n = self.write("finish a run", |c| {
            c.execute(
                concat!("UPDATE runs SET finished_at = ", now_sql!(), ", status = ?2, summary_json = ?3 WHERE id = ?1"),
                params![run_id, status.as_str(), summary_json],
            )
        })?;
        if n == 0 {
            return Err(StoreError::UnknownRun { path: self.catalog.clone(), run_id });
        }
        Ok(())
    }

    /// The epoch a new run starts at: 1 + the largest epoch committed by any node, 0 when none.
    pub fn next_epoch(&self) -> Result<u64, StoreError> {
        let max = self.read("find the last committed epoch", |c| {
            c.query_row("SELECT max(epoch) FROM epochs", [], |r| r.get::<_, Option<u64>>(0))
        })?;
        Ok(max.map_or(0, |e| e.saturating_add(1)))
    }

    /// Failures matching `filter`, ordered by node and item.
    pub fn failures(&self, filter: &FailureFilter) -> Result<Vec<FailureRow>, StoreError> {
        self.read("list failures", |c| {
            let mut stmt = c.prepare_cached(
                "SELECT node, item, operator, input, class, message, attempts, quarantined, first_seen, \
                 last_seen, run_id FROM failures WHERE (?1 IS NULL OR node = ?1) AND (?2 = 0 OR quarantined = 1) \
                 ORDER BY node, item",
            )?;
            let rows = stmt.query_map(params![filter.node, filter.quarantined_only], |r| {
                Ok(FailureRow {
                    node: r.get(0)?,
                    item: r.get(1)?,
                    operator: r.get(2)?,
                    input: r.get(3)?,
                    class: r.get(4)?,
                    message: r.get(5)?,
                    attempts: r.get(6)?,
                    quarantined: r.get(7)?,
                    first_seen: r.get(8)?,
                    last_seen: r.get(9)?,
                    run_id: r.get(10)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Release quarantined items (all, a node's, an item's at every node, or one) so the next run tries
    /// them again: clears `quarantined` and resets `attempts` to 0. Returns how many were released.
    pub fn retry_quarantined(&self, node: Option<&str>, item: Option<&str>) -> Result<usize, StoreError> {
        self.write("release quarantined items", |c| {
            c.execute(
                "UPDATE failures SET quarantined = 0, attempts = 0 \
                 WHERE quarantined = 1 AND (?1 IS NULL OR node = ?1) AND (?2 IS NULL OR item = ?2)",
                params![node, item],
            )
        })
    }

    /// Number of memo entries per node.
    pub fn memo_stats(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        self.read("count memo entries", |c| {
            let mut stmt = c.prepare_cached("SELECT node, count(*) FROM memo GROUP BY node")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?;
            rows.collect()
        })
    }

    /// The `limit` most recent runs, newest first.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read("list runs", |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, started_at, finished_at, status, graph_path, graph_name, graph_hash, process_index, \
                 processes, argv, summary_json FROM runs ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], |r| {
                let status: String = r.get(3)?;
                let status = RunStatus::parse(&status).ok_or_else(|| {
                    rusqlite::Error::FromSqlConversionFailure(
                        3,
                        Type::Text,
                        format!("unknown status `{status}`").into(),
                    )
                })?;
                let argv: String = r.get(9)?;
                let argv = serde_json::from_str(&argv)
                    .map_err(|e| rusqlite::Error::FromSqlConversionFailure(9, Type::Text, Box::new(e)))?;
                Ok(RunRow {
                    id: r.get(0)?,
                    started_at: r.get(1)?,
                    finished_at: r.get(2)?,
                    status,
                    graph_path: PathBuf::from(r.get::<_, String>(4)?),
                    graph_name: r.get(5)?,
                    graph_hash: r.get(6)?,
                    process_index: r.get(7)?,
                    processes: r.get(8)?,
                    argv,
                    summary_json: r.get(10)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Committed epochs (of one node, or all), ordered by epoch and node.
    pub fn commits(&self, node: Option<&str>) -> Result<Vec<CommitRow>, StoreError> {
        self.read("list committed epochs", |c| {
            let mut stmt = c.prepare_cached(
                "SELECT node, epoch, run_id, committed_at, summary FROM epochs \
                 WHERE (?1 IS NULL OR node = ?1) ORDER BY epoch, node",
            )?;
            let rows = stmt.query_map([node], |r| {
                Ok(CommitRow {
                    node: r.get(0)?,
                    epoch: r.get(1)?,
                    run_id: r.get(2)?,
                    committed_at: r.get(3)?,
                    summary: r.get(4)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Whether the memo cache has an entry for `key`.
    pub fn memo_contains(&self, key: &MemoKey) -> Result<bool, StoreError> {
        self.read("look up a memo entry", |c| c.prepare_cached("SELECT 1 FROM memo WHERE key = ?1")?.exists([&key.0]))
    }

    /// Record that `node` wrote `path` (relative to `outputs/`) for `epoch`, optionally also stored as
    /// blob `blob`. Recording the same (node, epoch, path) again replaces the row.
    pub fn record_output(&self, node: &str, epoch: u64, path: &str, blob: Option<&str>) -> Result<(), StoreError> {
        if let Some(key) = blob.filter(|k| !is_valid_blob_key(k)) {
            return Err(StoreError::InvalidBlobKey { key: key.to_string() });
        }
        let epoch = to_i64("epoch", epoch)?;
        let run = self.current_run();
        self.write("record an output", |c| {
            c.execute(
                concat!(
                    "INSERT INTO outputs (node, epoch, path, blob, created_at, run_id) VALUES (?1, ?2, ?3, ?4, ",
                    now_sql!(),
                    ", ?5) ON CONFLICT (node, epoch, path) DO UPDATE SET blob = excluded.blob, ",
                    "created_at = excluded.created_at, run_id = excluded.run_id"
                ),
                params![node, epoch, path, blob, run],
            )
        })?;
        Ok(())
    }

    /// Outputs recorded (by one node, or all), ordered by epoch, node and path.
    pub fn outputs(&self, node: Option<&str>) -> Result<Vec<OutputRow>, StoreError> {
        self.read("list outputs", |c| {
            let mut stmt = c.prepare_cached(
                "SELECT node, epoch, path, blob, created_at, run_id FROM outputs \
                 WHERE (?1 IS NULL OR node = ?1) ORDER BY epoch, node, path",
            )?;
            let rows = stmt.query_map([node], |r| {
                Ok(OutputRow {
                    node: r.get(0)?,
                    epoch: r.get(1)?,
                    path: r.get(2)?,
                    blob: r.get(3)?,
                    created_at: r.get(4)?,
                    run_id: r.get(5)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Path of blob `key`, or an error for a malformed key.
    pub fn blob_file(&self, key: &str) -> Result<PathBuf, StoreError> {
        self.blobs.path(key)
    }

    /// Whether blob `key` is in the store.
    pub fn blob_exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.blobs.path(key)?.is_file())
    }

    /// Every blob file of the store (sorted by key) and the other files found under `blobs/`.
    pub fn blob_files(&self) -> Result<(Vec<BlobFile>, Vec<PathBuf>), StoreError> {
        self.blobs.list()
    }

    /// Re-hashes `blob`: `None` when its bytes still hash to its name, else the hash they have now
    /// (a clip edited in place through a hard link, a disk error). `progress` gets bytes read.
    pub fn blob_rehash(&self, blob: &BlobFile, progress: &mut dyn FnMut(u64)) -> Result<Option<String>, StoreError> {
        self.blobs.rehash(blob, progress)
    }

    /// Moves a damaged blob out of `blobs/` into `corrupt/` (kept for inspection); returns where
    /// it went. Memoised results that refer to it are then recomputed by the next run.
    pub fn blob_set_aside(&self, blob: &BlobFile) -> Result<PathBuf, StoreError> {
        let dir = self.root.join(CORRUPT_DIR);
        fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        let dest = dir.join(&blob.key);
        fs::rename(&blob.path, &dest).map_err(|e| StoreError::io(&blob.path, e))?;
        blobs::sync_dir(&dir)?;
        if let Some(parent) = blob.path.parent() {
            blobs::sync_dir(parent)?;
        }
        Ok(dest)
    }

    /// The bytes of blob `key`.
    pub fn blob_get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.blobs.path(key)?;
        fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::MissingBlob { path: path.clone(), key: key.to_string() },
            _ => StoreError::io(&path, e),
        })
    }

    // ----- the catalog connection -----

    /// The connection, recovering it from a thread that panicked while holding it (a transaction
    /// such a thread left open is rolled back).
    fn conn(&self) -> MutexGuard<'_, Connection> {
        match self.conn.lock() {
            Ok(guard) => guard,
            Err(poisoned) => {
                let guard = poisoned.into_inner();
                if !guard.is_autocommit() {
                    // Nothing to keep from a transaction abandoned by a panic.
                    let _ = guard.execute_batch("ROLLBACK");
                }
                self.conn.clear_poison();
                guard
            }
        }
    }

    /// Run `f` in a `BEGIN IMMEDIATE` transaction: it takes the write lock first, so it waits for other
    /// writers (up to the busy timeout) instead of failing half-way.
    fn write<T>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let err = |e| StoreError::sqlite(&self.catalog, what, e);
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
        let out = f(&tx).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(out)
    }

    /// Run the read-only `f` (one statement, or a consistent snapshot if it runs several).
    fn read<T>(&self, what: &'static str, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = self.conn();
        f(&conn).map_err(|e| StoreError::sqlite(&self.catalog, what, e))
    }

    // ----- what operators use (the `Services` trait) -----

    fn memo_lookup(&self, key: &MemoKey) -> Result<Option<Vec<u8>>, StoreError> {
        self.read("read a memo entry", |c| {
            c.prepare_cached("SELECT value FROM memo WHERE key = ?1")?.query_row([&key.0], |r| r.get(0)).optional()
        })
    }

    /// Stamp the memo entries read since the last flush as used now.
    fn flush_memo_use(&self) -> Result<(), StoreError> {
        let keys = std::mem::take(&mut *self.memo_used.lock().unwrap_or_else(|p| p.into_inner()));
        if keys.is_empty() {
            return Ok(());
        }
        self.write("note memo entries as used", |c| {
            let mut stmt = c.prepare_cached(concat!("UPDATE memo SET used_at = ", now_sql!(), " WHERE key = ?1"))?;
            for k in &keys {
                stmt.execute([k])?;
            }
            Ok(())
        })
    }

    fn memo_store(&self, key: &MemoKey, node: &str, value: &[u8]) -> Result<(), StoreError> {
        let run = self.current_run();
        self.write("write a memo entry", |c| {
            c.prepare_cached(concat!(
                "INSERT OR REPLACE INTO memo (key, node, value, created_at, run_id) VALUES (?1, ?2, ?3, ",
                now_sql!(),
                ", ?4)"
            ))?
            .execute(params![key.0, node, value, run])
        })?;
        Ok(())
    }

    fn failure_note(&self, failure: &Failure, quarantine_after: u32) -> Result<FailureState, StoreError> {
        let run = self.current_run();
        self.write("record a failure", |c| {
            // Quarantine is sticky: only `retry_quarantined` (or `clear_failure`) lifts it.
            c.prepare_cached(concat!(
                "INSERT INTO failures (node, item, operator, input, class, message, attempts, quarantined, ",
                "first_seen, last_seen, run_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, 1 >= ?7, ",
                now_sql!(),
                ", ",
                now_sql!(),
                ", ?8) ON CONFLICT (node, item) DO UPDATE SET operator = excluded.operator, ",
                "input = excluded.input, class = excluded.class, message = excluded.message, ",
                "attempts = failures.attempts + 1, ",
                "quarantined = (failures.quarantined OR failures.attempts + 1 >= ?7), ",
                "last_seen = excluded.last_seen, run_id = excluded.run_id ",
                "RETURNING attempts, quarantined"
            ))?
            .query_row(
                params![
                    failure.node,
                    failure.item,
                    failure.operator,
                    failure.input,
                    failure.class.as_str(),
                    failure.message,
                    quarantine_after,
                    run
                ],
                |r| {
                    Ok(FailureState {
                        attempts: u32::try_from(r.get::<_, i64>(0)?).unwrap_or(u32::MAX),
                        quarantined: r.get(1)?,
                    })
                },
            )
        })
    }

    fn quarantined(&self, node: &str, item: &str) -> Result<bool, StoreError> {
        self.read("check quarantine", |c| {
            c.prepare_cached("SELECT 1 FROM failures WHERE node = ?1 AND item = ?2 AND quarantined = 1")?
                .exists([node, item])
        })
    }

    fn failure_clear(&self, node: &str, item: &str) -> Result<(), StoreError> {
        self.write("clear a failure", |c| {
            c.prepare_cached("DELETE FROM failures WHERE node = ?1 AND item = ?2")?.execute([node, item])
        })?;
        Ok(())
    }

    fn epoch_commit(&self, node: &str, epoch: u64, summary: &str) -> Result<(), StoreError> {
        let epoch = to_i64("epoch", epoch)?;
        let run = self.current_run();
        self.write("commit an epoch", |c| {
            c.prepare_cached(concat!(
                "INSERT INTO epochs (node, epoch, run_id, committed_at, summary) VALUES (?1, ?2, ?3, ",
                now_sql!(),
                ", ?4) ON CONFLICT (node, epoch) DO UPDATE SET run_id = excluded.run_id, ",
                "committed_at = excluded.committed_at, summary = excluded.summary"
            ))?
            .execute(params![node, epoch, run, summary])
        })?;
        Ok(())
    }
}

fn to_i64(what: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what, value })
}

/// How many distinct memo reads wait before their use is written without an epoch commit.
const MEMO_USE_BATCH: usize = 4096;

/// Where [`Services::blob_path`] points for a malformed key: a name no blob has, inside `blobs/`.
const INVALID_BLOB_NAME: &str = "invalid-key";

impl Services for Store {
    /// A hit is noted as a use of the entry (see [`Store::flush_memo_use`]).
    fn memo_get(&self, key: &MemoKey) -> Result<Option<Vec<u8>>, ServiceError> {
        let value = self.memo_lookup(key)?;
        if value.is_some() {
            let waiting = {
                let mut used = self.memo_used.lock().unwrap_or_else(|p| p.into_inner());
                used.insert(key.0.clone());
                used.len()
            };
            if waiting >= MEMO_USE_BATCH {
                self.flush_memo_use()?;
            }
        }
        Ok(value)
    }

    fn memo_put(&self, key: &MemoKey, node: &str, value: &[u8]) -> Result<(), ServiceError> {
        Ok(self.memo_store(key, node, value)?)
    }

    fn blob_put(&self, bytes: &[u8]) -> Result<String, ServiceError> {
        Ok(self.blobs.put(bytes)?)
    }

    fn blob_put_file(&self, path: &Path) -> Result<String, ServiceError> {
        Ok(self.blobs.put_file(path)?)
    }

    /// `root/blobs/ab/<key>`. A malformed key (not 64 lowercase hex digits) gets a path inside
    /// `blobs/` that never holds a blob, so it cannot point outside the store.
    fn blob_path(&self, key: &str) -> PathBuf {
        self.blobs.path(key).unwrap_or_else(|_| self.blobs.dir.join(INVALID_BLOB_NAME))
    }

    fn record_failure(&self, failure: &Failure, quarantine_after: u32) -> Result<FailureState, ServiceError> {
        Ok(self.failure_note(failure, quarantine_after)?)
    }

    fn is_quarantined(&self, node: &str, item: &str) -> Result<bool, ServiceError> {
        Ok(self.quarantined(node, item)?)
    }

    fn clear_failure(&self, node: &str, item: &str) -> Result<(), ServiceError> {
        Ok(self.failure_clear(node, item)?)
    }

    fn outputs_dir(&self) -> PathBuf {
        self.root.join("outputs")
    }

    fn commit_epoch(&self, node: &str, epoch: u64, summary: &str) -> Result<(), ServiceError> {
        self.flush_memo_use()?;
        Ok(self.epoch_commit(node, epoch, summary)?)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.blobs.tmp.clone()
    }
}
