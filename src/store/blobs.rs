//! `blobs/`: content-addressed files, named by the blake3 hash of their bytes (lowercase hex) and
//! fanned out by the first two hex digits (`blobs/ab/abcdef…`).
//!
//! A blob is written to a temporary file in the store's `tmp/` folder (same file system), synced,
//! renamed into place and its folder synced, so a reader sees the whole blob or none, and a blob
//! that exists is never rewritten. Blobs are read-only (write bits removed, read bits kept as
//! created): the dataset sink hard-links clips to them, and a tool editing such a clip in place
//! must not change the store's bytes under their hash (root is not stopped by the mode;
//! `medgen store verify` finds what was changed).

use super::error::StoreError;
use medgen_operators::api::fsutil::make_read_only;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Prefix of the store's own temporary files in `tmp/`.
const TMP_PREFIX: &str = ".medgen-";

/// Temporary files and folders in `tmp/` older than this are removed when a store is opened.
pub(crate) const STALE_TMP_AGE: Duration = Duration::from_secs(3600);

/// Whether `key` is a blob key: 64 lowercase hex digits.
pub fn is_valid_key(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The blob store under a run directory.
#[derive(Debug)]
pub(crate) struct Blobs {
    /// `root/blobs`.
    pub(crate) dir: PathBuf,
    /// `root/tmp`.
    pub(crate) tmp: PathBuf,
}

impl Blobs {
    /// Path of blob `key`, or an error for a malformed key.
    pub(crate) fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        if !is_valid_key(key) {
            return Err(StoreError::InvalidBlobKey { key: key.to_string() });
        }
        Ok(self.dir.join(&key[..2]).join(key))
    }

    /// Whether a complete blob of `len` bytes is at `path`.
    fn present(path: &Path, len: u64) -> Result<bool, StoreError> {
        match fs::metadata(path) {
            Ok(m) => Ok(m.is_file() && m.len() == len),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io(path, e)),
        }
    }

    /// Store `bytes`; returns their key. A no-op when the blob exists.
    pub(crate) fn put(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let key = blake3::hash(bytes).to_hex().to_string();
        let dest = self.path(&key)?;
        if Self::present(&dest, bytes.len() as u64)? {
            return Ok(key);
        }
        let mut tmp = TempFile::create(&self.tmp)?;
        tmp.file.write_all(bytes).map_err(|e| StoreError::io(&tmp.path, e))?;
        tmp.file.sync_all().map_err(|e| StoreError::io(&tmp.path, e))?;
        self.install(tmp, &dest)?;
        Ok(key)
    }

    /// Move the finished file at `src` into the store; returns its key. `src` is gone afterwards
    /// (also when the blob already existed).
    pub(crate) fn put_file(&self, src: &Path) -> Result<String, StoreError> {
        let io_err = |e| StoreError::io(src, e);
        let mut file = File::open(src).map_err(io_err)?;
        let (key, len) = hash_reader(&mut file).map_err(io_err)?;
        let dest = self.path(&key)?;
        if Self::present(&dest, len)? {
            // Moving a blob onto itself must not delete it.
            let same = matches!((fs::canonicalize(src), fs::canonicalize(&dest)), (Ok(a), Ok(b)) if a == b);
            if !same {
                fs::remove_file(src).map_err(io_err)?;
            }
            return Ok(key);
        }
        // The data must be on disk before the rename makes it visible under its key.
        file.sync_all().map_err(io_err)?;
        drop(file);
        make_read_only(src);
        let dir = self.ensure_fanout_dir(&dest)?;
        match fs::rename(src, &dest) {
            Ok(()) => {
                sync_dir(&dir)?;
                // Only makes the source's removal durable (a source that reappears after a crash is
                // a harmless duplicate), so a folder that cannot be synced is no error.
                if let Some(src_dir) = src.parent().filter(|p| !p.as_os_str().is_empty()) {
                    let _ = sync_dir(src_dir);
                }
                Ok(key)
            }
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
                let mut tmp = TempFile::create(&self.tmp)?;
                let mut from = File::open(src).map_err(io_err)?;
                io::copy(&mut from, &mut tmp.file).map_err(|e| StoreError::io(&tmp.path, e))?;
                tmp.file.sync_all().map_err(|e| StoreError::io(&tmp.path, e))?;
                self.install(tmp, &dest)?;
                fs::remove_file(src).map_err(io_err)?;
                Ok(key)
            }
            Err(e) => Err(StoreError::io(&dest, e)),
        }
    }

    /// Rename a synced temporary file to `dest` and sync the folder.
    fn install(&self, tmp: TempFile, dest: &Path) -> Result<(), StoreError> {
        make_read_only(&tmp.path);
        let dir = self.ensure_fanout_dir(dest)?;
        fs::rename(&tmp.path, dest).map_err(|e| StoreError::io(dest, e))?;
        tmp.disarm();
        sync_dir(&dir)
    }

    /// Every file under `blobs/`: those named and placed as blobs (key, path, length), and the
    /// rest (names that are not keys, keys in the wrong fan-out folder, folders where files belong).
    pub(crate) fn list(&self) -> Result<(Vec<BlobFile>, Vec<PathBuf>), StoreError> {
        let (mut blobs, mut strays) = (Vec::new(), Vec::new());
        let read = |dir: &Path| fs::read_dir(dir).map_err(|e| StoreError::io(dir, e));
        for fan in read(&self.dir)? {
            let fan = fan.map_err(|e| StoreError::io(&self.dir, e))?;
            let fan_path = fan.path();
            if !fan_path.is_dir() {
                strays.push(fan_path);
                continue;
            }
            let prefix = fan.file_name().to_string_lossy().into_owned();
            for entry in read(&fan_path)? {
                let entry = entry.map_err(|e| StoreError::io(&fan_path, e))?;
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                match entry.metadata() {
                    Ok(m) if m.is_file() && is_valid_key(&name) && name.starts_with(&prefix) && prefix.len() == 2 => {
                        let modified = m.modified().ok();
                        blobs.push(BlobFile { key: name, path, len: m.len(), modified, links: links(&m) });
                    }
                    _ => strays.push(path),
                }
            }
        }
        blobs.sort_by(|a, b| a.key.cmp(&b.key));
        strays.sort();
        Ok((blobs, strays))
    }

    /// Re-hashes a blob file: `Ok(None)` when its bytes still hash to its name, `Ok(Some(actual))`
    /// when they do not. `progress` gets the bytes read as they are read.
    pub(crate) fn rehash(&self, blob: &BlobFile, progress: &mut dyn FnMut(u64)) -> Result<Option<String>, StoreError> {
        let mut file = File::open(&blob.path).map_err(|e| StoreError::io(&blob.path, e))?;
        let mut counting = Counting { inner: &mut file, progress };
        let (actual, _) = hash_reader(&mut counting).map_err(|e| StoreError::io(&blob.path, e))?;
        Ok((actual != blob.key).then_some(actual))
    }

    /// Create the fan-out folder of `dest` if needed (syncing `blobs/` when it is new); returns it.
    fn ensure_fanout_dir(&self, dest: &Path) -> Result<PathBuf, StoreError> {
        let dir = dest.parent().unwrap_or(&self.dir).to_path_buf();
        match fs::create_dir(&dir) {
            Ok(()) => sync_dir(&self.dir)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(StoreError::io(&dir, e)),
        }
        Ok(dir)
    }
}

/// A file in `blobs/` named and placed as a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobFile {
    /// Its name: the blake3 hash its bytes should have.
    pub key: String,
    pub path: PathBuf,
    pub len: u64,
    /// When it was written (`None` where the file system does not say).
    pub modified: Option<SystemTime>,
    /// Hard links to its bytes (a dataset clip is one more); 1 off Unix.
    pub links: u64,
}

/// Hard links to a file's bytes (1 where the platform does not count them).
pub(crate) fn links(meta: &fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        std::os::unix::fs::MetadataExt::nlink(meta)
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        1
    }
}

/// A reader that reports how many bytes went through.
struct Counting<'a, R> {
    inner: &'a mut R,
    progress: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.progress)(n as u64);
        Ok(n)
    }
}

/// blake3 (hex) and length of everything `r` yields.
pub(crate) fn hash_reader(r: &mut impl Read) -> io::Result<(String, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                len += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((hasher.finalize().to_hex().to_string(), len))
}

/// Make a folder's entries (a rename, a new file) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::io(dir, e))
    }
    #[cfg(not(unix))]
    {
        // Folders cannot be opened for syncing here; renames are made durable by the file system.
        let _ = dir;
        Ok(())
    }
}

/// A new temporary file in `tmp/`, removed on drop unless disarmed.
pub(crate) struct TempFile {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    armed: bool,
}

impl TempFile {
    /// Create a new, uniquely named temporary file in `dir`.
    pub(crate) fn create(dir: &Path) -> Result<TempFile, StoreError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        loop {
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("{TMP_PREFIX}{}-{seq}-{nanos:09}.tmp", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(TempFile { path, file, armed: true });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(StoreError::io(&path, e)),
            }
        }
    }

    /// The file was renamed away: do not remove it on drop.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: a leftover is removed by the next open once it is stale.
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Remove entries of `tmp/` (recursively) last modified more than [`STALE_TMP_AGE`] ago. Best effort:
/// other processes may be removing the same entries.
pub(crate) fn clear_stale_tmp(tmp: &Path) {
    let now = SystemTime::now();
    let stale = |m: &fs::Metadata| {
        m.modified().ok().and_then(|t| now.duration_since(t).ok()).is_some_and(|age| age > STALE_TMP_AGE)
    };
    remove_stale(tmp, &stale);
}

fn remove_stale(dir: &Path, stale: &dyn Fn(&fs::Metadata) -> bool) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            remove_stale(&path, stale);
            // Removes the folder only when it is now empty.
            if stale(&meta) {
                let _ = fs::remove_dir(&path);
            }
        } else if stale(&meta) {
            let _ = fs::remove_file(&path);
        }
    }
}
