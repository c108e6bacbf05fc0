//! The operator API: what an operator declares (ports, params) and how the engine builds it.

use super::records::{Kind, Record};
use super::services::Services;
use differential_dataflow::VecCollection;
use std::any::Any;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// A differential collection of records, timestamped by epoch.
pub type Coll<'s> = VecCollection<'s, u64, Record, isize>;
/// The timely scope every operator is built in.
pub type Scope<'s> = timely::dataflow::Scope<'s, u64>;

/// Name of the port every node has that carries its per-item failures.
pub const FAILURES_PORT: &str = "failures";
/// Name of the default output port.
pub const OUT_PORT: &str = "out";
/// Name of the output port carrying what a filter dropped (`curate.*`, `eval.gate`); the run
/// summary counts it.
pub const REJECTED_PORT: &str = "rejected";

/// An input port.
#[derive(Clone, Debug)]
pub struct InPort {
    pub name: &'static str,
    /// Kinds accepted; empty means any kind.
    pub kinds: &'static [Kind],
    /// Whether the port must be connected.
    pub required: bool,
    pub doc: &'static str,
}

/// What an output port produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutKind {
    /// Always this kind.
    Fixed(Kind),
    /// The kinds arriving at the named input port (filters, pass-through stages).
    SameAs(&'static str),
}

#[derive(Clone, Debug)]
pub struct OutPort {
    pub name: &'static str,
    pub kind: OutKind,
    pub doc: &'static str,
}

/// Static description of an operator: the registry prints it (`medgen ops`) and `medgen check`
/// validates graphs against it.
#[derive(Clone, Debug)]
pub struct OpSpec {
    /// `stage.name`, e.g. `source.files`.
    pub name: &'static str,
    pub summary: &'static str,
    /// Longer explanation, shown by `medgen ops NAME`.
    pub doc: &'static str,
    /// Bump when the operator's output for the same input and params changes: invalidates its memo.
    pub version: u32,
    pub inputs: &'static [InPort],
    /// Outputs besides the implicit `failures` port.
    pub outputs: &'static [OutPort],
    /// True for sources: nodes without inputs that create epochs.
    pub is_source: bool,
    /// True for sinks: nodes whose output is a file, not a stream.
    pub is_sink: bool,
}

/// Parsed, validated params of one node, shared by every worker.
pub type Params = Arc<dyn Any + Send + Sync>;

/// A params error, located by the dotted path of the offending key (empty for the node itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamIssue {
    /// Path of the key inside the node table, e.g. `min_seconds` or `backend.model`.
    pub path: String,
    pub message: String,
    pub fix: Option<String>,
    /// Warnings do not make a graph invalid.
    pub warning: bool,
}

impl ParamIssue {
    pub fn error(path: impl Into<String>, message: impl Into<String>, fix: Option<String>) -> Self {
        ParamIssue { path: path.into(), message: message.into(), fix, warning: false }
    }
    pub fn warning(path: impl Into<String>, message: impl Into<String>, fix: Option<String>) -> Self {
        ParamIssue { path: path.into(), message: message.into(), fix, warning: true }
    }
}

/// What `check` may look at besides the params.
#[derive(Clone, Debug)]
pub struct CheckCtx {
    /// Folder of the graph file: relative paths in params are relative to it.
    pub base_dir: PathBuf,
    pub node: String,
}

/// Per-node counters, shared by all workers of a process.
#[derive(Debug, Default)]
pub struct NodeStats {
    pub items_in: std::sync::atomic::AtomicU64,
    pub items_out: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    pub memo_hits: std::sync::atomic::AtomicU64,
    pub memo_misses: std::sync::atomic::AtomicU64,
    pub retracted: std::sync::atomic::AtomicU64,
    /// Outputs a sink could not write (a view, the dataset, the report): the run exits non-zero.
    pub write_errors: std::sync::atomic::AtomicU64,
    /// Net records on the node's `rejected` port (filters): additions minus retractions.
    pub rejected: std::sync::atomic::AtomicI64,
    /// Items queued or running off the worker threads.
    pub in_flight: std::sync::atomic::AtomicI64,
    /// Nanoseconds spent computing items (summed over pool threads).
    pub busy_ns: std::sync::atomic::AtomicU64,
}

impl NodeStats {
    pub fn add(counter: &std::sync::atomic::AtomicU64, n: u64) {
        counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
    pub fn get(counter: &std::sync::atomic::AtomicU64) -> u64 {
        counter.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Run-wide settings from the `[graph]` table and the command line.
#[derive(Clone, Debug)]
pub struct RunSettings {
    /// Attempts per item within a run for transient errors (1 = no retry).
    pub max_attempts: u32,
    /// Failures (summed over runs) after which an item is quarantined.
    pub quarantine_after: u32,
    /// Per-item timeout for off-worker work, seconds.
    pub item_timeout_s: f64,
    /// `medgen explain`: compute nothing new, write nothing; count what would be computed.
    pub dry_run: bool,
    /// Stop after this many epochs (watch mode; tests and bounded ingestion).
    pub max_epochs: Option<u64>,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings { max_attempts: 3, quarantine_after: 3, item_timeout_s: 600.0, dry_run: false, max_epochs: None }
    }
}

/// Everything an operator's `build` gets besides its params and inputs.
pub struct BuildCtx<'s> {
    pub scope: Scope<'s>,
    /// The node's name in the graph file.
    pub node: String,
    pub spec: OpSpec,
    pub services: Arc<dyn Services>,
    pub stats: Arc<NodeStats>,
    pub settings: RunSettings,
    /// First epoch of this run (epochs keep counting across restarts of the same store).
    pub base_epoch: u64,
    /// Set when the user asked to stop (Ctrl-C / SIGTERM): sources release their capabilities.
    pub shutdown: Arc<AtomicBool>,
    /// Folder of the graph file.
    pub base_dir: PathBuf,
    /// Canonical JSON of the node's params that affect outputs, for memo keys.
    pub params_fingerprint: String,
}

impl BuildCtx<'_> {
    pub fn worker_index(&self) -> usize {
        self.scope.index()
    }
    pub fn peers(&self) -> usize {
        self.scope.peers()
    }
    /// Resolve a path from the graph file relative to the graph file's folder.
    pub fn resolve(&self, p: &str) -> PathBuf {
        resolve_path(&self.base_dir, p)
    }
}

/// A path from a graph file: absolute as given, relative to the graph file's folder `base`.
pub fn resolve_path(base: &std::path::Path, p: &str) -> PathBuf {
    let path = PathBuf::from(p);
    if path.is_absolute() { path } else { base.join(path) }
}

/// `None` when `p` is a folder; otherwise what it is instead, for a message that starts with the
/// path: "does not exist", or "is a file, not a folder (give the folder that holds it: …)".
pub fn not_a_folder(p: &std::path::Path) -> Option<String> {
    if p.is_dir() {
        None
    } else if p.exists() {
        let parent = p.parent().map(|d| d.display().to_string()).unwrap_or_default();
        Some(format!("is a file, not a folder (give the folder that holds it: {parent})"))
    } else {
        Some("does not exist".into())
    }
}

/// The collections arriving at a node, by input port.
pub struct Inputs<'s> {
    pub ports: BTreeMap<&'static str, Vec<Coll<'s>>>,
    /// Per port, where each collection comes from (`node` or `node.port`), in the same order.
    pub sources: BTreeMap<&'static str, Vec<String>>,
}

impl<'s> Inputs<'s> {
    /// The collections on a port with the names of their sources (`node` / `node.port`).
    pub fn take_labelled(&mut self, port: &str) -> Vec<(String, Coll<'s>)> {
        let colls = self.ports.remove(port).unwrap_or_default();
        let names = self.sources.remove(port).unwrap_or_default();
        colls
            .into_iter()
            .enumerate()
            .map(|(i, c)| (names.get(i).cloned().unwrap_or_else(|| format!("input {i}")), c))
            .collect()
    }

    /// All collections on a port, concatenated (None if the port is unconnected).
    pub fn take(&mut self, scope: Scope<'s>, port: &str) -> Option<Coll<'s>> {
        let colls = self.ports.remove(port)?;
        if colls.is_empty() {
            return None;
        }
        Some(differential_dataflow::collection::concatenate(scope, colls))
    }
}

/// The collections a node produces, by output port (`failures` included when the node has any).
#[derive(Default)]
pub struct Outputs<'s> {
    pub ports: BTreeMap<&'static str, Coll<'s>>,
}

impl<'s> Outputs<'s> {
    pub fn with(mut self, port: &'static str, coll: Coll<'s>) -> Self {
        self.ports.insert(port, coll);
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("node `{node}`: {message}")]
    Invalid { node: String, message: String },
    #[error("node `{node}`: {source}")]
    Io {
        node: String,
        #[source]
        source: std::io::Error,
    },
}

/// The input collection on port `in`, or a build error naming the node.
pub fn take_input<'s>(ctx: &BuildCtx<'s>, inputs: &mut Inputs<'s>) -> Result<Coll<'s>, BuildError> {
    inputs
        .take(ctx.scope, "in")
        .ok_or_else(|| BuildError::Invalid { node: ctx.node.clone(), message: "input `in` is not connected".into() })
}

/// The params JSON without the given keys: for fingerprints that leave out what does not change
/// an item's result (concurrency, thresholds applied later, modes).
pub fn fingerprint_without<P: serde::Serialize>(params: &P, keys: &[&str]) -> serde_json::Value {
    let mut v = serde_json::to_value(params).unwrap_or(serde_json::Value::Null);
    if let Some(o) = v.as_object_mut() {
        for k in keys {
            o.remove(*k);
        }
    }
    v
}

/// An operator: implement [`Operator`] through [`TypedOperator`], which adds typed params.
pub trait Operator: Send + Sync + 'static {
    fn spec(&self) -> OpSpec;
    /// JSON schema of the params (types, defaults, doc comments), for `medgen ops` and suggestions.
    fn params_schema(&self) -> schemars::Schema;
    /// Deserialize the node's params (the node table without `op` and `inputs`).
    /// Errors carry the dotted path of the offending key.
    fn parse_params(&self, table: toml::Table) -> Result<Params, ParamIssue>;
    /// Semantic checks beyond types (files exist, expressions type-check, ranges).
    fn check(&self, params: &Params, ctx: &CheckCtx) -> Vec<ParamIssue>;
    /// JSON of the params that affect outputs (memo keys).
    fn fingerprint(&self, params: &Params) -> String;
    /// The paths under the run's outputs folder this node writes and prunes (a sink's `path`), so
    /// that two nodes claiming the same place are refused before the run.
    fn output_paths(&self, params: &Params) -> Vec<String>;
    fn build<'s>(&self, ctx: &mut BuildCtx<'s>, params: &Params, inputs: Inputs<'s>)
    -> Result<Outputs<'s>, BuildError>;
}

/// The convenient way to write an operator: typed params, with serde defaults and doc comments.
pub trait TypedOperator: Send + Sync + 'static {
    type Params: serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema + Send + Sync + 'static;
    fn spec(&self) -> OpSpec;
    fn check(&self, _params: &Self::Params, _ctx: &CheckCtx) -> Vec<ParamIssue> {
        Vec::new()
    }
    /// Params that do not change outputs (concurrency, timeouts, poll intervals) are left out of
    /// memo keys. Default: everything counts.
    fn fingerprint(&self, params: &Self::Params) -> serde_json::Value {
        serde_json::to_value(params).unwrap_or(serde_json::Value::Null)
    }
    /// The paths under the run's outputs folder this node owns (sinks). Default: none.
    fn output_paths(&self, _params: &Self::Params) -> Vec<String> {
        Vec::new()
    }
    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        params: &Self::Params,
        inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError>;
}

impl<T: TypedOperator> Operator for T {
    fn spec(&self) -> OpSpec {
        TypedOperator::spec(self)
    }
    fn params_schema(&self) -> schemars::Schema {
        schemars::schema_for!(T::Params)
    }
    fn parse_params(&self, table: toml::Table) -> Result<Params, ParamIssue> {
        let value = toml::Value::Table(table);
        match serde_path_to_error::deserialize::<_, T::Params>(value) {
            Ok(p) => Ok(Arc::new(p)),
            Err(e) => {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                Err(ParamIssue::error(path, e.into_inner().to_string(), None))
            }
        }
    }
    fn check(&self, params: &Params, ctx: &CheckCtx) -> Vec<ParamIssue> {
        match params.downcast_ref::<T::Params>() {
            Some(p) => TypedOperator::check(self, p, ctx),
            None => vec![ParamIssue::error("", "internal: params of another operator", None)],
        }
    }
    fn fingerprint(&self, params: &Params) -> String {
        match params.downcast_ref::<T::Params>() {
            Some(p) => TypedOperator::fingerprint(self, p).to_string(),
            None => String::new(),
        }
    }
    fn output_paths(&self, params: &Params) -> Vec<String> {
        params.downcast_ref::<T::Params>().map(|p| TypedOperator::output_paths(self, p)).unwrap_or_default()
    }
    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        params: &Params,
        inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let p = params.downcast_ref::<T::Params>().ok_or_else(|| BuildError::Invalid {
            node: ctx.node.clone(),
            message: "internal: params of another operator".into(),
        })?;
        TypedOperator::build(self, ctx, p, inputs)
    }
}
