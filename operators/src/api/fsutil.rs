//! Atomic file writes: write a temporary file beside the target, fsync it, rename it over the
//! target, fsync the folder. A reader sees the old file or the new one, never a torn one. And the
//! read-only mark of run-store blobs.

use std::io::Write;
use std::path::Path;

/// Write `bytes` to `path` atomically, creating parent folders.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".medgen-tmp-");
    // tempfile's own 0600 would make the written file private; readable like any other file
    // (0644 minus the umask).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let mut tmp = builder.tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod write_mode_tests {
    /// Atomically written files are readable by others, as a plain write would leave them.
    #[test]
    fn atomic_writes_are_not_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b.json");
        super::atomic_write(&p, b"{}").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o044, 0o044 & !umask(), "mode {mode:o}");
        assert_eq!(std::fs::read(&p).unwrap(), b"{}");
    }

    fn umask() -> u32 {
        // The umask as a fresh file shows it.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("probe");
        std::fs::write(&p, b"").unwrap();
        use std::os::unix::fs::PermissionsExt;
        !std::fs::metadata(&p).unwrap().permissions().mode() & 0o666
    }
}

/// Best-effort `chmod a-w`: how run-store blobs are kept from edits through the dataset's hard
/// links. A file system without write bits keeps the file writable, which loses only the
/// protection.
pub fn make_read_only(path: &Path) {
    if let Ok(m) = std::fs::metadata(path)
        && !m.permissions().readonly()
    {
        let mut p = m.permissions();
        p.set_readonly(true);
        let _ = std::fs::set_permissions(path, p);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn writes_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x/y.txt");
        super::atomic_write(&p, b"one").unwrap();
        super::atomic_write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}
