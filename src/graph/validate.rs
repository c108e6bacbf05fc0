//! From a parsed graph file to a [`Plan`]: structure, operators, params, edges, cycles and kinds.
//!
//! Every check reports into one [`Sink`] and carries on where it safely can, so that a single run of
//! `medgen check` shows every problem in the file, not just the first.

use super::diag::{Diagnostic, Sink};
use super::schema::ParamsSchema;
use super::suggest::{did_you_mean, did_you_mean_fix, or_list, suggest_ops};
use super::syntax::{self, SValue, entries_in_order, key_span, locate, type_name};
use super::{GraphHeader, InputRef, OpCatalog, Plan, PlannedNode};
use medgen_operators::api::{CheckCtx, FAILURES_PORT, Kind, OUT_PORT, OpSpec, OutKind, ParamIssue, Params};
use medgen_operators::api::{Operator, RunSettings};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};

/// Longest per-item timeout (about 31 years: "never" in practice, still a valid Duration).
const MAX_ITEM_TIMEOUT_S: f64 = 1e9;

/// Keys of the `[graph]` table.
pub const GRAPH_KEYS: [&str; 6] =
    ["name", "description", "store", "max_attempts", "quarantine_after", "item_timeout_s"];

/// The example shown when a graph has no nodes.
const NODE_EXAMPLE: &str = "add a node, e.g. [nodes.raw] with op = \"source.files\" and paths = [\"videos/*.mp4\"]";

/// Whether `name` is a valid node name: ASCII letters, digits, `_` and `-`.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `name` with every invalid character replaced by `_` (for fixes).
fn sanitize_name(name: &str) -> String {
    let s: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    if s.is_empty() { "node".into() } else { s }
}

/// The folder of the graph file, absolute.
pub fn base_dir_of(path: &Path) -> PathBuf {
    let parent = path.parent().unwrap_or(Path::new(""));
    if let Ok(p) = parent.canonicalize() {
        return p;
    }
    match std::env::current_dir() {
        Ok(cwd) => cwd.join(parent),
        Err(_) => parent.to_path_buf(),
    }
}

/// One input reference as written, with where it was written.
#[derive(Clone, Debug)]
struct RawRef {
    /// Target input port of the node that declares it.
    port: &'static str,
    text: String,
    span: Range<usize>,
}

/// A validated edge `from.from_port → to.port`.
#[derive(Clone, Debug)]
struct Edge {
    from: usize,
    from_port: String,
    to: usize,
    port: &'static str,
    span: Range<usize>,
}

/// What we learnt about one node.
struct Draft<'d, 'i, 'c> {
    name: String,
    /// Offset of the node's header (`[nodes.x]`) or key.
    header: usize,
    table: Option<&'d DeTable<'i>>,
    op: Option<(&'c dyn Operator, OpSpec)>,
    params: Option<Params>,
    fingerprint: String,
    refs: Vec<RawRef>,
    /// `inputs` had the wrong shape (already reported): do not also report unconnected ports.
    inputs_malformed: bool,
}

impl Draft<'_, '_, '_> {
    fn spec(&self) -> Option<&OpSpec> {
        self.op.as_ref().map(|(_, s)| s)
    }
    /// Output ports including `failures`.
    fn out_ports(&self) -> Option<Vec<&'static str>> {
        let spec = self.spec()?;
        let mut v: Vec<&'static str> = spec.outputs.iter().map(|o| o.name).collect();
        if !v.contains(&FAILURES_PORT) {
            v.push(FAILURES_PORT);
        }
        Some(v)
    }
}

/// Validate `text` (the contents of `path`) against `catalog`.
pub fn validate(text: &str, path: &Path, catalog: &dyn OpCatalog) -> Result<Plan, Vec<Diagnostic>> {
    let mut sink = Sink::new(path, text);
    let base_dir = base_dir_of(path);
    let source_hash = blake3::hash(text.as_bytes()).to_hex().to_string();
    let Some(doc) = syntax::parse(text, &mut sink) else {
        return Err(sink.into_sorted());
    };
    let root = doc.get_ref();

    // Top level: only [graph] and [nodes].
    let mut graph_entry = None;
    let mut nodes_entry = None;
    for (k, v) in entries_in_order(root) {
        match k.get_ref().as_ref() {
            "graph" => graph_entry = Some((k.span(), v)),
            "nodes" => nodes_entry = Some((k.span(), v)),
            other => unknown_top_level(other, k.span(), v, &mut sink),
        }
    }

    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).filter(|s| !s.is_empty());
    let header = read_header(graph_entry.as_ref().map(|(_, v)| *v), stem.unwrap_or_else(|| "graph".into()), &mut sink);

    let mut drafts = read_nodes(nodes_entry, graph_entry.as_ref().map(|(k, _)| k.start), catalog, &base_dir, &mut sink);
    check_output_paths(&drafts, &mut sink);

    // Inputs, then edges between known nodes.
    let errors_before_edges = sink.error_count();
    for d in drafts.iter_mut() {
        read_inputs(d, &mut sink);
    }
    let edges = resolve_edges(&drafts, &mut sink);
    check_required_inputs(&drafts, &edges, &mut sink);
    let edge_errors = sink.error_count() > errors_before_edges;
    let order = topo_order(&drafts, &edges, &mut sink);
    let out_kinds = resolve_kinds(&drafts, &edges, &order);
    check_kinds(&drafts, &edges, &out_kinds, &mut sink);
    if !edge_errors {
        // With broken inputs, "goes nowhere" is a consequence, not news.
        warn_unused(&drafts, &edges, &mut sink);
    }

    if sink.has_errors() {
        return Err(sink.into_sorted());
    }

    let mut nodes = Vec::with_capacity(order.len());
    for &i in &order {
        let Some(d) = drafts.get(i) else { continue };
        let (Some((_, spec)), Some(params)) = (&d.op, &d.params) else {
            // Unreachable without errors; never panic on it.
            continue;
        };
        let inputs = edges
            .iter()
            .filter(|e| e.to == i)
            .filter_map(|e| {
                let from = drafts.get(e.from)?;
                Some((e.port, InputRef { node: from.name.clone(), port: e.from_port.clone() }))
            })
            .collect();
        nodes.push(PlannedNode {
            name: d.name.clone(),
            op: spec.name,
            params: params.clone(),
            fingerprint: d.fingerprint.clone(),
            inputs,
            out_kinds: out_kinds.get(i).cloned().flatten().unwrap_or_default(),
            line: sink.index.line(d.header),
            spec: spec.clone(),
        });
    }
    let warnings = sink.into_sorted();
    Ok(Plan { path: path.to_path_buf(), base_dir, source_hash, header, nodes, warnings })
}

fn unknown_top_level(key: &str, span: Range<usize>, v: &SValue<'_>, sink: &mut Sink<'_>) {
    let is_node_like = matches!(v.get_ref(), DeValue::Table(t) if t.contains_key("op"));
    let fix = if is_node_like {
        Some(format!("nodes are declared under `nodes`: write [nodes.{key}] instead of [{key}]"))
    } else if GRAPH_KEYS.contains(&key) {
        Some(format!("move `{key}` into the [graph] table"))
    } else if let Some(f) = did_you_mean_fix(&did_you_mean(key, ["graph", "nodes"])) {
        Some(f)
    } else {
        Some(
            "a graph file holds only a [graph] table and [nodes.NAME] tables; remove it or move it into one of them"
                .into(),
        )
    };
    sink.error(span.start, None, format!("unknown top-level key `{key}`"), fix);
}

/// Read the `[graph]` table; defaults for what is missing.
fn read_header(graph: Option<&SValue<'_>>, default_name: String, sink: &mut Sink<'_>) -> GraphHeader {
    let defaults = RunSettings::default();
    let mut h = GraphHeader {
        name: default_name,
        description: None,
        store: None,
        max_attempts: defaults.max_attempts,
        quarantine_after: defaults.quarantine_after,
        item_timeout_s: defaults.item_timeout_s,
    };
    let Some(g) = graph else { return h };
    let DeValue::Table(t) = g.get_ref() else {
        sink.error(
            g.span().start,
            None,
            format!("`graph` must be a table, found {}", type_name(g.get_ref())),
            Some("write a [graph] table, e.g. [graph] with name = \"demo\"".into()),
        );
        return h;
    };
    for (k, v) in entries_in_order(t) {
        let key = k.get_ref().as_ref();
        let at = v.span().start;
        let found = type_name(v.get_ref());
        match (key, v.get_ref()) {
            ("name", DeValue::String(s)) => {
                if s.trim().is_empty() {
                    sink.error(
                        at,
                        None,
                        "`name` is empty",
                        Some("e.g. name = \"demo\" (or leave it out to use the file name)".into()),
                    );
                } else if s.contains(['/', '\\']) || s.chars().any(char::is_control) || s == "." || s == ".." {
                    // The name becomes a folder name (`runs/<name>` by default).
                    sink.error(
                        at,
                        None,
                        format!("`name` {:?} cannot be a folder name (no `/`, `\\`, control characters, `.` or `..`)", s.as_ref()),
                        Some("use letters, digits, `_`, `-` and `.`, e.g. name = \"demo\"; set `store` for the run folder".into()),
                    );
                } else {
                    h.name = s.to_string();
                }
            }
            ("description", DeValue::String(s)) => h.description = Some(s.to_string()),
            ("store", DeValue::String(s)) => {
                if s.trim().is_empty() {
                    sink.error(
                        at,
                        None,
                        "`store` is empty",
                        Some("e.g. store = \"runs/demo\" (or leave it out)".into()),
                    );
                } else {
                    h.store = Some(s.to_string());
                }
            }
            ("max_attempts" | "quarantine_after", DeValue::Integer(_)) => {
                let n = match syntax::to_value(v.get_ref()) {
                    toml::Value::Integer(n) => n,
                    _ => 0,
                };
                match u32::try_from(n) {
                    Ok(n) if n >= 1 => {
                        if key == "max_attempts" {
                            h.max_attempts = n;
                        } else {
                            h.quarantine_after = n;
                        }
                    }
                    _ => sink.error(
                        at,
                        None,
                        format!("`{key}` must be between 1 and {}, found {n}", u32::MAX),
                        Some(format!("e.g. {key} = 3")),
                    ),
                }
            }
            ("item_timeout_s", DeValue::Integer(_) | DeValue::Float(_)) => {
                let secs = match syntax::to_value(v.get_ref()) {
                    toml::Value::Integer(n) => n as f64,
                    toml::Value::Float(f) => f,
                    _ => f64::NAN,
                };
                if secs > 0.0 && secs <= MAX_ITEM_TIMEOUT_S {
                    h.item_timeout_s = secs;
                } else {
                    sink.error(
                        at,
                        None,
                        format!(
                            "`item_timeout_s` must be a positive number of seconds up to {MAX_ITEM_TIMEOUT_S:e}, found {secs}"
                        ),
                        Some("e.g. item_timeout_s = 600.0".into()),
                    );
                }
            }
            ("name" | "description" | "store", _) => {
                sink.error(
                    at,
                    None,
                    format!("`{key}` must be a string, found {found}"),
                    Some(format!("quote it, e.g. {key} = \"...\"")),
                );
            }
            ("max_attempts" | "quarantine_after", _) => {
                sink.error(
                    at,
                    None,
                    format!("`{key}` must be an integer, found {found}"),
                    Some(format!("e.g. {key} = 3")),
                );
            }
            ("item_timeout_s", _) => {
                sink.error(
                    at,
                    None,
                    format!("`item_timeout_s` must be a number of seconds, found {found}"),
                    Some("e.g. item_timeout_s = 600.0".into()),
                );
            }
            (other, _) => {
                let fix = if other == "nodes" || matches!(v.get_ref(), DeValue::Table(n) if n.contains_key("op")) {
                    Some("nodes are tables of their own: [nodes.NAME], not inside [graph]".into())
                } else {
                    did_you_mean_fix(&did_you_mean(other, GRAPH_KEYS))
                        .or_else(|| Some(format!("the [graph] table takes {}", or_list(&GRAPH_KEYS))))
                };
                sink.error(k.span().start, None, format!("unknown key `{other}` in [graph]"), fix);
            }
        }
    }
    h
}

/// Read `[nodes.*]`: names, ops and params.
fn read_nodes<'d, 'i, 'c>(
    nodes: Option<(Range<usize>, &'d SValue<'i>)>,
    graph_at: Option<usize>,
    catalog: &'c dyn OpCatalog,
    base_dir: &Path,
    sink: &mut Sink<'_>,
) -> Vec<Draft<'d, 'i, 'c>> {
    let mut drafts = Vec::new();
    let Some((nodes_key, nodes_val)) = nodes else {
        sink.error(
            graph_at.unwrap_or(0),
            None,
            "the graph has no nodes (no [nodes.NAME] tables)",
            Some(NODE_EXAMPLE.into()),
        );
        return drafts;
    };
    let DeValue::Table(t) = nodes_val.get_ref() else {
        sink.error(
            nodes_val.span().start,
            None,
            format!("`nodes` must be a table of nodes, found {}", type_name(nodes_val.get_ref())),
            Some("declare each node as its own table: [nodes.NAME] with op = \"...\"".into()),
        );
        return drafts;
    };
    if t.is_empty() {
        sink.error(nodes_key.start, None, "`[nodes]` holds no nodes", Some(NODE_EXAMPLE.into()));
        return drafts;
    }
    let op_names = catalog.op_names();
    for (k, v) in entries_in_order(t) {
        let name = k.get_ref().to_string();
        let header = if sink.index.slice(&v.span()).starts_with('[') { v.span().start } else { k.span().start };
        if !valid_node_name(&name) {
            sink.error(
                k.span().start,
                Some(&name),
                "invalid node name: use ASCII letters, digits, `_` and `-` (a `.` separates a node from its port in `inputs`)",
                Some(format!("rename it, e.g. [nodes.{}]", sanitize_name(&name))),
            );
        }
        let mut d = Draft {
            name,
            header,
            table: None,
            op: None,
            params: None,
            fingerprint: String::new(),
            refs: Vec::new(),
            inputs_malformed: false,
        };
        let DeValue::Table(nt) = v.get_ref() else {
            sink.error(
                v.span().start,
                Some(&d.name),
                format!("a node must be a table with an `op`, found {}", type_name(v.get_ref())),
                Some(format!(
                    "write [nodes.{}] on its own line, then op = \"...\" and the params below it",
                    sanitize_name(&d.name)
                )),
            );
            drafts.push(d);
            continue;
        };
        d.table = Some(nt);
        match nt.get_key_value("op") {
            None => {
                let alias = nt.iter().map(|(k, _)| k).find(|k| {
                    matches!(k.get_ref().as_ref(), "type" | "operator" | "kind" | "ops" | "operation" | "opp")
                });
                let fix = match alias {
                    Some(a) => format!("rename `{}` to `op`", a.get_ref()),
                    None => "add op = \"...\" naming an operator; `medgen ops` lists them".into(),
                };
                sink.error(d.header, Some(&d.name), "missing `op`", Some(fix));
            }
            Some((_, op_val)) => match op_val.get_ref() {
                DeValue::String(op) => match catalog.op(op) {
                    Some(operator) => {
                        let spec = operator.spec();
                        d.op = Some((operator, spec));
                        check_params(&mut d, base_dir, sink);
                    }
                    None => {
                        let sugg = suggest_ops(op, &op_names);
                        let fix =
                            did_you_mean_fix(&sugg).unwrap_or_else(|| "run `medgen ops` to list the operators".into());
                        sink.error(op_val.span().start, Some(&d.name), format!("unknown op `{op}`"), Some(fix));
                    }
                },
                other => {
                    sink.error(
                        op_val.span().start,
                        Some(&d.name),
                        format!("`op` must be a string, found {}", type_name(other)),
                        Some("e.g. op = \"source.files\"; `medgen ops` lists the operators".into()),
                    );
                }
            },
        }
        drafts.push(d);
    }
    drafts
}

/// Run an operator callback, turning a panic into an error message.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        format!("internal error in the operator while checking params: {msg}")
    })
}

/// Unknown, missing and mistyped params, then the operator's own checks.
fn check_params(d: &mut Draft<'_, '_, '_>, base_dir: &Path, sink: &mut Sink<'_>) {
    let (Some(table), Some((operator, spec))) = (d.table, &d.op) else {
        return;
    };
    let operator = *operator;
    let op_name = spec.name;
    let has_inputs = !spec.inputs.is_empty();
    let schema = match guarded(|| operator.params_schema()) {
        Ok(s) => ParamsSchema::new(&s),
        Err(_) => ParamsSchema::default(),
    };
    let node = d.name.clone();
    let node = Some(node.as_str());
    let mut failed = false;

    // Unknown keys, all of them, before deserializing.
    let mut kept: Vec<(&str, &SValue<'_>)> = Vec::new();
    for (k, v) in entries_in_order(table) {
        let key = k.get_ref().as_ref();
        if key == "op" || key == "inputs" {
            continue;
        }
        if schema.closed && !schema.knows(key) {
            failed = true;
            let mut cands: Vec<&str> = schema.properties.iter().flatten().map(String::as_str).collect();
            if has_inputs {
                cands.push("inputs");
            }
            let fix = did_you_mean_fix(&did_you_mean(key, cands.iter().copied())).unwrap_or_else(|| {
                let props: Vec<&str> = schema.properties.iter().flatten().map(String::as_str).collect();
                if props.is_empty() {
                    format!("`{op_name}` takes no params; remove it")
                } else {
                    format!("`{op_name}` takes {} (see `medgen ops {op_name}`)", or_list(&props))
                }
            });
            sink.error(k.span().start, node, format!("unknown param `{key}` for `{op_name}`"), Some(fix));
        } else {
            kept.push((key, v));
        }
    }

    // Required keys that are missing.
    let mut missing = Vec::new();
    for r in &schema.required {
        if !table.contains_key(r.as_str()) {
            failed = true;
            missing.push(r.clone());
            let what = match (schema.describe(r), schema.doc(r)) {
                (Some(t), Some(doc)) => format!(" ({t}: {doc})"),
                (Some(t), None) => format!(" ({t})"),
                _ => String::new(),
            };
            sink.error(
                d.header,
                node,
                format!("missing required param `{r}` of `{op_name}`{what}"),
                Some(format!("add {r} = {}", schema.example(r))),
            );
        }
    }

    // Types: deserialize; on an error drop the offending key and try again, to report them all.
    let mut removed: Vec<String> = Vec::new();
    let mut params = None;
    for _ in 0..=kept.len() {
        let plain = syntax::to_table(kept.iter().copied());
        let result = match guarded(|| operator.parse_params(plain)) {
            Ok(r) => r,
            Err(msg) => Err(ParamIssue::error("", msg, None)),
        };
        match result {
            Ok(p) => {
                params = Some(p);
                break;
            }
            Err(issue) => {
                if let Some(field) = missing_field(&issue.message)
                    && (missing.iter().any(|m| m == field) || removed.iter().any(|m| m == field))
                {
                    break;
                }
                failed = true;
                let top = match syntax::split_path(&issue.path).first() {
                    Some(syntax::Seg::Key(k)) => Some(k.clone()),
                    _ => None,
                };
                let at = locate(table, &issue.path).map_or(d.header, |s| s.start);
                let text = clean_message(&issue.message);
                let message = if issue.path.is_empty() { text } else { format!("param `{}`: {text}", issue.path) };
                let fix = issue.fix.clone().or_else(|| {
                    let k = top.as_deref()?;
                    let t = schema.describe(k)?;
                    // A single string where a list of strings goes: show it in brackets.
                    if let (Some(DeValue::String(v)), true) =
                        (table.get(k).map(|v| v.get_ref()), t.starts_with("an array of strings"))
                    {
                        return Some(format!("`{k}` takes {t}: write {k} = [{}]", toml::Value::String(v.to_string())));
                    }
                    Some(format!("`{k}` takes {t}, e.g. {k} = {}", schema.example(k)))
                });
                sink.error(at, node, message, fix);
                match top {
                    Some(k) if kept.iter().any(|(key, _)| *key == k) => {
                        kept.retain(|(key, _)| *key != k);
                        removed.push(k);
                    }
                    _ => break,
                }
            }
        }
    }
    if failed {
        return;
    }
    let Some(params) = params else { return };

    // The operator's own checks.
    let ctx = CheckCtx { base_dir: base_dir.to_path_buf(), node: d.name.clone() };
    let issues = guarded(|| operator.check(&params, &ctx)).unwrap_or_else(|msg| vec![ParamIssue::error("", msg, None)]);
    for issue in issues {
        let at = locate(table, &issue.path).map_or(d.header, |s| s.start);
        let message = if issue.path.is_empty() {
            issue.message.clone()
        } else {
            format!("param `{}`: {}", issue.path, issue.message)
        };
        if issue.warning {
            sink.warning(at, node, message, issue.fix);
        } else {
            sink.error(at, node, message, issue.fix);
        }
    }
    d.fingerprint = guarded(|| operator.fingerprint(&params)).unwrap_or_default();
    d.params = Some(params);
}

/// A deserializer message on one line, without the `in `key`` context lines the TOML deserializer
/// adds (the path is shown already).
fn clean_message(message: &str) -> String {
    let lines: Vec<&str> = message.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("in `")).collect();
    if lines.is_empty() { message.trim().to_string() } else { lines.join(" ") }
}

/// `missing field `x`` → `x`.
fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

/// Read the `inputs` key of a node into raw refs, checking its shape against the op's ports.
fn read_inputs(d: &mut Draft<'_, '_, '_>, sink: &mut Sink<'_>) {
    let (Some(table), Some(spec)) = (d.table, d.spec()) else {
        return;
    };
    let Some((key, value)) = table.get_key_value("inputs") else {
        return;
    };
    let node = d.name.clone();
    let node = Some(node.as_str());
    let op_name = spec.name;
    let ports: Vec<&'static str> = spec.inputs.iter().map(|p| p.name).collect();
    if ports.is_empty() {
        sink.error(
            key.span().start,
            node,
            format!("`{op_name}` is a source and takes no `inputs`"),
            Some("remove `inputs`; sources read files, not other nodes".into()),
        );
        return;
    }
    let mut refs = Vec::new();
    let errors_before = sink.diags.len();
    match value.get_ref() {
        DeValue::Array(items) => {
            if let [only] = ports.as_slice() {
                collect_refs(items, only, node, &mut refs, sink);
            } else {
                let example: Vec<String> = ports.iter().map(|p| format!("{p} = \"...\"")).collect();
                sink.error(
                    key.span().start,
                    node,
                    format!(
                        "`{op_name}` has several input ports ({}): the array form cannot say which input feeds which",
                        or_list(&ports)
                    ),
                    Some(format!("use the table form: inputs = {{ {} }}", example.join(", "))),
                );
            }
        }
        DeValue::Table(t) => {
            for (pk, pv) in entries_in_order(t) {
                let pname = pk.get_ref().as_ref();
                let Some(port) = ports.iter().copied().find(|p| *p == pname) else {
                    let fix = did_you_mean_fix(&did_you_mean(pname, ports.iter().copied()))
                        .unwrap_or_else(|| format!("the input ports of `{op_name}` are {}", or_list(&ports)));
                    sink.error(pk.span().start, node, format!("`{op_name}` has no input port `{pname}`"), Some(fix));
                    continue;
                };
                match pv.get_ref() {
                    DeValue::String(s) => refs.push(RawRef { port, text: s.to_string(), span: pv.span() }),
                    DeValue::Array(items) => collect_refs(items, port, node, &mut refs, sink),
                    other => sink.error(
                        pv.span().start,
                        node,
                        format!(
                            "input port `{port}` must name a node (a string or an array of strings), found {}",
                            type_name(other)
                        ),
                        Some(format!("e.g. {port} = \"raw\" or {port} = [\"raw\", \"raw.failures\"]")),
                    ),
                }
            }
        }
        DeValue::String(s) => {
            let example = if ports.len() == 1 {
                format!("inputs = [\"{s}\"]")
            } else {
                format!("inputs = {{ {} = \"{s}\" }}", ports.first().copied().unwrap_or("in"))
            };
            sink.error(
                value.span().start,
                node,
                "`inputs` must be an array of node references (or a table of them by port)",
                Some(format!("write {example}")),
            );
        }
        other => sink.error(
            value.span().start,
            node,
            format!("`inputs` must be an array of node references, found {}", type_name(other)),
            Some("e.g. inputs = [\"raw\"] or inputs = { port = \"raw\" }".into()),
        ),
    }
    d.inputs_malformed = sink.diags.len() > errors_before;
    d.refs = refs;
}

fn collect_refs(
    items: &[SValue<'_>],
    port: &'static str,
    node: Option<&str>,
    refs: &mut Vec<RawRef>,
    sink: &mut Sink<'_>,
) {
    for it in items {
        match it.get_ref() {
            DeValue::String(s) => refs.push(RawRef { port, text: s.to_string(), span: it.span() }),
            other => sink.error(
                it.span().start,
                node,
                format!(
                    "an input reference must be a string like \"raw\" or \"raw.failures\", found {}",
                    type_name(other)
                ),
                Some(match other {
                    DeValue::Array(_) | DeValue::Table(_) => {
                        "list references flat, as strings: [\"raw\", \"raw.failures\"]".into()
                    }
                    _ => "quote the node name, e.g. \"raw\"".into(),
                }),
            ),
        }
    }
}

/// Check every raw ref against the nodes and their ports; keep the valid ones as edges.
fn resolve_edges(drafts: &[Draft<'_, '_, '_>], sink: &mut Sink<'_>) -> Vec<Edge> {
    let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, d) in drafts.iter().enumerate() {
        by_name.entry(d.name.as_str()).or_insert(i);
    }
    let names: Vec<&str> = drafts.iter().map(|d| d.name.as_str()).filter(|n| valid_node_name(n)).collect();
    let mut edges: Vec<Edge> = Vec::new();
    for (to, d) in drafts.iter().enumerate() {
        let node = Some(d.name.as_str());
        for r in &d.refs {
            let text = r.text.as_str();
            let at = r.span.start;
            let parts: Vec<&str> = text.split('.').collect();
            let (from_name, from_port) = match parts.as_slice() {
                [n] if !n.trim().is_empty() => (*n, OUT_PORT),
                [n, p] if !n.is_empty() && !p.is_empty() => (*n, *p),
                _ => {
                    let why = if text.is_empty() {
                        "is empty"
                    } else if parts.len() > 2 {
                        "has too many dots"
                    } else {
                        "has an empty node or port name"
                    };
                    sink.error(
                        at,
                        node,
                        format!("malformed input `{text}`: it {why}; a reference is `node` or `node.port`"),
                        Some(
                            "e.g. \"raw\" for the default output of node `raw`, \"raw.failures\" for its failures"
                                .into(),
                        ),
                    );
                    continue;
                }
            };
            let Some(&from) = by_name.get(from_name) else {
                let alt = text.replace([':', '/'], ".");
                let fix = if alt != text && alt.split_once('.').is_some_and(|(n, _)| by_name.contains_key(n)) {
                    Some(format!("write \"{alt}\""))
                } else {
                    did_you_mean_fix(&did_you_mean(from_name, names.iter().copied()))
                        .or_else(|| Some(format!("the nodes of this graph are {}", or_list(&names))))
                };
                sink.error(at, node, format!("input `{text}` names no node: there is no node `{from_name}`"), fix);
                continue;
            };
            if from == to {
                sink.error(
                    at,
                    node,
                    format!("node reads its own output `{text}`"),
                    Some("a node cannot feed itself; name an upstream node".into()),
                );
                continue;
            }
            if let Some(ports) = drafts.get(from).and_then(Draft::out_ports) {
                if !ports.contains(&from_port) {
                    let list = or_list(&ports);
                    let fix = match did_you_mean_fix(&did_you_mean(from_port, ports.iter().copied())) {
                        Some(f) => format!("{f} (ports of `{from_name}`: {list})"),
                        None => format!("use one of the ports of `{from_name}`: {list}"),
                    };
                    sink.error(
                        at,
                        node,
                        format!("input `{text}`: node `{from_name}` has no output port `{from_port}`"),
                        Some(fix),
                    );
                    continue;
                }
            } else if drafts.get(from).is_some_and(|f| f.spec().is_none()) {
                // The referenced node's own error (unknown op, ...) is reported there; skip the port.
                if from_port != OUT_PORT && from_port != FAILURES_PORT {
                    continue;
                }
            }
            if edges.iter().any(|e| e.to == to && e.port == r.port && e.from == from && e.from_port == from_port) {
                sink.warning(
                    at,
                    node,
                    format!("input `{text}` is listed twice for port `{}`; its records would arrive twice", r.port),
                    Some("remove the repeat".into()),
                );
                continue;
            }
            edges.push(Edge { from, from_port: from_port.to_string(), to, port: r.port, span: r.span.clone() });
        }
    }
    edges
}

/// Every required input port must be fed.
fn check_required_inputs(drafts: &[Draft<'_, '_, '_>], edges: &[Edge], sink: &mut Sink<'_>) {
    for (i, d) in drafts.iter().enumerate() {
        let Some(spec) = d.spec() else { continue };
        if d.inputs_malformed {
            continue;
        }
        for port in spec.inputs.iter().filter(|p| p.required) {
            // Any reference written for the port counts (a bad one is reported on its own).
            if d.refs.iter().any(|r| r.port == port.name) || edges.iter().any(|e| e.to == i && e.port == port.name) {
                continue;
            }
            let at = d.table.and_then(|t| key_span(t, "inputs")).map_or(d.header, |s| s.start);
            let fix = upstream_example(drafts, i, port.name, spec.inputs.len());
            sink.error(
                at,
                Some(&d.name),
                format!("required input port `{}` of `{}` is not connected", port.name, spec.name),
                Some(fix),
            );
        }
    }
}

/// "add inputs = [\"raw\"]" naming a plausible upstream node.
fn upstream_example(drafts: &[Draft<'_, '_, '_>], me: usize, port: &str, n_ports: usize) -> String {
    let upstream = drafts
        .iter()
        .enumerate()
        .filter(|(j, d)| *j != me && d.spec().is_some_and(|s| !s.is_sink && !s.outputs.is_empty()))
        .map(|(_, d)| d.name.as_str())
        .next();
    match (upstream, n_ports) {
        (Some(u), 1) => format!("add inputs = [\"{u}\"]"),
        (Some(u), _) => format!("add inputs = {{ {port} = \"{u}\" }}"),
        (None, 1) => "add inputs = [\"NODE\"] naming the node that feeds it".into(),
        (None, _) => format!("add inputs = {{ {port} = \"NODE\" }} naming the node that feeds it"),
    }
}

/// Topological order (file order among ready nodes); cycles are reported. Nodes on or behind a
/// cycle are left out of the order.
fn topo_order(drafts: &[Draft<'_, '_, '_>], edges: &[Edge], sink: &mut Sink<'_>) -> Vec<usize> {
    let n = drafts.len();
    let mut indeg = vec![0usize; n];
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut pred: Vec<Vec<usize>> = vec![Vec::new(); n];
    for e in edges {
        if let (Some(d), Some(s), Some(p)) = (indeg.get_mut(e.to), succ.get_mut(e.from), pred.get_mut(e.to)) {
            *d += 1;
            s.push(e.to);
            p.push(e.from);
        }
    }
    let mut order = Vec::with_capacity(n);
    let mut done = vec![false; n];
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indeg.get(i) == Some(&0)).collect();
    let mut st = Kahn { succ: &succ, indeg: &mut indeg, done: &mut done, ready: &mut ready };
    st.drain(Some(&mut order));
    // What is left holds at least one cycle: every remaining node has a remaining predecessor.
    let mut guard = 0;
    while let Some(start) = (0..n).find(|&i| !st.is_done(i)) {
        guard += 1;
        if guard > n + 1 {
            break;
        }
        // Walk predecessors until a node repeats.
        let mut path = vec![start];
        let mut cur = start;
        let cycle = loop {
            let Some(&p) = pred.get(cur).and_then(|ps| ps.iter().find(|&&p| !st.is_done(p))) else {
                break None;
            };
            if let Some(pos) = path.iter().position(|&x| x == p) {
                break Some(path.split_off(pos));
            }
            path.push(p);
            cur = p;
        };
        let Some(mut cycle) = cycle else {
            // No remaining predecessor: cannot happen, but release the node rather than loop.
            st.release(start);
            st.drain(None);
            continue;
        };
        // `cycle` lists nodes against the edge direction: reverse, then start at the earliest node.
        cycle.reverse();
        if let Some(min_pos) = cycle.iter().enumerate().min_by_key(|(_, x)| **x).map(|(i, _)| i) {
            cycle.rotate_left(min_pos);
        }
        report_cycle(drafts, edges, &cycle, sink);
        // Drop the cycle's nodes and everything only they were holding back.
        for &c in &cycle {
            st.finish(c);
        }
        st.drain(None);
    }
    order
}

/// Kahn's algorithm state.
struct Kahn<'a> {
    succ: &'a [Vec<usize>],
    indeg: &'a mut [usize],
    done: &'a mut [bool],
    ready: &'a mut BTreeSet<usize>,
}

impl Kahn<'_> {
    fn is_done(&self, i: usize) -> bool {
        self.done.get(i).copied().unwrap_or(true)
    }

    /// Mark `i` done and release its successors.
    fn finish(&mut self, i: usize) {
        if let Some(x) = self.done.get_mut(i) {
            *x = true;
        }
        for &s in self.succ.get(i).map(Vec::as_slice).unwrap_or(&[]) {
            if let Some(d) = self.indeg.get_mut(s) {
                *d = d.saturating_sub(1);
                if *d == 0 {
                    self.ready.insert(s);
                }
            }
        }
    }

    /// Make `i` ready regardless of its predecessors.
    fn release(&mut self, i: usize) {
        if let Some(d) = self.indeg.get_mut(i) {
            *d = 0;
        }
        self.ready.insert(i);
    }

    /// Process ready nodes in index order, recording them when `order` is given.
    fn drain(&mut self, mut order: Option<&mut Vec<usize>>) {
        while let Some(i) = self.ready.pop_first() {
            if self.is_done(i) {
                continue;
            }
            if let Some(o) = order.as_deref_mut() {
                o.push(i);
            }
            self.finish(i);
        }
    }
}

fn report_cycle(drafts: &[Draft<'_, '_, '_>], edges: &[Edge], cycle: &[usize], sink: &mut Sink<'_>) {
    let name = |i: usize| drafts.get(i).map_or("?", |d| d.name.as_str());
    let (Some(&first), Some(&second)) = (cycle.first(), cycle.get(1).or(cycle.first())) else {
        return;
    };
    let mut names: Vec<&str> = cycle.iter().map(|&i| name(i)).collect();
    names.push(name(first));
    // Report at the edge first → second, in `second`'s inputs.
    let edge = edges.iter().find(|e| e.from == first && e.to == second);
    let at = edge.map_or_else(|| drafts.get(second).map_or(0, |d| d.header), |e| e.span.start);
    sink.error(
        at,
        Some(name(second)),
        format!("cycle: {}", names.join(" → ")),
        Some(format!(
            "a graph must not loop back on itself: remove `{}` from the inputs of `{}` (or another edge of the cycle)",
            name(first),
            name(second)
        )),
    );
}

/// Kinds produced by each output port, in topological order; `None` for nodes whose op is unknown
/// or that sit on a cycle. A port maps to an empty set when nothing it depends on is known.
type OutKinds = Vec<Option<BTreeMap<String, BTreeSet<Kind>>>>;

fn resolve_kinds(drafts: &[Draft<'_, '_, '_>], edges: &[Edge], order: &[usize]) -> OutKinds {
    let mut out: OutKinds = vec![None; drafts.len()];
    for &i in order {
        let Some(spec) = drafts.get(i).and_then(Draft::spec) else {
            continue;
        };
        let mut ports = BTreeMap::new();
        for o in spec.outputs {
            let kinds = match o.kind {
                OutKind::Fixed(k) => BTreeSet::from([k]),
                OutKind::SameAs(input) => arriving(edges, &out, i, input).unwrap_or_default(),
            };
            ports.insert(o.name.to_string(), kinds);
        }
        ports.insert(FAILURES_PORT.to_string(), BTreeSet::from([Kind::Failure]));
        if let Some(slot) = out.get_mut(i) {
            *slot = Some(ports);
        }
    }
    out
}

/// Kinds arriving at input `port` of node `to`; `None` when some feeding port is unknown.
fn arriving(edges: &[Edge], out: &OutKinds, to: usize, port: &str) -> Option<BTreeSet<Kind>> {
    let mut kinds = BTreeSet::new();
    for e in edges.iter().filter(|e| e.to == to && e.port == port) {
        let from = out.get(e.from)?.as_ref()?;
        kinds.extend(from.get(&e.from_port)?.iter().copied());
    }
    Some(kinds)
}

fn kinds_text(kinds: &BTreeSet<Kind>, joiner: &str) -> String {
    let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    match names.split_last() {
        None => "nothing".into(),
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{}{joiner}{last}", rest.join(", ")),
    }
}

/// Every edge must carry only kinds its target port accepts.
fn check_kinds(drafts: &[Draft<'_, '_, '_>], edges: &[Edge], out: &OutKinds, sink: &mut Sink<'_>) {
    for e in edges {
        let (Some(to), Some(from)) = (drafts.get(e.to), drafts.get(e.from)) else {
            continue;
        };
        let Some(spec) = to.spec() else { continue };
        let Some(port) = spec.inputs.iter().find(|p| p.name == e.port) else {
            continue;
        };
        if port.kinds.is_empty() {
            continue;
        }
        let Some(produced) = out.get(e.from).and_then(Option::as_ref).and_then(|p| p.get(&e.from_port)) else {
            continue;
        };
        if produced.is_empty() {
            continue;
        }
        let accepted: BTreeSet<Kind> = port.kinds.iter().copied().collect();
        if produced.is_subset(&accepted) {
            continue;
        }
        let reference =
            if e.from_port == OUT_PORT { from.name.clone() } else { format!("{}.{}", from.name, e.from_port) };
        let message = format!(
            "input `{reference}` carries {} but `{}` port `{}` accepts {}",
            kinds_text(produced, " and "),
            spec.name,
            port.name,
            kinds_text(&accepted, " or ")
        );
        // Compatible ports of nodes that are not downstream of the target (no new cycle).
        let downstream = descendants(edges, e.to);
        let mut cands = Vec::new();
        for (j, d) in drafts.iter().enumerate() {
            if j == e.to || downstream.contains(&j) {
                continue;
            }
            let Some(ports) = out.get(j).and_then(Option::as_ref) else {
                continue;
            };
            for (pname, kinds) in ports {
                if !kinds.is_empty() && kinds.is_subset(&accepted) {
                    let r = if pname == OUT_PORT { d.name.clone() } else { format!("{}.{pname}", d.name) };
                    cands.push(format!("`{r}` ({})", kinds_text(kinds, " and ")));
                }
            }
        }
        cands.truncate(3);
        let fix = if cands.is_empty() {
            format!("no node here produces {}; add one that does (see `medgen ops`)", kinds_text(&accepted, " or "))
        } else {
            format!("connect a port that produces {} instead, e.g. {}", kinds_text(&accepted, " or "), cands.join(", "))
        };
        sink.error(e.span.start, Some(&to.name), message, Some(fix));
    }
}

fn descendants(edges: &[Edge], start: usize) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        for e in edges.iter().filter(|e| e.from == n) {
            if seen.insert(e.to) {
                queue.push_back(e.to);
            }
        }
    }
    seen
}

/// Two nodes writing the same place under the outputs folder (or one inside the other's folder)
/// would overwrite and prune each other's files.
fn check_output_paths(drafts: &[Draft<'_, '_, '_>], sink: &mut Sink<'_>) {
    let normal = |p: &str| -> Vec<String> {
        Path::new(p.trim())
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect()
    };
    // (path components, node, path as written)
    let mut claimed: Vec<(Vec<String>, String, String)> = Vec::new();
    for d in drafts {
        let (Some((operator, _)), Some(params)) = (&d.op, &d.params) else { continue };
        let Ok(paths) = guarded(|| operator.output_paths(params)) else { continue };
        for p in paths {
            let parts = normal(&p);
            if parts.is_empty() {
                continue;
            }
            let clash = claimed.iter().find(|(other, _, _)| other.starts_with(&parts) || parts.starts_with(other));
            if let Some((other, by, other_raw)) = clash {
                let at = d.table.and_then(|t| t.get_key_value("path")).map(|(_, v)| v.span().start).unwrap_or(d.header);
                let how = if *other == parts { "the same path as" } else { "a path overlapping that of" };
                sink.error(
                    at,
                    Some(&d.name),
                    format!(
                        "`{}` writes to outputs/{p}, {how} `{by}` (outputs/{other_raw}): each would overwrite and \
                         prune the other's files",
                        d.name
                    ),
                    Some(format!("give `{}` a path of its own, e.g. path = \"{}\"", d.name, {
                        let ext = Path::new(&p).extension().map(|e| format!(".{}", e.to_string_lossy()));
                        format!("{}{}", d.name, ext.unwrap_or_default())
                    })),
                );
                continue;
            }
            claimed.push((parts, d.name.clone(), p));
        }
    }
}

/// A node whose outputs go nowhere is probably a mistake.
fn warn_unused(drafts: &[Draft<'_, '_, '_>], edges: &[Edge], sink: &mut Sink<'_>) {
    for (i, d) in drafts.iter().enumerate() {
        let Some(spec) = d.spec() else { continue };
        if spec.is_sink {
            continue;
        }
        if edges.iter().any(|e| e.from == i && e.from_port != FAILURES_PORT) {
            continue;
        }
        sink.warning(
            d.header,
            Some(&d.name),
            format!("the output of `{}` goes nowhere: no node reads `{}`", spec.name, d.name),
            Some(format!(
                "feed it to a sink, e.g. a node with op = \"sink.jsonl\" and inputs = [\"{}\"], or remove it",
                d.name
            )),
        );
    }
}
