//! Graph files: parse, validate and plan (ARCHITECTURE §2).
//!
//! A graph file is TOML: an optional `[graph]` table (name, description, store, retry and timeout
//! settings) and one `[nodes.NAME]` table per node, naming its operator (`op`), its `inputs` and its
//! params. [`load`] turns a file into a [`Plan`] — nodes in topological order with parsed params,
//! resolved edges and the record kinds every port carries — or into every [`Diagnostic`] it can find,
//! each located by `file:line:col` with a concrete fix.
//!
//! ```toml
//! [graph]
//! name = "demo"
//!
//! [nodes.raw]
//! op = "source.files"
//! paths = ["videos/*.mp4"]
//!
//! [nodes.out]
//! op = "sink.jsonl"
//! inputs = ["raw", "raw.failures"]   # "node" = its `out` port; "node.port" = a named port
//! path = "videos.jsonl"
//! ```
//!
//! Ops with several input ports take the table form, `inputs = { clips = "seg", captions = ["a", "b"] }`.

mod diag;
mod render;
mod schema;
mod suggest;
mod syntax;
mod validate;

#[cfg(test)]
mod testops;

pub use diag::{Diagnostic, LineIndex, Severity, render_diagnostics};
pub use render::{render_dot, render_mermaid};
pub use suggest::{did_you_mean, suggest_ops};
pub use validate::{GRAPH_KEYS, valid_node_name};

use medgen_operators::api::{Kind, OpSpec, Operator, Params, RunSettings};
use medgen_operators::registry::Registry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Largest graph file read (16 MiB).
const MAX_GRAPH_BYTES: u64 = 16 << 20;

/// The `[graph]` table, with defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphHeader {
    /// `name`, or the file stem when absent.
    pub name: String,
    /// `description`, free text.
    pub description: Option<String>,
    /// Run directory as written (relative to the graph file's folder); see [`Plan::store_dir`].
    pub store: Option<String>,
    /// Attempts per item within a run for transient errors (≥ 1; default 3).
    pub max_attempts: u32,
    /// Failures over all runs before an item is quarantined (≥ 1; default 3).
    pub quarantine_after: u32,
    /// Per-item timeout for off-worker work, seconds (> 0; default 600).
    pub item_timeout_s: f64,
}

impl GraphHeader {
    /// The run settings these header values give (`dry_run` off, no epoch limit).
    pub fn run_settings(&self) -> RunSettings {
        RunSettings {
            max_attempts: self.max_attempts,
            quarantine_after: self.quarantine_after,
            item_timeout_s: self.item_timeout_s,
            ..RunSettings::default()
        }
    }
}

/// An input of a node: the output port `port` of node `node`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InputRef {
    /// The node read from.
    pub node: String,
    /// `out` when the reference did not name a port.
    pub port: String,
}

impl fmt::Display for InputRef {
    /// `node` for the default port, `node.port` otherwise (as written in graph files).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port == medgen_operators::api::OUT_PORT {
            f.write_str(&self.node)
        } else {
            write!(f, "{}.{}", self.node, self.port)
        }
    }
}

/// One node of a valid graph.
#[derive(Clone)]
pub struct PlannedNode {
    /// The node's name (its `[nodes.NAME]` key).
    pub name: String,
    /// Operator name, as in the registry.
    pub op: &'static str,
    /// Parsed params, for the operator's `build`.
    pub params: Params,
    /// The operator's fingerprint of the params (memo keys).
    pub fingerprint: String,
    /// (target input port, source) in the order written.
    pub inputs: Vec<(&'static str, InputRef)>,
    /// Kinds each output port produces, `failures` included.
    pub out_kinds: BTreeMap<String, BTreeSet<Kind>>,
    /// Line of the node's `[nodes.NAME]` header.
    pub line: usize,
    /// The operator's spec.
    pub spec: OpSpec,
}

impl fmt::Debug for PlannedNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlannedNode")
            .field("name", &self.name)
            .field("op", &self.op)
            .field("fingerprint", &self.fingerprint)
            .field("inputs", &self.inputs)
            .field("out_kinds", &self.out_kinds)
            .field("line", &self.line)
            .finish_non_exhaustive()
    }
}

/// A validated graph, ready to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The graph file, as named to [`load`].
    pub path: PathBuf,
    /// The graph file's folder, absolute: relative paths in the file start here.
    pub base_dir: PathBuf,
    /// blake3 (hex) of the file's text.
    pub source_hash: String,
    /// The `[graph]` table.
    pub header: GraphHeader,
    /// Nodes in topological order (file order among independent nodes).
    pub nodes: Vec<PlannedNode>,
    /// Warnings found while validating (the graph is valid nonetheless).
    pub warnings: Vec<Diagnostic>,
}

impl Plan {
    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&PlannedNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The `store` of the header resolved against [`Plan::base_dir`] (absolute paths stay).
    pub fn store_dir(&self) -> Option<PathBuf> {
        self.header.store.as_ref().map(|s| self.base_dir.join(s))
    }
}

/// Where operators are looked up. [`Registry`] is the real one; tests can bring their own.
pub trait OpCatalog {
    /// The operator named `name`.
    fn op(&self, name: &str) -> Option<&dyn Operator>;
    /// Every operator name (for suggestions).
    fn op_names(&self) -> Vec<&'static str>;
}

impl OpCatalog for Registry {
    fn op(&self, name: &str) -> Option<&dyn Operator> {
        self.get(name)
    }
    fn op_names(&self) -> Vec<&'static str> {
        self.names()
    }
}

/// Read and validate the graph file at `path`. `Err` holds every error found, and the warnings.
pub fn load(path: &Path, registry: &Registry) -> Result<Plan, Vec<Diagnostic>> {
    load_with(path, registry)
}

/// [`load`] against any [`OpCatalog`].
pub fn load_with(path: &Path, catalog: &dyn OpCatalog) -> Result<Plan, Vec<Diagnostic>> {
    let unreadable = |line: usize, col: usize, message: String, fix: &str| Diagnostic {
        severity: Severity::Error,
        file: path.to_path_buf(),
        line,
        col,
        node: None,
        message,
        fix: Some(fix.to_string()),
    };
    // A device or a fifo (/dev/zero) would be read without end; no graph file is megabytes long.
    match std::fs::metadata(path) {
        Ok(md) if !md.is_file() || md.len() > MAX_GRAPH_BYTES => {
            return Err(vec![unreadable(
                1,
                1,
                if md.is_file() {
                    format!(
                        "the graph file is {} bytes; graph files are TOML text under {MAX_GRAPH_BYTES} bytes",
                        md.len()
                    )
                } else {
                    "not a regular file".to_string()
                },
                "point at the graph's .toml file",
            )]);
        }
        _ => {}
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            return Err(vec![unreadable(
                1,
                1,
                format!("cannot read the graph file: {e}"),
                "check the path and its permissions",
            )]);
        }
    };
    match String::from_utf8(bytes) {
        Ok(text) => load_str_with(&text, path, catalog),
        Err(e) => {
            let good = e.utf8_error().valid_up_to();
            let prefix = String::from_utf8_lossy(e.as_bytes().get(..good).unwrap_or(&[])).into_owned();
            let (line, col) = LineIndex::new(&prefix).line_col(good);
            Err(vec![unreadable(line, col, "the graph file is not valid UTF-8".into(), "save the file as UTF-8")])
        }
    }
}

/// Validate graph text as if read from `path` (which locates diagnostics and sets the base folder;
/// it need not exist).
pub fn load_str(text: &str, path: &Path, registry: &Registry) -> Result<Plan, Vec<Diagnostic>> {
    load_str_with(text, path, registry)
}

/// [`load_str`] against any [`OpCatalog`].
pub fn load_str_with(text: &str, path: &Path, catalog: &dyn OpCatalog) -> Result<Plan, Vec<Diagnostic>> {
    validate::validate(text, path, catalog)
}
