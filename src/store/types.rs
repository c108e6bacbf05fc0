//! Rows and arguments of the run store's public API.

use medgen_operators::api::ErrorClass;
use std::fmt;
use std::path::PathBuf;

/// What `begin_run` records about a run (one row per process of a timely cluster).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunInfo {
    /// The graph file as given on the command line.
    pub graph_path: PathBuf,
    /// `[graph] name` of the graph file.
    pub graph_name: String,
    /// Hash of the graph file's contents (or of its plan).
    pub graph_hash: String,
    /// This process's index in the timely cluster (0 when single-process).
    pub process_index: usize,
    /// Number of processes in the timely cluster (1 when single-process).
    pub processes: usize,
    /// The command line of this process.
    pub argv: Vec<String>,
}

/// The state of a run in the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// Started and not (yet) finished; also what a crashed run is left as.
    Running,
    /// Finished with all epochs committed.
    Succeeded,
    /// Stopped by an error.
    Failed,
    /// Stopped by a signal (Ctrl-C, SIGTERM).
    Interrupted,
}

impl RunStatus {
    /// The name stored in the catalog.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        }
    }

    /// The status named `s`, if any.
    pub fn parse(s: &str) -> Option<RunStatus> {
        Some(match s {
            "running" => RunStatus::Running,
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            "interrupted" => RunStatus::Interrupted,
            _ => return None,
        })
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the `runs` table. Times are UTC, ISO 8601 with milliseconds
/// (`2026-11-27T21:58:06.123Z`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRow {
    /// Run id (increasing, never reused).
    pub id: i64,
    /// When `begin_run` was called.
    pub started_at: String,
    /// When `finish_run` was called; `None` while running (or after a crash).
    pub finished_at: Option<String>,
    /// The run's state.
    pub status: RunStatus,
    /// See [`RunInfo::graph_path`].
    pub graph_path: PathBuf,
    /// See [`RunInfo::graph_name`].
    pub graph_name: String,
    /// See [`RunInfo::graph_hash`].
    pub graph_hash: String,
    /// See [`RunInfo::process_index`].
    pub process_index: usize,
    /// See [`RunInfo::processes`].
    pub processes: usize,
    /// See [`RunInfo::argv`].
    pub argv: Vec<String>,
    /// The summary given to `finish_run` (JSON, as given).
    pub summary_json: Option<String>,
}

/// One row of the `epochs` table: a sink committed a consistent snapshot of an epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitRow {
    /// The sink's node name.
    pub node: String,
    /// The committed epoch.
    pub epoch: u64,
    /// The run that committed it last.
    pub run_id: Option<i64>,
    /// When it was committed (last).
    pub committed_at: String,
    /// The sink's summary of the snapshot.
    pub summary: String,
}

/// Which failures [`Store::failures`](super::Store::failures) lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailureFilter {
    /// Only failures at this node.
    pub node: Option<String>,
    /// Only quarantined items.
    pub quarantined_only: bool,
}

/// One row of the `failures` table: the failures of one item at one node, over all runs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FailureRow {
    /// The node that failed on the item.
    pub node: String,
    /// Stable id of the item.
    pub item: String,
    /// The node's operator.
    pub operator: String,
    /// Human-readable description of the input.
    pub input: String,
    /// Error class of the latest failure (`ErrorClass::as_str`).
    pub class: String,
    /// Message of the latest failure.
    pub message: String,
    /// Failed attempts since the item was last retried (all runs).
    pub attempts: u32,
    /// Whether the item is skipped until `medgen retry --quarantined`.
    pub quarantined: bool,
    /// When the first failure was recorded.
    pub first_seen: String,
    /// When the latest failure was recorded.
    pub last_seen: String,
    /// The run of the latest failure.
    pub run_id: Option<i64>,
}

impl FailureRow {
    /// The error class, if this build knows it.
    pub fn error_class(&self) -> Option<ErrorClass> {
        ErrorClass::parse(&self.class)
    }
}

/// One row of the `outputs` table: a file a node wrote for an epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputRow {
    /// The node that wrote it.
    pub node: String,
    /// The epoch it belongs to.
    pub epoch: u64,
    /// Its path, relative to the store's `outputs/` folder.
    pub path: String,
    /// Its blob key, when it is also in the blob store.
    pub blob: Option<String>,
    /// When it was recorded.
    pub created_at: String,
    /// The run that recorded it.
    pub run_id: Option<i64>,
}
