//! A per-process cache of loaded models (networks, ONNX sessions), so that `check`, `build` and
//! watch-mode rebuilds of the same node load a model once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Loaded models by key; holds at most `cap` of them (it starts over when full, since each may be large).
pub struct LoadedCache<T> {
    cap: usize,
    map: Mutex<BTreeMap<String, Arc<T>>>,
}

impl<T> LoadedCache<T> {
    /// An empty cache, usable in a `static`.
    pub const fn new(cap: usize) -> Self {
        LoadedCache { cap, map: Mutex::new(BTreeMap::new()) }
    }

    /// The model under `key`, loading it with `load` (outside the lock) when absent.
    pub fn get_or_load<E>(&self, key: String, load: impl FnOnce() -> Result<T, E>) -> Result<Arc<T>, E> {
        if let Some(m) = self.map.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(m.clone());
        }
        let m = Arc::new(load()?);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.cap {
            map.clear();
        }
        map.insert(key, m.clone());
        Ok(m)
    }
}
