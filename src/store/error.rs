//! Errors of the run store. Every message names the path involved and, where there is one, a fix.

use medgen_operators::api::ServiceError;
use rusqlite::ErrorCode;
use std::io;
use std::path::{Path, PathBuf};

/// What can go wrong with a run store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The run store path exists but is not a directory (or a parent of it is a file).
    #[error("run store {path} is not a directory; choose another --store")]
    NotADirectory {
        /// The path given as the run store.
        path: PathBuf,
    },
    /// The run store (or one of its folders) cannot be written.
    #[error("run store {path} is not writable: {source}; fix its permissions or choose another --store")]
    NotWritable {
        /// The path that could not be written.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file system operation inside the run store failed.
    #[error("run store I/O at {path}: {source}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `catalog.sqlite` exists but is not a catalog this program wrote.
    #[error("{path} is not a medgen catalog ({reason}); move it away or choose another --store")]
    NotACatalog {
        /// The catalog file.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// The catalog was written by a newer medgen.
    #[error(
        "catalog {path} has schema version {found}, newer than this medgen supports ({supported}); \
         upgrade medgen or choose another --store"
    )]
    SchemaTooNew {
        /// The catalog file.
        path: PathBuf,
        /// The version found in the catalog.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// Another run (another `medgen run` of this store, or the same process index of another
    /// multi-process run) holds the store.
    #[error(
        "run store {path} is in use by another run ({holder}); wait for it to finish or stop it, or \
         choose another --store"
    )]
    Busy {
        /// The run store.
        path: PathBuf,
        /// What the holder wrote into the lock file (process id, start time, graph).
        holder: String,
    },
    /// SQLite reports the catalog as damaged.
    #[error("catalog {path} is corrupt: {source}; restore it from a backup or choose another --store")]
    Corrupt {
        /// The catalog file.
        path: PathBuf,
        /// SQLite's report.
        #[source]
        source: rusqlite::Error,
    },
    /// The catalog cannot be set up the way the store needs it (e.g. WAL mode is unavailable).
    #[error("cannot set up catalog {path}: {reason}; put the run store on a local file system (--store)")]
    Setup {
        /// The catalog file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Any other SQLite error while doing `what`.
    #[error("run store catalog {path}: {what}: {source}")]
    Sqlite {
        /// The catalog file.
        path: PathBuf,
        /// The operation that failed.
        what: &'static str,
        /// SQLite's report.
        #[source]
        source: rusqlite::Error,
    },
    /// A blob key that is not 64 lowercase hex digits.
    #[error("invalid blob key `{key}`: expected 64 lowercase hex digits (a blake3 hash)")]
    InvalidBlobKey {
        /// The rejected key.
        key: String,
    },
    /// A blob that is not in the store.
    #[error("blob {key} is missing from the run store ({path})")]
    MissingBlob {
        /// Where the blob would be.
        path: PathBuf,
        /// Its key.
        key: String,
    },
    /// `finish_run` for a run id the catalog does not have.
    #[error("run {run_id} is not in catalog {path}")]
    UnknownRun {
        /// The catalog file.
        path: PathBuf,
        /// The id asked for.
        run_id: i64,
    },
    /// A number that does not fit SQLite's signed 64-bit integers.
    #[error("{what} {value} is too large for the run store catalog (at most {max})", max = i64::MAX)]
    OutOfRange {
        /// What the number is.
        what: &'static str,
        /// The number.
        value: u64,
    },
}

impl StoreError {
    /// Classify an SQLite error on the catalog at `path`.
    pub(crate) fn sqlite(path: &Path, what: &'static str, source: rusqlite::Error) -> StoreError {
        let path = path.to_path_buf();
        match source.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => StoreError::NotACatalog { path, reason: source.to_string() },
            Some(ErrorCode::DatabaseCorrupt) => StoreError::Corrupt { path, source },
            Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
                StoreError::NotWritable { path, source: io::Error::other(source) }
            }
            _ => StoreError::Sqlite { path, what, source },
        }
    }

    /// An I/O error at `path`, reported as "not writable" when it is a permission problem.
    pub(crate) fn io(path: &Path, source: io::Error) -> StoreError {
        let path = path.to_path_buf();
        match source.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                StoreError::NotWritable { path, source }
            }
            io::ErrorKind::NotADirectory => StoreError::NotADirectory { path },
            _ => StoreError::Io { path, source },
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> ServiceError {
        match e {
            StoreError::Io { path, source } | StoreError::NotWritable { path, source } => {
                ServiceError::Io { path, source }
            }
            StoreError::MissingBlob { key, .. } => ServiceError::MissingBlob(key),
            other => ServiceError::Catalog(other.to_string()),
        }
    }
}
