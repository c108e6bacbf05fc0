//! Helpers shared by the `curate_*` integration tests: synthetic videos, running graphs through
//! the `medgen` binary, reading sink outputs and run summaries.
#![allow(dead_code)]

use medgen_operators::video::synth::{self, GroundTruth, SynthSpec};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A sample video of `scripts/fetch-samples.sh`.
pub fn sample(name: &str) -> PathBuf {
    let p = repo().join(".cache/samples").join(name);
    assert!(p.is_file(), "run scripts/fetch-samples.sh first ({} is missing)", p.display());
    p
}

/// The `medgen` binary, without the caller's log settings.
pub fn medgen() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_medgen"));
    c.env_remove("RUST_LOG");
    c
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `medgen run -q --store STORE --summary-json … GRAPH`, asserting success; returns the summary.
pub fn run(graph: &Path, store: &Path) -> serde_json::Value {
    let summary = store
        .with_extension(format!("summary-{}.json", std::time::UNIX_EPOCH.elapsed().map(|d| d.as_nanos()).unwrap_or(0)));
    let out = medgen()
        .args(["run", "-q", "--store"])
        .arg(store)
        .arg("--summary-json")
        .arg(&summary)
        .arg(graph)
        .output()
        .expect("start medgen");
    assert!(out.status.success(), "medgen run failed\n{}", show(&out));
    serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary written")).expect("summary is JSON")
}

/// `medgen check GRAPH`: (exit code, stdout + stderr).
pub fn check(graph: &Path) -> (i32, String) {
    let out = medgen().arg("check").arg(graph).output().expect("start medgen");
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

/// A counter of one node in a run summary.
pub fn counter(summary: &serde_json::Value, node: &str, field: &str) -> u64 {
    summary["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["node"] == node))
        .and_then(|n| n[field].as_u64())
        .unwrap_or_else(|| panic!("no counter {field} of node {node} in {summary}"))
}

/// The rows of a `sink.jsonl` output.
pub fn rows(store: &Path, name: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(store.join("outputs").join(name)).unwrap_or_default();
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("JSONL row")).collect()
}

/// The `train_loss` values of a training run's `metrics.jsonl` sink, in step order.
pub fn train_losses(store: &Path) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = rows(store, "metrics.jsonl")
        .into_iter()
        .filter(|r| r["name"] == "train_loss")
        .map(|r| (r["subject"].as_str().unwrap_or_default().to_string(), r["value"].as_f64().unwrap_or(f64::NAN)))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Generate a synthetic video (asserting success).
pub fn synth_video(path: &Path, spec: &SynthSpec) -> GroundTruth {
    synth::generate(path, spec).unwrap_or_else(|e| panic!("generating {}: {e}", path.display()))
}

/// A score of a Scores row.
pub fn score(row: &serde_json::Value, name: &str) -> f64 {
    row["scores"][name].as_f64().unwrap_or_else(|| panic!("no score {name} in {row}"))
}

/// A label of a Scores row.
pub fn label<'a>(row: &'a serde_json::Value, name: &str) -> &'a str {
    row["labels"][name].as_str().unwrap_or_else(|| panic!("no label {name} in {row}"))
}

/// The uri of the clip of a Scores or Clip row.
pub fn uri(row: &serde_json::Value) -> &str {
    row["clip"]["uri"].as_str().or_else(|| row["uri"].as_str()).unwrap_or_default()
}

/// (start, end) of a Clip row (or of a Scores row's clip).
pub fn span(row: &serde_json::Value) -> (f64, f64) {
    let c = if row["clip"].is_object() { &row["clip"] } else { row };
    (c["start_s"].as_f64().unwrap_or(f64::NAN), c["end_s"].as_f64().unwrap_or(f64::NAN))
}
