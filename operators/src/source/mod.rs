//! Sources: nodes without inputs that create epochs.
//!
//! Both `source.files` and `source.manifest` work in two steps: a scanner on worker 0 lists
//! [`FileEntry`]s (cheap: names, sizes, modification times, manifest rows) and emits the changes
//! since its last scan as a new epoch; then a memoised pool stage hashes each file's content into a
//! `Video` record, spread over all workers. A restarted run rescans, finds every unchanged file in
//! the memo and hashes only what is new.

pub mod dicom;
pub mod files;
pub mod manifest;
pub mod prompts;

use crate::api::{
    BuildCtx, Coll, ErrorClass, ItemCtx, ItemError, PoolConfig, PoolItem, Record, Video, pool_map, route_hash,
};
use differential_dataflow::AsCollection;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};
use timely::dataflow::operators::generic::operator::source;

/// One input a source found: a local file or a remote uri, with metadata, or a problem with it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FileEntry {
    /// Stable item id (`file:/abs/path`, `manifest:/m.jsonl:12`).
    pub item: String,
    /// Absolute path or remote uri.
    pub uri: String,
    pub size: u64,
    pub mtime_ns: u128,
    pub metadata: BTreeMap<String, String>,
    /// Set when the scanner already knows this input is bad (malformed row, unreadable path).
    pub error: Option<(ErrorClass, String)>,
}

impl PoolItem for FileEntry {
    fn item_id(&self) -> String {
        self.item.clone()
    }
    fn describe(&self) -> String {
        self.uri.clone()
    }
    fn memo_input(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    fn route(&self) -> u64 {
        route_hash(&self.item)
    }
}

/// Whether a uri names something remote (`scheme://...` other than `file://`).
pub fn is_remote(uri: &str) -> bool {
    match uri.split_once("://") {
        Some((scheme, _)) => scheme != "file" && scheme.chars().all(|c| c.is_ascii_alphanumeric() || c == '+'),
        None => false,
    }
}

/// Size and modification time (ns since the epoch) of a file.
pub fn stat(path: &Path) -> std::io::Result<(u64, u128)> {
    let md = std::fs::metadata(path)?;
    let mtime = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok((md.len(), mtime))
}

/// Content hash of a file (blake3, hex), streaming, checking the per-item deadline.
pub fn hash_file(path: &Path, ctx: &ItemCtx) -> Result<String, ItemError> {
    // Opening a fifo blocks and a device (/dev/zero) never ends: only regular files are hashed.
    let md = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    if !md.is_file() {
        return Err(ItemError::invalid(format!(
            "{} is not a regular file (a folder, device or pipe): list video files",
            path.display()
        )));
    }
    let mut f = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| io_error(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        if ctx.timed_out() {
            return Err(ItemError::new(
                ErrorClass::Timeout,
                format!("hashing {} took longer than the item timeout", path.display()),
            ));
        }
    }
    Ok(h.finalize().to_hex().to_string())
}

fn io_error(path: &Path, e: std::io::Error) -> ItemError {
    let class = match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => ErrorClass::Unreadable,
        std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
            ErrorClass::Transient
        }
        _ => ErrorClass::Unreadable,
    };
    let fix = match e.kind() {
        std::io::ErrorKind::NotFound => " (the file is gone; check the path)",
        std::io::ErrorKind::PermissionDenied => " (check the file's permissions)",
        _ => "",
    };
    ItemError::new(class, format!("cannot read {}: {e}{fix}", path.display()))
}

/// Turn one entry into its `Video` record.
pub fn entry_to_video(e: &FileEntry, ctx: &ItemCtx) -> Result<Vec<Record>, ItemError> {
    if let Some((class, msg)) = &e.error {
        return Err(ItemError::new(*class, msg.clone()));
    }
    if is_remote(&e.uri) {
        let id = blake3::hash(format!("uri:{}", e.uri).as_bytes()).to_hex().to_string();
        return Ok(vec![Record::Video(Video {
            source_id: id,
            uri: e.uri.clone(),
            size_bytes: 0,
            probe: None,
            metadata: e.metadata.clone(),
        })]);
    }
    let path = Path::new(e.uri.strip_prefix("file://").unwrap_or(&e.uri));
    let (size, mtime) = stat(path).map_err(|err| io_error(path, err))?;
    if (size, mtime) != (e.size, e.mtime_ns) && e.mtime_ns != 0 {
        return Err(ItemError::transient(format!(
            "{} changed while it was being read; it will be read again",
            path.display()
        )));
    }
    let source_id = hash_file(path, ctx)?;
    let after = stat(path).map_err(|err| io_error(path, err))?;
    if after != (size, mtime) {
        return Err(ItemError::transient(format!(
            "{} changed while it was being hashed; it will be hashed again",
            path.display()
        )));
    }
    Ok(vec![Record::Video(Video {
        source_id,
        uri: e.uri.clone(),
        size_bytes: size,
        probe: None,
        metadata: e.metadata.clone(),
    })])
}

/// What a scanner returns: every entry it currently sees, keyed by item id.
pub type Snapshot = BTreeMap<String, FileEntry>;

/// How a scanning source behaves.
#[derive(Clone, Debug)]
pub struct ScanLoop {
    pub watch: bool,
    pub poll: Duration,
}

/// Build a source that calls `scan` on worker 0 (once, or every `poll` in watch mode), emits the
/// differences between consecutive snapshots as epochs, then hashes entries on the pool.
pub fn scanning_source<'s, S>(ctx: &BuildCtx<'s>, how: ScanLoop, threads: usize, mut scan: S) -> Coll<'s>
where
    S: FnMut() -> Snapshot + 'static,
{
    let scope = ctx.scope;
    let is_scanner = ctx.worker_index() == 0;
    let base_epoch = ctx.base_epoch;
    let max_epochs = ctx.settings.max_epochs;
    let dry_run = ctx.settings.dry_run;
    let shutdown = ctx.shutdown.clone();
    let node = ctx.node.clone();
    let entries = source(scope, &format!("{}:scan", ctx.node), move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut cap = if is_scanner { Some(cap) } else { None };
        let mut previous: Snapshot = BTreeMap::new();
        let mut epoch = base_epoch;
        let mut epochs_done = 0u64;
        let mut last_scan: Option<Instant> = None;
        move |output| {
            let Some(c) = cap.as_mut() else { return };
            let stop = shutdown.load(std::sync::atomic::Ordering::Relaxed);
            let due = last_scan.is_none_or(|t| t.elapsed() >= how.poll);
            if !stop && due {
                last_scan = Some(Instant::now());
                let now = scan();
                let mut changes: Vec<(FileEntry, u64, isize)> = Vec::new();
                for (k, old) in &previous {
                    if now.get(k) != Some(old) {
                        changes.push((old.clone(), epoch, -1));
                    }
                }
                for (k, new) in &now {
                    if previous.get(k) != Some(new) {
                        changes.push((new.clone(), epoch, 1));
                    }
                }
                let first = epochs_done == 0 && last_scan.is_some() && previous.is_empty();
                if !changes.is_empty() || first {
                    if !changes.is_empty() {
                        tracing::info!(node = %node, epoch, changes = changes.len(), "new epoch");
                    }
                    output.session(&c).give_iterator(changes.into_iter());
                    previous = now;
                    epochs_done += 1;
                    epoch += 1;
                    c.downgrade(&epoch);
                }
            }
            let finished = stop || !how.watch || dry_run || max_epochs.is_some_and(|m| epochs_done >= m);
            if finished {
                cap = None;
            } else {
                // Wake up to scan again, and often enough to notice a stop request.
                activator.activate_after(how.poll.min(Duration::from_millis(200)));
            }
        }
    })
    .as_collection();
    pool_map(ctx, entries, PoolConfig { threads, memoise: true }, entry_to_video)
}
