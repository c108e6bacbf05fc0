//! `sink.jsonl`: a materialised view of its inputs as a JSON-lines file. Rows appear when records
//! arrive with +1 and disappear when they are retracted with −1; the file is rewritten atomically
//! each time an epoch completes, so it always shows a consistent snapshot.

use crate::api::fsutil::atomic_write;
use crate::api::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;

pub struct SinkJsonl;

/// Params of `sink.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonlParams {
    /// Output file. Relative paths are inside the run's `outputs/` folder.
    pub path: String,
    /// Keep only records of these kinds (default: all).
    #[serde(default)]
    pub kinds: Vec<Kind>,
    /// Also append every change as `{"epoch": e, "diff": ±1, "row": {...}}` to `<path>.changes.jsonl`.
    #[serde(default)]
    pub changelog: bool,
}

/// The view and how to write it.
struct View {
    rows: BTreeMap<Record, isize>,
    path: PathBuf,
    changelog: Option<PathBuf>,
}

impl View {
    fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (rec, count) in &self.rows {
            let line = rec.to_row().to_string();
            for _ in 0..(*count).max(0) {
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
        }
        out
    }

    fn append_changes(&self, epoch: u64, changes: &[(Record, isize)]) -> std::io::Result<()> {
        let Some(path) = &self.changelog else { return Ok(()) };
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let mut buf = Vec::new();
        for (rec, diff) in changes {
            let line = serde_json::json!({"epoch": epoch, "diff": diff, "row": rec.to_row()});
            buf.extend_from_slice(line.to_string().as_bytes());
            buf.push(b'\n');
        }
        f.write_all(&buf)?;
        f.sync_data()
    }
}

/// Resolve a sink path inside the outputs folder ([`check_output_path`] keeps it there).
pub fn output_path(outputs: &Path, p: &str) -> PathBuf {
    outputs.join(Path::new(p))
}

/// A sink's `path` must stay inside the run's outputs folder: an absolute path or a `..` could
/// overwrite the catalog, the graph file or the input videos (views and datasets are rewritten
/// and pruned to the collection's contents).
pub fn check_output_path(p: &str, example: &str, issues: &mut Vec<ParamIssue>) {
    let path = Path::new(p);
    let escapes = path.components().any(|c| matches!(c, std::path::Component::ParentDir));
    if path.has_root() || path.is_absolute() || escapes {
        issues.push(ParamIssue::error(
            "path",
            format!(
                "`{p}` leaves the run's outputs folder (<store>/outputs): sinks rewrite and prune what they own there"
            ),
            Some(format!("a relative path such as {example}; set [graph] store to put the outputs elsewhere")),
        ));
    }
}

impl TypedOperator for SinkJsonl {
    type Params = JsonlParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "sink.jsonl",
            summary: "A materialised view of its inputs as a JSON-lines file, rewritten atomically per epoch",
            doc: "Collects every record of its inputs (any kinds; `kinds` filters) and keeps the file at `path` \
                  equal to the current contents of the collection: one JSON object per record, with a \
                  `kind` field, sorted. Retracted records (a deleted source file, a changed decision) leave \
                  the file. The file is rewritten atomically (temp file, fsync, rename) when an epoch \
                  completes, and the commit is recorded in the catalog. `changelog = true` also appends \
                  every change with its epoch and diff.",
            version: 1,
            inputs: &[InPort { name: "in", kinds: &[], required: true, doc: "records of any kind" }],
            outputs: &[],
            is_source: false,
            is_sink: true,
        }
    }

    fn output_paths(&self, p: &JsonlParams) -> Vec<String> {
        vec![p.path.clone()]
    }

    fn check(&self, p: &JsonlParams, _ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        if p.path.trim().is_empty() {
            issues.push(ParamIssue::error("path", "empty output path", Some("e.g. path = \"videos.jsonl\"".into())));
        } else if p.path.ends_with('/') {
            issues.push(ParamIssue::error(
                "path",
                "names a folder, not a file",
                Some("e.g. path = \"videos.jsonl\"".into()),
            ));
        } else {
            check_output_path(&p.path, "path = \"videos.jsonl\"", &mut issues);
        }
        issues
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &JsonlParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let input = take_input(ctx, &mut inputs)?;
        let path = output_path(&ctx.services.outputs_dir(), &p.path);
        let kinds = p.kinds.clone();
        let input = if kinds.is_empty() { input } else { input.filter(move |r| kinds.contains(&r.kind())) };
        let changelog = p.changelog.then(|| {
            let mut s = path.clone().into_os_string();
            s.push(".changes.jsonl");
            PathBuf::from(s)
        });
        let mut view = View { rows: BTreeMap::new(), path, changelog };
        let services = ctx.services.clone();
        let stats = ctx.stats.clone();
        let node = ctx.node.clone();
        // All records are exchanged to worker 0; the instances on other workers only forward.
        let dry_run = ctx.settings.dry_run || ctx.worker_index() != 0;
        let mut pending: BTreeMap<u64, Vec<(Record, isize)>> = BTreeMap::new();
        let mut wrote_once = false;
        let base_epoch = ctx.base_epoch;

        input.inner.sink(Exchange::new(|_: &(Record, u64, isize)| 0u64), &format!("{node}:sink.jsonl"), move |(input, frontier)| {
            input.for_each(|_cap, data| {
                for (rec, t, r) in data.drain(..) {
                    pending.entry(t).or_default().push((rec, r));
                }
            });
            let mut changed = false;
            let mut last_epoch = None;
            while let Some((&t, _)) = pending.first_key_value() {
                if frontier.less_equal(&t) {
                    break;
                }
                let Some(updates) = pending.remove(&t) else { break };
                let mut net: BTreeMap<Record, isize> = BTreeMap::new();
                for (rec, r) in updates {
                    *net.entry(rec).or_default() += r;
                }
                let changes: Vec<(Record, isize)> = net.into_iter().filter(|(_, d)| *d != 0).collect();
                for (rec, d) in &changes {
                    let e = view.rows.entry(rec.clone()).or_default();
                    *e += d;
                    if *e == 0 {
                        view.rows.remove(rec);
                    }
                    if *d > 0 {
                        NodeStats::add(&stats.items_in, *d as u64);
                    } else {
                        NodeStats::add(&stats.retracted, (-*d) as u64);
                    }
                }
                if !changes.is_empty()
                    && !dry_run
                    && let Err(e) = view.append_changes(t, &changes)
                {
                    tracing::error!(node = %node, "cannot append the changelog: {e}");
                }
                changed |= !changes.is_empty();
                last_epoch = Some(t);
            }
            if dry_run || !(changed || super::first_write_due(wrote_once, frontier, base_epoch)) {
                return;
            }
            let bytes = view.render();
            match atomic_write(&view.path, &bytes) {
                Ok(()) => {
                    wrote_once = true;
                    let rows: isize = view.rows.values().sum();
                    stats.items_out.store(rows.max(0) as u64, std::sync::atomic::Ordering::Relaxed);
                    if let Some(t) = last_epoch {
                        let summary = format!("{} rows -> {}", rows, view.path.display());
                        if let Err(e) = services.commit_epoch(&node, t, &summary) {
                            tracing::error!(node = %node, "cannot record the commit of epoch {t}: {e}");
                        }
                    }
                    tracing::debug!(node = %node, path = %view.path.display(), rows, "view written");
                }
                Err(e) => {
                    NodeStats::add(&stats.failed, 1);
                    NodeStats::add(&stats.write_errors, 1);
                    tracing::error!(node = %node, path = %view.path.display(), "cannot write the view: {e}; check the folder's permissions and free space");
                }
            }
        });
        Ok(Outputs::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_paths_stay_inside_the_outputs_folder() {
        for bad in ["../catalog.sqlite", "/etc/passwd", "views/../../graph.toml", "/"] {
            let mut v = Vec::new();
            check_output_path(bad, "path = \"x.jsonl\"", &mut v);
            assert_eq!(v.len(), 1, "{bad}");
        }
        for good in ["videos.jsonl", "views/kept.jsonl", "./a.jsonl", "dataset"] {
            let mut v = Vec::new();
            check_output_path(good, "path = \"x.jsonl\"", &mut v);
            assert!(v.is_empty(), "{good}");
        }
    }
}
