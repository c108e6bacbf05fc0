//! Garbage collection of a run store (`medgen store gc`).
//!
//! A long-lived store grows with every parameter change: the memo cache keeps the results of the
//! old settings and the blobs they refer to (clips, latents, checkpoints, samples), although no
//! graph would read them again. Collection has two steps:
//!
//! 1. **Memo entries** are dropped unless they are *live* (a dry run of the store's graphs read
//!    them: [`Marking`]), younger than the policy's age, or a cache of a node the graphs still have
//!    (a value that is not a list of records, such as curate.segment's per-frame scene scores,
//!    which a node reads only when it recomputes: they make a threshold change cheap).
//! 2. **Blobs** are deleted unless a kept memo entry refers to them (through its records, and
//!    through the `blob:<key>` references inside a latent's safetensors header, e.g. its codec), an
//!    `outputs` row names them, the dry runs named them, or they are younger than the age.
//!
//! Memo entries go first, so an interrupted collection leaves unreferenced blobs (collected next
//! time), never memo entries without their blobs (which a run would recompute anyway).
//! `outputs/` (datasets, views, training state, checkpoint folders) is never touched; a blob that
//! a dataset still hard-links keeps its bytes on disk until the dataset drops it.

use super::Store;
use super::blobs::is_valid_key as is_valid_ref;
use super::blobs::{self, BlobFile, links};
use super::error::StoreError;
use medgen_operators::api::{Failure, FailureState, MemoKey, Record, ServiceError, Services};
use rusqlite::params;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// What to keep.
pub struct GcPolicy<'a> {
    /// Memo keys to keep whatever their age: what the graphs' dry runs read.
    pub live: &'a HashSet<String>,
    /// Blob keys to keep whatever refers to them: what the dry runs named.
    pub live_blobs: &'a HashSet<String>,
    /// Nodes of the graphs: their caches (memo values that are not records) are kept.
    pub live_nodes: &'a HashSet<String>,
    /// Memo entries a run wrote or read, and blobs written, more recently than this are kept.
    pub keep_younger_than: Duration,
}

/// Memo entries of one node, kept and to drop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeGc {
    pub kept: u64,
    pub dropped: u64,
}

/// What a collection would do ([`Store::gc_plan`]); [`Store::gc_apply`] does it.
#[derive(Debug, Default)]
pub struct GcPlan {
    /// Memo entries per node (the node column of the memo table).
    pub nodes: BTreeMap<String, NodeGc>,
    /// Keys of the memo entries to drop.
    pub memo_drop: Vec<String>,
    /// Blobs to delete.
    pub blobs_drop: Vec<BlobFile>,
    /// Blobs kept and their bytes.
    pub blobs_kept: u64,
    pub bytes_kept: u64,
    /// Of the blobs to delete: the bytes deleting them frees, and the bytes that stay on disk
    /// because another hard link (a dataset clip) still holds them.
    pub bytes_freed: u64,
    pub bytes_still_linked: u64,
    /// Kept memo entries refer to these blobs, which are not in the store (recomputed by the next
    /// run that needs them).
    pub missing_refs: u64,
    /// Files under `blobs/` that are not blobs (left alone).
    pub strays: Vec<PathBuf>,
}

/// What a collection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcDone {
    pub memo_dropped: u64,
    pub blobs_deleted: u64,
    pub bytes_freed: u64,
}

impl Store {
    /// What collecting under `policy` would drop and keep. Reads the catalog and lists `blobs/`;
    /// changes nothing.
    pub fn gc_plan(&self, policy: &GcPolicy<'_>) -> Result<GcPlan, StoreError> {
        let mut plan = GcPlan::default();
        let mut referenced: HashSet<String> = HashSet::new();
        let age = format!("-{} seconds", policy.keep_younger_than.as_secs());
        self.read("scan the memo cache", |c| {
            let mut stmt = c.prepare(concat!(
                "SELECT key, node, value, max(created_at, coalesce(used_at, created_at)) > ",
                "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1) FROM memo"
            ))?;
            let mut rows = stmt.query([&age])?;
            while let Some(r) = rows.next()? {
                let key: String = r.get(0)?;
                let node: String = r.get(1)?;
                let recent: bool = r.get(3)?;
                let value = r.get_ref(2)?.as_blob_or_null()?.unwrap_or_default();
                // A value that is not a list of records is a node's cache: it refers to no blob.
                let records = serde_json::from_slice::<Vec<Record>>(value).ok();
                let cache_of_live_node = records.is_none() && policy.live_nodes.contains(&node);
                let entry = plan.nodes.entry(node).or_default();
                if recent || cache_of_live_node || policy.live.contains(&key) {
                    entry.kept += 1;
                    referenced.extend(self.record_refs(records.as_deref().unwrap_or_default()));
                } else {
                    entry.dropped += 1;
                    plan.memo_drop.push(key);
                }
            }
            Ok(())
        })?;
        for o in self.outputs(None)? {
            referenced.extend(o.blob);
        }
        referenced.extend(policy.live_blobs.iter().cloned());
        let (files, strays) = self.blobs.list()?;
        plan.strays = strays;
        let cutoff = SystemTime::now().checked_sub(policy.keep_younger_than).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut present: HashSet<String> = HashSet::with_capacity(files.len());
        for b in files {
            present.insert(b.key.clone());
            let young = b.modified.is_none_or(|m| m > cutoff);
            if referenced.contains(&b.key) || young {
                plan.blobs_kept += 1;
                plan.bytes_kept += b.len;
                continue;
            }
            if b.links > 1 {
                plan.bytes_still_linked += b.len;
            } else {
                plan.bytes_freed += b.len;
            }
            plan.blobs_drop.push(b);
        }
        plan.missing_refs = referenced.iter().filter(|k| !present.contains(*k)).count() as u64;
        Ok(plan)
    }

    /// Drop the plan's memo entries (one transaction), then delete its blobs. Call it under
    /// [`Store::lock_run`]: a run reading a memo entry while its blobs go would recompute the item.
    pub fn gc_apply(&self, plan: &GcPlan, progress: &mut dyn FnMut(u64)) -> Result<GcDone, StoreError> {
        let mut done = GcDone::default();
        for chunk in plan.memo_drop.chunks(10_000) {
            done.memo_dropped += self.write("drop memo entries", |c| {
                let mut stmt = c.prepare_cached("DELETE FROM memo WHERE key = ?1")?;
                let mut n = 0u64;
                for key in chunk {
                    n += stmt.execute(params![key])? as u64;
                }
                Ok(n)
            })?;
        }
        let mut dirs: BTreeSet<&Path> = BTreeSet::new();
        for b in &plan.blobs_drop {
            let meta = match std::fs::metadata(&b.path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io(&b.path, e)),
            };
            std::fs::remove_file(&b.path).map_err(|e| StoreError::io(&b.path, e))?;
            done.blobs_deleted += 1;
            if links(&meta) <= 1 {
                done.bytes_freed += b.len;
            }
            if let Some(dir) = b.path.parent() {
                dirs.insert(dir);
            }
            progress(b.len);
        }
        for dir in dirs {
            blobs::sync_dir(dir)?;
        }
        Ok(done)
    }

    /// Give the catalog's free pages back to the file system (SQLite `VACUUM`) after a collection
    /// dropped many memo entries. Waits for other connections like any write.
    pub fn compact_catalog(&self) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")
            .map_err(|e| StoreError::sqlite(&self.catalog, "compact the catalog", e))
    }
}

impl Store {
    /// The blobs kept records refer to: [`Record::blob_keys`], plus the `blob:<key>` values in the
    /// safetensors header of each latent they name (the patch-PCA codec a latent was encoded with).
    fn record_refs(&self, records: &[Record]) -> Vec<String> {
        let mut keys = Vec::new();
        for rec in records {
            keys.extend(rec.blob_keys().into_iter().map(str::to_string));
            if let Record::Latent(l) = rec {
                for blob in std::iter::once(&l.latent_blob).chain(&l.text_blob).filter(|k| is_valid_ref(k)) {
                    let Ok(meta) = medgen_operators::latent::tensor_metadata(self, blob) else { continue };
                    keys.extend(
                        meta.values()
                            .filter_map(|v| v.strip_prefix("blob:"))
                            .filter(|k| is_valid_ref(k))
                            .map(String::from),
                    );
                }
            }
        }
        keys
    }
}

/// A read-only view of a store for the dry runs that mark what a graph still uses: it records
/// the memo keys it serves and the blob keys operators name, and writes nothing (a blob "put"
/// only computes its key).
pub struct Marking {
    store: Arc<Store>,
    memo: Mutex<HashSet<String>>,
    blobs: Mutex<HashSet<String>>,
}

impl Marking {
    pub fn new(store: Arc<Store>) -> Marking {
        Marking { store, memo: Mutex::new(HashSet::new()), blobs: Mutex::new(HashSet::new()) }
    }

    /// The memo keys served and the blob keys named so far.
    pub fn marked(&self) -> (HashSet<String>, HashSet<String>) {
        let lock = |m: &Mutex<HashSet<String>>| m.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (lock(&self.memo), lock(&self.blobs))
    }

    fn mark_blob(&self, key: &str) {
        self.blobs.lock().unwrap_or_else(|p| p.into_inner()).insert(key.to_string());
    }
}

impl Services for Marking {
    fn memo_get(&self, key: &MemoKey) -> Result<Option<Vec<u8>>, ServiceError> {
        // Looked up, not read as a run reads it: a dry run is not a use.
        let value = self.store.memo_lookup(key)?;
        if value.is_some() {
            self.memo.lock().unwrap_or_else(|p| p.into_inner()).insert(key.0.clone());
        }
        Ok(value)
    }

    fn memo_put(&self, _key: &MemoKey, _node: &str, _value: &[u8]) -> Result<(), ServiceError> {
        Ok(())
    }

    fn blob_put(&self, bytes: &[u8]) -> Result<String, ServiceError> {
        let key = blake3::hash(bytes).to_hex().to_string();
        self.mark_blob(&key);
        Ok(key)
    }

    fn blob_put_file(&self, path: &Path) -> Result<String, ServiceError> {
        let io = |source| ServiceError::Io { path: path.to_path_buf(), source };
        let (key, _) = blobs::hash_reader(&mut std::fs::File::open(path).map_err(io)?).map_err(io)?;
        self.mark_blob(&key);
        Ok(key)
    }

    fn blob_path(&self, key: &str) -> PathBuf {
        self.mark_blob(key);
        self.store.blob_path(key)
    }

    fn blob_exists(&self, key: &str) -> bool {
        self.store.blob_exists(key).unwrap_or(false)
    }

    fn record_failure(&self, _failure: &Failure, _quarantine_after: u32) -> Result<FailureState, ServiceError> {
        Ok(FailureState { attempts: 0, quarantined: false })
    }

    fn is_quarantined(&self, node: &str, item: &str) -> Result<bool, ServiceError> {
        self.store.is_quarantined(node, item)
    }

    fn clear_failure(&self, _node: &str, _item: &str) -> Result<(), ServiceError> {
        Ok(())
    }

    fn outputs_dir(&self) -> PathBuf {
        self.store.outputs_dir()
    }

    fn commit_epoch(&self, _node: &str, _epoch: u64, _summary: &str) -> Result<(), ServiceError> {
        Ok(())
    }

    fn tmp_dir(&self) -> PathBuf {
        self.store.tmp_dir()
    }
}
