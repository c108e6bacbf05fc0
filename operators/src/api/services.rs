//! What the engine's run store offers operators. The engine implements [`Services`] on its run
//! directory (catalog.sqlite, blobs/, memo); tests can use [`MemServices`].

use super::records::Failure;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("run store I/O at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("run store catalog: {0}")]
    Catalog(String),
    #[error("blob {0} is missing from the run store")]
    MissingBlob(String),
}

/// A memo key: hash(operator, operator version, params fingerprint, input key), hex.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemoKey(pub String);

impl MemoKey {
    pub fn new(operator: &str, version: u32, params_fingerprint: &str, input_key: &[u8]) -> MemoKey {
        let mut h = blake3::Hasher::new();
        for part in [operator.as_bytes(), &version.to_le_bytes(), params_fingerprint.as_bytes(), input_key] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        MemoKey(h.finalize().to_hex().to_string())
    }
}

/// The state of an item's failures across runs, after recording one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureState {
    /// Failed attempts recorded so far (all runs).
    pub attempts: u32,
    pub quarantined: bool,
}

/// What the run store offers operators. Implementations are shared by all worker and pool threads.
pub trait Services: Send + Sync {
    /// Cached output of an operator for an input, if committed before.
    fn memo_get(&self, key: &MemoKey) -> Result<Option<Vec<u8>>, ServiceError>;
    /// Commit an operator's output for an input (durable when this returns).
    fn memo_put(&self, key: &MemoKey, node: &str, value: &[u8]) -> Result<(), ServiceError>;
    /// Store bytes under their content hash; returns the blob key. Atomic.
    fn blob_put(&self, bytes: &[u8]) -> Result<String, ServiceError>;
    /// Move a finished file into the blob store under its content hash; returns the key. Atomic.
    fn blob_put_file(&self, path: &Path) -> Result<String, ServiceError>;
    /// Path of a blob (may not exist).
    fn blob_path(&self, key: &str) -> PathBuf;
    /// Whether blob `key` is in the store (a memoised result whose blobs are gone is recomputed).
    fn blob_exists(&self, key: &str) -> bool {
        self.blob_path(key).is_file()
    }
    /// Record a failed attempt of `failure.item` at `failure.node`; quarantines it after
    /// `quarantine_after` failed attempts in total, counted over all runs.
    fn record_failure(&self, failure: &Failure, quarantine_after: u32) -> Result<FailureState, ServiceError>;
    /// Whether an item is quarantined at a node (skipped until `medgen retry --quarantined`).
    fn is_quarantined(&self, node: &str, item: &str) -> Result<bool, ServiceError>;
    /// Forget the failures of an item that has now succeeded.
    fn clear_failure(&self, node: &str, item: &str) -> Result<(), ServiceError>;
    /// Folder for a node's outputs (datasets, views, checkpoints, samples).
    fn outputs_dir(&self) -> PathBuf;
    /// Note that a sink committed a consistent snapshot of epoch `epoch`.
    fn commit_epoch(&self, node: &str, epoch: u64, summary: &str) -> Result<(), ServiceError>;
    /// Folder for temporary files on the same file system as the store (for atomic renames).
    fn tmp_dir(&self) -> PathBuf;
}

/// An in-memory [`Services`] for unit tests of operators.
#[derive(Default)]
pub struct MemServices {
    pub root: PathBuf,
    memo: Mutex<HashMap<MemoKey, Vec<u8>>>,
    failures: Mutex<HashMap<(String, String), FailureState>>,
    pub commits: Mutex<Vec<(String, u64, String)>>,
}

impl MemServices {
    pub fn new(root: &Path) -> Self {
        MemServices { root: root.to_path_buf(), ..Default::default() }
    }
}

impl Services for MemServices {
    fn memo_get(&self, key: &MemoKey) -> Result<Option<Vec<u8>>, ServiceError> {
        Ok(self.memo.lock().map_err(|e| ServiceError::Catalog(e.to_string()))?.get(key).cloned())
    }
    fn memo_put(&self, key: &MemoKey, _node: &str, value: &[u8]) -> Result<(), ServiceError> {
        self.memo.lock().map_err(|e| ServiceError::Catalog(e.to_string()))?.insert(key.clone(), value.to_vec());
        Ok(())
    }
    fn blob_put(&self, bytes: &[u8]) -> Result<String, ServiceError> {
        let key = blake3::hash(bytes).to_hex().to_string();
        let path = self.blob_path(&key);
        let io = |source| ServiceError::Io { path: path.clone(), source };
        std::fs::create_dir_all(path.parent().unwrap_or(&self.root)).map_err(io)?;
        std::fs::write(&path, bytes).map_err(io)?;
        Ok(key)
    }
    fn blob_put_file(&self, path: &Path) -> Result<String, ServiceError> {
        let bytes = std::fs::read(path).map_err(|source| ServiceError::Io { path: path.to_path_buf(), source })?;
        self.blob_put(&bytes)
    }
    fn blob_path(&self, key: &str) -> PathBuf {
        self.root.join("blobs").join(key)
    }
    fn record_failure(&self, failure: &Failure, quarantine_after: u32) -> Result<FailureState, ServiceError> {
        let mut map = self.failures.lock().map_err(|e| ServiceError::Catalog(e.to_string()))?;
        let st = map
            .entry((failure.node.clone(), failure.item.clone()))
            .or_insert(FailureState { attempts: 0, quarantined: false });
        st.attempts += 1;
        st.quarantined = st.attempts >= quarantine_after;
        Ok(*st)
    }
    fn is_quarantined(&self, node: &str, item: &str) -> Result<bool, ServiceError> {
        let map = self.failures.lock().map_err(|e| ServiceError::Catalog(e.to_string()))?;
        Ok(map.get(&(node.to_string(), item.to_string())).is_some_and(|s| s.quarantined))
    }
    fn clear_failure(&self, node: &str, item: &str) -> Result<(), ServiceError> {
        self.failures
            .lock()
            .map_err(|e| ServiceError::Catalog(e.to_string()))?
            .remove(&(node.to_string(), item.to_string()));
        Ok(())
    }
    fn outputs_dir(&self) -> PathBuf {
        self.root.join("outputs")
    }
    fn commit_epoch(&self, node: &str, epoch: u64, summary: &str) -> Result<(), ServiceError> {
        self.commits.lock().map_err(|e| ServiceError::Catalog(e.to_string()))?.push((
            node.into(),
            epoch,
            summary.into(),
        ));
        Ok(())
    }
    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
}
